"""The default algorithm: one matrix product per kernel offset.

For each kernel tap ``k`` the input cells it meets form a strided view of the
padded input (``xp[:, k*D : ... : S, ..., :]``: no copy, and dilation costs
nothing); multiplying that view by ``kernel[k]`` (``C x F``) and adding it to
the output gives the convolution after all taps. The output is produced in
blocks of whole rows (over batch and the leading output axes) small enough
that the gathered view and the product fit the workspace budget, so memory
stays bounded whatever the kernel size (plain im2col would hold every tap at
once).

Examples
--------
>>> import numpy as np
>>> xp = np.arange(5.0).reshape(1, 5, 1)
>>> kernel = np.ones((2, 1, 1))
>>> direct(xp, kernel, (1,), (1,), 1, (4,))[0, :, 0]
array([1., 3., 5., 7.])
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np

from .. import gradient_costs
from ..dispatch import ConvProblem, register_algorithm, workspace_budget
from ._threads import SMALL_WORK, parallel_penalty, worker_count

__all__ = ["direct", "weight_grad", "row_blocks", "tap_view"]


def row_blocks(
    sizes: Sequence[int], bytes_per_cell: int, budget: int
) -> Iterator[tuple[slice, ...]]:
    """Split an array of ``sizes`` (batch, then output axes) into C-contiguous blocks.

    Each block is whole along every axis after a split axis, so the block's
    cells are contiguous in the output; it holds at most ``budget`` bytes at
    ``bytes_per_cell`` (or one row of the last axis when even that is larger).

    >>> [b[0] for b in row_blocks((4, 3), 8, 24)]
    [slice(0, 1, None), slice(1, 2, None), slice(2, 3, None), slice(3, 4, None)]
    """
    sizes = tuple(int(s) for s in sizes)
    rank = len(sizes)
    split = rank - 1
    for axis in range(rank):
        tail = int(np.prod(sizes[axis + 1:], dtype=np.int64)) * bytes_per_cell
        if tail <= budget:
            split = axis
            break
    tail = int(np.prod(sizes[split + 1:], dtype=np.int64)) * bytes_per_cell
    step = max(1, budget // max(tail, 1))
    rest = tuple(slice(0, s) for s in sizes[split + 1:])
    for prefix in itertools.product(*(range(s) for s in sizes[:split])):
        head = tuple(slice(i, i + 1) for i in prefix)
        for start in range(0, sizes[split], step):
            yield (*head, slice(start, min(start + step, sizes[split])), *rest)


def tap_view(
    xp: np.ndarray,
    block: Sequence[slice],
    tap: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
) -> np.ndarray:
    """The input cells that kernel tap ``tap`` meets for the output ``block`` (a view).

    ``block`` slices (batch, *output axes); the result has the block's shape
    plus the channel axis.
    """
    index = [block[0]]
    for out_slice, k, s, d in zip(block[1:], tap, strides, dilation):
        first = out_slice.start * s + k * d
        last = (out_slice.stop - 1) * s + k * d
        index.append(slice(first, last + 1, s))
    return xp[tuple(index)]


def _block_shape(block: Sequence[slice]) -> tuple[int, ...]:
    return tuple(b.stop - b.start for b in block)


def direct(
    xp: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_size: Sequence[int],
) -> np.ndarray:
    """Direct convolution of a padded channels-last input (the engine's contract).

    Parameters
    ----------
    xp
        ``(N, *spatial, C)``, padding already applied.
    kernel
        ``(*K, C // groups, F)``.
    strides, dilation
        One int per spatial axis.
    groups
        Channel groups.
    out_size
        Output spatial size.

    Returns
    -------
    numpy.ndarray
        ``(N, *out_size, F)``, ``xp``'s dtype.

    Examples
    --------
    >>> import numpy as np
    >>> xp = np.arange(6.0).reshape(1, 6, 1)
    >>> direct(xp, np.ones((2, 1, 1)), (2,), (2,), 1, (2,))[0, :, 0]
    array([2., 6.])
    """
    channels = xp.shape[-1]
    group_in, filters = kernel.shape[-2:]
    group_out = filters // groups
    taps = kernel.shape[:-2]
    batch = xp.shape[0]
    y = np.zeros((batch, *out_size, filters), dtype=xp.dtype)
    itemsize = xp.dtype.itemsize
    budget = workspace_budget(y.nbytes)
    per_cell = (channels + filters) * itemsize
    blocks = list(row_blocks((batch, *out_size), per_cell, budget))
    largest = max((int(np.prod(_block_shape(b))) for b in blocks), default=0)
    # one pair of buffers for all blocks, so two never coexist
    gather_buffer = np.empty(largest * channels, dtype=xp.dtype)
    product_buffer = np.empty(largest * filters, dtype=xp.dtype)
    for block in blocks:
        shape = _block_shape(block)
        cells = int(np.prod(shape))
        if cells == 0:
            continue
        acc = y[block].reshape(cells, filters)  # a view: blocks are contiguous
        gathered = gather_buffer[:cells * channels].reshape(*shape, channels)
        flat = gathered.reshape(cells, channels)
        product = product_buffer[:cells * filters].reshape(cells, filters)
        for tap in np.ndindex(*taps):
            np.copyto(gathered, tap_view(xp, block, tap, strides, dilation))
            weights = kernel[tap]  # (group_in, filters)
            if groups == 1:
                np.matmul(flat, weights, out=product)
            elif group_in == 1:
                np.multiply(
                    flat[:, :, None],
                    weights.reshape(groups, group_out)[None],
                    out=product.reshape(cells, groups, group_out),
                )
            else:
                grouped = np.matmul(
                    flat.reshape(cells, groups, group_in).transpose(1, 0, 2),
                    weights.reshape(group_in, groups, group_out).transpose(1, 0, 2),
                )
                product.reshape(cells, groups, group_out)[...] = grouped.transpose(1, 0, 2)
            acc += product
    return y


def weight_grad(
    xp: np.ndarray,
    dy: np.ndarray,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> np.ndarray:
    """Gradient of :func:`direct` with respect to its kernel.

    ``dk[k, c, g*Fg + f] = sum_{n, o} xp[n, o*S + k*D, g*Cg + c] * dy[n, o, g*Fg + f]``.

    Examples
    --------
    >>> import numpy as np
    >>> xp = np.arange(5.0).reshape(1, 5, 1)
    >>> weight_grad(xp, np.ones((1, 4, 1)), (2,), (1,), (1,), 1)[:, 0, 0]
    array([ 6., 10.])
    """
    channels = xp.shape[-1]
    filters = dy.shape[-1]
    group_in = channels // groups
    group_out = filters // groups
    dy = np.ascontiguousarray(dy)
    dk = np.zeros((*kernel_size, group_in, filters), dtype=xp.dtype)
    itemsize = xp.dtype.itemsize
    budget = workspace_budget(dk.nbytes)
    blocks = list(row_blocks(dy.shape[:-1], channels * itemsize, budget))
    largest = max((int(np.prod(_block_shape(b))) for b in blocks), default=0)
    gather_buffer = np.empty(largest * channels, dtype=xp.dtype)
    for block in blocks:
        shape = _block_shape(block)
        cells = int(np.prod(shape))
        if cells == 0:
            continue
        grad = dy[block].reshape(cells, filters)
        gathered = gather_buffer[:cells * channels].reshape(*shape, channels)
        flat = gathered.reshape(cells, channels)
        for tap in np.ndindex(*kernel_size):
            np.copyto(gathered, tap_view(xp, block, tap, strides, dilation))
            if groups == 1:
                dk[tap] += flat.T @ grad
            elif group_in == 1:
                dk[tap] += np.einsum(
                    "mg,mgf->gf", flat, grad.reshape(cells, groups, group_out)
                ).reshape(1, filters)
            else:
                per_group = np.matmul(
                    flat.reshape(cells, groups, group_in).transpose(1, 2, 0),
                    grad.reshape(cells, groups, group_out).transpose(1, 0, 2),
                )  # (groups, group_in, group_out)
                dk[tap] += per_group.transpose(1, 0, 2).reshape(group_in, filters)
    return dk


def _cost(problem: ConvProblem) -> float:
    """Plain FLOPs: one product per tap and block of rows, in the calling thread (BLAS
    runs each on its own threads: :func:`~._threads.parallel_penalty`)."""
    # (below SMALL_WORK every algorithm runs inline: no penalty against the others)
    alone = parallel_penalty(1, worker_count()) if problem.flops >= SMALL_WORK else 1.0
    return float(problem.flops) * alone


register_algorithm("offset_gemm", direct, cost=_cost, weight_grad=weight_grad,
                   weight_grad_cost=gradient_costs.per_tap_products)
