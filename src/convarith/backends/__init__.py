"""Optional backends: run a :class:`~convarith.ConvSpec` through PyTorch or JAX.

Each backend module has ``conv(x, kernel, spec, bias=None)`` with the
engine's conventions (``x`` in ``spec.data_format``, the kernel in Keras's
layout ``(k..., in/groups, out)``, or ``(k..., out/groups, in)`` when
transposed, ``None`` for pooling) and returns a NumPy array. Padding comes
from the resolved spec, applied explicitly as :mod:`convarith.port` writes
it, so the backends compute exactly what the NumPy engine computes; they use
the GPU when the framework sees one.

Examples
--------
>>> import numpy as np
>>> from convarith import ConvSpec
>>> x = np.ones((1, 6, 6, 2), np.float32)
>>> run(x, np.ones((3, 3, 2, 4), np.float32), ConvSpec(3, strides=2, padding="same"), backend="torch").shape
(1, 3, 3, 4)
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from ..spec import ConvSpec

__all__ = ["run", "BACKENDS"]

BACKENDS = ("numpy", "torch", "jax")


def run(x: Any, kernel: Any, spec: ConvSpec, bias: Any = None, backend: str = "torch") -> np.ndarray:
    """Run ``spec`` on ``x`` through framework ``backend`` (``"torch"`` or ``"jax"``).

    The backends' own entry: :func:`convarith.conv` routes ``backend=`` here and
    runs ``"numpy"`` itself; nothing here calls back into it. Each backend checks
    its arguments with the engine's :func:`convarith.engine.core.prepare`.
    """
    if backend not in BACKENDS[1:]:
        raise ValueError(f"backend must be one of {BACKENDS[1:]} (backend='numpy' is "
                         f"convarith.conv itself), got {backend!r}")
    module = importlib.import_module(f".{backend}", __package__)
    result: np.ndarray = module.conv(x, kernel, spec, bias)
    return result
