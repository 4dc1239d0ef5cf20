"""Transposed convolutions whose windows do not overlap: one product and a depth-to-space store.

A transposed convolution sends input cell ``i`` through tap ``t`` to output
cell ``o = i·S + t·D - P`` (``P = D·(K - 1) - lo``, ``lo`` the low padding of
the zero-inserted grid). When the kernel's reach is at most the stride on
every axis (``D·(K - 1) < S``: the U-Net decoder's 2×2 stride 2, any ``K ≤ S``
with dilation 1), two different (cell, tap) pairs never meet the same output
cell: each output cell is *one* product row, or zero (a gap between windows,
or padding beyond them). The whole layer is then one matrix product

    cols (cells, taps·F) = x (cells, C) @ W (C, taps·F),

whose column block ``t`` is written, without any sum, at output cells
``i·S + t·D - P`` (depth-to-space), the cells no tap reaches set to zero.
Nothing is added twice and no multiply meets a zero, where :mod:`.col2im`
splits the same product by output phase and sums in a gather.

The kernel's layout ``(*K, F, C)`` makes ``W`` the transpose of the row-major
``(taps·F, C)`` kernel, which BLAS reads as it is. On few cells with wide
channels (a U-Net's deepest up-sampling, 7² cells, 1024 -> 512) the product
runs the other way round, ``colsᵀ (taps·F, cells) = kernel (taps·F, C) @ xᵀ``,
and the store transposes: measured one thread, 1024 -> 512 on 7² cells,
2.9 ms against 3.7 ms for the ``cells``-major product; with more cells than
``taps·F`` (128 -> 64 on 56²) the ``cells``-major one wins (2.6 against 3.4).

Work is cut into blocks of whole images, or of input rows of one image, with
about :data:`BLOCK_BYTES` of products each (never fewer than
:data:`MIN_CELLS` cells, so BLAS's packing of ``W`` is shared by enough
rows), one thread per block (a layer of one block, one image, runs its product on
BLAS's own threads); the product buffer is the only working memory.

Examples
--------
>>> import numpy as np
>>> x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
>>> k = np.array([1.0, 10.0]).reshape(2, 1, 1)   # (K, F, C)
>>> transposed(x, k, (2,), (1,), 1, ((1, 1),), (6,))[0, :, 0]
array([ 1., 10.,  2., 20.,  3., 30.])
>>> transposed(x, k, (3,), (1,), 1, ((1, 1),), (8,))[0, :, 0]   # gaps between windows
array([ 1., 10.,  0.,  2., 20.,  0.,  3., 30.])
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Sequence

import numpy as np

from ...arithmetic import effective_kernel, transposed_crop
from ..dispatch import ConvProblem, Requirements, register_algorithm
from . import prepacked
from ._threads import chunk_workers, run_chunks, workspace
from .col2im import _tap_slices

__all__ = ["transposed", "applies", "cost", "BLOCK_BYTES", "MIN_CELLS", "SHARED_BLOCK_BLAS",
           "STORE_CACHED_BYTES", "STORE_PER_OUTPUT", "STORE_MOST", "STORE_MIN_FILTERS"]

#: Bytes of one block's product (smaller blocks made BLAS slower: 16 × 28², 256 -> 128,
#: one thread, 37.7 ms with 2 MiB, 36.8 with 8 MiB, GEMM alone 33.4).
BLOCK_BYTES = 8 << 20

#: Fewest input cells per block (fewer repack ``W`` for too few rows).
MIN_CELLS = 512

#: Input cells per row from which an exact store (kernel = stride, no crop; rank 1 or
#: 2) multiplies each input row straight into its output rows, one product per
#: first-axis tap, instead of through a buffer and a copy. Measured one thread (CPU
#: time, busy machine), 2×2 stride 2 128 -> 64 on 56²: 2.63 against 2.89 ms at batch 1,
#: 44.8 against 52.8 at batch 16; on 28² rows (256 -> 128) it lost, 44.0 against 39.2
#: at batch 16 (BLAS is slow on products of few rows).
DIRECT_ROW_CELLS = 48

#: Shares per worker where one image is cut among the workers (:func:`_shares`).
SHARES_PER_WORKER = 2

#: Whether a layer that makes one block (one image) runs its product on BLAS's own
#: threads rather than as shares on the workers (:func:`_shares`, BLAS single-threaded
#: in each: limiting BLAS and handing the shares over cost about 0.15 ms a call, and the
#: shares' narrower products ran slower). Measured on two busy cores (wall, median of
#: interleaved rounds, U-Net's up-sampling at batch 1; ms, shares against one product):
#: 1024 -> 512 on 7² 2.35-2.92 against 1.72-1.84, 512 -> 256 on 14² 1.63-2.24 against
#: 1.37-1.73, 256 -> 128 on 28² 1.97-2.91 against 1.33-1.85. Not for rows that multiply
#: straight into the output (:data:`DIRECT_ROW_CELLS`): 128 -> 64 on 56² 1.36-1.72 as
#: shares against 1.35-2.19 through the buffer on BLAS's threads.
SHARED_BLOCK_BLAS = True


def _blocks(batch: int, rows: int, row_cells: int, budget_cells: int, workers: int
            ) -> list[tuple[int, int, int, int]]:
    """Blocks ``(n0, n1, i0, i1)``: images ``n0 .. n1 - 1``, their input rows ``i0 .. i1 - 1``.

    Whole images when one image's cells fit ``budget_cells``, else blocks of rows
    of one image; at least ``workers`` blocks where the images allow.

    >>> _blocks(4, 7, 7, 100, 1)
    [(0, 2, 0, 7), (2, 4, 0, 7)]
    >>> _blocks(1, 56, 56, 1000, 1)[:2]
    [(0, 1, 0, 17), (0, 1, 17, 34)]
    """
    image = rows * row_cells
    if image <= budget_cells:
        per_block = max(1, budget_cells // max(1, image))
        if workers > 1:
            per_block = min(per_block, max(1, -(-batch // workers)))
        return [(n, min(batch, n + per_block), 0, rows) for n in range(0, batch, per_block)]
    step = max(1, budget_cells // max(1, row_cells))
    return [(n, n + 1, i, min(rows, i + step)) for n in range(batch) for i in range(0, rows, step)]


def _shares(blocks: list[tuple[int, int, int, int]], first_taps: int, workers: int,
            kernel_heavy: bool) -> list[tuple[int, int, int, int, int, int]]:
    """Blocks ``(n0, n1, i0, i1, a0, a1)``: also the first-axis taps ``a0 .. a1 - 1``.

    With fewer blocks than ``workers`` (one image: U-Net's up-sampling at batch 1),
    each block is cut into shares: by its first-axis taps where the kernel outweighs
    the block's input (``kernel_heavy``: each worker then multiplies by its share of
    the kernel only), then by input rows, :data:`SHARES_PER_WORKER` per worker in all
    (a worker that starts late, its core taken by another process, leaves its shares
    to the others).

    >>> _shares([(0, 1, 0, 56)], 2, 2, False)
    [(0, 1, 0, 14, 0, 2), (0, 1, 14, 28, 0, 2), (0, 1, 28, 42, 0, 2), (0, 1, 42, 56, 0, 2)]
    >>> _shares([(0, 1, 0, 7)], 2, 2, True)
    [(0, 1, 0, 3, 0, 1), (0, 1, 3, 7, 0, 1), (0, 1, 0, 3, 1, 2), (0, 1, 3, 7, 1, 2)]
    >>> _shares([(0, 8, 0, 7), (8, 16, 0, 7)], 2, 2, True)[1]
    (8, 16, 0, 7, 0, 2)
    """
    if len(blocks) >= workers or workers <= 1:
        return [(*block, 0, first_taps) for block in blocks]
    parts = max(1, SHARES_PER_WORKER * workers // len(blocks))
    shares: list[tuple[int, int, int, int, int, int]] = []
    for n0, n1, i0, i1 in blocks:
        by_taps = min(parts, first_taps) if kernel_heavy else 1
        by_rows = min(max(1, parts // by_taps), i1 - i0)
        taps = [first_taps * k // by_taps for k in range(by_taps + 1)]
        rows = [i0 + (i1 - i0) * k // by_rows for k in range(by_rows + 1)]
        shares += [(n0, n1, r0, r1, a0, a1) for a0, a1 in zip(taps, taps[1:])
                   for r0, r1 in zip(rows, rows[1:])]
    return shares


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
    block_bytes: int | None = None,
) -> np.ndarray:
    """The ``kind="transposed"`` contract for windows that do not overlap.

    Parameters
    ----------
    x
        ``(N, *spatial, C)`` channels-last input (not zero-inserted), rank 1 to 3.
    kernel
        ``(*K, F, C)``: the transposed layout, one group.
    strides, dilation
        Per spatial axis, with ``D·(K - 1) < S`` on every axis.
    groups
        Must be 1.
    padding
        Padding of the zero-inserted input per axis (``(lo, hi)``, negative
        crops): the resolved spec's ``.padding``.
    out_size
        The output's spatial size (the engine's, from the grid).
    threads
        Worker threads (default: one per core).
    block_bytes
        Bytes of one block's product (default: :data:`BLOCK_BYTES`, and at least
        :data:`MIN_CELLS` cells).

    Returns
    -------
    numpy.ndarray
        ``(N, *out_size, F)``.

    Examples
    --------
    >>> x = np.arange(4.0).reshape(1, 2, 2, 1)
    >>> transposed(x, np.ones((2, 2, 1, 1)), (2, 2), (1, 1), 1, ((1, 1), (1, 1)), (4, 4))[0, ..., 0]
    array([[0., 0., 1., 1.],
           [0., 0., 1., 1.],
           [2., 2., 3., 3.],
           [2., 2., 3., 3.]])
    """
    rank = len(strides)
    kernel_size = tuple(kernel.shape[:rank])
    if not 1 <= rank <= 3 or groups != 1 or any(
            effective_kernel(k, d) > s for k, s, d in zip(kernel_size, strides, dilation)):
        raise ValueError(
            f"depth_to_space needs rank 1 to 3, groups=1 and windows that do not overlap "
            f"(dilated kernel <= stride on every axis), got kernel {kernel_size}, strides "
            f"{tuple(strides)}, dilation {tuple(dilation)}, groups {groups}")
    n, *size, c = x.shape
    f = kernel.shape[rank]
    taps = math.prod(kernel_size)
    reach = [transposed_crop(k, d, pads)[0] for k, d, pads in zip(kernel_size, dilation, padding)]
    out = [max(0, o) for o in out_size]
    y = np.empty((n, *out, f), x.dtype)
    if y.size == 0:
        return y

    def as_rank3(values: Sequence[int], fill: int) -> tuple[int, ...]:
        return (values[0], *(fill,) * (3 - rank), *values[1:])

    size3, out3 = as_rank3(size, 1), as_rank3(out, 1)
    kernel3, strides3 = as_rank3(kernel_size, 1), as_rank3(strides, 1)
    dilation3, reach3 = as_rank3(dilation, 1), as_rank3(reach, 0)
    # every output cell is one tap's product when the taps tile the stride and the
    # grid's padding only crops (windows cover -P .. I·S - P - 1): otherwise zero first
    tiled = all(k == s and (d == 1 or k == 1) and p >= 0 and o <= i * s - p
                for k, d, s, p, o, i in zip(kernel3, dilation3, strides3, reach3, out3, size3))
    # ... and exactly (no crop): output cell i·S + t is tap t of input cell i
    exact = tiled and all(p == 0 and o == i * s
                          for p, o, i, s in zip(reach3, out3, size3, strides3))
    if not tiled or x.size == 0:
        y[...] = 0
    if x.size == 0:
        return y
    by_tap = kernel.reshape(taps * f, c)  # row t·F + f: tap t, output channel f
    row_cells = math.prod(size3[1:])
    width = taps * f
    # the exact store multiplies one first-axis tap at a time: its products are narrower
    per_cell = width // kernel3[0] if exact else width
    row_bytes = per_cell * x.dtype.itemsize
    budget_cells = (max(MIN_CELLS, BLOCK_BYTES // row_bytes) if block_bytes is None
                    else max(1, block_bytes // row_bytes))
    first_taps = kernel3[0]
    rest = width // first_taps  # product columns of one first-axis tap
    flops = 2.0 * x.size * width
    workers = chunk_workers(threads, flops)
    kernel_heavy = by_tap.nbytes > x.nbytes // max(1, n)
    image_blocks = _blocks(n, size3[0], row_cells, budget_cells, workers)
    # one block (one image) on several workers: its one product on BLAS's own threads,
    # then the store (see SHARED_BLOCK_BLAS)
    # the exact store of long rows multiplies straight into the output (no buffer)
    direct = exact and rank <= 2 and row_cells >= DIRECT_ROW_CELLS
    blas_threads = SHARED_BLOCK_BLAS and len(image_blocks) == 1 and workers > 1 and not direct
    blocks = _shares(image_blocks, first_taps, 1 if blas_threads else workers, kernel_heavy)
    # the buffer: the largest block's product (all its taps at once where a block has
    # fewer cells than columns, see run_block)
    buffer_size = 0 if direct else max(
        cells * (rest if exact and cells >= share else share)
        for cells, share in (((n1 - n0) * (i1 - i0) * row_cells, (a1 - a0) * rest)
                             for n0, n1, i0, i1, a0, a1 in blocks))
    x_rows = x.reshape(n, size3[0], row_cells, c)
    y5 = y.reshape(n, *out3, f)
    y8 = y.reshape(n, size3[0], kernel3[0], size3[1], kernel3[1], size3[2], kernel3[2], f
                   ) if exact else y5
    # rank <= 2, exact: output row i·S0 + t0 of image n holds input row i's cells, each
    # followed by its taps on the last axis (channels last)
    y_rows = y.reshape(n, size3[0], kernel3[0], row_cells, rest) if direct else y5
    tap_list = list(itertools.product(*(range(k) for k in kernel3)))
    tap_weights = _tap_weights(kernel, first_taps) if direct else []
    buffers: dict[int, np.ndarray] = {}

    def run_block(block: tuple[int, int, int, int, int, int]) -> None:
        n0, n1, i0, i1, a0, a1 = block
        if direct:
            for t0 in range(a0, a1):
                np.matmul(x_rows[n0:n1, i0:i1], tap_weights[t0], out=y_rows[n0:n1, i0:i1, t0])
            return
        cells = (n1 - n0) * (i1 - i0) * row_cells
        key = threading.get_ident()
        buffer = buffers.get(key)
        if buffer is None:
            buffer = buffers[key] = workspace("depth_to_space.products",
                                              (buffer_size,), x.dtype)
        pieces = x_rows[n0:n1, i0:i1].reshape(cells, c)
        share = (a1 - a0) * rest
        columns = by_tap[a0 * rest:a1 * rest]
        cells_major = cells >= share
        if cells_major and exact:
            # one product per tap of the first axis, stored as whole output rows
            # (its taps on the other axes and channels are contiguous there)
            cols = buffer[: cells * rest].reshape(cells, rest)
            for t0 in range(a0, a1):
                np.matmul(pieces, by_tap[t0 * rest:(t0 + 1) * rest].T, out=cols)
                y8[n0:n1, i0:i1, t0] = cols.reshape(
                    n1 - n0, i1 - i0, size3[1], size3[2], kernel3[1], kernel3[2], f
                ).transpose(0, 1, 2, 4, 3, 5, 6)
            return
        share_taps = share // f
        if cells_major:
            cols = buffer[: cells * share].reshape(cells, share)
            np.matmul(pieces, columns.T, out=cols)
            # (images, rows, I1, I2, taps, F)
            blocks6 = cols.reshape(n1 - n0, i1 - i0, *size3[1:], share_taps, f)
        else:
            cols_t = buffer[: cells * share].reshape(share, cells)
            np.matmul(columns, pieces.T, out=cols_t)
            if exact:
                # one transposing copy of every tap (Python's per-tap slices and
                # moveaxis took longer than the copy on 14² to 7² images)
                y8[n0:n1, i0:i1, a0:a1] = cols_t.reshape(
                    a1 - a0, *kernel3[1:], f, n1 - n0, i1 - i0, *size3[1:]
                ).transpose(4, 5, 0, 6, 1, 7, 2, 3)
                return
            blocks6 = cols_t.reshape(share_taps, f, n1 - n0, i1 - i0, *size3[1:])
        target = y5[n0:n1]
        everything = (slice(None),)
        first = a0 * (taps // first_taps)  # tap_list runs over the first axis slowest
        for position in range(share_taps):
            found = _tap_slices(tap_list[first + position], (i0, 0, 0), (i1, *size3[1:]),
                                (0, 0, 0), out3, strides3, dilation3, reach3)
            if found is None:
                continue
            inputs, outputs = found
            if cells_major:
                source = blocks6[everything + inputs + (position,)]
            else:
                source = np.moveaxis(blocks6[position][everything * 2 + inputs], 0, -1)
            target[everything + outputs] = source

    def work(first: int, last: int) -> None:
        for index in range(first, last):
            run_block(blocks[index])

    run_chunks(work, len(blocks), 1, threads=threads, flops=flops)
    return y


def _tap_weights(kernel: np.ndarray, first_taps: int) -> list[np.ndarray]:
    """Each first-axis tap's ``(C, taps·F / first_taps)`` weights, contiguous, as the
    exact store of long rows multiplies by them: made once for a kernel that cannot
    change (:func:`.prepacked.remembered`), else at each call. One thread, CPU time,
    median of 100: U-Net's 128 -> 64 on 56² 39 µs made, 14 µs looked up; 64 -> 32 on
    112² 31 against 22.

    >>> [w.shape for w in _tap_weights(np.zeros((2, 2, 3, 5)), 2)]
    [(5, 6), (5, 6)]
    """
    c = kernel.shape[-1]
    by_tap = kernel.reshape(-1, c)
    rest = len(by_tap) // first_taps

    def make() -> list[np.ndarray]:
        weights = [np.ascontiguousarray(by_tap[t0 * rest:(t0 + 1) * rest].T)
                   for t0 in range(first_taps)]
        for w in weights:
            w.flags.writeable = False
        return weights

    kept = prepacked.remembered(
        kernel, ("depth_to_space.tap_weights", first_taps),
        lambda: (weights := make(), sum(w.nbytes for w in weights)))
    return make() if kept is None else kept


def _disjoint(problem: ConvProblem) -> bool:
    return all(effective_kernel(k, d) <= s for k, s, d in
               zip(problem.kernel_size, problem.strides, problem.dilation))


#: When it applies: strided, the windows do not overlap, one group, rank 1 to 3.
applies = Requirements((
    ("rank 1 to 3", lambda p: 1 <= p.rank <= 3),
    ("a stride above 1 (stride 1 is a direct convolution)", lambda p: math.prod(p.strides) > 1),
    ("one group", lambda p: p.groups == 1),
    ("windows that do not overlap (dilated kernel <= stride on every axis)", _disjoint),
))


def cost(problem: ConvProblem) -> float:
    """Estimated cost in :mod:`.flat_rows` units (``0.7 × flops`` there).

    ``problem.flops`` counts the zero-inserted grid; ``1 / prod(strides)`` of it
    are real products. :mod:`.col2im` charges ``0.6 + 0.3 / taps`` per real
    FLOP for the same products and its gather; this runs them as one product and
    copies instead of summing, so ``0.5`` per real FLOP plus a store per output
    value (with few input channels a product row is mostly store). Measured (one
    thread, busy machine, U-Net's four 2×2 stride-2 layers at batch 1 and 16)
    against the algorithm chosen before it (col2im or register_tiles on the
    grid's phases): 0.72–1.1× its time, the slower ones within that run's noise.

    An output above :data:`STORE_CACHED_BYTES` with at least :data:`STORE_MIN_FILTERS`
    filters adds :data:`STORE_PER_OUTPUT` per output value (the store then reads the
    product back from memory and writes the output there), the whole at most
    :data:`STORE_MOST` per real FLOP (below col2im's 0.675, whose gather was slower
    still: 1.3-2.7× this path's time with 64-256 channels on two cores). Measured on two
    busy cores (wall, interleaved, ms, this path against :mod:`.register_tiles`' phases,
    which write the output once): 256 -> 128 on 16×28² 19.8 against 16.0, 4×28² 5.0
    against 4.4, 2×56² 11.0 against 8.9; 128 -> 64 on 16×56² 27.9 against 21.9; 64 -> 64
    on 16×28² 3.3 against 2.5; but 512 -> 256 on 16×14² 18.0 against 17.2 and 1024 ->
    512 on 16×7² 18.5 against 24.9 (the term stays small with many channels), 64 -> 32
    on 2×112² 2.3 against 2.8 (fewer filters).

    >>> def layer(batch, size, c):
    ...     return ConvProblem((batch, size, size, c), (2, 2, c // 2, c), (2, 2), (1, 1), 1,
    ...                        (2 * size, 2 * size), np.dtype("float32"))
    >>> [round(cost(layer(n, s, c)) / (layer(n, s, c).flops / 4), 3)
    ...  for n, s, c in ((1, 28, 256), (16, 28, 256), (16, 7, 1024), (16, 112, 64))]
    [0.508, 0.65, 0.551, 0.531]
    """
    real = problem.flops / math.prod(problem.strides)
    outputs = problem.batch * math.prod(problem.out_size) * problem.kernel_shape[-2]
    base = 0.5 * real + 4.0 * outputs
    filters = problem.kernel_shape[-2]
    if outputs * problem.dtype.itemsize <= STORE_CACHED_BYTES or filters < STORE_MIN_FILTERS:
        return base
    return max(base, min(base + STORE_PER_OUTPUT * outputs, STORE_MOST * real))


#: Output bytes up to which the store reads the product from the caches (:func:`cost`).
STORE_CACHED_BYTES = 2 << 20

#: :func:`cost` of the store per output value beyond :data:`STORE_CACHED_BYTES` ...
STORE_PER_OUTPUT = 100.0

#: ... bringing the cost up to at most this much per real FLOP ...
STORE_MOST = 0.65

#: ... with at least this many filters.
STORE_MIN_FILTERS = 64


register_algorithm("depth_to_space", transposed, applies=applies, cost=cost, kind="transposed")
