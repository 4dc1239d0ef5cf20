"""Direct convolution with the output held in vector registers (compiled kernels).

This is the direct definition computed the way a CPU computes it fastest:
an ``MR × 64``-ish block of output (``MR`` cells of a row, up to four vector
registers of channels each) is summed in registers over every kernel tap and
input channel, reading the input where it lies. No im2col copy, no
transform, so no extra rounding beyond the order of the sum; strides and
dilation are just the offsets the kernel reads. The kernels are LLVM IR
compiled for this machine (:mod:`._llvm`); without llvmlite, or on a CPU
without AVX2/FMA, this algorithm does not apply and the others run.

Zero padding is written into a per-chunk copy of the input rows a chunk of
output reads (kept between calls), so no padded copy of the whole input is
made. A chunk is some rows of one image, or several whole small images (the
block of cells then wraps from one image into the next), or, where the kernel
outweighs the input and the cells are few (deep stages on small images), a range
of output-channel blocks of whole images, so that each worker reads only its
share of the kernel (:func:`split_blocks`). A one-group kernel whose outputs are
whole vectors is read where it lies (:func:`in_place`); others are packed into
panels at each call. Outputs of :data:`STREAM_BYTES` and more are written past
the caches. A one-group layer whose kernel is read in place runs a table of its
calls remembered per shape (:func:`_call_table`: the chunks worked out once, only
the arrays' addresses added at each call), and on a batch of small padded images
its output rows whose windows overhang the zero rows skip the kernel rows that
read them (:func:`_skip_zero_rows`).

Grouped convolutions run group after group on each chunk; groups with fewer
outputs than a vector are merged into block-diagonal kernels that fill one
(:func:`group_merge`: ResNeXt's 32 groups of 4 run as 8 of 16 with AVX-512).
Depthwise convolutions have kernels of their own that multiply lane by lane
and slide a window of input vectors along each output row (:mod:`._llvm_depthwise`,
:func:`depthwise`, ``register_tiles_depthwise``).

The same kernels run strided transposed convolutions one output phase at a
time (:func:`transposed`, ``register_tiles_phases``) and Winograd's batched
products (:func:`packed_matmul`).

Examples
--------
>>> import numpy as np
>>> from convarith.engine.algorithms import _llvm
>>> x = np.ones((1, 5, 5, 3), np.float32)
>>> k = np.ones((3, 3, 3, 16), np.float32)
>>> y = direct(x, k, (1, 1), (1, 1), 1, (3, 3)) if _llvm.available() else np.full((1, 3, 3, 16), 27.0)
>>> float(y[0, 1, 1, 0])
27.0
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ...arithmetic import effective_kernel, window_reach
from .. import gradient_costs
from ..dispatch import ConvProblem, grid_kernel_cost, magnitude, register_algorithm
from . import _llvm, _llvm_thin, _native_jobs, _outputs, _threads, prepacked
from ._llvm import ONE_PROBLEM, Batch, Cells, Sums
from ._llvm_depthwise import row_cells, row_kernel
from ._threads import ALIGN, aligned_copy, aligned_empty, run_chunks, worker_count, workspace
from .phase import phase_taps

__all__ = ["direct", "transposed", "depthwise", "applies", "cost", "pack_products",
           "packed_matmul", "group_merge", "PackedProducts", "Panel", "STREAM_BYTES"]

#: Input bytes a chunk's padded rows may take (they stay in the core's cache).
SLAB_BYTES = 1 << 20

#: ... or, for whole images, up to the kernel's bytes and at most this: a kernel larger
#: than the slab is read again by every chunk, a larger slab only from the shared cache.
#: Measured on one core (CPU time, busy machine, 1 MiB against 4 MiB): 3×3 512 -> 512 on
#: 16 images of 4² 13.3 against 12.2 ms, of 7² 37.2 against 35.5, stride 2 on 7² 14.2
#: against 12.5; 256 -> 256 on 16×7² 9.3 against 9.0.
KERNEL_SLAB_BYTES = 4 << 20


def _slab_bytes(kernel_bytes: int) -> int:
    """Input bytes a chunk of whole images may copy (:data:`SLAB_BYTES`,
    :data:`KERNEL_SLAB_BYTES`).

    >>> _slab_bytes(1000) == SLAB_BYTES, _slab_bytes(9_437_184) == KERNEL_SLAB_BYTES
    (True, True)
    """
    return max(SLAB_BYTES, min(KERNEL_SLAB_BYTES, kernel_bytes))

#: Chunks per worker thread: more balance the threads better at the end, each costs
#: ~10-20 µs of Python and ctypes (measured on L2, L7, L8, L1: 4 beat 8 and 16).
JOBS_PER_WORKER = 4


#: FLOPs of a chunk at least where the work allows one per worker: each chunk costs
#: ~9 µs of Python and ctypes (the 3×3 stride-2 3 -> 32 stem on one 112², 5.4 MFLOP,
#: cut for two workers: 8 chunks of 18 µs, one chunk of all 70 µs).
MIN_CHUNK_FLOPS = 4e6


def _job_count(workers: int, flops: float = math.inf) -> int:
    """Chunks to cut the work into: :data:`JOBS_PER_WORKER` per worker, fewer (but as
    many per worker) where a chunk would hold under :data:`MIN_CHUNK_FLOPS` of the
    job's ``flops``; one for a single worker (nothing to balance; one thread ran the
    3×3 stride-2 3 -> 32 layer on one 224² image in 0.29 ms instead of 0.34 as one chunk).

    >>> _job_count(1), _job_count(2), _job_count(2, 5.4e6), _job_count(2, 2e7)
    (1, 8, 2, 4)
    """
    if workers <= 1:
        return 1
    return workers * max(1, int(min(JOBS_PER_WORKER, flops / (workers * MIN_CHUNK_FLOPS))))


def _plan_blocks(channels: int, width: int) -> list[tuple[int, int, int]]:
    """``(vectors, first channel, blocks)`` runs covering ``channels`` padded to ``width``."""
    vectors_total = -(-channels // width)
    most = _llvm.max_vectors()
    full, rest = divmod(vectors_total, most)
    runs = []
    if full:
        runs.append((most, 0, full))
    if rest:
        runs.append((rest, full * most * width, 1))
    return runs


#: Largest kernel panel (taps × a step of input channels × a block of output
#: channels, or a run of a kernel read in place), in bytes; larger sums are split into
#: steps (later ones add to the output). The panel stays in the core's L2 cache (1 MiB
#: per core on this EPYC; lscpu counts both cores' 2 MiB): panels that fit its 32 KiB
#: L1 were measured no faster (L2, L6, L7 with 32, 48 and 512 KiB; kernels read in
#: place, 3×3 512 -> 512 on 16×4² and 16×7², one core: 8 and 16 KiB 10-25 % slower,
#: 256, 512 and 2048 KiB within the noise).
PANEL_BYTES = 512 << 10


def _channel_steps(taps: int, channels: int, outputs: int, width: int, itemsize: int,
                   panel_bytes: int) -> list[tuple[int, int]]:
    """Equal steps ``[c0, c1)`` of input channels whose panels fit ``panel_bytes``."""
    cols = min(-(-outputs // width), _llvm.max_vectors()) * width
    fit = max(1, panel_bytes // (taps * cols * itemsize))
    count = -(-channels // fit)
    size = -(-channels // count)
    return [(c0, min(channels, c0 + size)) for c0 in range(0, channels, size)]


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
    """Convolution by register-tiled compiled kernels (the dispatch contract).

    1-D and 2-D, any groups, float32 or float64; ``padding`` (zeros, negative
    values crop) is applied chunk by chunk. Groups run one after another on each
    chunk (see :func:`group_merge`).
    """
    rank = len(out_size)
    if rank not in (1, 2):
        raise ValueError(f"register_tiles needs a 1-D or 2-D convolution, got rank {rank}")
    dtype = np.dtype(xp.dtype)
    width = _llvm.vector_width(dtype)
    if not _llvm.available(dtype):
        raise ValueError(f"register_tiles has no compiled kernel for {dtype} on this machine")
    if rank == 1:
        xp = xp[:, None]
        kernel = kernel[None]
        strides, dilation, out_size = (1, *strides), (1, *dilation), (1, *out_size)
        padding = None if padding is None else ((0, 0), *padding)
    if groups == 1 and thin(xp.shape[-1]):  # on this thread by a remembered plan
        from . import thin_call

        planned = thin_call.planned(xp, kernel, strides, dilation, out_size, padding, threads)
        if planned is not None:
            return planned if rank == 2 else planned[:, 0]
    pads = [(0, 0), (0, 0)] if padding is None else [(int(a), int(b)) for a, b in padding]
    x = np.ascontiguousarray(xp, dtype=dtype)
    kernel = np.asarray(kernel, dtype)  # the panels and the compiled loads are x's type
    n, c = x.shape[0], x.shape[-1]
    kh, kw, _, f = kernel.shape
    oh, ow = (int(v) for v in out_size)
    stride_rows, stride_cols = (int(v) for v in strides)
    dilation_rows, dilation_cols = (int(v) for v in dilation)
    shape = (n, ow, f) if rank == 1 else (n, oh, ow, f)
    if groups > 1 and group_merge(groups, f // groups, width) > 1 and not math.isfinite(
            magnitude(x)):
        # merged groups' block-diagonal zeros times a non-finite value would reach
        # the other groups' outputs: each group alone (rare, so plainly)
        group_in, group_out = c // groups, f // groups
        parts = [direct(np.ascontiguousarray(x[..., g * group_in:(g + 1) * group_in]),
                        np.ascontiguousarray(kernel[..., g * group_out:(g + 1) * group_out]),
                        strides, dilation, 1, out_size, padding=pads, threads=threads)
                 for g in range(groups)]
        return np.concatenate(parts, axis=-1).reshape(shape)
    fpad = _output_channels(f, groups, width)
    if n * oh * ow == 0 or f == 0:
        return np.zeros(shape, dtype)
    flops = 2.0 * n * oh * ow * kh * kw * c * f
    # a job run inline (small) is one chunk: chunks one after another only add set-up;
    # the thin kernels' jobs are shared from a smaller size (no BLAS, a known pace)
    inline_below = THIN_INLINE_FLOPS if groups == 1 and thin(c) else _threads.SMALL_WORK
    if groups == 1 and not thin(c) and (in_place(kernel, c) or packs_once(kernel, c)) and (
            _native_jobs.kernel_runner() is not None):
        inline_below = TABLE_SMALL_WORK  # (remembered tables: little serial work left)
    workers = _threads.chunk_workers(threads, flops, inline_below)
    from . import segments, thin_call  # (they read this module's panels)

    one_call = workers == 1 and groups == 1 and thin_call.runs(
        x, kernel, pads, (oh, ow), (stride_rows, stride_cols), (dilation_rows, dilation_cols))
    # a thin layer on several threads: padded once, one table of calls (thin_call.run)
    shared_thin = workers > 1 and groups == 1 and thin_call.runs_shared(
        x, kernel, pads, (oh, ow), (stride_rows, stride_cols), (dilation_rows, dilation_cols),
        fpad, workers)
    y = (thin_call.output((n, oh, ow), f, fpad, dtype) if one_call
         else _outputs.output_empty((n, oh, ow, fpad), dtype))
    if one_call or shared_thin:
        thin_call.run(x, kernel, (stride_rows, stride_cols), (dilation_rows, dilation_cols),
                      (oh, ow), pads, y, threads=1 if one_call else workers)
    elif segments.cut_along_cells(n, oh, ow, workers, flops):
        jobs = segments.segment_jobs(x, kernel, (stride_rows, stride_cols),
                                     (dilation_rows, dilation_cols), (oh, ow), pads, y,
                                     workers, groups)
        _run(jobs, flops, threads, inline_below)
    elif (plan := _table_plan(x, kernel, groups, (stride_rows, stride_cols),
                              (dilation_rows, dilation_cols), (oh, ow), pads, workers)
          ) is not None:
        _run_table(plan, x, kernel, y, threads, flops, inline_below)
    else:
        # the chunks as one table of compiled calls, run without the GIL (_native_jobs)
        native = _native_jobs.kernel_plan(
            x, pads, window_reach(oh, kh, stride_rows, dilation_rows),
            x.nbytes + kernel.nbytes + y.nbytes, threads, flops, inline_below)
        if native is not None:
            x, pads, table = native
        jobs = _jobs(x, kernel, (stride_rows, stride_cols), (dilation_rows, dilation_cols),
                     (oh, ow), pads, y, workers, groups,
                     drives=None if native is None else table.recorder)
        if native is None:
            _run(jobs, flops, threads, inline_below)
        else:
            spans = table.jobs(jobs)  # (records the calls: before table.rows is read)
            _threads.run_native_jobs(table.runner, table.rows, spans, threads=threads,
                                     flops=flops, inline_below=inline_below)
    if y.shape[-1] != f:
        y = np.ascontiguousarray(y[..., :f])
    return y.reshape(shape)


#: Below this many FLOPs a layer run by a remembered call table (:func:`_call_table`)
#: runs inline on one thread. Its serial part is small (~0.02 ms of the caller's Python,
#: against 0.07-0.14 when the chunks were cut at each call), so weight-heavy batch-1
#: layers under :data:`._threads.SMALL_WORK` gain from a second thread. Predicted from
#: one thread's CPU time (``scripts/serial_fraction.py``, busy machine): 1×1
#: 256 -> 1024 on 1×7² 0.31 -> 0.20 ms on two, 1024 -> 256 0.29 -> 0.17; below
#: ~1e7 little is left to share (1152 -> 192 on 1×4², 7 MFLOP: 0.13 -> 0.12).
TABLE_SMALL_WORK = 1e7


class _TablePlan(NamedTuple):
    """A layer's table of compiled calls with the arrays' addresses taken out
    (:func:`_call_table`): each row's ``x``, ``w`` and ``y`` are offsets from the
    (padded) input's, the kernel's and the output's first element."""

    runner: Any  #: :func:`._native_jobs.rows_runner`'s runner
    rows: np.ndarray  #: int64 ``(calls, 1 + 4 + fields)``, read-only
    spans: tuple[tuple[int, int], ...]  #: each job's ``(first row, rows)``
    padded_shape: tuple[int, int, int, int] | None  #: the input padded once (None: unpadded)
    before: tuple[int, int]  #: its padding rows and columns before the input's
    keep: Any  #: the compiled modules, offsets (and packed panels) the rows point to
    #: ``w`` is an offset from the kernel's first element (read in place); else the
    #: address of a prepacked kernel's remembered panels (:func:`_packed_call_table`)
    kernel_relative: bool = True
    #: rows of :func:`._native_jobs.padded_rows_ir` that start each job (each job pads
    #: its own rows into its own part of a slab, on the thread that runs it: their
    #: ``x`` is an offset from the slab's first element, their ``w`` from the input's);
    #: ``None``: the caller pads ``padded_shape`` once for every job
    fill_rows: np.ndarray | None = None
    slab_elems: int = 0  #: elements of every job's slab together (with ``fill_rows``)


