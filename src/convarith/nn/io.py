"""Model files and weight import: convarith ``.npz``, Keras models and ``.keras`` files, PyTorch.

The ``.npz`` format
-------------------
A NumPy ``.npz`` archive (read with ``np.load(path, allow_pickle=False)``)
holding:

``config``
    a 0-d string array with JSON: ``{"format": "convarith.nn.Sequential",
    "version": 1, "model": {"name", "seed", "input_shape", "layers":
    [{"class_name", "config"}, ...]}, "weights": ["conv2d/kernel", ...]}``.
    Each layer's ``config`` holds the arguments of its constructor.
``weight_0000``, ``weight_0001``, ...
    the weights, in ``model.get_weights()`` order (each layer's in Keras's
    order), named in ``config["weights"]``.

Files are written atomically (a temporary file renamed into place).

Importing
---------
:func:`from_keras` takes a Keras 3 model object or a ``.keras`` file (a zip
of ``config.json`` and ``model.weights.h5``, read with ``h5py``);
:func:`from_torch` takes a PyTorch ``nn.Module`` and the shape of one input
in PyTorch's ``(C, H, W)`` layout; :func:`load_torch_state_dict` puts a
``state_dict`` into a convarith model of the same architecture. The
convarith model takes channels-last input; kernels and the first ``Dense``
after a ``Flatten`` are permuted so that the same input (transposed to
channels-last) gives the same output.

Examples
--------
>>> import os, tempfile, numpy as np
>>> from convarith.nn import Sequential, Input, Dense
>>> model = Sequential([Input((4,)), Dense(2)])
>>> path = save_model(model, os.path.join(tempfile.mkdtemp(), "m.npz"))
>>> restored = load_model(path)
>>> bool(np.array_equal(restored.predict(np.ones((1, 4))), model.predict(np.ones((1, 4)))))
True
"""

from __future__ import annotations

import inspect
import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._atomic import write_atomic
from .layers import Dense, Flatten, Layer
from .models import Sequential
from .registry import LAYERS

__all__ = ["save_model", "load_model", "from_keras", "from_torch", "load_torch_state_dict",
           "FORMAT", "VERSION"]

FORMAT = "convarith.nn.Sequential"
VERSION = 1


# --------------------------------------------------------------------------- .npz


def save_model(model: Sequential, path: str | os.PathLike[str], overwrite: bool = False) -> str:
    """Write ``model`` (architecture and weights) to ``path``: ``.npz`` (convarith's format)
    or ``.keras`` (Keras 3's, see :func:`save_keras`)."""
    path = os.fspath(path)
    if path.endswith(".keras"):
        return save_keras(model, path, overwrite=overwrite)
    if not path.endswith(".npz"):
        raise ValueError(f"path must end in '.npz' (convarith) or '.keras' (Keras 3), got {path!r}")
    model._require_built("the weights")
    names = [f"{layer.name}/{name}" for layer in model.layers for name in layer.variables]
    config = {"format": FORMAT, "version": VERSION, "model": model.get_config(),
              "weights": names}
    arrays = {f"weight_{i:04d}": w for i, w in enumerate(model.get_weights())}
    payload = {"config": np.array(json.dumps(config)), **arrays}
    write_atomic(path, lambda stream: np.savez(stream, **payload), force=overwrite)  # type: ignore[arg-type]
    return path


def load_model(path: str | os.PathLike[str]) -> Sequential:
    """Read a model written by :func:`save_model`, or import a Keras ``.keras`` file."""
    path = os.fspath(path)
    if path.endswith(".keras"):
        return from_keras(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"no model file at {path!r}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path!r} is not a convarith .npz model file ({error})") from None
    with archive:
        if "config" not in archive.files:
            raise ValueError(f"{path!r} has no 'config' entry; it was not written by save_model")
        config = json.loads(str(archive["config"]))
        if config.get("format") != FORMAT:
            raise ValueError(f"{path!r} holds format {config.get('format')!r}, not {FORMAT!r}")
        if config.get("version", 0) > VERSION:
            raise ValueError(
                f"{path!r} is format version {config['version']}; this convarith reads up to "
                f"{VERSION}"
            )
        model = model_from_config(config["model"])
        weights = [archive[f"weight_{i:04d}"] for i in range(len(config["weights"]))]
    model.set_weights(weights)
    return model


