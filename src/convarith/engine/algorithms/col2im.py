"""Transposed convolutions as wide products and a gather (col2im), no zeros inserted.

A transposed convolution sends every input cell ``i``, through kernel tap
``t``, to output cell ``o = i·S + t·D - P`` (with ``P = D·(K - 1) - lo``,
``lo`` the low padding of the zero-inserted grid): ``y[o] += x[i] @ W[t]``.
So the products are matrix products of the whole input,

    cols (cells, taps·F) = x (cells, C) @ Wmat (C, taps·F),

whose column block ``t`` is tap ``t``'s contribution from every input cell,
followed by a col2im step that adds each block at its strided place,
dropping what falls outside (the crop). No multiply meets an inserted zero
and each product has ``taps × F`` columns (wide and cheap for BLAS, where the
per-tap products of :mod:`.phase` have only ``F``). This is what PyTorch's
and oneDNN's col2im paths do.

Two refinements keep it in cache. The taps are split by the output phase
they land on (``o mod S``): each phase's taps make one product, whose
columns only that phase's output cells read, so ``cols`` is ``1 / prod(S)``
of the full one. And the input is cut into whole images (or blocks of rows
of one image, sharing a few input rows with the next block) whose ``cols``
fits in a core's cache; each piece runs on one thread. The col2im step is a
*gather*: each output cell is written once, as the sum of the blocks that
reach it (no zero fill, no read-modify-write), compiled with numba when it
is installed, else one strided slice add per tap on a zeroed output, adding
in the same order (the results are identical). Groups run as one batched
product per phase (a product per group inside it) and one gather.

Examples
--------
>>> import numpy as np
>>> x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
>>> k = np.array([1.0, 10.0]).reshape(2, 1, 1)   # (K, F/g, C)
>>> transposed(x, k, (2,), (1,), 1, ((1, 1),), (6,))[0, :, 0]
array([ 1., 10.,  2., 20.,  3., 30.])
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ...arithmetic import effective_kernel, transposed_crop
from ..dispatch import ConvProblem, Requirements, register_algorithm
from ..state import cached_once
from . import _llvm_pointwise
from ._threads import releasing_gil, run_chunks, worker_count, workspace

__all__ = ["transposed", "applies", "cost", "CHUNK_BYTES", "FEW_CELLS"]

#: Bytes of one piece's product (all phases together): about a core's L2 cache.
CHUNK_BYTES = 2 << 20

#: Most output channels (of one group) for which all the phases' taps make one product
#: (and the gather sums in scalars). The 3x3 stride-2 3 -> 32 stem's two gradients, one
#: core, CPU time, busy machine: one 112² image 0.73 -> 0.63 ms, 16 images 10.3 -> 8.1.
JOINT_CHANNELS = 4

#: The joint product's columns (a chunk's cells × all taps' outputs) as a share of the
#: operands' bytes (input, kernel and output) up to which it runs: its columns are
#: ``taps·Fg`` wide where one phase's are a fraction of that, and they count in the
#: call's peak memory (ResNeXt-50's 7×7 stride-2 3 -> 64 stem on one 112² image: 1.1 ->
#: 1.8× the operands with them; its 3×3 stride-2 3 -> 32 stems stay under 0.75).
JOINT_SHARE = 0.75


@cached_once
def _numba_gather() -> Callable[..., None] | None:
    """The compiled col2im of one phase over three spatial axes, or ``None`` without numba."""
    try:
        import numba
    except ImportError:  # pragma: no cover - exercised by the numba-less test
        return None

    @numba.njit(nogil=True, cache=True, fastmath=True, error_model="numpy")
    def wide(cols, y, n_first, n_last, i0_base, rows_in_cols, size1, size2,
             p0_first, p0_last, out0, count0, index0, tap0, out1, count1, index1, tap1,
             out2, count2, index2, tap2, k1, k2, fg, f0, f, offset):
        # y (N, O0, O1, O2·F), images n_first .. n_last - 1, at the phase's output cells
        # (out0[p0_first:p0_last], out1, out2), groups g of cols (channels f0 + g·fg ..):
        # each cell is the sum of the blocks of cols[:, g] ((images · rows_in_cols) · size1
        # · size2, G, taps · fg, input rows from i0_base) that reach it, in increasing input
        # order (per axis and output, the tables list the input indices and the tap
        # positions reaching it). Loops run over slices (indices known non-negative, so
        # the copies vectorize).
        for n in range(n_first, n_last):
            for p0 in range(p0_first, p0_last):
                o0 = out0[p0]
                for p1 in range(out1.shape[0]):
                    target = y[n, o0, out1[p1]]
                    for p2 in range(out2.shape[0]):
                        for g in range(cols.shape[1]):
                            start = out2[p2] * f + f0 + g * fg
                            dst = target[start:start + fg]
                            first = True
                            for j0 in range(count0[p0]):
                                r0 = (n - n_first) * rows_in_cols + index0[p0, j0] - i0_base
                                t0 = tap0[p0, j0]
                                for j1 in range(count1[p1]):
                                    r1 = r0 * size1 + index1[p1, j1]
                                    t1 = t0 * k1 + tap1[p1, j1]
                                    for j2 in range(count2[p2]):
                                        t = t1 * k2 + tap2[p2, j2]
                                        column = offset + t * fg
                                        src = cols[r1 * size2 + index2[p2, j2], g,
                                                   column:column + fg]
                                        if first:
                                            for v in range(fg):
                                                dst[v] = src[v]
                                            first = False
                                        else:
                                            for v in range(fg):
                                                dst[v] += src[v]
                            if first:
                                for v in range(fg):
                                    dst[v] = 0.0

    # (no fastmath: the sums in scalars keep their order, as the NumPy path's)
    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def thin(cols, y, n_first, n_last, i0_base, rows_in_cols, size1, size2,
             p0_first, p0_last, out0, count0, index0, tap0, out1, count1, index1, tap1,
             out2, count2, index2, tap2, k1, k2, fg, f0, f, offset):
        # few channels (an RGB stem's input gradient, fg = 3): a slice per contribution
        # and a vector loop of fg cost more than the adds; flat offsets (cols and y are
        # C-contiguous), the sums in scalars of the arrays' dtype, from zero as the NumPy
        # path's (the same numbers)
        flat_y = y.reshape(-1)
        flat_cols = cols.reshape(-1)
        batch_groups = cols.shape[1]
        width = cols.shape[2]
        row_y = y.shape[3]
        zero = np.zeros(1, cols.dtype)[0]
        for n in range(n_first, n_last):
            for p0 in range(p0_first, p0_last):
                base0 = (n * y.shape[1] + out0[p0]) * y.shape[2]
                for p1 in range(out1.shape[0]):
                    base1 = (base0 + out1[p1]) * row_y
                    for p2 in range(out2.shape[0]):
                        for g in range(batch_groups):
                            s0 = s1 = s2 = s3 = zero
                            for j0 in range(count0[p0]):
                                r0 = (n - n_first) * rows_in_cols + index0[p0, j0] - i0_base
                                t0 = tap0[p0, j0]
                                for j1 in range(count1[p1]):
                                    r1 = r0 * size1 + index1[p1, j1]
                                    t1 = t0 * k1 + tap1[p1, j1]
                                    for j2 in range(count2[p2]):
                                        t = t1 * k2 + tap2[p2, j2]
                                        src = ((r1 * size2 + index2[p2, j2]) * batch_groups
                                               + g) * width + offset + t * fg
                                        s0 += flat_cols[src]
                                        if fg > 1:
                                            s1 += flat_cols[src + 1]
                                        if fg > 2:
                                            s2 += flat_cols[src + 2]
                                        if fg > 3:
                                            s3 += flat_cols[src + 3]
                            dst = base1 + out2[p2] * f + f0 + g * fg
                            flat_y[dst] = s0
                            if fg > 1:
                                flat_y[dst + 1] = s1
                            if fg > 2:
                                flat_y[dst + 2] = s2
                            if fg > 3:
                                flat_y[dst + 3] = s3

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def gather(cols, y, n_first, n_last, i0_base, rows_in_cols, size1, size2,
               p0_first, p0_last, out0, count0, index0, tap0, out1, count1, index1, tap1,
               out2, count2, index2, tap2, k1, k2, fg, f0, f, offset):
        if fg > 4:
            wide(cols, y, n_first, n_last, i0_base, rows_in_cols, size1, size2, p0_first,
                 p0_last, out0, count0, index0, tap0, out1, count1, index1, tap1, out2,
                 count2, index2, tap2, k1, k2, fg, f0, f, offset)
        else:
            thin(cols, y, n_first, n_last, i0_base, rows_in_cols, size1, size2, p0_first,
                 p0_last, out0, count0, index0, tap0, out1, count1, index1, tap1, out2,
                 count2, index2, tap2, k1, k2, fg, f0, f, offset)

    return gather


@cached_once
def _numba_joint_rows() -> Callable[..., None] | None:
    """The compiled col2im of a joint product with few output channels, by output rows
    (:func:`transposed`), or ``None`` without numba."""
    try:
        import numba
    except ImportError:  # pragma: no cover - exercised by the numba-less test
        return None

    # (no fastmath: each cell's sum from zero in increasing input order, as the gather's)
    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def joint_rows(cols, y, n_first, n_last, i0_base, rows_in_cols, size, o_first, o_last,
                   column_of, strides, dilation, reach, fg):
        # y (N, O0, O1, O2·fg), images n_first .. n_last - 1, output rows o_first .. o_last
        # - 1 of axis 0: each row of O2 cells zeroed, then every tap's contributions
        # added as one strided run over the input cells of the last axis (o2 = i2·S2 +
        # t2·D2 - reach2), the taps in decreasing order per axis (increasing input);
        # cols ((images · rows_in_cols) · size1 · size2, 1, width), tap (t0, t1, t2)'s fg
        # values from column column_of[t0, t1, t2], input rows from i0_base
        k0, k1, k2 = column_of.shape[0], column_of.shape[1], column_of.shape[2]
        s0, s1, s2 = strides[0], strides[1], strides[2]
        d0, d1, d2 = dilation[0], dilation[1], dilation[2]
        p0, p1, p2 = reach[0], reach[1], reach[2]
        size0, size1, size2 = size[0], size[1], size[2]
        out1, out2 = y.shape[2], y.shape[3] // fg
        width = cols.shape[2]
        flat_cols = cols.reshape(-1)
        for n in range(n_first, n_last):
            for o0 in range(o_first, o_last):
                for o1 in range(out1):
                    row = y[n, o0, o1]
                    for v in range(row.shape[0]):
                        row[v] = 0.0
                    for t0 in range(k0 - 1, -1, -1):
                        q0 = o0 + p0 - t0 * d0
                        if q0 < 0 or q0 % s0 != 0 or q0 // s0 >= size0:
                            continue
                        r0 = (n - n_first) * rows_in_cols + q0 // s0 - i0_base
                        for t1 in range(k1 - 1, -1, -1):
                            q1 = o1 + p1 - t1 * d1
                            if q1 < 0 or q1 % s1 != 0 or q1 // s1 >= size1:
                                continue
                            r1 = r0 * size1 + q1 // s1
                            for t2 in range(k2 - 1, -1, -1):
                                shift = t2 * d2 - p2
                                # the inputs i2 with 0 <= i2·s2 + shift < out2
                                lo = max(0, -(shift // s2))
                                hi = min(size2, (out2 - 1 - shift) // s2 + 1)
                                column = column_of[t0, t1, t2]
                                # fg values as statements (a loop of 3 cost its set-up
                                # per cell: the gather ran at the old one's speed)
                                for i2 in range(lo, hi):
                                    source = (r1 * size2 + i2) * width + column
                                    target = (i2 * s2 + shift) * fg
                                    row[target] += flat_cols[source]
                                    if fg > 1:
                                        row[target + 1] += flat_cols[source + 1]
                                    if fg > 2:
                                        row[target + 2] += flat_cols[source + 2]
                                    if fg > 3:
                                        row[target + 3] += flat_cols[source + 3]

    return joint_rows


def _axis_table(out: int, size: int, taps: int, stride: int, dilation: int, reach: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: how many (input index, tap) pairs reach it, and which
    (input index ascending), as ``(count (out,), index (out, taps), tap (out, taps))``.

    >>> count, index, tap = _axis_table(4, 2, 2, 2, 1, 0)   # o = 2i + t
    >>> count.tolist(), index[:, 0].tolist(), tap[:, 0].tolist()
    ([1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 0, 1])
    """
    # o = i·stride + t·dilation - reach; larger taps come from smaller inputs
    tap = np.arange(taps - 1, -1, -1, dtype=np.int64)[None, :]
    reached = np.arange(out, dtype=np.int64)[:, None] + reach - tap * dilation
    index, rest = np.divmod(reached, stride)
    valid = (rest == 0) & (index >= 0) & (index < size)
    order = np.argsort(~valid, axis=1, kind="stable")  # the valid pairs first, in order
    valid = np.take_along_axis(valid, order, axis=1)
    index = np.where(valid, np.take_along_axis(index, order, axis=1), 0)
    tap = np.where(valid, np.take_along_axis(np.broadcast_to(tap, valid.shape), order, axis=1), 0)
    return valid.sum(axis=1), np.ascontiguousarray(index), np.ascontiguousarray(tap)


