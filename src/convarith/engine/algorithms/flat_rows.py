"""Per-offset GEMM over flattened padded rows, with phase splitting for strides.

The trick. For stride 1, view the padded input ``(N, H, W, C)`` as one flat
``(N·H·W, C)`` matrix. Output cell ``(n, i, j)`` reads input cell
``(n, i + a, j + b)`` through kernel tap ``(a, b)``: flat index
``f(n, i, j) + a·W + b``. So if the output is laid out on the *same* grid
(``(N·H·W, F)``, the cells beyond the real output being garbage that is
dropped at the end), each tap is ONE matrix product of a contiguous shifted
slice of the input::

    out[0:L] += x_flat[a·W + b : a·W + b + L] @ kernel[a, b]

with no copy at all, and dilation only changes the shift.

Strides. Output cell ``o`` of an axis with stride ``S`` reads input cell
``o·S + k·D`` = ``(o + q)·S + r`` with ``q, r = divmod(k·D, S)``: tap ``k``
reads phase ``r`` of the input (every ``S``-th cell from ``r``) at shift
``q``. Splitting the input into its phases (space-to-depth) turns a strided
convolution into stride-1 ones that share the flat output grid, with no
multiply spent on cells the stride skips. The phases are gathered chunk by
chunk (the rows one block of output reads), so the split costs no memory
beyond a chunk.

Few channels. With ``C·taps`` small (an RGB stem, a one-channel input) each
product would have a tiny inner dimension; then the shifted slices of a block
of rows are gathered side by side (im2col, one block at a time so memory
stays bounded) and multiplied once. Strided 1-D and 2-D convolutions do the
same when numba compiles the gather: one product of inner size ``C·taps``
over the real output cells runs faster than a small product per tap.

A 1×1 kernel is a single product of the (subsampled) input with the
kernel, left to BLAS and its own threads.

Accumulation uses BLAS ``gemm`` with ``beta = 1`` (``C += A·B`` in place) when
SciPy is installed, else ``matmul`` into a scratch buffer and an add.

Examples
--------
>>> import numpy as np
>>> xp = np.arange(10.0).reshape(1, 10, 1)
>>> direct(xp, np.ones((3, 1, 1)), (2,), (1,), 1, (4,))[0, :, 0]
array([ 3.,  9., 15., 21.])
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...arithmetic import effective_kernel
from .. import gradient_costs
from ..dispatch import ConvProblem, Requirements, register_algorithm
from ..padding import pad
from ..state import cached_once
from ._outputs import POOL_BYTES, output_empty
from ._threads import (
    SMALL_WORK,
    parallel_penalty,
    releasing_gil,
    run_chunks,
    worker_count,
    workspace,
)

__all__ = ["direct", "weight_grad", "applies", "cost", "FlatPlan", "plan", "CHUNK_BYTES", "accumulate",
           "blas_gemm", "chunk_rows",
           "gathers_cells", "grad_gathers_cells", "GRAD_FEW_CELLS", "GRAD_GATHER_INNER",
           "cells_block", "cells_cost", "chunk_count", "image_edges",
           "cells_column_edges", "grad_chunk_rows", "tap_regions", "real_tap_share",
           "taps_transposed", "applies_taps", "taps_cost", "TAPS_MOST_SHARE", "TAPS_MIN_ROWS", "TAPS_MIN_CHANNELS"]

#: Below this inner dimension (``C × taps``) the taps are gathered (im2col) per block.
GATHER_BELOW = 320


@dataclass(frozen=True)
class FlatPlan:
    """Where every kernel tap reads in the stacked, flattened phase images.

    ``phases`` lists the input phases used (one offset per axis); ``grid`` is
    the common size of the phase images; ``taps`` pairs each kernel index
    with ``(phase number, flat shift)``.
    """

    phases: tuple[tuple[int, ...], ...]
    grid: tuple[int, ...]
    taps: tuple[tuple[tuple[int, ...], int, int], ...]

    @property
    def cells(self) -> int:
        """Cells of one phase image (one batch item)."""
        return math.prod(self.grid)

    @property
    def max_shift(self) -> int:
        return max(shift for _, _, shift in self.taps)


def plan(
    padded_size: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
) -> FlatPlan:
    """The phase split and flat shifts of a convolution (remembered per shape: a
    training step's small layers called it at every call, ~20 µs of a 130 µs
    kernel gradient on a 4² image).

    >>> p = plan((9, 9), (3, 3), (2, 2), (1, 1))
    >>> p.phases, p.grid, len(p.taps)
    (((0, 0), (0, 1), (1, 0), (1, 1)), (5, 5), 9)
    """
    return _plan(*(tuple(int(v) for v in values)
                   for values in (padded_size, kernel_size, strides, dilation)))


@functools.lru_cache(maxsize=256)
def _plan(
    padded_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    strides: tuple[int, ...],
    dilation: tuple[int, ...],
) -> FlatPlan:
    grid = tuple(-(-p // s) for p, s in zip(padded_size, strides))
    steps = [math.prod(grid[axis + 1:]) for axis in range(len(grid))]
    phases: list[tuple[int, ...]] = []
    taps = []
    for k in itertools.product(*(range(n) for n in kernel_size)):
        split = [divmod(i * d, s) for i, d, s in zip(k, dilation, strides)]
        phase = tuple(r for _, r in split)
        if phase not in phases:
            phases.append(phase)
        shift = sum(q * step for (q, _), step in zip(split, steps))
        taps.append((k, phase, shift))
    phases.sort()
    return FlatPlan(
        tuple(phases), grid, tuple((k, phases.index(ph), shift) for k, ph, shift in taps)
    )


def _phase_images(xp: np.ndarray, flat_plan: FlatPlan, strides: Sequence[int],
                  padding: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """``(phases, N·cells, C)``: each phase of ``xp`` zero-padded to the common grid.

    With ``padding``, ``xp`` is the unpadded input and each phase is read from it
    where the padded input's phase would read it (zeros elsewhere): with strides no
    padded copy of the whole input is made besides the phases' own.
    """
    n, c = xp.shape[0], xp.shape[-1]
    if all(s == 1 for s in strides):
        return np.ascontiguousarray(xp if padding is None else pad(xp, padding)).reshape(1, -1, c)
    lows = [0] * len(strides) if padding is None else [lo for lo, _ in padding]
    highs = [0] * len(strides) if padding is None else [hi for _, hi in padding]
    stacked = np.zeros((len(flat_plan.phases), n, *flat_plan.grid, c), xp.dtype)
    for index, phase in enumerate(flat_plan.phases):
        source: list[Any] = [slice(None)]
        target: list[Any] = [index, slice(None)]
        for r, s, lo, hi, size in zip(phase, strides, lows, highs, xp.shape[1:-1]):
            # padded positions r + j·s, j < count, read the input at r + j·s - lo
            count = max(0, -(-(size + lo + hi - r) // s))
            first = max(0, -(-(lo - r) // s))
            last = min(count, -(-(size + lo - r) // s))
            start = r + first * s - lo
            source.append(slice(start, start + max(0, last - first) * s, s))
            target.append(slice(first, max(first, last)))
        stacked[tuple(target)] = xp[tuple(source)]
    return stacked.reshape(len(flat_plan.phases), -1, c)


def _phase_rows(
    xp: np.ndarray, flat_plan: FlatPlan, strides: Sequence[int], image: int, row0: int,
    row1: int,
) -> np.ndarray:
    """Rows ``row0 .. row1 - 1`` (first axis) of every phase of one image, flattened.

    ``(phases, (row1 - row0)·step, C)``, zero beyond the input: what one chunk
    of output rows reads, gathered while it is needed instead of copying the
    whole input into phases up front.
    """
    c = xp.shape[-1]
    local = np.zeros((len(flat_plan.phases), row1 - row0, *flat_plan.grid[1:], c), xp.dtype)
    for index, phase in enumerate(flat_plan.phases):
        first = phase[0] + row0 * strides[0]
        last = min(xp.shape[1], phase[0] + row1 * strides[0])
        if first >= last:
            continue
        source = (image, slice(first, last, strides[0])) + tuple(
            slice(r, None, s) for r, s in zip(phase[1:], strides[1:]))
        view = xp[source]
        local[(index,) + tuple(slice(0, e) for e in view.shape[:-1])] = view
    return local.reshape(len(flat_plan.phases), -1, c)


@cached_once
def _numba_gather() -> Callable[..., None] | None:
    """Compiled im2col gather of a chunk's rows, or ``None`` without numba."""
    try:
        import numba
    except ImportError:  # pragma: no cover - exercised by the numba-less test
        return None

    @numba.njit(nogil=True, cache=True)
    def gather(source, phases, shifts, start, columns):
        rows, taps, c = columns.shape
        for m in range(rows):
            for t in range(taps):
                src = source[phases[t], start + shifts[t] + m]
                dst = columns[m, t]
                for ch in range(c):
                    dst[ch] = src[ch]

    return gather


