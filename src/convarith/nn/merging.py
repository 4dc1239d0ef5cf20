"""Merge layers: several inputs of one shape into one output, as ``keras.layers.Add`` etc.

``Add``, ``Subtract`` (two inputs), ``Multiply``, ``Average``, ``Maximum``,
``Minimum`` combine element-wise (NumPy broadcasting, as Keras); ``Concatenate``
joins along ``axis`` (the channels by default). Call them on a list.

Examples
--------
>>> import numpy as np
>>> Add()([np.ones((1, 2)), np.ones((1, 2))])
array([[2., 2.]], dtype=float32)
>>> Concatenate()([np.ones((1, 2, 3)), np.zeros((1, 2, 1))]).shape
(1, 2, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .layers import Layer, Shape, format_shape

__all__ = ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
           "Dot"]


def _unbroadcast(d: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``d`` over the axes that broadcasting added or stretched to reach ``shape``."""
    while d.ndim > len(shape):
        d = d.sum(axis=0)
    axes = tuple(a for a, n in enumerate(shape) if n == 1 and d.shape[a] != 1)
    return d.sum(axis=axes, keepdims=True) if axes else d


class _Merge(Layer):
    """Base: ``forward`` and ``backward`` take and give lists."""

    multiple_inputs = True
    min_inputs = 2
    max_inputs: int | None = None

    def _check_count(self, count: int) -> None:
        if count < self.min_inputs or (self.max_inputs is not None and count > self.max_inputs):
            wanted = (f"exactly {self.max_inputs}" if self.max_inputs == self.min_inputs
                      else f"at least {self.min_inputs}")
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) needs {wanted} "
                             f"inputs, got {count}")

    def __call__(self, x: Any, training: bool = False) -> Any:
        from .functional import call_symbolic, is_symbolic

        if is_symbolic(x):
            return call_symbolic(self, x)
        if not isinstance(x, (list, tuple)):
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}) merges a list of "
                             f"inputs, got {type(x).__name__}")
        arrays = [np.asarray(v, dtype=self.dtype) for v in x]
        self._check_count(len(arrays))
        self.merged_output_shape([a.shape[1:] for a in arrays])
        if not self.built:
            self.built = True
        return self.forward(arrays, training=training)

    def build_merge(self, shapes: Sequence[Shape]) -> Shape:
        self._check_count(len(shapes))
        out = self.merged_output_shape(shapes)
        self.built = True
        return out

    def merged_output_shape(self, shapes: Sequence[Shape]) -> Shape:
        ndims = {len(s) for s in shapes}
        if len(ndims) != 1:
            raise ValueError(self._mismatch(shapes))
        out = []
        for sizes in zip(*shapes):
            known = {v for v in sizes if v is not None and v != 1}
            if len(known) > 1:
                raise ValueError(self._mismatch(shapes))
            out.append(known.pop() if known else (None if None in sizes else 1))
        return tuple(out)  # type: ignore[arg-type]

    def _mismatch(self, shapes: Sequence[Shape]) -> str:
        return (f"layer {self.name!r} ({type(self).__name__}) needs inputs of one shape, got "
                + ", ".join(format_shape((None, *s)) for s in shapes))

    def _combine(self, arrays: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def forward(self, x: Any, training: bool = False, keep: bool = False) -> np.ndarray:
        y = self._combine(list(x))
        if keep:
            self._cache = (list(x), y)
        return y.astype(x[0].dtype, copy=False)

    def backward(self, d_out: np.ndarray) -> Any:
        arrays, y = self._kept()
        return [_unbroadcast(d, a.shape).astype(a.dtype, copy=False)
                for d, a in zip(self._input_grads(arrays, y, d_out), arrays)]

    def _input_grads(self, arrays: list[np.ndarray], y: np.ndarray,
                     d_out: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


class Add(_Merge):
    """Sum of the inputs."""

    def _combine(self, arrays: list[np.ndarray]) -> np.ndarray:
        y = arrays[0]
        for a in arrays[1:]:
            y = y + a
        return y

    def _input_grads(self, arrays: list[np.ndarray], y: np.ndarray,
                     d_out: np.ndarray) -> list[np.ndarray]:
        return [d_out for _ in arrays]


class Subtract(_Merge):
    """First input minus the second (exactly two inputs)."""

    max_inputs = 2

    def _combine(self, arrays: list[np.ndarray]) -> np.ndarray:
        return arrays[0] - arrays[1]

    def _input_grads(self, arrays: list[np.ndarray], y: np.ndarray,
                     d_out: np.ndarray) -> list[np.ndarray]:
        return [d_out, -d_out]


class Multiply(_Merge):
    """Element-wise product of the inputs."""

    def _combine(self, arrays: list[np.ndarray]) -> np.ndarray:
        y = arrays[0]
        for a in arrays[1:]:
            y = y * a
        return y

    def _input_grads(self, arrays: list[np.ndarray], y: np.ndarray,
                     d_out: np.ndarray) -> list[np.ndarray]:
        grads = []
        for i in range(len(arrays)):
            others: Any = d_out
            for j, a in enumerate(arrays):
                if j != i:
                    others = others * a
            grads.append(others)
        return grads


class Average(_Merge):
    """Mean of the inputs."""

    def _combine(self, arrays: list[np.ndarray]) -> np.ndarray:
        y = arrays[0]
        for a in arrays[1:]:
            y = y + a
        return y / y.dtype.type(len(arrays))

    def _input_grads(self, arrays: list[np.ndarray], y: np.ndarray,
                     d_out: np.ndarray) -> list[np.ndarray]:
        return [d_out / d_out.dtype.type(len(arrays)) for _ in arrays]


class Maximum(_Merge):
    """Element-wise maximum; the gradient goes to the first input holding it."""

    pick = staticmethod(np.maximum)

    def _combine(self, arrays: list[np.ndarray]) -> np.ndarray:
        y = arrays[0]
        for a in arrays[1:]:
            y = self.pick(y, a)  # type: ignore[arg-type]
        return y

    def _input_grads(self, arrays: list[np.ndarray], y: np.ndarray,
                     d_out: np.ndarray) -> list[np.ndarray]:
        taken = np.zeros(np.broadcast_shapes(*(a.shape for a in arrays)), bool)
        grads = []
        for a in arrays:
            mine = (a == y) & ~taken
            taken |= mine
            grads.append(d_out * mine)
        return grads


class Minimum(Maximum):
    """Element-wise minimum; the gradient goes to the first input holding it."""

    pick = staticmethod(np.minimum)


class Concatenate(_Merge):
    """Joins the inputs along ``axis`` (default -1, the channels of channels-last data)."""

    min_inputs = 1

    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(axis, bool) or not isinstance(axis, int) or axis == 0:
            raise ValueError(f"axis must be a nonzero int (axis 0 is the batch), got {axis!r}")
        self.axis = axis

    def merged_output_shape(self, shapes: Sequence[Shape]) -> Shape:
        ndim = len(shapes[0])
        axis = self.axis - 1 if self.axis > 0 else ndim + self.axis
        if any(len(s) != ndim for s in shapes) or not 0 <= axis < ndim:
            raise ValueError(self._mismatch(shapes))
        out = list(shapes[0])
        for s in shapes[1:]:
            for a, (u, v) in enumerate(zip(out, s)):
                if a != axis and u is not None and v is not None and u != v:
                    raise ValueError(self._mismatch(shapes) + f" (all but axis {self.axis} "
                                     "must agree)")
                if a != axis and u is None:
                    out[a] = v
        sizes = [s[axis] for s in shapes]
        out[axis] = None if None in sizes else sum(sizes)  # type: ignore[assignment]
        return tuple(out)

    def _combine(self, arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(arrays, axis=self.axis)

    def _input_grads(self, arrays: list[np.ndarray], y: np.ndarray,
                     d_out: np.ndarray) -> list[np.ndarray]:
        bounds = np.cumsum([a.shape[self.axis] for a in arrays])[:-1]
        return list(np.split(d_out, bounds, axis=self.axis))

    def _config_items(self) -> dict[str, Any]:
        return {"axis": self.axis}


class Dot(_Merge):
    """Batched dot product of two inputs along ``axes``, as ``keras.layers.Dot``.

    ``axes`` is one int (the same axis of both inputs) or a pair; axis 0 is the batch
    and cannot be summed over. With ``normalize=True`` both inputs are first divided
    by their L2 norm along those axes (cosine similarity). Two 2-D inputs give
    ``(batch, 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> Dot(axes=1)([np.ones((2, 3)), np.full((2, 3), 2.0)])
    array([[6.],
           [6.]], dtype=float32)
    """

    min_inputs = 2
    max_inputs = 2

    def __init__(self, axes: int | Sequence[int], normalize: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        pair = [axes] if isinstance(axes, int) else list(axes) if isinstance(
            axes, (list, tuple)) else None
        if (pair is None or len(pair) not in (1, 2) or (len(pair) == 1 and not isinstance(
                axes, int)) or any(isinstance(a, bool) or not isinstance(a, int)
                                   for a in pair)):
            raise ValueError(f"axes must be an int or a pair of ints, got {axes!r}")
        self.axes = axes
        self.normalize = bool(normalize)

    def _pair(self, ndims: Sequence[int]) -> tuple[int, int]:
        given = [self.axes] * 2 if isinstance(self.axes, int) else list(self.axes)
        pair = tuple(a % n if a < 0 else a for a, n in zip(given, ndims))
        if any(a == 0 or a >= n for a, n in zip(pair, ndims)):
            raise ValueError(f"layer {self.name!r} (Dot): axes={self.axes!r} must name a "
                             f"non-batch axis of inputs of rank {tuple(ndims)}")
        return pair  # type: ignore[return-value]

    def merged_output_shape(self, shapes: Sequence[Shape]) -> Shape:
        a1, a2 = self._pair([len(s) + 1 for s in shapes])
        s1, s2 = list(shapes[0]), list(shapes[1])
        if s1[a1 - 1] is not None and s2[a2 - 1] is not None and s1[a1 - 1] != s2[a2 - 1]:
            raise ValueError(self._mismatch(shapes) + f" (axes {self.axes!r} must have one "
                             "size)")
        out = s1[:a1 - 1] + s1[a1:] + s2[:a2 - 1] + s2[a2:]
        return tuple(out) if out else (1,)

    def _matrices(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int, int]:
        a1, a2 = self._pair([a.ndim for a in arrays])
        x1 = np.moveaxis(arrays[0], a1, -1)
        x2 = np.moveaxis(arrays[1], a2, 1)
        return x1, x2, a1, a2

    @staticmethod
    def _unit(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
        norm = np.sqrt(np.maximum(np.sum(x * x, axis=axis, keepdims=True), 1e-12))
        return x / norm, norm

    def _normalized(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if not self.normalize:
            return arrays
        a1, a2 = self._pair([a.ndim for a in arrays])
        return [self._unit(arrays[0], a1)[0], self._unit(arrays[1], a2)[0]]

    def _combine(self, arrays: list[np.ndarray]) -> np.ndarray:
        x1, x2, _, _ = self._matrices(self._normalized(arrays))
        batch, k = x1.shape[0], x1.shape[-1]
        y = np.matmul(x1.reshape(batch, -1, k), x2.reshape(batch, k, -1))
        shape = (batch, *x1.shape[1:-1], *x2.shape[2:])
        return y.reshape(shape if len(shape) > 1 else (batch, 1))

    def _input_grads(self, arrays: list[np.ndarray], y: np.ndarray,
                     d_out: np.ndarray) -> list[np.ndarray]:
        units = self._normalized(arrays)
        x1, x2, a1, a2 = self._matrices(units)
        batch, k = x1.shape[0], x1.shape[-1]
        m1, m2 = x1.reshape(batch, -1, k), x2.reshape(batch, k, -1)
        d = d_out.reshape(batch, m1.shape[1], m2.shape[2])
        d1 = np.moveaxis((d @ m2.transpose(0, 2, 1)).reshape(x1.shape), -1, a1)
        d2 = np.moveaxis((m1.transpose(0, 2, 1) @ d).reshape(x2.shape), 1, a2)
        if not self.normalize:
            return [d1, d2]
        grads = []
        for dn, n, x, axis in ((d1, units[0], arrays[0], a1), (d2, units[1], arrays[1], a2)):
            norm = self._unit(x, axis)[1]
            grads.append((dn - n * np.sum(dn * n, axis=axis, keepdims=True)) / norm)
        return grads

    def _config_items(self) -> dict[str, Any]:
        return {"axes": self.axes, "normalize": self.normalize}
