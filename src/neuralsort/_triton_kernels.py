"""The Triton kernels of :mod:`neuralsort._triton` (imported only where Triton is installed).

Module-level functions, so that Triton finds ``tl`` among their globals in every version (not
all resolve names captured from an enclosing function). The formulas are in ``_triton.py``'s
docstring.
"""

import triton
import triton.language as tl

__all__ = ["forward_kernel", "backward_kernel"]


@triton.jit
def forward_kernel(
    x_ptr, coef_ptr, tau_ptr, p_ptr, xc_ptr, a_ptr, logit_range, n, m,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    inv_tau = 1.0 / tl.load(tau_ptr)
    cols = tl.arange(0, BLOCK_N)
    valid = cols < n
    row = x_ptr + b * n
    xc = tl.load(row + cols, mask=valid, other=0.0)  # not shifted: only differences are used
    x64 = xc.to(tl.float64)
    a = tl.zeros([BLOCK_N], dtype=tl.float64)
    for k0 in range(0, n, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        xk = tl.load(row + ks, mask=ks < n, other=0.0).to(tl.float64)
        # differences of float32 scores are exact in float64
        a += tl.sum(tl.where((ks < n)[None, :], tl.abs(x64[:, None] - xk[None, :]), 0.0), axis=1)
    a32 = a.to(tl.float32)
    tl.store(xc_ptr + b * n + cols, xc, mask=valid)
    tl.store(a_ptr + b * n + cols, a32, mask=valid)
    a_lo = (a - a32.to(tl.float64)).to(tl.float32)  # what the float32 copy drops
    neg_a = a32 * -inv_tau
    for i0 in range(0, m, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        c = tl.load(coef_ptr + rows, mask=rows < m, other=0.0) * inv_tau
        t = tl.where(valid[None, :], c[:, None] * xc[None, :] + neg_a[None, :], float("-inf"))
        # the logits again, relative to the element k each row peaks at (found from the rough
        # ones): every difference taken before scaling, so no digit is lost to |c xc|, |a|
        at_k = cols[None, :] == tl.argmax(t, axis=1)[:, None]
        xk = tl.sum(tl.where(at_k, xc[None, :], 0.0), axis=1)
        ak = tl.sum(tl.where(at_k, a32[None, :], 0.0), axis=1)
        ak_lo = tl.sum(tl.where(at_k, a_lo[None, :], 0.0), axis=1)
        da = (a32[None, :] - ak[:, None]) + (a_lo[None, :] - ak_lo[:, None])
        t = c[:, None] * (xc[None, :] - xk[:, None]) - da * inv_tau
        t = tl.where(valid[None, :], t, float("-inf"))
        top = tl.max(t, axis=1)
        t = tl.maximum(t, (top - logit_range)[:, None])
        e = tl.where(valid[None, :], tl.exp(t - top[:, None]), 0.0)
        p = e / tl.sum(e, axis=1)[:, None]
        offsets = (b * m + rows[:, None]) * n + cols[None, :]
        tl.store(p_ptr + offsets, p, mask=(rows < m)[:, None] & valid[None, :])


@triton.jit
def backward_kernel(
    g_ptr, p_ptr, coef_ptr, tau_ptr, xc_ptr, a_ptr, gx_ptr, tau_part_ptr, v_ptr, n, m,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    NEED_TAU: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    inv_tau = 1.0 / tl.load(tau_ptr)
    cols = tl.arange(0, BLOCK_N)
    valid = cols < n
    u = tl.zeros([BLOCK_N], dtype=tl.float32)
    v = tl.zeros([BLOCK_N], dtype=tl.float32)
    part = tl.zeros([BLOCK_M], dtype=tl.float64)
    if NEED_TAU:
        xs = tl.load(xc_ptr + b * n + cols, mask=valid, other=0.0)
        a_s = tl.load(a_ptr + b * n + cols, mask=valid, other=0.0)
    for i0 in range(0, m, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        mask = (rows < m)[:, None] & valid[None, :]
        offsets = (b * m + rows[:, None]) * n + cols[None, :]
        g = tl.load(g_ptr + offsets, mask=mask, other=0.0)
        p = tl.load(p_ptr + offsets, mask=mask, other=0.0)
        l = p * (g - tl.sum(g * p, axis=1)[:, None])  # noqa: E741
        c = tl.load(coef_ptr + rows, mask=rows < m, other=0.0)
        u += tl.sum(c[:, None] * l, axis=0)
        v -= tl.sum(l, axis=0)
        if NEED_TAU:
            # sum_ij l_ij (c_i (x_j - x_k) - (a_j - a_k)), k the peak of row i: the tau
            # gradient's sum as differences to each row's peak (rows of l sum to 0), whose terms
            # are small where l is large (taken whole they are of size n |x| and cancel)
            at_k = cols[None, :] == tl.argmax(tl.where(mask, p, -1.0), axis=1)[:, None]
            xk = tl.sum(tl.where(at_k, xs[None, :], 0.0), axis=1)
            ak = tl.sum(tl.where(at_k, a_s[None, :], 0.0), axis=1)
            d = c[:, None] * (xs[None, :] - xk[:, None]) - (a_s[None, :] - ak[:, None])
            part += tl.sum((l * tl.where(mask, d, 0.0)).to(tl.float64), axis=1)
    # v is read back by every thread of the program in chunks along the other axis
    tl.store(v_ptr + b * n + cols, v, mask=valid)
    tl.debug_barrier()
    xc = tl.load(xc_ptr + b * n + cols, mask=valid, other=0.0)
    through_a = tl.zeros([BLOCK_N], dtype=tl.float64)
    for j0 in range(0, n, BLOCK_K):
        js = j0 + tl.arange(0, BLOCK_K)
        inside = js < n
        vj = tl.load(v_ptr + b * n + js, mask=inside, other=0.0)
        xj = tl.load(xc_ptr + b * n + js, mask=inside, other=0.0)
        same = xc[:, None] == xj[None, :]
        after = (xc[:, None] > xj[None, :]) | (same & (cols[:, None] > js[None, :]))
        before = (xc[:, None] < xj[None, :]) | (same & (cols[:, None] < js[None, :]))
        sign = tl.where(inside[None, :], after.to(tl.float32) - before.to(tl.float32), 0.0)
        through_a += tl.sum(((v[:, None] + vj[None, :]) * sign).to(tl.float64), axis=1)
    gx = (u.to(tl.float64) + through_a) * inv_tau
    tl.store(gx_ptr + b * n + cols, gx.to(tl.float32), mask=valid)
    if NEED_TAU:
        tl.store(tau_part_ptr + b, tl.sum(part, axis=0))
