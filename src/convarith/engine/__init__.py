"""The exact NumPy engine: convolution, transposed convolution, pooling, gradients.

One entry point, :func:`conv` (a :class:`~convarith.ConvSpec` on an array),
Keras-named helpers around it, :func:`conv_vjp` for gradients, and a registry
of algorithms (:func:`register_algorithm`, :func:`available_algorithms`) that
:mod:`.dispatch` chooses from per shape.

Examples
--------
>>> import numpy as np
>>> import convarith
>>> x = np.ones((2, 8, 8, 3), np.float32)
>>> k = np.ones((3, 3, 3, 16), np.float32)
>>> convarith.conv2d(x, k, strides=2, padding="same").shape
(2, 4, 4, 16)
"""

from .algorithms._threads import run_chunks, thread_limit, worker_count
from .algorithms.prepacked import prepack
from .api import (
    avg_pool,
    conv1d,
    conv2d,
    conv3d,
    conv_nd,
    conv_transpose,
    depthwise_conv,
    depthwise_conv2d,
    max_pool,
    separable_conv,
    separable_conv1d,
    separable_conv2d,
)
from .core import conv, conv_vjp
from .dispatch import (
    ConvProblem,
    available_algorithms,
    register_algorithm,
    unregister_algorithm,
)
from .layout import kernel_from_torch, kernel_to_torch
from .state import clear_caches

__all__ = [
    "ConvProblem",
    "available_algorithms",
    "avg_pool",
    "clear_caches",
    "conv",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_nd",
    "conv_transpose",
    "conv_vjp",
    "depthwise_conv",
    "depthwise_conv2d",
    "kernel_from_torch",
    "kernel_to_torch",
    "max_pool",
    "prepack",
    "register_algorithm",
    "run_chunks",
    "separable_conv",
    "separable_conv1d",
    "separable_conv2d",
    "thread_limit",
    "unregister_algorithm",
    "worker_count",
]
