"""Framework front doors: each framework's own arguments in, a :class:`ConvSpec` out.

Every door takes the argument names of its framework -- Keras 3 layers,
``torch.nn`` modules, ``jax.lax`` functions (and flax-style pooling), ONNX
operator attributes -- and applies that framework's *construction-time*
acceptance rules: what it rejects, the door rejects, with an error that names
the framework, the argument, its value, the rule and what to write instead.
Rules that depend on the input size (a kernel larger than the padded input,
reflect padding wider than the input) are checked by
:meth:`ConvSpec.resolve`, as the frameworks check them when called.

The rules were read from the framework sources: Keras
``layers/convolutional/base_conv*.py``, ``layers/pooling/base_pooling.py``
and ``utils/argument_validation.py``; PyTorch ``nn/modules/conv.py`` and the
ATen shape checks behind ``nn/modules/pooling.py``; ``jax/_src/lax/
convolution.py``; the ONNX operator documents and onnxruntime's CPU kernels.
``tests/golden/shapes_*.json`` (``scripts/gen_golden_shapes.py``) records
what the frameworks really do, and ``tests/test_conformance_shapes.py``
holds the doors to it.

Examples
--------
>>> spec = from_keras("Conv2D", filters=8, kernel_size=3, strides=2, padding="same")
>>> spec.resolve((1, 28, 28, 3)).output_shape
(1, 14, 14, 8)
>>> from_torch("Conv2d", in_channels=3, out_channels=8, kernel_size=3, stride=2,
...            padding=1).resolve((1, 3, 28, 28)).padding
((1, 1), (1, 1))
>>> from_torch("Conv2d", in_channels=3, out_channels=8, kernel_size=3, stride=2, padding="same")
Traceback (most recent call last):
...
ValueError: PyTorch Conv2d: padding='same' is not supported with stride=(2, 2) ...
"""

from __future__ import annotations

import difflib
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .arithmetic import (
    check_int,
    effective_kernel,
    same_padding,
    transposed_crop,
    transposed_output_size,
)
from .spec import ConvSpec

__all__ = ["from_keras", "from_torch", "from_jax", "from_onnx", "from_convention",
           "framework_args", "POSITIONAL_ARGS"]

Pads = tuple[tuple[int, int], ...]


# --------------------------------------------------------------------------- shared checks


@dataclass(frozen=True)
class _Door:
    """Words errors for one framework layer, e.g. ``Keras Conv2D``."""

    framework: str
    layer: str

    def error(self, argument: str, value: Any, rule: str, fix: str) -> ValueError:
        return ValueError(f"{self.framework} {self.layer}: {argument}={value!r} {rule}; {fix}")

    def type_error(self, argument: str, value: Any, expected: str, fix: str) -> TypeError:
        return TypeError(
            f"{self.framework} {self.layer}: {argument}={value!r} is a "
            f"{type(value).__name__}, not {expected}; {fix}"
        )

    def integer(self, argument: str, value: Any, minimum: int | None = 1) -> int:
        """:func:`~convarith.arithmetic.check_int`, worded for this framework's layer."""
        try:
            return check_int(argument, value, minimum)
        except TypeError:
            raise self.type_error(argument, value, "an integer", f"write {argument} as an int") from None
        except ValueError:
            raise self.error(argument, value, f"must be at least {minimum}",
                             f"write {argument}={max(minimum or 0, 1)} or more") from None

    def ints(self, argument: str, value: Any, rank: int, minimum: int | None = 1) -> tuple[int, ...]:
        """One int broadcast to ``rank`` axes, or a sequence of exactly ``rank`` ints."""
        example = (max(minimum or 0, 1),) * rank
        fix = f"write one int or {rank} ints, e.g. {argument}={example}" if rank > 1 else (
            f"write one int, e.g. {argument}={example[0]}")
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            values: tuple[Any, ...] = (value,) * rank
        elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            values = tuple(value)
            if len(values) != rank:
                raise self.error(argument, value,
                                 f"has {len(values)} values but {self.layer} has {rank} spatial axes", fix)
        else:
            raise self.type_error(argument, value, f"an int or a sequence of {rank} ints", fix)
        for axis, item in enumerate(values):
            try:
                check_int(f"{argument}[{axis}]", item)  # the one integer check, worded below
            except TypeError:
                raise TypeError(
                    f"{self.framework} {self.layer}: {argument}={value!r} has a non-integer on axis "
                    f"{axis}: {item!r} ({type(item).__name__}); {fix}"
                ) from None
        if minimum is not None and min(values) < minimum:
            axis = min(range(rank), key=lambda a: values[a])
            repaired = tuple(max(int(v), minimum) for v in values)
            raise self.error(argument, value, f"must be at least {minimum} on every axis "
                             f"(axis {axis} is {values[axis]})",
                             f"write e.g. {argument}={repaired if rank > 1 else repaired[0]}")
        return tuple(int(v) for v in values)

    def flag(self, argument: str, value: Any) -> bool:
        if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
            return bool(value)
        raise self.type_error(argument, value, "True/False (or 0/1)", f"write {argument}=True or False")

    def choice(self, argument: str, value: Any, options: Sequence[str], fix: str = "") -> str:
        if not isinstance(value, str) or value not in options:
            raise self.error(argument, value, f"is not one of {tuple(options)}",
                             fix or f"write one of {', '.join(map(repr, options))}")
        return value

    def unexpected(self, kwargs: dict[str, Any], known: Sequence[str], ignored: Sequence[str] = ()) -> None:
        extra = sorted(set(kwargs) - set(known) - set(ignored))
        if extra:
            name = extra[0]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}={kwargs[name]!r}? " if close else ""
            raise TypeError(
                f"{self.framework} {self.layer}: unexpected argument {name}={kwargs[name]!r}; "
                f"{hint}{self.layer} takes {', '.join(known)}"
            )

    def required(self, kwargs: dict[str, Any], name: str) -> Any:
        if name not in kwargs:
            raise TypeError(f"{self.framework} {self.layer}: missing required argument {name!r}; "
                            f"write {name}=...")
        return kwargs[name]


def _given(kwargs: dict[str, Any], name: str, default: Any) -> Any:
    """``kwargs[name]``, with ``default`` where it is absent or None (0 stays 0)."""
    value = kwargs.get(name)
    return default if value is None else value


