"""1×1 convolutions as BLAS products over chunks of output rows, on every worker.

A 1×1 kernel ``(1…, C, F)`` makes output cell ``o`` the product of input cell
``o·S`` with the kernel: the whole layer is one ``(cells, C) @ (C, F)`` product.
Left to one BLAS call, that product runs on BLAS's own threads, and for the
narrow products of real networks (``C`` or ``F`` of 8 to 64: MobileNetV2's
32 -> 16 on 56², WaveNet's 64 -> 64) those do not use a second core: in the
networks benchmark on a quiet two-core machine, 32 -> 16 on 16×56² took 1.54 ms
on two threads (wall), against 0.72 ms of one thread's CPU time here. Here the output cells are cut into
chunks, about :data:`CHUNKS_PER_WORKER` per worker, each a single-threaded
BLAS product written in place into its rows of the output (:func:`run_chunks`),
so the calling thread does no work outside the chunks and both workers stay
busy. A strided layer's chunk first gathers the input cells it reads into a
per-thread buffer (no copy of the whole input).

At stride 1, outputs of 8 to 64 float32 channels with AVX-512, 4 to 16 with AVX2
(:func:`compiled_narrow`: whole vectors and at most one half vector) run
:mod:`._llvm_pointwise`'s compiled kernel instead, which reads the input where it lies
(no packing) with the outputs in registers, in chunks of cells on the workers (there
from :data:`KERNEL_SHARED_FLOPS`, :func:`narrow_kernel_runs`): 144 -> 24 on 16×28² in
1.04 ms of one core against BLAS's 2.24.

Without it, on one worker, narrow outputs (at most :data:`NARROW_OUTPUTS` channels) run as
products of pieces of about :data:`CHUNK_BYTES` of input and output cells, one after
another on the calling thread (:func:`serial_pieces`): each piece's input stays in the
core's cache while BLAS packs and multiplies it (0.7-0.9 of the one product's time).

Otherwise, at stride 1 on one worker, or below :data:`~._threads.SMALL_WORK` FLOPs, the
layer is the one product, with as few Python objects as possible: a squeeze-excitation
1×1 on a 1×1 image moves a few hundred bytes, so the call's own allocations
are its peak memory.

Examples
--------
>>> import numpy as np
>>> xp = np.arange(12.0).reshape(1, 2, 3, 2)          # (N, H, W, C)
>>> kernel = np.array([[[[1.0], [10.0]]]])            # (1, 1, C=2, F=1)
>>> direct(xp, kernel, (1, 2), (1, 1), 1, (2, 2))[0, :, :, 0]
array([[ 10.,  54.],
       [ 76., 120.]])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..dispatch import ConvProblem, Requirements, register_algorithm
from . import _llvm_pointwise, _llvm_pointwise_grad
from ._threads import (
    SMALL_WORK,
    SMALL_WORK_NO_BLAS,
    parallel_penalty,
    run_chunks,
    worker_count,
    workspace,
)

__all__ = ["direct", "bind", "weight_grad", "products", "applies", "cost", "chunks", "busy_share",
           "CHUNKS_PER_WORKER", "MIN_CHUNK_CELLS", "CHUNK_BYTES", "CHUNKED", "NARROW_CHANNELS",
           "INLINE", "CACHED_KERNEL_BYTES", "CACHED_KERNEL", "ALIASED_CELLS", "inline_share",
           "PARTIALS_BYTES", "NARROW_OUTPUTS", "NARROW_PIECES", "cached_chunks", "serial_pieces",
           "compiled_narrow", "narrow_kernel_runs", "narrow_runner", "KERNEL_SHARED_FLOPS", "KERNEL_CELLS",
           "KERNEL_CHUNK_CELLS", "KERNEL_SHARE", "weight_grad_cost", "KERNEL_GRAD_SHARE",
           "KERNEL_GRAD_WIDE", "KERNEL_GRAD_NARROW", "CELL_SPLIT_RATIO", "kernel_grad_runs",
           "KERNEL_GRAD_RESULT_BYTES", "KERNEL_GRAD_CHANNELS", "KERNEL_GRAD_CELLS",
           "KERNEL_GRAD_LARGE_RESULT"]

#: Chunks per worker: a few, so a worker delayed by another process does not hold
#: the call up; each costs ~10 µs of Python.
CHUNKS_PER_WORKER = 4

#: Output cells a chunk's product has at least (BLAS slows below a few dozen rows).
MIN_CHUNK_CELLS = 64

#: Output and input bytes per chunk at most: a chunk's working set stays in a core's
#: cache. Measured on one core (CPU time of the chunks for two workers, float32, busy
#: machine; ms for one product, then chunks of 64, 128, 256, 512 KiB): 96 -> 24 on
#: 16×28² 0.89, 0.99, 0.84, 1.10, 1.15; 32 -> 16 on 16×56² 0.71, 0.94, 0.69, 0.65, 0.88;
#: 192 -> 32 on 16×14² 0.44, 0.49, 0.44, 0.56, 0.55; 64 -> 64 on 16×28² 1.27, 1.43,
#: 1.58, 1.58, 1.48; 24 -> 144 on 16×28² 1.09, 1.45, 1.24, 1.31, 1.33; 64 -> 256 on
#: 4096 1.50, 1.96, 1.84, 1.80, 1.70.
CHUNK_BYTES = 128 << 10


def chunks(batch: int, out_size: Sequence[int], channels: int, filters: int, itemsize: int,
           workers: int, chunk_bytes: int | None = None) -> list[tuple[int, int]]:
    """The chunks ``(row0, row1)`` the output is cut into for ``workers``.

    Rows are counted over the images and the first spatial axis (``batch ·
    out_size[0]`` of them, each ``prod(out_size[1:])`` cells), so a chunk's output
    cells are contiguous. About :data:`CHUNKS_PER_WORKER` per worker, a multiple of the
    workers, of sizes that differ by at most one row, each at least
    :data:`MIN_CHUNK_CELLS` cells and (where that allows more chunks) at most
    ``chunk_bytes`` (default :data:`CHUNK_BYTES`).

    >>> chunks(1, (4096,), 64, 64, 4, 2)[:2]
    [(0, 256), (256, 512)]
    >>> chunks(1, (28, 28), 96, 24, 4, 4)[:3]
    [(0, 3), (3, 7), (7, 10)]
    >>> chunks(16, (56, 56), 32, 16, 4, 1)
    [(0, 896)]
    """
    total = batch * (out_size[0] if out_size else 1)
    row_cells = max(1, math.prod(out_size[1:]))
    if workers <= 1:
        return [(0, total)]
    budget = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    fits = max(1, budget // (row_cells * (channels + filters) * itemsize))
    count = max(CHUNKS_PER_WORKER * workers, -(-total // fits))
    count = min(count, max(1, total // -(-MIN_CHUNK_CELLS // row_cells)))
    if count >= workers:
        count -= count % workers
    return [(i * total // count, (i + 1) * total // count) for i in range(count)]


def busy_share(pieces: Sequence[tuple[int, int]], workers: int) -> float:
    """The largest share of the output rows one of ``workers`` computes (``1 / workers``
    when the chunks split evenly, 1 when there is a single chunk).

    >>> busy_share([(0, 4), (4, 8), (8, 10)], 2)
    0.6
    """
    sizes = sorted((r1 - r0 for r0, r1 in pieces), reverse=True)
    loads = [0] * max(1, min(workers, len(sizes)))
    for size in sizes:  # the workers take the next chunk as they finish: greedy
        loads[loads.index(min(loads))] += size
    return max(loads) / max(1, sum(sizes))


#: Output channels up to which one thread runs the product in pieces of about
#: :data:`CHUNK_BYTES` (:func:`serial_pieces`) rather than as one BLAS call.
NARROW_OUTPUTS = 32

#: The pieces' time over the one product's for narrow outputs on one thread (CPU time,
#: float32, busy machine, best of three; one product ms, then pieces of 64, 128, 256 KiB
#: over it): 144 -> 24 on 16×28² 1.59, 0.80, 0.69, 1.08; 32 -> 16 on 16×56² 0.71, 1.00,
#: 0.84, 0.76; 96 -> 24 on 16×28² 0.82, 1.00, 0.87, 1.12; 192 -> 32 on 16×14² 0.46,
#: 0.91, 0.86, 1.08; 16 -> 16 on 64×28² 0.40, 1.01, 0.82, 0.73; 32 -> 16 on 1×56² 0.043,
#: 0.99, 0.84, 0.77; 144 -> 24 on 1×28² 0.071, 0.92, 0.83, 1.08. Wide outputs gain
#: nothing or lose (24 -> 144 on 16×28² 1.04, 40 -> 240 on 16×14² 1.13, 960 -> 320 on
#: 16×4² 1.04, 256 -> 1024 on 16×14² 1.26).
NARROW_PIECES = 0.85


def cached_chunks(batch: int, out_size: Sequence[int], channels: int, filters: int,
                  itemsize: int) -> bool:
    """Whether one thread runs the layer in :func:`serial_pieces`: at most
    :data:`NARROW_OUTPUTS` outputs, at least two pieces' worth of input and output, and
    at least ``2 × MIN_CHUNK_CELLS`` cells a piece (with many input channels a piece
    has few cells, and BLAS packs the kernel again for each: 960 -> 16 on 16×14², one
    core, 2.13 ms in pieces against 1.82 as one product).

    >>> cached_chunks(16, (28, 28), 144, 24, 4), cached_chunks(16, (28, 28), 24, 144, 4)
    (True, False)
    >>> cached_chunks(1, (1, 1), 1152, 16, 4), cached_chunks(16, (14, 14), 960, 16, 4)
    (False, False)
    """
    cells = batch * math.prod(out_size)
    cell_bytes = (channels + filters) * itemsize
    return (filters <= NARROW_OUTPUTS and cells * cell_bytes >= 2 * CHUNK_BYTES
            and CHUNK_BYTES // cell_bytes >= 2 * MIN_CHUNK_CELLS)


def serial_pieces(batch: int, out_size: Sequence[int], channels: int, filters: int,
                  itemsize: int, chunk_bytes: int | None = None) -> list[tuple[int, int]]:
    """One thread's pieces ``(row0, row1)`` (rows as :func:`chunks` counts them): about
    ``chunk_bytes`` (default :data:`CHUNK_BYTES`) of input and output cells each, whole
    rows, at least :data:`MIN_CHUNK_CELLS` cells.

    >>> serial_pieces(16, (56, 56), 32, 16, 4)[:2]
    [(0, 12), (12, 24)]
    >>> len(serial_pieces(16, (56, 56), 32, 16, 4))
    75
    """
    total = batch * (out_size[0] if out_size else 1)
    row_cells = max(1, math.prod(out_size[1:]))
    budget = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    rows = max(1, budget // (row_cells * (channels + filters) * itemsize),
               -(-MIN_CHUNK_CELLS // row_cells))
    return [(row0, min(total, row0 + rows)) for row0 in range(0, total, rows)]


def direct(
    xp: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_size: Sequence[int],
    *,
    threads: int | None = None,
) -> np.ndarray:
    """The registry's direct contract for a 1×1 kernel and one group.

    ``xp`` ``(N, *spatial, C)``, ``kernel`` ``(1…, C, F)``; ``y`` ``(N, *out_size, F)``;
    ``threads``: workers (default :func:`worker_count`).
    """
    if groups != 1:
        raise ValueError(f"pointwise_rows needs groups=1, got groups={groups}")
    shape = xp.shape
    c, f = shape[-1], kernel.shape[-1]
    whole = shape[1:-1] == tuple(out_size)  # stride 1 (or a 1-cell output): every cell
    cells = math.prod(shape[:-1])
    workers = worker_count() if threads is None else threads
    if whole and narrow_kernel_runs(xp.dtype, cells, c, f, workers):
        return _narrow(xp, kernel, threads)
    if workers <= 1 and cached_chunks(shape[0], out_size, c, f, xp.dtype.itemsize):
        # narrow outputs on one thread: products of a few cached rows at a time
        y = np.empty((shape[0], *out_size, f), xp.dtype)
        outputs = y.reshape(-1, f)
        source = _row_source(xp, strides, out_size)
        weights = kernel.reshape(c, f)
        row_cells = math.prod(out_size[1:])
        for row0, row1 in serial_pieces(shape[0], out_size, c, f, xp.dtype.itemsize):
            np.matmul(source(row0, row1), weights,
                      out=outputs[row0 * row_cells:row1 * row_cells])
        return y
    if whole and 2 * xp.size * f < SMALL_WORK:
        # the one product, inline (few objects: a layer on a 1×1 image is a few hundred
        # bytes, and the call's own allocations are its peak memory)
        return np.matmul(xp.reshape(-1, c), kernel.reshape(c, f)).reshape(*shape[:-1], f)
    n = shape[0]
    weights = kernel.reshape(c, f)
    flops = 2.0 * n * math.prod(out_size) * c * f
    if whole and workers <= 1:
        return np.matmul(xp.reshape(-1, c), weights).reshape(*shape[:-1], f)
    y = np.empty((n, *out_size, f), xp.dtype)
    pieces = chunks(n, out_size, c, f, xp.dtype.itemsize, workers)
    row_cells = math.prod(out_size[1:])
    outputs = y.reshape(-1, f)
    source = _row_source(xp, strides, out_size)

    def work(first: int, last: int) -> None:
        for row0, row1 in pieces[first:last]:
            np.matmul(source(row0, row1), weights,
                      out=outputs[row0 * row_cells:row1 * row_cells])

    run_chunks(work, len(pieces), 1, threads=threads, flops=flops)
    return y


#: Output cells from which a narrow stride-1 layer runs :mod:`._llvm_pointwise`'s
#: kernel rather than BLAS (below, the ctypes call's few microseconds matter: 1×1
#: images of squeeze-excitation layers).
KERNEL_CELLS = 256

#: Cells per chunk of the kernel on several workers, at least.
KERNEL_CHUNK_CELLS = 256

#: The kernel's time over ``0.7 × FLOPs`` (:mod:`.flat_rows`' one BLAS product): one
#: core, CPU time, float32, AVX-512 (Zen 4), through ``conv``, kernel against the one
#: product, ms: 32 -> 16 on 16×56² 0.555 / 0.735, 96 -> 24 on 16×28² 0.651 / 0.912,
#: 144 -> 24 on 16×28² 1.04 / 2.24, 144 -> 32 on 16×14² 0.325 / 0.392, 192 -> 32 on
#: 16×14² 0.404 / 0.542, 960 -> 16 on 16×14² 1.15 / 2.33; up to 64 outputs, against
#: main's path: 144 -> 40 on 16×28² 1.59 / 2.81, 64 -> 64 1.07 / 1.18, 192 -> 64 on
#: 16×14² 0.79 / 1.31, 384 -> 64 on 16×7² 0.39 / 0.49.
KERNEL_SHARE = 0.75


def compiled_narrow(dtype: np.dtype[Any], cells: int, channels: int, filters: int) -> bool:
    """Whether a stride-1 layer of ``cells`` output cells runs :mod:`._llvm_pointwise`'s
    kernel: at least :data:`KERNEL_CELLS` cells, outputs it has a kernel for (whole
    vectors and a half, at most four vectors: 8 to 64 float32 channels with AVX-512),
    compiled kernels here.

    >>> compiled_narrow(np.dtype("float32"), 16, 32, 16)
    False
    """
    return cells >= KERNEL_CELLS and _llvm_pointwise.supported(dtype, filters)


#: On several workers a layer runs the kernel from this many FLOPs; below, its chunks
#: (Python calls handed to the helpers) lose to BLAS's: two threads, wall time, quiet
#: 2-core Zen 4, float32, 16 images, kernel over BLAS, medians of 80 calls: 192 -> 32
#: on 14² (38.5 MFLOP) 1.36, 576 -> 24 on 7² (43 MFLOP) 1.48, 32 -> 16 on 28² (12.8
#: MFLOP) 1.73, 144 -> 24 on one 28² image (5.4 MFLOP) 2.63; from 5e7 they win or tie:
#: 32 -> 16 on 56² (51 MFLOP) 0.91, 240 -> 40 on 14² (60 MFLOP) 1.04, 64 -> 24 on 56²
#: 0.74, 144 -> 24 on 28² 0.71, 960 -> 16 on 14² 0.60. One worker takes the kernel at
#: any size (0.78-0.97 of the product's time, one core).
KERNEL_SHARED_FLOPS = 5e7


def narrow_kernel_runs(dtype: np.dtype[Any], cells: int, channels: int, filters: int,
                       workers: int) -> bool:
    """Whether a stride-1 layer runs :mod:`._llvm_pointwise`'s kernel on ``workers``
    threads: :func:`compiled_narrow`, and on several workers at least
    :data:`KERNEL_SHARED_FLOPS`.

    >>> dtype = np.dtype("float32")
    >>> narrow_kernel_runs(dtype, 16 * 14 * 14, 192, 32, 2) and compiled_narrow(dtype, 16 * 14 * 14, 192, 32)
    False
    """
    return compiled_narrow(dtype, cells, channels, filters) and (
        workers <= 1 or 2.0 * cells * channels * filters >= KERNEL_SHARED_FLOPS)


def _kernel_chunks(cells: int, workers: int) -> int:
    """Chunks of :func:`_narrow` on ``workers`` threads: :data:`CHUNKS_PER_WORKER`
    each, of at least :data:`KERNEL_CHUNK_CELLS` cells, a multiple of the workers where
    there are as many.

    >>> _kernel_chunks(16 * 56 * 56, 2), _kernel_chunks(784, 2), _kernel_chunks(300, 2)
    (8, 2, 1)
    """
    count = max(1, min(CHUNKS_PER_WORKER * workers, cells // KERNEL_CHUNK_CELLS))
    return count - count % workers if count >= workers else count


def _narrow(xp: np.ndarray, kernel: np.ndarray, threads: int | None) -> np.ndarray:
    """A stride-1 layer through :mod:`._llvm_pointwise`'s kernel, in chunks of cells on
    the workers."""
    return narrow_runner(xp.dtype, xp.shape, kernel.shape[-1], threads)(xp, kernel)


def narrow_runner(dtype: np.dtype[Any], shape: Sequence[int], filters: int,
                  threads: int | None, wide: bool = False
                  ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``run(xp, kernel)`` for inputs of ``shape``: the kernel, its chunks and their
    cells found once (:func:`bind` keeps it with the layer's plan); ``wide``: the
    kernel of :func:`._llvm_pointwise.column_blocks`."""
    c, f = shape[-1], filters
    kernels = _llvm_pointwise.compiled(dtype, c, f, wide)
    assert kernels is not None
    cells = math.prod(shape[:-1])
    out_shape = (*shape[:-1], f)
    workers = worker_count() if threads is None else threads
    count = _kernel_chunks(cells, workers)
    flops = 2.0 * cells * c * f
    block = kernels.cells
    edges = [cells * i // count // block * block for i in range(count)] + [cells]
    drive, item = kernels.drive, dtype.itemsize
    inline = count == 1 or (threads is None and flops < SMALL_WORK_NO_BLAS)

    def run(xp: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        inputs = np.ascontiguousarray(xp)  # (kept: its address is read below)
        weights = np.ascontiguousarray(kernel, dtype=dtype)
        y = np.empty(out_shape, dtype)
        x, w, out = inputs.ctypes.data, weights.ctypes.data, y.ctypes.data
        if inline:
            drive(x, w, out, cells)
            return y

        def work(first: int, last: int) -> None:
            for i in range(first, last):
                drive(x + edges[i] * c * item, w, out + edges[i] * f * item,
                      edges[i + 1] - edges[i])

        run_chunks(work, count, 1, threads=threads, flops=flops, blas=False,
                   inline_below=SMALL_WORK_NO_BLAS)
        return y

    return run


def bind(problem: ConvProblem) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """:func:`direct` for one problem below :data:`~._threads.SMALL_WORK` at stride 1
    (its one inline product), as ``run(xp, kernel)``: the sizes and the branch decided
    here, the call left with two reshapes and one ``np.dot`` (about 1 µs less than
    ``np.matmul`` on a 1×1 image); for a layer :func:`compiled_narrow` runs, at any size,
    the compiled kernel with its chunks found once; ``None`` for the others.

    >>> p = ConvProblem((1, 1, 1, 4), (1, 1, 4, 3), (1, 1), (1, 1), 1, (1, 1), np.dtype("float64"))
    >>> bind(p)(np.ones((1, 1, 1, 4)), np.ones((1, 1, 4, 3)))
    array([[[[4., 4., 4.]]]])
    """
    shape = problem.input_shape
    if problem.groups != 1 or shape[1:-1] != problem.out_size:
        return None
    c, f = shape[-1], problem.out_channels
    cells = math.prod(shape[:-1])
    if narrow_kernel_runs(problem.dtype, cells, c, f, worker_count()):
        return narrow_runner(problem.dtype, shape, f, None)
    if problem.flops >= SMALL_WORK:
        return None
    if worker_count() <= 1 and cached_chunks(shape[0], problem.out_size, c, f,
                                             problem.dtype.itemsize):
        return None  # direct's pieces
    out_shape = (*shape[:-1], f)

    def run(xp: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        return np.dot(xp.reshape(cells, c), kernel.reshape(c, f)).reshape(out_shape)

    return run


def _row_source(xp: np.ndarray, strides: Sequence[int], out_size: Sequence[int]
                ) -> Callable[[int, int], np.ndarray]:
    """``source(row0, row1)``: the input cells output rows ``row0 .. row1 - 1`` (counted
    as in :func:`chunks`) read, as ``(cells, C)``: a view at stride 1, else gathered
    image by image into this thread's buffer."""
    c = xp.shape[-1]
    rows = out_size[0]
    row_cells = math.prod(out_size[1:])
    if xp.shape[1:-1] == tuple(out_size):
        inputs = np.ascontiguousarray(xp).reshape(-1, c)
        return lambda row0, row1: inputs[row0 * row_cells:row1 * row_cells]
    s0 = strides[0]
    tail = tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(out_size[1:], strides[1:]))

    def gathered(row0: int, row1: int) -> np.ndarray:
        buffer = workspace("pointwise_rows", (row1 - row0, row_cells, c), xp.dtype)
        row = row0
        while row < row1:
            image, r = divmod(row, rows)
            stop = min(row1, (image + 1) * rows)
            view = xp[(image, slice(r * s0, (r + stop - row - 1) * s0 + 1, s0)) + tail]
            np.copyto(buffer[row - row0:stop - row0].reshape(view.shape), view)
            row = stop
        return buffer.reshape(-1, c)

    return gathered


def products(source: np.ndarray, weights: np.ndarray, target: np.ndarray,
             pieces: Sequence[tuple[int, int]], row_cells: int, *,
             threads: int | None = None) -> None:
    """``target[rows] = source[rows] @ weights`` chunk by chunk on the workers (rows of
    ``row_cells`` cells, as :func:`chunks` cuts them); ``source`` and ``target`` 2-D.

    >>> a, w, out = np.ones((6, 2)), np.ones((2, 3)), np.empty((6, 3))
    >>> products(a, w, out, [(0, 1), (1, 3)], 2, threads=2)
    >>> out[:, 0]
    array([2., 2., 2., 2., 2., 2.])
    """
    def work(first: int, last: int) -> None:
        for row0, row1 in pieces[first:last]:
            cells = slice(row0 * row_cells, row1 * row_cells)
            np.matmul(source[cells], weights, out=target[cells])

    flops = 2.0 * source.shape[0] * source.shape[1] * weights.shape[1]
    run_chunks(work, len(pieces), 1, threads=threads, flops=flops)


#: Bytes of partial kernel gradients (one ``C × F`` per chunk) above which
#: :func:`weight_grad` cuts one chunk per worker instead.
PARTIALS_BYTES = 4 << 20


def weight_grad(
    xp: np.ndarray,
    dy: np.ndarray,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    *,
    threads: int | None = None,
) -> np.ndarray:
    """The kernel gradient ``Σ_cells x[cell·S]ᵀ dy[cell]`` by chunks of output rows on the
    workers, each a ``(C × cells) @ (cells × F)`` product, the partial sums added at the
    end (at most :data:`PARTIALS_BYTES` of them).

    >>> xp = np.arange(8.0).reshape(1, 4, 2)
    >>> weight_grad(xp, np.ones((1, 2, 1)), (1,), (2,), (1,), 1)[0, :, 0]
    array([4., 6.])
    """
    if groups != 1:
        raise ValueError(f"pointwise_rows needs groups=1, got groups={groups}")
    n, c = xp.shape[0], xp.shape[-1]
    f = dy.shape[-1]
    out_size = dy.shape[1:-1]
    grads = np.ascontiguousarray(dy).reshape(-1, f)
    cells = grads.shape[0]
    workers = worker_count() if threads is None else threads
    source = _row_source(xp, strides, out_size)
    row_cells = math.prod(out_size[1:])
    if cells == 1:  # a 1×1 image: NumPy's matmul of inner size 1 takes a slow loop
        return np.multiply.outer(source(0, 1)[0], grads[0]).reshape(*kernel_size, c, f)
    flops = 2.0 * cells * c * f
    if tuple(xp.shape[1:-1]) == tuple(out_size) and kernel_grad_runs(xp.dtype, cells, c, f):
        kernels = _llvm_pointwise_grad.compiled(xp.dtype, c, f)
        if kernels is not None:
            inputs = np.ascontiguousarray(xp).reshape(cells, c)
            return _compiled_weight_grad(kernels, inputs, grads, workers, threads,
                                         flops).reshape(*kernel_size, c, f)
    if workers <= 1 or flops < SMALL_WORK:
        return np.matmul(source(0, n * out_size[0]).T, grads).reshape(*kernel_size, c, f)
    pieces = chunks(n, out_size, c, f, xp.dtype.itemsize, workers)
    if len(pieces) > workers and len(pieces) * c * f * xp.dtype.itemsize > PARTIALS_BYTES:
        total = n * out_size[0]
        count = min(workers, total)
        pieces = [(i * total // count, (i + 1) * total // count) for i in range(count)]

    def work(first: int, last: int) -> np.ndarray:
        partial = np.zeros((c, f), xp.dtype)
        for row0, row1 in pieces[first:last]:
            partial += source(row0, row1).T @ grads[row0 * row_cells:row1 * row_cells]
        return partial

    partials = run_chunks(work, len(pieces), 1, threads=threads, flops=flops)
    total_grad = partials[0]
    for partial in partials[1:]:
        total_grad += partial
    return total_grad.reshape(*kernel_size, c, f)


#: Result bytes (``C × F``) per cell of ``x`` and ``dy`` (``C + F`` values) up to which
#: :func:`weight_grad`'s compiled kernel splits the cells over the workers (each its own
#: ``C × F`` partial sum, added at the end); above, it splits the input channels (each
#: worker reads all of ``dy``): 512 -> 2048 on one 4² image has 1 MiB of result for
#: 40 KiB of operands.
CELL_SPLIT_RATIO = 0.125


#: Result bytes (``C × F``) up to which :func:`weight_grad` runs the compiled kernel over
#: several chunks of cells (each reads and writes the whole result): beyond, BLAS's one
#: product was as fast or faster (one core, ms, kernel against BLAS: 2048 -> 512 on
#: 16×4² 7.0 / 5.7, 1024 -> 256 on 16×7² 4.6 / 4.5, 320 -> 1280 on 16×4² 2.5 / 2.2),
#: within it faster (576 -> 96 on 16×7² 0.84 / 0.96, 128 -> 512 on 16×14² 4.4 / 4.6).
KERNEL_GRAD_RESULT_BYTES = 512 << 10

#: Input channels up to which :func:`weight_grad` runs the compiled kernel over several
#: chunks of cells: with more, a block of channels reads one cache line of each cell's
#: long row for a few values, and BLAS was as fast (one core, three alternating processes,
#: ms, kernel against BLAS: 512 -> 128 on 16×14² 5.65 / 5.10, 576 -> 96 on 16×7² 0.97 /
#: 1.02; 384 -> 64 on 16×7² 0.42 / 0.46).
KERNEL_GRAD_CHANNELS = 384

#: Fewest cells for which :func:`weight_grad` runs the compiled kernel on a result of at
#: most :data:`KERNEL_GRAD_RESULT_BYTES`: over fewer, BLAS's product of operands that
#: sit in the core's cache was faster (one core, CPU time, the two alternating in one
#: process, ms, BLAS against the kernel: 80 -> 480 on 7² 0.049 / 0.060, 160 -> 960 on
#: 4² 0.071 / 0.086, 40 -> 240 on 14² 0.059 / 0.067; 24 -> 144 on 28² 0.073 / 0.070).
KERNEL_GRAD_CELLS = 256

#: Result bytes from which :func:`weight_grad` runs the compiled kernel on cells that
#: make one chunk, its result read and written once (ms, as above: 256 -> 1024 on 7²
#: 0.38 / 0.31, 512 -> 2048 on 4² 0.86 / 0.52, 2048 -> 512 on 4² 0.51 / 0.47, 1024 ->
#: 512 on 7² 0.62 / 0.59; 320 -> 1280 on 4² 0.18 / 0.19).
KERNEL_GRAD_LARGE_RESULT = 1 << 20


def kernel_grad_runs(dtype: np.dtype[Any], cells: int, channels: int, filters: int) -> bool:
    """Whether :func:`weight_grad` runs :mod:`._llvm_pointwise_grad`'s kernel for a stride-1
    layer: a kernel for ``filters`` here, and either at least :data:`KERNEL_GRAD_CELLS`
    cells for a result of at most :data:`KERNEL_GRAD_RESULT_BYTES` from at most
    :data:`KERNEL_GRAD_CHANNELS` input channels, or cells that make one chunk for a
    result of at least :data:`KERNEL_GRAD_LARGE_RESULT` bytes.

    >>> f32 = np.dtype("float32")
    >>> kernel_grad_runs(f32, 256, 2048, 512) or not _llvm_pointwise_grad.supported(f32, 16)
    False
    """
    result = channels * filters * dtype.itemsize
    return (cells > 1 and _llvm_pointwise_grad.supported(dtype, filters)
            and ((cells >= KERNEL_GRAD_CELLS and result <= KERNEL_GRAD_RESULT_BYTES
                  and channels <= KERNEL_GRAD_CHANNELS)
                 or (result >= KERNEL_GRAD_LARGE_RESULT and cells <= _llvm_pointwise_grad
                     .chunk_cells(channels, filters, dtype.itemsize))))


def _compiled_weight_grad(kernels: _llvm_pointwise_grad.GradKernels, x: np.ndarray,
                          grads: np.ndarray, workers: int, threads: int | None,
                          flops: float) -> np.ndarray:
    """``x.T @ grads`` by :mod:`._llvm_pointwise_grad`'s kernel: on one worker (or below
    :data:`~._threads.SMALL_WORK_NO_BLAS` FLOPs) one call; else one share of the cells
    per worker, the partial sums added, or, where the result is large beside the
    operands (:data:`CELL_SPLIT_RATIO`), one share of the input channels per worker."""
    cells, c = x.shape
    f = grads.shape[1]
    if workers <= 1 or (threads is None and flops < SMALL_WORK_NO_BLAS):
        out = np.zeros((c, f), x.dtype)
        kernels.run(x, grads, out)
        return out
    if c * f * workers <= CELL_SPLIT_RATIO * cells * (c + f) or c < 2 * 12:
        edges = [cells * i // workers for i in range(workers + 1)]

        def partial(first: int, last: int) -> np.ndarray:
            out = np.zeros((c, f), x.dtype)
            for i in range(first, last):
                kernels.run(x, grads, out, edges[i], edges[i + 1])
            return out

        partials = run_chunks(partial, workers, 1, threads=threads, flops=flops, blas=False,
                              inline_below=SMALL_WORK_NO_BLAS)
        total = partials[0]
        for other in partials[1:]:
            total += other
        return total
    # channel shares: multiples of 12 channels (whole register blocks of 6 and 12)
    blocks = -(-c // 12)
    bounds = [min(c, 12 * (blocks * i // workers)) for i in range(workers)] + [c]
    out = np.zeros((c, f), x.dtype)

    def rows(first: int, last: int) -> None:
        for i in range(first, last):
            kernels.run(x, grads, out, c_first=bounds[i], c_last=bounds[i + 1])

    run_chunks(rows, workers, 1, threads=threads, flops=flops, blas=False,
               inline_below=SMALL_WORK_NO_BLAS)
    return out


#: When the row products apply: a 1×1 kernel, one group.
applies = Requirements((
    ("a 1x1 kernel", lambda p: all(k == 1 for k in p.kernel_size)),
    ("groups=1", lambda p: p.groups == 1),
))

#: Chunked products' time over the one product's, on one thread (CPU time, float32,
#: busy machine, through ``conv``): 1.02 for 32 -> 16 on 16×56², 1.07 for 16 -> 96,
#: 1.34 for 96 -> 24 on 16×28², 1.24 for 192 -> 32 on 16×14², 1.12 for 64 -> 64 on
#: 16×28², 1.05 for 64 -> 64 and 1.12 for 64 -> 256 on 4096.
CHUNKED = 1.15


#: Up to this many channels on the narrower side (``min(C, F)``) the one BLAS
#: product's own threads gain little from a second core and the chunks win; above it
#: the one product (:mod:`.flat_rows`) is as fast or faster (two threads, quiet
#: machine, through ``conv``: 32 -> 16 on 16×56² 0.55 against 1.54 ms; but 40 -> 240 on
#: 16×14² 0.53 against 0.38, 64 -> 64 on 4096 0.51 against 0.24, 256 -> 128 on 28²
#: 0.54 against 0.30).
NARROW_CHANNELS = 32


#: The inline product's time over :mod:`.flat_rows`' for a layer below
#: :data:`~._threads.SMALL_WORK`: the same product with fewer Python objects (measured
#: through ``conv``, one core: squeeze-excitation 1×1 on 1×1 images, 32 -> 8 batch 1
#: 7.9 against 8.5 µs, 1152 -> 48 batch 16 26.2 against 27.5 µs; peak memory 1608
#: against 2368 bytes, 1.36 against 2.0 times the arrays' bytes).
INLINE = 0.95


#: Kernel bytes below which the inline product (below :data:`~._threads.SMALL_WORK`) of
#: few rows runs at BLAS's full rate: about one core's L2 cache. Larger kernels over few
#: rows are where BLAS slows (it packs the whole kernel for a few rows) and
#: :mod:`.register_tiles` is faster.
CACHED_KERNEL_BYTES = 1 << 20

#: The inline product's cost per FLOP with a kernel below :data:`CACHED_KERNEL_BYTES`,
#: over its cost with a larger one. Measured on one core (CPU time through ``conv2d``,
#: float32, busy AVX-512 machine; ms, this path against :mod:`.register_tiles`, whose cost
#: is 0.6 per FLOP there and which pays ~40 µs more per call): 1×4² 576 -> 160 0.050 against
#: 0.093, 160 -> 960 0.077 / 0.091, 960 -> 160 0.080 / 0.103; 1×7² 576 -> 160 0.116 /
#: 0.134; 2×7² 192 -> 1152 0.454 / 0.534; 4×4² 576 -> 160 0.134 / 0.153. Above the bound
#: register_tiles wins: 1×4² 320 -> 1280 0.204 / 0.173, 1×7² 256 -> 1024 0.386 / 0.314,
#: 1×10² 512 -> 512 0.553 / 0.508.
CACHED_KERNEL = 0.8

#: Output cells below which a kernel whose rows are a multiple of 4 KiB (1024 or 2048
#: float32 outputs) makes the inline product slow: BLAS packs such rows slowly (cache
#: aliasing), and over few cells the packing is most of the product (one core, ms, this
#: path against :mod:`.register_tiles`: 1×4² 128 -> 1024 0.117 / 0.087, 192 -> 1024 0.146
#: / 0.109, 1×2² 256 -> 1024 0.148 / 0.069; but 1×7² 128 -> 1024 0.188 / 0.221).
ALIASED_CELLS = 32


def inline_share(problem: ConvProblem, workers: int) -> float:
    """The inline product's cost (below :data:`~._threads.SMALL_WORK`, stride 1) over
    ``0.7 × FLOPs``: :data:`INLINE`, times :data:`CACHED_KERNEL` for a kernel below
    :data:`CACHED_KERNEL_BYTES`, and on ``W`` workers times ``parallel_penalty(1, W) / W``:
    the product runs on BLAS's own threads, where the compiled paths' inline calls
    run on one (two threads over one, same run, busy machine, fastest of 200 calls:
    this path 0.71 for 256 -> 1024 on 1×7², 0.79 for 1024 -> 256, 0.81 for 160 -> 960 on
    1×4², 0.78 for 192 -> 1152, 0.64 for 112 -> 672 on 1×7², 0.82 for 1152 -> 320 on
    1×4²; :mod:`.register_tiles` 1.0-1.06, so 0.252 against its 0.319 ms for 256 -> 1024
    on 1×7²). Neither for a kernel of 4 KiB rows over fewer than :data:`ALIASED_CELLS`
    cells.

    >>> p = ConvProblem((1, 4, 4, 160), (1, 1, 160, 960), (1, 1), (1, 1), 1, (4, 4), np.dtype("float32"))
    >>> round(inline_share(p, 1), 3), round(inline_share(p, 2), 3)
    (0.76, 0.608)
    >>> q = ConvProblem((1, 4, 4, 128), (1, 1, 128, 1024), (1, 1), (1, 1), 1, (4, 4), np.dtype("float32"))
    >>> inline_share(q, 2)
    0.95
    """
    itemsize = problem.dtype.itemsize
    cells = problem.batch * math.prod(problem.out_size)
    if problem.out_channels * itemsize % 4096 == 0 and cells < ALIASED_CELLS:
        return INLINE
    share = INLINE
    if problem.in_channels * problem.out_channels * itemsize < CACHED_KERNEL_BYTES:
        share *= CACHED_KERNEL
    if workers > 1:
        share *= parallel_penalty(1, workers) / workers
    return share


def cost(problem: ConvProblem) -> float:
    """``0.7 × FLOPs`` (:mod:`.flat_rows`' one 1×1 product) times :data:`CHUNKED`, times
    :func:`~._threads.parallel_penalty` of its chunks on ``W`` workers (one core's time,
    as every cost: :mod:`.flat_rows`' one product counts the share of it its BLAS call
    leaves serial); above :data:`NARROW_CHANNELS` on both sides, as one product. On one
    worker with narrow outputs (:func:`cached_chunks`), :data:`NARROW_PIECES`. Below
    :data:`~._threads.SMALL_WORK` at stride 1 the one product inline
    (:func:`inline_share`); on one worker the one product, a hair above :mod:`.flat_rows`.

    >>> p = ConvProblem((16, 56, 56, 32), (1, 1, 32, 16), (1, 1), (1, 1), 1, (56, 56), np.dtype("float32"))
    >>> cost(p) <= 0.7 * CHUNKED * p.flops
    True
    """
    base = 0.7 * problem.flops
    whole = problem.input_shape[1:-1] == problem.out_size
    workers = worker_count()
    cells = problem.batch * math.prod(problem.out_size)
    if whole and narrow_kernel_runs(problem.dtype, cells, problem.in_channels,
                                    problem.out_channels, workers):
        count = _kernel_chunks(cells, workers)
        small = problem.flops < SMALL_WORK_NO_BLAS
        return base * KERNEL_SHARE * (1.0 if small else parallel_penalty(count, workers,
                                                                          blas=False))
    if workers <= 1 and cached_chunks(problem.batch, problem.out_size, problem.in_channels,
                                      problem.out_channels, problem.dtype.itemsize):
        return base * NARROW_PIECES
    if problem.flops < SMALL_WORK:
        return base * (inline_share(problem, workers) if whole else CHUNKED)
    if workers <= 1:
        return base * (1.01 if whole else CHUNKED)
    pieces = chunks(problem.batch, problem.out_size, problem.in_channels,
                    problem.out_channels, problem.dtype.itemsize, workers)
    if min(problem.in_channels, problem.out_channels) > NARROW_CHANNELS:
        # the one product's own BLAS threads share wider products as well as the chunks
        return base * CHUNKED * parallel_penalty(1, workers)
    return base * CHUNKED * parallel_penalty(len(pieces), workers)


#: The compiled kernel gradient's time over one BLAS product's (:mod:`.flat_rows`' weight
#: gradient, ``0.7 × FLOPs``), on one core (CPU time, float32, busy machine, ms, kernel
#: against BLAS): with at most :data:`KERNEL_GRAD_NARROW` channels on one side 32 -> 16 on
#: 16×56² 0.51 / 1.84, 16 -> 96 2.24 / 3.78, 24 -> 144 4.27 / 8.20, 144 -> 24 on 16×28²
#: 1.10 / 1.87, 96 -> 24 0.75 / 1.01, 192 -> 32 on 16×14² 0.37 / 0.49, 144 -> 40 0.39
#: / 0.52; wider, :data:`KERNEL_GRAD_WIDE`: 64 -> 128 on 16×28² 2.39 / 2.94, 64 -> 256 on
#: 4096 1.60 / 2.21, 128 -> 512 on 16×14² 5.16 / 5.26, 512 -> 2048 on 4² 0.58 / 0.71,
#: 320 -> 1280 on 4² 0.181 / 0.179, 960 -> 160 on 16×7² 2.75 / 2.64.
KERNEL_GRAD_SHARE = 0.7
KERNEL_GRAD_WIDE = 0.95
KERNEL_GRAD_NARROW = 48


def weight_grad_cost(problem: ConvProblem) -> float:
    """The kernel gradient's cost: where :mod:`._llvm_pointwise_grad`'s kernel runs it (stride
    1, more than one cell, output channels it has a kernel for), ``0.7 × FLOPs`` times
    :data:`KERNEL_GRAD_SHARE` (:data:`KERNEL_GRAD_WIDE` with more than
    :data:`KERNEL_GRAD_NARROW` channels on both sides); otherwise the forward :func:`cost`.

    >>> p = ConvProblem((16, 56, 56, 32), (1, 1, 32, 16), (1, 1), (1, 1), 1, (56, 56), np.dtype("float32"))
    >>> weight_grad_cost(p) <= cost(p)
    True
    """
    cells = problem.batch * math.prod(problem.out_size)
    if (problem.groups == 1 and problem.input_shape[1:-1] == problem.out_size
            and kernel_grad_runs(problem.dtype, cells, problem.in_channels,
                                 problem.out_channels)):
        narrow = min(problem.in_channels, problem.out_channels) <= KERNEL_GRAD_NARROW
        return 0.7 * problem.flops * (KERNEL_GRAD_SHARE if narrow else KERNEL_GRAD_WIDE)
    return cost(problem)


register_algorithm("pointwise_rows", direct, applies=applies, cost=cost, weight_grad=weight_grad,
                   weight_grad_cost=weight_grad_cost, bind=bind)
