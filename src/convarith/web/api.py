"""The explorer's JSON API: every number the page shows, computed by convarith.

Each handler reads a JSON body, validates every field against
:class:`Limits` (a ``4xx`` JSON error naming the field otherwise), builds a
:class:`~convarith.spec.ConvSpec` and asks it — or :mod:`convarith.explain`,
the solver, the engine, the porter, the receptive-field code — for the answer.
The page does no arithmetic of its own.

Errors are ``{"error": {"message": ..., "field": ..., "status": ...}}``:
400 for a malformed body, 413 for one too large, 422 for a value convarith
rejects, 503 for a part of convarith that is not installed or not built.

Examples
--------
>>> settings = parse_settings({"input_size": [5, 5], "kernel_size": 3, "strides": 2,
...                            "padding": "same"}, Limits())
>>> resolve_payload(settings)["output_size"]
[3, 3]
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import __version__
from ..arithmetic import check_int, solve
from ..explain import explain
from ..spec import CONVENTIONS, PADDING_MODES, PADDING_WORDS, ConvSpec, ResolvedConv, Tap

__all__ = [
    "ApiError",
    "Limits",
    "Settings",
    "parse_settings",
    "build_spec",
    "page_words",
    "resolve_payload",
    "geometry_payload",
    "footprint_payload",
    "solve_payload",
    "stack_payload",
    "port_payload",
    "image_payload",
    "parts_available",
    "KERNEL_PRESETS",
]

FRAMEWORK_NAMES = {"keras": "Keras", "torch": "PyTorch", "jax": "JAX", "onnx": "ONNX"}

#: 3x3 kernels the image mode offers by name (``custom`` takes the user's numbers).
KERNEL_PRESETS: dict[str, tuple[tuple[float, ...], ...]] = {
    "edge": ((-1, -1, -1), (-1, 8, -1), (-1, -1, -1)),
    "blur": ((1 / 16, 2 / 16, 1 / 16), (2 / 16, 4 / 16, 2 / 16), (1 / 16, 2 / 16, 1 / 16)),
    "sharpen": ((0, -1, 0), (-1, 5, -1), (0, -1, 0)),
    "sobel_x": ((-1, 0, 1), (-2, 0, 2), (-1, 0, 1)),
    "sobel_y": ((-1, -2, -1), (0, 0, 0), (1, 2, 1)),
    "identity": ((0, 0, 0), (0, 1, 0), (0, 0, 0)),
}


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (all checked on the server)."""

    max_input: int = 64
    max_kernel: int = 15
    max_stride: int = 8
    max_dilation: int = 8
    max_padding: int = 32
    max_channels: int = 256
    max_draw: int = 160
    max_frame_taps: int = 40_000
    max_layers: int = 12
    max_body_bytes: int = 64 * 1024
    max_upload_bytes: int = 2 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_image_side: int = 8192
    engine_side: int = 256
    max_solve_size: int = 100_000
    max_solve_kernel: int = 15
    max_solve_stride: int = 8
    max_solve_dilation: int = 4
    #: transport limits (see docs/hardening.md, "The explorer server")
    max_json_depth: int = 32
    max_number_digits: int = 64
    max_body_seconds: float = 30.0
    max_jpeg_scans: int = 32
    max_heavy_at_once: int = 1
    max_uploads_at_once: int = 8
    max_gif_frames: int = 1024
    max_draw_cells: int = 40_000


class ApiError(Exception):
    """A request the API refuses; turned into a JSON error response."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "field": self.field, "status": self.status}}


def unavailable(part: str, error: BaseException) -> ApiError:
    """503: a part of convarith this endpoint needs is not importable."""
    return ApiError(503, f"{part} is not available in this convarith build ({error})", None)


# --------------------------------------------------------------------------- validation


def _int(data: dict[str, Any], name: str, low: int, high: int, default: int | None = None) -> int:
    value = data.get(name, default)
    if value is None:
        raise ApiError(422, f"{name} is empty; give a whole number from {low} to {high}", name)
    try:
        value = check_int(name, value)  # the one integer check, worded for the page
    except TypeError:
        raise ApiError(422, f"{name} must be a whole number from {low} to {high}, got {value!r}",
                       name) from None
    if not low <= value <= high:
        raise ApiError(422, f"{name} must be between {low} and {high}, got {value}", name)
    return value


def _ints(
    data: dict[str, Any], name: str, rank: int, low: int, high: int, default: int | None = None
) -> tuple[int, ...]:
    value = data.get(name, default)
    if value is None:
        raise ApiError(422, f"{name} is required", name)
    items = [value] * rank if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list) or len(items) != rank:
        raise ApiError(
            422, f"{name} must be an integer or a list of {rank} integers, got {value!r}", name
        )
    checked = []
    for axis, item in enumerate(items):
        where = f"{name} (axis {axis})" if rank > 1 else name
        if item is None:
            raise ApiError(422, f"{where} is empty; give a whole number from {low} to {high}", name)
        try:
            item = check_int(where, item)  # the one integer check, worded for the page
        except TypeError:
            raise ApiError(
                422, f"{where} must be a whole number from {low} to {high}, got {item!r}", name
            ) from None
        if not low <= item <= high:
            raise ApiError(422, f"{where} must be between {low} and {high}, got {item}", name)
        checked.append(item)
    return tuple(checked)


def _bool(data: dict[str, Any], name: str, default: bool = False) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(422, f"{name} must be true or false, got {value!r}", name)
    return value


def _choice(data: dict[str, Any], name: str, options: Sequence[Any], default: Any) -> Any:
    value = data.get(name, default)
    if value not in options or isinstance(value, bool):
        raise ApiError(422, f"{name} must be one of {list(options)}, got {value!r}", name)
    return value


def _padding(
    value: Any, rank: int, transposed: bool, limits: Limits
) -> str | tuple[tuple[int, int], ...]:
    if isinstance(value, str):
        if value not in PADDING_WORDS:
            raise ApiError(
                422, f"padding must be one of {list(PADDING_WORDS)} or (lo, hi) pairs, got {value!r}",
                "padding",
            )
        return value
    low = -limits.max_padding if transposed else 0
    pairs = [value] * rank if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(pairs, list) or len(pairs) != rank:
        raise ApiError(
            422, f"padding must be a word, an integer or {rank} (lo, hi) pairs, got {value!r}",
            "padding",
        )
    out = []
    for pair in pairs:
        pair = [pair, pair] if isinstance(pair, int) and not isinstance(pair, bool) else pair
        if not isinstance(pair, list) or len(pair) != 2:
            raise ApiError(422, f"padding entries must be (lo, hi) pairs, got {pair!r}", "padding")
        for side in pair:
            if isinstance(side, bool) or not isinstance(side, int):
                raise ApiError(422, f"padding must hold integers, got {side!r}", "padding")
            if not low <= side <= limits.max_padding:
                raise ApiError(
                    422, f"padding values must be between {low} and {limits.max_padding}, "
                    f"got {side}", "padding",
                )
        out.append((pair[0], pair[1]))
    return tuple(out)


@dataclass(frozen=True)
class Settings:
    """One explorer view: an input size and the convolution's fields, validated."""

    input_size: tuple[int, ...]
    fields: dict[str, Any] = field(hash=False)
    in_channels: int = 1
    filters: int = 1
    convention: str | None = None

    @property
    def rank(self) -> int:
        return len(self.input_size)


