r"""The certified-sparse rows of ``tol=``: in each row of :math:`\hat P` only a window of the
sorted scores around the row's peak, holding all but at most ``tol`` of the row's mass (the
bound and its proof: :func:`windowed`), in :math:`O(n w)` time for windows of ``w`` elements
and :math:`O(n + \text{chunk})` memory; the windows are found and applied in C++ where the
native operator is usable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _native
from ._checks import is_compiling
from ._rows import abs_dev_rowsum_backward_sorted, centred
from ._streamed import pair

# rows per chunk of the windowed path (each chunk is as wide as its widest window)
_WINDOW_ROWS = 256


def _sorted_rowsum(vs: Tensor) -> Tensor:
    """``A 1`` of ascending-sorted ``vs`` by prefix sums in float64, differentiable."""
    n = vs.shape[-1]
    v64 = vs.double()
    inclusive = torch.cumsum(v64, dim=-1)
    ramp = torch.arange(n, device=vs.device, dtype=torch.float64).mul_(2).sub_(n - 2)
    return inclusive[..., -1:] - 2 * inclusive + ramp * v64


def _first_true(pred, lo: Tensor, hi: Tensor, steps: int) -> Tensor:
    """Smallest ``r`` in ``[lo, hi]`` with ``pred(r)``, for a predicate that is monotone
    (False then True) and True at ``hi``: a binary search in every row at once."""
    for _ in range(steps):
        mid = (lo + hi) // 2
        ok = pred(mid)
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, torch.minimum(mid + 1, hi))
    return hi


def windows(vs64: Tensor, a64: Tensor, coef: Tensor, rank: Tensor, tau: float, tol: float):
    """``(lo, hi)``: each row's certified window of ascending ranks (see :func:`windowed`)."""
    n = vs64.shape[-1]
    batch = vs64.shape[:-1]
    shape = (*batch, coef.shape[0])
    c = coef.double().expand(shape)
    k = rank.expand(shape)
    vk = vs64.gather(-1, k)
    ak = a64.gather(-1, k)
    log_half_tol = math.log(tol / 2)

    def log_tail(r: Tensor, count: Tensor) -> Tensor:
        # log(count * exp(z_r - z_k)), z_r the logit at ascending rank r (<= 0 beyond k)
        z = (c * (vs64.gather(-1, r) - vk) - (a64.gather(-1, r) - ak)) / tau
        return torch.where(count > 0, torch.log(count.double().clamp(min=1)) + z, -math.inf)

    steps = max(1, math.ceil(math.log2(n + 1)) + 1)

    def right(r: Tensor) -> Tensor:  # drop ranks > r: (n - 1 - r) of them, each <= z_{r+1}
        nxt = (r + 1).clamp(max=n - 1)
        return log_tail(nxt, n - 1 - r) <= log_half_tol

    def left(r: Tensor) -> Tensor:  # in terms of s = k - r: drop ranks < r, r of them
        rr = k - r
        prv = (rr - 1).clamp(min=0)
        return log_tail(prv, rr) <= log_half_tol

    hi = _first_true(right, k.clone(), torch.full_like(k, n - 1), steps)
    lo = k - _first_true(left, torch.zeros_like(k), k.clone(), steps)
    return lo, hi