@dataclass(frozen=True)
class _AxisPhase:
    """One output phase of one axis: the outputs ``first, first + S, ...``, the
    taps that land there, and per output the inputs and tap positions reaching it
    (``position``: among the phase's taps; ``tap``: among all the axis's taps)."""

    first: int
    taps: tuple[int, ...]
    outputs: np.ndarray
    count: np.ndarray
    index: np.ndarray
    position: np.ndarray
    tap: np.ndarray


@dataclass(frozen=True)
class _AxisPlan:
    """One axis: the full table (for cutting work into pieces, and the gather of
    :func:`kernel_first`: ``tap`` among all the axis's taps) and its phases."""

    outputs: np.ndarray
    count: np.ndarray
    index: np.ndarray
    tap: np.ndarray
    phases: tuple[_AxisPhase, ...]


@functools.lru_cache(maxsize=64)
def _axis_plan(out: int, size: int, taps: int, stride: int, dilation: int, reach: int
               ) -> _AxisPlan:
    """The tables of one axis (cached: a layer runs the same shapes again and again)."""
    count, index, tap = _axis_table(out, size, taps, stride, dilation, reach)
    phases = []
    for first in range(min(stride, out)):
        members = tuple(t for t in range(taps) if (t * dilation - reach) % stride == first)
        lookup = np.zeros(taps, np.int64)
        lookup[list(members)] = np.arange(len(members))
        rows = slice(first, None, stride)
        phases.append(_AxisPhase(
            first, members, np.arange(first, out, stride, dtype=np.int64),
            np.ascontiguousarray(count[rows]), np.ascontiguousarray(index[rows]),
            np.ascontiguousarray(lookup[tap[rows]]), np.ascontiguousarray(tap[rows])))
    outputs = np.arange(out, dtype=np.int64)
    for array in (outputs, count, index, tap,
                  *(a for p in phases for a in (p.outputs, p.count, p.index, p.position,
                                                p.tap))):
        array.setflags(write=False)
    return _AxisPlan(outputs, count, index, tap, tuple(phases))


