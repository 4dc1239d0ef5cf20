"""Kernel layouts: Keras's ``(k..., in/groups, out)`` and PyTorch's ``(out, in/groups, k...)``.

For transposed convolutions PyTorch stores ``(in, out/groups, k...)`` and the
engine (like Keras) ``(k..., out/groups, in)``: the same axis permutation.

Examples
--------
>>> import numpy as np
>>> w = np.zeros((8, 3, 5, 5))          # torch Conv2d(3, 8, 5).weight
>>> kernel_from_torch(w).shape
(5, 5, 3, 8)
>>> kernel_to_torch(kernel_from_torch(w)).shape
(8, 3, 5, 5)
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["kernel_from_torch", "kernel_to_torch"]


def _checked(name: str, kernel: Any) -> np.ndarray:
    array = np.asarray(kernel)
    if array.ndim not in (3, 4, 5):
        raise ValueError(
            f"{name} must have 3, 4 or 5 axes (a 1-, 2- or 3-D convolution kernel), got shape "
            f"{array.shape}"
        )
    return array


def kernel_from_torch(weight: Any, transposed: bool = False) -> np.ndarray:
    """PyTorch's weight layout to the engine's (Keras's).

    ``(out, in/groups, k...)`` becomes ``(k..., in/groups, out)``; with
    ``transposed=True``, ``(in, out/groups, k...)`` becomes
    ``(k..., out/groups, in)`` (the same permutation, named for clarity).

    >>> import numpy as np
    >>> kernel_from_torch(np.zeros((4, 2, 3)), transposed=True).shape
    (3, 2, 4)
    """
    array = _checked("weight", weight)
    rank = array.ndim - 2
    return np.ascontiguousarray(np.transpose(array, (*range(2, rank + 2), 1, 0)))


def kernel_to_torch(kernel: Any, transposed: bool = False) -> np.ndarray:
    """The engine's kernel layout to PyTorch's; the inverse of :func:`kernel_from_torch`.

    >>> import numpy as np
    >>> kernel_to_torch(np.zeros((3, 3, 2, 8))).shape
    (8, 2, 3, 3)
    """
    array = _checked("kernel", kernel)
    rank = array.ndim - 2
    return np.ascontiguousarray(np.transpose(array, (rank + 1, rank, *range(rank))))
