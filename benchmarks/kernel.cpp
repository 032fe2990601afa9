// Times the CPU kernels alone (no torch, no Python, warm caches): forward and backward of the
// relaxed rows for B batch elements of n scores and m rows, one thread.
//
//   g++ -O3 -march=native -std=c++20 -I src/neuralsort/_kernels benchmarks/kernel.cpp -o kernel
//   ./kernel B n m [iterations] [tau]  e.g. ./kernel 100 100 9
//
// m = 1 isolates the per-element cost of ranking the scores (plus one row); m = n is the full
// matrix; a fifth argument `tau` makes the backward compute the temperature's gradient too.
// Prints median microseconds per call.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "relaxed_rows.h"

namespace k = neuralsort_kernels;

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s B n m [iterations]\n", argv[0]);
        return 2;
    }
    const int64_t B = std::atol(argv[1]), n = std::atol(argv[2]), m = std::atol(argv[3]);
    const int iters = argc > 4 ? std::atoi(argv[4]) : 1000;
    const bool with_tau = argc > 5 && std::string(argv[5]) == "tau";
    std::vector<float> x(B * n), coef(m), p(B * m * n), xc(B * n), a(B * n), g(B * m * n), gx(B * n);
    std::vector<float> u(n), v(n), l(n);
    std::vector<int64_t> peak(m);
    double tau_part = 0.0;
    std::vector<int32_t> rank(n);
    std::vector<double> inclusive(n);
    std::vector<int64_t> rank_of_row(m), order(B * n);
    std::mt19937 gen(0);
    std::normal_distribution<float> normal;
    for (auto& q : x) q = normal(gen);
    for (auto& q : g) q = normal(gen);
    for (int64_t i = 0; i < m; ++i) {  // the first m rows, descending
        coef[i] = static_cast<float>(n + 1 - 2 * (i + 1));
        rank_of_row[i] = n - 1 - i;
    }
    k::Scratch<float> scratch;
    scratch.resize(n);
    std::vector<double> fwd, bwd;
    for (int it = 0; it < iters; ++it) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int64_t b = 0; b < B; ++b)
            k::forward_one(x.data() + b * n, n, coef.data(), rank_of_row.data(), m, 1.0f, 64.0f,
                           p.data() + b * m * n, xc.data() + b * n, a.data() + b * n,
                           order.data() + b * n, scratch);
        const auto t1 = std::chrono::steady_clock::now();
        for (int64_t b = 0; b < B; ++b) {
            const int64_t* ob = order.data() + b * n;
            if (with_tau)
                for (int64_t i = 0; i < m; ++i) peak[i] = ob[rank_of_row[i]];
            k::backward_one(g.data() + b * m * n, p.data() + b * m * n, n, coef.data(), m, 1.0f,
                            ob, xc.data() + b * n, a.data() + b * n, gx.data() + b * n,
                            peak.data(), with_tau ? &tau_part : nullptr, u.data(), v.data(),
                            l.data(), rank.data(), inclusive.data());
        }
        const auto t2 = std::chrono::steady_clock::now();
        fwd.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
        bwd.push_back(std::chrono::duration<double, std::micro>(t2 - t1).count());
    }
    std::sort(fwd.begin(), fwd.end());
    std::sort(bwd.begin(), bwd.end());
    std::printf("B=%ld n=%ld m=%ld%s: forward %.1f us, backward %.1f us (median of %d)\n",
                static_cast<long>(B), static_cast<long>(n), static_cast<long>(m),
                with_tau ? " (with tau)" : "", fwd[iters / 2], bwd[iters / 2], iters);
    return 0;
}
