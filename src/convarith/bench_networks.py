"""Every distinct convolution, pooling and transposed layer of real networks, timed.

``python -m convarith.bench --suite networks`` (``--help`` for options). The
layers are generated from the networks' published definitions, written below
as the tables the papers give (ResNet-50's ``[3, 4, 6, 3]`` bottlenecks,
ResNeXt-50's cardinality 32 × width 4, MobileNetV2's ``(t, c, n, s)`` rows,
EfficientNet-B0's stages, VGG-16's configuration, a four-level U-Net with a
2×2 stride-2 transposed decoder, a WaveNet stack of causal convolutions
dilated 1 … 512), with PyTorch's padding (``k // 2`` each side) and the
ImageNet input (224²; WaveNet: 8192 samples).

A network's repeated layers are timed once and counted as often as they
occur. Each distinct layer runs on the activations the network gives it
where the layer before produced them (that layer's output, through a ReLU),
else on ReLU'd normal noise of the right shape. Every layer runs through
convarith, PyTorch (the better of NCHW and channels-last) and onnxruntime
(forward; a one-node model per layer), each runtime in a process of its own
on the same inputs (``one_process=True``: in turn in this process); a
network's time is the sum over its layers of count × median time. Untimed,
each layer's error against PyTorch in float64 and convarith's peak extra
memory (tracemalloc) are measured too.

Examples
--------
>>> layers = NETWORKS["vgg16"](224)
>>> sum(1 for layer in layers if layer.kind == "conv"), len(distinct(layers))
(13, 14)
>>> round(multiply_adds(NETWORKS["resnet50"](224)) / 1e9, 2)
4.09
"""

from __future__ import annotations

import math
import os
import statistics
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .spec import ConvSpec

__all__ = ["NetLayer", "NETWORKS", "distinct", "multiply_adds", "LayerResult",
           "NetworkResult", "run_networks", "render_networks", "markdown_layers",
           "inventory_markdown", "summary_networks", "JIT_MODES", "set_mode",
           "mode_description", "RUNTIMES", "MEMORY_LIMIT"]


@dataclass(frozen=True)
class NetLayer:
    """One layer as the network has it: ``kind`` is ``conv``, ``transposed``,
    ``max_pool`` or ``avg_pool``; ``size`` the spatial input size; ``padding``
    PyTorch's symmetric integer or ``"causal"``."""

    kind: str
    size: tuple[int, ...]
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int | str = 0
    dilation: int = 1
    groups: int = 1

    @property
    def rank(self) -> int:
        return len(self.size)

    def spec(self) -> ConvSpec:
        pool = {"max_pool": "max", "avg_pool": "avg"}.get(self.kind)
        return ConvSpec(self.kernel, strides=self.stride, dilation=self.dilation,
                        padding=self.padding, groups=self.groups,
                        transposed=self.kind == "transposed", pool=pool, rank=self.rank)

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.size, self.in_channels)

    def output_size(self) -> tuple[int, ...]:
        return tuple(self.spec().resolve(self.input_shape(1)).output_size)

    def output_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.output_size(), self.out_channels)

    def kernel_shape(self) -> tuple[int, ...] | None:
        """convarith's layout: ``(*K, C // g, F)``; transposed ``(*K, F // g, C)``."""
        taps = (self.kernel,) * self.rank
        if self.kind == "conv":
            return (*taps, self.in_channels // self.groups, self.out_channels)
        if self.kind == "transposed":
            return (*taps, self.out_channels // self.groups, self.in_channels)
        return None

    def multiply_adds(self, batch: int = 1) -> int:
        """Multiply-adds of the convolution (0 for pooling)."""
        if self.kind == "conv":
            cells = batch * math.prod(self.output_size())
        elif self.kind == "transposed":
            cells = batch * math.prod(self.size)
        else:
            return 0
        return cells * self.kernel**self.rank * self.in_channels // self.groups \
            * self.out_channels

    @property
    def title(self) -> str:
        size = "x".join(str(s) for s in self.size)
        what = {"conv": "", "transposed": "transposed ", "max_pool": "max pool ",
                "avg_pool": "avg pool "}[self.kind]
        kernel = "x".join([str(self.kernel)] * self.rank)
        parts = [f"{what}{kernel}"]
        if self.stride > 1:
            parts.append(f"s{self.stride}")
        if self.dilation > 1:
            parts.append(f"d{self.dilation}")
        if self.padding == "causal":
            parts.append("causal")
        if self.groups == self.in_channels and self.groups > 1:
            parts.append("depthwise")
        elif self.groups > 1:
            parts.append(f"g{self.groups}")
        return f"{' '.join(parts)}, {self.in_channels}->{self.out_channels}, {size}"


class _Builder:
    """Tracks the activation's shape as layers are added in the network's order."""

    def __init__(self, size: tuple[int, ...], channels: int) -> None:
        self.size, self.channels = size, channels
        self.layers: list[NetLayer] = []

    def _add(self, layer: NetLayer) -> None:
        self.layers.append(layer)
        self.size, self.channels = layer.output_size(), layer.out_channels

    def conv(self, out: int, kernel: int, stride: int = 1, *, groups: int = 1,
             dilation: int = 1, padding: int | str | None = None) -> None:
        pad = (kernel - 1) // 2 * dilation if padding is None else padding
        self._add(NetLayer("conv", self.size, self.channels, out, kernel, stride, pad,
                           dilation, groups))

    def transposed(self, out: int, kernel: int, stride: int) -> None:
        self._add(NetLayer("transposed", self.size, self.channels, out, kernel, stride))

    def pool(self, kind: str, kernel: int, stride: int, padding: int = 0) -> None:
        self._add(NetLayer(f"{kind}_pool", self.size, self.channels, self.channels, kernel,
                           stride, padding))

    def global_pool(self) -> None:
        """Average over the whole image (one kernel the image's size; square images)."""
        self.pool("avg", self.size[0], 1)

    def at(self, size: tuple[int, ...], channels: int) -> None:
        """Continue from another activation (a branch, a skip connection, a concat)."""
        self.size, self.channels = size, channels


def resnet(image: int = 224, *, groups: int = 1, width_per_group: int = 64) -> list[NetLayer]:
    """ResNet-50 (He et al. 2016, torchvision's v1.5: the stride on the 3×3); with
    ``groups=32, width_per_group=4`` ResNeXt-50 32×4d (Xie et al. 2017)."""
    net = _Builder((image, image), 3)
    net.conv(64, 7, 2)
    net.pool("max", 3, 2, 1)
    for stage, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        width = planes * width_per_group // 64 * groups
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            size, channels = net.size, net.channels
            net.conv(width, 1)
            net.conv(width, 3, stride, groups=groups)
            net.conv(planes * 4, 1)
            if block == 0:  # the projection shortcut
                net.at(size, channels)
                net.conv(planes * 4, 1, stride)
    net.global_pool()
    return net.layers


def resnext50(image: int = 224) -> list[NetLayer]:
    return resnet(image, groups=32, width_per_group=4)


#: MobileNetV2 (Sandler et al. 2018, table 2): expansion t, channels c, repeats n, stride s.
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))


