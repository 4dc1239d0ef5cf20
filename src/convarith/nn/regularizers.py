"""Weight and activity penalties added to the loss, as ``keras.regularizers``.

``L1(l1)`` adds ``l1 * sum(|w|)``, ``L2(l2)`` adds ``l2 * sum(w**2)``,
``L1L2(l1, l2)`` both. A layer's ``kernel_regularizer`` and
``bias_regularizer`` penalise its weights; its ``activity_regularizer``
penalises its output, divided by the batch size (Keras 3).

Examples
--------
>>> import numpy as np
>>> round(get("l2")(np.ones((2, 2))), 6)
0.04
>>> get({"class_name": "L1L2", "config": {"l1": 0.5, "l2": 0.0}})(np.array([-1.0, 2.0]))
1.5
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Regularizer", "L1", "L2", "L1L2", "get", "serialize"]


def _factor(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"a regularization factor must be a non-negative number, got {value!r}")
    return float(value)


def _f32(value: Any) -> float:
    """Keras's ``L1`` stores its factor as a float32 value (``L2`` and ``L1L2`` do not)."""
    return float(np.float32(_factor(value)))


@dataclass(frozen=True)
class Regularizer:
    """``l1 * sum(|w|) + l2 * sum(w**2)``; its gradient is ``l1 sign(w) + 2 l2 w``.

    ``L1`` keeps its factor as a float32 value, as Keras 3 stores it.
    """

    l1: float = 0.0
    l2: float = 0.0

    def __call__(self, w: np.ndarray) -> float:
        value = 0.0
        if self.l1:
            value += self.l1 * float(np.sum(np.abs(w)))
        if self.l2:
            value += self.l2 * float(np.sum(np.square(w, dtype=np.float64)))
        return value

    def gradient(self, w: np.ndarray) -> np.ndarray:
        grad = np.zeros_like(w)
        if self.l1:
            # the derivative of |w| at 0 taken as +1, as JAX (Keras's JAX backend) does
            grad += w.dtype.type(self.l1) * np.where(w >= 0, 1, -1).astype(w.dtype)
        if self.l2:
            grad += w.dtype.type(2 * self.l2) * w
        return grad

    def get_config(self) -> dict[str, float]:
        return {"l1": self.l1, "l2": self.l2}


class L1(Regularizer):
    def __init__(self, l1: float = 0.01) -> None:
        super().__init__(l1=_f32(l1))

    def get_config(self) -> dict[str, float]:
        return {"l1": self.l1}


class L2(Regularizer):
    def __init__(self, l2: float = 0.01) -> None:
        super().__init__(l2=_factor(l2))

    def get_config(self) -> dict[str, float]:
        return {"l2": self.l2}


class L1L2(Regularizer):
    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        super().__init__(l1=_factor(l1), l2=_factor(l2))


_NAMES: dict[str, type[Regularizer]] = {"l1": L1, "l2": L2, "l1_l2": L1L2, "l1l2": L1L2,
                                        "L1": L1, "L2": L2, "L1L2": L1L2}
_STRING_DEFAULTS: dict[str, dict[str, float]] = {"l1_l2": {"l1": 0.01, "l2": 0.01}}


def get(value: Any) -> Regularizer | None:
    """A regularizer from ``None``, a name (``"l1"``, ``"l2"``, ``"l1_l2"``), a Keras
    config dict, or a regularizer (ours or Keras's, read through ``get_config``)."""
    if value is None or isinstance(value, Regularizer):
        return value
    if isinstance(value, str):
        if value not in _NAMES:
            raise ValueError(f"regularizer must be 'l1', 'l2' or 'l1_l2', got {value!r}")
        return _NAMES[value](**_STRING_DEFAULTS.get(value, {}))
    if isinstance(value, Mapping):
        name = value.get("class_name")
        if name not in _NAMES:
            raise ValueError(f"regularizer class must be L1, L2 or L1L2, got {name!r}")
        return _NAMES[name](**dict(value.get("config") or {}))
    name = type(value).__name__
    if name in _NAMES and hasattr(value, "get_config"):
        return _NAMES[name](**{k: float(v) for k, v in value.get_config().items()})
    raise ValueError(f"regularizer must be None, 'l1', 'l2', 'l1_l2' or L1/L2/L1L2, got {value!r}")


def serialize(value: Regularizer | None) -> dict[str, Any] | None:
    """Keras's config entry for a regularizer."""
    if value is None:
        return None
    return {"module": "keras.regularizers", "class_name": type(value).__name__,
            "config": value.get_config(), "registered_name": None}
