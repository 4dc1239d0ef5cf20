"""The ONNX front door as users meet it: a ``NodeProto`` in, a :class:`~convarith.ConvSpec` out.

:func:`spec_from_onnx_node` (also ``ConvSpec.from_onnx_node``) reads the
node's operator and attributes itself (strings as ``bytes`` or ``str``),
takes the weight's shape from ``weight_shape`` or the weight array, and
accepts the input shape for every operator (for ``ConvTranspose`` with an
``output_shape`` attribute it is needed; for the others it is checked by
resolving the spec on it). :func:`kernel_from_onnx` puts an ONNX weight,
``(out, in/groups, k...)`` (``ConvTranspose``: ``(in, out/groups, k...)``),
in the engine's layout ``(k..., in/groups, out)``.

Examples
--------
>>> from onnx import helper  # doctest: +SKIP
>>> node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], auto_pad="SAME_UPPER",
...                         strides=[2, 2])  # doctest: +SKIP
>>> spec_from_onnx_node(node, input_shape=(1, 3, 8, 8)).resolve((3, 8, 8)).output_size  # doctest: +SKIP
(4, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..spec import ConvSpec

__all__ = ["spec_from_onnx_node", "kernel_from_onnx", "check_same_pool_pads", "onnx_same_pool_pads"]

_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool")


def _attribute_value(attribute: Any) -> Any:
    try:
        from onnx import helper

        value = helper.get_attribute_value(attribute)
    except ImportError:  # a duck-typed node: read the common fields
        value = attribute.ints or attribute.i if hasattr(attribute, "ints") else attribute.s
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value


def spec_from_onnx_node(node: Any, input_shape: Sequence[int] | None = None,
                        weight_shape: Sequence[int] | None = None, weight: Any = None) -> ConvSpec:
    """A :class:`ConvSpec` from an ``onnx.NodeProto`` of a Conv, ConvTranspose, MaxPool or AveragePool.

    Parameters
    ----------
    node
        The node (``onnx.helper.make_node(...)`` or one of ``model.graph.node``).
    input_shape
        The input's full shape ``(N, C, spatial...)`` (or ``(C, spatial...)``);
        needed by ``ConvTranspose`` with ``output_shape``, checked for the others.
        A SAME ``AveragePool`` whose stride reaches the kernel + 2 needs it to
        match onnxruntime: where onnxruntime's padding goes negative it crops,
        and the spec returned for this size carries those negative pads.
    weight_shape, weight
        The ``W`` input's shape, or the array itself (its shape is taken).

    Raises
    ------
    TypeError
        ``node`` is not a NodeProto, or an argument has the wrong type.
    ValueError
        An attribute's value breaks the operator's rules (as onnxruntime).
    """
    if not hasattr(node, "op_type") or not hasattr(node, "attribute"):
        raise TypeError(f"node must be an onnx.NodeProto, got {type(node).__name__}; for attributes as "
                        "keywords use ConvSpec.from_onnx('Conv', kernel_shape=[3, 3], ...)")
    op = node.op_type.decode() if isinstance(node.op_type, bytes) else str(node.op_type)
    if op not in _OPS:
        raise ValueError(f"node {node.name or op!r}: op_type {op!r} is not a convolution or pooling; "
                         f"convarith reads {', '.join(_OPS)}")
    attrs = {str(a.name): _attribute_value(a) for a in node.attribute}
    if weight is not None:
        if weight_shape is not None:
            raise TypeError("give weight or weight_shape, not both")
        if not hasattr(weight, "shape") or isinstance(weight, (str, bytes)):
            raise TypeError(f"weight must be an array (W, with a .shape), got {type(weight).__name__}; "
                            "or give weight_shape=W.shape")
        weight_shape = tuple(weight.shape)
    if weight_shape is not None:
        if op not in ("Conv", "ConvTranspose"):
            raise TypeError(f"{op} has no weight; leave weight_shape out")
        attrs["weight_shape"] = list(_int_sequence("weight_shape", weight_shape, "W.shape, e.g. (8, 3, 3, 3)"))
    shape = None
    if input_shape is not None:
        shape = _int_sequence("input_shape", input_shape, "X.shape (N, C, spatial...), e.g. (1, 3, 8, 8)")
        if op == "ConvTranspose":
            attrs["input_shape"] = list(shape)
    from ..frontdoors import from_onnx

    spec = from_onnx(op, **attrs)
    if shape is not None and op in ("MaxPool", "AveragePool"):
        check_same_pool_pads(op, attrs, shape[-spec.rank:], str(node.name or op))
        crop = onnx_same_pool_pads(attrs, shape[-spec.rank:]) if op == "AveragePool" else None
        if crop is not None:  # onnxruntime crops there: the same negative pads, for this input size
            spec = spec.replace(padding=crop)
    if shape is not None and op != "ConvTranspose":
        spatial = shape[-spec.rank:]
        if len(shape) < spec.rank:
            raise ValueError(f"input_shape {shape} has fewer axes than the node's {spec.rank} spatial axes")
        spec.resolve(spatial)  # raises ValueError if the window does not fit
    return spec


def _int_sequence(name: str, value: Any, example: str) -> tuple[int, ...]:
    """``value`` as ints of at least 1: TypeError for a wrong type, ValueError for a wrong value."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
        raise TypeError(f"{name} must be a sequence of ints, got {value!r} ({type(value).__name__}); "
                        f"write {name}={example}")
    items = list(value)
    for index, item in enumerate(items):
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, int | np.integer):
            raise TypeError(f"{name}[{index}] must be an int, got {item!r} ({type(item).__name__}) in {name}="
                            f"{value!r}; write {name}={example}")
        if item < 1:
            raise ValueError(f"{name}[{index}] must be at least 1, got {item} in {name}={tuple(items)}; "
                             f"write {name}={example}")
    return tuple(int(v) for v in items)