def mobilenet_v2(image: int = 224) -> list[NetLayer]:
    net = _Builder((image, image), 3)
    net.conv(32, 3, 2)
    for t, c, n, s in MOBILENET_V2:
        for i in range(n):
            hidden = net.channels * t
            if t != 1:
                net.conv(hidden, 1)
            net.conv(hidden, 3, s if i == 0 else 1, groups=hidden)
            net.conv(c, 1)
    net.conv(1280, 1)
    net.global_pool()
    return net.layers


#: EfficientNet-B0 (Tan & Le 2019, table 1): expansion, kernel, stride, channels, repeats.
EFFICIENTNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                   (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def efficientnet_b0(image: int = 224) -> list[NetLayer]:
    """MBConv blocks with squeeze-and-excitation (a global pool and two 1×1
    convolutions on one cell, squeezing to a quarter of the block's input)."""
    net = _Builder((image, image), 3)
    net.conv(32, 3, 2)
    for t, k, s, c, n in EFFICIENTNET_B0:
        for i in range(n):
            block_in = net.channels
            hidden = block_in * t
            if t != 1:
                net.conv(hidden, 1)
            net.conv(hidden, k, s if i == 0 else 1, groups=hidden)
            size = net.size
            net.global_pool()
            net.conv(max(1, block_in // 4), 1)
            net.conv(hidden, 1)
            net.at(size, hidden)
            net.conv(c, 1)
    net.conv(1280, 1)
    net.global_pool()
    return net.layers


#: VGG-16 (Simonyan & Zisserman 2015, configuration D): 3×3 convolutions, "M" a 2×2 max pool.
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg16(image: int = 224) -> list[NetLayer]:
    net = _Builder((image, image), 3)
    for item in VGG16:
        if item == "M":
            net.pool("max", 2, 2)
        else:
            net.conv(int(item), 3)
    return net.layers


def unet(image: int = 224, base: int = 64, levels: int = 4) -> list[NetLayer]:
    """U-Net (Ronneberger et al. 2015) with "same" 3×3 convolutions: ``levels`` of two
    convolutions and a 2×2 max pool, the bottom, then per level a 2×2 stride-2
    transposed convolution, the skip's channels concatenated, two convolutions;
    a 1×1 to 2 classes."""
    net = _Builder((image, image), 3)
    skips = []
    for level in range(levels):
        width = base << level
        net.conv(width, 3)
        net.conv(width, 3)
        skips.append((net.size, net.channels))
        net.pool("max", 2, 2)
    net.conv(base << levels, 3)
    net.conv(base << levels, 3)
    for size, channels in reversed(skips):
        net.transposed(channels, 2, 2)
        net.at(size, 2 * channels)
        net.conv(channels, 3)
        net.conv(channels, 3)
    net.conv(2, 1)
    return net.layers


def wavenet(length: int = 8192, residual: int = 64, skip: int = 256) -> list[NetLayer]:
    """WaveNet (van den Oord et al. 2016): 256 µ-law classes in, a causal 2-tap
    convolution, then per dilation 1, 2, … 512 a causal dilated 2-tap convolution
    to the gate's two halves, a 1×1 back to the residual channels and a 1×1 to the
    skip channels; two 1×1 on the summed skips."""
    net = _Builder((length,), 256)
    net.conv(residual, 2, padding="causal")
    for level in range(10):
        net.conv(2 * residual, 2, dilation=1 << level, padding="causal")
        net.at((length,), residual)  # tanh · sigmoid of the two halves
        net.conv(residual, 1)
        net.at((length,), residual)
        net.conv(skip, 1)
        net.at((length,), residual)
    net.at((length,), skip)
    net.conv(skip, 1)
    net.conv(256, 1)
    return net.layers


#: The suite's networks: each a function of the image size (WaveNet: of the length / 27).
NETWORKS: dict[str, Callable[[int], list[NetLayer]]] = {
    "resnet50": resnet,
    "resnext50": resnext50,
    "mobilenet_v2": mobilenet_v2,
    "efficientnet_b0": efficientnet_b0,
    "vgg16": vgg16,
    "unet": unet,
    "wavenet": lambda image: wavenet(max(1024, image * 8192 // 224)),
}


def distinct(layers: Sequence[NetLayer]) -> dict[NetLayer, int]:
    """Each distinct layer (in order of first use) and how often it occurs."""
    counts: dict[NetLayer, int] = {}
    for layer in layers:
        counts[layer] = counts.get(layer, 0) + 1
    return counts


def multiply_adds(layers: Sequence[NetLayer], batch: int = 1) -> int:
    """Multiply-adds of the convolutions (pooling counts 0)."""
    return sum(layer.multiply_adds(batch) for layer in layers)


# --------------------------------------------------------------------------- modes

#: The engine's compiled-kernel modes a benchmark can run in: ``on`` (everything this
#: machine can compile), ``off`` (``CONVARITH_JIT=0``: no llvmlite kernels, numba's
#: loops kept) and ``numpy`` (neither: what a machine without llvmlite, hence
#: without numba, runs).
JIT_MODES = ("on", "off", "numpy")


def set_mode(jit: str = "on", isa: str | None = None) -> None:
    """Put this process's engine in a compiled-kernel mode, before it times anything.

    ``jit`` is one of :data:`JIT_MODES`; ``isa`` sets ``CONVARITH_VECTOR_ISA``
    (``avx2`` runs the kernels made for AVX2, on an AVX-512 machine too). The
    engine's caches are emptied, so kernels built in another mode are not reused.
    ``numpy`` makes ``import numba`` fail in this process from then on.

    >>> set_mode("fast")
    Traceback (most recent call last):
    ...
    ValueError: jit='fast' is not a mode: use one of on, off, numpy
    """
    import sys

    from .engine import clear_caches
    from .engine.compiled import VECTOR_ISA_NAMES, VECTOR_ISA_VARIABLE

    if jit not in JIT_MODES:
        raise ValueError(f"jit={jit!r} is not a mode: use one of {', '.join(JIT_MODES)}")
    if isa is not None and isa not in VECTOR_ISA_NAMES:
        raise ValueError(f"isa={isa!r} is not an instruction set: use one of "
                         f"{', '.join(VECTOR_ISA_NAMES)}")
    if jit == "on":
        os.environ.pop("CONVARITH_JIT", None)
    else:
        os.environ["CONVARITH_JIT"] = "0"
    if jit == "numpy":
        sys.modules["numba"] = None  # type: ignore[assignment]  # import numba -> ImportError
    if isa is not None:
        os.environ[VECTOR_ISA_VARIABLE] = isa
    clear_caches()


#: How convarith gets a forward layer's kernel: ``prepacked`` (a model's fixed weights,
#: :func:`convarith.engine.prepack`, the default) or ``in-place`` (a writeable array read
#: afresh at every call). Children of the benchmark inherit it.
WEIGHTS_VARIABLE = "CONVARITH_BENCH_WEIGHTS"
WEIGHTS_MODES = ("prepacked", "in-place")


def weights_mode() -> str:
    """The weights mode of this process (:data:`WEIGHTS_VARIABLE`, default ``prepacked``).

    >>> weights_mode() in WEIGHTS_MODES
    True
    """
    mode = os.environ.get(WEIGHTS_VARIABLE, "") or "prepacked"
    if mode not in WEIGHTS_MODES:
        raise ValueError(f"{WEIGHTS_VARIABLE}={mode!r} is not a weights mode: use one of "
                         f"{', '.join(WEIGHTS_MODES)}")
    return mode


def mode_description() -> str:
    """Which compiled kernels the engine runs now, in words (for a benchmark's header).

    >>> "numba loops" in mode_description()
    True
    """
    import importlib.util
    import sys

    from .engine.compiled import compiled_kernels_description

    description = compiled_kernels_description()
    if description is not None:
        kernels = f"llvmlite kernels {description}"
    else:
        kernels = "no llvmlite kernels (CONVARITH_JIT=0, no llvmlite or no AVX2/NEON)"
    has_numba = sys.modules.get("numba", 0) is not None and (
        "numba" in sys.modules or importlib.util.find_spec("numba") is not None)
    return (f"{kernels}; numba loops {'on' if has_numba else 'off'}; "
            f"weights {weights_mode()}")


# --------------------------------------------------------------------------- runners


def _case(layer: NetLayer, batch: int) -> Any:
    from .bench import BenchCase

    kernel_shape = layer.kernel_shape()
    assert kernel_shape is not None
    return BenchCase(layer.title, layer.title, layer.input_shape(batch), kernel_shape,
                     layer.spec())


def _torch_pool(layer: NetLayer, x: np.ndarray, backward: bool) -> Callable[[], Any] | None:
    try:
        import torch
        import torch.nn.functional as tf
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).contiguous(
        memory_format=torch.channels_last)
    padding = int(layer.padding)
    if layer.kind == "max_pool":
        def pool(a: Any) -> Any:
            return tf.max_pool2d(a, layer.kernel, layer.stride, padding)
    else:
        def pool(a: Any) -> Any:
            return tf.avg_pool2d(a, layer.kernel, layer.stride, padding,
                                 count_include_pad=False)
    if not backward:
        def forward() -> Any:
            with torch.no_grad():
                return pool(xt)
        return forward
    # the backward pass alone (the forward runs once, its graph kept), as conv_vjp
    a = xt.clone().requires_grad_(True)
    y = pool(a)
    g = torch.randn_like(y)
    return lambda: torch.autograd.grad(y, (a,), g, retain_graph=True)


def _onnx_runner(layer: NetLayer, x: np.ndarray, kernel: np.ndarray | None,
                 threads: int | None = None) -> Callable[[], Any] | None:
    """A one-node onnxruntime session (NCHW, all cores), or None without onnxruntime."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    resolved = layer.spec().resolve(x.shape)
    xn = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    attrs: dict[str, Any] = {}
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(xn.shape))]
    initial = []
    if layer.kind in ("conv", "transposed"):
        assert kernel is not None
        w = np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1)))
        initial.append(helper.make_tensor("w", TensorProto.FLOAT, list(w.shape),
                                          w.ravel().tolist()))
        attrs.update(strides=[layer.stride] * layer.rank, dilations=[layer.dilation] * layer.rank,
                     group=layer.groups)
        if layer.kind == "conv":
            op = "Conv"
            pads = [lo for lo, _ in resolved.padding] + [hi for _, hi in resolved.padding]
        else:
            op = "ConvTranspose"
            pads = [lo for lo, _ in resolved.crop] + [hi for _, hi in resolved.crop]
        attrs["pads"] = pads
        node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    else:
        op = "MaxPool" if layer.kind == "max_pool" else "AveragePool"
        attrs.update(kernel_shape=[layer.kernel] * layer.rank,
                     strides=[layer.stride] * layer.rank,
                     pads=[int(layer.padding)] * (2 * layer.rank))
        node = helper.make_node(op, ["x"], ["y"], **attrs)
    out = list(np.moveaxis(np.empty(layer.output_shape(x.shape[0]), np.int8), -1, 1).shape)
    graph = helper.make_graph([node], "layer", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
                              initializer=initial)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx._serialize(model) if hasattr(onnx, "_serialize")
                                   else model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"x": xn}
    return lambda: session.run(None, feed)


@dataclass
class LayerResult:
    """Medians (seconds) of one distinct layer of a network, one direction.

    ``rel_error`` is the worst of ``output_errors`` (one per output: the forward
    result, or the input and kernel gradients), each ``‖ours − ref‖ / ‖ref‖``
    against ``error_against`` (PyTorch in float64 on the same float32 inputs, or
    convarith in float64 without PyTorch). ``peak_bytes`` is convarith's peak
    extra memory during one call (tracemalloc: NumPy's allocations, the result
    included), ``io_bytes`` the bytes of the call's arrays (input, kernel and
    output; backward: input, kernel, output gradient and both gradients).
    """

    network: str
    layer: str
    kind: str
    batch: int
    direction: str
    count: int
    multiply_adds: int
    paths: list[str]
    convarith_s: float
    torch_s: float | None = None
    onnxruntime_s: float | None = None
    rel_error: float = 0.0
    output_errors: list[float] = field(default_factory=list)
    error_against: str = ""
    peak_bytes: int = 0
    io_bytes: int = 0
    memory_ratio: float = 0.0

    @property
    def ratio(self) -> float | None:
        return None if self.torch_s is None else self.torch_s / self.convarith_s

    def path_errors(self) -> dict[str, float]:
        """Each algorithm's share of the error: a backward call's input-gradient
        path gets the input gradient's error, its weight-gradient path the kernel
        gradient's; otherwise every path gets the worst error."""
        if self.direction == "backward" and len(self.paths) == 3 \
                and len(self.output_errors) == 2:
            return {self.paths[1]: self.output_errors[0], self.paths[2]: self.output_errors[1]}
        return {path: self.rel_error for path in self.paths}


@dataclass
class NetworkResult:
    """A network's layers summed (count × median), one batch and direction."""

    network: str
    batch: int
    direction: str
    layers: list[LayerResult] = field(default_factory=list)
    #: Each runtime's process id and a checksum of the inputs it read (one process
    #: per runtime: the ids differ and the checksums agree).
    processes: dict[str, int] = field(default_factory=dict)
    input_checksums: dict[str, int] = field(default_factory=dict)

    def total(self, column: str) -> float | None:
        values = [getattr(r, column) for r in self.layers]
        if any(v is None for v in values):
            return None
        return sum(v * r.count for v, r in zip(values, self.layers))

    @property
    def ratio(self) -> float | None:
        ours, torch = self.total("convarith_s"), self.total("torch_s")
        return None if ours is None or torch is None else torch / ours

    @property
    def ort_ratio(self) -> float | None:
        ours, ort = self.total("convarith_s"), self.total("onnxruntime_s")
        return None if ours is None or ort is None else ort / ours

    @property
    def worst_memory_ratio(self) -> float | None:
        return max((r.memory_ratio for r in self.layers), default=None)


def _inputs(layers: dict[NetLayer, int], batch: int, seed: int
            ) -> dict[NetLayer, tuple[np.ndarray, np.ndarray | None]]:
    """Each distinct layer's input (the previous layer's output through a ReLU where it
    fits, else ReLU'd noise) and kernel (He-scaled normal)."""
    from .engine import conv

    rng = np.random.default_rng(seed)
    made: dict[NetLayer, tuple[np.ndarray, np.ndarray | None]] = {}
    previous: np.ndarray | None = None
    for layer in layers:
        shape = layer.input_shape(batch)
        if previous is not None and previous.shape == shape:
            x = np.maximum(previous, 0)
        else:
            x = np.maximum(rng.standard_normal(shape, np.float32), 0)
        kernel_shape = layer.kernel_shape()
        kernel = None
        if kernel_shape is not None:
            fan_in = math.prod(kernel_shape[:-1])
            kernel = (rng.standard_normal(kernel_shape, np.float32)
                      * np.float32(math.sqrt(2.0 / fan_in)))
        made[layer] = (x, kernel)
        previous = conv(x, kernel, layer.spec()).astype(np.float32)
    return made


def _output_gradient(layer: NetLayer, batch: int) -> np.ndarray:
    """The output gradient a backward call gets (the same in every process)."""
    return np.random.default_rng(1).standard_normal(layer.output_shape(batch), np.float32)


def _paths(layer: NetLayer, batch: int, backward: bool) -> list[str]:
    if layer.kind not in ("conv", "transposed"):
        return ["pooling"]
    from .bench import forward_paths

    return forward_paths(_case(layer, batch), backward,
                         prepacked=not backward and weights_mode() == "prepacked")


#: The runtimes a layer is timed with, each in its own process by default.
RUNTIMES = ("convarith", "torch", "onnxruntime")


def _runner(runtime: str, layer: NetLayer, batch: int, x: np.ndarray,
            kernel: np.ndarray | None, d_out: np.ndarray | None,
            threads: int | None = None) -> Callable[[], Any] | None:
    """One call of ``layer`` through ``runtime`` (backward when ``d_out`` is given), or
    None where the runtime is missing or has no such call (onnxruntime: forward only).
    PyTorch and onnxruntime use ``threads`` threads (default: every core)."""
    backward = d_out is not None
    if runtime == "convarith":
        from .engine import conv, conv_vjp

        spec = layer.spec()
        if d_out is not None:
            return lambda: tuple(conv_vjp(x, kernel, spec, d_out)[:2])
        if kernel is not None and weights_mode() == "prepacked":
            from .engine import prepack

            # a model's weights, fixed while it runs: packed once where the engine packs
            # them (as onnxruntime's session does when it starts)
            kernel = prepack(kernel)
        return lambda: conv(x, kernel, spec)
    if runtime == "torch":
        if kernel is None:
            fn = _torch_pool(layer, x, backward)
        else:
            from .bench import torch_runner

            picked = torch_runner(_case(layer, batch), x, kernel, backward)
            fn = picked[0] if picked is not None else None
        if fn is not None and threads is not None:
            import torch

            torch.set_num_threads(threads)  # the runners above take every core
        return fn
    if runtime == "onnxruntime":
        return None if backward else _onnx_runner(layer, x, kernel, threads)
    raise ValueError(f"runtime={runtime!r} is not one of {', '.join(RUNTIMES)}")


def _torch_reference(layer: NetLayer, x: np.ndarray, kernel: np.ndarray | None,
                     d_out: np.ndarray | None) -> tuple[np.ndarray | None, ...] | None:
    """PyTorch's result in float64 on the same inputs (convarith's layouts), or None
    without PyTorch: the output, or the input and kernel gradients."""
    try:
        import torch
        import torch.nn.functional as tf
    except ImportError:
        return None
    rank = layer.rank
    resolved = layer.spec().resolve(x.shape)
    grad = d_out is not None
    a = torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64)).requires_grad_(grad)
    w = None
    if kernel is not None:
        w = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1)))
                             .astype(np.float64)).requires_grad_(grad)

    def flat(pairs: Any) -> list[int]:
        return [v for lo_hi in reversed(list(pairs)) for v in lo_hi]

    if layer.kind == "conv":
        y = getattr(tf, f"conv{rank}d")(tf.pad(a, flat(resolved.padding)), w, None,
                                        layer.stride, 0, layer.dilation, layer.groups)
    elif layer.kind == "transposed":
        full = getattr(tf, f"conv_transpose{rank}d")(a, w, None, layer.stride, 0, 0,
                                                     layer.groups, layer.dilation)
        y = tf.pad(full, flat([(-lo, -hi) for lo, hi in resolved.crop]))
    elif layer.kind == "max_pool":
        y = getattr(tf, f"max_pool{rank}d")(a, layer.kernel, layer.stride, int(layer.padding))
    else:
        y = getattr(tf, f"avg_pool{rank}d")(a, layer.kernel, layer.stride, int(layer.padding),
                                            count_include_pad=False)
    if d_out is None:
        return (y.detach().movedim(1, -1).numpy(),)
    wanted = [a] if w is None else [a, w]
    grads = torch.autograd.grad(y, wanted, torch.from_numpy(
        np.moveaxis(d_out, -1, 1).astype(np.float64)))
    d_x = grads[0].movedim(1, -1).numpy()
    d_w = None if w is None else np.moveaxis(grads[1].numpy(), (0, 1), (-1, -2))
    return d_x, d_w


