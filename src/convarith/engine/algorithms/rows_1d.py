"""Short 1-D stride-1 convolutions with few input columns, by chunks of output cells.

Output cell ``o`` of a 1-D stride-1 layer reads input cells ``o + k·D`` for its
``K`` taps. A chunk of output cells gathers those rows side by side into a
per-thread buffer ``(cells, K·C)`` (in cache) and multiplies it once with the
kernel ``(K·C, F)``, written in place into the output. The chunks are
:mod:`.pointwise_rows`' (about four per worker, equal, a multiple of the
workers), so a single signal keeps every worker busy; the kernel gradient is
the same chunks' ``columnsᵀ @ dy``, summed. WaveNet's dilated causal 2-tap
layers (64 -> 128 on 4096) at batch 1 are the case: :mod:`.flat_rows` computes
their kernel gradient as one chunk (one worker).

It applies where it was measured to match :mod:`.flat_rows` on one core
(``K·C`` below :data:`~.flat_rows.GATHER_BELOW`, at most :data:`MAX_CELLS`
output cells; at 16384 cells its forward pass was 16% slower).

Examples
--------
>>> import numpy as np
>>> xp = np.arange(6.0).reshape(1, 6, 1)
>>> direct(xp, np.ones((2, 1, 1)), (1,), (2,), 1, (4,))[0, :, 0]
array([2., 4., 6., 8.])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..dispatch import ConvProblem, Requirements, register_algorithm
from ._threads import run_chunks, worker_count, workspace
from .flat_rows import GATHER_BELOW
from .pointwise_rows import PARTIALS_BYTES, busy_share, chunks

__all__ = ["direct", "weight_grad", "applies", "cost", "PER_FLOP", "MAX_CELLS", "CHUNK_BYTES"]

#: Output and gathered input bytes per chunk at most (measured: 4096 cells 64 -> 128,
#: 2 taps, one core: 128 KiB 1.68 ms, 256 KiB 1.63, 512 KiB 1.59).
CHUNK_BYTES = 512 << 10

#: Output cells (over the batch) up to which it applies: the measured range.
MAX_CELLS = 8192


def _columns(xp: np.ndarray, taps: int, dilation: int, length: int, row0: int, row1: int
             ) -> np.ndarray:
    """``(row1 - row0, taps·C)``: the input rows output cells ``row0 .. row1 - 1``
    (counted over the images, ``length`` each) read, tap by tap side by side."""
    c = xp.shape[-1]
    buffer = workspace("rows_1d", (row1 - row0, taps * c), xp.dtype)
    row = row0
    while row < row1:
        image, first = divmod(row, length)
        stop = min(row1, (image + 1) * length)
        cells = stop - row
        for k in range(taps):
            start = first + k * dilation
            buffer[row - row0:stop - row0, k * c:(k + 1) * c] = xp[image, start:start + cells]
        row = stop
    return buffer


def _check(strides: Sequence[int], groups: int) -> None:
    if groups != 1 or len(strides) != 1 or strides[0] != 1:
        raise ValueError(f"rows_1d needs 1-D, stride 1 and groups=1, got strides={strides}, "
                         f"groups={groups}")


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
    """The registry's direct contract for 1-D, stride 1, one group.

    ``xp`` ``(N, W, C)`` padded, ``kernel`` ``(K, C, F)``; ``y`` ``(N, out, F)``.
    """
    _check(strides, groups)
    n, c = xp.shape[0], xp.shape[-1]
    taps, f = kernel.shape[0], kernel.shape[-1]
    length = out_size[0]
    workers = worker_count() if threads is None else threads
    weights = kernel.reshape(taps * c, f)
    y = np.empty((n, length, f), xp.dtype)
    outputs = y.reshape(-1, f)
    pieces = chunks(n, out_size, taps * c, f, xp.dtype.itemsize, workers, CHUNK_BYTES)

    def work(first: int, last: int) -> None:
        for row0, row1 in pieces[first:last]:
            np.matmul(_columns(xp, taps, dilation[0], length, row0, row1), weights,
                      out=outputs[row0:row1])

    run_chunks(work, len(pieces), 1, threads=threads, flops=2.0 * n * length * taps * c * f)
    return y


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
    """The kernel gradient: per chunk ``columnsᵀ @ dy`` (``(K·C, F)``), summed (at most
    :data:`~.pointwise_rows.PARTIALS_BYTES` of partial sums).

    >>> xp = np.arange(6.0).reshape(1, 6, 1)
    >>> weight_grad(xp, np.ones((1, 4, 1)), (2,), (1,), (2,), 1)[:, 0, 0]
    array([ 6., 14.])
    """
    _check(strides, groups)
    n, c = xp.shape[0], xp.shape[-1]
    taps, f = kernel_size[0], dy.shape[-1]
    length = dy.shape[1]
    grads = np.ascontiguousarray(dy).reshape(-1, f)
    workers = worker_count() if threads is None else threads
    pieces = chunks(n, (length,), taps * c, f, xp.dtype.itemsize, workers, CHUNK_BYTES)
    if len(pieces) > workers and len(pieces) * taps * c * f * xp.dtype.itemsize > PARTIALS_BYTES:
        total = n * length
        count = min(workers, total)
        pieces = [(i * total // count, (i + 1) * total // count) for i in range(count)]

    def work(first: int, last: int) -> np.ndarray:
        partial = np.zeros((taps * c, f), xp.dtype)
        for row0, row1 in pieces[first:last]:
            partial += _columns(xp, taps, dilation[0], length, row0, row1).T @ grads[row0:row1]
        return partial

    partials = run_chunks(work, len(pieces), 1, threads=threads,
                          flops=2.0 * n * length * taps * c * f)
    total_grad = partials[0]
    for partial in partials[1:]:
        total_grad += partial
    return total_grad.reshape(taps, c, f)


#: When the chunked 1-D products apply (the range they were measured on).
applies = Requirements((
    ("1-D", lambda p: p.rank == 1),
    ("stride 1", lambda p: all(s == 1 for s in p.strides)),
    ("groups=1", lambda p: p.groups == 1),
    ("more than one tap", lambda p: math.prod(p.kernel_size) > 1),
    (f"taps x input channels below {GATHER_BELOW}",
     lambda p: math.prod(p.kernel_size) * p.in_channels < GATHER_BELOW),
    (f"at most {MAX_CELLS} output cells", lambda p: p.batch * math.prod(p.out_size) <= MAX_CELLS),
))

#: Cost per FLOP on one worker, in :mod:`.flat_rows`' units (``0.7`` there): measured
#: on one core (CPU time, float32, busy machine; this path against :mod:`.flat_rows`,
#: forward / kernel gradient, ms): 2 taps 64 -> 128 on 4096, dilation 1: 1.59 / 1.76
#: against 1.68 / 1.94; dilation 64: 1.64 / 1.72 against 1.71 / 1.81; on 1024: 0.38 /
#: 0.39 against 0.39 / 0.42.
PER_FLOP = 0.67


def cost(problem: ConvProblem) -> float:
    """``PER_FLOP × FLOPs × W × busy share``: the products of the gathered taps, with the
    most loaded of ``W`` workers' share of the chunks (``1 / W`` when they split evenly).

    >>> p = ConvProblem((1, 4100, 64), (2, 64, 128), (1,), (4,), 1, (4096,), np.dtype("float32"))
    >>> round(cost(p) / p.flops, 2)
    0.67
    """
    workers = worker_count()
    pieces = chunks(problem.batch, problem.out_size, math.prod(problem.kernel_size)
                    * problem.in_channels, problem.out_channels, problem.dtype.itemsize,
                    workers, CHUNK_BYTES)
    return PER_FLOP * problem.flops * workers * busy_share(pieces, workers)


register_algorithm("rows_1d", direct, applies=applies, cost=cost, weight_grad=weight_grad)
