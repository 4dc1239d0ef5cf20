"""Model arithmetic: per layer the output shape, parameters, multiply-adds and receptive field.

:func:`summarize` walks a :class:`~convarith.io.graph.ModelGraph` (from a
``.keras`` file, an ONNX model or a YAML/JSON list of layers, see
:func:`convarith.io.read_model`) and returns a :class:`ModelSummary`: for
every layer its output shape, parameter count, multiply-accumulates, the
receptive field on the input (size, jump = effective stride, start offset),
rows the layer drops, and warnings -- branches merged by ``Add`` or
``Concatenate`` whose cells do not look at the same place of the input, and
layer types convarith does not know (assumed to keep the shape; the rest of
the table is still computed).

Every size comes from the resolved specs (:meth:`ConvSpec.resolve`); the
receptive fields from :mod:`convarith.receptive`.

Examples
--------
>>> from convarith.io.graph import LayerNode, ModelGraph
>>> from convarith import ConvSpec
>>> graph = ModelGraph("tiny", (
...     LayerNode("in", "InputLayer", "input", shape=(28, 28, 1)),
...     LayerNode("c1", "Conv2D", "conv", ("in",), spec=ConvSpec(3, strides=2, padding="same", filters=8)),
... ))
>>> row = summarize(graph).rows[-1]
>>> row.output_shape, row.params, row.macs, row.field.size
((None, 14, 14, 8), 80, 14112, (3, 3))
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from .io.graph import LayerNode, ModelGraph
from .limits import check_model_layers
from .receptive import ReceptiveField, tidy_number
from .spec import ConvSpec, ResolvedConv

__all__ = ["summarize", "summary_of", "ModelSummary", "LayerRow", "draw_field"]


BATCH_AXIS_NOTE = "Output shapes include the batch axis, first, shown as None (any batch size)"


@dataclass(frozen=True)
class _Tensor:
    spatial: tuple[int, ...] | None  # None once flattened
    channels: int | None
    flat: int | None
    field: ReceptiveField | None


@dataclass(frozen=True)
class LayerRow:
    """One layer of a :class:`ModelSummary`."""

    name: str
    type: str
    output_shape: tuple[int | None, ...] | None
    params: int
    macs: int
    field: ReceptiveField | None
    dropped: tuple[int, ...] | None = None
    warnings: tuple[str, ...] = dataclasses.field(default=())
    notes: tuple[str, ...] = dataclasses.field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "output_shape": None if self.output_shape is None else list(self.output_shape),
            "params": self.params,
            "macs": self.macs,
            "receptive_field": None if self.field is None else self.field.to_dict(),
            "dropped": None if self.dropped is None else list(self.dropped),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ModelSummary:
    """Per-layer arithmetic of a model; ``str()`` is a plain-text table."""

    name: str
    source: str
    data_format: str
    input_size: tuple[int, ...]
    rows: tuple[LayerRow, ...]
    warnings: tuple[str, ...] = dataclasses.field(default=())
    notes: tuple[str, ...] = dataclasses.field(default=())

    @property
    def total_params(self) -> int:
        return sum(row.params for row in self.rows)

    @property
    def total_macs(self) -> int:
        return sum(row.macs for row in self.rows)

    def row(self, name: str) -> LayerRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise ValueError(f"no layer named {name!r}; layers are {', '.join(r.name for r in self.rows)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "data_format": self.data_format,
            "input_size": list(self.input_size),
            "total_params": self.total_params,
            "total_macs": self.total_macs,
            "layers": [row.to_dict() for row in self.rows],
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }

    def table_rows(self) -> list[list[str]]:
        """The table's cells as text, header first."""
        out = [["Layer (type)", "Output shape", "Params", "MACs", "RF", "Jump", "Start", "Dropped"]]
        for row in self.rows:
            rf = row.field
            out.append([
                f"{row.name} ({row.type})",
                "?" if row.output_shape is None else _shape_text(row.output_shape),
                f"{row.params:,}",
                f"{row.macs:,}",
                "" if rf is None else _axes(rf.size),
                "" if rf is None else _axes(rf.jump),
                "" if rf is None else _axes(rf.start),
                "" if not row.dropped or not any(row.dropped) else _axes(row.dropped),
            ])
        return out

    def __str__(self) -> str:
        cells = self.table_rows()
        widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
        numeric = {2, 3}
        lines = [f"Model: {self.name} (input {'x'.join(map(str, self.input_size))}, {self.data_format})",
                 BATCH_AXIS_NOTE]
        for index, line in enumerate(cells):
            lines.append("  ".join(
                cell.rjust(w) if i in numeric and index else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(line, widths))).rstrip())
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(f"Total params: {self.total_params:,}   Total MACs: {self.total_macs:,}")
        for note in self.notes:
            lines.append(f"note: {note}")
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        return "\n".join(lines)

    def print_rich(self) -> None:
        """Print with :mod:`rich` (falls back to plain text if it is not installed)."""
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            print(self)
            return
        cells = self.table_rows()
        table = Table(title=f"{self.name}: input {'x'.join(map(str, self.input_size))} ({self.data_format})")
        for index, header in enumerate(cells[0]):
            table.add_column(header, justify="right" if index in (2, 3) else "left")
        for line in cells[1:]:
            table.add_row(*line)
        console = Console()
        console.print(BATCH_AXIS_NOTE, highlight=False)
        console.print(table)
        console.print(f"Total params: {self.total_params:,}   Total MACs: {self.total_macs:,}")
        for note in self.notes:
            console.print(f"note: {note}", highlight=False)
        for warning in self.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