def _layer(framework: str, name: Any, pattern: str, examples: str) -> re.Match[str]:
    match = re.fullmatch(pattern, name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(f"{framework}: layer={name!r} is not a layer this front door knows; "
                         f"write one of {examples}")
    return match


# --------------------------------------------------------------------------- by convention

#: Positional argument order of the constructors a layer text may call (see
#: :func:`convarith.port.parse_layer`), per framework and layer family.
POSITIONAL_ARGS: dict[str, dict[str, tuple[str, ...]]] = {
    "keras": {
        "Conv": ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate",
                 "groups", "activation", "use_bias"),
        "ConvTranspose": ("filters", "kernel_size", "strides", "padding", "output_padding",
                          "data_format", "dilation_rate", "activation", "use_bias"),
        "DepthwiseConv": ("kernel_size", "strides", "padding", "depth_multiplier", "data_format",
                          "dilation_rate", "activation", "use_bias"),
        "SeparableConv": ("filters", "kernel_size", "strides", "padding", "data_format",
                          "dilation_rate", "depth_multiplier", "activation", "use_bias"),
        "Pool": ("pool_size", "strides", "padding", "data_format"),
        "Dense": ("units", "activation", "use_bias"),
        "ZeroPadding": ("padding", "data_format"),
        "Cropping": ("cropping", "data_format"),
        "UpSampling": ("size", "data_format", "interpolation"),
        "Activation": ("activation",),
        "Dropout": ("rate",),
        "Concatenate": ("axis",),
    },
    "torch": {
        "Conv": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                 "groups", "bias", "padding_mode"),
        "ConvTranspose": ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                          "output_padding", "groups", "bias", "dilation", "padding_mode"),
        "MaxPool": ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
        "AvgPool": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                    "divisor_override"),
        "BatchNorm": ("num_features", "eps", "momentum", "affine"),
        "Linear": ("in_features", "out_features", "bias"),
        "AdaptivePool": ("output_size",),
        "Dropout": ("p",),
        "Flatten": ("start_dim", "end_dim"),
    },
}


def framework_args(convention: str, fields: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The layer (or op) and the arguments with which ``convention`` writes a convolution.

    ``fields`` uses :class:`ConvSpec`'s names (``kernel_size``, ``strides``,
    ``dilation``, ``padding``, ``padding_mode``, ``groups``, ``transposed``,
    ``output_padding``, ``pool``, ``ceil_mode``, ``count_include_pad``,
    ``rank``). A field that is absent or ``None`` is not passed, so the
    framework's own default applies (PyTorch's ``padding=0``, Keras's
    ``"valid"``); JAX has no default padding, and gets ``"VALID"``.

    Only the *names and notation* are translated here; whether the framework
    accepts the values is for its front door (:func:`from_convention`), except
    padding the framework has no way to write (explicit pads in Keras,
    asymmetric pads in PyTorch), which raises ``ValueError``.

    >>> framework_args("torch", {"kernel_size": (2,), "strides": (3,), "transposed": True, "rank": 1})
    ('ConvTranspose1d', {'kernel_size': (2,), 'stride': (3,), 'in_channels': 1, 'out_channels': 1})
    >>> framework_args("onnx", {"kernel_size": (3, 3), "padding": "same", "rank": 2})
    ('Conv', {'kernel_shape': (3, 3), 'auto_pad': 'SAME_UPPER'})
    """
    if convention not in _CONVENTIONS:
        raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}")
    given = {name: value for name, value in fields.items() if value is not None}
    rank = given.get("rank", 2)
    padding = given.get("padding")
    transposed, pool = bool(given.get("transposed", False)), given.get("pool")
    groups = given.get("groups")
    names = _CONVENTION_NAMES[convention]
    if convention == "keras":
        if padding is not None and not isinstance(padding, str):
            raise ValueError(
                f"Keras layers take padding 'valid', 'same' (or 'causal' in Conv1D), not explicit "
                f"numbers ({padding}); add a ZeroPadding layer or use --convention torch/jax/onnx"
            )
        if pool:
            layer = f"{'Max' if pool == 'max' else 'Average'}Pooling{rank}D"
            names = {**names, "kernel_size": "pool_size", "dilation": ""}
        else:
            layer = f"Conv{rank}DTranspose" if transposed else f"Conv{rank}D"
    elif convention == "torch":
        if padding is not None and not isinstance(padding, str):
            if any(lo != hi for lo, hi in padding):
                raise ValueError(
                    f"PyTorch padding is symmetric, got {padding}; pad with F.pad first or use "
                    "--convention jax/onnx"
                )
            padding = tuple(lo for lo, _ in padding)
        if pool:
            layer = f"{'MaxPool' if pool == 'max' else 'AvgPool'}{rank}d"
        else:
            layer = f"ConvTranspose{rank}d" if transposed else f"Conv{rank}d"
    elif convention == "jax":
        if isinstance(padding, str) or padding is None:
            words = {word: name for name, word in _JAX_WORDS.items()}
            if (padding or "valid") not in words:
                raise ValueError(f"JAX takes padding 'VALID', 'SAME', 'SAME_LOWER' or pairs, not {padding!r}")
            padding = words[padding or "valid"]
        if pool:
            layer = f"{pool}_pool"
            names = {**names, "kernel_size": "window_shape", "strides": "strides"}
        else:
            layer = "conv_transpose" if transposed else "conv_general_dilated"
            if transposed:
                names = {**names, "strides": "strides"}
    else:
        layer = "ConvTranspose" if transposed else "Conv"
        if pool:
            layer = "MaxPool" if pool == "max" else "AveragePool"
        if isinstance(padding, str):
            words = {word: name for name, word in _ONNX_WORDS.items()}
            if padding not in words:
                raise ValueError(f"ONNX auto_pad is VALID, SAME_UPPER or SAME_LOWER, not {padding!r}")
            names = {**names, "padding": "auto_pad"}
            padding = words[padding]
        elif padding is not None:
            padding = [lo for lo, _ in padding] + [hi for _, hi in padding]
    given["padding"] = padding
    args: dict[str, Any] = {}
    for field_name in ("kernel_size", "strides", "dilation", "padding", "padding_mode", "groups",
                       "output_padding", "ceil_mode", "count_include_pad"):
        value = given.get(field_name)
        if value is None:
            continue
        name = names.get(field_name, "")
        if not name or not _takes(convention, layer, name):
            if _neutral_default(value):
                continue
            raise ValueError(f"{_NAMES[convention]} {layer} has no argument for {field_name}="
                             f"{value!r}; leave it out or use another convention")
        args[name] = int(value) if isinstance(value, bool) and convention == "onnx" else value
    if not pool:  # the channel counts a framework requires: one channel per group
        if convention == "keras":
            args["filters"] = groups or 1
        elif convention == "torch":
            args["in_channels"] = args["out_channels"] = groups or 1
    return layer, args


def from_convention(convention: str, fields: Mapping[str, Any]) -> ConvSpec:
    """The spec ``convention``'s front door builds from ``fields`` (see :func:`framework_args`).

    >>> from_convention("torch", {"kernel_size": (2,), "strides": (3,), "transposed": True,
    ...                           "rank": 1}).resolve((4,)).output_size   # ConvTranspose1d: 11
    (11,)
    """
    layer, args = framework_args(convention, fields)
    door = {"keras": from_keras, "torch": from_torch, "jax": from_jax, "onnx": from_onnx}[convention]
    return door(layer, **args)


_CONVENTIONS = ("keras", "torch", "jax", "onnx")
_NAMES = {"keras": "Keras", "torch": "PyTorch", "jax": "JAX", "onnx": "ONNX"}
# neutral field name -> the framework's argument name ("" or absent: not an argument)
_CONVENTION_NAMES: dict[str, dict[str, str]] = {
    "keras": {"kernel_size": "kernel_size", "strides": "strides", "dilation": "dilation_rate",
              "padding": "padding", "groups": "groups", "output_padding": "output_padding"},
    "torch": {"kernel_size": "kernel_size", "strides": "stride", "dilation": "dilation",
              "padding": "padding", "padding_mode": "padding_mode", "groups": "groups",
              "output_padding": "output_padding", "ceil_mode": "ceil_mode",
              "count_include_pad": "count_include_pad"},
    "jax": {"kernel_size": "kernel_size", "strides": "window_strides", "dilation": "rhs_dilation",
            "padding": "padding", "groups": "feature_group_count",
            "count_include_pad": "count_include_pad"},
    "onnx": {"kernel_size": "kernel_shape", "strides": "strides", "dilation": "dilations",
             "padding": "pads", "groups": "group", "output_padding": "output_padding",
             "ceil_mode": "ceil_mode", "count_include_pad": "count_include_pad"},
}


def _takes(convention: str, layer: str, name: str) -> bool:
    """Whether ``layer`` of ``convention`` has an argument ``name`` (the doors' own tables)."""
    if convention == "keras":
        table = _KERAS_ARGS[re.sub(r"[123]D(Transpose)?$", lambda m: m[1] or "", layer)]
    elif convention == "torch":
        table = _TORCH_ARGS[re.sub(r"[123]d$", "", layer)]
    elif convention == "jax":
        table = _JAX_ARGS[layer]
    else:
        table = _ONNX_ARGS[layer]
    return name in table


def _neutral_default(value: Any) -> bool:
    """Whether a field's value is what leaving it out means everywhere (1, False, 'zeros')."""
    if isinstance(value, (tuple, list)):
        return all(_neutral_default(v) for v in value)
    return value is False or value == "zeros" or (value == 1 and value is not True)


# --------------------------------------------------------------------------- Keras


_KERAS_IGNORED = (
    "activation", "use_bias", "kernel_initializer", "bias_initializer", "kernel_regularizer",
    "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint",
    "depthwise_initializer", "pointwise_initializer", "depthwise_regularizer",
    "pointwise_regularizer", "depthwise_constraint", "pointwise_constraint", "lora_rank",
    "lora_alpha", "name", "dtype", "trainable", "input_shape",
)
_KERAS_ARGS = {
    "Conv": ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "groups"),
    "ConvTranspose": ("filters", "kernel_size", "strides", "padding", "output_padding",
                      "data_format", "dilation_rate"),
    "DepthwiseConv": ("kernel_size", "strides", "padding", "depth_multiplier", "data_format",
                      "dilation_rate"),
    "SeparableConv": ("filters", "kernel_size", "strides", "padding", "data_format",
                      "dilation_rate", "depth_multiplier"),
    "MaxPooling": ("pool_size", "strides", "padding", "data_format"),
    "AveragePooling": ("pool_size", "strides", "padding", "data_format"),
}
_KERAS_ALIASES = {"Convolution": "Conv", "MaxPool": "MaxPooling", "AvgPool": "AveragePooling",
                  "AveragePool": "AveragePooling"}


