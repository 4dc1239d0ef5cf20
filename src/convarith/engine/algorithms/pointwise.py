"""1×1 transposed convolutions (the input gradient of a 1×1 layer) as one product.

A transposed convolution with a 1×1 kernel ``(1…, F, C)`` sends input cell
``i`` to cell ``lo + i·S`` of the output (``lo`` the low padding of the
zero-inserted grid; a negative one crops) as ``x[i] @ kernel.T``; every other
output cell is zero. So the whole layer is one product of the input cells that
land inside the output with the kernel's transpose, read in place by BLAS, and
a strided write (at stride 1 on several workers, in equal chunks of rows, as
:mod:`.pointwise_rows` does): no flipped, swapped copy of the kernel (the grid way's
``flip_swap``, a transposition that costs more than the product for a
2048 × 1024 kernel on a 4×4 image), no zero-inserted grid.

Examples
--------
>>> import numpy as np
>>> x = np.arange(6.0).reshape(1, 3, 2)          # (N, W, C)
>>> kernel = np.array([[[1.0, 10.0]]])           # (1, F=1, C=2)
>>> transposed(x, kernel, (2,), (1,), 1, ((0, 0),), (5,))[0, :, 0]
array([10.,  0., 32.,  0., 54.])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..dispatch import ConvProblem, Requirements, register_algorithm
from . import _llvm_pointwise, pointwise_rows
from ._threads import SMALL_WORK, releasing_gil, worker_count
from .pointwise_rows import chunks, narrow_kernel_runs, narrow_runner, products

__all__ = ["transposed", "applies", "cost", "FEW_ROWS", "WIDE_KERNEL_BYTES", "wide_kernel_runs"]

#: Input cells (all images) up to which the product runs as the kernel times the cells'
#: transpose; twice as many with a long sum (at least twice as many input channels as
#: outputs). Measured on one core (CPU time, busy machine): 16 cells 1.6–2.1× faster
#: (160 to 2048 channels either way), 32 cells 1.4–1.5×, 49 cells 1.14× (256 -> 1024)
#: and 1.28× (2048 -> 512), 64 cells 1.05×; 128 cells of 1024 -> 256 1.10×, 196 cells
#: as fast, 128 cells of 256 -> 1024 (a short sum) 0.88×.
FEW_ROWS = 64


#: Kernel bytes up to which the input gradient runs :mod:`._llvm_pointwise`'s kernel in
#: blocks of output channels (:func:`wide_kernel_runs`). Its time over BLAS's product
#: with the kernel's transpose (one core, CPU time, busy machine; ms): 24 -> 96 on
#: 16×28² 0.57 / 0.72, 24 -> 144 0.93 / 1.08, 32 -> 192 on 16×14² 0.39 / 0.45, 40 -> 144
#: 0.34 / 0.40, 512 -> 128 3.90 / 5.00, 128 -> 512 4.03 / 4.57, 256 -> 128 on 16×28²
#: 8.05 / 10.0, 96 -> 576 on 16×7² 0.84 / 0.91; beyond it, 160 -> 960 on 16×4² 0.96 /
#: 0.81.
WIDE_KERNEL_BYTES = 256 << 10


def wide_kernel_runs(dtype: np.dtype[Any], cells: int, channels: int, filters: int,
                     workers: int) -> bool:
    """Whether the input gradient of a stride-1 layer (``channels`` the output gradient's,
    ``filters`` the input's) runs :mod:`._llvm_pointwise`'s kernel in blocks of outputs:
    a kernel of at most :data:`WIDE_KERNEL_BYTES`, at least
    :data:`~.pointwise_rows.KERNEL_CELLS` cells, outputs it has blocks for, and on several
    workers at least :data:`~.pointwise_rows.KERNEL_SHARED_FLOPS`.

    >>> wide_kernel_runs(np.dtype("float32"), 3136, 160, 960, 1)
    False
    """
    return (channels * filters * dtype.itemsize <= WIDE_KERNEL_BYTES
            and cells >= pointwise_rows.KERNEL_CELLS
            and _llvm_pointwise.supported(dtype, filters, wide=True)
            and (workers <= 1 or 2.0 * cells * channels * filters
                 >= pointwise_rows.KERNEL_SHARED_FLOPS))


def transposed(
    x: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    padding: Sequence[tuple[int, int]],
    out_size: Sequence[int],
) -> np.ndarray:
    """The registry's transposed contract for a 1×1 kernel and one group.

    ``x`` ``(N, *spatial, C)``, ``kernel`` ``(1…, F, C)``, ``padding`` of the
    zero-inserted grid; ``y`` ``(N, *out_size, F)``.
    """
    if groups != 1:
        raise ValueError(f"pointwise needs groups=1, got groups={groups}")
    n, channels = x.shape[0], x.shape[-1]
    filters = kernel.shape[-2]
    weights = kernel.reshape(filters, channels).T  # (C, F), a view: BLAS reads it transposed
    source: list[slice] = [slice(None)]
    target: list[slice] = [slice(None)]
    whole = True
    for size, s, (lo, _), out in zip(x.shape[1:-1], strides, padding, out_size):
        first = max(0, -(lo // s) if lo < 0 else 0)  # the first input cell inside the output
        last = min(size - 1, (out - 1 - lo) // s) if out > 0 else -1
        if last < first:
            return np.zeros((n, *out_size, filters), x.dtype)
        source.append(slice(first, last + 1))
        target.append(slice(lo + first * s, lo + last * s + 1, s))
        whole = whole and s == 1 and first == 0 and lo == 0 and last + 1 == size == out
    inside = x if whole else np.ascontiguousarray(x[tuple(source)])
    workers = worker_count()
    if whole and 8 * kernel.size <= x.size:
        cells = x.size // channels
        narrow = narrow_kernel_runs(x.dtype, cells, channels, filters, workers)
        if narrow or wide_kernel_runs(x.dtype, cells, channels, filters, workers):
            # the forward pass's compiled kernel (for more outputs, in blocks of them) on
            # the kernel's transpose (a small copy beside the input), as it runs a 1×1
            # layer of ``C`` inputs and ``F`` outputs
            return narrow_runner(x.dtype, x.shape, filters, None, not narrow)(
                x, np.ascontiguousarray(weights))
    if (whole and workers > 1 and 2.0 * x.size * filters >= SMALL_WORK
            and 8 * kernel.size <= x.size):
        # on the workers, in equal chunks of rows (BLAS's own threads do not split a
        # narrow product: see pointwise_rows), with the kernel's transpose copied once
        # where it is small beside the input: read transposed, each chunk's product
        # took half as long again (32 -> 16 on 16×56², one core: 1.12 against 0.74 ms)
        y = np.empty((n, *out_size, filters), x.dtype)
        spatial = x.shape[1:-1]
        pieces = chunks(n, spatial, channels, filters, x.dtype.itemsize, workers)
        products(np.ascontiguousarray(x).reshape(-1, channels), np.ascontiguousarray(weights),
                 y.reshape(-1, filters), pieces, math.prod(spatial[1:]))
        return y
    rows = inside.reshape(-1, channels)
    if len(rows) <= FEW_ROWS * (2 if channels >= 2 * filters else 1):
        # few cells: the kernel (F, C) times the cells' transpose, read in place, then the
        # small result transposed; BLAS ran the cells times the kernel's transposed view
        # at half the rate (one core: 4²×2048 -> 512 0.99 against 0.51 ms, 4²×512 -> 2048
        # 0.94 against 0.51, 4²×320 -> 960 0.25 against 0.14, 7²×2048 -> 512 1.82
        # against 1.42)
        releasing_gil()
        product = np.ascontiguousarray(np.matmul(kernel.reshape(filters, channels), rows.T).T)
    else:
        releasing_gil()
        product = np.matmul(rows, weights)
    if whole:
        return product.reshape(n, *out_size, filters)
    y = np.zeros((n, *out_size, filters), x.dtype)
    y[tuple(target)] = product.reshape(*inside.shape[:-1], filters)
    return y


#: When one product applies: a 1×1 kernel, one group.
applies = Requirements((
    ("a 1x1 kernel", lambda p: all(k == 1 for k in p.kernel_size)),
    ("groups=1", lambda p: p.groups == 1),
))


def cost(problem: ConvProblem) -> float:
    """The products of real input cells (``2·N·cells·C·F``), at half :mod:`.flat_rows`'s
    1×1 rate: the same one product without the kernel's transposed copy."""
    cells = problem.batch * math.prod(problem.input_shape[1:-1])
    return 0.35 * 2.0 * cells * problem.kernel_shape[-2] * problem.kernel_shape[-1]


register_algorithm("pointwise", transposed, applies=applies, cost=cost, kind="transposed")
