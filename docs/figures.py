"""Draw the figures of the documentation into docs/img/ (run: ``python docs/figures.py``).

Every figure is computed here with the library, nothing is copied: the relaxed permutation matrix
for several temperatures, soft ranks against tau, soft top-k masks, and the error against the
hard sort as tau, the spread of the scores and n vary (the "Choosing tau" page). It takes a few
seconds on one CPU core and needs matplotlib (the ``experiments`` or ``docs`` extra).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import neuralsort as ns  # noqa: E402

IMG = Path(__file__).resolve().parent / "img"
SCORES = torch.tensor([0.3, 2.1, -0.8, 1.2, 0.9, -1.5, 1.9, -0.1])
TAUS = (0.05, 0.3, 1.0, 3.0)


def phat_heatmaps(out: Path) -> None:
    """P-hat of eight scores for several tau: rows = sorted positions, columns = input elements."""
    fig, axes = plt.subplots(1, len(TAUS), figsize=(3.0 * len(TAUS), 3.3), constrained_layout=True)
    for ax, tau in zip(axes, TAUS, strict=True):
        p = ns.neural_sort(SCORES, tau=tau, descending=True)
        im = ax.imshow(p, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(f"tau = {tau:g}")
        ax.set_xlabel("input element j")
        ax.set_xticks(range(len(SCORES)))
        ax.set_yticks(range(len(SCORES)))
    axes[0].set_ylabel("sorted position i (descending)")
    fig.colorbar(im, ax=axes, shrink=0.8, label="P-hat[i, j]")
    shown = ", ".join(f"{v:g}" for v in SCORES.tolist())
    fig.suptitle(f"neural_sort(scores, tau, descending=True), scores = [{shown}]")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def soft_ranks(out: Path) -> None:
    """soft_rank of each score as tau grows: hard ranks at small tau, (n + 1) / 2 at large."""
    taus = torch.logspace(-2, 1.5, 120)
    ranks = torch.stack([ns.soft_rank(SCORES, tau=float(t), descending=True) for t in taus])
    fig, ax = plt.subplots(figsize=(6.5, 3.8), constrained_layout=True)
    for j in range(len(SCORES)):
        ax.plot(taus, ranks[:, j], label=f"score {SCORES[j].item():g}")
    ax.set_xscale("log")
    ax.set_xlabel("tau")
    ax.set_ylabel("soft_rank (1 = largest)")
    ax.axhline((len(SCORES) + 1) / 2, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("soft_rank(scores, tau, descending=True)")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def topk_masks(out: Path) -> None:
    """soft_topk_mask(scores, k=3) for several tau, beside the hard mask."""
    k = 3
    hard = ns.soft_topk_mask(SCORES, k, hard=True, tau=1.0).detach()
    fig, ax = plt.subplots(figsize=(6.5, 3.5), constrained_layout=True)
    width = 0.8 / (len(TAUS) + 1)
    xs = torch.arange(len(SCORES), dtype=torch.float32)
    ax.bar(xs - 0.4 + width / 2, hard, width, color="black", label="hard=True")
    for m, tau in enumerate(TAUS, start=1):
        mask = ns.soft_topk_mask(SCORES, k, tau=tau)
        ax.bar(xs - 0.4 + width * (m + 0.5), mask, width, label=f"tau = {tau:g}")
    ax.set_xticks(xs, [f"{v:.2g}" for v in SCORES.tolist()])
    ax.set_xlabel("score")
    ax.set_ylabel("in the top 3 (soft)")
    ax.set_title(f"soft_topk_mask(scores, k={k}, tau): each tau's masses sum to {k}")
    ax.legend(fontsize=7)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def off_mass(n: int, spread: float, tau: float, trials: int, gen: torch.Generator) -> float:
    """Mean mass P-hat puts away from the true sorted element, for N(0, spread^2) scores.

    ``1 - mean_i P-hat[i, argsort[i]]``: 0 for the hard sort, ``1 - 1/n`` for the uniform matrix.
    Half the mean L1 distance between a row of P-hat and the row of the hard permutation.
    """
    x = torch.randn(trials, n, generator=gen, dtype=torch.float64) * spread
    p = ns.neural_sort(x, tau=tau)
    hard = ns.neural_sort(x, tau=tau, hard=True)
    return float(1.0 - (p * hard).sum(-1).mean())


def choosing_tau(out: Path, trials: int = 200) -> list[tuple[int, float, float, float]]:
    """Error against the hard sort as tau, the spread of the scores and n vary."""
    gen = torch.Generator().manual_seed(0)
    taus = torch.logspace(-3, 1, 25).tolist()
    rows = []
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for n, spread, style in (
        (16, 0.1, "-"),
        (16, 1.0, "-"),
        (16, 10.0, "-"),
        (4, 1.0, "--"),
        (64, 1.0, "--"),
        (256, 1.0, "--"),
    ):
        errs = [off_mass(n, spread, t, max(8, trials * 16 // n), gen) for t in taus]
        rows.extend((n, spread, t, e) for t, e in zip(taus, errs, strict=True))
        label = f"n = {n}, spread = {spread:g}"
        left.plot(taus, errs, style, label=label)
        gap = spread / n  # the typical gap between neighbouring sorted scores, up to a constant
        right.plot([t / gap for t in taus], errs, style, label=label)
    left.set_xlabel("tau")
    right.set_xlabel("tau / (spread / n)   (tau over the typical gap between neighbours)")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_ylabel("mass off the true element, 1 - mean_i P-hat[i, sort(i)]")
        ax.grid(True, which="major", alpha=0.3)
    right.legend(fontsize=7)
    left.set_title("against tau: the scale of the scores matters")
    right.set_title("against tau over the gap: the curves meet")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--out", type=Path, default=IMG, help="folder for the PNGs (docs/img)")
    parser.add_argument("--trials", type=int, default=200, help="score vectors per point at n=16")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    phat_heatmaps(args.out / "phat_tau.png")
    soft_ranks(args.out / "soft_rank_tau.png")
    topk_masks(args.out / "topk_mask.png")
    rows = choosing_tau(args.out / "choosing_tau.png", args.trials)
    with open(args.out / "choosing_tau.csv", "w") as f:
        f.write("n,spread,tau,off_mass\n")
        f.writelines(f"{n},{s:g},{t:.6g},{e:.6g}\n" for n, s, t, e in rows)
    print(f"wrote {len(list(args.out.glob('*.png')))} figures to {args.out}")


if __name__ == "__main__":
    main()