def from_keras(layer: str = "Conv2D", **kwargs: Any) -> ConvSpec:
    """A :class:`ConvSpec` from the arguments of a Keras 3 layer.

    Parameters
    ----------
    layer
        ``Conv{1,2,3}D``, ``Conv{1,2,3}DTranspose``, ``DepthwiseConv{1,2}D``,
        ``SeparableConv{1,2}D``, ``MaxPooling{1,2,3}D`` or
        ``AveragePooling{1,2,3}D`` (aliases ``Convolution2D``, ``MaxPool2D``,
        ``AvgPool2D`` too).
    **kwargs
        The layer's own arguments (``filters``, ``kernel_size``, ``strides``,
        ``padding``, ``data_format``, ``dilation_rate``, ``groups``,
        ``output_padding``, ``depth_multiplier``, ``pool_size``). Arguments
        that do not change the geometry (``activation``, ``use_bias``,
        initializers, ``name``...) are accepted and ignored.

    Examples
    --------
    >>> from_keras("Conv1D", filters=4, kernel_size=3, dilation_rate=2, padding="causal").padding
    'causal'
    >>> from_keras("MaxPooling2D", pool_size=2).strides
    (2, 2)
    """
    match = _layer("Keras", layer,
                   r"(Conv|Convolution|DepthwiseConv|SeparableConv|MaxPooling|MaxPool|AveragePooling"
                   r"|AveragePool|AvgPool)([123])D(Transpose)?",
                   "Conv2D, Conv2DTranspose, DepthwiseConv2D, SeparableConv2D, MaxPooling2D, "
                   "AveragePooling2D (1D, 2D or 3D)")
    base = _KERAS_ALIASES.get(match[1], match[1])
    rank = int(match[2])
    if match[3]:
        if base != "Conv":
            raise ValueError(f"Keras: layer={layer!r} does not exist; the transposed layer is "
                             f"Conv{rank}DTranspose")
        base = "ConvTranspose"
    if base in ("DepthwiseConv", "SeparableConv") and rank == 3:
        raise ValueError(f"Keras: layer={layer!r} does not exist; Keras has {base}1D and {base}2D")
    door = _Door("Keras", layer)
    door.unexpected(kwargs, _KERAS_ARGS[base], _KERAS_IGNORED)
    data_format = _keras_data_format(door, kwargs.get("data_format"))

    if base in ("MaxPooling", "AveragePooling"):
        pool_size = door.ints("pool_size", door.required(kwargs, "pool_size"), rank)
        strides = kwargs.get("strides")
        strides = pool_size if strides is None else door.ints("strides", strides, rank)
        padding = kwargs.get("padding", "valid")
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise door.error("padding", padding, "is not 'valid' or 'same' (case-insensitive)",
                             "write padding='valid' or 'same'")
        padding = padding.lower()
        return ConvSpec(pool_size, strides, padding=padding, pool="max" if base == "MaxPooling" else "avg",
                        count_include_pad=False, data_format=data_format, rank=rank, convention="keras")

    kernel_size = door.ints("kernel_size", door.required(kwargs, "kernel_size"), rank)
    strides = door.ints("strides", kwargs.get("strides", 1), rank)
    dilation = door.ints("dilation_rate", kwargs.get("dilation_rate", 1), rank)
    padding = _keras_padding(door, kwargs.get("padding", "valid"), causal=base == "Conv" and rank == 1)
    filters = None
    if base != "DepthwiseConv":
        filters = door.integer("filters", door.required(kwargs, "filters"))
    if base in ("Conv", "ConvTranspose") and max(strides) > 1 and max(dilation) > 1:
        raise door.error("strides", strides, f"> 1 cannot be combined with dilation_rate={dilation} > 1 "
                         f"in Keras {base} layers", "use strides=1 with dilation, or dilation_rate=1 "
                         "with strides (DepthwiseConv/SeparableConv accept both)")
    common: dict[str, Any] = dict(kernel_size=kernel_size, strides=strides, dilation=dilation,
                                  padding=padding, data_format=data_format, rank=rank,
                                  convention="keras")
    if base == "Conv":
        groups = door.integer("groups", kwargs.get("groups", 1))
        if filters is not None and filters % groups:
            raise door.error("filters", filters, f"is not divisible by groups={groups}",
                             f"use filters that are a multiple of {groups}")
        return ConvSpec(groups=groups, filters=filters, **common)
    if base == "ConvTranspose":
        output_padding = kwargs.get("output_padding")
        if output_padding is not None:
            output_padding = door.ints("output_padding", output_padding, rank, minimum=0)
            for axis, (o, s) in enumerate(zip(output_padding, strides)):
                if o >= s:
                    raise door.error("output_padding", output_padding,
                                     f"must be smaller than strides={strides} on every axis "
                                     f"(axis {axis}: {o} >= {s})",
                                     "use output_padding < strides, or None for the default")
        return ConvSpec(transposed=True, output_padding=output_padding, filters=filters, **common)
    multiplier = door.integer("depth_multiplier", kwargs.get("depth_multiplier", 1))
    return ConvSpec(groups="depthwise", depth_multiplier=multiplier, filters=filters, **common)