def model_from_config(config: Mapping[str, Any]) -> Sequential:
    """A :class:`Sequential` from ``model.get_config()`` (fresh weights)."""
    if "input_layers" in config:  # a functional Model
        return model_from_functional_config(config)
    model = Sequential(name=config.get("name"), seed=config.get("seed", 0))
    for entry in config["layers"]:
        model.add(_layer_from_config(entry["class_name"], entry["config"]))
    if config.get("input_shape") is not None:
        model.build(config["input_shape"])
    return model


def _layer_from_config(class_name: str, config: Mapping[str, Any]) -> Layer:
    if class_name not in LAYERS:
        raise ValueError(
            f"layer type {class_name!r} is not supported; convarith.nn has {sorted(LAYERS)}"
        )
    return LAYERS[class_name](**config)


# --------------------------------------------------------------------------- Keras

# Keras arguments that do not change what a trained layer computes.
_KERAS_IGNORED = {
    "kernel_initializer", "bias_initializer", "depthwise_initializer", "pointwise_initializer",
    "beta_initializer", "gamma_initializer", "moving_mean_initializer",
    "moving_variance_initializer", "dtype", "lora_rank", "lora_alpha", "synchronized", "renorm", "renorm_clipping",
    "renorm_momentum", "quantization_config", "seed", "sparse", "ragged", "optional",
}


def _keras_activation(value: Any) -> Any:
    if isinstance(value, Mapping):  # {"class_name": "function", "config": "relu"} style
        inner = value.get("config")
        return inner if isinstance(inner, str) else value.get("class_name")
    return value


def _translate_keras_layer(class_name: str, config: Mapping[str, Any]) -> Layer:
    if class_name not in LAYERS:
        raise ValueError(
            f"Keras layer {config.get('name')!r} is a {class_name}, which convarith.nn does not "
            f"have; supported: {sorted(LAYERS)}"
        )
    cls = LAYERS[class_name]
    accepted = set(inspect.signature(cls.__init__).parameters) | {"name", "trainable"}
    kwargs: dict[str, Any] = {}
    for key, value in config.items():
        if key in ("renorm", "synchronized") and value:
            raise ValueError(f"Keras layer {config.get('name')!r}: {key}=True is not supported")
        if key == "noise_shape" and value is not None:
            raise ValueError(f"Keras layer {config.get('name')!r}: noise_shape is not supported")
        if key in _KERAS_IGNORED or key == "noise_shape":
            continue
        if key.endswith(("_regularizer", "_constraint")):
            if value is None:
                continue
            if key not in accepted:
                raise ValueError(
                    f"Keras layer {config.get('name')!r} ({class_name}) has {key}={value!r}, "
                    "which convarith.nn does not apply to this layer; remove it in Keras "
                    "before saving"
                )
        if key not in accepted:
            raise ValueError(
                f"Keras layer {config.get('name')!r} ({class_name}) has argument {key}={value!r}, "
                "which convarith.nn does not support"
            )
        if key == "activation":
            value = _keras_activation(value)
        if key == "axis" and isinstance(value, (list, tuple)):
            value = value[0] if len(value) == 1 else value
        kwargs[key] = value
    if class_name == "BatchNormalization" and kwargs.get("axis", -1) not in (-1, 3, 2, 1):
        raise ValueError(f"BatchNormalization axis={kwargs['axis']} is not supported")
    if class_name == "BatchNormalization":
        kwargs["axis"] = -1  # Keras stores the positive index of the last axis
    return cls(**kwargs)


