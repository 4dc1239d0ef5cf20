"""A small YAML or JSON list of layers, for sketching a network without a framework.

The format::

    name: small-net            # optional
    input: [64, 64, 3]         # spatial sizes, then channels (channels last)
    layers:
      - Conv2D(32, 3, strides=2, padding='same')   # a Keras constructor call (literals only)
      - type: MaxPooling2D                         # or a mapping: type + the layer's arguments
        pool_size: 2
      - {type: Conv2D, filters: 64, kernel_size: 3, name: c3}
      - {type: Conv2D, filters: 64, kernel_size: 1, name: skip, inputs: [pool]}
      - {type: Add, inputs: [c3, skip]}            # branches: name layers, list inputs

Layer types and arguments are Keras 3's (``Conv2D``, ``Conv2DTranspose``,
``DepthwiseConv2D``, ``SeparableConv2D``, ``MaxPooling2D``,
``AveragePooling2D``, ``ZeroPadding2D``, ``Cropping2D``, ``UpSampling2D``,
``GlobalAveragePooling2D``, ``Flatten``, ``Dense``, ``BatchNormalization``,
activations, ``Add``, ``Concatenate``; 1-D and 3-D too). A layer without
``inputs`` reads the previous one; a layer without ``name`` is named after
its type and position. With ``framework: torch`` the constructor calls are
PyTorch's (``Conv2d(3, 32, 3, stride=2, padding=1)``, ``MaxPool2d``,
``AvgPool2d``, ``ConvTranspose2d``, ``BatchNorm2d``, ``ReLU``, ``Flatten``,
``Linear``) and ``input`` is channels first (``[3, 64, 64]``).

Constructor strings are read with :mod:`ast` (literals only, never
evaluated). YAML needs PyYAML (``pip install 'convarith[yaml]'``).

Examples
--------
>>> graph = layers_from_data({"input": [32, 32, 3], "layers": ["Conv2D(8, 3, padding='same')",
...                           {"type": "MaxPooling2D", "pool_size": 2}]})
>>> [(n.name, n.kind) for n in graph.layers]
[('input', 'input'), ('conv2d_1', 'conv'), ('maxpooling2d_2', 'conv')]
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..limits import check_model_layers
from .graph import LayerNode, ModelGraph
from .keras_file import keras_layer_node

__all__ = ["read_layers", "layers_from_data"]


_MAX_TEXT_BYTES = 16 << 20


def read_layers(path: str | os.PathLike[str]) -> ModelGraph:
    """Read a YAML (``.yaml``/``.yml``) or JSON (``.json``) layer list.

    YAML aliases (``*name``) are refused: they are what alias bombs are made
    of, and a layer list never needs them.
    """
    from .keras_file import check_model_file, load_json_text

    name = check_model_file(path)
    try:
        with open(name, "rb") as handle:
            blob = handle.read(_MAX_TEXT_BYTES + 1)
    except OSError as error:
        raise ValueError(f"cannot read {name!r}: {error.strerror}") from None
    if len(blob) > _MAX_TEXT_BYTES:
        raise ValueError(f"{name!r} is over {_MAX_TEXT_BYTES:,} bytes; a layer list is a few kilobytes")
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{name!r} is not UTF-8 text ({error})") from None
    if name.lower().endswith(".json"):
        data = load_json_text(text, repr(name))
    else:
        try:
            import yaml
        except ImportError:
            raise ImportError("reading YAML needs PyYAML: pip install 'convarith[yaml]' "
                              "(or write the layer list as .json)") from None
        try:
            data = yaml.load(text, Loader=_no_alias_loader(yaml))  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as error:
            first = str(error).splitlines()[0] if str(error) else "syntax error"
            raise ValueError(f"{name!r} is not valid YAML: {first}") from None
        except RecursionError:
            raise ValueError(f"{name!r} is nested too deeply") from None
    return layers_from_data(data, source=name)


def _no_alias_loader(yaml: Any) -> Any:
    """PyYAML's SafeLoader, refusing aliases (``*name``)."""

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.YAMLError(f"YAML aliases (*{event.anchor}) are not accepted in a layer "
                                     f"list (line {event.start_mark.line + 1}); write the value out")
            return super().compose_node(parent, index)

    return NoAliasLoader