def _check_layer(layer: NetLayer, batch: int, x: np.ndarray, kernel: np.ndarray | None,
                 d_out: np.ndarray | None) -> tuple[list[float], str, int, int]:
    """Untimed: convarith's error per output against PyTorch in float64 (else against
    convarith in float64), and its peak extra memory during a call (tracemalloc) with
    the bytes of the call's arrays: ``(errors, against, peak_bytes, io_bytes)``."""
    from .bench import _peak_memory, relative_error
    from .engine import conv, conv_vjp

    ours = _runner("convarith", layer, batch, x, kernel, d_out)
    assert ours is not None
    result = ours()
    results = result if isinstance(result, tuple) else (result,)
    reference = _torch_reference(layer, x, kernel, d_out)
    against = "torch float64"
    if reference is None:
        spec = layer.spec()
        x64 = x.astype(np.float64)
        k64 = None if kernel is None else kernel.astype(np.float64)
        reference = (tuple(conv_vjp(x64, k64, spec, d_out.astype(np.float64))[:2])
                     if d_out is not None else (conv(x64, k64, spec),))
        against = "convarith float64"
    errors = [relative_error(a, b) for a, b in zip(results, reference)
              if a is not None and b is not None]
    del result, results, reference
    peak = _peak_memory(ours)
    out_bytes = 4 * math.prod(layer.output_shape(batch))
    kernel_bytes = 0 if kernel is None else kernel.nbytes
    io = x.nbytes + kernel_bytes + out_bytes
    if d_out is not None:  # in: x, kernel, d_out; out: d_x, d_kernel
        io = 2 * (x.nbytes + kernel_bytes) + d_out.nbytes
    return errors, against, peak, io


