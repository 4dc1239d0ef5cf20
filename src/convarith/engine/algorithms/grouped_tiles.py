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
overwrites (the last group's spill lands in padding). Square groups of a vector's
lanes divided by 1, 2 or 4 (ResNeXt's 16, 8 and 4 with 16 lanes) instead run on
the interleaved kernels below, every group side by side in one call, each lane
its own group's (none spilled). Before, the engine took :mod:`.offset_gemm`'s
gradient: one NumPy product per tap and group (``9 × 32`` small products for
ResNeXt's 3×3 layers).

The forward pass of groups of 2 or 4 input and output channels runs on kernels
of their own (:func:`._llvm.grouped_module_ir`): per tap, one vector load of a
cell's channels, then per input channel a shuffle that gives every lane its own
group's value, times the kernel's vector: no lane multiplies another group's
value, where :mod:`.register_tiles` merges such groups into block-diagonal
kernels (4× the products for ResNeXt's 32 groups of 4 with 16 lanes). Groups of
half a vector (ResNeXt's 8 with 16 lanes) run on the spread kernels
(:func:`._llvm.spread_module_ir`, :func:`_spreads`): each output's sum split over
4 lanes, each step one load of 4 of a group's input channels shared by its two
vectors, the lanes added when stored (no zeros multiplied; 1.4-1.9× the
interleaved kernels, which loaded two values and inserted one per multiply-add).
Groups of one vector (16) run on the interleaved kernels
(:func:`._llvm.interleaved_module_ir`), a group per vector of a register block.
Groups of whole vectors of outputs (ResNeXt's 32 with 16 lanes) run on
:mod:`.register_tiles`' kernels, every group in one call, nothing merged. Other
grouped layers run :func:`.register_tiles.direct`, at its cost.

Everything of a forward pass but the values (the calls, where they read, how the
kernel is packed, the chunks of output) is worked out once per shape
(:func:`_forward_plan`, remembered): a batch-1 layer of ResNeXt at 112² takes
0.1-0.3 ms, of which working that out at every call took about half. On one
thread the output is one chunk (as few as the input-row budget allows), not the
four per thread that only balance several threads. Layers of few output cells
(:data:`IN_PLACE_CELLS`) read the kernel where it lies instead of packing it at
every call (a 3×3 kernel of 1024 channels in 32 groups: 1.2 MB, a third of a
batch-1 call on 4² to pack). A kernel that cannot change (:func:`.prepacked.prepack`:
a model's fixed weights) is packed once and its panels reused (:func:`_panels`),
whatever the cells.

On several threads, with the helpers spinning, the chunks run as one table of
compiled calls (:mod:`._native_jobs`): no helper waits for the GIL. The table's rows
are worked out with the plan (the arrays' addresses added at each call); a chunk
that reads padded rows starts with a row that copies them
(:func:`._native_jobs.padded_rows_ir`) on the thread that runs it: a copy of the
whole input made by the caller was then read from the caller's cache by the other
core, which took as long as the calls (28² 128 on two threads: 0.22 against 0.11 ms
for the calls alone). Results are the Python jobs' bit for bit.

A padded layer whose input fits :data:`.register_tiles.SLAB_BYTES` (batch 1) copies only
the padded rows and columns that its border cells read (:func:`_border_template`), and
its other cells read the input where it lies, in one table of calls: a 3×3 layer at
stride 2 on an even input reads only the top padded row and the left padded column, and
its whole padded copy was a fifth of the call (one core, CPU time, busy machine, medians
of 7 processes each: 28²×256 at stride 2 0.159 -> 0.147 ms, 14²×512 at stride 2 0.124
-> 0.117). Larger inputs keep the whole copy: read in place, each column block's calls
read their channels of every cell from memory.

A layer whose output is one chunk (batch 1; :data:`CHANNEL_SPLIT_FLOPS` to
:data:`CHANNEL_SPLIT_MAX_FLOPS`) is cut among the threads by groups instead
(:func:`_channel_parts`): one job of the table per thread, its share of the groups
(or column blocks) over every chunk of rows, after copying its own channels of the
padded rows into a slab of its own (:func:`._native_jobs.padded_channels_ir`). Each
thread then reads only its share of the kernel (half of 1.2 MB for 1024 channels in
32 groups) and of the input, and writes only its own cache lines: two threads
writing the channels of the same cells of one slab ran three times slower than one
(likely the prefetchers of each core pulling in the lines next to its own).

Such a call is ~0.1 ms, and deciding its way at each call (the plan's lookups, the
runner, the table's spans: :func:`_on_caller`, :func:`_forward`, :func:`_run_plan`)
took 20-40 µs of it; measured so, the shares of the groups had run no faster than
one thread (0.67-1.6 times its time in the benchmark's pattern), and were off. The
decisions are now made once per call's shapes, settings and kind of kernel
(:func:`_fast_runner`), and the shares run 0.69-0.88 times one thread's time on
ResNeXt-50's batch-1 3×3 layers (see :data:`CHANNEL_SPLIT_FLOPS`).

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

import ctypes
import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ...arithmetic import effective_kernel, window_reach
from ..dispatch import ConvProblem, register_algorithm
from . import _llvm, _native_jobs, prepacked
from ._llvm import ONE_PROBLEM, Batch, Cells, Sums
from ._threads import (
    ALIGN,
    aligned_empty,
    native_workers,
    run_chunks,
    run_native_jobs,
    run_native_table,
    worker_count,
    workspace,
)
from .register_tiles import (
    JOBS_PER_WORKER,
    PANEL_BYTES,
    SLAB_BYTES,
    STREAM_BYTES,
    _fill,
    _plan_blocks,
)
from .register_tiles import cost as tiles_cost
from .register_tiles import direct as tiles_direct

__all__ = ["weight_grad", "direct", "shuffles", "interleaves", "applies", "cost", "MIN_SHARE",
           "BLOCK_BYTES"]

#: Input and ``dy`` bytes of one block of output cells of the kernel gradient (about
#: half a core's L2 cache): the block's sums run for every group and tap while
#: its rows stay in the cache.
BLOCK_BYTES = 1 << 19

#: Output cells (all images) up to which the forward pass reads the kernel where it lies,
#: its steps ``F`` elements apart, instead of packing it into panels at every call.
#: Measured on one core (CPU time, busy machine, float32, 3×3, 32 groups), packed
#: against in place: AVX-512, batch 1, 4²×1024 0.23 -> 0.14 ms, 7²×1024 at stride 2
#: 0.23 -> 0.20, 7²×512 0.125 -> 0.117; AVX2 kernels, 4²×1024 0.32 -> 0.21, 7²×512
#: 0.16 -> 0.13. With more cells each step's rows are read again per block of cells:
#: 16 images of 4²×1024 (256 cells) AVX2 2.1 -> 3.1 ms (AVX-512 2.1 -> 1.9).
IN_PLACE_CELLS = 64

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


#: Lanes each output's sum is split over in the spread kernels
#: (:func:`._llvm.spread_module_ir`), which run what :func:`interleaves` takes where
#: :func:`_spreads` holds.
SPREAD = 4


def _spreads(group: int, width: int) -> bool:
    """Whether the spread kernels (:func:`._llvm.spread_module_ir`) run the forward pass of
    square groups of ``group`` channels that :func:`interleaves` takes with vectors of
    ``width`` lanes: groups of half a vector (8 with AVX-512's 16 float32 lanes), split
    into :data:`SPREAD` channels a step (each step one load of 4 input channels shared
    by the group's two vectors, where the interleaved kernels load two values and insert
    one into the other per multiply-add).

    Measured on one core (CPU time, min of 15 rounds, busy machine, AVX-512 on AMD EPYC,
    float32, 3×3, 32 groups of 8; the kernels alone), interleaved against spread: batch 1,
    28²×256 at stride 2 131 against 88-91 µs, 14²×256 121 against 84-88; 16 images 5.4
    against 3.1 ms and 3.3 against 1.7. Groups of 16 (one vector, 14²×512 at stride 2 and
    7²×512) ran no faster spread, groups of 4 (:func:`shuffles`) slower (28²×128: 84
    against 131 µs); with 8 lanes (AVX2, float64 with AVX-512) groups of half a vector are
    groups of 4, which the shuffling kernels run.

    >>> _spreads(8, 16), _spreads(16, 16)
    (True, False)
    """
    return group * INTERLEAVE == width and group % SPREAD == 0


def _family(groups: int, group_in: int, group_out: int, channels: int, width: int) -> str:
    """Which kernels run a grouped forward pass with vectors of ``width`` lanes:
    ``"shuffle"`` (:func:`shuffles`), ``"interleave"`` (:func:`interleaves`),
    ``"vectors"`` (groups of whole vectors of outputs: :mod:`.register_tiles`' kernels,
    every group in one call, nothing merged) or ``""`` (none of them: the
    block-diagonal kernels of :func:`.register_tiles.direct`)."""
    if groups < 2 or width == 0:
        return ""
    square = group_in == group_out and channels % width == 0
    if square and group_in in (2, 4) and group_in < width:
        return "shuffle"
    if square and group_in * INTERLEAVE in (width, INTERLEAVE * width):
        return "interleave"
    if group_out % width == 0:
        return "vectors"
    return ""


class _Step(NamedTuple):
    """One call of a compiled module per job, and how the kernel is packed for it: the
    kernel reshaped to ``source``, its last axis cut to ``columns``, reshaped to
    ``split`` and transposed by ``order`` gives the ``panel``. Where the plan reads the
    kernel in place (:data:`IN_PLACE_CELLS`), ``sums`` and ``batch`` walk the kernel's
    own ``(taps · C/groups, F)`` layout from column ``columns[0]`` instead."""

    drive: Any
    offsets: np.ndarray  #: int64, where each step of the sum reads (kept alive here)
    offsets_address: int
    first_channel_bytes: int
    sums: Sums
    batch: Batch
    source: tuple[int, ...]
    columns: tuple[int, int]
    split: tuple[int, ...]
    order: tuple[int, ...]
    panel: tuple[int, ...]


class _Job(NamedTuple):
    """A chunk of output: images ``[first_image, first_image + images)`` (or rows of one
    image); ``slab_rows`` padded input rows from input row ``first_row`` copied for it
    (0: read ``x`` where it lies, ``x_offset`` elements in); its first output cell
    ``y_offset`` elements into ``y``; its cells."""

    first_image: int
    images: int
    first_row: int
    slab_rows: int
    x_offset: int
    y_offset: int
    cells: Cells


class _ForwardPlan(NamedTuple):
    steps: tuple[_Step, ...]
    jobs: tuple[_Job, ...]
    padded_width: int
    left: int
    panel_size: int  #: elements of every step's panel together
    in_place: bool  #: the steps read the kernel where it lies (nothing packed)
    workers: int  #: threads the chunks were cut for
    #: every job's calls as rows of a table (:mod:`._native_jobs`), each job's padded
    #: rows copied by its first row where it needs them; the three pointer columns
    #: as byte offsets from the addresses :data:`TABLE_BASES` names, by ``bases``
    #: (``None``: no table, a padding that crops columns)
    rows: np.ndarray | None
    bases: np.ndarray | None  #: (rows, 3) indices into :data:`TABLE_BASES`
    spans: tuple[tuple[int, int], ...]  #: (first row, rows) of each job in ``rows``
    slab_size: int  #: elements of every job's padded rows together (the table's)
    filler: Any  #: the compiled filler the rows call (kept alive with them), or None
    #: shares of the channels each job's calls are cut into in the table, one thread
    #: each (:func:`_channel_parts`; 1: whole jobs)
    parts: int = 1
    #: where every chunk runs on the calling thread (one chunk, or one thread; channels
    #: not shared), the jobs' calls as :func:`_on_caller` makes them; else ``None``
    caller_jobs: tuple[_CallerJob, ...] | None = None
    packing: tuple[Any, ...] = ()  #: the key of the panels (:func:`_packing`)
    #: the whole pass as a table that reads ``x`` where it lies but for the cells whose
    #: windows reach into the padding (:func:`_border_template`), or ``None``
    borders: _Borders | None = None


class _CallerJob(NamedTuple):
    """A chunk of :attr:`_ForwardPlan.jobs` as :func:`_on_caller` runs it: the shape of its
    padded rows (``None``: ``x`` read where it lies), the images it reads, the first
    padded row, its input's and output's byte offsets, and its calls, each ``(drive,
    weights' byte offset, output's byte offset past the chunk's, offsets' address, the
    integer fields)``."""

    slab: tuple[int, int, int, int] | None
    first_image: int
    images: int
    first_row: int
    x_at: int
    y_at: int
    calls: tuple[tuple[Any, int, int, int, tuple[int, ...]], ...]


@functools.lru_cache(maxsize=256)
def _forward_plan(shape: tuple[int, int, int, int], kernel_shape: tuple[int, int, int, int],
                  strides: tuple[int, int], dilation: tuple[int, int],
                  out_size: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]],
                  groups: int, dtype: np.dtype[Any], target: _llvm.VectorTarget,
                  workers: int, family: str = "", shares: bool = True,
                  frozen: bool = False) -> _ForwardPlan | None:
    """Everything of a 2-D grouped forward pass but the kernel's and input's values
    (remembered per shape): the compiled modules' calls, where they read, how the
    kernel is packed, and the chunks of output (one per thread on one thread, else
    :data:`.register_tiles.JOBS_PER_WORKER` per thread). ``None``: no grouped kernels
    for it (:func:`_family`; ``family`` names other ones that apply), or a panel larger
    than :data:`.register_tiles.PANEL_BYTES`. ``frozen``: the kernel cannot change
    (:func:`.prepacked.prepack`), so its panels are packed once (:func:`_panels`) and
    read packed whatever the cells (:data:`IN_PLACE_CELLS` is for packing at every call)."""
    n, h, w, c = shape
    kh, kw, group_in, f = kernel_shape
    oh, ow = out_size
    width = target.width(dtype)
    group_out = f // groups
    named = bool(family)  # (a family named by the caller runs as named)
    family = family or _family(groups, group_in, group_out, c, width)
    itemsize = dtype.itemsize
    taps = kh * kw
    if not family or (family == "vectors" and taps * group_in * min(
            group_out, _llvm.max_vectors(target) * width) * itemsize > PANEL_BYTES):
        return None
    (top, bottom), (left, right) = pads
    padded_w = w + left + right
    unpadded = top == bottom == left == right == 0
    if family == "interleave" and not named and _spreads(group_in, width):
        family = "spread"
    # (the spread kernels' vectors each hold width / SPREAD outputs)
    runs = _plan_blocks(group_out if family == "vectors" else SPREAD * f if family == "spread"
                        else f, width)
    flops = 2.0 * n * oh * ow * taps * group_in * f
    parts = _channel_parts(family, runs, groups, c, width, workers, flops) if shares else 1
    # shares of the channels balance the threads: chunks of rows only bound the slabs
    job_count = 1 if parts > 1 else _job_count(n * oh * ow, flops, workers)
    # with shares of the channels, each share's padded rows are a slab of its own
    # channels only (the kernels' strides those of that slab)
    c_read = c if unpadded else c // parts
    row_elems = padded_w * c_read
    tap_offsets = (np.arange(kh)[:, None] * (dilation[0] * row_elems)
                   + np.arange(kw)[None, :] * (dilation[1] * c_read)).astype(np.int64).ravel()
    streaming = (family == "vectors" and n * oh * ow * f * itemsize >= STREAM_BYTES
                 and (f * itemsize) % ALIGN == 0)
    # few output cells read each kernel step a few times only: reading it where it lies
    # (rows F apart) costs less than packing it at every call
    in_place = (family not in ("shuffle", "spread") and n * oh * ow <= IN_PLACE_CELLS
                and not frozen)
    steps = []
    for vectors, start, blocks in runs:
        cols = vectors * width
        if family == "spread":
            start //= SPREAD
            columns = (start, start + blocks * cols // SPREAD)
        else:
            columns = (start, start + blocks * cols)
        batch = ONE_PROBLEM
        source: tuple[int, ...]
        split: tuple[int, ...]
        order: tuple[int, ...]
        panel: tuple[int, ...]
        if family == "interleave":
            kernels = _llvm.compiled_interleaved(dtype, vectors, width // group_in)
            offsets = (tap_offsets[:, None] + np.arange(group_in)).ravel() + start
            count = taps * group_in
            sums = Sums(blocks, count, f if in_place else cols,
                        cols if in_place else count * cols, 0)
            source, split, order = (count, f), (count, blocks, cols), (1, 0, 2)
            panel = (blocks, count, cols)
        elif family == "spread":
            # step (tap, c): input channels [SPREAD·c, SPREAD·c + SPREAD) of each group;
            # a vector's lane SPREAD·o + h is output o's product with channel SPREAD·c + h
            kernels = _llvm.compiled_spread(dtype, vectors, SPREAD, group_in)
            quads = group_in // SPREAD
            offsets = (tap_offsets[:, None] + SPREAD * np.arange(quads)).ravel() + start
            count = taps * quads
            sums = Sums(blocks, count, cols, count * cols, 0)
            source = (taps, quads, SPREAD, f)
            split = (taps, quads, SPREAD, blocks, vectors, width // SPREAD)
            order = (3, 0, 1, 4, 5, 2)
            panel = (blocks, taps, quads, vectors, width // SPREAD, SPREAD)
        elif family == "shuffle":
            kernels = _llvm.compiled_grouped(dtype, vectors, group_in)
            offsets = tap_offsets + start
            sums = Sums(blocks, taps, group_in * cols, taps * group_in * cols, 0)
            source, split = (taps, group_in, f), (taps, group_in, blocks, cols)
            order, panel = (2, 0, 1, 3), (blocks, taps, group_in, cols)
        else:
            kernels = _llvm.compiled(dtype, vectors, streaming)
            offsets = (tap_offsets[:, None] + np.arange(group_in)).ravel()
            count = taps * group_in
            sums = Sums(blocks, count, f if in_place else cols,
                        cols if in_place else count * cols, 0)
            batch = Batch(groups, group_in, group_out if in_place else blocks * count * cols,
                          group_out)
            source, split = (count, groups, group_out), (count, groups, blocks, cols)
            order, panel = (1, 2, 0, 3), (groups, blocks, count, cols)
        assert kernels is not None
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        offsets.flags.writeable = False
        steps.append(_Step(kernels.drive, offsets, offsets.ctypes.data, start * itemsize, sums,
                           batch, source, columns, split, order, panel))
    # chunks of output as register_tiles cuts them, but one per thread on one thread
    # (the chunks only balance threads; each costs a call per step and its tail cells)
    reach = effective_kernel(kh, dilation[0])
    share = -(-n * oh // job_count)
    needed = window_reach(oh, kh, strides[0], dilation[0])
    x_row, x_cell = strides[0] * row_elems, strides[1] * c_read
    jobs = []
    if share >= 2 * oh:
        # a chunk's input rows fit SLAB_BYTES also where x is read where it lies: each
        # group's calls then find the chunk's rows in the cache
        image_bytes = needed * row_elems * itemsize
        images = max(1, min(share // oh, SLAB_BYTES // image_bytes))
        for g0 in range(0, n, images):
            count = min(n, g0 + images) - g0
            cells = Cells(count * oh, ow, oh, x_row, x_cell,
                          h * w * c if unpadded else needed * row_elems,
                          ow * f, f, oh * ow * f)
            jobs.append(_Job(g0, count, -top, 0 if unpadded else needed, g0 * h * w * c,
                             g0 * oh * ow * f, cells))
    else:
        rows_fit = max(1, (SLAB_BYTES // (row_elems * itemsize) - reach) // strides[0] + 1)
        # pieces of each image of as equal rows as can be (28 rows in 8 chunks for two
        # threads: 4 and 3 rows, not 7 chunks of 4, three for one thread, four for the other)
        pieces = max(-(-oh // max(1, min(oh, rows_fit, share))), min(oh, job_count // n))
        for image in range(n):
            for piece in range(pieces):
                o0, o1 = piece * oh // pieces, (piece + 1) * oh // pieces
                first = o0 * strides[0] - top
                cells = Cells(o1 - o0, ow, o1 - o0, x_row, x_cell, 0, ow * f, f, 0)
                jobs.append(_Job(image, 1, first, 0 if unpadded else (o1 - 1 - o0)
                                 * strides[0] + reach, image * h * w * c + first * w * c,
                                 (image * oh + o0) * ow * f, cells))
    rows, bases, spans, slab_size = _table_template(steps, jobs, in_place, itemsize,
                                                    (h, w, c), (left, right), parts)
    if parts > 1 and rows is None:
        return None  # the Python jobs do not cut channels (no table for this padding)
    filler = ((_native_jobs.padded_channels_filler() if parts > 1
               else _native_jobs.padded_rows_filler()) if slab_size else None)
    here = (parts == 1 and job_count == 1 and (len(jobs) == 1 or workers == 1)
            and n * oh * ow * f > 0)
    plan = _ForwardPlan(tuple(steps), tuple(jobs), padded_w, left,
                        0 if in_place else sum(math.prod(step.panel) for step in steps),
                        in_place, workers, rows, bases, spans, slab_size, filler, parts,
                        _caller_jobs(steps, jobs, in_place, padded_w, c, itemsize) if here
                        else None)
    borders = None
    if parts == 1 and not unpadded and min(top, bottom, left, right) >= 0 and (
            job_count == 1 or job_count <= n):
        borders = _border_template(steps, tap_offsets, (kh, kw), shape, (oh, ow), strides,
                                   dilation, pads, f, itemsize, in_place,
                                   -(-n // job_count))
    return plan._replace(packing=_packing(plan), borders=borders)


class _Borders(NamedTuple):
    """A forward pass as one table of calls (:func:`_border_template`): ``rows`` and
    ``bases`` as :attr:`_ForwardPlan.rows` and :attr:`_ForwardPlan.bases`, ``spans`` one
    job per chunk of images, ``slab_size`` elements of every job's padded border rows and
    columns together, and the offsets tables the rows point at (kept alive here)."""

    rows: np.ndarray
    bases: np.ndarray
    spans: tuple[tuple[int, int], ...]
    slab_size: int
    offsets: tuple[np.ndarray, ...]


#: Share of a padded image's bytes up to which a forward pass copies only the padded
#: rows and columns its border cells read (:func:`_border_template`) instead of the
#: whole padded image.
BORDER_SHARE = 0.6


def _border_template(steps: Sequence[_Step], tap_offsets: np.ndarray, taps: tuple[int, int],
                     shape: tuple[int, int, int, int], out_size: tuple[int, int],
                     strides: tuple[int, int], dilation: tuple[int, int],
                     pads: tuple[tuple[int, int], tuple[int, int]], f: int, itemsize: int,
                     in_place: bool, images: int) -> _Borders | None:
    """A padded forward pass that reads ``x`` where it lies for every output cell whose
    window stays inside the input (the interior rectangle), and copies only the padded
    rows and columns that the others read: the top and bottom rows of output (slabs of
    padded input rows, as :func:`_table_template`'s jobs copy) and the left and right
    columns between them (slabs a few padded columns wide). Each region's calls are
    ``steps``' calls with the offsets of its own rows (``tap_offsets``: the steps' taps
    on rows of the padded width), so every cell sums the same products in the same order
    as the jobs that copy the whole padded input: the same values, bit for bit.

    A 3×3 layer at stride 2 on an even input (ResNeXt's) reads only the top padded row
    and the left padded column: its jobs copied the whole input (one core, 16 images of
    28²×256, 0.78 of 2.7 ms). ``None`` where the border slabs would hold more than
    :data:`BORDER_SHARE` of a padded image (small images at stride 1), where no cell's
    window stays inside, where the input and slabs pass :data:`.register_tiles.SLAB_BYTES`,
    or without the compiled filler. Jobs of ``images`` images each."""
    n, h, w, c = shape
    oh, ow = out_size
    kh, kw = taps
    (top, bottom), (left, right) = pads
    reach_h, reach_w = effective_kernel(kh, dilation[0]), effective_kernel(kw, dilation[1])
    r0, c0 = -(-top // strides[0]), -(-left // strides[1])
    r1 = min(oh, (h - reach_h + top) // strides[0] + 1)
    c1 = min(ow, (w - reach_w + left) // strides[1] + 1)
    filler = _native_jobs.padded_rows_filler()
    if r0 >= r1 or c0 >= c1 or filler is None or n * oh * ow * f == 0:
        return None
    padded_w = w + left + right
    middle = (r1 - 1 - r0) * strides[0] + reach_h
    # (kind, output rows, output columns, first input row, slab rows, first input column,
    #  slab width, zeros left, columns copied, zeros right); kind "x": read in place
    regions: list[tuple[tuple[int, int], tuple[int, int], int | None, int, int, int, int,
                        int, int]] = []
    if r0 > 0:
        regions.append(((0, r0), (0, ow), -top, (r0 - 1) * strides[0] + reach_h, 0,
                        padded_w, left, w, right))
    if r1 < oh:
        regions.append(((r1, oh), (0, ow), r1 * strides[0] - top,
                        (oh - 1 - r1) * strides[0] + reach_h, 0, padded_w, left, w, right))
    if c0 > 0:
        narrow = (c0 - 1) * strides[1] + reach_w
        zeros = min(left, narrow)
        copied = max(0, min(w, narrow - zeros))
        regions.append(((r0, r1), (0, c0), r0 * strides[0] - top, middle, 0, narrow, zeros,
                        copied, narrow - zeros - copied))
    if c1 < ow:
        first_column = c1 * strides[1] - left
        narrow = (ow - 1 - c1) * strides[1] + reach_w
        copied = max(0, min(w - first_column, narrow))
        regions.append(((r0, r1), (c1, ow), r0 * strides[0] - top, middle,
                        first_column, narrow, 0, copied, narrow - copied))
    image_slab = sum(rows * width for _, _, _, rows, _, width, _, _, _ in regions) * c
    if image_slab > BORDER_SHARE * (h + top + bottom) * padded_w * c:
        return None
    # the whole input within SLAB_BYTES (a batch-1 layer's, in the cache from the layer
    # before): from a larger one, each column block's calls read their channels of every
    # cell from memory, where the jobs that copy it read it in order (one core, 16 images
    # of 28²×256 at stride 2: 4.3 against 2.5 ms)
    if n * (h * w * c + image_slab) * itemsize > SLAB_BYTES:
        return None
    regions.append(((r0, r1), (c0, c1), None, h, 0, w, 0, 0, 0))  # the interior, in place
    # each region's offsets: the steps' own, their taps moved onto the region's rows
    taps_count = len(tap_offsets)
    extras = [step.offsets.reshape(taps_count, -1) - tap_offsets[:, None] for step in steps]
    offsets_of: dict[int, list[np.ndarray]] = {}
    for region in regions:
        width = region[5]
        if width not in offsets_of:
            moved = (np.arange(kh)[:, None] * (dilation[0] * width * c)
                     + np.arange(kw)[None, :] * (dilation[1] * c)).astype(np.int64).ravel()
            tables = []
            for extra in extras:
                table = np.ascontiguousarray((moved[:, None] + extra).ravel(), np.int64)
                table.flags.writeable = False
                tables.append(table)
            offsets_of[width] = tables
    weights, at = [], 0
    for step in steps:
        weights.append(step.columns[0] * itemsize if in_place else at * itemsize)
        at += math.prod(step.panel)
    fields = _native_jobs.KERNEL_FIELDS
    rows: list[tuple[int, ...]] = []
    bases: list[tuple[int, int, int]] = []
    spans = []
    slab_at = 0
    for i0 in range(0, n, images):
        m = min(n, i0 + images) - i0
        first_row = len(rows)
        placed: list[int | None] = []
        for (_, _, first, slab_rows, column, width, zl, copied, zr) in regions:
            if first is None:
                placed.append(None)
                continue
            fill = (m, slab_rows, first, h, w * c * itemsize, h * w * c * itemsize,
                    width * c * itemsize, slab_rows * width * c * itemsize, zl * c * itemsize,
                    copied * c * itemsize, zr * c * itemsize)
            rows.append((filler.address, slab_at * itemsize,
                         (i0 * h * w + column) * c * itemsize, 0, 0, *fill,
                         *[0] * (fields - len(fill))))
            bases.append((4, 1, 0))
            placed.append(slab_at)
            slab_at += m * slab_rows * width * c
        for s, step in enumerate(steps):
            drive = ctypes.c_void_p.from_buffer(step.drive).value or 0
            for region, at_slab in zip(regions, placed):
                (o0, o1), (p0, p1), _, slab_rows, _, width, _, _, _ = region
                if o1 <= o0 or p1 <= p0:
                    continue
                if at_slab is None:
                    x_at = (i0 * h * w + (o0 * strides[0] - top) * w
                            + p0 * strides[1] - left) * c
                    image = h * w * c
                else:
                    x_at = at_slab
                    image = slab_rows * width * c
                cells = Cells(m * (o1 - o0), p1 - p0, o1 - o0, strides[0] * width * c,
                              strides[1] * c, image, ow * f, f, oh * ow * f)
                y_at = (i0 * oh * ow + o0 * ow + p0) * f
                rows.append((drive, x_at * itemsize, weights[s],
                             y_at * itemsize + step.first_channel_bytes,
                             offsets_of[width][s].ctypes.data,
                             *cells, *step.sums, *step.batch))
                bases.append((1 if at_slab is None else 4, 2, 3))
        spans.append((first_row, len(rows) - first_row))
    table = np.array(rows, np.int64).reshape(-1, 1 + _native_jobs.KERNEL_POINTERS + fields)
    table.flags.writeable = False
    base_indices = np.array(bases, np.intp).reshape(-1, 3)
    base_indices.flags.writeable = False
    return _Borders(table, base_indices, tuple(spans), slab_at,
                    tuple(t for tables in offsets_of.values() for t in tables))


#: FLOPs from which a forward pass runs on several threads each a share of the groups
#: (:func:`_channel_parts`): ResNeXt's batch-1 layers (7-10 MFLOP). Measured with the
#: calls' decisions made once (:func:`_fast_runner`), two threads, prepacked kernels,
#: 4 alternating processes, ms, one thread's chunk against shares of the groups: 3×3
#: g32 256 on 14² 0.123 -> 0.086, 512 on 7² 0.104 -> 0.078, 1024 on 4² 0.127 -> 0.084,
#: 1024 s2 on 7² 0.132 -> 0.091, 512 s2 on 14² 0.113 -> 0.080, 256 s2 on 28² 0.130 ->
#: 0.110 (PyTorch 0.077-0.115, onnxruntime 0.057). From 2e6 as well, 128 on 28² (its
#: borders' table) ran slower (0.13 -> 0.17). Deciding at each call, as before, the
#: shares had measured no faster than one thread.
CHANNEL_SPLIT_FLOPS = 4e6

#: FLOPs up to which :func:`_channel_parts` shares the groups among the threads: above,
#: where the output's rows are cut among them (:data:`PARALLEL_FLOPS`), shares of the
#: groups measured no faster (16 images, busy machine, real-time priority, 3×3 g32,
#: medians: 14² 256 3.36 against 3.18 ms, 7² 512 1.77 against 1.66, 4² 1024 2.87
#: against 2.73; two threads then ran no faster than one either, so this is open).
CHANNEL_SPLIT_MAX_FLOPS = 2e7


def _channel_parts(family: str, runs: Sequence[tuple[int, int, int]], groups: int,
                   channels: int, width: int, workers: int, flops: float) -> int:
    """Equal shares of the channels (whole groups, or whole column blocks of one run of
    ``runs``) a forward pass's calls are cut into, one per thread: ``workers`` from
    :data:`CHANNEL_SPLIT_FLOPS` up to :data:`CHANNEL_SPLIT_MAX_FLOPS` where the groups or
    blocks share evenly, each share whole vectors of input channels; else 1 (the
    output's rows cut among the threads, :func:`_job_count`).

    Cut by rows, each thread would read the whole kernel (1.2 MB for ResNeXt's 3×3
    layers of 1024 channels, read for 16 to 49 output cells) and the rows around its
    own; cut by groups, each reads its own share of the kernel and of the input's
    channels, and writes its own channels of every output cell. Groups of 2 or 4
    (the shuffling kernels) stay whole: 128 channels on 28² in 32 groups ran no faster
    on two threads so cut (busy machine, real-time priority: 0.131-0.191 against
    0.135-0.194 ms).

    >>> _channel_parts("interleave", [(4, 0, 4)], 32, 256, 16, 2, 7e6)
    2
    >>> _channel_parts("interleave", [(4, 0, 4)], 32, 256, 16, 2, 1e6)  # too small
    1
    """
    if (workers < 2 or not CHANNEL_SPLIT_FLOPS <= flops <= CHANNEL_SPLIT_MAX_FLOPS or not runs
            or family == "shuffle"):
        return 1
    # (the spread kernels' runs count SPREAD lanes per output channel)
    lanes = channels * (SPREAD if family == "spread" else 1)
    if family == "vectors":
        units = groups
    elif len(runs) == 1 and runs[0][1] == 0 and runs[0][0] * width * runs[0][2] == lanes:
        units = runs[0][2]
    else:
        return 1  # several runs of blocks: no one range of channels per share
    if units % workers or (channels // workers) % width:
        return 1
    return workers


class _Share(NamedTuple):
    """One thread's share of a step's groups or column blocks (:func:`_share`)."""

    channel: int  #: the first input channel it reads
    channels: int  #: input channels it reads, from ``channel`` on
    x: int  #: elements its input, weights and output start past the step's
    w: int
    y: int
    sums: Sums
    batch: Batch


def _share(step: _Step, part: int, parts: int) -> _Share:
    """Share ``part`` of ``parts`` of ``step``'s groups (where a batch of groups runs it) or
    of its column blocks (each block its own input channels, as the depthwise driver
    reads them), as equal as whole groups or blocks can be.

    >>> step = _Step(None, np.zeros(1, np.int64), 0, 0, Sums(4, 9, 16, 144, 0), ONE_PROBLEM,
    ...              (), (0, 64), (), (), ())
    >>> share = _share(step, 1, 2)
    >>> share.channel, share.channels, share.x, share.w, share.y, share.sums.blocks
    (32, 32, 32, 288, 32, 2)
    """
    batch = step.batch
    if batch.problems > 1:
        lo, hi = part * batch.problems // parts, (part + 1) * batch.problems // parts
        return _Share(lo * batch.x_stride, (hi - lo) * batch.x_stride, lo * batch.x_stride,
                      lo * batch.w_stride, lo * batch.y_stride, step.sums,
                      batch._replace(problems=hi - lo))
    blocks = step.sums.blocks
    lo, hi = part * blocks // parts, (part + 1) * blocks // parts
    cols = (step.columns[1] - step.columns[0]) // blocks
    return _Share(step.columns[0] + lo * cols, (hi - lo) * cols, lo * cols,
                  lo * step.sums.block_stride, lo * cols, step.sums._replace(blocks=hi - lo),
                  batch)


#: What the pointer columns of a table's rows are offsets from (indices in
#: :attr:`_ForwardPlan.bases`): nothing, the input, the weights (packed or in place),
#: the output, the jobs' padded rows.
TABLE_BASES = ("none", "x", "weights", "y", "slabs")


def _table_template(steps: Sequence[_Step], jobs: Sequence[_Job], in_place: bool,
                    itemsize: int, image: tuple[int, int, int], columns: tuple[int, int],
                    parts: int = 1
                    ) -> tuple[np.ndarray | None, np.ndarray | None, tuple[tuple[int, int], ...],
                               int]:
    """The jobs' calls as rows of :mod:`._native_jobs`' table, in the order the Python
    jobs make them (results the same bit for bit): the function's address, three
    pointers as byte offsets (from the addresses :data:`TABLE_BASES` names by the
    returned ``bases``), the offsets' address, the cells, sums and batch. A job that
    copies padded rows starts with a row of :func:`._native_jobs.padded_rows_ir` filling
    its own part of one buffer of ``slab_size`` elements, on the thread that runs it
    (a copy made by the caller for all would be read from the other core's cache).
    With ``parts`` shares of the channels (:func:`_channel_parts`), the table has one
    job per share: for every chunk, a row of :func:`._native_jobs.padded_channels_ir`
    that pads the share's channels of the chunk's rows into a slab of their own,
    then the share's part of every step's calls (:func:`_share`).
    ``(None, None, (), 0)`` where no table can run the jobs: a padding that crops
    columns (``columns``: left and right padding of ``image``, (H, W, C)), or no
    compiled filler."""
    height, width, channels = image
    left, right = columns
    width_fields = 1 + _native_jobs.KERNEL_POINTERS + _native_jobs.KERNEL_FIELDS
    padding = any(job.slab_rows for job in jobs)
    filler = ((_native_jobs.padded_channels_filler() if parts > 1
               else _native_jobs.padded_rows_filler()) if padding else None)
    if padding and (left < 0 or right < 0 or filler is None):
        return None, None, (), 0
    weights, at = [], 0
    for step in steps:
        weights.append(step.columns[0] * itemsize if in_place else at * itemsize)
        at += math.prod(step.panel)
    padded_row = (width + left + right) * channels
    part_channels = channels // parts
    part_row = (width + left + right) * part_channels
    rows: list[tuple[int, ...]] = []
    bases: list[tuple[int, int, int]] = []
    spans = []
    slab_starts = list(itertools.accumulate(
        (job.images * job.slab_rows * padded_row for job in jobs), initial=0))
    # with shares, one job of the table per share: its channels of every chunk of rows
    # (its share of the kernel stays in its core's cache throughout)
    for part in range(parts):
        for job, slab_at in zip(jobs, slab_starts):
            first = len(rows)
            shares = [_share(step, part, parts) if parts > 1 else None for step in steps]
            # each share's padded rows: a slab of its own channels, after the previous'
            part_at = slab_at + part * job.images * job.slab_rows * part_row
            if job.slab_rows:
                assert filler is not None
                fill: tuple[int, ...] = (
                    job.images, job.slab_rows, job.first_row, height,
                    width * channels * itemsize, height * width * channels * itemsize,
                    part_row * itemsize, job.slab_rows * part_row * itemsize)
                if shares[0] is None:
                    fill += (left * channels * itemsize, width * channels * itemsize,
                             right * channels * itemsize)
                else:
                    fill += (left, width, right, channels * itemsize,
                             part_channels * itemsize, shares[0].channel * itemsize,
                             shares[0].channels * itemsize)
                rows.append((filler.address, part_at * itemsize,
                             job.first_image * height * width * channels * itemsize, 0, 0,
                             *fill, *[0] * (_native_jobs.KERNEL_FIELDS - len(fill))))
                bases.append((4, 1, 0))
            for step, weight, share in zip(steps, weights, shares):
                x_at = part_at if job.slab_rows else job.x_offset
                y_at = job.y_offset
                sums, batch = step.sums, step.batch
                if share is not None:
                    # a share's slab starts at its first channel
                    x_at += share.x - (share.channel if job.slab_rows else 0)
                    weight, y_at = weight + share.w * itemsize, y_at + share.y
                    sums, batch = share.sums, share.batch
                rows.append((ctypes.c_void_p.from_buffer(step.drive).value or 0,
                             x_at * itemsize, weight,
                             y_at * itemsize + step.first_channel_bytes,
                             step.offsets_address, *job.cells, *sums, *batch))
                bases.append((4 if job.slab_rows else 1, 2, 3))
            if parts == 1:
                spans.append((first, len(rows) - first))
        if parts > 1:
            spans.append((spans[-1][0] + spans[-1][1] if spans else 0,
                          len(rows) - (spans[-1][0] + spans[-1][1] if spans else 0)))
    slab_at = slab_starts[-1]
    table = np.array(rows, np.int64).reshape(-1, width_fields)
    table.flags.writeable = False
    base_indices = np.array(bases, np.intp).reshape(-1, 3)
    base_indices.flags.writeable = False
    return table, base_indices, tuple(spans), slab_at


def _run_plan(plan: _ForwardPlan, x: np.ndarray, kernel: np.ndarray,
              out_size: tuple[int, int], threads: int | None,
              runner: _native_jobs.RowsRunner | None = None) -> np.ndarray:
    """The forward pass of :func:`_forward_plan`'s ``plan``: the kernel packed, each
    chunk's padded rows copied (or ``x`` read where it lies), the calls; with a
    ``runner`` (and a plan whose jobs copy nothing), the calls as one table run on
    the helper threads without the GIL (:func:`._threads.run_native_jobs`)."""
    dtype = x.dtype
    itemsize = dtype.itemsize
    n, c = x.shape[0], x.shape[-1]
    f = kernel.shape[-1]
    calls = []
    weights_base = kernel.ctypes.data
    if plan.in_place:
        for step in plan.steps:
            calls.append((step.drive, kernel.ctypes.data + step.columns[0] * itemsize,
                          step.offsets_address, step.first_channel_bytes, step.sums,
                          step.batch))
    else:
        packed = _panels(plan, kernel)
        weights_base = packed.ctypes.data
        at = 0
        for step in plan.steps:
            calls.append((step.drive, weights_base + at * itemsize, step.offsets_address,
                          step.first_channel_bytes, step.sums, step.batch))
            at += math.prod(step.panel)
    y = aligned_empty((n, *out_size, f), dtype)
    x_base, y_base = x.ctypes.data, y.ctypes.data
    if runner is not None and plan.rows is not None and plan.bases is not None:
        slabs = workspace("grouped_tiles_slabs", (max(1, plan.slab_size),), dtype)
        table = _addressed(plan.rows, plan.bases, x_base, weights_base, y_base,
                           slabs.ctypes.data)
        run_native_jobs(runner, table, list(plan.spans), threads=plan.workers)
        return y
    padded_w, left = plan.padded_width, plan.left

    def run(job: _Job) -> None:
        if job.slab_rows:
            slab = workspace("grouped_tiles", (job.images, job.slab_rows, padded_w, c), dtype)
            _fill(slab, x[job.first_image:job.first_image + job.images], job.first_row, left)
            source = slab.ctypes.data
        else:
            source = x_base + job.x_offset * itemsize
        target = y_base + job.y_offset * itemsize
        for drive, weights, offsets, first_channel_bytes, sums, batch in calls:
            drive(source, weights, target + first_channel_bytes, offsets, *job.cells, *sums,
                  *batch)

    jobs = plan.jobs
    if len(jobs) == 1:
        run(jobs[0])
    else:
        def work(begin: int, end: int) -> None:
            for job in jobs[begin:end]:
                run(job)

        # the plan cut the chunks for its workers (none below MIN_JOB_CELLS): hand them
        # over whatever the FLOPs (a batch-1 layer of ResNeXt is 7-10 MFLOP, under
        # run_chunks' SMALL_WORK, and would run on this thread alone)
        run_chunks(work, len(jobs), 1, threads=plan.workers, blas=False)
    return y


def _panels(plan: _ForwardPlan, kernel: np.ndarray) -> np.ndarray:
    """Every step's panel of ``kernel`` packed for ``plan`` (one aligned buffer), once per
    kernel that cannot change (:func:`.prepacked.remembered`: the bench's and a model's
    fixed weights, 1.2 MB for 3×3 1024 channels in 32 groups, 0.07 ms a call to pack on
    one core), else at every call.

    >>> import numpy as np
    >>> from convarith.engine import prepack
    >>> kernel = prepack(np.arange(9 * 8 * 64, dtype=np.float32).reshape(3, 3, 8, 64))
    >>> shape = ((1, 6, 6, 64), kernel.shape, (1, 1), (1, 1), (4, 4), ((0, 0), (0, 0)), 8,
    ...          np.dtype(np.float32), _llvm.vector_target(), 1)
    >>> plan = _forward_plan(*shape, frozen=True) if _llvm.available() else None
    >>> plan is None or _panels(plan, kernel) is _panels(plan, kernel)
    True
    """

    def pack() -> tuple[np.ndarray, int]:
        packed = aligned_empty((plan.panel_size,), kernel.dtype)
        at = 0
        for step in plan.steps:
            size = math.prod(step.panel)
            start, stop = step.columns
            packed[at:at + size].reshape(step.panel)[...] = kernel.reshape(step.source)[
                ..., start:stop].reshape(step.split).transpose(step.order)
            at += size
        packed.flags.writeable = False  # (remembered panels are shared by calls)
        return packed, packed.nbytes

    remembered = prepacked.remembered(kernel, plan.packing, pack)
    return remembered if remembered is not None else pack()[0]


def _packing(plan: _ForwardPlan) -> tuple[Any, ...]:
    """The key of ``plan``'s panels among a frozen kernel's remembered packings."""
    return ("register_tiles_grouped",
            tuple((s.source, s.columns, s.split, s.order, s.panel) for s in plan.steps))


def _addressed(rows: np.ndarray, bases: np.ndarray, x: int, weights: int, y: int,
               slabs: int) -> np.ndarray:
    """A copy of a plan's table ``rows`` with the arrays' addresses added to its three
    pointer columns, each row's by ``bases`` (indices into :data:`TABLE_BASES`)."""
    table = rows.copy()
    table[:, 1:4] += np.array([0, x, weights, y, slabs], np.int64)[bases]
    return table


def _run_borders(plan: _ForwardPlan, x: np.ndarray, kernel: np.ndarray,
                 out_size: Sequence[int], threads: int | None) -> np.ndarray | None:
    """``plan``'s pass by its :attr:`~_ForwardPlan.borders` table (``None``: none, or its
    slabs past the memory target or :data:`TABLE_SLAB_BYTES`): on the helper threads where
    the plan cut several chunks and they spin, else here in one call."""
    borders = plan.borders
    if borders is None:
        return None
    dtype = x.dtype
    itemsize = dtype.itemsize
    n, f = x.shape[0], kernel.shape[-1]
    cells = n * int(out_size[0]) * int(out_size[1])
    io_bytes = x.nbytes + kernel.nbytes + cells * f * itemsize
    held = (cells * f + plan.panel_size + borders.slab_size) * itemsize
    if held > 1.5 * io_bytes or borders.slab_size * itemsize > TABLE_SLAB_BYTES:
        return None
    runner = (_native_jobs.kernel_runner() if len(borders.spans) > 1 and plan.workers > 1
              else None)
    inline = _native_jobs.rows_runner(_native_jobs.KERNEL_POINTERS, _native_jobs.KERNEL_FIELDS)
    if runner is None and inline is None:
        return None
    # (the panels held here while the calls read them)
    panels = kernel if plan.in_place else _panels(plan, kernel)
    y = aligned_empty((n, *out_size, f), dtype)
    slabs = workspace("grouped_tiles_borders", (max(1, borders.slab_size),), dtype)
    table = _addressed(borders.rows, borders.bases, x.ctypes.data, panels.ctypes.data,
                       y.ctypes.data, slabs.ctypes.data)
    if runner is not None:
        run_native_jobs(runner, table, list(borders.spans), threads=plan.workers)
    else:
        assert inline is not None
        inline.drive(table.ctypes.data, 0, len(table))
    return y


def _caller_jobs(steps: Sequence[_Step], jobs: Sequence[_Job], in_place: bool, padded_width: int,
                 channels: int, itemsize: int) -> tuple[_CallerJob, ...]:
    """``jobs``' calls as :func:`_on_caller` makes them (those :func:`_run_plan`'s Python
    jobs make), everything but the arrays' addresses worked out."""
    weights, at = [], 0
    for step in steps:
        weights.append(step.columns[0] * itemsize if in_place else at * itemsize)
        at += math.prod(step.panel)
    made = []
    for job in jobs:
        calls = tuple((step.drive, weight, step.first_channel_bytes, step.offsets_address,
                       (*job.cells, *step.sums, *step.batch))
                      for step, weight in zip(steps, weights))
        slab = (job.images, job.slab_rows, padded_width, channels) if job.slab_rows else None
        made.append(_CallerJob(slab, job.first_image, job.images, job.first_row,
                               job.x_offset * itemsize, job.y_offset * itemsize, calls))
    return tuple(made)


def _on_caller(x: np.ndarray, kernel: np.ndarray, strides: Sequence[int],
               dilation: Sequence[int], groups: int, out_size: Sequence[int],
               padding: Sequence[tuple[int, int]] | None, threads: int | None
               ) -> np.ndarray | None:
    """A 2-D forward pass that :func:`_forward` would run on the calling thread, by its
    remembered plan's :attr:`~_ForwardPlan.caller_jobs` (the same calls, the same values;
    a batch-1 ResNeXt layer's 0.12-0.2 ms call paid 25-50 µs of Python for working out
    its plan's pieces); ``None`` for the others (the caller takes them its usual way)."""
    dtype = x.dtype
    if not (x.flags.c_contiguous and kernel.flags.c_contiguous and kernel.dtype == dtype
            and dtype.char in "fd" and x.ndim == 4 and kernel.ndim == 4):
        return None
    target = _llvm.vector_target()
    if not target.runs_here or target.width(dtype) == 0 or groups < 2:
        return None
    try:
        plan = _forward_plan(
            x.shape, kernel.shape, tuple(strides), tuple(dilation), tuple(out_size),
            ((0, 0), (0, 0)) if padding is None else tuple(map(tuple, padding)), groups,
            dtype, target, threads if threads is not None else worker_count(), "", True,
            prepacked.frozen_owner(kernel) is not None)
    except TypeError:  # (an argument that is not hashable: the usual way)
        return None
    if plan is None:
        return None
    if plan.borders is not None and (plan.caller_jobs is not None or plan.workers < 2):
        bordered = _run_borders(plan, x, kernel, out_size, threads)
        if bordered is not None:
            return bordered
    if plan.caller_jobs is None:
        return None
    # (the panels held here while the calls read them)
    panels = kernel if plan.in_place else _panels(plan, kernel)
    weights = panels.ctypes.data
    y = aligned_empty((x.shape[0], *out_size, kernel.shape[-1]), dtype)
    x_base, y_base, left = x.ctypes.data, y.ctypes.data, plan.left
    for slab_shape, first_image, images, first_row, x_at, y_at, calls in plan.caller_jobs:
        if slab_shape is None:
            source = x_base + x_at
        else:
            slab = workspace("grouped_tiles", slab_shape, dtype)
            _fill(slab, x[first_image:first_image + images], first_row, left)
            source = slab.ctypes.data
        output = y_base + y_at
        for drive, weight, first_channel, offsets, fields in calls:
            drive(source, weights + weight, output + first_channel, offsets, *fields)
    return y


def _forward(x: np.ndarray, kernel: np.ndarray, strides: Sequence[int],
             dilation: Sequence[int], groups: int, out_size: Sequence[int],
             pads: Sequence[tuple[int, int]], threads: int | None,
             family: str = "") -> np.ndarray | None:
    """The 2-D forward pass by :func:`_forward_plan`'s plan (``None``: no plan for it),
    ``x`` unpadded, ``pads`` zeros to add. Where it runs on several threads
    (:data:`PARALLEL_FLOPS`) and the helpers spin, the jobs' calls (each job's copy of
    its padded rows first) run as one table without the GIL, within the peak memory
    target (1.5x the input, kernel and output bytes); else as Python jobs."""
    dtype = np.dtype(x.dtype)
    oh, ow = (int(v) for v in out_size)
    kh, kw, group_in, f = kernel.shape
    pad_list = [(int(a), int(b)) for a, b in pads]
    strides2 = (int(strides[0]), int(strides[1]))
    dilation2 = (int(dilation[0]), int(dilation[1]))
    x = np.ascontiguousarray(x, dtype=dtype)
    kernel = np.ascontiguousarray(kernel, dtype=dtype)
    workers = threads if threads is not None else worker_count()
    if not family and not _family(int(groups), group_in, f // int(groups), x.shape[-1],
                                  _llvm.vector_target().width(dtype)):
        return None
    n = x.shape[0]
    flops = 2.0 * n * oh * ow * kh * kw * group_in * f
    frozen = prepacked.frozen_owner(kernel) is not None

    def plan_for(shares: bool) -> _ForwardPlan | None:
        return _forward_plan(tuple(x.shape), tuple(kernel.shape), strides2, dilation2,
                             (oh, ow), (pad_list[0], pad_list[1]), int(groups), dtype,
                             _llvm.vector_target(), workers, family, shares, frozen)

    plan = plan_for(True)
    if plan is None and workers > 1:
        plan = plan_for(False)  # no table for a plan that shares channels
    if plan is None:
        return None
    if x.shape[0] * oh * ow == 0:
        return np.zeros((x.shape[0], oh, ow, f), dtype)
    itemsize = dtype.itemsize
    io_bytes = x.nbytes + kernel.nbytes + n * oh * ow * f * itemsize

    def runner_for(plan: _ForwardPlan) -> _native_jobs.RowsRunner | None:
        return _plan_runner(plan, n * oh * ow, f, io_bytes, itemsize, threads, flops, workers)

    if plan.borders is not None:
        bordered = _run_borders(plan, x, np.ascontiguousarray(kernel), (oh, ow), threads)
        if bordered is not None:
            return bordered
    runner = runner_for(plan)
    if runner is None and plan.parts > 1:
        # the Python jobs run whole jobs, on slabs of every channel
        plan = plan_for(False)
        assert plan is not None
        runner = runner_for(plan)
    return _run_plan(plan, x, kernel, (oh, ow), threads, runner)


#: Bytes of every job's padded rows together up to which a table runs the jobs (each
#: job its own rows, where the Python jobs reuse one kept copy per thread). Measured on
#: two cores (busy machine, real-time priority, float32, 16 images, 3×3, 32 groups),
#: Python jobs' time over the table's: 14² 256 (4.2 MB of rows) 1.05-1.16, 7² 512 (2.7
#: MB) 0.88-0.98, 4² 1024 (2.4 MB) 1.04-1.12; 7² 1024 at stride 2 (5.3 MB) 0.99-1.04,
#: 28² 128 (7.4 MB) 0.90-0.92, 14² 512 at stride 2 (8.4 MB) 0.85-0.91, 28² 256 at
#: stride 2 (14.7 MB, fresh pages at every call) 0.80-0.82.
TABLE_SLAB_BYTES = 5 << 20


def _plan_runner(plan: _ForwardPlan, cells: int, filters: int, io_bytes: int,
                 itemsize: int, threads: int | None, flops: float, workers: int
                 ) -> _native_jobs.RowsRunner | None:
    """The runner of ``plan``'s table (:func:`_table_runner`), or ``None`` where its jobs
    run as Python jobs: their padded rows and the output (``cells`` × ``filters``) past
    1.5× the input, kernel and output's ``io_bytes``, or rows past
    :data:`TABLE_SLAB_BYTES`; or one chunk, which runs here (the plan's where
    :func:`_job_count` says so), unless the plan shares its channels among the threads."""
    held_bytes = (cells * filters + plan.panel_size + plan.slab_size) * itemsize
    if held_bytes > 1.5 * io_bytes or plan.slab_size * itemsize > TABLE_SLAB_BYTES:
        return None
    if plan.parts > 1:
        return _table_runner(threads, flops, CHANNEL_SPLIT_FLOPS)
    return _table_runner(threads, flops) if _job_count(cells, flops, workers) > 1 else None


def _table_runner(threads: int | None, flops: float, inline_below: float | None = None
                  ) -> _native_jobs.RowsRunner | None:
    """The compiled runner of a table of calls (:mod:`._native_jobs`) where a forward pass
    of ``flops`` runs on several threads (from ``inline_below``, default
    :data:`PARALLEL_FLOPS`) and the helpers spin;
    else ``None`` (each job a Python closure)."""
    from . import _threads

    below = PARALLEL_FLOPS if inline_below is None else inline_below
    if _threads.native_workers(threads, flops, below) <= 1:
        return None
    return _native_jobs.kernel_runner()


def _interleaved(x: np.ndarray, kernel: np.ndarray, strides: Sequence[int],
                 dilation: Sequence[int], pads: Sequence[tuple[int, int]],
                 out_size: Sequence[int], threads: int | None) -> np.ndarray:
    """The 2-D forward pass on the interleaved kernels (where :func:`interleaves` holds,
    also where the shuffling or spread kernels would run): ``x`` unpadded, ``pads`` zeros
    to add."""
    y = _forward(x, kernel, strides, dilation, x.shape[-1] // kernel.shape[-2], out_size,
                 pads, threads, "interleave")
    assert y is not None
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
    """Grouped convolution (the dispatch contract): by the shuffling, interleaved or
    whole-vector grouped kernels where :func:`_family` names one, else by
    :func:`.register_tiles.direct`.

    >>> x = np.ones((1, 6, 6, 16), np.float32)
    >>> k = np.ones((3, 3, 4, 16), np.float32)
    >>> y = direct(x, k, (1, 1), (1, 1), 4, (4, 4)) if _llvm.available() else np.full((1, 4, 4, 16), 36.0)
    >>> float(y[0, 1, 1, 5])
    36.0
    """
    rank = len(out_size)
    dtype = np.dtype(xp.dtype)
    if rank == 1:
        y = direct(xp[:, None], kernel[None], (1, *strides), (1, *dilation), groups,
                   (1, *out_size), threads=threads,
                   padding=None if padding is None else ((0, 0), *padding))
        return y[:, 0]
    fast = _fast_runner(xp, kernel, strides, dilation, groups, out_size, padding, threads)
    if fast is not None:
        return fast(xp, kernel)
    result = _on_caller(xp, kernel, strides, dilation, groups, out_size, padding, threads)
    if result is not None:
        return result
    if rank == 2 and _llvm.available(dtype):
        pads = ((0, 0), (0, 0)) if padding is None else tuple(
            (int(a), int(b)) for a, b in padding)
        result = _forward(xp, kernel, strides, dilation, int(groups), out_size, pads, threads)
    if result is None:
        return tiles_direct(xp, kernel, strides, dilation, groups, out_size, padding=padding,
                            threads=threads)
    return result


#: :func:`_fast_runner`'s calls seen (emptied past :data:`FAST_KEPT`): the call's key
#: -> its runner, or ``None`` where the call takes the usual way.
_FAST: dict[tuple[Any, ...], Any] = {}
FAST_KEPT = 256


def _fast_runner(xp: Any, kernel: Any, strides: Sequence[int], dilation: Sequence[int],
                 groups: int, out_size: Sequence[int],
                 padding: Sequence[tuple[int, int]] | None, threads: int | None
                 ) -> Any:
    """``run(x, kernel)`` for a 2-D call that :func:`direct` would run as its plan's table
    on the helper threads (:func:`_forward` then :func:`_run_plan`, the threads sharing
    the output's rows or its channels), with what those decide worked out once per
    call's shapes, settings and kind of kernel: the same calls, the same table, the
    same values. ``None`` for the others (and for arguments that are not plain
    C-contiguous arrays of one dtype). Deciding at each call cost ~20-40 µs of a
    batch-1 ResNeXt layer's ~0.1 ms. The key holds what the decisions read besides the
    module's constants (emptied with the plans): the arrays' shapes and dtype, the
    call's arguments, the workers, the vector target, whether the kernel is frozen,
    whether this is a helper thread and whether the helpers spin."""
    if (type(xp) is not np.ndarray or type(kernel) is not np.ndarray or len(out_size) != 2
            or xp.ndim != 4 or kernel.ndim != 4 or xp.dtype != kernel.dtype
            or not xp.flags.c_contiguous or not kernel.flags.c_contiguous):
        return None
    from ._threads import _IN_HELPER

    try:
        key = (xp.shape, kernel.shape, xp.dtype.char, tuple(strides), tuple(dilation),
               groups, tuple(out_size),
               None if padding is None else tuple(tuple(pair) for pair in padding),
               threads, worker_count(), _llvm.vector_target(),
               prepacked.frozen_owner(kernel) is not None,
               getattr(_IN_HELPER, "active", False), _native_jobs.kernel_runner() is not None)
        fast = _FAST.get(key, _UNSEEN)
    except TypeError:  # (an argument that is not hashable: the usual way)
        return None
    if fast is _UNSEEN:
        fast = _make_fast(xp, kernel, strides, dilation, groups, out_size, padding, threads)
        if len(_FAST) >= FAST_KEPT:
            _FAST.clear()
        _FAST[key] = fast
    return fast


_UNSEEN = object()


def _forget_plans(clear: Any = _forward_plan.cache_clear) -> None:
    """Empty :func:`_forward_plan`'s cache and, with it, :data:`_FAST` (its runners hold
    plans: a test that changes a constant and empties the plans gets new runners too)."""
    clear()
    _FAST.clear()


_forward_plan.cache_clear = _forget_plans  # type: ignore[method-assign]


def _make_fast(x: np.ndarray, kernel: np.ndarray, strides: Sequence[int],
               dilation: Sequence[int], groups: int, out_size: Sequence[int],
               padding: Sequence[tuple[int, int]] | None, threads: int | None) -> Any:
    """:func:`_fast_runner`'s runner for one call, or ``None``: what :func:`_on_caller`
    and :func:`_forward` decide, without running anything."""
    dtype = x.dtype
    target = _llvm.vector_target()
    if dtype.char not in "fd" or not target.runs_here or target.width(dtype) == 0 or groups < 2:
        return None
    oh, ow = (int(v) for v in out_size)
    kh, kw, group_in, f = kernel.shape
    n = x.shape[0]
    if n * oh * ow == 0 or not _family(int(groups), group_in, f // int(groups), x.shape[-1],
                                       target.width(dtype)):
        return None
    pads = ((0, 0), (0, 0)) if padding is None else tuple(
        (int(a), int(b)) for a, b in padding)
    workers = threads if threads is not None else worker_count()
    frozen = prepacked.frozen_owner(kernel) is not None

    def plan_for(shares: bool) -> _ForwardPlan | None:
        return _forward_plan(tuple(x.shape), tuple(kernel.shape),
                             (int(strides[0]), int(strides[1])),
                             (int(dilation[0]), int(dilation[1])), (oh, ow), pads, int(groups),
                             dtype, target, workers, "", shares, frozen)

    plan = plan_for(True)
    # (_on_caller runs the borders' table or the caller's jobs of such a plan)
    if plan is None or plan.borders is not None or plan.caller_jobs is not None:
        return None
    flops = 2.0 * n * oh * ow * kh * kw * group_in * f
    itemsize = dtype.itemsize
    io_bytes = x.nbytes + kernel.nbytes + n * oh * ow * f * itemsize

    def runner_for(plan: _ForwardPlan) -> _native_jobs.RowsRunner | None:  # (as _forward's)
        return _plan_runner(plan, n * oh * ow, f, io_bytes, itemsize, threads, flops, workers)

    runner = runner_for(plan)
    if runner is None and plan.parts > 1:
        plan = plan_for(False)
        if plan is None or plan.borders is not None:
            return None
        runner = runner_for(plan)
    if runner is None or plan.rows is None or plan.bases is None:
        return None
    spans = np.array(plan.spans, np.int64).reshape(-1, 2)
    spans.flags.writeable = False
    spans_address, count = spans.ctypes.data, len(spans)
    rows, bases, in_place, slab_size = plan.rows, plan.bases, plan.in_place, plan.slab_size
    shape = (n, oh, ow, f)
    table_workers = native_workers(plan.workers, None)

    def run(x: np.ndarray, kernel: np.ndarray, _keep: Any = (plan, spans)) -> np.ndarray:
        panels = kernel if in_place else _panels(plan, kernel)
        y = aligned_empty(shape, dtype)
        slabs = workspace("grouped_tiles_slabs", (max(1, slab_size),), dtype)
        table = _addressed(rows, bases, x.ctypes.data, panels.ctypes.data, y.ctypes.data,
                           slabs.ctypes.data)
        run_native_table(runner, table.ctypes.data, len(table), spans_address, count,
                         table_workers)
        return y

    return run


def _window_starts(batch: int, out_size: Sequence[int], strides: Sequence[int],
                   row_elems: int, channels: int, image_elems: int) -> np.ndarray:
    """int64 offset in ``x`` of each output cell's window origin, cells in ``dy``'s order
    (read-only, remembered per shape: making it took ~5 µs of a batch-1 kernel gradient).

    >>> _window_starts(2, (1, 2), (1, 3), 40, 4, 100).tolist()
    [0, 12, 100, 112]
    """
    return _remembered_starts(batch, (int(out_size[0]), int(out_size[1])),
                              (int(strides[0]), int(strides[1])), row_elems, channels,
                              image_elems)


@functools.lru_cache(maxsize=32)
def _remembered_starts(batch: int, out_size: tuple[int, int], strides: tuple[int, int],
                       row_elems: int, channels: int, image_elems: int) -> np.ndarray:
    oh, ow = out_size
    starts = (np.arange(batch, dtype=np.int64)[:, None, None] * image_elems
              + np.arange(oh, dtype=np.int64)[None, :, None] * (strides[0] * row_elems)
              + np.arange(ow, dtype=np.int64)[None, None, :] * (strides[1] * channels)
              ).ravel()
    starts.flags.writeable = False
    return starts


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
    if rank == 1:
        dk = weight_grad(xp[:, None], dy[:, None], (1, *kernel_size), (1, *strides),
                         (1, *dilation), groups, threads=threads,
                         padding=None if padding is None else ((0, 0), *padding))
        return dk[0]
    if rank != 2:
        raise ValueError(f"register_tiles_grouped needs a 1-D or 2-D convolution, got rank {rank}")
    dtype = np.dtype(xp.dtype)
    if not _llvm.available(dtype):
        raise ValueError(f"register_tiles_grouped has no compiled kernel for {dtype} here")
    (top, bottom), (left, right) = ((int(lo), int(hi)) for lo, hi in padding or ((0, 0),) * 2)
    padded = bool(top or bottom or left or right)
    # padded: each chunk pads its own images, a block at a time, into its thread's
    # workspace (a copy of the whole input padded was the call's serial part, and read
    # back from memory: one thread, 16 images of 28²×256 at stride 2, 0.9 of 3.6 ms)
    x = np.ascontiguousarray(xp, dtype=dtype)
    n, h, w, c = x.shape
    h, w = h + top + bottom, w + left + right
    f = dy.shape[-1]
    kh, kw = (int(v) for v in kernel_size)
    group_in, group_out = c // groups, f // groups
    out_size = dy.shape[1:3]
    image_cells = out_size[0] * out_size[1]
    cells = n * image_cells
    if cells == 0 or group_in == 0 or f == 0:
        return np.zeros((kh, kw, group_in, f), dtype)
    width = _llvm.vector_width(dtype)
    # square groups of a vector's lanes divided by 1, 2 (or 4): every group side by side
    # on the interleaved kernels, each lane its own group's (no spill)
    interleave = (width // group_in if group_in == group_out and width % group_in == 0
                  and width // group_in in GRADIENT_INTERLEAVES and c % width == 0 else 0)
    runs = _plan_blocks(f if interleave else group_out, width)
    reach = runs[-1][1] + runs[-1][2] * runs[-1][0] * width  # columns a group's vectors cover
    if interleave:
        reach = group_out
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
    tap_cells = Cells(rows=kh * kw, row_cells=group_in, image_rows=kw,
                      x_row=int(dilation[1]) * c, x_cell=1, x_image=int(dilation[0]) * w * c,
                      y_row=group_in * f_padded, y_cell=f_padded,
                      y_image=kw * group_in * f_padded)
    # one call for every group when no group's spill can land on columns already
    # final: its vectors all in one run (written in one go), or no spill at all
    batched = spill == 0 or len(runs) == 1
    itemsize = dtype.itemsize
    kernels = [(_llvm.compiled_interleaved(dtype, vectors, interleave) if interleave
                else _llvm.compiled(dtype, vectors), start, blocks, vectors * width)
               for vectors, start, blocks in runs]
    calls = ([(0, 1, ONE_PROBLEM)] if interleave else [(0, groups, Batch(
        problems=groups, x_stride=group_in, w_stride=group_out, y_stride=group_out))] if batched
        else [(g, 1, ONE_PROBLEM) for g in range(groups)])
    workers = threads if threads is not None else worker_count()

    # output cells summed in one go: their input rows and dy stay in the core's cache
    # for every group and tap (a whole layer's would be read again from memory for
    # each block of taps of each group)
    block = max(MIN_SHARE, BLOCK_BYTES // ((c + f) * itemsize * kh))
    if padded:  # whole images: the chunks and their blocks
        unit, block = image_cells, -(-block // image_cells)
        offsets = _window_starts(min(n, block), out_size, strides, w * c, c, h * w * c)
    else:
        unit = 1
        offsets = _window_starts(n, out_size, strides, w * c, c, h * w * c)
    count = cells // unit
    share = max(-(-MIN_SHARE // unit), -(-count // max(1, workers)))

    def sum_cells(x_base: int, offsets_part: np.ndarray, k0: int, dk: np.ndarray,
                  accumulate: int, calls: Sequence[tuple[int, int, Batch]] = calls) -> None:
        """``dk`` (+)= the sum over output cells ``k0, …`` whose windows start at
        ``offsets_part`` in the input at ``x_base``, by ``calls``' groups."""
        dy_base = dy_flat[k0 * f:].ctypes.data
        dk_base = dk.ctypes.data
        for first, _, batch in calls:
            for compiled_kernels, start, blocks, cols in kernels:
                assert compiled_kernels is not None
                compiled_kernels.run(
                    x_base + (first * group_in + (start if interleave else 0)) * itemsize,
                    dy_base + (first * group_out + start) * itemsize,
                    dk_base + (first * group_out + start) * itemsize,
                    offsets_part.ctypes.data, tap_cells,
                    Sums(blocks=blocks, steps=len(offsets_part), step_stride=f,
                         block_stride=cols, accumulate=accumulate), batch)

    def work(u0: int, u1: int, out: np.ndarray | None = None,
             calls: Sequence[tuple[int, int, Batch]] = calls) -> np.ndarray:
        dk = np.empty((kh, kw, group_in, f_padded), dtype) if out is None else out
        # later blocks add to dk; with a spill, into a scratch gradient then added (a
        # group's spill into the next group's columns is only overwritten within one sum)
        scratch = None if spill == 0 or u1 - u0 <= block else np.empty_like(dk)
        for b0 in range(u0, u1, block):
            b1 = min(u1, b0 + block)
            target = dk if b0 == u0 or scratch is None else scratch
            accumulate = int(b0 > u0 and scratch is None)
            if padded:
                slab = workspace("grouped_weight_grad", (b1 - b0, h, w, c), dtype)
                _fill(slab, x[b0:b1], -top, left)
                sum_cells(slab.ctypes.data, offsets[:(b1 - b0) * unit], b0 * unit, target,
                          accumulate, calls)
            else:
                sum_cells(x.ctypes.data, offsets[b0:b1], b0, target, accumulate, calls)
            if target is scratch:
                dk += scratch
        return dk

    flops = 2.0 * cells * kh * kw * group_in * f
    if (spill == 0 and not interleave and batched and workers > 1 and groups >= workers
            and -(-count // share) < workers and flops >= GROUP_SPLIT_FLOPS):
        # too few cells for a share per thread: each thread sums every cell for its own
        # groups into their own columns of one gradient (nothing added at the end)
        total = np.empty((kh, kw, group_in, f), dtype)

        def groups_work(g0: int, g1: int) -> None:
            work(0, count, total, [(g0, g1 - g0, Batch(
                problems=g1 - g0, x_stride=group_in, w_stride=group_out,
                y_stride=group_out))])

        run_chunks(groups_work, groups, -(-groups // workers), threads=threads, flops=flops,
                   blas=False)
        return total
    parts = run_chunks(work, count, share, threads=threads, flops=flops, blas=False)
    total = parts[0]
    for part in parts[1:]:
        total += part
    return np.ascontiguousarray(total[..., :f])


#: FLOPs from which a kernel gradient whose output cells make fewer shares of
#: :data:`MIN_SHARE` than threads is cut among the threads by groups (groups of whole
#: vectors, no spill). One thread ran 16 images of 4²×1024 (32 groups of 32, 3×3,
#: 151 MFLOP) alone: two threads 1.96 ms against PyTorch's 0.87. Cut by groups, each
#: thread's half took 0.97 ms of its CPU time against 2.09 for the whole (busy machine,
#: minimum of 20 calls); 16 images of 7² 1024 at stride 2: 1.70-1.75 against 3.65.
GROUP_SPLIT_FLOPS = 4e6


#: Groups side by side in a vector with which the kernel gradient of square groups
#: runs on the interleaved kernels (see :func:`weight_grad`).
GRADIENT_INTERLEAVES = (1, 2, 4)


def applies(problem: ConvProblem) -> bool:
    """1-D or 2-D, several groups of more than one input channel each, on a machine
    with the compiled kernels."""
    return (problem.rank in (1, 2) and problem.groups > 1 and problem.kernel_shape[-2] > 1
            and _llvm.available(problem.dtype))


def _job_count(cells: int, flops: float, workers: int) -> int:
    """Chunks :func:`_forward_plan` cuts ``cells`` output cells (``flops`` in all) into
    for ``workers`` threads: :data:`.register_tiles.JOBS_PER_WORKER` per thread, fewer
    where a chunk would hold under :data:`MIN_JOB_CELLS` cells or :data:`JOB_FLOPS`,
    always as many per thread; one in all for one thread, or where even one per
    thread is too small or the whole under :data:`PARALLEL_FLOPS`.

    >>> _job_count(49, 7.2e6, 2), _job_count(16, 2.4e7, 2), _job_count(784, 1.2e8, 2)
    (1, 2, 8)
    >>> _job_count(784, 1.2e8, 1), _job_count(8, 9.4e6, 2), _job_count(49, 5e6, 2)
    (1, 1, 1)
    """
    if workers < 2 or flops < PARALLEL_FLOPS:
        return 1
    per_worker = min(JOBS_PER_WORKER, cells // (workers * MIN_JOB_CELLS),
                     max(1, int(flops // (workers * JOB_FLOPS))))
    return workers * per_worker if per_worker >= 1 else 1


#: Fewest output cells of a chunk of the forward pass on several threads: each
#: costs a register block's tail of cells (8: one block of ResNeXt's 4² layers).
MIN_JOB_CELLS = 8

#: FLOPs of a chunk at least (about 60 µs of one core), beside the ~10 µs of Python
#: each chunk costs: a batch-1 ResNeXt layer (7-10 MFLOP) is one chunk per thread.
JOB_FLOPS = 4e6

#: FLOPs under which the forward pass stays on the calling thread. Handing chunks to
#: a helper costs the caller 25-45 µs of CPU time (busy machine), and on two quiet
#: cores (2026-12-06) every batch-1 ResNeXt layer (7-10 MFLOP) ran about twice as fast
#: on one thread as on two (3×3 g32: 128 on 28² 0.15 against 0.34 ms, 256 on 14² 0.17
#: against 0.33, 1024 s2 on 7² 0.16 against 0.34; PyTorch on two 0.11-0.19), while 16
#: images of 4² with 1024 channels (151 MFLOP) ran faster on two (1.2-1.5 against 1.7),
#: and so did 4 images of 14² with 256 (29 MFLOP: 0.44 against 0.52). Run as a table
#: (:mod:`._native_jobs`) two threads still gain little at batch 1 (busy machine,
#: real-time priority, medians, two threads against one through ``conv2d``): 128 on
#: 28² 0.148-0.154 against 0.152-0.154 ms, 256 on 14² 0.194-0.198 against 0.183-0.184,
#: 512 on 7² 0.124-0.126 against 0.133 (the calls alone: 0.08 against 0.11-0.13; the
#: rest is the call's fixed work and the other core's half of the output: summing
#: the output of 28² 128 afterwards took 0.12-0.19 ms after two threads, 0.01-0.02
#: after one; of 512 on 7² 0.02-0.03 against 0.006).
PARALLEL_FLOPS = 2e7


def _chunk_cells(problem: ConvProblem, workers: int, per_worker: int = 0) -> int:
    """Output cells of one chunk as :func:`_forward_plan` (``per_worker`` chunks per
    thread; 0: :func:`_job_count`'s) and :mod:`.register_tiles` cut them: rows of one
    image, or whole images."""
    out = problem.out_size
    image_rows = math.prod(out[:-1])
    jobs = per_worker * workers or _job_count(problem.batch * math.prod(out), problem.flops,
                                              workers)
    share = max(1, -(-image_rows * problem.batch // jobs))
    rows = share // image_rows * image_rows if share >= 2 * image_rows else min(image_rows,
                                                                                share)
    return rows * out[-1]


def cost(problem: ConvProblem) -> float:
    """:func:`.register_tiles.cost`, with this module's chunks of output (one per thread
    on one thread, where register_tiles cuts four), times :data:`SHUFFLE_SCALE` where
    the shuffling kernels run the forward pass (:func:`shuffles`),
    :data:`INTERLEAVE_SCALE` where the interleaved ones do (:func:`interleaves`),
    :data:`VECTORS_SCALE` for groups of whole vectors; elsewhere the forward pass is
    :func:`.register_tiles.direct` itself, at its cost (the name sorts after
    ``register_tiles``, which then runs the forward pass), and this algorithm
    supplies the kernel gradient wherever those kernels run grouped."""
    base = tiles_cost(problem)
    width = _llvm.vector_width(problem.dtype)
    group_in = problem.kernel_shape[-2]
    family = "" if problem.rank not in (1, 2) else _family(
        problem.groups, group_in, problem.out_channels // max(1, problem.groups),
        problem.in_channels, width)
    if not family:
        return base
    workers = worker_count()
    cells = _chunk_cells(problem, workers)
    base *= (1 + 16 / cells) / (1 + 16 / _chunk_cells(problem, workers, JOBS_PER_WORKER))
    if family == "shuffle":
        # register_tiles' cost counts the zeros of groups merged block-diagonally, twice
        # as many for groups of 2 as for 4; the shuffling kernels multiply none
        return base * SHUFFLE_SCALE * group_in / 4
    return base * {"interleave": INTERLEAVE_SCALE, "vectors": VECTORS_SCALE}[family]


#: Groups of whole vectors of outputs (ResNeXt's 32 of 32 with 16 lanes) here against
#: :func:`.register_tiles.direct` (the same kernels, every group in one call). Measured
#: on one core (CPU time, busy machine, AVX-512, float32, batch 1, 3×3, 32 groups of
#: 32): 4²×1024 0.20 against 0.35 ms, 7²×1024 at stride 2 0.22 against 0.35 ms (the
#: kernel packed and the chunks cut once per shape, not per call).
VECTORS_SCALE = 0.8


#: The shuffling kernels' time over :mod:`.register_tiles`' (groups merged into
#: block-diagonal kernels, whose cost holds for them). Measured on one core (CPU
#: time, busy machine, AVX-512, float32): 3×3, 32 groups of 4 on 56²×128: 1.19
#: against 2.20 ms (4 images: 5.5 against 7.5-8.9); 64 groups of 4 on 28²×256:
#: 0.56 against 0.66-1.01. Groups of 2 take half this (see :func:`cost`): on one thread
#: :mod:`.grouped_gemm` (0.8 × FLOPs) was chosen over them and ran 6-19 times as long
#: (CPU time, busy machine, float32, 3×3, batch 1: 14²×64 in 32 groups 1.06 against
#: 0.057 ms, 28²×64 0.78 against 0.10, 56²×128 3.1 against 0.43).
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