def _windowed_autograd(
    x: Tensor,
    coef: Tensor,
    tau: Tensor,
    rank: Tensor,
    tol: float,
    v: Tensor | None = None,
    w: Tensor | None = None,
    lohi: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """:func:`windowed` by autograd through the truncated rows (the windows ``lohi`` given or
    found again): its second derivatives, and a check of the hand-written backward."""
    n = x.shape[-1]
    xc = centred(x)
    order = _native.ascending_order(xc)
    vs = xc.gather(-1, order)
    a64 = _sorted_rowsum(vs)
    if lohi is None:
        with torch.no_grad():
            tau_value = float(tau.detach())
            lohi = windows(vs.detach().double(), a64.detach(), coef, rank, tau_value, tol)
    lo, hi = lohi
    batch = x.shape[:-1]
    m = coef.shape[0]
    vs64 = vs.double()
    tau64 = tau.double()
    v_sorted = None
    if v is not None:
        v_sorted = v.gather(-2, order.unsqueeze(-1).expand(*order.shape, v.shape[-1]))
    ys, u_vals, u_idx = [], [], []
    for s in range(0, m, _WINDOW_ROWS):
        e = min(m, s + _WINDOW_ROWS)
        l_c, h_c = lo[..., s:e], hi[..., s:e]
        width = int((h_c - l_c).max()) + 1
        idx = l_c.unsqueeze(-1) + torch.arange(width, device=x.device)  # (..., r, width)
        valid = idx <= h_c.unsqueeze(-1)
        idx = torch.minimum(idx, h_c.unsqueeze(-1))
        flat = idx.flatten(-2)
        k = rank[s:e].expand(*batch, e - s)
        c = coef[s:e].double().unsqueeze(-1)
        vk = vs64.detach().gather(-1, k).unsqueeze(-1)
        ak = a64.detach().gather(-1, k).unsqueeze(-1)
        vw = vs64.gather(-1, flat).view(idx.shape)
        aw = a64.gather(-1, flat).view(idx.shape)
        d = c * (vw - vk) - (aw - ak)
        z = (d / tau64).to(x.dtype).masked_fill(~valid, -math.inf)
        q = torch.softmax(z, dim=-1)
        if v is not None:
            c_out = v.shape[-1]
            vsel = v_sorted.gather(-2, flat.unsqueeze(-1).expand(*flat.shape, c_out))
            ys.append(torch.matmul(q.unsqueeze(-2), vsel.view(*idx.shape, c_out)).squeeze(-2))
        if w is not None:
            u_vals.append(w[:, s:e].unsqueeze(-1) * q.unsqueeze(-3))  # (..., c, r, width)
            u_idx.append(flat)
    y = torch.cat(ys, dim=-2) if v is not None else None
    u = None
    if w is not None:
        vals = torch.cat([t.flatten(-2) for t in u_vals], dim=-1)  # (..., c, total)
        index = torch.cat(u_idx, dim=-1).unsqueeze(-2).expand_as(vals)
        u_sorted = vals.new_zeros((*batch, w.shape[0], n)).scatter_add(-1, index, vals)
        unsort = order.unsqueeze(-2).expand_as(u_sorted)
        u = u_sorted.new_zeros(u_sorted.shape).scatter(-1, unsort, u_sorted)
    return y, u


def _native_usable(x: Tensor) -> bool:
    """Whether the windows run in C++: the native operator is usable for ``x`` (CPU,
    float32/float64, built) and torch.compile is not tracing."""

    return not is_compiling() and _native.usable(x)


def _window_rows(vs64, a64, lo, hi, coef, rank, inv_tau64, s, e, dtype):
    """Rows ``s:e`` of ``Q`` over their windows: ``(q, flat, d)``, ``q`` of shape
    ``(..., rows, width)`` (0 past a row's window), ``flat`` the ascending ranks
    ``(..., rows * width)`` and ``d = tau * (z - z_peak)`` in float64."""
    l_c, h_c = lo[..., s:e], hi[..., s:e]
    width = int((h_c - l_c).max()) + 1
    idx = l_c.unsqueeze(-1) + torch.arange(width, device=lo.device)
    valid = idx <= h_c.unsqueeze(-1)
    idx = torch.minimum(idx, h_c.unsqueeze(-1))
    flat = idx.flatten(-2)
    k = rank[s:e].expand(l_c.shape)
    c = coef[s:e].double()
    peak = c * vs64.gather(-1, k) - a64.gather(-1, k)
    vw = vs64.gather(-1, flat).view(idx.shape)
    d = torch.addcmul(-a64.gather(-1, flat).view(idx.shape), c.unsqueeze(-1), vw)
    d -= peak.unsqueeze(-1)
    z = (d * inv_tau64).to(dtype).masked_fill_(~valid, -math.inf)
    return torch.softmax(z, dim=-1), flat, d


def _unsort(t: Tensor, order: Tensor, dim: int) -> Tensor:
    """The inverse of gathering ``t`` by ``order`` along ``dim`` (-1 or -2)."""
    if dim == -2:
        index = order.unsqueeze(-1)
    else:
        index = order.unsqueeze(-2) if t.dim() > order.dim() else order
    return torch.zeros_like(t).scatter_(dim, index.expand_as(t), t)


class _Windowed(torch.autograd.Function):
    """:func:`windowed` with a hand-written first derivative: saves ``(..., n)`` data and the
    windows, and rebuilds each chunk of windows in the backward (O(n + chunk) memory)."""

    @staticmethod
    def forward(ctx, x, coef, tau, rank, tol, v, w):  # type: ignore[override]
        xc = centred(x)
        order = _native.ascending_order(xc)
        vs64 = xc.gather(-1, order).double()
        a64 = _sorted_rowsum(vs64)
        batch, n, m = x.shape[:-1], x.shape[-1], coef.shape[0]
        ctx.tol = tol
        if _native_usable(x):  # the C++ loops of _kernels/windowed.cpp
            empty = x.new_empty(0)
            v_sorted = empty if v is None else v.gather(-2, order.unsqueeze(-1).expand_as(v))
            coef64, inv_tau = coef.double(), 1.0 / float(tau)
            y, u, lo, hi = _native.windowed_forward(
                vs64, a64, coef64, rank, inv_tau, tol, v_sorted, empty if w is None else w
            )
            u = _unsort(u, order, -1) if w is not None else None
            y = y if v is not None else None
            ctx.native = (coef64, inv_tau)
            ctx.save_for_backward(x, coef, tau, rank, v, w, order, vs64, a64, lo, hi)
            if y is None:
                return u
            return y if u is None else (y, u)
        ctx.native = None
        lo, hi = windows(vs64, a64, coef, rank, float(tau), tol)
        inv_tau64 = 1.0 / tau.double()
        y = u = v_sorted = None
        if v is not None:
            v_sorted = v.gather(-2, order.unsqueeze(-1).expand_as(v))
            y = x.new_empty((*batch, m, v.shape[-1]))
        if w is not None:
            u = x.new_zeros((*batch, w.shape[0], n))
        for s in range(0, m, _WINDOW_ROWS):
            e = min(m, s + _WINDOW_ROWS)
            q, flat, _ = _window_rows(vs64, a64, lo, hi, coef, rank, inv_tau64, s, e, x.dtype)
            if v is not None:
                vsel = v_sorted.gather(-2, flat.unsqueeze(-1).expand(*flat.shape, v.shape[-1]))
                y[..., s:e, :] = torch.matmul(q.unsqueeze(-2), vsel.view(*q.shape, -1)).squeeze(-2)
            if w is not None:
                vals = (w[:, s:e].unsqueeze(-1) * q.unsqueeze(-3)).flatten(-2)
                u.scatter_add_(-1, flat.unsqueeze(-2).expand_as(vals), vals)
        if w is not None:
            u = _unsort(u, order, -1)
        ctx.save_for_backward(x, coef, tau, rank, v, w, order, vs64, a64, lo, hi)
        if y is None:
            return u
        return y if u is None else (y, u)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        x, coef, tau, rank, v, w, order, vs64, a64, lo, hi = ctx.saved_tensors
        gy, gu = pair(grads, v, w)
        need_x, need_tau = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        need_v = v is not None and ctx.needs_input_grad[5]
        if torch.is_grad_enabled():  # create_graph=True: autograd through the same windows
            xa, ta = x.view_as(x), tau.view_as(tau)  # partials only (v may depend on x)
            y, u = _windowed_autograd(xa, coef, ta, rank, ctx.tol, v, w, lohi=(lo, hi))
            outs = [t for t, g in ((y, gy), (u, gu)) if t is not None and g is not None]
            gos = [g for t, g in ((y, gy), (u, gu)) if t is not None and g is not None]
            wrt = [t for t, need in ((xa, need_x), (ta, need_tau), (v, need_v)) if need]
            got = list(torch.autograd.grad(outs, wrt, gos, create_graph=True, allow_unused=True))
            gx = got.pop(0) if need_x else None
            gt = got.pop(0) if need_tau else None
            gv = got.pop(0) if need_v else None
            return gx, None, gt, None, None, gv, None
        if ctx.native is not None:
            coef64, inv_tau = ctx.native
            empty = x.new_empty(0)
            v_sorted = empty if v is None else v.gather(-2, order.unsqueeze(-1).expand_as(v))
            gu_sorted = empty
            if gu is not None:
                gu_sorted = gu.gather(-1, order.unsqueeze(-2).expand_as(gu))
            grad_vs, grad_as, gv_sorted, tau_part = _native.windowed_backward(
                vs64,
                a64,
                coef64,
                rank,
                inv_tau,
                lo,
                hi,
                v_sorted,
                empty if w is None else w,
                empty if gy is None else gy,
                gu_sorted,
                need_v,
                need_tau,
            )
            return _finish(
                x, tau, order, grad_vs, grad_as, gv_sorted, tau_part, need_x, need_tau, need_v
            )
        m = coef.shape[0]
        inv_tau64 = 1.0 / tau.double()
        grad_vs = x.new_zeros(x.shape)
        grad_as = x.new_zeros(x.shape)
        tau_part = torch.zeros((), dtype=torch.float64, device=x.device)
        v_sorted = gv_sorted = gu_sorted = None
        if gy is not None:
            v_sorted = v.gather(-2, order.unsqueeze(-1).expand_as(v))
            gv_sorted = torch.zeros_like(v) if need_v else None
        if gu is not None:
            gu_sorted = gu.gather(-1, order.unsqueeze(-2).expand_as(gu))
        for s in range(0, m, _WINDOW_ROWS):
            e = min(m, s + _WINDOW_ROWS)
            q, flat, d = _window_rows(vs64, a64, lo, hi, coef, rank, inv_tau64, s, e, x.dtype)
            gq = torch.zeros_like(q)
            if gy is not None:
                c_out = v.shape[-1]
                vsel = v_sorted.gather(-2, flat.unsqueeze(-1).expand(*flat.shape, c_out))
                gq += torch.matmul(vsel.view(*q.shape, c_out), gy[..., s:e, :, None]).squeeze(-1)
                if need_v:
                    vals = (q.unsqueeze(-1) * gy[..., s:e, None, :]).flatten(-3, -2)
                    gv_sorted.scatter_add_(-2, flat.unsqueeze(-1).expand_as(vals), vals)
            if gu is not None:
                gsel = gu_sorted.gather(
                    -1, flat.unsqueeze(-2).expand(*gu.shape[:-1], flat.shape[-1])
                )
                gq += (w[:, s:e].unsqueeze(-1) * gsel.view(*gu.shape[:-1], *q.shape[-2:])).sum(-3)
            gl = q * (gq - (q * gq).sum(dim=-1, keepdim=True))
            gl_flat = gl.flatten(-2)
            grad_vs.scatter_add_(-1, flat, (gl * coef[s:e].unsqueeze(-1)).flatten(-2))
            grad_as.scatter_add_(-1, flat, gl_flat)
            if need_tau:
                tau_part += (gl.double() * d).sum()
        return _finish(
            x, tau, order, grad_vs, grad_as, gv_sorted, tau_part, need_x, need_tau, need_v
        )


def _finish(x, tau, order, grad_vs, grad_as, gv_sorted, tau_part, need_x, need_tau, need_v):
    """The inputs' gradients from those of the sorted scores (through ``c_i``), of ``A 1`` (in
    sorted order), of the logits' ``tau`` factor and of the sorted ``v``."""

    inv_tau = tau.reciprocal()
    inv_tau64 = 1.0 / tau.double()
    gx = gt = gv = None
    if need_x:  # in ascending order, unsorted once
        gx = _unsort(grad_vs - abs_dev_rowsum_backward_sorted(grad_as), order, -1) * inv_tau
    if need_tau:
        gt = (-tau_part * inv_tau64 * inv_tau64).to(tau.dtype)
    if need_v:
        gv = _unsort(gv_sorted, order, -2)
    return gx, None, gt, None, None, gv, None


def windowed(
    x: Tensor,
    coef: Tensor,
    tau: Tensor,
    rank: Tensor,
    tol: float,
    v: Tensor | None = None,
    w: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    r"""``(Q @ v, w @ Q)`` for the certified-sparse rows ``Q`` of ``tol``, in O(n + chunk) memory.

    Row ``i`` of :math:`\hat P` is :math:`\operatorname{softmax}_j z_j` with
    :math:`z_j = (c_i x_j - (A_x 1)_j)/\tau`. As a function of the value :math:`t`,
    :math:`z(t) = (c_i t - \sum_k |t - x_k|)/\tau` is concave, so along the ascending order
    :math:`v_0 \le \dots \le v_{n-1}` the logits :math:`z_r = z(v_r)` are non-increasing on
    each side of the row's peak rank :math:`k` (if :math:`k \le r \le r'` then
    :math:`z_r \ge \min(z_k, z_{r'}) = z_{r'}` by concavity, :math:`z_k` being the largest;
    likewise to the left). Hence the mass beyond rank :math:`h \ge k` is at most
    :math:`(n - 1 - h)\, e^{z_{h+1}}`, and below rank :math:`l \le k` at most
    :math:`l\, e^{z_{l-1}}`. The window :math:`[l, h]` is the narrowest with both bounds
    :math:`\le \tfrac{\mathrm{tol}}{2} e^{z_k}` (each bound is monotone in its end, so each end
    is found by a binary search, :math:`O(\log n)` logits per row). The dropped mass :math:`D`
    and the window's mass :math:`M \ge e^{z_k}` then satisfy :math:`D \le \mathrm{tol}\, M`, so
    the row renormalised over its window, :math:`Q[i, j] = e^{z_j} / M` on the window and 0
    outside, drops a fraction :math:`D / (M + D) \le \mathrm{tol}` of the row's mass and
    :math:`\lVert Q[i] - \hat P[i] \rVert_1 = 2D/(M + D) \le 2\,\mathrm{tol}` (up to the
    rounding of the logits, which are computed in float64 as differences to the peak).

    The windows are constants (they change only where the discrete choice changes); values and
    gradients (x, ``v``, a tensor ``tau``, second derivatives) are those of ``Q``: the backward
    rebuilds each chunk of windows, and ``create_graph=True`` runs autograd over the same
    windows. Cost: :math:`O(n \log n + \sum_i w_i)` time and :math:`O(n + \text{chunk})`
    memory, rows processed in chunks as wide as their widest window.
    """
    if is_compiling():  # one opaque op (the windows' sizes depend on the data)
        empty = x.new_empty(0)
        y, u = torch.ops.neuralsort_py.windowed_rows(
            x, coef, tau, rank, tol, empty if v is None else v, empty if w is None else w
        )
        return (None if v is None else y), (None if w is None else u)
    out = _Windowed.apply(x, coef, tau, rank, tol, v, w)
    return pair(out, v, w)


# torch.compile: the windows' total width is known only once they are found, so dynamo cannot
# trace _Windowed (a size from the data inside an autograd.Function). Traced code calls these
# two ops instead, whose outputs have static shapes (the fake kernels give them); each runs
# _Windowed eagerly (the C++ loops where usable). The backward op finds the windows again
# rather than keep the rows of Q between the two, at the cost of one more forward.
def _rows_op(x, coef, tau, rank, tol, v, w):
    has_v, has_w = v.numel() > 0, w.numel() > 0
    with torch.no_grad():
        y, u = pair(
            _Windowed.apply(x, coef, tau, rank, tol, v if has_v else None, w if has_w else None),
            v if has_v else None,
            w if has_w else None,
        )
    return (x.new_empty(0) if y is None else y), (x.new_empty(0) if u is None else u)


def _rows_fake(x, coef, tau, rank, tol, v, w):
    batch, n, m = x.shape[:-1], x.shape[-1], coef.shape[0]
    y = x.new_empty((*batch, m, v.shape[-1])) if v.numel() > 0 else x.new_empty(0)
    u = x.new_empty((*batch, w.shape[0], n)) if w.numel() > 0 else x.new_empty(0)
    return y, u


def _rows_backward_op(gy, gu, x, coef, tau, rank, tol, v, w, need_x, need_tau, need_v):
    has_v, has_w = v.numel() > 0, w.numel() > 0
    with torch.enable_grad():
        xr = x.detach().requires_grad_(need_x)
        tr = tau.detach().requires_grad_(need_tau)
        vr = v.detach().requires_grad_(need_v) if has_v else None
        wr = w if has_w else None
        y, u = pair(_Windowed.apply(xr, coef, tr, rank, tol, vr, wr), vr, wr)
        outs = [t for t in (y, u) if t is not None]
        gos = [g for t, g in ((y, gy), (u, gu)) if t is not None]
        wrt = [t for t, need in ((xr, need_x), (tr, need_tau), (vr, need_v)) if need]
        got = list(torch.autograd.grad(outs, wrt, gos, allow_unused=True)) if wrt else []
    grads = []
    for t, need in ((x, need_x), (tau, need_tau), (v, need_v)):
        g = got.pop(0) if need else None
        grads.append(torch.zeros_like(t) if g is None else g)
    return tuple(grads)


def _rows_backward_fake(gy, gu, x, coef, tau, rank, tol, v, w, need_x, need_tau, need_v):
    return torch.empty_like(x), torch.empty_like(tau), torch.empty_like(v)


def _rows_setup(ctx, inputs, output):
    x, coef, tau, rank, tol, v, w = inputs
    ctx.save_for_backward(x, coef, tau, rank, v, w)
    ctx.tol = tol


def _rows_autograd(ctx, gy, gu):
    x, coef, tau, rank, v, w = ctx.saved_tensors
    need_x, need_tau = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    need_v = v.numel() > 0 and ctx.needs_input_grad[5]
    gx, gt, gv = torch.ops.neuralsort_py.windowed_rows_backward(
        gy, gu, x, coef, tau, rank, ctx.tol, v, w, need_x, need_tau, need_v
    )
    return (
        gx if need_x else None, None, gt if need_tau else None, None, None,
        gv if need_v else None, None,
    )  # fmt: skip


if not hasattr(torch.ops.neuralsort_py, "windowed_rows"):  # (once: not again on a reload)
    _LIBRARY = torch.library.Library("neuralsort_py", "FRAGMENT")  # kept: freed unregisters
    _LIBRARY.define(
        "windowed_rows(Tensor x, Tensor coef, Tensor tau, Tensor rank, float tol, Tensor v, "
        "Tensor w) -> (Tensor, Tensor)"
    )
    _LIBRARY.define(
        "windowed_rows_backward(Tensor gy, Tensor gu, Tensor x, Tensor coef, Tensor tau, "
        "Tensor rank, float tol, Tensor v, Tensor w, bool need_x, bool need_tau, bool need_v) "
        "-> (Tensor, Tensor, Tensor)"
    )
    _LIBRARY.impl("windowed_rows", _rows_op, "CompositeExplicitAutograd")
    _LIBRARY.impl("windowed_rows_backward", _rows_backward_op, "CompositeExplicitAutograd")
    torch.library.register_fake("neuralsort_py::windowed_rows", _rows_fake, lib=_LIBRARY)
    torch.library.register_fake(
        "neuralsort_py::windowed_rows_backward", _rows_backward_fake, lib=_LIBRARY
    )
    torch.library.register_autograd(
        "neuralsort_py::windowed_rows", _rows_autograd, setup_context=_rows_setup, lib=_LIBRARY
    )