def _table_plan(x: np.ndarray, kernel: np.ndarray, groups: int, strides: tuple[int, int],
                dilation: tuple[int, int], out_size: tuple[int, int],
                pads: list[tuple[int, int]], workers: int) -> _TablePlan | None:
    """The remembered table of calls (:func:`_call_table`) for a one-group layer whose
    kernel is read in place, or ``None`` (the other paths then cut and record the
    chunks at each call). With several workers only where the spinning helpers run
    tables (as :func:`._native_jobs.kernel_plan` asks)."""
    c = x.shape[-1]
    if groups != 1 or not (packed := packs_once(kernel, c)) and not in_place(kernel, c):
        return None
    if workers > 1 and _native_jobs.kernel_runner() is None:
        return None
    pad_pairs = ((pads[0][0], pads[0][1]), (pads[1][0], pads[1][1]))
    if packed:
        return _packed_call_table(x.shape, kernel, strides, dilation, out_size, pad_pairs,
                                  workers)
    return _call_table(x.shape, kernel.shape, strides, dilation, out_size, pad_pairs, x.dtype,
                       _llvm.vector_target(), workers)


def _packed_call_table(shape: tuple[int, ...], kernel: np.ndarray, strides: tuple[int, int],
                       dilation: tuple[int, int], out_size: tuple[int, int],
                       pads: tuple[tuple[int, int], tuple[int, int]], workers: int
                       ) -> _TablePlan | None:
    """:func:`_call_table` for a prepacked kernel (:func:`packs_once`): its calls read
    the kernel's remembered panels, so the table is remembered with them, per kernel
    (:func:`.prepacked.remembered`, bounded with them); ``None`` where it is not kept
    (the chunks are then cut at each call). Measured on one core (CPU time, busy
    machine, batch 1): the serial part of 1×1 1024 -> 512 on 7² and 3×3 256 -> 256 on
    7² 0.08-0.1 ms of 0.55-0.65 without it."""
    packing = ("register_tiles table", shape, strides, dilation, out_size, pads,
               _llvm.vector_target(), workers)

    def record() -> tuple[tuple[_TablePlan | None], int]:
        plan = _record_table(shape, kernel.shape, strides, dilation, out_size, pads,
                             kernel.dtype, workers, kernel)
        return (plan,), 0 if plan is None else plan.rows.nbytes  # (None kept too)

    kept = prepacked.remembered(kernel, packing, record)
    return None if kept is None else kept[0]


@functools.lru_cache(maxsize=256)
def _call_table(shape: tuple[int, ...], kernel_shape: tuple[int, ...], strides: tuple[int, int],
                dilation: tuple[int, int], out_size: tuple[int, int],
                pads: tuple[tuple[int, int], tuple[int, int]], dtype: np.dtype[Any],
                target: _llvm.VectorTarget, workers: int) -> _TablePlan | None:
    """Every call :func:`_jobs` makes for a layer of these shapes on ``workers`` threads,
    recorded once (remembered per shape): at a call only the arrays' addresses are
    added to it. Working the chunks out again at each call cost ~0.05-0.1 ms of one
    thread (a third of a batch-1 1×1 256 -> 1024 layer on 7², run by no other
    thread). The input is padded once for all chunks (as
    :func:`._native_jobs.kernel_plan` does, within its memory bounds; ``None``
    beyond them, or without a compiled runner)."""
    return _record_table(shape, kernel_shape, strides, dilation, out_size, pads, dtype,
                         workers)


def _record_table(shape: tuple[int, ...], kernel_shape: tuple[int, ...],
                  strides: tuple[int, int], dilation: tuple[int, int],
                  out_size: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]],
                  dtype: np.dtype[Any], workers: int, packed: np.ndarray | None = None
                  ) -> _TablePlan | None:
    """:func:`_call_table`'s table, recorded; ``packed``: a prepacked kernel
    (:func:`packs_once`), whose panels the rows then point to."""
    runner = _native_jobs.rows_runner(_native_jobs.KERNEL_POINTERS,
                                      _native_jobs.KERNEL_FIELDS)
    if runner is None:
        return None
    n, h, w, c = shape
    kh, f = kernel_shape[0], kernel_shape[-1]
    oh, ow = out_size
    itemsize = dtype.itemsize
    (top, bottom), (left, right) = pads
    padded_shape = None
    if top or bottom or left or right:
        padded_shape = (n, window_reach(oh, kh, strides[0], dilation[0]), w + left + right, c)
        kernel_bytes = math.prod(kernel_shape) * itemsize
        io_bytes = math.prod(shape) * itemsize + kernel_bytes + n * oh * ow * f * itemsize
        # (up to the kernel's size: a chunk of whole images would copy as much, and the
        # chunks that share the output channels pad the whole input once anyway)
        most = max(_native_jobs.PAD_ONCE_BYTES, min(kernel_bytes, KERNEL_SLAB_BYTES))
        if min(padded_shape) <= 0 or math.prod(padded_shape) * itemsize > min(
                most, _native_jobs.PAD_ONCE_SHARE * io_bytes):
            return None
    # arrays of the layer's shapes for their addresses only: no value is read or written
    x = np.empty(padded_shape or shape, dtype)
    kernel = np.empty(kernel_shape, dtype) if packed is None else packed
    # the output as direct makes it: whole vectors of channels (the rows' strides are its)
    y = aligned_empty((n, oh, ow, _output_channels(f, 1, _llvm.vector_width(dtype))), dtype)
    table = _native_jobs.KernelTable(runner)
    panels: list[Panel] = []
    jobs = _jobs(x, kernel, strides, dilation, out_size, [(0, 0), (0, 0)], y, workers,
                 drives=table.recorder, made=panels,
                 real_rows=None if padded_shape is None else (top, h))
    spans = tuple((int(a), int(b)) for a, b in table.jobs(jobs))
    rows = table.rows.copy()
    rows[:, 1:4] -= np.array([x.ctypes.data, 0 if packed is not None else kernel.ctypes.data,
                              y.ctypes.data], np.int64)
    keep = tuple((panel.kernels, panel.offsets) if packed is None
                 else (panel.kernels, panel.offsets, panel.weights) for panel in panels)
    plan = _TablePlan(runner, rows, spans, padded_shape, (top, left), keep,
                      kernel_relative=packed is None)
    if padded_shape is not None and len(spans) > 1:
        plan = _own_slabs(plan, jobs, shape, padded_shape, pads, itemsize)
    plan.rows.flags.writeable = False
    return plan


def _own_slabs(plan: _TablePlan, jobs: list[Callable[[], None]], shape: tuple[int, ...],
               padded_shape: tuple[int, int, int, int],
               pads: tuple[tuple[int, int], tuple[int, int]], itemsize: int) -> _TablePlan:
    """``plan`` with each job padding its own input rows, on the thread that runs it, into
    its own part of a slab (a row of :func:`._native_jobs.padded_rows_ir` ahead of its
    calls, which then read that part): a padded copy made by the caller for every job
    was read by the other core from the caller's cache, and written again at the next
    call over lines the other core held (ResNet-50's 3×3 s2 128 on one 28² image, two
    threads: the caller's copy took ~0.2 ms, the calls ~0.3). The calls and their order
    are the same (the same values, bit for bit). Jobs that share the output channels
    (:func:`_block_jobs`) each copy the whole padded input (in parallel, each in its own
    core's cache) where it takes at most :data:`SLAB_BYTES`. ``plan`` unchanged where a
    job does not say what it reads (:func:`_reading`), where the padding crops columns,
    or without the filler."""
    filler = _native_jobs.padded_rows_filler()
    (top, _), (left, right) = pads
    if filler is None or left < 0 or right < 0:  # (the filler pads columns, never crops)
        return plan
    _, h, w, c = shape
    _, needed, padded_w, _ = padded_shape
    row_bytes = padded_w * c * itemsize
    marked = [getattr(job, "reads", None) for job in jobs]
    pieces: list[tuple[int, int, int, int, bool]] = [piece for piece in marked if piece]
    if len(pieces) != len(marked):
        return plan
    # jobs sharing the output channels each copy the whole input, up to SLAB_BYTES
    # (ResNet-50's 3×3 s2 512 on 16×7², 7.4 MB padded, took 1.88× the operands' memory
    # with two copies and ran 0.71× PyTorch's time)
    if any(piece[4] for piece in pieces) and shape[0] * needed * row_bytes > SLAB_BYTES:
        return plan
    if len(pieces) != len(plan.spans):
        return plan
    width = plan.rows.shape[1]
    rows: list[np.ndarray] = []
    fills: list[int] = []
    spans: list[tuple[int, int]] = []
    slab_at = 0
    for (first, count), (image, images, row0, slab_rows, _) in zip(plan.spans, pieces):
        fill = [0] * width
        fill[:3] = [filler.address, slab_at * itemsize, image * h * w * c * itemsize]
        fill[5:16] = [images, slab_rows, row0 - top, h, w * c * itemsize, h * w * c * itemsize,
                      row_bytes, slab_rows * row_bytes, left * c * itemsize, w * c * itemsize,
                      right * c * itemsize]
        calls = plan.rows[first:first + count].copy()
        # (the calls read this job's slab where they read the whole padded input)
        calls[:, 1] += slab_at * itemsize - (image * needed * padded_w * c + row0 * padded_w * c
                                             ) * itemsize
        spans.append((sum(part.shape[0] for part in rows), count + 1))
        fills.append(spans[-1][0])
        rows += [np.array([fill], np.int64), calls]
        slab_at += images * slab_rows * padded_w * c
    fill_rows = np.array(fills, np.intp)
    fill_rows.flags.writeable = False
    return plan._replace(rows=np.concatenate(rows), spans=tuple(spans), keep=(plan.keep, filler),
                         fill_rows=fill_rows, slab_elems=slab_at)


def _run_table(plan: _TablePlan, x: np.ndarray, kernel: np.ndarray, y: np.ndarray,
               threads: int | None, flops: float, inline_below: float) -> None:
    """Run :func:`_call_table`'s calls on these arrays (``x`` padded into a kept buffer
    first where the plan pads it)."""
    source = x
    if plan.fill_rows is not None:  # (each job pads its own rows)
        source = workspace("native_jobs_padded", (plan.slab_elems,), x.dtype)
    elif plan.padded_shape is not None:
        source = workspace("native_jobs_padded", plan.padded_shape, x.dtype)
        _fill(source, x, -plan.before[0], plan.before[1])
    rows = plan.rows.copy()
    kernel_base = kernel.ctypes.data if plan.kernel_relative else 0
    rows[:, 1:4] += np.array([source.ctypes.data, kernel_base, y.ctypes.data], np.int64)
    if plan.fill_rows is not None:
        rows[plan.fill_rows, 2] += x.ctypes.data - kernel_base
        rows[plan.fill_rows, 3] -= y.ctypes.data
    _threads.run_native_jobs(plan.runner, rows, list(plan.spans), threads=threads,
                             flops=flops, inline_below=inline_below)


def _run(jobs: list[Callable[[], None]], flops: float, threads: int | None,
         inline_below: float = _threads.SMALL_WORK) -> None:
    def work(begin: int, end: int) -> None:
        for job in jobs[begin:end]:
            job()

    run_chunks(work, len(jobs), 1, threads=threads, flops=flops, blas=False,
               inline_below=inline_below)


#: Outputs of at least this many bytes (a core's L2 cache here: their lines would
#: leave it anyway) are stored past the caches, with non-temporal stores that do
#: not first read the lines they overwrite. Measured on two cores: L4 (6.4 MB)
#: 0.64 -> 0.52 ms, L7 1.82 -> 1.72, L9 (3.2 MB) 1.95 -> 1.84.
STREAM_BYTES = 2 << 20


def _aligned(y: np.ndarray) -> bool:
    """Whether every vector store into ``y`` (cells of whole vectors) is 64-byte aligned."""
    return y.ctypes.data % ALIGN == 0 and all(st % ALIGN == 0 for st in y.strides[:-1])


class Panel(NamedTuple):
    """One run of the kernels over a chunk of output: the compiled module, the packed
    kernel values, where each step of the sum reads, and the sum's layout."""

    kernels: _llvm.Kernels
    weights: np.ndarray  #: (blocks, steps, columns), aligned, zero-padded columns
    offsets: np.ndarray  #: int64: input elements from a cell's origin, per step
    first_channel_bytes: int  #: where the run's first output channel lies in a cell
    sums: Sums
    #: groups run by one call: ``x``, ``weights`` and ``y`` advanced by its strides
    batch: Batch = ONE_PROBLEM
    #: a kernel read in place: its first step (row ``(tap, input channel)``) here
    first_step: int = 0


class _Call(NamedTuple):
    """A :class:`Panel` with its arrays' addresses taken once (``.ctypes`` costs ~1 µs)."""

    drive: Any
    weights: int
    offsets: int
    first_channel_bytes: int
    sums: Sums
    batch: Batch = ONE_PROBLEM
    first_step: int = 0


def _calls(panels: list[Panel], drives: Callable[[Any], Any] | None = None) -> list[_Call]:
    """The panels' calls; ``drives(drive)``: what to call instead (see _native_jobs)."""
    return [_Call(p.kernels.drive if drives is None else drives(p.kernels.drive),
                  p.weights.ctypes.data, p.offsets.ctypes.data, p.first_channel_bytes, p.sums,
                  p.batch, p.first_step) for p in panels]


