"""Depthwise convolutions (one input channel per group), compiled when numba is there.

A depthwise convolution has no channel sum: output channel ``c·M + j`` (``M``
the depth multiplier) is input channel ``c`` convolved with its own kernel.
As matrix products that is ``groups`` products with an inner dimension of 1,
which BLAS runs at memory speed at best; a loop that keeps one output row in
cache and streams every tap over it does far better.

With numba the loop is compiled (chunks of output rows on one thread per
core, vectorized over channels, or over a depth multiplier's outputs when it
is above 1; a 3×3 window inside the input sums its nine taps in registers);
without it the same sum runs as one NumPy multiply-add per kernel tap over
strided views of the input (no copy).

Examples
--------
>>> import numpy as np
>>> xp = np.arange(12.0).reshape(1, 6, 2)
>>> k = np.ones((3, 1, 2))
>>> direct(xp, k, (1,), (1,), 2, (4,))[0, :, 0]
array([ 6., 12., 18., 24.])
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ...arithmetic import effective_kernel, window_reach
from .. import gradient_costs
from ..dispatch import ConvProblem, register_algorithm
from ..padding import pad
from ._threads import SMALL_WORK, aligned_empty, run_chunks, run_native_jobs, worker_count

#: Output cells of a row whose weight-gradient terms are summed in the input's
#: dtype before they are added to the float64 total.
_GRAD_BLOCK = 64

#: A depthwise multiply-add (2 FLOPs) runs ~30× slower than one inside a GEMM (no reuse):
#: FLOPs are scaled by this before deciding whether threads pay.
_GEMM_EQUIVALENT = 60.0


def _rows_per_chunk(rows: int, row_bytes: int) -> int:
    """About 256 KiB of output per chunk, and at least 4 chunks per worker if possible."""
    by_cache = max(1, (256 << 10) // max(1, row_bytes))
    by_balance = max(1, rows // (4 * worker_count()))
    return min(by_cache, by_balance)

__all__ = ["direct", "weight_grad", "applies", "cost", "transposed", "applies_transposed",
           "cost_transposed", "tiles", "applies_tiles", "cost_tiles"]


@functools.cache
def _numba_kernels() -> tuple[Callable[..., None], ...] | None:
    """Compiled 2-D loops, or ``None`` without numba.

    ``(forward, forward with a multiplier, weight gradient, weight gradient with a
    multiplier)``: without a multiplier they vectorize over channels, with one
    over the multiplier's outputs of each input channel.
    """
    try:
        import numba
    except ImportError:  # pragma: no cover - exercised by the numba-less test
        return None

    # fastmath lets LLVM fuse multiply-adds; no reduction is reordered across
    # cells (each output value sums its own taps) and the innermost loops run
    # over a contiguous axis, so LLVM vectorizes them. Inner loops index from 0
    # (range(n)): numba's negative-index handling otherwise blocks vectorizing.
    jit = numba.njit(nogil=True, cache=True, fastmath=True, error_model="numpy")

    @jit
    def interior(size, extent, stride, before, out):
        # output positions [lo, hi) (of 0 .. out - 1) whose every tap lies in [0, size);
        # extent: the dilated kernel's span K_eff (arithmetic.effective_kernel)
        lo = min(out, max(0, (before + stride - 1) // stride))
        last = size - extent + before
        hi = min(out, last // stride + 1) if last >= 0 else 0
        return lo, max(lo, hi)

    @jit
    def cell_channels(xp, k, n, h0, w0, d0, d1, dst):
        # one output cell (C,), taps that fall outside xp (zero padding) skipped
        kh, kw, c = k.shape
        _, hi, wi, _ = xp.shape
        for ch in range(c):
            dst[ch] = 0.0
        for a in range(kh):
            h = h0 + a * d0
            if h < 0 or h >= hi:
                continue
            for b in range(kw):
                w = w0 + b * d1
                if w < 0 or w >= wi:
                    continue
                src = xp[n, h, w]
                tap = k[a, b]
                for ch in range(c):
                    dst[ch] += src[ch] * tap[ch]

    @jit
    def forward_channels(xp, k, s0, s1, d0, d1, p0, p1, e0, e1, first, last, y):
        # multiplier 1: k (KH, KW, C), y (N, HO, WO, C); output rows first .. last - 1
        # over batch × height; vectorized over channels. A 3×3 window wholly inside
        # xp sums its nine taps in registers and stores once (two output rows at a
        # time when they share input rows, s0 == d0: half the loads); other cells
        # go tap by tap. p0, p1: zero padding before each axis, never copied; e0, e1:
        # the dilated kernel's span along each axis (arithmetic.effective_kernel).
        _, ho, wo, c = y.shape
        kh, kw = k.shape[0], k.shape[1]
        _, hi, _, _ = xp.shape
        lo, up = interior(xp.shape[2], e1, s1, p1, wo)
        if kh != 3 or kw != 3:
            lo, up = 0, 0
        k00, k01, k02 = k[0, 0], k[0, kw // 2], k[0, kw - 1]
        k10, k11, k12 = k[kh // 2, 0], k[kh // 2, kw // 2], k[kh // 2, kw - 1]
        k20, k21, k22 = k[kh - 1, 0], k[kh - 1, kw // 2], k[kh - 1, kw - 1]
        row = first
        while row < last:
            n = row // ho
            oh = row % ho
            h0 = oh * s0 - p0
            out = y[n, oh]
            inside = lo < up and h0 >= 0 and h0 + e0 <= hi
            pair = (inside and s0 == d0 and row + 1 < last and oh + 1 < ho
                    and h0 + 3 * d0 < hi)
            start, stop = (lo, up) if inside else (wo, wo)
            for ow in range(start):
                cell_channels(xp, k, n, h0, ow * s1 - p1, d0, d1, out[ow])
            for ow in range(stop, wo):
                cell_channels(xp, k, n, h0, ow * s1 - p1, d0, d1, out[ow])
            if pair:
                below = y[n, oh + 1]
                for ow in range(start):
                    cell_channels(xp, k, n, h0 + s0, ow * s1 - p1, d0, d1, below[ow])
                for ow in range(stop, wo):
                    cell_channels(xp, k, n, h0 + s0, ow * s1 - p1, d0, d1, below[ow])
                r0 = xp[n, h0]
                r1 = xp[n, h0 + d0]
                r2 = xp[n, h0 + 2 * d0]
                r3 = xp[n, h0 + 3 * d0]
                for ow in range(start, stop):
                    wa = ow * s1 - p1
                    wb = wa + d1
                    wc = wb + d1
                    for ch in range(c):
                        a0, a1, a2 = r1[wa, ch], r1[wb, ch], r1[wc, ch]
                        b0, b1, b2 = r2[wa, ch], r2[wb, ch], r2[wc, ch]
                        m0, m1, m2 = k00[ch], k01[ch], k02[ch]
                        n0, n1, n2 = k10[ch], k11[ch], k12[ch]
                        q0, q1, q2 = k20[ch], k21[ch], k22[ch]
                        out[ow, ch] = (
                            r0[wa, ch] * m0 + r0[wb, ch] * m1 + r0[wc, ch] * m2
                            + a0 * n0 + a1 * n1 + a2 * n2 + b0 * q0 + b1 * q1 + b2 * q2
                        )
                        below[ow, ch] = (
                            a0 * m0 + a1 * m1 + a2 * m2 + b0 * n0 + b1 * n1 + b2 * n2
                            + r3[wa, ch] * q0 + r3[wb, ch] * q1 + r3[wc, ch] * q2
                        )
                row += 2
                continue
            if inside:
                r0 = xp[n, h0]
                r1 = xp[n, h0 + d0]
                r2 = xp[n, h0 + 2 * d0]
                for ow in range(start, stop):
                    wa = ow * s1 - p1
                    wb = wa + d1
                    wc = wb + d1
                    for ch in range(c):
                        out[ow, ch] = (
                            r0[wa, ch] * k00[ch] + r0[wb, ch] * k01[ch] + r0[wc, ch] * k02[ch]
                            + r1[wa, ch] * k10[ch] + r1[wb, ch] * k11[ch] + r1[wc, ch] * k12[ch]
                            + r2[wa, ch] * k20[ch] + r2[wb, ch] * k21[ch] + r2[wc, ch] * k22[ch]
                        )
            row += 1

    @jit
    def cell_multiplier(xp, k, n, h0, w0, d0, d1, dst):
        # one output cell (C, M) of a depth multiplier M
        kh, kw, c, m = k.shape
        _, hi, wi, _ = xp.shape
        for ch in range(c):
            for j in range(m):
                dst[ch, j] = 0.0
        for a in range(kh):
            h = h0 + a * d0
            if h < 0 or h >= hi:
                continue
            for b in range(kw):
                w = w0 + b * d1
                if w < 0 or w >= wi:
                    continue
                for ch in range(c):
                    value = xp[n, h, w, ch]
                    for j in range(m):
                        dst[ch, j] += value * k[a, b, ch, j]

    @jit
    def forward_multiplier(xp, k, s0, s1, d0, d1, p0, p1, e0, e1, first, last, y):
        # multiplier M > 1: k (KH, KW, C, M), y (N, HO, WO, C, M); vectorized over
        # the M outputs of each input channel (one input value times M weights);
        # e0, e1 as in forward_channels
        _, ho, wo, c, m = y.shape
        kh, kw = k.shape[0], k.shape[1]
        _, hi, _, _ = xp.shape
        lo, up = interior(xp.shape[2], e1, s1, p1, wo)
        if kh != 3 or kw != 3:
            lo, up = 0, 0
        for row in range(first, last):
            n = row // ho
            oh = row % ho
            h0 = oh * s0 - p0
            out = y[n, oh]
            inside = h0 >= 0 and h0 + e0 <= hi
            start, stop = (lo, up) if inside else (wo, wo)
            for ow in range(min(start, wo)):
                cell_multiplier(xp, k, n, h0, ow * s1 - p1, d0, d1, out[ow])
            if start < stop:
                r0 = xp[n, h0]
                r1 = xp[n, h0 + d0]
                r2 = xp[n, h0 + 2 * d0]
                for ow in range(start, stop):
                    wa = ow * s1 - p1
                    wb = wa + d1
                    wc = wb + d1
                    for ch in range(c):
                        x00, x01, x02 = r0[wa, ch], r0[wb, ch], r0[wc, ch]
                        x10, x11, x12 = r1[wa, ch], r1[wb, ch], r1[wc, ch]
                        x20, x21, x22 = r2[wa, ch], r2[wb, ch], r2[wc, ch]
                        dst = out[ow, ch]
                        for j in range(m):
                            dst[j] = (
                                x00 * k[0, 0, ch, j] + x01 * k[0, 1, ch, j]
                                + x02 * k[0, 2, ch, j] + x10 * k[1, 0, ch, j]
                                + x11 * k[1, 1, ch, j] + x12 * k[1, 2, ch, j]
                                + x20 * k[2, 0, ch, j] + x21 * k[2, 1, ch, j]
                                + x22 * k[2, 2, ch, j]
                            )
            for ow in range(max(stop, start), wo):
                cell_multiplier(xp, k, n, h0, ow * s1 - p1, d0, d1, out[ow])

    @jit
    def forward_one_channel(xp, k, s0, s1, d0, d1, first, last, y):
        # one input channel, 3x3, xp already padded: xp (N, H, W), k (9, M),
        # y (N, HO, WO, M); four cells at a time share each weight load
        _, ho, wo, m = y.shape
        for row in range(first, last):
            n = row // ho
            oh = row % ho
            h0 = oh * s0
            r0 = xp[n, h0]
            r1 = xp[n, h0 + d0]
            r2 = xp[n, h0 + 2 * d0]
            out = y[n, oh]
            ow = 0
            while ow + 4 <= wo:
                a = ow * s1
                b = a + d1
                c = b + d1
                a0, a1, a2, a3 = r0[a], r0[a + s1], r0[a + 2 * s1], r0[a + 3 * s1]
                b0, b1, b2, b3 = r0[b], r0[b + s1], r0[b + 2 * s1], r0[b + 3 * s1]
                c0, c1, c2, c3 = r0[c], r0[c + s1], r0[c + 2 * s1], r0[c + 3 * s1]
                e0, e1, e2, e3 = r1[a], r1[a + s1], r1[a + 2 * s1], r1[a + 3 * s1]
                f0, f1, f2, f3 = r1[b], r1[b + s1], r1[b + 2 * s1], r1[b + 3 * s1]
                g0, g1, g2, g3 = r1[c], r1[c + s1], r1[c + 2 * s1], r1[c + 3 * s1]
                p0, p1, p2, p3 = r2[a], r2[a + s1], r2[a + 2 * s1], r2[a + 3 * s1]
                q0, q1, q2, q3 = r2[b], r2[b + s1], r2[b + 2 * s1], r2[b + 3 * s1]
                t0, t1, t2, t3 = r2[c], r2[c + s1], r2[c + 2 * s1], r2[c + 3 * s1]
                o0, o1, o2, o3 = out[ow], out[ow + 1], out[ow + 2], out[ow + 3]
                for j in range(m):
                    w0, w1, w2 = k[0, j], k[1, j], k[2, j]
                    w3, w4, w5 = k[3, j], k[4, j], k[5, j]
                    w6, w7, w8 = k[6, j], k[7, j], k[8, j]
                    o0[j] = (a0 * w0 + b0 * w1 + c0 * w2 + e0 * w3 + f0 * w4 + g0 * w5
                             + p0 * w6 + q0 * w7 + t0 * w8)
                    o1[j] = (a1 * w0 + b1 * w1 + c1 * w2 + e1 * w3 + f1 * w4 + g1 * w5
                             + p1 * w6 + q1 * w7 + t1 * w8)
                    o2[j] = (a2 * w0 + b2 * w1 + c2 * w2 + e2 * w3 + f2 * w4 + g2 * w5
                             + p2 * w6 + q2 * w7 + t2 * w8)
                    o3[j] = (a3 * w0 + b3 * w1 + c3 * w2 + e3 * w3 + f3 * w4 + g3 * w5
                             + p3 * w6 + q3 * w7 + t3 * w8)
                ow += 4
            for rest in range(ow, wo):
                a = rest * s1
                a0, b0, c0 = r0[a], r0[a + d1], r0[a + 2 * d1]
                e0, f0, g0 = r1[a], r1[a + d1], r1[a + 2 * d1]
                p0, q0, t0 = r2[a], r2[a + d1], r2[a + 2 * d1]
                o0 = out[rest]
                for j in range(m):
                    o0[j] = (a0 * k[0, j] + b0 * k[1, j] + c0 * k[2, j] + e0 * k[3, j]
                             + f0 * k[4, j] + g0 * k[5, j] + p0 * k[6, j] + q0 * k[7, j]
                             + t0 * k[8, j])

    @jit
    def forward_rows(xp, kt, c, s0, d0, d1, first, last, y):
        # multiplier 1, stride 1 along the width, few channels, xp already padded:
        # xp (N, HP, WP·C), kt (KH, KW, WO·C) each tap's C weights repeated along an
        # output row, y (N, HO, WO·C). A tap is one multiply-add over the whole row
        # (vectorized over width × channels, where the channel loop alone is too short)
        _, ho, width = y.shape
        kh, kw = kt.shape[0], kt.shape[1]
        for row in range(first, last):
            n = row // ho
            oh = row % ho
            out = y[n, oh]
            for j in range(width):
                out[j] = 0.0
            for a in range(kh):
                src = xp[n, oh * s0 + a * d0]
                for b in range(kw):
                    start = b * d1 * c
                    part = src[start:start + width]
                    weights = kt[a, b]
                    for j in range(width):
                        out[j] += part[j] * weights[j]

    @jit
    def grad_channels(xp, dy, s0, s1, d0, d1, p0, p1, first, last, part, acc):
        # multiplier 1: acc (KH, KW, C) float64 += the contributions of output rows
        # first .. last - 1, summed _GRAD_BLOCK output cells at a time in part
        # (KH, KW, C, xp's dtype: at most 64 float32 terms per sum) and
        # vectorized over channels; taps on the zero padding add nothing
        kh, kw, c = part.shape
        _, ho, wo, _ = dy.shape
        _, hi, wi, _ = xp.shape
        # The taps are the inner loop, the output cells the outer one: a tap's sums
        # are updated once per cell with the other taps' updates in between, where
        # the cells inner made each update wait for the previous one (its store and
        # reload: 3×3, 32 channels on 16 images of 56², 4.9 ms against 1.5). Each
        # tap still adds its cells in increasing order: the same sums.
        for row in range(first, last):
            n = row // ho
            oh = row % ho
            grads = dy[n, oh]
            for block in range(0, wo, _GRAD_BLOCK):
                for a in range(kh):
                    for b in range(kw):
                        for ch in range(c):
                            part[a, b, ch] = 0.0
                for a in range(kh):
                    h = oh * s0 + a * d0 - p0
                    if h < 0 or h >= hi:
                        continue
                    src = xp[n, h]
                    taps = part[a]
                    for ow in range(block, min(wo, block + _GRAD_BLOCK)):
                        grad = grads[ow]
                        for b in range(kw):
                            w = ow * s1 + b * d1 - p1
                            if w < 0 or w >= wi:
                                continue
                            cell = src[w]
                            tap = taps[b]
                            for ch in range(c):
                                tap[ch] += cell[ch] * grad[ch]
                for a in range(kh):
                    for b in range(kw):
                        for ch in range(c):
                            acc[a, b, ch] += part[a, b, ch]

    @jit
    def grad_multiplier(xp, dy, s0, s1, d0, d1, p0, p1, first, last, part, acc):
        # multiplier M > 1: dy (N, HO, WO, C, M), part / acc (KH, KW, C, M);
        # vectorized over the M outputs of each input channel
        kh, kw, c, m = part.shape
        _, ho, wo, _, _ = dy.shape
        _, hi, wi, _ = xp.shape
        for row in range(first, last):
            n = row // ho
            oh = row % ho
            grads = dy[n, oh]
            for block in range(0, wo, _GRAD_BLOCK):
                for a in range(kh):
                    for b in range(kw):
                        for ch in range(c):
                            for j in range(m):
                                part[a, b, ch, j] = 0.0
                for a in range(kh):
                    h = oh * s0 + a * d0 - p0
                    if h < 0 or h >= hi:
                        continue
                    src = xp[n, h]
                    for b in range(kw):
                        lo, up = interior(wi, 1, s1, p1 - b * d1, wo)
                        for ow in range(max(lo, block), min(up, block + _GRAD_BLOCK)):
                            w = ow * s1 + b * d1 - p1
                            for ch in range(c):
                                value = src[w, ch]
                                for j in range(m):
                                    part[a, b, ch, j] += value * grads[ow, ch, j]
                for a in range(kh):
                    for b in range(kw):
                        for ch in range(c):
                            for j in range(m):
                                acc[a, b, ch, j] += part[a, b, ch, j]

    return (forward_channels, forward_multiplier, grad_channels, grad_multiplier,
            forward_one_channel, forward_rows)


def _tap_view(
    xp: np.ndarray, tap: Sequence[int], strides: Sequence[int], dilation: Sequence[int],
    out_size: Sequence[int],
) -> np.ndarray:
    index = tuple(
        slice(k * d, k * d + (o - 1) * s + 1, s)
        for k, s, d, o in zip(tap, strides, dilation, out_size)
    )
    return xp[(slice(None),) + index]


def _as_2d(
    xp: np.ndarray, strides: Sequence[int], dilation: Sequence[int], out_size: Sequence[int],
    kernel_size: Sequence[int],
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Lift a 1-D problem to 2-D with a unit first axis."""
    if len(out_size) == 2:
        return (xp, (strides[0], strides[1]), (dilation[0], dilation[1]),
                (out_size[0], out_size[1]), (kernel_size[0], kernel_size[1]))
    return (xp[:, None], (1, strides[0]), (1, dilation[0]), (1, out_size[0]),
            (1, kernel_size[0]))


