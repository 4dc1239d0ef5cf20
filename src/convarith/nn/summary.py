"""The text of ``Sequential.summary()``: shapes, parameters, receptive fields, dropped rows.

The receptive field (cells of the model input one output cell sees) and the
jump (input cells between neighbouring output cells) come from each layer's
resolved spec through :mod:`convarith.receptive`: ``r_out = r_in + (K_eff - 1)
jump_in``, ``jump_out = jump_in S`` (equivalently, read backwards,
``r_in = r_out S + (K_eff - S)``).

Examples
--------
>>> from convarith.nn import Sequential, Input, Conv2D
>>> model = Sequential([Input((12, 12, 1)), Conv2D(1, 3, strides=2), Conv2D(1, 3, dilation_rate=2)])
>>> print(summary_text(model).splitlines()[4])  # doctest: +NORMALIZE_WHITESPACE
conv2d_1 (Conv2D)  (None, 1, 1, 1)  10  11x11  2x2
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..receptive import ReceptiveField
from .layers import format_shape

if TYPE_CHECKING:
    from .models import Sequential

__all__ = ["summary_rows", "summary_text"]

def _axis_name(axis: int, rank: int) -> str:
    names = {1: ("step",), 2: ("row", "column"), 3: ("plane", "row", "column")}[rank]
    return names[axis]


def _cells(values: tuple[Any, ...]) -> str:
    return "x".join(str(v) for v in values)


def summary_rows(model: Sequential) -> tuple[list[dict[str, Any]], list[str]]:
    """One dict per layer (name, type, output_shape, params, field, jump) and warnings."""
    model._require_built("the summary")
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    field: ReceptiveField | None = None
    whole = False
    for layer in model.layers:
        resolved = layer.resolved()
        if resolved is not None and not whole:
            if field is None or len(field.size) != resolved.rank:
                field = ReceptiveField.identity(resolved.rank)
            field = field.through(resolved)
            open_sizes = any(v is None for v in (layer.input_shape or ()))
            for axis, dropped in enumerate(resolved.dropped):
                if dropped and not open_sizes:  # an open size was resolved at a stand-in
                    spec = resolved.spec
                    noun = _axis_name(axis, resolved.rank)
                    noun = noun + "s" if dropped > 1 else noun
                    warnings.append(
                        f"{layer.name}: the last {dropped} {noun} of "
                        f"{resolved.input_size[axis]} {'are' if dropped > 1 else 'is'} never read (effective kernel "
                        f"{resolved.effective_kernel[axis]}, stride {spec.strides[axis]}, "
                        f"padding {resolved.padding[axis]}); "
                        + ("a stride no larger than the kernel reads every row"
                           if spec.padding == "same" else
                           "pad with 'same' or choose sizes where (I + P - K_eff) is divisible by S")
                    )
        elif type(layer).__name__ == "Dense" or type(layer).__name__.startswith("Global"):
            whole = whole or field is not None
        assert layer.output_shape is not None
        rows.append({
            "name": layer.name,
            "type": type(layer).__name__,
            "output_shape": (None, *layer.output_shape),
            "params": layer.count_params(),
            "field": "all" if whole else (None if field is None else field.size),
            "jump": None if whole or field is None else field.jump,
        })
    return rows, warnings


def summary_text(model: Sequential) -> str:
    """The summary table as text (what ``model.summary()`` prints)."""
    rows, warnings = summary_rows(model)
    table = [("Layer (type)", "Output Shape", "Param #", "Receptive field", "Jump")]
    for row in rows:
        field = row["field"]
        table.append((
            f"{row['name']} ({row['type']})",
            format_shape(row["output_shape"]),
            str(row["params"]),
            "-" if field is None else field if isinstance(field, str) else _cells(field),
            "-" if row["jump"] is None else _cells(row["jump"]),
        ))
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    rule = "-" * (sum(widths) + 8)

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i == 2 and cells is not table[0] else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    trainable = sum(
        layer.variables[name].size
        for layer in model.layers if layer.trainable for name in layer.trainable_names
    )
    total = model.count_params()
    out = [f'Model: "{model.name}"', rule, line(table[0]), *(line(r) for r in table[1:]), rule,
           f"Total params: {total}", f"Trainable params: {trainable}",
           f"Non-trainable params: {total - trainable}"]
    if warnings:
        out.append("Warnings:")
        out.extend(f"  {w}" for w in warnings)
    return "\n".join(out)


def _graph_node(node: Any, name: str, inputs: tuple[str, ...], first_call: bool) -> Any:
    """A :class:`~convarith.io.graph.LayerNode` for one call of a convarith.nn layer."""
    from ..io.graph import LayerNode

    layer = node.layer
    kind_name = type(layer).__name__
    params = layer.count_params() if first_call else 0
    common: dict[str, Any] = {"inputs": inputs, "params": params}
    if kind_name == "InputLayer":
        return LayerNode(name, kind_name, "input", shape=tuple(layer.shape or ()))
    if hasattr(layer, "_make_spec"):
        units = layer.filters if kind_name.startswith("SeparableConv") else None
        return LayerNode(name, kind_name, "conv", spec=layer._make_spec(), units=units,
                         bias=getattr(layer, "use_bias", True), **common)
    if getattr(layer, "pool", None) is not None and hasattr(layer, "spec"):
        return LayerNode(name, kind_name, "conv", spec=layer.spec, **common)
    if kind_name.startswith("ZeroPadding"):
        return LayerNode(name, kind_name, "pad", padding=layer.padding, **common)
    if kind_name.startswith("Cropping"):
        return LayerNode(name, kind_name, "crop", padding=layer.cropping, **common)
    if kind_name.startswith("UpSampling"):
        return LayerNode(name, kind_name, "upsample", factor=tuple(layer.size), **common)
    if kind_name.startswith("Global"):
        return LayerNode(name, kind_name, "global_pool", units=1 if layer.keepdims else None,
                         **common)
    kinds = {"Flatten": "flatten", "Dense": "dense", "BatchNormalization": "norm",
             "Concatenate": "concat", "Add": "add", "Subtract": "add", "Multiply": "add",
             "Average": "add", "Maximum": "add", "Minimum": "add", "Reshape": "unknown",
             "Permute": "unknown"}
    kind = kinds.get(kind_name, "identity")
    units = getattr(layer, "units", None) if kind == "dense" else None
    return LayerNode(name, kind_name, kind, units=units, bias=getattr(layer, "use_bias", True),
                     **common)


def functional_summary_text(model: Any) -> str:
    """The summary of a functional :class:`~convarith.nn.Model`: one row per layer call,
    with what it reads; receptive fields through every branch from
    :func:`convarith.summary.summarize` (``all`` once a cell sees the whole input)."""
    from ..io.graph import ModelGraph
    from ..summary import summarize
    from .layers import OPEN_STAND_IN

    names: dict[int, str] = {}
    calls: dict[int, int] = {}
    graph_nodes = []
    for node in model.nodes:
        count = calls.get(id(node.layer), 0)
        calls[id(node.layer)] = count + 1
        name = node.layer.name if count == 0 else f"{node.layer.name}@{count}"
        names[id(node.output)] = name
        inputs = tuple(names[id(t)] for t in node.inputs)
        graph_nodes.append(_graph_node(node, name, inputs, count == 0))
    first = model.inputs[0].shape
    input_size = tuple(OPEN_STAND_IN if v is None else v for v in first[:-1])
    try:
        rows = summarize(ModelGraph(model.name, tuple(graph_nodes)), input_size=input_size).rows
        fields = {row.name: row.field for row in rows}
    except ValueError:  # inputs without spatial axes, channels-first data...
        fields = {}
    table = [("Layer (type)", "Output Shape", "Param #", "Receptive field", "Jump", "Reads")]
    for node, graph_node in zip(model.nodes, graph_nodes):
        field = fields.get(graph_node.name)
        if field is None:
            size = jump = "-"
        elif max(field.size) >= OPEN_STAND_IN or (
                len(node.output.shape) == 1 and field.size == tuple(input_size)):
            size, jump = "all", "-"
        else:
            size, jump = _cells(field.size), _cells(field.jump)
        table.append((f"{graph_node.name} ({graph_node.type})", format_shape((None, *node.output.shape)),
                      str(graph_node.params or 0), size, jump, ", ".join(graph_node.inputs) or "-"))
    widths = [max(len(r[i]) for r in table) for i in range(6)]
    rule = "-" * (sum(widths) + 10)

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i == 2 and cells is not table[0] else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    trainable = sum(layer.variables[name].size for layer in model.layers if layer.trainable
                    for name in layer.trainable_names)
    total = model.count_params()
    return "\n".join([f'Model: "{model.name}"', rule, line(table[0]),
                      *(line(r) for r in table[1:]), rule, f"Total params: {total}",
                      f"Trainable params: {trainable}",
                      f"Non-trainable params: {total - trainable}"])
