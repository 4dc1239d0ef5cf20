"""PyTorch modules and saved ``torch.export`` programs as a layer graph (needs torch).

:func:`graph_from_module` traces an ``nn.Module`` with :mod:`torch.fx` and
runs :class:`~torch.fx.passes.shape_prop.ShapeProp` on a zero tensor of
``input_shape`` (batch included), so every tensor's shape is the one the
module really produces; convolutions and pooling become convarith specs
(through :func:`convarith.frontdoors.from_torch`, so their receptive fields
and dropped rows are convarith's own), and everything else takes its traced
shape. :func:`read_pt2` does the same for a program saved with
``torch.export.save`` (shapes from the program's own metadata; nothing is
run).

Examples
--------
>>> import torch  # doctest: +SKIP
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU())  # doctest: +SKIP
>>> graph_from_module(net, (1, 3, 32, 32)).layers[1].spec.strides  # doctest: +SKIP
(2, 2)
"""

from __future__ import annotations

import operator
import os
from collections.abc import Sequence
from typing import Any

from ..limits import check_model_layers
from .graph import LayerNode, ModelGraph

__all__ = ["graph_from_module", "read_pt2"]

_IDENTITY_MODULES = {"ReLU", "ReLU6", "GELU", "SiLU", "Sigmoid", "Tanh", "LeakyReLU", "Dropout", "Dropout2d",
                     "Dropout3d", "Identity", "ELU", "Softmax", "Hardswish", "Hardsigmoid", "Mish", "PReLU",
                     "LocalResponseNorm", "SELU", "Softplus", "LogSoftmax"}
_IDENTITY_FUNCTIONS = {"relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "leaky_relu", "dropout",
                       "hardswish", "hardsigmoid", "softmax", "log_softmax", "elu", "clamp", "clip",
                       "contiguous", "hardtanh", "mish", "float", "to", "clone", "detach"}
_MERGE_FUNCTIONS = {"add", "iadd", "mul", "imul", "sub", "truediv", "__add__", "__mul__", "add_", "mul_"}