def _keras_data_format(door: _Door, value: Any) -> str:
    if value is None:
        return "channels_last"  # keras.config.image_data_format() unless configured otherwise
    word = str(value).lower()
    if word not in ("channels_last", "channels_first"):
        raise door.error("data_format", value, "is not 'channels_last' or 'channels_first'",
                         "write data_format='channels_last' (NHWC) or 'channels_first' (NCHW)")
    return word


def _keras_padding(door: _Door, value: Any, causal: bool) -> str:
    words = ("valid", "same", "causal") if causal else ("valid", "same")
    if isinstance(value, str) and value.lower() in words:
        return value.lower()
    if isinstance(value, str) and value.lower() == "causal":
        rule = "is only accepted by Conv1D"
        fix = "use Conv1D, or pad explicitly with a ZeroPadding layer"
    elif isinstance(value, (list, tuple)):
        rule = "is explicit padding, which Keras convolution layers do not take"
        fix = "put a ZeroPadding layer in front and use padding='valid'"
    else:
        rule = f"is not one of {words} (case-insensitive)"
        fix = f"write padding='{words[0]}' or '{words[1]}'"
    raise door.error("padding", value, rule, fix)


# --------------------------------------------------------------------------- PyTorch


_TORCH_ARGS = {
    "Conv": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
             "groups", "bias", "padding_mode"),
    "ConvTranspose": ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                      "output_padding", "groups", "bias", "dilation", "padding_mode"),
    "MaxPool": ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
    "AvgPool": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                "divisor_override"),
}
_TORCH_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def from_torch(layer: str = "Conv2d", **kwargs: Any) -> ConvSpec:
    """A :class:`ConvSpec` from the arguments of a ``torch.nn`` module.

    Parameters
    ----------
    layer
        ``Conv{1,2,3}d``, ``ConvTranspose{1,2,3}d``, ``MaxPool{1,2,3}d`` or
        ``AvgPool{1,2,3}d``.
    **kwargs
        The module's own arguments (``in_channels``, ``out_channels``,
        ``kernel_size``, ``stride``, ``padding``, ``dilation``, ``groups``,
        ``bias``, ``padding_mode``, ``output_padding``, ``ceil_mode``,
        ``count_include_pad``...). ``device`` and ``dtype`` are ignored.

    Examples
    --------
    >>> from_torch("ConvTranspose2d", in_channels=4, out_channels=2, kernel_size=4, stride=2,
    ...            padding=1).resolve((1, 4, 14, 14)).output_shape
    (1, 2, 28, 28)
    >>> from_torch("MaxPool2d", kernel_size=3, stride=2, padding=1, ceil_mode=True).resolve(
    ...     (6, 6)).output_size
    (4, 4)
    """
    match = _layer("PyTorch", layer, r"(Conv|ConvTranspose|MaxPool|AvgPool)([123])d",
                   "Conv2d, ConvTranspose2d, MaxPool2d, AvgPool2d (1d, 2d or 3d)")
    base, rank = match[1], int(match[2])
    door = _Door("PyTorch", layer)
    known = _TORCH_ARGS[base]
    if layer == "AvgPool1d":
        known = known[:-1]  # AvgPool1d has no divisor_override
    door.unexpected(kwargs, known, ("device", "dtype"))
    kernel_size = door.ints("kernel_size", door.required(kwargs, "kernel_size"), rank)
    stride = kwargs.get("stride", None if base.endswith("Pool") else 1)
    strides = kernel_size if stride is None else door.ints("stride", stride, rank)
    dilation = door.ints("dilation", kwargs.get("dilation", 1), rank)
    ceil_mode = door.flag("ceil_mode", kwargs.get("ceil_mode", False))

    if base.endswith("Pool"):
        pool_padding = door.ints("padding", kwargs.get("padding", 0), rank, minimum=0)
        door.flag("return_indices", kwargs.get("return_indices", False))
        for axis, (p, k) in enumerate(zip(pool_padding, kernel_size)):
            if p > k // 2:  # ATen checks the dilated kernel too, but this is the stricter bound
                raise door.error("padding", kwargs.get("padding"),
                                 f"must be at most half the kernel size (axis {axis}: {p} > {k} // 2)",
                                 f"use padding <= {k // 2} on that axis, or a larger kernel_size")
        count_include_pad = False
        if base == "AvgPool":
            count_include_pad = door.flag("count_include_pad", kwargs.get("count_include_pad", True))
            if kwargs.get("divisor_override") is not None:
                raise door.error("divisor_override", kwargs["divisor_override"],
                                 "is not modelled by convarith (it changes values, not shapes)",
                                 "leave divisor_override=None")
        return ConvSpec(kernel_size, strides, dilation, padding=tuple((p, p) for p in pool_padding),
                        pool="max" if base == "MaxPool" else "avg", ceil_mode=ceil_mode,
                        count_include_pad=count_include_pad, data_format="channels_first",
                        rank=rank, convention="torch")

    in_channels = door.integer("in_channels", door.required(kwargs, "in_channels"))
    out_channels = door.integer("out_channels", door.required(kwargs, "out_channels"))
    groups = door.integer("groups", kwargs.get("groups", 1))
    for name, count in (("in_channels", in_channels), ("out_channels", out_channels)):
        if count % groups:
            raise door.error(name, count, f"is not divisible by groups={groups}",
                             f"use {name} that is a multiple of {groups}")
    door.flag("bias", kwargs.get("bias", True))
    padding_mode = door.choice("padding_mode", kwargs.get("padding_mode", "zeros"), _TORCH_PADDING_MODES)
    raw_padding = kwargs.get("padding", 0)
    common: dict[str, Any] = dict(kernel_size=kernel_size, strides=strides, dilation=dilation,
                                  groups=groups, filters=out_channels, in_channels=in_channels,
                                  data_format="channels_first", rank=rank, convention="torch")
    if base == "ConvTranspose":
        if padding_mode != "zeros":
            raise door.error("padding_mode", padding_mode, "is not supported by transposed convolutions",
                             "use padding_mode='zeros'")
        if isinstance(raw_padding, str):
            raise door.error("padding", raw_padding, "is a string; ConvTranspose takes only integers",
                             "write padding=P (cells cropped from each side of the output)")
        crop = door.ints("padding", raw_padding, rank, minimum=0)
        output_padding = door.ints("output_padding", kwargs.get("output_padding", 0), rank, minimum=0)
        for axis, (o, s, d) in enumerate(zip(output_padding, strides, dilation)):
            if o >= max(s, d):
                raise door.error("output_padding", kwargs.get("output_padding"),
                                 f"must be smaller than either stride or dilation (axis {axis}: "
                                 f"{o} >= max({s}, {d}))", f"use output_padding < {max(s, d)}")
        return ConvSpec(padding=tuple((c, c) for c in crop), transposed=True,
                        output_padding=output_padding, **common)

    padding: str | Pads
    if isinstance(raw_padding, str):
        padding = door.choice("padding", raw_padding, ("same", "valid"),
                              "write padding='same' or 'valid' (lower case), or an int")
        if padding == "same" and max(strides) > 1:
            raise door.error("padding", raw_padding, f"is not supported with stride={strides} > 1",
                             "pad explicitly, e.g. padding=K//2, or use stride=1")
    else:
        # PyTorch refuses negative padding with zeros, but crops with the copying modes
        least = 0 if padding_mode == "zeros" else None
        padding = tuple((p, p) for p in door.ints("padding", raw_padding, rank, minimum=least))
    return ConvSpec(padding=padding, padding_mode=padding_mode, **common)


