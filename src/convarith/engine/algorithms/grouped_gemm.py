"""Grouped convolutions as one batched matrix product over the groups (NumPy only).

For a block of output cells, the input cells every tap meets are gathered once
for all groups into ``cols`` of shape ``(groups, cells, taps · C/groups)`` (an
im2col of every group at once), and one ``np.matmul`` with the kernel laid out
as ``(groups, taps · C/groups, F/groups)`` gives the block's outputs of every
group. Blocks of output rows keep ``cols`` within a cache-sized budget, so
memory stays bounded whatever the kernel. It has no weight gradient of its
own: :mod:`.offset_gemm`'s (per tap, one product over all cells per group, no
gather) is 1.5-2× faster than the same gather and ``cols^T @ dy`` (one core,
CPU time: 6.7 against 10.3 ms for 32 groups of 4 on 2×56²).

This is the grouped path where no compiled kernel is available
(``CONVARITH_JIT=0``, no llvmlite, no AVX2): one product of depth
``taps · C/groups`` per group instead of :mod:`.offset_gemm`'s one per tap and
group of depth ``C/groups``.

With stride 1 and enough output cells the gather runs channels first instead
(:func:`direct_channels_first`): the input is transposed once to ``(C, cells)``
per image, so a tap's columns are one contiguous slice of every channel's flat
row (the :mod:`.flat_rows` shift), copied as long runs rather than a few
channels per cell; the product ``(G, F/G, depth) @ (G, depth, cells)`` gives
the output channels first, transposed back once.

Examples
--------
>>> import numpy as np
>>> xp = np.arange(8.0).reshape(1, 4, 2)
>>> kernel = np.ones((2, 1, 2))
>>> direct(xp, kernel, (1,), (1,), 2, (3,))[0].tolist()
[[2.0, 4.0], [6.0, 8.0], [10.0, 12.0]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...arithmetic import effective_kernel
from ..dispatch import ConvProblem, register_algorithm
from .flat_rows import plan
from .offset_gemm import row_blocks, tap_view

__all__ = ["direct", "direct_channels_first", "applies", "cost", "BLOCK_BYTES",
           "CHANNELS_FIRST_CELLS"]

#: Stride-1 problems with at least this many output cells per image gather channels
#: first (where blocks of at least two output rows fit the memory bound: with one,
#: 14²×256 in 32 groups, 0.69 against 0.59 ms for the cell-by-cell gather). Measured (one core, CPU time, float32, 3×3, 32 groups): 128 channels on 28²
#: 1.24 -> 0.49 ms, 256 on 14² 0.59 -> 0.33; 512 on 7² 0.28 -> 0.39 (slower: the
#: transposes dominate), strided layers slower too (0.70 -> 0.86 ms at 28² s2).
CHANNELS_FIRST_CELLS = 128

#: Bytes of gathered input per block of output rows (about a core's L2 cache).
BLOCK_BYTES = 1 << 20


def _block_shape(block: Sequence[slice]) -> tuple[int, ...]:
    return tuple(b.stop - b.start for b in block)


def _word(run: int) -> np.dtype[Any] | None:
    """The type a gather copies a group's ``run`` bytes of channels in: one element per
    cell, not one per channel (NumPy's strided copy costs per element). 8 and 16 bytes
    keep NumPy's own aligned copies; longer runs one void element (a gather of 32
    groups of 16 float32 channels on 7²: 119 -> 75 µs, of 8 on 14²: 467 -> 226)."""
    if run in (8, 16):
        return np.dtype(np.uint64 if run == 8 else np.complex128)
    if run % 8 == 0:
        return np.dtype((np.void, run))
    return None


def _gather(xp: np.ndarray, block: Sequence[slice], taps: Sequence[int],
            strides: Sequence[int], dilation: Sequence[int], groups: int,
            cols: np.ndarray) -> None:
    """Fill ``cols`` ``(groups, cells, taps, C/groups)`` for the output ``block``."""
    shape = _block_shape(block)
    word = _word(cols.shape[3] * cols.dtype.itemsize)
    if word is not None and xp.flags.c_contiguous and cols.flags.c_contiguous:
        xp, cols = xp.view(word), cols.view(word)
    per_group = xp.shape[-1] // groups
    # every reshape below splits one axis of a view: no copy
    order = (len(shape), *range(len(shape)), len(shape) + 1)
    for t, tap in enumerate(np.ndindex(*taps)):
        view = tap_view(xp, block, tap, strides, dilation)
        np.copyto(cols[:, :, t, :].reshape(groups, *shape, per_group),
                  view.reshape(*shape, groups, per_group).transpose(order))


def _block_budget(xp: np.ndarray, kernel: np.ndarray, out_cells: int) -> int:
    """Bytes of gathered input per block: :data:`BLOCK_BYTES`, but at most half the
    bytes of the input, kernel and output together, so that a call's extra memory
    stays within the networks benchmark's bound (1.5× those bytes) on small layers."""
    total = xp.nbytes + kernel.nbytes + out_cells * kernel.shape[-1] * xp.dtype.itemsize
    return min(BLOCK_BYTES, total // 2)


def _channels_first_rows(xp: np.ndarray, kernel: np.ndarray, dilation: Sequence[int],
                         out_size: Sequence[int]) -> int:
    """Output rows per block of :func:`direct_channels_first` (stride 1): as many as
    :data:`BLOCK_BYTES` of gathered columns hold, and few enough that the call's peak
    memory (output, channels-first input and a block's columns and product) stays
    within 1.5× the input, kernel and output bytes; 0 where not even one row fits."""
    rank = len(out_size)
    itemsize = xp.dtype.itemsize
    taps = math.prod(kernel.shape[:rank])
    group_in, filters = kernel.shape[-2:]
    n, channels = xp.shape[0], xp.shape[-1]
    step = math.prod(xp.shape[2:-1])  # grid cells per output row at stride 1
    grid = math.prod(xp.shape[1:-1])
    reach = sum(effective_kernel(k, d) - 1 for d, k in zip(dilation, kernel.shape[:rank]))
    images = n * channels * (grid + step * (reach + 2)) * itemsize
    output = n * math.prod(out_size) * filters * itemsize
    allowed = (3 * (xp.nbytes + kernel.nbytes + output)) // 2 - output - images
    # a block's columns, its product, and the product's copy into the output
    row_bytes = (taps * channels + 2 * filters) * step * itemsize
    fit = min(max(0, allowed) // row_bytes, BLOCK_BYTES // (taps * channels * step * itemsize))
    return int(min(out_size[0], fit))


def _blocks(xp: np.ndarray, cell_sizes: Sequence[int], depth: int,
            budget: int = BLOCK_BYTES) -> list[tuple[slice, ...]]:
    per_cell = depth * xp.dtype.itemsize
    return list(row_blocks(cell_sizes, per_cell, max(budget, per_cell)))


def direct(
    xp: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_size: Sequence[int],
) -> np.ndarray:
    """Direct convolution of a padded channels-last input (the engine's contract).

    The product of each block reads the kernel where it lies (a group's columns of
    it, rows ``F`` apart) and writes the output where it lies (a group's columns of
    the block's rows): no copy of either.

    Examples
    --------
    >>> import numpy as np
    >>> xp = np.ones((1, 5, 5, 4), np.float32)
    >>> direct(xp, np.ones((3, 3, 2, 6), np.float32), (1, 1), (1, 1), 2, (3, 3))[0, 0, 0]
    array([18., 18., 18., 18., 18., 18.], dtype=float32)
    """
    if (all(s == 1 for s in strides) and math.prod(out_size) >= CHANNELS_FIRST_CELLS
            and _channels_first_rows(xp, kernel, dilation, out_size) >= 2):
        return direct_channels_first(xp, kernel, strides, dilation, groups, out_size)
    channels = xp.shape[-1]
    group_in, filters = kernel.shape[-2:]
    group_out = filters // groups
    taps = kernel.shape[:-2]
    ntaps = math.prod(taps)
    depth = ntaps * group_in
    # (*K, Cg, G·Fg) -> (G, taps·Cg, Fg), a view: each group's matrix has rows F apart
    kernel = kernel.astype(xp.dtype, copy=False)
    weights = kernel.reshape(depth, groups, group_out).transpose(1, 0, 2)
    batch = xp.shape[0]
    y = np.empty((batch, *out_size, filters), dtype=xp.dtype)
    cells_total = batch * math.prod(out_size)
    blocks = _blocks(xp, (batch, *out_size), ntaps * channels,
                     _block_budget(xp, kernel, cells_total))
    largest = max((math.prod(_block_shape(b)) for b in blocks), default=0)
    cols_buffer = np.empty(groups * largest * depth, dtype=xp.dtype)
    for block in blocks:
        cells = math.prod(_block_shape(block))
        if cells == 0:
            continue
        cols = cols_buffer[:groups * cells * depth].reshape(groups, cells, ntaps, group_in)
        _gather(xp, block, taps, strides, dilation, groups, cols)
        out = y[block].reshape(cells, groups, group_out).transpose(1, 0, 2)
        np.matmul(cols.reshape(groups, cells, depth), weights, out=out)
    return y


def direct_channels_first(
    xp: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_size: Sequence[int],
) -> np.ndarray:
    """:func:`direct` with the gather done channels first (the module docstring).

    Each image's input phases (:func:`.flat_rows.plan`; one phase at stride 1)
    are laid out ``(C, grid cells + tail)``; a tap of a block of grid rows reads
    ``[shift + start, shift + start + length)`` of every channel. The output is
    computed on the whole grid (a few cells past each row are dropped).

    Examples
    --------
    >>> import numpy as np
    >>> xp = np.ones((1, 5, 5, 4), np.float32)
    >>> y = direct_channels_first(xp, np.ones((3, 3, 2, 6), np.float32), (1, 1), (1, 1), 2,
    ...                           (3, 3))
    >>> y.shape, float(y[0, 2, 2, 5])
    ((1, 3, 3, 6), 18.0)
    """
    rank = len(out_size)
    n, channels = xp.shape[0], xp.shape[-1]
    kernel_size = tuple(kernel.shape[:rank])
    group_in, filters = kernel.shape[-2:]
    group_out = filters // groups
    taps = math.prod(kernel_size)
    depth = taps * group_in
    flat_plan = plan(xp.shape[1:-1], kernel_size, strides, dilation)
    cells, step = flat_plan.cells, math.prod(flat_plan.grid[1:])
    tail = flat_plan.max_shift + step  # zeros the last block's shifted reads reach
    images = np.zeros((n, len(flat_plan.phases), channels, cells + tail), xp.dtype)
    channels_first = np.moveaxis(xp, -1, 1)
    for index, phase in enumerate(flat_plan.phases):
        view = channels_first[(slice(None), slice(None))
                              + tuple(slice(r, None, s) for r, s in zip(phase, strides))]
        target = images[:, index, :, :cells].reshape(n, channels, *flat_plan.grid)
        target[(slice(None), slice(None)) + tuple(slice(0, e) for e in view.shape[2:])] = view
    # (*K, Cg, G·Fg) -> (G, Fg, taps·Cg): a view, each group's matrix the transpose of
    # its columns of the kernel
    kernel = kernel.astype(xp.dtype, copy=False)
    weights = kernel.reshape(depth, groups, group_out).transpose(1, 2, 0)
    y = np.empty((n, *out_size, filters), xp.dtype)
    block_rows = max(1, _channels_first_rows(xp, kernel, dilation, out_size))
    cols = np.empty((groups, taps, group_in, block_rows * step), xp.dtype)
    product = np.empty((groups, group_out, block_rows * step), xp.dtype)
    tap_number = {k: i for i, k in enumerate(np.ndindex(*kernel_size))}
    crop = (slice(None), slice(None)) + tuple(slice(0, o) for o in out_size[1:])
    for image in range(n):
        for row0 in range(0, out_size[0], block_rows):
            row1 = min(out_size[0], row0 + block_rows)
            length = (row1 - row0) * step
            block = cols[..., :length]
            for tap, phase_number, shift in flat_plan.taps:
                start = row0 * step + shift
                block[:, tap_number[tap]] = images[image, phase_number, :, start:start + length].reshape(
                    groups, group_in, length)
            out = product[..., :length]
            np.matmul(weights, block.reshape(groups, depth, length), out=out)
            on_grid = out.reshape(filters, row1 - row0, *flat_plan.grid[1:])
            y[image, row0:row1] = np.moveaxis(on_grid[crop], 0, -1)
    return y


def applies(problem: ConvProblem) -> bool:
    """Several groups, each with more than one input channel (depthwise has its own)."""
    return problem.groups > 1 and problem.kernel_shape[-2] > 1


def cost(problem: ConvProblem) -> float:
    """``0.8 × FLOPs``: below :mod:`.offset_gemm` (the plain FLOPs), above the compiled
    grouped kernels of :mod:`.register_tiles`.

    Measured on one core (CPU time, float32, ``CONVARITH_JIT=0`` without numba,
    relative to PyTorch's time): see ``docs/benchmarks-networks.md``.
    """
    return problem.flops * 0.8


register_algorithm("grouped_gemm", direct, applies=applies, cost=cost)
