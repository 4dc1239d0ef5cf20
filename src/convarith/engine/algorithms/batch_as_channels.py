"""The weight gradient as a forward convolution whose channels are the batch.

``dk[i, j, c, f] = sum_{n, p, q} xp[n, p*S + i*D, q*S' + j*D', c] * dy[n, p, q, f]``
is a forward convolution (the dispatch contract's ``direct``) of

- an input ``X[c, h, w, n] = xp[n, h, w, c]``: x's channels as its batch, x's
  batch as its channels;
- a kernel ``K[p, q, n, f] = dy[n, p, q, f]``: ``dy``'s cells as its taps;

with the strides and dilation swapped (the original dilation steps between
outputs ``i``, the original stride between taps ``p``) and the kernel size as
its output size. Its output ``Y[c, i, j, f]`` is ``dk`` with the first axis moved.

The per-tap products of the weight gradient (:mod:`.flat_rows`,
:mod:`.offset_gemm`) are ``(C × cells) @ (cells × F)``: small in both sides and
long in the cells, a shape BLAS runs at about half its rate. Here the reduction
over the batch is the inner (channel) loop of :mod:`.register_tiles`' compiled
kernel, which keeps its sums in registers: for the ``convarith train`` model's
second layer (3×3, 16 -> 16, 32 images of 16²) 0.41-0.55 ms plus 0.15 ms for the
two copies into the swapped layouts (x's, a full transpose with the padding's zeros, is
a compiled loop where numba is installed: 0.08 ms against NumPy's 0.26), 0.71-0.75 ms
in all against 1.07 for flat_rows (one thread, AVX2 EPYC, busy machine).

The forward pass of this algorithm is :mod:`.register_tiles`' own; its forward
cost is infinite, so :func:`~convarith.engine.dispatch.cheapest` never picks it
for a forward pass.

Examples
--------
>>> import numpy as np
>>> from convarith.engine.algorithms import _llvm, offset_gemm
>>> xp = np.arange(10.0, dtype=np.float32).reshape(1, 5, 2)
>>> dy = np.ones((1, 4, 1), np.float32)
>>> expected = offset_gemm.weight_grad(xp, dy, (2,), (1,), (1,), 1)
>>> expected[:, :, 0]
array([[12., 16.],
       [20., 24.]], dtype=float32)
>>> not _llvm.available(xp.dtype) or np.array_equal(
...     weight_grad(xp, dy, (2,), (1,), (1,), 1), expected)
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..dispatch import ConvProblem, register_algorithm
from ..state import cached_once
from . import register_tiles

__all__ = ["weight_grad", "applies", "weight_grad_cost"]


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
    ``(*kernel_size, C, F)``; ``padding`` (zeros; negative values crop) is still to
    apply to ``xp``, as in :func:`.register_tiles.direct`."""
    if groups != 1:
        raise ValueError(f"batch_as_channels needs one group, got groups={groups}")
    rank = xp.ndim - 2
    pads = [(0, 0)] * rank if padding is None else [(int(lo), int(hi)) for lo, hi in padding]
    # negative padding crops; the zeros are written with the swapped copy of x, which
    # the copy costs anyway (register_tiles' own padding, chunk by chunk, took longer)
    crop = tuple(slice(max(0, -lo), n - max(0, -hi)) for (lo, hi), n in zip(pads, xp.shape[1:-1]))
    xp = xp[(slice(None),) + crop + (slice(None),)]
    pads = [(max(0, lo), max(0, hi)) for lo, hi in pads]
    # x's channels first, its batch last; dy's batch between its cells and filters
    size = tuple(n + lo + hi for n, (lo, hi) in zip(xp.shape[1:-1], pads))
    x_swapped = np.zeros((xp.shape[-1], *size, xp.shape[0]), xp.dtype)
    swap = _numba_swap()
    if swap is not None and xp.dtype.kind == "f":
        # a compiled loop: 0.08 ms for the 16-channel layer, NumPy's copy 0.26
        rows_first = (1,) * (2 - rank)
        swap(xp.reshape(xp.shape[0], *rows_first, *xp.shape[1:]),
             x_swapped.reshape(x_swapped.shape[0], *rows_first, *x_swapped.shape[1:]),
             *((0,) * (2 - rank)), *(lo for lo, _ in pads))
    else:
        inside = tuple(slice(lo, lo + n) for n, (lo, _) in zip(xp.shape[1:-1], pads))
        x_swapped[(slice(None),) + inside + (slice(None),)] = np.moveaxis(xp, (0, -1), (-1, 0))
    dy_swapped = np.moveaxis(dy, 0, -2)  # register_tiles packs its own panels from it
    swapped = register_tiles.direct(
        x_swapped, dy_swapped, tuple(dilation), tuple(strides), 1, tuple(kernel_size))
    return np.ascontiguousarray(np.moveaxis(swapped, 0, rank))


@cached_once
def _numba_swap() -> Callable[..., None] | None:
    """Compiled ``out[c, lo0 + i, lo1 + j, n] = x[n, i, j, c]``, or ``None`` without numba."""
    try:
        import numba
    except ImportError:  # pragma: no cover - exercised by the numba-less test
        return None

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def swap(x, out, lo0, lo1):
        n, h, w, c = x.shape
        for b in range(n):
            for i in range(h):
                for j in range(w):
                    for k in range(c):
                        out[k, lo0 + i, lo1 + j, b] = x[b, i, j, k]

    return swap


def applies(problem: ConvProblem) -> bool:
    """One group, 1-D or 2-D, where :mod:`.register_tiles` has its compiled kernels."""
    return problem.groups == 1 and register_tiles.applies(problem)


def _never_forward(problem: ConvProblem) -> float:
    return math.inf


def weight_grad_cost(problem: ConvProblem) -> float:
    """:func:`convarith.engine.gradient_costs.batch_as_channels`."""
    from .. import gradient_costs

    return gradient_costs.batch_as_channels(problem)


register_algorithm("batch_as_channels", register_tiles.direct, applies=applies,
                   cost=_never_forward, weight_grad=weight_grad, pads_zeros=True,
                   weight_grad_cost=weight_grad_cost)