def layers_from_data(data: Any, source: str = "") -> ModelGraph:
    """The layer graph of an already-parsed layer list (see the module docstring)."""
    where = source or "layer list"
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping with 'input' and 'layers', got {type(data).__name__}")
    unknown = set(data) - {"name", "input", "layers", "framework"}
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; the keys are name, input, "
                         "layers, framework")
    framework = data.get("framework", "keras")
    if framework not in ("keras", "torch"):
        raise ValueError(f"{where}: framework must be 'keras' or 'torch', got {framework!r}")
    shape = data.get("input")
    if not isinstance(shape, list) or len(shape) < 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise ValueError(f"{where}: input must be a list of positive ints, spatial sizes and channels "
                         f"(e.g. [64, 64, 3]), got {shape!r}")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"{where}: layers must be a non-empty list")
    check_model_layers(len(layers), where)
    nodes = [LayerNode("input", "Input", "input", (), shape=tuple(shape))]
    previous = "input"
    names = {"input"}
    for index, entry in enumerate(layers, start=1):
        node = _node(entry, index, previous, framework, where)
        if node.name in names:
            raise ValueError(f"{where}: layer {index}: the name {node.name!r} is used twice")
        names.add(node.name)
        nodes.append(node)
        previous = node.name
    data_format = "channels_first" if framework == "torch" else "channels_last"
    return ModelGraph(str(data.get("name", os.path.basename(source) or "layers")), tuple(nodes),
                      data_format=data_format, source=source)


def _node(entry: Any, index: int, previous: str, framework: str, where: str) -> LayerNode:
    from ..port import parse_layer

    if isinstance(entry, str):
        parsed = parse_layer(entry, framework)
        layer_type, config = parsed.name, dict(parsed.kwargs)
        name, inputs = f"{layer_type.lower()}_{index}", (previous,)
    elif isinstance(entry, dict):
        config = dict(entry)
        layer_type = config.pop("type", None)
        if not isinstance(layer_type, str):
            raise ValueError(f"{where}: layer {index} has no 'type' (e.g. type: Conv2D)")
        name = str(config.pop("name", f"{layer_type.lower()}_{index}"))[:200]
        raw_inputs = config.pop("inputs", [previous])
        if isinstance(raw_inputs, str):
            raw_inputs = [raw_inputs]
        if not isinstance(raw_inputs, list) or not all(isinstance(v, str) for v in raw_inputs):
            raise ValueError(f"{where}: layer {index} ({name}): inputs must be a list of layer names")
        inputs = tuple(raw_inputs)
    else:
        raise ValueError(f"{where}: layer {index} must be a constructor string or a mapping, got {entry!r}")
    try:
        if framework == "torch":
            return _torch_node(layer_type, config, name, inputs)
        return keras_layer_node(layer_type, config, name, inputs)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:
        detail = f"missing argument {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{where}: layer {index} ({layer_type[:80]}): {detail}") from None


def _torch_node(layer_type: str, config: dict[str, Any], name: str, inputs: tuple[str, ...]) -> LayerNode:
    from ..frontdoors import from_torch

    if re.fullmatch(r"(Conv|ConvTranspose|MaxPool|AvgPool)[123]d", layer_type):
        spec = from_torch(layer_type, **config)
        return LayerNode(name, layer_type, "conv", inputs, spec=spec, bias=bool(config.get("bias", True)))
    if re.fullmatch(r"BatchNorm[123]d", layer_type):
        affine = bool(config.get("affine", True))
        return LayerNode(name, layer_type, "norm", inputs, units=2 * int(affine))
    if layer_type == "Linear":
        units = config.get("out_features")
        if units is None:
            raise ValueError("Linear needs out_features")
        return LayerNode(name, layer_type, "dense", inputs, units=int(units), bias=bool(config.get("bias", True)))
    if layer_type == "Flatten":
        return LayerNode(name, layer_type, "flatten", inputs)
    if re.fullmatch(r"Adaptive(Avg|Max)Pool[123]d", layer_type) and config.get("output_size") in (1, [1, 1], (1, 1)):
        return LayerNode(name, layer_type, "global_pool", inputs, units=1)
    if layer_type in ("ReLU", "ReLU6", "GELU", "SiLU", "Sigmoid", "Tanh", "LeakyReLU", "Dropout",
                      "Dropout2d", "Identity", "ELU", "Softmax"):
        return LayerNode(name, layer_type, "identity", inputs)
    return LayerNode(name, layer_type, "unknown", inputs,
                     note=f"unknown layer type {layer_type!r}: assumed to keep its input's shape")