def group_merge(groups: int, group_out: int, width: int) -> int:
    """Groups run as one by the kernels (a block-diagonal kernel): the fewest, dividing
    ``groups``, whose outputs fill a vector of ``width`` channels (1 when a group's do).

    A group of fewer outputs than a vector would waste the rest of the vector's lanes
    anyway; merged, the kernels run fewer, longer sums (the zeros cost the same
    lanes).

    >>> group_merge(32, 4, 16), group_merge(4, 32, 16), group_merge(6, 5, 16)
    (4, 1, 6)
    """
    if group_out >= width:
        return 1
    for merge in range(1, groups + 1):
        if groups % merge == 0 and merge * group_out >= width:
            return merge
    return groups


def _output_channels(filters: int, groups: int, width: int) -> int:
    """Channels of the output buffer: the last (merged) group's vectors may run past
    ``filters``."""
    merge = group_merge(groups, filters // groups, width)
    block = filters // groups * merge
    return filters - block + -(-block // width) * width


def _merged_kernel(kernel: np.ndarray, groups: int, merge: int) -> np.ndarray:
    """``(KH, KW, C/g, F)`` as ``groups / merge`` block-diagonal kernels
    ``(groups / merge, KH, KW, merge · C/g, merge · F/g)``."""
    kh, kw, group_in, f = kernel.shape
    group_out = f // groups
    count = groups // merge
    # (KH, KW, Cg, count, merge, Fg) -> per merged group and diagonal block
    parts = kernel.reshape(kh, kw, group_in, count, merge, group_out)
    if merge == 1:
        return np.ascontiguousarray(parts[:, :, :, :, 0].transpose(3, 0, 1, 2, 4))
    merged = np.zeros((count, kh, kw, merge * group_in, merge * group_out), kernel.dtype)
    for m in range(merge):
        merged[..., m * group_in:(m + 1) * group_in, m * group_out:(m + 1) * group_out] = \
            parts[:, :, :, :, m].transpose(3, 0, 1, 2, 4)
    return merged


def _batched_panels(merged: np.ndarray, dilation: tuple[int, int], row_elems: int,
                    streaming: bool, cell_channels: int) -> list[Panel]:
    """Like :func:`_panels` for every (merged) group of ``merged`` ``(count, KH, KW,
    Cg, Fg)`` at once: each panel holds the groups' panels one after another, run by
    one call (a :class:`Batch` of the groups)."""
    count, kh, kw, group_in, group_out = merged.shape
    dtype = merged.dtype
    panels = []
    for c0, c1, offsets, runs in _layout(merged.shape[1:], dtype, dilation, row_elems,
                                         streaming, PANEL_BYTES, cell_channels):
        part = merged[:, :, :, c0:c1].reshape(count, kh * kw * (c1 - c0), group_out)
        for kernels, start, blocks, cols in runs:
            stop = min(group_out, start + blocks * cols)
            columns = part[..., start:stop]
            if stop - start < blocks * cols:  # the last block's columns beyond Fg: zeros
                columns = np.concatenate([columns, np.zeros(
                    (count, part.shape[1], start + blocks * cols - stop), dtype)], axis=-1)
            weights = aligned_empty((count, blocks, part.shape[1], cols), dtype)
            weights[...] = columns.reshape(count, part.shape[1], blocks, cols).transpose(
                0, 2, 1, 3)
            sums = Sums(blocks=blocks, steps=len(offsets), step_stride=cols,
                        block_stride=part.shape[1] * cols, accumulate=int(c0 > 0))
            batch = Batch(problems=count, x_stride=group_in, w_stride=blocks * part.shape[1]
                          * cols, y_stride=group_out)
            panels.append(Panel(kernels, weights, offsets, start * dtype.itemsize, sums, batch))
    return panels


def _panels(kernel: np.ndarray, dilation: tuple[int, int], row_elems: int,
            streaming: bool = False, groups: int = 1, cell_channels: int | None = None,
            cell_step: int = 0, threads: int | None = None) -> list[Panel]:
    """The kernel ``(KH, KW, C/g, F)`` packed for the driver, reading an input whose rows
    are ``row_elems`` elements apart and whose cells hold ``cell_channels`` (default
    ``C``): per (merged) group, per step of input channels (their panels fit
    :data:`PANEL_BYTES`; later steps add to the output) and per run of column blocks,
    a contiguous, aligned panel ``(blocks, taps · channels, vectors · width)`` with
    zero-padded columns, and where each (tap, channel) reads. A group's panels come
    before the next group's: its last vector may spill into the next group's
    channels, which that group then overwrites.

    When the (merged) groups' outputs are whole vectors, or their sum is one step,
    no group's results depend on that order: then each run's panels of every
    group lie one after another in one array, and one call (a :class:`Batch` of
    the groups) runs them all, instead of one call per group and chunk (~10 µs
    each: 32 groups on 4 chunks per core took ~1.3 ms whatever the layer's size).

    ``cell_step``: input elements from one output cell of a row to the next (0:
    unknown); with :func:`thin` cells (one group) the panels are run by
    :mod:`._llvm_thin`'s kernels, which compile it in."""
    if groups > 1:
        width = _llvm.vector_width(kernel.dtype)
        merge = group_merge(groups, kernel.shape[-1] // groups, width)
        merged = _merged_kernel(kernel, groups, merge)
        group_in, group_out = merged.shape[-2:]
        channels = cell_channels or kernel.shape[-2] * groups
        whole = group_out % width == 0  # no vector spills into the next group
        layout = _layout(merged.shape[1:], kernel.dtype, dilation, row_elems, False,
                         PANEL_BYTES, channels)
        one_panel = len(layout) == 1 and len(layout[0][3]) == 1  # one step, one run
        if len(merged) > 1 and (whole or one_panel):
            return _batched_panels(merged, dilation, row_elems, streaming and whole,
                                   channels)
        panels: list[Panel] = []
        for s, part in enumerate(merged):
            for one in _panels(part, dilation, row_elems, False, 1, channels):
                shift = s * group_in  # the group's first input channel
                panels.append(one._replace(
                    offsets=np.ascontiguousarray(one.offsets + shift),
                    first_channel_bytes=one.first_channel_bytes
                    + s * group_out * kernel.dtype.itemsize))
        return panels
    dtype = kernel.dtype
    kh, kw, c, f = kernel.shape
    channels = cell_channels or c
    if in_place(kernel, channels):
        # the kernel read where it lies: its rows (tap, input channel) are the steps, a
        # block's columns lie ``f`` elements apart from one step to the next
        rows = kernel.reshape(kh * kw * c, f)
        return [Panel(kernels, rows[r0:, start:], offsets, start * dtype.itemsize,
                      Sums(blocks=blocks, steps=r1 - r0, step_stride=f, block_stride=cols,
                           accumulate=int(r0 > 0)), first_step=r0)
                for r0, r1, offsets, runs in _layout(kernel.shape, dtype, dilation, row_elems,
                                                     streaming, PANEL_BYTES, channels,
                                                     cell_step if thin(channels) else 0,
                                                     in_place=True)
                for kernels, start, blocks, cols in runs]
    layout = _layout(kernel.shape, dtype, dilation, row_elems, streaming, PANEL_BYTES,
                     channels, cell_step if thin(channels) else 0)

    def pack() -> tuple[list[np.ndarray], int]:
        """Each (step, run)'s panel of the kernel, and their bytes."""
        packed = []
        # each block's columns: (panel, block, input channels, output channels)
        copies: list[tuple[np.ndarray, int, int, int, int, int]] = []
        for c0, c1, _, runs in layout:
            for _, start, blocks, cols in runs:
                weights = aligned_empty((blocks, kh * kw * (c1 - c0), cols), dtype)
                copies.extend((weights, b, c0, c1, start + b * cols,
                               min(f, start + (b + 1) * cols)) for b in range(blocks))
                packed.append(weights)

        def copy(first: int, last: int) -> None:
            for weights, b, c0, c1, lo, hi in copies[first:last]:
                block = weights[b].reshape(kh, kw, c1 - c0, -1)
                if hi - lo < block.shape[-1]:
                    block[..., hi - lo:] = 0  # the last block's columns beyond F
                block[..., : hi - lo] = kernel[:, :, c0:c1, lo:hi]

        # the kernel's copy is the caller's serial part: shared among the workers (NumPy's
        # copies run without the GIL) when it takes more than handing it over
        workers = threads if threads is not None else worker_count()
        if kernel.nbytes < PARALLEL_PANEL_BYTES:
            workers = 1
        run_chunks(copy, len(copies), -(-len(copies) // workers), threads=workers, blas=False)
        for weights in packed:
            weights.flags.writeable = False  # (remembered panels are shared by calls)
        return packed, sum(weights.nbytes for weights in packed)

    packing = ("register_tiles", tuple((c0, c1, tuple(run[1:] for run in runs))
                                       for c0, c1, _, runs in layout))
    weights_list = (prepacked.remembered(kernel, packing, pack)
                    if packs_once(kernel, channels) else None)
    if weights_list is None:
        weights_list, _ = pack()
    panels = []
    made = iter(weights_list)
    for c0, c1, offsets, runs in layout:
        steps = kh * kw * (c1 - c0)
        for kernels, start, blocks, cols in runs:
            sums = Sums(blocks=blocks, steps=len(offsets), step_stride=cols,
                        block_stride=steps * cols, accumulate=int(c0 > 0))
            panels.append(Panel(kernels, next(made), offsets, start * dtype.itemsize, sums))
    return panels


#: Kernels of at least this many bytes are packed into panels by every worker thread.
PARALLEL_PANEL_BYTES = 1 << 20


@functools.lru_cache(maxsize=256)
def _layout(shape: tuple[int, ...], dtype: np.dtype, dilation: tuple[int, int],
            row_elems: int, streaming: bool, panel_bytes: int, cell_channels: int,
            cell_step: int = 0, in_place: bool = False
            ) -> tuple[tuple[int, int, np.ndarray, tuple[tuple[Any, int, int, int], ...]], ...]:
    """What :func:`_panels` needs besides the kernel's values, per shape (remembered):
    per step of input channels ``(c0, c1, offsets, runs)``, each run ``(kernels, first
    output channel, blocks, columns)``; input cells hold ``cell_channels``; a
    ``cell_step`` above 0 picks :mod:`._llvm_thin`'s kernels, with it compiled in.

    ``in_place``: the kernel is read where it lies (:func:`in_place`); its rows
    ``(tap, input channel)`` are cut into equal runs ``[r0, r1)`` instead of steps of
    input channels, each run's columns of a block fitting ``panel_bytes``."""
    kh, kw, c, f = shape
    dilation_rows, dilation_cols = dilation
    width = _llvm.vector_width(dtype)
    taps = (np.arange(kh)[:, None] * (dilation_rows * row_elems)
            + np.arange(kw)[None, :] * (dilation_cols * cell_channels)).astype(np.int64).ravel()
    if in_place:
        every = (taps[:, None] + np.arange(c)).ravel()
        cols = min(-(-f // width), _llvm.max_vectors()) * width
        total = kh * kw * c
        count = -(-total // max(1, panel_bytes // (cols * dtype.itemsize)))
        size = -(-total // count)
        steps = [(r0, min(total, r0 + size)) for r0 in range(0, total, size)]
    else:
        steps = _channel_steps(kh * kw, c, f, width, dtype.itemsize, panel_bytes)
    layout = []
    for c0, c1 in steps:
        offsets = np.ascontiguousarray(every[c0:c1] if in_place
                                       else (taps[:, None] + np.arange(c0, c1)).ravel())
        offsets.flags.writeable = False
        runs = []
        for vectors, start, blocks in _plan_blocks(f, width):
            stream = streaming and len(steps) == 1
            kernels = (_llvm_thin.compiled_rows(dtype, vectors, cell_step, stream) if cell_step
                       else _llvm.compiled(dtype, vectors, stream))
            assert kernels is not None
            runs.append((kernels, start, blocks, vectors * width))
        layout.append((c0, c1, offsets, tuple(runs)))
    return tuple(layout)


def in_place(kernel: np.ndarray, cell_channels: int) -> bool:
    """Whether :func:`_panels` reads a one-group ``kernel`` ``(KH, KW, C, F)`` where it
    lies instead of packing it into panels: C-contiguous and ``F`` whole vectors
    (``cell_channels`` any: the :func:`thin` kernels read it in place too, which saved
    ~10 µs of a 3×3 3 -> 32 layer's ~100 on one 56² image).

    Packing copies the whole kernel at every call: 1.36 ms for 3×3 512 -> 512 (9.4 MB)
    and 1.1 ms for 1×1 1024 -> 2048 on one core, more than the products themselves on
    one 4² image (busy machine). Read in place, a block's columns lie one kernel row
    apart from one step of the sum to the next, as the hardware prefetcher expects.

    >>> in_place(np.zeros((3, 3, 64, 64), np.float32), 64) == _llvm.available()
    True
    >>> in_place(np.zeros((3, 3, 64, 24), np.float32), 64)
    False
    """
    width = _llvm.vector_width(kernel.dtype)
    f = kernel.shape[-1]
    return (width > 0 and f > 0 and f % width == 0 and kernel.flags.c_contiguous
            and kernel.ndim == 4 and not packs_once(kernel, cell_channels))


#: One-group kernels of at least this many bytes that cannot change
#: (:func:`.prepacked.prepack`) are packed into panels once and the panels reused
#: (:func:`packs_once`).
PREPACK_BYTES = 1 << 20


def packs_once(kernel: np.ndarray, cell_channels: int) -> bool:
    """Whether :func:`_panels` packs a one-group ``kernel`` once and reuses the panels
    (:func:`.prepacked.remembered`) instead of reading it in place: a frozen kernel
    (:func:`.prepacked.prepack`) of :data:`PREPACK_BYTES` or more, not :func:`thin`.

    Read in place, a block of output channels steps one kernel row down the sum at a
    time; packed, it streams. Measured on one core (CPU time, busy machine, float32,
    batch 1; in place, packed at each call, packed once; onnxruntime): 3×3 512 -> 512
    on 4² 1.85, 2.26, 0.97 ms (ort 1.02); 3×3 512 -> 1024 on 7² 7.1, 8.0, 5.1 (ort
    5.1); 1×1 1024 -> 1024 on 7² 1.76, 1.95, 1.28 (ort 1.10).

    >>> import numpy as np
    >>> packs_once(np.zeros((3, 3, 256, 256), np.float32), 256)
    False
    >>> packs_once(prepacked.prepack(np.zeros((3, 3, 256, 256), np.float32)), 256)
    True
    """
    return (kernel.nbytes >= PREPACK_BYTES and kernel.ndim == 4 and not thin(cell_channels)
            and prepacked.frozen_owner(kernel) is not None)


#: Most input channels for which :mod:`._llvm_thin`'s kernels run a (one-group) layer.
THIN_CHANNELS = 4

#: :func:`cost` per FLOP of :mod:`._llvm_thin`'s kernels, at stride 1 and strided.
#: Measured on one core against flat_rows (``0.7 × time / flat_rows' time``, 24 layers of
#: 1, 3 and 4 -> 16, 32 and 64 channels, 3×3 to 7×7, 1×112², 16×56², 64×28²): 0.09–0.35
#: at stride 1 (the 16-channel ones lowest), 0.19–0.42 at stride 2; space_to_depth
#: 0.18–0.64 on the same layers.
THIN_PER_FLOP = 0.25
THIN_STRIDED = 0.35

#: :func:`cost` units of a thin layer's call beyond flat_rows' (~25 µs of Python set-up:
#: panels, the padded input; chunks and hand-offs on several workers). Measured on one
#: core (CPU time, busy machine, 96 layers of 1, 3 and 4 -> 16 to 64 channels, 3×3 to
#: 7×7, stride 1 and 2, 1 and 2 images of 8² to 56², float32 and float64): register_tiles
#: took 70-90 µs where flat_rows took 43-60 on 8² and 16² images (before
#: :mod:`.thin_call`, which saved ~10 µs of it); about 18 500 units per µs on both;
#: with it flat_rows runs 3×3 stride 2 3 -> 32 on one 32² image (110 against 154 µs)
#: and register_tiles 3 -> 64 (118 against 131).
THIN_CALL = 5e5

#: :data:`NARROW_VECTORS` for the thin kernels, whose short sums lose less to narrower
#: vectors than the products of many channels. Measured on one core (CPU time, busy
#: machine, the AVX2 kernels on this AVX-512 machine against space_to_depth, whose BLAS
#: keeps the wide vectors): 3×3 3 -> 64 on one 112² image 0.66 against 0.84 ms, 7×7
#: stride 2 3 -> 64 1.12 against 1.18, 3×3 stride 2 3 -> 32 0.285 against 0.282 (on
#: 16 images 1.38 against 2.77), 5×5 stride 2 4 -> 24 on one 224² image 0.87 against 1.82;
#: the AVX2 kernels took 1.3-1.9 times the native ones.
THIN_NARROW = 1.25

#: A thin layer of fewer FLOPs runs on the calling thread (:mod:`.thin_call`), unless
#: ``threads`` is given. Measured on two cores (wall time, busy machine, the same run):
#: MobileNetV2's 3×3 stride-2 3 -> 32 stem on one 112² image (5.4 MFLOP) 90 µs on one
#: thread against 121 shared by two (fastest of 400 calls; 91 against 136 at the first
#: quartile); 10.8 MFLOP layers (3 -> 16 on 112², the stem on two images) 165-177
#: against 176-188; 21.7 MFLOP 272-287 against 244-276 (their first quartiles still
#: favoured one thread); VGG's 3 -> 64 on 112² (43 MFLOP) 428 against 318.
THIN_INLINE_FLOPS = 1.5e7


def thin(channels: int) -> bool:
    """Whether input cells of ``channels`` channels are run by :mod:`._llvm_thin`'s
    kernels: with so few, a cell's sum is short, and placing a block's cells costs
    :mod:`._llvm`'s kernels about as much as the sum.

    >>> thin(3), thin(16)
    (True, False)
    """
    return 0 < channels <= THIN_CHANNELS


def _jobs(x: np.ndarray, kernel: np.ndarray, strides: tuple[int, int],
          dilation: tuple[int, int], out_size: tuple[int, int], pads: list[tuple[int, int]],
          y: np.ndarray, threads: int | None, groups: int = 1,
          make_panels: Callable[[int], list[Panel]] | None = None,
          drives: Callable[[Any], Any] | None = None,
          made: list[Panel] | None = None,
          real_rows: tuple[int, int] | None = None) -> list[Callable[[], None]]:
    """One call per chunk of output (images, rows of one image, or for several workers and
    a kernel larger than the input a range of output-channel blocks, :func:`_block_jobs`)
    writing ``y`` (N, OH, OW, F padded); ``make_panels(row_elems)``: other kernels' panels than
    :func:`_panels`' (the grouped kernels of :mod:`.grouped_tiles`)."""
    dtype = x.dtype
    itemsize = dtype.itemsize
    n, h, w, c = x.shape
    kh = kernel.shape[0]
    oh, ow = out_size
    stride_rows, stride_cols = strides
    dilation_rows = dilation[0]
    (top, bottom), (left, right) = pads
    padded_w = w + left + right
    row_elems = padded_w * c  # elements of one padded input row
    streaming = y.nbytes >= STREAM_BYTES and _aligned(y)
    panels = (_panels(kernel, dilation, row_elems, streaming, groups, c,
                      stride_cols * c if groups == 1 else 0, threads) if make_panels is None
              else make_panels(row_elems))
    if made is not None:
        made.extend(panels)  # (the caller keeps what the calls point to)
    reach = effective_kernel(kh, dilation_rows)  # input rows one output row reads
    workers = threads if threads is not None else worker_count()
    unpadded = top == bottom == left == right == 0
    y_image, y_row, y_cell = (st // itemsize for st in y.strides[:3])
    # addresses taken once (``.ctypes`` costs ~1 µs each); the jobs keep the arrays alive
    x_base, x_bytes = x.ctypes.data, x.strides
    y_base, y_bytes = y.ctypes.data, y.strides
    calls = _calls(panels, drives)
    # a kernel read in place, on an input padded beforehand (rows real_rows[0] onwards
    # are its real_rows[1] rows): the rows of output whose windows overhang its zero
    # rows skip the kernel rows that read them (None: every row reads every kernel row)
    skipping = (_skip_zero_rows(calls, real_rows, kernel.shape, c, out_size, strides,
                                dilation_rows, itemsize, n, panels[0].kernels.rows)
                if real_rows is not None and make_panels is None and groups == 1
                and in_place(kernel, c) else None)
    # every worker gets about 4 chunks (a single worker one); a chunk is whole images
    # when images are small (fewer calls: each costs ~10 µs of Python and ctypes),
    # else rows of one image; its padded input rows fit SLAB_BYTES (whole images: up to
    # the kernel's size, _slab_bytes)
    rows_share = max(1, -(-n * oh // _job_count(workers, 2.0 * n * oh * ow * kernel.size)))
    needed = window_reach(oh, kh, stride_rows, dilation_rows)  # padded input rows of one image
    image_bytes = needed * row_elems * itemsize
    if make_panels is None and groups == 1 and workers > 1 and not thin(c) and split_blocks(
            math.prod(kernel.shape[:3]) * y.shape[-1] * itemsize, n * image_bytes):
        return _block_jobs(x, pads, y, panels, strides, needed, workers, drives, skipping)
    if rows_share >= 2 * oh:
        slab = _slab_bytes(math.prod(kernel.shape) * itemsize)
        images = max(1, min(rows_share // oh, slab // image_bytes if not unpadded else n))

        def job_images(g0: int, g1: int, _keep: Any = panels) -> None:
            if unpadded:
                source, x_image = x_base + g0 * x_bytes[0], h * w * c
            else:
                slab = workspace("register_tiles", (g1 - g0, needed, padded_w, c), dtype)
                _fill(slab, x[g0:g1], -top, left)
                source, x_image = slab.ctypes.data, needed * row_elems
            target = y_base + g0 * y_bytes[0]
            if skipping is not None:
                for r0, r1, parts in skipping:
                    cells = Cells(rows=(g1 - g0) * (r1 - r0), row_cells=ow, image_rows=r1 - r0,
                                  x_row=stride_rows * row_elems, x_cell=stride_cols * c,
                                  x_image=x_image, y_row=y_row, y_cell=y_cell, y_image=y_image)
                    for call, weights, offsets, sums in parts:
                        call.drive(source + r0 * stride_rows * row_elems * itemsize, weights,
                                   target + r0 * y_row * itemsize + call.first_channel_bytes,
                                   offsets, *cells, *sums, *call.batch)
                return
            cells = Cells(rows=(g1 - g0) * oh, row_cells=ow, image_rows=oh,
                          x_row=stride_rows * row_elems, x_cell=stride_cols * c,
                          x_image=x_image, y_row=y_row, y_cell=y_cell, y_image=y_image)
            for call in calls:
                call.drive(source, call.weights, target + call.first_channel_bytes,
                           call.offsets, *cells, *call.sums, *call.batch)

        return [_reading(functools.partial(job_images, g0, min(n, g0 + images)),
                         g0, min(n, g0 + images) - g0, 0, needed)
                for g0 in range(0, n, images)]

    rows_fit = max(1, (SLAB_BYTES // (row_elems * itemsize) - reach) // stride_rows + 1)
    rows = max(1, min(oh, rows_fit, rows_share))
    edges = _row_edges(oh, -(-oh // rows), n, workers)

    def job(image: int, o0: int, o1: int, _keep: Any = panels) -> None:
        first = o0 * stride_rows - top  # input row of the chunk's first padded row
        if unpadded:
            source = x_base + image * x_bytes[0] + first * x_bytes[1]
        else:
            slab = workspace("register_tiles", ((o1 - 1 - o0) * stride_rows + reach, padded_w,
                                                c), dtype)
            _fill(slab, x[image], first, left)
            source = slab.ctypes.data
        target = y_base + image * y_bytes[0] + o0 * y_bytes[1]
        if skipping is not None:  # (x read where it lies: padded beforehand)
            for r0, r1, parts in skipping:
                lo, hi = max(o0, r0), min(o1, r1)
                if lo >= hi:
                    continue
                cells = Cells(rows=hi - lo, row_cells=ow, image_rows=hi - lo,
                              x_row=stride_rows * row_elems, x_cell=stride_cols * c, x_image=0,
                              y_row=y_row, y_cell=y_cell, y_image=0)
                for call, weights, offsets, sums in parts:
                    call.drive(source + (lo - o0) * stride_rows * x_bytes[1], weights,
                               target + (lo - o0) * y_bytes[1] + call.first_channel_bytes,
                               offsets, *cells, *sums, *call.batch)
            return
        cells = Cells(rows=o1 - o0, row_cells=ow, image_rows=o1 - o0,
                      x_row=stride_rows * row_elems, x_cell=stride_cols * c, x_image=0,
                      y_row=y_row, y_cell=y_cell, y_image=0)
        for call in calls:
            call.drive(source, call.weights, target + call.first_channel_bytes, call.offsets,
                       *cells, *call.sums, *call.batch)

    return [_reading(functools.partial(job, image, o0, o1), image, 1, o0 * stride_rows,
                     (o1 - 1 - o0) * stride_rows + reach)
            for image in range(n) for o0, o1 in zip(edges, edges[1:])]


def _reading(job: functools.partial[None], image: int, images: int, row0: int, rows: int,
             whole: bool = False) -> functools.partial[None]:
    """``job`` marked with the input it reads, for :func:`_own_slabs`: ``images`` images
    from ``image``, ``rows`` padded rows from ``row0``; ``whole``: a share of the output
    channels that reads all of it."""
    job.reads = (image, images, row0, rows, whole)  # type: ignore[attr-defined]
    return job


def split_blocks(kernel_bytes: int, input_bytes: int) -> bool:
    """Whether several workers share a layer's output channels (column blocks) rather
    than only its cells: when its kernel takes more bytes than its (padded) input (each
    chunk of cells reads every panel: 4 chunks of one 4-cell row for 3×3 512 -> 512 on
    one 4² image read its 9.4 MB kernel 4 times, a worker's share of the blocks reads
    half of it once; the input is padded once for all the chunks).

    >>> split_blocks(9_437_184, 73_728), split_blocks(147_456, 230_400)
    (True, False)
    """
    return kernel_bytes >= input_bytes


def _block_jobs(x: np.ndarray, pads: list[tuple[int, int]], y: np.ndarray,
                panels: list[Panel], strides: tuple[int, int], needed: int,
                workers: int, drives: Callable[[Any], Any] | None = None,
                skipping: list[tuple[int, int, list[tuple[_Call, int, int, Sums]]]] | None = None
                ) -> list[Callable[[], None]]:
    """Jobs of :func:`_jobs` cut over the output channels (:func:`block_job_count`), each a range of the column blocks (of every run, counted one run after
    another) for every image, cut inside a block along its output rows where whole
    blocks would not share evenly (:func:`balanced_pieces`); each runs every step of
    the sum on its pieces in order. A padded input is copied once, here (the kernel
    outweighs it), and read by every job."""
    dtype = x.dtype
    itemsize = dtype.itemsize
    n, h, w, c = x.shape
    _, oh, ow, _ = y.shape
    (top, _), (left, right) = pads
    stride_rows, stride_cols = strides
    padded_w = w + left + right
    unpadded = all(lo == hi == 0 for lo, hi in pads)
    y_image, y_row, y_cell = (st // itemsize for st in y.strides[:3])
    calls = _calls(panels, drives)
    # each call's first global block and its columns: a run's blocks come after the
    # previous run's (calls of later steps repeat the runs, in the same order)
    starts: dict[int, int] = {}
    total = 0
    first_blocks = []
    for panel in panels:
        key = panel.first_channel_bytes
        if key not in starts:
            starts[key] = total
            total += panel.sums.blocks
        first_blocks.append(starts[key])
    columns = [panel.kernels.vectors * panel.kernels.width for panel in panels]
    if unpadded:
        source, x_image = x, h * w * c
    else:
        source = aligned_empty((n, needed, padded_w, c), dtype)
        _fill(source, x, -top, left)
        x_image = needed * padded_w * c
    cells = Cells(rows=n * oh, row_cells=ow, image_rows=oh, x_row=stride_rows * padded_w * c,
                  x_cell=stride_cols * c, x_image=x_image, y_row=y_row, y_cell=y_cell,
                  y_image=y_image)
    x_base, y_base = source.ctypes.data, y.ctypes.data
    steps = [(call, first, cols) for call, first, cols in zip(calls, first_blocks, columns)]
    first_of = {call.first_channel_bytes: (first, cols) for call, first, cols in steps}
    # each global block's output channels (a run's blocks after the previous run's)
    block_columns = [0] * total
    for call, first, cols in steps:
        block_columns[first:first + call.sums.blocks] = [cols] * call.sums.blocks
    row_bytes = stride_rows * padded_w * c * itemsize

    def piece(b0: int, b1: int, q0: int, q1: int) -> None:
        """Blocks ``b0:b1`` of output rows ``q0:q1`` of every image, every step in order."""
        if skipping is not None:
            for r0, r1, parts in skipping:
                lo, hi = max(q0, r0), min(q1, r1)
                if lo >= hi:
                    continue
                part_cells = cells._replace(rows=n * (hi - lo), image_rows=hi - lo)
                for call, weights, offsets, sums in parts:
                    first, cols = first_of[call.first_channel_bytes]
                    blo, bhi = max(b0, first), min(b1, first + sums.blocks)
                    if blo >= bhi:
                        continue
                    call.drive(x_base + lo * row_bytes,
                               weights + (blo - first) * sums.block_stride * itemsize,
                               y_base + lo * y_row * itemsize + call.first_channel_bytes
                               + (blo - first) * cols * itemsize,
                               offsets, *part_cells, *sums._replace(blocks=bhi - blo),
                               *call.batch)
            return
        part_cells = (cells if (q0, q1) == (0, oh)
                      else cells._replace(rows=n * (q1 - q0), image_rows=q1 - q0))
        for call, first, cols in steps:
            lo, hi = max(b0, first), min(b1, first + call.sums.blocks)
            if lo >= hi:
                continue
            sums = call.sums._replace(blocks=hi - lo)
            call.drive(x_base + q0 * row_bytes,
                       call.weights + (lo - first) * sums.block_stride * itemsize,
                       y_base + q0 * y_row * itemsize + call.first_channel_bytes
                       + (lo - first) * cols * itemsize,
                       call.offsets, *part_cells, *sums, *call.batch)

    def job(pieces: tuple[tuple[int, int, int, int], ...],
            _keep: Any = (panels, source)) -> None:
        for b0, b1, q0, q1 in pieces:
            piece(b0, b1, q0, q1)

    return [_reading(functools.partial(job, pieces), 0, n, 0, needed, True)
            for pieces in balanced_pieces(block_columns, oh, block_job_count(total, workers))]


def block_job_count(blocks: int, workers: int) -> int:
    """Jobs of :func:`_block_jobs` for ``blocks`` column blocks on ``workers`` threads: as
    many per worker, up to :data:`JOBS_PER_WORKER` (each at least a whole block where the
    blocks allow; later jobs balance a thread that started late), at least one each (a
    job's share then ends inside a block, :func:`balanced_pieces`). Whole blocks only
    (at most 8 jobs, as many as blocks) gave one of two threads 3 of 5 blocks or 2 of 3.
    Two threads, prepacked, forced register_tiles, 4 alternating processes each, ms:
    1×1 2048 -> 192 on one 7² image (3 blocks) 0.305 -> 0.238, 3×3 512 -> 320 on 7²
    (5 blocks) 0.91 -> 0.76, 1×1 960 -> 160 on 7² 0.135 -> 0.123.

    >>> block_job_count(16, 2), block_job_count(5, 2), block_job_count(3, 2), block_job_count(1, 2)
    (8, 4, 2, 2)
    """
    return workers * max(1, min(JOBS_PER_WORKER, blocks // workers))


def balanced_pieces(block_columns: Sequence[int], rows: int, count: int
                    ) -> list[tuple[tuple[int, int, int, int], ...]]:
    """Cut column blocks (``block_columns[b]`` output channels each) of ``rows`` output
    rows into at most ``count`` jobs of about as many channels × rows each, in order: a
    job is ``(first block, stop block, first row, stop row)`` pieces; a job's edge falls
    on a whole block where it can, else on a whole row inside one. Whole blocks alone
    gave one of two workers 3 of 5 blocks (EfficientNet-B0's 1×1 1152 -> 320 on one 4²
    image: 4 vectors a block) or 2 of 3.

    >>> balanced_pieces([64] * 4, 4, 2)
    [((0, 2, 0, 4),), ((2, 4, 0, 4),)]
    >>> balanced_pieces([64] * 5, 4, 2)
    [((0, 2, 0, 4), (2, 3, 0, 2)), ((2, 3, 2, 4), (3, 5, 0, 4))]
    >>> balanced_pieces([64, 64, 32], 1, 4)
    [((0, 1, 0, 1),), ((1, 2, 0, 1),), ((2, 3, 0, 1),)]
    """
    starts = [0]
    for columns in block_columns:
        starts.append(starts[-1] + columns * rows)
    total = starts[-1]
    points: list[tuple[int, int]] = []
    block = 0
    for j in range(count + 1):
        edge = total * j // count
        while block < len(block_columns) and edge >= starts[block + 1]:
            block += 1
        if block == len(block_columns):
            points.append((block, 0))
            continue
        row = round((edge - starts[block]) / (block_columns[block] or 1))
        points.append((block + 1, 0) if row >= rows else (block, row))
    jobs = []
    for (b0, r0), (b1, r1) in zip(points, points[1:]):
        if (b0, r0) >= (b1, r1):
            continue
        pieces = []
        if b0 == b1:
            pieces.append((b0, b0 + 1, r0, r1))
        else:
            if r0 > 0:
                pieces.append((b0, b0 + 1, r0, rows))
                b0 += 1
            if b1 > b0:
                pieces.append((b0, b1, 0, rows))
            if r1 > 0:
                pieces.append((b1, b1 + 1, 0, r1))
        jobs.append(tuple(pieces))
    return jobs


#: :func:`_skip_zero_rows` cuts the calls where the register blocks then read at most this
#: share of the kernel's panels. Measured on one core (CPU time, busy machine, float32,
#: 3×3 512 -> 512 with padding 1, skipped against not): 16×4² 11.5 against 12.4 ms,
#: 16×7² stride 2 12.2 against 12.8; one 7² image (0.96 of the panels) 4.2-4.3 against
#: 3.5-3.7.
SKIP_SHARE = 0.9


def _skip_zero_rows(calls: list[_Call], real_rows: tuple[int, int],
                    kernel_shape: tuple[int, ...], channels: int, out_size: tuple[int, int],
                    strides: tuple[int, int], dilation_rows: int, itemsize: int,
                    images: int = 1, block_cells: int = 1
                    ) -> list[tuple[int, int, list[tuple[_Call, int, int, Sums]]]] | None:
    """The calls of a kernel read in place, per group of output rows ``[r0, r1)`` reading
    the same kernel rows ``[a0, a1)`` of the input (:func:`_kernel_row_groups`; the others
    lie on zero padding): each call cut to those kernel rows' steps, as ``(call, weights,
    offsets, sums)`` (the first step of a column block in a group overwrites the
    output). Frameworks skip those products too: on small images they are many (3×3
    with padding 1 on 4² output rows: a sixth of the sum). ``None`` where every row
    reads every kernel row, or a row reads none (its zeros would need writing), or
    where the groups' register blocks of ``block_cells`` cells (each reading its
    kernel rows' panels) would read at least :data:`SKIP_SHARE` of the panels one run
    over all ``images`` reads (a batch-1 4² image: blocks of 4, 6 + 2 and 4 cells
    instead of 6, 6 and 4).

    >>> _skip_zero_rows([], (1, 4), (3, 3, 8, 16), 8, (4, 4), (1, 1), 1, 4, 1, 6) is None
    True
    """
    first_real, real = real_rows
    kh, kw = kernel_shape[:2]
    oh, ow = out_size
    groups = _kernel_row_groups(real, kh, strides[0], dilation_rows, first_real, oh)
    if len(groups) == 1 or any(a0 == a1 for _, _, a0, a1 in groups):
        return None
    passes = sum(-(-images * (r1 - r0) * ow // block_cells) * (a1 - a0) / kh
                 for r0, r1, a0, a1 in groups)
    if passes > SKIP_SHARE * -(-images * oh * ow // block_cells):
        return None
    row_steps = kw * channels  # a kernel row's steps (tap, input channel), one after another
    grouped = []
    for r0, r1, a0, a1 in groups:
        written = set()
        parts = []
        for call in calls:
            s0 = call.first_step
            lo, hi = max(s0, a0 * row_steps), min(s0 + call.sums.steps, a1 * row_steps)
            if lo >= hi:
                continue
            sums = call.sums._replace(steps=hi - lo,
                                      accumulate=int(call.first_channel_bytes in written))
            written.add(call.first_channel_bytes)
            parts.append((call, call.weights + (lo - s0) * call.sums.step_stride * itemsize,
                          call.offsets + (lo - s0) * 8, sums))
        grouped.append((r0, r1, parts))
    return grouped


def _row_edges(rows: int, count: int, images: int, workers: int) -> list[int]:
    """Where ``count`` chunks of ``rows`` output rows (of each of ``images`` images)
    start, and the end: more chunks where needed for their total to be a multiple of
    the workers (at most one per row), sizes differing by one at most (28 rows in 7
    chunks of 4 on two threads ran 16 rows on one and 12 on the other; as 8 chunks
    of 3 or 4, 14 on each).

    >>> _row_edges(28, 7, 1, 2), _row_edges(7, 2, 1, 2), _row_edges(5, 5, 1, 2)
    ([0, 3, 7, 10, 14, 17, 21, 24, 28], [0, 3, 7], [0, 1, 2, 3, 4, 5])
    """
    while (images * count) % workers and count < rows:
        count += 1
    return [rows * i // count for i in range(count + 1)]


def _fill(slab: np.ndarray, image: np.ndarray, first: int, left: int) -> None:
    """Rows ``first …`` of ``image`` zero-padded by ``left`` columns (then zeros) into
    ``slab``; both may have a leading axis of images (filled in one go)."""
    count, padded_w = slab.shape[-3:-1]
    h, w = image.shape[-3:-1]
    r0, r1 = max(0, first), min(h, first + count)
    c0, c1 = max(0, -left), min(w, padded_w - left)
    d0, d1 = r0 - first, r1 - first
    if r1 <= r0 or c1 <= c0:
        slab[...] = 0
        return
    # (each assignment costs ~1 µs even when empty: only the padding there is)
    if d0 > 0:
        slab[..., :d0, :, :] = 0
    if d1 < count:
        slab[..., d1:, :, :] = 0
    if c0 + left > 0:
        slab[..., d0:d1, : c0 + left, :] = 0
    if c1 + left < padded_w:
        slab[..., d0:d1, c1 + left:, :] = 0
    slab[..., d0:d1, c0 + left: c1 + left, :] = image[..., r0:r1, c0:c1, :]


@dataclass(frozen=True)
class PackedProducts:
    """Right-hand sides ``u`` (B, K, F) of batched products, ready for the kernels."""

    u: np.ndarray  # C-contiguous, 64-byte aligned
    runs: tuple[tuple[_llvm.Kernels, int, int, int], ...]  # first column, blocks, columns
    offsets: np.ndarray


def pack_products(u: np.ndarray) -> PackedProducts | None:
    """Prepare ``u`` (B, K, F) for :func:`packed_matmul` (an aligned copy if it is not);
    ``None`` where the compiled kernels cannot run it (no kernel for its dtype here,
    or ``F`` not a whole number of vectors).

    >>> u = np.ones((2, 3, 16), np.float32)
    >>> packed = pack_products(u)
    >>> packed is None or packed.u.shape == (2, 3, 16)
    True
    """
    if u.ndim != 3 or not _llvm.available(u.dtype):
        return None
    batch, k, f = u.shape
    width = _llvm.vector_width(u.dtype)
    if f % width or k == 0 or f == 0:
        return None
    if not u.flags.c_contiguous or u.ctypes.data % ALIGN:
        u = aligned_copy(u)
    runs = []
    for vectors, start, blocks in _plan_blocks(f, width):
        kernels = _llvm.compiled(u.dtype, vectors)
        assert kernels is not None
        runs.append((kernels, start, blocks, vectors * width))
    return PackedProducts(u, tuple(runs), np.arange(k, dtype=np.int64))


def packed_matmul(v: np.ndarray, packed: PackedProducts, out: np.ndarray) -> np.ndarray:
    """``out[b] = v[b] @ u[b]`` for ``u`` prepared by :func:`pack_products` (one thread).

    ``v`` (B, T, K) and ``out`` (B, T, F) must be C-contiguous of ``u``'s dtype.

    >>> u = np.arange(2 * 3 * 16, dtype=np.float32).reshape(2, 3, 16)
    >>> v = np.ones((2, 5, 3), np.float32)
    >>> packed = pack_products(u)
    >>> out = np.empty((2, 5, 16), np.float32)
    >>> packed is None or bool(np.array_equal(packed_matmul(v, packed, out), v @ u))
    True
    """
    batch, k, f = packed.u.shape
    if (v.shape[0] != batch or v.shape[2] != k or out.shape != (batch, v.shape[1], f)
            or v.dtype != out.dtype or not v.flags.c_contiguous
            or not out.flags.c_contiguous):
        raise ValueError(f"packed_matmul needs v (B, T, K) and out (B, T, F) C-contiguous for "
                         f"u {packed.u.shape}; got v {v.shape}, out {out.shape}")
    cells = v.shape[1]
    if cells == 0:
        return out
    itemsize = out.dtype.itemsize
    # each product is one row of ``cells`` cells; step i of a cell's sum reads v's
    # column i (offsets 0 … K-1) and u's row i (F apart); block b of columns starts
    # cols·b elements into each row of u
    row = Cells(rows=1, row_cells=cells, image_rows=1, x_row=0, x_cell=k, x_image=0,
                y_row=0, y_cell=f, y_image=0)
    products = Batch(problems=batch, x_stride=cells * k, w_stride=k * f, y_stride=cells * f)
    for kernels, start, blocks, cols in packed.runs:
        kernels.run(v.ctypes.data, packed.u.ctypes.data + start * itemsize,
                    out.ctypes.data + start * itemsize, packed.offsets.ctypes.data, row,
                    Sums(blocks=blocks, steps=k, step_stride=f, block_stride=cols,
                         accumulate=0), products)
    return out


def applies(problem: ConvProblem) -> bool:
    """1-D or 2-D, any groups, float32/float64, on a machine with the compiled kernels."""
    return problem.rank in (1, 2) and _llvm.available(problem.dtype)


def cost(problem: ConvProblem) -> float:
    """Estimated cost in :mod:`.flat_rows` units (``0.7 × flops`` there).

    Measured against the other algorithms on 22 "same" layers (two cores,
    float32, ``time × 0.7 / flat_rows' time``): 0.22–0.56 for kernels above
    1×1 at stride 1; 0.59–0.66 at stride 2 with 24–64 channels; 0.30–0.40
    with 3 input channels (the ResNet stem 0.34); 1×1 kernels (a plain
    product, where BLAS is good) 1.33 for 64 -> 64, 0.94–1.15 for 4096 to
    16384 channel pairs, 0.66 for 256 -> 256 (the benchmark's L6: 2.82 against
    2.99 ms); 0.75 for 512 channels on 7² images with 4 per batch (the kernel
    panels are re-read for every chunk of few cells). Against Winograd: 0.9× its time with 32 channels on 28², 1.3×
    with 64 on 56² (the benchmark's L1).

    So: 0.5 per FLOP (:data:`STRIDED_PER_FLOP` when strided, 0.42 with at most 4 input
    channels per group; one group of at most 4: :data:`THIN_PER_FLOP`, :data:`THIN_STRIDED`),
    with the output channels rounded up to whole vectors, 1.3 times that for
    one vector of them (16 channels; the kernel then waits on loads; not the thin
    kernels, whose blocks then hold 14 cells), times
    ``1 + FEW_CELLS / cells`` for chunks of few cells (:data:`FEW_CELLS`; grouped:
    ``1 + 16 / cells``); 1×1 kernels ``1.3 - 0.16·log2(C·F / 4096)`` (at least 0.6),
    few cells of the large ones (0.6) counted only where chunks cut a layer's cells
    (a product of few rows is
    slower still in BLAS: one 4² image, 512 -> 2048 and 2048 -> 512, 0.41-0.43 of
    flat_rows' cost; 256 -> 2048 stride 2 on 2², 0.29);
    times :data:`NARROW_VECTORS` (thin: :data:`THIN_NARROW`) for vectors narrower than the
    CPU's (BLAS's);
    plus :data:`PACK_PER_ELEMENT` per kernel element where the kernel is packed (its
    outputs are not whole vectors), :data:`THIN_CALL` for a thin layer's set-up, and
    with several workers :data:`PANEL_REREAD` for
    the panels each more chunk of cells reads (none where they share the output
    channels instead, :func:`split_blocks`).
    """
    width = max(1, _llvm.vector_width(problem.dtype))
    groups = problem.groups
    merge = group_merge(groups, problem.out_channels // groups, width) if groups > 1 else 1
    # per (merged) group: its outputs padded to whole vectors, and the block-diagonal
    # kernel's zeros
    f = problem.out_channels // groups * merge
    padded = -(-f // width) * width / max(1, f) * merge
    group_in = problem.in_channels // groups * merge
    taps = math.prod(problem.kernel_size)
    if taps == 1:
        # a plain product: BLAS wins on small ones, these kernels on large ones
        pairs = group_in * f
        per_flop = max(0.6, 1.3 - 0.16 * math.log2(max(1.0, pairs / 4096)))
        if wide_pointwise(problem):
            per_flop = min(per_flop, WIDE_POINTWISE_PER_FLOP)
    elif groups == 1 and thin(group_in):
        # the thin-input kernels (one vector of outputs is no slower there: 14 cells)
        per_flop = THIN_STRIDED if any(s > 1 for s in problem.strides) else THIN_PER_FLOP
    elif group_in <= 4:
        per_flop = 0.42
    elif any(s > 1 for s in problem.strides):
        per_flop = STRIDED_PER_FLOP
    else:
        per_flop = 0.5
    large_product = taps == 1 and per_flop == 0.6  # at least ~85 000 channel pairs
    workers = worker_count()
    if (workers > 1 and problem.batch > 1 and groups == 1 and taps > 1 and group_in > 4
            and not thin(group_in) and windows_apart(problem)):
        per_flop = max(per_flop, APART_PER_FLOP)
    if -(-f // width) == 1 and not (groups == 1 and thin(group_in)):
        per_flop *= 1.3  # one vector of channels: a load per 8 multiply-adds, not 24
    if _llvm.narrower_than_host():
        per_flop *= THIN_NARROW if groups == 1 and thin(group_in) else NARROW_VECTORS
    if groups > 1:
        per_flop *= GROUPED_SCALE
        return problem.flops * per_flop * padded * (1 + 16 / _chunk_cells(problem, workers)[1])
    packing = 0.0 if f % width == 0 else (
        PACK_PER_ELEMENT * math.prod(problem.kernel_shape))
    if groups == 1 and thin(group_in):
        packing += THIN_CALL  # (the set-up that a thin layer's short sums do not hide)
    jobs, cells = _chunk_cells(problem, 1)
    panel_bytes = math.prod(problem.kernel_shape) * problem.dtype.itemsize * padded
    if workers > 1 and _splits_blocks(problem, workers):
        # the workers share the column blocks: a chunk holds every cell and reads only
        # its own panels
        few = 1.0 if large_product else 1 + FEW_CELLS / problem.batch / math.prod(
            problem.out_size)
        return problem.flops * per_flop * padded * few + packing
    if taps == 1:
        # a large product of few rows: BLAS runs it worse than these kernels, so few
        # cells count only where chunks cut them
        chunk = _chunk_cells(problem, workers)[1]
        whole = chunk >= problem.batch * math.prod(problem.out_size)
        few = 1.0 if large_product and whole else 1 + FEW_CELLS / chunk
        return problem.flops * per_flop * padded * few + packing
    # the chunks of one worker; more workers cut more, and each reads the kernel's
    # panels again (from the shared cache or memory)
    more = _chunk_cells(problem, workers)[0] - jobs
    return problem.flops * per_flop * padded * (1 + FEW_CELLS / cells) + (
        PANEL_REREAD * max(0, more) * panel_bytes) + packing


#: :func:`cost` per FLOP of a large float32 1×1 layer (:func:`wide_pointwise`). Quiet
#: machine, two cores, ``OPENBLAS_THREAD_TIMEOUT=22``, register_tiles against
#: flat_rows (cost 0.7 per FLOP), two runs: 16×28² 256 -> 64 1.95-2.06 against
#: 2.59-2.89 ms, 256 -> 128 3.76-3.81 against 4.71-4.72, 128 -> 256 3.82-3.84 against
#: 4.44-4.55, 64 -> 64 0.54 against 0.62-0.63; 16×56² 256 -> 64 8.5-8.7 against
#: 11.3-11.4, 64 -> 64 1.98-2.03 against 2.76-2.87; larger channel counts alike
#: (16×14² 256 -> 1024 7.45 against 8.3-8.5).
WIDE_POINTWISE_PER_FLOP = 0.6

#: Output bytes from which :func:`wide_pointwise` leaves a 1×1 layer to BLAS: those the
#: kept output buffers (:mod:`._outputs`) do not hold. Before them an output of 32 MiB or
#: more was mapped afresh at each call, its pages zeroed by the system on first write:
#: 16×56² 64 -> 256 (51 MB out) took 19.8-22.8 ms by register_tiles, 12.0 by flat_rows.
#: With them (busy machine, two threads, CPU time of both, register_tiles against
#: flat_rows): that layer 17.6-17.8 ms against 27-32, 16×4096 1-D 64 -> 256 (WaveNet,
#: 67 MB) 22.2-23.5 against 34.8-50.8, 16×112² 64 -> 128 38-39 against 70-129, 16×28²
#: 128 -> 1024 32.2-32.7 against 44.5-50.6, 8×56² 128 -> 512 32.8-35.1 against 43-84.
WIDE_POINTWISE_OUTPUT_BYTES = _outputs.KEEP_BYTES


def wide_pointwise(problem: ConvProblem) -> bool:
    """Whether a 1×1 layer is one the register kernels run faster than BLAS: one group,
    two images or more (one image of 4096 cells, 1-D 64 -> 256: 0.80 against flat_rows'
    0.70 ms), float32, the native vectors, at least 1e8 FLOPs, at least two whole vectors of
    outputs, an output of at most :data:`WIDE_POINTWISE_OUTPUT_BYTES` (see
    :data:`WIDE_POINTWISE_PER_FLOP`).

    >>> from convarith.engine.dispatch import ConvProblem
    >>> p = ConvProblem((16, 28, 28, 256), (1, 1, 256, 64), (1, 1), (1, 1), 1, (28, 28),
    ...                 np.dtype("float32"))
    >>> wide_pointwise(p) == (_llvm.vector_width(p.dtype) in (8, 16)
    ...                       and not _llvm.narrower_than_host())
    True
    """
    width = _llvm.vector_width(problem.dtype)
    f = problem.out_channels
    out_bytes = problem.batch * math.prod(problem.out_size) * f * problem.dtype.itemsize
    return (problem.groups == 1 and problem.batch >= 2 and problem.dtype == np.float32
            and width > 0
            and not _llvm.narrower_than_host() and problem.flops >= 1e8
            and f % width == 0 and f >= 2 * width and all(s == 1 for s in problem.strides)
            and out_bytes <= WIDE_POINTWISE_OUTPUT_BYTES)


#: :func:`cost` per FLOP, on several workers and images, of a one-group layer whose
#: windows do not overlap (:func:`windows_apart`: the input gradient of a 2×2 stride-2
#: up-sampling), above flat_rows' 0.7: one thread runs it as fast as flat_rows (U-Net's
#: four at batch 1 and 16, 0.95-1.10 of its CPU time) but two did not share a batch of
#: 16 (busy machine, CPU time of each thread: 64 -> 128 on 112² 30 and 10 ms against
#: flat_rows' 21 and 19, 128 -> 256 on 56² 26/10 against 19/19, 512 -> 1024 on 14²
#: 30/10 against 21/19; quiet machine, 64 -> 128: 46 ms against one thread's 40); one
#: image split as well as flat_rows' (1024 -> 512 on 14²: 2.8-3.0/1.0-1.3 ms against
#: 3.1/1.4-1.5).
APART_PER_FLOP = 0.75


def windows_apart(problem: ConvProblem) -> bool:
    """Whether no input cell is read by two output cells (the dilated kernel no wider
    than the stride on every axis).

    >>> f32 = np.dtype("float32")
    >>> windows_apart(ConvProblem((1, 8, 8, 4), (2, 2, 4, 4), (2, 2), (1, 1), 1, (4, 4), f32))
    True
    >>> windows_apart(ConvProblem((1, 9, 9, 4), (3, 3, 4, 4), (2, 2), (1, 1), 1, (4, 4), f32))
    False
    """
    return all(effective_kernel(k, d) <= s for k, d, s in zip(
        problem.kernel_size, problem.dilation, problem.strides))


#: :func:`cost` per FLOP of strided kernels above 1×1 (many input channels). Measured on
#: one core (CPU time, busy machine, against flat_rows' cost there): 3×3 stride 2
#: 256 -> 512 on 16×4² 0.53, on 2×28² (float64) 0.57; 128 -> 128 on 2×7² (float64)
#: 0.56 and 1024 -> 1024 on 1×7² 0.52 (their few cells taken out); 512 -> 512 on 16×7²
#: 12.5 ms against flat_rows' 14.8.
STRIDED_PER_FLOP = 0.55

#: :func:`cost`'s ``1 + FEW_CELLS / cells`` for a chunk of few cells (register blocks
#: cut short, each reading the kernel's panels). Measured on one core (CPU time, busy
#: machine, float32 unless said, register_tiles against flat_rows' cost ``0.95 ×
#: FLOPs`` there): 3×3 on one 2² image, 128 -> 256 0.70 and 1024 -> 1024 0.78 of
#: flat_rows' time (against 0.5 at many cells: 4 cells, 1 + 1.6 to 2.2 / cells); 2×2²
#: 256 -> 512 0.59 (8 cells); one 4² image 128 -> 256 in float64 0.74 (16 cells).
FEW_CELLS = 3

#: :func:`cost`'s factor where the kernels' vectors are narrower than the CPU's, whose BLAS
#: (flat_rows, offset_gemm) runs the wider ones: the AVX2 kernels on this AVX-512 machine.
#: Measured on one core (CPU time, busy machine, time against flat_rows'; native kernels
#: 0.7-0.9 of it on the same layers): 2×4² 512 -> 512 3×3 1.6, 1024 -> 1024 2.4, 1×2²
#: 1024 -> 1024 1.6, 16×14² 1×1 256 -> 256 1.2, 1×7² 3×3 stride 2 512 -> 1024 1.9.
NARROW_VECTORS = 2.0

#: :func:`cost` units per kernel element packed into panels at each call (kernels whose
#: outputs are not whole vectors; the others are read where they lie): 3×3 512 -> 512
#: took 1.36 ms to pack on one core, ~95 million units of that core's time.
PACK_PER_ELEMENT = 40.0


def _splits_blocks(problem: ConvProblem, workers: int) -> bool:
    """Whether :func:`_jobs` cuts ``problem`` over its output channels for ``workers``
    threads (more than one; :func:`split_blocks`, with the padded input's whole rows)."""
    if workers < 2:
        return False
    width = max(1, _llvm.vector_width(problem.dtype))
    c, f = problem.in_channels, problem.out_channels
    if problem.groups != 1 or thin(c):
        return False
    kernel_bytes = math.prod(problem.kernel_shape[:-1]) * -(-f // width) * width * (
        problem.dtype.itemsize)
    input_bytes = math.prod(problem.input_shape) * problem.dtype.itemsize
    return split_blocks(kernel_bytes, input_bytes)


#: :func:`cost` units per byte of kernel panels read again by each chunk that more
#: workers add. Fitted to two-core wall times (quiet machine): 512 -> 512 on 4×7²
#: (0.75 × flat_rows' cost) and 3×3 stride 2 on 16×7² (13.5 ms on one thread, 8.1 on
#: two: 20 % more core time), where ``1 + 16 / cells`` of the two-worker chunks
#: counted 41 %; the chunks of one 14² image with 256 -> 512 channels took 7 % more
#: CPU time (one thread running them in turn). Lowered from 2.9 when 3×3 stride 2
#: 256 -> 256 on 16×14² went to flat_rows on a tie (costs 5.59e8 against 5.58e8) and
#: ran 5.40-5.43 ms there against 4.66-4.71 by these kernels (quiet, two cores,
#: ``OPENBLAS_THREAD_TIMEOUT=22``); of 400 3×3 and 1×1 layers (batch 1-16, 4²-56²,
#: 32-512 channels) two more change choice, both to these kernels, measured as fast or
#: faster (128 -> 256 stride 2 on 16×14²: 2.90-2.96 against 2.98-3.06 ms).
PANEL_REREAD = 1.5


def _chunk_cells(problem: ConvProblem, workers: int) -> tuple[int, int]:
    """``(chunks, output cells per chunk)`` as :func:`_jobs` cuts ``problem`` for
    ``workers`` threads (rows of one image, or whole images; the slab limit left out)."""
    out = problem.out_size
    image_rows = math.prod(out[:-1])
    total = image_rows * problem.batch
    share = max(1, math.ceil(total / _job_count(workers, problem.flops)))
    rows = share // image_rows * image_rows if share >= 2 * image_rows else min(image_rows, share)
    return -(-total // rows), rows * out[-1]


#: Grouped problems' cost is scaled by this to stay comparable with ``offset_gemm``,
#: whose cost (its FLOPs) holds for one group, while grouped it makes ``G`` small
#: products per tap. Measured on one core (CPU time, float32, this module against
#: offset_gemm): 3×3 on 2×56²×128, 32 groups of 4 -> 4: 4.6× faster; 8×28²×256,
#: 64 groups: 6.8×; 2×28²×256, 32 groups of 8: 2.6×; 2×56²×128, 4 groups of 32:
#: 2.9×; 2×14²×1024, 32 groups of 32: 1.2×.
GROUPED_SCALE = 0.3


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
) -> np.ndarray:
    """The ``kind="transposed"`` contract by output phases sharing one padded input.

    Output cells ``o = q·S + r`` of phase ``r`` read input cell ``q + shift``
    through the taps of the flipped kernel with ``r + t·D - lo ≡ 0 (mod S)``
    (see :mod:`.phase`). Those taps are evenly spaced, so every phase is an
    ordinary stride-1 convolution of the input (dilated by ``D / gcd(S, D)``)
    that writes its cells straight to their interleaved places. A chunk (some
    images) pads its input once for all phases, each phase reading it from its
    own origin.
    """
    rank = len(strides)
    if groups < 1 or rank not in (1, 2):
        raise ValueError(f"register_tiles needs a 1-D or 2-D transposed convolution, got rank "
                         f"{rank}, groups={groups}")
    dtype = np.dtype(x.dtype)
    if not _llvm.available(dtype):
        raise ValueError(f"register_tiles has no compiled kernel for {dtype} on this machine")
    if rank == 1:
        y = transposed(x[:, None], kernel[None], (1, *strides), (1, *dilation), groups,
                       ((0, 0), *padding), (1, *out_size), threads=threads)
        return y[:, 0]
    x = np.ascontiguousarray(x)
    kernel = np.asarray(kernel, dtype)
    n, h, w, c = x.shape
    taps_size = kernel.shape[:2]
    group_out = kernel.shape[2]
    f = group_out * groups
    width = _llvm.vector_width(dtype)
    if groups > 1 and group_merge(groups, group_out, width) > 1 and not math.isfinite(
            magnitude(x)):
        # as in direct: merged groups would spread a non-finite value; each group alone
        group_in = c // groups
        return np.concatenate([transposed(
            np.ascontiguousarray(x[..., g * group_in:(g + 1) * group_in]),
            np.ascontiguousarray(kernel[..., g * group_in:(g + 1) * group_in]), strides,
            dilation, 1, padding, out_size, threads=threads) for g in range(groups)], axis=-1)
    if groups > 1:
        from .grouped_phases import transposed as grouped_transposed  # (it imports this)

        grouped = grouped_transposed(x, kernel, strides, dilation, groups, padding, out_size,
                                     threads=threads)
        if grouped is not None:
            return grouped
    # the direct kernel (*K, C/g, F), flipped: kernel (*K, F/g, C) with each group's
    # input and output channels swapped
    def flip() -> np.ndarray:
        from ..core import flip_swap  # (the engine's core imports the algorithms)

        return flip_swap(kernel, groups)

    out_size = list(out_size)
    fpad = _output_channels(f, groups, width)
    y = aligned_empty((n, *out_size, fpad), dtype)
    # per phase: its output cells, kernel taps, dilation, and the input window it reads
    # (first padded row and column, rows and columns)
    phases = []
    for phase in itertools.product(*(range(s) for s in strides)):
        counts = [-(-(o - r) // s) if o > r else 0 for o, r, s in zip(out_size, phase, strides)]
        if 0 in counts:
            continue
        view = y[:, phase[0]::strides[0], phase[1]::strides[1]]
        axes = [phase_taps(r, s, d, lo, k)
                for r, s, d, (lo, _), k in zip(phase, strides, dilation, padding, taps_size)]
        if any(not taps for taps in axes):
            view[...] = 0  # only inserted zeros reach this phase
            continue
        step = (dilation[0] // math.gcd(strides[0], dilation[0]),
                dilation[1] // math.gcd(strides[1], dilation[1]))
        # the taps of a phase are evenly spaced: a strided slice of the direct kernel
        part = tuple(slice(taps[0][0], taps[-1][0] + 1,
                           taps[1][0] - taps[0][0] if len(taps) > 1 else 1) for taps in axes)
        first = [taps[0][1] for taps in axes]  # input cell read by cell 0's first tap
        last = [q - 1 + taps[-1][1] for taps, q in zip(axes, counts)]
        phases.append((view, part, step, counts, first, last, len(axes[0]) * len(axes[1])))
    if not phases:
        return y if fpad == f else np.ascontiguousarray(y[..., :f])
    # one padded input for every phase: rows and columns from the lowest first cell
    # to the highest last one
    low = [min(ph[4][a] for ph in phases) for a in range(2)]
    high = [max(ph[5][a] for ph in phases) for a in range(2)]
    rows, cols = high[0] - low[0] + 1, high[1] - low[1] + 1
    row_elems = cols * c
    itemsize = dtype.itemsize
    runs = []
    flops = 0.0
    streams = tuple(y.nbytes >= STREAM_BYTES and _aligned(ph[0]) for ph in phases)

    def pack() -> tuple[list[list[Panel]], int]:
        direct_kernel = flip()
        made = [_panels(direct_kernel[ph[1]], ph[2], row_elems, stream, groups, c)
                for ph, stream in zip(phases, streams)]
        return made, sum(p.weights.nbytes + p.offsets.nbytes for one in made for p in one)

    # a prepacked grouped kernel's phase panels, made once (else the flipped kernel and
    # each phase's (merged) panels are copied at every call: one thread, 3×3 stride 2,
    # 32 groups of 16 on one 7² image 0.37 -> 0.21 ms, of 32 on 4² 1.10 -> 0.20)
    keep = prepacked.remembered(kernel, (
        "register_tiles_phases", tuple(strides), tuple(dilation), tuple(map(tuple, padding)),
        tuple(out_size), (h, w, c), streams), pack) if (
        groups > 1 and not kernel.flags.writeable) else None
    if keep is None:
        keep = pack()[0]  # (the calls below hold their addresses)
    for (view, _, _, counts, first, _, taps), panels in zip(phases, keep):
        origin = ((first[0] - low[0]) * row_elems + (first[1] - low[1]) * c) * itemsize
        strides_v = [st // itemsize for st in view.strides[:3]]
        runs.append((view.ctypes.data, _calls(panels), counts, origin, strides_v))
        flops += 2.0 * n * math.prod(counts) * taps * c // groups * f
    workers = threads if threads is not None else worker_count()
    image_bytes = rows * row_elems * itemsize
    images = max(1, min(-(-n // _job_count(workers)), SLAB_BYTES // image_bytes))

    def job(g0: int, g1: int, _keep: Any = keep) -> None:
        slab = workspace("register_tiles", (g1 - g0, rows, cols, c), dtype)
        # slab row i, column j hold input cell (low[0] + i, low[1] + j), zeros outside
        _fill(slab, x[g0:g1], low[0], -low[1])
        source = slab.ctypes.data
        for target, calls, counts, origin, (y_image, y_row, y_cell) in runs:
            target += g0 * y_image * itemsize
            cells = Cells(rows=(g1 - g0) * counts[0], row_cells=counts[1],
                          image_rows=counts[0], x_row=row_elems, x_cell=c,
                          x_image=rows * row_elems, y_row=y_row, y_cell=y_cell,
                          y_image=y_image)
            for call in calls:
                call.drive(source + origin, call.weights, target + call.first_channel_bytes,
                           call.offsets, *cells, *call.sums, *call.batch)

    _run([functools.partial(job, g0, min(n, g0 + images)) for g0 in range(0, n, images)],
         flops, threads)
    return y if fpad == f else np.ascontiguousarray(y[..., :f])


def applies_transposed(problem: ConvProblem) -> bool:
    """1-D or 2-D, a stride above 1, one group or groups of more than one input and
    output channel, on a machine with the compiled kernels."""
    groups = problem.groups
    grouped = groups == 1 or (problem.in_channels // groups > 1 and problem.kernel_shape[-2] > 1)
    return (problem.rank in (1, 2) and grouped
            and any(s > 1 for s in problem.strides) and _llvm.available(problem.dtype))


def cost_transposed(problem: ConvProblem) -> float:
    """:func:`cost` of the products that meet real input cells: every tap belongs to
    one phase per axis, so the phases hold ``∏K`` taps over ``⌈out / S⌉`` cells each.

    Measured against col2im and sub-pixel Winograd on 14 transposed layers (two
    cores, float32): within 0.8–1.2× of col2im's time per cost unit from 32
    channels; 4×4 stride 2, 64 -> 32 on 8×28² (the benchmark's L9) 1.94 ms
    against 2.04 (sub-pixel) and 2.22 (col2im). Plus the flipped, swapped copy of the
    kernel it makes at every call (once for a prepacked grouped kernel), charged as the grid way's
    (:func:`.dispatch.grid_kernel_cost`): 3×3 stride 2, 32 groups of 32 on 4² cells
    (ResNeXt's 1024 on 7², batch 1) took 1.0 ms, most of it that copy, against col2im's
    0.23.
    """
    strides = problem.strides
    taps = tuple(-(-k // s) for k, s in zip(problem.kernel_size, strides))
    cells = tuple(-(-o // s) for o, s in zip(problem.out_size, strides))
    groups = problem.groups
    one_phase = ConvProblem(problem.input_shape, (*taps, problem.in_channels // groups,
                                                  problem.kernel_shape[-2] * groups),
                            (1,) * problem.rank, problem.dilation, groups, cells,
                            problem.dtype)
    return (cost(one_phase) * math.prod(problem.kernel_size) / math.prod(taps)
            + grid_kernel_cost(problem))


def depthwise(
    xp: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_size: Sequence[int],
    *,
    padding: Sequence[tuple[int, int]] | None = None,
    threads: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Depthwise convolution (one input channel per group, multiplier 1) by the
    row kernels of :mod:`._llvm_depthwise`: tiles of neighbouring cells of a row, one
    vector of channels each, summed in registers while each input column is loaded
    once per kernel row. Cells whose window lies inside the input read it in place;
    the others (and all cells of a small input, or of one whose cells do not hold
    whole vectors of channels) read a zero-padded copy of their rows or columns.

    ``out``: a 2-D result is written there (``(N, *out_size, C)`` of ``xp``'s dtype,
    any strides between cells, channels contiguous; used when ``C`` fills whole
    vectors, else the result is copied into it) and returned.

    >>> x = np.ones((1, 6, 6, 3), np.float32)
    >>> k = np.ones((5, 5, 1, 3), np.float32)
    >>> y = depthwise(x, k, (1, 1), (1, 1), 3, (2, 2)) if _llvm.available() else np.full((1, 2, 2, 3), 25.0)
    >>> float(y[0, 1, 1, 2])
    25.0
    """
    rank = len(out_size)
    c = xp.shape[-1]
    if rank not in (1, 2) or groups != c or kernel.shape[-2:] != (1, c):
        raise ValueError(f"register_tiles_depthwise needs a 1-D or 2-D depthwise convolution "
                         f"with multiplier 1, got rank {rank}, groups={groups}, kernel "
                         f"{kernel.shape} for {c} channels")
    dtype = np.dtype(xp.dtype)
    if not _llvm.available(dtype):
        raise ValueError(f"register_tiles has no compiled kernel for {dtype} on this machine")
    if rank == 1:
        y = depthwise(xp[:, None], kernel[None], (1, *strides), (1, *dilation), groups,
                      (1, *out_size), threads=threads,
                      padding=None if padding is None else ((0, 0), *padding),
                      out=None if out is None else out[:, None])
        return y[:, 0]
    x = np.ascontiguousarray(xp)
    kernel = np.asarray(kernel, dtype)
    (top, bottom), (left, right) = ((0, 0), (0, 0)) if padding is None else [
        (int(lo), int(hi)) for lo, hi in padding]
    n, h, w, _ = x.shape
    kh, kw = kernel.shape[:2]
    oh, ow = (int(v) for v in out_size)
    stride_rows, stride_cols = (int(v) for v in strides)
    dilation_rows, dilation_cols = (int(v) for v in dilation)
    width = _llvm.vector_width(dtype)
    cpad = -(-c // width) * width
    if out is not None and (out.shape != (n, oh, ow, c) or out.dtype != dtype
                            or out.strides[-1] != dtype.itemsize
                            or any(st % dtype.itemsize for st in out.strides) or cpad != c):
        if out.shape != (n, oh, ow, c):
            raise ValueError(f"out has shape {out.shape}, expected {(n, oh, ow, c)}")
        out[...] = depthwise(x, kernel, strides, dilation, groups, out_size,
                             padding=padding, threads=threads)
        return out
    if n * oh * ow == 0 or c == 0:
        if out is not None:
            out[...] = 0
            return out
        return np.zeros((n, oh, ow, c), dtype)
    y = aligned_empty((n, oh, ow, cpad), dtype) if out is None else out
    padded_w = w + left + right
    weights = aligned_empty((kh * kw, cpad), dtype)
    weights[:, c:] = 0
    weights[:, :c] = kernel.reshape(kh * kw, c)
    reach = effective_kernel(kh, dilation_rows)
    y_image, y_row, y_cell = (st // dtype.itemsize for st in y.strides[:3])
    itemsize = dtype.itemsize
    # Cells whose window reads no padding column, when their cells hold whole vectors
    # of channels, read the input in place: a row of them whose window overhangs the
    # top or bottom skips the kernel rows that would read the padding. The cells of the
    # first and last columns read a zero-padded copy of those few columns.
    # (a small input is copied whole: one call of the kernels instead of five)
    lo, hi = inner_cells(w, effective_kernel(kw, dilation_cols), stride_cols, left, ow)
    in_place = (cpad == c and hi - lo >= DEPTHWISE_IN_PLACE_CELLS
                and x.nbytes >= DEPTHWISE_IN_PLACE_BYTES)
    row_groups = (_kernel_row_groups(h, kh, stride_rows, dilation_rows, top, oh) if in_place
                  else [])
    counts = {lo, hi - lo, ow - hi} if in_place else {ow}
    target = _llvm.vector_target()
    # an output past a core's cache is stored past it where each store fills whole cache
    # lines (y and its cells aligned; AVX2's half lines, stored one channel block after
    # another, are written back partially: 64 channels on 4 images of 56², 1.5 ms against
    # 0.6 without)
    vector_bytes = width * itemsize
    streaming = (n * oh * ow * cpad * itemsize >= STREAM_BYTES and vector_bytes % 64 == 0
                 and y.ctypes.data % vector_bytes == 0
                 and all(st % vector_bytes == 0 for st in y.strides[:3]))
    modules = {count: row_kernel(dtype, kernel=kw, stride=stride_cols, dilation=dilation_cols,
                                 cells=row_cells(kw, count, target), target=target,
                                 streaming=streaming)
               for count in counts if count}
    x_base, y_base, w_base = x.ctypes.data, y.ctypes.data, weights.ctypes.data

    def drive(source: int, x_image: int, row_elems: int, images: int, target: int,
              rows: int, count: int, first_tap_row: int = 0, kernel_rows: int = kh) -> None:
        """``rows`` output rows of ``count`` cells from ``target`` (an address in ``y``),
        of ``images`` images, reading from ``source`` (rows ``row_elems`` apart) with
        kernel rows ``first_tap_row`` onwards."""
        module = modules[count]
        assert module is not None
        module.drive(source, w_base + first_tap_row * kw * cpad * itemsize, target, images,
                     x_image, y_image, rows, -(-count // module.cells), count - module.cells,
                     cpad // width, kernel_rows, stride_rows * row_elems,
                     dilation_rows * row_elems, cpad, y_row, y_cell, cpad)

    def padded_rows(g0: int, g1: int, o0: int, o1: int, first: int, cells: int) -> None:
        """Output rows [o0, o1), cells [first, first + cells) of images [g0, g1), from a
        zero-padded copy of the columns and rows they read."""
        columns = window_reach(cells, kw, stride_cols, dilation_cols)
        slab = workspace("register_tiles_depthwise",
                         (g1 - g0, (o1 - 1 - o0) * stride_rows + reach, columns, cpad), dtype)
        if cpad != c:
            slab[..., c:] = 0
        _fill(slab[..., :c], x[g0:g1], o0 * stride_rows - top, left - first * stride_cols)
        drive(slab.ctypes.data, slab[0].size, columns * cpad, g1 - g0,
              y_base + (g0 * y_image + o0 * y_row + first * y_cell) * itemsize,
              o1 - o0, cells)

    def band(g0: int, g1: int, o0: int, o1: int) -> None:
        """Output rows [o0, o1) of images [g0, g1)."""
        if not in_place:
            padded_rows(g0, g1, o0, o1, 0, ow)
            return
        for r0, r1, a0, a1 in row_groups:
            r0, r1 = max(r0, o0), min(r1, o1)
            if r0 >= r1:
                continue
            if a0 == a1:  # rows whose every window lies on the padding
                y[g0:g1, r0:r1, lo:hi] = 0
                continue
            source = x_base + (g0 * x[0].size + (r0 * stride_rows - top + a0 * dilation_rows)
                               * w * c + (lo * stride_cols - left) * c) * itemsize
            drive(source, x[0].size, w * c, g1 - g0,
                  y_base + (g0 * y_image + r0 * y_row + lo * y_cell) * itemsize,
                  r1 - r0, hi - lo, a0, a1 - a0)
        if lo > 0:
            padded_rows(g0, g1, o0, o1, 0, lo)
        if hi < ow:
            padded_rows(g0, g1, o0, o1, hi, ow - hi)

    workers = threads if threads is not None else worker_count()
    # rows per job: a share of the work for each worker's JOBS_PER_WORKER jobs (all of
    # it for one worker), and at least DEPTHWISE_JOB_FLOPS (each job costs ~20 µs of
    # Python); images per job: those rows, and at most SLAB_BYTES of copied input
    share = -(-n * oh // (JOBS_PER_WORKER * workers)) if workers > 1 else n * oh
    rows = max(share, -(-DEPTHWISE_JOB_FLOPS // (2 * ow * kh * kw * c)))
    copied_columns = (max(window_reach(count, kw, stride_cols, dilation_cols)
                          for count in (lo, ow - hi, 1) if count)
                      if in_place else padded_w)
    row_bytes = copied_columns * cpad * itemsize
    needed = window_reach(oh, kh, stride_rows, dilation_rows)
    images = min(n, rows // oh, SLAB_BYTES // (needed * row_bytes))
    band_rows = max(1, min(oh, rows, (SLAB_BYTES // row_bytes - reach) // stride_rows + 1))
    jobs: list[Callable[[], None]] = (
        [functools.partial(band, g0, min(n, g0 + images), 0, oh) for g0 in range(0, n, images)]
        if images >= 1 else
        [functools.partial(band, image, image + 1, o0, min(oh, o0 + band_rows))
         for image in range(n) for o0 in range(0, oh, band_rows)])
    _run(jobs, 2.0 * n * oh * ow * kh * kw * c * 8, threads)
    return y if cpad == c else np.ascontiguousarray(y[..., :c])


def _kernel_row_groups(size: int, kernel: int, stride: int, dilation: int, before: int,
                       out: int) -> list[tuple[int, int, int, int]]:
    """Output rows ``[r0, r1)`` and the kernel rows ``[a0, a1)`` each of them reads from
    the input (the others lie on its ``before``/after zero padding): consecutive rows
    with the same kernel rows form one group."""
    inner = inner_cells(size, effective_kernel(kernel, dilation), stride, before, out)
    groups: list[tuple[int, int, int, int]] = []
    for row in itertools.chain(range(inner[0]), [inner[0]] if inner[1] > inner[0] else [],
                               range(inner[1], out)):
        first = row * stride - before
        a0 = min(kernel, -(first // dilation)) if first < 0 else 0
        a1 = max(a0, min(kernel, (size - 1 - first) // dilation + 1)) if first < size else a0
        end = inner[1] if row == inner[0] < inner[1] else row + 1
        if groups and groups[-1][1] == row and groups[-1][2:] == (a0, a1):
            groups[-1] = (groups[-1][0], end, a0, a1)
        else:
            groups.append((row, end, a0, a1))
    return groups


def inner_cells(size: int, extent: int, stride: int, before: int, out: int) -> tuple[int, int]:
    """Output cells ``[lo, hi)`` (of ``out``) whose window of ``extent`` input cells
    (``K_eff``, :func:`~convarith.arithmetic.effective_kernel`) lies wholly inside an
    input of ``size`` cells with ``before`` cells of padding before it (cell ``o`` reads
    ``o·stride - before`` onwards); ``lo == hi`` when none does.

    >>> inner_cells(10, 3, 1, 1, 10), inner_cells(10, 3, 2, 1, 5), inner_cells(2, 5, 1, 2, 2)
    ((1, 9), (1, 5), (2, 2))
    """
    lo = min(out, -(-before // stride)) if before > 0 else 0
    last = size - extent + before
    hi = min(out, last // stride + 1) if last >= 0 else 0
    return lo, max(lo, hi)


#: Inputs of :func:`depthwise` from this size on are read in place (but for the cells by
#: the padding); smaller ones are copied whole, zero-padded: the copy costs less than the
#: four more calls of the kernels and two copies of border columns (one core, 3×3 on one
#: image: 7²×960 0.12 ms in place, 0.06 copied; 14²×384 0.11 in place).
DEPTHWISE_IN_PLACE_BYTES = 1 << 20

#: ... and rows with at least this many cells inside the input (shorter tiles reuse fewer
#: loaded columns: 5×5 on 16 images of 7²×1152, tiles of 3 and 2 cells in place took
#: 1.9 ms, tiles of 7 on a copy 1.3).
DEPTHWISE_IN_PLACE_CELLS = 8

#: Least work (FLOPs) of one job of :func:`depthwise`: about 40 µs of one core.
DEPTHWISE_JOB_FLOPS = 4_000_000


def applies_depthwise(problem: ConvProblem) -> bool:
    """1-D or 2-D depthwise with multiplier 1, on a machine with the compiled kernels."""
    return (problem.rank in (1, 2) and problem.groups == problem.in_channels > 1
            and problem.out_channels == problem.in_channels
            and _llvm.available(problem.dtype))


def cost_depthwise(problem: ConvProblem) -> float:
    """Against :mod:`.depthwise`'s ``0.1 × FLOPs`` (its loop unrolls 3×3 only).

    Measured on one core (CPU time, float32, on a busy machine; these kernels against
    that loop, in ms): above 3×3 these kernels are faster everywhere (5×5 on 2×56²×96
    0.43 against 1.35; 7×7 0.72 against 3.7; 5×5 on one 28²×240 image 0.21 against
    0.42, on one 14²×672 image 0.16 against 0.27): ``0.06 × FLOPs × (1 + 100 / cells)``.
    Up to 3×3 they are faster where a cell's channels are a few whole vectors (3×3 on
    one 112²×32 image 0.19 against 0.32, 16 images 4.1 against 5.7; one 56²×64 image
    0.11 against 0.13, 16 images 1.7 against 2.6; 16 images of 28²×48 0.24 against
    0.43; stride 2 on 8 images of 112²×32 0.86 against 1.21), and slower with more
    channels (16 images of 56²×144 7.2 against 5.2, of 14²×576 stride 2 0.83 against
    0.70), with channels that do not fill whole vectors (24 on 112²: 0.38 against
    0.31) and on small layers (each call costs 20-40 µs more: 32 channels on 28² stride 2,
    0.061 against 0.043; but one 112²×16 image 0.11 against 0.28): ``0.07 × FLOPs +
    50 000`` with at most 6 vectors of channels (96 float32 channels with AVX-512; 4 at
    stride 2 along the rows), else ``0.15 × FLOPs + 50 000``. With AVX2 (16 registers: tiles of 10 cells, half
    vectors) at most 4 vectors (32 float32 channels): 112²×32 0.22 against 0.37, 16
    images of 28²×40 0.27 against 0.49, but 16 of 56²×48 3.0 against 2.4, of 56²×64
    4.8 against 2.9.

    Channels that end in a partial vector count as whole vectors, as in
    :func:`.depthwise.cost_tiles` (one core, CPU time, busy machine, AVX-512, float32,
    8 channels, against ``depthwise_tiles``: 5×5 on 16 images of 56² 1.22 against
    0.36 ms, stride 2 on one 56² image 0.078 against 0.016; 7×7 dilation 2 on 2
    images of 112² 0.79 against 0.34).
    """
    taps = math.prod(problem.kernel_size)
    cells = max(1, problem.batch * math.prod(problem.out_size))
    channels = problem.in_channels
    target = _llvm.vector_target()
    width = target.width(problem.dtype) or 1
    if taps > 9:
        whole = -(-channels // width) * width / max(1, channels)
        return problem.flops * whole * 0.06 * (1 + 100 / cells)
    most = 6 if target.registers >= 32 and problem.strides[-1] == 1 else 4
    few_vectors = channels % width == 0 and channels <= most * width
    return problem.flops * (0.07 if few_vectors else 0.15) + 50_000


def weight_grad(xp: np.ndarray, dy: np.ndarray, kernel_size: Sequence[int],
                strides: Sequence[int], dilation: Sequence[int], groups: int, *,
                padding: Sequence[tuple[int, int]] | None = None,
                threads: int | None = None) -> np.ndarray:
    """The kernel gradient on these kernels: :func:`.grouped_tiles.weight_grad` (any
    groups; the planner takes it for one group, :func:`.gradient_costs.register_tiles`).

    >>> xp = np.ones((1, 5, 4), np.float32)
    >>> dk = weight_grad(xp, np.ones((1, 3, 2), np.float32), (3,), (1,), (1,), 1) if _llvm.available() else np.full((3, 4, 2), 3.0)
    >>> dk.shape, float(dk[2, 1, 1])
    ((3, 4, 2), 3.0)
    """
    from .grouped_tiles import weight_grad as tiles_weight_grad

    return tiles_weight_grad(xp, dy, kernel_size, strides, dilation, groups, padding=padding,
                             threads=threads)


register_algorithm("register_tiles", direct, applies=applies, cost=cost, pads_zeros=True,
                   weight_grad=weight_grad, weight_grad_cost=gradient_costs.register_tiles)
register_algorithm("register_tiles_depthwise", depthwise, applies=applies_depthwise,
                   cost=cost_depthwise, pads_zeros=True)
register_algorithm("register_tiles_phases", transposed, applies=applies_transposed,
                   cost=cost_transposed, kind="transposed")