def kernel_from_onnx(weight: Any, transposed: bool = False) -> np.ndarray:
    """An ONNX ``W`` in the engine's kernel layout.

    ONNX stores ``Conv`` weights as ``(out, in/groups, k...)`` and
    ``ConvTranspose`` weights as ``(in, out/groups, k...)``, as PyTorch does;
    :func:`convarith.conv` wants ``(k..., in/groups, out)``.

    >>> kernel_from_onnx(np.zeros((8, 3, 5, 5))).shape
    (5, 5, 3, 8)
    """
    from ..engine.layout import kernel_from_torch

    return kernel_from_torch(weight, transposed=transposed)


def onnx_same_pool_pads(attrs: dict[str, Any], spatial: Sequence[int]) -> tuple[tuple[int, int], ...] | None:
    """onnxruntime's per-side pads of a SAME pool on ``spatial``, where some axis's total is negative.

    onnxruntime pads a SAME pool by ``total = (ceil(I/S) - 1) S + K - I`` split
    as ``head = total / 2`` (SAME_UPPER) or ``(total + 1) / 2`` (SAME_LOWER),
    truncated toward zero, ``tail = total - head``. With ``S >= K + 2`` the
    total can be negative: an AveragePool then *crops* ``-head`` cells at the
    start and ``-tail`` at the end, which is a negative padding of the spec
    (the engine crops). Returns ``None`` where every total is ``>= 0`` (the
    spec's ``"same"`` word gives the same split) or auto_pad is not SAME.

    >>> onnx_same_pool_pads({"auto_pad": "SAME_UPPER", "kernel_shape": [1], "strides": [5]}, [8])
    ((-1, -1),)
    >>> onnx_same_pool_pads({"auto_pad": "SAME_UPPER", "kernel_shape": [3], "strides": [2]}, [8]) is None
    True
    """
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return None
    kernel = list(attrs.get("kernel_shape", ()))
    strides = list(attrs.get("strides") or [1] * len(kernel))
    pairs = []
    for size, k, stride in zip(spatial, kernel, strides):
        total = (-(-int(size) // stride) - 1) * stride + k - int(size)
        head = int((total + (auto_pad == "SAME_LOWER")) / 2)  # C++ division: toward zero
        pairs.append((head, total - head))
    if all(lo + hi >= 0 for lo, hi in pairs):
        return None
    return tuple(pairs)


def check_same_pool_pads(op: str, attrs: dict[str, Any], spatial: Sequence[int], where: str = "") -> None:
    """Refuse a SAME MaxPool whose onnxruntime padding goes negative, as onnxruntime does.

    (An AveragePool there crops: see :func:`onnx_same_pool_pads`.)

    >>> check_same_pool_pads("MaxPool", {"auto_pad": "SAME_UPPER", "kernel_shape": [1], "strides": [5]}, [8],
    ...                      "MaxPool")
    Traceback (most recent call last):
    ...
    ValueError: MaxPool: auto_pad='SAME_UPPER' on an input of 8 cells (axis 0, kernel 1, stride 5): onnxruntime's padding is -2 in all, which onnxruntime refuses for MaxPool (padding values must be non-negative); use auto_pad='VALID' or explicit pads
    """
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if op != "MaxPool" or auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        return
    kernel = list(attrs.get("kernel_shape", ()))
    strides = list(attrs.get("strides") or [1] * len(kernel))
    for axis, (size, k, stride) in enumerate(zip(spatial, kernel, strides)):
        total = (-(-int(size) // stride) - 1) * stride + k - int(size)
        if total < 0:
            raise ValueError(f"{where + ': ' if where else ''}auto_pad={auto_pad!r} on an input of {size} cells "
                             f"(axis {axis}, kernel {k}, stride {stride}): onnxruntime's padding is {total} in "
                             "all, which onnxruntime refuses for MaxPool (padding values must be non-negative); "
                             "use auto_pad='VALID' or explicit pads")
