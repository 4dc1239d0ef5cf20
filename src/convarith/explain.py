"""Worked derivations: why a convolution produces the size it does.

:func:`explain` resolves a spec against an input and returns an
:class:`Explanation`: per axis the formula, the numbers put in, each step and
the result, plus notes (dropped rows, the side that got the odd padding pixel,
where another framework would differ). It is both text (``str(e)``) and data
(``e.to_dict()``) so the CLI, the pictures and the web page say the same thing.

Examples
--------
>>> e = explain(ConvSpec(3, padding=1, strides=3), 28)
>>> e.output_size
(10, 10)
>>> print(e.axes[0].steps[-1])
O = floor(27 / 3) + 1 = 10
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from . import arithmetic as ar
from .spec import ConvSpec, ResolvedConv

__all__ = ["explain", "Explanation", "AxisDerivation", "dropped_rows_note"]

_AXIS_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


@dataclass(frozen=True)
class AxisDerivation:
    """The derivation of one spatial axis."""

    axis: int
    name: str
    input: int
    kernel: int
    stride: int
    dilation: int
    effective_kernel: int
    padding: tuple[int, int]
    output: int
    formula: str
    steps: tuple[str, ...]
    dropped: int


@dataclass(frozen=True)
class Explanation:
    """A worked derivation of a resolved convolution; ``str()`` gives the text."""

    kind: str
    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    output_shape: tuple[int | None, ...]
    axes: tuple[AxisDerivation, ...]
    notes: tuple[str, ...] = field(default=())
    summary: str = ""

    @property
    def text(self) -> str:
        lines = [self.summary, ""]
        uniform = len({(a.input, a.kernel, a.stride, a.dilation, a.padding) for a in self.axes}) == 1
        shown = self.axes[:1] if uniform else self.axes
        for axis in shown:
            label = "every axis" if uniform and len(self.axes) > 1 else f"{axis.name} (axis {axis.axis})"
            lines.append(f"{label}:  {axis.formula}")
            lines.extend(f"  {step}" for step in axis.steps)
        if self.notes:
            lines.append("")
            lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready) for the web page and ``--json``."""
        data = asdict(self)
        data["text"] = self.text
        return data

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(a.name)}</td><td><code>{html.escape(a.formula)}</code></td>"
            f"<td>{'<br>'.join(html.escape(s) for s in a.steps)}</td><td><b>{a.output}</b></td></tr>"
            for a in self.axes
        )
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        return (
            f"<div class='convarith-explain'><p>{html.escape(self.summary)}</p>"
            "<table><tr><th>axis</th><th>formula</th><th>steps</th><th>output</th></tr>"
            f"{rows}</table>{'<ul>' + notes + '</ul>' if notes else ''}</div>"
        )


def _fmt(size: Sequence[int | None]) -> str:
    return "×".join("?" if v is None else str(v) for v in size)


def explain(spec: ConvSpec, input_shape: int | Sequence[int]) -> Explanation:
    """Derive the output size of ``spec`` on ``input_shape``, step by step.

    Parameters
    ----------
    spec
        The convolution.
    input_shape
        As :meth:`ConvSpec.resolve` takes it.

    Examples
    --------
    >>> e = explain(ConvSpec(3, padding="same", strides=2), (5, 5))
    >>> e.output_size, e.axes[0].padding
    ((3, 3), (1, 1))
    """
    resolved = spec.resolve(input_shape)
    names = _AXIS_NAMES[resolved.rank]
    axes = tuple(_derive_axis(resolved, axis, names[axis]) for axis in range(resolved.rank))
    what = {
        "conv": "convolution",
        "conv_transpose": "transposed convolution",
        "max_pool": "max pooling",
        "avg_pool": "average pooling",
    }[spec.kind]
    summary = (
        f"{what}: input {_fmt(resolved.input_size)} → output {_fmt(resolved.output_size)}"
        f" (kernel {_fmt(spec.kernel_size)}, stride {_fmt(spec.strides)}"
        + (f", dilation {_fmt(spec.dilation)}" if max(spec.dilation) > 1 else "")
        + f", padding {_padding_label(spec)})"
    )
    return Explanation(
        kind=spec.kind,
        input_size=resolved.input_size,
        output_size=resolved.output_size,
        output_shape=resolved.output_shape,
        axes=axes,
        notes=tuple(dict.fromkeys(_notes(resolved, _uniform(axes)))),
        summary=summary,
    )