def parse_settings(data: Any, limits: Limits, need_input: bool = True) -> Settings:
    """Validate the explorer's settings object against ``limits``.

    >>> parse_settings({"input_size": [4, 6], "kernel_size": 3}, Limits()).input_size
    (4, 6)
    """
    if not isinstance(data, dict):
        raise ApiError(400, f"the settings must be a JSON object, got {type(data).__name__}")
    rank = _int(data, "rank", 1, 3, default=_rank_guess(data))
    if need_input:
        input_size = _ints(data, "input_size", rank, 1, limits.max_input)
    else:
        input_size = (1,) * rank
    transposed = _bool(data, "transposed")
    pool = _choice(data, "pool", (None, "max", "avg"), None)
    output_padding = data.get("output_padding")
    if output_padding is not None:
        if not transposed:
            output_padding = None if _is_zero(output_padding) else output_padding
        if output_padding is not None:
            output_padding = _ints(data, "output_padding", rank, 0, limits.max_stride)
    fields = dict(
        kernel_size=_ints(data, "kernel_size", rank, 1, limits.max_kernel, default=3),
        strides=_ints(data, "strides", rank, 1, limits.max_stride, default=1),
        dilation=_ints(data, "dilation", rank, 1, limits.max_dilation, default=1),
        padding=_padding(data.get("padding", "valid"), rank, transposed, limits),
        padding_mode=_choice(data, "padding_mode", PADDING_MODES, "zeros"),
        groups=_int(data, "groups", 1, limits.max_channels, default=1),
        transposed=transposed,
        output_padding=output_padding,
        pool=pool,
        ceil_mode=_bool(data, "ceil_mode"),
        count_include_pad=_bool(data, "count_include_pad"),
        rank=rank,
    )
    convention = _choice(data, "convention", (None, *CONVENTIONS), None)
    return Settings(
        input_size=input_size,
        fields=fields,
        in_channels=_int(data, "in_channels", 1, limits.max_channels, default=1),
        filters=_int(data, "filters", 1, limits.max_channels, default=1),
        convention=convention,
    )


def _is_zero(value: Any) -> bool:
    if isinstance(value, list):
        return all(v == 0 for v in value)
    return bool(value == 0)


def _rank_guess(data: dict[str, Any]) -> int:
    size = data.get("input_size")
    return len(size) if isinstance(size, list) and 1 <= len(size) <= 3 else 2


def _spec_fields(settings: Settings) -> dict[str, Any]:
    fields = dict(settings.fields)
    if fields["pool"] is None:
        fields["filters"] = settings.filters
    return fields


def build_spec(settings: Settings) -> tuple[ConvSpec, dict[str, Any] | None]:
    """The spec the settings describe, and how the chosen framework takes them.

    Without a convention the spec is the neutral one. With one, the settings go
    through that framework's front door: if it takes them *as they are*, its
    spec is used. If it rejects them, or would silently compute something else
    (a fill, a dilation, a ceil mode... it has no argument for), the neutral
    spec is still drawn and the report says why (``accepted: false``), in the
    page's words: what the framework lacks and which control to change.

    >>> settings = parse_settings({"input_size": [5, 5], "kernel_size": 3, "padding": "same",
    ...                            "padding_mode": "reflect", "convention": "keras"}, Limits())
    >>> spec, report = build_spec(settings)
    >>> spec.padding_mode, report["accepted"]
    ('reflect', False)
    """
    try:
        spec = ConvSpec(**_spec_fields(settings))
    except (ValueError, TypeError) as error:
        raise ApiError(422, str(error)) from error
    if settings.convention is None:
        return spec, None
    name = FRAMEWORK_NAMES[settings.convention]
    report: dict[str, Any] = {"name": settings.convention, "framework": name}
    refusal = _door_refusal(settings.convention, spec)
    if refusal is not None:
        report.update(accepted=False, error=f"{name} rejects these settings: {refusal}")
        return spec, report
    try:
        from ..frontdoors import from_convention

        door_spec = from_convention(settings.convention, dict(settings.fields))
    except ImportError as error:
        report.update(accepted=None, error=f"{name}'s rules are not available yet ({error})")
        return spec, report
    except (ValueError, TypeError, NotImplementedError) as error:
        lacking = _lacking_argument(str(error), spec,
                                    f"{name}'s {_layer_name(settings.convention, spec)}")
        report.update(accepted=False,
                      error=f"{name} rejects these settings: {lacking or page_words(str(error))}")
        return spec, report
    lost = _lost_setting(spec, door_spec, f"{name}'s {_layer_name(settings.convention, spec)}")
    if lost is not None:
        report.update(accepted=False, error=f"{name} rejects these settings: {lost}")
        return spec, report
    try:
        changes: dict[str, Any] = {"in_channels": None, "filters": None}
        if door_spec.pool is None:
            changes["filters"] = settings.filters
        door_spec = door_spec.replace(**changes)
    except (ValueError, TypeError) as error:
        report.update(accepted=False,
                      error=f"{name} rejects these settings: {page_words(str(error))}")
        return spec, report
    report.update(accepted=True, error=None)
    return door_spec, report


