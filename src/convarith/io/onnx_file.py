"""Read an ONNX model's layer graph (needs the optional ``onnx`` package).

Convolutions and pooling go through :func:`convarith.frontdoors.from_onnx`
with their attributes and the weight's shape; parameter counts come from the
initializers each node reads. ``Pad`` with constant zeros becomes padding;
element-wise operators become identities (or merges, when two computed
tensors meet); operators convarith does not model are reported by name.

Examples
--------
>>> read_onnx("missing.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from typing import Any

from .graph import LayerNode, ModelGraph

__all__ = ["read_onnx"]

_IDENTITY = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Dropout", "Identity", "Elu", "Selu",
             "Softplus", "HardSigmoid", "HardSwish", "Softmax", "Erf", "Gelu", "Cast", "Neg", "Abs",
             "Exp", "Log", "Sqrt", "Reciprocal", "PRelu", "LRN"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow"}


def read_onnx(path: str | os.PathLike[str]) -> ModelGraph:
    """The layer graph of an ``.onnx`` file."""
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise ImportError("reading ONNX models needs the onnx package: pip install 'convarith[onnx]'") from None
    name = os.fspath(path)
    try:
        model = onnx.load(name)
    except Exception as error:  # onnx raises DecodeError and friends for a bad file
        raise ValueError(f"{name!r} is not a readable ONNX model ({type(error).__name__})") from None
    graph = model.graph
    initializers = {t.name: tuple(int(d) for d in t.dims) for t in graph.initializer}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producers: dict[str, str] = {}
    nodes: list[LayerNode] = []
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if len(dims) < 3:
            raise ValueError(f"{name!r}: input {value.name!r} has shape {dims}; convarith summarizes "
                             "image-like inputs (N, C, spatial...)")
        nodes.append(LayerNode(value.name, "Input", "input", (), shape=tuple(dims[1:])))
        producers[value.name] = value.name
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            continue
        label = node.name or f"{node.op_type.lower()}_{index}"
        computed = tuple(producers[i] for i in node.input if i in producers)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        params = sum(math.prod(initializers[i]) for i in node.input if i in initializers)
        layer = _layer(node.op_type, attrs, label, computed, node, initializers, constants, params)
        nodes.append(layer)
        for output in node.output:
            producers[output] = label
    return ModelGraph(graph.name or os.path.basename(name), tuple(nodes), data_format="channels_first",
                      source=name)


def _layer(op: str, attrs: dict[str, Any], label: str, inputs: tuple[str, ...], node: Any,
           initializers: dict[str, tuple[int, ...]], constants: dict[str, Any], params: int) -> LayerNode:
    from ..frontdoors import from_onnx

    if op in ("Conv", "ConvTranspose", "MaxPool", "AveragePool"):
        if op in ("Conv", "ConvTranspose"):
            weight = node.input[1] if len(node.input) > 1 else ""
            if weight in initializers:
                attrs = {**attrs, "weight_shape": list(initializers[weight])}
        spec = from_onnx(op, **attrs)
        return LayerNode(label, op, "conv", inputs, spec=spec, params=params,
                         bias=len(node.input) > 2)
    if op in ("GlobalAveragePool", "GlobalMaxPool"):
        return LayerNode(label, op, "global_pool", inputs, units=1)
    if op == "Flatten":
        return LayerNode(label, op, "flatten", inputs)
    if op in ("Gemm", "MatMul"):
        weight = next((initializers[i] for i in node.input if i in initializers and len(initializers[i]) == 2), None)
        if weight is None:
            return LayerNode(label, op, "unknown", inputs, note=f"{op} without a constant weight: not modelled")
        units = weight[0] if attrs.get("transB") else weight[1]
        return LayerNode(label, op, "dense", inputs, units=int(units), params=params)
    if op == "BatchNormalization":
        return LayerNode(label, op, "norm", inputs, params=params)
    if op == "Pad":
        mode = attrs.get("mode", "constant")
        pads = attrs.get("pads")
        if pads is None and len(node.input) > 1 and node.input[1] in constants:
            pads = [int(v) for v in constants[node.input[1]]]
        if mode != "constant" or pads is None:
            return LayerNode(label, op, "unknown", inputs,
                             note=f"Pad (mode {mode!r}) not modelled: assumed to keep the shape")
        half = len(pads) // 2
        begins, ends = pads[:half], pads[half:]
        if begins[:2] != [0, 0] or ends[:2] != [0, 0]:
            return LayerNode(label, op, "unknown", inputs, note="Pad on batch or channel axes: not modelled")
        return LayerNode(label, op, "pad", inputs, padding=tuple(zip(begins[2:], ends[2:])))
    if op in _IDENTITY:
        return LayerNode(label, op, "identity", inputs, params=params)
    if op in _BINARY:
        if len(inputs) >= 2:
            return LayerNode(label, op, "add", inputs)
        return LayerNode(label, op, "identity", inputs, params=params)
    if op == "Concat":
        if attrs.get("axis") != 1:
            return LayerNode(label, op, "unknown", inputs, note=f"Concat on axis {attrs.get('axis')}: not modelled")
        return LayerNode(label, op, "concat", inputs)
    return LayerNode(label, op, "unknown", inputs,
                     note=f"unknown layer type {op!r}: assumed to keep its input's shape")