def _uniform(axes: tuple[AxisDerivation, ...]) -> tuple[AxisDerivation, ...]:
    """One derivation named "every axis" when all axes are alike (for notes)."""
    first = axes[0]
    same = all(
        (a.input, a.kernel, a.stride, a.dilation, a.padding)
        == (first.input, first.kernel, first.stride, first.dilation, first.padding)
        for a in axes
    )
    if same and len(axes) > 1:
        return (AxisDerivation(**{**asdict(first), "name": "every axis"}),)
    return axes


def _padding_label(spec: ConvSpec) -> str:
    if isinstance(spec.padding, str):
        return repr(spec.padding)
    pairs = spec.padding
    if all(lo == hi for lo, hi in pairs) and len(set(pairs)) == 1:
        return str(pairs[0][0])
    return str(tuple(pairs))


def _derive_axis(r: ResolvedConv, axis: int, name: str) -> AxisDerivation:
    spec = r.spec
    size, out = r.input_size[axis], r.output_size[axis]
    k = spec.kernel_size[axis]
    s = spec.strides[axis]
    d = spec.dilation[axis]
    eff = r.effective_kernel[axis]
    lo, hi = r.padding[axis]
    steps: list[str] = []
    if d > 1:
        steps.append(f"K_eff = K + (K - 1)(D - 1) = {k} + {k - 1}·{d - 1} = {eff}")
    kname = "K_eff" if d > 1 else "K"
    if spec.transposed:
        clo, chi = r.crop[axis]
        op = spec.output_padding[axis] if spec.output_padding is not None else 0
        formula = f"O = (I - 1)·S + {kname} - crop_lo - crop_hi"
        steps.append(
            f"crop of the full output: ({clo}, {chi})"
            + (f", output_padding {op} included" if op else "")
        )
        steps.append(f"O = ({size} - 1)·{s} + {eff} - {clo} - {chi} = {out}")
        return AxisDerivation(axis, name, size, k, s, d, eff, (lo, hi), out, formula, tuple(steps), 0)
    word = spec.padding if isinstance(spec.padding, str) else None
    if word in ("same", "same_lower"):
        target = ar.same_output_size(size, s)
        total = lo + hi
        steps.append(f"'same' aims for O = ceil(I / S) = ceil({size} / {s}) = {target}")
        steps.append(
            f"total padding = max(0, (O - 1)·S + {kname} - I) = max(0, {target - 1}·{s} + {eff} - {size}) = {total}"
        )
        if total % 2:
            side = "start" if word == "same_lower" else "end"
            steps.append(f"odd total: the extra pixel goes at the {side} → (lo, hi) = ({lo}, {hi})")
        else:
            steps.append(f"split evenly → (lo, hi) = ({lo}, {hi})")
    elif word == "causal":
        steps.append(f"'causal' pads D·(K - 1) = {d}·{k - 1} = {lo} on the left only → ({lo}, {hi})")
    elif word == "full":
        steps.append(f"'full' pads {kname} - 1 = {lo} on each side")
    ceil = spec.pool is not None and spec.ceil_mode
    rounding = "ceil" if ceil else "floor"
    if lo == hi:
        formula = f"O = {rounding}((I + 2P - {kname}) / S) + 1"
        numer = f"{size} + 2·{lo} - {eff}"
    else:
        formula = f"O = {rounding}((I + P_lo + P_hi - {kname}) / S) + 1"
        numer = f"{size} + {lo} + {hi} - {eff}"
    span = size + lo + hi - eff
    steps.append(f"O = {rounding}(({numer}) / {s}) + 1")
    steps.append(f"O = {rounding}({span} / {s}) + 1 = {out}")
    return AxisDerivation(
        axis, name, size, k, s, d, eff, (lo, hi), out, formula, tuple(steps), r.dropped[axis]
    )


