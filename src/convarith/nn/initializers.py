"""Weight initializers, seeded, with Keras's names and fan rules.

Examples
--------
>>> import numpy as np
>>> w = get("glorot_uniform")((3, 3, 1, 8), np.random.default_rng(0))
>>> w.shape, w.dtype, bool(np.abs(w).max() <= np.sqrt(6 / (9 + 72)))
((3, 3, 1, 8), dtype('float32'), True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Initializer", "GlorotUniform", "HeNormal", "Zeros", "Ones", "get", "compute_fans",
           "serialize"]


def compute_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` as Keras counts them: kernels are ``(k..., in, out)``."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


@dataclass(frozen=True)
class Initializer:
    """Base class: ``initializer(shape, rng) -> float32 array``."""

    seed: int | None = None

    def __call__(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        if self.seed is not None:
            rng = np.random.default_rng(self.seed)
        return np.asarray(self.sample(tuple(shape), rng), np.float32)

    def sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class GlorotUniform(Initializer):
    """Uniform on ``±sqrt(6 / (fan_in + fan_out))``."""

    def sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        fan_in, fan_out = compute_fans(shape)
        limit = np.sqrt(6.0 / max(1, fan_in + fan_out))
        return rng.uniform(-limit, limit, shape)


@dataclass(frozen=True)
class HeNormal(Initializer):
    """Truncated-free normal with standard deviation ``sqrt(2 / fan_in)``."""

    def sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        fan_in, _ = compute_fans(shape)
        return rng.normal(0.0, np.sqrt(2.0 / max(1, fan_in)), shape)


@dataclass(frozen=True)
class Zeros(Initializer):
    def sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        return np.zeros(shape)


@dataclass(frozen=True)
class Ones(Initializer):
    def sample(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        return np.ones(shape)


_NAMES: dict[str, type[Initializer]] = {
    "glorot_uniform": GlorotUniform,
    "he_normal": HeNormal,
    "zeros": Zeros,
    "ones": Ones,
}


_CLASSES: dict[str, type[Initializer]] = {cls.__name__: cls for cls in _NAMES.values()}


def serialize(initializer: Initializer) -> dict[str, object]:
    """Keras's config entry for ``initializer``.

    >>> serialize(Zeros())["class_name"]
    'Zeros'
    """
    config: dict[str, object] = {}
    if isinstance(initializer, (GlorotUniform, HeNormal)):
        config = {"seed": initializer.seed, "input_axes": None, "output_axes": None}
    return {"module": "keras.initializers", "class_name": type(initializer).__name__,
            "config": config, "registered_name": None}


def get(identifier: str | Initializer | dict[str, object]) -> Initializer:
    """The initializer named ``identifier`` (Keras spelling), or the object given.

    >>> get("zeros")
    Zeros(seed=None)
    """
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _NAMES:
        return _NAMES[identifier.lower()]()
    if isinstance(identifier, dict) and identifier.get("class_name") in _CLASSES:
        config: dict[str, Any] = identifier.get("config") or {}  # type: ignore[assignment]
        return _CLASSES[str(identifier["class_name"])](seed=config.get("seed"))
    name = type(identifier).__name__
    if name in _CLASSES and hasattr(identifier, "get_config"):  # a Keras initializer object
        return _CLASSES[name](seed=identifier.get_config().get("seed"))
    raise ValueError(
        f"initializer must be one of {tuple(_NAMES)} or an Initializer, got {identifier!r}"
    )
