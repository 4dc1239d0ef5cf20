"""Losses with their gradients, computed exactly as Keras 3 computes them.

A loss maps ``(y_true, y_pred)`` to the mean over the batch, and gives
``d loss / d y_pred``. Probabilities (``from_logits=False``) are normalised to
sum to one and clipped to ``[1e-7, 1 - 1e-7]`` before the log, as Keras does.

Examples
--------
>>> import numpy as np
>>> loss = SparseCategoricalCrossentropy()
>>> round(loss(np.array([0]), np.array([[0.5, 0.5]])), 4)
0.6931
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Loss",
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy",
    "MeanSquaredError",
    "get",
    "EPSILON",
    "OutputLoss",
    "CompiledLoss",
    "compile_loss",
]

EPSILON = 1e-7


def _log_probabilities(y_pred: np.ndarray, from_logits: bool) -> tuple[np.ndarray, np.ndarray]:
    """(log p, the clipped-normalised p or softmax), along the last axis."""
    if from_logits:
        shifted = y_pred - y_pred.max(axis=-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return log_p, np.exp(log_p)
    p = y_pred / y_pred.sum(axis=-1, keepdims=True)
    clipped = np.clip(p, EPSILON, 1.0 - EPSILON)
    return np.log(clipped), p


def _fits(shape: tuple[int, ...], output_shape: Sequence[int | None]) -> bool:
    """Whether a sample shape fits an output shape (``None``: any size)."""
    return len(shape) == len(output_shape) and all(
        e is None or e == g for e, g in zip(output_shape, shape))


def _crossentropy_gradient(
    target: np.ndarray, y_pred: np.ndarray, from_logits: bool
) -> np.ndarray:
    """d/d y_pred of ``-sum(target * log p)`` per sample (not averaged)."""
    if from_logits:
        shifted = y_pred - y_pred.max(axis=-1, keepdims=True)
        softmax = np.exp(shifted)
        softmax /= softmax.sum(axis=-1, keepdims=True)
        return softmax * target.sum(axis=-1, keepdims=True) - target
    total = y_pred.sum(axis=-1, keepdims=True)
    p = y_pred / total
    inside = (p > EPSILON) & (p < 1.0 - EPSILON)
    d_p = np.where(inside, -target / np.clip(p, EPSILON, 1.0 - EPSILON), 0.0)
    return (d_p - (d_p * p).sum(axis=-1, keepdims=True)) / total


@dataclass(frozen=True)
class Loss:
    """Base class: ``loss(y_true, y_pred) -> float`` and ``loss.gradient(...)``."""

    name: str = "loss"

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(np.mean(self.per_sample(y_true, y_pred)))

    def per_sample(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def gradient(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """``d mean-loss / d y_pred``, of ``y_pred``'s shape and dtype."""
        raise NotImplementedError

    def check_targets(self, y_true: np.ndarray, output_shape: tuple[int, ...]) -> np.ndarray:
        """Validate targets against the model's output shape (without batch)."""
        return np.asarray(y_true)


