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
import stat
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..limits import check_model_layers
from .graph import LayerNode, ModelGraph

__all__ = ["read_keras", "read_keras_h5", "read_keras_archive", "ArchiveLimits", "keras_layer_node",
           "model_from_keras_config", "check_model_file", "load_json_text"]

_SPEC_ARGS = ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "groups",
              "output_padding", "depth_multiplier", "pool_size")
_IDENTITY = {"Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D",
             "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
             "Identity", "Rescaling", "ActivityRegularization", "Masking"}
_MERGE = {"Add": "add", "Subtract": "add", "Multiply": "add", "Average": "add", "Maximum": "add",
          "Minimum": "add", "Concatenate": "concat"}


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what a ``.keras`` archive may unpack to, checked while reading.

    Attributes
    ----------
    max_config_bytes
        Decompressed size of ``config.json`` (real models: kilobytes to a few MB).
    max_weights_bytes
        Decompressed size of ``model.weights.h5``.
    max_ratio
        Decompressed size over compressed size of one member, checked once a
        member passes 1 MiB (JSON compresses about 10x, a zip bomb 1000x).
    max_json_depth
        Nesting depth of ``config.json`` (Keras configs nest about 10 deep).
    """

    max_config_bytes: int = 64 << 20
    max_weights_bytes: int = 8 << 30
    max_ratio: int = 200
    max_json_depth: int = 64


def check_model_file(path: str | os.PathLike[str]) -> str:
    """``path`` as a string, if it names a regular file; otherwise a ValueError saying what it is.

    >>> check_model_file(".")
    Traceback (most recent call last):
    ...
    ValueError: model file '.' is a folder, not a file; give the model file inside it
    """
    name = os.fspath(path)
    try:
        mode = os.stat(name).st_mode
    except FileNotFoundError:
        raise ValueError(f"model file {name!r} does not exist") from None
    except OSError as error:
        raise ValueError(f"model file {name!r} cannot be read: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"model file {name!r} is a folder, not a file; give the model file inside it")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise ValueError(f"model file {name!r} is {kind}, not a regular file; save the model to a file")
    return name


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a number JSON allows")


def load_json_text(raw: bytes | str, where: str, max_depth: int = 64) -> Any:
    """Parse JSON that came from a file: no NaN/Infinity, nesting at most ``max_depth``.

    >>> load_json_text('{"a": [1, 2]}', "config.json")
    {'a': [1, 2]}
    """
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply (over {max_depth} levels)") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as error:
        raise ValueError(f"{where} is not valid JSON ({error})") from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(f"{where} is nested too deeply (over {max_depth} levels)")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return value


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, limits: ArchiveLimits,
                 where: str) -> bytes:
    """One member's bytes, decompressed in chunks and refused as soon as a cap is passed."""
    if info.flag_bits & 0x1:
        raise ValueError(f"{where}: {info.filename} is encrypted; save the model without a password")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(f"{where}: {info.filename} uses compression method {info.compress_type}, "
                         "not stored or deflate as Keras writes; re-save the model with model.save()")
    if info.file_size > cap:
        raise ValueError(f"{where}: {info.filename} would unpack to {info.file_size:,} bytes, over the "
                         f"cap of {cap:,}")
    chunks: list[bytes] = []
    total = 0
    try:
        with archive.open(info) as member:
            while True:
                chunk = member.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if total > cap:
                    raise ValueError(f"{where}: {info.filename} unpacks to more than {cap:,} bytes "
                                     "(the cap); is it a zip bomb?")
                if total > (1 << 20) and total > limits.max_ratio * max(info.compress_size, 1):
                    raise ValueError(f"{where}: {info.filename} unpacks over {limits.max_ratio} times "
                                     f"its compressed size ({info.compress_size:,} bytes); is it a "
                                     "zip bomb?")
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as error:
        raise ValueError(f"{where}: {info.filename} cannot be unpacked ({error}); the archive is "
                         "damaged") from None
    return b"".join(chunks)


