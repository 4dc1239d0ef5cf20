"""``Sequential``: a stack of layers you can inspect, run, train, save and load.

Examples
--------
>>> import numpy as np
>>> from convarith.nn import Sequential, Input, Conv2D, Flatten, Dense
>>> model = Sequential([Input(shape=(8, 8, 1)), Conv2D(4, 3, padding="same", strides=2,
...                     activation="relu"), Flatten(), Dense(10, activation="softmax")])
>>> model.predict(np.zeros((3, 8, 8, 1))).shape
(3, 10)
>>> model.count_params()
690
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import losses as losses_module
from . import optimizers as optimizers_module
from .layers import InputLayer, Layer, format_shape

__all__ = ["Sequential", "History", "TrainingStopped"]


class TrainingStopped(RuntimeError):
    """Raised by :meth:`Sequential.train_on_batch` when a step would break the weights."""


@dataclass
class History:
    """What ``fit`` returns: per-epoch metrics in ``history`` (Keras's shape)."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: list[int] = field(default_factory=list)
    stopped: str | None = None

    def record(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on one thread (when threadpoolctl is installed).

    A model's matrix products (Dense layers, small convolutions) are too small
    for threads to pay: a multi-threaded BLAS spends more time waking and
    waiting than computing, badly so on a busy machine. The engine still runs
    convolutions on every core, with its own chunked threads.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def blas_one_thread(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _one_blas_thread():
            return method(*args, **kwargs)

    return wrapper


def batches(count: int, batch_size: int, order: np.ndarray | None = None) -> Iterator[np.ndarray]:
    indices = np.arange(count) if order is None else order
    for start in range(0, count, batch_size):
        yield indices[start:start + batch_size]


class _Progress:
    """A progress bar per epoch: rich when installed and ``verbose == 1``, else plain text."""

    def __init__(self, verbose: int, epochs: int, steps: int, stream: Any = None) -> None:
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.stream = stream if stream is not None else sys.stdout
        self._rich: Any = None
        self._task: Any = None
        self._start = 0.0
        self._last_draw = 0.0

    def start_epoch(self, epoch: int) -> None:
        self._start = time.perf_counter()
        self.epoch = epoch
        if self.verbose != 1:
            return
        try:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        except ImportError:
            self._rich = None
            return
        from rich.console import Console

        self._rich = Progress(
            TextColumn(f"Epoch {epoch + 1}/{self.epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[logs]}"), console=Console(file=self.stream),
            transient=False,
        )
        self._rich.start()
        self._task = self._rich.add_task("train", total=self.steps, logs="")

    def step(self, done: int, logs: dict[str, float]) -> None:
        if self.verbose != 1:
            return
        text = _format_logs(logs)
        if self._rich is not None:
            self._rich.update(self._task, completed=done, logs=text)
            return
        now = time.perf_counter()
        if done < self.steps and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        if self.stream.isatty() if hasattr(self.stream, "isatty") else False:
            width = 30
            filled = int(width * done / self.steps)
            bar = "=" * filled + (">" if filled < width else "") + "." * (width - filled - 1)
            self.stream.write(f"\r{done}/{self.steps} [{bar}] {text}")
            self.stream.flush()

    def end_epoch(self, logs: dict[str, float]) -> None:
        seconds = time.perf_counter() - self._start
        if self.verbose == 0:
            return
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
            return
        tty = self.stream.isatty() if hasattr(self.stream, "isatty") else False
        prefix = "\r" if self.verbose == 1 and tty else ""
        line = (f"{prefix}Epoch {self.epoch + 1}/{self.epochs} - {self.steps}/{self.steps} - "
                f"{seconds:.1f}s - {_format_logs(logs)}")
        print(line, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        if self.verbose:
            print(text, file=self.stream, flush=True)


def _format_logs(logs: dict[str, float]) -> str:
    return " - ".join(f"{key}: {value:.4f}" for key, value in logs.items())


class Sequential:
    """A linear stack of layers, as ``keras.Sequential``.

    Parameters
    ----------
    layers
        Layers in order. Start with :func:`~convarith.nn.Input` (or give the
        first layer ``input_shape=``) so the model builds at once; otherwise it
        builds on the first data it sees.
    name
        The model's name.
    seed
        Seeds the initial weights (and dropout), so the same code gives the
        same model.
    """

    def __init__(self, layers: Sequence[Layer] | None = None, name: str | None = None,
                 seed: int | None = 0) -> None:
        self.name = name or "sequential"
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.layers: list[Layer] = []
        self.input_shape: tuple[int, ...] | None = None
        self.optimizer: optimizers_module.Optimizer | None = None
        self.loss: losses_module.Loss | None = None
        self.metrics: list[str] = []
        self.stop_training = False
        self.activity_loss = 0.0
        for layer in layers or ():
            self.add(layer)

    # ------------------------------------------------------------------ structure

    def add(self, layer: Layer) -> None:
        """Append a layer (or an :class:`InputLayer`, only first)."""
        if not isinstance(layer, Layer):
            raise TypeError(
                f"Sequential.add needs a convarith.nn layer, got {type(layer).__name__}"
            )
        if isinstance(layer, InputLayer):
            if self.layers or self.input_shape is not None:
                raise ValueError("an Input layer can only start the model")
            self.input_shape = layer.shape
            return
        if layer._auto_name:
            taken = {existing.name for existing in self.layers}
            base, index = layer.name, 0
            name = base
            while name in taken:
                index += 1
                name = f"{base}_{index}"
            layer.name = name
        elif layer.name in {existing.name for existing in self.layers}:
            raise ValueError(f"the model already has a layer named {layer.name!r}")
        if not self.layers and self.input_shape is None and layer.input_shape_arg is not None:
            self.input_shape = layer.input_shape_arg
        if getattr(layer, "rng", None) is not None and getattr(layer, "seed", None) is None:
            # dropout masks follow the model's seed
            layer.rng = np.random.default_rng(self.rng.integers(2**63))  # type: ignore[attr-defined]
        self.layers.append(layer)
        if self.input_shape is not None:
            self.build(self.input_shape)

    def build(self, input_shape: Sequence[int]) -> None:
        """Build every layer for samples of ``input_shape`` (no batch axis)."""
        shape = tuple(None if v is None else int(v) for v in input_shape)
        self.input_shape = shape
        for layer in self.layers:
            if layer.built:
                layer.check_input(shape)
            else:
                layer.build(shape, self.rng)
            assert layer.output_shape is not None
            shape = layer.output_shape

    @property
    def built(self) -> bool:
        return self.input_shape is not None and all(layer.built for layer in self.layers)

    @property
    def output_shape(self) -> tuple[int, ...]:
        self._require_built("output_shape")
        shape = self.input_shape
        for layer in self.layers:
            shape = layer.output_shape
        assert shape is not None
        return shape

    def _require_built(self, what: str) -> None:
        if not self.built:
            raise ValueError(
                f"the model is not built, so {what} is unknown: start it with "
                "Input(shape=...) or input_shape=..., or call it on data first"
            )

    def _check_x(self, x: Any, what: str = "x") -> np.ndarray:
        array = np.asarray(x)
        if not np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
            raise TypeError(f"{what} must hold numbers, got dtype {array.dtype}")
        if array.ndim < 1:
            raise ValueError(f"{what} must have a batch axis, got a scalar")
        if not self.layers:
            raise ValueError("the model has no layers; add some first")
        if self.input_shape is None:
            self.build(array.shape[1:])
        assert self.input_shape is not None
        if array.ndim - 1 != len(self.input_shape) or any(
                e is not None and e != g for e, g in zip(self.input_shape, array.shape[1:])):
            first = self.layers[0]
            raise ValueError(
                f"input of layer {first.name!r} ({type(first).__name__}) is incompatible: "
                f"expected shape {format_shape((None, *self.input_shape))}, received "
                f"{format_shape(array.shape)} ({what})"
            )
        return array.astype(self.layers[0].dtype, copy=False)

    # ------------------------------------------------------------------ running

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        self.activity_loss = 0.0
        self._activity: dict[int, tuple[Any, np.ndarray]] = {}
        for index, layer in enumerate(self.layers):
            x = layer.forward(x, training=training, keep=keep)
            if keep and layer.activity_regularizer is not None:
                # Keras adds regularizer(output) / batch size to the loss
                self.activity_loss += layer.activity_regularizer(x) / len(x)
                self._activity[index] = (layer.activity_regularizer, x)
        return x

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        """Back-propagate ``d_out`` (after ``forward(keep=True)``); returns the input gradient."""
        activity = getattr(self, "_activity", {})
        for index in reversed(range(len(self.layers))):
            if index in activity:
                regularizer, value = activity[index]
                d_out = d_out + (regularizer.gradient(value) / len(value)).astype(d_out.dtype)
            d_out = self.layers[index].backward(d_out)
        return d_out

    def __call__(self, x: Any, training: bool = False) -> np.ndarray:
        return self.forward(self._check_x(x), training=training)

    @blas_one_thread
    def predict(self, x: Any, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        """Outputs for ``x``, computed ``batch_size`` samples at a time."""
        array = self._check_x(x)
        batch_size = check_batch_size(batch_size)
        outputs = [self.forward(array[i]) for i in batches(len(array), batch_size)]
        if not outputs:
            return np.zeros((0, *self.output_shape), array.dtype)
        return np.concatenate(outputs)

    # ------------------------------------------------------------------ training

    def compile(self, optimizer: str | optimizers_module.Optimizer = "rmsprop",
                loss: str | losses_module.Loss | None = None,
                metrics: Sequence[str] | None = None) -> None:
        """Choose the optimizer (``"rmsprop"`` as in Keras, ``"sgd"``, ``"adam"`` or an
        object), loss and metrics."""
        if loss is None:
            raise ValueError(
                "compile needs loss=, e.g. 'sparse_categorical_crossentropy' or "
                "'categorical_crossentropy'"
            )
        self.optimizer = optimizers_module.get(optimizer)
        self.loss = losses_module.get(loss)
        wanted = list(metrics or [])
        for metric in wanted:
            if metric not in ("accuracy", "acc"):
                raise ValueError(f"metrics may contain 'accuracy', got {metric!r}")
        self.metrics = ["accuracy" for _ in wanted[:1]]

    def _require_compiled(self) -> tuple[optimizers_module.Optimizer, losses_module.Loss]:
        if self.optimizer is None or self.loss is None:
            raise ValueError("the model must be compiled first: model.compile(optimizer, loss)")
        return self.optimizer, self.loss

    def _check_xy(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        _, loss = self._require_compiled()
        array = self._check_x(x)
        targets = loss.check_targets(np.asarray(y), self.output_shape)
        if len(targets) != len(array):
            raise ValueError(
                f"x and y must hold the same number of samples, got {len(array)} and "
                f"{len(targets)}"
            )
        return array, targets

    def _accuracy(self, y: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        predicted = y_pred.argmax(axis=-1)
        if isinstance(self.loss, losses_module.SparseCategoricalCrossentropy):
            return predicted == y.reshape(predicted.shape)
        return predicted == np.asarray(y).argmax(axis=-1)

    def _trainable(self) -> tuple[list[np.ndarray], list[tuple[Layer, str]]]:
        variables, owners = [], []
        for layer in self.layers:
            if layer.trainable:
                for name in layer.trainable_names:
                    variables.append(layer.variables[name])
                    owners.append((layer, name))
        return variables, owners

    def _step(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        optimizer, loss = self._require_compiled()
        before = [layer.get_weights() for layer in self.layers]
        y_pred = self.forward(x, training=True, keep=True)
        # the loss Keras reports and minimises includes the regularization penalties
        value = loss(y, y_pred) + self.activity_loss + sum(
            layer.regularization_loss() for layer in self.layers)
        if not math.isfinite(value):
            self._restore(before)
            raise TrainingStopped(
                f"the loss is {value} on this batch; training stopped with the weights from "
                "before it (try a smaller learning rate, or check the data for NaN/inf)"
            )
        self.backward(loss.gradient(y, y_pred))
        for layer in self.layers:
            layer.add_regularization_gradients()
        variables, owners = self._trainable()
        gradients = [layer.grads[name] for layer, name in owners]
        for (layer, name), gradient in zip(owners, gradients):
            if not np.all(np.isfinite(gradient)):
                self._restore(before)
                raise TrainingStopped(
                    f"the gradient of {layer.name}.{name} is not finite; training stopped with "
                    "the weights from before this batch"
                )
        snapshot = optimizer.snapshot()
        optimizer.apply(variables, gradients)
        for layer in self.layers:
            layer.apply_constraints()
        if not all(np.all(np.isfinite(v)) for v in variables):
            self._restore(before)
            optimizer.restore(snapshot)
            raise TrainingStopped(
                "the update made some weights infinite or NaN; training stopped with the "
                "weights from before this batch (try a smaller learning rate)"
            )
        logs = {"loss": value}
        if self.metrics:
            logs["accuracy"] = float(np.mean(self._accuracy(y, y_pred)))
        return logs

    def _restore(self, weights: list[list[np.ndarray]]) -> None:
        for layer, values in zip(self.layers, weights):
            layer.set_weights(values)

    @blas_one_thread
    def train_on_batch(self, x: Any, y: Any) -> float | list[float]:
        """One optimizer step on one batch; returns the loss (and metrics) before the step."""
        array, targets = self._check_xy(x, y)
        logs = self._step(array, targets)
        return logs["loss"] if len(logs) == 1 else list(logs.values())

    @blas_one_thread
    def fit(self, x: Any, y: Any, batch_size: int = 32, epochs: int = 1, verbose: int = 1,
            validation_split: float = 0.0,
            validation_data: tuple[Any, Any] | None = None, shuffle: bool = True,
            stream: Any = None, callbacks: Sequence[Any] | None = None) -> History:
        """Train for ``epochs`` passes over ``x``, as ``keras.Model.fit``.

        ``validation_split`` keeps the *last* fraction of the samples aside
        (before shuffling, as Keras does). If a batch makes the loss NaN or
        infinite, training stops with a message and keeps the weights from
        before that batch (``History.stopped`` says why). ``callbacks``
        (:mod:`convarith.nn.callbacks`) see each epoch's logs and may stop training.
        """
        array, targets = self._check_xy(x, y)
        batch_size = check_batch_size(batch_size)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        if not isinstance(validation_split, (int, float)) or not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
        if validation_data is not None and validation_split:
            raise ValueError("give validation_data or validation_split, not both")
        if validation_split:
            keep = int(len(array) * (1 - validation_split))
            if keep < 1 or keep == len(array):
                raise ValueError(
                    f"validation_split={validation_split} of {len(array)} samples leaves "
                    f"{keep} to train on and {len(array) - keep} to validate"
                )
            validation_data = (array[keep:], targets[keep:])
            array, targets = array[:keep], targets[:keep]
        history = History()
        steps = math.ceil(len(array) / batch_size)
        progress = _Progress(verbose, epochs, steps, stream)
        self.stop_training = False
        callbacks = list(callbacks or [])
        for callback in callbacks:
            callback.set_model(self)
            callback.on_train_begin()
        for epoch in range(epochs):
            progress.start_epoch(epoch)
            order = self.rng.permutation(len(array)) if shuffle else None
            seen = 0
            totals: dict[str, float] = {}
            for done, batch in enumerate(batches(len(array), batch_size, order), start=1):
                try:
                    logs = self._step(array[batch], targets[batch])
                except TrainingStopped as stop:
                    history.stopped = f"epoch {epoch + 1}, batch {done}: {stop}"
                    progress.message(f"Training stopped at {history.stopped}")
                    self.stop_training = True
                    break
                seen += len(batch)
                for key, value in logs.items():
                    totals[key] = totals.get(key, 0.0) + value * len(batch)
                progress.step(done, {k: v / seen for k, v in totals.items()})
            if self.stop_training:
                break
            epoch_logs = {k: v / max(seen, 1) for k, v in totals.items()}
            if validation_data is not None:
                values = self.evaluate(*validation_data, batch_size=batch_size)
                values = values if isinstance(values, list) else [values]
                for key, value in zip(["loss", *self.metrics], values):
                    epoch_logs[f"val_{key}"] = value
            for callback in callbacks:
                callback.on_epoch_end(epoch, epoch_logs)
            history.record(epoch, epoch_logs)
            progress.end_epoch(epoch_logs)
            if self.stop_training:
                break
        for callback in callbacks:
            callback.on_train_end()
        return history

    @blas_one_thread
    def evaluate(self, x: Any, y: Any, batch_size: int = 32, verbose: int = 0) -> float | list[float]:
        """Mean loss (and accuracy) over ``x``; a list when metrics were compiled."""
        array, targets = self._check_xy(x, y)
        _, loss = self._require_compiled()
        batch_size = check_batch_size(batch_size)
        total_loss, total_correct = 0.0, 0.0
        for batch in batches(len(array), batch_size):
            y_pred = self.forward(array[batch])
            total_loss += float(np.sum(loss.per_sample(targets[batch], y_pred)))
            if self.metrics:
                total_correct += float(np.sum(self._accuracy(targets[batch], y_pred)))
        count = max(len(array), 1)
        if not self.metrics:
            return total_loss / count
        return [total_loss / count, total_correct / count]

    # ------------------------------------------------------------------ weights

    @property
    def weights(self) -> list[np.ndarray]:
        return [w for layer in self.layers for w in layer.weights]

    def get_weights(self) -> list[np.ndarray]:
        """Every layer's weights in order, each layer in Keras's order."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replace all weights; the list must match :meth:`get_weights` in count and shapes."""
        self._require_built("the weight shapes")
        weights = list(weights)
        expected = sum(len(layer.variables) for layer in self.layers)
        if len(weights) != expected:
            raise ValueError(
                f"the model has {expected} weight arrays, got {len(weights)}"
            )
        start = 0
        for layer in self.layers:
            count = len(layer.variables)
            layer.set_weights(weights[start:start + count])
            start += count

    def count_params(self) -> int:
        return sum(layer.count_params() for layer in self.layers)

    def get_layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; layers: {[layer.name for layer in self.layers]}")

    # ------------------------------------------------------------------ summary

    def summary(self, print_fn: Callable[[str], Any] | None = None) -> str:
        """Print (and return) a table: layer, output shape, parameters, receptive field, jump.

        Receptive field and jump are per spatial axis, on the model's input,
        computed from each layer's resolved spec; rows that a strided layer
        never reads are listed as warnings under the table.
        """
        from .summary import summary_text

        text = summary_text(self)
        (print_fn or print)(text)
        return text

    # ------------------------------------------------------------------ files

    def save(self, path: str, overwrite: bool = True) -> str:
        """Save architecture and weights to a ``.npz`` file (see :mod:`convarith.nn.io`)."""
        from .io import save_model

        return save_model(self, path, overwrite=overwrite)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "layers": [
                {"class_name": type(layer).__name__, "config": layer.get_config()}
                for layer in self.layers
            ],
        }

    def __repr__(self) -> str:
        return f"<Sequential name={self.name!r} layers={len(self.layers)}>"


def check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)