#: The page's name for each setting a framework may lack, and the value that means "off".
_CONTROLS: dict[str, tuple[str, Any]] = {
    "pool": ("operation", None),
    "transposed": ("transposed", False),
    "kernel_size": ("kernel size", None),
    "strides": ("stride", None),
    "dilation": ("dilation", 1),
    "groups": ("groups", 1),
    "padding_mode": ("fill", "zeros"),
    "ceil_mode": ("ceil mode", False),
    "count_include_pad": ("padding counts in average", False),
}


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " × ".join(map(str, value))
    if value is None:
        return "convolution"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _layer_name(convention: str, spec: ConvSpec) -> str:
    """The framework's own name for the layer the settings describe (``AvgPool2d``...)."""
    rank, pool = spec.rank, spec.pool
    if convention == "keras":
        if pool:
            return f"{'Max' if pool == 'max' else 'Average'}Pooling{rank}D"
        return f"Conv{rank}DTranspose" if spec.transposed else f"Conv{rank}D"
    if convention == "torch":
        if pool:
            return f"{'MaxPool' if pool == 'max' else 'AvgPool'}{rank}d"
        return f"ConvTranspose{rank}d" if spec.transposed else f"Conv{rank}d"
    if convention == "jax":
        return "lax.conv_transpose" if spec.transposed else "lax.conv_general_dilated"
    if pool:
        return "MaxPool" if pool == "max" else "AveragePool"
    return "ConvTranspose" if spec.transposed else "Conv"


def _lost_setting(spec: ConvSpec, door_spec: ConvSpec, name: str) -> str | None:
    """Which setting the framework's layer would silently drop, in the page's words.

    A front door builds the framework's layer from the arguments it has; a
    setting it has no argument for (Keras and a reflect fill, JAX and pooling,
    ONNX average pooling and dilation) would vanish from what it computes.
    The page refuses instead of drawing one thing and computing another.
    """
    for attribute, (control, off) in _CONTROLS.items():
        wanted, got = getattr(spec, attribute), getattr(door_spec, attribute)
        if attribute == "count_include_pad" and spec.pool != "avg":
            continue
        if attribute == "ceil_mode" and spec.pool is None:
            continue
        if wanted == got:
            continue
        fix = "" if off is None else f"set {control} to {_shown(off)}, or "
        if attribute == "pool":
            return (f"these rules have no {spec.pool} pooling layer ({name} is a convolution); "
                    "choose operation 'convolution', or the rules of a framework that has it")
        return (f"{name} has no setting for {control} = {_shown(wanted)} and would "
                f"compute it as {_shown(got)}; {fix}choose the rules of a framework that has it")
    if spec.output_padding is not None and door_spec.output_padding != spec.output_padding:
        return (f"{name} would use output pad {_shown(door_spec.output_padding)}, not "
                f"{_shown(spec.output_padding)}; leave output pad empty (auto)")
    return None


_NO_ARGUMENT = re.compile(r"has no argument for (\w+)=")


def _lacking_argument(message: str, spec: ConvSpec, name: str) -> str | None:
    """A front door's "has no argument for <field>=..." in the page's words (the
    control's name and its "off" value), as :func:`_lost_setting` words it.

    >>> spec = ConvSpec(3, padding="same", padding_mode="reflect")
    >>> _lacking_argument("Keras Conv2D has no argument for padding_mode='reflect'; leave it out",
    ...                   spec, "Keras's Conv2D")
    "Keras's Conv2D has no setting for fill = reflect; set fill to zeros, or choose the rules of a framework that has it"
    """
    found = _NO_ARGUMENT.search(message)
    if found is None or found.group(1) not in _CONTROLS:
        return None
    control, off = _CONTROLS[found.group(1)]
    fix = "" if off is None else f"set {control} to {_shown(off)}, or "
    return (f"{name} has no setting for {control} = {_shown(getattr(spec, found.group(1)))}; "
            f"{fix}choose the rules of a framework that has it")


def _door_refusal(convention: str, spec: ConvSpec) -> str | None:
    """The refusals whose reason the page words itself (the layer named right, no CLI flags)."""
    rank, padding, layer = spec.rank, spec.padding, _layer_name(convention, spec)
    if convention == "keras" and not isinstance(padding, str):
        if spec.transposed:
            return (f"Keras's {layer} takes padding 'valid' or 'same' only; explicit padding of a "
                    f"transposed convolution crops its output, which Keras does with a "
                    f"Cropping{rank}D layer after a 'valid' {layer}. Choose padding 'valid' or "
                    "'same', or the PyTorch, JAX or ONNX rules")
        return (f"Keras's {layer} takes padding 'valid' or 'same' only; explicit padding needs a "
                f"ZeroPadding{rank}D layer before it. Choose padding 'valid' or 'same', or the "
                "PyTorch, JAX or ONNX rules")
    if convention == "torch" and isinstance(padding, str):
        if spec.pool or spec.transposed:
            return (f"PyTorch's {layer} takes padding as numbers only, not {padding!r}; choose "
                    "padding 'explicit per side' (e.g. 1 on each side)")
        if padding not in ("valid", "same"):
            return (f"PyTorch's {layer} takes padding 'valid', 'same' or numbers, not "
                    f"{padding!r}; choose one of those")
    return None