def _time_runner(fn: Callable[[], Any], repeat: int, block: int, backward: bool = False
                 ) -> float:
    """Median seconds of ``fn`` alone: warm-up (:func:`.bench.warm_up_calls`: for a
    backward pass, past convarith's first calls' trials), then ``repeat`` rounds of a
    settling call and ``block`` timed calls."""
    from .bench import alternate, warm_up_calls

    for _ in range(warm_up_calls(backward) - 1):
        fn()
    return statistics.median(alternate({"one": fn}, repeat, block)["one"])


def _current_mode() -> str:
    """The compiled-kernel mode of this process (see :func:`set_mode`)."""
    import sys

    if "numba" in sys.modules and sys.modules["numba"] is None:
        return "numpy"
    return "off" if os.environ.get("CONVARITH_JIT") == "0" else "on"


def _time_in_process(runtime: str, mode: str, folder: str, layers: list[NetLayer],
                     batch: int, backward: bool, repeat: int, block: int,
                     threads: int | None = None, check: bool = True) -> dict[str, Any]:
    """One runtime times a network's layers in order, in a process of its own.

    The inputs are read from ``folder`` (``x{i}.npy``, ``k{i}.npy``), as the parent
    wrote them, so every runtime sees the same ones. The convarith process then
    checks each layer, untimed (:func:`_check_layer`), and names its paths (unless
    ``check`` is false: a later round of :func:`run_networks`).
    """
    if mode == "numpy":
        set_mode("numpy")
    times: list[float | None] = []
    checks: list[tuple[list[float], str, int, int]] = []
    paths: list[list[str]] = []
    checksum = 0

    def load(i: int) -> tuple[np.ndarray, np.ndarray | None]:
        path = os.path.join(folder, f"k{i}.npy")
        kernel = np.load(path) if os.path.exists(path) else None
        return np.load(os.path.join(folder, f"x{i}.npy")), kernel

    for i, layer in enumerate(layers):
        x, kernel = load(i)
        for array in (x, kernel):
            if array is not None:
                checksum = zlib.crc32(array.tobytes(), checksum)
        d_out = _output_gradient(layer, batch) if backward else None
        fn = _runner(runtime, layer, batch, x, kernel, d_out, threads)
        times.append(None if fn is None else _time_runner(fn, repeat, block, backward))
    if runtime == "convarith" and check:
        for i, layer in enumerate(layers):
            x, kernel = load(i)
            d_out = _output_gradient(layer, batch) if backward else None
            checks.append(_check_layer(layer, batch, x, kernel, d_out))
            paths.append(_paths(layer, batch, backward))
    return {"times": times, "checks": checks, "paths": paths, "pid": os.getpid(),
            "checksum": checksum}


