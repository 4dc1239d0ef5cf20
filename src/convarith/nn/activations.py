"""Activation functions with their gradients, named as Keras names them.

Each activation is a pair of pure functions: ``forward(z) -> y`` and
``backward(d_y, z, y) -> d_z``. Every gradient here can be read off ``y``
alone (``z > 0`` exactly where ``relu(z) > 0``), so a layer that owns ``z`` may
overwrite it with ``y`` (:meth:`Activation.overwrite`) and pass ``y`` for both.

Examples
--------
>>> import numpy as np
>>> act = get("relu")
>>> act.forward(np.array([-1.0, 2.0]))
array([0., 2.])
>>> act.backward(np.array([1.0, 1.0]), np.array([-1.0, 2.0]), None)
array([0., 1.])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Activation", "get", "ACTIVATIONS"]

ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax")


@dataclass(frozen=True)
class Activation:
    """A named activation: ``forward(z)`` and ``backward(d_y, z, y)``."""

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    backward: Callable[[np.ndarray, np.ndarray, Any], np.ndarray]

    def overwrite(self, z: np.ndarray) -> np.ndarray:
        """``forward(z)``, written into ``z`` where it can be (``relu``, ``linear``):
        for a caller that owns ``z`` and will not read it again. ``backward(d_y, y, y)``
        then gives the same gradient as ``backward(d_y, z, y)``.

        >>> z = np.array([-1.0, 2.0])
        >>> y = get("relu").overwrite(z)
        >>> y is z, z, get("relu").backward(np.ones(2), y, y)
        (True, array([0., 2.]), array([0., 1.]))
        """
        if self.name == "relu":
            return np.maximum(z, 0, out=z)
        if self.name == "linear":
            return z
        return self.forward(z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # split by sign so that exp never overflows
    out = np.empty_like(z)
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    e = np.exp(z[~positive])
    out[~positive] = e / (1.0 + e)
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_backward(d_y: np.ndarray, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return y * (d_y - (d_y * y).sum(axis=-1, keepdims=True))


_TABLE: dict[str, Activation] = {
    "linear": Activation("linear", lambda z: z, lambda d, z, y: d),
    "relu": Activation("relu", lambda z: np.maximum(z, 0), lambda d, z, y: d * (z > 0)),
    "sigmoid": Activation("sigmoid", _sigmoid, lambda d, z, y: d * y * (1 - y)),
    "tanh": Activation("tanh", np.tanh, lambda d, z, y: d * (1 - y * y)),
    "softmax": Activation("softmax", _softmax, _softmax_backward),
}


def get(identifier: str | Activation | None) -> Activation:
    """The activation named ``identifier`` (``None`` means linear).

    >>> get(None).name
    'linear'
    """
    if identifier is None:
        return _TABLE["linear"]
    if isinstance(identifier, Activation):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _TABLE:
        return _TABLE[identifier.lower()]
    raise ValueError(f"activation must be one of {ACTIVATIONS} or None, got {identifier!r}")
