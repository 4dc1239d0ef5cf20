"""1-D convolutions of few images cut along their cells, for the register-tiled kernels.

:mod:`.register_tiles` cuts its work into chunks of output rows or whole
images. A 1-D image is one output row, so a batch of one is one chunk, run by
one thread however long it is (WaveNet's causal layers on 4096 samples: one
core of two busy). Here each image's output cells are cut into segments
instead, each run by the same compiled kernels as a one-row image of its own:

- a segment of output cells ``[o0, o1)`` reads the input cells
  ``[o0·S − left, o0·S − left + window_reach(o1 − o0, K, S, D))``, its
  receptive field with the halo of ``D·(K − 1)`` cells it shares with the next
  segment (``left``: the padding before the first cell, negative: a crop);
- where that range lies inside the input (every segment but those touching the
  padding), the kernels read the input where it lies, through a pointer into
  it: no copy; a segment that reaches into the padding copies its own cells
  into a per-thread scratch row with the zeros around them (a few KiB);
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

from ...arithmetic import window_reach
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


def cut_along_cells(images: int, rows: int, workers: int, flops: float = math.inf) -> bool:
    """Whether a convolution of ``images`` images of ``rows`` output rows (``flops`` in
    all) runs as segments of rows for ``workers`` threads: 1-D (one row), more than one
    worker, and fewer images than the chunks the workers take.

    >>> cut_along_cells(1, 1, 2), cut_along_cells(16, 1, 2), cut_along_cells(1, 1, 1)
    (True, False, False)
    >>> cut_along_cells(1, 28, 2)
    False
    """
    return rows == 1 and workers > 1 and images < _job_count(workers, flops)


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


def segment_jobs(x: np.ndarray, kernel: np.ndarray, stride: int, dilation: int,
                 out_cells: int, pads: tuple[int, int], y: np.ndarray, workers: int,
                 groups: int = 1) -> list[Callable[[], None]]:
    """One call per segment of output cells writing ``y`` ``(N, 1, OW, F padded)``.

    ``x`` ``(N, 1, W, C)`` C-contiguous and ``kernel`` ``(1, KW, C/g, F)`` of its
    dtype, as :func:`.register_tiles.direct` holds a 1-D convolution; ``pads`` the
    zeros before and after each image (negative: a crop).

    >>> x = np.ones((1, 1, 300, 2), np.float32)
    >>> k = np.ones((1, 3, 2, 16), np.float32)
    >>> y = np.zeros((1, 1, 300, 16), np.float32)
    >>> from . import _llvm
    >>> jobs = segment_jobs(x, k, 1, 1, 300, (2, 0), y, 2) if _llvm.available() else []
    >>> for job in jobs:
    ...     job()
    >>> float(y[0, 0, 0, 0]) if jobs else 2.0, float(y[0, 0, 299, 5]) if jobs else 6.0
    (2.0, 6.0)
    """
    dtype = x.dtype
    itemsize = dtype.itemsize
    n, _, w, c = x.shape
    kw = kernel.shape[1]
    left, right = pads
    row_elems = (w + left + right) * c
    streaming = y.nbytes >= STREAM_BYTES and _aligned(y)
    panels = _panels(kernel, (1, dilation), row_elems, streaming, groups, c,
                     stride * c if groups == 1 else 0, workers)
    calls = _calls(panels)
    x_base, x_image = x.ctypes.data, x.strides[0]
    y_base, y_image, y_cell = y.ctypes.data, y.strides[0], y.strides[2]
    y_cell_elems = y_cell // itemsize

    def job(image: int, o0: int, o1: int, _keep: Any = panels) -> None:
        first = o0 * stride - left  # input cell of the segment's first window
        span = window_reach(o1 - o0, kw, stride, dilation)
        if 0 <= first and first + span <= w:
            source = x_base + image * x_image + first * c * itemsize
        else:  # the segment reads padding: its cells and the zeros, copied
            row = workspace("segments", (1, span, c), dtype)
            _fill(row, x[image], 0, -first)
            source = row.ctypes.data
        cells = Cells(rows=1, row_cells=o1 - o0, image_rows=1, x_row=row_elems,
                      x_cell=stride * c, x_image=0, y_row=0, y_cell=y_cell_elems, y_image=0)
        target = y_base + image * y_image + o0 * y_cell
        for call in calls:
            call.drive(source, call.weights, target + call.first_channel_bytes, call.offsets,
                       *cells, *call.sums, *call.batch)

    edges = segment_edges(out_cells, n, workers, 2.0 * n * out_cells * kernel.size)
    return [functools.partial(job, image, o0, o1)
            for image in range(n) for o0, o1 in zip(edges, edges[1:])]
