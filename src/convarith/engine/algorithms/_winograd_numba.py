"""The compiled loops of :mod:`.winograd` (numba): the input, output and kernel
transforms of F(2×2, 3×3) and F(4×4, 3×3), and the weight gradient's transform.

Used by :func:`.winograd._numba_kernels` where numba is installed (:data:`AVAILABLE`). The
helpers are module globals, not closures: numba's on-disk cache keys a function by
its closure's contents, which for a compiled helper differ in every process (each
first call then compiled the transforms again, ~8 s).

Examples
--------
>>> tile_origin(5, 2, 2, 1, 1, 4)
(1, 0, 4)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

njit: Any
try:
    from numba import njit
except ImportError:  # the dispatcher imports every algorithm module: import without numba
    njit = None

#: Whether the loops below are compiled (numba installed); without numba they are plain
#: Python functions, never called (:func:`.winograd._numba_kernels` finds none).
AVAILABLE = njit is not None


def _compiled(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``numba.njit(**options)``, or the function unchanged without numba."""
    if njit is None:
        return lambda function: function
    return njit(**options)


__all__ = ["input_transform", "output_transform", "kernel_transform", "input_transform_f4",
           "output_transform_f4", "gradient_transform_f4", "kernel_transform_rows",
           "tile_origin", "AVAILABLE"]

@_compiled(inline="always")
def tile_origin(t, th, tw, d0, d1, m):
    # tile t (m×m outputs) -> (image, first output row, first output column) of its
    # dilation phase; the tile's cell (i, j) is (row + d0·i, column + d1·j)
    tx = t % tw
    q1 = t // tw
    ty = q1 % th
    q2 = q1 // th
    p1 = q2 % d1
    q3 = q2 // d1
    return q3 // d0, q3 % d0 + d0 * ty * m, p1 + d1 * tx * m

@_compiled(nogil=True, cache=True)
def input_transform(xp, bt, m, d0, d1, th, tw, first, v, column, count):
    # tiles first .. first + count - 1 into v[:, column + t - first]
    _, hp, wp, c = xp.shape
    a = bt.shape[0]
    tile = np.zeros((a, a, c), dtype=xp.dtype)
    rows = np.zeros((a, a, c), dtype=xp.dtype)
    for t in range(first, first + count):
        n, h0, w0 = tile_origin(t, th, tw, d0, d1, m)
        tile[:] = 0.0
        for i in range(a):
            h = h0 + d0 * i
            if h >= hp:
                break
            for j in range(a):
                w = w0 + d1 * j
                if w >= wp:
                    break
                tile[i, j, :] = xp[n, h, w, :]
        rows[:] = 0.0
        for u in range(a):
            for i in range(a):
                coef = bt[u, i]
                if coef != 0.0:
                    for j in range(a):
                        for ch in range(c):
                            rows[u, j, ch] += coef * tile[i, j, ch]
        for u in range(a):
            for w_ in range(a):
                out = v[u * a + w_, column + t - first]
                out[:] = 0.0
                for j in range(a):
                    coef = bt[w_, j]
                    if coef != 0.0:
                        for ch in range(c):
                            out[ch] += coef * rows[u, j, ch]

@_compiled(nogil=True, cache=True)
def output_transform(prod, at, m, d0, d1, th, tw, first, y):
    _, ho, wo, f = y.shape
    a = at.shape[1]
    rows = np.zeros((m, a, f), dtype=y.dtype)
    for t in range(first, first + prod.shape[1]):
        n, h0, w0 = tile_origin(t, th, tw, d0, d1, m)
        rows[:] = 0.0
        for u in range(m):
            for i in range(a):
                coef = at[u, i]
                if coef != 0.0:
                    for j in range(a):
                        src = prod[i * a + j, t - first]
                        for ch in range(f):
                            rows[u, j, ch] += coef * src[ch]
        for u in range(m):
            oh = h0 + d0 * u
            if oh >= ho:
                break
            for w_ in range(m):
                ow = w0 + d1 * w_
                if ow >= wo:
                    break
                out = y[n, oh, ow]
                out[:] = 0.0
                for j in range(a):
                    coef = at[w_, j]
                    if coef != 0.0:
                        for ch in range(f):
                            out[ch] += coef * rows[u, j, ch]