#: The variables that set the thread pools' sizes when a process starts.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "CONVARITH_NUM_THREADS")


def _in_child(folder: str, fn: Callable[..., Any], *args: Any, threads: int | None = None
              ) -> Any:
    """``fn(*args)`` in a fresh Python process (no thread pool of this one is shared);
    the call and its result travel as pickles through ``folder``. ``threads`` sets
    :data:`THREAD_VARIABLES` in the child."""
    import pickle
    import subprocess
    import sys

    task = os.path.join(folder, "task.pickle")
    answer = os.path.join(folder, "answer.pickle")
    with open(task, "wb") as handle:
        pickle.dump((fn.__module__, fn.__name__, args), handle)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = dict(os.environ)
    if threads is not None:
        environment.update({name: str(threads) for name in THREAD_VARIABLES})
    environment["PYTHONPATH"] = os.pathsep.join(
        [package_root, *filter(None, [os.environ.get("PYTHONPATH")])])
    done = subprocess.run([sys.executable, "-c", _CHILD, task, answer], env=environment,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the benchmark's child process failed ({fn.__name__}{args[:1]}):\n"
                           f"{done.stderr[-4000:]}")
    with open(answer, "rb") as handle:
        return pickle.load(handle)


#: What a child process runs: read the call, make it, write the result.
_CHILD = """
import importlib, pickle, sys
with open(sys.argv[1], "rb") as handle:
    module, name, args = pickle.load(handle)
result = getattr(importlib.import_module(module), name)(*args)
with open(sys.argv[2], "wb") as handle:
    pickle.dump(result, handle)
"""


