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
from . import metrics as metrics_module
from . import optimizers as optimizers_module
from . import parallel as parallel_module
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


#: glibc's mallopt parameters, and the largest mmap threshold it accepts on 64-bit systems
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_GLIBC_MMAP_THRESHOLD_MAX = 32 << 20


def keep_freed_blocks() -> bool:
    """Let glibc reuse the blocks a training step frees instead of returning them.

    Each step allocates and frees the same activations and gradients again (3.3 MB
    a step for ``convarith train``'s model at batch 32). glibc maps blocks over its
    mmap threshold on their own and trims the heap's free top past its trim
    threshold, so each step got fresh pages from the system: 37,000 page faults an
    epoch, 40% of the epoch's CPU time. This sets the two thresholds where glibc's
    own moving thresholds stop (32 MiB, and twice that for trimming), so blocks up
    to 32 MiB are reused from the heap and at most 64 MiB of free heap top is kept.
    It changes the whole process (as glibc itself does after freeing a 32 MiB
    block) and is a no-op (``False``) off glibc.

    >>> keep_freed_blocks() in (True, False)
    True
    """
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        # the process's own symbols, libc's among them (find_library would start a
        # subprocess at every fit)
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):
            return False
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD_MAX)
                    and libc.mallopt(_M_TRIM_THRESHOLD, 2 * _GLIBC_MMAP_THRESHOLD_MAX))
    except (OSError, AttributeError):
        return False


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

    Attributes
    ----------
    split_batches
        Whether a training step runs the two halves of its batch on two threads
        (:mod:`convarith.nn.parallel`; default ``False``), where the engine may use two
        threads and every layer treats each sample on its own. The gradients equal the
        whole batch's up to float rounding and do not depend on which thread ran which
        half. Off by default: the two threads contend for Python's GIL at each of the
        engine's compiled calls, and on the models measured (``docs/training-speed.md``)
        a split step took 1.0-3.4x the time of a whole one.
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
        self.compiled_loss: losses_module.CompiledLoss | None = None
        self.compiled_metrics = metrics_module.CompiledMetrics()
        self.stop_training = False
        self.activity_loss = 0.0
        self.split_batches = False
        self._halves: parallel_module.BatchHalves | None = None
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
            if layer.activity_regularizer is not None:
                # Keras adds regularizer(output) / batch size to the loss (evaluate's too)
                self.activity_loss += layer.activity_regularizer(x) / len(x)
                if keep:
                    self._activity[index] = (layer.activity_regularizer, x)
        return x

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        """Back-propagate ``d_out`` (after ``forward(keep=True)``); returns the input gradient."""
        d_x = self._backward(d_out, need_input_grad=True)
        assert d_x is not None
        return d_x

    def _backward(self, d_out: np.ndarray, need_input_grad: bool) -> np.ndarray | None:
        activity = getattr(self, "_activity", {})
        for index in reversed(range(len(self.layers))):
            if index in activity:
                regularizer, value = activity[index]
                d_out = d_out + (regularizer.gradient(value) / len(value)).astype(d_out.dtype)
            if index == 0 and not need_input_grad:
                self.layers[0].backward_weights(d_out)
                return None
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

    # ------------------------------------------------------------------ inputs and outputs
    # Training works on lists: one array per model input, one per output. A Sequential
    # model has one of each; a functional Model overrides these five methods.

    def _input_arrays(self, x: Any, what: str = "x") -> list[np.ndarray]:
        """``x`` checked against the model's inputs, one array per input."""
        if isinstance(x, dict):
            raise ValueError(f"{what} is a dict (keys {list(x)}), but a Sequential model takes "
                             "one array")
        return [self._check_x(x, what)]

    def _output_names(self) -> list[str]:
        """The outputs' names (their layers' names), as Keras names them in logs."""
        return [self.layers[-1].name if self.layers else self.name]

    def _output_shapes(self) -> list[Any]:
        return [self.output_shape]

    def _run_outputs(self, inputs: list[np.ndarray], training: bool = False,
                     keep: bool = False) -> list[np.ndarray]:
        return [self.forward(inputs[0], training=training, keep=keep)]

    def _backward_outputs(self, d_outputs: list[np.ndarray | None]) -> None:
        """Training's backward pass: weight gradients only (no input gradient)."""
        assert d_outputs[0] is not None
        self._backward(d_outputs[0], need_input_grad=False)

    # ------------------------------------------------------------------ training

    def compile(self, optimizer: str | optimizers_module.Optimizer = "rmsprop",
                loss: Any = None, loss_weights: Any = None, metrics: Any = None) -> None:
        """Choose the optimizer, the loss(es) and metrics, with ``keras.Model.compile``'s
        arguments in its order.

        Parameters
        ----------
        optimizer
            ``"rmsprop"`` (Keras's default), ``"sgd"``, ``"adam"`` or an optimizer object.
        loss
            A loss name or object for every output, or (several outputs) a list in
            the order of ``Model.outputs`` or a dict by output layer name; an entry
            ``None`` leaves that output without a loss.
        loss_weights
            The weight of each output's loss in the total (a list or dict like
            ``loss``; a number for one output).
        metrics
            ``["accuracy"]`` and the like (:mod:`convarith.nn.metrics`); for several
            outputs, one list per output or a dict by output name.

        With several outputs, ``fit`` logs ``loss`` (the weighted total),
        ``<output>_loss`` (each output's own loss) and ``<output>_<metric>``, as Keras.
        """
        output_names = self._output_names()
        compiled_loss = losses_module.compile_loss(loss, loss_weights, output_names)
        compiled_metrics = metrics_module.compile_metrics(metrics, output_names)
        self.optimizer = optimizers_module.get(optimizer)
        self.compiled_loss, self.compiled_metrics = compiled_loss, compiled_metrics
        # the loss of a one-output model, as before (``model.loss(y, y_pred)``)
        self.loss = compiled_loss.losses[0].loss if len(output_names) == 1 else None
        self.metrics = compiled_metrics.log_names

    def _require_compiled(self) -> tuple[optimizers_module.Optimizer, losses_module.CompiledLoss]:
        if self.optimizer is None or self.compiled_loss is None:
            raise ValueError("the model must be compiled first: model.compile(optimizer, loss)")
        return self.optimizer, self.compiled_loss

    def _targets(self, y: Any, what: str = "y") -> list[np.ndarray | None]:
        """``y`` checked against the outputs that have a loss or a metric, one entry per
        output (``None`` where an output needs none)."""
        _, compiled = self._require_compiled()
        names, shapes = self._output_names(), self._output_shapes()
        needed = compiled.outputs | self.compiled_metrics.outputs
        listed = ", ".join(names)
        if len(names) == 1:
            if isinstance(y, dict):
                y = _only_entry(y, what, "output", names[0])
            elif getattr(self, "multiple_outputs", False) and isinstance(y, (list, tuple)) \
                    and len(y) == 1 and isinstance(y[0], np.ndarray):
                y = y[0]  # Model(inputs, [output]) takes [y], as in Keras
            entries = [y]
        elif isinstance(y, dict):
            unknown = [key for key in y if key not in names]
            missing = [names[i] for i in sorted(needed) if names[i] not in y]
            if unknown or missing:
                raise ValueError(
                    f"{what} has keys {list(y)} but the model's outputs are ({listed})"
                    + (f"; unknown: {unknown}" if unknown else "")
                    + (f"; missing: {missing}" if missing else ""))
            entries = [y.get(name) for name in names]
        elif isinstance(y, (list, tuple)):
            if len(y) != len(names):
                raise ValueError(f"{what} has {len(y)} entries but the model has {len(names)} "
                                 f"outputs ({listed})")
            entries = list(y)
        else:
            raise ValueError(
                f"{what} must be a list of {len(names)} arrays in the order of the model's "
                f"outputs ({listed}) or a dict by output name, got one "
                f"{type(y).__name__} (shape {np.shape(y)})")
        losses = {entry.output: entry.loss for entry in compiled.losses}
        targets: list[np.ndarray | None] = []
        for index, (name, shape, entry) in enumerate(zip(names, shapes, entries)):
            if index not in needed:
                targets.append(None)
                continue
            if entry is None:
                raise ValueError(f"{what} gives no targets for output {name!r}, which has a "
                                 "loss or metric")
            array = np.asarray(entry)
            try:
                if index in losses:
                    array = losses[index].check_targets(array, shape)
                if not np.issubdtype(array.dtype, np.number) or array.ndim < 1:
                    raise ValueError(f"targets must be numbers with a batch axis, got dtype "
                                     f"{array.dtype}, shape {array.shape}")
            except (ValueError, TypeError) as error:
                if len(names) == 1:
                    raise
                raise type(error)(f"{what} for output {name!r}: {error}") from None
            targets.append(array)
        return targets

    def _check_xy(self, x: Any, y: Any, what: str = "") -> tuple[list[np.ndarray],
                                                                 list[np.ndarray | None]]:
        self._require_compiled()
        arrays = self._input_arrays(x, f"{what}x")
        targets = self._targets(y, f"{what}y")
        counts = {len(a) for a in arrays} | {len(t) for t in targets if t is not None}
        if len(counts) > 1:
            raise ValueError(
                f"{what}x and {what}y must hold the same number of samples, got "
                f"{[len(a) for a in arrays]} and {[len(t) for t in targets if t is not None]}")
        return arrays, targets

    def _trainable(self) -> tuple[list[np.ndarray], list[tuple[Layer, str]]]:
        variables, owners = [], []
        for layer in self.layers:
            if layer.trainable:
                for name in layer.trainable_names:
                    variables.append(layer.variables[name])
                    owners.append((layer, name))
        return variables, owners

    def _batch_logs(self, total: float, output_losses: list[float],
                    targets: list[np.ndarray | None], y_pred: list[np.ndarray]
                    ) -> dict[str, float]:
        """One batch's loss, per-output losses and metrics, by Keras's names."""
        _, compiled = self._require_compiled()
        logs = {"loss": total}
        logs.update(zip(compiled.log_names, output_losses))
        for name, values in self.compiled_metrics.per_sample(targets, y_pred).items():
            logs[name] = float(np.mean(values))
        return logs

    def _step(self, x: list[np.ndarray], y: list[np.ndarray | None]) -> dict[str, float]:
        """One optimizer step; on a non-finite loss, gradient or update it raises
        ``TrainingStopped`` with every weight and the optimizer as before the batch.

        Only what the step may change before its checks is copied: the weights that
        ``forward`` updates (a batch normalization's moving statistics, the non-trainable
        ones) and the constrained ones; the optimizer checks its gradients and update
        before writing them (:meth:`~convarith.nn.optimizers.Optimizer.apply_if_finite`).
        """
        optimizer, compiled = self._require_compiled()
        constrained = any(constraint is not None for layer in self.layers
                          for constraint in layer._constrained().values())
        # a constraint applies after the optimizer's checks: then every weight is copied
        before = self._weight_copies(every=constrained)
        halves = self._batch_halves(len(x[0]))
        if halves is None:
            y_pred = self._run_outputs(x, training=True, keep=True)
        else:
            self.activity_loss, self._activity = 0.0, {}
            y_pred = [halves.forward(x[0])]
        output_losses = compiled.values(y, y_pred)
        # the loss Keras reports and minimises includes the regularization penalties
        value = compiled.total(output_losses) + self.activity_loss + sum(
            layer.regularization_loss() for layer in self.layers)
        if not math.isfinite(value):
            self._restore_copies(before)
            raise TrainingStopped(
                f"the loss is {value} on this batch; training stopped with the weights from "
                "before it (try a smaller learning rate, or check the data for NaN/inf)"
            )
        d_outputs = compiled.gradients(y, y_pred)
        if halves is None:
            self._backward_outputs(d_outputs)
        else:
            assert d_outputs[0] is not None
            halves.backward(d_outputs[0])
        for layer in self.layers:
            layer.add_regularization_gradients()
        variables, owners = self._trainable()
        gradients = [layer.grads[name] for layer, name in owners]
        snapshot = optimizer.snapshot() if constrained else None
        failure = optimizer.apply_if_finite(variables, gradients)
        if failure == "gradient":
            self._restore_copies(before)
            layer, name = next(owner for owner, gradient in zip(owners, gradients)
                               if not np.all(np.isfinite(gradient)))
            raise TrainingStopped(
                f"the gradient of {layer.name}.{name} is not finite; training stopped with "
                "the weights from before this batch"
            )
        if failure is None and constrained:
            for layer in self.layers:
                layer.apply_constraints()
            if not all(np.all(np.isfinite(v)) for v in variables):
                failure = "update"
                assert snapshot is not None
                optimizer.restore(snapshot)
        if failure is not None:
            self._restore_copies(before)
            raise TrainingStopped(
                "the update made some weights infinite or NaN; training stopped with the "
                "weights from before this batch (try a smaller learning rate)"
            )
        return self._batch_logs(value, output_losses, y, y_pred)

    def _batch_halves(self, batch: int) -> parallel_module.BatchHalves | None:
        """The replicas that run a training step's two halves on two cores, or ``None``
        for one pass over the whole batch (:attr:`split_batches` off, one thread, a
        subclass with its own passes, a layer that reads the whole batch, a small batch)."""
        if (type(self)._run_outputs is not Sequential._run_outputs
                or type(self)._backward_outputs is not Sequential._backward_outputs
                or not getattr(self, "split_batches", False)):
            return None
        from .. import engine

        if engine.worker_count() < 2 or not parallel_module.splits_batch(self.layers, batch):
            return None
        halves = getattr(self, "_halves", None)
        if halves is None or not halves.matches(self.layers):
            halves = self._halves = parallel_module.BatchHalves.for_layers(self.layers, batch)
        return halves

    def _weight_copies(self, every: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(weight, copy)`` of every weight, or (``every=False``) of those ``forward``
        may change: the ones outside the layers' trainable weights (a batch
        normalization's moving statistics)."""
        return [(value, value.copy()) for layer in self.layers
                for name, value in layer.variables.items()
                if every or name not in layer.trainable_names]

    @staticmethod
    def _restore_copies(copies: list[tuple[np.ndarray, np.ndarray]]) -> None:
        for weight, copy in copies:
            weight[...] = copy

    def _flatten_logs(self, logs: dict[str, float]) -> float | list[float]:
        """``logs`` as the list Keras's ``evaluate`` returns (Keras's
        ``_flatten_metrics_in_order``): ``loss``, one-output metrics as compiled, the
        per-output losses, then the other keys sorted; one value alone is a float."""
        _, compiled = self._require_compiled()
        order = ["loss", *[m.name for m in self.compiled_metrics.metrics], *compiled.log_names]
        values = [logs[name] for name in dict.fromkeys(order) if name in logs]
        values += [logs[key] for key in sorted(logs) if key not in order]
        return values[0] if len(values) == 1 else values

    @blas_one_thread
    def train_on_batch(self, x: Any, y: Any, return_dict: bool = False
                       ) -> float | list[float] | dict[str, float]:
        """One optimizer step on one batch; returns the loss (and metrics) before the step,
        as ``evaluate`` does."""
        arrays, targets = self._check_xy(x, y)
        self._halves = None  # the layers may have changed since the last step
        logs = self._step(arrays, targets)
        return dict(sorted(logs.items())) if return_dict else self._flatten_logs(logs)

    @blas_one_thread
    def fit(self, x: Any, y: Any, batch_size: int = 32, epochs: int = 1, verbose: int = 1,
            validation_split: float = 0.0,
            validation_data: tuple[Any, Any] | None = None, shuffle: bool = True,
            stream: Any = None, callbacks: Sequence[Any] | None = None) -> History:
        """Train for ``epochs`` passes over ``x``, as ``keras.Model.fit``.

        ``x`` and ``y`` hold one array per model input and output: a list in the
        order of ``Model.inputs`` / ``Model.outputs``, or a dict by input / output
        layer name (one array for one input or output). ``validation_split``
        keeps the *last* fraction of the samples aside (before shuffling, as
        Keras does). If a batch makes the loss NaN or infinite, training stops
        with a message and keeps the weights from before that batch
        (``History.stopped`` says why). ``callbacks``
        (:mod:`convarith.nn.callbacks`) see each epoch's logs and may stop training.
        On glibc, training keeps freed blocks for the next step (:func:`keep_freed_blocks`).
        """
        arrays, targets = self._check_xy(x, y)
        batch_size = check_batch_size(batch_size)
        keep_freed_blocks()
        self._halves = None  # the layers may have changed since the last fit
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        if not isinstance(validation_split, (int, float)) or not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
        if validation_data is not None and validation_split:
            raise ValueError("give validation_data or validation_split, not both")
        count = len(arrays[0])
        validation: tuple[list[np.ndarray], list[np.ndarray | None]] | None = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (x_val, y_val), got "
                                 f"{type(validation_data).__name__}"
                                 f" of {len(validation_data) if hasattr(validation_data, '__len__') else 1}")
            validation = self._check_xy(*validation_data, what="validation_data: ")
        if validation_split:
            keep = int(count * (1 - validation_split))
            if keep < 1 or keep == count:
                raise ValueError(
                    f"validation_split={validation_split} of {count} samples leaves "
                    f"{keep} to train on and {count - keep} to validate"
                )
            validation = ([a[keep:] for a in arrays],
                          [None if t is None else t[keep:] for t in targets])
            arrays = [a[:keep] for a in arrays]
            targets = [None if t is None else t[:keep] for t in targets]
            count = keep
        history = History()
        steps = math.ceil(count / batch_size)
        progress = _Progress(verbose, epochs, steps, stream)
        self.stop_training = False
        callbacks = list(callbacks or [])
        for callback in callbacks:
            callback.set_model(self)
            callback.on_train_begin()
        for epoch in range(epochs):
            progress.start_epoch(epoch)
            order = self.rng.permutation(count) if shuffle else None
            seen = 0
            totals: dict[str, float] = {}
            for done, batch in enumerate(batches(count, batch_size, order), start=1):
                try:
                    logs = self._step([a[batch] for a in arrays],
                                      [None if t is None else t[batch] for t in targets])
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
            # Keras's order: the epoch's logs sorted by name, then the validation ones
            epoch_logs = {k: totals[k] / max(seen, 1) for k in sorted(totals)}
            if validation is not None:
                val_logs = self._evaluate_logs(*validation, batch_size=batch_size)
                epoch_logs.update({f"val_{k}": val_logs[k] for k in sorted(val_logs)})
            for callback in callbacks:
                callback.on_epoch_end(epoch, epoch_logs)
            history.record(epoch, epoch_logs)
            progress.end_epoch(epoch_logs)
            if self.stop_training:
                break
        for callback in callbacks:
            callback.on_train_end()
        return history

    def _evaluate_logs(self, arrays: list[np.ndarray], targets: list[np.ndarray | None],
                       batch_size: int) -> dict[str, float]:
        """Loss, per-output losses and metrics over all samples (means weighted by batch)."""
        _, compiled = self._require_compiled()
        penalty = sum(layer.regularization_loss() for layer in self.layers)
        totals: dict[str, float] = {}
        count = len(arrays[0])
        for batch in batches(count, batch_size):
            part = [None if t is None else t[batch] for t in targets]
            y_pred = self._run_outputs([a[batch] for a in arrays])
            output_losses = compiled.values(part, y_pred)
            logs = self._batch_logs(compiled.total(output_losses) + self.activity_loss + penalty,
                                    output_losses, part, y_pred)
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + value * len(batch)
        return {key: totals.get(key, 0.0) / max(count, 1) for key in
                sorted(["loss", *compiled.log_names, *self.compiled_metrics.log_names])}

    @blas_one_thread
    def evaluate(self, x: Any, y: Any, batch_size: int = 32, verbose: int = 0,
                 return_dict: bool = False) -> float | list[float] | dict[str, float]:
        """Mean loss (with the regularization penalties, as Keras) and metrics over
        ``x``, as ``keras.Model.evaluate``: a float for the loss alone, else a list
        (``loss``, the per-output losses, the metrics; see :meth:`_flatten_logs`), or a
        dict by Keras's names with ``return_dict=True``."""
        arrays, targets = self._check_xy(x, y)
        logs = self._evaluate_logs(arrays, targets, check_batch_size(batch_size))
        return logs if return_dict else self._flatten_logs(logs)

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
            if count:  # a functional model's InputLayers hold none
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


def _only_entry(data: dict[str, Any], what: str, kind: str, name: str) -> Any:
    """The one array of a dict given for a model with one input (or output) ``name``."""
    if list(data) != [name]:
        raise ValueError(f"{what} has keys {list(data)} but the model's only {kind} is "
                         f"{name!r}")
    return data[name]
