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
    x = tl.load(row + cols, mask=valid, other=0.0)
    mean = tl.sum(x, axis=0) / n
    xc = tl.where(valid, x - mean, 0.0)
    a = tl.zeros([BLOCK_N], dtype=tl.float64)
    for k0 in range(0, n, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        xk = tl.load(row + ks, mask=ks < n, other=0.0) - mean
        d = tl.where((ks < n)[None, :], tl.abs(xc[:, None] - xk[None, :]), 0.0)
        a += tl.sum(d.to(tl.float64), axis=1)
    a32 = a.to(tl.float32)
    tl.store(xc_ptr + b * n + cols, xc, mask=valid)
    tl.store(a_ptr + b * n + cols, a32, mask=valid)
    neg_a = a32 * -inv_tau
    for i0 in range(0, m, BLOCK_M):
        rows = i0 + tl.arange(0, BLOCK_M)
        c = tl.load(coef_ptr + rows, mask=rows < m, other=0.0) * inv_tau
        t = tl.where(valid[None, :], c[:, None] * xc[None, :] + neg_a[None, :], float("-inf"))
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
        a = tl.load(a_ptr + b * n + cols, mask=valid, other=0.0)
        part = tl.sum(xc.to(tl.float64) * u + a.to(tl.float64) * v, axis=0)
        tl.store(tau_part_ptr + b, part)