#: Command-line advice in convarith's messages, as the page's controls say it.
_CLI_WORDS = (
    (re.compile(r"use --convention torch/jax/onnx"), "choose the PyTorch, JAX or ONNX rules"),
    (re.compile(r"use --convention jax/onnx"), "choose the JAX or ONNX rules"),
    (re.compile(r"give numbers, e\.g\. --padding (\d+)"),
     r"choose padding 'explicit per side', e.g. \1 on each side"),
    (re.compile(r"pass force=True \(--force\)"), "choose another name"),
    (re.compile(r" ?\(--[a-z][a-z-]*\)"), ""),
    (re.compile(r"--([a-z][a-z-]*)"), lambda m: "the " + m.group(1).replace("-", " ") + " control"),
)


def page_words(message: str) -> str:
    """A convarith message as the explorer says it: no command-line flags.

    >>> page_words("pad with F.pad first or use --convention jax/onnx")
    'pad with F.pad first or choose the JAX or ONNX rules'
    """
    for pattern, replacement in _CLI_WORDS:
        message = pattern.sub(replacement, message)
    return message


def _resolve(spec: ConvSpec, settings: Settings) -> ResolvedConv:
    shape: tuple[int, ...] = settings.input_size
    if spec.data_format == "channels_last":
        shape = (*shape, settings.in_channels)
    else:
        shape = (settings.in_channels, *shape)
    try:
        return spec.resolve(shape)
    except (ValueError, TypeError) as error:
        raise ApiError(422, str(error)) from error


# --------------------------------------------------------------------------- payloads


def _spec_dict(spec: ConvSpec) -> dict[str, Any]:
    data = {name: getattr(spec, name) for name in spec.__dataclass_fields__}
    return json.loads(json.dumps(data))


def resolve_payload(settings: Settings) -> dict[str, Any]:
    """Output size, per-side padding, crop, dropped rows and the worked formula."""
    return _resolution(settings)[1]


def _resolution(settings: Settings) -> tuple[ResolvedConv, dict[str, Any]]:
    spec, convention = build_spec(settings)
    resolved = _resolve(spec, settings)
    explanation = explain(spec, resolved.input_shape_for_explain).to_dict()
    kernel_shape = None
    if spec.pool is None and resolved.groups and resolved.in_channels and resolved.out_channels:
        per_group = resolved.in_channels // resolved.groups
        kernel = list(spec.kernel_size)
        if spec.transposed:  # Keras (k..., out/groups, in); PyTorch (in, out/groups, k...)
            per_group = resolved.out_channels // resolved.groups
            kernel_shape = {"keras": [*kernel, per_group, resolved.in_channels],
                            "torch": [resolved.in_channels, per_group, *kernel]}
        else:  # Keras (k..., in/groups, out); PyTorch (out, in/groups, k...)
            kernel_shape = {"keras": [*kernel, per_group, resolved.out_channels],
                            "torch": [resolved.out_channels, per_group, *kernel]}
    payload: dict[str, Any] = {
        "spec": _spec_dict(spec),
        "kind": spec.kind,
        "input_size": list(resolved.input_size),
        "output_size": list(resolved.output_size),
        "input_shape": list(resolved.input_shape),
        "output_shape": list(resolved.output_shape),
        "padding": [list(p) for p in resolved.padding],
        "crop": [list(c) for c in resolved.crop],
        "dropped": list(resolved.dropped),
        "effective_kernel": list(resolved.effective_kernel),
        "padded_size": list(resolved.padded_size),
        "groups": resolved.groups,
        "in_channels": resolved.in_channels,
        "out_channels": resolved.out_channels,
        "kernel_shape": kernel_shape,
        "channel_groups": _channel_groups(resolved),
        "explain": explanation,
        "convention": convention,
    }
    return resolved, json.loads(json.dumps(payload))


def _channel_groups(resolved: ResolvedConv) -> dict[str, list[list[int]]] | None:
    """Which input and output channels form each group (what a grouped kernel connects)."""
    groups, c_in, c_out = resolved.groups, resolved.in_channels, resolved.out_channels
    if resolved.spec.pool is not None or not (groups and c_in and c_out):
        return None
    size_in, size_out = c_in // groups, c_out // groups
    return {
        "inputs": [list(range(g * size_in, (g + 1) * size_in)) for g in range(groups)],
        "outputs": [list(range(g * size_out, (g + 1) * size_out)) for g in range(groups)],
    }


def _tap_dict(tap: Tap) -> dict[str, Any]:
    return {
        "kernel": list(tap.kernel),
        "position": list(tap.position),
        "source": None if tap.source is None else list(tap.source),
        "in_padding": tap.in_padding,
    }


def _axis_grid(resolved: ResolvedConv, axis: int) -> list[dict[str, Any]]:
    """What each cell of the padded (zero-inserted) grid along ``axis`` is.

    The kinds are :data:`convarith.arithmetic.GRID_CELL_KINDS` (``input``,
    ``dropped``, ``skipped``, ``padding``, ``copy``, ``inserted``, ``beyond``),
    from the one classification the footprint and the animations use,
    :meth:`ResolvedConv.grid_cells`.
    """
    # as far as the windows reach: a ceil-mode pooling window overhangs the padded input
    extent = resolved.padded_size[axis] + resolved.overhang[axis]
    return [{"kind": kind, "source": source} for kind, source in resolved.grid_cells(axis, extent)]