@_compiled(nogil=True, cache=True)
def kernel_transform(kernel, g, f0, c0, c1, u):
    # u[x·a + w, c, f] = Σ_ij g[x, i] kernel[i, j, c, f0 + f] g[w, j] for the input
    # channels c0 <= c < c1, summed in float64
    r = kernel.shape[0]
    f = u.shape[2]
    a = g.shape[0]
    # loops over f innermost (vectorised); each value sums its terms in the
    # same order as the formula
    acc = np.zeros((a, r, f), dtype=np.float64)
    total = np.zeros(f, dtype=np.float64)
    for ch in range(c0, c1):
        acc[:] = 0.0
        for x in range(a):
            for i in range(r):
                coef = g[x, i]
                if coef != 0.0:
                    for j in range(r):
                        for k in range(f):
                            acc[x, j, k] += coef * kernel[i, j, ch, f0 + k]
        for x in range(a):
            for w in range(a):
                out = u[x * a + w, ch]
                total[:] = 0.0
                for j in range(r):
                    coef = g[w, j]
                    for k in range(f):
                        total[k] += coef * acc[x, j, k]
                for k in range(f):
                    out[k] = total[k]

# F(4×4, 3×3) written out: the same BT and AT as transform(4), with the
# zero coefficients skipped and the channel loop innermost (vectorised).
# The constants come in the data's dtype (a float literal would promote
# float32 arithmetic to float64).
@_compiled(inline="always")
def bt6(x0, x1, x2, x3, x4, x5, two, four, five):
    # Bᵀ (6×6) times a column of 6
    return (four * x0 - five * x2 + x4, -(four * (x1 + x2)) + x3 + x4,
            four * (x1 - x2) - x3 + x4, two * (x3 - x1) + x4 - x2,
            two * (x1 - x3) + x4 - x2, four * x1 - five * x3 + x5)

@_compiled(inline="always")
def at4(x0, x1, x2, x3, x4, x5, two, four, eight):
    # Aᵀ (4×6) times a column of 6
    a12, b12, a34, b34 = x1 + x2, x1 - x2, x3 + x4, x3 - x4
    return x0 + a12 + a34, b12 + two * b34, a12 + four * a34, b12 + eight * b34 + x5

@_compiled(inline="always")
def a6(x0, x1, x2, x3, two, four, eight):
    # A (6×4) times a column of 4: the adjoint of at4
    a02, b13 = x0 + x2, x1 + x3
    return (x0, a02 + b13, a02 - b13, x0 + two * x1 + four * x2 + eight * x3,
            x0 - two * x1 + four * x2 - eight * x3, x3)

@_compiled(nogil=True, cache=True, fastmath={'contract'})
def kernel_transform_rows(kernel, g, f0, c0, c1, u):
    # u[x·a + w, c, f] = Σ_ij g[x, i] kernel[i, j, c, f0 + f] g[w, j] for the input
    # channels c0 <= c < c1, in float64: G down the kernel's columns, then along the
    # rows. Every loop writes one row of f values (one store stream: vectorised; 1.6-2×
    # faster than six outputs per loop). G's zeros are multiplied, not skipped: the
    # dispatcher sets non-finite weights aside before any transform.
    a = g.shape[0]
    f = u.shape[2]
    taps = np.empty((3, 3, f), dtype=np.float64)
    columns = np.empty((a, 3, f), dtype=np.float64)
    for ch in range(c0, c1):
        for i in range(3):
            for j in range(3):
                src = kernel[i, j, ch, f0:f0 + f]
                dst = taps[i, j]
                for k in range(f):
                    dst[k] = src[k]
        for x in range(a):
            g0, g1, g2 = g[x, 0], g[x, 1], g[x, 2]
            for j in range(3):
                dst = columns[x, j]
                t0, t1, t2 = taps[0, j], taps[1, j], taps[2, j]
                for k in range(f):
                    dst[k] = g0 * t0[k] + g1 * t1[k] + g2 * t2[k]
        for x in range(a):
            s0, s1, s2 = columns[x, 0], columns[x, 1], columns[x, 2]
            for w in range(a):
                h0, h1, h2 = g[w, 0], g[w, 1], g[w, 2]
                out = u[x * a + w, ch]
                for k in range(f):
                    out[k] = h0 * s0[k] + h1 * s1[k] + h2 * s2[k]