def direct(
    xp: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_size: Sequence[int],
    *,
    use_numba: bool | None = None,
    threads: int | None = None,
    padding: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """Depthwise convolution (the dispatch contract with ``groups == C``).

    Parameters
    ----------
    padding
        Zero padding ``(before, after)`` per spatial axis still to apply to
        ``xp`` (negative values crop); the compiled loop skips the taps that
        fall on it instead of copying ``xp``.
    use_numba
        Compiled loop for 1-D and 2-D (``None``: when numba is installed).
    threads
        Worker threads for the compiled loop (default: one per core).

    Examples
    --------
    >>> xp = np.ones((1, 4, 4, 3), np.float32)
    >>> direct(xp, np.ones((3, 3, 1, 6), np.float32), (1, 1), (1, 1), 3, (2, 2)).shape
    (1, 2, 2, 6)
    """
    channels = xp.shape[-1]
    if groups != channels or kernel.shape[-2] != 1:
        raise ValueError(
            f"depthwise needs groups equal to the {channels} input channels and a kernel "
            f"(*K, 1, F), got groups={groups} and kernel {kernel.shape}"
        )
    rank = len(out_size)
    filters = kernel.shape[-1]
    multiplier = filters // channels
    kernels = _numba_kernels() if use_numba is not False and rank <= 2 else None
    if use_numba and kernels is None:
        raise ImportError("use_numba=True needs numba (pip install numba) and rank 1 or 2")
    if kernels is None and padding is not None:
        xp = pad(xp, padding)
    if (kernels is not None and multiplier == 1 and channels <= ROW_MAX_CHANNELS
            and strides[-1] == 1
            and math.prod(kernel.shape[:rank]) * out_size[-1] * channels * xp.dtype.itemsize
            <= ROW_WEIGHT_BYTES):
        return _direct_rows(kernels[5], xp, kernel, strides, dilation, out_size, padding,
                            threads)
    if kernels is not None and channels == 1 and rank == 2 and kernel.shape[:2] == (3, 3):
        # one input channel and M > 1 outputs (a first layer): the input is M times smaller than
        # the output, so a padded copy costs little and no cell needs a bounds check
        x1 = np.ascontiguousarray((pad(xp, padding) if padding is not None else xp)[..., 0])
        k1 = np.ascontiguousarray(kernel.reshape(9, filters))
        y = np.empty((xp.shape[0], *out_size, filters), xp.dtype)
        rows = xp.shape[0] * out_size[0]

        def work_one(first: int, last: int) -> None:
            kernels[4](x1, k1, *strides, *dilation, first, last, y)

        run_chunks(work_one, rows, -(-rows // (2 * worker_count())), threads=threads,
                   flops=_GEMM_EQUIVALENT * y.size * 9, blas=False)
        return y
    if kernels is not None:
        before = [lo for lo, _ in padding] if padding is not None else [0] * rank
        p = (before[0], before[1]) if rank == 2 else (0, before[0])
        x2, s, d, o, taps2 = _as_2d(xp, strides, dilation, out_size, kernel.shape[:rank])
        k2 = kernel if rank == 2 else kernel[None]
        y = np.empty((xp.shape[0], *o, channels, multiplier), xp.dtype)
        x_contiguous = np.ascontiguousarray(x2)
        if multiplier == 1:
            loop = kernels[0]
            k_contiguous = np.ascontiguousarray(k2.reshape(*k2.shape[:2], channels))
            y_cells = y.reshape(y.shape[:-1])
        else:
            loop = kernels[1]
            k_contiguous = np.ascontiguousarray(k2.reshape(*k2.shape[:2], channels, multiplier))
            y_cells = y

        extents = [effective_kernel(taps, rate) for taps, rate in zip(taps2, d)]

        def work(first: int, last: int) -> None:
            loop(x_contiguous, k_contiguous, *s, *d, *p, *extents, first, last, y_cells)

        rows = xp.shape[0] * o[0]
        run_chunks(work, rows, _rows_per_chunk(rows, o[1] * filters * xp.dtype.itemsize),
                   threads=threads,
                   flops=_GEMM_EQUIVALENT * y.size * math.prod(kernel.shape[:rank]),
                   blas=False)
        return y.reshape(xp.shape[0], *out_size, filters)
    return _direct_numpy(xp, kernel, strides, dilation, out_size)


def _direct_numpy(xp: np.ndarray, kernel: np.ndarray, strides: Sequence[int],
                  dilation: Sequence[int], out_size: Sequence[int]) -> np.ndarray:
    """Without compiled loops: one ``einsum`` over a sliding-window view (no copy).

    NumPy's sum-of-products loop reads each window's taps once and writes each
    output once: on one core (CPU time, float32, 5×5 on 2×56²×96) 4.1 ms against
    8.2 for a multiply and an add per tap over whole arrays.
    """
    rank = len(out_size)
    channels = xp.shape[-1]
    multiplier = kernel.shape[-1] // channels
    ksize = kernel.shape[:rank]
    if (rank >= 2 and multiplier == 1 and strides[-1] == 1
            and channels * math.prod(ksize) <= TAP_PASSES_MAX
            and math.prod(ksize) * out_size[-1] * channels * xp.dtype.itemsize
            <= ROW_WEIGHT_BYTES):
        return _direct_tap_passes(xp, kernel, strides, dilation, out_size)
    reach = [effective_kernel(k, d) for k, d in zip(ksize, dilation)]
    windows = np.lib.stride_tricks.sliding_window_view(xp, reach, axis=tuple(range(1, rank + 1)))
    index = ((slice(None),)
             + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_size, strides))
             + (slice(None),)
             + tuple(slice(None, None, d) for d in dilation))
    windows = windows[index]
    cells, taps = "hwd"[:rank], "ijk"[:rank]
    y = np.einsum(f"n{cells}c{taps},{taps}cm->n{cells}cm", windows,
                  kernel.reshape(*ksize, channels, multiplier))
    return np.ascontiguousarray(y, dtype=xp.dtype).reshape(xp.shape[0], *out_size,
                                                           channels * multiplier)


