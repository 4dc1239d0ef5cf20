"""Read an ONNX model's layer graph (needs the optional ``onnx`` package).

The model is read as it ships, without its weights:

* ``onnx.load(..., load_external_data=False)``: a weights file beside the
  model is never opened, and initializers are never converted to arrays
  except the small ones the arithmetic needs (a ``Pad``'s pads, a
  ``Resize``'s scales); weight shapes come from the tensors' metadata, and
  the data of large initializers is dropped before shape inference, so
  memory follows the graph's size, not its weights'.
* Constant subgraphs are folded: a node whose inputs are all constants
  (``ConstantOfShape``, ``Shape`` of a tensor whose shape is known,
  ``Gather``/``Unsqueeze``/``Concat`` of those, an ``Unsqueeze`` of a
  weight) is a constant, not a layer; its value is computed by
  :mod:`onnx.reference` only when a layer needs it and it is small.
* Every tensor's shape comes from ONNX's own shape inference (with data
  propagation); convolutions and pooling go through
  :func:`convarith.frontdoors.from_onnx` with their attributes and the
  weight's shape, so their sizes, padding and receptive fields are
  convarith's own; ``Reshape``/``Transpose``/``Split``/... take the
  inferred shape (channel shuffles keep their spatial geometry); operators
  convarith does not know are reported by name with the inferred shape.

Parameter counts are the sizes of the floating-point constants a layer reads
(weights, biases, normalization statistics, per-channel scales).

Examples
--------
>>> read_onnx("missing.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from ..limits import check_model_layers
from .graph import LayerNode, ModelGraph

__all__ = ["read_onnx"]

#: Constants up to this many elements are converted to arrays (when a layer needs their value).
SMALL_TENSOR = 1 << 16

_IDENTITY = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "Dropout", "Identity", "Elu", "Selu",
             "Softplus", "Softsign", "HardSigmoid", "HardSwish", "Softmax", "LogSoftmax", "Erf", "Gelu",
             "Cast", "Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal", "LRN", "Floor", "Ceil",
             "Round", "Sign", "Not", "ThresholdedRelu", "Celu", "Mish", "Shrink", "Hardmax",
             "Relu6", "Swish", "QuantizeLinear", "DequantizeLinear"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu", "And", "Or",
           "Xor", "Equal", "Greater", "Less", "Where", "BitShift", "Mod"}
_NORM = {"BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"}
_RESHAPE = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Split", "Slice", "Flatten", "Concat",
            "Expand", "Tile", "Gather", "ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin",
            "DepthToSpace", "SpaceToDepth", "Pad", "Resize", "Upsample", "MatMul", "Gemm"}
#: Operators that may produce a large tensor from small inputs: folded only when the output is known small.
_GROWING = {"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad"}
#: Operators whose constant inputs are settings (shapes, pads, scales), not parameters.
_PARAMETRIC = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "PRelu", "Sum",
               "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"}


def read_onnx(path: str | os.PathLike[str], input_size: Sequence[int] | None = None) -> ModelGraph:
    """The layer graph of an ``.onnx`` file.

    Parameters
    ----------
    path
        The model file; external weight files are not read.
    input_size
        Spatial size to give the (first) input before shape inference, when
        the file leaves it open or to try another size.
    """
    try:
        import onnx
    except ImportError:
        raise ImportError("reading ONNX models needs the onnx package: pip install 'convarith[onnx]'") from None
    from .keras_file import check_model_file

    name = check_model_file(path)
    try:
        model = onnx.load(name, load_external_data=False)
    except Exception as error:  # onnx raises DecodeError and friends for a bad file
        raise ValueError(f"{name!r} is not a readable ONNX model ({type(error).__name__})") from None
    graph = model.graph
    check_model_layers(len(graph.node), repr(name))
    reader = _Reader(model, name, input_size)
    return reader.graph()


def _dims(value_info: Any) -> tuple[int | None, ...] | None:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    return tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tensor_type.shape.dim)


class _Reader:
    """One pass over an ONNX graph: constants, shapes, then one LayerNode per computing node."""

    def __init__(self, model: Any, source: str, input_size: Sequence[int] | None) -> None:
        from onnx import TensorProto

        self.model = model
        self.source = source
        graph = model.graph
        self.const_shapes: dict[str, tuple[int, ...]] = {}
        self.const_dtypes: dict[str, int] = {}
        self.values: dict[str, Any] = {}
        self.folded: dict[str, Any] = {}  # constant name -> the node that computes it
        self.small_initializers: dict[str, Any] = {}
        for tensor in graph.initializer:
            shape = tuple(int(d) for d in tensor.dims)
            self.const_shapes[tensor.name] = shape
            self.const_dtypes[tensor.name] = tensor.data_type
            external = tensor.data_location == TensorProto.EXTERNAL
            if not external and math.prod(shape) <= SMALL_TENSOR:
                self.small_initializers[tensor.name] = tensor
            else:  # keep only the metadata: shape inference needs no weights
                for field in ("raw_data", "float_data", "double_data", "int32_data", "int64_data",
                              "uint64_data", "string_data"):
                    tensor.ClearField(field)
                tensor.data_location = TensorProto.DEFAULT
                del tensor.external_data[:]
        self.dtypes: dict[str, int] = {}
        self.inputs = [v for v in graph.input if v.name not in self.const_shapes]
        if input_size is not None and self.inputs:
            self._set_input_size(self.inputs[0], input_size)
        self.shapes = self._infer()
        for value in self.inputs:
            self.shapes[value.name] = _dims(value)

    # ------------------------------------------------------------------ shapes and constants

    def _set_input_size(self, value: Any, input_size: Sequence[int]) -> None:
        dims = value.type.tensor_type.shape.dim
        spatial = list(dims)[2:]
        size = [int(v) for v in input_size]
        if len(size) == 1:
            size = size * len(spatial)
        if len(size) != len(spatial):
            raise ValueError(f"input_size (--input) {tuple(size)} must have {len(spatial)} spatial axes "
                             "(or be one number for all of them)")
        for dim, n in zip(spatial, size):
            dim.dim_value = n

    def _infer(self) -> dict[str, tuple[int | None, ...] | None]:
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, data_prop=True)
        except Exception:  # an invalid or custom graph: go on with the shapes the file states
            inferred = self.model
        shapes: dict[str, tuple[int | None, ...] | None] = {}
        for value in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input):
            shapes[value.name] = _dims(value)
            self.dtypes[value.name] = int(value.type.tensor_type.elem_type)
        return shapes

    def is_constant(self, name: str) -> bool:
        return name == "" or name in self.const_shapes

    def const_shape(self, name: str) -> tuple[int, ...] | None:
        if name in self.const_shapes:
            return self.const_shapes[name]
        return None

    def value(self, name: str) -> Any:
        """The array of a constant, or None when it is large, external or cannot be computed."""
        import numpy as np
        from onnx import numpy_helper

        if name in self.values:
            return self.values[name]
        result = None
        shape = self.const_shapes.get(name)
        if name in self.small_initializers:
            try:
                result = numpy_helper.to_array(self.small_initializers[name])
            except Exception:
                result = None
        elif name in self.folded and (shape is None or math.prod(shape) <= SMALL_TENSOR):
            node = self.folded[name]
            if shape is not None or node.op_type not in _GROWING:
                result = self._evaluate(node, name)
        if result is not None:
            result = np.asarray(result)
            if result.size > SMALL_TENSOR:
                result = None
        self.values[name] = result
        return result

    def _evaluate(self, node: Any, name: str) -> Any:
        if node.op_type in ("Shape", "Size"):
            shape = self.shapes.get(node.input[0])
            if shape is None or any(d is None for d in shape):
                return None
            import numpy as np

            if node.op_type == "Size":
                return np.array(math.prod(shape), np.int64)  # type: ignore[arg-type]
            attrs = _attributes(node)
            start, end = attrs.get("start", 0), attrs.get("end", len(shape))
            return np.array(shape[start:end], np.int64)
        feeds = {}
        for item in node.input:
            if item == "":
                continue
            value = self.value(item)
            if value is None:
                return None
            feeds[item] = value
        try:
            from onnx.reference import ReferenceEvaluator

            outputs = ReferenceEvaluator(node).run(None, feeds)
        except Exception:
            return None
        for output, value in zip(node.output, outputs):
            self.values[output] = value
        return self.values.get(name)

    def _fold(self, node: Any) -> bool:
        """Record ``node`` as a constant if all its inputs are; returns whether it did."""
        if node.op_type in ("Shape", "Size"):
            shape = self.shapes.get(node.input[0]) if node.input else None
            if shape is None or any(d is None for d in shape):
                return False
        elif node.op_type != "Constant" and not all(self.is_constant(i) for i in node.input):
            return False
        for output in node.output:
            if output == "":
                continue
            self.folded[output] = node
            shape = self.shapes.get(output)
            if node.op_type == "Constant":
                shape = _constant_shape(node)
            if shape is not None and all(d is not None for d in shape):
                self.const_shapes[output] = tuple(int(d) for d in shape)  # type: ignore[arg-type]
            else:  # unknown: computed now, if small
                value = self.value(output)
                self.const_shapes[output] = () if value is None else tuple(value.shape)
            self.const_dtypes[output] = self.dtypes.get(output) or _output_dtype(node, self.const_dtypes)
        return True

    # ------------------------------------------------------------------ layers

    def graph(self) -> ModelGraph:
        graph = self.model.graph
        nodes: list[LayerNode] = []
        producers: dict[str, str] = {}
        for value in self.inputs:
            dims = _dims(value) or ()
            if len(dims) < 3:
                raise ValueError(f"{self.source!r}: input {value.name!r} has shape {list(dims)}; convarith "
                                 "summarizes image-like inputs (N, C, spatial...)")
            nodes.append(LayerNode(value.name, "Input", "input", (), shape=tuple(dims[1:])))
            producers[value.name] = value.name
        used: set[str] = {n.name for n in nodes}
        for index, node in enumerate(graph.node):
            if self._fold(node):
                continue
            label = node.name or f"{node.op_type.lower()}_{index}"
            while label in used:
                label += "_"
            computed = tuple(producers[i] for i in node.input if i in producers)
            unknown_inputs = [i for i in node.input if i and i not in producers and not self.is_constant(i)]
            if unknown_inputs:
                raise ValueError(f"{self.source!r}: node {label!r} ({node.op_type}) reads {unknown_inputs[0]!r}, "
                                 "which no earlier node produces (the graph is not in order)")
            if not computed:
                raise ValueError(f"{self.source!r}: node {label!r} ({node.op_type}) reads no tensor")
            attrs = _attributes(node)
            params = self._params(node)
            outputs = [o for o in node.output if o]
            for position, output in enumerate(outputs):
                if position == 0 or node.op_type == "Split":
                    out_label = label if position == 0 else f"{label}:{position}"
                    used.add(out_label)
                    layer = self._layer(node, attrs, out_label, computed, params if position == 0 else 0,
                                        output)
                    nodes.append(layer)
                producers[output] = out_label if node.op_type == "Split" else label
        name = graph.name or os.path.basename(self.source)
        return ModelGraph(name, tuple(nodes), data_format="channels_first", source=self.source)

    def _params(self, node: Any) -> int:
        if node.op_type not in _PARAMETRIC:
            return 0
        from onnx import TensorProto

        floats = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
        total = 0
        for item in node.input:
            if item and item in self.const_shapes and self.const_dtypes.get(item) in floats:
                total += math.prod(self.const_shapes[item])
        return total

    def _out_shape(self, output: str) -> tuple[int, ...] | None:
        shape = self.shapes.get(output)
        if shape is None or len(shape) < 1 or any(d is None for d in shape[1:]):
            return None
        return tuple(int(d) for d in shape[1:])  # type: ignore[arg-type]

    def _layer(self, node: Any, attrs: dict[str, Any], label: str, inputs: tuple[str, ...], params: int,
               output: str) -> LayerNode:
        from ..frontdoors import from_onnx

        op = node.op_type
        shape = self._out_shape(output)
        if op in ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool"):
            if op in ("Conv", "ConvTranspose"):
                weight = self.const_shape(node.input[1]) if len(node.input) > 1 else None
                if weight is None:
                    return self._generic(op, label, inputs, shape, params,
                                         f"{op} whose weight is not a constant: shape from shape inference")
                attrs = {**attrs, "weight_shape": list(weight)}
                rank = len(weight) - 2
            else:
                rank = len(attrs.get("kernel_shape", ()))
            pads = attrs.get("pads")
            if pads is not None and len(pads) != 2 * rank:
                raise ValueError(f"{self.source!r}: node {label!r} ({op}): pads {list(pads)} has {len(pads)} "
                                 f"values, but the layer has {rank} spatial axes, so it needs {2 * rank} "
                                 "(all begins, then all ends)")
            if op == "LpPool":
                op_for_spec, note = "AveragePool", "LpPool: shapes as average pooling"
            else:
                op_for_spec, note = op, ""
            spec = from_onnx(op_for_spec, **attrs)
            in_shape = self.shapes.get(node.input[0])
            if op in ("MaxPool", "AveragePool") and in_shape is not None and all(
                    d is not None for d in in_shape[2:]):
                from .onnx_node import check_same_pool_pads, onnx_same_pool_pads

                spatial = [int(d) for d in in_shape[2:] if d is not None]
                check_same_pool_pads(op, attrs, spatial, label)
                crop = onnx_same_pool_pads(attrs, spatial) if op_for_spec == "AveragePool" else None
                if crop is not None:  # onnxruntime crops there (negative pads)
                    spec = spec.replace(padding=crop)
            return LayerNode(label, op, "conv", inputs, spec=spec, params=params,
                             bias=len(node.input) > 2 and node.input[2] != "", note=note)
        if op in ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"):
            return LayerNode(label, op, "global_pool", inputs, units=1)
        if op == "Flatten" and attrs.get("axis", 1) == 1:
            return LayerNode(label, op, "flatten", inputs)
        if op in ("Gemm", "MatMul"):
            return self._matmul(node, attrs, label, inputs, shape, params)
        if op in _NORM:
            return LayerNode(label, op, "norm", inputs, params=params)
        if op in ("Pad", "Resize", "Upsample"):
            layer = self._resample(node, attrs, label, inputs, shape)
            if layer is not None:
                return layer
        if op in _IDENTITY:
            return LayerNode(label, op, "identity", inputs, params=params)
        if op in _BINARY:
            if len(inputs) >= 2:
                return LayerNode(label, op, "add", inputs, params=params)
            return LayerNode(label, op, "identity", inputs, params=params)
        rank = len(shape) + 1 if shape is not None else 4
        if op == "Concat" and attrs.get("axis") in (1, 1 - rank):
            return LayerNode(label, op, "concat", inputs)
        if op in _RESHAPE:
            return self._generic(op, label, inputs, shape, params, "")
        return self._generic(op, label, inputs, shape, params,
                             f"unknown operator {op!r}: "
                             + ("shape from ONNX shape inference" if shape is not None else
                                "no inferred shape, assumed to keep its input's shape"))

    def _generic(self, op: str, label: str, inputs: tuple[str, ...], shape: tuple[int, ...] | None,
                 params: int, note: str, macs: int | None = None) -> LayerNode:
        if shape is None:
            return LayerNode(label, op, "unknown", inputs, params=params, macs=macs,
                             note=note or f"{op}: no inferred shape, assumed to keep its input's shape")
        kind = "unknown" if note.startswith("unknown") else "reshape"
        return LayerNode(label, op, kind, inputs, shape=shape, params=params, macs=macs, note=note)

    def _matmul(self, node: Any, attrs: dict[str, Any], label: str, inputs: tuple[str, ...],
                shape: tuple[int, ...] | None, params: int) -> LayerNode:
        op = node.op_type
        a_shape = self.shapes.get(node.input[0])
        b_name = node.input[1] if len(node.input) > 1 else ""
        weight = self.const_shape(b_name)
        if op == "Gemm" and weight is not None and len(weight) == 2 and not attrs.get("transA"):
            units = weight[0] if attrs.get("transB") else weight[1]
            bias = len(node.input) > 2 and node.input[2] != ""
            return LayerNode(label, op, "dense", inputs, units=int(units), params=params, bias=bias)
        if (op == "MatMul" and weight is not None and len(weight) == 2 and a_shape is not None
                and len(a_shape) == 2):
            return LayerNode(label, op, "dense", inputs, units=int(weight[1]), params=params, bias=False)
        macs = None
        if shape is not None and a_shape is not None and len(a_shape) >= 2 and a_shape[-1] is not None:
            inner = a_shape[0 if op == "Gemm" and attrs.get("transA") else -1]
            if inner is not None:
                macs = math.prod(shape) * int(inner)
        return self._generic(op, label, inputs, shape, params, "", macs)

    def _resample(self, node: Any, attrs: dict[str, Any], label: str, inputs: tuple[str, ...],
                  shape: tuple[int, ...] | None) -> LayerNode | None:
        op = node.op_type
        if op == "Pad":
            pads = attrs.get("pads")
            if pads is None and len(node.input) > 1:
                value = self.value(node.input[1])
                pads = None if value is None else [int(v) for v in value.reshape(-1)]
            axes = None
            if len(node.input) > 3 and node.input[3]:
                value = self.value(node.input[3])
                axes = None if value is None else [int(v) for v in value.reshape(-1)]
            in_shape = self.shapes.get(node.input[0])
            if pads is None or in_shape is None or axes is not None:
                return None
            rank = len(in_shape)
            if len(pads) != 2 * rank:
                raise ValueError(f"{self.source!r}: node {label!r} (Pad): pads {pads} has {len(pads)} values, "
                                 f"but its input has {rank} axes, so it needs {2 * rank}")
            begins, ends = pads[:rank], pads[rank:]
            if begins[:2] != [0, 0] or ends[:2] != [0, 0] or min(pads) < 0:
                return None
            mode = attrs.get("mode", "constant")
            note = "" if mode == "constant" else f"{mode} padding: receptive field shown as for zeros"
            return LayerNode(label, op, "pad", inputs, padding=tuple(zip(begins[2:], ends[2:])), note=note)
        in_shape = self.shapes.get(node.input[0])
        if shape is None or in_shape is None or len(in_shape) != len(shape) + 1:
            return None
        if in_shape[1] != shape[0] or any(d is None for d in in_shape):
            return None
        factors = []
        for n_in, n_out in zip(in_shape[2:], shape[1:]):
            if n_in is None or n_in == 0 or n_out % n_in:
                return None
            factors.append(n_out // n_in)
        mode = attrs.get("mode", "nearest")
        note = "" if mode == "nearest" else f"{mode} interpolation: receptive field shown for nearest"
        return LayerNode(label, op, "upsample", inputs, factor=tuple(factors), note=note)


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}


def _constant_shape(node: Any) -> tuple[int, ...] | None:
    for attribute in node.attribute:
        if attribute.name == "value":
            return tuple(int(d) for d in attribute.t.dims)
        if attribute.name in ("value_float", "value_int", "value_string"):
            return ()
        if attribute.name in ("value_floats", "value_ints", "value_strings"):
            from onnx import helper

            return (len(helper.get_attribute_value(attribute)),)
    return None


def _output_dtype(node: Any, known: dict[str, int]) -> int:
    from onnx import TensorProto

    if node.op_type == "Constant":
        for attribute in node.attribute:
            if attribute.name == "value":
                return int(attribute.t.data_type)
            if attribute.name in ("value_float", "value_floats"):
                return TensorProto.FLOAT
        return TensorProto.INT64
    if node.op_type == "ConstantOfShape":
        for attribute in node.attribute:
            if attribute.name == "value":
                return int(attribute.t.data_type)
        return TensorProto.FLOAT
    if node.op_type in ("Shape", "Size"):
        return TensorProto.INT64
    return next((known[i] for i in node.input if i in known), TensorProto.FLOAT)