@_compiled(nogil=True, cache=True, fastmath={'contract'})
def input_transform_f4(xp, bt, m, d0, d1, th, tw, first, v, top, left, column, count):
    # tiles first .. first + count - 1 into v[:, column + t - first]; xp is the input
    # before zero padding: top rows and left columns of zeros are implied (and as
    # many as needed after it)
    _, hx, wx, c = xp.shape
    two, four, five = bt[3, 3], bt[0, 0], -bt[0, 2]
    tile = np.zeros((6, 6, c), dtype=xp.dtype)
    tmp = np.empty((6, 6, c), dtype=xp.dtype)
    for t in range(first, first + count):
        n, h0, w0 = tile_origin(t, th, tw, d0, d1, 4)
        h0 -= top
        w0 -= left
        if h0 >= 0 and w0 >= 0 and h0 + 5 * d0 < hx and w0 + 5 * d1 < wx:
            # interior tile: read the input in place
            for j in range(6):
                w = w0 + d1 * j
                for ch in range(c):
                    (tmp[0, j, ch], tmp[1, j, ch], tmp[2, j, ch], tmp[3, j, ch],
                     tmp[4, j, ch], tmp[5, j, ch]) = bt6(
                        xp[n, h0, w, ch], xp[n, h0 + d0, w, ch], xp[n, h0 + 2 * d0, w, ch],
                        xp[n, h0 + 3 * d0, w, ch], xp[n, h0 + 4 * d0, w, ch],
                        xp[n, h0 + 5 * d0, w, ch], two, four, five)
        else:
            # edge tile: copy what exists, zeros beyond the input
            tile[:] = 0.0
            for i in range(6):
                h = h0 + d0 * i
                if h < 0 or h >= hx:
                    continue
                for j in range(6):
                    w = w0 + d1 * j
                    if w < 0 or w >= wx:
                        continue
                    for ch in range(c):
                        tile[i, j, ch] = xp[n, h, w, ch]
            for j in range(6):
                for ch in range(c):
                    (tmp[0, j, ch], tmp[1, j, ch], tmp[2, j, ch], tmp[3, j, ch],
                     tmp[4, j, ch], tmp[5, j, ch]) = bt6(
                        tile[0, j, ch], tile[1, j, ch], tile[2, j, ch], tile[3, j, ch],
                        tile[4, j, ch], tile[5, j, ch], two, four, five)
        col = column + t - first
        for r in range(6):
            out0, out1, out2 = v[6 * r, col], v[6 * r + 1, col], v[6 * r + 2, col]
            out3, out4, out5 = v[6 * r + 3, col], v[6 * r + 4, col], v[6 * r + 5, col]
            for ch in range(c):
                out0[ch], out1[ch], out2[ch], out3[ch], out4[ch], out5[ch] = bt6(
                    tmp[r, 0, ch], tmp[r, 1, ch], tmp[r, 2, ch], tmp[r, 3, ch],
                    tmp[r, 4, ch], tmp[r, 5, ch], two, four, five)

@_compiled(nogil=True, cache=True, fastmath={'contract'})
def output_transform_f4(prod, at, m, d0, d1, th, tw, first, y):
    # y (N, HO, S0, WO, S1, FO): product channel (p0·S1 + p1)·FO + c of output cell
    # (oh, ow) goes to y[n, oh, p0, ow, p1, c] (S0 = S1 = 1: a plain (N, HO, WO, F))
    _, ho, ph0, wo, ph1, fo = y.shape
    f = prod.shape[2]
    two, four, eight = at[1, 3], at[2, 3], at[3, 3]
    rows = np.empty((4, 6, f), dtype=y.dtype)
    tile = np.empty((4, 4, f), dtype=y.dtype)
    for t in range(first, first + prod.shape[1]):
        n, h0, w0 = tile_origin(t, th, tw, d0, d1, 4)
        col = t - first
        for j in range(6):
            s0, s1, s2 = prod[j, col], prod[6 + j, col], prod[12 + j, col]
            s3, s4, s5 = prod[18 + j, col], prod[24 + j, col], prod[30 + j, col]
            for ch in range(f):
                rows[0, j, ch], rows[1, j, ch], rows[2, j, ch], rows[3, j, ch] = at4(
                    s0[ch], s1[ch], s2[ch], s3[ch], s4[ch], s5[ch], two, four, eight)
        for r in range(4):
            for ch in range(f):
                tile[r, 0, ch], tile[r, 1, ch], tile[r, 2, ch], tile[r, 3, ch] = at4(
                    rows[r, 0, ch], rows[r, 1, ch], rows[r, 2, ch], rows[r, 3, ch],
                    rows[r, 4, ch], rows[r, 5, ch], two, four, eight)
        for r in range(4):
            oh = h0 + d0 * r
            if oh >= ho:
                break
            for w_ in range(4):
                ow = w0 + d1 * w_
                if ow >= wo:
                    break
                for p0 in range(ph0):
                    for p1 in range(ph1):
                        base = (p0 * ph1 + p1) * fo
                        dst = y[n, oh, p0, ow, p1]
                        for ch in range(fo):
                            dst[ch] = tile[r, w_, base + ch]

