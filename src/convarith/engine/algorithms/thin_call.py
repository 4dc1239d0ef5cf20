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

from collections.abc import Sequence

import numpy as np

from ...arithmetic import window_reach
from . import _llvm
from ._llvm import Cells
from ._threads import aligned_empty, workspace
from .register_tiles import SLAB_BYTES, STREAM_BYTES, _aligned, _fill, _panels, thin

__all__ = ["runs", "run", "output"]


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
    count = int(np.prod(cells))
    if padded == filters or padded > _llvm.max_vectors() * _llvm.vector_width(dtype):
        return aligned_empty((*cells, padded), dtype)
    room = aligned_empty((count * filters + padded - filters,), dtype)
    return room[:count * filters].reshape(*cells, filters)


def run(x: np.ndarray, kernel: np.ndarray, strides: tuple[int, int],
        dilation: tuple[int, int], out_size: tuple[int, int],
        pads: Sequence[tuple[int, int]], y: np.ndarray) -> None:
    """Write the layer's outputs into ``y`` (N, OH, OW, F padded to the panels' vectors,
    or :func:`output`'s array) on this thread.

    ``x`` (N, H, W, C) C-contiguous and unpadded, ``kernel`` (KH, KW, C, F), ``pads``
    ``((top, bottom), (left, right))`` of zeros (at least 0 each)."""
    dtype = x.dtype
    itemsize = dtype.itemsize
    n, h, w, c = x.shape
    oh, ow = out_size
    (top, bottom), (left, right) = pads
    padded_w = w + left + right
    row_elems = padded_w * c
    needed = window_reach(oh, kernel.shape[0], strides[0], dilation[0])
    if top == bottom == left == right == 0:
        source, x_image = x, h * w * c
    else:
        source = workspace("register_tiles", (n, needed, padded_w, c), dtype)
        _fill(source, x, -top, left)
        x_image = needed * row_elems
    streaming = y.nbytes >= STREAM_BYTES and _aligned(y)
    y_image, y_row, y_cell = (step // itemsize for step in y.strides[:3])
    cells = Cells(rows=n * oh, row_cells=ow, image_rows=oh, x_row=strides[0] * row_elems,
                  x_cell=strides[1] * c, x_image=x_image, y_row=y_row, y_cell=y_cell,
                  y_image=y_image)
    x_base, y_base = source.ctypes.data, y.ctypes.data
    for panel in _panels(kernel, dilation, row_elems, streaming, 1, c, strides[1] * c, 1):
        panel.kernels.drive(x_base, panel.weights.ctypes.data,
                            y_base + panel.first_channel_bytes, panel.offsets.ctypes.data,
                            *cells, *panel.sums, *panel.batch)
