"""Max and average pooling over channels-last arrays, forward and backward.

The window's cells are visited one kernel tap at a time, each tap a strided
view of the padded input (as in :mod:`.algorithms.offset_gemm`), so memory
stays at a few output-sized arrays. Divisors follow PyTorch exactly:

* ``count_include_pad=True``: the cells of the window inside the padded input
  (a ceil-mode window hanging past the padding counts only what it covers);
* ``count_include_pad=False``: the window's cells inside the real input.

Max pooling pads with ``-inf``, propagates NaN, and its gradient goes to the
first maximum in window order (PyTorch's rule for ties).

Examples
--------
>>> import numpy as np
>>> from convarith import ConvSpec
>>> x = np.arange(5.0).reshape(1, 5, 1)
>>> spec = ConvSpec(2, strides=2, pool="avg", ceil_mode=True, rank=1)
>>> forward(x, spec.resolve(x.shape))[0, :, 0]
array([0.5, 2.5, 4. ])
"""

from __future__ import annotations

import math

import numpy as np

from ..spec import ResolvedConv
from .algorithms.offset_gemm import tap_view
from .padding import pad

__all__ = ["forward", "backward", "divisor"]


def _padded(x: np.ndarray, resolved: ResolvedConv, fill: float) -> np.ndarray:
    """Pad per the spec, plus the cells a ceil-mode window hangs past the end."""
    return pad(x, resolved.window_padding, "zeros", fill=fill)


def _whole(resolved: ResolvedConv, batch: int) -> tuple[slice, ...]:
    return (slice(0, batch), *(slice(0, n) for n in resolved.output_size))


def divisor(resolved: ResolvedConv) -> np.ndarray:
    """How many cells each output cell of an average pool divides by.

    Shaped ``(*output_size, 1)`` to broadcast over channels-last outputs.

    >>> from convarith import ConvSpec
    >>> divisor(ConvSpec(3, padding=1, pool="avg", rank=1).resolve((4,)))[:, 0].tolist()
    [2.0, 3.0, 3.0, 2.0]
    """
    spec = resolved.spec
    total = np.ones((), dtype=np.float64)
    for axis, (lo, hi) in enumerate(resolved.padding):
        size = resolved.input_size[axis]
        s, d, k = spec.strides[axis], spec.dilation[axis], spec.kernel_size[axis]
        starts = np.arange(resolved.output_size[axis])[:, None] * s
        positions = starts + np.arange(k)[None, :] * d
        if spec.count_include_pad:
            inside = positions < size + lo + hi
        else:
            inside = (positions >= lo) & (positions < lo + size)
        counts = inside.sum(axis=1).astype(np.float64)
        total = np.multiply.outer(total, counts)
    return total[..., None]


def forward(x: np.ndarray, resolved: ResolvedConv) -> np.ndarray:
    """Pool channels-last ``x`` ``(N, *spatial, C)`` per the resolved spec.

    The window is reduced one axis at a time (:func:`reduce_windows`): a max or
    a sum over a rectangle is the max or sum over its rows of the max or sum
    over each row, so a ``K×K`` window costs about ``2K`` passes, not ``K²``.

    >>> from convarith import ConvSpec
    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> forward(x, ConvSpec(2, strides=2, pool="max").resolve(x.shape))[0, ..., 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    """
    spec = resolved.spec
    if spec.pool == "max":
        xp = _padded(x, resolved, -np.inf)
        return reduce_windows(xp, np.maximum, spec.kernel_size, spec.strides, spec.dilation,
                              resolved.output_size)
    xp = _padded(x, resolved, 0.0)
    y = reduce_windows(xp, np.add, spec.kernel_size, spec.strides, spec.dilation,
                       resolved.output_size)
    if not any(resolved.overhang) and (spec.count_include_pad or not any(
            lo or hi for lo, hi in resolved.padding)):
        y /= y.dtype.type(math.prod(spec.kernel_size))  # every window counts all its cells
        return y
    with np.errstate(divide="ignore", invalid="ignore"):
        y /= divisor(resolved).astype(x.dtype)
    return y


