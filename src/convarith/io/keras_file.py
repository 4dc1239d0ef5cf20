"""Read a Keras 3 ``.keras`` file's architecture: its ``config.json``, nothing else.

A ``.keras`` file is a zip archive holding ``config.json`` (the architecture),
``metadata.json`` and the weights. Only the JSON is read, with :mod:`zipfile`
and :mod:`json`; Keras and TensorFlow are never imported, and nothing in the
file is executed (Lambda layers are reported as unknown).

:func:`keras_layer_node` turns one Keras layer (class name and config) into a
:class:`~convarith.io.graph.LayerNode`; the YAML/JSON layer lists use it too.

Examples
--------
>>> node = keras_layer_node("Conv2D", {"filters": 8, "kernel_size": 3, "padding": "same"}, "c1", ())
>>> node.kind, node.spec.kernel_size
('conv', (3, 3))
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Sequence
from typing import Any

from .graph import LayerNode, ModelGraph

__all__ = ["read_keras", "keras_layer_node", "model_from_keras_config"]

_SPEC_ARGS = ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "groups",
              "output_padding", "depth_multiplier", "pool_size")
_IDENTITY = {"Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D",
             "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
             "Identity", "Rescaling", "ActivityRegularization", "Masking"}
_MERGE = {"Add": "add", "Subtract": "add", "Multiply": "add", "Average": "add", "Maximum": "add",
          "Minimum": "add", "Concatenate": "concat"}


def read_keras(path: str | os.PathLike[str]) -> ModelGraph:
    """The layer graph of a ``.keras`` file.

    Raises
    ------
    ValueError
        The file is not a zip archive, has no ``config.json``, or the JSON is
        not a Keras model config.
    """
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ValueError(f"model file {name!r} does not exist")
    try:
        with zipfile.ZipFile(name) as archive:
            try:
                raw = archive.read("config.json")
            except KeyError:
                raise ValueError(f"{name!r} is a zip archive but not a .keras file: it has no "
                                 "config.json") from None
    except zipfile.BadZipFile:
        raise ValueError(f"{name!r} is not a .keras file (not a zip archive); save the model with "
                         "model.save('model.keras')") from None
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{name!r}: config.json is not valid JSON ({error})") from None
    return model_from_keras_config(config, source=name)


def model_from_keras_config(config: Any, source: str = "") -> ModelGraph:
    """The layer graph of a Keras model config (``Sequential`` or ``Functional``)."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ValueError(f"{source or 'config'}: not a Keras model config (no 'config' mapping)")
    cls = config.get("class_name")
    body = config["config"]
    layers = body.get("layers")
    if not isinstance(layers, list):
        raise ValueError(f"{source or 'config'}: a Keras {cls} config without a 'layers' list")
    model_name = str(body.get("name", cls))
    nodes: list[LayerNode] = []
    warnings: list[str] = []
    if cls == "Sequential":
        previous: tuple[str, ...] = ()
        first = layers[0] if layers else None
        if first is not None and first.get("class_name") != "InputLayer":
            shape = (body.get("build_input_shape") or first.get("build_config", {}).get("input_shape"))
            if shape is None:
                raise ValueError(f"{source}: the Sequential model has no input shape; build it or "
                                 "start it with keras.Input(shape)")
            nodes.append(_input_node("input", shape))
            previous = ("input",)
        for index, layer in enumerate(layers):
            node = _node_from_entry(layer, previous, index)
            nodes.append(node)
            previous = (node.name,)
    elif cls in ("Functional", "Model"):
        for index, layer in enumerate(layers):
            nodes.append(_node_from_entry(layer, _inbound(layer), index))
    else:
        raise ValueError(f"{source or 'config'}: class_name {cls!r} is not a Keras Sequential or "
                         "Functional model")
    return ModelGraph(model_name, tuple(nodes), data_format=_data_format(nodes), source=source,
                      warnings=tuple(warnings))


def _data_format(nodes: Sequence[LayerNode]) -> str:
    for node in nodes:
        if node.spec is not None:
            return node.spec.data_format
    return "channels_last"


def _inbound(layer: dict[str, Any]) -> tuple[str, ...]:
    names: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            history = value.get("config", {}).get("keras_history") if value.get(
                "class_name") == "__keras_tensor__" else None
            if history:
                names.append(str(history[0]))
                return
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(layer.get("inbound_nodes", []))
    return tuple(names)