def _sequential_from_keras_configs(name: str, layer_configs: list[tuple[str, Mapping[str, Any]]],
                                   input_shape: Any) -> Sequential:
    model = Sequential(name=name)
    for class_name, config in layer_configs:
        if class_name == "InputLayer":
            shape = config.get("batch_shape") or config.get("batch_input_shape")
            if input_shape is None and shape is not None:
                input_shape = tuple(shape[1:])
            continue
        model.add(_translate_keras_layer(class_name, config))
    if input_shape is None:
        raise ValueError("the Keras model has no known input shape; build it with keras.Input first")
    model.build(tuple(int(v) for v in input_shape))
    return model


def from_keras(source: Any) -> Sequential:
    """A convarith model with the architecture and weights of a Keras 3 model.

    Parameters
    ----------
    source
        A built ``keras.Sequential`` (or a linear functional ``keras.Model``),
        or the path of a ``.keras`` file (needs ``h5py``: ``pip install
        convarith[h5]``).
    """
    if isinstance(source, (str, os.PathLike)):
        return _from_keras_file(os.fspath(source))
    layers = getattr(source, "layers", None)
    if layers is None or not hasattr(source, "get_weights"):
        raise TypeError(
            f"from_keras needs a keras model or a .keras path, got {type(source).__name__}"
        )
    if type(source).__name__ == "Functional" or (
            type(source).__name__ != "Sequential" and hasattr(source, "inputs")):
        model = model_from_functional_config(source.get_config())
        for layer in model.layers:
            if layer.variables:
                layer.set_weights([np.asarray(w) for w in source.get_layer(layer.name).get_weights()])
        return model
    input_shape = tuple(source.input_shape[1:]) if getattr(source, "input_shape", None) else None
    configs = [(type(layer).__name__, layer.get_config()) for layer in layers]
    model = _sequential_from_keras_configs(source.name, configs, input_shape)
    keras_layers = [layer for layer in layers if type(layer).__name__ != "InputLayer"]
    for ours, theirs in zip(model.layers, keras_layers):
        ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
    return model


def _from_keras_file(path: str) -> Sequential:
    try:
        import h5py
    except ImportError:
        raise ImportError(
            "reading .keras files needs h5py: pip install 'convarith[h5]'"
        ) from None
    import io

    from ..io.keras_file import read_keras_archive

    config, weights_bytes = read_keras_archive(path, weights=True)  # caps sizes, ratio, depth
    assert weights_bytes is not None
    class_name = config.get("class_name")
    if class_name not in ("Sequential", "Functional", "Model"):
        raise ValueError(f"{path!r} holds a {class_name}; from_keras reads Sequential models")
    inner = config["config"]
    entries = [(entry["class_name"], entry["config"]) for entry in inner["layers"]]
    if class_name != "Sequential":
        model: Any = model_from_functional_config(inner)
        layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    else:
        model = _sequential_from_keras_configs(inner.get("name", "sequential"), entries, None)
        layers = model.layers
    with h5py.File(io.BytesIO(weights_bytes), "r") as h5:
        group = h5["layers"] if "layers" in h5 else h5.get("_layer_checkpoint_dependencies")
        if group is None:
            raise ValueError(f"{path!r}: model.weights.h5 has no 'layers' group")
        for layer, key in zip(layers, _keras_weight_keys(layers)):
            if not layer.variables:
                continue
            if key not in group:
                raise ValueError(
                    f"{path!r}: no weights for layer {layer.name!r} (entry {key!r}) in the file"
                )
            variables = group[key]["vars"]
            layer.set_weights([np.asarray(variables[str(i)]) for i in range(len(variables))])
    return model


def _keras_weight_keys(layers: list[Layer]) -> list[str]:
    """The names Keras's saver gives the layers of a model: snake-case class, then _1, _2..."""
    from .layers import snake_case

    seen: dict[str, int] = {}
    keys = []
    for layer in layers:
        base = snake_case(type(layer).__name__)
        count = seen.get(base, 0)
        keys.append(base if count == 0 else f"{base}_{count}")
        seen[base] = count + 1
    return keys