def read_keras_archive(path: str | os.PathLike[str], limits: ArchiveLimits | None = None,
                       weights: bool = False) -> tuple[dict[str, Any], bytes | None]:
    """The ``config.json`` mapping of a ``.keras`` file, and ``model.weights.h5``'s bytes if asked.

    Every member is checked before and while it is unpacked (encryption,
    compression method, decompressed size and ratio, JSON depth, no
    NaN/Infinity), so a hostile archive ends in one ValueError, quickly and
    in bounded memory.

    Parameters
    ----------
    path
        The ``.keras`` file.
    limits
        The caps (default :class:`ArchiveLimits()`).
    weights
        Also return ``model.weights.h5``'s bytes (``None`` otherwise).

    Examples
    --------
    >>> import io, json, os, tempfile, zipfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> with zipfile.ZipFile(path, "w") as z:
    ...     z.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"layers": []}}))
    >>> read_keras_archive(path)[0]["class_name"]
    'Sequential'
    """
    limits = limits or ArchiveLimits()
    name = check_model_file(path)
    try:
        archive = zipfile.ZipFile(name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as error:
        detail = "not a zip archive" if isinstance(error, zipfile.BadZipFile) else str(error)
        raise ValueError(f"{name!r} is not a .keras file ({detail}); save the model with "
                         "model.save('model.keras')") from None
    with archive:
        try:
            info = archive.getinfo("config.json")
        except KeyError:
            raise ValueError(f"{name!r} is a zip archive but not a .keras file: it has no "
                             "config.json") from None
        raw = _read_member(archive, info, limits.max_config_bytes, limits, name)
        blob = None
        if weights:
            try:
                weights_info = archive.getinfo("model.weights.h5")
            except KeyError:
                raise ValueError(f"{name!r} has no model.weights.h5; is it a Keras 3 .keras "
                                 "file?") from None
            blob = _read_member(archive, weights_info, limits.max_weights_bytes, limits, name)
    config = load_json_text(raw, f"{name!r}: config.json", limits.max_json_depth)
    if not isinstance(config, dict):
        raise ValueError(f"{name!r}: config.json holds a {type(config).__name__}, not a Keras model "
                         "config (a mapping)")
    return config, blob


def read_keras_h5(path: str | os.PathLike[str], limits: ArchiveLimits | None = None) -> ModelGraph:
    """The layer graph of a legacy Keras ``.h5`` model file (its ``model_config`` attribute).

    Needs h5py (``pip install 'convarith[h5]'``); reads Keras 2 and Keras 3
    configs, never the weights.
    """
    limits = limits or ArchiveLimits()
    name = check_model_file(path)
    try:
        import h5py
    except ImportError:
        raise ImportError("reading .h5 model files needs h5py: pip install 'convarith[h5]'") from None
    try:
        with h5py.File(name, "r") as handle:
            raw = handle.attrs.get("model_config")
            if raw is None:
                raise ValueError(f"{name!r} is an HDF5 file without a model_config attribute; it holds "
                                 "weights only (save the whole model with model.save)")
            if isinstance(raw, bytes) or hasattr(raw, "tobytes"):
                raw = bytes(raw)
            if len(raw) > limits.max_config_bytes:
                raise ValueError(f"{name!r}: model_config is {len(raw):,} bytes, over the cap of "
                                 f"{limits.max_config_bytes:,}")
    except OSError as error:
        raise ValueError(f"{name!r} is not a readable HDF5 file ({error})") from None
    config = load_json_text(raw, f"{name!r}: model_config", limits.max_json_depth)
    return model_from_keras_config(config, source=name)


def read_keras(path: str | os.PathLike[str]) -> ModelGraph:
    """The layer graph of a ``.keras`` file.

    Raises
    ------
    ValueError
        The file is not a regular file or not a zip archive, is hostile (see
        :func:`read_keras_archive`), has no ``config.json``, or the JSON is not
        a Keras model config.
    """
    config, _ = read_keras_archive(path)
    return model_from_keras_config(config, source=os.fspath(path))


def model_from_keras_config(config: Any, source: str = "") -> ModelGraph:
    """The layer graph of a Keras model config (``Sequential`` or ``Functional``).

    Every value is type-checked on the way in: a wrong type, a missing
    argument or a non-finite size ends in one ValueError naming the layer.
    """
    where = source or "config"
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ValueError(f"{where}: not a Keras model config (no 'config' mapping)")
    cls = config.get("class_name")
    body = config["config"]
    layers = body.get("layers")
    if not isinstance(layers, list):
        raise ValueError(f"{where}: a Keras {cls} config without a 'layers' list")
    check_model_layers(len(layers), where)
    model_name = str(body.get("name", cls))[:200]
    nodes: list[LayerNode] = []
    warnings: list[str] = []
    if cls == "Sequential":
        previous: tuple[str, ...] = ()
        first = layers[0] if layers else None
        if isinstance(first, dict) and first.get("class_name") != "InputLayer":
            build = first.get("build_config", {})
            if not isinstance(build, dict):
                raise ValueError(f"{where}: layer 0's build_config is a {type(build).__name__}, not a "
                                 "mapping")
            shape = body.get("build_input_shape") or build.get("input_shape")
            if shape is None:
                raise ValueError(f"{where}: the Sequential model has no input shape; build it or "
                                 "start it with keras.Input(shape)")
            nodes.append(_input_node("input", shape))
            previous = ("input",)
        for index, layer in enumerate(layers):
            node = _node_from_entry(layer, previous, index, where)
            nodes.append(node)
            previous = (node.name,)
    elif cls in ("Functional", "Model"):
        for index, layer in enumerate(layers):
            if not isinstance(layer, dict):
                raise ValueError(f"{where}: layer {index} is a {type(layer).__name__}, not a Keras layer "
                                 f"config: {str(layer)[:80]!r}")
            try:
                inbound = _inbound(layer)
            except ValueError as error:
                raise ValueError(f"{where}: layer {index}: {error}") from None
            nodes.append(_node_from_entry(layer, inbound, index, where))
    else:
        raise ValueError(f"{where}: class_name {str(cls)[:80]!r} is not a Keras Sequential or "
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
            inner = value.get("config")
            history = inner.get("keras_history") if value.get("class_name") == "__keras_tensor__" and \
                isinstance(inner, dict) else None
            if history:
                if not isinstance(history, list) or not isinstance(history[0], str):
                    raise ValueError(f"keras_history {str(history)[:80]} must start with a layer name")
                names.append(history[0])
                return
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
                names.append(value[0])  # Keras 2: [layer name, node index, tensor index, kwargs]
                return
            for item in value:
                walk(item)

    walk(layer.get("inbound_nodes", []))
    return tuple(names)


def _input_node(name: str, batch_shape: Any) -> LayerNode:
    if not isinstance(batch_shape, (list, tuple)) or not batch_shape:
        raise ValueError(f"input {name!r}: the shape must be a list (batch first), got {str(batch_shape)[:80]}")
    shape = tuple(batch_shape)[1:]
    for value in shape:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"input {name!r}: shape {list(batch_shape)} must hold positive integers "
                             f"or None, got {value!r}")
    return LayerNode(name, "InputLayer", "input", (), shape=tuple(shape))


def _node_from_entry(layer: Any, inputs: tuple[str, ...], index: int, where: str = "config") -> LayerNode:
    if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str):
        raise ValueError(f"{where}: layer {index} is not a Keras layer config: {str(layer)[:80]!r}")
    config = layer.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"{where}: layer {index} ({layer['class_name'][:80]}): its config is a "
                         f"{type(config).__name__}, not a mapping")
    name = str(layer.get("name") or config.get("name") or f"layer_{index}")[:200]
    try:
        return keras_layer_node(layer["class_name"], config, name, inputs)
    except (KeyError, TypeError, AttributeError, OverflowError, ValueError) as error:
        detail = f"missing argument {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(f"{where}: layer {index} ({layer['class_name'][:80]} {name!r}): "
                         f"{detail}") from None


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
    if class_name == "Normalization":  # mean and variance per channel, and a count
        return LayerNode(name, class_name, "norm", inputs, units=2, extra_params=1)
    if class_name == "Reshape":
        target = config["target_shape"]
        if not isinstance(target, (list, tuple)) or not all(
                isinstance(v, int) and not isinstance(v, bool) and (v > 0 or v == -1) for v in target):
            raise ValueError(f"target_shape must be a list of positive ints (or one -1), got {target!r}")
        return LayerNode(name, class_name, "reshape", inputs, shape=tuple(target))
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