# --------------------------------------------------------------------------- JAX


_JAX_ARGS = {
    "conv_general_dilated": ("kernel_size", "window_strides", "padding", "lhs_dilation",
                             "rhs_dilation", "dimension_numbers", "feature_group_count",
                             "batch_group_count", "in_channels", "filters", "rank"),
    "conv_transpose": ("kernel_size", "strides", "padding", "rhs_dilation", "dimension_numbers",
                       "transpose_kernel", "use_consistent_padding", "in_channels", "filters", "rank"),
    "max_pool": ("window_shape", "strides", "padding"),
    "avg_pool": ("window_shape", "strides", "padding", "count_include_pad"),
}
_JAX_WORDS = {"VALID": "valid", "SAME": "same", "SAME_LOWER": "same_lower"}


def from_jax(op: str = "conv_general_dilated", **kwargs: Any) -> ConvSpec:
    """A :class:`ConvSpec` from ``jax.lax`` convolution arguments or flax-style pooling.

    Parameters
    ----------
    op
        ``"conv_general_dilated"``, ``"conv_transpose"`` (``jax.lax``), or
        ``"max_pool"`` / ``"avg_pool"`` (``flax.linen`` style: window over the
        spatial axes of an ``N...C`` input, ``strides`` default 1).
    **kwargs
        The function's own arguments. The kernel is an array in JAX, so give
        its spatial shape as ``kernel_size`` (and ``filters`` /
        ``in_channels`` when known). ``dimension_numbers`` picks the layout:
        ``None`` is NCHW for ``conv_general_dilated`` and NHWC for
        ``conv_transpose``, as in JAX. ``conv_general_dilated`` with
        ``lhs_dilation`` is a transposed convolution (JAX does not flip the
        kernel there; shapes are the same).

    Examples
    --------
    >>> from_jax("conv_general_dilated", kernel_size=(3, 3), window_strides=(2, 2),
    ...          padding="SAME_LOWER").resolve((5, 6)).padding
    ((1, 1), (1, 0))
    >>> from_jax("conv_transpose", kernel_size=(3,), strides=(2,), padding="SAME").resolve(
    ...     (4,)).output_size
    (8,)
    """
    door = _Door("JAX", op if isinstance(op, str) else repr(op))
    if op not in _JAX_ARGS:
        raise ValueError(f"JAX: op={op!r} is not supported; write one of {', '.join(_JAX_ARGS)}")
    door.unexpected(kwargs, _JAX_ARGS[op], ("precision", "preferred_element_type"))

    if op in ("max_pool", "avg_pool"):
        window = door.required(kwargs, "window_shape")
        rank = _jax_rank(door, "window_shape", window, None)
        window = door.ints("window_shape", window, rank)
        strides = door.ints("strides", _given(kwargs, "strides", 1), rank)
        padding = _jax_padding(door, kwargs.get("padding", "VALID"), rank, case_sensitive=False)
        include = door.flag("count_include_pad", kwargs.get("count_include_pad", True)) if op == "avg_pool" else False
        return ConvSpec(window, strides, padding=padding, pool=op[:3], count_include_pad=include,
                        data_format="channels_last", rank=rank, convention="jax")

    kernel = door.required(kwargs, "kernel_size")
    rank = _jax_rank(door, "kernel_size", kernel, kwargs.get("rank"))
    kernel_size = door.ints("kernel_size", kernel, rank)
    dilation = door.ints("rhs_dilation", _given(kwargs, "rhs_dilation", 1), rank)
    channels: dict[str, Any] = {}
    for name in ("in_channels", "filters"):
        if kwargs.get(name) is not None:
            channels[name] = door.integer(name, kwargs[name])
    data_format = _jax_layout(door, kwargs.get("dimension_numbers"), rank,
                              default="channels_first" if op == "conv_general_dilated" else "channels_last")
    common: dict[str, Any] = dict(kernel_size=kernel_size, dilation=dilation, data_format=data_format,
                                  rank=rank, convention="jax", **channels)

    if op == "conv_transpose":
        strides = door.ints("strides", door.required(kwargs, "strides"), rank)
        raw = door.required(kwargs, "padding")
        consistent = door.flag("use_consistent_padding", kwargs.get("use_consistent_padding", False))
        door.flag("transpose_kernel", kwargs.get("transpose_kernel", False))
        if isinstance(raw, str) and raw in ("SAME", "VALID"):
            return ConvSpec(strides=strides, padding=raw.lower(), transposed=True, **common)
        if isinstance(raw, str):
            if consistent:
                raise door.error("padding", raw, "is not 'SAME', 'VALID' or (lo, hi) pairs "
                                 "(use_consistent_padding=True)", "write padding='SAME' or 'VALID' "
                                 "(upper case) or explicit pairs")
            if max(strides) > 1:
                raise door.error("padding", raw, f"is not 'SAME' or 'VALID', and other padding strings "
                                 f"are not implemented with strides={strides} > 1",
                                 "write padding='SAME' or 'VALID' (upper case) or explicit (lo, hi) pairs")
            # unit strides: JAX hands the string to conv_general_dilated as forward padding
            pads = _jax_padding(door, raw, rank, case_sensitive=False)
            if isinstance(pads, str):  # resolved per axis: a stride-1 split is the same for any size
                pads = tuple((0, 0) if pads == "valid" else same_padding(1, k, 1, d, pads == "same_lower")
                             for k, d in zip(kernel_size, dilation))
            crop = tuple(transposed_crop(k, d, p) for k, d, p in zip(kernel_size, dilation, pads))
        else:
            pairs = _jax_pairs(door, raw, rank)
            # without use_consistent_padding, pairs pad the zero-inserted input
            crop = pairs if consistent else tuple(
                transposed_crop(k, d, p) for k, d, p in zip(kernel_size, dilation, pairs))
        return ConvSpec(strides=strides, padding=crop, transposed=True, **common)

    strides = door.ints("window_strides", door.required(kwargs, "window_strides"), rank)
    groups = door.integer("feature_group_count", kwargs.get("feature_group_count", 1))
    if door.integer("batch_group_count", kwargs.get("batch_group_count", 1)) != 1:
        raise door.error("batch_group_count", kwargs["batch_group_count"],
                         "is not modelled by convarith (it is used for weight gradients)",
                         "leave batch_group_count=1")
    for name in ("in_channels", "filters"):
        if name in channels and channels[name] % groups:
            raise door.error(name, channels[name], f"is not divisible by feature_group_count={groups}",
                             f"use a multiple of {groups}")
    raw = door.required(kwargs, "padding")
    lhs_dilation = kwargs.get("lhs_dilation")
    lhs = door.ints("lhs_dilation", lhs_dilation, rank) if lhs_dilation is not None else (1,) * rank
    if max(lhs) > 1:
        if isinstance(raw, str):
            raise door.error("padding", raw, f"is a string, which JAX does not implement with "
                             f"lhs_dilation={lhs} > 1", "give explicit (lo, hi) pairs, or use "
                             "op='conv_transpose'")
        if max(strides) > 1:
            raise door.error("lhs_dilation", lhs, f"> 1 together with window_strides={strides} > 1 "
                             "is not a convolution convarith models", "use window_strides=1 "
                             "(a transposed convolution) or lhs_dilation=1")
        pairs = _jax_pairs(door, raw, rank)
        crop = tuple(transposed_crop(k, d, p) for k, d, p in zip(kernel_size, dilation, pairs))
        return ConvSpec(strides=lhs, padding=crop, transposed=True, groups=groups, **common)
    padding = _jax_padding(door, raw, rank, case_sensitive=False)
    return ConvSpec(strides=strides, padding=padding, groups=groups, **common)