def _check_linear(layers: list[Mapping[str, Any]]) -> None:
    previous = None
    for entry in layers:
        nodes = entry.get("inbound_nodes") or []
        if previous is not None:
            text = json.dumps(nodes)
            if len(nodes) != 1 or f'"{previous}"' not in text:
                raise ValueError(
                    f"layer {entry['config'].get('name')!r} does not simply follow "
                    f"{previous!r}; from_keras reads linear stacks of layers only"
                )
        previous = entry["config"].get("name")


# --------------------------------------------------------------------------- PyTorch


def _torch_tuple(value: Any, rank: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * rank


def _torch_children(module: Any) -> list[Any]:
    import torch.nn as tnn

    if isinstance(module, tnn.Sequential):
        return [leaf for child in module for leaf in _torch_children(child)]
    return [module]


def _layers_from_torch(module: Any) -> list[Layer]:
    import torch.nn as tnn

    from .layers import (
        Activation,
        AveragePooling1D,
        AveragePooling2D,
        BatchNormalization,
        Conv1D,
        Conv2D,
        Conv2DTranspose,
        Conv3D,
        Dropout,
        MaxPooling1D,
        MaxPooling2D,
    )
    from .reshaping import GlobalAveragePooling2D, ZeroPadding2D

    layers: list[Layer] = []
    convs = {tnn.Conv1d: (Conv1D, 1), tnn.Conv2d: (Conv2D, 2), tnn.Conv3d: (Conv3D, 3)}
    activations = {tnn.ReLU: "relu", tnn.Sigmoid: "sigmoid", tnn.Tanh: "tanh"}
    for index, child in enumerate(_torch_children(module)):
        where = f"module {index} ({type(child).__name__})"
        if type(child) in convs:
            cls, rank = convs[type(child)]
            if child.padding_mode != "zeros":
                raise ValueError(f"{where}: padding_mode={child.padding_mode!r} is not supported")
            padding = child.padding
            if isinstance(padding, str):
                keras_padding = padding
            else:
                pads = _torch_tuple(padding, rank)
                keras_padding = "valid"
                if any(pads):
                    if rank != 2:
                        raise ValueError(f"{where}: explicit padding is supported for 2-D only")
                    layers.append(ZeroPadding2D(((pads[0], pads[0]), (pads[1], pads[1]))))
            layers.append(cls(child.out_channels, child.kernel_size, strides=child.stride,
                              padding=keras_padding, dilation_rate=child.dilation,
                              groups=child.groups, use_bias=child.bias is not None))
        elif isinstance(child, tnn.ConvTranspose2d):
            if any(_torch_tuple(child.padding, 2)) or any(_torch_tuple(child.output_padding, 2)) \
                    or child.groups != 1:
                raise ValueError(
                    f"{where}: only padding=0, output_padding=0, groups=1 are supported "
                    "(Keras's Conv2DTranspose cannot crop arbitrary amounts)"
                )
            layers.append(Conv2DTranspose(child.out_channels, child.kernel_size,
                                          strides=child.stride, padding="valid", output_padding=0,
                                          dilation_rate=child.dilation,
                                          use_bias=child.bias is not None))
        elif isinstance(child, tnn.Linear):
            layers.append(Dense(child.out_features, use_bias=child.bias is not None))
        elif type(child) in activations:
            layers.append(Activation(activations[type(child)]))
        elif isinstance(child, tnn.Softmax):
            if child.dim not in (-1, 1):
                raise ValueError(f"{where}: Softmax over dim={child.dim} is not supported")
            layers.append(Activation("softmax"))
        elif isinstance(child, (tnn.MaxPool1d, tnn.MaxPool2d, tnn.AvgPool1d, tnn.AvgPool2d)):
            rank = 1 if isinstance(child, (tnn.MaxPool1d, tnn.AvgPool1d)) else 2
            if any(_torch_tuple(child.padding, rank)) or child.ceil_mode or any(
                    v != 1 for v in _torch_tuple(getattr(child, "dilation", 1), rank)):
                raise ValueError(
                    f"{where}: only padding=0, dilation=1, ceil_mode=False pooling is supported"
                )
            max_pool = isinstance(child, (tnn.MaxPool1d, tnn.MaxPool2d))
            pool_cls = {(True, 1): MaxPooling1D, (True, 2): MaxPooling2D,
                        (False, 1): AveragePooling1D, (False, 2): AveragePooling2D}[max_pool, rank]
            stride = child.stride if child.stride is not None else child.kernel_size
            layers.append(pool_cls(_torch_tuple(child.kernel_size, rank),
                                   strides=_torch_tuple(stride, rank)))
        elif isinstance(child, tnn.AdaptiveAvgPool2d):
            if _torch_tuple(child.output_size, 2) != (1, 1):
                raise ValueError(f"{where}: only AdaptiveAvgPool2d(1) is supported")
            layers.append(GlobalAveragePooling2D(keepdims=True))
        elif isinstance(child, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
            layers.append(BatchNormalization(epsilon=child.eps, momentum=1 - (child.momentum or 0.1),
                                             center=child.affine, scale=child.affine))
        elif isinstance(child, tnn.Dropout):
            layers.append(Dropout(child.p))
        elif isinstance(child, tnn.Flatten):
            if child.start_dim != 1 or child.end_dim != -1:
                raise ValueError(f"{where}: only Flatten(start_dim=1) is supported")
            layers.append(Flatten())
        elif isinstance(child, tnn.ZeroPad2d):
            left, right, top, bottom = child.padding
            layers.append(ZeroPadding2D(((top, bottom), (left, right))))
        elif isinstance(child, tnn.Identity):
            continue
        else:
            raise ValueError(f"{where} has no convarith.nn counterpart")
    return layers


def from_torch(module: Any, input_shape: tuple[int, ...]) -> Sequential:
    """A convarith model computing what a PyTorch ``nn.Sequential`` computes.

    Parameters
    ----------
    module
        A ``torch.nn.Sequential`` (nested ones are flattened) of supported
        modules, or a single module.
    input_shape
        One sample in PyTorch's layout, e.g. ``(1, 28, 28)`` for
        ``(C, H, W)``. The convarith model takes it channels-last.
    """
    shape = tuple(int(v) for v in input_shape)
    channels_last = (*shape[1:], shape[0]) if len(shape) > 1 else shape
    model = Sequential(_layers_from_torch(module), name=type(module).__name__.lower())
    model.build(channels_last)
    load_torch_state_dict(model, module.state_dict())
    return model


def load_torch_state_dict(model: Sequential, state_dict: Mapping[str, Any]) -> None:
    """Copy a PyTorch ``state_dict`` into ``model``, converting layouts.

    Parameter groups (``"0.weight"``, ``"0.bias"``, ...) are matched in order
    to the model's layers that hold weights; a ``Dense`` after a ``Flatten``
    of a spatial tensor gets its rows reordered from PyTorch's channels-first
    flattening to convarith's channels-last one.
    """
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        groups.setdefault(prefix, {})[leaf] = array
    weighted = [layer for layer in model.layers if layer.variables]
    if len(groups) != len(weighted):
        raise ValueError(
            f"the state_dict has {len(groups)} parameter groups ({', '.join(groups) or 'none'}) "
            f"but the model has {len(weighted)} layers with weights "
            f"({', '.join(layer.name for layer in weighted)})"
        )
    flatten_from: tuple[int, ...] | None = None
    group_iter = iter(groups.items())
    for layer in model.layers:
        if isinstance(layer, Flatten):
            assert layer.input_shape is not None
            flatten_from = layer.input_shape if len(layer.input_shape) > 1 else None
            continue
        if not layer.variables:
            continue
        prefix, params = next(group_iter)
        try:
            layer.set_weights(_torch_to_keras(layer, params, flatten_from))
        except (KeyError, ValueError) as error:
            raise ValueError(
                f"state_dict group {prefix!r} does not fit layer {layer.name!r} "
                f"({type(layer).__name__}): {error}"
            ) from None
        if isinstance(layer, Dense):
            flatten_from = None


def _torch_to_keras(layer: Layer, params: dict[str, np.ndarray],
                    flatten_from: tuple[int, ...] | None) -> list[np.ndarray]:
    from ..engine import kernel_from_torch

    kind = type(layer).__name__
    out: list[np.ndarray]
    if kind == "Dense":
        kernel = params["weight"].T
        if flatten_from is not None:
            *spatial, channels = flatten_from
            # row of convarith's (h, w, c) flattening -> row of PyTorch's (c, h, w) one
            order = np.arange(kernel.shape[0]).reshape(channels, *spatial)
            order = np.moveaxis(order, 0, -1).reshape(-1)
            kernel = kernel[order]
        out = [kernel]
    elif kind == "BatchNormalization":
        out = []
        if "weight" in params:
            out += [params["weight"], params["bias"]]
        out += [params["running_mean"], params["running_var"]]
        return out
    else:
        out = [kernel_from_torch(params["weight"], transposed=kind == "Conv2DTranspose")]
    if "bias" in params:
        out.append(params["bias"])
    return out


# --------------------------------------------------------------------------- functional models


def _history(tensor: Any, names: dict[int, tuple[str, int]]) -> dict[str, Any]:
    layer_name, node_index = names[id(tensor)]
    return {"class_name": "__keras_tensor__",
            "config": {"shape": [None, *tensor.shape], "dtype": "float32",
                       "keras_history": [layer_name, node_index, 0]}}


def functional_config(model: Any) -> dict[str, Any]:
    """Keras's config of a functional model: each layer's config and inbound nodes, the
    input and output layers (what ``keras.Model.get_config()`` returns)."""
    names: dict[int, tuple[str, int]] = {}
    calls: dict[int, int] = {}
    entries: dict[int, dict[str, Any]] = {}
    for node in model.nodes:
        layer = node.layer
        index = calls.get(id(layer), 0)
        calls[id(layer)] = index + 1
        names[id(node.output)] = (layer.name, index)
        if id(layer) not in entries:
            entries[id(layer)] = {"module": "keras.layers", "class_name": type(layer).__name__,
                                  "config": layer.get_config(), "registered_name": None,
                                  "name": layer.name, "inbound_nodes": []}
        if node.inputs:
            refs = [_history(t, names) for t in node.inputs]
            args = [refs] if getattr(layer, "build_merge", None) else refs
            entries[id(layer)]["inbound_nodes"].append({"args": args, "kwargs": {}})

    def ends(tensors: list[Any], many: bool) -> Any:
        refs = [[*names[id(t)], 0] for t in tensors]
        return refs if many else refs[0]

    return {"name": model.name, "trainable": True, "layers": list(entries.values()),
            "input_layers": ends(model.inputs, model.multiple_inputs),
            "output_layers": ends(model.outputs, model.multiple_outputs)}


def _refs(value: Any) -> list[Any]:
    """The keras-tensor references in an inbound node's ``args`` (nested lists allowed)."""
    if isinstance(value, Mapping):
        if value.get("class_name") == "__keras_tensor__":
            return [value["config"]["keras_history"]]
        return []
    if isinstance(value, (list, tuple)):
        if len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], int):
            return [value]  # the older [name, node, tensor] form
        return [ref for item in value for ref in _refs(item)]
    return []


