"""Shared preparation for the framework backends: checked arrays and the resolved spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..spec import ConvSpec, ResolvedConv

__all__ = ["Call", "prepare"]


@dataclass(frozen=True)
class Call:
    """One backend call, normalized: a batched input in its own layout, resolved once."""

    x: np.ndarray
    kernel: np.ndarray | None
    bias: np.ndarray | None
    resolved: ResolvedConv
    channels_last: bool
    unbatched: bool

    @property
    def rank(self) -> int:
        return self.resolved.rank

    @property
    def pool_padding(self) -> list[tuple[int, int]]:
        """Padding plus the cells a ceil-mode window reaches beyond it."""
        return list(self.resolved.window_padding)


def prepare(x: Any, kernel: Any, spec: ConvSpec, bias: Any) -> Call:
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec must be a ConvSpec, got {type(spec).__name__}")
    array = np.asarray(x)
    if array.dtype.kind not in "fiu":
        raise TypeError(f"x must be a numeric array, got dtype {array.dtype}")
    if array.dtype.kind != "f" or array.dtype == np.float16:
        array = array.astype(np.float32 if array.dtype == np.float16 else np.float64)
    rank = spec.rank or 2
    unbatched = array.ndim == rank + 1
    if unbatched:
        array = array[None]
    if array.ndim != rank + 2:
        raise ValueError(f"x must have {rank + 2} axes (batch, channels, {rank} spatial) for a rank-{rank} "
                         f"spec, got shape {np.shape(x)}")
    resolved = spec.resolve(array.shape)
    k = None
    if spec.pool is None:
        if kernel is None:
            raise ValueError("kernel is required for a convolution (None only for pooling)")
        k = np.asarray(kernel, dtype=array.dtype)
        if k.ndim != rank + 2:
            raise ValueError(f"kernel must have {rank + 2} axes (k..., in, out), got shape {k.shape}")
    elif kernel is not None:
        raise ValueError("pooling takes no kernel; pass kernel=None")
    b = None if bias is None else np.asarray(bias, dtype=array.dtype)
    return Call(array, k, b, resolved, spec.data_format == "channels_last", unbatched)