#: Without numba, multiplier-1 layers with unit stride along the last axis and at most
#: this many ``channels × taps`` run one pass per tap (:func:`_direct_tap_passes`), the
#: others one ``einsum``. Measured (one core, CPU time, float32, batch 1, einsum ->
#: passes): 3×3 16 channels on 112² 2.31 -> 0.78 ms, 32 on 56² 0.65 -> 0.38, 64 on 56²
#: 0.79 -> 0.56; 96 on 28² 0.23 -> 0.31 and 5×5 64 on 28² 0.46 -> 0.52 (slower).
TAP_PASSES_MAX = 576

#: Output bytes per block of rows of :func:`_direct_tap_passes` (stays in a core's L2).
TAP_PASSES_BLOCK_BYTES = 256 << 10


def _direct_tap_passes(xp: np.ndarray, kernel: np.ndarray, strides: Sequence[int],
                       dilation: Sequence[int], out_size: Sequence[int]) -> np.ndarray:
    """2-D or 3-D, multiplier 1, stride 1 along the last axis, without numba: per block of output
    rows, one multiply and one add per tap over the whole block. A tap's view of the
    input and its weights repeated along an output row are both contiguous over
    ``width × channels``, so NumPy's loops run over that length, not over the channels
    only (the einsum's inner loop, short with few channels)."""
    rank = len(out_size)
    n, channels = xp.shape[0], xp.shape[-1]
    ksize = tuple(kernel.shape[:rank])
    weights = kernel.reshape(*ksize, channels)
    repeated = np.ascontiguousarray(np.broadcast_to(weights[..., None, :],
                                                    (*ksize, out_size[-1], channels)))
    y = np.empty((n, *out_size, channels), xp.dtype)
    row_bytes = math.prod(out_size[1:]) * channels * xp.dtype.itemsize
    block = max(1, min(out_size[0], TAP_PASSES_BLOCK_BYTES // max(1, row_bytes)))
    scratch = np.empty((block, *out_size[1:], channels), xp.dtype)
    for image in range(n):
        for row0 in range(0, out_size[0], block):
            row1 = min(out_size[0], row0 + block)
            target, spare = y[image, row0:row1], scratch[: row1 - row0]
            for number, tap in enumerate(itertools.product(*(range(k) for k in ksize))):
                index: list[Any] = [image]
                for axis, (k, s, d, o) in enumerate(zip(tap, strides, dilation, out_size)):
                    first, last = (row0, row1) if axis == 0 else (0, o)
                    index.append(slice(first * s + k * d, (last - 1) * s + k * d + 1, s))
                view = xp[tuple(index)]
                if number == 0:
                    np.multiply(view, repeated[tap], out=target)
                else:
                    np.multiply(view, repeated[tap], out=spare)
                    target += spare
    return y


#: Multiplier-1 layers with at most this many channels and stride 1 along the width
#: run a tap at a time over whole rows (:func:`_direct_rows`). Measured (two cores),
#: rows against cell by cell: one channel, 2048², 7×7 dilation 2: 10 ms against 290;
#: 3×3: 2.7 against 6.0 (1 channel), 13 against 26 (3), 17 against 19 (16);
#: 5×5: 5 against 178 (1), 40 against 66 (16); at 32 channels the cell loop, whose
#: channel loop is then long enough to vectorize, is as fast or faster (3×3 40 vs 40,
#: 5×5 107 vs 91).
ROW_MAX_CHANNELS = 16

#: Largest repeated-weights table (taps × output row) for that path, in bytes.
ROW_WEIGHT_BYTES = 4 << 20


def _direct_rows(
    loop: Callable[..., None], xp: np.ndarray, kernel: np.ndarray, strides: Sequence[int],
    dilation: Sequence[int], out_size: Sequence[int],
    padding: Sequence[tuple[int, int]] | None, threads: int | None,
) -> np.ndarray:
    """Few channels, multiplier 1, unit stride along the width: a padded copy (the
    input is no bigger than the output's reach), then one pass per tap over each row."""
    rank = len(out_size)
    if padding is not None:
        xp = pad(xp, padding)
    x2, s, d, o, ks = _as_2d(xp, strides, dilation, out_size, kernel.shape[:rank])
    n, hp, wp, c = x2.shape
    flat = np.ascontiguousarray(x2).reshape(n, hp, wp * c)
    taps = kernel.reshape(*ks, c)
    repeated = np.ascontiguousarray(np.tile(taps, (1, 1, o[1])))  # (KH, KW, WO·C)
    y = np.empty((n, o[0], o[1] * c), xp.dtype)
    rows = n * o[0]

    def work(first: int, last: int) -> None:
        loop(flat, repeated, c, s[0], d[0], d[1], first, last, y)

    run_chunks(work, rows, max(1, -(-rows // (4 * worker_count()))), threads=threads,
               flops=_GEMM_EQUIVALENT * y.size * math.prod(ks), blas=False)
    return y.reshape(n, *out_size, c)


def weight_grad(
    xp: np.ndarray,
    dy: np.ndarray,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    *,
    use_numba: bool | None = None,
    threads: int | None = None,
    padding: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """Kernel gradient of :func:`direct`: ``(*K, 1, F)`` (``padding`` as there).

    With multiplier 1 and the compiled kernels (``use_numba`` not given) the sums run in
    :func:`._llvm_depthwise.grad_module_ir`'s rows (3×3, 32 channels on 16 images of 56²,
    one thread: 2.1 ms by the numba loop, 0.60 by the row kernel); otherwise in the numba
    loop, or NumPy.

    >>> xp = np.ones((1, 5, 2))
    >>> weight_grad(xp, np.ones((1, 3, 2)), (3,), (1,), (1,), 2)[:, 0, :].tolist()
    [[3.0, 3.0], [3.0, 3.0], [3.0, 3.0]]
    """
    channels = xp.shape[-1]
    if groups != channels:
        raise ValueError(f"depthwise needs groups={channels} (the input channels), got {groups}")
    rank = len(kernel_size)
    out_size = dy.shape[1:-1]
    filters = dy.shape[-1]
    multiplier = filters // channels
    if use_numba is None and multiplier == 1 and rank <= 2:
        compiled = _compiled_weight_grad(xp, dy, kernel_size, strides, dilation, padding,
                                         threads)
        if compiled is not None:
            return compiled
    kernels = _numba_kernels() if use_numba is not False and rank <= 2 else None
    if use_numba and kernels is None:
        raise ImportError("use_numba=True needs numba (pip install numba) and rank 1 or 2")
    if kernels is None and padding is not None:
        xp = pad(xp, padding)
    if kernels is not None:
        before = [lo for lo, _ in padding] if padding is not None else [0] * rank
        p = (before[0], before[1]) if rank == 2 else (0, before[0])
        x2, s, d, _, ks = _as_2d(xp, strides, dilation, out_size, kernel_size)
        dy2 = dy if rank == 2 else dy[:, None]
        x_contiguous, dy_contiguous = np.ascontiguousarray(x2), np.ascontiguousarray(dy2)

        sums_shape: tuple[int, ...] = (*ks, channels)
        loop, dy_cells = kernels[2], dy_contiguous
        if multiplier > 1:
            loop, sums_shape = kernels[3], (*ks, channels, multiplier)
            dy_cells = dy_contiguous.reshape(*dy_contiguous.shape[:-1], channels, multiplier)

        # float64 partial sums (a tap's gradient sums over every output cell), added to
        # once per _GRAD_BLOCK cells of an output row; x's dtype where the whole sum has
        # at most _GRAD_BLOCK terms (as many as one block's float32 sums)
        output_cells = math.prod(dy.shape[:-1])
        sums_dtype = xp.dtype if output_cells <= _GRAD_BLOCK else np.dtype(np.float64)

        def partial_sum(first: int, last: int) -> np.ndarray:
            acc = np.zeros(sums_shape, sums_dtype)
            part = np.empty(sums_shape, xp.dtype)
            loop(x_contiguous, dy_cells, *s, *d, *p, first, last, part, acc)
            return acc

        rows = dy2.shape[0] * dy2.shape[1]
        workers = worker_count() if threads is None else threads
        pieces = 4 * workers
        sums_bytes = math.prod(sums_shape) * sums_dtype.itemsize
        if pieces * sums_bytes > (x_contiguous.nbytes + dy.nbytes) // 2:
            # few cells and many channels (1152 on 4²): each piece's sums, alive until
            # they are added, would outweigh the data; one piece a worker
            pieces = workers
        chunk = max(1, -(-rows // pieces))
        flops = _GEMM_EQUIVALENT * dy.size * math.prod(kernel_size)
        partials = run_chunks(partial_sum, rows, chunk, threads=threads, flops=flops,
                              blas=False)
        total = partials[0]
        for partial in partials[1:]:
            total += partial
        return np.asarray(total, xp.dtype).reshape(*kernel_size, 1, filters)
    dk = np.empty((*kernel_size, 1, filters), xp.dtype)
    grad = dy.reshape(*dy.shape[:-1], channels, multiplier)
    cells = "abcd"[: rank + 1]
    for tap in itertools.product(*(range(k) for k in kernel_size)):
        view = _tap_view(xp, tap, strides, dilation, out_size)
        summed = np.einsum(f"{cells}y,{cells}yz->yz", view, grad, optimize=True)
        dk[tap] = summed.reshape(1, filters)
    return dk


#: Input and output-gradient bytes above which the compiled kernel gradient asks for
#: the next output row's data ahead. Below, they stay in the shared cache between calls
#: (or come from the layer before) and the hardware finds them quickly enough: a
#: prefetch per line costs more issue slots than it saves, about one for every two
#: multiply-adds at stride 2. One core, CPU time, busy machine, the thresholds 1 and 4 MiB
#: interleaved in one process, fastest of 16 rounds: 16 images of 14²×192 stride 2 (2.9
#: MB) 0.140 -> 0.131 ms, of 14²×240 stride 2 0.153 -> 0.133, of 7²×576 stride 2 0.123 ->
#: 0.107, of 7²×480 0.219 -> 0.201, one 56²×96 stride 2 0.091 -> 0.078, 8 of 56²×32
#: stride 2 0.155 -> 0.130 (AVX2 0.163 -> 0.133), 4 of 28²×96 float64 0.207 -> 0.183.
#: Larger ones keep it (16 of 28²×144, 14 MB: 0.94 against 1.87 ms without; 4 of 56²×64,
#: 6 MB, with AVX2: 0.41 against 0.47).
GRAD_PREFETCH_BYTES = 4 << 20


def _compiled_weight_grad(
    xp: np.ndarray, dy: np.ndarray, kernel_size: Sequence[int], strides: Sequence[int],
    dilation: Sequence[int], padding: Sequence[tuple[int, int]] | None, threads: int | None,
) -> np.ndarray | None:
    """:func:`weight_grad` with multiplier 1 by the compiled row kernel
    (:func:`._llvm_depthwise.grad_module_ir`; ``None`` where it is not here): the output
    rows split over the workers, each adding its products to float64 sums of its own."""
    from . import _llvm, _llvm_depthwise

    width = _llvm.vector_width(xp.dtype)
    if width == 0 or xp.dtype != dy.dtype or xp.dtype.char not in "fd":
        return None
    rank = len(kernel_size)
    before = [lo for lo, _ in padding] if padding is not None else [0] * rank
    p = (before[0], before[1]) if rank == 2 else (0, before[0])
    out_size = dy.shape[1:-1]
    x2, s, d, _, ks = _as_2d(xp, strides, dilation, out_size, kernel_size)
    dy2 = dy if rank == 2 else dy[:, None]
    channels = x2.shape[-1]
    kernel = _llvm_depthwise.grad_kernel(
        xp.dtype, kernel=ks[1], stride=s[1], dilation=d[1], pad=p[1], in_width=x2.shape[2],
        out_width=dy2.shape[2], lanes=channels % width)
    if kernel is None:
        return None
    x_cells, dy_cells = np.ascontiguousarray(x2), np.ascontiguousarray(dy2)
    blocks = channels // width
    sums_tap = -(-channels // width) * width
    out_rows, rows = dy2.shape[1], dy2.shape[0] * dy2.shape[1]
    x_base, dy_base = x_cells.ctypes.data, dy_cells.ctypes.data
    prefetch = int(x_cells.nbytes + dy_cells.nbytes > GRAD_PREFETCH_BYTES)

    def partial_sum(first: int, last: int) -> np.ndarray:
        sums = np.zeros((ks[0], ks[1], sums_tap))
        kernel.drive(x_base, dy_base, sums.ctypes.data, first, last, out_rows, x2.shape[1],
                     s[0], d[0], p[0], ks[0], blocks, channels, sums_tap, prefetch)
        return sums

    workers = worker_count() if threads is None else threads
    # several pieces a worker, taken in turn: a worker held up (a busy machine) leaves its
    # share to the others; one piece a worker where each piece's sums, alive until they
    # are added, would outweigh the data (1152 channels on 4²)
    flops = _GEMM_EQUIVALENT * dy.size * math.prod(kernel_size)
    pieces = 4 * workers
    if pieces * ks[0] * ks[1] * sums_tap * 8 > (x_cells.nbytes + dy_cells.nbytes) // 2:
        pieces = workers
    if workers == 1 or (threads is None and flops < SMALL_WORK):
        pieces = 1  # run_chunks would run them all here: one call, one set of sums
    partials = run_chunks(partial_sum, rows, max(1, -(-rows // pieces)), threads=threads,
                          flops=flops, blas=False)
    total = partials[0]
    for partial in partials[1:]:
        total += partial
    return np.asarray(total[..., :channels], xp.dtype).reshape(*kernel_size, 1, channels)


def applies(problem: ConvProblem) -> bool:
    """One input channel per group (depthwise, any multiplier)."""
    return problem.groups == problem.in_channels and problem.kernel_shape[-2] == 1


def cost(problem: ConvProblem) -> float:
    """A small fraction of the plain FLOPs: products with inner size 1 waste BLAS.

    Except one input channel with several outputs (a first layer): 0.69,
    just below :mod:`.flat_rows`. :mod:`.register_tiles` is faster there: 6–7×
    with kernels other than 3×3, which have no loop of their own here (5×5 to 16
    outputs, 64×28²: 3.3 against 0.52 ms; 7×7 dilation 2: 7.6 against 1.0), and
    1.4–1.9× at 3×3 (the lesson's first layer, 64×28², 1 -> 32: 0.52 against
    0.73–0.96 ms between other libraries' calls; its output is stored past the
    caches). Above 3×3 it is slower than :mod:`.flat_rows` too (one core,
    ``0.7 × time / flat_rows' time``: 5×5 1.35, 7×7 1.14–1.31; :mod:`.space_to_depth`
    0.21–0.28 on the same layers): 1.3 there.
    """
    if problem.in_channels == 1 and problem.out_channels > 1:
        return problem.flops * (0.69 if math.prod(problem.kernel_size) <= 9 else 1.3)
    return problem.flops * 0.1


register_algorithm("depthwise", direct, applies=applies, cost=cost, weight_grad=weight_grad,
                   pads_zeros=True, weight_grad_cost=gradient_costs.depthwise)


class _TileCall(NamedTuple):
    """One call of a row module's ``drive``: byte offsets of its ``x``, ``w`` and ``y``
    from those arrays' first elements (``x``'s may lie before it: the columns there are
    padding, never read) and the integer fields (:data:`._llvm_depthwise.DRIVE_FIELDS`)."""

    drive: int  #: the address of the module's ``drive``
    x_offset: int
    w_offset: int
    y_offset: int
    fields: tuple[int, ...]


class _TilesPlan(NamedTuple):
    jobs: tuple[tuple[_TileCall, ...], ...]
    #: each job's calls as :func:`._llvm_depthwise.call_runner`'s table: the table (kept
    #: alive here), its address and its number of calls
    tables: tuple[tuple[np.ndarray, int, int], ...]
    runner: Any  #: :func:`._llvm_depthwise.call_runner`
    zero_rows: tuple[tuple[int, int], ...]  #: output rows whose windows lie on padding only
    keep: tuple[Any, ...]  #: the compiled modules (their code lives as long as they do)
    #: every job's calls as rows of :func:`._native_jobs.rows_runner` (the ``drive``'s
    #: address, then the byte offsets of ``x``, ``w`` and ``y``: :func:`_native_rows`
    #: adds the arrays' addresses) and each job's ``(first row, rows)``
    offset_rows: np.ndarray
    spans: tuple[tuple[int, int], ...]


def _even_cuts(total: int, parts: int) -> list[tuple[int, int]]:
    """``[0, total)`` cut into ``parts`` ranges whose lengths differ by at most one."""
    parts = max(1, min(total, parts))
    return [(total * i // parts, total * (i + 1) // parts) for i in range(parts)]


@functools.lru_cache(maxsize=256)
def _tiles_plan(shape: tuple[int, int, int, int], kernel_size: tuple[int, int],
                strides: tuple[int, int], dilation: tuple[int, int],
                pads: tuple[tuple[int, int], tuple[int, int]], out_size: tuple[int, int],
                y_strides: tuple[int, int, int], dtype: np.dtype[Any],
                target: Any, jobs: int, streaming: bool) -> _TilesPlan | None:
    """The calls of :func:`tiles` for one shape (remembered): each output row cut into
    tiles of :func:`._llvm_depthwise.row_cells` cells; a tile whose window overhangs the
    input's left or right edge runs a module compiled without the products on the
    padding, a row whose window overhangs the top or bottom skips those kernel rows;
    every call reads the input where it lies. The output is cut into ``jobs`` jobs of
    equal size: whole images first, then blocks of channels, then rows. Where a job's
    channel blocks run one after another, they do so image by image, and, from
    :data:`TILES_BAND_BLOCKS` groups of blocks on, band by band of rows (:func:`_row_bands`).
    ``None``: no compiled kernels."""
    from . import _llvm_depthwise
    from .register_tiles import _kernel_row_groups

    n, h, w, c = shape
    kh, kw = kernel_size
    s0, s1 = strides
    d0, d1 = dilation
    (top, _), (left, _) = pads
    oh, ow = out_size
    y_image, y_row, y_cell = y_strides
    width = target.width(dtype)
    tail = c % width  # channels of a last, partial vector (masked loads and stores)
    blocks = -(-c // width)
    full = c // width
    cells = _llvm_depthwise.row_cells(kw, ow, target)
    span = window_reach(cells, kw, s1, d1)
    # tiles of a row: runs of tiles evenly spaced and read alike (first cell, tiles, columns)
    runs: list[tuple[int, int, tuple[int, int] | None]] = []
    starts = [t * cells for t in range(-(-ow // cells))]
    starts[-1] = ow - cells
    for start in starts:
        first, end = max(0, left - start * s1), min(span, w + left - start * s1)
        read = None if (first, end) == (0, span) else (first, end) if first < end else (0, 0)
        if runs and runs[-1][2] == read and start == runs[-1][0] + runs[-1][1] * cells:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, read)
        else:
            runs.append((start, 1, read))
    modules = {(read, lanes): _llvm_depthwise.row_kernel(
        dtype, kernel=kw, stride=s1, dilation=d1, cells=cells, target=target,
        streaming=streaming and not lanes, columns_read=read, lanes=lanes)
        for _, _, read in runs for lanes in ([0] if full else []) + ([tail] if tail else [])}
    if any(module is None for module in modules.values()):
        return None
    row_groups = _kernel_row_groups(h, kh, s0, d0, top, oh)
    image_parts = min(n, jobs)
    block_parts = min(blocks, -(-jobs // image_parts))
    row_parts = min(oh, -(-jobs // (image_parts * block_parts)))
    x_image, x_line = h * w * c, w * c
    itemsize = dtype.itemsize
    # up to 3×3 and 256 float32 channels, channel blocks a call runs side by side: the
    # input rows one output row reads, that many blocks wide, stay in the first-level
    # cache for the next output rows, then one image at a time (one core, 3×3, 16 images:
    # 28²×144 0.64 against 0.84 ms, 56²×96 stride 2 1.78 against 1.99). Not above 3×3
    # (16 images of 28²×144 5×5 stride 2: 0.59 against 0.46 ms) nor with wider cells
    # (one 56²×1152 image 5×5: 7.5 against 4.7 ms, each block's pass over every page)
    group = blocks if kh * kw > 9 or c * itemsize > TILES_GROUP_CELL_BYTES else max(
        1, TILES_ROWS_BYTES // (effective_kernel(kh, d0) * w * width * itemsize))
    planned = []
    for (g0, g1), (b0, b1), (r0, r1) in itertools.product(
            _even_cuts(n, image_parts), _even_cuts(blocks, block_parts),
            _even_cuts(oh, row_parts)):
        calls = []
        block_groups = [(b, min(b1, full, b + group)) for b in range(b0, min(b1, full), group)]
        if b1 > full:
            block_groups.append((full, blocks))  # the partial vector
        one_by_one = len(block_groups) > 1
        images = [(g, g + 1) for g in range(g0, g1)] if one_by_one else [(g0, g1)]
        bands = _row_bands(r0, r1, s0 * x_line * itemsize) if (
            len(block_groups) >= TILES_BAND_BLOCKS) else [(r0, r1)]
        for (ga, gb), (q0, q1), (ba, bb) in itertools.product(images, bands, block_groups):
            for ra, rb, a0, a1 in row_groups:
                ra, rb = max(ra, q0), min(rb, q1)
                if ra >= rb or a0 == a1:
                    continue
                for start, count, read in runs:
                    module = modules[read, tail if ba == full else 0]
                    assert module is not None
                    x_offset = (ga * x_image + (ra * s0 - top + a0 * d0) * x_line
                                + (start * s1 - left) * c + ba * width)
                    y_offset = ga * y_image + ra * y_row + start * y_cell + ba * width
                    calls.append(_TileCall(
                        module.address, x_offset * itemsize,
                        (a0 * kw * c + ba * width) * itemsize, y_offset * itemsize,
                        (gb - ga, x_image, y_image, rb - ra, count, (count - 1) * cells,
                         bb - ba, a1 - a0, s0 * x_line, d0 * x_line, c, y_row, y_cell, c)))
        planned.append(tuple(calls))
    zero_rows = tuple((ra, rb) for ra, rb, a0, a1 in row_groups if a0 == a1)
    tables = []
    for job_calls in planned:
        table = np.array([(call.drive, call.x_offset, call.w_offset, call.y_offset, *call.fields)
                          for call in job_calls], np.int64).reshape(-1)
        table.flags.writeable = False
        tables.append((table, table.ctypes.data, len(job_calls)))
    runner = _llvm_depthwise.call_runner(target)
    if runner is None:
        return None
    offset_rows = np.concatenate([table for table, _, _ in tables]).reshape(
        -1, _llvm_depthwise.CALL_VALUES)
    offset_rows.flags.writeable = False
    edges = list(itertools.accumulate((count for _, _, count in tables), initial=0))
    spans = tuple((first, last - first) for first, last in zip(edges, edges[1:]))
    return _TilesPlan(tuple(planned), tuple(tables), runner, zero_rows,
                      tuple(modules.values()), offset_rows, spans)


def _native_rows(plan: _TilesPlan, x: np.ndarray, weights: np.ndarray, y: np.ndarray
                 ) -> np.ndarray:
    """The plan's calls as rows of :func:`._native_jobs.rows_runner`, at these arrays'
    addresses (the offsets plus each array's address)."""
    rows = plan.offset_rows.copy()
    rows[:, 1] += x.ctypes.data
    rows[:, 2] += weights.ctypes.data
    rows[:, 3] += y.ctypes.data
    return rows


#: Bytes of the input rows that one output row of :func:`tiles` reads, for the channel
#: blocks one call runs side by side (about half a core's first-level cache).
TILES_ROWS_BYTES = 16 << 10

#: ... where the cells have at most this many bytes (see :func:`_tiles_plan`).
TILES_GROUP_CELL_BYTES = 1024

#: Most bytes of input rows that the channel blocks of :func:`tiles` pass over one after
#: another (about half a core's second-level cache): an image whose rows read more is cut
#: into bands of output rows, and every block runs over one band before the next, so the
#: later blocks find the band's rows in that cache instead of reading the image again
#: from the shared cache or memory. Busy machine (load 7-13 on 2 cores), 16 images of
#: 56²×96 3×3 stride 2 (1.2 MB an image, 6 blocks), interleaved in one process, fastest
#: tenth of the calls: two threads 2.38 -> 2.11, 2.39 -> 2.10, 2.20 -> 2.05, 2.47 -> 2.15 ms
#: (both threads' CPU time 2.70 -> 2.41), one core 3.17 -> 2.67, 2.42 -> 2.15.
TILES_BAND_BYTES = 512 << 10

#: ... where a job runs at least this many groups of channel blocks one after another
#: (each group a pass over the image's rows that the band saves from the shared cache):
#: one core, 16 images of 56²×144 (9 groups) 0.93-0.95 of the time, 8 of 56²×64 (4)
#: 0.98-0.99; but 4 of 112²×32 (2 groups) 1.26-1.28, not cut.
TILES_BAND_BLOCKS = 4


def _row_bands(first: int, last: int, row_bytes: int) -> list[tuple[int, int]]:
    """Output rows ``[first, last)`` cut into bands of equal size whose input rows (``row_bytes``
    an output row) fit :data:`TILES_BAND_BYTES`; one band where they all do.

    >>> _row_bands(0, 28, 2 * 56 * 96 * 4), _row_bands(0, 28, 28 * 144 * 4)
    ([(0, 9), (9, 18), (18, 28)], [(0, 28)])
    """
    rows = max(0, last - first)
    per_band = max(1, TILES_BAND_BYTES // max(1, row_bytes))
    return [(first + a, first + b) for a, b in _even_cuts(rows, -(-rows // per_band))] or [
        (first, last)]


#: Least work (FLOPs) of one job of :func:`tiles` on several threads (about 30 µs of a
#: core, against ~10 µs to hand a job to a helper thread that the caller does not wait
#: for if it is late): smaller layers run on the calling thread alone (one 56²×32 image
#: 3×3, 21 µs of kernels); 16 images of 4²×960 3×3 (60 µs) run as two jobs.
TILES_JOB_FLOPS = 2_000_000

#: Jobs per thread of a layer of at least :data:`TILES_JOB_FLOPS` per job: a thread that
#: starts late or is slowed by another process leaves its share to the others.
TILES_JOBS_PER_WORKER = 2

#: Least work (FLOPs) of a layer that :func:`tiles` splits over several threads at all
#: (about 150 µs of a core): a helper woken for a job needs the interpreter's lock,
#: which the caller holds until its own job starts, and on a virtual machine one that
#: slept for it starts ~0.1 ms late, so smaller layers ran slower on two threads than
#: on one (quiet machine, 2 threads, 16 images, 3×3: 4²×1152 0.139 ms, 7²×480 0.141,
#: 7²×384 0.145, 14²×192 0.195, 5.3-8.1 MFLOP; one core, busy machine: 0.081, 0.095,
#: 0.083, 0.138), larger ones faster (56²×96 stride 2: 0.67 against 1.87; 28²×144 0.46
#: against 1.36; 5×5 14²×240 0.29 against 0.34; 56²×32, 14.5 MFLOP, 0.35-0.38 against
#: 0.33-0.40).
TILES_THREADED_FLOPS = 12_000_000

#: ... or of at least this much work (FLOPs) where the input has at least
#: :data:`TILES_THREADED_INPUT_BYTES`: past a core's second-level cache it comes from the
#: shared cache or memory whichever core reads it, so a second core adds its bandwidth
#: and nothing moves between the cores' caches. Measured on two cores (wall time, busy
#: machine, real-time priority, fastest of 60 calls in each of 4 interleaved rounds,
#: one thread against two): 16 images of 28²×144 stride 2 (8.1 MFLOP, 7.2 MB) 0.32
#: against 0.21 ms; 4 of 56²×96 stride 2 (5.4 MFLOP) 0.27 against 0.21; 16 of 28²×96
#: stride 2 0.133 against 0.119; one 56²×576 stride 2 0.30 against 0.27. Smaller inputs
#: stay on one thread: 16 of 7²×480 (6.8 MFLOP, 1.5 MB) 0.092 against 0.123, 16 of 7²×672
#: 5×5 stride 2 0.109 against 0.132, 8 of 28²×144 stride 2 (3.6 MB) 0.133 against 0.151.
TILES_THREADED_LARGE_FLOPS = 4_000_000

#: Input bytes from which :data:`TILES_THREADED_LARGE_FLOPS` applies (4 MiB).
TILES_THREADED_INPUT_BYTES = 4 << 20


def _tiles_threaded(flops: float, input_bytes: int) -> bool:
    """Whether :func:`tiles` shares a layer of ``flops`` FLOPs reading ``input_bytes``
    among threads (:data:`TILES_THREADED_FLOPS`, :data:`TILES_THREADED_LARGE_FLOPS`).

    >>> _tiles_threaded(8.1e6, 7_225_344), _tiles_threaded(6.8e6, 1_505_280)
    (True, False)
    """
    return flops >= TILES_THREADED_FLOPS or (
        flops >= TILES_THREADED_LARGE_FLOPS and input_bytes >= TILES_THREADED_INPUT_BYTES)


def tiles(
    xp: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_size: Sequence[int],
    *,
    padding: Sequence[tuple[int, int]] | None = None,
    threads: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Depthwise convolution (multiplier 1) on the compiled row kernels of
    :mod:`._llvm_depthwise`, reading the input where it lies.

    Each output row is cut into tiles of neighbouring cells, one vector of channels
    each (a last, partial vector by masked loads and stores), summed in registers while
    each input column is loaded once per kernel row.
    Zero padding is never copied: a tile at the left or right edge runs a module
    compiled without the products that would fall on it, a row at the top or bottom
    runs only the kernel rows that meet the input. Everything but the values (the
    calls and where they read) is worked out once per shape (:func:`_tiles_plan`).
    The work is cut into equal jobs for the threads: whole images, else blocks of
    channels (a small image with many channels), else rows.

    ``padding``: zeros still to add (negative: crops); ``out``: written there
    (``(N, *out_size, C)`` of ``xp``'s dtype, channels contiguous) and returned.

    >>> x = np.ones((1, 6, 6, 16), np.float32)
    >>> k = np.ones((5, 5, 1, 16), np.float32)
    >>> y = tiles(x, k, (1, 1), (1, 1), 16, (6, 6), padding=((2, 2), (2, 2))) if _llvm_here() else np.full((1, 6, 6, 16), 9.0)
    >>> float(y[0, 0, 0, 3]), float(y[0, 2, 3, 3])
    (9.0, 25.0)
    """
    from . import _llvm

    rank = len(out_size)
    c = xp.shape[-1]
    dtype = np.dtype(xp.dtype)
    target = _llvm.vector_target()
    width = target.width(dtype) if target.runs_here and dtype.char in "fd" else 0
    if rank not in (1, 2) or groups != c or kernel.shape[-2:] != (1, c) or not width:
        raise ValueError(f"depthwise_tiles needs a 1-D or 2-D depthwise convolution with "
                         f"multiplier 1 ({dtype}, compiled kernels here), got rank {rank}, "
                         f"groups={groups}, kernel {kernel.shape} for {c} channels")
    if rank == 1:
        y = tiles(xp[:, None], kernel[None], (1, *strides), (1, *dilation), groups,
                  (1, *out_size), threads=threads,
                  padding=None if padding is None else ((0, 0), *padding),
                  out=None if out is None else out[:, None])
        return y[:, 0]
    x = np.ascontiguousarray(xp)
    n = x.shape[0]
    oh, ow = out_size
    itemsize = dtype.itemsize
    if out is not None and (out.shape != (n, oh, ow, c) or out.dtype != dtype
                            or out.strides[-1] != itemsize
                            or any(st % itemsize for st in out.strides)):
        if out.shape != (n, oh, ow, c):
            raise ValueError(f"out has shape {out.shape}, expected {(n, oh, ow, c)}")
        out[...] = tiles(x, kernel, strides, dilation, groups, out_size, padding=padding,
                         threads=threads)
        return out
    if n * oh * ow == 0 or c == 0:
        y0 = np.zeros((n, oh, ow, c), dtype) if out is None else out
        y0[...] = 0
        return y0
    size = n * oh * ow * c * itemsize
    vector_bytes = width * itemsize
    may_stream = size >= TILES_STREAM_BYTES and vector_bytes % 64 == 0
    if out is not None:
        y = out
    else:
        y = aligned_empty((n, oh, ow, c), dtype) if may_stream else np.empty((n, oh, ow, c),
                                                                             dtype)
    streaming = (may_stream and y.ctypes.data % vector_bytes == 0
                 and all(st % vector_bytes == 0 for st in y.strides[:3]))
    workers = threads if threads is not None else worker_count()
    kh, kw = kernel.shape[:2]
    flops = 2 * n * oh * ow * c * kh * kw
    jobs = 1 if workers == 1 or not _tiles_threaded(flops, x.nbytes) else max(1, min(
        workers * TILES_JOBS_PER_WORKER, int(flops // TILES_JOB_FLOPS)))
    pads = ((0, 0), (0, 0)) if padding is None else (
        (int(padding[0][0]), int(padding[0][1])), (int(padding[1][0]), int(padding[1][1])))
    plan = _tiles_plan(x.shape, (kh, kw), (int(strides[0]), int(strides[1])),
                       (int(dilation[0]), int(dilation[1])), pads, (int(oh), int(ow)),
                       (y.strides[0] // itemsize, y.strides[1] // itemsize,
                        y.strides[2] // itemsize), dtype, target, jobs, streaming)
    assert plan is not None
    weights = kernel if kernel.flags.c_contiguous and kernel.dtype == dtype else (
        np.ascontiguousarray(kernel, dtype))
    for r0, r1 in plan.zero_rows:
        y[:, r0:r1] = 0
    tables = plan.tables
    if not tables:  # no cell reads the input (written above as zeros)
        return y
    if len(tables) > 1:
        # on the spinning helpers without the interpreter's lock: a helper that starts
        # late leaves its jobs to the others instead of being waited for
        from . import _llvm_depthwise, _native_jobs, _spin

        native = _native_jobs.rows_runner(3, len(_llvm_depthwise.DRIVE_FIELDS))
        if native is not None and _spin.spinner() is not None and \
                _spin.spin_microseconds() > 0:
            run_native_jobs(native, _native_rows(plan, x, weights, y), list(plan.spans),
                            threads=workers)
            return y
    run = _table_runs(plan.runner, x, weights, y, tables)
    if len(tables) == 1:
        run(0, 1)
    else:
        run_chunks(run, len(tables), 1, threads=workers, blas=False)
    return y


def _table_runs(runner: Any, x: np.ndarray, weights: np.ndarray, y: np.ndarray,
                tables: Sequence[tuple[np.ndarray, int, int]]) -> Callable[[int, int], None]:
    """``run(first, last)``: the jobs ``tables[first:last]`` of a plan, by ``runner`` (a
    :class:`._llvm_depthwise.CallRunner`) on these arrays: through numba where it is
    there (the arrays' addresses read as numba takes them), else by ctypes."""
    call = runner.call
    if call is not None:
        def run(first: int, last: int) -> None:
            for table, _, count in tables[first:last]:
                call(x, weights, y, table, count)

        return run
    drive = runner.drive
    x_base, w_base, y_base = x.ctypes.data, weights.ctypes.data, y.ctypes.data

    def run_by_ctypes(first: int, last: int) -> None:
        for _, table, count in tables[first:last]:
            drive(x_base, w_base, y_base, table, count)

    return run_by_ctypes


#: Outputs of at least this many bytes are stored past the caches (non-temporal stores),
#: as :data:`.register_tiles.STREAM_BYTES`.
TILES_STREAM_BYTES = 2 << 20


def _llvm_here() -> bool:
    from . import _llvm

    return _llvm.available(np.float32)


def applies_tiles(problem: ConvProblem) -> bool:
    """1-D or 2-D depthwise with multiplier 1, on a machine with the compiled kernels."""
    from . import _llvm

    return (problem.rank in (1, 2) and problem.groups == problem.in_channels > 1
            and problem.out_channels == problem.in_channels
            and _llvm.available(problem.dtype))


def cost_tiles(problem: ConvProblem) -> float:
    """``0.06 × FLOPs`` up to 3×3, ``0.04 × FLOPs`` above: below
    :func:`.register_tiles.cost_depthwise` everywhere (the same kernels with copies and
    ~20 µs more per call) and below this module's loop (``0.1 × FLOPs``).

    Measured on one core (CPU time, busy machine, AVX-512, float32, 45 random layers
    of 16-1152 channels on 4²-112², batch 1 and 16, 3×3-7×7, strides 1-2, dilation 1-2;
    the loop's time over this one's): above 3×3 1.6-6.2 from 1 MFLOP (16 images of
    14²×32 5×5: 0.077 against 0.48 ms); 3×3 1.5-2.6 on mid-sized layers (one 56²×576
    image: 0.58 against 1.52 ms; 16 images of 14²×384 stride 2: 0.15 against 0.23),
    0.9-1.0 on layers past the caches (16 images of 56²×96: 3.85 against 3.56 ms; of
    28²×240: 2.36 against 2.34). A call costs ~12 µs, the loop's ~20 µs (one 4²×16
    image, 3×3: 12.6 against 22.7 µs; one 7²×576 image: 18 against 36 µs).

    With AVX2 (16 registers, half-line vectors, no streaming stores) 3×3 layers of more
    than 4 vectors of channels past :data:`TILES_AVX2_LARGE_BYTES` of input run the
    loop faster: ``0.2 × FLOPs`` there (one core, CPU time, float32, 16 images:
    56²×96 stride 2 4.1 against 2.2 ms, 28²×144 2.6 against 1.6; but 56²×32 1.46
    against 1.89, 7²×480 0.11 against 0.26, 14²×240 stride 2 0.12 against 0.16).

    Channels that end in a partial vector count as whole vectors (masked loads and
    stores run the last one). Fewer channels than one vector cost at most
    :data:`FEW_CHANNELS_SHARE` of this module's loop (``0.1 × FLOPs``), whose time per
    FLOP grows there too: one core, CPU time, busy machine, AVX-512, float32, the loop's
    time over this one's: 3×3 on 16 images of 56² with 2, 4, 8 channels 1.20, 1.41,
    2.55 (8: 0.395 against 0.155 ms); 5×5 on 4 images of 56²×4 1.53; 3×3 on 16 of
    28²×3 1.77; stride 2 on one 112²×4 image 3.26; float64 1.7-5.1. Not with AVX2 at
    3×3 stride 1, where the loop is faster (16 images of 56² with 4 and 6 channels,
    0.25 and 0.34 against 0.29 and 0.47 ms; but 5×5 and stride 2 as with AVX-512).
    """
    from . import _llvm

    target = _llvm.vector_target()
    width = target.width(problem.dtype) or 1
    channels = problem.in_channels
    flops = problem.flops * (-(-channels // width) * width) / max(1, channels)
    if math.prod(problem.kernel_size) > 9:
        share = flops * 0.04
    else:
        input_bytes = math.prod(problem.input_shape) * problem.dtype.itemsize
        large = channels > 4 * width and input_bytes > TILES_AVX2_LARGE_BYTES
        share = flops * (0.2 if target.registers < 32 and large else 0.06)
    avx2_3x3 = target.registers < 32 and math.prod(problem.kernel_size) <= 9 and max(
        problem.strides) == 1
    if channels < width and not avx2_3x3:
        return min(share, FEW_CHANNELS_SHARE * cost(problem))
    return share


#: Of the loop's cost, the most :func:`cost_tiles` charges for fewer channels than a vector.
FEW_CHANNELS_SHARE = 0.8


#: Input bytes from which AVX2's 3×3 layers of many channels cost more (:func:`cost_tiles`).
TILES_AVX2_LARGE_BYTES = 4 << 20


register_algorithm("depthwise_tiles", tiles, applies=applies_tiles, cost=cost_tiles,
                   pads_zeros=True)


def transposed(
    x: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    padding: Sequence[tuple[int, int]],
    out_size: Sequence[int],
    *,
    threads: int | None = None,
) -> np.ndarray:
    """Depthwise transposed convolution (multiplier 1, 2-D) by output phases: no zeros
    inserted (the input gradient of a strided depthwise layer).

    Output cells ``o = r + S·j`` of phase ``r`` (per axis) meet real input cells only
    through the taps :func:`.phase.phase_taps` gives, every ``S / gcd(S, D)``-th tap,
    reading input cells ``D / gcd(S, D)`` apart: each phase is a stride-1 depthwise
    convolution of the original input with those taps of the flipped kernel, run by
    :func:`tiles`, which writes it in its interleaved place, where the compiled kernels
    run and there are several channels (else the cheaper of :mod:`.register_tiles`'
    depthwise kernels and this module's loop, then copied there); all read the input in
    place, zero padding and crops included.
    Phases that no tap reaches are zeros.

    >>> x = np.arange(1.0, 4.0).reshape(1, 1, 3, 1)
    >>> k = np.array([1.0, 10.0]).reshape(1, 2, 1, 1)   # (K, F/g, C)
    >>> transposed(x, k, (1, 2), (1, 1), 1, ((0, 0), (1, 1)), (1, 6))[0, 0, :, 0]
    array([ 1., 10.,  2., 20.,  3., 30.])
    """
    from . import register_tiles
    from .phase import phase_taps

    channels = x.shape[-1]
    if len(out_size) != 2 or groups != channels or kernel.shape[-2:] != (1, channels):
        raise ValueError(f"depthwise_phases needs a 2-D depthwise transposed convolution with "
                         f"multiplier 1, got groups={groups} and kernel {kernel.shape} for "
                         f"{channels} channels and output size {tuple(out_size)}")
    dtype = np.dtype(x.dtype)
    if applies_tiles(ConvProblem((1, 1, 1, channels), (1, 1, 1, channels), (1, 1), (1, 1),
                                 channels, (1, 1), dtype)):
        return _phases_on_tiles(np.ascontiguousarray(x), kernel, strides, dilation, padding,
                                out_size, threads)
    flipped = kernel[::-1, ::-1]
    y = np.empty((x.shape[0], *out_size, channels), x.dtype)
    phases = [[phase_taps(r, s, d, lo, k) for r in range(min(s, o))]
              for s, d, (lo, _), k, o in zip(strides, dilation, padding, kernel.shape[:2],
                                             out_size)]
    for (r0, taps0), (r1, taps1) in itertools.product(*(enumerate(p) for p in phases)):
        target = y[:, r0::strides[0], r1::strides[1]]
        if not taps0 or not taps1:
            target[...] = 0
            continue
        sub = np.ascontiguousarray(flipped[[t for t, _ in taps0]][:, [t for t, _ in taps1]])
        steps = tuple(taps[1][1] - taps[0][1] if len(taps) > 1 else 1
                      for taps in (taps0, taps1))
        pads = tuple((-taps[0][1], n + taps[-1][1] - size)
                     for taps, n, size in zip((taps0, taps1), target.shape[1:3],
                                              x.shape[1:3]))
        problem = ConvProblem((x.shape[0], *(size + lo + hi for size, (lo, hi)
                                             in zip(x.shape[1:3], pads)), channels),
                              sub.shape, (1, 1), steps, channels, target.shape[1:3], x.dtype)
        if register_tiles.applies_depthwise(problem) and (
                register_tiles.cost_depthwise(problem) < cost(problem)):
            register_tiles.depthwise(x, sub, (1, 1), steps, channels, target.shape[1:3],
                                     padding=pads, threads=threads, out=target)
        else:
            target[...] = direct(x, sub, (1, 1), steps, channels, target.shape[1:3],
                                 padding=pads, threads=threads)
    return y


class _PhasesPlan(NamedTuple):
    gather: np.ndarray  #: flat indices into the flipped kernel: every phase's taps, packed
    #: output rows ``start:stop:step``, columns ``first::strides[1]`` to fill with zeros
    #: (phases no tap reaches, rows of a phase whose windows lie on padding only)
    zeros: tuple[tuple[int, int, int, int], ...]
    tables: tuple[tuple[np.ndarray, int, int], ...]  #: as :class:`_TilesPlan`'s
    runner: Any
    keep: tuple[Any, ...]


@functools.lru_cache(maxsize=128)
def _phases_plan(shape: tuple[int, int, int, int], kernel_size: tuple[int, int],
                 strides: tuple[int, int], dilation: tuple[int, int],
                 padding: tuple[tuple[int, int], tuple[int, int]], out_size: tuple[int, int],
                 dtype: np.dtype[Any], target: Any, jobs: int, streaming: bool
                 ) -> _PhasesPlan | None:
    """Every output phase of :func:`transposed` as :func:`_tiles_plan`'s calls, in one list
    (remembered per shape): each phase's taps of the flipped kernel packed one phase after
    another (``gather``), its calls pointed at them and at its cells of the output."""
    from .phase import phase_taps

    n, h, w, c = shape
    kh, kw = kernel_size
    oh, ow = out_size
    itemsize = dtype.itemsize
    phases = [[phase_taps(r, st, d, lo, k) for r in range(min(st, o))]
              for st, d, (lo, _), k, o in zip(strides, dilation, padding, kernel_size, out_size)]
    gather: list[np.ndarray] = []
    packed = 0
    zeros = []
    tables = []
    keep: list[Any] = []
    runner = None
    for (r0, taps0), (r1, taps1) in itertools.product(*(enumerate(p) for p in phases)):
        if not taps0 or not taps1:
            zeros.append((r0, oh, strides[0], r1))
            continue
        rows = np.array([t for t, _ in taps0])
        columns = np.array([t for t, _ in taps1])
        # the flipped kernel's tap (a, b) is the kernel's (kh - 1 - a, kw - 1 - b)
        flat = ((kh - 1 - rows)[:, None] * kw + (kw - 1 - columns)[None, :]).ravel()
        gather.append((flat[:, None] * c + np.arange(c)).ravel())
        steps = tuple(taps[1][1] - taps[0][1] if len(taps) > 1 else 1
                      for taps in (taps0, taps1))
        size = (len(range(r0, oh, strides[0])), len(range(r1, ow, strides[1])))
        pads = tuple((-taps[0][1], count + taps[-1][1] - extent)
                     for taps, count, extent in zip((taps0, taps1), size, (h, w)))
        plan = _tiles_plan(shape, (len(taps0), len(taps1)), (1, 1), (steps[0], steps[1]),
                           ((pads[0][0], pads[0][1]), (pads[1][0], pads[1][1])), size,
                           (oh * ow * c, strides[0] * ow * c, strides[1] * c), dtype, target,
                           jobs, streaming)
        if plan is None:
            return None
        runner = plan.runner
        keep.append(plan)
        shift = (r0 * ow + r1) * c * itemsize
        zeros.extend((r0 + ra * strides[0], r0 + rb * strides[0], strides[0], r1)
                     for ra, rb in plan.zero_rows)
        for job in plan.jobs:
            table = np.array([(call.drive, call.x_offset, call.w_offset + packed * itemsize,
                               call.y_offset + shift, *call.fields) for call in job],
                             np.int64).reshape(-1)
            table.flags.writeable = False
            tables.append((table, table.ctypes.data, len(job)))
        packed += len(flat) * c
    index = np.concatenate(gather) if gather else np.zeros(0, np.intp)
    index.flags.writeable = False
    return _PhasesPlan(index, tuple(zeros), tuple(tables), runner, tuple(keep))


def _phases_on_tiles(x: np.ndarray, kernel: np.ndarray, strides: Sequence[int],
                     dilation: Sequence[int], padding: Sequence[tuple[int, int]],
                     out_size: Sequence[int], threads: int | None) -> np.ndarray:
    """:func:`transposed` where :func:`tiles` runs every phase: one list of calls."""
    from . import _llvm

    n, _, _, c = x.shape
    dtype = np.dtype(x.dtype)
    oh, ow = (int(v) for v in out_size)
    vector_bytes = _llvm.vector_width(dtype) * dtype.itemsize
    streaming = (n * oh * ow * c * dtype.itemsize >= TILES_STREAM_BYTES
                 and vector_bytes % 64 == 0 and (c * dtype.itemsize) % vector_bytes == 0)
    y = aligned_empty((n, oh, ow, c), dtype) if streaming else np.empty((n, oh, ow, c), dtype)
    if n * oh * ow == 0:
        return y
    workers = threads if threads is not None else worker_count()
    flops = 2 * n * oh * ow * c * kernel.shape[0] * kernel.shape[1] // max(
        1, strides[0] * strides[1])
    jobs = 1 if workers == 1 or not _tiles_threaded(flops, x.nbytes) else max(1, min(
        workers * TILES_JOBS_PER_WORKER, int(flops // TILES_JOB_FLOPS)))
    plan = _phases_plan(x.shape, (int(kernel.shape[0]), int(kernel.shape[1])),
                        (int(strides[0]), int(strides[1])), (int(dilation[0]), int(dilation[1])),
                        ((int(padding[0][0]), int(padding[0][1])),
                         (int(padding[1][0]), int(padding[1][1]))), (oh, ow), dtype,
                        _llvm.vector_target(), jobs, streaming)
    assert plan is not None
    for start, stop, step, first in plan.zeros:
        y[:, start:stop:step, first::strides[1]] = 0
    weights = np.ascontiguousarray(kernel, dtype).reshape(-1)[plan.gather]
    tables = plan.tables
    if not tables:  # every output cell is a zero the padding gives (written above)
        return y
    run_chunks(_table_runs(plan.runner, x, weights, y, tables), len(tables), 1,
               threads=workers if len(tables) > 1 else 1, blas=False)
    return y


def applies_transposed(problem: ConvProblem) -> bool:
    """2-D, one input and one output channel per group, a stride above 1."""
    return (problem.rank == 2 and problem.groups == problem.in_channels
            and problem.kernel_shape[-2:] == (1, problem.in_channels)
            and any(s > 1 for s in problem.strides))


def cost_transposed(problem: ConvProblem) -> float:
    """``0.3 ×`` the products that meet real cells (``problem.flops`` counts every tap at
    every cell of the zero-inserted grid, of which ``1 / prod(strides)`` meet an input
    cell) and ``120 000`` a phase (~60 µs of Python and copies), against the grid way's
    ``0.1 × problem.flops`` on this module's loop.

    Measured on one core (CPU time, float32, 3×3 stride 2, the input gradient of
    MobileNetV2's layers; phases against the grid, in ms): 16 images of 56²×144 5.2
    against 7.7, of 14²×576 1.0 against 2.2, 4 images of 56²×144 1.5 against 1.8, but
    one image of 56²×144 0.50 against 0.31, of 28²×192 0.40 against 0.16. Without the
    row kernels (``CONVARITH_JIT=0``, or channels that do not fill whole vectors) the
    phases' kernels above 1×1 but not 3×3 run this module's loop cell by cell: ``0.6 ×``
    (4 images of 56²×144: 3.0 against 1.8 ms; 16 of 14²×576 2.0 against 2.7).

    Where :func:`tiles` runs the phases (channels in whole vectors: every phase's calls
    in one list, :func:`_phases_plan`) and the grid way too (at ``0.06 ×
    problem.flops``): ``0.09 ×`` the real products and ``30 000`` a phase. Measured on
    one core (CPU time, busy machine, AVX-512, float32, stride 2; phases against the
    grid, in ms): 16 images of 56²×96 3×3 1.05 against 5.70, of 28²×144 5×5 1.41
    against 3.28, of 14²×192 0.13 against 0.21, of 7²×576 0.12 against 0.21, one
    image of 56²×96 0.073 against 0.155; but one of 7²×576 0.039 against 0.028, of
    7²×672 5×5 0.077 against 0.050.
    """
    from . import _llvm

    phases = math.prod(problem.strides)
    width = _llvm.vector_width(problem.dtype)
    rows = _llvm.available(problem.dtype) and width > 0 and problem.in_channels % width == 0
    if rows:
        return 0.09 * problem.flops / phases + 30_000 * phases
    return 0.6 * problem.flops / phases + 120_000 * phases


register_algorithm("depthwise_phases", transposed, applies=applies_transposed,
                   cost=cost_transposed, kind="transposed")
