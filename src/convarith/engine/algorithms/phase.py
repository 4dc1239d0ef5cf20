"""Transposed convolutions by output phases (sub-pixel convolution), no zeros inserted.

A transposed convolution with stride ``S`` is, by definition, a stride-1
convolution of the input with ``S - 1`` zeros inserted between cells: on a
4×4 kernel with stride 2, three quarters of the products meet a zero. Split
the *output* by phase instead: output cells ``o = q·S + r`` of phase ``r``
meet real input cells only through the taps ``t`` with
``r + t·D - pad ≡ 0 (mod S)``, and read input cell ``q + (r + t·D - pad) / S``.
So each output phase is an ordinary stride-1 convolution of the *original*
input with a subset of the taps; every tap belongs to exactly one phase per
axis, and the phases together do exactly the products that matter. Each phase
runs as flat-row GEMMs (see :mod:`.flat_rows`): one matrix product per tap
over the flattened, padded input, no copies.

Examples
--------
>>> import numpy as np
>>> x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
>>> k = np.array([1.0, 10.0]).reshape(2, 1, 1)   # (K, F/g, C)
>>> transposed(x, k, (2,), (1,), 1, ((1, 1),), (6,))[0, :, 0]
array([ 1., 10.,  2., 20.,  3., 30.])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from ..dispatch import ConvProblem, Requirements, register_algorithm
from ._threads import run_chunks
from .flat_rows import accumulate, blas_gemm, chunk_rows

__all__ = ["transposed", "applies_transposed", "applies", "cost", "phase_taps"]


def phase_taps(phase: int, stride: int, dilation: int, low: int, taps: int
               ) -> list[tuple[int, int]]:
    """The taps ``t`` of the flipped kernel that reach output phase ``phase`` of one axis,
    with the input cell offset each reads (``(phase + t·D - low) / S``).

    >>> phase_taps(0, 2, 1, 2, 4), phase_taps(1, 2, 1, 2, 4)
    ([(0, -1), (2, 0)], [(1, 0), (3, 1)])
    """
    return [(t, (phase + t * dilation - low) // stride) for t in range(taps)
            if (phase + t * dilation - low) % stride == 0]


def applies_transposed(strides: Sequence[int], groups: int) -> bool:
    """Worth it (and supported) for one group and some stride above 1.

    >>> applies_transposed((2, 2), 1), applies_transposed((1, 1), 1)
    (True, False)
    """
    return groups == 1 and any(s > 1 for s in strides)


def transposed(
    x: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    padding: Sequence[tuple[int, int]],
    out_size: Sequence[int],
    *,
    use_blas: bool = False,
    threads: int | None = None,
    chunk_bytes: int | None = None,
) -> np.ndarray:
    """Transposed convolution, same contract as ``engine.core.transposed_conv``.

    Parameters
    ----------
    x
        ``(N, *spatial, C)`` channels-last input (not zero-inserted).
    kernel
        ``(*K, F, C)``: the transposed layout (one group).
    strides, dilation
        Per spatial axis.
    groups
        Must be 1.
    padding
        Padding of the zero-inserted input per axis (``(lo, hi)``, negative
        crops): the resolved spec's ``.padding``.
    use_blas
        Accumulate with SciPy's BLAS ``gemm`` (``beta = 1``); off by default, as in
        :func:`.flat_rows.direct` (SciPy's OpenBLAS threads fight NumPy's).
    threads
        Worker threads (default: one per core).
    chunk_bytes
        Output bytes per chunk of rows (default ``flat_rows.CHUNK_BYTES``).

    Returns
    -------
    numpy.ndarray
        ``(N, *out, F)`` with ``out = (I - 1)·S + 1 + lo + hi - D·(K - 1)``.

    Examples
    --------
    >>> x = np.ones((1, 2, 2, 1))
    >>> transposed(x, np.ones((2, 2, 1, 1)), (2, 2), (1, 1), 1, ((1, 1), (1, 1)), (4, 4))[0, ..., 0]
    array([[1., 1., 1., 1.],
           [1., 1., 1., 1.],
           [1., 1., 1., 1.],
           [1., 1., 1., 1.]])
    """
    if groups != 1:
        raise ValueError(f"phase transposed convolution needs groups=1, got groups={groups}")
    rank = len(strides)
    n, *size, c = x.shape
    kernel_size = kernel.shape[:rank]
    f = kernel.shape[rank]
    # the direct kernel of the equivalent stride-1 convolution: flipped, (F, C) -> (C, F)
    direct_kernel = np.swapaxes(kernel[(slice(None, None, -1),) * rank], -1, -2)
    out_size = list(out_size)
    # per axis and output phase r: the taps that meet real cells, and their shifts
    axis_phases: list[list[list[tuple[int, int]]]] = []
    low = [0] * rank
    high = [0] * rank
    for axis in range(rank):
        s, d, (lo, _), k = strides[axis], dilation[axis], padding[axis], kernel_size[axis]
        phases: list[list[tuple[int, int]]] = []
        for r in range(s):
            taps = phase_taps(r, s, d, lo, k)
            phases.append(taps)
            count = -(-(out_size[axis] - r) // s) if out_size[axis] > r else 0
            for _, shift in taps:
                low[axis] = max(low[axis], -shift)
                high[axis] = max(high[axis], count - 1 + shift - (size[axis] - 1))
        axis_phases.append(phases)
    grid = [i + lo + hi for i, lo, hi in zip(size, low, high)]
    xpad = np.zeros((n, *grid, c), x.dtype)
    xpad[(slice(None),) + tuple(slice(lo, lo + i) for lo, i in zip(low, size))] = x
    flat = xpad.reshape(-1, c)
    cells = math.prod(grid)
    usable_rows = flat.shape[0]
    steps = [math.prod(grid[axis + 1:]) for axis in range(rank)]
    y = np.zeros((n, *out_size, f), x.dtype)
    blas = use_blas and blas_gemm(x.dtype) is not None
    # every (output phase, image, block of rows): its taps, flat offsets and rows
    jobs = []
    per_chunk = chunk_rows(steps[0], f, x.dtype.itemsize, chunk_bytes)
    for phase in itertools.product(*(range(s) for s in strides)):
        counts = [-(-(o - r) // s) if o > r else 0 for o, r, s in zip(out_size, phase, strides)]
        tap_lists = [axis_phases[axis][r] for axis, r in enumerate(phase)]
        if 0 in counts or any(not taps for taps in tap_lists):
            continue  # no output cells, or only zeros reach them (y starts at zero)
        combos = list(itertools.product(*tap_lists))
        tap_offsets = [
            (tuple(t for t, _ in combo),
             sum((shift + low[a]) * steps[a] for a, (_, shift) in enumerate(combo)))
            for combo in combos
        ]
        limit = usable_rows - max(offset for _, offset in tap_offsets)
        for image in range(n):
            for row0 in range(0, counts[0], per_chunk):
                jobs.append((phase, tuple(counts), tap_offsets, limit, image, row0,
                             min(counts[0], row0 + per_chunk)))

    def work(first: int, last: int) -> None:
        for phase, counts, tap_offsets, limit, image, row0, row1 in jobs[first:last]:
            start = image * cells + row0 * steps[0]
            stop = min(image * cells + row1 * steps[0], limit)
            block = np.empty(((row1 - row0) * steps[0], f), x.dtype)
            target = block[: stop - start]
            scratch = None if blas else np.empty_like(target)
            for index, (tap, offset) in enumerate(tap_offsets):
                piece = flat[start + offset: stop + offset]
                accumulate(piece, direct_kernel[tap], target, scratch, blas, add=index > 0)
            on_grid = block.reshape(row1 - row0, *grid[1:], f)
            real = on_grid[(slice(None),) + tuple(slice(0, q) for q in counts[1:])]
            rows = slice(phase[0] + row0 * strides[0], phase[0] + row1 * strides[0], strides[0])
            others = tuple(slice(r, None, s) for r, s in zip(phase[1:], strides[1:]))
            y[(image, rows) + others] = real

    flops = 2.0 * x.size * math.prod(kernel_size) * f
    run_chunks(work, len(jobs), 1, threads=threads, flops=flops)
    return y


#: When output phases apply (the registry's transposed contract): one group, a stride above 1.
applies = Requirements((
    ("groups=1", lambda p: p.groups == 1),
    ("a stride above 1 on some axis", lambda p: any(s > 1 for s in p.strides)),
))


def cost(problem: ConvProblem) -> float:
    """The products that meet real cells, in :mod:`.flat_rows` units.

    ``problem.flops`` counts every tap at every output cell of the
    zero-inserted grid; only ``1 / prod(strides)`` of them meet an input
    cell, and each phase runs as flat-row products (``0.7 ×`` FLOPs there).
    """
    return 0.7 * problem.flops / math.prod(problem.strides)


register_algorithm("phase", transposed, applies=applies, cost=cost, kind="transposed")