def _network_isolated(name: str, layers: dict[NetLayer, int], batch: int, backward: bool,
                      inputs: dict[NetLayer, tuple[np.ndarray, np.ndarray | None]],
                      repeat: int, block: int, threads: int | None = None,
                      rounds: int = 1) -> NetworkResult:
    import tempfile

    ordered = list(layers)
    network = NetworkResult(name, batch, "backward" if backward else "forward")
    times: dict[str, list[list[float | None]]] = {runtime: [] for runtime in RUNTIMES}
    with tempfile.TemporaryDirectory(prefix="convarith-networks-") as folder:
        for i, layer in enumerate(ordered):
            x, kernel = inputs[layer]
            np.save(os.path.join(folder, f"x{i}.npy"), x)
            if kernel is not None:
                np.save(os.path.join(folder, f"k{i}.npy"), kernel)
        runs: dict[str, dict[str, Any]] = {}
        for round_ in range(rounds):
            # each round starts with the next runtime: none is always first or last
            order = RUNTIMES[round_ % len(RUNTIMES):] + RUNTIMES[:round_ % len(RUNTIMES)]
            for runtime in order:
                run = _in_child(folder, _time_in_process, runtime, _current_mode(), folder,
                                ordered, batch, backward, repeat, block, threads,
                                runtime not in runs, threads=threads)
                runs.setdefault(runtime, run)
                times[runtime].append(run["times"])
    ours = runs["convarith"]
    network.processes = {runtime: run["pid"] for runtime, run in runs.items()}
    network.input_checksums = {runtime: run["checksum"] for runtime, run in runs.items()}
    best = {runtime: [_best_of_rounds([t[i] for t in times[runtime]])
                      for i in range(len(ordered))] for runtime in RUNTIMES}
    ours_best = [t for t in best["convarith"] if t is not None]
    assert len(ours_best) == len(ordered), "convarith times every layer"
    for i, layer in enumerate(ordered):
        errors, against, peak, io = ours["checks"][i]
        network.layers.append(LayerResult(
            name, layer.title, layer.kind, batch, network.direction, layers[layer],
            layer.multiply_adds(batch), ours["paths"][i], ours_best[i],
            best["torch"][i], best["onnxruntime"][i],
            max(errors, default=0.0), errors, against, peak, io, peak / io))
    return network