def _jax_rank(door: _Door, name: str, value: Any, rank: Any) -> int:
    if rank is not None:
        return door.integer("rank", rank)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return len(value)
    raise door.error(name, value, "does not say how many spatial axes there are",
                     f"give {name} one int per axis, or rank=...")


def _jax_layout(door: _Door, numbers_: Any, rank: int, default: str) -> str:
    if numbers_ is None:
        return default
    lhs = numbers_[0] if isinstance(numbers_, Sequence) and not isinstance(numbers_, str) else None
    if isinstance(lhs, str) and len(lhs) == rank + 2 and lhs[0] == "N":
        if lhs[1] == "C":
            return "channels_first"
        if lhs[-1] == "C":
            return "channels_last"
    raise door.error("dimension_numbers", numbers_, "is not an NC... or N...C layout convarith models",
                     "write e.g. ('NHWC', 'HWIO', 'NHWC') or ('NCHW', 'OIHW', 'NCHW')")


def _jax_pairs(door: _Door, value: Any, rank: int) -> Pads:
    fix = f"write {rank} (lo, hi) pairs, e.g. padding={((1, 1),) * rank}"
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != rank:
        raise door.error("padding", value, f"is not a sequence of {rank} (lo, hi) pairs", fix)
    pairs = []
    for pair in value:
        if not isinstance(pair, Sequence) or isinstance(pair, (str, bytes)) or len(pair) != 2:
            raise door.error("padding", value, f"is not a sequence of {rank} (lo, hi) pairs", fix)
        lo, hi = (door.integer("padding", v, minimum=None) for v in pair)
        pairs.append((lo, hi))
    return tuple(pairs)