@cached_once
def _numba_im2col() -> Callable[..., None] | None:
    """Compiled 2-D im2col of a block of output rows, or ``None`` without numba."""
    try:
        import numba
    except ImportError:  # pragma: no cover - exercised by the numba-less test
        return None

    @numba.njit(nogil=True, cache=True)
    def im2col(xp, image, row0, col0, s0, s1, d0, d1, p0, p1, kh, kw, columns):
        # columns[r, j, a·kw + b] = xp[image, (row0 + r)·s0 + a·d0 - p0, (col0 + j)·s1 + b·d1 - p1],
        # zero where that falls on the padding (p0, p1 before each axis)
        rows, wo, _, c = columns.shape
        hi, wi = xp.shape[1], xp.shape[2]
        for r in range(rows):
            for ow in range(wo):
                for a in range(kh):
                    h = (row0 + r) * s0 + a * d0 - p0
                    for b in range(kw):
                        w = (col0 + ow) * s1 + b * d1 - p1
                        t = a * kw + b
                        if 0 <= h < hi and 0 <= w < wi:
                            for ch in range(c):
                                columns[r, ow, t, ch] = xp[image, h, w, ch]
                        else:
                            for ch in range(c):
                                columns[r, ow, t, ch] = 0.0

    return im2col


def _direct_im2col(
    xp: np.ndarray, kernel: np.ndarray, strides: Sequence[int], dilation: Sequence[int],
    out_size: Sequence[int], im2col: Callable[..., None], threads: int | None,
    chunk_bytes: int | None, padding: Sequence[tuple[int, int]] | None,
) -> np.ndarray:
    """Few channels, 1-D or 2-D: compiled im2col of real output cells only, one
    product per block of rows written straight into the output (zero padding
    is written into the columns, never copied)."""
    lifted = len(out_size) == 1
    before = [lo for lo, _ in padding] if padding is not None else [0] * len(out_size)
    p0, p1 = (0, before[0]) if lifted else (before[0], before[1])
    x2 = xp[:, None] if lifted else xp
    s0, s1 = (1, strides[0]) if lifted else (strides[0], strides[1])
    d0, d1 = (1, dilation[0]) if lifted else (dilation[0], dilation[1])
    o0, o1 = (1, out_size[0]) if lifted else (out_size[0], out_size[1])
    kh, kw = (1, kernel.shape[0]) if lifted else (kernel.shape[0], kernel.shape[1])
    n, c, f = xp.shape[0], xp.shape[-1], kernel.shape[-1]
    weights = np.ascontiguousarray(kernel).reshape(kh * kw * c, f)
    y = _output((n, o0, o1, f), xp.dtype)
    # blocks of whole rows, or of part of a row when one row is already large (1-D)
    if chunk_bytes is None:
        chunk_bytes = IM2COL_CHUNK_BYTES
    per_chunk = chunk_rows(o1, kh * kw * c, xp.dtype.itemsize, chunk_bytes)
    width = o1
    if per_chunk == 1:
        width = min(o1, chunk_rows(1, kh * kw * c, xp.dtype.itemsize, chunk_bytes))
    row_blocks = -(-o0 // per_chunk)
    col_blocks = -(-o1 // width)
    source = np.ascontiguousarray(x2)
    scratch = threading.local()  # one column buffer per worker thread, reused

    def work(first: int, last: int) -> None:
        buffer = getattr(scratch, "columns", None)
        if buffer is None:
            buffer = scratch.columns = workspace("flat_rows.im2col", (per_chunk, width, kh * kw, c),
                                                 xp.dtype)
        for unit in range(first, last):
            image, rest = divmod(unit, row_blocks * col_blocks)
            row_block, col_block = divmod(rest, col_blocks)
            row0 = row_block * per_chunk
            row1 = min(o0, row0 + per_chunk)
            col0 = col_block * width
            col1 = min(o1, col0 + width)
            columns = buffer[: row1 - row0, : col1 - col0]
            im2col(source, image, row0, col0, s0, s1, d0, d1, p0, p1, kh, kw, columns)
            # whole rows, or part of one row: both blocks are contiguous
            target = y[image, row0:row1, col0:col1].reshape(-1, f)
            releasing_gil()
            np.matmul(columns.reshape(-1, kh * kw * c), weights, out=target)

    flops = 2.0 * n * o0 * o1 * kh * kw * c * f
    run_chunks(work, n * row_blocks * col_blocks, 1, threads=threads, flops=flops)
    return y.reshape(n, *out_size, f)


#: Output cells per image up to which a kernel of many channels gathers every tap of
#: the real output cells (im2col) and runs one product, instead of one product per
#: tap over the flat grid (see :func:`gathers_cells`).
FEW_CELLS = 100

#: Column bytes per block of the few-cells im2col (kept per thread by
#: :func:`~._threads.workspace`, so it is not made again at every call).
CELLS_CHUNK_BYTES = 4 << 20


def gathers_cells(kernel_size: Sequence[int], in_channels: int, out_size: Sequence[int]) -> bool:
    """Whether :func:`direct` gathers the taps of the real output cells of small images.

    On a small image the flat grid's per-tap products compute many cells that are
    dropped (``⌈padded / S⌉`` cells per axis against the output's), each with few
    rows, so BLAS runs them poorly; with many channels one product of inner size
    ``C × taps`` over the few real cells (the columns copied from views of the input,
    any rank, stride or dilation) runs near the machine's matrix-multiply rate.

    >>> gathers_cells((3, 3), 512, (7, 7)), gathers_cells((3, 3), 512, (28, 28))
    (True, False)
    """
    taps = math.prod(kernel_size)
    return taps > 1 and in_channels * taps >= GATHER_BELOW and math.prod(out_size) <= FEW_CELLS


#: Output cells per image up to which :func:`weight_grad` gathers every tap of the real
#: output cells (:func:`grad_gathers_cells`) for a kernel of at least
#: :data:`GRAD_GATHER_INNER` inputs (``C × taps``).
GRAD_FEW_CELLS = 400

#: Fewest kernel inputs (``C × taps``) for which :func:`weight_grad` gathers the cells
#: of images of up to :data:`GRAD_FEW_CELLS` output cells.
GRAD_GATHER_INNER = 1024


def grad_gathers_cells(kernel_size: Sequence[int], in_channels: int,
                       out_size: Sequence[int]) -> bool:
    """Whether :func:`weight_grad` takes one product ``columnsᵀ · dy`` per block of the
    im2col of the real output cells (:func:`_weight_grad_cells`) rather than one
    product per tap over the flat grid: where :func:`direct` gathers them
    (:func:`gathers_cells`), and for images of up to :data:`GRAD_FEW_CELLS` output cells
    with at least :data:`GRAD_GATHER_INNER` kernel inputs. There the flat grid's
    products sum over a fifth to a third more cells than the output's (``⌈padded /
    S⌉`` per axis) in products of only ``C`` rows, and the one product of ``C × taps``
    rows over the real cells took 0.77-0.94 of their time (one core, CPU time, float32,
    3×3, per-tap products against the gathered cells, ms: 128 on 1×14² 0.78 / 0.68,
    stride 2 on 1×28² 0.77 / 0.69, 16×14² 14.4 / 11.4, 16×28² s2 14.3 / 11.9; 256 on
    1×14² 2.90 / 2.52, 16×14² 54.1 / 42.0, 1×28² s2 2.81 / 2.61; 128 on 1×16² 0.97 /
    0.86, 1×20² 1.48 / 1.39; 512 on 1×12² 8.35 / 7.58; 64 -> 128 on 4×14² 1.73 / 1.40;
    but 64 on 1×14² 0.20 / 0.21).

    >>> grad_gathers_cells((3, 3), 128, (14, 14)), grad_gathers_cells((3, 3), 64, (14, 14))
    (True, False)
    >>> grad_gathers_cells((3, 3), 128, (28, 28)), grad_gathers_cells((1, 1), 2048, (7, 7))
    (False, False)
    """
    taps = math.prod(kernel_size)
    return gathers_cells(kernel_size, in_channels, out_size) or (
        taps > 1 and in_channels * taps >= GRAD_GATHER_INNER
        and math.prod(out_size) <= GRAD_FEW_CELLS)


def cells_block(batch: int, out_size: Sequence[int], inner: int, itemsize: int,
                chunk_bytes: int | None = None) -> tuple[int, int]:
    """How :func:`_direct_cells` cuts its columns: ``(images, rows)`` per block, whole
    images (``rows`` the first output axis) when one fits :data:`CELLS_CHUNK_BYTES`,
    else ``images = 0`` and ``rows`` first-axis rows of one image.

    >>> cells_block(16, (7, 7), 9 * 512, 4), cells_block(1, (14, 14), 9 * 1024, 4)
    ((4, 7), (0, 8))
    """
    budget = CELLS_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    row_bytes = math.prod(out_size[1:]) * inner * itemsize
    rows = max(1, budget // row_bytes)
    if rows >= out_size[0]:
        return min(batch, rows // out_size[0]), out_size[0]
    return 0, rows


def image_edges(batch: int, images: int, workers: int) -> list[int]:
    """Where blocks of at most ``images`` images start, and the end, shared among
    ``workers`` threads: as many blocks as that needs, rounded up to a multiple of the
    workers (at most one per image), sizes differing by one at most (16 images in
    blocks of up to 14 on two threads: 8 and 8, not 14 and 2).

    >>> image_edges(16, 14, 2), image_edges(26, 4, 2), image_edges(3, 3, 2)
    ([0, 8, 16], [0, 3, 6, 9, 13, 16, 19, 22, 26], [0, 1, 3])
    """
    blocks = -(-batch // max(1, images))
    if workers > 1:
        blocks = min(batch, -(-blocks // workers) * workers)
    return [batch * i // blocks for i in range(blocks + 1)]


def _cells_units(batch: int, out_size: Sequence[int], inner: int, itemsize: int,
                 chunk_bytes: int | None, workers: int = 1) -> list[tuple[int, int, int, int]]:
    """The blocks of :func:`cells_block` as ``(first image, end, first row, end)``,
    balanced for ``workers`` threads (:func:`image_edges`)."""
    images, rows = cells_block(batch, out_size, inner, itemsize, chunk_bytes)
    if images:
        edges = image_edges(batch, images, workers)
        return [(i0, i1, 0, out_size[0]) for i0, i1 in zip(edges, edges[1:])]
    return [(i, i + 1, r, min(out_size[0], r + rows))
            for i in range(batch) for r in range(0, out_size[0], rows)]


def _cells_columns(xp: np.ndarray, unit: tuple[int, int, int, int], kernel_size: Sequence[int],
                   strides: Sequence[int], dilation: Sequence[int], out_size: Sequence[int],
                   before: Sequence[int] | None = None) -> np.ndarray:
    """``(cells, taps·C)``: every tap's input cell for the output cells of ``unit``
    (a per-thread workspace, valid until the next call); with ``before`` (zero padding
    still to apply before each axis, none negative), cells on the padding are zeros."""
    i0, i1, r0, r1 = unit
    c = xp.shape[-1]
    taps = math.prod(kernel_size)
    columns = workspace("flat_rows.cells", (i1 - i0, r1 - r0, *out_size[1:], taps, c), xp.dtype)
    if before is not None:
        columns[...] = 0
    shifts = before if before is not None else [0] * len(out_size)
    for index, k in enumerate(itertools.product(*(range(n) for n in kernel_size))):
        source: list[slice] = [slice(i0, i1)]
        target: list[slice] = [slice(None)]
        for axis, (kk, s, d, p) in enumerate(zip(k, strides, dilation, shifts)):
            o0, o1 = (r0, r1) if axis == 0 else (0, out_size[axis])
            offset = kk * d - p  # output cell o reads input cell o·S + offset
            lo = max(o0, -(offset // s))
            hi = min(o1, (xp.shape[1 + axis] - 1 - offset) // s + 1)
            if hi <= lo:
                break  # this tap reads only padding for these cells: zeros
            source.append(slice(lo * s + offset, (hi - 1) * s + offset + 1, s))
            target.append(slice(lo - o0, hi - o0))
        else:
            columns[..., index, :][tuple(target)] = xp[tuple(source)]
    return columns.reshape(-1, taps * c)


def _weight_grad_cells(xp: np.ndarray, dy: np.ndarray, kernel_size: Sequence[int],
                       strides: Sequence[int], dilation: Sequence[int],
                       threads: int | None) -> np.ndarray:
    """Few output cells, many channels: ``columnsᵀ · dy`` per block of the im2col of
    :func:`_direct_cells`, the blocks' products summed."""
    n, c, f = xp.shape[0], xp.shape[-1], dy.shape[-1]
    out_size = dy.shape[1:-1]
    taps = math.prod(kernel_size)
    workers = threads if threads is not None else worker_count()
    units = _cells_units(n, out_size, taps * c, xp.dtype.itemsize, None, workers)

    def work(first: int, last: int) -> np.ndarray:
        # products written in place (fresh multi-MiB temporaries cost their page faults)
        total = np.empty((taps * c, f), xp.dtype)
        for unit in units[first:last]:
            i0, i1, r0, r1 = unit
            columns = _cells_columns(xp, unit, kernel_size, strides, dilation, out_size)
            grads = dy[i0:i1, r0:r1].reshape(-1, f)
            if unit is units[first]:
                releasing_gil()
                np.matmul(columns.T, grads, out=total)
            else:
                product = workspace("flat_rows.cells_product", total.shape, xp.dtype)
                releasing_gil()
                np.matmul(columns.T, grads, out=product)
                total += product
        return total

    chunk = -(-len(units) // workers)
    flops = 2.0 * n * math.prod(out_size) * taps * c * f
    partials = run_chunks(work, len(units), chunk, threads=threads, flops=flops)
    total = partials[0]
    for partial in partials[1:]:
        total += partial
    return total.reshape(*kernel_size, c, f)


def _direct_cells(
    xp: np.ndarray, kernel: np.ndarray, strides: Sequence[int], dilation: Sequence[int],
    out_size: Sequence[int], threads: int | None, chunk_bytes: int | None,
    before: Sequence[int] | None = None,
) -> np.ndarray:
    """Few output cells, many channels: im2col of the real output cells of blocks of
    whole images (or of rows of one image when one image's columns are large), one
    product per block written straight into the output; ``before``: zero padding
    before each axis, written into the columns (the input is not copied)."""
    n, c, f = xp.shape[0], xp.shape[-1], kernel.shape[-1]
    rank = len(out_size)
    kernel_size = kernel.shape[:rank]
    taps = math.prod(kernel_size)
    weights = np.ascontiguousarray(kernel).reshape(taps * c, f)
    y = _output((n, *out_size, f), xp.dtype)
    workers = threads if threads is not None else worker_count()
    units = _cells_units(n, out_size, taps * c, xp.dtype.itemsize, chunk_bytes, workers)
    flops = 2.0 * n * math.prod(out_size) * taps * c * f
    edges = cells_column_edges(len(units), f, workers if flops >= SMALL_WORK else 1)
    parts = len(edges) - 1

    def work(first: int, last: int) -> None:
        for index in range(first, last):
            (i0, i1, r0, r1), part = units[index // parts], index % parts
            columns = _cells_columns(xp, (i0, i1, r0, r1), kernel_size, strides, dilation,
                                     out_size, before)
            e0, e1 = edges[part], edges[part + 1]
            target = y[i0:i1, r0:r1].reshape(-1, f)  # whole rows: contiguous
            releasing_gil()
            np.matmul(columns.reshape(-1, taps * c), weights[:, e0:e1], out=target[:, e0:e1])

    run_chunks(work, len(units) * parts, 1, threads=threads, flops=flops)
    return y


def tap_regions(kernel_size: Sequence[int], dilation: Sequence[int], out_size: Sequence[int],
                in_size: Sequence[int], before: Sequence[int]
                ) -> list[tuple[int, tuple[slice, ...], tuple[slice, ...]]]:
    """Stride 1: each tap that reads a real input cell, ``(tap index, its output cells,
    the input cells they read)`` as slices per spatial axis, where output cell ``o``
    reads input cell ``o + k·D - before`` through tap ``k`` (an input of ``in_size``;
    the cells outside it are zeros).

    >>> [(t, [(o.start, o.stop) for o in out]) for t, out, _ in
    ...  tap_regions((3,), (1,), (4,), (4,), (1,))]
    [(0, [(1, 4)]), (1, [(0, 4)]), (2, [(0, 3)])]
    """
    regions = []
    for index, k in enumerate(itertools.product(*(range(n) for n in kernel_size))):
        source: list[slice] = []
        target: list[slice] = []
        for kk, d, p, o, n in zip(k, dilation, before, out_size, in_size):
            offset = kk * d - p
            lo, hi = max(0, -offset), min(o, n - offset)
            if hi <= lo:
                break
            source.append(slice(lo + offset, hi + offset))
            target.append(slice(lo, hi))
        else:
            regions.append((index, tuple(target), tuple(source)))
    return regions


def _taps_before(problem: ConvProblem) -> tuple[int, ...]:
    """The zero cells before each axis of a stride-1 transposed problem's input, its
    padding taken as even on both sides (the odd cell after)."""
    return tuple((o + effective_kernel(k, d) - 1 - n) // 2 for o, k, d, n in zip(
        problem.out_size, problem.kernel_size, problem.dilation, problem.input_shape[1:-1]))


def real_tap_share(problem: ConvProblem) -> float:
    """The share of a stride-1 transposed problem's ``cells × taps`` products that read
    an input cell (the others read zeros of the padding): 3×3 "same" on 4² 69 %, 7²
    82 %, 14² 91 %.

    >>> p = ConvProblem((16, 4, 4, 512), (3, 3, 512, 512), (1, 1), (1, 1), 1, (4, 4), np.dtype("float32"))
    >>> round(real_tap_share(p), 3)
    0.694
    """
    regions = tap_regions(problem.kernel_size, problem.dilation, problem.out_size,
                          problem.input_shape[1:-1], _taps_before(problem))
    real = sum(math.prod(o.stop - o.start for o in out) for _, out, _ in regions)
    return real / (math.prod(problem.out_size) * math.prod(problem.kernel_size))


def taps_transposed(
    x: np.ndarray, kernel: np.ndarray, strides: Sequence[int], dilation: Sequence[int],
    groups: int, padding: Sequence[tuple[int, int]], out_size: Sequence[int], *,
    threads: int | None = None,
) -> np.ndarray:
    """Stride-1 transposed convolution (``kind="transposed"``, the contract of
    ``engine.core.transposed_conv``) by one product per tap over the output cells
    whose tap reads an input cell: nothing is spent on the padding's zeros (on a 4²
    image with 3×3 "same" padding, 31 % of the plain products), and the kernel
    ``(*K, F, C)`` is read in place, each tap's ``F × C`` block as the transposed
    operand of its product (no flipped copy). Each tap's input cells are copied into
    one block; the output channels are cut among the workers
    (:func:`cells_column_edges` with one block), each running every tap on its own.

    >>> x = np.ones((1, 3, 2), np.float32)
    >>> taps_transposed(x, np.ones((3, 4, 2), np.float32), (1,), (1,), 1, ((1, 1),), (3,))[0, :, 0]
    array([4., 6., 4.], dtype=float32)
    """
    if groups != 1 or any(s != 1 for s in strides):
        raise ValueError(f"taps_transposed needs stride 1 and one group, got strides "
                         f"{tuple(strides)}, groups={groups}")
    rank = len(out_size)
    n, c = x.shape[0], x.shape[-1]
    kernel_size = kernel.shape[:rank]
    f = kernel.shape[-2]
    taps = math.prod(kernel_size)
    # the tap k of the grid's (flipped) kernel is tap K - 1 - k of this one, transposed
    flipped = kernel.reshape(taps, f, c)[::-1]
    regions = tap_regions(kernel_size, dilation, out_size, x.shape[1:-1],
                          [lo for lo, _ in padding])
    # the tap whose output cells are all of them (if any) writes first: no zeroing
    full = next((i for i, (_, out, _) in enumerate(regions)
                 if all(o.stop - o.start == size for o, size in zip(out, out_size))), None)
    if full is not None:
        regions.insert(0, regions.pop(full))
    y = np.empty((n, *out_size, f), x.dtype)
    if full is None:
        y[...] = 0
    workers = threads if threads is not None else worker_count()
    real = sum(n * math.prod(o.stop - o.start for o in out) for _, out, _ in regions)
    flops = 2.0 * real * c * f
    edges = cells_column_edges(1, f, workers if flops >= SMALL_WORK else 1)

    def work(first: int, last: int) -> None:
        for part in range(first, last):
            e0, e1 = edges[part], edges[part + 1]
            for number, (tap, out, source) in enumerate(regions):
                rows = (n, *(o.stop - o.start for o in out))
                weights = flipped[tap, e0:e1].T
                target = y[(slice(None),) + out + (slice(e0, e1),)]
                columns = x[(slice(None),) + source]
                if not columns.flags.c_contiguous:
                    block = workspace("flat_rows.taps", (*rows, c), x.dtype)
                    block[...] = columns
                    columns = block
                if number == 0 and full is not None:
                    releasing_gil()
                    if target.flags.c_contiguous:
                        np.matmul(columns.reshape(-1, c), weights,
                                  out=target.reshape(-1, e1 - e0))
                    else:
                        target[...] = np.matmul(columns.reshape(-1, c), weights
                                                ).reshape(target.shape)
                    continue
                product = workspace("flat_rows.taps_product", (*rows, e1 - e0), x.dtype)
                releasing_gil()
                np.matmul(columns.reshape(-1, c), weights, out=product.reshape(-1, e1 - e0))
                target += product

    run_chunks(work, len(edges) - 1, 1, threads=threads, flops=flops)
    return y


#: Largest :func:`real_tap_share` for :func:`taps_transposed`: on larger images its
#: copies of every tap's cells cost more than the products it saves.
TAPS_MOST_SHARE = 0.9

#: Fewest output cells (images × cells) and channels for :func:`taps_transposed`: BLAS
#: packs each tap's ``F × C`` weights once per product, worth it over many rows and
#: channels (one thread: 3×3 128 -> 128 on 16×4² 0.94 ms against Winograd's 0.82;
#: 256 on 8×4² 1.72 against :mod:`.col2im`'s 2.35).
TAPS_MIN_ROWS = 128
TAPS_MIN_CHANNELS = 256

applies_taps = Requirements((
    ("float32 or float64", lambda p: p.dtype in (np.float32, np.float64)),
    ("stride 1", lambda p: all(s == 1 for s in p.strides)),
    ("groups=1", lambda p: p.groups == 1),
    ("more than one tap", lambda p: math.prod(p.kernel_size) > 1),
    (f"at least {TAPS_MIN_CHANNELS} channels in and out",
     lambda p: min(p.in_channels, p.kernel_shape[-2]) >= TAPS_MIN_CHANNELS),
    (f"at least {TAPS_MIN_ROWS} output cells",
     lambda p: p.batch * math.prod(p.out_size) >= TAPS_MIN_ROWS),
    (f"at most {TAPS_MOST_SHARE:.0%} of the products on input cells",
     lambda p: real_tap_share(p) <= TAPS_MOST_SHARE),
))


def taps_cost(problem: ConvProblem) -> float:
    """``0.56 × real FLOPs × (1 + 6 / rows) × (1 + 16 / F)``: :func:`cells_cost`'s rate on
    the products that read input cells (:func:`real_tap_share`), ``rows`` a tap's
    product's rows on average, plus ~2 units a copied input value."""
    share = real_tap_share(problem)
    taps = math.prod(problem.kernel_size)
    rows = problem.batch * math.prod(problem.out_size) * share
    real = problem.flops * share
    filters = problem.kernel_shape[-2]
    return (0.56 * real * (1 + 6 / rows) * (1 + 16 / filters)
            + 2.0 * rows * taps * problem.in_channels)


#: Fewest output channels in each part of :func:`cells_column_edges`.
CELLS_PART_CHANNELS = 64


def cells_column_edges(units: int, filters: int, workers: int) -> list[int]:
    """Where the output channels of each few-cells block are cut: with fewer blocks than
    workers (one small image), each block's product is cut into column parts (whole
    vectors of 16, at least :data:`CELLS_PART_CHANNELS` each) so that every worker
    gets one, each gathering its own columns, instead of one product that BLAS would
    spread over its own threads (measured: 1.2–1.4× from one to two threads).

    >>> cells_column_edges(1, 512, 2), cells_column_edges(4, 512, 2), cells_column_edges(1, 64, 2)
    ([0, 256, 512], [0, 512], [0, 64])
    """
    if units >= workers or workers <= 1:
        return [0, filters]
    parts = max(1, min(-(-workers // units), filters // CELLS_PART_CHANNELS))
    edges = [min(filters, -(-filters * i // parts) // 16 * 16) for i in range(parts)]
    return [*edges, filters]


@cached_once
def blas_gemm(dtype: np.dtype) -> Callable[..., np.ndarray] | None:
    """SciPy's BLAS ``sgemm``/``dgemm`` for ``dtype``, or ``None`` (no SciPy, other dtype)."""
    try:
        from scipy.linalg import blas
    except ImportError:  # pragma: no cover - SciPy missing
        return None
    return {np.dtype(np.float32): blas.sgemm, np.dtype(np.float64): blas.dgemm}.get(dtype)


def accumulate(a: np.ndarray, b: np.ndarray, c: np.ndarray, scratch: np.ndarray | None,
               use_blas: bool, add: bool = True) -> None:
    """``c += a @ b`` in place (``a``, ``c`` C-contiguous); ``c = a @ b`` when not ``add``.

    With ``use_blas`` (SciPy's ``gemm``) every product of the layer goes through
    SciPy's BLAS, never half through NumPy's: the two OpenBLAS libraries' threads
    compete for the cores while those of the last one called still spin
    (measured: a 3×3 layer on 4×4×512 took 6–12 ms instead of 1–2 ms when its
    first tap went through NumPy and the others through SciPy).
    """
    gemm = blas_gemm(c.dtype) if use_blas else None
    if gemm is not None:
        # column-major view: cᵀ = bᵀ aᵀ (+ cᵀ), every operand Fortran-contiguous;
        # with beta 0, BLAS does not read c
        releasing_gil()
        gemm(1.0, b.T, a.T, beta=1.0 if add else 0.0, c=c.T, overwrite_c=True)
        return
    if not add:
        releasing_gil()
        np.matmul(a, b, out=c)
        return
    assert scratch is not None
    releasing_gil()
    np.matmul(a, b, out=scratch)
    c += scratch


def _flat_index(index: Sequence[int], sizes: Sequence[int]) -> int:
    flat = 0
    for i, n in zip(index, sizes):
        flat = flat * n + i
    return flat


#: Output bytes per chunk of rows (a chunk's output stays in a core's L2 cache).
CHUNK_BYTES = 512 << 10

#: im2col column bytes per chunk of the compiled im2col path (measured, two
#: cores, 3×3 stride 2 with 32–128 channels: 3–7 % faster than 512 KiB, and
#: than 1.5 MiB on two of three layers).
IM2COL_CHUNK_BYTES = 1 << 20


def chunk_rows(step: int, width: int, itemsize: int, chunk_bytes: int | None = None) -> int:
    """Output rows (of ``step`` flat cells) per chunk: about ``chunk_bytes`` of output."""
    budget = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    return max(1, budget // max(1, step * width * itemsize))


def _pointwise_rows(xp: np.ndarray, strides: Sequence[int], out_size: Sequence[int]
                    ) -> np.ndarray:
    """A 1×1 kernel's input as ``(N·cells, C)``: the cells it reads (a view when
    the stride is 1 and nothing is cropped, else one copy)."""
    cells = (slice(None),) + tuple(slice(0, (o - 1) * s + 1, s)
                                   for o, s in zip(out_size, strides))
    return np.ascontiguousarray(xp[cells]).reshape(-1, xp.shape[-1])


def _output(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A new output array; from a kept buffer where it takes :data:`._outputs.POOL_BYTES`
    or more (:func:`._outputs.output_empty`: no fresh pages to fault in at each call)."""
    if math.prod(shape) * dtype.itemsize < POOL_BYTES:
        return np.empty(shape, dtype)
    return output_empty(shape, dtype)


def _product(rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``rows @ weights`` into a new array (:func:`_output`)."""
    out = _output((rows.shape[0], weights.shape[1]), np.result_type(rows, weights))
    releasing_gil()
    return np.matmul(rows, weights, out=out)


def direct(
    xp: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_size: Sequence[int],
    *,
    use_blas: bool = False,
    gather: bool | None = None,
    threads: int | None = None,
    chunk_bytes: int | None = None,
    use_numba: bool | None = None,
    padding: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """Convolution by flat-row GEMMs (the dispatch contract; ``groups`` must be 1).

    The output is produced in chunks of rows (each one image, a few rows of
    the first spatial axis) on one thread per core; a chunk's output stays in
    cache while every tap is added to it.

    Parameters
    ----------
    use_blas
        Accumulate with SciPy's BLAS ``gemm`` (``beta = 1``) when available.
        Off by default: SciPy loads its own OpenBLAS, whose threads then fight
        NumPy's for the cores (every other product in the engine is NumPy's).
        Measured: 3×3 64→64 on 8×56² 22.2 ms with it, 12.8 ms without; 16×28²×128
        44.0 against 23.6 ms.
    gather
        Gather the taps of a block into one product (``None``: when
        ``C × taps`` is below :data:`GATHER_BELOW`, or the stride is above 1
        and the compiled 1-D/2-D im2col is there).
    threads
        Worker threads (default: one per core).
    chunk_bytes
        Output bytes per chunk (default :data:`CHUNK_BYTES`; at least one row).
    use_numba
        Compiled gather for ``gather`` (``None``: when numba is installed).
    padding
        Zero padding ``(before, after)`` per spatial axis still to apply to
        ``xp`` (negative values crop): the compiled im2col writes it into its
        columns; the other paths pad a copy first.

    Examples
    --------
    >>> xp = np.ones((1, 4, 4, 2))
    >>> direct(xp, np.ones((2, 2, 2, 3)), (1, 1), (1, 1), 1, (3, 3))[0, 0, 0]
    array([8., 8., 8.])
    """
    if groups != 1:
        raise ValueError(f"flat_rows needs groups=1, got groups={groups}")
    rank = len(out_size)
    n, c = xp.shape[0], xp.shape[-1]
    kernel_size = kernel.shape[:rank]
    f = kernel.shape[-1]
    taps = math.prod(kernel_size)
    if taps == 1 and padding is None and not gather:
        # 1×1: exactly one product, run by BLAS on all its threads (decided first: a
        # layer on a 1×1 image costs a few µs, as much as the decisions below)
        rows = (xp.reshape(-1, c) if xp.shape[1:-1] == tuple(out_size) else
                _pointwise_rows(xp, strides, out_size))
        return _product(rows, kernel.reshape(c, f)).reshape(n, *out_size, f)
    strided = any(s > 1 for s in strides)
    if gather is None and gathers_cells(kernel_size, c, out_size):
        before = None
        if padding is not None and any(lo < 0 or hi < 0 for lo, hi in padding):
            xp = pad(xp, padding)  # crops first
        elif padding is not None:
            before = [lo for lo, _ in padding]  # zeros written into the columns, no copy
        return _direct_cells(xp, kernel, strides, dilation, out_size, threads, chunk_bytes,
                             before)
    compiled_im2col = _numba_im2col() if use_numba is not False and rank <= 2 else None
    if gather is None:
        # strided with compiled im2col: one product of inner size C·taps over the
        # real output cells beats one small product per tap over the phases
        gather = taps > 1 and (c * taps < GATHER_BELOW or (strided and compiled_im2col is not None))
    im2col = compiled_im2col if gather else None
    if im2col is not None:
        return _direct_im2col(xp, kernel, strides, dilation, out_size, im2col, threads,
                              chunk_bytes, padding)
    if padding is not None:
        xp = pad(xp, padding)
    if taps == 1:
        # 1×1: exactly one product, run by BLAS on all its threads
        y = _product(_pointwise_rows(xp, strides, out_size), kernel.reshape(c, f))
        return y.reshape(n, *out_size, f)
    flat_plan = plan(xp.shape[1:-1], kernel_size, strides, dilation)
    images = None if strided else _phase_images(xp, flat_plan, strides)
    cells = flat_plan.cells
    usable = n * cells - flat_plan.max_shift
    step = math.prod(flat_plan.grid[1:])
    halo = flat_plan.max_shift // step + 1  # extra first-axis rows a chunk reads
    weights = kernel.reshape(-1, c, f)
    tap_list = [(_flat_index(k, kernel_size), phase, shift) for k, phase, shift in flat_plan.taps]
    compiled_gather = _numba_gather() if gather and use_numba is not False else None
    tap_phases = np.array([phase for _, phase, _ in tap_list], np.int64)
    tap_shifts = np.array([shift for _, _, shift in tap_list], np.int64)
    if gather:
        stacked = np.ascontiguousarray(np.stack([weights[t] for t, _, _ in tap_list]))
        stacked = stacked.reshape(taps * c, f)
    blas = use_blas and blas_gemm(xp.dtype) is not None
    y = _output((n, *out_size, f), xp.dtype)
    real = (slice(None),) + tuple(slice(0, o) for o in out_size[1:])
    per_chunk = chunk_rows(step, max(f, c * taps if gather else f), xp.dtype.itemsize,
                            chunk_bytes)
    chunks_per_image = -(-out_size[0] // per_chunk)

    def compute(source: np.ndarray, start: int, rows: int, block: np.ndarray) -> None:
        """``block[:rows]`` = the flat output rows ``start ..`` read from ``source``."""
        stop = start + rows
        if gather:
            columns = workspace("flat_rows.columns", (rows, taps, c), xp.dtype)
            if compiled_gather is not None:
                compiled_gather(source, tap_phases, tap_shifts, start, columns)
            else:
                for index, (_, phase, shift) in enumerate(tap_list):
                    columns[:, index] = source[phase, start + shift: stop + shift]
            releasing_gil()
            np.matmul(columns.reshape(rows, taps * c), stacked, out=block[:rows])
            return
        target = block[:rows]
        scratch = None if blas else workspace("flat_rows.scratch", target.shape, xp.dtype)
        for index, (t, phase, shift) in enumerate(tap_list):
            piece = source[phase, start + shift: stop + shift]
            accumulate(piece, weights[t], target, scratch, blas, add=index > 0)

    def strided_work(first: int, last: int) -> None:
        # one image's rows at a time: its phases are gathered for the chunk
        for unit in range(first, last):
            image, part = divmod(unit, chunks_per_image)
            row0 = part * per_chunk
            row1 = min(out_size[0], row0 + per_chunk)
            source = _phase_rows(xp, flat_plan, strides, image, row0, row1 + halo)
            block = workspace("flat_rows.block", ((row1 - row0) * step, f), xp.dtype)
            compute(source, 0, (row1 - row0) * step, block)
            on_grid = block.reshape(row1 - row0, *flat_plan.grid[1:], f)
            y[image, row0:row1] = on_grid[real]

    grid0 = flat_plan.grid[0]
    # stride 1: chunks of grid rows over the whole batch (small images share one
    # product), at least ~1024 flat rows each so the products stay efficient
    # (unless chunk_bytes is given: tests cut chunks as small as one row)
    span = max(per_chunk, -(-(1024 if chunk_bytes is None else 1) // step))

    def flat_work(first: int, last: int) -> None:
        assert images is not None
        for unit in range(first, last):
            g0, g1 = unit * span, min(n * grid0, (unit + 1) * span)
            rows = min(g1 * step, usable) - g0 * step
            if rows <= 0:
                continue  # only the garbage rows after the last image
            block = workspace("flat_rows.block", ((g1 - g0) * step, f), xp.dtype)
            compute(images, g0 * step, rows, block)
            on_grid = block.reshape(g1 - g0, *flat_plan.grid[1:], f)
            for image in range(g0 // grid0, (g1 - 1) // grid0 + 1):
                lo = max(g0, image * grid0) - image * grid0
                hi = min(g1, image * grid0 + out_size[0]) - image * grid0
                if hi > lo:
                    offset = image * grid0 - g0
                    y[image, lo:hi] = on_grid[(slice(offset + lo, offset + hi),) + real[1:]]

    flops = 2.0 * n * math.prod(out_size) * taps * c * f
    if images is None:
        run_chunks(strided_work, n * chunks_per_image, 1, threads=threads, flops=flops)
    else:
        run_chunks(flat_work, -(-n * grid0 // span), 1, threads=threads, flops=flops)
    return y


#: Fewest flat-grid rows in a chunk of :func:`weight_grad`'s per-tap products.
GRAD_CHUNK_ROWS = 4096

#: Fewest rows in a chunk when fewer than :data:`GRAD_CHUNK_ROWS` a worker are left.
GRAD_MIN_CHUNK_ROWS = 512


def grad_chunk_rows(length: int, workers: int) -> int:
    """Rows of flat grid per chunk of :func:`weight_grad`: about four chunks a worker, at
    least :data:`GRAD_CHUNK_ROWS`, but one chunk a worker from
    :data:`GRAD_MIN_CHUNK_ROWS` each where the grid is shorter. A single chunk ran on
    BLAS's own threads, which split its small ``C × F`` products badly (3×3 stride 2,
    128 channels on 16×28²: the caller's thread did most of the work).

    >>> grad_chunk_rows(100_000, 2), grad_chunk_rows(3584, 2), grad_chunk_rows(900, 2)
    (12500, 1792, 512)
    """
    chunk = max(GRAD_CHUNK_ROWS, -(-length // (4 * workers)))
    if workers > 1:
        chunk = min(chunk, max(GRAD_MIN_CHUNK_ROWS, -(-length // workers)))
    return chunk


def weight_grad(
    xp: np.ndarray,
    dy: np.ndarray,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    *,
    threads: int | None = None,
    padding: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """Kernel gradient by flat-row GEMMs: one ``(C × L) @ (L × F)`` product per tap.

    ``dy`` is laid on the flat grid (zeros at the garbage cells), so every
    tap's product sums over exactly the real output cells; chunks of rows
    give partial gradients that are summed at the end. Small images with many
    channels (:func:`grad_gathers_cells`) take one product ``columnsᵀ · dy`` per block
    of :func:`direct`'s im2col of the real cells instead. ``padding`` (zeros,
    as in :func:`direct`) is applied to ``xp`` first, or, with strides, read into the
    phase images (no padded copy).

    >>> xp = np.arange(5.0).reshape(1, 5, 1)
    >>> weight_grad(xp, np.ones((1, 4, 1)), (2,), (1,), (1,), 1)[:, 0, 0]
    array([ 6., 10.])
    """
    if groups != 1:
        raise ValueError(f"flat_rows needs groups=1, got groups={groups}")
    n, c = xp.shape[0], xp.shape[-1]
    f = dy.shape[-1]
    out_size = dy.shape[1:-1]
    gathered = grad_gathers_cells(kernel_size, c, out_size)
    per_tap_phases = (any(s != 1 for s in strides) and math.prod(kernel_size) > 1
                      and not gathered)
    if padding is not None and not per_tap_phases:
        xp = pad(xp, padding)
        padding = None
    if gathered:
        return _weight_grad_cells(xp, np.ascontiguousarray(dy), kernel_size, strides, dilation,
                                  threads)
    if math.prod(kernel_size) == 1:
        # 1×1: one product xᵀ·dy, run by BLAS on all its threads
        rows = _pointwise_rows(xp, strides, out_size)
        if rows.shape[0] == 1:  # one cell (a 1×1 image): NumPy's matmul of inner size 1
            # takes its slow loop (~70 µs for 1152 × 48); the outer product is the same
            return np.multiply.outer(rows[0], dy.reshape(f)).reshape(*kernel_size, c, f)
        releasing_gil()
        return np.matmul(rows.T, dy.reshape(-1, f)).reshape(*kernel_size, c, f)
    padded_size = xp.shape[1:-1] if padding is None else tuple(
        e + lo + hi for e, (lo, hi) in zip(xp.shape[1:-1], padding))
    flat_plan = plan(padded_size, kernel_size, strides, dilation)
    # with strides, the phases are read from the unpadded input: no padded copy besides
    # them (ResNet-50's 3×3 s2 128 on 16×28²: peak 1.55 → 1.08× the call's arrays)
    images = _phase_images(xp, flat_plan, strides, padding)
    rows = n * flat_plan.cells
    length = rows - flat_plan.max_shift
    grid_dy = np.zeros((n, *flat_plan.grid, f), xp.dtype)
    grid_dy[(slice(None),) + tuple(slice(0, o) for o in out_size)] = dy
    flat_dy = grid_dy.reshape(rows, f)
    taps = flat_plan.taps

    def work(start: int, stop: int) -> np.ndarray:
        partial = np.empty((len(taps), c, f), xp.dtype)
        grads = flat_dy[start:stop]
        for index, (_, phase, shift) in enumerate(taps):
            releasing_gil()
            np.matmul(images[phase, start + shift: stop + shift].T, grads, out=partial[index])
        return partial

    workers = threads if threads is not None else worker_count()
    chunk = grad_chunk_rows(length, workers)
    flops = 2.0 * length * len(taps) * c * f
    partials = run_chunks(work, length, chunk, threads=threads, flops=flops)
    total = partials[0]
    for partial in partials[1:]:
        total += partial
    return total.reshape(*kernel_size, c, f)


#: When flat_rows applies: any rank, stride and dilation; one group.
applies = Requirements((("groups=1", lambda p: p.groups == 1),))


def cost(problem: ConvProblem) -> float:
    """Plain FLOPs, discounted for the copies the per-tap gather would make.

    Measured (``python -m convarith.bench``): no copy at stride 1, one copy of
    the input for strides; faster than gathering every tap.

    Where the llvmlite kernels are absent (:func:`per_tap_cost`) the per-tap
    products' cost also counts the cells of the flat grid that are computed and
    dropped, against :mod:`.offset_gemm`'s plain FLOPs.
    """
    from . import _llvm

    workers = worker_count()
    # below SMALL_WORK every algorithm runs inline: no penalty against the others
    penalty = (parallel_penalty(chunk_count(problem, workers), workers)
               if problem.flops >= SMALL_WORK else 1.0)
    if gathers_cells(problem.kernel_size, problem.in_channels, problem.out_size):
        return cells_cost(problem) * penalty
    if _llvm.available(problem.dtype) or not _per_tap_products(problem):
        return problem.flops * 0.7 * penalty
    return per_tap_cost(problem) * penalty


def chunk_count(problem: ConvProblem, workers: int) -> int:
    """The chunks :func:`direct` shares among ``workers`` threads: 1 where it runs as
    one job in the caller (BLAS on its own threads); counted for the few-cells
    im2col and the stride-1 per-tap products (small images at batch 1 make one or
    two), the other paths taken as cut finely enough.

    >>> def layer(batch):
    ...     return ConvProblem((batch, 16, 16, 256), (3, 3, 256, 512), (1, 1), (1, 1), 1,
    ...                        (14, 14), np.dtype("float32"))
    >>> chunk_count(layer(1), 2), chunk_count(layer(16), 2)
    (1, 4)
    """
    taps = math.prod(problem.kernel_size)
    if problem.flops < SMALL_WORK:
        return 1
    if taps == 1:
        # one product of every output cell: BLAS's own threads share its rows as well as
        # chunks would (two threads, quiet machine: 256 -> 128 on 1×28² 0.29 ms against
        # register_tiles' 0.58 and the row chunks' 0.50; 32 -> 16 on 16×56² 0.39 against
        # 0.54-0.70), unless the rows are too few to share
        return workers if problem.batch * math.prod(problem.out_size) >= 64 * workers else 1
    itemsize = problem.dtype.itemsize
    if gathers_cells(problem.kernel_size, problem.in_channels, problem.out_size):
        units = len(_cells_units(problem.batch, problem.out_size, taps * problem.in_channels,
                                 itemsize, None, workers))
        return units * (len(cells_column_edges(units, problem.out_channels, workers)) - 1)
    if any(s > 1 for s in problem.strides) or problem.in_channels * taps < GATHER_BELOW:
        return max(workers, 2)  # rows of every image: many chunks
    grid = problem.input_shape[1:-1]
    step = math.prod(grid[1:])
    span = max(chunk_rows(step, problem.out_channels, itemsize), -(-1024 // step))
    return -(-problem.batch * grid[0] // span)


def cells_cost(problem: ConvProblem) -> float:
    """``0.56 × FLOPs × (1 + 6 / rows) × (1 + 16 / F)``, at most ``0.95 × FLOPs``: the
    few-cells im2col's one product per block of ``rows`` output cells
    (:func:`cells_block`) runs BLAS at about ``rows / (rows + 6)`` of its rate on large
    products, less with few filters ``F`` (the columns' copy is small beside it); never
    above :mod:`.offset_gemm`'s per-tap products of the same rows (measured 1.04–1.7×
    faster on 2² images with 64–2048 channels, where each of its products has 4 rows).

    Fitted on one core (CPU time, float32, 3×3 "same", busy machine; ms, this path
    against :mod:`.register_tiles` and :mod:`.offset_gemm`): 256 on 1×7² 0.84
    (1.03, 0.98); 512 on 1×4² 1.68 (2.48, 1.82), 1×7² 3.53 (3.94, 3.57), 1×10²
    5.72 (5.99, 5.82), 16×7² 41.2 (36.5, 40.5), 16×4² 14.4 (13.5, 13.6); 1024 on
    1×7² 14.9 (26.0, 15.5); 64 on 16×7² 0.80, Winograd 0.51; 3×3 stride 2 on
    1×7²×512 1.9 (:mod:`.space_to_depth` 3.8). Networks suite, batch 16, one thread:
    512 -> 512 on 7² 46.0 ms against :mod:`.register_tiles`' 38.4, 1024 -> 1024 194
    against 146 (0.5 there chose this path).

    >>> p = ConvProblem((1, 9, 9, 512), (3, 3, 512, 512), (1, 1), (1, 1), 1, (7, 7), np.dtype("float32"))
    >>> round(cells_cost(p) / p.flops, 2)
    0.65
    """
    taps = math.prod(problem.kernel_size)
    images, rows = cells_block(problem.batch, problem.out_size, taps * problem.in_channels,
                               problem.dtype.itemsize)
    product_rows = max(1, images) * rows * math.prod(problem.out_size[1:])
    per_flop = 0.56 * (1 + 6 / product_rows) * (1 + 16 / problem.out_channels)
    return problem.flops * min(0.95, per_flop)


def _per_tap_products(problem: ConvProblem) -> bool:
    """Whether :func:`direct` runs one product per tap over the flat grid (no gather)."""
    taps = math.prod(problem.kernel_size)
    strided = any(s > 1 for s in problem.strides)
    if taps == 1 or problem.in_channels * taps < GATHER_BELOW:
        return False
    return not (strided and problem.rank <= 2 and _numba_im2col() is not None)


def per_tap_cost(problem: ConvProblem) -> float:
    """``0.9 × FLOPs × grid / output cells × F / (F + 16)``: the per-tap products run
    over the whole flat grid (``⌈padded / S⌉`` cells per axis, the output's plus the
    cells a kernel's reach adds), and :mod:`.offset_gemm`'s copies weigh ``16 / F``
    against its products.

    Fitted on one core (CPU time, float32, batch 1, ``CONVARITH_JIT=0``, 3×3 "same",
    flat_rows / offset_gemm time): 64 -> 64 on 112² 0.71, 28² 0.85; 128 on 14² 1.04;
    256 on 28² 1.04, 7² 1.49; 512 on 14² 1.20, 7² 1.52, 4² 1.85; 1024 on 7² 1.44.

    >>> p = ConvProblem((1, 9, 9, 512), (3, 3, 512, 512), (1, 1), (1, 1), 1, (7, 7), np.dtype("float32"))
    >>> round(per_tap_cost(p) / p.flops, 2)
    1.44
    """
    grid = math.prod(-(-n // s) for n, s in zip(problem.input_shape[1:-1], problem.strides))
    waste = grid / max(1, math.prod(problem.out_size))
    filters = problem.out_channels
    return problem.flops * 0.9 * waste * filters / (filters + 16)


register_algorithm("flat_rows", direct, applies=applies, cost=cost, weight_grad=weight_grad,
                   pads_zeros=True, weight_grad_cost=gradient_costs.flat_rows)
register_algorithm("real_taps", taps_transposed, applies=applies_taps, cost=taps_cost,
                   kind="transposed")