def _best_of_rounds(medians: Sequence[float | None]) -> float | None:
    """A layer's time over :func:`run_networks`' rounds: the least of the rounds'
    medians (a round slowed by the rest of a shared machine does not count), or
    ``None`` where the runtime has no such layer.

    >>> _best_of_rounds([0.3, 0.2, 0.25]), _best_of_rounds([None, None])
    (0.2, None)
    """
    known = [m for m in medians if m is not None]
    return min(known) if known else None


def _time_layer(name: str, layer: NetLayer, count: int, batch: int, backward: bool,
                x: np.ndarray, kernel: np.ndarray | None, repeat: int, block: int
                ) -> LayerResult:
    """One distinct layer in this process: the untimed check, then the runtimes in turn."""
    from .bench import alternate, warm_up_calls

    d_out = _output_gradient(layer, batch) if backward else None
    errors, against, peak, io = _check_layer(layer, batch, x, kernel, d_out)
    runners = {}
    for runtime in RUNTIMES:
        fn = _runner(runtime, layer, batch, x, kernel, d_out)
        if fn is not None:
            runners[runtime] = fn
    for fn in runners.values():
        for _ in range(warm_up_calls(backward) - 1):
            fn()
    samples = alternate(runners, repeat, block, 0.005)
    median = {k: statistics.median(v) for k, v in samples.items()}
    return LayerResult(name, layer.title, layer.kind, batch,
                       "backward" if backward else "forward", count,
                       layer.multiply_adds(batch), _paths(layer, batch, backward),
                       median["convarith"], median.get("torch"), median.get("onnxruntime"),
                       max(errors, default=0.0), errors, against, peak, io, peak / io)


def run_networks(names: Sequence[str], batches: Sequence[int] = (1, 16), *, image: int = 224,
                 backward: bool = True, repeat: int = 3, block: int = 1,
                 log: Callable[[str], None] | None = None,
                 only_first: bool = False, one_process: bool = False,
                 threads: int | None = None, forward: bool = True,
                 rounds: int = 1) -> list[NetworkResult]:
    """Time every distinct layer of each network in ``names`` at each batch size.

    ``forward`` and ``backward`` say which passes are timed (at least one).
    ``rounds``: how many times each runtime times a network's layers, each time in a
    fresh process, the runtimes taking turns (the first runtime changes from round
    to round); a layer's time is the least of its rounds' medians, for every
    runtime alike (:func:`_best_of_rounds`), so that a burst of other work on a
    shared machine during one runtime's turn does not decide a ratio.

    Each runtime times a network's layers (one batch, one direction) in a process
    of its own, on the same inputs, with ``threads`` threads (default: every
    core); ``one_process=True`` times them in turn in this process instead (each
    runtime's idle threads then slow the next one).
    ``only_first``: the first convolution of each network only (a smoke run).
    """
    if threads is not None and (one_process or threads < 1):
        raise ValueError(f"threads={threads} needs a whole number of at least 1 and a "
                         "process per runtime (one_process=False): the thread pools are "
                         "sized when a process starts")
    if rounds < 1 or (rounds > 1 and one_process):
        raise ValueError(f"rounds={rounds} needs a whole number of at least 1, and more "
                         "than one round needs a process per runtime (one_process=False)")
    if not (forward or backward):
        raise ValueError("forward=False and backward=False time nothing: keep at least one "
                         "of the two passes")
    results = []
    for name in names:
        layers = distinct(NETWORKS[name](image))
        if only_first:
            first = next(layer for layer in layers if layer.kind == "conv")
            layers = {first: layers[first]}
        for batch in batches:
            inputs = _inputs(layers, batch, seed=batch)
            for backward_pass in [False] * forward + [True] * backward:
                direction = "backward" if backward_pass else "forward"
                if not one_process:
                    if log:
                        log(f"{name} batch {batch} {direction}: {len(layers)} layers, "
                            f"one process per runtime" + (f", {rounds} rounds" if rounds > 1
                                                          else ""))
                    results.append(_network_isolated(name, layers, batch, backward_pass,
                                                     inputs, repeat, block, threads,
                                                     rounds))
                    continue
                network = NetworkResult(name, batch, direction)
                for layer, count in layers.items():
                    if log:
                        log(f"{name} batch {batch} {direction}: {layer.title}")
                    x, kernel = inputs[layer]
                    network.layers.append(_time_layer(name, layer, count, batch, backward_pass,
                                                      x, kernel, repeat, block))
                results.append(network)
    return results


def _geomean(values: Sequence[float]) -> float | None:
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else None


