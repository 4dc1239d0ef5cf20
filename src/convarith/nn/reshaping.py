"""Shape layers: zero padding, cropping, upsampling, global pooling, reshape, permute.

Each works on 1-, 2- and 3-D samples with Keras 3's arguments, defaults and
``get_config`` (padding and cropping as per-axis ``(lo, hi)`` pairs), and
accepts any spatial size on every call.

Examples
--------
>>> import numpy as np
>>> ZeroPadding2D(((1, 0), (2, 3)))(np.ones((1, 2, 2, 1))).shape
(1, 3, 7, 1)
>>> Cropping1D((1, 2))(np.ones((1, 6, 2))).shape
(1, 3, 2)
>>> UpSampling2D(2, interpolation="bilinear")(np.ones((1, 2, 3, 1))).shape
(1, 4, 6, 1)
>>> GlobalMaxPooling3D(keepdims=True)(np.ones((1, 2, 2, 2, 4))).shape
(1, 1, 1, 1, 4)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..spec import ConvSpec, ResolvedConv
from .layers import Layer, Shape, SpatialLayer, check_data_format

__all__ = [
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "Reshape", "Permute",
]


def _pairs(name: str, value: Any, rank: int) -> tuple[tuple[int, int], ...]:
    """Keras's padding/cropping argument as ``(lo, hi)`` per axis: an int, one int per
    axis, or one pair per axis (for rank 1, a single ``(lo, hi)`` pair)."""
    def bad() -> ValueError:
        shapes = {1: "an int or (left, right)", 2: "an int, (rows, cols) or ((top, bottom), "
                  "(left, right))", 3: "an int, three ints or three (lo, hi) pairs"}[rank]
        return ValueError(f"{name} must be {shapes} of non-negative ints, got {value!r}")

    def nonneg(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise bad()
        return int(v)

    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return ((nonneg(value),) * 2,) * rank
    try:
        items = tuple(value)
    except TypeError:
        raise bad() from None
    if rank == 1:
        if len(items) != 2:
            raise bad()
        return ((nonneg(items[0]), nonneg(items[1])),)
    if len(items) != rank:
        raise bad()
    pairs = []
    for item in items:
        if isinstance(item, numbers.Integral):
            pairs.append((nonneg(item), nonneg(item)))
        else:
            pair = tuple(item) if isinstance(item, Sequence) else ()
            if len(pair) != 2:
                raise bad()
            pairs.append((nonneg(pair[0]), nonneg(pair[1])))
    return tuple(pairs)


def _pairs_config(pairs: tuple[tuple[int, int], ...]) -> Any:
    return pairs[0] if len(pairs) == 1 else pairs


class _ZeroPadding(SpatialLayer):
    def __init__(self, padding: Any = 1, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_format = check_data_format(data_format)
        self.padding: tuple[tuple[int, int], ...] = _pairs("padding", padding, self.rank)

    def resolved(self) -> ResolvedConv | None:
        if self.input_shape is None:
            return None
        return self._resolve_open(ConvSpec(1, padding=self.padding, rank=self.rank),
                                  self._last_shape(self.input_shape))[0]

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        last = self._last_shape(input_shape)
        size = tuple(None if n is None else n + lo + hi
                     for n, (lo, hi) in zip(last[:-1], self.padding))
        return self._from_last_shape(tuple(size) + (last[-1],))

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        return self._from_last(np.pad(self._to_last(x), ((0, 0), *self.padding, (0, 0))))

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        d = self._to_last(d_out)
        index = tuple(slice(lo, n - hi) for (lo, hi), n in zip(self.padding, d.shape[1:-1]))
        return self._from_last(d[(slice(None),) + index])

    def _config_items(self) -> dict[str, Any]:
        return {"padding": _pairs_config(self.padding), "data_format": self.data_format}


class ZeroPadding1D(_ZeroPadding):
    """Zeros before and after the steps: ``padding`` int or ``(left, right)``."""

    rank = 1


class ZeroPadding2D(_ZeroPadding):
    """Zeros around rows and columns: ``padding`` int, ``(rows, cols)`` or ``((t, b), (l, r))``."""

    rank = 2


class ZeroPadding3D(_ZeroPadding):
    """Zeros around the three spatial axes."""

    rank = 3


class _Cropping(SpatialLayer):
    def __init__(self, cropping: Any = 1, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_format = check_data_format(data_format)
        self.cropping: tuple[tuple[int, int], ...] = _pairs("cropping", cropping, self.rank)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        last = self._last_shape(input_shape)
        size = []
        for axis, (n, (lo, hi)) in enumerate(zip(last[:-1], self.cropping)):
            if n is not None and n - lo - hi < 1:
                raise ValueError(f"cropping {self.cropping} removes all {n} cells of spatial axis "
                                 f"{axis}; crop less than the input's size")
            size.append(None if n is None else n - lo - hi)
        return self._from_last_shape(tuple(size) + (last[-1],))

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        x_last = self._to_last(x)
        self.compute_output_shape(x.shape[1:])  # raises if nothing would be left
        if keep:
            self._cache = x_last.shape
        index = tuple(slice(lo, n - hi) for (lo, hi), n in zip(self.cropping, x_last.shape[1:-1]))
        return self._from_last(x_last[(slice(None),) + index])

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        shape = self._kept()
        d = self._to_last(d_out)
        return self._from_last(np.pad(d, ((0, 0), *self.cropping, (0, 0))).reshape(shape))

    def _config_items(self) -> dict[str, Any]:
        return {"cropping": _pairs_config(self.cropping), "data_format": self.data_format}


class Cropping1D(_Cropping):
    """Drops steps at the start and end: ``cropping`` int or ``(left, right)``."""

    rank = 1

    def __init__(self, cropping: Any = (1, 1), **kwargs: Any) -> None:
        super().__init__(cropping, None, **kwargs)

    def _config_items(self) -> dict[str, Any]:
        return {"cropping": self.cropping[0]}


class Cropping2D(_Cropping):
    """Drops rows and columns at the edges (default: none)."""

    rank = 2

    def __init__(self, cropping: Any = ((0, 0), (0, 0)), data_format: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(cropping, data_format, **kwargs)


class Cropping3D(_Cropping):
    """Drops cells at the edges of the three spatial axes (default: one each side)."""

    rank = 3

    def __init__(self, cropping: Any = ((1, 1), (1, 1), (1, 1)), data_format: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(cropping, data_format, **kwargs)


def _bilinear_matrix(size: int, factor: int) -> np.ndarray:
    """``(size * factor, size)`` weights of half-pixel bilinear upsampling, edges clamped.

    Output cell ``o`` samples the input at ``(o + 0.5) / factor - 0.5``.
    """
    out = np.arange(size * factor)
    position = np.clip((out + 0.5) / factor - 0.5, 0, size - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, size - 1)
    weight = position - low
    matrix = np.zeros((size * factor, size))
    matrix[out, low] += 1 - weight
    matrix[out, high] += weight
    return matrix


class _UpSampling(SpatialLayer):
    def __init__(self, size: Any = 2, data_format: str | None = None,
                 interpolation: str = "nearest", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from ..spec import per_axis

        self.size = per_axis("size", size, self.rank)
        self.data_format = check_data_format(data_format)
        if interpolation not in ("nearest", "bilinear") or (
                interpolation == "bilinear" and self.rank != 2):
            allowed = "'nearest' or 'bilinear'" if self.rank == 2 else "'nearest'"
            raise ValueError(f"interpolation must be {allowed}, got {interpolation!r}")
        self.interpolation = interpolation

    def resolved(self) -> ResolvedConv | None:
        if self.input_shape is None:
            return None
        spec = ConvSpec(self.size, strides=self.size, transposed=True, rank=self.rank)
        return self._resolve_open(spec, self._last_shape(self.input_shape))[0]

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        last = self._last_shape(input_shape)
        size = tuple(None if n is None else n * f for n, f in zip(last[:-1], self.size))
        return self._from_last_shape(tuple(size) + (last[-1],))

    def _matrices(self, spatial: Sequence[int]) -> list[np.ndarray]:
        return [_bilinear_matrix(n, f) for n, f in zip(spatial, self.size)]

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        y = self._to_last(x)
        if keep:
            self._cache = y.shape
        if self.interpolation == "bilinear":
            rows, cols = self._matrices(y.shape[1:-1])
            out = np.einsum("oh,nhwc->nowc", rows.astype(y.dtype), y)
            return self._from_last(np.einsum("pw,nowc->nopc", cols.astype(y.dtype), out))
        for axis, factor in enumerate(self.size, start=1):
            y = np.repeat(y, factor, axis=axis)
        return self._from_last(y)

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        shape = self._kept()
        d = self._to_last(d_out)
        if self.interpolation == "bilinear":
            rows, cols = self._matrices(shape[1:-1])
            d = np.einsum("pw,nopc->nowc", cols.astype(d.dtype), d)
            return self._from_last(np.einsum("oh,nowc->nhwc", rows.astype(d.dtype), d))
        split = [shape[0]]
        for n, f in zip(shape[1:-1], self.size):
            split += [n, f]
        d = d.reshape(*split, shape[-1]).sum(axis=tuple(range(2, 2 * self.rank + 1, 2)))
        return self._from_last(d)

    def _config_items(self) -> dict[str, Any]:
        return {"size": tuple(self.size), "data_format": self.data_format,
                "interpolation": self.interpolation}


class UpSampling1D(_UpSampling):
    """Repeats each step ``size`` times."""

    rank = 1

    def __init__(self, size: int = 2, **kwargs: Any) -> None:
        super().__init__(size, None, "nearest", **kwargs)

    def _config_items(self) -> dict[str, Any]:
        return {"size": self.size[0]}


class UpSampling2D(_UpSampling):
    """Repeats rows and columns (``"nearest"``) or interpolates (``"bilinear"``, half-pixel
    centres as ``keras.layers.UpSampling2D``)."""

    rank = 2


class UpSampling3D(_UpSampling):
    """Repeats cells along the three spatial axes."""

    rank = 3

    def __init__(self, size: Any = (2, 2, 2), data_format: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(size, data_format, "nearest", **kwargs)

    def _config_items(self) -> dict[str, Any]:
        return {"size": tuple(self.size), "data_format": self.data_format}


class _GlobalPooling(SpatialLayer):
    op = "mean"

    def __init__(self, data_format: str | None = None, keepdims: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_format = check_data_format(data_format)
        if not isinstance(keepdims, bool):
            raise ValueError(f"keepdims must be True or False, got {keepdims!r}")
        self.keepdims = keepdims

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        last = self._last_shape(input_shape)
        if self.keepdims:
            return self._from_last_shape((*(1,) * self.rank, last[-1]))
        return (last[-1],)

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        x_last = self._to_last(x)
        axes = tuple(range(1, self.rank + 1))
        y = x_last.max(axis=axes, keepdims=True) if self.op == "max" else \
            x_last.mean(axis=axes, keepdims=True)
        if keep:
            self._cache = (x_last, y)
        return self._from_last(y) if self.keepdims else y.reshape(len(x), -1)

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        x_last, y = self._kept()
        d = self._to_last(d_out) if self.keepdims else d_out.reshape(y.shape)
        if self.op == "max":
            hit = x_last == y
            share = hit / hit.sum(axis=tuple(range(1, self.rank + 1)), keepdims=True)
            return self._from_last((share * d).astype(x_last.dtype))
        cells = math.prod(x_last.shape[1:-1])
        return self._from_last(np.broadcast_to(d / cells, x_last.shape).astype(x_last.dtype))

    def _config_items(self) -> dict[str, Any]:
        return {"data_format": self.data_format, "keepdims": self.keepdims}


class GlobalAveragePooling1D(_GlobalPooling):
    """Mean over the steps: ``(batch, steps, c) -> (batch, c)``."""

    rank = 1


class GlobalAveragePooling2D(_GlobalPooling):
    """Mean over rows and columns: ``(batch, h, w, c) -> (batch, c)``."""

    rank = 2


class GlobalAveragePooling3D(_GlobalPooling):
    """Mean over the three spatial axes."""

    rank = 3


class GlobalMaxPooling1D(_GlobalPooling):
    """Max over the steps."""

    rank, op = 1, "max"


class GlobalMaxPooling2D(_GlobalPooling):
    """Max over rows and columns."""

    rank, op = 2, "max"


class GlobalMaxPooling3D(_GlobalPooling):
    """Max over the three spatial axes."""

    rank, op = 3, "max"


class Reshape(Layer):
    """Reshapes each sample to ``target_shape`` (one entry may be -1), as ``keras.layers.Reshape``.

    >>> Reshape((-1, 2))(np.zeros((3, 4, 2, 1))).shape
    (3, 4, 2)
    """

    def __init__(self, target_shape: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        target = tuple(int(v) for v in target_shape)
        if sum(v == -1 for v in target) > 1 or any(v < 1 and v != -1 for v in target):
            raise ValueError(f"target_shape must hold positive ints and at most one -1, got "
                             f"{target_shape!r}")
        self.target_shape = target

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if any(v is None for v in input_shape):
            return tuple(None if v == -1 else v for v in self.target_shape)  # type: ignore[misc]
        total = math.prod(input_shape)
        known = math.prod(v for v in self.target_shape if v != -1)
        if -1 in self.target_shape:
            if total % known:
                raise ValueError(f"cannot reshape samples of {total} values to {self.target_shape}")
            return tuple(total // known if v == -1 else v for v in self.target_shape)
        if total != known:
            raise ValueError(f"cannot reshape samples of shape {input_shape} ({total} values) to "
                             f"{self.target_shape} ({known} values)")
        return self.target_shape

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        if keep:
            self._cache = x.shape
        return x.reshape(len(x), *self.compute_output_shape(x.shape[1:]))

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        return d_out.reshape(self._kept())

    def _config_items(self) -> dict[str, Any]:
        return {"target_shape": self.target_shape}


class Permute(Layer):
    """Permutes the sample axes; ``dims`` counts from 1 (the batch axis stays), as in Keras.

    >>> Permute((2, 1))(np.zeros((5, 3, 4))).shape
    (5, 4, 3)
    """

    def __init__(self, dims: Sequence[int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        dims = tuple(int(v) for v in dims)
        if sorted(dims) != list(range(1, len(dims) + 1)):
            raise ValueError(f"Invalid permutation argument dims={dims!r}: dims must be a "
                             f"permutation of 1..{len(dims)} (axis 0, the batch, stays)")
        self.dims = dims

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != len(self.dims):
            raise ValueError(f"dims={self.dims} permutes {len(self.dims)} axes, samples have "
                             f"{len(input_shape)}")
        return tuple(input_shape[d - 1] for d in self.dims)

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        return x.transpose(0, *self.dims)

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        return d_out.transpose(0, *(int(i) + 1 for i in np.argsort(self.dims)))

    def _config_items(self) -> dict[str, Any]:
        return {"dims": self.dims}
