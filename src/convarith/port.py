"""Port a convolution between frameworks, exactly: code that reproduces the numbers.

:func:`port` takes a :class:`~convarith.ConvSpec` (from any front door) and an
input shape, resolves it once, and writes code for the target framework that
computes the *same numbers*, including what the target cannot say directly:
Keras ``padding="same"`` with stride 2 on an even input pads ``(0, 1)``, which
a PyTorch ``Conv2d`` cannot (its padding is symmetric), so the PyTorch code
pads explicitly with ``F.pad`` and runs the convolution with ``padding=0``.

:func:`parse_layer` reads a framework constructor call such as
``"Conv2D(32, 3, strides=2, padding='same')"`` with :mod:`ast` -- one call,
literal arguments only, never evaluated -- and :func:`port_text` joins the two.

The emitted code follows one contract, so it can be run as is:

* it reads ``kernel`` and ``bias`` (NumPy arrays in the *source* framework's
  layout; ``bias`` may be ``None`` when the layer has none);
* it defines ``forward(x)``, which takes the input in the *target*
  framework's layout (PyTorch and ONNX ``(N, C, *spatial)``, Keras and JAX
  ``(N, *spatial, C)``) and returns the output in that layout.

Kernel layouts: Keras and JAX code use ``(k..., in/groups, out)`` for a
convolution and ``(k..., out/groups, in)`` for a transposed one (the
engine's layouts), PyTorch and ONNX ``(out, in/groups, k...)`` and
``(in, out/groups, k...)``; Keras ``DepthwiseConv`` keeps
``(k..., in, multiplier)``.

Examples
--------
>>> from convarith import ConvSpec
>>> spec = ConvSpec.from_keras("Conv2D", filters=32, kernel_size=3, strides=2, padding="same")
>>> p = port(spec, to="torch", input_shape=(28, 28, 1))
>>> "F.pad(x, (0, 1, 0, 1))" in p.code
True
>>> print(p.summary)
Keras 'same' pads (0, 1) per axis here (the odd pixel at the end); PyTorch pads both sides equally, so the code pads explicitly with F.pad and uses padding=0.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import arithmetic as ar
from .frontdoors import POSITIONAL_ARGS
from .spec import ConvSpec, ResolvedConv

__all__ = [
    "Port",
    "PortError",
    "ParsedLayer",
    "port",
    "port_text",
    "parse_layer",
    "spec_from_text",
    "TARGETS",
    "SOURCES",
]

TARGETS = ("torch", "keras", "jax", "onnx")
SOURCES = ("keras", "torch", "jax", "onnx")
_NAMES = {"torch": "PyTorch", "keras": "Keras", "jax": "JAX", "onnx": "ONNX"}
_MODE_TORCH = {"reflect": "reflect", "replicate": "replicate", "circular": "circular"}
_MODE_NUMPY = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _crop_first(name: str, pads: Sequence[tuple[int, int]]) -> tuple[str, list[tuple[int, int]]]:
    """``name`` sliced by the negative pads (channels-last, batch first), and the
    pads left to copy: PyTorch crops before it copies, and NumPy-style pads
    take no negative widths.

    >>> _crop_first("x", [(-1, -1), (2, 2)])
    ('x[:, 1:-1, :, :]', [(0, 0), (2, 2)])
    """
    if all(lo >= 0 and hi >= 0 for lo, hi in pads):
        return name, list(pads)
    cuts = [f"{-lo if lo < 0 else ''}:{hi if hi < 0 else ''}" for lo, hi in pads]
    return (f"{name}[:, {', '.join(cuts)}, :]",
            [(max(lo, 0), max(hi, 0)) for lo, hi in pads])
_ONNX_OPSET = 19


class PortError(ValueError):
    """The target framework cannot express this convolution; the message says why and what can."""


@dataclass(frozen=True)
class Port:
    """Code for one framework that reproduces a resolved convolution exactly.

    Attributes
    ----------
    target
        ``"torch"``, ``"keras"``, ``"jax"`` or ``"onnx"``.
    code
        Runnable Python (see the module docstring for its contract).
    summary
        One line on what changed between source and target.
    resolved
        The resolved spec the code reproduces.
    notes
        Further remarks (assumed channel counts, layout changes).
    """

    target: str
    code: str
    summary: str
    resolved: ResolvedConv
    notes: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return self.code

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "code": self.code, "summary": self.summary,
                "notes": list(self.notes), "input_size": list(self.resolved.input_size),
                "output_size": list(self.resolved.output_size)}


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedLayer:
    """A constructor call read from text: ``Conv2D(32, 3, strides=2)``."""

    framework: str
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    text: str


def _literal(node: ast.AST, text: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    # ``float("-inf")``-style and names are not literals; say which argument it was
    snippet = ast.get_source_segment(text, node) or ast.dump(node)
    raise ValueError(
        f"layer text {text!r}: argument {snippet!r} is not a literal (numbers, strings, "
        "True/False/None, tuples and lists only)"
    )


def parse_layer(text: str, framework: str) -> ParsedLayer:
    """Read one constructor call, literals only, with :mod:`ast` (never evaluated).

    A module prefix (``keras.layers.``, ``nn.``, ``torch.nn.``, ``lax.``,
    ``jax.lax.``) is dropped.

    >>> parse_layer("nn.Conv2d(3, 8, 3, stride=2)", "torch").name
    'Conv2d'
    >>> parse_layer("Conv2D(32, 3)", "keras").kwargs
    {'filters': 32, 'kernel_size': 3}
    >>> parse_layer("Conv2D(32, 3); import os", "keras")
    Traceback (most recent call last):
    ...
    ValueError: layer text 'Conv2D(32, 3); import os' is not a single constructor call such as Conv2D(32, 3, strides=2, padding='same')
    """
    if framework not in SOURCES:
        raise ValueError(f"framework must be one of {SOURCES}, got {framework!r}")
    if not isinstance(text, str):
        raise TypeError(f"layer text must be a string, got {type(text).__name__}")
    example = {
        "keras": "Conv2D(32, 3, strides=2, padding='same')",
        "torch": "Conv2d(3, 32, 3, stride=2, padding=1)",
        "jax": "conv_general_dilated(kernel_size=(3, 3), window_strides=(2, 2), padding='SAME')",
        "onnx": "Conv(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])",
    }[framework]
    bad = ValueError(f"layer text {text!r} is not a single constructor call such as {example}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise bad from None
    call = tree.body
    if not isinstance(call, ast.Call):
        raise bad
    func = call.func
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        raise bad
    parts.append(func.id)
    name = parts[0]
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise ValueError(f"layer text {text!r}: *args and **kwargs are not allowed; write the "
                         "arguments out")
    args = tuple(_literal(a, text) for a in call.args)
    kwargs = {k.arg: _literal(k.value, text) for k in call.keywords if k.arg is not None}
    family = _family(framework, name)
    if args:
        names = POSITIONAL_ARGS.get(framework, {}).get(family or "", ())
        if not names:
            raise ValueError(f"layer text {text!r}: {_NAMES[framework]} {name} takes keyword "
                             f"arguments only here, e.g. {example}")
        if len(args) > len(names):
            raise ValueError(f"layer text {text!r}: {name} takes at most {len(names)} positional "
                             f"arguments ({', '.join(names)}), got {len(args)}")
        for arg_name in names[: len(args)]:
            if arg_name in kwargs:
                raise ValueError(f"layer text {text!r}: {arg_name} is given twice")
        kwargs = {**dict(zip(names, args)), **kwargs}
    return ParsedLayer(framework, name, args, kwargs, text)


def _family(framework: str, name: str) -> str | None:
    if framework == "keras":
        for prefix in ("Dense", "ZeroPadding", "Cropping", "UpSampling", "Activation", "Dropout",
                       "Concatenate"):
            if name.startswith(prefix):
                return prefix
        for prefix, family in (("ConvolutionTranspose", "ConvTranspose"),
                               ("DepthwiseConv", "DepthwiseConv"), ("SeparableConv", "SeparableConv"),
                               ("Conv", "Conv"), ("Convolution", "Conv"), ("MaxPool", "Pool"),
                               ("AveragePool", "Pool"), ("AvgPool", "Pool")):
            if name.startswith(prefix):
                if family == "Conv" and name.endswith("Transpose"):
                    return "ConvTranspose"
                return family
    if framework == "torch":
        for family in ("ConvTranspose", "Conv", "MaxPool", "AvgPool", "BatchNorm", "Linear",
                       "Dropout", "Flatten"):
            if name.startswith(family):
                return family
        if name.startswith("Adaptive"):
            return "AdaptivePool"
    return None


@dataclass(frozen=True)
class _Source:
    """What the emitted code needs to know about the source layer beyond the spec."""

    framework: str
    name: str
    bias: bool
    kernel_layout: str  # "keras", "torch", "keras_depthwise", "jax_flipped" (conv_transpose w/o transpose_kernel)


def spec_from_text(text: str, framework: str) -> tuple[ConvSpec, _Source]:
    """The spec a constructor call describes, through that framework's front door.

    >>> spec, source = spec_from_text("Conv2D(32, 3, strides=2, padding='same')", "keras")
    >>> spec.resolve((28, 28)).padding
    ((0, 1), (0, 1))
    """
    from . import frontdoors

    layer = parse_layer(text, framework)
    kwargs = dict(layer.kwargs)
    bias = True
    if framework == "keras":
        bias = bool(kwargs.get("use_bias", True))
        if layer.name.startswith("SeparableConv"):
            raise PortError(
                f"{layer.name} is two layers (a depthwise and a 1x1 convolution); port "
                f"DepthwiseConv{layer.name[-2:]} and Conv{layer.name[-2:]}(filters, 1) one at a time"
            )
        spec = frontdoors.from_keras(layer.name, **kwargs)
        layout = "keras_depthwise" if spec.groups == "depthwise" else "keras"
    elif framework == "torch":
        bias = bool(kwargs.get("bias", True))
        spec = frontdoors.from_torch(layer.name, **kwargs)
        layout = "torch"
    elif framework == "jax":
        spec = frontdoors.from_jax(layer.name, **kwargs)
        numbers = kwargs.get("dimension_numbers")
        rhs = numbers[1] if isinstance(numbers, (list, tuple)) and len(numbers) == 3 else None
        if layer.name == "conv_transpose":
            flipped = not kwargs.get("transpose_kernel", False)
            if rhs is not None and not str(rhs).endswith("IO"):
                raise PortError(f"JAX conv_transpose with kernel layout {rhs!r}: write the kernel "
                                "as ...IO (e.g. 'HWIO'), the layout conv_transpose uses by default")
            layout = "jax_flipped" if flipped else "keras"
        elif spec.transposed:  # conv_general_dilated with lhs_dilation: no flip in JAX
            layout = "jax_flipped" if rhs is not None and str(rhs).endswith("IO") else "jax_flipped_oi"
        else:
            layout = "keras" if rhs is not None and str(rhs).endswith("IO") else "torch"
        bias = False
    else:
        attrs = dict(kwargs)
        bias = bool(attrs.pop("bias", True)) if layer.name in ("Conv", "ConvTranspose") else False
        spec = frontdoors.from_onnx(layer.name, **attrs)
        layout = "torch"
    if spec.pool is not None:
        bias = False
    return spec, _Source(framework, layer.name, bias, layout)


def port_text(text: str, source: str, to: str, input_shape: int | Sequence[int],
              in_channels: int | None = None) -> Port:
    """Parse a source framework's constructor call and port it to ``to``.

    >>> p = port_text("Conv2d(3, 8, 3, stride=2, padding=1)", "torch", "keras", (3, 28, 28))
    >>> "ZeroPadding2D(((1, 1), (1, 1)))" in p.code
    True
    """
    spec, src = spec_from_text(text, source)
    return port(spec, to=to, input_shape=input_shape, in_channels=in_channels, bias=src.bias,
                _source=src, _text=text)


# --------------------------------------------------------------------------- porting


def port(
    spec: ConvSpec,
    to: str = "torch",
    input_shape: int | Sequence[int] | None = None,
    *,
    in_channels: int | None = None,
    bias: bool = True,
    _source: _Source | None = None,
    _text: str | None = None,
) -> Port:
    """Code for framework ``to`` that computes exactly what ``spec`` computes.

    Parameters
    ----------
    spec
        The convolution, pooling or transposed convolution (any front door).
    to
        ``"torch"``, ``"keras"``, ``"jax"`` or ``"onnx"``.
    input_shape
        Spatial size, or with channels (in ``spec.data_format``), or with batch
        and channels. Needed because "same" padding depends on it.
    in_channels
        Input channels when ``input_shape`` does not say (default: the spec's,
        else 3, noted in the output).
    bias
        Whether the layer has a bias (read from the source text by
        :func:`port_text`).

    Returns
    -------
    Port
        ``.code`` (runnable), ``.summary`` (one line on what changed).

    Raises
    ------
    PortError
        When the target cannot express the convolution at all, with what can.

    Examples
    --------
    >>> spec = ConvSpec.from_torch("Conv2d", in_channels=3, out_channels=8, kernel_size=3,
    ...                            stride=2, dilation=2)
    >>> p = port(spec, to="keras", input_shape=(3, 32, 32))
    >>> "keras.ops.conv(" in p.code
    True
    """
    if to not in TARGETS:
        raise ValueError(f"to must be one of {TARGETS}, got {to!r}")
    if input_shape is None:
        raise ValueError("input_shape is required: 'same' padding and output sizes depend on it "
                         "(e.g. input_shape=(28, 28))")
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec must be a ConvSpec, got {type(spec).__name__}")
    if in_channels is not None and (isinstance(in_channels, bool) or not isinstance(in_channels, int)
                                    or in_channels < 1):
        raise ValueError(f"in_channels (--channels) must be a positive integer, got {in_channels!r}")
    resolved = spec.resolve(input_shape)
    if in_channels is not None and resolved.in_channels not in (None, in_channels):
        raise ValueError(f"in_channels (--channels) is {in_channels} but input_shape {input_shape!r} "
                         f"has {resolved.in_channels} channels; give the channels once")
    notes: list[str] = []
    channels = resolved.in_channels or in_channels or spec.in_channels
    if channels is None:
        channels = 3
        if spec.pool is None:
            notes.append("assumed 3 input channels; give the input shape with channels to set them")
    if resolved.in_channels is None:
        resolved = spec.resolve(_with_channels(resolved.input_size, channels, spec.data_format))
    source = _source or _Source(spec.convention or "keras", "", bias, _default_layout(spec))
    if source.framework != to:
        src_layout = "NC" if spec.data_format == "channels_first" else "N...C"
        dst_layout = "NC" if to in ("torch", "onnx") else "N...C"
        if src_layout != dst_layout:
            notes.append(f"data layout changes: {_layout_name(spec.data_format, spec.rank)} -> "
                         f"{_layout_name('channels_first' if dst_layout == 'NC' else 'channels_last', spec.rank)}")
    writer = _Writer(resolved, source, to, bias=bias and spec.pool is None)
    code, summary = writer.write()
    header = []
    origin = _text or spec.kind  # the framework's name is written once, just before
    header.append(f"# {_NAMES[to]} port of {_NAMES.get(source.framework, source.framework)} "
                  f"{origin} on input {'x'.join(map(str, resolved.input_size))} "
                  f"-> output {'x'.join(map(str, resolved.output_size))}")
    header.append(f"# {summary}")
    for note in notes:
        header.append(f"# note: {note}")
    return Port(to, "\n".join(header) + "\n" + code, summary, resolved, tuple(notes))


def _default_layout(spec: ConvSpec) -> str:
    if spec.convention in ("torch", "onnx"):
        return "torch"
    if spec.groups == "depthwise":
        return "keras_depthwise"
    return "keras"


def _with_channels(size: tuple[int, ...], channels: int, data_format: str) -> tuple[int, ...]:
    return (*size, channels) if data_format == "channels_last" else (channels, *size)


def _layout_name(data_format: str, rank: int | None) -> str:
    spatial = {1: "W", 2: "HW", 3: "DHW"}[rank or 2]
    return f"NC{spatial}" if data_format == "channels_first" else f"N{spatial}C"


def _tuple(values: Sequence[int]) -> str:
    values = tuple(values)
    return f"({values[0]},)" if len(values) == 1 else f"({', '.join(map(str, values))})"


def _pairs(pairs: Sequence[tuple[int, int]]) -> str:
    return _tuple_of(tuple(f"({lo}, {hi})" for lo, hi in pairs))


def _tuple_of(items: Sequence[str]) -> str:
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def _torch_pad(pairs: Sequence[tuple[int, int]]) -> str:
    """F.pad's order: last axis first, (lo, hi) each."""
    flat: list[int] = []
    for lo, hi in reversed(tuple(pairs)):
        flat += [lo, hi]
    return _tuple(flat)