def _shape_of(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    if meta is None:
        value = node.meta.get("val")
        shape = getattr(value, "shape", None)
    else:
        shape = getattr(meta, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        return None


def _name(target: Any) -> str:
    return str(getattr(target, "__name__", target)).split(".")[-1]


def graph_from_module(module: Any, input_shape: Sequence[int], name: str | None = None) -> ModelGraph:
    """The layer graph of ``module`` run on a tensor of ``input_shape`` (``(N, C, spatial...)``).

    Raises
    ------
    TypeError
        ``module`` is not an ``nn.Module`` or ``input_shape`` not a sequence of ints.
    ValueError
        The module cannot be traced by ``torch.fx`` (data-dependent control
        flow), or fails on a tensor of that shape.
    """
    try:
        import torch
        from torch.fx import symbolic_trace
        from torch.fx.passes.shape_prop import ShapeProp
    except ImportError:
        raise ImportError("summarizing PyTorch modules needs torch: pip install torch") from None
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_shape):
        raise TypeError(f"input_shape must be a sequence of positive ints (N, C, spatial...), got {input_shape!r}")
    if len(input_shape) < 3:
        raise ValueError(f"input_shape {tuple(input_shape)} must be (N, C, spatial...), at least 3 axes")
    try:
        traced = symbolic_trace(module)
    except Exception as error:
        raise ValueError(f"torch.fx cannot trace {type(module).__name__} ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}); remove data-dependent "
                         "control flow or save it with torch.export") from None
    check_model_layers(len(traced.graph.nodes), type(module).__name__)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            ShapeProp(traced).propagate(torch.zeros(tuple(input_shape)))
    except Exception as error:
        raise ValueError(f"{type(module).__name__} fails on an input of shape {tuple(input_shape)}: "
                         f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None
    finally:
        module.train(was_training)
    modules = dict(traced.named_modules())
    layers: list[LayerNode] = []
    produced: set[str] = set()
    for node in traced.graph.nodes:
        if node.op == "output":
            continue
        inputs = tuple(n.name for n in node.all_input_nodes if n.name in produced)
        shape = _shape_of(node)
        if node.op == "placeholder":
            if layers:
                continue
            layers.append(LayerNode(node.name, "Input", "input", (), shape=tuple(input_shape[1:])))
        elif node.op == "get_attr" or not inputs:
            continue  # parameters and constants
        elif node.op == "call_module":
            layers.append(_module_layer(node.name, modules[node.target], inputs, shape))
        else:
            layers.append(_function_layer(node, inputs, shape))
        produced.add(node.name)
    return ModelGraph(name or type(module).__name__, tuple(layers), data_format="channels_first",
                      source=type(module).__name__)


def _own_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _module_layer(label: str, module: Any, inputs: tuple[str, ...], shape: tuple[int, ...] | None) -> LayerNode:
    from ..frontdoors import from_torch

    kind = type(module).__name__
    out = None if shape is None else shape[1:]
    if kind in ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"):
        args = dict(in_channels=module.in_channels, out_channels=module.out_channels,
                    kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
                    dilation=module.dilation, groups=module.groups, bias=module.bias is not None)
        if kind.startswith("ConvTranspose"):
            args["output_padding"] = module.output_padding
        else:
            args["padding_mode"] = module.padding_mode
        spec = from_torch(kind, **args)
        return LayerNode(label, kind, "conv", inputs, spec=spec, params=_own_params(module),
                         bias=module.bias is not None)
    if kind in ("MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d"):
        args = dict(kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
                    ceil_mode=module.ceil_mode)
        if kind.startswith("Max"):
            args["dilation"] = module.dilation
        else:
            args["count_include_pad"] = module.count_include_pad
        return LayerNode(label, kind, "conv", inputs, spec=from_torch(kind, **args))
    if kind.startswith("Adaptive") and out is not None and all(v == 1 for v in out[1:]):
        return LayerNode(label, kind, "global_pool", inputs, units=1)
    if kind.startswith(("BatchNorm", "InstanceNorm", "GroupNorm", "LayerNorm")):
        return LayerNode(label, kind, "norm", inputs, params=_own_params(module))
    if kind == "Linear" and out is not None and len(out) == 1:
        return LayerNode(label, kind, "dense", inputs, units=module.out_features, params=_own_params(module),
                         bias=module.bias is not None)
    if kind == "Flatten" and module.start_dim == 1 and module.end_dim == -1:
        return LayerNode(label, kind, "flatten", inputs)
    if kind in _IDENTITY_MODULES:
        return LayerNode(label, kind, "identity", inputs, params=_own_params(module))
    if out is None:
        return LayerNode(label, kind, "unknown", inputs, params=_own_params(module),
                         note=f"module {kind}: no traced shape, assumed to keep its input's shape")
    return LayerNode(label, kind, "reshape", inputs, shape=out, params=_own_params(module),
                     note="" if kind in ("Unflatten", "ChannelShuffle", "PixelShuffle", "Upsample")
                     else f"module {kind}: shape as traced")


def _function_layer(node: Any, inputs: tuple[str, ...], shape: tuple[int, ...] | None) -> LayerNode:
    target = _name(node.target)
    out = None if shape is None else shape[1:]
    label = node.name
    if target in _IDENTITY_FUNCTIONS:
        return LayerNode(label, target, "identity", inputs)
    if target in _MERGE_FUNCTIONS or node.target in (operator.add, operator.mul, operator.iadd):
        if len(inputs) >= 2:
            return LayerNode(label, target, "add", inputs)
        return LayerNode(label, target, "identity", inputs)
    if target == "cat":
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if dim == 1:
            return LayerNode(label, target, "concat", inputs)
    if target == "flatten" and out is not None and len(out) == 1:
        start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
        if start == 1:
            return LayerNode(label, target, "flatten", inputs)
    if target in ("adaptive_avg_pool2d", "adaptive_max_pool2d") and out is not None and all(v == 1 for v in out[1:]):
        return LayerNode(label, target, "global_pool", inputs, units=1)
    if out is None:
        return LayerNode(label, target, "unknown", inputs,
                         note=f"{target}: no traced shape, assumed to keep its input's shape")
    return LayerNode(label, target, "reshape", inputs, shape=out)


def read_pt2(path: str | os.PathLike[str]) -> ModelGraph:
    """The layer graph of a program saved with ``torch.export.save`` (``.pt2``), without running it."""
    from .keras_file import check_model_file

    name = check_model_file(path)
    try:
        import torch
    except ImportError:
        raise ImportError("reading .pt2 programs needs torch: pip install torch") from None
    try:
        program = torch.export.load(name)
    except Exception as error:
        raise ValueError(f"{name!r} is not a readable torch.export program ({type(error).__name__})") from None
    graph = program.graph_module.graph
    check_model_layers(len(graph.nodes), repr(name))
    signature = program.graph_signature
    user_inputs = set(signature.user_inputs)
    parameter_inputs = {spec.arg.name for spec in signature.input_specs if spec.kind.name in ("PARAMETER",)}
    constant_inputs = {spec.arg.name for spec in signature.input_specs} - user_inputs
    layers: list[LayerNode] = []
    produced: set[str] = set()
    for node in graph.nodes:
        if node.op == "output":
            continue
        shape = _shape_of(node)
        if node.op == "placeholder":
            if node.name in user_inputs and not layers:
                if shape is None or len(shape) < 3:
                    raise ValueError(f"{name!r}: input {node.name!r} has shape {shape}; convarith summarizes "
                                     "image-like inputs (N, C, spatial...)")
                layers.append(LayerNode(node.name, "Input", "input", (), shape=shape[1:]))
                produced.add(node.name)
            continue
        inputs = tuple(n.name for n in node.all_input_nodes if n.name in produced)
        if not inputs:
            continue
        weights = [n for n in node.all_input_nodes if n.name in constant_inputs]
        params = sum(_count(_shape_of(n)) for n in weights if n.name in parameter_inputs)
        layers.append(_aten_layer(node, inputs, shape, weights, params))
        produced.add(node.name)
    return ModelGraph(os.path.basename(name), tuple(layers), data_format="channels_first", source=name)


def _count(shape: tuple[int, ...] | None) -> int:
    total = 1
    for v in shape or ():
        total *= v
    return total if shape is not None else 0


def _aten_layer(node: Any, inputs: tuple[str, ...], shape: tuple[int, ...] | None, weights: list[Any],
                params: int) -> LayerNode:
    from ..frontdoors import from_torch

    target = _name(getattr(node.target, "_opname", None) or node.target)
    label = node.name
    out = None if shape is None else shape[1:]
    args = node.args
    if target in ("convolution", "conv1d", "conv2d", "conv3d") and _shape_of(args[1]) is not None:
        weight_shape = _shape_of(args[1])
        assert weight_shape is not None
        rank = len(weight_shape) - 2

        def arg(index: int, default: Any) -> Any:
            return args[index] if len(args) > index and args[index] is not None else default

        if target == "convolution":  # (x, w, b, stride, padding, dilation, transposed, output_padding, groups)
            transposed, groups = bool(arg(6, False)), int(arg(8, 1))
        else:  # (x, w, b, stride, padding, dilation, groups)
            transposed, groups = False, int(arg(6, 1))
        bias = len(args) > 2 and args[2] is not None
        kwargs: dict[str, Any] = dict(
            in_channels=weight_shape[0] if transposed else weight_shape[1] * groups,
            out_channels=weight_shape[1] * groups if transposed else weight_shape[0],
            kernel_size=tuple(weight_shape[2:]), stride=list(arg(3, [1] * rank)),
            padding=list(arg(4, [0] * rank)), dilation=list(arg(5, [1] * rank)), groups=groups, bias=bias)
        if transposed:
            kwargs["output_padding"] = list(arg(7, [0] * rank))
        layer = f"ConvTranspose{rank}d" if transposed else f"Conv{rank}d"
        return LayerNode(label, target, "conv", inputs, spec=from_torch(layer, **kwargs), params=params, bias=bias)
    if target in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "max_pool1d", "avg_pool1d",
                  "max_pool3d", "max_pool3d_with_indices", "avg_pool3d"):
        kernel = list(args[1])
        rank = len(kernel)
        stride = list(args[2]) if len(args) > 2 and args[2] else kernel
        padding = list(args[3]) if len(args) > 3 else 0
        kwargs = dict(kernel_size=kernel, stride=stride, padding=padding)
        if target.startswith("max"):
            kwargs["dilation"] = list(args[4]) if len(args) > 4 else 1
            kwargs["ceil_mode"] = bool(args[5]) if len(args) > 5 else False
            layer = f"MaxPool{rank}d"
        else:
            kwargs["ceil_mode"] = bool(args[4]) if len(args) > 4 else False
            kwargs["count_include_pad"] = bool(args[5]) if len(args) > 5 else True
            layer = f"AvgPool{rank}d"
        return LayerNode(label, target, "conv", inputs, spec=from_torch(layer, **kwargs))
    if target in ("adaptive_avg_pool2d", "mean") and out is not None and len(out) >= 2 and all(
            v == 1 for v in out[1:]):
        return LayerNode(label, target, "global_pool", inputs, units=1)
    if target in ("_native_batch_norm_legit_no_training", "batch_norm", "_native_batch_norm_legit",
                  "native_batch_norm", "layer_norm", "group_norm"):
        return LayerNode(label, target, "norm", inputs, params=params)
    if target in ("linear", "addmm") and out is not None and len(out) == 1:
        return LayerNode(label, target, "dense", inputs, units=out[0], params=params)
    if target in ("add", "add_", "mul", "mul_", "sub") and len(inputs) >= 2:
        return LayerNode(label, target, "add", inputs)
    if target == "cat" and (args[1] if len(args) > 1 else 0) == 1:
        return LayerNode(label, target, "concat", inputs)
    if target in ("relu", "relu_", "hardtanh", "hardtanh_", "sigmoid", "silu", "silu_", "gelu", "dropout",
                  "clone", "hardswish", "hardswish_", "_softmax", "softmax", "clamp", "detach", "alias",
                  "add", "mul", "_to_copy", "contiguous", "getitem"):
        return LayerNode(label, target, "identity", inputs, params=params)
    if out is None:
        return LayerNode(label, target, "unknown", inputs, params=params,
                         note=f"{target}: no shape in the program, assumed to keep its input's shape")
    return LayerNode(label, target, "reshape", inputs, shape=out, params=params)