def model_from_functional_config(config: Mapping[str, Any]) -> Any:
    """A convarith :class:`~convarith.nn.Model` from Keras's functional config (fresh
    weights): layers, their calls (shared layers too), inputs and outputs."""
    from .functional import Model
    from .layers import Input

    outputs: dict[str, list[Any]] = {}
    layers: dict[str, Layer] = {}
    for entry in config["layers"]:
        class_name, layer_config = entry["class_name"], entry["config"]
        name = entry.get("name") or layer_config.get("name")
        if class_name == "InputLayer":
            shape = layer_config.get("batch_shape") or layer_config.get("batch_input_shape")
            start = Input(shape=tuple(shape[1:]), name=name)
            outputs[name] = [start]
            layers[name] = start
            continue
        layer = _translate_keras_layer(class_name, layer_config)
        layers[name] = layer
        for node in entry.get("inbound_nodes") or []:
            args = node.get("args", node) if isinstance(node, Mapping) else node
            refs = _refs(args)
            if not refs:
                raise ValueError(f"layer {name!r} has an inbound node without inputs")
            tensors = []
            for ref in refs:
                source, index = ref[0], int(ref[1])
                if source not in outputs or index >= len(outputs[source]):
                    raise ValueError(f"layer {name!r} reads {source!r} call {index}, which comes "
                                     "later or does not exist")
                tensors.append(outputs[source][index])
            merge = getattr(layer, "build_merge", None) is not None
            outputs.setdefault(name, []).append(layer(tensors if merge else tensors[0]))

    def ends(value: Any) -> Any:
        many = bool(value) and isinstance(value[0], (list, tuple))
        items = value if many else [value]
        found = [outputs[item[0]][int(item[1])] for item in items]
        return found if many else found[0]

    return Model(ends(config["input_layers"]), ends(config["output_layers"]),
                 name=config.get("name"))


