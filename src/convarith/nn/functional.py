"""The Functional API: call layers on symbolic tensors, then ``Model(inputs, outputs)``.

:func:`~convarith.nn.Input` gives an input layer; calling a layer on it (or
on what another layer returned) records a node of a graph and returns a
:class:`SymbolicTensor` with the sample shape (``None`` for sizes left
open). A layer called twice is shared: one set of weights, used at both
places, its gradients summed.

Examples
--------
>>> import numpy as np
>>> from convarith import nn
>>> inputs = nn.Input((None, None, 3))
>>> x = nn.Conv2D(4, 3, padding="same", activation="relu")(inputs)
>>> y = nn.Conv2D(4, 3, padding="same")(x)
>>> outputs = nn.Add()([x, y])
>>> model = nn.Model(inputs, outputs)
>>> model.predict(np.zeros((2, 8, 8, 3))).shape, model.predict(np.zeros((1, 16, 12, 3))).shape
((2, 8, 8, 4), (1, 16, 12, 4))
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .layers import InputLayer, Layer, Shape, format_shape
from .models import Sequential, batches, blas_one_thread, check_batch_size

__all__ = ["SymbolicTensor", "Node", "Model", "call_symbolic", "is_symbolic"]


@dataclass(eq=False)
class Node:
    """One call of ``layer`` on ``inputs`` (symbolic tensors), giving ``output``."""

    layer: Layer
    inputs: list[SymbolicTensor]
    output: SymbolicTensor = field(init=False)


@dataclass(eq=False)
class SymbolicTensor:
    """A placeholder for a layer's output: the sample ``shape`` and the node that makes it."""

    shape: Shape
    node: Node

    @property
    def batch_shape(self) -> tuple[Any, ...]:
        return (None, *self.shape)

    def __repr__(self) -> str:
        return f"<SymbolicTensor shape={format_shape(self.batch_shape)} from {self.node.layer.name!r}>"


def _as_tensor(value: Any) -> SymbolicTensor:
    if isinstance(value, InputLayer):
        return input_tensor(value)
    return value


def input_tensor(layer: InputLayer) -> SymbolicTensor:
    """The symbolic tensor an :class:`InputLayer` stands for (made once per layer)."""
    tensor = getattr(layer, "_tensor", None)
    if tensor is None:
        node = Node(layer, [])
        tensor = SymbolicTensor(tuple(layer.shape or ()), node)
        node.output = tensor
        layer._tensor = tensor  # type: ignore[attr-defined]
    return tensor


def is_symbolic(value: Any) -> bool:
    """Whether ``value`` is a symbolic tensor, an input layer, or a list of them."""
    if isinstance(value, (SymbolicTensor, InputLayer)):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, (SymbolicTensor, InputLayer)) for v in value)


def _layer_rng(layer: Layer, tensor: SymbolicTensor) -> np.random.Generator:
    """Initial weights seeded by the layer and where it is called: the same code gives the
    same model."""
    where = f"{type(layer).__name__}/{layer.name}/{tensor.node.layer.name}/{tensor.shape}"
    return np.random.default_rng(zlib.crc32(where.encode()))


def call_symbolic(layer: Layer, x: Any) -> SymbolicTensor:
    """Record ``layer(x)`` on symbolic ``x``; builds the layer on its first call."""
    if isinstance(x, (list, tuple)):
        tensors = [_as_tensor(v) for v in x]
        build_merge = getattr(layer, "build_merge", None)
        if build_merge is None:
            if len(tensors) != 1:
                raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) takes one input, "
                                 f"got a list of {len(tensors)}; merge them first (Add, "
                                 "Concatenate...)")
        else:
            shape = build_merge([t.shape for t in tensors])
            node = Node(layer, tensors)
            node.output = SymbolicTensor(shape, node)
            return node.output
        x = tensors[0]
    tensor = _as_tensor(x)
    if getattr(layer, "build_merge", None) is not None:
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) merges a list of inputs, "
                         "got one tensor")
    if not layer.built:
        layer.build(tensor.shape, _layer_rng(layer, tensor))
        shape = layer.output_shape
    else:
        layer.check_input(tensor.shape)
        shape = layer.compute_output_shape(tensor.shape)
    assert shape is not None
    node = Node(layer, [tensor])
    node.output = SymbolicTensor(tuple(shape), node)
    return node.output


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _same_shape(expected: Shape, got: Sequence[int]) -> bool:
    return len(expected) == len(got) and all(e is None or e == g for e, g in zip(expected, got))