#: Peak extra memory of a call, as a multiple of its arrays' bytes, above which a
#: layer is listed.
MEMORY_LIMIT = 1.5


def summary_networks(results: Sequence[NetworkResult]) -> dict[str, Any]:
    """Targets' figures: per-layer geomean and minimum of PyTorch / convarith, the
    worst peak memory per network, the layers over :data:`MEMORY_LIMIT`, and the
    worst error per path and direction."""
    out: dict[str, Any] = {}
    for direction in ("forward", "backward"):
        ratios = [r.ratio for n in results if n.direction == direction for r in n.layers
                  if r.ratio]
        out[f"{direction}_layer_geomean"] = _geomean(ratios)
        out[f"{direction}_layer_min"] = min(ratios, default=None)
        out[f"{direction}_network_geomean"] = _geomean(
            [n.ratio for n in results if n.direction == direction and n.ratio])
        per_path: dict[str, float] = {}
        for n in results:
            if n.direction == direction:
                for r in n.layers:
                    for path, error in r.path_errors().items():
                        per_path[path] = max(per_path.get(path, 0.0), error)
        out[f"{direction}_worst_error_per_path"] = dict(sorted(per_path.items()))
    out["worst_error"] = max((r.rel_error for n in results for r in n.layers), default=None)
    out["error_against"] = sorted({r.error_against for n in results for r in n.layers})
    out["worst_memory_ratio"] = {f"{n.network} batch {n.batch} {n.direction}":
                                 n.worst_memory_ratio for n in results}
    out["over_memory_limit"] = [
        dict(network=n.network, batch=n.batch, direction=n.direction, layer=r.layer,
             paths=r.paths, memory_ratio=r.memory_ratio)
        for n in results for r in n.layers if r.memory_ratio > MEMORY_LIMIT]
    return out


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "" if value is None else f"{value * scale:.{digits}f}"


def render_networks(results: Sequence[NetworkResult]) -> str:
    """Per network: totals in ms and the ratios (above 1: convarith is faster), the
    worst peak memory; then the layers over the memory limit and the worst error
    per path."""
    header = ["network", "batch", "dir", "layers", "convarith ms", "torch ms", "ort ms",
              "x torch", "x ort", "min layer x torch", "max peak x io"]
    rows = []
    for n in results:
        ratios = [r.ratio for r in n.layers if r.ratio]
        rows.append([n.network, str(n.batch), n.direction[:3], str(len(n.layers)),
                     _fmt(n.total("convarith_s"), 1e3, 1), _fmt(n.total("torch_s"), 1e3, 1),
                     _fmt(n.total("onnxruntime_s"), 1e3, 1), _fmt(n.ratio),
                     _fmt(n.ort_ratio), _fmt(min(ratios, default=None)),
                     _fmt(n.worst_memory_ratio)])
    info = summary_networks(results)
    lines = _table(header, rows)
    lines.append("")
    if info["worst_error"] is None:
        lines.append("no layers")
        return "\n".join(lines)
    ran = [d for d in ("forward", "backward") if info[f"{d}_layer_geomean"] is not None]
    lines.append("per-layer geomean torch/convarith: " + (", ".join(
        f"{d} {_fmt(info[f'{d}_layer_geomean'])} (min {_fmt(info[f'{d}_layer_min'])})"
        for d in ran) or "no PyTorch") + f"; worst relative error {info['worst_error']:.1e}")
    over = info["over_memory_limit"]
    lines.append(f"peak extra memory over {MEMORY_LIMIT}x (input + kernel + output bytes): "
                 + ("none" if not over else f"{len(over)} layers"))
    lines += [f"  {o['memory_ratio']:6.2f}x {o['network']} batch {o['batch']} "
              f"{o['direction'][:3]}: {o['layer']} ({'+'.join(dict.fromkeys(o['paths']))})"
              for o in over]
    against = " / ".join(info["error_against"])
    for direction in ("forward", "backward"):
        per_path = info[f"{direction}_worst_error_per_path"]
        if per_path:
            lines.append(f"worst relative error per path against {against}, {direction}: "
                         + ", ".join(f"{k} {v:.1e}" for k, v in per_path.items()))
    return "\n".join(lines)


def markdown_layers(results: Sequence[NetworkResult]) -> str:
    """The per-layer table (Markdown)."""
    header = ["network", "batch", "dir", "layer", "count", "path", "convarith ms", "torch ms",
              "ort ms", "x torch", "rel err", "peak x io"]
    rows = [[r.network, str(r.batch), r.direction[:3], r.layer, str(r.count),
             "+".join(dict.fromkeys(r.paths)), _fmt(r.convarith_s, 1e3, 3),
             _fmt(r.torch_s, 1e3, 3), _fmt(r.onnxruntime_s, 1e3, 3), _fmt(r.ratio),
             f"{r.rel_error:.1e}", _fmt(r.memory_ratio)] for n in results for r in n.layers]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def inventory_markdown(image: int = 224) -> str:
    """Every network's distinct layers (Markdown): how often each occurs and its
    multiply-adds per image, with the network's total."""
    lines = []
    for name, build in NETWORKS.items():
        layers = build(image)
        total = multiply_adds(layers)
        lines += [f"### {name}: {len(layers)} layers, {len(distinct(layers))} distinct, "
                  f"{total / 1e9:.3f} G multiply-adds", "",
                  "| layer | count | M multiply-adds (each) |", "|---|---|---|"]
        lines += [f"| {layer.title} | {count} | {layer.multiply_adds() / 1e6:.1f} |"
                  for layer, count in distinct(layers).items()]
        lines.append("")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths)),
           "-+-".join("-" * w for w in widths)]
    out += [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return out
