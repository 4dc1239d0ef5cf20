"""Convolutions of fewer output rows than chunks cut along their cells, for the
register-tiled kernels.

:mod:`.register_tiles` cuts its work into chunks of output rows or whole
images. A 1-D image is one output row, so a batch of one is one chunk, run by
one thread however long it is (WaveNet's causal layers on 4096 samples: one
core of two busy); a 2-D image of one to three long rows (a signal held as
``1 × T``) has as few chunks. Here each image's output cells are cut into
segments of every row instead, each run by the same compiled kernels as an
image of its own:

- a segment of output cells ``[o0, o1)`` reads the input cells
  ``[o0·S − left, o0·S − left + window_reach(o1 − o0, K, S, D))`` of each row
  it reads, its receptive field with the halo of ``D·(K − 1)`` cells it shares
  with the next segment (``left``: the padding before the first cell, negative:
  a crop);
- the kernels read the input where it lies, through a pointer into it (no
  copy), but for the few cells at either end of an image whose windows reach
  into the padding: those read a per-thread scratch copy of their cells with
  the zeros around them (a few KiB). A 2-D convolution whose rows are padded
  (or whose columns are, where it reads several rows: the kernels step one
  padded row from one to the next) copies each segment's rows so;
- each segment writes its cells of the output in place.

The segments of all images together are as many chunks as
:mod:`.register_tiles` cuts for the workers (:data:`~.register_tiles.JOBS_PER_WORKER`
per worker, fewer where a chunk would hold under
:data:`~.register_tiles.MIN_CHUNK_FLOPS`; more when their count would not share
evenly), of at least :data:`MIN_SEGMENT_CELLS` cells, cut at multiples of
:data:`CELL_ALIGN` cells.

Examples
--------
>>> segment_edges(4096, images=1, workers=2)[:3]
[0, 512, 1024]
>>> segment_edges(100, images=1, workers=2)
[0, 16, 32, 48, 64, 80, 100]
>>> segment_edges(10, images=3, workers=2)
[0, 10]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ...arithmetic import effective_kernel, window_reach
from ._llvm import Cells
from ._threads import workspace
from .register_tiles import (
    STREAM_BYTES,
    _aligned,
    _calls,
    _fill,
    _job_count,
    _panels,
)

__all__ = ["cut_along_cells", "segment_edges", "segment_jobs", "MIN_SEGMENT_CELLS",
           "CELL_ALIGN"]

#: Fewest output cells of a segment (fewer cost more in calls than they share).
MIN_SEGMENT_CELLS = 16

#: Segment edges fall on multiples of this many cells (whole register blocks of the
#: kernels, which hold up to 14 cells, for all but each segment's last).
CELL_ALIGN = 16


def cut_along_cells(images: int, rows: int, cells: int, workers: int,
                    flops: float = math.inf) -> bool:
    """Whether a convolution of ``images`` images of ``rows`` × ``cells`` output cells
    (``flops`` in all) runs as segments of its rows for ``workers`` threads: more than
    one worker, fewer rows of all images than the chunks the workers take, and more
    segments than rows (1-D: one row).

    >>> cut_along_cells(1, 1, 4096, 2), cut_along_cells(16, 1, 4096, 2)
    (True, False)
    >>> cut_along_cells(1, 1, 4096, 1), cut_along_cells(1, 28, 28, 2)
    (False, False)
    >>> cut_along_cells(1, 2, 500, 2), cut_along_cells(1, 4, 4, 2)
    (True, False)
    """
    return (workers > 1 and images * rows < _job_count(workers, flops)
            and len(segment_edges(cells, images, workers, flops)) - 1 > rows)


def segment_edges(cells: int, images: int, workers: int, flops: float = math.inf
                  ) -> list[int]:
    """Where the segments of one image's ``cells`` output cells start, and the end
    (``flops``: the whole job's).

    ``images × segments`` is at least :func:`~.register_tiles._job_count` and a
    multiple of ``workers`` where the cells allow (each worker then runs as many),
    each segment at least :data:`MIN_SEGMENT_CELLS` long, the inner edges
    multiples of :data:`CELL_ALIGN`.

    >>> segment_edges(4096, images=3, workers=2)
    [0, 1024, 2048, 3072, 4096]
    >>> segment_edges(40, images=1, workers=2), segment_edges(4096, 1, 2, flops=5e6)
    ([0, 16, 40], [0, 2048, 4096])
    """
    count = -(-_job_count(workers, flops) // images)
    while (images * count) % workers:
        count += 1
    count = max(1, min(count, cells // MIN_SEGMENT_CELLS))
    inner = {CELL_ALIGN * round(cells * i / (count * CELL_ALIGN)) for i in range(1, count)}
    return [0, *sorted(edge for edge in inner if 0 < edge < cells), cells]


def segment_jobs(x: np.ndarray, kernel: np.ndarray, strides: tuple[int, int],
                 dilation: tuple[int, int], out_size: tuple[int, int],
                 pads: list[tuple[int, int]], y: np.ndarray, workers: int,
                 groups: int = 1) -> list[Callable[[], None]]:
    """One call per segment of output cells (of every output row) writing ``y``
    ``(N, OH, OW, F padded)``.

    ``x`` ``(N, H, W, C)`` C-contiguous and ``kernel`` ``(KH, KW, C/g, F)`` of its
    dtype, as :func:`.register_tiles.direct` holds a convolution (1-D: ``H = KH = OH
    = 1``); ``pads`` the zeros before and after each axis (negative: a crop).

    >>> x = np.ones((1, 1, 300, 2), np.float32)
    >>> k = np.ones((1, 3, 2, 16), np.float32)
    >>> y = np.zeros((1, 1, 300, 16), np.float32)
    >>> from . import _llvm
    >>> jobs = (segment_jobs(x, k, (1, 1), (1, 1), (1, 300), [(0, 0), (2, 0)], y, 2)
    ...         if _llvm.available() else [])
    >>> for job in jobs:
    ...     job()
    >>> float(y[0, 0, 0, 0]) if jobs else 2.0, float(y[0, 0, 299, 5]) if jobs else 6.0
    (2.0, 6.0)
    """
    dtype = x.dtype
    itemsize = dtype.itemsize
    n, h, w, c = x.shape
    kh, kw = kernel.shape[:2]
    oh, ow = out_size
    stride_rows, stride = strides
    dilation_rows, dilation_cols = dilation
    (top, bottom), (left, right) = pads
    padded_w = w + left + right
    row_elems = padded_w * c
    first_row = -top  # input row of the first window
    reach_rows = window_reach(oh, kh, stride_rows, dilation_rows)  # input rows read
    inside_rows = 0 <= first_row and first_row + reach_rows <= h
    # the kernels step row_elems from one input row to the next: x's own rows only
    # where they are padded_w long (or one row is read)
    rows_in_place = inside_rows and (reach_rows == 1 or padded_w == w)
    streaming = y.nbytes >= STREAM_BYTES and _aligned(y)
    panels = _panels(kernel, dilation, row_elems, streaming, groups, c,
                     stride * c if groups == 1 else 0, workers)
    calls = _calls(panels)
    x_base, x_image = x.ctypes.data, x.strides[0]
    x_first_row = first_row * x.strides[1] if inside_rows else 0
    y_base, y_image, y_row, y_cell = y.ctypes.data, y.strides[0], y.strides[1], y.strides[2]

    # the cells whose windows lie inside the input's columns: [inside_lo, inside_hi)
    inside_lo = -(-max(0, left) // stride)
    inside_hi = max(inside_lo, (w + left - effective_kernel(kw, dilation_cols)) // stride + 1)

    def run(image: int, source: int, o0: int, o1: int) -> None:
        """The cells ``[o0, o1)`` of every row, the window of ``o0`` at ``source``."""
        cells = Cells(rows=oh, row_cells=o1 - o0, image_rows=oh,
                      x_row=stride_rows * row_elems, x_cell=stride * c, x_image=0,
                      y_row=y_row // itemsize, y_cell=y_cell // itemsize, y_image=0)
        target = y_base + image * y_image + o0 * y_cell
        for call in calls:
            call.drive(source, call.weights, target + call.first_channel_bytes, call.offsets,
                       *cells, *call.sums, *call.batch)

    def padded(image: int, o0: int, o1: int) -> None:
        """The cells ``[o0, o1)`` from a copy of the rows and cells they read, with zeros."""
        first = o0 * stride - left  # input cell of the first window
        span = window_reach(o1 - o0, kw, stride, dilation_cols)
        slab = workspace("segments", (reach_rows, padded_w if reach_rows > 1 else span, c),
                         dtype)
        _fill(slab[:, :span], x[image], first_row, -first)
        run(image, slab.ctypes.data, o0, o1)

    def job(image: int, o0: int, o1: int, _keep: Any = panels) -> None:
        if not rows_in_place:
            padded(image, o0, o1)
            return
        # read in place but for the few cells at either end whose windows reach padding
        lo = min(o1, max(o0, inside_lo))
        hi = max(lo, min(o1, inside_hi))
        if lo < hi:
            run(image, x_base + image * x_image + x_first_row
                + (lo * stride - left) * c * itemsize, lo, hi)
        if o0 < lo:
            padded(image, o0, lo)
        if hi < o1:
            padded(image, hi, o1)

    edges = segment_edges(ow, n, workers, 2.0 * n * oh * ow * kernel.size)
    return [functools.partial(job, image, o0, o1)
            for image in range(n) for o0, o1 in zip(edges, edges[1:])]
