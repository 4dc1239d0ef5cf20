"""A framework-neutral layer graph: what the model readers produce and the summary reads.

Each reader (``.keras``, ONNX, a YAML/JSON list) turns its framework's layers
into :class:`LayerNode` objects of a few generic *kinds*; the summary never
looks at a framework's own names except to print them.

Kinds and the fields they use:

``input``        ``shape`` (spatial sizes and channels, in ``data_format``)
``conv``         ``spec`` (convolution, transposed convolution or pooling; a
                 separable convolution also has ``units``, its pointwise filters)
``pad``/``crop`` ``padding`` ((lo, hi) per spatial axis)
``upsample``     ``factor`` per spatial axis
``global_pool``  (keeps channels; ``keepdims`` in ``units`` as 1 for ONNX)
``flatten``      --
``dense``        ``units``
``norm``         (per-channel parameters: ``units`` parameters per channel)
``identity``     (activations, dropout...: same shape, no parameters)
``add``/``concat``  several ``inputs``; ``concat`` joins channels
``reshape``      a tensor rearranged (Reshape, Transpose, Squeeze, Split,
                 Slice, ...): ``shape`` is the output shape (no batch axis) the
                 file states or shape inference found; spatial geometry (and
                 the receptive field) is kept when the trailing (channels
                 first) or leading (channels last) sizes are the input's
                 spatial sizes, as in a channel shuffle
``unknown``      a layer type convarith does not model: its ``shape`` when the
                 file or shape inference knows it, else assumed to keep the shape

``params`` is the parameter count when the file knows it (ONNX
initializers); otherwise the summary computes it. ``macs`` likewise, for
operators whose multiply-adds the reader works out (MatMul on a tensor).
``extra_params`` are added to the computed count (Keras ``Normalization``'s
sample count).

Examples
--------
>>> node = LayerNode("relu", "ReLU", "identity", ("conv1",))
>>> node.kind
'identity'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..spec import ConvSpec

__all__ = ["LayerNode", "ModelGraph", "KINDS"]

KINDS = ("input", "conv", "pad", "crop", "upsample", "global_pool", "flatten", "dense", "norm",
         "identity", "add", "concat", "reshape", "unknown")


@dataclass(frozen=True)
class LayerNode:
    """One layer, in generic terms (see the module docstring for the kinds)."""

    name: str
    type: str
    kind: str
    inputs: tuple[str, ...] = ()
    spec: ConvSpec | None = None
    shape: tuple[int | None, ...] | None = None
    padding: tuple[tuple[int, int], ...] | None = None
    factor: tuple[int, ...] | None = None
    units: int | None = None
    bias: bool = True
    params: int | None = None
    note: str = ""
    macs: int | None = None
    extra_params: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class ModelGraph:
    """Layers in an order where every layer comes after its inputs.

    ``data_format`` is the layout of every tensor (``channels_last`` for
    Keras, ``channels_first`` for ONNX and PyTorch).
    """

    name: str
    layers: tuple[LayerNode, ...]
    data_format: str = "channels_last"
    source: str = ""
    warnings: tuple[str, ...] = field(default=())