def reduce_windows(xp: np.ndarray, op: np.ufunc, kernel_size: tuple[int, ...],
                   strides: tuple[int, ...], dilation: tuple[int, ...],
                   out_size: tuple[int, ...]) -> np.ndarray:
    """``op`` (``np.add`` or ``np.maximum``) over every window of padded ``xp``, a new
    array ``(N, *out_size, C)``.

    One spatial axis at a time: along it, the ``K`` cells of each window are
    combined (``K - 1`` passes over strided views), or, for a single window (a
    global pool), one ``op.reduce`` over the cells it covers. ``np.maximum``
    propagates NaN, as PyTorch's max pooling does.

    >>> reduce_windows(np.arange(6.0).reshape(1, 6, 1), np.add, (3,), (3,), (1,), (2,))[0, :, 0]
    array([ 3., 12.])
    """
    current = xp
    for axis, (k, s, d, o) in enumerate(zip(kernel_size, strides, dilation, out_size), 1):
        def along(first: int, step: int, count: int, array: np.ndarray = current,
                  axis: int = axis) -> np.ndarray:
            index = [slice(None)] * array.ndim
            index[axis] = slice(first, first + (count - 1) * step + 1, step) if count else \
                slice(0, 0)
            return array[tuple(index)]

        if o == 0 or k == 1:
            current = along(0, s, o)
            continue
        if o == 1:
            current = op.reduce(along(0, d, k), axis=axis, keepdims=True)
            continue
        combined = np.array(along(0, s, o))
        for tap in range(1, k):
            op(combined, along(tap * d, s, o), out=combined)
        current = combined
    if current is xp or not current.flags.owndata:
        current = np.array(current)  # a view of the input (a 1×1 window): copy
    return current


def _max_with_argmax(
    xp: np.ndarray, resolved: ResolvedConv, block: tuple[slice, ...], want_argmax: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    spec = resolved.spec
    shape = (xp.shape[0], *resolved.output_size, xp.shape[-1])
    best = np.full(shape, -np.inf, dtype=xp.dtype)
    argmax = np.zeros(shape, dtype=np.int32) if want_argmax else None
    update = np.empty(shape, dtype=bool)
    for number, tap in enumerate(np.ndindex(*spec.kernel_size)):
        view = tap_view(xp, block, tap, spec.strides, spec.dilation)
        if number == 0:
            best[...] = view
            continue
        # PyTorch: take the new value if it is larger, or NaN (first max wins ties)
        np.greater(view, best, out=update)
        update |= np.isnan(view)
        np.copyto(best, view, where=update)
        if argmax is not None:
            argmax[update] = number
    return best, argmax


def backward(x: np.ndarray, resolved: ResolvedConv, dy: np.ndarray) -> np.ndarray:
    """Gradient of :func:`forward` with respect to ``x``, given the output gradient."""
    spec = resolved.spec
    block = _whole(resolved, x.shape[0])
    fill = -np.inf if spec.pool == "max" else 0.0
    xp = _padded(x, resolved, fill)
    d_xp = np.zeros_like(xp)
    if spec.pool == "max":
        _, argmax = _max_with_argmax(xp, resolved, block, want_argmax=True)
        assert argmax is not None
        for number, tap in enumerate(np.ndindex(*spec.kernel_size)):
            target = tap_view(d_xp, block, tap, spec.strides, spec.dilation)
            target += np.where(argmax == number, dy, 0)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            share = dy / divisor(resolved).astype(dy.dtype)
        for tap in np.ndindex(*spec.kernel_size):
            target = tap_view(d_xp, block, tap, spec.strides, spec.dilation)
            target += share
    lo_pads = [lo for lo, _ in resolved.padding]
    inner = (slice(None),) + tuple(
        slice(lo, lo + n) for lo, n in zip(lo_pads, resolved.input_size)
    )
    return np.ascontiguousarray(d_xp[inner])
