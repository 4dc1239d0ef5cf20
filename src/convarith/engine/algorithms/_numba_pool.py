"""Pooling loops compiled by numba: the forward kernels of :mod:`._llvm_pool` where
llvmlite's are off (``CONVARITH_JIT=0``) but numba is installed, and a global
average's gradient (each image's ``dy / cells`` copied to each of its cells) wherever
numba is. (A max pool's gradient stays NumPy's without llvmlite: a numba scan per
window measured slower than NumPy on the 2×2 stride-2 pools.)

The same sums as ``_llvm_pool``'s ``drive`` (its module docstring), on arrays
``x (N, H, W, C)`` and ``y (N, OH, OW, C)`` (one spatial axis: ``H = OH = 1``),
the window tables ``rows (OH, 2)`` and ``columns (OW, 2)`` (first cell inside the
input, cells inside), output rows ``[first, stop)`` counted over the batch. The
channel loops are innermost and contiguous, so LLVM vectorizes them; no
``fastmath`` (it would drop the NaN rule of the max); NumPy's error model (0 / 0 is NaN).

Examples
--------
>>> kernels = numba_kernels()
>>> kernels is None or len(kernels) == 4
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..state import cached_once

__all__ = ["numba_kernels"]


@cached_once
def numba_kernels() -> tuple[Callable[..., None], ...] | None:
    """``(max, average, global average, global spread)`` loops, or ``None`` without
    numba."""
    try:
        import numba
    except ImportError:  # pragma: no cover - exercised by the numba-less test
        return None

    @numba.njit(nogil=True, cache=False, error_model="numpy")
    def max_rows(x: Any, y: Any, rows: Any, columns: Any, first: int, stop: int,
                 row_step: int, column_step: int) -> None:
        out_rows, out_cols, channels = y.shape[1], y.shape[2], y.shape[3]
        for u in range(first, stop):
            n, oh = u // out_rows, u % out_rows
            r0, rn = rows[oh, 0], rows[oh, 1]
            for ow in range(out_cols):
                c0, cn = columns[ow, 0], columns[ow, 1]
                out = y[n, oh, ow]
                for c in range(channels):
                    out[c] = -np.inf
                for a in range(rn):
                    for b in range(cn):
                        cell = x[n, r0 + a * row_step, c0 + b * column_step]
                        for c in range(channels):  # stores either way: vectorized
                            v = cell[c]
                            out[c] = v if (v > out[c]) | (v != v) else out[c]  # NaN wins

    @numba.njit(nogil=True, cache=False, error_model="numpy")
    def avg_rows(x: Any, y: Any, divisors: Any, rows: Any, columns: Any, first: int,
                 stop: int, row_step: int, column_step: int) -> None:
        out_rows, out_cols, channels = y.shape[1], y.shape[2], y.shape[3]
        for u in range(first, stop):
            n, oh = u // out_rows, u % out_rows
            r0, rn = rows[oh, 0], rows[oh, 1]
            for ow in range(out_cols):
                c0, cn = columns[ow, 0], columns[ow, 1]
                out = y[n, oh, ow]
                for c in range(channels):
                    out[c] = 0
                for a in range(rn):
                    for b in range(cn):
                        cell = x[n, r0 + a * row_step, c0 + b * column_step]
                        for c in range(channels):
                            out[c] += cell[c]
                divisor = divisors[oh * out_cols + ow]
                for c in range(channels):
                    out[c] /= divisor

    @numba.njit(nogil=True, cache=False, error_model="numpy")
    def global_average(x: Any, y: Any, first: int, stop: int) -> None:
        # rows of channels added four at a time, (r0 + r1) + (r2 + r3): as accurate as
        # BLAS's gemv with 1 / cells (float32, 56² cells: max error 1.1e-6 against 8.6e-7
        # of the largest mean), 0-25% slower on one core, but no BLAS: the threads can
        # share the images
        cells, channels = x.shape[1], x.shape[2]
        total = np.empty(channels, x.dtype)
        fours = cells // 4
        for n in range(first, stop):
            for c in range(channels):
                total[c] = 0
            for q in range(fours):
                r0, r1, r2, r3 = x[n, 4 * q], x[n, 4 * q + 1], x[n, 4 * q + 2], x[n, 4 * q + 3]
                for c in range(channels):
                    total[c] += (r0[c] + r1[c]) + (r2[c] + r3[c])
            for i in range(4 * fours, cells):
                row = x[n, i]
                for c in range(channels):
                    total[c] += row[c]
            out = y[n]
            for c in range(channels):
                out[c] = total[c] / cells

    @numba.njit(nogil=True, cache=False)
    def global_spread(share: Any, y: Any, first: int, stop: int) -> None:
        # y (N, cells, C): every cell of image n gets share[n] (a loop of contiguous
        # channel stores, vectorized; NumPy's copy of a broadcast view of the same was
        # 2-3x slower, its inner loop one row of channels)
        cells, channels = y.shape[1], y.shape[2]
        for n in range(first, stop):
            value = share[n]
            for i in range(cells):
                row = y[n, i]
                for c in range(channels):
                    row[c] = value[c]

    return max_rows, avg_rows, global_average, global_spread
