"""Weight constraints applied after each optimizer step, as ``keras.constraints``.

With ``norms = sqrt(sum(w**2, axis, keepdims=True))`` and ``eps = 1e-7``:
``MaxNorm`` scales ``w`` by ``clip(norms, 0, max_value) / (eps + norms)``,
``MinMaxNorm`` by ``(rate clip(norms, min, max) + (1 - rate) norms) / (eps +
norms)``, ``UnitNorm`` by ``1 / (eps + norms)``; ``NonNeg`` zeroes the
negative entries.

Examples
--------
>>> import numpy as np
>>> get("non_neg")(np.array([-1.0, 2.0])) + 0.0  # NonNeg gives -0.0 for negatives, as Keras
array([0., 2.])
>>> np.round(get({"class_name": "MaxNorm", "config": {"max_value": 1.0, "axis": 0}})(
...     np.array([[3.0], [4.0]])), 6).ravel()
array([0.6, 0.8])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Constraint", "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm", "get", "serialize"]

_EPSILON = 1e-7  # keras.backend.epsilon()


def _norms(w: np.ndarray, axis: Any) -> np.ndarray:
    axis = tuple(axis) if isinstance(axis, (list, tuple)) else axis
    return np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))


class Constraint:
    """Maps weights to their constrained values."""

    def __call__(self, w: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class MaxNorm(Constraint):
    max_value: float = 2.0
    axis: Any = 0

    def __call__(self, w: np.ndarray) -> np.ndarray:
        norms = _norms(w, self.axis)
        return (w * (np.clip(norms, 0, self.max_value) / (_EPSILON + norms))).astype(w.dtype)

    def get_config(self) -> dict[str, Any]:
        return {"max_value": self.max_value, "axis": self.axis}


@dataclass(frozen=True)
class MinMaxNorm(Constraint):
    min_value: float = 0.0
    max_value: float = 1.0
    rate: float = 1.0
    axis: Any = 0

    def __call__(self, w: np.ndarray) -> np.ndarray:
        norms = _norms(w, self.axis)
        desired = self.rate * np.clip(norms, self.min_value, self.max_value) + (1 - self.rate) * norms
        return (w * (desired / (_EPSILON + norms))).astype(w.dtype)

    def get_config(self) -> dict[str, Any]:
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate,
                "axis": self.axis}


@dataclass(frozen=True)
class NonNeg(Constraint):
    def __call__(self, w: np.ndarray) -> np.ndarray:
        return (w * (w >= 0)).astype(w.dtype)


@dataclass(frozen=True)
class UnitNorm(Constraint):
    axis: Any = 0

    def __call__(self, w: np.ndarray) -> np.ndarray:
        return (w / (_EPSILON + _norms(w, self.axis))).astype(w.dtype)

    def get_config(self) -> dict[str, Any]:
        return {"axis": self.axis}


_CLASSES: dict[str, type[Constraint]] = {
    "MaxNorm": MaxNorm, "MinMaxNorm": MinMaxNorm, "NonNeg": NonNeg, "UnitNorm": UnitNorm,
}
_NAMES = {"max_norm": MaxNorm, "min_max_norm": MinMaxNorm, "non_neg": NonNeg,
          "unit_norm": UnitNorm, **_CLASSES}


def get(value: Any) -> Constraint | None:
    """A constraint from ``None``, a name (``"max_norm"``, ``"min_max_norm"``,
    ``"non_neg"``, ``"unit_norm"``), a Keras config dict, or a constraint object
    (ours or Keras's, read through ``get_config``)."""
    if value is None or isinstance(value, Constraint):
        return value
    if isinstance(value, str):
        if value not in _NAMES:
            raise ValueError(f"constraint must be one of {sorted(_NAMES)}, got {value!r}")
        return _NAMES[value]()
    if isinstance(value, Mapping):
        name = value.get("class_name")
        if name not in _CLASSES:
            raise ValueError(f"constraint class must be one of {sorted(_CLASSES)}, got {name!r}")
        return _CLASSES[name](**dict(value.get("config") or {}))
    name = type(value).__name__
    if name in _CLASSES and hasattr(value, "get_config"):
        return _CLASSES[name](**value.get_config())
    raise ValueError(f"constraint must be None, a name or one of {sorted(_CLASSES)}, got {value!r}")


def serialize(value: Constraint | None) -> dict[str, Any] | None:
    """Keras's config entry for a constraint."""
    if value is None:
        return None
    return {"module": "keras.constraints", "class_name": type(value).__name__,
            "config": value.get_config(), "registered_name": None}