@dataclass(frozen=True)
class CategoricalCrossentropy(Loss):
    """Cross-entropy with one-hot (or soft) targets of the prediction's shape."""

    from_logits: bool = False
    name: str = "categorical_crossentropy"

    def check_targets(self, y_true: np.ndarray, output_shape: tuple[int, ...]) -> np.ndarray:
        y = np.asarray(y_true)
        if y.ndim < 1 or not _fits(y.shape[1:], output_shape):
            raise ValueError(
                f"categorical_crossentropy needs one-hot targets of shape (batch, "
                f"{', '.join(map(str, output_shape))}) like the model's output, got targets of "
                f"shape {y.shape}; for integer class labels use "
                "loss='sparse_categorical_crossentropy'"
            )
        if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)):
            raise ValueError("categorical_crossentropy targets must be finite numbers")
        return y

    def per_sample(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        log_p, _ = _log_probabilities(y_pred, self.from_logits)
        return -(y_true * log_p).sum(axis=-1)

    def gradient(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        grad = _crossentropy_gradient(y_true.astype(y_pred.dtype), y_pred, self.from_logits)
        return (grad / y_pred.shape[0]).astype(y_pred.dtype)


@dataclass(frozen=True)
class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy with integer class labels in ``[0, classes)``."""

    from_logits: bool = False
    name: str = "sparse_categorical_crossentropy"

    def check_targets(self, y_true: np.ndarray, output_shape: tuple[int, ...]) -> np.ndarray:
        y = np.asarray(y_true)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(
                f"sparse_categorical_crossentropy needs one integer label per sample (shape "
                f"(batch,)), got targets of shape {y.shape}; for one-hot targets use "
                "loss='categorical_crossentropy'"
            )
        classes = output_shape[-1]
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise ValueError("sparse_categorical_crossentropy labels must be whole numbers")
            y = y.astype(np.int64)
        if y.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers, got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= classes):
            bad = y[(y < 0) | (y >= classes)][0]
            raise ValueError(
                f"label {int(bad)} is out of range: the model has {classes} output classes, so "
                f"labels must lie in 0..{classes - 1} (got labels from {int(y.min())} to "
                f"{int(y.max())})"
            )
        return y

    def _one_hot(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        labels = np.asarray(y_true).reshape(-1).astype(np.int64)
        return np.eye(y_pred.shape[-1], dtype=y_pred.dtype)[labels]

    def per_sample(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        log_p, _ = _log_probabilities(y_pred, self.from_logits)
        return -(self._one_hot(y_true, y_pred) * log_p).sum(axis=-1)

    def gradient(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        target = self._one_hot(y_true, y_pred)
        grad = _crossentropy_gradient(target, y_pred, self.from_logits)
        return (grad / y_pred.shape[0]).astype(y_pred.dtype)


@dataclass(frozen=True)
class BinaryCrossentropy(Loss):
    """Cross-entropy of independent yes/no targets (in ``[0, 1]``) against sigmoid
    outputs, averaged over every value of a sample, as Keras's
    ``binary_crossentropy`` (predictions clipped to ``[1e-7, 1 - 1e-7]``).

    >>> round(BinaryCrossentropy()(np.array([[1.0], [0.0]]), np.array([[0.8], [0.4]])), 4)
    0.367
    """

    from_logits: bool = False
    name: str = "binary_crossentropy"

    def check_targets(self, y_true: np.ndarray, output_shape: tuple[int, ...]) -> np.ndarray:
        y = np.asarray(y_true)
        if (y.ndim >= 1 and output_shape and output_shape[-1] == 1
                and _fits((*y.shape[1:], 1), output_shape)):
            y = y[..., None]  # Keras expands (batch,) targets to the (batch, 1) output
        if y.ndim < 1 or not _fits(y.shape[1:], output_shape):
            raise ValueError(
                f"binary_crossentropy targets must have the model's output shape (batch, "
                f"{', '.join(map(str, output_shape))}), got {y.shape}"
            )
        if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)):
            raise ValueError("binary_crossentropy targets must be finite numbers (0 and 1, or "
                             "probabilities)")
        return y

    def _elementwise(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        target = np.asarray(y_true).astype(y_pred.dtype).reshape(y_pred.shape)
        if self.from_logits:  # -(t log sigmoid(x) + (1 - t) log sigmoid(-x)), stably
            return target * np.logaddexp(0, -y_pred) + (1 - target) * np.logaddexp(0, y_pred)
        p = np.clip(y_pred, EPSILON, 1.0 - EPSILON)
        return -(target * np.log(p) + (1 - target) * np.log(1 - p))

    def per_sample(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        return self._elementwise(y_true, y_pred).reshape(len(y_pred), -1).mean(axis=1)

    def gradient(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        target = np.asarray(y_true).astype(y_pred.dtype).reshape(y_pred.shape)
        if self.from_logits:
            grad = 1.0 / (1.0 + np.exp(-y_pred)) - target
        else:
            inside = (y_pred > EPSILON) & (y_pred < 1.0 - EPSILON)
            p = np.clip(y_pred, EPSILON, 1.0 - EPSILON)
            grad = np.where(inside, (1 - target) / (1 - p) - target / p, 0.0)
        return (grad / y_pred.size).astype(y_pred.dtype)


@dataclass(frozen=True)
class MeanSquaredError(Loss):
    """Mean of squared differences over the last axis, then over the batch."""

    name: str = "mean_squared_error"

    def check_targets(self, y_true: np.ndarray, output_shape: tuple[int, ...]) -> np.ndarray:
        y = np.asarray(y_true)
        if y.ndim < 1 or not _fits(y.shape[1:], output_shape):
            raise ValueError(
                f"mean_squared_error targets must have the model's output shape (batch, "
                f"{', '.join(map(str, output_shape))}), got {y.shape}"
            )
        return y

    def per_sample(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        diff = (y_pred - y_true).reshape(y_pred.shape[0], -1)
        return (diff**2).mean(axis=-1)

    def gradient(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        per_row = int(np.prod(y_pred.shape[1:]))
        return (2.0 * (y_pred - y_true) / (y_pred.shape[0] * per_row)).astype(y_pred.dtype)


_NAMES: dict[str, type[Loss]] = {
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
}


def get(identifier: str | Loss) -> Loss:
    """The loss named ``identifier`` (Keras spelling), or the object given.

    >>> get("categorical_crossentropy").from_logits
    False
    """
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _NAMES:
        return _NAMES[identifier.lower()]()
    raise ValueError(f"loss must be one of {tuple(_NAMES)} or a Loss, got {identifier!r}")


@dataclass(frozen=True)
class OutputLoss:
    """The loss of one model output: its position, the loss, its weight (``None``: not
    weighted) and the name its value is logged under (``<output>_loss``)."""

    output: int
    loss: Loss
    weight: float | None
    log_name: str


@dataclass(frozen=True)
class CompiledLoss:
    """The losses ``compile`` gives a model's outputs, combined as Keras 3's ``CompileLoss``
    combines them: the total is the sum of each output's loss times its weight; each
    output's own (unweighted) loss is logged when more than one output has a loss.

    Examples
    --------
    >>> compiled = compile_loss(["sparse_categorical_crossentropy", "mse"], [1.0, 0.3],
    ...                         ["cls", "reg"])
    >>> compiled.log_names
    ['cls_loss', 'reg_loss']
    >>> compiled.total([2.0, 1.0])
    2.3
    """

    output_names: tuple[str, ...]
    losses: tuple[OutputLoss, ...]

    @property
    def log_names(self) -> list[str]:
        return [entry.log_name for entry in self.losses] if len(self.losses) > 1 else []

    @property
    def outputs(self) -> set[int]:
        """The outputs that have a loss (their targets are needed)."""
        return {entry.output for entry in self.losses}

    def values(self, y_true: Sequence[Any], y_pred: Sequence[np.ndarray]) -> list[float]:
        """Each loss's unweighted batch mean, in the order of :attr:`losses`."""
        return [entry.loss(y_true[entry.output], y_pred[entry.output]) for entry in self.losses]

    def total(self, values: Sequence[float]) -> float:
        """The loss that is minimised: ``sum(weight * value)``."""
        return sum((value if entry.weight is None else value * entry.weight
                    for entry, value in zip(self.losses, values)), 0.0)

    def gradients(self, y_true: Sequence[Any], y_pred: Sequence[np.ndarray]
                  ) -> list[np.ndarray | None]:
        """``d total / d y_pred`` per output (``None`` for an output without a loss)."""
        grads: list[np.ndarray | None] = [None] * len(y_pred)
        for entry in self.losses:
            grad = entry.loss.gradient(y_true[entry.output], y_pred[entry.output])
            if entry.weight is not None:
                grad = (grad * entry.weight).astype(grad.dtype)
            grads[entry.output] = grad
        return grads


def _outputs_text(names: Sequence[str]) -> str:
    return f"{len(names)} output{'s' if len(names) != 1 else ''} ({', '.join(names)})"


def _weight(where: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        hint = ("; compile's third argument is loss_weights, as in Keras: pass metrics=[...] "
                "by name" if isinstance(value, str) else "")
        raise ValueError(f"{where} must be a finite number, got {value!r}{hint}")
    return float(value)


def compile_loss(loss: Any, loss_weights: Any, output_names: Sequence[str]) -> CompiledLoss:
    """Read ``compile``'s ``loss`` and ``loss_weights`` for outputs named ``output_names``.

    ``loss`` is one loss for every output, a list with one entry per output,
    or a dict with one entry per output name (an entry ``None``: that output
    has no loss). ``loss_weights`` is a number (one output), or a list or dict
    like ``loss``; as in Keras, one loss shared by several outputs takes no
    per-output weights.
    """
    outputs = list(output_names)
    listed = _outputs_text(outputs)
    if loss is None:
        raise ValueError("compile needs loss=, e.g. 'sparse_categorical_crossentropy' or "
                         "'categorical_crossentropy'")
    shared = not isinstance(loss, (list, tuple, dict))
    if isinstance(loss, dict):
        unknown = [key for key in loss if key not in outputs]
        missing = [name for name in outputs if name not in loss]
        if unknown or missing:
            raise ValueError(f"loss has keys {list(loss)} but the model has {listed}"
                             + (f"; unknown: {unknown}" if unknown else "")
                             + (f"; missing: {missing} (give None for no loss)" if missing
                                else ""))
        entries = [(f"loss[{name!r}]", loss[name]) for name in outputs]
    elif isinstance(loss, (list, tuple)):
        if len(loss) != len(outputs):
            raise ValueError(f"loss has {len(loss)} entries but the model has {listed}")
        entries = [(f"loss[{index}]", value) for index, value in enumerate(loss)]
    else:
        entries = [("loss", loss)] * len(outputs)
    resolved: list[Loss | None] = []
    for where, value in entries:
        try:
            resolved.append(None if value is None else get(value))
        except ValueError as error:
            raise ValueError(f"{where}: {error}" if where != "loss" else str(error)) from None
    if all(value is None for value in resolved):
        raise ValueError(f"loss gives no output a loss (all None); the model has {listed}")

    weights: list[float | None]
    if loss_weights is None:
        weights = [None] * len(outputs)
    elif isinstance(loss_weights, (dict, list, tuple)) and shared and len(outputs) > 1:
        raise ValueError(f"loss_weights={loss_weights!r} gives per-output weights but loss="
                         f"{loss!r} is one loss for all {listed}: give loss as a list or a dict "
                         "too, one entry per output (Keras refuses this as well)")
    elif isinstance(loss_weights, dict):
        unknown = [key for key in loss_weights if key not in outputs]
        missing = [name for name, value in zip(outputs, resolved)
                   if value is not None and name not in loss_weights]
        if unknown or missing:
            raise ValueError(f"loss_weights has keys {list(loss_weights)} but the model has "
                             f"{listed}" + (f"; unknown: {unknown}" if unknown else "")
                             + (f"; missing: {missing}" if missing else ""))
        weights = [_weight(f"loss_weights[{name!r}]", loss_weights.get(name))
                   for name in outputs]
    elif isinstance(loss_weights, (list, tuple)):
        if len(loss_weights) != len(outputs):
            raise ValueError(f"loss_weights has {len(loss_weights)} entries but the model has "
                             f"{listed}")
        weights = [_weight(f"loss_weights[{index}]", value)
                   for index, value in enumerate(loss_weights)]
    elif len(outputs) == 1:
        weights = [_weight("loss_weights", loss_weights)]
    else:
        raise ValueError(f"loss_weights={loss_weights!r} is one number but the model has "
                         f"{listed}: give a list or a dict by output name")
    return CompiledLoss(tuple(outputs), tuple(
        OutputLoss(index, value, weight, f"{outputs[index]}_loss")
        for index, (value, weight) in enumerate(zip(resolved, weights)) if value is not None))
