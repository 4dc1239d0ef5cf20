"""Pure integer arithmetic of convolutions: sizes, padding, dropped rows, a solver.

Every function here works on one spatial axis and plain ``int`` values; the
spec (:mod:`convarith.spec`) applies them axis by axis. Nothing in this module
uses NumPy.

The central formula (the lesson's slide 10 misprints it as
``(I - K + 2P) / (S + 1)``)::

    O = floor((I + P_lo + P_hi - K_eff) / S) + 1,   K_eff = K + (K - 1)(D - 1)

Examples
--------
>>> conv_output_size(28, 3, stride=3, padding=(1, 1))
10
>>> effective_kernel(3, 2)
5
>>> same_padding(28, 3, stride=2)
(0, 1)
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

__all__ = [
    "check_int",
    "effective_kernel",
    "conv_output_size",
    "same_output_size",
    "same_padding",
    "causal_padding",
    "full_padding",
    "dropped_rows",
    "pool_output_size",
    "window_reach",
    "ceil_overhang",
    "zero_inserted_size",
    "padding_source",
    "GRID_CELL_KINDS",
    "windows_reading",
    "grid_cell",
    "grid_cells",
    "transposed_grid_output_size",
    "transposed_output_size",
    "keras_transposed_output_size",
    "transposed_same_padding",
    "transposed_valid_padding",
    "transposed_input_padding",
    "transposed_crop",
    "input_gradient_padding",
    "padding_for_output",
    "Solution",
    "solve",
]


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (not a bool), at least ``minimum``; otherwise an error naming ``name``.

    The one integer check of convarith: the spec, the solver and the commands use it.

    >>> check_int("stride", 2, 1)
    2
    >>> check_int("stride", 0, 1)
    Traceback (most recent call last):
    ...
    ValueError: stride must be positive, got 0
    >>> check_int("padding", 2.0)
    Traceback (most recent call last):
    ...
    TypeError: padding must be an integer, got 2.0 (float)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        rule = {1: "positive", 0: "0 or more"}.get(minimum, f"at least {minimum}")
        raise ValueError(f"{name} must be {rule}, got {value}")
    return value


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def effective_kernel(kernel: int, dilation: int = 1) -> int:
    """Span of a dilated kernel: ``K + (K - 1)(D - 1)``.

    >>> effective_kernel(3, 2)   # a 3-tap kernel with dilation 2 sees 5 cells
    5
    """
    return kernel + (kernel - 1) * (dilation - 1)


def conv_output_size(
    size: int, kernel: int, stride: int = 1, dilation: int = 1, padding: tuple[int, int] = (0, 0)
) -> int:
    """Output length of a direct convolution: ``floor((I + lo + hi - K_eff) / S) + 1``.

    Returns 0 or less when the kernel does not fit in the padded input; callers
    that need a real output reject that.

    >>> conv_output_size(28, 3, stride=1, padding=(1, 1))
    28
    >>> conv_output_size(5, 3, stride=2, padding=(1, 1))
    3
    """
    lo, hi = padding
    span = size + lo + hi - effective_kernel(kernel, dilation)
    if span < 0:
        return 0
    return span // stride + 1


def same_output_size(size: int, stride: int = 1) -> int:
    """Output length that "same" padding aims for: ``ceil(I / S)``.

    >>> same_output_size(5, 2)
    3
    """
    return _ceil_div(size, stride)


def same_padding(
    size: int, kernel: int, stride: int = 1, dilation: int = 1, lower: bool = False
) -> tuple[int, int]:
    """Per-side padding of "same": total ``max(0, (ceil(I/S) - 1) S + K_eff - I)``.

    An odd total puts the extra pixel at the end (Keras, TensorFlow, JAX
    ``SAME``, ONNX ``SAME_UPPER``, PyTorch) or, with ``lower=True``, at the
    start (JAX ``SAME_LOWER``, ONNX ``SAME_LOWER``).

    >>> same_padding(28, 3, stride=2)
    (0, 1)
    >>> same_padding(28, 3, stride=2, lower=True)
    (1, 0)
    """
    out = same_output_size(size, stride)
    total = max(0, window_reach(out, kernel, stride, dilation) - size)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def causal_padding(kernel: int, dilation: int = 1) -> tuple[int, int]:
    """Keras ``Conv1D(padding="causal")``: ``D (K - 1)`` zeros on the left only.

    >>> causal_padding(3, 8)
    (16, 0)
    """
    return (dilation * (kernel - 1), 0)


def full_padding(kernel: int, dilation: int = 1) -> tuple[int, int]:
    """"full" padding: every overlap of kernel and input, ``K_eff - 1`` per side.

    >>> full_padding(3)
    (2, 2)
    """
    pad = effective_kernel(kernel, dilation) - 1
    return (pad, pad)


def dropped_rows(
    size: int, kernel: int, stride: int = 1, dilation: int = 1, padding: tuple[int, int] = (0, 0)
) -> int:
    """Trailing *input* rows that no window ever reads (padding rows not counted).

    The last window ends at ``(O - 1) S + K_eff`` in padded coordinates; what
    lies beyond is ``(I + lo + hi - K_eff) mod S`` padded rows, of which the
    ones that are not padding are real input that the convolution ignores.

    >>> dropped_rows(28, 3, stride=2)   # windows start at 0, 2, ..., 24: row 27 unread
    1
    """
    lo, hi = padding
    span = size + lo + hi - effective_kernel(kernel, dilation)
    if span < 0:
        return 0
    unread = span % stride
    return max(0, min(size, unread - hi))


def pool_output_size(
    size: int,
    kernel: int,
    stride: int,
    dilation: int = 1,
    padding: tuple[int, int] = (0, 0),
    ceil_mode: bool = False,
) -> int:
    """Output length of pooling, floor or ceil mode (PyTorch's rule for ceil).

    In ceil mode a last partial window is kept, but only if it starts inside
    the input or the left padding (PyTorch's rule, which ONNX follows).

    >>> pool_output_size(5, 2, 2)
    2
    >>> pool_output_size(5, 2, 2, ceil_mode=True)
    3
    """
    lo, hi = padding
    span = size + lo + hi - effective_kernel(kernel, dilation)
    if not ceil_mode:
        return span // stride + 1 if span >= 0 else 0
    # ceil mode also keeps a window larger than the padded input (PyTorch accepts it)
    out = _ceil_div(span, stride) + 1
    if out > span // stride + 1 and (out - 1) * stride >= size + lo:
        out -= 1  # the extra window would start in the right padding
    return max(out, 0)


def window_reach(output: int, kernel: int, stride: int = 1, dilation: int = 1) -> int:
    """Cells from the start of the padded input to the end of the last window: ``(O - 1) S + K_eff``.

    >>> window_reach(3, 2, stride=2)   # windows [0, 2), [2, 4), [4, 6)
    6
    """
    return (output - 1) * stride + effective_kernel(kernel, dilation)


def ceil_overhang(
    size: int,
    output: int,
    kernel: int,
    stride: int = 1,
    dilation: int = 1,
    padding: tuple[int, int] = (0, 0),
) -> int:
    """Cells past the padded input that the last (ceil-mode pooling) window reaches.

    ``max(0, (O - 1) S + K_eff - (I + lo + hi))``; 0 whenever ``O`` is the
    floor-mode output size.

    >>> ceil_overhang(5, pool_output_size(5, 2, 2, ceil_mode=True), 2, stride=2)
    1
    >>> ceil_overhang(5, pool_output_size(5, 2, 2), 2, stride=2)
    0
    """
    lo, hi = padding
    return max(0, window_reach(output, kernel, stride, dilation) - (size + lo + hi))


def zero_inserted_size(size: int, stride: int = 1) -> int:
    """Length of an input with ``S - 1`` zeros inserted between its cells: ``(I - 1) S + 1``.

    >>> zero_inserted_size(3, 2)   # x 0 x 0 x
    5
    """
    return (size - 1) * stride + 1


def padding_source(index: int, size: int, mode: str = "zeros") -> int | None:
    """The input cell that cell ``index`` (input coordinates) holds under ``mode``; ``None`` for a zero.

    Inside the input a cell is itself; outside, ``"zeros"`` padding holds a
    zero and ``"reflect"`` (mirror without repeating the edge), ``"replicate"``
    and ``"circular"`` copy an input cell.

    >>> [padding_source(i, 4, "reflect") for i in (-2, -1, 0, 3, 4, 5)]
    [2, 1, 0, 3, 2, 1]
    >>> padding_source(-1, 4), padding_source(-1, 4, "replicate"), padding_source(-1, 4, "circular")
    (None, 0, 3)
    """
    if 0 <= index < size:
        return index
    if mode == "zeros":
        return None
    if mode == "replicate":
        return min(max(index, 0), size - 1)
    if mode == "circular":
        return index % size
    # reflect: mirror without repeating the edge
    if size == 1:
        return 0
    period = 2 * (size - 1)
    index %= period
    return index if index < size else period - index


#: What a cell of the grid the windows slide over is (:func:`grid_cell`).
GRID_CELL_KINDS = (
    "input",     # an input cell some window reads
    "dropped",   # a trailing input cell past the last window (:func:`dropped_rows`)
    "skipped",   # an input cell the windows step over (stride larger than the window)
    "padding",   # a zero added around the input
    "copy",      # padding that copies an input cell (reflect, replicate, circular)
    "inserted",  # a zero inserted between input cells (transposed convolution)
    "beyond",    # past the padded input, read only by a ceil-mode pooling window
)


def windows_reading(position: int, output: int, kernel: int, stride: int = 1,
                    dilation: int = 1) -> list[tuple[int, int]]:
    """The ``(window, tap)`` pairs that read grid cell ``position``: ``o S + k D = position``.

    Windows ``o`` run over ``0 .. output - 1``, taps ``k`` over ``0 .. kernel - 1``.

    >>> windows_reading(4, 3, 3, stride=2)   # windows start at 0, 2, 4
    [(1, 2), (2, 0)]
    >>> windows_reading(2, 2, 2, stride=3)   # windows [0, 2) and [3, 5) step over cell 2
    []
    """
    hits = []
    for k in range(kernel):
        start = position - k * dilation
        if start >= 0 and start % stride == 0 and start // stride < output:
            hits.append((start // stride, k))
    return sorted(hits)


def grid_cell(
    position: int,
    size: int,
    output: int,
    kernel: int,
    stride: int = 1,
    dilation: int = 1,
    padding: tuple[int, int] = (0, 0),
    *,
    transposed: bool = False,
    padding_mode: str = "zeros",
) -> tuple[str, int | None]:
    """What cell ``position`` of the grid the windows slide over is, along one axis.

    The grid is the padded input (for a transposed convolution: the
    zero-inserted input, ``S - 1`` zeros between cells, then padded; a
    negative padding crops), and for ceil-mode pooling whatever the last of
    the ``output`` windows reaches past it. Returns ``(kind, source)``:
    ``kind`` one of :data:`GRID_CELL_KINDS`, ``source`` the input cell whose
    value the cell holds (``None`` for a zero). A direct window ``o`` reads
    the cells ``o S + k D``; an input cell at or past the last window's reach
    ``(O - 1) S + K_eff`` is ``"dropped"``, one before it that no window reads
    is ``"skipped"``. A transposed convolution's stride-1 windows read every cell.

    >>> [grid_cell(p, 5, 2, 3, stride=2)[0] for p in range(5)]   # windows [0, 3), [2, 5)
    ['input', 'input', 'input', 'input', 'input']
    >>> [grid_cell(p, 6, 2, 3, stride=2)[0] for p in range(6)]   # (6 - 3) mod 2: the last is unread
    ['input', 'input', 'input', 'input', 'input', 'dropped']
    >>> [grid_cell(p, 2, 4, 2, stride=2, padding=(1, 1), transposed=True) for p in range(5)]
    [('padding', None), ('input', 0), ('inserted', None), ('input', 1), ('padding', None)]
    """
    lo, hi = padding
    index = position - lo
    if transposed:
        if 0 <= index < zero_inserted_size(size, stride):
            return ("input", index // stride) if index % stride == 0 else ("inserted", None)
        return "padding", None
    if position >= size + lo + hi:
        return "beyond", None
    if 0 <= index < size:
        if position >= window_reach(output, kernel, stride, dilation):
            return "dropped", index
        return ("input" if windows_reading(position, output, kernel, stride, dilation)
                else "skipped"), index
    source = padding_source(index, size, padding_mode)
    return ("padding", None) if source is None else ("copy", source)


def grid_cells(
    size: int,
    output: int,
    kernel: int,
    stride: int = 1,
    dilation: int = 1,
    padding: tuple[int, int] = (0, 0),
    *,
    transposed: bool = False,
    padding_mode: str = "zeros",
    extent: int | None = None,
) -> list[tuple[str, int | None]]:
    """:func:`grid_cell` for every position ``0 .. extent - 1`` of the grid.

    ``extent`` defaults to the padded (zero-inserted, if transposed) size;
    ceil-mode pooling's windows may reach past it, to ``window_reach``.

    >>> [kind for kind, _ in grid_cells(7, 2, 2, stride=3)]   # windows [0, 2), [3, 5)
    ['input', 'input', 'skipped', 'input', 'input', 'dropped', 'dropped']
    >>> grid_cells(4, 4, 3, padding=(1, 1), padding_mode="reflect")[0]
    ('copy', 1)
    """
    lo, hi = padding
    if extent is None:
        extent = (zero_inserted_size(size, stride) if transposed else size) + lo + hi
    return [grid_cell(p, size, output, kernel, stride, dilation, padding, transposed=transposed,
                      padding_mode=padding_mode) for p in range(extent)]


def transposed_grid_output_size(
    size: int, kernel: int, stride: int = 1, dilation: int = 1, padding: tuple[int, int] = (0, 0)
) -> int:
    """Output length of a transposed convolution from the padding of its zero-inserted grid.

    The stride-1 window slides over ``(I - 1) S + 1 + lo + hi`` cells, so the
    output has ``(I - 1) S + 1 + lo + hi - D (K - 1)`` (negative ``lo``/``hi``
    crop). Not clamped: 0 or less when the crops leave no output.

    >>> transposed_grid_output_size(28, 4, stride=2, padding=(2, 2))   # PyTorch padding=1
    56
    """
    lo, hi = padding
    return zero_inserted_size(size, stride) + lo + hi - (effective_kernel(kernel, dilation) - 1)


def transposed_output_size(
    size: int,
    kernel: int,
    stride: int = 1,
    dilation: int = 1,
    crop: tuple[int, int] = (0, 0),
    output_padding: int = 0,
) -> int:
    """Output length of a transposed convolution, PyTorch/ONNX form.

    ``(I - 1) S - lo - hi + D (K - 1) + output_padding + 1``; PyTorch's
    symmetric ``padding=P`` is ``crop=(P, P)``.

    >>> transposed_output_size(28, 4, stride=2, crop=(1, 1))
    56
    """
    padding = transposed_input_padding(kernel, dilation, crop, output_padding)
    return transposed_grid_output_size(size, kernel, stride, dilation, padding)


def keras_transposed_output_size(
    size: int,
    kernel: int,
    stride: int = 1,
    dilation: int = 1,
    padding: str = "valid",
    output_padding: int | None = None,
) -> int:
    """Output length of a Keras ``ConvNDTranspose`` (``deconv_output_length``).

    Without ``output_padding``: "valid" gives ``I S + max(K_eff - S, 0)``,
    "same" gives ``I S``. With it: ``(I - 1) S + K_eff - 2 pad + output_padding``
    where ``pad = K_eff // 2`` for "same" and 0 for "valid".

    >>> keras_transposed_output_size(28, 4, stride=2, padding="same")
    56
    >>> keras_transposed_output_size(5, 1, stride=3, padding="valid")
    15
    """
    span = effective_kernel(kernel, dilation)
    if output_padding is None:
        if padding == "valid":
            return size * stride + max(span - stride, 0)
        return size * stride
    pad = span // 2 if padding == "same" else 0
    return transposed_output_size(size, kernel, stride, dilation, (pad, pad), output_padding)


def transposed_same_padding(
    kernel: int, stride: int, dilation: int = 1, output_padding: int | None = None
) -> tuple[int, int]:
    """Padding of the zero-inserted input for a "same" transposed convolution.

    Keras 3 and ``jax.lax.conv_transpose(padding="SAME")`` agree: the total is
    ``K_eff + S - 2`` (``I S`` output cells) or, with an explicit
    ``output_padding``, Keras's ``K_eff + K_eff mod 2 - 2 + output_padding``
    (``(I - 1) S + K_eff mod 2 + output_padding`` cells); the start gets
    ``min(ceil(total / 2), K_eff - 1)``.

    >>> transposed_same_padding(4, 2)
    (2, 2)
    >>> transposed_same_padding(3, 2)
    (2, 1)
    """
    span = effective_kernel(kernel, dilation)
    if output_padding is None:
        total = span + stride - 2
    else:
        total = span + span % 2 - 2 + output_padding
    start = min(_ceil_div(total, 2), span - 1)
    return (start, total - start)


def transposed_valid_padding(
    kernel: int, stride: int, dilation: int = 1, output_padding: int | None = None
) -> tuple[int, int]:
    """Padding of the zero-inserted input for a "valid" transposed convolution.

    Keras and JAX: ``(K_eff - 1, K_eff - 1 + output_padding)``, where a missing
    ``output_padding`` is ``max(S - K_eff, 0)``, giving ``I S + max(K_eff - S, 0)``
    output cells.

    >>> transposed_valid_padding(3, 2)
    (2, 2)
    >>> transposed_valid_padding(1, 3)
    (0, 2)
    """
    span = effective_kernel(kernel, dilation)
    extra = max(stride - span, 0) if output_padding is None else output_padding
    return (span - 1, span - 1 + extra)


def transposed_input_padding(
    kernel: int, dilation: int = 1, crop: tuple[int, int] = (0, 0), output_padding: int = 0
) -> tuple[int, int]:
    """Turn a transposed convolution's crop into padding of the zero-inserted input.

    A transposed convolution equals a stride-1 convolution with the flipped
    kernel over the input with ``S - 1`` zeros inserted between cells and
    ``(K_eff - 1 - lo, K_eff - 1 - hi + output_padding)`` added at the sides
    (negative values crop).

    >>> transposed_input_padding(4, crop=(1, 1))
    (2, 2)
    """
    span = effective_kernel(kernel, dilation)
    lo, hi = crop
    return (span - 1 - lo, span - 1 - hi + output_padding)


def transposed_crop(
    kernel: int, dilation: int = 1, padding: tuple[int, int] = (0, 0)
) -> tuple[int, int]:
    """Turn padding of the zero-inserted input back into a crop of the full output.

    The inverse of :func:`transposed_input_padding` (``output_padding`` then
    counts in the crop's ``hi``, as a negative crop): ``(K_eff - 1 - lo, K_eff - 1 - hi)``.

    >>> transposed_crop(4, padding=(2, 2))
    (1, 1)
    >>> transposed_crop(4, padding=transposed_input_padding(4, crop=(1, 1), output_padding=1))
    (1, 0)
    """
    span = effective_kernel(kernel, dilation)
    lo, hi = padding
    return (span - 1 - lo, span - 1 - hi)


def input_gradient_padding(
    padded_size: int, output: int, kernel: int, stride: int = 1, dilation: int = 1
) -> tuple[int, int]:
    """Padding of the zero-inserted output gradient that gives the padded input's gradient.

    The input gradient (vjp) of a direct convolution is the transposed
    convolution of ``dy`` with padding ``(K_eff - 1, P - (O - 1) S - 1)`` of
    its zero-inserted grid, ``P = I + lo + hi`` the padded input length: its
    output then has exactly ``P`` cells (the rows no window read get zeros).

    >>> input_gradient_padding(28, 13, 3, stride=2)   # 28 = 13 windows, 1 row dropped
    (2, 3)
    >>> transposed_grid_output_size(13, 3, 2, 1, input_gradient_padding(28, 13, 3, 2))
    28
    """
    return (effective_kernel(kernel, dilation) - 1, padded_size - zero_inserted_size(output, stride))


def padding_for_output(
    size: int, target: int, kernel: int, stride: int = 1, dilation: int = 1
) -> tuple[int, int] | None:
    """The smallest padding that makes a convolution produce ``target`` cells.

    Split as evenly as possible, the odd pixel at the end (the Keras/JAX
    convention). ``None`` when no non-negative padding reaches the target
    (the output is already too large).

    >>> padding_for_output(28, 14, 3, stride=2)
    (0, 1)
    >>> padding_for_output(28, 28, 5)
    (2, 2)
    """
    if target < 1:
        return None
    need = window_reach(target, kernel, stride, dilation) - size
    # Any total in [need, need + stride - 1] gives target; the smallest that is >= 0.
    if need + stride - 1 < 0:
        return None
    total = max(need, 0)
    return (total // 2, total - total // 2)


SOLVER_LIMIT = 100_000  # configurations solve() may enumerate


@dataclass(frozen=True)
class Solution:
    """One configuration found by :func:`solve` (one axis)."""

    kernel: int
    stride: int
    dilation: int
    padding: tuple[int, int]
    output: int
    dropped: int

    @property
    def effective_kernel(self) -> int:
        return effective_kernel(self.kernel, self.dilation)


def solve(
    size: int,
    target: int,
    max_kernel: int = 7,
    max_stride: int = 4,
    max_dilation: int = 3,
    max_padding: int | None = None,
    symmetric_only: bool = False,
) -> list[Solution]:
    """Every (kernel, stride, dilation, padding) within bounds that turns ``size`` into ``target``.

    For each kernel/stride/dilation the smallest padding is given (the one
    :func:`padding_for_output` returns); ``symmetric_only`` keeps only equal
    padding on both sides. Sorted by stride, then padding, then kernel.

    >>> [(s.kernel, s.stride, s.padding) for s in solve(28, 14, max_kernel=3, max_dilation=1)][:3]
    [(1, 2, (0, 0)), (2, 2, (0, 0)), (3, 2, (0, 1))]
    """
    for name, value in (("size", size), ("target", target), ("max_kernel", max_kernel),
                        ("max_stride", max_stride), ("max_dilation", max_dilation)):
        check_int(name, value, 1)
    if max_padding is not None:
        check_int("max_padding", max_padding, 0)
    searched = max_kernel * max_stride * max_dilation
    if searched > SOLVER_LIMIT:
        raise ValueError(
            f"the search max_kernel × max_stride × max_dilation = {searched} exceeds the limit of "
            f"{SOLVER_LIMIT} configurations; narrow the bounds"
        )
    if max_padding is None:
        max_padding = effective_kernel(max_kernel, max_dilation)
    found = []
    for stride in range(1, max_stride + 1):
        for kernel in range(1, max_kernel + 1):
            for dilation in range(1, (max_dilation if kernel > 1 else 1) + 1):
                padding = padding_for_output(size, target, kernel, stride, dilation)
                if padding is None:
                    continue
                lo, hi = padding
                if symmetric_only and lo != hi:
                    if stride == 1 or (lo + hi + 1) > 2 * max_padding:
                        continue
                    lo = hi = hi  # one more pixel, still within [need, need + S - 1]
                    if conv_output_size(size, kernel, stride, dilation, (lo, hi)) != target:
                        continue
                if max(lo, hi) > max_padding:
                    continue
                found.append(
                    Solution(
                        kernel=kernel,
                        stride=stride,
                        dilation=dilation,
                        padding=(lo, hi),
                        output=target,
                        dropped=dropped_rows(size, kernel, stride, dilation, (lo, hi)),
                    )
                )
    found.sort(key=lambda s: (s.stride, s.padding[0] + s.padding[1], s.kernel, s.dilation))
    return found
