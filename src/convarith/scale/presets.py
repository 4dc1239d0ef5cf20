"""Named image kernels of any size and rank, for ``convarith apply --preset``.

Every preset is built from the binomial (discrete Gaussian) kernel ``B`` and
the centred delta ``I`` (the one at index ``k // 2`` per axis):

* ``identity``: ``I``;
* ``box``: the mean of the window;
* ``blur``: ``B``, normalised to sum 1 (for 3: ``[1, 2, 1] / 4`` per axis);
* ``sharpen``: ``2 I - B`` (unsharp masking; sums to 1);
* ``edge``: ``I - B`` (high-pass; sums to 0, zero on flat regions).

A preset is applied to each channel on its own: the kernel is depthwise,
``(*kernel_size, 1, channels)`` with ``groups = channels``.

Examples
--------
>>> kernel_preset("blur", (3, 3))[:, :, 0, 0] * 16
array([[1., 2., 1.],
       [2., 4., 2.],
       [1., 2., 1.]], dtype=float32)
>>> float(kernel_preset("edge", (5, 5)).sum())
0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np

__all__ = ["PRESETS", "kernel_preset"]

PRESETS = ("identity", "box", "blur", "sharpen", "edge")


def _outer(vectors: Sequence[np.ndarray]) -> np.ndarray:
    result = np.ones(())
    for vector in vectors:
        result = np.multiply.outer(result, vector)
    return result


def kernel_preset(
    name: str, kernel_size: Sequence[int], channels: int = 1, dtype: str = "float32"
) -> np.ndarray:
    """The preset ``name`` as a depthwise Keras-layout kernel ``(*kernel_size, 1, channels)``.

    Parameters
    ----------
    name
        One of :data:`PRESETS`.
    kernel_size
        Taps per spatial axis (1-3 axes).
    channels
        Number of channels it is applied to, each on its own.
    dtype
        Floating dtype of the kernel.
    """
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {name!r}")
    sizes = tuple(int(k) for k in kernel_size)
    if not sizes or any(k < 1 for k in sizes):
        raise ValueError(f"kernel_size must be positive sizes per axis, got {tuple(kernel_size)!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    delta = np.zeros(sizes)
    delta[tuple(k // 2 for k in sizes)] = 1.0
    binomial = _outer([np.array([comb(k - 1, i) for i in range(k)], float) for k in sizes])
    binomial /= binomial.sum()
    single = {
        "identity": delta,
        "box": np.full(sizes, 1.0 / np.prod(sizes)),
        "blur": binomial,
        "sharpen": 2 * delta - binomial,
        "edge": delta - binomial,
    }[name]
    kernel = np.repeat(single[..., None, None], channels, axis=-1)
    return kernel.astype(dtype)
