"""Keras-named functional helpers over :func:`convarith.engine.core.conv`.

Arguments are named and defaulted as in ``keras.ops`` (``strides``,
``padding``, ``dilation_rate``, ``data_format``); each helper builds a
:class:`~convarith.ConvSpec` and runs it. Unlike Keras, strides and dilation
may be combined, and ``padding`` also takes explicit ``(lo, hi)`` pairs.

Examples
--------
>>> import numpy as np
>>> x = np.ones((1, 6, 6, 3), np.float32)
>>> conv2d(x, np.ones((3, 3, 3, 4), np.float32), strides=2, padding="same").shape
(1, 3, 3, 4)
>>> max_pool(x, 2).shape
(1, 3, 3, 3)
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..spec import ConvSpec
from .core import as_numeric, conv

__all__ = [
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_nd",
    "conv_transpose",
    "depthwise_conv",
    "depthwise_conv2d",
    "separable_conv1d",
    "separable_conv2d",
    "separable_conv",
    "max_pool",
    "avg_pool",
]


def _exact(value: Any) -> bool:
    """Whether ``value`` is a built-in ``int``, ``str`` or ``None``, or a tuple of them
    (nested): arguments that are equal only when they are the same."""
    kind = type(value)
    if kind is tuple:
        return all(_exact(item) for item in value)
    return kind is int or kind is str or value is None


def _spec(**arguments: Any) -> ConvSpec:
    """``ConvSpec(**arguments)``, remembered (:func:`_remembered_spec`) when every argument
    is :func:`_exact` or a bool: a repeated call of a helper skips the spec's validation
    (~11 µs of a ~18 µs call on a 1×1 image). Any other argument (a list, a NumPy
    integer, a float) builds the spec every time, so each refusal is the spec's own.

    >>> _spec(kernel_size=(3, 3), strides=2, rank=2) is _spec(kernel_size=(3, 3), strides=2, rank=2)
    True
    """
    if all(type(value) is bool or _exact(value) for value in arguments.values()):
        # the type beside each value keeps True and 1 apart (equal, and of one hash)
        return _remembered_spec(tuple((name, value, type(value))
                                      for name, value in arguments.items()))
    return ConvSpec(**arguments)


@functools.lru_cache(maxsize=256)
def _remembered_spec(arguments: tuple[tuple[str, Any, type], ...]) -> ConvSpec:
    """The specs the functional helpers built, by their arguments (a spec that raises is
    not remembered: the next call raises again)."""
    return ConvSpec(**{name: value for name, value, _ in arguments})


def _kernel_rank(name: str, kernel: Any, rank: int | None = None) -> tuple[np.ndarray, int]:
    array = as_numeric(name, kernel)
    if rank is None:
        rank = array.ndim - 2
        if rank not in (1, 2, 3):
            raise ValueError(
                f"{name} must have 3, 4 or 5 axes (kernel size..., in, out), got shape "
                f"{array.shape}"
            )
    elif array.ndim != rank + 2:
        raise ValueError(
            f"{name} of a {rank}-D convolution must have {rank + 2} axes "
            f"(kernel size..., in/groups, out), got shape {array.shape}"
        )
    return array, rank


def _channels(x: Any, data_format: str) -> int | None:
    shape = np.shape(x)
    if len(shape) < 3:
        return None
    return int(shape[1] if data_format == "channels_first" else shape[-1])


def infer_groups(x: Any, kernel_shape: tuple[int, ...], data_format: str = "channels_last") -> int:
    """Channel groups implied by the kernel, as ``keras.ops.conv``: ``C_in / kernel_in``.

    >>> infer_groups(np.zeros((1, 5, 5, 6)), (3, 3, 2, 4))
    3
    """
    channels = _channels(x, data_format)
    kernel_in = kernel_shape[-2]
    if channels is None or kernel_in < 1:
        return 1
    if channels % kernel_in:
        raise ValueError(
            f"kernel of shape {tuple(kernel_shape)} takes {kernel_in} input channels per group, "
            f"but x has {channels} channels ({data_format}), not a multiple of {kernel_in}; the "
            f"kernel's second-to-last axis must divide the input's channels (groups = "
            f"channels / kernel in-channels)"
        )
    return channels // kernel_in


def conv_nd(
    x: Any,
    kernel: Any,
    strides: Any = 1,
    padding: Any = "valid",
    dilation_rate: Any = 1,
    groups: int | None = None,
    data_format: str = "channels_last",
    bias: Any = None,
    padding_mode: str = "zeros",
    rank: int | None = None,
    algorithm: str | None = None,
) -> np.ndarray:
    """Convolution of any rank (1-3, from the kernel); see :func:`conv2d`.

    ``groups=None`` infers the groups from the kernel's in-channels, as ``keras.ops.conv``.
    """
    array, rank = _kernel_rank("kernel", kernel, rank)
    if groups is None:
        groups = infer_groups(x, array.shape, data_format)
    spec = _spec(
        kernel_size=tuple(array.shape[:rank]),
        strides=strides,
        padding=padding,
        dilation=dilation_rate,
        groups=groups,
        data_format=data_format,
        padding_mode=padding_mode,
        rank=rank,
    )
    return conv(x, array, spec, bias=bias, algorithm=algorithm)


def conv1d(x: Any, kernel: Any, strides: Any = 1, padding: Any = "valid",
           dilation_rate: Any = 1, groups: int | None = None, data_format: str = "channels_last",
           bias: Any = None, padding_mode: str = "zeros",
           algorithm: str | None = None) -> np.ndarray:
    """1-D convolution, kernel ``(k, in/groups, out)``; ``padding="causal"`` allowed.

    >>> import numpy as np
    >>> conv1d(np.arange(4.0).reshape(1, 4, 1), np.ones((2, 1, 1)), padding="causal")[0, :, 0]
    array([0., 1., 3., 5.])
    """
    return conv_nd(x, kernel, strides, padding, dilation_rate, groups, data_format, bias,
                   padding_mode, rank=1, algorithm=algorithm)


def conv2d(x: Any, kernel: Any, strides: Any = 1, padding: Any = "valid",
           dilation_rate: Any = 1, groups: int | None = None, data_format: str = "channels_last",
           bias: Any = None, padding_mode: str = "zeros",
           algorithm: str | None = None) -> np.ndarray:
    """2-D convolution, kernel ``(kh, kw, in/groups, out)``.

    Parameters
    ----------
    x
        ``(N, H, W, C)`` (``channels_last``) or ``(N, C, H, W)``.
    kernel
        ``(kh, kw, C // groups, F)``.
    strides, dilation_rate
        Int or one per axis.
    padding
        ``"valid"``, ``"same"``, ``"same_lower"``, ``"full"``, an int, or
        ``(lo, hi)`` pairs per axis.
    groups
        Channel groups; ``None`` infers them from the kernel (``C // kernel.shape[-2]``),
        as ``keras.ops.conv``.
    data_format
        ``"channels_last"`` or ``"channels_first"``.
    bias
        Optional ``(F,)``.
    padding_mode
        ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.

    >>> import numpy as np
    >>> conv2d(np.ones((1, 4, 4, 1)), np.ones((3, 3, 1, 1)), padding=1)[0, :, :, 0]
    array([[4., 6., 6., 4.],
           [6., 9., 9., 6.],
           [6., 9., 9., 6.],
           [4., 6., 6., 4.]])
    """
    return conv_nd(x, kernel, strides, padding, dilation_rate, groups, data_format, bias,
                   padding_mode, rank=2, algorithm=algorithm)


def conv3d(x: Any, kernel: Any, strides: Any = 1, padding: Any = "valid",
           dilation_rate: Any = 1, groups: int | None = None, data_format: str = "channels_last",
           bias: Any = None, padding_mode: str = "zeros",
           algorithm: str | None = None) -> np.ndarray:
    """3-D convolution, kernel ``(kd, kh, kw, in/groups, out)``.

    >>> import numpy as np
    >>> conv3d(np.ones((1, 3, 3, 3, 2)), np.ones((3, 3, 3, 2, 1))).ravel()
    array([54.])
    """
    return conv_nd(x, kernel, strides, padding, dilation_rate, groups, data_format, bias,
                   padding_mode, rank=3, algorithm=algorithm)


def conv_transpose(
    x: Any,
    kernel: Any,
    strides: Any = 1,
    padding: Any = "valid",
    output_padding: Any = None,
    dilation_rate: Any = 1,
    data_format: str = "channels_last",
    groups: int = 1,
    bias: Any = None,
    algorithm: str | None = None,
) -> np.ndarray:
    """Transposed convolution, kernel ``(k..., out/groups, in)`` (Keras's layout).

    ``padding`` is ``"valid"``/``"same"`` (Keras's sizes) or explicit crops of
    the full output (PyTorch's ``padding``).

    >>> import numpy as np
    >>> conv_transpose(np.ones((1, 2, 1)), np.ones((3, 1, 1)), strides=2)[0, :, 0]
    array([1., 1., 2., 1., 1.])
    """
    array, rank = _kernel_rank("kernel", kernel)
    spec = _spec(
        kernel_size=tuple(array.shape[:rank]),
        strides=strides,
        padding=padding,
        dilation=dilation_rate,
        groups=groups,
        transposed=True,
        output_padding=output_padding,
        data_format=data_format,
        rank=rank,
    )
    return conv(x, array, spec, bias=bias, algorithm=algorithm)


def depthwise_conv(
    x: Any,
    depthwise_kernel: Any,
    strides: Any = 1,
    padding: Any = "valid",
    dilation_rate: Any = 1,
    data_format: str = "channels_last",
    bias: Any = None,
    algorithm: str | None = None,
) -> np.ndarray:
    """Depthwise convolution of any rank, kernel ``(k..., C, depth_multiplier)``.

    Output channel ``c * depth_multiplier + m`` is input channel ``c`` convolved
    with ``depthwise_kernel[..., c, m]`` (Keras's order).
    """
    array, rank = _kernel_rank("depthwise_kernel", depthwise_kernel)
    channels, multiplier = array.shape[-2:]
    x_channels = _channels(x, data_format)
    if x_channels is not None and x_channels != channels:
        raise ValueError(
            f"depthwise_kernel of shape {array.shape} is for {channels} input channels "
            f"(its second-to-last axis), but x has {x_channels} channels ({data_format}); a "
            f"depthwise kernel is (kernel size..., channels, depth_multiplier): use shape "
            f"{(*array.shape[:rank], x_channels, multiplier)}, or check data_format"
        )
    grouped = array.reshape(*array.shape[:rank], 1, channels * multiplier)
    spec = _spec(
        kernel_size=tuple(array.shape[:rank]),
        strides=strides,
        padding=padding,
        dilation=dilation_rate,
        groups=channels,
        depth_multiplier=multiplier,
        data_format=data_format,
        rank=rank,
    )
    return conv(x, grouped, spec, bias=bias, algorithm=algorithm)


def depthwise_conv2d(
    x: Any,
    depthwise_kernel: Any,
    strides: Any = 1,
    padding: Any = "valid",
    dilation_rate: Any = 1,
    data_format: str = "channels_last",
    bias: Any = None,
    algorithm: str | None = None,
) -> np.ndarray:
    """2-D depthwise convolution, kernel ``(kh, kw, C, depth_multiplier)``.

    >>> import numpy as np
    >>> depthwise_conv2d(np.ones((1, 3, 3, 2)), np.ones((3, 3, 2, 2))).shape
    (1, 1, 1, 4)
    """
    _kernel_rank("depthwise_kernel", depthwise_kernel, 2)
    return depthwise_conv(x, depthwise_kernel, strides, padding, dilation_rate, data_format,
                          bias, algorithm)


def separable_conv2d(
    x: Any,
    depthwise_kernel: Any,
    pointwise_kernel: Any,
    strides: Any = 1,
    padding: Any = "valid",
    dilation_rate: Any = 1,
    data_format: str = "channels_last",
    bias: Any = None,
    algorithm: str | None = None,
) -> np.ndarray:
    """Depthwise ``(kh, kw, C, M)`` then pointwise ``(1, 1, C*M, F)`` convolution.

    >>> import numpy as np
    >>> separable_conv2d(np.ones((1, 3, 3, 2)), np.ones((3, 3, 2, 1)), np.ones((1, 1, 2, 5))).shape
    (1, 1, 1, 5)
    """
    depthwise = depthwise_conv2d(x, depthwise_kernel, strides, padding, dilation_rate,
                                 data_format, algorithm=algorithm)
    _kernel_rank("pointwise_kernel", pointwise_kernel, 2)
    return conv2d(depthwise, pointwise_kernel, data_format=data_format, bias=bias,
                  algorithm=algorithm)


def separable_conv(
    x: Any,
    depthwise_kernel: Any,
    pointwise_kernel: Any,
    strides: Any = 1,
    padding: Any = "valid",
    dilation_rate: Any = 1,
    data_format: str = "channels_last",
    bias: Any = None,
    algorithm: str | None = None,
) -> np.ndarray:
    """Separable convolution of any rank (from the kernels), as ``keras.ops.separable_conv``:
    depthwise ``(k..., C, M)`` then pointwise ``(1..., C*M, F)``.

    >>> import numpy as np
    >>> separable_conv(np.ones((1, 5, 2)), np.ones((3, 2, 1)), np.ones((1, 2, 4))).shape
    (1, 3, 4)
    """
    depthwise = depthwise_conv(x, depthwise_kernel, strides, padding, dilation_rate,
                               data_format, algorithm=algorithm)
    _, rank = _kernel_rank("depthwise_kernel", depthwise_kernel)
    pointwise, _ = _kernel_rank("pointwise_kernel", pointwise_kernel, rank)
    if pointwise.shape[:rank] != (1,) * rank:
        raise ValueError(f"pointwise_kernel must be (1{', 1' * (rank - 1)}, C*M, filters), got "
                         f"shape {pointwise.shape}")
    return conv_nd(depthwise, pointwise, data_format=data_format, bias=bias, groups=1,
                   rank=rank, algorithm=algorithm)


def separable_conv1d(
    x: Any,
    depthwise_kernel: Any,
    pointwise_kernel: Any,
    strides: Any = 1,
    padding: Any = "valid",
    dilation_rate: Any = 1,
    data_format: str = "channels_last",
    bias: Any = None,
    algorithm: str | None = None,
) -> np.ndarray:
    """1-D separable convolution: depthwise ``(k, C, M)`` then pointwise ``(1, C*M, F)``.

    >>> import numpy as np
    >>> separable_conv1d(np.ones((1, 4, 2)), np.ones((2, 2, 1)), np.ones((1, 2, 3)))[0, :, 0]
    array([4., 4., 4.])
    """
    _kernel_rank("depthwise_kernel", depthwise_kernel, 1)
    return separable_conv(x, depthwise_kernel, pointwise_kernel, strides, padding, dilation_rate,
                          data_format, bias, algorithm)


def _pool(kind: str, x: Any, pool_size: Any, strides: Any, padding: Any, data_format: str,
          dilation_rate: Any, ceil_mode: bool, count_include_pad: bool) -> np.ndarray:
    array = as_numeric("x", x)
    rank = len(pool_size) if isinstance(pool_size, (tuple, list)) else array.ndim - 2
    if rank not in (1, 2, 3):
        raise ValueError(
            f"x must have 3, 4 or 5 axes (batch, spatial..., channels) for pooling, got shape "
            f"{array.shape}"
        )
    spec = _spec(
        kernel_size=pool_size,
        strides=pool_size if strides is None else strides,
        padding=padding,
        dilation=dilation_rate,
        pool=kind,
        ceil_mode=ceil_mode,
        count_include_pad=count_include_pad,
        data_format=data_format,
        rank=rank,
    )
    return conv(array, None, spec)


def max_pool(
    x: Any,
    pool_size: Any,
    strides: Any = None,
    padding: Any = "valid",
    data_format: str = "channels_last",
    dilation_rate: Any = 1,
    ceil_mode: bool = False,
) -> np.ndarray:
    """Max pooling (1-3 D); ``strides`` defaults to ``pool_size``.

    >>> import numpy as np
    >>> max_pool(np.arange(5.0).reshape(1, 5, 1), 2, ceil_mode=True)[0, :, 0]
    array([1., 3., 4.])
    """
    return _pool("max", x, pool_size, strides, padding, data_format, dilation_rate,
                 ceil_mode, False)


def avg_pool(
    x: Any,
    pool_size: Any,
    strides: Any = None,
    padding: Any = "valid",
    data_format: str = "channels_last",
    dilation_rate: Any = 1,
    ceil_mode: bool = False,
    count_include_pad: bool = False,
) -> np.ndarray:
    """Average pooling (1-3 D); padded cells count only with ``count_include_pad``.

    >>> import numpy as np
    >>> avg_pool(np.ones((1, 3, 1)), 2, strides=1, padding=1)[0, :, 0]
    array([1., 1., 1., 1.])
    >>> avg_pool(np.ones((1, 3, 1)), 2, strides=1, padding=1, count_include_pad=True)[0, :, 0]
    array([0.5, 1. , 1. , 0.5])
    """
    return _pool("avg", x, pool_size, strides, padding, data_format, dilation_rate,
                 ceil_mode, count_include_pad)