def geometry_payload(settings: Settings, limits: Limits) -> dict[str, Any]:
    """Everything the page draws: the resolution plus per-axis taps and feeds.

    The footprint of output cell ``(o0, o1, ...)`` is the product of
    ``axes[a].taps[o_a]`` over the axes (as :meth:`ResolvedConv.footprint`
    builds it); the outputs an input cell feeds are the product of
    ``axes[a].feeds[i_a]``.
    """
    resolved, payload = _resolution(settings)
    for axis, (out, padded) in enumerate(zip(resolved.output_size, resolved.padded_size)):
        if max(out, padded) > limits.max_draw:
            raise ApiError(
                422,
                f"axis {axis}: {max(out, padded)} cells are too many to draw (at most "
                f"{limits.max_draw} per axis); use a smaller input, stride or kernel",
                "input_size",
            )
    _check_draw_cells(resolved, limits)
    axes = []
    for axis in range(resolved.rank):
        taps = [resolved.axis_taps(axis, o) for o in range(resolved.output_size[axis])]
        feeds: list[list[list[int]]] = [[] for _ in range(resolved.input_size[axis])]
        for o, column in enumerate(taps):
            for tap in column:
                if tap.source is not None:
                    feeds[tap.source[0]].append([o, tap.kernel[0]])
        axes.append({
            "taps": [[_tap_dict(t) for t in column] for column in taps],
            "feeds": feeds,
            "grid": _axis_grid(resolved, axis),
        })
    payload["axes"] = axes
    payload["frames"] = int(_product(resolved.output_size))
    return payload


def _check_draw_cells(resolved: ResolvedConv, limits: Limits) -> None:
    """The page draws every cell of the padded input and of the output (3-D: every slice)."""
    for name, size in (("padded input", resolved.padded_size), ("output", resolved.output_size)):
        cells = _product(size)
        if cells > limits.max_draw_cells:
            raise ApiError(
                422, f"the {name} has {cells:,} cells ({' x '.join(map(str, size))}), too many to draw "
                f"(at most {limits.max_draw_cells:,}); use a smaller input, or convarith animate "
                "with --every K", "input_size",
            )


def _product(values: Sequence[int]) -> int:
    total = 1
    for v in values:
        total *= v
    return total


def _cell(data: dict[str, Any], name: str, bounds: Sequence[int]) -> tuple[int, ...]:
    value = data[name]
    if not isinstance(value, list) or len(value) != len(bounds):
        raise ApiError(422, f"{name} must be a list of {len(bounds)} indices, got {value!r}", name)
    for axis, (i, n) in enumerate(zip(value, bounds)):
        if isinstance(i, bool) or not isinstance(i, int):
            raise ApiError(422, f"{name} must hold integers, got {i!r}", name)
        if not 0 <= i < n:
            raise ApiError(
                422, f"{name}[{axis}]={i} is outside 0..{n - 1} (the size is {list(bounds)})", name
            )
    return tuple(value)


