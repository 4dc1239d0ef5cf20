"""convarith: everything about a convolution's tweaks.

Padding ("valid", "same", explicit, causal, full), strides, dilation, groups
and transposition: the arithmetic with its reasons, an exact NumPy engine that
agrees with Keras, PyTorch and JAX, and pictures of what the kernel does.

>>> import convarith
>>> convarith.ConvSpec(3, strides=2, padding="same").resolve((28, 28)).output_size
(14, 14)
"""

from . import summary  # callable: convarith.summary(model, input_shape)
from .arithmetic import (
    conv_output_size,
    effective_kernel,
    padding_for_output,
    pool_output_size,
    same_padding,
    solve,
    transposed_output_size,
)
from .engine import (
    available_algorithms,
    avg_pool,
    conv,
    conv1d,
    conv2d,
    conv3d,
    conv_transpose,
    conv_vjp,
    depthwise_conv2d,
    kernel_from_torch,
    kernel_to_torch,
    max_pool,
    register_algorithm,
    separable_conv2d,
)
from .explain import Explanation, explain
from .port import port
from .spec import ConvSpec, ResolvedConv, Tap
from .viz import animate

__version__ = "0.1.0"

__all__ = [
    "ConvSpec",
    "Explanation",
    "explain",
    "ResolvedConv",
    "Tap",
    "animate",
    "available_algorithms",
    "avg_pool",
    "conv",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose",
    "conv_vjp",
    "depthwise_conv2d",
    "kernel_from_torch",
    "kernel_to_torch",
    "max_pool",
    "port",
    "register_algorithm",
    "separable_conv2d",
    "conv_output_size",
    "effective_kernel",
    "padding_for_output",
    "pool_output_size",
    "same_padding",
    "solve",
    "summary",
    "transposed_output_size",
]
