"""Run a :class:`~convarith.ConvSpec` through JAX (``jax.lax``; GPU when JAX has one).

Convolutions go to ``lax.conv_general_dilated`` with the resolved spec's
``(lo, hi)`` pairs as padding; a transposed convolution is the stride-1
convolution of the input dilated by the strides (``lhs_dilation``) with the
engine's flipped, in/out-swapped kernel; pooling is ``lax.reduce_window``.
Float64 inputs are computed in float64 only when ``jax_enable_x64`` is on.

Examples
--------
>>> import numpy as np
>>> from convarith import ConvSpec
>>> x = np.arange(16.0, dtype=np.float32).reshape(1, 4, 4, 1)
>>> conv(x, np.ones((2, 2, 1, 1), np.float32), ConvSpec(2, strides=2))[0, :, :, 0]
array([[10., 18.],
       [42., 50.]], dtype=float32)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine.core import finish, prepare
from ..spec import ConvSpec

__all__ = ["conv"]

_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def conv(x: Any, kernel: Any, spec: ConvSpec, bias: Any = None) -> np.ndarray:
    """``spec`` on ``x`` through JAX; same conventions and result as :func:`convarith.conv`."""
    try:
        import jax.numpy as jnp
        from jax import lax
    except ImportError:
        raise ImportError("backend='jax' needs JAX: pip install jax") from None
    call = prepare(x, kernel, spec, bias)
    resolved = call.resolved
    rank = resolved.rank
    pool_padding = list(resolved.window_padding)  # ceil-mode cells included
    spatial = "DHW"[3 - rank:]
    data = f"N{spatial}C"  # prepare gives (N, *spatial, C)
    numbers = (data, f"{spatial}IO", data)
    t = jnp.asarray(call.x)
    groups = resolved.groups or 1
    strides = tuple(spec.strides)
    dilation = tuple(spec.dilation)

    def full(pairs: Any, fill: Any = (0, 0)) -> tuple[tuple[int, int], ...]:
        listed = [tuple(p) for p in pairs]
        body = (fill, *listed, fill)
        return tuple((int(lo), int(hi)) for lo, hi in body)

    def window(values: Any) -> tuple[int, ...]:
        values = tuple(values)
        return (1, *values, 1)

    if spec.pool is not None:
        common: dict[str, Any] = dict(window_dimensions=window(spec.kernel_size),
                                      window_strides=window(strides), window_dilation=window(dilation))
        if spec.pool == "max":
            y = lax.reduce_window(t, -jnp.inf, lax.max, padding=full(pool_padding), **common)
        else:
            ones = jnp.ones_like(t[:1, ..., :1])
            total = lax.reduce_window(t, 0.0, lax.add, padding=full(pool_padding), **common)
            if spec.count_include_pad:
                counted = jnp.pad(ones, full(resolved.padding), constant_values=1.0)
                extra = [(0, hi - h) for (_, hi), (_, h) in zip(pool_padding, resolved.padding)]
                count = lax.reduce_window(counted, 0.0, lax.add, padding=full(extra), **common)
            else:
                count = lax.reduce_window(ones, 0.0, lax.add, padding=full(pool_padding), **common)
            y = total / count
    elif spec.transposed:
        from ..engine.core import flip_swap

        assert call.kernel is not None
        w = jnp.asarray(flip_swap(call.kernel, groups))
        y = lax.conv_general_dilated(t, w, (1,) * rank, tuple((int(lo), int(hi)) for lo, hi in resolved.padding),
                                     lhs_dilation=strides, rhs_dilation=dilation,
                                     dimension_numbers=numbers, feature_group_count=groups)
    else:
        assert call.kernel is not None
        pads = tuple((int(lo), int(hi)) for lo, hi in resolved.padding)
        if spec.padding_mode != "zeros" and any(lo or hi for lo, hi in pads):
            t = jnp.pad(t, full(pads), mode=_MODES[spec.padding_mode])
            pads = ((0, 0),) * rank
        y = lax.conv_general_dilated(t, jnp.asarray(call.kernel), strides, pads, rhs_dilation=dilation,
                                     dimension_numbers=numbers, feature_group_count=groups)
    if call.bias is not None:
        y = y + jnp.asarray(call.bias).reshape((1,) * (rank + 1) + (-1,))
    result = finish(np.asarray(y), call)
    assert result is not None
    return result
