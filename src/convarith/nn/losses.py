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

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Loss",
    "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy",
    "MeanSquaredError",
    "get",
    "EPSILON",
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
        if y.ndim < 1 or y.shape[1:] != tuple(output_shape):
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
class MeanSquaredError(Loss):
    """Mean of squared differences over the last axis, then over the batch."""

    name: str = "mean_squared_error"

    def check_targets(self, y_true: np.ndarray, output_shape: tuple[int, ...]) -> np.ndarray:
        y = np.asarray(y_true)
        if y.shape[1:] != tuple(output_shape):
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
