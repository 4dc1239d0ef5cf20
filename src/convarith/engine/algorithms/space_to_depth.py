"""Strided convolutions (and first layers of few channels) through space-to-depth phase
planes and a transposed im2col; their weight gradients from the same columns.

The trick. Output cell ``o`` of an axis with stride ``S`` reads input cell
``o·S + k·D`` through kernel tap ``k``; with ``q, r = divmod(k·D, S)`` that
is cell ``o + q`` of *phase* ``r`` (every ``S``-th input cell from ``r``).
Splitting the padded input into its phases (space-to-depth) turns the
strided convolution into a stride-1 one: tap ``k`` reads phase ``r`` shifted
by ``q``. Stored *planar* (one plane per phase and channel, the last spatial
axis contiguous), the im2col matrix of a block of output cells, transposed
(one row per tap and channel, one column per output cell), is made of
contiguous runs as long as the output's last axis::

    columns[t·C + c, cells of row o] = plane[phase(t), c, o + q(t), q_last(t) : q_last(t) + O_last]

so the gather is a few long copies instead of one short copy per tap and
cell (an RGB stem's channels-last im2col copies 3 floats at a time), and only
the real taps are copied: no zero-filled kernel taps, no multiply spent on
cells the stride skips. One product ``columnsᵀ @ kernel`` (inner size
``taps × C``) per block writes the output rows in place.

Blocks of output rows (about :data:`BLOCK_BYTES` of columns) run on one
thread per core with single-threaded BLAS; each builds the part of the phase
planes it reads (zero padding written into them, so the engine never pads a
copy: ``pads_zeros``), gathers its columns and multiplies. The weight
gradient multiplies the other way, ``columns @ dy`` per block (inner size the
block's cells), and sums the blocks' parts: one read of ``dy`` for all taps,
where a product per tap with few input channels reads it once per tap (the
ResNet stem's on 16 images of 112²: 62 ms by per-tap products, 15 ms so, one
core). At stride 1 there is one phase and the planes are a planar copy of the
input; that is worth it with few input channels (:data:`THIN_CHANNELS`).
Ranks 1 and 2 run as rank 3 with leading axes of size 1. With numba both
steps are one compiled call per block; without it they are NumPy slice copies
that give the same numbers.

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

from .. import gradient_costs
from ..dispatch import ConvProblem, Requirements, register_algorithm
from ..state import cached_once
from ._threads import chunk_workers, run_chunks, workspace

__all__ = ["direct", "weight_grad", "applies", "cost", "PhasePlan", "plan", "BLOCK_BYTES"]

#: Bytes of transposed im2col columns per block of output cells (stays in a
#: core's L2 cache together with its product's output).
BLOCK_BYTES = 768 << 10

_RANK = 3  # every problem runs as rank 3


@dataclass(frozen=True)
class PhasePlan:
    """Phases, plane sizes and tap table of a (rank-3) strided convolution.

    ``phases`` lists the input phases the kernel reads (one offset per axis);
    ``grid`` is the size of every phase plane; ``taps`` is an ``(taps, 4)``
    table ``(phase number, shift per axis)`` in the kernel's C order.
    """

    phases: tuple[tuple[int, ...], ...]
    grid: tuple[int, ...]
    taps: tuple[tuple[int, int, int, int], ...]


@functools.lru_cache(maxsize=256)
def plan(
    kernel_size: tuple[int, ...],
    strides: tuple[int, ...],
    dilation: tuple[int, ...],
    out_size: tuple[int, ...],
) -> PhasePlan:
    """The phase split of a rank-3 convolution (lift lower ranks with 1s first).

    Memoized: a layer run again reuses its plan (tuples of ints in, a frozen
    plan out).

    >>> p = plan((1, 3, 3), (1, 2, 2), (1, 1, 1), (1, 4, 4))
    >>> p.phases, p.grid, p.taps[4]
    (((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)), (1, 5, 5), (3, 0, 0, 0))
    """
    splits = [
        [divmod(k * d, s) for k in range(size)]
        for size, s, d in zip(kernel_size, strides, dilation)
    ]
    grid = tuple(o + max(q for q, _ in axis) for o, axis in zip(out_size, splits))
    per_tap = list(itertools.product(*splits))
    phases = sorted({tuple(r for _, r in tap) for tap in per_tap})
    taps = tuple(
        (phases.index(tuple(r for _, r in tap)), tap[0][0], tap[1][0], tap[2][0])
        for tap in per_tap
    )
    return PhasePlan(tuple(phases), grid, taps)


# --------------------------------------------------------------------------- the two steps


@cached_once
def _numba_kernels() -> tuple[Callable[..., None], Callable[..., None], Callable[..., None]] | None:
    """Compiled ``(build planes, gather columns, both for one block)``, or ``None``.

    ``None`` without numba. The third runs the first two on the planes and
    columns of one block of output (one call, so one release of the GIL).
    """
    try:
        import numba
    except ImportError:  # pragma: no cover - exercised by the numba-less test
        return None

    # pure copies: no arithmetic to reorder; inner loops run from 0 over a
    # contiguous axis of the destination so LLVM vectorizes them
    jit = numba.njit(nogil=True, cache=True, error_model="numpy", boundscheck=False)

    @jit
    def build_planes(xp, image, strides, before, phases, planes):
        # planes[p, c, i0, i1, i2] = xp[image, i·S + r_p - before] (zero outside xp)
        count, channels, g0, g1, g2 = planes.shape
        x0, x1, x2 = xp.shape[1], xp.shape[2], xp.shape[3]
        s0, s1, s2 = strides[0], strides[1], strides[2]
        for p in range(count):
            r0, r1, r2 = phases[p, 0], phases[p, 1], phases[p, 2]
            # planes cells [lo, hi) of the last axis fall inside xp (as in _inside)
            first = r2 - before[2]
            lo = min(g2, max(0, -(first // s2)))
            hi = min(g2, (x2 - 1 - first) // s2 + 1) if x2 - 1 - first >= 0 else 0
            hi = max(lo, hi)
            for i0 in range(g0):
                h0 = i0 * s0 + r0 - before[0]
                for i1 in range(g1):
                    h1 = i1 * s1 + r1 - before[1]
                    if 0 <= h0 < x0 and 0 <= h1 < x1:
                        # the cells read, as a (hi - lo, C) view (indices from 0)
                        row = xp[image, h0, h1, lo * s2 + first::s2]
                        for c in range(channels):
                            head = planes[p, c, i0, i1, :lo]
                            for i2 in range(lo):
                                head[i2] = 0.0
                            middle = planes[p, c, i0, i1, lo:hi]
                            for i2 in range(hi - lo):
                                middle[i2] = row[i2, c]
                            tail = planes[p, c, i0, i1, hi:]
                            for i2 in range(g2 - hi):
                                tail[i2] = 0.0
                    else:
                        for c in range(channels):
                            target = planes[p, c, i0, i1]
                            for i2 in range(g2):
                                target[i2] = 0.0

    @jit
    def gather(planes, taps, o0, row0, rows, col0, width, columns):
        # columns[t·C + c, r·width + j] = planes[p_t, c, o0 + q0_t, row0 + r + q1_t, col0 + j + q2_t]
        channels = planes.shape[1]
        for t in range(taps.shape[0]):
            p, q0, q1, q2 = taps[t, 0], taps[t, 1], taps[t, 2], taps[t, 3]
            for c in range(channels):
                for r in range(rows):
                    # views, so the copy indexes from 0 (no negative-index wrap-around)
                    start = col0 + q2
                    source = planes[p, c, o0 + q0, row0 + r + q1, start:start + width]
                    target = columns[t * channels + c, r * width:(r + 1) * width]
                    for j in range(width):
                        target[j] = source[j]

    @jit
    def block_columns(source, image, strides, before, o0, row0, col0, rows, width, halo,
                      phases, taps, plane_buffer, column_buffer):
        channels = source.shape[-1]
        shape = (phases.shape[0], channels, halo[0] + 1, rows + halo[1], width + halo[2])
        size = shape[0] * shape[1] * shape[2] * shape[3] * shape[4]
        planes = plane_buffer[:size].reshape(shape)
        # the planes' cell 0 is the block's first cell (o0, row0, col0)
        origin = np.empty(3, np.int64)
        origin[0] = before[0] - o0 * strides[0]
        origin[1] = before[1] - row0 * strides[1]
        origin[2] = before[2] - col0 * strides[2]
        build_planes(source, image, strides, origin, phases, planes)
        columns = column_buffer[:taps.shape[0] * channels * rows * width].reshape(
            (taps.shape[0] * channels, rows * width))
        gather(planes, taps, 0, 0, rows, 0, width, columns)

    return build_planes, gather, block_columns


def _inside(count: int, stride: int, first: int, size: int) -> tuple[int, int]:
    """Cells ``[lo, hi)`` of ``0 .. count - 1`` whose input index ``i·stride + first``
    lies in ``[0, size)``."""
    lo = min(count, max(0, -(first // stride)))
    last = size - 1 - first
    hi = min(count, last // stride + 1) if last >= 0 else 0
    return lo, max(lo, hi)


def _build_planes_numpy(xp: np.ndarray, image: int, strides: np.ndarray, before: np.ndarray,
                        phases: np.ndarray, planes: np.ndarray) -> None:
    """NumPy version of the compiled ``build_planes`` (same values)."""
    planes[...] = 0
    for index, phase in enumerate(phases.tolist()):
        source: list[slice] = []
        target: list[slice] = []
        for axis, (r, s, b) in enumerate(zip(phase, strides.tolist(), before.tolist())):
            lo, hi = _inside(planes.shape[2 + axis], s, r - b, xp.shape[1 + axis])
            if lo == hi:
                break
            source.append(slice(lo * s + r - b, (hi - 1) * s + r - b + 1, s))
            target.append(slice(lo, hi))
        else:
            cells = np.moveaxis(xp[(image,) + tuple(source)], -1, 0)
            planes[(index, slice(None)) + tuple(target)] = cells


def _gather_numpy(planes: np.ndarray, taps: np.ndarray, o0: int, row0: int, rows: int,
                  col0: int, width: int, columns: np.ndarray) -> None:
    """NumPy version of the compiled ``gather`` (same values)."""
    channels = planes.shape[1]
    for t, (p, q0, q1, q2) in enumerate(taps.tolist()):
        block = columns[t * channels:(t + 1) * channels].reshape(channels, rows, width)
        block[...] = planes[p, :, o0 + q0, row0 + q1:row0 + q1 + rows,
                            col0 + q2:col0 + q2 + width]


def _block_columns_numpy(source: np.ndarray, image: int, strides: np.ndarray,
                         before: np.ndarray, o0: int, row0: int, col0: int, rows: int,
                         width: int, halo: np.ndarray, phases: np.ndarray, taps: np.ndarray,
                         plane_buffer: np.ndarray, column_buffer: np.ndarray) -> None:
    """NumPy version of the compiled ``block_columns`` (same values)."""
    channels = source.shape[-1]
    shape = (len(phases), channels, int(halo[0]) + 1, rows + int(halo[1]),
             width + int(halo[2]))
    planes = plane_buffer[:math.prod(shape)].reshape(shape)
    origin = before - np.array([o0, row0, col0]) * strides
    _build_planes_numpy(source, image, strides, origin, phases, planes)
    columns = column_buffer[:len(taps) * channels * rows * width].reshape(
        len(taps) * channels, rows * width)
    _gather_numpy(planes, taps, 0, 0, rows, 0, width, columns)


# --------------------------------------------------------------------------- the algorithm


def _blocks(out_rows: int, out_cols: int, cell_bytes: int, block_bytes: int,
            min_blocks: int = 1) -> tuple[int, int]:
    """``(rows, width)`` of a block: whole rows of the last axis, or part of one row.

    About ``block_bytes`` of columns, and at least ``min_blocks`` blocks when
    there are enough cells (so that every thread gets work).

    >>> _blocks(56, 56, 588, 768 << 10), _blocks(56, 56, 588, 768 << 10, min_blocks=8)
    ((19, 56), (7, 56))
    """
    cells = max(1, block_bytes // max(1, cell_bytes))
    cells = max(1, min(cells, -(-out_rows * out_cols // max(1, min_blocks))))
    if cells >= out_cols:
        rows = min(out_rows, cells // out_cols)
        return -(-out_rows // -(-out_rows // rows)), out_cols  # balanced
    return 1, -(-out_cols // -(-out_cols // cells))


@dataclass(frozen=True)
class _Blocks:
    """How a call is cut into blocks of output cells, and what each block's columns need."""

    source: np.ndarray  #: the input as rank 3 (N, D, H, W, C)
    before: np.ndarray  #: zero padding still to apply before each axis
    strides: np.ndarray
    phases: np.ndarray
    taps: np.ndarray
    halo: np.ndarray  #: plane cells beyond the output's, per axis
    out3: tuple[int, int, int]
    inner: int  #: rows of the columns: taps × channels
    rows: int  #: output rows (of the last two axes) per block
    width: int  #: cells of a row per block
    plane_size: int  #: elements of a block's planes
    flops: float  #: the job's size (twice its multiply-adds)

    @property
    def row_blocks(self) -> int:
        return -(-self.out3[1] // self.rows)

    @property
    def col_blocks(self) -> int:
        return -(-self.out3[2] // self.width)

    @property
    def units_per_image(self) -> int:
        return self.out3[0] * self.row_blocks * self.col_blocks


def _cut(xp: np.ndarray, kernel_size: Sequence[int], strides: Sequence[int],
         dilation: Sequence[int], out_size: Sequence[int],
         padding: Sequence[tuple[int, int]] | None, threads: int | None,
         block_bytes: int | None, kernel_outputs: int) -> _Blocks:
    """The blocks of a call (ranks 1 and 2 lifted to 3 with leading axes of size 1);
    ``kernel_outputs`` (the kernel's output channels) sizes the job."""
    rank = len(out_size)
    lift = _RANK - rank
    n, c = xp.shape[0], xp.shape[-1]
    source = np.ascontiguousarray(xp).reshape(n, *(1,) * lift, *xp.shape[1:])
    before = (0,) * lift + tuple(int(lo) for lo, _ in (padding or ((0, 0),) * rank))
    strides3 = (1,) * lift + tuple(int(s) for s in strides)
    out3 = (1,) * lift + tuple(int(o) for o in out_size)
    kernel3 = (1,) * lift + tuple(int(k) for k in kernel_size)
    phase_plan = plan(kernel3, strides3, (1,) * lift + tuple(int(d) for d in dilation), out3)
    halo = [g - o for g, o in zip(phase_plan.grid, out3)]
    inner = len(phase_plan.taps) * c
    # a few blocks per thread, so that they end together (one thread: a job run inline)
    flops = 2.0 * n * math.prod(out3) * inner * kernel_outputs
    spread = -(-4 * chunk_workers(threads, flops) // max(1, n * out3[0]))
    rows, width = _blocks(out3[1], out3[2], inner * xp.dtype.itemsize,
                          BLOCK_BYTES if block_bytes is None else block_bytes, spread)
    plane_shape = (len(phase_plan.phases), c, halo[0] + 1, rows + halo[1], width + halo[2])
    return _Blocks(source, np.array(before, np.int64), np.array(strides3, np.int64),
                   np.array(phase_plan.phases, np.int64), np.array(phase_plan.taps, np.int64),
                   np.array(halo, np.int64), (out3[0], out3[1], out3[2]), inner, rows, width,
                   math.prod(plane_shape), flops)


def _kernels(use_numba: bool | None) -> Any:
    kernels = _numba_kernels() if use_numba is not False else None
    if use_numba and kernels is None:
        raise ImportError("use_numba=True needs numba (pip install 'convarith[fast]')")
    return kernels


def _block(cut: _Blocks, kernels: Any, scratch: threading.local, unit: int
           ) -> tuple[int, int, int, np.ndarray]:
    """Block ``unit``'s columns ``(inner, cells)`` in this thread's buffers, with its
    image, first output plane and first cell of the plane."""
    dtype = cut.source.dtype
    if getattr(scratch, "planes", None) is None:
        scratch.planes = workspace("space_to_depth.planes", (cut.plane_size,), dtype)
        scratch.columns = workspace("space_to_depth.columns",
                                    (cut.inner * cut.rows * cut.width,), dtype)
    out3 = cut.out3
    image, rest = divmod(unit, cut.units_per_image)
    o0, rest = divmod(rest, cut.row_blocks * cut.col_blocks)
    row_block, col_block = divmod(rest, cut.col_blocks)
    row0, col0 = row_block * cut.rows, col_block * cut.width
    block_rows = min(cut.rows, out3[1] - row0)
    block_width = min(cut.width, out3[2] - col0)
    build = kernels[2] if kernels is not None else _block_columns_numpy
    build(cut.source, image, cut.strides, cut.before, o0, row0, col0, block_rows, block_width,
          cut.halo, cut.phases, cut.taps, scratch.planes, scratch.columns)
    cells = block_rows * block_width
    columns = scratch.columns[:cut.inner * cells].reshape(cut.inner, cells)
    return image, o0, row0 * out3[2] + col0, columns  # whole rows, or part of one row


def direct(
    xp: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_size: Sequence[int],
    *,
    padding: Sequence[tuple[int, int]] | None = None,
    threads: int | None = None,
    use_numba: bool | None = None,
    block_bytes: int | None = None,
) -> np.ndarray:
    """Convolution through phase planes (the dispatch contract; ``groups`` must be 1).

    Parameters
    ----------
    padding
        Zero padding ``(before, after)`` per spatial axis still to apply to
        ``xp`` (negative values crop); written into the phase planes.
    threads
        Worker threads (default: one per core).
    use_numba
        Compiled plane building and gather (``None``: when numba is
        installed; ``True`` without numba raises ImportError).
    block_bytes
        Bytes of im2col columns per block (default :data:`BLOCK_BYTES`; at
        least one output cell).

    Examples
    --------
    >>> xp = np.ones((1, 5, 5, 2))
    >>> direct(xp, np.ones((3, 3, 2, 1)), (2, 2), (1, 1), 1, (2, 2))[0, :, :, 0]
    array([[18., 18.],
           [18., 18.]])
    """
    if groups != 1:
        raise ValueError(f"space_to_depth needs groups=1, got groups={groups}")
    rank = len(out_size)
    if not 1 <= rank <= _RANK:
        raise ValueError(f"space_to_depth handles ranks 1 to 3, got rank {rank}")
    kernels = _kernels(use_numba)
    n, f = xp.shape[0], kernel.shape[-1]
    cut = _cut(xp, kernel.shape[:rank], strides, dilation, out_size, padding, threads,
               block_bytes, f)
    out3 = cut.out3
    weights = np.ascontiguousarray(kernel).reshape(cut.inner, f)
    y = np.empty((n, out3[0], out3[1] * out3[2], f), xp.dtype)
    if y.size == 0:
        return y.reshape(n, *out_size, f)
    scratch = threading.local()  # one plane and column buffer per worker thread, reused

    def work(start: int, stop: int) -> None:
        for unit in range(start, stop):
            image, o0, first, columns = _block(cut, kernels, scratch, unit)
            np.matmul(columns.T, weights, out=y[image, o0, first:first + columns.shape[1]])

    run_chunks(work, n * cut.units_per_image, 1, threads=threads, flops=cut.flops)
    return y.reshape(n, *out_size, f)


def weight_grad(
    xp: np.ndarray,
    dy: np.ndarray,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    *,
    padding: Sequence[tuple[int, int]] | None = None,
    threads: int | None = None,
    use_numba: bool | None = None,
    block_bytes: int | None = None,
) -> np.ndarray:
    """Kernel gradient ``dk[t, c, f] = Σ_cells xp[cell·S + t·D, c] · dy[cell, f]`` from the
    same blocks of columns as :func:`direct`: one product ``columns @ dy`` (inner size
    the block's cells) per block, whatever the taps; the blocks' partial gradients
    are summed in block order. Arguments as in :func:`direct`.

    With few input channels this reads ``dy`` once: a product per tap (as
    :mod:`.flat_rows` makes) would read it ``taps`` times with ``C`` rows each.

    >>> xp = np.arange(5.0).reshape(1, 5, 1)
    >>> weight_grad(xp, np.ones((1, 2, 1)), (2,), (2,), (1,), 1)[:, 0, 0]
    array([2., 4.])
    """
    if groups != 1:
        raise ValueError(f"space_to_depth needs groups=1, got groups={groups}")
    rank = len(kernel_size)
    if not 1 <= rank <= _RANK:
        raise ValueError(f"space_to_depth handles ranks 1 to 3, got rank {rank}")
    kernels = _kernels(use_numba)
    n, c, f = xp.shape[0], xp.shape[-1], dy.shape[-1]
    out_size = dy.shape[1:-1]
    cut = _cut(xp, kernel_size, strides, dilation, out_size, padding, threads, block_bytes, f)
    out3 = cut.out3
    flat_dy = np.ascontiguousarray(dy, xp.dtype).reshape(n, out3[0], out3[1] * out3[2], f)
    scratch = threading.local()

    def work(start: int, stop: int) -> np.ndarray:
        total = np.zeros((cut.inner, f), xp.dtype)
        part = np.empty_like(total)
        for unit in range(start, stop):
            image, o0, first, columns = _block(cut, kernels, scratch, unit)
            np.matmul(columns, flat_dy[image, o0, first:first + columns.shape[1]], out=part)
            total += part
        return total

    units = n * cut.units_per_image
    if units == 0 or flat_dy.size == 0:
        return np.zeros((*kernel_size, c, f), xp.dtype)
    # run inline: one chunk, so one partial gradient (not one per block, summed after)
    chunk = units if chunk_workers(threads, cut.flops) == 1 else 1
    parts = run_chunks(work, units, chunk, threads=threads, flops=cut.flops)
    dk = parts[0]
    for more in parts[1:]:
        dk += more
    return dk.reshape(*kernel_size, c, f)


#: Most input channels for which space-to-depth applies at stride 1 (one phase: the
#: planes are a planar copy of the input, and the columns' runs are still longer than
#: a channels-last gather's ``C`` values).
THIN_CHANNELS = 4

#: Most kernel taps for which it applies at stride 1: a 15×15 kernel, 3 -> 16 on
#: 4×64², ran in 5.0 ms against FFT's 6.7; a 63×63 one, 4 -> 4 on 4×126², in 264 ms
#: against 16 (one core).
THIN_TAPS = 225


def _strided_or_thin(problem: ConvProblem) -> bool:
    return any(s > 1 for s in problem.strides) or (
        problem.in_channels <= THIN_CHANNELS and math.prod(problem.kernel_size) <= THIN_TAPS)


#: When space-to-depth applies: ranks 1 to 3, one group, a stride above 1 on some axis
#: or at most :data:`THIN_CHANNELS` input channels and :data:`THIN_TAPS` taps.
applies = Requirements((
    (f"rank 1 to {_RANK}", lambda p: 1 <= p.rank <= _RANK),
    ("groups=1", lambda p: p.groups == 1),
    (f"a stride above 1 on some axis, or at most {THIN_CHANNELS} input channels and "
     f"{THIN_TAPS} taps", _strided_or_thin),
))


#: Fixed cost (the plane buffers, the blocks' set-up), about 20 µs more than flat_rows'.
#: It puts the crossover with flat_rows (whose cost has no fixed part) near 2·10⁶ FLOPs
#: for 1-3 channels, as measured (one core, CPU time, float32, busy machine; weight
#: gradients and forward with ``CONVARITH_JIT=0``): at 2·10⁵ FLOPs flat_rows was 15-30 µs
#: faster; from 1.8·10⁶ this path 1.0-1.9× faster (the 3×3 stride-2 3 -> 32 stem's weight
#: gradient on one 112² image, 5.4·10⁶ FLOPs: 0.155 ms against flat_rows' 0.238; with
#: the former 3·10⁶ the weight gradient went to flat_rows below 1.2·10⁷ FLOPs).
_OVERHEAD = 5e5


def cost(problem: ConvProblem) -> float:
    """Estimated cost in :mod:`.flat_rows` units (``0.7 × flops`` there).

    Measured against :mod:`.flat_rows` (one core, float32, its compiled
    im2col; time ratio flat_rows / space_to_depth):

    - 1 to 3 input channels: 1.1–1.9 (the ResNet stem 7×7 stride 2, 3.8 ms
      against 6.5 ms; 3×3 stride 2, stride (2, 1), dilated, 1-D, 4×4 stride 4);
    - 4 channels: 1.1; 8 channels: 1.6 in 3-D (flat_rows has no compiled
      im2col there), 0.96–1.1 in 2-D, 1.0 in 1-D;
    - 12 channels and more: 0.8–0.95 (the planar copy of the input and the
      runs as short as the output rows cost more than flat_rows'
      channels-last gather, whose runs of ``C`` floats are then as long);
    - tiny problems: about 20 µs more fixed cost (:data:`_OVERHEAD`);
    - a 1×1 kernel with more than 4 channels (ResNet's 1×1 stride-2 shortcuts): the
      blocks' planar copies are all the work, 2.1–5.2 times flat_rows' time (two
      threads, quiet: 1024 -> 2048 on 7² stride 2, batch 1, 4.28 against 0.82 ms,
      batch 16, 12.6 against 5.9; 512 -> 1024 on 14², batch 1, 2.36 against 0.42).
    """
    channels = problem.in_channels
    if channels > 4 and math.prod(problem.kernel_size) == 1:
        return problem.flops * 2.0 + _OVERHEAD
    if channels == 1 and math.prod(problem.kernel_size) <= 9:
        # one channel over few taps: products of 9 rows (the one-channel 3×3 of the
        # nine-layer benchmark, L4, without compiled kernels: 0.87 ms against the
        # depthwise loop's 0.78, one core)
        per_flop = 0.75
    elif channels <= 3:
        per_flop = 0.45
    elif channels <= 4:
        per_flop = 0.6
    elif channels <= 8 and problem.rank == 3:
        per_flop = 0.5
    elif channels <= 8 and problem.rank == 2:
        per_flop = 0.68
    else:
        per_flop = 0.8
    return problem.flops * per_flop + _OVERHEAD


register_algorithm("space_to_depth", direct, applies=applies, cost=cost, weight_grad=weight_grad,
                   pads_zeros=True, weight_grad_cost=gradient_costs.space_to_depth)