def dropped_rows_note(r: ResolvedConv, axis: int, name: str | None = None) -> str | None:
    """The one wording of "these input rows are never read" for one axis (``None``: none are).

    >>> from convarith import ConvSpec
    >>> print(dropped_rows_note(ConvSpec(3, strides=2, rank=1).resolve((28,)), 0))
    length: the last input row never reaches the kernel ((28 + 0 + 0 - 3) = 25 is not a multiple of the stride 2): silently dropped
    """
    dropped = r.dropped[axis]
    if not dropped:
        return None
    if name is None:
        name = _AXIS_NAMES[r.rank][axis] if r.rank in _AXIS_NAMES else f"axis {axis}"
    size, (lo, hi), eff = r.input_size[axis], r.padding[axis], r.effective_kernel[axis]
    stride = r.spec.strides[axis]
    which = "input row never reaches" if dropped == 1 else f"{dropped} input rows never reach"
    ceil = ("; ceil mode keeps no window that would start past the input"
            if r.spec.pool is not None and r.spec.ceil_mode else "")
    return (f"{name}: the last {which} the kernel (({size} + {lo} + {hi} - {eff}) = "
            f"{size + lo + hi - eff} is not a multiple of the stride {stride}{ceil}): silently "
            "dropped")


def _notes(r: ResolvedConv, axes: Sequence[AxisDerivation]) -> list[str]:
    spec = r.spec
    notes: list[str] = []
    for a in axes:
        dropped = dropped_rows_note(r, a.axis, a.name)
        if dropped:
            notes.append(dropped)
        if a.dilation > 1:
            notes.append(
                f"{a.name}: {a.kernel} taps with dilation {a.dilation} see a field of "
                f"{a.effective_kernel} cells"
            )
    if spec.transposed or spec.pool is not None:
        return notes
    word = spec.padding if isinstance(spec.padding, str) else None
    for a in axes:
        lo, hi = a.padding
        if word in ("same", "same_lower") and lo != hi:
            symmetric = max(lo, hi)
            other = ar.conv_output_size(a.input, a.kernel, a.stride, a.dilation, (symmetric, symmetric))
            if other == a.output:
                notes.append(
                    f"{a.name}: PyTorch padding={symmetric} gives the same {a.output} here but pads "
                    f"({symmetric}, {symmetric}) instead of ({lo}, {hi}): its output is shifted by "
                    "one pixel"
                )
            else:
                notes.append(
                    f"{a.name}: the padding is uneven ({lo}, {hi}); PyTorch's symmetric padding "
                    f"cannot express it — pad with F.pad first"
                )
    if word == "same" and any(lo != hi for lo, hi in r.padding):
        notes.append("JAX 'SAME_LOWER' and ONNX 'SAME_LOWER' would put the odd pixel at the start")
    if word == "same" and max(spec.strides) > 1:
        notes.append("PyTorch rejects padding='same' with stride > 1; give explicit padding")
    if max(spec.strides) > 1 and max(spec.dilation) > 1:
        notes.append("Keras Conv layers reject strides > 1 together with dilation_rate > 1")
    return notes


def spec_html(spec: ConvSpec) -> str:
    """A small HTML table of a spec's fields (Jupyter display)."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td><code>{html.escape(repr(getattr(spec, name)))}</code></td></tr>"
        for name in spec.__dataclass_fields__
        if getattr(spec, name) not in (None, False)
    )
    return f"<table class='convarith-spec'><caption>ConvSpec</caption>{rows}</table>"