class Model(Sequential):
    """A model over a graph of layers, as ``keras.Model(inputs, outputs)``.

    Parameters
    ----------
    inputs
        An :func:`~convarith.nn.Input` (or a list of them).
    outputs
        The symbolic tensor(s) the model computes from ``inputs``.
    name
        The model's name.

    ``compile``, ``fit``, ``evaluate``, ``train_on_batch`` and ``summary`` work as
    for :class:`~convarith.nn.Sequential`, with several inputs and outputs as in
    Keras: ``x`` and ``y`` as lists (in the order of ``inputs`` / ``outputs``) or
    dicts by input / output layer name, a loss (and metrics) per output. ``predict``
    and calling the model give a list for several outputs.
    """

    def __init__(self, inputs: Any, outputs: Any, name: str | None = None,
                 seed: int | None = 0) -> None:
        super().__init__(name=name or "functional", seed=seed)
        self.multiple_inputs = isinstance(inputs, (list, tuple))
        self.multiple_outputs = isinstance(outputs, (list, tuple))
        self.inputs = [_as_tensor(v) for v in _as_list(inputs)]
        self.outputs = [_as_tensor(v) for v in _as_list(outputs)]
        for what, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            if not tensors or not all(isinstance(t, SymbolicTensor) for t in tensors):
                raise TypeError(f"Model {what} must be Input(...) or tensors returned by layers "
                                f"called on them, got {what}={inputs if what == 'inputs' else outputs!r}")
        for tensor in self.inputs:
            if not isinstance(tensor.node.layer, InputLayer):
                raise ValueError("Model inputs must be Input(...) tensors, got the output of "
                                 f"layer {tensor.node.layer.name!r}")
        self.nodes = self._order()
        self.layers = []
        seen: set[int] = set()
        for node in self.nodes:
            if id(node.layer) not in seen:
                seen.add(id(node.layer))
                self.layers.append(node.layer)
        taken: set[str] = set()
        for layer in self.layers:  # auto-named layers get Keras's _1, _2... suffixes
            if layer._auto_name and layer.name in taken:
                base, index = layer.name, 1
                while f"{base}_{index}" in taken:
                    index += 1
                layer.name = f"{base}_{index}"
            taken.add(layer.name)
        names = [layer.name for layer in self.layers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"the model has several layers named {duplicates}; give them "
                             "distinct name= arguments")
        self.input_shape = self.inputs[0].shape

    def _order(self) -> list[Node]:
        """The nodes from the inputs to the outputs, each after the nodes it reads."""
        inputs = {id(t) for t in self.inputs}
        order: list[Node] = []
        done: set[int] = set()
        visiting: set[int] = set()

        def visit(tensor: SymbolicTensor) -> None:
            node = tensor.node
            if id(node) in done:
                return
            if isinstance(node.layer, InputLayer) and id(tensor) not in inputs:
                raise ValueError(f"the outputs depend on input {node.layer.name!r}, which is not "
                                 "among the Model's inputs")
            visiting.add(id(node))
            for parent in node.inputs:
                visit(parent)
            visiting.discard(id(node))
            done.add(id(node))
            order.append(node)

        for tensor in self.outputs:
            visit(tensor)
        for tensor in self.inputs:
            if id(tensor.node) not in done:
                done.add(id(tensor.node))
                order.insert(0, tensor.node)
        return order

    # ------------------------------------------------------------------ structure

    def add(self, layer: Layer) -> None:
        raise TypeError("a functional Model is fixed by its inputs and outputs; build a new one")

    def build(self, input_shape: Sequence[int]) -> None:
        """Functional models are built when their layers are called on ``Input``."""

    @property
    def built(self) -> bool:
        return True

    @property
    def output_shape(self) -> Any:
        shapes = [t.shape for t in self.outputs]
        return shapes if self.multiple_outputs else shapes[0]

    def _check_inputs(self, x: Any, what: str = "x") -> list[np.ndarray]:
        """One array per model input, from a list (in the order of ``inputs``), a dict by
        input name, or one array for one input."""
        names = [tensor.node.layer.name for tensor in self.inputs]
        listed = ", ".join(names)
        if isinstance(x, dict):
            unknown = [key for key in x if key not in names]
            missing = [name for name in names if name not in x]
            if unknown or missing:
                raise ValueError(f"{what} has keys {list(x)} but the model's inputs are ({listed})"
                                 + (f"; unknown: {unknown}" if unknown else "")
                                 + (f"; missing: {missing}" if missing else ""))
            arrays = [x[name] for name in names]
        elif self.multiple_inputs and isinstance(x, (list, tuple)):
            arrays = list(x)
        elif len(names) > 1:
            raise ValueError(f"{what} must be a list of {len(names)} arrays in the order of "
                             f"the model's inputs ({listed}) or a dict by input name, got "
                             f"one {type(x).__name__}")
        else:
            arrays = [x]
        if len(arrays) != len(self.inputs):
            raise ValueError(f"{what} has {len(arrays)} entries but the model has "
                             f"{len(self.inputs)} inputs ({listed})")
        out = []
        for tensor, value in zip(self.inputs, arrays):
            array = np.asarray(value)
            if not np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
                raise TypeError(f"{what} must hold numbers, got dtype {array.dtype}")
            if array.ndim < 1 or not _same_shape(tensor.shape, array.shape[1:]):
                raise ValueError(
                    f"input {tensor.node.layer.name!r} is incompatible: expected shape "
                    f"{format_shape(tensor.batch_shape)}, received {format_shape(array.shape)}")
            out.append(array.astype(tensor.node.layer.dtype, copy=False))
        if len({len(a) for a in out}) > 1:
            raise ValueError(f"the inputs hold different numbers of samples: "
                             f"{[len(a) for a in out]}")
        return out

    def _check_x(self, x: Any, what: str = "x") -> Any:
        arrays = self._check_inputs(x, what)
        if len(arrays) > 1:
            raise ValueError(f"the model has {len(arrays)} inputs; use model.run(list of "
                             "arrays) or predict")
        return arrays[0]

    # training (Sequential's fit, evaluate, train_on_batch) works through these
    def _input_arrays(self, x: Any, what: str = "x") -> list[np.ndarray]:
        return self._check_inputs(x, what)

    def _output_names(self) -> list[str]:
        return [tensor.node.layer.name for tensor in self.outputs]

    def _output_shapes(self) -> list[Any]:
        return [tensor.shape for tensor in self.outputs]

    def _run_outputs(self, inputs: list[np.ndarray], training: bool = False,
                     keep: bool = False) -> list[np.ndarray]:
        return self.run(inputs, training, keep)

    def _backward_outputs(self, d_outputs: list[np.ndarray | None]) -> None:
        self.backward_outputs(d_outputs, need_input_grads=False)

    # ------------------------------------------------------------------ running

    def run(self, inputs: list[np.ndarray], training: bool = False,
            keep: bool = False) -> list[np.ndarray]:
        """Outputs for the input arrays (one per model input)."""
        values: dict[int, Any] = {id(t): a for t, a in zip(self.inputs, inputs)}
        self._caches: dict[int, Any] = {}
        self._activity: dict[int, tuple[Any, np.ndarray]] = {}
        self.activity_loss = 0.0
        for node in self.nodes:
            if id(node.output) in values:
                continue
            args = [values[id(t)] for t in node.inputs]
            layer = node.layer
            value = layer.forward(args if getattr(layer, "build_merge", None) else args[0],  # type: ignore[arg-type]
                                  training=training, keep=keep)
            if keep:
                self._caches[id(node)] = layer._cache
                layer._cache = None
            regularizer = layer.activity_regularizer
            if regularizer is not None:  # in the loss of fit and evaluate, as in Keras
                self.activity_loss += regularizer(value) / len(value)
                if keep:
                    self._activity[id(node)] = (regularizer, value)
            values[id(node.output)] = value
        return [values[id(t)] for t in self.outputs]

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        return self.run([x], training, keep)[0]

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        """Back-propagate ``d_out`` of the first output; returns the first input's gradient."""
        return self.backward_outputs([d_out])[0]

    def backward_outputs(self, d_outputs: Sequence[np.ndarray | None],
                         need_input_grads: bool = True) -> list[np.ndarray]:
        """Back-propagate the gradients of the outputs (``None``: an output the loss does not
        read) through the graph; shared layers get their gradients summed, layers that no
        gradient reaches get zeros. Returns each input's gradient; with
        ``need_input_grads=False`` (training) layers that read only model inputs compute
        just their weight gradients and the list is empty."""
        model_inputs = {id(tensor) for tensor in self.inputs}
        grads: dict[int, np.ndarray] = {}
        for tensor, d_out in zip(self.outputs, d_outputs):
            if d_out is not None:
                key = id(tensor)
                grads[key] = d_out if key not in grads else grads[key] + d_out
        sums: dict[int, dict[str, np.ndarray]] = {}
        for node in reversed(self.nodes):
            layer = node.layer
            if isinstance(layer, InputLayer):
                continue
            d = grads.pop(id(node.output), None)
            cache = self._caches.pop(id(node), None)
            if d is None:
                continue
            if id(node) in self._activity:
                regularizer, value = self._activity[id(node)]
                d = d + (regularizer.gradient(value) / len(value)).astype(d.dtype)
            layer._cache = cache
            if not need_input_grads and all(id(t) in model_inputs for t in node.inputs):
                layer.backward_weights(d)
                d_list: Any = []
            else:
                d_inputs = layer.backward(d)
                d_list = d_inputs if getattr(layer, "build_merge", None) else [d_inputs]
            for tensor, grad in zip(node.inputs, d_list):
                key = id(tensor)
                grads[key] = grad if key not in grads else grads[key] + grad
            total = sums.setdefault(id(layer), {})
            for name, grad in layer.grads.items():
                total[name] = grad if name not in total else total[name] + grad
        for layer in self.layers:
            if id(layer) in sums:
                layer.grads = sums[id(layer)]
            elif not isinstance(layer, InputLayer):
                layer.grads = {name: np.zeros_like(value) for name, value in layer.variables.items()}
        if not need_input_grads:
            return []
        return [grads.get(id(tensor), np.zeros(0)) for tensor in self.inputs]

    def __call__(self, x: Any, training: bool = False) -> Any:
        outputs = self.run(self._check_inputs(x), training=training)
        return outputs if len(outputs) > 1 else outputs[0]  # Keras unpacks a list of one

    @blas_one_thread
    def predict(self, x: Any, batch_size: int = 32, verbose: int = 0) -> Any:
        """Outputs for ``x`` (a list or a dict by input name for several inputs),
        ``batch_size`` samples at a time; a list for several outputs."""
        arrays = self._check_inputs(x)
        batch_size = check_batch_size(batch_size)
        parts = [self.run([a[batch] for a in arrays]) for batch in batches(len(arrays[0]), batch_size)]
        if not parts:
            raise ValueError("predict needs at least one sample")
        outputs = [np.concatenate([p[i] for p in parts]) for i in range(len(self.outputs))]
        return outputs if len(outputs) > 1 else outputs[0]  # Keras unpacks a list of one

    # ------------------------------------------------------------------ description

    def summary(self, print_fn: Callable[[str], Any] | None = None) -> str:
        """Print (and return) a table: layer, output shape, parameters, receptive field, jump,
        and what each layer reads; receptive fields follow every branch (via
        :func:`convarith.summary.summarize`)."""
        from .summary import functional_summary_text

        text = functional_summary_text(self)
        (print_fn or print)(text)
        return text

    def get_config(self) -> dict[str, Any]:
        """Keras's functional config: layers with their inbound nodes, inputs, outputs."""
        from .io import functional_config

        return functional_config(self)

    def __repr__(self) -> str:
        return (f"<Model name={self.name!r} inputs={len(self.inputs)} outputs={len(self.outputs)} "
                f"layers={len(self.layers)}>")