def _axes(values: Sequence[Any]) -> str:
    return "x".join(str(v) for v in values)


def _shape_text(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if v is None else str(v) for v in shape) + ")"


# --------------------------------------------------------------------------- the walk


def summarize(model: ModelGraph, input_size: Sequence[int] | None = None) -> ModelSummary:
    """Per-layer shapes, parameters, multiply-adds and receptive fields of ``model``.

    Parameters
    ----------
    model
        The layer graph (see :func:`convarith.io.read_model`).
    input_size
        Spatial input size, when the model leaves it open (``None`` in the
        file) or to try another size.
    """
    check_model_layers(len(model.layers), f"model {model.name!r}")
    tensors: dict[str, _Tensor] = {}
    rows: list[LayerRow] = []
    warnings: list[str] = list(model.warnings)
    stride_notes: dict[str, list[str]] = {}
    first_size: tuple[int, ...] | None = None
    channels_last = model.data_format == "channels_last"
    walk = _Walk({node.name: node for node in model.layers}, {node.name: i for i, node in enumerate(model.layers)},
                 tensors, {})
    for node in model.layers:
        missing = [name for name in node.inputs if name not in tensors]
        if missing:
            raise ValueError(f"layer {node.name!r} reads {missing[0]!r}, which no earlier layer produces")
        inputs = [tensors[name] for name in node.inputs]
        row_warnings: list[str] = []
        row_notes: list[str] = []
        if node.note:
            row_warnings.append(node.note)
        if node.kind == "input":
            tensor = _input_tensor(node, input_size, channels_last)
            assert tensor.spatial is not None
            first_size = first_size or tensor.spatial
            params = macs = 0
            dropped = None
        else:
            if not inputs:
                raise ValueError(f"layer {node.name!r} ({node.type}) has no input")
            tensor, params, macs, dropped = _apply(node, inputs, channels_last, row_warnings, walk)
            if node.name in walk.resolved:
                row_notes = walk.stride_placement(node, walk.resolved[node.name])
        if row_notes:
            stride_notes[node.name] = row_notes
        if node.params is not None:
            params = node.params
        params += node.extra_params
        if node.macs is not None:
            macs = node.macs
        tensors[node.name] = tensor
        shown = _shape(tensor, channels_last)
        if node.kind in ("reshape", "unknown") and node.shape and inputs:
            shown = (None, *_target_shape(node, inputs[0]))
        rows.append(LayerRow(node.name, node.type, shown, params, macs,
                             tensor.field, dropped, tuple(row_warnings)))
        warnings += [f"{node.name}: {w}" for w in row_warnings]
    if first_size is None:
        raise ValueError(f"model {model.name!r} has no input layer")
    residual = walk.residual_branches(set(stride_notes))
    rows = [dataclasses.replace(row, notes=tuple(stride_notes[row.name])) if row.name in residual else row
            for row in rows]
    notes = [f"{row.name}: {n}" for row in rows for n in row.notes]
    return ModelSummary(model.name, model.source, model.data_format, first_size, tuple(rows), tuple(warnings),
                        tuple(notes))