def footprint_payload(data: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """The taps of one output cell, or the outputs one input cell feeds."""
    settings = parse_settings(data, limits)
    spec, _ = build_spec(settings)
    resolved = _resolve(spec, settings)
    has_out, has_in = "output" in data, "input" in data
    if data.get("frames") is True and not (has_out or has_in):
        return _frames_payload(resolved, limits)
    if has_out == has_in:
        raise ApiError(
            422, "give exactly one of 'output' (a cell index), 'input', or 'frames': true", "output"
        )
    if has_out:
        cell = _cell(data, "output", resolved.output_size)
        return {"output": list(cell), "taps": [_tap_dict(t) for t in resolved.footprint(cell)]}
    cell = _cell(data, "input", resolved.input_size)
    if _product(resolved.output_size) > limits.max_draw**2:
        raise ApiError(422, "the output is too large to list what one input cell feeds", "input")
    return {
        "input": list(cell),
        "feeds": [{"output": list(o), "kernel": list(k)} for o, k in resolved.feeds(cell)],
    }


def _frames_payload(resolved: ResolvedConv, limits: Limits) -> dict[str, Any]:
    """Every output cell's footprint, in the order the animation plays them."""
    taps_per_cell = _product(resolved.spec.kernel_size)
    total = _product(resolved.output_size) * taps_per_cell
    if total > limits.max_frame_taps:
        raise ApiError(
            422, f"the frame list would hold {total} taps (at most {limits.max_frame_taps}); "
            "ask /api/geometry, which gives the same footprints per axis", "frames",
        )
    # Each axis's taps are computed once; a cell's footprint is their product, combined
    # as ResolvedConv.footprint combines them (the tests check the two agree).
    per_axis = [[[(t.kernel[0], t.position[0], None if t.source is None else t.source[0],
                   t.in_padding) for t in resolved.axis_taps(axis, o)] for o in range(n)]
                for axis, n in enumerate(resolved.output_size)]
    frames = []
    for cell in resolved.positions():
        taps = []
        for combo in itertools.product(*(per_axis[a][o] for a, o in enumerate(cell))):
            kernel, position, source, padding = zip(*combo)
            taps.append({"kernel": list(kernel), "position": list(position),
                         "source": None if None in source else list(source),
                         "in_padding": any(padding)})
        frames.append({"output": list(cell), "taps": taps})
    return {"output_size": list(resolved.output_size), "frames": frames}


def animation_gif(data: Any, limits: Limits) -> bytes:
    """The explorer's settings drawn as a GIF (what ``convarith animate`` writes).

    ``view`` is ``"oblique"``, ``"flat"`` or (transposed) ``"scatter"``; the
    default is the command's (flat in 1-D). ``every`` (1 to 64) draws every
    k-th step. At most ``max_gif_frames`` frames are drawn, and the library's
    picture and frame limits (:mod:`convarith.limits`) apply.

    >>> animation_gif({"input_size": [4, 4], "kernel_size": 3}, Limits())[:6]
    b'GIF89a'
    """
    import dataclasses

    settings = parse_settings(data, limits)
    view = _choice(data, "view", (None, "oblique", "flat", "scatter"), None)
    every = _int(data, "every", 1, 64, default=1)
    spec, _ = build_spec(settings)
    if spec.groups != 1:  # every group slides the same window: the picture draws one channel
        spec = dataclasses.replace(spec, groups=1)
    resolved = _resolve(spec, settings)
    if view == "scatter" and not spec.transposed:
        raise ApiError(422, "the scatter view shows a transposed convolution; this one is not transposed", "view")
    steps = _product(resolved.input_size if view == "scatter" else resolved.output_size)
    drawn = -(-steps // every)
    if drawn > limits.max_gif_frames:
        raise ApiError(
            422, f"the GIF would have {drawn} frames (at most {limits.max_gif_frames}); draw every k-th "
            f"step with every={-(-steps // limits.max_gif_frames)} or more, or use a smaller input", "every",
        )
    try:
        from ..viz import animate

        movie = animate(resolved, view=view, every=every)
        return movie.to_gif()
    except ImportError as error:
        raise unavailable("drawing pictures", error) from error
    except ValueError as error:
        raise ApiError(422, page_words(str(error))) from error


#: The oblique 3-D view draws one cube per voxel the window reads up to this many taps
#: (a 7 x 7 x 7 kernel); a bigger window is drawn as its box alone.
MAX_VOLUME_CUBES = 343


def volume_payload(data: Any, limits: Limits) -> dict[str, Any]:
    """The oblique 3-D picture of the settings, laid out ``room`` pixels wide (200 to 4000).

    The still shapes (the padded input and output volumes, their voxel grids,
    the labels) come from :func:`convarith.viz.scene.build_volume_scene`, each
    with its ``role``; ``lower`` and ``upper`` are the two projections (voxel
    corner ``(d, r, c)`` at ``origin + c*across + r*down + d*back``) with which
    the page places what moves: the voxels the window reads (from
    ``/api/geometry``'s taps), the kernel box and the output voxel.

    >>> v = volume_payload({"input_size": [4, 5, 6], "kernel_size": 3, "padding": "same", "room": 600},
    ...                    Limits())
    >>> v["lower"]["size"], v["upper"]["size"], v["width"] <= 600
    ([6, 7, 8], [4, 5, 6], True)
    """
    settings = parse_settings(data, limits)
    room = _int(data, "room", 200, 4000, default=900)
    if settings.rank != 3:
        raise ApiError(422, f"the oblique view draws 3-D convolutions; this one has {settings.rank} "
                       "axes (rank 3 gives three sizes, e.g. 5x5x5)", "rank")
    spec, _ = build_spec(settings)
    resolved = _resolve(spec, settings)
    for axis, (out, padded) in enumerate(zip(resolved.output_size, resolved.padded_size)):
        if max(out, padded) > limits.max_draw:
            raise ApiError(422, f"axis {axis}: {max(out, padded)} cells are too many to draw (at most "
                           f"{limits.max_draw} per axis); use a smaller input, stride or kernel", "input_size")
    try:
        from ..viz.scene import build_volume_scene
    except ImportError as error:  # pragma: no cover - the scene needs only the standard library
        raise unavailable("drawing pictures", error) from error
    volume = build_volume_scene(resolved, room=room)

    def xy(point: tuple[float, float]) -> list[float]:
        return [round(point[0], 2), round(point[1], 2)]

    shapes = []
    for shape in volume.scene.shapes:
        item: dict[str, Any] = {"kind": shape.kind, "role": shape.role, "points": [xy(q) for q in shape.points]}
        if shape.kind == "text":
            item.update(text=shape.text, anchor=shape.anchor)
        shapes.append(item)
    return {
        "width": round(volume.scene.width, 2),
        "height": round(volume.scene.height, 2),
        "cell": volume.cell,
        "stacked": volume.stacked,
        "lower": volume.lower.to_dict(),
        "upper": volume.upper.to_dict(),
        "shapes": shapes,
        "max_cubes": MAX_VOLUME_CUBES,
    }


def solve_payload(data: Any, limits: Limits) -> dict[str, Any]:
    """Every (kernel, stride, dilation, padding) that turns ``size`` into ``target``."""
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    size = _int(data, "size", 1, limits.max_solve_size)
    target = _int(data, "target", 1, limits.max_solve_size)
    max_kernel = _int(data, "max_kernel", 1, limits.max_solve_kernel, default=7)
    max_stride = _int(data, "max_stride", 1, limits.max_solve_stride, default=4)
    max_dilation = _int(data, "max_dilation", 1, limits.max_solve_dilation, default=1)
    max_padding = data.get("max_padding")
    if max_padding is not None:
        max_padding = _int(data, "max_padding", 0, limits.max_padding)
    symmetric = _bool(data, "symmetric")
    found = solve(size, target, max_kernel, max_stride, max_dilation, max_padding, symmetric)
    return {
        "size": size,
        "target": target,
        "solutions": [
            {**asdict(s), "padding": list(s.padding), "effective_kernel": s.effective_kernel}
            for s in found
        ],
    }


def stack_payload(data: Any, limits: Limits) -> dict[str, Any]:
    """Each layer's output size through a stack, and the receptive field when available."""
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ApiError(422, "layers must be a non-empty list of layer settings", "layers")
    if len(layers) > limits.max_layers:
        raise ApiError(
            422, f"at most {limits.max_layers} layers, got {len(layers)}", "layers"
        )
    rank = _int(data, "rank", 1, 3, default=_rank_guess(data))
    size: tuple[int, ...] = _ints(data, "input_size", rank, 1, limits.max_input)
    input_size = size
    rows = []
    resolved_layers: list[ResolvedConv] = []
    for number, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise ApiError(422, f"layer {number + 1} must be an object", "layers")
        try:
            settings = parse_settings({**layer, "rank": rank, "input_size": list(size)},
                                      _stack_limits(limits))
        except ApiError as error:
            raise ApiError(error.status, f"layer {number + 1}: {error.message}", "layers") from error
        try:
            spec = ConvSpec(**settings.fields)
            resolved = spec.resolve(size)
        except (ValueError, TypeError) as error:
            raise ApiError(422, f"layer {number + 1}: {error}", "layers") from error
        rows.append({
            "input_size": list(size),
            "output_size": list(resolved.output_size),
            "padding": [list(p) for p in resolved.padding],
            "dropped": list(resolved.dropped),
            "kind": spec.kind,
        })
        resolved_layers.append(resolved)
        size = resolved.output_size
    payload: dict[str, Any] = {"input_size": list(input_size), "layers": rows, "receptive": None}
    try:
        payload["receptive"] = _receptive(resolved_layers, input_size, data)
    except ImportError as error:
        payload["receptive_error"] = unavailable("the receptive-field module", error).message
    except ApiError as error:
        payload["receptive_error"] = error.message
    return payload


def _stack_limits(limits: Limits) -> Limits:
    # sizes inside a stack may grow (transposed layers); the input cap stays on the first
    return Limits(**{**asdict(limits), "max_input": 4096})


def _receptive(
    layers: list[ResolvedConv], input_size: tuple[int, ...], data: dict[str, Any]
) -> dict[str, Any]:
    from ..receptive import exact_field, stack_fields

    last = layers[-1].output_size
    if data.get("cell") is None:
        cell = tuple((n - 1) // 2 for n in last)  # the middle cell, for the picture
    else:
        cell = _cell(data, "cell", last)
    fields = stack_fields(layers)
    return {
        "cell": list(cell),
        "fields": [f.to_dict() for f in fields],
        "span": [[_plain(lo), _plain(hi)] for lo, hi in fields[-1].span(cell)],
        "exact": [list(cells) for cells in exact_field(layers, cell)],
    }


def _plain(value: Any) -> Any:
    return value if isinstance(value, int) else str(value)


def port_payload(data: Any, limits: Limits) -> dict[str, Any]:
    """Code that builds the same convolution in Keras, PyTorch or JAX."""
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    target = _choice(data, "to", ("keras", "torch", "jax", "onnx"), None)
    settings = parse_settings(data, limits)
    spec, report = build_spec(settings)
    resolved = _resolve(spec, settings)
    try:
        from ..port import port
    except ImportError as error:
        raise unavailable("convarith.port", error) from error
    try:
        ported = port(spec, to=target, input_shape=resolved.input_shape_for_explain)
    except (ValueError, TypeError, NotImplementedError) as error:
        raise ApiError(422, f"{FRAMEWORK_NAMES[target]}: {page_words(str(error))}", "to") from error
    rules = (f"{report['framework']}'s rules" if report and report["accepted"]
             else "the neutral settings")
    first, _, rest = str(ported.code).partition("\n")
    title = (f"# {FRAMEWORK_NAMES[target]} code for the {spec.kind} drawn on the page "
             f"({rules}): input {'x'.join(map(str, resolved.input_size))} -> output "
             f"{'x'.join(map(str, resolved.output_size))}")
    code = f"{title}\n{rest}" if first.startswith("# ") else str(ported.code)
    return {"to": target, "code": code, "summary": page_words(str(ported.summary)),
            "rules": rules}


# --------------------------------------------------------------------------- images


_DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg);base64,(?P<data>[A-Za-z0-9+/=\s]*)$")


def decode_upload(text: Any, limits: Limits) -> Any:
    """A data URL (PNG or JPEG) → grayscale float array in [0, 1], size-checked.

    The image's size is read from its header first: anything over
    ``max_image_pixels`` (or ``max_image_side`` per side) is refused before a
    single pixel is decoded.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as error:
        raise unavailable("Pillow", error) from error
    if not isinstance(text, str):
        raise ApiError(422, "image must be 'sample' or a data: URL of a PNG or JPEG", "image")
    match = _DATA_URL.match(text) if text.startswith("data:") else None
    if match is None:
        raise ApiError(415, "image must be a PNG or JPEG data: URL (data:image/png;base64,...)",
                       "image")
    try:
        raw = base64.b64decode(match.group("data"), validate=False)
    except (binascii.Error, ValueError) as error:
        raise ApiError(422, f"image is not valid base64: {error}", "image") from error
    if len(raw) > limits.max_upload_bytes:
        raise ApiError(413, f"image is {len(raw)} bytes; the limit is {limits.max_upload_bytes}",
                       "image")
    try:
        # only the PNG and JPEG decoders are tried; the header is read, no pixels yet
        with Image.open(io.BytesIO(raw), formats=("PNG", "JPEG")) as picture:
            width, height = picture.size
            if (width * height > limits.max_image_pixels or max(width, height) >
                    limits.max_image_side):
                raise ApiError(
                    413, f"image is {width}x{height} pixels; the limit is "
                    f"{limits.max_image_pixels} pixels and {limits.max_image_side} per side",
                    "image",
                )
            if picture.format == "JPEG":
                scans = raw.count(b"\xff\xda")  # start-of-scan markers (0xFF is stuffed in data)
                if scans > limits.max_jpeg_scans:
                    raise ApiError(
                        413, f"image is a JPEG with {scans} scans; the limit is "
                        f"{limits.max_jpeg_scans} (re-save it as a baseline JPEG or a PNG)", "image",
                    )
                picture.draft("L", (limits.engine_side, limits.engine_side))
            return _gray_pixels(picture, limits.engine_side)
    except ApiError:
        raise
    except UnidentifiedImageError as error:
        raise ApiError(415, "image is not a PNG or JPEG file", "image") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ApiError(413, f"image refused as a decompression bomb: {error}", "image") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise ApiError(422, f"image could not be decoded: {error}", "image") from error


def _gray_pixels(picture: Any, side: int) -> Any:
    """Grey values in [0, 1], at most ``side`` pixels per side, from any PNG/JPEG mode.

    16-bit grey (``I;16``) keeps its full range (65535 is white); every other
    mode (1, L, LA, P, RGB, RGBA, CMYK...) goes through Pillow's ``L`` conversion.
    """
    import numpy as np
    from PIL import Image

    width, height = picture.size
    scale = min(1.0, side / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if picture.mode.startswith("I;16") or picture.mode in ("I", "F"):
        if size != picture.size:  # Pillow's reduce() refuses 16-bit modes; resize takes them
            picture = picture.resize(size, Image.Resampling.BOX)
        white = 255.0 if picture.mode == "F" else 65535.0
        return np.clip(np.asarray(picture, dtype=np.float32) / white, 0.0, 1.0)
    picture.thumbnail((side, side))
    return np.asarray(picture.convert("L"), dtype=np.float32) / 255.0


def parse_kernel(data: dict[str, Any], limits: Limits) -> tuple[str, Any]:
    """The kernel preset's numbers, or the user's ("1 0 -1; 2 0 -2; 1 0 -1")."""
    import numpy as np

    name = _choice(data, "kernel", (*KERNEL_PRESETS, "custom"), "edge")
    if name != "custom":
        return name, np.array(KERNEL_PRESETS[name], dtype=np.float32)
    numbers = data.get("numbers")
    if isinstance(numbers, str):
        rows = [r for r in re.split(r"[;\n]", numbers) if r.strip()]
        try:
            numbers = [[float(v) for v in re.split(r"[,\s]+", r.strip())] for r in rows]
        except ValueError as error:
            raise ApiError(422, f"numbers: {error}; write rows like '1 0 -1; 2 0 -2'",
                           "numbers") from error
    if (not isinstance(numbers, list) or not numbers
            or not all(isinstance(r, list) and r for r in numbers)):
        raise ApiError(422, "numbers must be rows of numbers, e.g. '1 0 -1; 2 0 -2; 1 0 -1'",
                       "numbers")
    if len({len(r) for r in numbers}) != 1:
        raise ApiError(422, "numbers: every row needs the same count of values", "numbers")
    if len(numbers) > limits.max_kernel or len(numbers[0]) > limits.max_kernel:
        raise ApiError(422, f"numbers: at most {limits.max_kernel}x{limits.max_kernel}", "numbers")
    for row in numbers:
        for cell in row:
            if isinstance(cell, bool) or not isinstance(cell, (int, float)):
                raise ApiError(422, f"numbers must hold numbers, got {_short(cell)}", "numbers")
            if isinstance(cell, int) and abs(cell) > 10**6:
                raise ApiError(422, "numbers must be finite and at most 1e6 in size", "numbers")
    values = np.array(numbers, dtype=np.float64)
    if not np.all(np.isfinite(values)) or np.abs(values).max() > 1e6:
        raise ApiError(422, "numbers must be finite and at most 1e6 in size", "numbers")
    return name, values.astype(np.float32)


def _short(value: Any, width: int = 60) -> str:
    """``repr(value)`` cut to ``width`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def image_payload(data: Any, limits: Limits, sample: Callable[[], bytes]) -> dict[str, Any]:
    """Run the engine on a picture with a kernel preset; the feature map as PNG."""
    import numpy as np

    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    image = data.get("image", "sample")
    if image == "sample":
        text = "data:image/png;base64," + base64.b64encode(sample()).decode()
        pixels = decode_upload(text, limits)
    else:
        pixels = decode_upload(image, limits)
    name, kernel = parse_kernel(data, limits)
    layer = {k: v for k, v in data.items() if k not in ("image", "kernel", "numbers", "format")}
    layer.update(rank=2, input_size=[limits.max_input, limits.max_input], convention=None,
                 in_channels=1, filters=1, groups=1)
    if data.get("pool") is None:
        layer["kernel_size"] = list(kernel.shape)
    settings = parse_settings(layer, limits)
    settings = Settings(tuple(pixels.shape), settings.fields, 1, 1, None)
    spec, _ = build_spec(settings)
    resolved = _resolve(spec, settings)
    if _product(resolved.output_size) > 4 * limits.engine_side**2:
        raise ApiError(422, f"the feature map would be {resolved.output_size}: too large", "strides")
    try:
        from .. import conv as engine_conv
    except ImportError as error:
        raise unavailable("the engine (convarith.conv)", error) from error
    x = pixels[None, :, :, None].astype(np.float32)
    weights = None if spec.pool is not None else kernel[:, :, None, None]
    try:
        y = engine_conv(x, weights, spec)
    except (ValueError, TypeError, NotImplementedError) as error:
        raise ApiError(422, f"the engine refused: {error}") from error
    fmap = np.asarray(y, dtype=np.float32).reshape(resolved.output_size)
    low, high = float(fmap.min()), float(fmap.max())
    payload: dict[str, Any] = {
        "kernel": name,
        "kernel_numbers": kernel.tolist(),
        "input_size": list(pixels.shape),
        "output_size": list(fmap.shape),
        "min": low,
        "max": high,
        "input_png": _png_data_url(pixels, 0.0, 1.0),
        "output_png": _png_data_url(fmap, low, high),
    }
    if data.get("format") == "array":
        payload["output"] = fmap.tolist()
    return payload


def _png_data_url(values: Any, low: float, high: float) -> str:
    import numpy as np
    from PIL import Image

    scale = (high - low) or 1.0
    pixels = np.clip((values - low) / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def parts_available() -> dict[str, bool]:
    """Which optional parts of convarith this server can use."""
    import importlib

    parts = {}
    for name, module, attribute in (
        ("frontdoors", "convarith.frontdoors", "from_keras"),
        ("engine", "convarith", "conv"),
        ("port", "convarith.port", "port"),
        ("receptive", "convarith.receptive", None),
        ("pillow", "PIL.Image", None),
    ):
        try:
            loaded = importlib.import_module(module)
            parts[name] = attribute is None or hasattr(loaded, attribute)
        except ImportError:
            parts[name] = False
    return parts


def health_payload(limits: Limits) -> dict[str, Any]:
    return {"version": __version__, "parts": parts_available(), "limits": asdict(limits),
            "kernel_presets": list(KERNEL_PRESETS)}
