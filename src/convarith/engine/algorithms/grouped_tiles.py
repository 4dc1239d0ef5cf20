"""Grouped convolutions on the register-tiled compiled kernels: small groups' forward
pass without merged groups, and every grouped layer's kernel gradient.

The kernel gradient of a grouped convolution is, for each group ``g``, a product
summed over every output cell ``o`` (all images)::

    dk[t, c, g·Fg + f] = Σ_o x[o·S + t·D, g·Cg + c] · dy[o, g·Fg + f]

:mod:`._llvm`'s kernels compute exactly such sums: a block of "cells" (here the
kernel's taps × a group's input channels), each broadcasting one input value per
step of its sum, times vectors of output channels (here ``dy``'s, read one output
cell after another). The step's offset table holds where each output cell's window
starts in ``x`` (any stride), the cells' strides walk the taps (any dilation),
and a :class:`~._llvm.Batch` of the groups runs every group in one call. No
im2col copy: the input is read where it lies. Each thread sums its own share of
the output cells into its own gradient, block of cells by block (each block's
input rows stay in the cache while every group and tap reads them); the sums
are added at the end.

Groups of fewer outputs than a vector (ResNeXt's 4 or 8 with 16 lanes) use part
of each vector: a group's vector reads on into the next group's channels of
``dy`` and writes on into its columns of ``dk``, which that group, run after it,
overwrites (the last group's spill lands in padding). Before, the engine took
:mod:`.offset_gemm`'s gradient: one NumPy product per tap and group
(``9 × 32`` small products for ResNeXt's 3×3 layers).

The forward pass of groups of 2 or 4 input and output channels runs on kernels
of their own (:func:`._llvm.grouped_module_ir`): per tap, one vector load of a
cell's channels, then per input channel a shuffle that gives every lane its own
group's value, times the kernel's vector: no lane multiplies another group's
value, where :mod:`.register_tiles` merges such groups into block-diagonal
kernels (4× the products for ResNeXt's 32 groups of 4 with 16 lanes). Groups of
half a vector (ResNeXt's 8 with 16 lanes) run on the interleaved kernels
(:func:`._llvm.interleaved_module_ir`): two groups per vector, each step
broadcasting each group's input value over its own half (two broadcasting loads
and one insert, no zeros multiplied); groups of one vector (16) on the same
kernels, a group per vector of a register block. Other grouped layers run
:func:`.register_tiles.direct`, at its cost.

Examples
--------
>>> import numpy as np
>>> xp = np.arange(2 * 6 * 6 * 4, dtype=np.float32).reshape(2, 6, 6, 4) / 100
>>> dy = np.ones((2, 4, 4, 8), np.float32)
>>> dk = weight_grad(xp, dy, (3, 3), (1, 1), (1, 1), 2) if _llvm.available() else None
>>> dk is None or bool(np.allclose(dk[0, 0, 1, 5],
...                                xp[:, 0:4, 0:4, 3].sum(), rtol=1e-5))
True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..dispatch import ConvProblem, register_algorithm
from . import _llvm
from ._llvm import Batch, Cells, Sums
from ._threads import aligned_empty, run_chunks, worker_count
from .register_tiles import Panel, _jobs, _plan_blocks, _run
from .register_tiles import cost as tiles_cost
from .register_tiles import direct as tiles_direct

__all__ = ["weight_grad", "direct", "shuffles", "interleaves", "applies", "cost", "MIN_SHARE",
           "BLOCK_BYTES"]

#: Input and ``dy`` bytes of one block of output cells of the kernel gradient (about
#: half a core's L2 cache): the block's sums run for every group and tap while
#: its rows stay in the cache.
BLOCK_BYTES = 1 << 19

#: Output cells a thread sums at least (fewer: fewer threads), so a share's sum is
#: long enough to pay for its own gradient buffer and the final addition.
MIN_SHARE = 256


def shuffles(problem: ConvProblem) -> bool:
    """Whether the shuffling kernels run ``problem``'s forward pass: groups of as many
    outputs as inputs, 2 or 4 (fewer than a vector's lanes), and whole vectors of
    channels.

    Groups of 8 with AVX-512's 16 lanes shuffle across halves of the vector: measured
    slower than two groups merged into a block-diagonal kernel (one core, 4×28²×256,
    32 groups: 6.4 against 4.0 ms), so :mod:`.register_tiles` keeps them.
    """
    width = _llvm.vector_width(problem.dtype)
    group = problem.kernel_shape[-2]
    return (problem.groups > 1 and problem.rank in (1, 2) and width > 0
            and problem.out_channels == problem.in_channels
            and group in (2, 4) and group < width and problem.in_channels % width == 0)


#: Groups side by side in one vector of the interleaved kernels
#: (:func:`._llvm.interleaved_module_ir`).
INTERLEAVE = 2


def interleaves(problem: ConvProblem) -> bool:
    """Whether the interleaved kernels run ``problem``'s forward pass: groups of as many
    outputs as inputs, :data:`INTERLEAVE` of them filling a vector exactly (8 with
    AVX-512's 16 float32 lanes, 4 with AVX2's 8) or one (16 with AVX-512), and
    whole vectors of channels.

    Groups of one vector run on the same kernels, one group per vector of a block:
    a block of 4 vectors and 6 cells (24 sums) against :mod:`.register_tiles`' 1
    vector and 8 cells, whose 8 sums wait on their multiply-adds' latency.

    A vector holds two whole groups' outputs; a step broadcasts each group's value
    of one input channel over its own half: every lane multiplies its own group's
    value, where merged into a block-diagonal kernel half the products are zeros.
    Where :func:`shuffles` holds too (groups of 4 with 8 lanes), the shuffling
    kernels run.
    """
    width = _llvm.vector_width(problem.dtype)
    group = problem.kernel_shape[-2]
    return (problem.groups > 1 and problem.rank in (1, 2) and width > 0
            and problem.out_channels == problem.in_channels
            and group * INTERLEAVE in (width, INTERLEAVE * width)
            and problem.in_channels % width == 0)


def _interleaved(x: np.ndarray, kernel: np.ndarray, strides: Sequence[int],
                 dilation: Sequence[int], pads: list[tuple[int, int]],
                 out_size: tuple[int, int], threads: int | None) -> np.ndarray:
    """The forward pass on the interleaved kernels (where :func:`interleaves` holds):
    ``x`` unpadded channels-last (``pads``: zeros to add), one step per tap and group
    input channel, read where it lies; ``y`` in the usual channel order."""
    dtype = x.dtype
    n, h, w, c = x.shape
    kh, kw, group, f = kernel.shape
    oh, ow = out_size
    width = _llvm.vector_width(dtype)
    taps = kh * kw
    flat = kernel.reshape(taps * group, f)

    def make_panels(row_elems: int) -> list[Panel]:
        tap_offsets = (np.arange(kh)[:, None] * (int(dilation[0]) * row_elems)
                       + np.arange(kw)[None, :] * (int(dilation[1]) * c)).astype(np.int64)
        step_offsets = (tap_offsets.reshape(taps, 1)
                        + np.arange(group)[None, :]).ravel()
        panels = []
        for vectors, start, blocks in _plan_blocks(f, width):
            kernels = _llvm.compiled_interleaved(dtype, vectors, width // group)
            assert kernels is not None
            cols = vectors * width
            weights = aligned_empty((blocks, taps * group, cols), dtype)
            weights[...] = flat[:, start:start + blocks * cols].reshape(
                taps * group, blocks, cols).transpose(1, 0, 2)
            offsets = np.ascontiguousarray(step_offsets + start)
            panels.append(Panel(kernels, weights, offsets, start * dtype.itemsize,
                                Sums(blocks=blocks, steps=taps * group, step_stride=cols,
                                     block_stride=taps * group * cols, accumulate=0)))
        return panels

    y = aligned_empty((n, oh, ow, f), dtype)
    jobs = _jobs(x, kernel, (int(strides[0]), int(strides[1])),
                 (int(dilation[0]), int(dilation[1])), (oh, ow), pads, y, threads,
                 make_panels=make_panels)
    _run(jobs, 2.0 * n * oh * ow * taps * group * f, threads)
    return y


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
) -> np.ndarray:
    """Grouped convolution (the dispatch contract): by the shuffling kernels where
    :func:`shuffles` holds, else by :func:`.register_tiles.direct`.

    >>> x = np.ones((1, 6, 6, 16), np.float32)
    >>> k = np.ones((3, 3, 4, 16), np.float32)
    >>> y = direct(x, k, (1, 1), (1, 1), 4, (4, 4)) if _llvm.available() else np.full((1, 4, 4, 16), 36.0)
    >>> float(y[0, 1, 1, 5])
    36.0
    """
    rank = len(out_size)
    dtype = np.dtype(xp.dtype)
    problem = ConvProblem((xp.shape[0], *xp.shape[1:-1], xp.shape[-1]), tuple(kernel.shape),
                          tuple(strides), tuple(dilation), groups, tuple(out_size), dtype)
    if not (shuffles(problem) or interleaves(problem)) or not _llvm.available(dtype):
        return tiles_direct(xp, kernel, strides, dilation, groups, out_size, padding=padding,
                            threads=threads)
    if rank == 1:
        y = direct(xp[:, None], kernel[None], (1, *strides), (1, *dilation), groups,
                   (1, *out_size), threads=threads,
                   padding=None if padding is None else ((0, 0), *padding))
        return y[:, 0]
    pads = [(0, 0), (0, 0)] if padding is None else [(int(a), int(b)) for a, b in padding]
    x = np.ascontiguousarray(xp, dtype=dtype)
    kernel = np.asarray(kernel, dtype)
    n, c = x.shape[0], x.shape[-1]
    kh, kw, group, f = kernel.shape
    oh, ow = (int(v) for v in out_size)
    if n * oh * ow == 0:
        return np.zeros((n, oh, ow, f), dtype)
    if interleaves(problem) and not shuffles(problem):
        return _interleaved(x, kernel, strides, dilation, pads, (oh, ow), threads)
    width = _llvm.vector_width(dtype)
    taps = kh * kw
    flat = kernel.reshape(taps, group, f)

    def make_panels(row_elems: int) -> list[Panel]:
        tap_offsets = (np.arange(kh)[:, None] * (int(dilation[0]) * row_elems)
                       + np.arange(kw)[None, :] * (int(dilation[1]) * c)).astype(np.int64)
        panels = []
        for vectors, start, blocks in _plan_blocks(f, width):
            kernels = _llvm.compiled_grouped(dtype, vectors, group)
            assert kernels is not None
            cols = vectors * width
            weights = aligned_empty((blocks, taps, group, cols), dtype)
            weights[...] = flat[:, :, start:start + blocks * cols].reshape(
                taps, group, blocks, cols).transpose(2, 0, 1, 3)
            offsets = np.ascontiguousarray(tap_offsets.ravel() + start)
            panels.append(Panel(kernels, weights, offsets, start * dtype.itemsize,
                                Sums(blocks=blocks, steps=taps, step_stride=group * cols,
                                     block_stride=taps * group * cols, accumulate=0)))
        return panels

    y = aligned_empty((n, oh, ow, f), dtype)
    jobs = _jobs(x, kernel, (int(strides[0]), int(strides[1])),
                 (int(dilation[0]), int(dilation[1])), (oh, ow), pads, y, threads, groups,
                 make_panels=make_panels)
    _run(jobs, 2.0 * n * oh * ow * taps * group * f, threads)
    return y


def _window_starts(batch: int, out_size: Sequence[int], strides: Sequence[int],
                   row_elems: int, channels: int, image_elems: int) -> np.ndarray:
    """int64 offset in ``x`` of each output cell's window origin, cells in ``dy``'s order."""
    oh, ow = out_size
    return (np.arange(batch, dtype=np.int64)[:, None, None] * image_elems
            + np.arange(oh, dtype=np.int64)[None, :, None] * (strides[0] * row_elems)
            + np.arange(ow, dtype=np.int64)[None, None, :] * (strides[1] * channels)
            ).ravel()


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
) -> np.ndarray:
    """Gradient of the direct convolution with respect to its kernel (any groups).

    ``dk[k, c, g*Fg + f] = sum_{n, o} xp[n, o*S + k*D, g*Cg + c] * dy[n, o, g*Fg + f]``,
    ``xp`` padded ``(N, *spatial, C)`` (``padding``: zeros still to add), ``dy``
    ``(N, *out, F)``; 1-D or 2-D.

    >>> xp = np.ones((1, 5, 4), np.float32)
    >>> dk = weight_grad(xp, np.ones((1, 3, 4), np.float32), (3,), (1,), (1,), 2) if _llvm.available() else np.full((3, 2, 4), 3.0)
    >>> dk.shape, float(dk[2, 1, 3])
    ((3, 2, 4), 3.0)
    """
    rank = len(kernel_size)
    if padding is not None and any(lo or hi for lo, hi in padding):
        xp = np.pad(xp, ((0, 0), *((int(lo), int(hi)) for lo, hi in padding), (0, 0)))
    if rank == 1:
        dk = weight_grad(xp[:, None], dy[:, None], (1, *kernel_size), (1, *strides),
                         (1, *dilation), groups, threads=threads)
        return dk[0]
    if rank != 2:
        raise ValueError(f"register_tiles_grouped needs a 1-D or 2-D convolution, got rank {rank}")
    dtype = np.dtype(xp.dtype)
    if not _llvm.available(dtype):
        raise ValueError(f"register_tiles_grouped has no compiled kernel for {dtype} here")
    x = np.ascontiguousarray(xp, dtype=dtype)
    n, h, w, c = x.shape
    f = dy.shape[-1]
    kh, kw = (int(v) for v in kernel_size)
    group_in, group_out = c // groups, f // groups
    out_size = dy.shape[1:3]
    cells = n * out_size[0] * out_size[1]
    if cells == 0 or group_in == 0 or f == 0:
        return np.zeros((kh, kw, group_in, f), dtype)
    width = _llvm.vector_width(dtype)
    runs = _plan_blocks(group_out, width)
    reach = runs[-1][1] + runs[-1][2] * runs[-1][0] * width  # columns a group's vectors cover
    spill = reach - group_out  # lanes past a group's outputs
    # dy with room for the last group's spill on the last cell (values there are
    # multiplied into columns nobody keeps)
    if spill == 0 and dy.dtype == dtype and dy.flags.c_contiguous:
        dy_flat = dy.reshape(-1)  # read where it lies
    else:
        dy_flat = np.empty(cells * f + spill, dtype)
        dy_flat[:cells * f] = dy.reshape(-1)
        dy_flat[cells * f:] = 0
    f_padded = f + spill
    offsets = _window_starts(n, out_size, strides, w * c, c, h * w * c)
    tap_cells = Cells(rows=kh * kw, row_cells=group_in, image_rows=kw,
                      x_row=int(dilation[1]) * c, x_cell=1, x_image=int(dilation[0]) * w * c,
                      y_row=group_in * f_padded, y_cell=f_padded,
                      y_image=kw * group_in * f_padded)
    # one call for every group when no group's spill can land on columns already
    # final: its vectors all in one run (written in one go), or no spill at all
    batched = spill == 0 or len(runs) == 1
    itemsize = dtype.itemsize
    kernels = [(_llvm.compiled(dtype, vectors), start, blocks, vectors * width)
               for vectors, start, blocks in runs]
    workers = threads if threads is not None else worker_count()
    share = max(MIN_SHARE, -(-cells // max(1, workers)))

    # output cells summed in one go: their input rows and dy stay in the core's cache
    # for every group and tap (a whole layer's would be read again from memory for
    # each block of taps of each group)
    block = max(MIN_SHARE, BLOCK_BYTES // ((c + f) * itemsize * kh))

    def sum_cells(k0: int, k1: int, dk: np.ndarray) -> None:
        """``dk`` = the sum over output cells ``[k0, k1)`` (overwritten)."""
        offsets_part = offsets[k0:k1]
        dy_base = dy_flat[k0 * f:].ctypes.data
        x_base, dk_base = x.ctypes.data, dk.ctypes.data
        for first, problems in [(0, groups)] if batched else [(g, 1) for g in range(groups)]:
            for compiled_kernels, start, blocks, cols in kernels:
                assert compiled_kernels is not None
                compiled_kernels.run(
                    x_base + first * group_in * itemsize,
                    dy_base + (first * group_out + start) * itemsize,
                    dk_base + (first * group_out + start) * itemsize,
                    offsets_part.ctypes.data, tap_cells,
                    Sums(blocks=blocks, steps=k1 - k0, step_stride=f, block_stride=cols,
                         accumulate=0),
                    Batch(problems=problems, x_stride=group_in, w_stride=group_out,
                          y_stride=group_out))

    def work(k0: int, k1: int) -> np.ndarray:
        dk = np.empty((kh, kw, group_in, f_padded), dtype)
        sum_cells(k0, min(k1, k0 + block), dk)
        if k1 - k0 > block:
            # later blocks into a scratch gradient, added: a group's spill into the next
            # group's columns is only overwritten within one sum, not added to
            scratch = np.empty_like(dk)
            for b0 in range(k0 + block, k1, block):
                sum_cells(b0, min(k1, b0 + block), scratch)
                dk += scratch
        return dk

    parts = run_chunks(work, cells, share, threads=threads,
                       flops=2.0 * cells * kh * kw * group_in * f, blas=False)
    total = parts[0]
    for part in parts[1:]:
        total += part
    return np.ascontiguousarray(total[..., :f])


def applies(problem: ConvProblem) -> bool:
    """1-D or 2-D, several groups of more than one input channel each, on a machine
    with the compiled kernels."""
    return (problem.rank in (1, 2) and problem.groups > 1 and problem.kernel_shape[-2] > 1
            and _llvm.available(problem.dtype))


def cost(problem: ConvProblem) -> float:
    """:func:`.register_tiles.cost`, times :data:`SHUFFLE_SCALE` where the shuffling
    kernels run the forward pass (:func:`shuffles`), :data:`INTERLEAVE_SCALE` where
    the interleaved ones do (:func:`interleaves`); elsewhere the forward pass is
    :func:`.register_tiles.direct` itself, at its cost (the name sorts after
    ``register_tiles``, which then runs the forward pass), and this algorithm
    supplies the kernel gradient wherever those kernels run grouped."""
    if shuffles(problem):
        return tiles_cost(problem) * SHUFFLE_SCALE
    return tiles_cost(problem) * (INTERLEAVE_SCALE if interleaves(problem) else 1.0)


#: The shuffling kernels' time over :mod:`.register_tiles`' (groups merged into
#: block-diagonal kernels, whose cost holds for them). Measured on one core (CPU
#: time, busy machine, AVX-512, float32): 3×3, 32 groups of 4 on 56²×128: 1.19
#: against 2.20 ms (4 images: 5.5 against 7.5-8.9); 64 groups of 4 on 28²×256:
#: 0.56 against 0.66-1.01.
SHUFFLE_SCALE = 0.6

#: The interleaved kernels' time over :mod:`.register_tiles`' (two groups of 8 merged
#: into a block-diagonal kernel). Measured on one core (CPU time, busy machine,
#: AVX-512 on AMD EPYC, float32, batch 1, 3×3, 32 groups of 8): 28²×256 at stride 1
#: 0.52 against 0.71 ms; 56²×256 at stride 2 0.60-0.76 against 0.95 ms. Groups of
#: 16 (one vector): 28²×512 at stride 2 0.36-0.58 against 0.60-0.78 ms (16 images:
#: 8.0 against 10.7), 14²×512 at stride 1 0.39-0.47 against 0.41-0.59 (16 images:
#: 6.2 against 6.2).
INTERLEAVE_SCALE = 0.75


register_algorithm("register_tiles_grouped", direct, applies=applies, cost=cost,
                   weight_grad=weight_grad, pads_zeros=True)