def _input_node(name: str, batch_shape: Sequence[Any]) -> LayerNode:
    shape = tuple(batch_shape)[1:]
    return LayerNode(name, "InputLayer", "input", (), shape=tuple(None if v is None else int(v) for v in shape))


def _node_from_entry(layer: Any, inputs: tuple[str, ...], index: int) -> LayerNode:
    if not isinstance(layer, dict) or "class_name" not in layer:
        raise ValueError(f"layer {index} is not a Keras layer config: {str(layer)[:80]!r}")
    config = layer.get("config") or {}
    name = str(layer.get("name") or config.get("name") or f"layer_{index}")
    return keras_layer_node(str(layer["class_name"]), config, name, inputs)


def keras_layer_node(class_name: str, config: dict[str, Any], name: str,
                     inputs: tuple[str, ...]) -> LayerNode:
    """One Keras layer as a :class:`LayerNode` (unknown types become ``kind="unknown"``)."""
    if class_name == "InputLayer":
        shape = config.get("batch_shape") or config.get("batch_input_shape")
        if shape is None and config.get("shape") is not None:
            shape = (None, *config["shape"])
        if shape is None:
            raise ValueError(f"InputLayer {name!r} has no batch_shape")
        return _input_node(name, shape)
    match = re.fullmatch(r"(Conv|Convolution|DepthwiseConv|SeparableConv|MaxPooling|MaxPool|"
                         r"AveragePooling|AveragePool|AvgPool)([123])D(Transpose)?", class_name)
    if match:
        from ..frontdoors import from_keras

        args = {k: v for k, v in config.items() if k in _SPEC_ARGS}
        spec = from_keras(class_name, **args)
        units = int(config["filters"]) if match[1] == "SeparableConv" else None
        return LayerNode(name, class_name, "conv", inputs, spec=spec, units=units,
                         bias=bool(config.get("use_bias", True)))
    match = re.fullmatch(r"(ZeroPadding|Cropping|UpSampling)([123])D", class_name)
    if match:
        rank = int(match[2])
        if match[1] == "UpSampling":
            size = config.get("size", 2)
            factor = (int(size),) * rank if isinstance(size, int) else tuple(int(v) for v in size)
            if config.get("interpolation", "nearest") != "nearest":
                note = f"{config['interpolation']} interpolation: receptive field shown for nearest"
            else:
                note = ""
            return LayerNode(name, class_name, "upsample", inputs, factor=factor, note=note)
        key = "padding" if match[1] == "ZeroPadding" else "cropping"
        value = config.get(key, 1)
        return LayerNode(name, class_name, "pad" if key == "padding" else "crop", inputs,
                         padding=_pairs(value, rank))
    if re.fullmatch(r"Global(Average|Max)Pooling[123]D|Global(Avg|Max)Pool[123]D", class_name):
        return LayerNode(name, class_name, "global_pool", inputs,
                         units=1 if config.get("keepdims") else None)
    if class_name == "Flatten":
        return LayerNode(name, class_name, "flatten", inputs)
    if class_name == "Dense":
        return LayerNode(name, class_name, "dense", inputs, units=int(config["units"]),
                         bias=bool(config.get("use_bias", True)))
    if class_name == "BatchNormalization":
        per_channel = 2 + int(bool(config.get("center", True))) + int(bool(config.get("scale", True)))
        return LayerNode(name, class_name, "norm", inputs, units=per_channel)
    if class_name == "LayerNormalization":
        per_channel = int(bool(config.get("center", True))) + int(bool(config.get("scale", True)))
        return LayerNode(name, class_name, "norm", inputs, units=per_channel)
    if class_name in _IDENTITY:
        return LayerNode(name, class_name, "identity", inputs)
    if class_name in _MERGE:
        return LayerNode(name, class_name, _MERGE[class_name], inputs)
    return LayerNode(name, class_name, "unknown", inputs,
                     note=f"unknown layer type {class_name!r}: assumed to keep its input's shape")


def _pairs(value: Any, rank: int) -> tuple[tuple[int, int], ...]:
    if isinstance(value, int):
        return ((value, value),) * rank
    items = list(value)
    if rank == 1 and len(items) == 2 and all(isinstance(v, int) for v in items):
        return ((int(items[0]), int(items[1])),)
    pairs = []
    for item in items:
        if isinstance(item, int):
            pairs.append((item, item))
        else:
            lo, hi = item
            pairs.append((int(lo), int(hi)))
    if len(pairs) != rank:
        raise ValueError(f"padding/cropping {value!r} must have one entry per spatial axis ({rank})")
    return tuple(pairs)
