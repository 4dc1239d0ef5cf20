"""The weight gradient of a thin input as one product: every tap's cells side by side.

``dk[t, c, f] = sum_m columns[m, t, c] * dy[m, f]`` with ``columns[m, t, c]`` the
input cell that tap ``t`` of output cell ``m`` reads (im2col), so ``dk`` is one
product ``columns.T @ dy``, of shape ``(taps·C × cells) @ (cells × F)``.

Per-tap products (:mod:`.offset_gemm`, :mod:`.flat_rows`) read ``dy`` once a tap: with
one input channel each of them is a row times a matrix, and ``dy`` (``F`` times
larger than ``x``) is read nine times for a 3×3 kernel. Here it is read once. The
columns hold ``taps·C`` values a cell, so this algorithm applies only where
``taps·C <= F``: the columns are then no larger than ``dy`` (the memory rule of the
fast paths, peak extra memory at most 1.5× the operands, holds).

For the first layer of the ``convarith train`` model (3×3, 1 -> 16, 32 images of
16²): 0.04 ms for the columns and 0.05 for the product, against 0.19 ms for per-tap
products (one thread, AVX2 EPYC).

Examples
--------
>>> import numpy as np
>>> xp = np.arange(5.0, dtype=np.float32).reshape(1, 5, 1)
>>> weight_grad(xp, np.ones((1, 4, 2), np.float32), (2,), (1,), (1,), 1)[:, 0, :]
array([[ 6.,  6.],
       [10., 10.]], dtype=float32)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from ..dispatch import ConvProblem, register_algorithm
from ..padding import pad
from . import offset_gemm

__all__ = ["weight_grad", "applies", "weight_grad_cost"]


def columns(xp: np.ndarray, kernel_size: Sequence[int], strides: Sequence[int],
            dilation: Sequence[int], out_size: Sequence[int],
            padding: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """``(N, *out_size, taps, C)``: the input cell each tap of each output cell reads,
    zero where it falls on ``padding`` (zeros before and after each axis of ``xp``; a
    negative value crops)."""
    n, channels = xp.shape[0], xp.shape[-1]
    taps = math.prod(kernel_size)
    before = [0] * len(out_size) if padding is None else [int(lo) for lo, _ in padding]
    result = (np.empty if padding is None else np.zeros)((n, *out_size, taps, channels),
                                                        xp.dtype)
    for tap, offsets in enumerate(itertools.product(*(range(k) for k in kernel_size))):
        # output cells m read input m·S + o·D - lo: those inside the input, per axis
        outputs, inputs = [], []
        for o, d, s, m, lo, size in zip(offsets, dilation, strides, out_size, before,
                                        xp.shape[1:-1]):
            first = max(0, -((o * d - lo) // s))
            stop = min(m, (size - 1 + lo - o * d) // s + 1)
            stop = max(stop, first)
            outputs.append(slice(first, stop))
            start = first * s + o * d - lo
            inputs.append(slice(start, start + (stop - first - 1) * s + 1, s))
        if all(part.stop > part.start for part in outputs):
            result[(slice(None),) + tuple(outputs) + (tap, slice(None))] = \
                xp[(slice(None),) + tuple(inputs) + (slice(None),)]
    return result


def weight_grad(
    xp: np.ndarray,
    dy: np.ndarray,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    *,
    padding: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """Gradient of a one-group ``direct`` convolution with respect to its kernel,
    ``(*kernel_size, C, F)``, as one product ``columns.T @ dy``; ``padding`` (zeros,
    negative values crop) is still to apply to ``xp``: the columns hold its zeros."""
    if groups != 1:
        raise ValueError(f"tap_columns needs one group, got groups={groups}")
    channels, filters = xp.shape[-1], dy.shape[-1]
    cells = math.prod(dy.shape[:-1])
    gathered = columns(xp, kernel_size, strides, dilation, dy.shape[1:-1], padding)
    dk = gathered.reshape(cells, -1).T @ np.ascontiguousarray(dy).reshape(cells, filters)
    return dk.reshape(*kernel_size, channels, filters)


def applies(problem: ConvProblem) -> bool:
    """One group, and ``taps × C`` at most ``F`` (the columns no larger than ``dy``)."""
    taps = math.prod(problem.kernel_size)
    return problem.groups == 1 and taps * problem.kernel_shape[-2] <= problem.out_channels


def _never_forward(problem: ConvProblem) -> float:
    return math.inf


def weight_grad_cost(problem: ConvProblem) -> float:
    """:func:`convarith.engine.gradient_costs.tap_columns`."""
    from .. import gradient_costs

    return gradient_costs.tap_columns(problem)


# the forward pass is offset_gemm's (never chosen: infinite forward cost)
def _forward(xp: np.ndarray, kernel: np.ndarray, strides: Sequence[int],
             dilation: Sequence[int], groups: int, out_size: Sequence[int], *,
             padding: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """offset_gemm's forward pass, on ``xp`` padded first."""
    if padding is not None:
        xp = pad(xp, padding)
    return offset_gemm.direct(xp, kernel, strides, dilation, groups, out_size)


# the forward pass is offset_gemm's (never chosen: infinite forward cost)
register_algorithm("tap_columns", _forward, applies=applies, cost=_never_forward,
                   weight_grad=weight_grad, pads_zeros=True, weight_grad_cost=weight_grad_cost)