def _tap_slices(
    tap: Sequence[int], lows: Sequence[int], highs: Sequence[int], out_lows: Sequence[int],
    out_highs: Sequence[int], strides: Sequence[int], dilation: Sequence[int],
    reach: Sequence[int],
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Where one tap sends input cells ``lows .. highs - 1`` in output ``out_lows ..
    out_highs - 1``: (input slices, output slices), both relative to those starts;
    ``None`` when it sends none there.

    >>> _tap_slices((1,), (0,), (3,), (0,), (6,), (2,), (1,), (0,))
    ((slice(0, 3, None),), (slice(1, 6, 2),))
    """
    inputs, outputs = [], []
    for t, lo, hi, out_lo, out_hi, s, d, p in zip(
            tap, lows, highs, out_lows, out_highs, strides, dilation, reach):
        shift = t * d - p  # o = i·s + shift
        first = max(lo, -((shift - out_lo) // s))  # smallest i with o >= out_lo
        last = min(hi, (out_hi - 1 - shift) // s + 1)  # one past the largest i with o < out_hi
        if first >= last:
            return None
        inputs.append(slice(first - lo, last - lo))
        outputs.append(slice(first * s + shift - out_lo, (last - 1) * s + shift - out_lo + 1, s))
    return tuple(inputs), tuple(outputs)


def _add_phase_numpy(
    cols: np.ndarray, target: np.ndarray, i0_range: tuple[int, int],
    o0_range: tuple[int, int], size: Sequence[int], phase_taps: Sequence[Sequence[int]],
    strides: Sequence[int], dilation: Sequence[int], reach: Sequence[int],
) -> None:
    """Add one phase's blocks into ``target`` (images, o0 rows, O1, O2, fg), one strided
    slice add per tap, in increasing input order (the compiled gather's sums, in its order)."""
    fg = target.shape[-1]
    blocks = cols.reshape(target.shape[0], i0_range[1] - i0_range[0], *size[1:], cols.shape[1])
    lows = (i0_range[0], 0, 0)
    highs = (i0_range[1], *size[1:])
    out_lows = (o0_range[0], 0, 0)
    out_highs = (o0_range[1], *target.shape[2:-1])
    taps = list(itertools.product(*phase_taps))
    for position in range(len(taps) - 1, -1, -1):  # larger taps come from smaller inputs
        found = _tap_slices(taps[position], lows, highs, out_lows, out_highs, strides,
                            dilation, reach)
        if found is not None:
            inputs, outputs = found
            channels = slice(position * fg, (position + 1) * fg)
            everything = (slice(None),)
            target[everything + outputs] += blocks[everything + inputs + (channels,)]


def _units(batch: int, count0: np.ndarray, index0: np.ndarray, row_bytes: int,
           rows_per_image: int, budget: int, workers: int
           ) -> list[tuple[int, int, int, int, int, int]]:
    """Independent pieces of work: ``(n0, n1, o0, o1, i0, i1)`` = images ``n0 .. n1 - 1``,
    output rows ``o0 .. o1 - 1``, reached from input rows ``i0 .. i1 - 1``.

    Whole images when one image's product fits ``budget`` (several if they
    fit), else blocks of output rows whose input rows fit (neighbouring blocks
    share a few input rows, whose products are computed twice).
    """
    out_rows = count0.shape[0]
    image_bytes = rows_per_image * row_bytes
    if image_bytes <= budget:
        per_unit = max(1, budget // max(1, image_bytes))
        if workers > 1:
            per_unit = min(per_unit, max(1, -(-batch // (2 * workers))))
        return [(n, min(batch, n + per_unit), 0, out_rows, 0, rows_per_image)
                for n in range(0, batch, per_unit)]
    budget_rows = max(budget // max(1, row_bytes), 1)
    # per output row, the first and one past the last input row reaching it; rows
    # reached by none take their neighbours' (both are non-decreasing)
    reached = count0 > 0
    last = index0[np.arange(out_rows), np.maximum(count0 - 1, 0)]
    lows = np.minimum.accumulate(np.where(reached, index0[:, 0], rows_per_image)[::-1])[::-1]
    highs = np.maximum.accumulate(np.where(reached, last + 1, 0))
    blocks: list[tuple[int, int, int, int]] = []
    start = 0
    while start < out_rows:
        low = int(lows[start])
        stop = max(start + 1, int(np.searchsorted(highs, low + budget_rows, side="right")))
        stop = min(stop, out_rows)
        high = int(highs[stop - 1])
        blocks.append((start, stop, low, high) if high > low else (start, stop, 0, 0))
        start = stop
    return [(n, n + 1, *block) for n in range(batch) for block in blocks]


def transposed(
    x: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    padding: Sequence[tuple[int, int]],
    out_size: Sequence[int],
    *,
    use_numba: bool | None = None,
    threads: int | None = None,
    chunk_bytes: int | None = None,
) -> np.ndarray:
    """Transposed convolution, same contract as ``engine.core.transposed_conv``.

    Parameters
    ----------
    x
        ``(N, *spatial, C)`` channels-last input (not zero-inserted), rank 1 to 3.
    kernel
        ``(*K, F // groups, C)``: the transposed layout.
    strides, dilation
        Per spatial axis.
    groups
        Channel groups (a batched product per phase, one product per group).
    padding
        Padding of the zero-inserted input per axis (``(lo, hi)``, negative
        crops): the resolved spec's ``.padding``.
    use_numba
        Compiled gather (``None``: when numba is installed; ``False``: the
        NumPy slice adds, which give identical results).
    threads
        Worker threads (default: one per core).
    chunk_bytes
        Bytes of one piece's products (default: :data:`CHUNK_BYTES`, raised
        where blocks of rows would recompute many shared rows).

    Returns
    -------
    numpy.ndarray
        ``(N, *out, F)`` with ``out = (I - 1)·S + 1 + lo + hi - D·(K - 1)``.

    Examples
    --------
    >>> x = np.ones((1, 2, 2, 1))
    >>> transposed(x, np.ones((2, 2, 1, 1)), (2, 2), (1, 1), 1, ((1, 1), (1, 1)), (4, 4))[0, ..., 0]
    array([[1., 1., 1., 1.],
           [1., 1., 1., 1.],
           [1., 1., 1., 1.],
           [1., 1., 1., 1.]])
    """
    rank = len(strides)
    if not 1 <= rank <= 3:
        raise ValueError(f"col2im handles 1 to 3 spatial axes, got strides={tuple(strides)}")
    gather = _numba_gather() if use_numba is not False else None
    if use_numba and gather is None:
        raise ImportError("use_numba=True needs numba (pip install numba)")
    n, *size, c = x.shape
    kernel_size = tuple(kernel.shape[:rank])
    fg = kernel.shape[rank]
    f = fg * groups
    cg = c // groups
    reach = [transposed_crop(k, d, pads)[0] for k, d, pads in zip(kernel_size, dilation, padding)]
    out_size = list(out_size)
    y = np.empty((n, *(max(0, o) for o in out_size), f), x.dtype)
    if y.size == 0:
        return y
    if x.size == 0:
        y[...] = 0
        return y

    # rank-3 geometry: size-1 axes after the first (whose rows the work is cut
    # along), so the last axis stays the contiguous one
    def as_rank3(values: Sequence[int], fill: int) -> tuple[int, ...]:
        return (values[0], *(fill,) * (3 - rank), *values[1:])

    size3, out3 = as_rank3(size, 1), as_rank3(out_size, 1)
    kernel3, strides3 = as_rank3(kernel_size, 1), as_rank3(strides, 1)
    dilation3, reach3 = as_rank3(dilation, 1), as_rank3(reach, 0)
    plans = [_axis_plan(*geometry)
             for geometry in zip(out3, size3, kernel3, strides3, dilation3, reach3)]
    y5 = y.reshape(n, *out3, f)
    y4 = y.reshape(n, out3[0], out3[1], -1)
    taps = math.prod(kernel_size)
    by_tap = kernel.reshape(taps, fg, c)
    rows_per_image = size[0]
    cells_per_row = math.prod(size[1:])
    row_bytes = cells_per_row * taps * fg * x.dtype.itemsize  # one group's products
    workers = worker_count() if threads is None else threads
    if chunk_bytes is None:
        # blocks tall enough that the input rows two blocks share are few
        shared_rows = -(-(effective_kernel(kernel_size[0], dilation[0]) - 1) // strides[0])
        chunk_bytes = max(CHUNK_BYTES, 8 * shared_rows * row_bytes)
    units = _units(n, plans[0].count, plans[0].index, row_bytes, rows_per_image, chunk_bytes,
                   workers)
    largest = max((n1 - n0) * (i1 - i0) for n0, n1, _, _, i0, i1 in units) * cells_per_row
    if groups > 1 and largest <= KERNEL_FIRST_CELLS:
        kernel_first(x, by_tap.reshape(taps * fg, groups, cg).transpose(1, 0, 2), y, units,
                     plans, size3, out3, kernel3, strides3, dilation3, reach3, gather,
                     chunk_bytes, threads)
        return y
    # each phase: its taps per axis, and the (G, Cg, taps·Fg) matrices whose
    # column p·Fg + f of group g holds kernel[tap p, f, g·Cg + c], as the transpose of
    # a row-major (taps·Fg, C) view or copy of the phase's taps (a transposed operand
    # costs BLAS nothing; a transposed copy of a deep layer's kernel cost more than its
    # products: 3×3 stride 2, 512 -> 512 on 7² cells, one core: 11.8 ms against 3.1 for
    # the products). Consecutive taps (stride 1: all of them) are a view, no copy: a
    # deep layer's kernel read once per call is its whole memory traffic on few cells.
    phases: list[tuple[tuple[_AxisPhase, ...], np.ndarray | None]] = []
    for combo in itertools.product(*(plan.phases for plan in plans)):
        tap_ids = [(t0 * kernel3[1] + t1) * kernel3[2] + t2
                   for t0, t1, t2 in itertools.product(*(p.taps for p in combo))]
        if not tap_ids:
            phases.append((combo, None))
            continue
        consecutive = tap_ids == list(range(tap_ids[0], tap_ids[0] + len(tap_ids)))
        chosen = by_tap[tap_ids[0]:tap_ids[-1] + 1] if consecutive else by_tap[tap_ids]
        rows = chosen.reshape(len(tap_ids) * fg, c)
        phases.append((combo, rows.reshape(len(tap_ids) * fg, groups, cg).transpose(1, 2, 0)))
    widest = max((w.shape[2] for _, w in phases if w is not None), default=0)  # taps·Fg
    # few output channels of one group: the phases' products are a few columns each
    # (an RGB stem's input gradient, 3x3 stride 2: 12, 6, 6 and 3), on which BLAS runs
    # far below its speed; one product of all the taps, each phase gathered from its
    # columns (the pieces are sized for all the taps' products anyway)
    joint = None
    operands = x.nbytes + y.nbytes + kernel.nbytes
    if groups == 1 and fg <= JOINT_CHANNELS and sum(
            w is not None for _, w in phases) > 1 and (
            largest * taps * fg * x.dtype.itemsize <= JOINT_SHARE * operands):
        joint = np.concatenate([w for _, w in phases if w is not None], axis=2)
        widest = joint.shape[2]
    # the joint product by the compiled kernel of 1x1 layers, its columns padded with
    # zeros to a width it has (the RGB stem's 27 to 32: 3136 cells, one core, 0.070 ms
    # against BLAS's 0.097 for 27 columns); the same product whether or not numba gathers
    product_kernel, joint_matrix = None, None
    if joint is not None:
        padded = next((w for w in (widest, -(-widest // 8) * 8, -(-widest // 16) * 16)
                       if _llvm_pointwise.supported(x.dtype, w)), None)
        if padded is not None and largest * padded * x.dtype.itemsize <= JOINT_SHARE * operands:
            product_kernel = _llvm_pointwise.compiled(x.dtype, c, padded)
        if product_kernel is not None and padded is not None:
            joint_matrix = np.zeros((c, padded), x.dtype)
            joint_matrix[:, :widest] = joint[0]
            widest = padded
    # where each phase's columns start in the joint product
    offsets = list(itertools.accumulate((0 if w is None else w.shape[2] for _, w in phases),
                                        initial=0))
    # the joint product's column of each tap, and its compiled col2im by output rows:
    # the per-phase gather's loops over the tables cost 4 times the product on an RGB
    # stem (3×3 stride 2, 32 -> 3 on 56², one core: 0.31 ms, 0.09 of it the product)
    joint_rows = _numba_joint_rows() if joint is not None and gather is not None else None
    if joint_rows is not None:
        column_of = np.zeros(kernel3, np.int64)
        for number, (combo, weights) in enumerate(phases):
            if weights is not None:
                for position, tap in enumerate(itertools.product(*(p.taps for p in combo))):
                    column_of[tap] = offsets[number] + position * fg
        geometry = tuple(np.array(values, np.int64)
                         for values in (size3, strides3, dilation3, reach3))
    # groups run in batches whose products fit the budget together: one product
    # call and one gather per batch (tiny groups on few cells: per-group calls cost
    # more than their products)
    group_batch = max(1, min(groups, chunk_bytes // max(1, largest * widest * x.dtype.itemsize)))
    x_rows = x.reshape(n, rows_per_image, cells_per_row, c)
    buffers: dict[int, np.ndarray] = {}

    def run_unit(unit: tuple[int, int, int, int, int, int]) -> None:
        n0, n1, o0, o1, i0, i1 = unit
        count = (n1 - n0) * (i1 - i0) * cells_per_row
        key = threading.get_ident()
        buffer = buffers.get(key)
        if buffer is None:
            buffer = buffers[key] = workspace("col2im.columns",
                                              (max(1, group_batch * largest * widest),), x.dtype)
        # (G, cells, Cg): each group's input channels, strided views (BLAS reads them)
        pieces = x_rows[n0:n1, i0:i1].reshape(count, groups, cg).transpose(1, 0, 2)
        target = y5[n0:n1, o0:o1]
        if gather is None:
            target[...] = 0
        if joint is not None:
            products = buffer[:count * widest].reshape(count, 1, widest)
            if product_kernel is not None and joint_matrix is not None:
                product_kernel.run(np.ascontiguousarray(pieces[0]), joint_matrix,
                                   products[:, 0])
            else:
                releasing_gil()
                np.matmul(pieces[0], joint[0], out=products[:, 0])
            if joint_rows is not None:
                size_array, strides_array, dilation_array, reach_array = geometry
                joint_rows(products, y4, n0, n1, i0, i1 - i0, size_array, o0, o1, column_of,
                           strides_array, dilation_array, reach_array, fg)
                return
        for number, (combo, weights) in enumerate(phases):
            offset = offsets[number]
            first, stride = combo[0].first, strides3[0]
            p_first = max(0, -(-(o0 - first) // stride))
            p_last = min(len(combo[0].outputs), -(-(o1 - first) // stride))
            if p_first >= p_last:
                continue
            if weights is None or not count:  # no tap lands on this phase: zeros
                if gather is not None:
                    cells = (slice(None), slice(first + p_first * stride - o0, None, stride),
                             *(slice(p.first, None, s) for p, s in zip(combo[1:], strides3[1:])))
                    target[cells] = 0
                continue
            width = weights.shape[2]
            if joint is not None and gather is None:
                _add_phase_numpy(products[:, 0, offset:offset + width], target, (i0, i1),
                                 (o0, o1), size3, [p.taps for p in combo], strides3,
                                 dilation3, reach3)
                continue
            if joint is not None and gather is not None:
                a, b, d = combo
                gather(products, y4, n0, n1, i0, i1 - i0, size3[1], size3[2], p_first,
                       p_last, a.outputs, a.count, a.index, a.position, b.outputs, b.count,
                       b.index, b.position, d.outputs, d.count, d.index, d.position,
                       len(b.taps), len(d.taps), fg, 0, f, offset)
                continue
            for g0 in range(0, groups, group_batch):
                g1 = min(groups, g0 + group_batch)
                # a batch of groups' products in one call, stored (cells, groups, taps·Fg):
                # a cell's products for those groups side by side, as the gather reads them
                cols = buffer[: (g1 - g0) * count * width].reshape(count, g1 - g0, width)
                if groups == 1 and count <= KERNEL_FIRST_CELLS:
                    # few cells of one group: the kernel's rows times the cells' transpose,
                    # then the small result transposed (see KERNEL_FIRST_CELLS)
                    releasing_gil()
                    np.copyto(cols[:, 0], np.matmul(weights[0].T, pieces[0].T).T)
                else:
                    releasing_gil()
                    np.matmul(pieces[g0:g1], weights[g0:g1], out=cols.transpose(1, 0, 2))
                if gather is not None:
                    a, b, d = combo
                    gather(cols, y4, n0, n1, i0, i1 - i0, size3[1], size3[2], p_first,
                           p_last, a.outputs, a.count, a.index, a.position,
                           b.outputs, b.count, b.index, b.position,
                           d.outputs, d.count, d.index, d.position,
                           len(b.taps), len(d.taps), fg, g0 * fg, f, 0)
                    continue
                for g in range(g0, g1):
                    _add_phase_numpy(cols[:, g - g0], target[..., g * fg:(g + 1) * fg],
                                     (i0, i1), (o0, o1), size3, [p.taps for p in combo],
                                     strides3, dilation3, reach3)

    def work(first: int, last: int) -> None:
        for index in range(first, last):
            run_unit(units[index])

    run_chunks(work, len(units), 1, threads=threads, flops=2.0 * x.size * taps * fg)
    return y


#: Input cells of one piece up to which grouped products run kernel first
#: (:func:`kernel_first`). Measured (one thread, 3×3 with 32 groups): 32 channels a group
#: on 16 cells, the products (cells × 32) @ (32 × 9·32) of the strided views 0.32 ms,
#: the kernel's rows times a copy of the cells' transpose 0.12; 16 channels on 49
#: cells 0.14 against 0.13, 8 on 196 0.16 against 0.15. One group on as few cells runs
#: each phase's product kernel first too, ``(taps·F, C) @ (C, cells)`` then the small
#: result transposed into the columns: 0.72–0.88× the time of the cells times the
#: kernel's transposed view (one thread, load average 22, interleaved in one process:
#: 3×3 512 -> 512 on 4² 2.69 against 3.39 ms, stride 2 on 7² 3.01 against 4.19, 256 on 7²
#: 1.04 against 1.19; PyTorch 2.69, 3.18, 1.00).
KERNEL_FIRST_CELLS = 64


def kernel_first(
    x: np.ndarray, weights: np.ndarray, y: np.ndarray,
    units: Sequence[tuple[int, int, int, int, int, int]],
    plans: Sequence[_AxisPlan],
    size3: Sequence[int], out3: Sequence[int], kernel3: Sequence[int],
    strides3: Sequence[int], dilation3: Sequence[int], reach3: Sequence[int],
    gather: Callable[..., None] | None, chunk_bytes: int, threads: int | None,
) -> None:
    """The grouped products on few cells, as the kernel's rows times the cells: for
    each group ``(taps·Fg, Cg) @ (Cg, cells)`` from a view of the kernel (no copy,
    every tap at once) and a copy of the group's cells, transposed, written transposed
    into the layout the gather of :func:`transposed` reads; one gather over every output
    cell (the axes' full tables), not one per output phase.

    ``weights`` is ``(G, taps·Fg, Cg)`` (a view of the transposed kernel), ``y`` the
    ``(N, *out, F)`` result to fill, the rest :func:`transposed`'s tables.
    """
    n, c = x.shape[0], x.shape[-1]
    groups, width, cg = weights.shape
    fg = width // math.prod(kernel3)
    f = fg * groups
    rows_per_image, cells_per_row = size3[0], size3[1] * size3[2]
    x_rows = x.reshape(n, rows_per_image, cells_per_row, c)
    y4 = y.reshape(n, out3[0], out3[1], -1)
    y5 = y.reshape(n, *out3, f)
    largest = max((n1 - n0) * (i1 - i0) for n0, n1, _, _, i0, i1 in units) * cells_per_row
    group_batch = max(1, min(groups, chunk_bytes // max(1, largest * width * x.dtype.itemsize)))
    every_tap = [tuple(range(k)) for k in kernel3]

    def run_unit(unit: tuple[int, int, int, int, int, int]) -> None:
        n0, n1, o0, o1, i0, i1 = unit
        count = (n1 - n0) * (i1 - i0) * cells_per_row
        target = y5[n0:n1, o0:o1]
        if gather is None or not count:
            target[...] = 0
        if not count:
            return
        # (G, Cg, cells): each group's input channels, one row per channel
        cells = workspace("col2im.cells", (groups, cg, count), x.dtype)
        np.copyto(cells, x_rows[n0:n1, i0:i1].reshape(count, groups, cg).transpose(1, 2, 0))
        products = workspace("col2im.columns", (group_batch * width * count,), x.dtype)
        for g0 in range(0, groups, group_batch):
            g1 = min(groups, g0 + group_batch)
            # stored (cells, groups, taps·Fg), as the gather reads them
            cols = products[: (g1 - g0) * width * count].reshape(count, g1 - g0, width)
            releasing_gil()
            np.matmul(weights[g0:g1], cells[g0:g1], out=cols.transpose(1, 2, 0))
            if gather is None:
                for g in range(g0, g1):
                    _add_phase_numpy(cols[:, g - g0], target[..., g * fg:(g + 1) * fg],
                                     (i0, i1), (o0, o1), size3, every_tap, strides3,
                                     dilation3, reach3)
                continue
            a, b, d = plans  # every output row, column, ...: one call, no phases
            gather(cols, y4, n0, n1, i0, i1 - i0, size3[1], size3[2], o0, o1, a.outputs,
                   a.count, a.index, a.tap, b.outputs, b.count, b.index, b.tap, d.outputs,
                   d.count, d.index, d.tap, kernel3[1], kernel3[2], fg, g0 * fg, f, 0)

    def work(first: int, last: int) -> None:
        for index in range(first, last):
            run_unit(units[index])

    run_chunks(work, len(units), 1, threads=threads, flops=2.0 * x.size * width)


#: When col2im applies: rank 1 to 3 (any strides, dilation, groups, padding).
applies = Requirements((("rank 1 to 3", lambda p: 1 <= p.rank <= 3),))


#: Stride 1 (the input gradient of a stride-1 convolution) has no zeros to skip:
#: measured (one core, batch 32, 3×3, 8² to 32², 16 to 128 channels) 1.03–1.9×
#: slower than :mod:`.register_tiles` on the grid in 7 of 8 layers. Not charged
#: below :data:`NARROW_CHANNELS` output channels per group, where the direct
#: algorithms' products are as narrow as the output.
STRIDE_1_SHARE = 1.5

#: Output channels per group below which the direct algorithms' products are narrow.
NARROW_CHANNELS = 16

#: Input cells (all images) up to which stride 1 with one group is not charged
#: :data:`STRIDE_1_SHARE` (groups keep it: 32 groups of 16 on 7², 0.29 against the
#: grouped register tiles' 0.18 ms):
#: the direct algorithms' products on so few cells reread the kernel's panels, and the
#: grid way copies the kernel flipped and swapped. Measured (one thread, busy machine,
#: 3×3 input gradients, col2im against the grid way's choice): 196 cells of 256 to 1024
#: channels 0.70–0.72× the time (14² at batch 1: 512 -> 512 11.5 against 16.2 ms), 16
#: to 128 channels on 49 to 256 cells 0.85–1.0×, 16 images of 4²×512 0.97×; 784 cells
#: 1.3–1.7× and 3136 cells 1.25–2× slower (the share applies).
FEW_CELLS = 256

#: Columns of a phase's product (its taps × output channels per group) below which
#: the gather per cell dominates.
NARROW_COLUMNS = 7.0


def cost(problem: ConvProblem) -> float:
    """Estimated cost in :mod:`.flat_rows` units (``0.7 × flops`` there).

    ``problem`` is the transposed problem: ``problem.flops`` counts the
    zero-inserted grid, ``1 / prod(strides)`` of it meets input cells. Measured
    (one core, float32) against :mod:`.phase`, which costs ``0.7 ×`` those:
    1.1–1.8× faster on strided 1-D/2-D/3-D layers with 3 to 256 channels
    (a few 3×3 stride-2 ones within 10 %), so about ``0.6 ×`` plus a share for
    the gather that small kernels do not amortize (3-tap stride-1 layers stay
    with :mod:`.flat_rows`); one product per group makes tiny groups slow
    (depthwise stays with the direct algorithms): ``1 + 16 / Cg`` (3×3 stride 2 with 32
    groups of 32 on 16 images of 4² cells, 4.0–4.2 ms against
    :mod:`.register_tiles`' phases' 2.6; 16 channels a group on one 7² image, a tie).

    Few output channels per group (the input gradient of a network's first
    convolution: 1 to 8 of them) leave narrow products, but the products are
    as wide as a phase's taps times those channels: the cost grows as
    ``NARROW_COLUMNS / columns`` below :data:`NARROW_COLUMNS` columns. Measured
    (one thread, busy machine; batch 1 on 112², 16 on 56², 4 on 32²) on such
    input gradients: 7×7 stride 2 with 3 channels 0.31–0.51× the time of
    :mod:`.phase` (49 taps: 37 columns a phase), 5×5 stride 2 0.42–1.45×,
    3×3 stride 2 0.68–1.17× (6.75 columns: a tie, charged 1.04), 1 channel
    0.61–1.7× (2.25 columns: charged 3.1, phase's); stride 1 with 3 channels
    1.0–2.5× faster than :mod:`.flat_rows` / :mod:`.register_tiles` (3×3 and 5×5),
    8 channels even, 16 channels 1.5× slower (:data:`STRIDE_1_SHARE` from 16 on, with
    groups or above :data:`FEW_CELLS` input cells).
    """
    real = problem.flops / math.prod(problem.strides)
    taps = math.prod(problem.kernel_size)
    per_group = problem.in_channels // max(1, problem.groups)
    group_share = 1.0 + 16.0 / max(1, per_group) if problem.groups > 1 else 1.0
    outputs = problem.kernel_shape[-2]  # output channels per group
    columns = outputs * taps / math.prod(problem.strides)  # a phase's product, on average
    narrow = max(1.0, NARROW_COLUMNS / columns)
    cells = problem.batch * math.prod(problem.input_shape[1:-1])
    unstrided = (STRIDE_1_SHARE if math.prod(problem.strides) == 1 and outputs >= NARROW_CHANNELS
                 and (cells > FEW_CELLS or problem.groups > 1) else 1.0)
    return real * (0.6 + 0.3 / taps) * group_share * narrow * unstrided


register_algorithm("col2im", transposed, applies=applies, cost=cost, kind="transposed")