def _input_tensor(node: LayerNode, input_size: Sequence[int] | None, channels_last: bool) -> _Tensor:
    shape = tuple(node.shape or ())
    if len(shape) < 2:
        raise ValueError(f"input {node.name!r} has shape {shape}: convarith summarizes inputs with "
                         "spatial axes and channels, e.g. (28, 28, 1)")
    spatial = shape[:-1] if channels_last else shape[1:]
    channels = shape[-1] if channels_last else shape[0]
    if input_size is not None:
        size = tuple(int(v) for v in input_size)
        if len(size) == 1:  # one number is a square (cubic) input, as in `convarith shape 28`
            size = size * len(spatial)
        if len(size) != len(spatial):
            raise ValueError(f"input_size (--input) {size} must have {len(spatial)} spatial axes "
                             f"(or be one number for all of them)")
        spatial = size
    if any(v is None for v in spatial):
        raise ValueError(f"input {node.name!r} has an open spatial size {spatial}; give the input "
                         "size (--input 224x224)")
    rank = len(spatial)
    return _Tensor(tuple(int(v) for v in spatial), None if channels is None else int(channels), None,  # type: ignore[arg-type]
                   ReceptiveField.identity(rank))


def _shape(tensor: _Tensor, channels_last: bool) -> tuple[int | None, ...]:
    if tensor.spatial is None:
        return (None, tensor.flat)
    if channels_last:
        return (None, *tensor.spatial, tensor.channels)
    return (None, tensor.channels, *tensor.spatial)


def _resolve(spec: ConvSpec, tensor: _Tensor, name: str) -> ResolvedConv:
    assert tensor.spatial is not None
    if spec.rank != len(tensor.spatial):
        raise ValueError(f"layer {name!r} is {spec.rank}-D but its input has {len(tensor.spatial)} "
                         f"spatial axes {tensor.spatial}")
    channels = tensor.channels
    if channels is None:
        return spec.resolve(tensor.spatial)
    shape = (*tensor.spatial, channels) if spec.data_format == "channels_last" else (channels, *tensor.spatial)
    return spec.resolve(shape)


def _whole(tensor: _Tensor) -> ReceptiveField | None:
    """The field of a cell that sees every position of ``tensor`` (global pooling, Flatten)."""
    if tensor.field is None or tensor.spatial is None:
        return tensor.field
    return tensor.field.through(ConvSpec(tensor.spatial).resolve(tensor.spatial))


