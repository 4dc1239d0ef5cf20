"""Max and average pooling over channels-last arrays, forward and backward.

The forward pass reads each window where it lies in the unpadded input: only
the window's cells inside the input (:func:`window_spans`), so no padded copy
is made. With compiled kernels (:mod:`.algorithms._llvm_pool`, one or two
spatial axes, float32/float64) each output cell's window is reduced channels-last,
a vector of channels at a time, the output rows split over the worker threads
(called through numba where it is installed: a ctypes call costs microseconds;
numba's loops, :mod:`.algorithms._numba_pool`, where the llvmlite kernels are
off); a global average is the compiled global average (each image read once, front
to back, images or channels split over the workers from a million values), without
it BLAS's gemv with ``1 / cells``, or, split over the workers, numba's one-pass loop;
otherwise NumPy reduces one axis and one tap at a time over strided views
(:func:`clipped_windows`). A remembered call plan runs :func:`bind`'s function. A max pool's gradient scans each
window with the compiled kernel, else takes NumPy's passes over the taps.
Divisors follow PyTorch exactly:

* ``count_include_pad=True``: the cells of the window inside the padded input
  (a ceil-mode window hanging past the padding counts only what it covers);
* ``count_include_pad=False``: the window's cells inside the real input.

Max pooling pads with ``-inf``, propagates NaN, and its gradient goes to the
first maximum in window order (PyTorch's rule for ties).

Examples
--------
>>> import numpy as np
>>> from convarith import ConvSpec
>>> x = np.arange(5.0).reshape(1, 5, 1)
>>> spec = ConvSpec(2, strides=2, pool="avg", ceil_mode=True, rank=1)
>>> forward(x, spec.resolve(x.shape))[0, :, 0]
array([0.5, 2.5, 4. ])
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..arithmetic import effective_kernel
from ..spec import ResolvedConv
from .algorithms import _llvm_pool, _native_jobs, _numba_pool, _threads
from .algorithms.offset_gemm import tap_view
from .padding import pad

__all__ = ["forward", "backward", "divisor", "reduce_windows", "spread_windows", "PoolPlan",
           "pool_plan", "window_spans", "axis_taps", "clipped_windows", "THREADED_WORK",
           "SMALL_WORK", "GLOBAL_THREADED_VALUES", "bind", "global_channels_first"]


_ONE_ROW = np.array([[0, 1]], np.int64)  # a one-dimensional pool's one row of taps
_ONE_ROW.flags.writeable = False


@dataclass(frozen=True)
class PoolPlan:
    """What a pooling call derives from its resolved spec (the engine remembers it with
    the call: :class:`~convarith.engine.core.CallPlan`)."""

    window_padding: tuple[tuple[int, int], ...]  # the spec's, and a ceil-mode overhang
    padded_size: tuple[int, ...]
    whole: bool  # one window, every input cell and no padding: a global pool
    uniform: bool  # every average window counts all its cells
    # a global average's 1 / cells (read-only) in the compute dtype
    weights: np.ndarray | None = field(default=None, compare=False)
    # per spatial axis, each window's span inside the input (window_spans)
    spans: tuple[np.ndarray, ...] = field(default=(), compare=False)
    # per spatial axis, how the NumPy path reduces it (axis_taps)
    taps: tuple[Any, ...] = field(default=(), compare=False)
    # an average's divisor per output cell, flat, in the compute dtype (read-only)
    divisors: np.ndarray | None = field(default=None, compare=False)
    # the compiled kernel's window tables (one or two spatial axes): rows, columns
    rows: np.ndarray | None = field(default=None, compare=False)
    columns: np.ndarray | None = field(default=None, compare=False)
    # their addresses, and the divisors' (0: none), as the kernel takes them
    addresses: tuple[int, int, int] = field(default=(0, 0, 0), compare=False)
    # a max pool's windows covering every input cell, overlapping: the tables with a
    # third column, the leading taps earlier windows hold (first_writes); else None
    first_rows: np.ndarray | None = field(default=None, compare=False)
    first_columns: np.ndarray | None = field(default=None, compare=False)


def pool_plan(resolved: ResolvedConv, dtype: Any = None) -> PoolPlan:
    """The :class:`PoolPlan` of a resolved pooling spec (with ``dtype``, the compute
    dtype, a global average's weights and an average's divisors are made once here).

    >>> from convarith import ConvSpec
    >>> pool_plan(ConvSpec(7, pool="avg").resolve((1, 7, 7, 3))).whole
    True
    """
    spec = resolved.spec
    window_padding = tuple(resolved.window_padding)
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(resolved.input_size, window_padding))
    unpadded = not any(lo or hi for lo, hi in window_padding)
    whole = unpadded and all(o == 1 and k == n and (d == 1 or k == 1) for o, k, d, n in zip(
        resolved.output_size, spec.kernel_size, spec.dilation, resolved.input_size))
    uniform = not any(resolved.overhang) and (spec.count_include_pad or not any(
        lo or hi for lo, hi in resolved.padding))
    weights = None
    if whole and spec.pool == "avg" and dtype is not None:
        cells = math.prod(resolved.input_size)
        weights = np.full(cells, 1 / cells, dtype)
        weights.flags.writeable = False
    spans = tuple(
        window_spans(n, k, s, d, lo, o) for n, k, s, d, (lo, _), o in zip(
            resolved.input_size, spec.kernel_size, spec.strides, spec.dilation, window_padding,
            resolved.output_size))
    for span in spans:
        span.flags.writeable = False
    divisors = None
    if spec.pool == "avg" and not whole and dtype is not None:
        divisors = np.ascontiguousarray(divisor(resolved).ravel(), dtype)
        divisors.flags.writeable = False
    rows = columns = None
    addresses = (0, 0, 0)
    if len(spans) <= 2:
        rows, columns = (_ONE_ROW, *spans) if len(spans) == 1 else spans
        addresses = (rows.ctypes.data, columns.ctypes.data,
                     0 if divisors is None else divisors.ctypes.data)
    taps = tuple(axis_taps(n, k, s, d, lo, o) for n, k, s, d, (lo, _), o in zip(
        resolved.input_size, spec.kernel_size, spec.strides, spec.dilation, window_padding,
        resolved.output_size))
    first_rows = first_columns = None
    if spec.pool == "max" and len(spans) <= 2 and all(
            d == 1 or k == 1 for k, d in zip(spec.kernel_size, spec.dilation)):
        made = [first_writes(span, n) for span, n in zip(spans, resolved.input_size)]
        written = [table for table in made if table is not None]
        if len(written) == len(made):
            if len(written) == 1:
                written.insert(0, np.array([[0, 1, 0]], np.int64))
            first_rows, first_columns = written
            for table in written:
                table.flags.writeable = False
    return PoolPlan(window_padding, padded, whole, uniform, weights, spans, taps, divisors,
                    rows, columns, addresses, first_rows, first_columns)


def first_writes(spans: np.ndarray, size: int) -> np.ndarray | None:
    """Along one axis of undilated windows (:func:`window_spans`), the spans with a third
    column: how many of each window's leading cells an earlier window holds (the
    others no earlier window reaches: its gradient is written there, not added);
    ``None`` unless the windows, in order, cover every cell of ``size``.

    >>> first_writes(window_spans(5, 3, 2, 1, 1, 3), 5).tolist()
    [[0, 2, 0], [1, 3, 1], [3, 2, 1]]
    >>> first_writes(window_spans(5, 2, 3, 1, 0, 2), 5) is None  # cell 2 in no window
    True
    """
    table = []
    reached = -1  # the last cell the windows so far cover
    for first, count in spans.tolist():
        if count <= 0 or first > reached + 1:
            return None
        table.append((first, count, min(count, max(0, reached - first + 1))))
        reached = max(reached, first + count - 1)
    if not table or reached != size - 1:
        return None
    return np.array(table, np.int64)


def window_spans(size: int, kernel: int, stride: int, dilation: int, pad_lo: int, out: int
                 ) -> np.ndarray:
    """Each window's part inside the input along one axis: ``(out, 2)`` int64 rows of its
    first input cell inside the input and how many of its taps are inside.

    Window ``o`` reads positions ``o·stride - pad_lo + t·dilation`` (``t < kernel``);
    those inside ``[0, size)`` are consecutive taps. A window wholly in the padding
    (or past it, ceil mode) has count 0 (and first cell 0).

    >>> window_spans(5, 3, 2, 1, 1, 3).tolist()
    [[0, 2], [1, 3], [3, 2]]
    """
    positions, inside = _window_positions(size, kernel, stride, dilation, pad_lo, out)
    count = inside.sum(axis=1)
    first = positions[np.arange(out), np.argmax(inside, axis=1)] if out else count
    return np.ascontiguousarray(np.stack([np.where(count > 0, first, 0), count], axis=1),
                                np.int64)


def _whole(resolved: ResolvedConv, batch: int) -> tuple[slice, ...]:
    return (slice(0, batch), *(slice(0, n) for n in resolved.output_size))


def divisor(resolved: ResolvedConv) -> np.ndarray:
    """How many cells each output cell of an average pool divides by.

    Shaped ``(*output_size, 1)`` to broadcast over channels-last outputs.

    >>> from convarith import ConvSpec
    >>> divisor(ConvSpec(3, padding=1, pool="avg", rank=1).resolve((4,)))[:, 0].tolist()
    [2.0, 3.0, 3.0, 2.0]
    """
    spec = resolved.spec
    total = np.ones((), dtype=np.float64)
    for axis, (lo, hi) in enumerate(resolved.padding):
        size = resolved.input_size[axis]
        s, d, k = spec.strides[axis], spec.dilation[axis], spec.kernel_size[axis]
        starts = np.arange(resolved.output_size[axis])[:, None] * s
        positions = starts + np.arange(k)[None, :] * d
        if spec.count_include_pad:
            inside = positions < size + lo + hi
        else:
            inside = (positions >= lo) & (positions < lo + size)
        counts = inside.sum(axis=1).astype(np.float64)
        total = np.multiply.outer(total, counts)
    return total[..., None]


def forward(x: np.ndarray, resolved: ResolvedConv, planned: PoolPlan | None = None
            ) -> np.ndarray:
    """Pool channels-last ``x`` ``(N, *spatial, C)`` per the resolved spec.

    With compiled kernels (one or two spatial axes, float32/float64) each window's
    cells inside the input are reduced in one pass per output cell, the output rows
    split over the workers; otherwise one axis at a time (:func:`clipped_windows`):
    a max or a sum over a rectangle is the max or sum over its rows of the max or
    sum over each row. Neither pads the input. A global average is one pass over
    each image by the compiled global average, without it a matrix-vector product
    with ``1 / cells`` (numba's loop where the images are split over the workers,
    :func:`_global_average`).
    ``planned`` is :func:`pool_plan` of ``resolved`` (made here if not given).

    >>> from convarith import ConvSpec
    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> forward(x, ConvSpec(2, strides=2, pool="max").resolve(x.shape))[0, ..., 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    >>> forward(x, ConvSpec(4, pool="avg").resolve(x.shape)).ravel()
    array([7.5])
    """
    spec = resolved.spec
    if planned is None:
        planned = pool_plan(resolved, x.dtype)
    if planned.whole:
        batch, channels = x.shape[0], x.shape[-1]
        cells = x.size // max(1, batch * channels)
        rows = x.reshape(batch, cells, channels)
        y = np.maximum.reduce(rows, axis=1) if spec.pool == "max" else _global_average(
            rows, planned)
        return y.reshape(batch, *resolved.output_size, channels)
    kind = "max" if spec.pool == "max" else "avg"
    fast = _forward_compiled(x, resolved, planned, kind)
    if fast is not None:
        return fast
    if kind == "max":
        return clipped_windows(x, np.maximum, spec.kernel_size, spec.strides, spec.dilation,
                               planned.window_padding, resolved.output_size, planned.taps)
    y = clipped_windows(x, np.add, spec.kernel_size, spec.strides, spec.dilation,
                        planned.window_padding, resolved.output_size, planned.taps)
    if planned.uniform:
        y /= y.dtype.type(math.prod(spec.kernel_size))  # every window counts all its cells
        return y
    with np.errstate(divide="ignore", invalid="ignore"):
        y /= divisor(resolved).astype(x.dtype)
    return y


def bind(resolved: ResolvedConv, planned: PoolPlan) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`forward` of ``resolved`` as one function of a channels-last ``x`` (what a
    remembered call plan runs, :class:`~convarith.engine.core.CallPlan`): a global
    average goes straight to its kernel (about 1 µs less per call than through
    :func:`forward`), any other pooling through :func:`forward` with ``planned``.

    >>> from convarith import ConvSpec
    >>> x = np.arange(8.0).reshape(1, 2, 2, 2)
    >>> resolved = ConvSpec(2, pool="avg").resolve(x.shape)
    >>> bind(resolved, pool_plan(resolved, x.dtype))(x).ravel()
    array([3., 4.])
    """
    if not planned.whole and len(resolved.output_size) <= 2:
        return _bound_windows(resolved, planned)
    if not (planned.whole and resolved.spec.pool == "avg"):
        return lambda x: forward(x, resolved, planned)
    return _bound_global_average(resolved, planned)


def _bound_global_average(resolved: ResolvedConv, planned: PoolPlan
                          ) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`bind` for a global average: the compiled kernel called straight from here,
    in this thread or, from :data:`GLOBAL_THREADED_VALUES` input values, as one table
    of its calls split over the workers; what depends on ``x``'s shape and the kernel
    (the chunk, the output's shape, the table's fixed columns) is worked out at the
    first call of each and reused. The kernel and the thresholds are read at each
    call (the vector ISA setting may change); anything but a C-contiguous ``x`` of the
    plan's dtype takes :func:`_global_average`."""
    out_size = resolved.output_size
    cells = math.prod(resolved.input_size)
    dtype = None if planned.weights is None else planned.weights.dtype
    # (the kernel's id, x's shape, the worker count) -> (the kernel, :func:`_global_plan`)
    made: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def general(x: np.ndarray) -> np.ndarray:
        batch, channels = x.shape[0], x.shape[-1]
        y = _global_average(x.reshape(batch, cells, channels), planned)
        return y.reshape(batch, *out_size, channels)

    def global_average(x: np.ndarray) -> np.ndarray:
        if x.dtype != dtype or not cells or not x.flags.c_contiguous:
            return general(x)
        kernel = _llvm_pool.global_average_kernel(dtype)
        if kernel is None:
            return general(x)
        threaded = x.size >= GLOBAL_THREADED_VALUES
        workers = _threads.worker_count() if threaded else 1
        key = (id(kernel), x.shape, workers)
        plan = made.get(key)
        if plan is None or plan[0] is not kernel:  # (an id is reused once its object dies)
            if len(made) >= 8:  # (kernels made anew at each call: keep a few)
                made.clear()
            shape, chunk, table, jobs = _global_plan(kernel, x.shape, x.itemsize, cells,
                                                     out_size, workers)
            plan = made[key] = (kernel, shape, chunk, table, jobs,
                                0 if jobs is None else jobs.ctypes.data)
        _, shape, chunk, table, jobs, jobs_address = plan
        y = np.empty(shape, x.dtype)
        if table is not None and jobs is not None:
            # the pieces over the workers, the helpers without the GIL
            calls = table.copy()  # (the plan may be run by several threads at once)
            fill = _llvm_pool.table_filler()
            if fill is None:
                calls[:, 1] = x.ctypes.data
                calls[:, 2] = y.ctypes.data
                _threads.run_native_jobs(_global_runner(), calls, jobs, threads=workers)
            else:  # (the jobs' address kept with them: each .ctypes.data costs ~1 µs)
                _threads.run_native_table(_global_runner(), fill(calls, x, y), len(calls),
                                          jobs_address, len(jobs), workers)
        elif kernel.call is not None and x.ndim == 4:
            # through numba (~1 µs, a ctypes call ~4; numba compiles its call for each
            # number of axes: two spatial axes take x and y as they are)
            kernel.call(x, y, 0, shape[0], cells, shape[-1], 0, shape[-1], chunk)
        elif kernel.call is not None:
            kernel.call(x.reshape(shape[0], cells, shape[-1]), y.reshape(shape[0], shape[-1]),
                        0, shape[0], cells, shape[-1], 0, shape[-1], chunk)
        else:
            kernel.drive(x.ctypes.data, y.ctypes.data, 0, shape[0], cells, shape[-1], 0,
                         shape[-1], chunk)
        return y

    return global_average


def _global_runner() -> Any:
    """The native jobs' runner of the global average's calls (two pointers, then
    :data:`~.algorithms._llvm_pool.GLOBAL_FIELDS`)."""
    return _native_jobs.rows_runner(2, len(_llvm_pool.GLOBAL_FIELDS))


def _global_plan(kernel: _llvm_pool.GlobalAverageKernel, shape: tuple[int, ...], itemsize: int,
                 cells: int, out_size: tuple[int, ...], workers: int
                 ) -> tuple[tuple[int, ...], int, np.ndarray | None, np.ndarray | None]:
    """How :func:`_bound_global_average` runs an ``x`` of ``shape``: the output's shape,
    the chunk, and, with more than one worker and the native jobs' runner here, the
    table of the kernel's calls (:func:`_global_table`, its x and y columns 0) and its
    jobs; else ``None`` for both."""
    batch, channels = shape[0], shape[-1]
    chunk = _llvm_pool.global_chunk(channels, itemsize)
    out_shape = (batch, *out_size, channels)
    if workers < 2 or _global_runner() is None:
        return out_shape, chunk, None, None
    table = _global_table(kernel, 0, 0, batch, cells, channels, chunk, workers)
    table.flags.writeable = False
    jobs = np.array([(i, 1) for i in range(len(table))], np.int64)
    jobs.flags.writeable = False
    return out_shape, chunk, table, jobs


def _global_table(kernel: _llvm_pool.GlobalAverageKernel, x_address: int, y_address: int,
                  batch: int, cells: int, channels: int, chunk: int, workers: int
                  ) -> np.ndarray:
    """The global average's calls for ``workers`` (two pieces each), one row per call
    (:func:`~.algorithms._native_jobs.rows_runner`'s table): pieces of images, or, with
    fewer images than workers, of channels (whole vectors each)."""
    head = (kernel.address, x_address, y_address)
    if batch >= workers:
        count = min(batch, 2 * workers)
        edges = [batch * i // count for i in range(count + 1)]
        rows = [(*head, first, stop, cells, channels, 0, channels, chunk)
                for first, stop in zip(edges, edges[1:])]
    else:  # whole vectors of channels per piece
        vectors = -(-channels // kernel.width)
        count = min(vectors, 2 * workers)
        starts = [min(channels, vectors * i // count * kernel.width) for i in range(count)]
        rows = [(*head, 0, batch, cells, channels, first, stop, chunk)
                for first, stop in zip(starts, starts[1:] + [channels]) if first < stop]
    return np.array(rows, np.int64).reshape(-1, 3 + len(_llvm_pool.GLOBAL_FIELDS))


def global_channels_first(x: Any, planned: PoolPlan, pool: str, compute_dtype: np.dtype[Any]
                          ) -> np.ndarray | None:
    """A global pool of channels-first ``x`` ``(N, C, *spatial)`` (one window over
    every cell, ``planned.whole``), ``(N, C, 1, ...)``, without moving its channels
    last: each ``(n, c)``'s cells are contiguous, so a global average is one gemv of
    the ``(N·C, cells)`` rows with ``1 / cells`` and a global max one reduction along
    them (16 images of 28²×144, float32, one core, busy machine: 0.15 ms against 2.4
    through a channels-last copy; PyTorch's NCHW average 1.6). ``None`` where
    ``x`` is not a batched ndarray of ``compute_dtype`` (the caller's usual path).

    >>> from convarith import ConvSpec
    >>> x = np.arange(8.0).reshape(1, 2, 2, 2)
    >>> plan = pool_plan(ConvSpec(2, pool="avg").resolve((1, 2, 2, 2)), x.dtype)
    >>> global_channels_first(x, plan, "avg", x.dtype).ravel()
    array([1.5, 5.5])
    """
    if type(x) is not np.ndarray or x.dtype != compute_dtype or x.ndim < 3:
        return None
    batch, channels = x.shape[0], x.shape[1]
    cells = math.prod(x.shape[2:])
    rows = x.reshape(batch * channels, cells)
    if pool == "max":
        y = np.maximum.reduce(rows, axis=1) if cells else np.full(len(rows), -np.inf, x.dtype)
    else:
        weights = planned.weights
        if weights is None or weights.dtype != x.dtype or len(weights) != cells:
            weights = np.full(cells, 1 / max(1, cells), x.dtype)
        y = np.dot(rows, weights)
    return y.reshape(batch, channels, *(1,) * (x.ndim - 2))


def _bound_windows(resolved: ResolvedConv, planned: PoolPlan
                   ) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`bind` of a pooling of one or two spatial axes that is not a global one:
    below :data:`NATIVE_THREADED_WORK` window cells, on a C-contiguous ``x`` of the
    plan's dtype, the compiled kernel (or numba's loops) called at once with the
    plan's tables; otherwise :func:`forward`."""
    spec = resolved.spec
    kind = "max" if spec.pool == "max" else "avg"
    out_size = resolved.output_size
    rank = len(out_size)
    window = math.prod(out_size) * math.prod(spec.kernel_size)
    out_rows = 1 if rank == 1 else out_size[0]
    row_step = 1 if rank == 1 else spec.dilation[0]
    column_step = spec.dilation[-1]
    rows, columns, divisors = planned.rows, planned.columns, planned.divisors
    dtype = None if divisors is None else divisors.dtype  # an average's compute dtype

    def pool(x: np.ndarray) -> np.ndarray:
        batch, channels = x.shape[0], x.shape[-1]
        cells = batch * channels * window
        if cells >= NATIVE_THREADED_WORK or not x.flags.c_contiguous or (
                kind == "avg" and x.dtype != dtype):
            return forward(x, resolved, planned)
        loops = _compiled_loops(x.dtype, kind, rank, cells)
        if loops is None:
            return forward(x, resolved, planned)
        y = np.empty((batch, *out_size, channels), x.dtype)
        units = batch * out_rows
        x_rows, y_rows = _as_rows(x), _as_rows(y)  # (the layouts forward's calls take)
        if isinstance(loops, _llvm_pool.PoolKernel):
            if loops.call is None:
                return forward(x, resolved, planned)
            # (numba reads only the arrays' addresses; a max pool reads no divisors)
            loops.call(x_rows, y_rows, y_rows if divisors is None else divisors, rows,
                       columns, 0, units, out_rows, out_size[-1], channels,
                       x[0].size if batch else 0, x.shape[-2] * channels, row_step,
                       column_step, 0, channels)
        elif kind == "max":
            loops[0](x_rows, y_rows, rows, columns, 0, units, row_step, column_step)
        else:
            loops[1](x_rows, y_rows, divisors, rows, columns, 0, units, row_step,
                     column_step)
        return y

    return pool


#: Input values from which a global average pool by the compiled kernel splits its
#: images (or, for one image, its channels) over the workers as a native batch
#: (:mod:`.algorithms._native_jobs`); without the compiled kernel, from twice as many.
#: Quiet 2-core Zen 4, float32, 16 images, wall time, medians of 400 calls, one thread
#: against split: 4²×2048 (524K values) 38.4 / 34.0 µs, 7²×672 35.8 / 31.7, 14²×240
#: 50.7 / 41.0, 7²×2048 106 / 74; below, a tie or a loss: 7²×480 (376K) 23.7 / 23.5,
#: 4²×1152 21.6 / 22.5, 4²×672 12.7 / 17.5. Without the compiled kernel the split of
#: the same 524K-753K inputs took 3-4× one thread's time.
GLOBAL_THREADED_VALUES = 1 << 19


def _global_average(rows: np.ndarray, planned: PoolPlan) -> np.ndarray:
    """The mean over the middle axis of ``rows`` ``(N, cells, C)``, ``(N, C)``.

    The compiled kernel (:func:`.algorithms._llvm_pool.global_average_kernel`): one
    pass over each image's cells per block of up to eight vectors of channels, at
    about the memory's speed on one core (float32, one core, busy machine: 16 images
    of 56²×96 0.38 ms against BLAS's gemv 1.41; 4²×2048 38 against 44 µs; one
    image of 7²×240 1.0 against 1.6), from :data:`GLOBAL_THREADED_VALUES` input
    values split over the workers. Without it, BLAS's gemv with ``1 / cells``
    (2-5x faster than NumPy's sum over the middle axis), or, split over the workers,
    numba's one-pass loop.
    """
    kernel = _llvm_pool.global_average_kernel(rows.dtype) if rows.shape[1] else None
    if kernel is not None:
        return _global_average_compiled(kernel, np.ascontiguousarray(rows))
    return _global_average_uncompiled(rows, planned)


def _global_average_uncompiled(rows: np.ndarray, planned: PoolPlan) -> np.ndarray:
    """:func:`_global_average` without the compiled kernel."""
    batch, cells, channels = rows.shape
    workers = (1 if batch < 2 or rows.size < 2 * GLOBAL_THREADED_VALUES
               else _threads.worker_count())
    loops = _numba_pool.numba_kernels() if workers > 1 and rows.dtype.char in "fd" else None
    if loops is None:
        weights = planned.weights
        if weights is None or weights.dtype != rows.dtype:
            weights = np.full(cells, 1 / max(1, cells), rows.dtype)
        if batch == 1:  # (np.dot's gemv call costs ~0.4 µs less than matmul's)
            return np.dot(weights, rows[0])[None]
        return np.matmul(weights, rows)
    average = loops[2]
    rows = np.ascontiguousarray(rows)
    y = np.empty((batch, channels), rows.dtype)
    _threads.run_chunks(lambda first, stop: average(rows, y, first, stop), batch,
                        -(-batch // (4 * workers)), threads=workers, blas=False)
    return y


def _global_average_compiled(kernel: _llvm_pool.GlobalAverageKernel, rows: np.ndarray
                             ) -> np.ndarray:
    """:func:`_global_average` by the compiled kernel on C-contiguous ``rows``: in this
    thread, or in pieces of images (one image: of channels, whole vectors each) over
    the workers, the kernel's calls in one table run by the helpers without the GIL."""
    batch, cells, channels = rows.shape
    y = np.empty((batch, channels), rows.dtype)
    chunk = _llvm_pool.global_chunk(channels, rows.itemsize)
    workers = 1 if rows.size < GLOBAL_THREADED_VALUES else _threads.worker_count()
    runner = _native_jobs.rows_runner(2, len(_llvm_pool.GLOBAL_FIELDS)) if workers > 1 \
        else None
    if runner is None:
        if kernel.call is not None:  # through numba: ~1 µs a call, not ~3
            kernel.call(rows, y, 0, batch, cells, channels, 0, channels, chunk)
        else:
            kernel.drive(rows.ctypes.data, y.ctypes.data, 0, batch, cells, channels, 0,
                         channels, chunk)
        return y
    table = _global_table(kernel, rows.ctypes.data, y.ctypes.data, batch, cells, channels,
                          chunk, workers)
    _threads.run_native_jobs(runner, table, [(i, 1) for i in range(len(table))],
                             threads=workers)
    return y


#: Window cells (output values × taps; twice that for a max pool's gradient, which reads
#: each window twice) below which a compiled pooling runs in the calling thread: about
#: 200 µs of one core. A helper woken for chunks needs the interpreter's lock, which
#: the caller holds until its own chunk starts, and on a virtual machine one that slept
#: for it starts ~0.1 ms late: smaller pools ran slower on two threads than on one
#: (quiet machine, 2×2 stride 2, float32: one 112²×64 image, 802k cells, 0.175 ms on
#: two threads, 0.072 on one core; 16 images of 14²×512 0.189 against 0.145), larger
#: ones faster (16 images of 28²×256, 3.2M cells: 0.29 against 1.26 ms).
THREADED_WORK = 1 << 21

#: Window cells from which a forward pooling by the compiled kernel (llvmlite) splits
#: its output rows over the workers as a native batch (:mod:`.algorithms._native_jobs`:
#: the kernel's calls in one table, the helpers without the GIL). Quiet machine, two
#: cores, float32, against one thread or the closures from :data:`THREADED_WORK`:
#: 3×3 stride 2 max pool on one 112²×64 image (1.8M cells) 117 -> 89 µs, 16 images of
#: 14²×512 2×2 stride 2 (1.6M) 121 -> 90, 16 of 28²×256 (3.2M) 254 -> 194; below
#: about 1M cells one thread is as fast or faster (803k: 68 against 70 µs; 401k: 41
#: against 51).
NATIVE_THREADED_WORK = 1 << 20


#: Window cells below which numba's loops (where installed) run a pooling rather than the
#: llvmlite kernel: their call costs about a microsecond less than the kernel's through
#: numba (one core, float32, 2×2 stride 2 on 7²×512, 18k cells: 4.5 against 5.4 µs;
#: 14²×512, 100k cells: 12.5 against 11.5; 3×3 stride 2 on 56²×64, 451k cells: 73
#: against 34), a few less than its ctypes call without numba (7 against 17 µs).
SMALL_WORK = 1 << 16


def _compiled_loops(dtype: np.dtype[Any], kind: str, rank: int, cells: int
                    ) -> _llvm_pool.PoolKernel | tuple[Any, ...] | None:
    """The llvmlite kernel of ``kind`` or numba's loops (numba's first below
    :data:`SMALL_WORK` window ``cells``), for one or two spatial axes of
    float32/float64 (``None``: neither here)."""
    if rank > 2 or dtype.char not in "fd":
        return None
    if cells < SMALL_WORK:
        loops = _numba_pool.numba_kernels()
        if loops is not None:
            return loops
    kernel = _llvm_pool.pool_kernel(dtype, kind)
    return kernel if kernel is not None else _numba_pool.numba_kernels()


def _as_rows(a: np.ndarray) -> np.ndarray:
    """A one-dimensional pool's ``(N, W, C)`` as one row ``(N, 1, W, C)`` (a view)."""
    return a[:, None] if a.ndim == 3 else a


def _forward_compiled(x: np.ndarray, resolved: ResolvedConv, planned: PoolPlan, kind: str
                      ) -> np.ndarray | None:
    """:func:`forward` by the compiled kernel, or numba's loops (one or two spatial axes),
    in chunks of output rows over the workers; ``None`` if neither runs here."""
    spec = resolved.spec
    batch, channels = x.shape[0], x.shape[-1]
    cells = batch * math.prod(resolved.output_size) * channels * math.prod(spec.kernel_size)
    loops = _compiled_loops(x.dtype, kind, len(resolved.output_size), cells)
    if loops is None:
        return None
    x = np.ascontiguousarray(x)
    y = np.empty((batch, *resolved.output_size, channels), x.dtype)
    if kind == "avg" and (planned.divisors is None or planned.divisors.dtype != x.dtype):
        planned = pool_plan(resolved, x.dtype)  # made for another dtype
    out_rows = 1 if len(resolved.output_size) == 1 else resolved.output_size[0]
    row_step = 1 if len(resolved.output_size) == 1 else spec.dilation[0]
    units = batch * out_rows
    run: Callable[[int, int], None]
    if isinstance(loops, _llvm_pool.PoolKernel):
        fields = (resolved.output_size[-1], channels, x[0].size if batch else 0,
                  x.shape[-2] * channels, row_step, spec.dilation[-1], 0, channels)
        if loops.call is not None:  # through numba: ~1 µs a call, not ~5
            call, x_rows, y_rows = loops.call, _as_rows(x), _as_rows(y)
            # (a max pool reads no divisors: the output stands in)
            arrays = (planned.divisors if kind == "avg" else y_rows, planned.rows,
                      planned.columns)

            def run(first: int, stop: int) -> None:
                call(x_rows, y_rows, *arrays, first, stop, out_rows, *fields)
        else:
            drive = loops.drive
            rows, columns, divisors = planned.addresses
            x_address, y_address = x.ctypes.data, y.ctypes.data

            def run(first: int, stop: int) -> None:
                drive(x_address, y_address, divisors, rows, columns, first, stop, out_rows,
                      *fields)
    else:
        x_rows, y_rows = _as_rows(x), _as_rows(y)
        loop = loops[0] if kind == "max" else loops[1]
        tables = (planned.rows, planned.columns) if kind == "max" else (
            planned.divisors, planned.rows, planned.columns)

        def run(first: int, stop: int) -> None:
            loop(x_rows, y_rows, *tables, first, stop, row_step, spec.dilation[-1])

    if isinstance(loops, _llvm_pool.PoolKernel) and units >= 2 and cells >= NATIVE_THREADED_WORK:
        workers = _threads.worker_count()
        runner = _native_jobs.rows_runner(5, len(_llvm_pool.DRIVE_FIELDS)) if workers > 1 \
            else None
        if runner is not None:
            # the chunks as one table of the kernel's calls, the helpers without the GIL
            rows, columns, divisors = planned.addresses
            head = (ctypes.c_void_p.from_buffer(loops.drive).value or 0, x.ctypes.data,
                    y.ctypes.data, divisors, rows, columns)
            count = min(units, 4 * workers)
            edges = [units * i // count for i in range(count + 1)]
            table = np.array([(*head, first, stop, out_rows, *fields)
                              for first, stop in zip(edges, edges[1:])], np.int64)
            _threads.run_native_jobs(runner, table, [(i, 1) for i in range(count)],
                                     threads=workers)
            return y
    workers = 1 if units < 2 or cells < THREADED_WORK else _threads.worker_count()
    if workers == 1:
        run(0, units)
    else:
        _threads.run_chunks(run, units, -(-units // (4 * workers)), threads=workers,
                            blas=False)
    return y


def _window_positions(size: int, kernel: int, stride: int, dilation: int, pad_lo: int,
                      out: int) -> tuple[np.ndarray, np.ndarray]:
    """The input position each window's tap reads along one axis ``(out, kernel)``, and
    whether it is inside the input."""
    positions = (np.arange(out, dtype=np.int64)[:, None] * stride - pad_lo
                 + np.arange(kernel, dtype=np.int64)[None, :] * dilation)
    return positions, (positions >= 0) & (positions < size)


AxisTaps = tuple[int, tuple[tuple[int, int, int], ...]] | None


def axis_taps(size: int, kernel: int, stride: int, dilation: int, pad_lo: int, out: int
              ) -> AxisTaps:
    """How :func:`clipped_windows` reduces one axis: ``None`` where each window is its own
    cell, else ``(full, taps)``: per kernel tap that some window holds inside the input,
    the windows ``[o0, o1)`` that hold it and the input cell window ``o0`` reads there,
    the ``full`` taps that every window holds first.

    >>> axis_taps(5, 3, 2, 1, 1, 3)
    (1, ((0, 3, 0), (1, 3, 1), (0, 2, 1)))
    """
    if kernel == 1 and stride == 1 and pad_lo == 0 and out == size:
        return None
    positions, inside = _window_positions(size, kernel, stride, dilation, pad_lo, out)
    spans = []
    for tap in range(kernel):
        holds = np.flatnonzero(inside[:, tap])  # consecutive windows
        if holds.size:
            o0 = int(holds[0])
            spans.append((o0, int(holds[-1]) + 1, int(positions[o0, tap])))
    full = [span for span in spans if span[:2] == (0, out)]
    return len(full), tuple(full + [span for span in spans if span[:2] != (0, out)])


def clipped_windows(x: np.ndarray, op: np.ufunc, kernel_size: tuple[int, ...],
                    strides: tuple[int, ...], dilation: tuple[int, ...],
                    window_padding: tuple[tuple[int, int], ...], out_size: tuple[int, ...],
                    taps: tuple[AxisTaps, ...] | None = None) -> np.ndarray:
    """``op`` (``np.maximum`` or ``np.add``) over the cells of each window that lie inside
    the unpadded ``x`` ``(N, *spatial, C)``, a new array ``(N, *out_size, C)``: padding
    (and a ceil-mode overhang) is skipped, as if it held ``-inf`` (max) or 0 (sum).

    One spatial axis at a time (a max or sum over a box is one along each axis in
    turn): along it, each tap combines the outputs whose window holds it inside the
    input with one strided view (no padded copy); a single window is one
    ``op.reduce``. ``taps``: each axis's :func:`axis_taps` (made here if not given).

    >>> clipped_windows(np.arange(4.0).reshape(1, 4, 1), np.add, (3,), (1,), (1,),
    ...                 ((1, 1),), (4,))[0, :, 0]
    array([1., 3., 6., 5.])
    """
    if taps is None:
        taps = tuple(axis_taps(n, k, s, d, lo, o) for n, k, s, d, (lo, _), o in zip(
            x.shape[1:-1], kernel_size, strides, dilation, window_padding, out_size))
    fill = -np.inf if op is np.maximum else 0
    current = x
    for axis, (plan, s, d, out) in enumerate(zip(taps, strides, dilation, out_size), 1):
        if plan is None:
            continue  # each window is its own cell
        full, spans = plan
        head = (slice(None),) * axis
        shape = current.shape[:axis] + (out,) + current.shape[axis + 1:]
        if out == 0 or not spans:
            current = np.full(shape, fill, x.dtype)
            continue
        if out == 1:  # one window: a reduction over the cells it holds
            current = op.reduce(current[head + (slice(spans[0][2], spans[-1][2] + 1, d),)],
                                axis=axis, keepdims=True)
            continue
        views = [current[head + (slice(start, start + (o1 - o0 - 1) * s + 1, s),)]
                 for o0, o1, start in spans]
        if full >= 2:  # the first two taps make the new array
            result, first = op(views[0], views[1]), 2
        elif full == 1:
            result, first = np.array(views[0]), 1
        else:
            result, first = np.full(shape, fill, x.dtype), 0
        for (o0, o1, _), source in zip(spans[first:], views[first:]):
            target = result[head + (slice(o0, o1),)]
            op(target, source, out=target)
        current = result
    if current is x:
        current = np.array(x)  # every window one cell: a copy
    return current


def reduce_windows(xp: np.ndarray, op: np.ufunc, kernel_size: tuple[int, ...],
                   strides: tuple[int, ...], dilation: tuple[int, ...],
                   out_size: tuple[int, ...]) -> np.ndarray:
    """``op`` (``np.add`` or ``np.maximum``) over every window of padded ``xp``, a new
    array ``(N, *out_size, C)``.

    One spatial axis at a time: along it, the ``K`` cells of each window are
    combined (``K - 1`` passes over strided views), or, for a single window (a
    global pool), one ``op.reduce`` over the cells it covers. ``np.maximum``
    propagates NaN, as PyTorch's max pooling does.

    >>> reduce_windows(np.arange(6.0).reshape(1, 6, 1), np.add, (3,), (3,), (1,), (2,))[0, :, 0]
    array([ 3., 12.])
    """
    current = xp
    for axis, (k, s, d, o) in enumerate(zip(kernel_size, strides, dilation, out_size), 1):
        head = (slice(None),) * axis
        span = (o - 1) * s + 1 if o else 0  # the cells the windows' first taps start at
        if o == 0 or k == 1:
            current = current[head + (slice(0, span, s),)]
            continue
        if o == 1:
            current = op.reduce(current[head + (slice(0, effective_kernel(k, d), d),)], axis=axis,
                                keepdims=True)
            continue
        # the first two taps make the new array, the others are combined into it
        combined = op(current[head + (slice(0, span, s),)],
                      current[head + (slice(d, d + span, s),)])
        for tap in range(2, k):
            op(combined, current[head + (slice(tap * d, tap * d + span, s),)], out=combined)
        current = combined
    if current is xp or not current.flags.owndata:
        current = np.array(current)  # a view of the input (a 1×1 window): copy
    return current


def _max_with_argmax(
    xp: np.ndarray, resolved: ResolvedConv, block: tuple[slice, ...], want_argmax: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    spec = resolved.spec
    shape = (xp.shape[0], *resolved.output_size, xp.shape[-1])
    best = np.full(shape, -np.inf, dtype=xp.dtype)
    argmax = np.zeros(shape, dtype=np.int32) if want_argmax else None
    update = np.empty(shape, dtype=bool)
    for number, tap in enumerate(np.ndindex(*spec.kernel_size)):
        view = tap_view(xp, block, tap, spec.strides, spec.dilation)
        if number == 0:
            best[...] = view
            continue
        # PyTorch: take the new value if it is larger, or NaN (first max wins ties)
        np.greater(view, best, out=update)
        update |= np.isnan(view)
        np.copyto(best, view, where=update)
        if argmax is not None:
            argmax[update] = number
    return best, argmax


def spread_windows(dy: np.ndarray, kernel_size: tuple[int, ...], strides: tuple[int, ...],
                   dilation: tuple[int, ...], padded_size: tuple[int, ...]) -> np.ndarray:
    """The adjoint of a window sum: each cell of ``dy`` ``(N, *out, C)`` added to every
    cell of its window, on the padded grid ``(N, *padded_size, C)``.

    One spatial axis at a time, as :func:`reduce_windows` (a window sum is a sum
    along each axis in turn, so its adjoint spreads along each axis in turn): a
    single window (a global pool) is a broadcast, non-overlapping windows a
    repeat, others ``K`` strided additions. The result may be a read-only
    broadcast view.

    >>> spread_windows(np.ones((1, 2, 1)), (2,), (2,), (1,), (5,))[0, :, 0]
    array([1., 1., 1., 1., 0.])
    """
    current = dy
    for axis, (k, s, d, length) in enumerate(zip(kernel_size, strides, dilation, padded_size), 1):
        o = current.shape[axis]
        shape = current.shape[:axis] + (length,) + current.shape[axis + 1:]
        if o == 1 and d == 1 and k == length:  # one window over the whole axis
            current = np.broadcast_to(current, shape)
            continue
        spread = np.zeros(shape, current.dtype)
        index: list[slice] = [slice(None)] * current.ndim
        if o == 0:
            current = spread
            continue
        if o == 1:  # one window: its k cells all get the value
            index[axis] = slice(0, effective_kernel(k, d), d)
            spread[tuple(index)] = current
        elif d == 1 and s == k:  # windows side by side: each value repeated k times
            index[axis] = slice(0, o * k)
            blocks = spread[tuple(index)].reshape(*shape[:axis], o, k, *shape[axis + 1:])
            blocks[...] = np.expand_dims(current, axis + 1)
        else:
            for tap in range(k):
                index[axis] = slice(tap * d, tap * d + (o - 1) * s + 1, s)
                spread[tuple(index)] += current
        current = spread
    return current


def backward(x: np.ndarray, resolved: ResolvedConv, dy: np.ndarray,
             planned: PoolPlan | None = None) -> np.ndarray:
    """Gradient of :func:`forward` with respect to ``x``, given the output gradient.

    Average pooling spreads ``dy / divisor`` over each window
    (:func:`spread_windows`; a global average by numba's loop, :func:`_global_spread`).
    Max pooling sends each cell of ``dy`` to the first maximum of its window (PyTorch's
    rule for ties; with a NaN in the window, to its last NaN, as PyTorch's ``val > max
    or isnan(val)`` scan).

    >>> from convarith import ConvSpec
    >>> x = np.array([[[1.0], [3.0], [3.0], [2.0]]])
    >>> spec = ConvSpec(2, strides=2, pool="max", rank=1)
    >>> backward(x, spec.resolve(x.shape), np.ones((1, 2, 1)))[:, :, 0]
    array([[0., 1., 1., 0.]])
    """
    spec = resolved.spec
    if planned is None:
        planned = pool_plan(resolved)
    inner = (slice(None),) + tuple(
        slice(lo, lo + n) for (lo, _), n in zip(planned.window_padding, resolved.input_size)
    ) + (slice(None),)
    if spec.pool != "max":
        if planned.whole:
            spread = _global_spread(dy, resolved.input_size)
            if spread is not None:
                return spread
        if planned.uniform:
            share = dy / dy.dtype.type(math.prod(spec.kernel_size))  # every window counts all
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                share = dy / divisor(resolved).astype(dy.dtype)
        spread = spread_windows(share, spec.kernel_size, spec.strides, spec.dilation,
                                planned.padded_size)
        return np.ascontiguousarray(spread[inner])
    tiles = _tiles(resolved, planned)
    kind = "max_grad_set" if tiles else (
        "max_grad" if planned.first_rows is None else "max_grad_first")
    kernel = _llvm_pool.pool_kernel(x.dtype, kind) if len(
        resolved.output_size) <= 2 and x.dtype.char in "fd" else None
    if kernel is not None:
        streaming = tiles and _streams(kernel.width, x)
        if streaming:
            kernel = _llvm_pool.pool_kernel(x.dtype, "max_grad_stream") or kernel
        return _max_grad_compiled(kernel, np.ascontiguousarray(x), resolved, planned,
                                  np.ascontiguousarray(dy, x.dtype), tiles, streaming,
                                  kind == "max_grad_first")
    block = _whole(resolved, x.shape[0])
    xp = pad(x, planned.window_padding, "zeros", fill=-np.inf)
    apart = all(s >= effective_kernel(k, d) for k, s, d in
                zip(spec.kernel_size, spec.strides, spec.dilation))
    # windows side by side over every cell: each cell of d_xp is written once below
    tiled = apart and xp is x and all(  # (dilated windows skip cells: not tiled)
        s == k and (d == 1 or k == 1) and n == o * s for k, s, d, n, o in zip(
            spec.kernel_size, spec.strides, spec.dilation, x.shape[1:-1], resolved.output_size))
    d_xp = np.empty_like(xp) if tiled else np.zeros_like(xp)
    y = reduce_windows(xp, np.maximum, spec.kernel_size, spec.strides, spec.dilation,
                       resolved.output_size)
    number = None
    if np.isnan(y).any():  # the exact scan: the last NaN of a window takes its gradient
        _, number = _max_with_argmax(xp, resolved, block, want_argmax=True)
    hit = np.empty(y.shape, bool)
    open_cells = np.ones(y.shape, bool)  # outputs whose gradient has not been sent yet
    # a product with the mask is ~10x faster than np.where's select; an infinite or NaN
    # gradient times 0 is NaN, so then the select
    finite = bool(np.isfinite(dy).all())
    zero = dy.dtype.type(0)
    last = math.prod(spec.kernel_size) - 1
    # which taps of each window lie inside the input, per axis: a padding cell never
    # takes the gradient (a window of -inf values sends it to its first cell inside)
    inside = [_window_positions(n, k, s, d, lo, o)[1] for n, k, s, d, (lo, _), o in zip(
        resolved.input_size, spec.kernel_size, spec.strides, spec.dilation,
        planned.window_padding, resolved.output_size)]
    for position, tap in enumerate(np.ndindex(*spec.kernel_size)):
        if number is not None:
            np.equal(number, position, out=hit)
        elif position == last:  # the maximum is in the window: the outputs left have it here
            hit = open_cells
        else:  # the first tap that holds the maximum, in window order
            np.equal(tap_view(xp, block, tap, spec.strides, spec.dilation), y, out=hit)
            axes = [axis[:, t] for axis, t in zip(inside, tap)]
            if not all(axis.all() for axis in axes):
                hit &= functools.reduce(np.logical_and.outer, axes).reshape(
                    1, *resolved.output_size, 1)
            hit &= open_cells
            open_cells ^= hit
        target = tap_view(d_xp, block, tap, spec.strides, spec.dilation)
        if apart and finite:  # each input cell is in one window at most: write, not add
            np.multiply(dy, hit, out=target)
        elif apart:
            target[...] = np.where(hit, dy, zero)
        else:
            target += dy * hit if finite else np.where(hit, dy, zero)
    return np.ascontiguousarray(d_xp[inner])


def _global_spread(dy: np.ndarray, input_size: tuple[int, ...]) -> np.ndarray | None:
    """A global average's input gradient ``(N, *input_size, C)``: each image's ``dy /
    cells`` in every cell, by numba's loop (one core, float32, 16 images of 56²×32:
    0.32 -> 0.11 ms, of 28²×96 0.16 -> 0.06, against NumPy's copy of the broadcast
    view); ``None`` without numba or for another dtype than float32/float64."""
    loops = _numba_pool.numba_kernels() if dy.dtype.char in "fd" else None
    if loops is None:
        return None
    batch, channels = dy.shape[0], dy.shape[-1]
    cells = math.prod(input_size)
    share = np.ascontiguousarray(dy).reshape(batch, channels) / dy.dtype.type(cells)
    d_x = np.empty((batch, *input_size, channels), dy.dtype)
    if d_x.size:
        loops[3](share, d_x.reshape(batch, cells, channels), 0, batch)
    return d_x


def _tiles(resolved: ResolvedConv, planned: PoolPlan) -> bool:
    """Whether the windows lie side by side from the input's start (no padding, no
    dilation gaps, stride = window), each input cell in one window at most: then each
    cell they cover is written once by the kernel, and the cells past the last window
    (a floor-mode input of ``o·s + r`` cells, ``r < s``) are zeroed by
    :func:`_zero_uncovered`.

    >>> from convarith import ConvSpec
    >>> spec = ConvSpec(2, strides=2, pool="max")
    >>> _tiles(spec.resolve((1, 4, 4, 1)), pool_plan(spec.resolve((1, 4, 4, 1))))
    True
    >>> _tiles(spec.resolve((1, 5, 4, 1)), pool_plan(spec.resolve((1, 5, 4, 1))))
    True
    >>> spec = ConvSpec(2, strides=2, pool="max", ceil_mode=True)
    >>> _tiles(spec.resolve((1, 5, 4, 1)), pool_plan(spec.resolve((1, 5, 4, 1))))
    False
    """
    spec = resolved.spec
    return not any(lo or hi for lo, hi in planned.window_padding) and all(
        s == k and (d == 1 or k == 1) and o * s <= n for k, s, d, n, o in zip(
            spec.kernel_size, spec.strides, spec.dilation, resolved.input_size,
            resolved.output_size))


def _zero_uncovered(d_x: np.ndarray, resolved: ResolvedConv) -> None:
    """Zero the cells of ``d_x`` ``(N, *spatial, C)`` past the last window of each axis
    (:func:`_tiles`' windows cover the rest); nothing where they cover every cell."""
    spec = resolved.spec
    for axis, (n, o, s) in enumerate(zip(resolved.input_size, resolved.output_size,
                                         spec.strides)):
        if o * s < n:
            d_x[(slice(None),) * (axis + 1) + (slice(o * s, None),)] = 0


#: Input gradients of a max pool whose windows tile the input, of at least this many
#: bytes, are written past the caches (``max_grad_stream``): their lines are not read
#: first and do not push the input and ``dy`` out of the last-level cache, where a
#: second call finds them. One core, float32, 2×2 stride 2, the kernel alone (busy
#: machine, CPU time): 16×28²×256 2.50 -> 1.55 ms, 16×14²×512 0.64 -> 0.24,
#: 16×56²×128 2.19 -> 1.82; below, where input, gradient and ``dy`` stay in the cache
#: together, ordinary stores are faster (one 112²×64 image, 3.2 MB: 0.14 against
#: 0.17 ms through ``conv_vjp``).
STREAM_BYTES = 4 << 20


def _streams(width: int, x: np.ndarray) -> bool:
    """Whether a tiling max pool's input gradient, shaped as ``x``, is written with
    non-temporal stores: of :data:`STREAM_BYTES` or more, its vectors of ``width``
    lanes whole cache lines (AVX-512) and its channels whole vectors (every vector
    then aligned in an :func:`~.algorithms._threads.aligned_empty` array).

    >>> _streams(16, np.empty((16, 28, 28, 256), np.float32)), _streams(8, np.empty(
    ...     (16, 28, 28, 256), np.float32)), _streams(16, np.empty((1, 28, 28, 256), np.float32))
    (True, False, False)
    """
    return (x.nbytes >= STREAM_BYTES and width * x.itemsize % _threads.ALIGN == 0
            and x.shape[-1] % width == 0)


def _max_grad_compiled(kernel: _llvm_pool.PoolKernel, x: np.ndarray, resolved: ResolvedConv,
                       planned: PoolPlan, dy: np.ndarray, tiles: bool = False,
                       streaming: bool = False, first: bool = False) -> np.ndarray:
    """A max pool's input gradient by the compiled kernel (one or two spatial axes): per
    output cell, a scan of its window for the tap PyTorch's scan ends on, then ``dy``
    added there. Windows overlap, so the workers take whole images and, with fewer
    images than chunks, ranges of channels (never two the same input cell). Where the
    windows tile the input (``tiles``, a ``max_grad_set`` kernel) every cell is
    written, ``dy`` or zero, and nothing is zeroed first (a 2×2 stride-2 pool on
    16×28²×256 on one core: 2.26 -> 1.59 ms of CPU time); ``streaming`` (a
    ``max_grad_stream`` kernel, :func:`_streams`) into an aligned array. Where they
    overlap and cover every cell (``first``, a ``max_grad_first`` kernel with the
    plan's :func:`first_writes` tables) each cell is written by the first window that
    holds it and added to by the others: nothing zeroed either (3×3 stride 2 on one
    56²×64 image, one core, CPU time: 89 -> 72 µs; 16 images 1.92 -> 1.50 ms)."""
    spec = resolved.spec
    batch, channels = x.shape[0], x.shape[-1]
    written = tiles or first  # every cell written by the kernel: no zeroing
    rows_table, columns_table = (planned.first_rows, planned.first_columns) if first else (
        planned.rows, planned.columns)
    # zeroed below, by the chunks where they take whole images
    d_x = _threads.aligned_empty(x.shape, x.dtype) if streaming else np.empty_like(x)
    if tiles:
        _zero_uncovered(d_x, resolved)
    out_rows = 1 if len(resolved.output_size) == 1 else resolved.output_size[0]
    row_step = 1 if len(resolved.output_size) == 1 else spec.dilation[0]
    block = kernel.width * _llvm_pool.VECTORS
    fields = (resolved.output_size[-1], channels, x[0].size if batch else 0,
              x.shape[-2] * channels, row_step, spec.dilation[-1])
    run: Callable[[int, int, int, int], None]
    if kernel.call is not None:  # through numba: ~1 µs a call, not ~5
        call = kernel.call
        x_rows, dx_rows, dy_rows = _as_rows(x), _as_rows(d_x), _as_rows(dy)

        def run(first_image: int, stop_image: int, first_channel: int, stop_channel: int
                ) -> None:
            call(x_rows, dx_rows, dy_rows, rows_table, columns_table,
                 first_image * out_rows, stop_image * out_rows, out_rows, *fields,
                 first_channel, stop_channel)
    else:
        drive = kernel.drive
        rows, columns, _ = planned.addresses
        if first:
            assert rows_table is not None and columns_table is not None
            rows, columns = rows_table.ctypes.data, columns_table.ctypes.data
        x_address, dx_address, dy_address = x.ctypes.data, d_x.ctypes.data, dy.ctypes.data

        def run(first_image: int, stop_image: int, first_channel: int, stop_channel: int
                ) -> None:
            drive(x_address, dx_address, dy_address, rows, columns, first_image * out_rows,
                  stop_image * out_rows, out_rows, *fields, first_channel, stop_channel)

    workers = 1 if 2 * dy.size * math.prod(spec.kernel_size) < THREADED_WORK \
        else _threads.worker_count()
    # with fewer images than about 4 chunks per worker, pieces of channels too, each a
    # whole register block (narrower pieces run slower than one thread)
    pieces = 1 if workers == 1 else max(1, min(-(-4 * workers // max(1, batch)),
                                               channels // block))
    if workers == 1 or batch * pieces == 1:
        if not written:
            d_x.fill(0)
        run(0, batch, 0, channels)
        return d_x
    bounds = [min(channels, round(channels * i / pieces / block) * block)
              for i in range(pieces)] + [channels]
    runner = _native_jobs.rows_runner(5, len(_llvm_pool.DRIVE_FIELDS)) if written else None
    if runner is not None:
        # the chunks as one table of the kernel's calls, the helpers without the GIL
        rows, columns, _ = planned.addresses
        if first:
            assert rows_table is not None and columns_table is not None
            rows, columns = rows_table.ctypes.data, columns_table.ctypes.data
        head = (ctypes.c_void_p.from_buffer(kernel.drive).value or 0, x.ctypes.data,
                d_x.ctypes.data, dy.ctypes.data, rows, columns)
        if pieces == 1:  # runs of whole images
            count = min(batch, 4 * workers)
            edges = [batch * i // count for i in range(count + 1)]
            spans = [(first_image, stop_image, 0, channels)
                     for first_image, stop_image in zip(edges, edges[1:])]
        else:
            spans = [(image, image + 1, bounds[piece], bounds[piece + 1])
                     for image in range(batch) for piece in range(pieces)
                     if bounds[piece] < bounds[piece + 1]]
        table = np.array([(*head, first_image * out_rows, stop_image * out_rows, out_rows,
                           *fields, first_channel, stop_channel)
                          for first_image, stop_image, first_channel, stop_channel in spans],
                         np.int64)
        _threads.run_native_jobs(runner, table, [(i, 1) for i in range(len(table))],
                                 threads=workers)
        return d_x
    if pieces > 1 and not written:
        d_x.fill(0)  # (a strided fill per piece is slower than one memset)

    def work(start: int, stop: int) -> None:
        for chunk in range(start, stop):
            image, piece = divmod(chunk, pieces)
            if pieces == 1 and not written:  # a large np.zeros is a memset by the caller:
                d_x[image] = 0  # here in parallel
            if bounds[piece] < bounds[piece + 1]:
                run(image, image + 1, bounds[piece], bounds[piece + 1])

    _threads.run_chunks(work, batch * pieces, 1, threads=workers, blas=False)
    return d_x