# --------------------------------------------------------------------------- writing .keras


def _sequential_keras_config(model: Sequential) -> dict[str, Any]:
    if model.input_shape is None:
        raise ValueError("the model is not built: start it with Input(shape=...) to save it")
    layers = [{"module": "keras.layers", "class_name": "InputLayer",
               "config": {"batch_shape": [None, *model.input_shape], "dtype": "float32",
                          "sparse": False, "ragged": False, "name": "input_layer",
                          "optional": False}, "registered_name": None}]
    layers += [{"module": "keras.layers", "class_name": type(layer).__name__,
                "config": layer.get_config(), "registered_name": None} for layer in model.layers]
    return {"module": "keras", "class_name": "Sequential",
            "config": {"name": model.name, "trainable": True,
                       "dtype": {"module": "keras", "class_name": "DTypePolicy",
                                 "config": {"name": "float32"}, "registered_name": None},
                       "layers": layers},
            "registered_name": None,
            "build_config": {"input_shape": [None, *model.input_shape]}, "compile_config": {}}


def save_keras(model: Sequential, path: str | os.PathLike[str], overwrite: bool = False) -> str:
    """Write ``model`` as a Keras 3 ``.keras`` file (config and weights) that
    ``keras.saving.load_model`` reads; needs ``h5py``.

    The file is written whole or not at all (a temporary file, then renamed).
    """
    try:
        import h5py
    except ImportError:
        raise ImportError("writing .keras files needs h5py: pip install 'convarith[h5]'") from None
    import datetime
    import io

    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"path must end in '.keras', got {path!r}")
    from .functional import Model

    if isinstance(model, Model):
        config = {"module": "keras.src.models.functional", "class_name": "Functional",
                  "config": functional_config(model), "registered_name": "Functional",
                  "build_config": {"input_shape": None}, "compile_config": {}}
        layers = list(model.layers)
    else:
        config = _sequential_keras_config(model)
        layers = list(model.layers)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        group = h5.create_group("layers")
        if not isinstance(model, Model):
            group.create_group("input_layer").create_group("vars").attrs["name"] = "input_layer"
        for layer, key in zip(layers, _keras_weight_keys(layers)):
            variables = group.create_group(key).create_group("vars")
            variables.attrs["name"] = layer.name
            for index, value in enumerate(layer.get_weights()):
                variables.create_dataset(str(index), data=value)
        h5.create_group("vars").attrs["name"] = model.name
    metadata = {"keras_version": "3.0.0",
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}

    def write(stream: Any) -> None:
        with zipfile.ZipFile(stream, "w") as archive:
            archive.writestr("metadata.json", json.dumps(metadata))
            archive.writestr("config.json", json.dumps(config))
            archive.writestr("model.weights.h5", buffer.getvalue())

    write_atomic(path, write, force=overwrite)
    return path
