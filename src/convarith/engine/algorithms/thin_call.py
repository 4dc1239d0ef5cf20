"""A thin-input layer (1–4 input channels, one group) on one thread as one compiled call
per run of output channels, with the least Python around it.

A stem's compiled sum is short (an RGB 3×3 stride-2 layer on one 112² image: ~70 µs
of ~110), so the set-up :func:`.register_tiles.direct` does for a layer shared among
workers (chunks, a table of calls, the worker hand-off) is a large share of a call
that runs on the calling thread anyway. Here, when the layer runs on one thread and
its zero-padded input fits :data:`.register_tiles.SLAB_BYTES` (what that thread's
single chunk would copy): the input is padded once into this thread's scratch buffer,
the kernel's panels are :func:`.register_tiles._panels`' (read in place where the
outputs are whole vectors), and each panel's ``drive`` runs every row of every image
(the same calls, in the same order, as the chunk would make: the same values).

On several threads (:func:`runs_shared`) the output rows are cut into pieces
(:func:`pieces`: whole images, or runs of one image's rows), each a job of one table
of compiled calls run by the spinning helpers without the interpreter's lock: a row
that pads the piece's input rows into its own part of a buffer (on the thread that
then reads them), then each panel's ``drive`` over the piece's rows. The chunks of
:func:`.register_tiles.direct` each pad their rows in Python and hand a closure to a
helper, which has to take the interpreter's lock (16 images, 3×3 stride 2 3 -> 32
on 112²: 0.85-1.0 ms against 0.53-0.70 here, two cores, busy machine). For a kernel
read in place the table is remembered per shape with every address but four (the
padded rows', the input's, the kernel's and the output's: :func:`shared_plan`).

Examples
--------
>>> import numpy as np
>>> from convarith.engine.algorithms import _llvm
>>> x = np.ones((1, 5, 5, 3), np.float32)
>>> kernel = np.ones((3, 3, 3, 16), np.float32)
>>> y = np.empty((1, 5, 5, 16), np.float32)
>>> if _llvm.available():
...     assert runs(x, kernel, ((1, 1), (1, 1)), (5, 5), (1, 1), (1, 1))
...     run(x, kernel, (1, 1), (1, 1), (5, 5), ((1, 1), (1, 1)), y)
...     assert y[0, 2, 2, 0] == 27.0 and y[0, 0, 0, 0] == 12.0
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ...arithmetic import window_reach
from . import _llvm, _threads
from ._llvm import Cells
from ._threads import aligned_empty, workspace
from .register_tiles import (
    SLAB_BYTES,
    STREAM_BYTES,
    THIN_INLINE_FLOPS,
    Panel,
    _aligned,
    _fill,
    _panels,
    in_place,
    thin,
)

__all__ = ["runs", "runs_shared", "run", "output", "pieces", "planned", "OneCallPlan",
           "one_call_plan", "SharedPlan", "shared_plan"]


def _padded_bytes(x: np.ndarray, kernel_rows: int, pads: Sequence[tuple[int, int]],
                  out_size: tuple[int, int], strides: tuple[int, int],
                  dilation: tuple[int, int]) -> int:
    """Bytes of the zero-padded input rows the output reads (every image)."""
    n, _, w, c = x.shape
    (_, _), (left, right) = pads
    needed = window_reach(out_size[0], kernel_rows, strides[0], dilation[0])
    return n * needed * (w + left + right) * c * x.dtype.itemsize


def runs(x: np.ndarray, kernel: np.ndarray, pads: Sequence[tuple[int, int]],
         out_size: tuple[int, int], strides: tuple[int, int],
         dilation: tuple[int, int]) -> bool:
    """Whether :func:`run` takes this (one-group, 2-D) layer on one thread: thin input
    cells and a padded input of at most :data:`.register_tiles.SLAB_BYTES`."""
    return (x.ndim == 4 and kernel.ndim == 4 and thin(x.shape[-1])
            and kernel.shape[-2] == x.shape[-1]
            and _padded_bytes(x, kernel.shape[0], pads, out_size, strides, dilation)
            <= SLAB_BYTES)


def output(cells: tuple[int, int, int], filters: int, padded: int, dtype: np.dtype
           ) -> np.ndarray:
    """The array :func:`run` writes: ``cells + (filters,)`` itself where the panels are
    one block of vectors (``padded`` channels, :func:`_llvm.max_vectors` at most), else
    ``cells + (padded,)`` (the caller crops it).

    One block writes each cell's ``padded`` channels in one go, cell after cell in
    order, so a cell's extra channels land on the next cell's first ones before that
    cell writes them; the last cell's land in room kept past the end. The output then
    takes its own bytes only, where a crop of the padded one took up to 2.2 times the
    input, kernel and output (3 -> 24 channels, 16-lane vectors).

    >>> output((2, 3, 3), 24, 32, np.dtype(np.float32)).shape
    (2, 3, 3, 24)
    """
    count = math.prod(cells)  # (np.prod of a tuple costs ~3 µs)
    if padded == filters or padded > _llvm.max_vectors() * _llvm.vector_width(dtype):
        return aligned_empty((*cells, padded), dtype)
    room = aligned_empty((count * filters + padded - filters,), dtype)
    return room[:count * filters].reshape(*cells, filters)


def runs_shared(x: np.ndarray, kernel: np.ndarray, pads: Sequence[tuple[int, int]],
                out_size: tuple[int, int], strides: tuple[int, int],
                dilation: tuple[int, int], filters_padded: int, workers: int) -> bool:
    """Whether :func:`run` takes this (one-group, 2-D) layer on ``workers`` threads: thin
    input cells, padding (no crop), :data:`JOBS_PER_WORKER` output rows per thread at least (a piece of
    work is whole rows), the spinning helpers' tables of calls here, and a padded input
    of at most :data:`SHARED_PAD_SHARE` of the input, kernel and output bytes
    (``filters_padded``: the output's channels rounded up to whole vectors)."""
    from . import _native_jobs

    if x.ndim != 4 or x.shape[0] * out_size[0] < workers * JOBS_PER_WORKER or min(
            min(pad) for pad in pads) < 0:  # (crops: the filler pads only)
        return False
    if not (kernel.ndim == 4 and thin(x.shape[-1])
            and kernel.shape[-2] == x.shape[-1]) or _native_jobs.kernel_runner() is None:
        return False
    io_bytes = x.nbytes + kernel.nbytes + (x.shape[0] * out_size[0] * out_size[1]
                                           * filters_padded * x.dtype.itemsize)
    padded = _padded_bytes(x, kernel.shape[0], pads, out_size, strides, dilation)
    return padded <= SHARED_PAD_SHARE * io_bytes


#: The most bytes of the padded input that :func:`run` makes for several threads, as a
#: share of the layer's input, kernel and output bytes (peak extra memory 1.5 times those
#: at most; a stem's output is 5-20 times its input).
SHARED_PAD_SHARE = 0.5

#: Jobs per thread of a layer that :func:`run` shares: a thread that starts late (or is
#: slowed by another process) leaves its share to the others.
JOBS_PER_WORKER = 4


def pieces(images: int, rows: int, jobs: int) -> list[tuple[int, int, int]]:
    """``(image, first row, rows)`` of about ``jobs`` pieces of ``images`` images of
    ``rows`` output rows each: runs of whole images where there are as many images as
    jobs, else each image cut into runs of its rows (a piece never runs from one image
    into the next partway, which the kernels' row walk cannot).

    >>> pieces(16, 56, 4)
    [(0, 0, 224), (4, 0, 224), (8, 0, 224), (12, 0, 224)]
    >>> pieces(1, 56, 3)
    [(0, 0, 18), (0, 18, 19), (0, 37, 19)]
    >>> pieces(3, 10, 4)
    [(0, 0, 5), (0, 5, 5), (1, 0, 5), (1, 5, 5), (2, 0, 5), (2, 5, 5)]
    """
    if images >= jobs:
        return [(images * i // jobs, 0, rows * (images * (i + 1) // jobs - images * i // jobs))
                for i in range(jobs)]
    per_image = -(-jobs // images)
    return [(g, rows * i // per_image, rows * (i + 1) // per_image - rows * i // per_image)
            for g in range(images) for i in range(per_image)
            if rows * (i + 1) // per_image > rows * i // per_image]


def run(x: np.ndarray, kernel: np.ndarray, strides: tuple[int, int],
        dilation: tuple[int, int], out_size: tuple[int, int],
        pads: Sequence[tuple[int, int]], y: np.ndarray, threads: int = 1) -> None:
    """Write the layer's outputs into ``y`` (N, OH, OW, F padded to the panels' vectors,
    or :func:`output`'s array) on this thread, or on ``threads`` threads
    (:func:`runs_shared`; ``y`` then holds whole vectors per cell: a vector that spills
    into the next cell would race with the thread that writes that cell).

    ``x`` (N, H, W, C) C-contiguous and unpadded, ``kernel`` (KH, KW, C, F), ``pads``
    ``((top, bottom), (left, right))`` of zeros (at least 0 each).

    On several threads the output rows are cut into :data:`JOBS_PER_WORKER` pieces per
    thread (:func:`pieces`), each padding its own input rows and making one compiled
    call per panel, run as a table of calls by the spinning helpers without the
    interpreter's lock (:mod:`._native_jobs`): the calls of one thread's run, each
    over fewer rows (the same values).
    """
    dtype = x.dtype
    itemsize = dtype.itemsize
    n, h, w, c = x.shape
    oh, ow = out_size
    (top, bottom), (left, right) = pads
    padded_w = w + left + right
    row_elems = padded_w * c
    needed = window_reach(oh, kernel.shape[0], strides[0], dilation[0])
    streaming = y.nbytes >= STREAM_BYTES and _aligned(y)  # (.ctypes costs ~1 µs: only then)
    y_image, y_row, y_cell = (step // itemsize for step in y.strides[:3])
    cells = Cells(rows=n * oh, row_cells=ow, image_rows=oh, x_row=strides[0] * row_elems,
                  x_cell=strides[1] * c, x_image=needed * row_elems, y_row=y_row,
                  y_cell=y_cell, y_image=y_image)
    panels = _panels(kernel, dilation, row_elems, streaming, 1, c, strides[1] * c, 1)
    if threads <= 1:
        if top == bottom == left == right == 0:
            source, cells = x, cells._replace(x_image=h * w * c)
        else:
            source = workspace("register_tiles", (n, needed, padded_w, c), dtype)
            _fill(source, x, -top, left)
        x_base, y_base = source.ctypes.data, y.ctypes.data
        for panel in panels:
            panel.kernels.drive(x_base, panel.weights.ctypes.data,
                                y_base + panel.first_channel_bytes, panel.offsets.ctypes.data,
                                *cells, *panel.sums, *panel.batch)
        return
    _run_pieces(x, panels, cells, strides[0], kernel.shape[0], dilation[0], pads, y, threads)


def _run_pieces(x: np.ndarray, panels: Sequence[Panel], cells: Cells, stride: int,
                kernel_rows: int, dilation: int, pads: Sequence[tuple[int, int]],
                y: np.ndarray, threads: int) -> None:
    """:func:`run` on ``threads`` threads: each piece of :func:`pieces` pads its own input
    rows (a row of :func:`._native_jobs.padded_rows_ir`, on the thread that runs it:
    a copy made by the caller for all would be read from the other core's cache) into
    its own part of one buffer, then runs each panel's call over its output rows. The
    calls are worked out once per shape (:func:`_pieces_plan`); at a call only the
    arrays' addresses are added."""
    from . import _native_jobs

    layout = tuple((ctypes.c_void_p.from_buffer(panel.kernels.drive).value or 0,
                    panel.first_channel_bytes, tuple(panel.sums), tuple(panel.batch))
                   for panel in panels)
    (top, _), (left, right) = pads
    plan = _pieces_plan(tuple(x.shape), x.dtype.itemsize, tuple(cells), stride, kernel_rows,
                        dilation, (int(top), int(left), int(right)), layout, threads)
    slab = aligned_empty((plan.slab_elements,), x.dtype)
    rows = plan.rows.copy()
    rows[:, 1] += slab.ctypes.data
    rows[:, 2] += x.ctypes.data * plan.reads_x
    rows[:, 3] += y.ctypes.data * plan.writes_y
    addresses = np.array([(0, 0)] + [(panel.weights.ctypes.data, panel.offsets.ctypes.data)
                                     for panel in panels], np.int64)
    calls = addresses[plan.panel]
    rows[:, 2] += calls[:, 0]
    rows[:, 4] += calls[:, 1]
    runner = _native_jobs.kernel_runner()
    assert runner is not None
    _threads.run_native_jobs(runner, rows, list(plan.spans), threads=threads)


class _PiecesPlan(NamedTuple):
    """The table of calls of :func:`_run_pieces` with the arrays' addresses taken out."""

    rows: np.ndarray  #: int64 rows of :mod:`._native_jobs`' kernel table, addresses 0
    reads_x: np.ndarray  #: 1 where a row's second pointer is into the input (fillers)
    writes_y: np.ndarray  #: 1 where its third is into the output (the panels' calls)
    panel: np.ndarray  #: 1 + the panel a row calls (0: a filler)
    spans: tuple[tuple[int, int], ...]  #: each piece's ``(first row, rows)``
    slab_elements: int  #: the pieces' padded rows, all together


@functools.lru_cache(maxsize=128)
def _pieces_plan(shape: tuple[int, ...], itemsize: int, cells: tuple[int, ...], stride: int,
                 kernel_rows: int, dilation: int, pads: tuple[int, int, int],
                 layout: tuple[tuple[Any, ...], ...], threads: int) -> _PiecesPlan:
    """:func:`_run_pieces`' calls for one shape (remembered): ``cells`` the whole layer's
    :class:`Cells`, ``pads`` the padding on top, left and right, ``layout`` each panel's
    ``drive`` address, first channel's byte, sums and batch."""
    from . import _native_jobs

    filler = _native_jobs.padded_rows_filler()
    assert filler is not None
    n, h, w, c = shape
    top, left, right = pads
    whole = Cells(*cells)
    row_elems = (w + left + right) * c
    oh = whole.image_rows
    table: list[tuple[int, ...]] = []
    reads_x, writes_y, panel_of = [], [], []
    spans = []
    slab_at = 0
    fill_unused = (0,) * (_native_jobs.KERNEL_FIELDS - 11)
    for image, first, rows in pieces(n, oh, threads * JOBS_PER_WORKER):
        images = rows // oh if rows >= oh else 1
        reach = window_reach(min(rows, oh), kernel_rows, stride, dilation)
        spans.append((len(table), 1 + len(layout)))
        table.append((filler.address, slab_at * itemsize, image * h * w * c * itemsize, 0, 0,
                      images, reach, first * stride - top, h, w * c * itemsize,
                      h * w * c * itemsize, row_elems * itemsize, reach * row_elems * itemsize,
                      left * c * itemsize, w * c * itemsize, right * c * itemsize,
                      *fill_unused))
        reads_x.append(1)
        writes_y.append(0)
        panel_of.append(0)
        fields = tuple(whole._replace(rows=rows, x_image=reach * row_elems))
        y_at = (image * whole.y_image + first * whole.y_row) * itemsize
        for index, (drive, first_channel, sums, batch) in enumerate(layout):
            table.append((drive, slab_at * itemsize, 0, y_at + first_channel, 0, *fields,
                          *sums, *batch))
            reads_x.append(0)
            writes_y.append(1)
            panel_of.append(1 + index)
        slab_at += images * reach * row_elems
    plan = _PiecesPlan(np.array(table, np.int64), np.array(reads_x, np.int64),
                       np.array(writes_y, np.int64), np.array(panel_of, np.intp),
                       tuple(spans), slab_at)
    for array in plan[:4]:
        array.flags.writeable = False
    return plan


class OneCallPlan(NamedTuple):
    """:func:`run` on the calling thread for one shape, a kernel read in place
    (:func:`.register_tiles.in_place`): everything but the arrays' addresses worked out
    once (:func:`one_call_plan`)."""

    flops: float  #: the layer's (:func:`planned` shares larger ones among threads)
    output_shape: tuple[int, int, int, int]  #: ``(N, OH, OW, F)``, F whole vectors
    #: this thread's zero-padded input rows (``None``: the input read as it is), and
    #: :func:`.register_tiles._fill`'s first row and left columns
    padded_shape: tuple[int, int, int, int] | None
    first: int
    left: int
    #: per panel: its ``drive``, the weights' byte offset from the kernel's first element,
    #: the first output channel's byte, the offsets' address and the integer fields
    calls: tuple[tuple[Any, int, int, int, tuple[int, ...]], ...]
    keep: tuple[Any, ...]  #: the offsets arrays and compiled modules the calls use


def _stand_ins(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], dtype: np.dtype
               ) -> tuple[np.ndarray, np.ndarray]:
    """An input of ``x_shape`` that takes no memory and a zero kernel of ``kernel_shape``
    (the panels' layout is read from it), for the checks a plan makes before any call."""
    x_probe = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), x_shape, (0,) * len(x_shape))
    return x_probe, np.zeros(kernel_shape, dtype)


@functools.lru_cache(maxsize=128)
def one_call_plan(x_shape: tuple[int, int, int, int], dtype: np.dtype,
                  kernel_shape: tuple[int, int, int, int], strides: tuple[int, int],
                  dilation: tuple[int, int], out_size: tuple[int, int],
                  pads: tuple[tuple[int, int], tuple[int, int]]) -> OneCallPlan | None:
    """The calls :func:`run` makes on one thread for this shape (remembered), with a
    C-contiguous kernel read where it lies; ``None`` where :func:`run` would not take
    the layer on one thread (:func:`runs`), nothing is computed, or the kernel is not
    read in place (its outputs are not whole vectors: :func:`run` packs it at each call).

    >>> plan = one_call_plan((1, 8, 8, 3), np.dtype(np.float32), (3, 3, 3, 32), (2, 2),
    ...                      (1, 1), (4, 4), ((1, 1), (1, 1)))
    >>> plan is None or (plan.output_shape, plan.padded_shape, plan.first, plan.left) == (
    ...     (1, 4, 4, 32), (1, 9, 10, 3), -1, 1)
    True
    """
    n, h, w, c = x_shape
    oh, ow = out_size
    f = kernel_shape[-1]
    x_probe, probe = _stand_ins(x_shape, kernel_shape, dtype)
    if (not thin(c) or kernel_shape[-2] != c or n * oh * ow * f == 0
            or not runs(x_probe, probe, pads, out_size, strides, dilation)
            or not in_place(probe, c)):
        return None
    (top, bottom), (left, right) = pads
    padded_w = w + left + right
    row_elems = padded_w * c
    needed = window_reach(oh, kernel_shape[0], strides[0], dilation[0])
    itemsize = dtype.itemsize
    y = output((n, oh, ow), f, f, dtype)
    streaming = y.nbytes >= STREAM_BYTES and _aligned(y)  # (aligned_empty's alignment)
    y_image, y_row, y_cell = (step // itemsize for step in y.strides[:3])
    padded = not top == bottom == left == right == 0
    cells = Cells(rows=n * oh, row_cells=ow, image_rows=oh, x_row=strides[0] * row_elems,
                  x_cell=strides[1] * c, x_image=needed * row_elems if padded else h * w * c,
                  y_row=y_row, y_cell=y_cell, y_image=y_image)
    panels = _panels(probe, dilation, row_elems, streaming, 1, c, strides[1] * c, 1)
    base = probe.ctypes.data
    calls = tuple((panel.kernels.drive, panel.weights.ctypes.data - base,
                   panel.first_channel_bytes, panel.offsets.ctypes.data,
                   (*cells, *panel.sums, *panel.batch)) for panel in panels)
    flops = 2.0 * n * oh * ow * math.prod(kernel_shape)
    return OneCallPlan(flops, (n, oh, ow, f), (n, needed, padded_w, c) if padded else None,
                       -top, left, calls,
                       tuple((panel.offsets, panel.kernels) for panel in panels))


class SharedPlan(NamedTuple):
    """:func:`run` on several threads for one shape, a kernel read in place
    (:func:`.register_tiles.in_place`): :func:`_pieces_plan`'s table with every address
    filled in but those of the padded rows, the input, the kernel and the output, which
    :attr:`coefficients` add at a call (:func:`shared_plan`)."""

    output_shape: tuple[int, int, int, int]  #: ``(N, OH, OW, F)``, F whole vectors
    rows: np.ndarray  #: int64 table of calls (:mod:`._native_jobs`), read-only
    #: int64 ``(calls, 4, 4)``: row ``i``'s fields 1-4 gain ``coefficients[i] @
    #: (padded rows, input, kernel, output)`` addresses
    coefficients: np.ndarray
    spans: tuple[tuple[int, int], ...]  #: each piece's ``(first row, rows)``
    slab_elements: int  #: the pieces' padded rows, all together
    keep: tuple[Any, ...]  #: the offsets arrays and compiled modules the calls use


@functools.lru_cache(maxsize=128)
def shared_plan(x_shape: tuple[int, int, int, int], dtype: np.dtype,
                kernel_shape: tuple[int, int, int, int], strides: tuple[int, int],
                dilation: tuple[int, int], out_size: tuple[int, int],
                pads: tuple[tuple[int, int], tuple[int, int]], workers: int,
                target: _llvm.VectorTarget | None = None) -> SharedPlan | None:
    """The table of calls :func:`run` makes on ``workers`` threads for this shape
    (remembered; ``target`` the vector target in use, part of the key), with a
    C-contiguous kernel read where it lies; ``None`` where :func:`run` would not share
    the layer (:func:`runs_shared`), nothing is computed, or the kernel is not read in
    place.

    >>> plan = shared_plan((1, 16, 16, 3), np.dtype(np.float32), (3, 3, 3, 32), (1, 1),
    ...                    (1, 1), (16, 16), ((1, 1), (1, 1)), 2, _llvm.vector_target())
    >>> plan is None or (plan.output_shape, len(plan.spans)) == ((1, 16, 16, 32), 8)
    True
    """
    from . import _native_jobs

    n, h, w, c = x_shape
    oh, ow = out_size
    f = kernel_shape[-1]
    x_probe, probe = _stand_ins(x_shape, kernel_shape, dtype)
    if (workers < 2 or not thin(c) or kernel_shape[-2] != c or n * oh * ow * f == 0
            or not in_place(probe, c)
            or not runs_shared(x_probe, probe, pads, out_size, strides, dilation, f, workers)):
        return None
    (top, _), (left, right) = pads
    row_elems = (w + left + right) * c
    itemsize = dtype.itemsize
    y = aligned_empty((n, oh, ow, f), dtype)  # (the output's strides and alignment)
    streaming = y.nbytes >= STREAM_BYTES and _aligned(y)
    y_image, y_row, y_cell = (step // itemsize for step in y.strides[:3])
    needed = window_reach(oh, kernel_shape[0], strides[0], dilation[0])
    cells = Cells(rows=n * oh, row_cells=ow, image_rows=oh, x_row=strides[0] * row_elems,
                  x_cell=strides[1] * c, x_image=needed * row_elems, y_row=y_row,
                  y_cell=y_cell, y_image=y_image)
    panels = _panels(probe, dilation, row_elems, streaming, 1, c, strides[1] * c, 1)
    layout = tuple((ctypes.c_void_p.from_buffer(panel.kernels.drive).value or 0,
                    panel.first_channel_bytes, tuple(panel.sums), tuple(panel.batch))
                   for panel in panels)
    pieces = _pieces_plan(x_shape, itemsize, tuple(cells), strides[0], kernel_shape[0],
                          dilation[0], (top, left, right), layout, workers)
    calls = np.array([(0, 0)] + [(panel.weights.ctypes.data - probe.ctypes.data,
                                  panel.offsets.ctypes.data) for panel in panels],
                     np.int64)[pieces.panel]
    rows = pieces.rows.copy()
    rows[:, 2] += calls[:, 0]  # a panel's weights: their offset in the kernel here
    rows[:, 4] += calls[:, 1]
    rows.flags.writeable = False
    coefficients = np.zeros((len(rows), 4, 4), np.int64)
    coefficients[:, 0, 0] = 1  # every row's first pointer is into the padded rows
    coefficients[:, 1, 1] = pieces.reads_x
    coefficients[:, 1, 2] = pieces.panel > 0
    coefficients[:, 2, 3] = pieces.writes_y
    coefficients.flags.writeable = False
    assert _native_jobs.kernel_runner() is not None  # (runs_shared asked)
    return SharedPlan((n, oh, ow, f), rows, coefficients, pieces.spans, pieces.slab_elements,
                      tuple((panel.offsets, panel.kernels) for panel in panels))


def _run_shared(plan: SharedPlan, x: np.ndarray, kernel: np.ndarray, workers: int
                ) -> np.ndarray:
    """The output of :func:`shared_plan`'s calls on ``x`` and ``kernel`` (as
    :func:`run` on ``workers`` threads writes it)."""
    from . import _native_jobs

    y = aligned_empty(plan.output_shape, x.dtype)
    slab = workspace("thin_call pieces", (plan.slab_elements,), x.dtype)
    addresses = np.array((slab.ctypes.data, x.ctypes.data, kernel.ctypes.data,
                          y.ctypes.data), np.int64)
    rows = plan.rows.copy()
    rows[:, 1:5] += plan.coefficients @ addresses
    runner = _native_jobs.kernel_runner()
    assert runner is not None
    _threads.run_native_jobs(runner, rows, list(plan.spans), threads=workers)
    return y


def planned(x: np.ndarray, kernel: np.ndarray, strides: Sequence[int],
            dilation: Sequence[int], out_size: Sequence[int],
            padding: Sequence[tuple[int, int]] | None, threads: int | None
            ) -> np.ndarray | None:
    """A thin (one-group, 2-D) layer of :func:`.register_tiles.direct` by a remembered
    plan: on the calling thread by its :func:`one_call_plan` (~15 µs less of a 3×3
    stride-2 3 -> 32 layer's ~90 on one 112² image), or shared among threads by its
    :func:`shared_plan` (~27 µs less a call than cutting the pieces at each call: 3×3
    3 -> 32 on one 16² image on two threads 62 -> 35 µs); the same calls, the same
    values. ``None`` for the others (the caller takes them its usual way).

    >>> x = np.ones((1, 5, 5, 3), np.float32)
    >>> kernel = np.ones((3, 3, 3, 16), np.float32)
    >>> y = planned(x, kernel, (1, 1), (1, 1), (5, 5), ((1, 1), (1, 1)), 1)
    >>> y is None or bool(y[0, 2, 2, 0] == 27.0 and y[0, 0, 0, 0] == 12.0)
    True
    """
    dtype = x.dtype
    if not (x.flags.c_contiguous and kernel.flags.c_contiguous and kernel.dtype == dtype
            and dtype.char in "fd" and x.ndim == 4 and kernel.ndim == 4):
        return None
    pads = ((0, 0), (0, 0)) if padding is None else (
        (int(padding[0][0]), int(padding[0][1])), (int(padding[1][0]), int(padding[1][1])))
    shape = (int(strides[0]), int(strides[1])), (int(dilation[0]), int(dilation[1])), (
        int(out_size[0]), int(out_size[1]))
    flops = 2.0 * x.shape[0] * shape[2][0] * shape[2][1] * math.prod(kernel.shape)
    if not (threads == 1 or threads is None and (
            flops < THIN_INLINE_FLOPS or _threads.worker_count() == 1)):
        from . import _native_jobs

        if _native_jobs.kernel_runner() is None:  # (spinning turned off since: not shared)
            return None
        workers = threads if threads is not None else _threads.worker_count()
        shared = shared_plan(x.shape, dtype, kernel.shape, *shape, pads, workers,
                             _llvm.vector_target())
        return None if shared is None else _run_shared(shared, x, kernel, workers)
    plan = one_call_plan(x.shape, dtype, kernel.shape, *shape, pads)
    if plan is None:
        return None
    y = aligned_empty(plan.output_shape, dtype)
    if plan.padded_shape is None:
        source = x
    else:
        source = workspace("register_tiles", plan.padded_shape, dtype)
        _fill(source, x, plan.first, plan.left)
    x_base, k_base, y_base = source.ctypes.data, kernel.ctypes.data, y.ctypes.data
    for drive, weights, first_channel, offsets, fields in plan.calls:
        drive(x_base, k_base + weights, y_base + first_channel, offsets, *fields)
    return y