def _jax_padding(door: _Door, value: Any, rank: int, case_sensitive: bool) -> str | Pads:
    if isinstance(value, str):
        word = value if case_sensitive else value.upper()
        if word not in _JAX_WORDS:
            raise door.error("padding", value, "is not 'VALID', 'SAME' or 'SAME_LOWER'",
                             "write one of those, or (lo, hi) pairs")
        return _JAX_WORDS[word]
    return _jax_pairs(door, value, rank)


# --------------------------------------------------------------------------- ONNX


_ONNX_ARGS = {
    "Conv": ("kernel_shape", "auto_pad", "pads", "strides", "dilations", "group", "weight_shape"),
    "ConvTranspose": ("kernel_shape", "auto_pad", "pads", "strides", "dilations", "group",
                      "output_padding", "output_shape", "weight_shape", "input_shape"),
    "MaxPool": ("kernel_shape", "auto_pad", "pads", "strides", "dilations", "ceil_mode",
                "storage_order"),
    "AveragePool": ("kernel_shape", "auto_pad", "pads", "strides", "dilations", "ceil_mode",
                    "count_include_pad"),
}
_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


def from_onnx(op: str = "Conv", **kwargs: Any) -> ConvSpec:
    """A :class:`ConvSpec` from the attributes of an ONNX operator (as onnxruntime runs it).

    Parameters
    ----------
    op
        ``"Conv"``, ``"ConvTranspose"``, ``"MaxPool"`` or ``"AveragePool"``.
    **kwargs
        The operator's attributes (``kernel_shape``, ``auto_pad``, ``pads``
        as ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]``, ``strides``,
        ``dilations``, ``group``, ``output_padding``, ``output_shape``,
        ``ceil_mode``, ``count_include_pad``), plus ``weight_shape``, the
        shape of the ``W`` input, for convolutions (it gives the kernel when
        ``kernel_shape`` is absent, and the channel counts). ``output_shape``
        fixes an absolute size, so it also needs the ``input_shape``.

    Examples
    --------
    >>> from_onnx("Conv", kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER").resolve(
    ...     (1, 1, 6, 6)).padding
    ((1, 0), (1, 0))
    >>> from_onnx("MaxPool", kernel_shape=[2], pads=[1, 0]).resolve((1, 1, 5)).output_shape
    (1, 1, 5)
    """
    door = _Door("ONNX", op if isinstance(op, str) else repr(op))
    if not isinstance(op, str):
        raise TypeError(f"ONNX: op={op!r} is a {type(op).__name__}, not a str; write one of {', '.join(_ONNX_ARGS)}")
    if op not in _ONNX_ARGS:
        raise ValueError(f"ONNX: op={op!r} is not supported; write one of {', '.join(_ONNX_ARGS)}")
    door.unexpected(kwargs, _ONNX_ARGS[op])
    conv = op in ("Conv", "ConvTranspose")
    weight_shape = kwargs.get("weight_shape")
    kernel = kwargs.get("kernel_shape")
    if kernel is None:
        if not conv:
            door.required(kwargs, "kernel_shape")
        if weight_shape is None:
            raise TypeError(f"ONNX {op}: kernel_shape is absent and weight_shape is unknown; give "
                            "kernel_shape=[...] or weight_shape=W.shape")
    if weight_shape is not None:  # checked as itself, before a kernel is taken from it
        if not isinstance(weight_shape, Sequence) or isinstance(weight_shape, (str, bytes)):
            raise door.type_error("weight_shape", weight_shape, "a sequence of ints (W.shape)",
                                  "write weight_shape=W.shape, e.g. [8, 3, 3, 3]")
        if not 3 <= len(weight_shape) <= 5:
            raise door.error("weight_shape", list(weight_shape), "must have 3 to 5 axes (out, in/group, k...)",
                             "write weight_shape=W.shape, e.g. [8, 3, 3, 3]")
        door.ints("weight_shape", list(weight_shape), len(weight_shape), minimum=1)
        if kernel is None:
            kernel = list(weight_shape)[2:]
    if not isinstance(kernel, Sequence) or isinstance(kernel, (str, bytes)):
        raise door.type_error("kernel_shape", kernel, "a list of 1 to 3 ints", "write kernel_shape=[3, 3]")
    if not 1 <= len(kernel) <= 3:
        raise door.error("kernel_shape", kernel, "is not a list of 1 to 3 ints", "write kernel_shape=[3, 3]")
    rank = len(kernel)
    kernel_size = door.ints("kernel_shape", kernel, rank)
    strides = door.ints("strides", _given(kwargs, "strides", 1), rank)
    dilation = door.ints("dilations", _given(kwargs, "dilations", 1), rank)
    if not isinstance(kwargs.get("auto_pad", "NOTSET"), str):
        raise door.type_error("auto_pad", kwargs["auto_pad"], "a str", f"write one of {', '.join(_AUTO_PADS)}")
    auto_pad = door.choice("auto_pad", kwargs.get("auto_pad", "NOTSET"), _AUTO_PADS)
    raw_pads = kwargs.get("pads")
    pads = door.ints("pads", raw_pads if raw_pads is not None else 0, 2 * rank, minimum=0)
    pairs = tuple((pads[axis], pads[axis + rank]) for axis in range(rank))
    common: dict[str, Any] = dict(kernel_size=kernel_size, strides=strides, dilation=dilation,
                                  data_format="channels_first", rank=rank, convention="onnx")

    if not conv:
        for name in ("ceil_mode", "count_include_pad", "storage_order"):  # ints 0 or 1 in ONNX
            value = kwargs.get(name, 0)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value not in (0, 1):
                raise door.error(name, value, "must be 0 or 1", f"write {name}=0 or {name}=1")
        ceil_mode = door.flag("ceil_mode", kwargs.get("ceil_mode", 0))
        include = door.flag("count_include_pad", kwargs.get("count_include_pad", 0))
        door.integer("storage_order", kwargs.get("storage_order", 0), minimum=0)
        for axis, ((lo, hi), k) in enumerate(zip(pairs, kernel_size)):
            if max(lo, hi) >= k:  # onnxruntime's PoolAttributes, even when auto_pad is set
                raise door.error("pads", list(pads), f"must be smaller than kernel_shape={list(kernel_size)} "
                                 f"(axis {axis}: pads {lo}, {hi} vs kernel {k})",
                                 "use pads < kernel_shape on every axis")
        if auto_pad.startswith("SAME") and any(d > 1 and k > 1 for d, k in zip(dilation, kernel_size)):
            # onnxruntime sizes this padding from the undilated kernel: not a "same" padding
            raise door.error("auto_pad", auto_pad, f"with dilations={list(dilation)} > 1 is padded by "
                             "onnxruntime as if the kernel were not dilated, which convarith does not "
                             "model", "give explicit pads instead")
        pool_padding = pairs if auto_pad == "NOTSET" else _ONNX_WORDS[auto_pad]
        return ConvSpec(padding=pool_padding, pool="max" if op == "MaxPool" else "avg", ceil_mode=ceil_mode,
                        count_include_pad=include, **common)

    if auto_pad != "NOTSET" and raw_pads is not None:
        raise door.error("pads", raw_pads, f"cannot be used together with auto_pad={auto_pad!r}",
                         "drop pads, or set auto_pad='NOTSET'")
    groups = door.integer("group", kwargs.get("group", 1))
    if weight_shape is not None:
        weight = door.ints("weight_shape", weight_shape, rank + 2, minimum=0)
        if list(weight[2:]) != list(kernel_size):
            raise door.error("kernel_shape", list(kernel_size), f"does not match weight_shape={list(weight)}",
                             "make kernel_shape equal to W.shape[2:], or leave it out")
        if op == "Conv":
            common.update(filters=door.integer("weight_shape[0]", weight[0]))
            if weight[0] % groups:
                raise door.error("group", groups, f"does not divide the {weight[0]} output channels of "
                                 f"weight_shape={list(weight)}", "use a group that divides W.shape[0]")
        else:
            common.update(in_channels=door.integer("weight_shape[0]", weight[0]),
                          filters=door.integer("weight_shape[1]", weight[1]) * groups)
            if weight[0] % groups:
                raise door.error("group", groups, f"does not divide the {weight[0]} input channels of "
                                 f"weight_shape={list(weight)}", "use a group that divides W.shape[0]")

    if op == "Conv":
        if auto_pad in ("SAME_UPPER", "SAME_LOWER") and max(dilation) > 1:
            raise door.error("auto_pad", auto_pad, f"is not supported with dilations={list(dilation)} > 1 "
                             "by onnxruntime", "give explicit pads instead")
        padding: str | Pads = pairs if auto_pad == "NOTSET" else _ONNX_WORDS[auto_pad]
        return ConvSpec(padding=padding, groups=groups, **common)

    output_padding = door.ints("output_padding", _given(kwargs, "output_padding", 0), rank, minimum=0)
    for axis, (o, s, d) in enumerate(zip(output_padding, strides, dilation)):
        if o >= max(s, d):
            raise door.error("output_padding", list(output_padding), f"must be smaller than max(stride, "
                             f"dilation) on every axis (axis {axis}: {o} >= max({s}, {d}))",
                             f"use output_padding < {max(s, d)}")
        if o >= s:  # onnxruntime then finds the output inconsistent with the input size
            raise door.error("output_padding", list(output_padding), f"must be smaller than the stride "
                             f"for onnxruntime (axis {axis}: {o} >= {s})", f"use output_padding < {s}")
    eff = [effective_kernel(k, d) for k, d in zip(kernel_size, dilation)]
    output_shape = kwargs.get("output_shape")
    if output_shape is not None:
        target = door.ints("output_shape", output_shape, rank)
        sizes = _onnx_input_sizes(door, kwargs.get("input_shape"), rank)
        crops = []
        for axis, (s, i, o, k, d, t) in enumerate(
                zip(strides, sizes, output_padding, kernel_size, dilation, target)):
            total = transposed_output_size(i, k, s, d, output_padding=o) - t
            if o - total >= s:  # onnxruntime: output_shape must imply an input of i cells
                raise door.error("output_shape", list(target), f"is too large for an input of {i} cells "
                                 f"on axis {axis} (at most {t + total + s - 1 - o})",
                                 "use a smaller output_shape or explicit pads")
            # a short fall (total < 0) is made up with cells added at the end
            crops.append(_onnx_split(total, auto_pad == "SAME_UPPER") if total >= 0 else (0, total))
        crop = tuple(crops)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):  # output I * S where it can: crop K_eff + op - S
        crop = tuple(_onnx_split(max(e + o - s, 0), auto_pad == "SAME_UPPER")
                     for e, o, s in zip(eff, output_padding, strides))
    else:
        crop = pairs if auto_pad == "NOTSET" else ((0, 0),) * rank
    return ConvSpec(padding=crop, transposed=True, output_padding=output_padding, groups=groups, **common)


_ONNX_WORDS = {"SAME_UPPER": "same", "SAME_LOWER": "same_lower", "VALID": "valid"}


def _onnx_split(total: int, upper: bool) -> tuple[int, int]:
    """ConvTranspose's auto padding split: SAME_UPPER puts the odd cell at the end."""
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def _onnx_input_sizes(door: _Door, input_shape: Any, rank: int) -> tuple[int, ...]:
    if input_shape is None:
        raise TypeError(f"ONNX {door.layer}: output_shape fixes an absolute size, so the crop depends "
                        "on the input; give input_shape=X.shape too, or explicit pads")
    if not isinstance(input_shape, Sequence) or isinstance(input_shape, (str, bytes)):
        raise door.type_error("input_shape", input_shape, "a sequence of ints (X.shape)",
                              "write input_shape=X.shape, e.g. (1, 3, 8, 8)")
    if len(input_shape) < rank:
        raise door.error("input_shape", list(input_shape), f"has fewer than the {rank} spatial axes",
                         "write input_shape=X.shape, e.g. (1, 3, 8, 8)")
    shape = door.ints("input_shape", input_shape, len(input_shape), minimum=1)
    return shape[-rank:]