@_compiled(nogil=True, cache=True, fastmath={'contract'})
def gradient_transform_f4(dy, at, d0, d1, th, tw, first, w_out):
    # w_out[i·6 + j, t - first] = (A dY_t Aᵀ)[i, j] with A = atᵀ (6×4): the
    # adjoint of the output transform, for the weight gradient
    _, ho, wo, f = dy.shape
    two, four, eight = at[1, 3], at[2, 3], at[3, 3]
    tile = np.empty((4, 4, f), dtype=dy.dtype)
    tmp = np.empty((6, 4, f), dtype=dy.dtype)
    for t in range(first, first + w_out.shape[1]):
        n, h0, w0 = tile_origin(t, th, tw, d0, d1, 4)
        for r in range(4):
            oh = h0 + d0 * r
            for w_ in range(4):
                ow = w0 + d1 * w_
                if oh < ho and ow < wo:
                    for ch in range(f):
                        tile[r, w_, ch] = dy[n, oh, ow, ch]
                else:
                    for ch in range(f):
                        tile[r, w_, ch] = 0.0
        for j in range(4):
            for ch in range(f):
                (tmp[0, j, ch], tmp[1, j, ch], tmp[2, j, ch], tmp[3, j, ch], tmp[4, j, ch],
                 tmp[5, j, ch]) = a6(tile[0, j, ch], tile[1, j, ch], tile[2, j, ch],
                                     tile[3, j, ch], two, four, eight)
        col = t - first
        for r in range(6):
            out0, out1, out2 = w_out[6 * r, col], w_out[6 * r + 1, col], w_out[6 * r + 2, col]
            out3, out4, out5 = (w_out[6 * r + 3, col], w_out[6 * r + 4, col],
                                w_out[6 * r + 5, col])
            for ch in range(f):
                out0[ch], out1[ch], out2[ch], out3[ch], out4[ch], out5[ch] = a6(
                    tmp[r, 0, ch], tmp[r, 1, ch], tmp[r, 2, ch], tmp[r, 3, ch],
                    two, four, eight)


# ---------------------------------------------------------------- table-callable transforms
#
# The F(4×4) transforms as C functions with the register kernels' signature (four
# pointers, then :data:`TABLE_FIELDS` 64-bit integers, most unused), so that a table of
# compiled calls (:mod:`._native_jobs`) can hold them beside the products' kernels and
# the helper threads run a whole call without the GIL.

#: The integers after the four pointers of a table-callable transform (the register
#: kernels' ``Cells``, ``Sums`` and ``Batch`` fields).
TABLE_FIELDS = 18


def _table_transforms(dtype: Any) -> tuple[int, int, Any] | None:
    """``(input address, output address, keep-alive)`` of the table-callable F(4×4)
    transforms for ``dtype`` (float32 or float64), or ``None`` without numba."""
    if njit is None:
        return None
    from numba import carray, cfunc, types

    scalar = types.float32 if np.dtype(dtype) == np.float32 else types.float64
    pointer = types.CPointer(scalar)
    signature = types.void(pointer, pointer, pointer, types.voidptr,
                           *([types.int64] * TABLE_FIELDS))

    @cfunc(signature, cache=True)
    def input_rows(xp_at, bt_at, v_at, _unused, n, hx, wx, c, th, tw, d0, d1, top, left,
                   first, count, total, f5, f6, f7, f8, f9):  # pragma: no cover - compiled
        # tiles first .. first + count - 1 of input_transform_f4 into columns of v
        xp = carray(xp_at, (n, hx, wx, c))
        bt = carray(bt_at, (6, 6))
        v = carray(v_at, (36, total, c))
        input_transform_f4(xp, bt, 4, d0, d1, th, tw, first, v, top, left, first, count)

    @cfunc(signature, cache=True)
    def output_rows(prod_at, at_at, y_at, _unused, n, ho, wo, f, th, tw, d0, d1, f0, f1,
                    tiles, first, f4, f5, f6, f7, f8, f9):  # pragma: no cover - compiled
        # the products of tiles first .. first + tiles - 1 and channels f0 .. f1 - 1
        # ((36, tiles, f1 - f0)) into those cells and channels of y (N, HO, WO, F)
        prod = carray(prod_at, (36, tiles, f1 - f0))
        at = carray(at_at, (4, 6))
        y = carray(y_at, (n, ho, 1, wo, 1, f))
        output_transform_f4(prod, at, 4, d0, d1, th, tw, first, y[..., f0:f1])

    input_at, output_at = input_rows.address, output_rows.address
    if not input_at or not output_at:  # pragma: no cover - a numba without addresses
        return None
    return int(input_at), int(output_at), (input_rows, output_rows)
