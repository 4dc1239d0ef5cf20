"""One neutral description of a convolution, and its resolution against an input.

:class:`ConvSpec` says *what* convolution (kernel, strides, dilation, padding,
groups, transposition, pooling, layout) without reference to any framework;
the framework front doors (``ConvSpec.from_keras`` etc.) translate each
framework's arguments into it, with that framework's acceptance rules.
:meth:`ConvSpec.resolve` applies it to an input shape once and returns a
:class:`ResolvedConv`: explicit per-side padding, output shape, dropped rows
and the footprint geometry. Everything else in convarith asks the resolved
spec instead of re-deriving these numbers.

Examples
--------
>>> spec = ConvSpec(kernel_size=3, strides=2, padding="same")
>>> r = spec.resolve((28, 28))
>>> r.output_size, r.padding
((14, 14), ((0, 1), (0, 1)))
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from . import arithmetic as ar
from .arithmetic import check_int, padding_source

__all__ = ["ConvSpec", "ResolvedConv", "Tap", "PADDING_WORDS", "PADDING_MODES", "padding_source"]

PADDING_WORDS = ("valid", "same", "same_lower", "causal", "full")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
DATA_FORMATS = ("channels_last", "channels_first")
POOLS = ("max", "avg")
CONVENTIONS = ("keras", "torch", "jax", "onnx")

Padding = str | tuple[tuple[int, int], ...]


# --------------------------------------------------------------------------- validation


def per_axis(name: str, value: Any, rank: int, minimum: int | None = 1) -> tuple[int, ...]:
    """Broadcast an int to ``rank`` axes, or check a sequence has ``rank`` ints."""
    if isinstance(value, (str, bytes)) or not (
        isinstance(value, numbers.Integral) or isinstance(value, Sequence)
    ):
        raise TypeError(
            f"{name} must be an integer or a sequence of {rank} integers, got {value!r}"
        )
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (check_int(name, value, minimum),) * rank
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r} (bool)")
    items = tuple(value)
    if len(items) != rank:
        raise ValueError(
            f"{name} must have one value per spatial axis ({rank}), got {len(items)}: {value!r}"
        )
    return tuple(check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(items))


def _rank_of(*values: Any) -> int | None:
    for value in values:
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
            return len(value)
    return None


def _explicit_padding(value: Any, rank: int, allow_negative: bool) -> tuple[tuple[int, int], ...]:
    """int -> symmetric everywhere; (p0, p1, ...) -> symmetric per axis; ((lo, hi), ...)."""
    minimum = None if allow_negative else 0
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        p = check_int("padding", value, minimum)
        return ((p, p),) * rank
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise TypeError(
            f"padding must be one of {PADDING_WORDS}, an integer, or (lo, hi) pairs per axis; "
            f"got {value!r}"
        )
    items = tuple(value)
    if len(items) != rank:
        raise ValueError(
            f"padding must have one entry per spatial axis ({rank}), got {len(items)}: {value!r}"
        )
    pairs = []
    for i, item in enumerate(items):
        if isinstance(item, Sequence) and not isinstance(item, (str, bytes)):
            if len(item) != 2:
                raise ValueError(f"padding[{i}] must be a (lo, hi) pair, got {item!r}")
            lo = check_int(f"padding[{i}][0]", item[0], minimum)
            hi = check_int(f"padding[{i}][1]", item[1], minimum)
            pairs.append((lo, hi))
        else:
            p = check_int(f"padding[{i}]", item, minimum)
            pairs.append((p, p))
    return tuple(pairs)


def _choice(name: str, value: Any, options: Sequence[Any]) -> Any:
    if isinstance(value, bool) or value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True, init=False)
class ConvSpec:
    """A convolution (or pooling, or transposed convolution), framework-neutral.

    Parameters
    ----------
    kernel_size, strides, dilation
        One int per spatial axis, or one int broadcast to every axis.
    padding
        ``"valid"``, ``"same"`` (odd pixel at the end), ``"same_lower"`` (odd
        pixel at the start), ``"causal"`` (1-D: ``D (K-1)`` on the left),
        ``"full"`` (``K_eff - 1`` per side), an int, one int per axis, or
        ``(lo, hi)`` pairs per axis. For a transposed convolution explicit
        padding is what PyTorch and ONNX mean: cells cropped from each side of
        the full output (negative values add cells).
    padding_mode
        What the padding cells hold: ``"zeros"``, ``"reflect"``, ``"replicate"``
        or ``"circular"`` (PyTorch's modes).
    groups
        Number of channel groups, or ``"depthwise"`` for one group per input
        channel (with ``depth_multiplier`` outputs each).
    transposed, output_padding
        A transposed ("fractionally strided") convolution, and the cells added
        at the end of each axis of its output.
    pool, ceil_mode, count_include_pad
        ``"max"`` or ``"avg"`` pooling instead of a convolution; ceil mode keeps
        a last partial window; whether padded cells count in the average
        (PyTorch's default ``True``, Keras ``False``).
    data_format
        ``"channels_last"`` (NHWC, Keras) or ``"channels_first"`` (NCHW, PyTorch).
    filters, in_channels, depth_multiplier
        Optional channel counts, when known (used for shapes, checks and code).
    rank
        Number of spatial axes (1-3). Inferred from the first sequence given,
        else 2.
    convention
        The framework whose front door built the spec, if any (used to word
        explanations and to port).

    Examples
    --------
    >>> ConvSpec(3, padding="same", strides=2).resolve((5, 5)).output_size
    (3, 3)
    >>> ConvSpec((3, 5), dilation=2).effective_kernel
    (5, 9)
    """

    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: str | tuple[tuple[int, int], ...]
    padding_mode: str
    groups: int | Literal["depthwise"]
    transposed: bool
    output_padding: tuple[int, ...] | None
    pool: str | None
    ceil_mode: bool
    count_include_pad: bool
    data_format: str
    filters: int | None
    in_channels: int | None
    depth_multiplier: int | None
    rank: int
    convention: str | None

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        dilation: int | Sequence[int] = 1,
        padding: str | int | Sequence[Any] = "valid",
        padding_mode: str = "zeros",
        groups: int | Literal["depthwise"] = 1,
        transposed: bool = False,
        output_padding: int | Sequence[int] | None = None,
        pool: str | None = None,
        ceil_mode: bool = False,
        count_include_pad: bool = False,
        data_format: str = "channels_last",
        filters: int | None = None,
        in_channels: int | None = None,
        depth_multiplier: int | None = None,
        rank: int | None = None,
        convention: str | None = None,
    ) -> None:
        # Arguments are stored as given, then standardized in place (the
        # dataclass is frozen, hence object.__setattr__).
        for name, value in list(locals().items()):
            if name != "self":
                object.__setattr__(self, name, value)
        self._standardize()

    def _standardize(self) -> None:
        set_ = object.__setattr__
        rank: Any = self.rank
        if rank is None:
            rank = _rank_of(
                self.kernel_size, self.strides, self.dilation, self.padding, self.output_padding
            ) or 2
        rank = check_int("rank", rank, 1)
        if rank > 3:
            raise ValueError(f"rank must be 1, 2 or 3 spatial axes, got {rank}")
        set_(self, "rank", rank)
        set_(self, "kernel_size", per_axis("kernel_size", self.kernel_size, rank))
        set_(self, "strides", per_axis("strides", self.strides, rank))
        set_(self, "dilation", per_axis("dilation", self.dilation, rank))

        for name in ("transposed", "ceil_mode", "count_include_pad"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.pool is not None:
            _choice("pool", self.pool, POOLS)
            if self.transposed:
                raise ValueError("pool and transposed cannot be combined: pooling has no transpose")
        _choice("padding_mode", self.padding_mode, PADDING_MODES)
        _choice("data_format", self.data_format, DATA_FORMATS)
        if self.convention is not None:
            _choice("convention", self.convention, CONVENTIONS)

        padding = self.padding
        if isinstance(padding, str):
            word = padding.lower()
            if word not in PADDING_WORDS:
                raise ValueError(
                    f"padding must be one of {PADDING_WORDS}, an integer or (lo, hi) pairs, "
                    f"got {padding!r}"
                )
            if word == "causal" and rank != 1:
                raise ValueError(
                    f"padding='causal' is defined for 1-D convolutions only (rank 1), got rank "
                    f"{rank}; pad explicitly instead, e.g. padding=((K-1)*D, 0) per axis"
                )
            if self.transposed and word not in ("valid", "same"):
                raise ValueError(
                    f"a transposed convolution takes padding 'valid', 'same' or explicit crops, "
                    f"got {padding!r}"
                )
            set_(self, "padding", word)
        else:
            # negative padding crops (JAX's explicit pairs allow it, and PyTorch's
            # padding modes); an axis that crops one side and copies into the
            # other has no one meaning across frameworks
            pairs = _explicit_padding(padding, rank, allow_negative=True)
            mixed = [(i, pair) for i, pair in enumerate(pairs) if min(pair) < 0 < max(pair)]
            if mixed and not self.transposed and self.padding_mode != "zeros":
                axis, pair = mixed[0]
                raise ValueError(
                    f"padding[{axis}]={pair} crops one side and pads the other, which "
                    f"padding_mode={self.padding_mode!r} does not support; use "
                    "padding_mode='zeros', or pads of one sign per axis"
                )
            set_(self, "padding", pairs)

        if self.output_padding is not None:
            if not self.transposed:
                raise ValueError(
                    f"output_padding={self.output_padding!r} only applies to a transposed "
                    "convolution; set transposed=True or drop it"
                )
            op = per_axis("output_padding", self.output_padding, rank, minimum=0)
            for axis, (o, s, d) in enumerate(zip(op, self.strides, self.dilation)):
                if o >= max(s, d):
                    raise ValueError(
                        f"output_padding[{axis}]={o} must be smaller than the stride ({s}) "
                        f"or the dilation ({d})"
                    )
            set_(self, "output_padding", op)

        if self.transposed and self.padding_mode != "zeros":
            raise ValueError(
                f"padding_mode={self.padding_mode!r} is not defined for a transposed "
                "convolution; only 'zeros'"
            )
        if self.pool is not None and self.padding_mode != "zeros":
            raise ValueError(f"padding_mode={self.padding_mode!r} is not defined for pooling")

        if self.groups == "depthwise":
            if self.pool is not None:
                raise ValueError("groups='depthwise' does not apply to pooling")
        else:
            set_(self, "groups", check_int("groups", self.groups, 1))
        for name in ("filters", "in_channels", "depth_multiplier"):
            if getattr(self, name) is not None:
                set_(self, name, check_int(name, getattr(self, name), 1))
        groups = self.groups
        if isinstance(groups, int) and groups > 1:
            for name in ("filters", "in_channels"):
                count = getattr(self, name)
                if count is not None and count % groups:
                    raise ValueError(
                        f"{name}={count} must be divisible by groups={groups}"
                    )

    # ------------------------------------------------------------------ front doors

    @classmethod
    def from_keras(cls, layer: str = "Conv2D", /, **kwargs: Any) -> ConvSpec:
        """Build from Keras 3 layer arguments, with Keras's acceptance rules.

        >>> ConvSpec.from_keras("Conv2D", filters=32, kernel_size=3, strides=2, padding="same")
        ... # doctest: +ELLIPSIS
        ConvSpec(kernel_size=(3, 3), strides=(2, 2), ...)
        """
        from .frontdoors import from_keras

        return from_keras(layer, **kwargs)

    @classmethod
    def from_torch(cls, layer: str = "Conv2d", /, **kwargs: Any) -> ConvSpec:
        """Build from PyTorch ``torch.nn`` module arguments, with PyTorch's rules."""
        from .frontdoors import from_torch

        return from_torch(layer, **kwargs)

    @classmethod
    def from_jax(cls, op: str = "conv_general_dilated", /, **kwargs: Any) -> ConvSpec:
        """Build from ``jax.lax`` convolution arguments, with JAX's rules."""
        from .frontdoors import from_jax

        return from_jax(op, **kwargs)

    @classmethod
    def from_onnx(cls, op: str = "Conv", /, **kwargs: Any) -> ConvSpec:
        """Build from ONNX operator attributes, with the ONNX rules."""
        from .frontdoors import from_onnx

        return from_onnx(op, **kwargs)

    @classmethod
    def from_onnx_node(cls, node: Any, input_shape: Sequence[int] | None = None,
                       weight_shape: Sequence[int] | None = None, weight: Any = None) -> ConvSpec:
        """Build from an ``onnx.NodeProto`` (see :func:`convarith.io.onnx_node.spec_from_onnx_node`)."""
        from .io.onnx_node import spec_from_onnx_node

        return spec_from_onnx_node(node, input_shape, weight_shape, weight)

    # ------------------------------------------------------------------ derived

    @property
    def effective_kernel(self) -> tuple[int, ...]:
        """``K + (K - 1)(D - 1)`` per axis: the span a dilated kernel covers."""
        return tuple(
            ar.effective_kernel(k, d) for k, d in zip(self.kernel_size, self.dilation)
        )

    @property
    def kind(self) -> str:
        """``"conv"``, ``"conv_transpose"``, ``"max_pool"`` or ``"avg_pool"``."""
        if self.pool is not None:
            return f"{self.pool}_pool"
        return "conv_transpose" if self.transposed else "conv"

    def replace(self, **changes: Any) -> ConvSpec:
        """A copy with some fields changed (validated again)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values.update(changes)
        return ConvSpec(**values)

    def resolve(self, input_shape: int | Sequence[int]) -> ResolvedConv:
        """Apply the spec to an input; see :class:`ResolvedConv`.

        ``input_shape`` is the spatial size (``rank`` ints, or one int for every
        axis), or the shape with channels (``rank + 1``), or with batch and
        channels (``rank + 2``), laid out as ``data_format`` says.

        >>> ConvSpec(3, padding=1, strides=3).resolve(28).output_size
        (10, 10)
        """
        if type(input_shape) is tuple and all(type(v) is int for v in input_shape):
            # the engine resolves every call's spec with x.shape: remember the answers
            # (ResolvedConv is frozen; a spec that cannot be hashed is built each time)
            try:
                return _resolve_remembered(self, input_shape)
            except TypeError as error:
                if "unhashable" not in str(error):
                    raise
        return ResolvedConv.build(self, input_shape)

    def _repr_html_(self) -> str:
        from .explain import spec_html

        return spec_html(self)

    def _repr_svg_(self) -> str:
        from .viz.animation import preview

        return preview(self).to_svg()

    def _repr_png_(self) -> bytes:
        from .viz.animation import preview

        return preview(self).to_png()


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Tap:
    """One kernel tap of one output cell's footprint.

    ``position`` is the cell's coordinate in the padded input (for a transposed
    convolution: the zero-inserted, padded input the equivalent direct
    convolution reads). ``source`` is the input cell whose value the tap reads,
    or ``None`` when it reads a zero (zero padding, an inserted zero, or the
    part of a ceil-mode pooling window beyond the padded input). ``kernel`` is
    the kernel index in the kernel's own orientation (for a transposed
    convolution: the tap that input cell's value meets in the scatter).
    """

    kernel: tuple[int, ...]
    position: tuple[int, ...]
    source: tuple[int, ...] | None
    in_padding: bool


@dataclass(frozen=True)
class ResolvedConv:
    """A :class:`ConvSpec` applied to one input shape: every number made explicit.

    Attributes
    ----------
    spec
        The spec resolved.
    input_size, output_size
        Spatial sizes.
    padding
        Per-axis ``(lo, hi)`` cells added around the input that the window
        slides over. For a transposed convolution this is the padding of the
        zero-inserted input of the equivalent stride-1 convolution (negative
        values crop); :attr:`crop` holds PyTorch's view of the same thing.
    crop
        Transposed only: cells cropped from each side of the full output
        (``(0, 0)`` per axis otherwise); ``output_padding`` is included in hi.
    effective_kernel
        ``K + (K - 1)(D - 1)`` per axis.
    dropped
        Per axis, trailing input rows that no window reads (0 for transposed).
    groups
        Channel groups as a number (``"depthwise"`` resolved when channels known).
    in_channels, out_channels, batch
        Known channel counts and batch size, else ``None``.
    """

    spec: ConvSpec
    input_size: tuple[int, ...]
    output_size: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    crop: tuple[tuple[int, int], ...]
    effective_kernel: tuple[int, ...]
    dropped: tuple[int, ...]
    groups: int | None
    in_channels: int | None
    out_channels: int | None
    batch: int | None

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(cls, spec: ConvSpec, input_shape: int | Sequence[int]) -> ResolvedConv:
        rank = spec.rank
        assert rank is not None
        if isinstance(input_shape, numbers.Integral) and not isinstance(input_shape, bool):
            input_shape = (int(input_shape),) * rank
        if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
            raise TypeError(f"input_shape must be a sequence of integers, got {input_shape!r}")
        shape = tuple(check_int(f"input_shape[{i}]", v, 1) for i, v in enumerate(input_shape))
        batch = channels = None
        if len(shape) == rank:
            spatial = shape
        elif len(shape) in (rank + 1, rank + 2):
            batch = shape[0] if len(shape) == rank + 2 else None
            rest = shape[1:] if batch is not None else shape
            if spec.data_format == "channels_last":
                spatial, channels = rest[:-1], rest[-1]
            else:
                spatial, channels = rest[1:], rest[0]
        else:
            raise ValueError(
                f"input_shape {shape} does not fit a rank-{rank} spec: give {rank} spatial sizes, "
                f"or {rank + 1} with channels, or {rank + 2} with batch and channels "
                f"({spec.data_format})"
            )

        groups, out_channels = _resolve_channels(spec, channels)
        kernel, strides, dilation = spec.kernel_size, spec.strides, spec.dilation
        assert isinstance(kernel, tuple) and isinstance(strides, tuple)
        assert isinstance(dilation, tuple)
        eff = spec.effective_kernel
        padding: list[tuple[int, int]] = []
        crop: list[tuple[int, int]] = []
        out: list[int] = []
        dropped: list[int] = []
        for axis in range(rank):
            size, k, s, d = spatial[axis], kernel[axis], strides[axis], dilation[axis]
            if spec.transposed:
                pads, crops, o = _resolve_transposed_axis(spec, axis, size, k, s, d)
                padding.append(pads)
                crop.append(crops)
                out.append(o)
                dropped.append(0)
                if o < 1:
                    raise ValueError(
                        f"axis {axis}: a transposed convolution of {size} cells with kernel {k}, "
                        f"stride {s}, crop {crops} gives {o} output cells; crop less"
                    )
                continue
            pads = _direct_padding(spec, axis, size, k, s, d)
            lo, hi = pads
            if spec.padding_mode == "reflect" and max(lo, hi) >= size:
                raise ValueError(
                    f"axis {axis}: reflect padding {pads} needs the input to be larger than each "
                    f"pad, got size {size}"
                )
            if spec.padding_mode == "circular" and max(lo, hi) > size:
                raise ValueError(
                    f"axis {axis}: circular padding {pads} can wrap at most once, got size {size}"
                )
            ceil_pool = spec.pool is not None and spec.ceil_mode
            if size + lo + hi < eff[axis] and not (
                ceil_pool and ar.pool_output_size(size, k, s, d, pads, True) >= 1
            ):
                raise ValueError(
                    f"axis {axis}: the kernel spans {eff[axis]} cells (kernel {k}, dilation {d}) "
                    f"but the padded input has only {size + lo + hi} ({size} + padding {pads}); "
                    "use a smaller kernel or dilation, or more padding"
                )
            if spec.pool is not None:
                o = ar.pool_output_size(size, k, s, d, pads, spec.ceil_mode)
            else:
                o = ar.conv_output_size(size, k, s, d, pads)
            padding.append(pads)
            crop.append((0, 0))
            out.append(o)
            # ceil mode adds a last partial window, except one that would start past the
            # input (PyTorch's rule): then the windows, and the rows they leave, are floor mode's
            floor = not ceil_pool or o == ar.pool_output_size(size, k, s, d, pads)
            dropped.append(ar.dropped_rows(size, k, s, d, pads) if floor else 0)
        return cls(
            spec=spec,
            input_size=spatial,
            output_size=tuple(out),
            padding=tuple(padding),
            crop=tuple(crop),
            effective_kernel=eff,
            dropped=tuple(dropped),
            groups=groups,
            in_channels=channels,
            out_channels=out_channels,
            batch=batch,
        )

    # ------------------------------------------------------------------ shapes

    @property
    def rank(self) -> int:
        return len(self.input_size)

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self._full_shape(self.input_size, self.in_channels)

    @property
    def output_shape(self) -> tuple[int | None, ...]:
        """Output shape, with batch and channels where known (``None`` where not)."""
        return self._full_shape(self.output_size, self.out_channels)

    def _full_shape(self, spatial: tuple[int, ...], channels: int | None) -> tuple[int | None, ...]:
        if channels is None and self.batch is None:
            return spatial
        body = (*spatial, channels) if self.spec.data_format == "channels_last" else (
            channels, *spatial)
        return body if self.batch is None else (self.batch, *body)

    @property
    def padded_size(self) -> tuple[int, ...]:
        """Size of the grid the window slides over (zero-inserted too, if transposed)."""
        return tuple(
            self._grid_size(axis) + lo + hi for axis, (lo, hi) in enumerate(self.padding)
        )

    def _grid_size(self, axis: int) -> int:
        size = self.input_size[axis]
        if self.spec.transposed:
            return ar.zero_inserted_size(size, self.spec.strides[axis])
        return size

    @property
    def overhang(self) -> tuple[int, ...]:
        """Per axis, cells past the padded input that the last window reaches.

        Non-zero only for ceil-mode pooling (:func:`~convarith.arithmetic.ceil_overhang`).

        >>> ConvSpec(2, strides=2, pool="max", ceil_mode=True, rank=1).resolve((5,)).overhang
        (1,)
        """
        if self.spec.transposed:
            return (0,) * self.rank
        strides: tuple[int, ...] = self.spec.strides
        dilation: tuple[int, ...] = self.spec.dilation
        kernel: tuple[int, ...] = self.spec.kernel_size
        return tuple(
            ar.ceil_overhang(*args)
            for args in zip(self.input_size, self.output_size, kernel, strides, dilation,
                            self.padding)
        )

    @property
    def window_padding(self) -> tuple[tuple[int, int], ...]:
        """:attr:`padding` with :attr:`overhang` added at the end: what every window reads.

        >>> ConvSpec(2, strides=2, pool="max", ceil_mode=True, rank=1).resolve((5,)).window_padding
        ((0, 1),)
        """
        return tuple((lo, hi + e) for (lo, hi), e in zip(self.padding, self.overhang))

    @property
    def input_gradient_padding(self) -> tuple[tuple[int, int], ...]:
        """Per axis, the grid padding of the transposed convolution that gives ``dx``.

        Direct convolutions only: the input gradient over the *padded* input is
        the transposed convolution of ``dy`` with this padding of its
        zero-inserted grid (:func:`~convarith.arithmetic.input_gradient_padding`).

        >>> ConvSpec(3, strides=2, rank=1).resolve((28,)).input_gradient_padding
        ((2, 3),)
        """
        strides: tuple[int, ...] = self.spec.strides
        dilation: tuple[int, ...] = self.spec.dilation
        kernel: tuple[int, ...] = self.spec.kernel_size
        return tuple(
            ar.input_gradient_padding(n + lo + hi, o, k, s, d)
            for n, (lo, hi), o, k, s, d in zip(self.input_size, self.padding, self.output_size,
                                               kernel, strides, dilation)
        )

    # ------------------------------------------------------------------ geometry

    def grid_cells(self, axis: int, extent: int | None = None) -> list[tuple[str, int | None]]:
        """What each cell of the grid the windows slide over is along one axis: ``(kind, source)``.

        The one classification of grid cells (:func:`~convarith.arithmetic.grid_cell`,
        words :data:`~convarith.arithmetic.GRID_CELL_KINDS`), used by the
        footprint (:meth:`axis_taps`), the animations and the explorer's page.
        ``extent`` cells (default: :attr:`padded_size`; ceil-mode pooling's
        windows reach :attr:`overhang` cells further, ``"beyond"``).

        >>> r = ConvSpec(3, strides=2, rank=1).resolve((6,))
        >>> [kind for kind, _ in r.grid_cells(0)]
        ['input', 'input', 'input', 'input', 'input', 'dropped']
        >>> [k for k, _ in ConvSpec(2, strides=2, transposed=True, rank=1).resolve((2,)).grid_cells(0)]
        ['padding', 'input', 'inserted', 'input', 'padding']
        """
        return ar.grid_cells(*self._axis_arithmetic(axis), transposed=self.spec.transposed,
                             padding_mode=self.spec.padding_mode,
                             extent=self.padded_size[axis] if extent is None else extent)

    def _axis_arithmetic(self, axis: int) -> tuple[int, int, int, int, int, tuple[int, int]]:
        """``(size, output, kernel, stride, dilation, padding)`` of one axis, for :mod:`arithmetic`."""
        spec = self.spec
        return (self.input_size[axis], self.output_size[axis], spec.kernel_size[axis],
                spec.strides[axis], spec.dilation[axis], self.padding[axis])

    def axis_taps(self, axis: int, out_index: int) -> list[Tap]:
        """The footprint of output cell ``out_index`` along one axis (1-D taps).

        The footprint of a cell is the product of its per-axis taps. A tap
        reads the cell of :meth:`grid_cells` at its position: its source for
        an input cell or a padding copy, a zero otherwise; ``in_padding`` for
        padding (zeros or copies) and cells beyond it.
        """
        spec = self.spec
        size, out, k_size, s, d, pads = self._axis_arithmetic(axis)
        if not 0 <= out_index < out:
            raise IndexError(f"output index {out_index} on axis {axis} is outside 0..{out - 1}")
        taps = []
        for k in range(k_size):
            if spec.transposed:
                # stride-1 window over the zero-inserted grid, flipped kernel
                position, kernel = out_index + k * d, k_size - 1 - k
            else:
                position, kernel = out_index * s + k * d, k
            kind, source = ar.grid_cell(position, size, out, k_size, s, d, pads,
                                        transposed=spec.transposed, padding_mode=spec.padding_mode)
            taps.append(Tap((kernel,), (position,), (source,) if source is not None else None,
                            kind in ("padding", "copy", "beyond")))
        return taps

    def footprint(self, out_index: int | Sequence[int]) -> list[Tap]:
        """Every (kernel tap, input cell) pair that output cell ``out_index`` reads.

        >>> r = ConvSpec(3, padding="same", strides=2).resolve((5, 5))
        >>> [t.source for t in r.footprint((0, 0))][:4]
        [None, None, None, None]
        >>> sorted(t.source for t in r.footprint((0, 0)) if t.source)
        [(0, 0), (0, 1), (1, 0), (1, 1)]
        """
        index = self._index(out_index, self.output_size, "output")
        per_axis_taps = [self.axis_taps(axis, i) for axis, i in enumerate(index)]
        return [_combine(combo) for combo in _product(per_axis_taps)]

    def feeds(self, in_index: int | Sequence[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """The output cells an input cell contributes to, each with the kernel tap used.

        Padding copies (reflect, replicate, circular) count as contributions of
        the input cell they copy.

        >>> r = ConvSpec(3).resolve((5, 5))
        >>> [o for o, k in r.feeds((0, 0))]
        [(0, 0)]
        """
        index = self._index(in_index, self.input_size, "input")
        per_axis = [self._axis_feeds(axis, i) for axis, i in enumerate(index)]
        result = []
        for combo in _product(per_axis):
            result.append((tuple(o for o, _ in combo), tuple(k for _, k in combo)))
        return result

    def _axis_feeds(self, axis: int, index: int) -> list[tuple[int, int]]:
        """(output index, kernel tap) pairs along one axis that read input cell ``index``."""
        spec = self.spec
        k_size = spec.kernel_size[axis]
        d = spec.dilation[axis]
        s = spec.strides[axis]
        lo, hi = self.padding[axis]
        size, out_size = self.input_size[axis], self.output_size[axis]
        if spec.transposed:
            # where the cell sits in the zero-inserted, padded grid; stride-1 windows, flipped kernel
            return sorted((o, k_size - 1 - k)
                          for o, k in ar.windows_reading(index * s + lo, out_size, k_size, 1, d))
        # the cell itself, and any padding cells that copy it (reflect, replicate, circular)
        positions = [index + lo]
        if spec.padding_mode != "zeros":
            positions += [p + lo for p in (*range(-lo, 0), *range(size, size + hi))
                          if padding_source(p, size, spec.padding_mode) == index]
        return sorted(hit for position in positions
                      for hit in ar.windows_reading(position, out_size, k_size, s, d))

    def _index(self, index: int | Sequence[int], bounds: tuple[int, ...], what: str) -> tuple[int, ...]:
        if isinstance(index, numbers.Integral) and not isinstance(index, bool):
            index = (int(index),)
        if isinstance(index, (str, bytes)) or not isinstance(index, Sequence):
            raise TypeError(f"{what} index must be a sequence of integers, got {index!r}")
        if len(index) != len(bounds):
            raise ValueError(
                f"{what} index {tuple(index)} must have {len(bounds)} coordinates"
            )
        checked = tuple(check_int(f"{what} index[{i}]", v, 0) for i, v in enumerate(index))
        for axis, (i, n) in enumerate(zip(checked, bounds)):
            if i >= n:
                raise IndexError(f"{what} index {checked} is outside the {what} {bounds} on axis {axis}")
        return checked

    def positions(self) -> Iterator[tuple[int, ...]]:
        """Every output index in row-major order (the order frames are drawn)."""
        yield from _product_ranges(self.output_size)

    def _repr_html_(self) -> str:
        from .explain import explain

        return explain(self.spec, self.input_shape_for_explain)._repr_html_()

    def _repr_svg_(self) -> str:
        from .viz.animation import preview

        return preview(self).to_svg()

    def _repr_png_(self) -> bytes:
        from .viz.animation import preview

        return preview(self).to_png()

    @property
    def input_shape_for_explain(self) -> tuple[int, ...]:
        return tuple(v for v in self.input_shape if v is not None)


def _combine(taps: Sequence[Tap]) -> Tap:
    sources = [t.source for t in taps]
    source = None if any(s is None for s in sources) else tuple(s[0] for s in sources)  # type: ignore[index]
    return Tap(
        kernel=tuple(t.kernel[0] for t in taps),
        position=tuple(t.position[0] for t in taps),
        source=source,
        in_padding=any(t.in_padding for t in taps),
    )


def _product(lists: Sequence[Sequence[Any]]) -> Iterator[tuple[Any, ...]]:
    if not lists:
        yield ()
        return
    for head in lists[0]:
        for rest in _product(lists[1:]):
            yield (head, *rest)


def _product_ranges(sizes: Sequence[int]) -> Iterator[tuple[int, ...]]:
    yield from _product([range(n) for n in sizes])


def _direct_padding(spec: ConvSpec, axis: int, size: int, k: int, s: int, d: int) -> tuple[int, int]:
    padding = spec.padding
    if not isinstance(padding, str):
        return padding[axis]
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        return ar.same_padding(size, k, s, d)
    if padding == "same_lower":
        return ar.same_padding(size, k, s, d, lower=True)
    if padding == "causal":
        return ar.causal_padding(k, d)
    return ar.full_padding(k, d)


def _resolve_transposed_axis(
    spec: ConvSpec, axis: int, size: int, k: int, s: int, d: int
) -> tuple[tuple[int, int], tuple[int, int], int]:
    """(padding of the zero-inserted input, crop of the full output, output size)."""
    op = spec.output_padding[axis] if spec.output_padding is not None else None
    padding = spec.padding
    if padding == "valid":
        pads = ar.transposed_valid_padding(k, s, d, op)
    elif padding == "same":
        pads = ar.transposed_same_padding(k, s, d, op)
    elif isinstance(padding, tuple):
        pads = ar.transposed_input_padding(k, d, padding[axis], op or 0)
    else:
        raise AssertionError(f"unreachable: transposed padding {padding!r}")
    return pads, ar.transposed_crop(k, d, pads), ar.transposed_grid_output_size(size, k, s, d, pads)


def _resolve_channels(spec: ConvSpec, channels: int | None) -> tuple[int | None, int | None]:
    """(groups, output channels), checking channel counts where they are known."""
    if spec.in_channels is not None and channels is not None and channels != spec.in_channels:
        raise ValueError(
            f"the input has {channels} channels but the spec expects in_channels="
            f"{spec.in_channels} ({spec.data_format})"
        )
    channels = channels if channels is not None else spec.in_channels
    if spec.pool is not None:
        return 1, channels
    groups: int | None
    if spec.groups == "depthwise":
        groups = channels
        multiplier = spec.depth_multiplier or 1
        out = channels * multiplier if channels is not None else spec.filters
        return groups, out
    groups = int(spec.groups)
    if channels is not None and channels % groups:
        raise ValueError(
            f"the input's {channels} channels must be divisible by groups={groups}"
        )
    return groups, spec.filters


@functools.lru_cache(maxsize=1024)
def _resolve_remembered(spec: ConvSpec, input_shape: tuple[int, ...]) -> ResolvedConv:
    return ResolvedConv.build(spec, input_shape)