def _apply(node: LayerNode, inputs: list[_Tensor], channels_last: bool,
           warnings: list[str], walk: _Walk | None = None) -> tuple[_Tensor, int, int, tuple[int, ...] | None]:
    """(output tensor, params, MACs, dropped rows) of one layer."""
    x = inputs[0]
    kind = node.kind
    if kind in ("add", "concat"):
        return _merge(node, inputs, warnings, walk), 0, 0, None
    if kind in ("reshape", "unknown"):
        if node.shape is None or any(v is None for v in node.shape):
            return x, 0, 0, None
        return _reshaped(_target_shape(node, x), x, channels_last), 0, 0, None
    if kind == "identity":
        return x, 0, 0, None
    if kind == "norm":
        return x, (node.units or 0) * (x.channels or 0), 0, None
    if kind == "dense":
        units = int(node.units or 0)
        width = x.flat if x.spatial is None else x.channels
        if width is None:
            raise ValueError(f"layer {node.name!r}: Dense input width unknown")
        positions = 1 if x.spatial is None else math.prod(x.spatial)
        params = width * units + (units if node.bias else 0)
        out = _Tensor(None, None, units, x.field) if x.spatial is None else _Tensor(x.spatial, units, None, x.field)
        return out, params, positions * width * units, None
    if x.spatial is None:
        raise ValueError(f"layer {node.name!r} ({node.type}) needs spatial axes, but its input is flat")
    if kind == "flatten":
        return _Tensor(None, None, math.prod(x.spatial) * (x.channels or 0), _whole(x)), 0, 0, None
    if kind == "global_pool":
        if node.units:  # keepdims
            return _Tensor((1,) * len(x.spatial), x.channels, None, _whole(x)), 0, 0, None
        return _Tensor(None, None, x.channels, _whole(x)), 0, 0, None
    if kind in ("pad", "crop"):
        pads = node.padding or ()
        if len(pads) != len(x.spatial):
            raise ValueError(f"layer {node.name!r}: {len(pads)} padding pairs for {len(x.spatial)} axes")
        sign = 1 if kind == "pad" else -1
        pairs = tuple((sign * lo, sign * hi) for lo, hi in pads)
        size = tuple(n + lo + hi for n, (lo, hi) in zip(x.spatial, pairs))
        if min(size) < 1:
            raise ValueError(f"layer {node.name!r} crops {pads} from {x.spatial}: nothing is left")
        field_ = None if x.field is None else x.field.padded(pairs)
        return _Tensor(size, x.channels, None, field_), 0, 0, None
    if kind == "upsample":
        factor = node.factor or (2,) * len(x.spatial)
        resolved = ConvSpec(factor, strides=factor, transposed=True).resolve(x.spatial)
        field_ = None if x.field is None else x.field.through(resolved)
        return _Tensor(resolved.output_size, x.channels, None, field_), 0, 0, None
    assert kind == "conv" and node.spec is not None
    spec = node.spec
    resolved = _resolve(spec, x, node.name)
    if walk is not None:
        walk.resolved[node.name] = resolved
    cin = resolved.in_channels or 0
    cout = resolved.out_channels or cin
    taps = math.prod(spec.kernel_size)
    out_cells = math.prod(resolved.output_size)
    in_cells = math.prod(resolved.input_size)
    groups = resolved.groups or 1
    if spec.pool is not None:
        params = macs = 0
        cout = cin
    elif spec.groups == "depthwise":
        mult = spec.depth_multiplier or 1
        params = taps * cin * mult
        macs = out_cells * cin * mult * taps
        cout = cin * mult
        if node.units:  # separable: a pointwise convolution follows
            params += cin * mult * node.units
            macs += out_cells * cin * mult * node.units
            cout = node.units
        params += cout if node.bias else 0
    elif spec.transposed:
        params = taps * cin * (cout // groups) + (cout if node.bias else 0)
        macs = in_cells * cin * taps * (cout // groups)
    else:
        params = taps * (cin // groups) * cout + (cout if node.bias else 0)
        macs = out_cells * cout * taps * (cin // groups)
    dropped = resolved.dropped
    if any(dropped):
        warnings.append(f"drops {_axes(dropped)} trailing input rows per axis (no window reads them)")
    field_ = None if x.field is None else x.field.through(resolved)
    return _Tensor(resolved.output_size, cout, None, field_), params, macs, dropped


def _values(tensor: _Tensor) -> int | None:
    """Values per sample of ``tensor`` (None when its channels are unknown)."""
    if tensor.spatial is None:
        return tensor.flat
    return None if tensor.channels is None else math.prod(tensor.spatial) * tensor.channels


def _target_shape(node: LayerNode, x: _Tensor) -> list[int]:
    """``node.shape`` with a ``-1`` (Keras ``Reshape``) worked out from the input's size."""
    shape = [int(v) for v in node.shape or () if v is not None]
    if -1 not in shape:
        return shape
    known = math.prod(v for v in shape if v != -1)
    total = _values(x)
    if shape.count(-1) > 1 or total is None or known == 0 or total % known:
        raise ValueError(f"layer {node.name!r} ({node.type}): cannot reshape {total} values to {tuple(shape)}")
    return [total // known if v == -1 else v for v in shape]


def _reshaped(shape: Sequence[int], x: _Tensor, channels_last: bool) -> _Tensor:
    """The tensor of a Reshape/Transpose/...: spatial geometry kept when the spatial sizes survive.

    ``shape`` has no batch axis. Its trailing sizes (channels first; leading,
    channels last) equal to the input's spatial sizes are taken as the same
    positions -- a channel shuffle ``(C, H, W) -> (g, C/g, H, W)`` keeps its
    receptive field; anything else has no receptive field (a flat result sees
    the whole input).
    """
    shape = tuple(int(v) for v in shape)
    if len(shape) <= 1:
        return _Tensor(None, None, shape[0] if shape else 1, _whole(x))
    if x.spatial is not None:
        rank = len(x.spatial)
        kept = shape[:rank] if channels_last else shape[-rank:]
        rest = shape[rank:] if channels_last else shape[:-rank]
        if len(shape) > rank and kept == x.spatial:
            return _Tensor(x.spatial, math.prod(rest), None, x.field)
    spatial = shape[:-1] if channels_last else shape[1:]
    channels = shape[-1] if channels_last else shape[0]
    return _Tensor(spatial, channels, None, None)


def _broadcast_only(tensor: _Tensor) -> bool:
    """A tensor that broadcasts over positions (flat, or every spatial size 1): an SE block's scale."""
    return tensor.spatial is None or all(n == 1 for n in tensor.spatial)


def _merge(node: LayerNode, inputs: list[_Tensor], warnings: list[str], walk: _Walk | None = None) -> _Tensor:
    first = inputs[0]
    if len(inputs) < 2:
        return first
    if node.kind == "add" and any(t.spatial != first.spatial for t in inputs):
        # element-wise with broadcasting: the positional inputs set the shape and field
        positional = [t for t in inputs if not _broadcast_only(t)]
        if positional:
            names = tuple(n for n, t in zip(node.inputs, inputs) if not _broadcast_only(t))
            widest = max((t.channels or 0) for t in inputs) or None
            inner = _merge(dataclasses.replace(node, inputs=names), positional, warnings, walk)
            return dataclasses.replace(inner, channels=widest)
    spatials = [t.spatial for t in inputs]
    if any(s != spatials[0] for s in spatials):
        raise ValueError(f"layer {node.name!r} ({node.type}) merges inputs of different spatial sizes "
                         f"{spatials} ({', '.join(node.inputs)})")
    channels: int | None
    flat: int | None
    if node.kind == "concat":
        channels = sum(t.channels or 0 for t in inputs)
        flat = None if first.flat is None else sum(t.flat or 0 for t in inputs)
    else:
        channels, flat = first.channels, first.flat
    fields = [t.field for t in inputs]
    merged: ReceptiveField | None = None
    if all(f is not None for f in fields) and first.spatial is not None:
        known = [f for f in fields if f is not None]
        base = known[0]
        for name, other in zip(node.inputs[1:], known[1:]):
            why = "" if walk is None else walk.branch_difference(node.inputs[0], name)
            if other.jump != base.jump:
                warnings.append(f"inputs are misaligned: {node.inputs[0]} steps {_axes(base.jump)} input "
                                f"pixels per cell but {name} steps {_axes(other.jump)}{why}")
            elif other.center != base.center:
                shift = tuple(_tidy_diff(b, a) for a, b in zip(base.center, other.center))
                warnings.append(f"inputs are misaligned: cell 0 of {node.inputs[0]} is centred at input "
                                f"{_axes(base.center)} but cell 0 of {name} at {_axes(other.center)} "
                                f"(off by {_axes(shift)} input pixels){why}")
        starts = tuple(min(f.start[a] for f in known) for a in range(base.rank))
        ends = tuple(max(f.start[a] + f.size[a] - 1 for f in known) for a in range(base.rank))
        merged = ReceptiveField(tuple(e - s + 1 for s, e in zip(starts, ends)), base.jump, starts)
    return _Tensor(first.spatial, channels, flat, merged)


@dataclass(frozen=True)
class _Walk:
    """What the walk has seen so far, to explain a field by the layers that made it."""

    nodes: dict[str, LayerNode]
    order: dict[str, int]
    tensors: dict[str, _Tensor]
    resolved: dict[str, ResolvedConv]

    def ancestors(self, name: str) -> set[str]:
        """``name`` and every layer it reads from, directly or not."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen or current not in self.nodes:
                continue
            seen.add(current)
            todo.extend(self.nodes[current].inputs)
        return seen

    def window(self, name: str) -> str:
        """``n132 (Conv 3x3 stride 2, pads 1+1)``: a windowed layer as its field sees it."""
        resolved, node = self.resolved[name], self.nodes[name]
        spec = resolved.spec
        text = f"{name} ({node.type} {_axes(spec.kernel_size or ())}"
        if any(s != 1 for s in spec.strides or ()):
            text += f" stride {_axes(spec.strides or ())}"
        if any(d != 1 for d in spec.dilation or ()):
            text += f" dilation {_axes(spec.dilation or ())}"
        pads = resolved.padding
        if len(set(pads)) == 1:
            text += f", pads {pads[0][0]}+{pads[0][1]}"
        else:
            text += ", pads " + "x".join(f"{lo}+{hi}" for lo, hi in pads)
        return text + ")"

    def branch_difference(self, first: str, second: str) -> str:
        """Why two merged inputs disagree: the layer they branch from and each path's windows.

        The shift is also given in cells of the branch point, with the
        windowed layers (kernel, stride, per-side pads) of each path, so a
        reader can see e.g. a pool padded ``0+1`` beside a conv padded ``1+1``.
        """
        above_first, above_second = self.ancestors(first), self.ancestors(second)
        common = above_first & above_second
        if not common:
            return ""
        branch = max(common, key=lambda n: self.order.get(n, -1))
        above_branch = self.ancestors(branch)

        def path(name: str, above: set[str]) -> str:
            windows = [n for n in sorted(above - above_branch, key=lambda n: self.order.get(n, -1))
                       if n in self.resolved and self._windowed(n)]
            return ", ".join(self.window(n) for n in windows) or "no window"

        text = (f"; the paths from {branch}: {first} through {path(first, above_first)}, "
                f"{second} through {path(second, above_second)}")
        field_a, field_b = self.tensors[first].field, self.tensors[second].field
        at_branch = self.tensors[branch].field
        if field_a is not None and field_b is not None and at_branch is not None and field_a.jump == field_b.jump:
            cells = tuple(tidy_number(Fraction(b) - Fraction(a)) if j == 1
                          else tidy_number((Fraction(b) - Fraction(a)) / j)
                          for a, b, j in zip(field_a.center, field_b.center, at_branch.jump))
            text += f" (= {_axes(cells)} cells of {branch}, whose cells are {_axes(at_branch.jump)} input pixels apart)"
        return text

    def _windowed(self, name: str) -> bool:
        resolved = self.resolved[name]
        spec = resolved.spec
        return (any(k != 1 for k in resolved.effective_kernel) or any(s != 1 for s in spec.strides or ())
                or any(lo or hi for lo, hi in resolved.padding))

    def stride_placement(self, node: LayerNode, resolved: ResolvedConv) -> list[str]:
        """A note where a bottleneck's stride could sit on the 1x1 or on the following kxk.

        ResNet's variants differ only there (original/Caffe/Keras: stride on
        the first 1x1; torchvision/Caffe2 "v1.5": on the 3x3); the output
        shapes agree but the field of everything after does not. Given for a
        strided kxk fed (through element-wise layers) by a stride-1 1x1, and
        for a stride-1 kxk fed by a strided 1x1: the field this layer would
        have in the other variant.
        """
        spec = resolved.spec
        if spec.transposed or spec.pool is not None or all(k == 1 for k in resolved.effective_kernel):
            return []
        feeder = self._feeding_conv(node)
        if feeder is None:
            return []
        before = self.tensors[self.nodes[feeder].inputs[0]]
        one = self.resolved[feeder]
        if one.spec.pool is not None or any(k != 1 for k in one.effective_kernel) or before.field is None:
            return []
        if any(lo or hi for lo, hi in one.padding) or any(d != 1 for d in spec.dilation or ()):
            return []
        own_strides, feeder_strides = tuple(spec.strides or ()), tuple(one.spec.strides or ())
        rank = len(own_strides)
        if (all(s == 1 for s in own_strides)) == (all(s == 1 for s in feeder_strides)):
            return []
        moved = own_strides if any(s != 1 for s in own_strides) else feeder_strides
        # the other variant keeps this layer's padding rule: a word ("same") is resolved again at the new stride
        pads: Any = spec.padding if isinstance(spec.padding, str) else resolved.padding
        assert before.spatial is not None
        try:  # the other variant may not fit the input at all (a valid 3x3 on 2x2)
            if any(s != 1 for s in own_strides):  # the other variant: stride on the 1x1
                first = ConvSpec((1,) * rank, strides=moved).resolve(before.spatial)
                second = ConvSpec(spec.kernel_size, strides=1, padding=pads).resolve(first.output_size)
            else:  # the other variant: stride on this kxk
                first = ConvSpec((1,) * rank).resolve(before.spatial)
                second = ConvSpec(spec.kernel_size, strides=moved, padding=pads).resolve(first.output_size)
        except ValueError:
            return []
        if any(s != 1 for s in own_strides):
            where, other = f"this {_axes(spec.kernel_size or ())}", f"the 1x1 {feeder} (original ResNet, Caffe and Keras ResNet-50)"
        else:
            where, other = f"the 1x1 {feeder}", f"this {_axes(spec.kernel_size or ())} (torchvision and Caffe2 ResNet-50, \"v1.5\")"
        if second.output_size != resolved.output_size:
            return []
        actual = before.field.through(one).through(resolved)
        alternative = before.field.through(first).through(second)
        if alternative == actual:
            return []
        return [f"the stride {_axes(moved)} sits on {where}; with it on {other} the field here would be "
                f"{_axes(alternative.size)} (start {_axes(alternative.start)}) instead of {_axes(actual.size)} "
                f"(start {_axes(actual.start)}), same output shape"]

    def residual_branches(self, names: set[str]) -> set[str]:
        """Those of ``names`` that sit on one side only of a residual sum (an Add of two layer paths)."""
        found: set[str] = set()
        for node in self.nodes.values():
            if node.kind != "add" or len(node.inputs) < 2 or not names - found:
                continue
            sides = [self.ancestors(name) for name in node.inputs]
            found |= {n for n in names for side in sides if n in side and any(n not in o for o in sides)}
        return found

    def _feeding_conv(self, node: LayerNode) -> str | None:
        """The convolution feeding ``node`` through single-input element-wise layers, if any."""
        current = node.inputs[0] if len(node.inputs) == 1 else None
        while current is not None and current in self.nodes:
            producer = self.nodes[current]
            if producer.kind == "conv":
                return current if current in self.resolved else None
            if producer.kind not in ("identity", "norm") or len(producer.inputs) != 1:
                return None
            current = producer.inputs[0]
        return None


def _tidy_diff(a: Any, b: Any) -> Any:
    diff = a - b
    if hasattr(diff, "denominator") and diff.denominator == 1:
        return int(diff)
    return diff


def summary_of(model: Any, input_shape: Sequence[int] | None = None) -> ModelSummary:
    """The summary of a model file, a layer graph, or a PyTorch ``nn.Module``.

    This is also what calling the module does: ``convarith.summary(net, (1, 3, 224, 224))``.

    Parameters
    ----------
    model
        A path (``.keras``, ``.onnx``, ``.h5``, ``.pt2``, ``.yaml``/``.json``),
        a :class:`~convarith.io.graph.ModelGraph`, or an ``nn.Module``
        (traced with ``torch.fx`` on a zero tensor of ``input_shape``).
    input_shape
        For a module: the full input shape ``(N, C, spatial...)`` (required).
        Otherwise: the spatial input size, when the file leaves it open.

    Examples
    --------
    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "net.json")
    >>> _ = open(path, "w").write(json.dumps({"input": [28, 28, 1], "layers": ["Conv2D(8, 3)"]}))
    >>> summary_of(path).rows[-1].output_shape
    (None, 26, 26, 8)
    """
    if isinstance(model, ModelGraph):
        return summarize(model, input_shape)
    if isinstance(model, (str, os.PathLike)):
        from .io import read_model

        return summarize(read_model(model, input_shape), input_shape)
    if type(model).__module__.startswith("torch") or hasattr(model, "named_modules"):
        if input_shape is None:
            raise TypeError("a PyTorch module needs input_shape, the full input shape (N, C, H, W)")
        from .io.torch_module import graph_from_module

        return summarize(graph_from_module(model, input_shape))
    raise TypeError(f"model must be a path, a ModelGraph or a torch.nn.Module, got {type(model).__name__}")


class _CallableModule(types.ModuleType):
    """Lets ``convarith.summary(model, input_shape)`` be called like torchinfo's ``summary``."""

    def __call__(self, model: Any, input_shape: Sequence[int] | None = None) -> ModelSummary:
        return summary_of(model, input_shape)


sys.modules[__name__].__class__ = _CallableModule


# --------------------------------------------------------------------------- picture


def draw_field(summary: ModelSummary, cell: Sequence[int], path: str | os.PathLike[str],
               layer: str | None = None, force: bool = False) -> str:
    """Draw the input grid with the receptive field of one output cell (PNG, Pillow).

    ``layer`` picks the layer (default: the last with spatial axes); the file
    is written atomically. Returns the path written.
    """
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise ImportError("drawing needs Pillow: pip install 'convarith[viz]'") from None
    from ._atomic import atomic_path

    row = summary.row(layer) if layer else next(
        (r for r in reversed(summary.rows) if r.field is not None and r.output_shape is not None
         and len(r.output_shape) > 2), None)
    if row is None or row.field is None or row.output_shape is None:
        raise ValueError("no layer with a receptive field to draw" if row is None else
                         f"layer {row.name!r} has no receptive field to draw")
    rank = len(summary.input_size)
    if rank not in (1, 2):
        raise ValueError(f"--png draws 1-D and 2-D inputs, this one has {rank} spatial axes")
    spatial = row.output_shape[1:-1] if summary.data_format == "channels_last" else row.output_shape[2:]
    if len(spatial) != rank:
        raise ValueError(f"layer {row.name!r} is flat (shape {row.output_shape}); pick a layer with "
                         "spatial axes (--layer)")
    index = tuple(int(v) for v in cell)
    if len(index) != rank:
        raise ValueError(f"--cell {','.join(map(str, index))} must have {rank} coordinates")
    for axis, (i, n) in enumerate(zip(index, spatial)):
        if not 0 <= i < (n or 0):
            raise ValueError(f"--cell {','.join(map(str, index))} is outside layer {row.name!r}'s output "
                             f"{'x'.join(map(str, spatial))} (axis {axis})")
    span = row.field.span(index)
    size = summary.input_size if rank == 2 else (1, summary.input_size[0])
    spans = span if rank == 2 else ((0, 0), span[0])
    height, width = size
    lo_y, hi_y = math.floor(spans[0][0]), math.ceil(spans[0][1])
    lo_x, hi_x = math.floor(spans[1][0]), math.ceil(spans[1][1])
    margin_y = max(0, -lo_y, hi_y - height + 1)
    margin_x = max(0, -lo_x, hi_x - width + 1)
    px = max(2, min(24, 640 // max(height + 2 * margin_y, width + 2 * margin_x)))
    image = Image.new("RGB", ((width + 2 * margin_x) * px + 1, (height + 2 * margin_y) * px + 1), "white")
    draw = ImageDraw.Draw(image)
    for y in range(-margin_y, height + margin_y):
        for x in range(-margin_x, width + margin_x):
            inside = 0 <= y < height and 0 <= x < width
            seen = lo_y <= y <= hi_y and lo_x <= x <= hi_x
            color = ("#e4572e" if inside else "#f3b5a5") if seen else ("#dfe6ee" if inside else "#ffffff")
            box = ((x + margin_x) * px, (y + margin_y) * px, (x + margin_x + 1) * px, (y + margin_y + 1) * px)
            draw.rectangle(box, fill=color, outline="#9aa5b1" if px >= 4 else None)
    with atomic_path(path, force=force) as temporary:
        image.save(temporary, format="PNG")
    return os.fspath(path)