class _Writer:
    """Writes one target's code for one resolved spec."""

    def __init__(self, resolved: ResolvedConv, source: _Source, target: str, bias: bool) -> None:
        self.r = resolved
        self.spec = resolved.spec
        self.src = source
        self.target = target
        self.bias = bias
        self.rank = resolved.rank
        self.groups = resolved.groups or 1
        self.cin = resolved.in_channels or 1
        self.cout = resolved.out_channels or self.cin
        self.src_name = _NAMES.get(source.framework, source.framework)

    # ---------------------------------------------------------------- kernel layouts

    def _kernel_to_canonical(self) -> tuple[list[str], str]:
        """Lines turning ``kernel`` (source layout) into ``w`` in the engine layout, and its name."""
        r = self.rank
        layout = self.src.kernel_layout
        spatial = tuple(range(2, r + 2))
        if layout == "torch":
            perm = (*spatial, 1, 0)
            return [f"w = np.transpose(kernel, {_tuple(perm)})"], (
                f"{self.src_name} (out, in/groups, k...) -> (k..., in/groups, out)" if not self.spec.transposed
                else f"{self.src_name} (in, out/groups, k...) -> (k..., out/groups, in)")
        if layout == "keras_depthwise":
            taps = ", ".join(map(str, self.spec.kernel_size))
            return ([f"w = np.reshape(kernel, ({taps}, 1, {self.cout}))"],
                    "Keras depthwise (k..., in, multiplier) -> (k..., 1, in * multiplier)")
        if layout in ("jax_flipped", "jax_flipped_oi"):
            lines = []
            if layout == "jax_flipped_oi":
                lines.append(f"kernel = np.transpose(kernel, {_tuple((*spatial, 1, 0))})")
            flip = ", ".join(["::-1"] * r)
            lines.append(f"w = np.swapaxes(kernel[{flip}], -1, -2)")
            if self.groups > 1:
                raise PortError("a grouped JAX transposed convolution given by its forward kernel is "
                                "not supported as a source; give it through PyTorch or ONNX")
            return lines, "JAX forward kernel of the transposed convolution -> flipped, in/out swapped"
        return [], ""

    def _canonical_to(self, target_layout: str) -> tuple[list[str], str]:
        """Lines turning ``w`` (engine layout) into ``w`` in ``target_layout``."""
        r = self.rank
        if target_layout == "torch":
            return [f"w = np.transpose(w, {_tuple((r + 1, r, *range(r)))})"], (
                "(k..., in/groups, out) -> PyTorch (out, in/groups, k...)" if not self.spec.transposed
                else "(k..., out/groups, in) -> PyTorch (in, out/groups, k...)")
        if target_layout == "keras_depthwise":
            ks = ", ".join(map(str, self.spec.kernel_size))
            mult = self.cout // self.cin
            return [f"w = np.reshape(w, ({ks}, {self.cin}, {mult}))"], "-> depthwise (k..., in, multiplier)"
        return [], ""

    def _weights(self, target_layout: str) -> list[str]:
        """Lines defining ``w`` (and ``b``) as NumPy float32 in ``target_layout``."""
        lines_in, what_in = self._kernel_to_canonical()
        if self.src.kernel_layout == "torch" and target_layout == "torch":
            lines = ["w = kernel"]
            what = f"{self.src_name} and {_NAMES[self.target]} share the layout: no change"
        elif self.src.kernel_layout == target_layout and not lines_in:
            lines = ["w = kernel"]
            what = "same kernel layout: no change"
        else:
            lines_out, what_out = self._canonical_to(target_layout)
            if not lines_in:
                lines_out = [line.replace("(w,", "(kernel,", 1) for line in lines_out[:1]] + lines_out[1:]
                if not lines_out:
                    lines_out = ["w = kernel"]
            lines = lines_in + lines_out
            what = "; ".join(x for x in (what_in, what_out) if x) or "same kernel layout: no change"
            if len(lines) == 2 and lines[0].startswith("w = np.transpose(kernel") and lines[1].startswith(
                    "w = np.transpose(w"):
                lines = [_compose_transposes(lines[0], lines[1])]
        out = [f"# weights: {what}"]
        out += lines
        out.append("w = np.ascontiguousarray(w, dtype=np.float32)")
        if self.bias:
            out.append("b = np.asarray(bias, dtype=np.float32)")
        return out

    # ---------------------------------------------------------------- dispatch

    def write(self) -> tuple[str, str]:
        method = getattr(self, f"_{self.target}_{self.spec.kind}")
        lines, summary = method()
        return "\n".join(lines) + "\n", summary

    # ---------------------------------------------------------------- helpers for summaries

    def _pads_text(self) -> str:
        pads = self.r.padding
        if len(set(pads)) == 1:
            return f"{pads[0]} per axis"
        return f"{pads}"

    def _what_padding(self) -> str:
        spec = self.spec
        word = spec.padding if isinstance(spec.padding, str) else None
        name = self.src_name
        if word is not None and word != "valid":
            quoted = {"same": "'same'", "same_lower": "'SAME_LOWER'", "causal": "'causal'",
                      "full": "'full'"}[word]
            return f"{name} {quoted} pads {self._pads_text()} here"
        if not any(lo or hi for lo, hi in self.r.padding):
            return f"{name} does not pad"
        return f"{name} pads {self._pads_text()}"

    # ---------------------------------------------------------------- PyTorch

    def _torch_conv(self) -> tuple[list[str], str]:
        r, spec = self.rank, self.spec
        pads = self.r.padding
        symmetric = all(lo == hi for lo, hi in pads)
        mode = spec.padding_mode
        lines = _imports("torch")
        lines += self._weights("torch")
        args = [str(self.cin), str(self.cout), f"kernel_size={_tuple(spec.kernel_size)}",
                f"stride={_tuple(spec.strides)}"]
        pre = None
        if symmetric:
            args.append(f"padding={_tuple([lo for lo, _ in pads])}")
            if mode != "zeros" and any(lo for lo, _ in pads):
                args.append(f"padding_mode={mode!r}")
        else:
            args.append("padding=0")
            pre = f"F.pad(x, {_torch_pad(pads)}{_torch_mode(mode)})"
        args += [f"dilation={_tuple(spec.dilation)}", f"groups={self.groups}", f"bias={self.bias}"]
        lines.append(f"conv = torch.nn.Conv{r}d({', '.join(args)})")
        lines += _torch_load(self.bias)
        lines.append("")
        lines.append(f"def forward(x):  # x: {_layout_name('channels_first', r)}")
        lines.append(f"    return conv({pre or 'x'})")
        if symmetric:
            summary = f"{self._what_padding()}; PyTorch's symmetric padding={_tuple([lo for lo, _ in pads])} says the same."
            if self.src.framework == "torch":
                summary = "the same PyTorch layer."
        else:
            summary = (f"{self._what_padding()} (the odd pixel at the {_odd_side(pads)}); PyTorch pads both "
                       "sides equally, so the code pads explicitly with F.pad and uses padding=0.")
        return lines, summary

    def _torch_conv_transpose(self) -> tuple[list[str], str]:
        r, spec = self.rank, self.spec
        crop = self.r.crop
        strides, dilation = spec.strides, spec.dilation
        lines = _imports("torch")
        lines += self._weights("torch")
        direct = []
        for (lo, hi), s, d in zip(crop, strides, dilation):
            op = lo - hi
            direct.append(lo >= 0 and 0 <= op < max(s, d))
        args = [str(self.cin), str(self.cout), f"kernel_size={_tuple(spec.kernel_size)}",
                f"stride={_tuple(strides)}"]
        if all(direct):
            args += [f"padding={_tuple([lo for lo, _ in crop])}",
                     f"output_padding={_tuple([lo - hi for lo, hi in crop])}"]
            args += [f"groups={self.groups}", f"bias={self.bias}", f"dilation={_tuple(dilation)}"]
            lines.append(f"conv = torch.nn.ConvTranspose{r}d({', '.join(args)})")
            lines += _torch_load(self.bias)
            lines.append("")
            lines.append(f"def forward(x):  # x: {_layout_name('channels_first', r)}")
            lines.append("    return conv(x)")
            summary = (f"the output is cropped by {_crop_text(crop)}: PyTorch padding="
                       f"{_tuple([lo for lo, _ in crop])}, output_padding={_tuple([lo - hi for lo, hi in crop])}.")
            return lines, summary
        args += ["padding=0", f"groups={self.groups}", "bias=False", f"dilation={_tuple(dilation)}"]
        lines.append(f"conv = torch.nn.ConvTranspose{r}d({', '.join(args)})")
        lines += _torch_load(False)
        if self.bias:
            lines.append(f"b = torch.from_numpy(b).reshape(1, -1{', 1' * r})")
        lines.append("")
        lines.append(f"def forward(x):  # x: {_layout_name('channels_first', r)}")
        lines.append(f"    y = F.pad(conv(x), {_torch_pad([(-lo, -hi) for lo, hi in crop])})  # negative pads crop")
        lines.append("    return y + b" if self.bias else "    return y")
        summary = (f"the output is cropped by {_crop_text(crop)}, which no PyTorch padding/output_padding "
                   "gives; the code runs the full transposed convolution and crops with F.pad.")
        return lines, summary

    def _torch_max_pool(self) -> tuple[list[str], str]:
        r, spec = self.rank, self.spec
        pads = self.r.padding
        eff = self.r.effective_kernel
        lines = _imports("torch")
        native = all(lo == hi and lo <= e // 2 for (lo, hi), e in zip(pads, eff))
        common = (f"kernel_size={_tuple(spec.kernel_size)}, stride={_tuple(spec.strides)}, "
                  f"dilation={_tuple(spec.dilation)}")
        if native:
            lines.append(f"pool = torch.nn.MaxPool{r}d({common}, padding={_tuple([lo for lo, _ in pads])}, "
                         f"ceil_mode={spec.ceil_mode})")
            lines.append("")
            lines.append(f"def forward(x):  # x: {_layout_name('channels_first', r)}")
            lines.append("    return pool(x)")
            return lines, f"{self._what_padding()}; PyTorch's MaxPool{r}d says the same."
        padded = list(self.r.window_padding)
        lines.append(f"pool = torch.nn.MaxPool{r}d({common}, padding=0)")
        lines.append("")
        lines.append(f"def forward(x):  # x: {_layout_name('channels_first', r)}")
        lines.append(f"    return pool(F.pad(x, {_torch_pad(padded)}, value=float('-inf')))")
        return lines, (f"{self._what_padding()}, which MaxPool{r}d's symmetric padding cannot say; the code "
                       "pads with -inf first (padding never wins a max).")

    def _torch_avg_pool(self) -> tuple[list[str], str]:
        r, spec = self.rank, self.spec
        pads = self.r.padding
        lines = _imports("torch")
        native = (all(lo == hi and lo <= k // 2 for (lo, hi), k in zip(pads, spec.kernel_size))
                  and max(spec.dilation) == 1
                  and (not any(self.r.overhang) or self.src.framework == "torch"))
        if native:
            lines.append(f"pool = torch.nn.AvgPool{r}d(kernel_size={_tuple(spec.kernel_size)}, "
                         f"stride={_tuple(spec.strides)}, padding={_tuple([lo for lo, _ in pads])}, "
                         f"ceil_mode={spec.ceil_mode}, count_include_pad={spec.count_include_pad})")
            lines.append("")
            lines.append(f"def forward(x):  # x: {_layout_name('channels_first', r)}")
            lines.append("    return pool(x)")
            return lines, f"{self._what_padding()}; PyTorch's AvgPool{r}d says the same."
        # ratio of two windowed sums: the values, and which cells count
        padded = list(self.r.window_padding)
        lines.append(f"window = torch.ones((1, 1, {', '.join(map(str, spec.kernel_size))}))")
        lines.append("")
        lines.append("def windowed_sum(t):  # sum over each window, channel by channel")
        lines.append("    c = t.shape[1]")
        lines.append(f"    return F.conv{r}d(t, window.expand(c, *window.shape[1:]), stride={_tuple(spec.strides)}, "
                     f"dilation={_tuple(spec.dilation)}, groups=c)")
        lines.append("")
        lines.append(f"def forward(x):  # x: {_layout_name('channels_first', r)}")
        lines.append("    counted = torch.ones_like(x[:1, :1])")
        if spec.count_include_pad:
            lines.append(f"    counted = F.pad(counted, {_torch_pad(self.r.padding)}, value=1.0)")
            ext = [(0, e) for e in self.r.overhang]
            lines.append(f"    counted = F.pad(counted, {_torch_pad(ext)})")
        else:
            lines.append(f"    counted = F.pad(counted, {_torch_pad(padded)})")
        lines.append(f"    return windowed_sum(F.pad(x, {_torch_pad(padded)})) / windowed_sum(counted)")
        why = "dilation" if max(spec.dilation) > 1 else "this padding"
        return lines, (f"{self._what_padding()}; AvgPool{r}d cannot express {why} with "
                       f"count_include_pad={spec.count_include_pad}, so the code divides windowed sums "
                       "of the padded input by windowed counts of the cells that count.")

    # ---------------------------------------------------------------- Keras

    def _keras_pad_lines(self, pads: Sequence[tuple[int, int]], mode: str, value: str | None = None) -> str:
        """An expression padding ``x`` (N...C) with ``pads`` in ``mode``."""
        full = _pairs([(0, 0), *pads, (0, 0)])
        if value is not None:
            return f"keras.ops.pad(x, {full}, constant_values={value})"
        if mode == "zeros":
            return f"keras.ops.pad(x, {full})"
        source, grow = _crop_first("x", pads)
        if not any(lo or hi for lo, hi in grow):
            return source
        return f"keras.ops.pad({source}, {_pairs([(0, 0), *grow, (0, 0)])}, mode={_MODE_NUMPY[mode]!r})"

    def _keras_conv(self) -> tuple[list[str], str]:
        r, spec = self.rank, self.spec
        pads = tuple(self.r.padding)
        mode = spec.padding_mode
        strides, dilation = spec.strides, spec.dilation
        lines = _imports("keras")
        depthwise = self.groups == self.cin and self.groups > 1 and r <= 2 and spec.groups == "depthwise"
        depthwise = depthwise or (self.src.kernel_layout == "keras_depthwise" and r <= 2)
        both = max(strides) > 1 and max(dilation) > 1
        word = _keras_word(self.r)
        if both and not depthwise:
            lines += self._weights("keras")
            lines.append("")
            lines.append(f"def forward(x):  # x: {_layout_name('channels_last', r)}")
            if any(lo or hi for lo, hi in pads):
                lines.append(f"    x = {self._keras_pad_lines(pads, mode)}")
            lines.append(f"    y = keras.ops.conv(x, w, strides={_tuple(strides)}, padding='valid', "
                         f"dilation_rate={_tuple(dilation)})")
            lines.append("    return y + b" if self.bias else "    return y")
            return lines, (f"{self._what_padding()}; Keras Conv{r}D rejects strides > 1 with dilation_rate > 1, so "
                           "the code calls keras.ops.conv (which accepts both) on the explicitly padded input.")
        layout = "keras_depthwise" if depthwise else "keras"
        lines += self._weights(layout)
        pre = None
        if mode == "zeros" and word is not None:
            padding = word
        else:
            padding = "valid"
            if any(lo or hi for lo, hi in pads):
                if mode == "zeros":
                    pre = f"pad = keras.layers.ZeroPadding{r}D({_zero_padding_arg(pads)})"
                else:
                    pre = "ops"
        if depthwise:
            mult = self.cout // self.cin
            ctor = (f"keras.layers.DepthwiseConv{r}D({_tuple(spec.kernel_size)}, strides={_tuple(strides)}, "
                    f"padding={padding!r}, depth_multiplier={mult}, dilation_rate={_tuple(dilation)}, "
                    f"use_bias={self.bias})")
        else:
            ctor = (f"keras.layers.Conv{r}D({self.cout}, {_tuple(spec.kernel_size)}, strides={_tuple(strides)}, "
                    f"padding={padding!r}, dilation_rate={_tuple(dilation)}, groups={self.groups}, "
                    f"use_bias={self.bias})")
        lines.append(f"layer = {ctor}")
        built = self.r.input_size if padding != "valid" else self.r.padded_size
        lines.append(f"layer.build((None, {', '.join(map(str, built))}, {self.cin}))")
        lines.append("layer.set_weights([w, b])" if self.bias else "layer.set_weights([w])")
        if pre and pre != "ops":
            lines.append(pre)
        lines.append("")
        lines.append(f"def forward(x):  # x: {_layout_name('channels_last', r)}")
        if pre == "ops":
            lines.append(f"    return layer({self._keras_pad_lines(pads, mode)})")
        elif pre:
            lines.append("    return layer(pad(x))")
        else:
            lines.append("    return layer(x)")
        if padding != "valid" or not any(lo or hi for lo, hi in pads):
            summary = f"{self._what_padding()}; Keras padding={padding!r} gives the same."
        elif mode == "zeros":
            summary = (f"{self._what_padding()}, which Keras's 'same'/'valid' do not give here; a "
                       f"ZeroPadding{r}D layer pads first and the convolution uses 'valid'.")
        else:
            summary = (f"{self._what_padding()} in {mode!r} mode, which Keras layers cannot do; "
                       f"keras.ops.pad(mode={_MODE_NUMPY[mode]!r}) pads first and the convolution uses 'valid'.")
        return lines, summary

    def _keras_conv_transpose(self) -> tuple[list[str], str]:
        r, spec = self.rank, self.spec
        strides, dilation = spec.strides, spec.dilation
        if self.groups > 1:
            raise PortError(
                f"Keras cannot express a grouped transposed convolution (groups={self.groups}): "
                "Conv{r}DTranspose and keras.ops.conv_transpose have no groups; port it to JAX "
                "(lax.conv_general_dilated with lhs_dilation and feature_group_count) or split the "
                "channels into groups and concatenate".replace("{r}", str(r))
            )
        lines = _imports("keras")
        lines += self._weights("keras")
        both = max(strides) > 1 and max(dilation) > 1
        choice = None if both else _keras_transpose_choice(self.r)
        if choice is not None:
            padding, output_padding = choice
            op = "None" if output_padding is None else _tuple(output_padding)
            lines.append(f"layer = keras.layers.Conv{r}DTranspose({self.cout}, {_tuple(spec.kernel_size)}, "
                         f"strides={_tuple(strides)}, padding={padding!r}, output_padding={op}, "
                         f"dilation_rate={_tuple(dilation)}, use_bias={self.bias})")
            lines.append(f"layer.build((None, {', '.join(map(str, self.r.input_size))}, {self.cin}))")
            lines.append("layer.set_weights([w, b])" if self.bias else "layer.set_weights([w])")
            lines.append("")
            lines.append(f"def forward(x):  # x: {_layout_name('channels_last', r)}")
            lines.append("    return layer(x)")
            return lines, (f"the output is cropped by {_crop_text(self.r.crop)}: Keras padding={padding!r}, "
                           f"output_padding={op} gives the same.")
        crop = self.r.crop
        lines.append("")
        lines.append(f"def forward(x):  # x: {_layout_name('channels_last', r)}")
        lines.append(f"    y = keras.ops.conv_transpose(x, w, strides={_tuple(strides)}, padding='valid', "
                     f"output_padding={_tuple([0] * r)}, dilation_rate={_tuple(dilation)})  # the full output")
        lines += _keras_crop_lines(crop, "y")
        lines.append("    return y + b" if self.bias else "    return y")
        why = ("Keras layers reject strides > 1 with dilation_rate > 1" if both else
               "no Keras padding/output_padding gives this crop")
        return lines, (f"the output is cropped by {_crop_text(crop)}; {why}, so the code runs "
                       "keras.ops.conv_transpose for the full output and crops it.")

    def _keras_max_pool(self) -> tuple[list[str], str]:
        return self._keras_pool("max")

    def _keras_avg_pool(self) -> tuple[list[str], str]:
        return self._keras_pool("avg")

    def _keras_pool(self, kind: str) -> tuple[list[str], str]:
        r, spec = self.rank, self.spec
        if max(spec.dilation) > 1:
            raise PortError(
                f"Keras pooling has no dilation (dilation={spec.dilation}); port it to JAX "
                "(lax.reduce_window with window_dilation) or PyTorch (MaxPool with dilation)"
            )
        lines = _imports("keras")
        layer_name = f"MaxPooling{r}D" if kind == "max" else f"AveragePooling{r}D"
        word = _keras_word(self.r, pool=True)
        native = word is not None and not any(self.r.overhang) and (
            kind == "max" or word == "valid" or not spec.count_include_pad)
        if native:
            lines.append(f"layer = keras.layers.{layer_name}({_tuple(spec.kernel_size)}, "
                         f"strides={_tuple(spec.strides)}, padding={word!r})")
            lines.append("")
            lines.append(f"def forward(x):  # x: {_layout_name('channels_last', r)}")
            lines.append("    return layer(x)")
            return lines, f"{self._what_padding()}; Keras padding={word!r} gives the same."
        padded = list(self.r.window_padding)
        lines.append(f"layer = keras.layers.{layer_name}({_tuple(spec.kernel_size)}, "
                     f"strides={_tuple(spec.strides)}, padding='valid')")
        lines.append("")
        lines.append(f"def forward(x):  # x: {_layout_name('channels_last', r)}")
        if kind == "max":
            lines.append(f"    return layer({self._keras_pad_lines(padded, 'zeros', value='-np.inf')})")
            return lines, (f"{self._what_padding()}, which Keras's 'same'/'valid' do not give here; the code pads "
                           "with -inf (padding never wins a max) and pools with 'valid'.")
        full = _pairs([(0, 0), *padded, (0, 0)])
        if spec.count_include_pad and not any(self.r.overhang):
            lines.append(f"    return layer(keras.ops.pad(x, {full}))")
            return lines, (f"{self._what_padding()}, counted in the average (count_include_pad=True), "
                           "which Keras's AveragePooling cannot say; the code zero-pads and pools with 'valid'.")
        lines.append("    counted = keras.ops.ones_like(x[:1, ..., :1])")
        if spec.count_include_pad:
            decl = _pairs([(0, 0), *self.r.padding, (0, 0)])
            ext = _pairs([(0, 0), *[(0, e) for e in self.r.overhang], (0, 0)])
            lines.append(f"    counted = keras.ops.pad(keras.ops.pad(counted, {decl}, constant_values=1.0), {ext})")
        else:
            lines.append(f"    counted = keras.ops.pad(counted, {full})")
        lines.append(f"    return layer(keras.ops.pad(x, {full})) / layer(counted)")
        return lines, (f"{self._what_padding()}, which Keras's AveragePooling cannot say with "
                       f"count_include_pad={spec.count_include_pad}; the code divides the average of the "
                       "zero-padded input by the average of a mask of the cells that count.")

    # ---------------------------------------------------------------- JAX

    def _jax_numbers(self) -> str:
        spatial = {1: "W", 2: "HW", 3: "DHW"}[self.rank]
        return f"('N{spatial}C', '{spatial}IO', 'N{spatial}C')"

    def _jax_conv(self) -> tuple[list[str], str]:
        r, spec = self.rank, self.spec
        pads = self.r.padding
        lines = _imports("jax")
        lines += self._weights("keras")
        lines.append("w = jnp.asarray(w)")
        lines.append("")
        lines.append(f"def forward(x):  # x: {_layout_name('channels_last', r)}")
        padding = _pairs(pads)
        if spec.padding_mode != "zeros" and any(lo or hi for lo, hi in pads):
            source, grow = _crop_first("x", pads)
            if source != "x":
                lines.append(f"    x = {source}  # negative padding crops before the copies")
            if any(lo or hi for lo, hi in grow):
                lines.append(f"    x = jnp.pad(x, {_pairs([(0, 0), *grow, (0, 0)])}, "
                             f"mode={_MODE_NUMPY[spec.padding_mode]!r})")
            padding = _pairs([(0, 0)] * r)
        lines.append(f"    y = lax.conv_general_dilated(x, w, window_strides={_tuple(spec.strides)}, "
                     f"padding={padding}, rhs_dilation={_tuple(spec.dilation)}, "
                     f"dimension_numbers={self._jax_numbers()}, feature_group_count={self.groups})")
        lines.append("    return y + b" if self.bias else "    return y")
        mode = "" if spec.padding_mode == "zeros" else f" in {spec.padding_mode!r} mode (jnp.pad)"
        return lines, f"{self._what_padding()}{mode}; JAX takes the (lo, hi) pairs {pads} directly."

    def _jax_conv_transpose(self) -> tuple[list[str], str]:
        r, spec = self.rank, self.spec
        lines = _imports("jax")
        lines += self._weights("keras")
        g = self.groups
        lines.append("# the equivalent stride-1 convolution of the zero-inserted input: flip the taps,")
        lines.append("# swap in/out within each group")
        lines.append(f"taps, groups = w.shape[:{r}], {g}")
        lines.append("w = w.reshape(*taps, w.shape[-2], groups, w.shape[-1] // groups)  # (k..., out/g, g, in/g)")
        lines.append("w = np.swapaxes(w, -1, -3)  # (k..., in/g, g, out/g)")
        lines.append("w = w.reshape(*taps, w.shape[-3], -1)  # (k..., in/g, out)")
        lines.append(f"w = jnp.asarray(w[{', '.join(['::-1'] * r)}])")
        lines.append("")
        lines.append(f"def forward(x):  # x: {_layout_name('channels_last', r)}")
        lines.append(f"    y = lax.conv_general_dilated(x, w, window_strides={_tuple([1] * r)}, "
                     f"padding={_pairs(self.r.padding)}, lhs_dilation={_tuple(spec.strides)}, "
                     f"rhs_dilation={_tuple(spec.dilation)}, dimension_numbers={self._jax_numbers()}, "
                     f"feature_group_count={g})")
        lines.append("    return y + b" if self.bias else "    return y")
        return lines, (f"the output is cropped by {_crop_text(self.r.crop)}; JAX runs it as a stride-1 "
                       f"convolution of the input dilated by {_tuple(spec.strides)} with padding "
                       f"{self.r.padding} and the flipped kernel.")

    def _jax_pool(self, kind: str) -> tuple[list[str], str]:
        r, spec = self.rank, self.spec
        lines = _imports("jax")
        padded = list(self.r.window_padding)
        window = _tuple((1, *spec.kernel_size, 1))
        strides = _tuple((1, *spec.strides, 1))
        dil = _tuple((1, *spec.dilation, 1))
        pads = _pairs([(0, 0), *padded, (0, 0)])
        common = (f"window_dimensions={window}, window_strides={strides}, padding={pads}, "
                  f"window_dilation={dil}")
        lines.append("")
        lines.append(f"def forward(x):  # x: {_layout_name('channels_last', r)}")
        if kind == "max":
            lines.append(f"    return lax.reduce_window(x, -jnp.inf, lax.max, {common})")
            return lines, f"{self._what_padding()}; lax.reduce_window pads with -inf, so the pairs go in directly."
        lines.append("    counted = jnp.ones_like(x[:1, ..., :1])")
        if spec.count_include_pad:
            lines.append(f"    counted = jnp.pad(counted, {_pairs([(0, 0), *self.r.padding, (0, 0)])}, constant_values=1.0)")
            ext = [(-lo, -(hi)) for lo, hi in self.r.padding]
            common_counted = common.replace(f"padding={pads}", f"padding={_pairs([(0, 0), *[(lo + a, hi + b) for (lo, hi), (a, b) in zip(padded, ext)], (0, 0)])}")
        else:
            common_counted = common
        lines.append(f"    total = lax.reduce_window(x, 0.0, lax.add, {common})")
        lines.append(f"    return total / lax.reduce_window(counted, 0.0, lax.add, {common_counted})")
        return lines, (f"{self._what_padding()}; the code divides windowed sums (lax.reduce_window) by the "
                       f"count of cells that count (count_include_pad={spec.count_include_pad}).")

    def _jax_max_pool(self) -> tuple[list[str], str]:
        return self._jax_pool("max")

    def _jax_avg_pool(self) -> tuple[list[str], str]:
        return self._jax_pool("avg")

    # ---------------------------------------------------------------- ONNX

    def _onnx_model_lines(self, nodes: list[str], initializers: list[str]) -> list[str]:
        r = self.rank
        lines = ["nodes = ["] + [f"    {n}," for n in nodes] + ["]"]
        lines.append("graph = helper.make_graph(")
        lines.append("    nodes, 'port',")
        lines.append(f"    [helper.make_tensor_value_info('x', TensorProto.FLOAT, [None, {self.cin}, "
                     f"{', '.join(map(str, self.r.input_size))}])],")
        lines.append("    [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)],")
        lines.append(f"    initializer=[{', '.join(initializers)}],")
        lines.append(")")
        lines.append(f"model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', {_ONNX_OPSET})])")
        lines.append("session = ort.InferenceSession(model.SerializeToString(), providers=['CPUExecutionProvider'])")
        lines.append("")
        lines.append(f"def forward(x):  # x: {_layout_name('channels_first', r)}, float32 NumPy")
        lines.append("    return session.run(None, {'x': np.asarray(x, dtype=np.float32)})[0]")
        return lines

    def _onnx_conv(self) -> tuple[list[str], str]:
        spec = self.spec
        pads = self.r.padding
        lines = _imports("onnx") + self._weights("torch")
        nodes, inits, source = [], ["numpy_helper.from_array(w, 'W')"], "'x'"
        conv_pads = [lo for lo, _ in pads] + [hi for _, hi in pads]
        if spec.padding_mode != "zeros" and any(lo or hi for lo, hi in pads):
            full = [0, 0, *[lo for lo, _ in pads], 0, 0, *[hi for _, hi in pads]]
            inits.append(f"numpy_helper.from_array(np.array({full}, dtype=np.int64), 'pads')")
            nodes.append(f"helper.make_node('Pad', ['x', 'pads'], ['xp'], mode={_MODE_NUMPY[spec.padding_mode]!r})")
            source, conv_pads = "'xp'", [0] * (2 * self.rank)
        inputs = [source, "'W'"] + (["'B'"] if self.bias else [])
        if self.bias:
            inits.append("numpy_helper.from_array(b, 'B')")
        nodes.append(f"helper.make_node('Conv', [{', '.join(inputs)}], ['y'], kernel_shape={list(spec.kernel_size)}, "
                     f"strides={list(spec.strides)}, dilations={list(spec.dilation)}, pads={conv_pads}, "
                     f"group={self.groups})")
        lines += self._onnx_model_lines(nodes, inits)
        return lines, f"{self._what_padding()}; ONNX pads={[lo for lo, _ in pads] + [hi for _, hi in pads]} (begins, then ends)."

    def _onnx_conv_transpose(self) -> tuple[list[str], str]:
        spec = self.spec
        crop = self.r.crop
        lines = _imports("onnx") + self._weights("torch")
        inits = ["numpy_helper.from_array(w, 'W')"]
        lo_pads = [max(lo, 0) for lo, _ in crop]
        hi_pads = [max(hi, 0) for _, hi in crop]
        extra = [max(-hi, 0) for _, hi in crop]
        if any(lo < 0 for lo, _ in crop) or any(e >= s for e, s in zip(extra, spec.strides)):
            # onnxruntime takes output_padding < stride only: run in full, then crop/extend with Pad
            rank = self.rank
            full = [0, 0, *[-lo for lo, _ in crop], 0, 0, *[-hi for _, hi in crop]]
            inits.append(f"numpy_helper.from_array(np.array({full}, dtype=np.int64), 'crop')")
            nodes = [
                f"helper.make_node('ConvTranspose', ['x', 'W'], ['full'], kernel_shape={list(spec.kernel_size)}, "
                f"strides={list(spec.strides)}, dilations={list(spec.dilation)}, group={self.groups})",
                f"helper.make_node('Pad', ['full', 'crop'], [{'cropped' if self.bias else 'y'!r}])",
            ]
            if self.bias:
                inits.append(f"numpy_helper.from_array(b.reshape(-1{', 1' * rank}), 'B')")
                nodes.append("helper.make_node('Add', ['cropped', 'B'], ['y'])")
            lines += self._onnx_model_lines(nodes, inits)
            return lines, (f"the output is cropped by {_crop_text(crop)}, which ONNX ConvTranspose's pads and "
                           "output_padding (< stride in onnxruntime) cannot say; the code runs it in full and "
                           "crops with a Pad node (negative pads).")
        inputs = ["'x'", "'W'"] + (["'B'"] if self.bias else [])
        if self.bias:
            inits.append("numpy_helper.from_array(b, 'B')")
        node = (f"helper.make_node('ConvTranspose', [{', '.join(inputs)}], ['y'], kernel_shape={list(spec.kernel_size)}, "
                f"strides={list(spec.strides)}, dilations={list(spec.dilation)}, pads={lo_pads + hi_pads}, "
                f"output_padding={extra}, group={self.groups})")
        lines += self._onnx_model_lines([node], inits)
        return lines, f"the output is cropped by {_crop_text(crop)}: ONNX pads={lo_pads + hi_pads}, output_padding={extra}."

    def _onnx_pool(self, kind: str) -> tuple[list[str], str]:
        spec = self.spec
        pads = self.r.padding
        if any(max(lo, hi) >= k for (lo, hi), k in zip(pads, spec.kernel_size)):
            raise PortError(f"ONNX pooling needs pads smaller than the kernel, got {pads} for kernel "
                            f"{spec.kernel_size}; port to JAX (lax.reduce_window) instead")
        lines = _imports("onnx")
        op = "MaxPool" if kind == "max" else "AveragePool"
        attrs = (f"kernel_shape={list(spec.kernel_size)}, strides={list(spec.strides)}, "
                 f"pads={[lo for lo, _ in pads] + [hi for _, hi in pads]}, ceil_mode={int(spec.ceil_mode)}")
        if kind == "max" or max(spec.dilation) > 1:
            attrs += f", dilations={list(spec.dilation)}"
        if kind == "avg":
            attrs += f", count_include_pad={int(spec.count_include_pad)}"
        lines += self._onnx_model_lines([f"helper.make_node({op!r}, ['x'], ['y'], {attrs})"], [])
        return lines, f"{self._what_padding()}; ONNX {op} takes the pads directly."

    def _onnx_max_pool(self) -> tuple[list[str], str]:
        return self._onnx_pool("max")

    def _onnx_avg_pool(self) -> tuple[list[str], str]:
        return self._onnx_pool("avg")


# --------------------------------------------------------------------------- small helpers


def _imports(target: str) -> list[str]:
    return {
        "torch": ["import numpy as np", "import torch", "import torch.nn.functional as F", ""],
        "keras": ["import numpy as np", "import keras", ""],
        "jax": ["import numpy as np", "import jax.numpy as jnp", "from jax import lax", ""],
        "onnx": ["import numpy as np", "import onnxruntime as ort",
                 "from onnx import TensorProto, helper, numpy_helper", ""],
    }[target]


def _torch_load(bias: bool) -> list[str]:
    lines = ["with torch.no_grad():", "    conv.weight.copy_(torch.from_numpy(w))"]
    if bias:
        lines.append("    conv.bias.copy_(torch.from_numpy(b))")
    return lines


def _torch_mode(mode: str) -> str:
    return "" if mode == "zeros" else f", mode={_MODE_TORCH[mode]!r}"


def _compose_transposes(first: str, second: str) -> str:
    a = ast.literal_eval(first.split(", ", 1)[1].rstrip(")"))
    b = ast.literal_eval(second.split(", ", 1)[1].rstrip(")"))
    perm = tuple(a[i] for i in b)
    if perm == tuple(range(len(perm))):
        return "w = kernel"
    return f"w = np.transpose(kernel, {_tuple(perm)})"


def _odd_side(pads: Sequence[tuple[int, int]]) -> str:
    ends = {"end" if hi > lo else "start" for lo, hi in pads if lo != hi}
    return " and ".join(sorted(ends)) if ends else "end"


def _crop_text(crop: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"({lo}, {hi})" for lo, hi in crop) + " (start, end; negative adds cells)"


def _zero_padding_arg(pads: Sequence[tuple[int, int]]) -> str:
    if len(pads) == 1:
        return f"({pads[0][0]}, {pads[0][1]})"
    return _pairs(pads)


def _keras_word(resolved: ResolvedConv, pool: bool = False) -> str | None:
    """The Keras padding word that gives exactly this padding, if any."""
    spec = resolved.spec
    pads = tuple(resolved.padding)
    if all(lo == hi == 0 for lo, hi in pads):
        return "valid"
    same = tuple(
        ar.same_padding(size, k, s, 1 if pool else d)
        for size, k, s, d in zip(resolved.input_size, spec.kernel_size, spec.strides, spec.dilation)
    )
    if pads == same:
        return "same"
    if not pool and resolved.rank == 1 and pads == (ar.causal_padding(spec.kernel_size[0], spec.dilation[0]),):
        return "causal"
    return None


def _keras_transpose_choice(resolved: ResolvedConv) -> tuple[str, tuple[int, ...] | None] | None:
    """Keras (padding, output_padding) giving exactly ``resolved``'s zero-inserted padding."""
    spec = resolved.spec
    target = tuple(resolved.padding)
    options: list[tuple[int, ...] | None] = [None]
    ranges = [range(s) for s in spec.strides]
    options += [tuple(o) for o in itertools.product(*ranges)]
    for word in ("valid", "same"):
        for op in options:
            pads = tuple(
                (ar.transposed_valid_padding if word == "valid" else ar.transposed_same_padding)(
                    k, s, d, None if op is None else op[axis])
                for axis, (k, s, d) in enumerate(zip(spec.kernel_size, spec.strides, spec.dilation))
            )
            if pads == target:
                return word, op
    return None


def _keras_crop_lines(crop: Sequence[tuple[int, int]], name: str) -> list[str]:
    lines = []
    if any(lo < 0 or hi < 0 for lo, hi in crop):
        grow = [(max(-lo, 0), max(-hi, 0)) for lo, hi in crop]
        lines.append(f"    {name} = keras.ops.pad({name}, {_pairs([(0, 0), *grow, (0, 0)])})  # cells no tap reaches")
    slices = []
    for lo, hi in crop:
        lo, hi = max(lo, 0), max(hi, 0)
        slices.append(f"{lo}:{-hi if hi else ''}")
    if any(s != "0:" for s in slices):
        lines.append(f"    {name} = {name}[:, {', '.join(slices)}, :]")
    return lines
