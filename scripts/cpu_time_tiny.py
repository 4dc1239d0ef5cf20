"""Per-call time of the networks suite's tiny layers: convarith against PyTorch, one thread.

The layers where a call's fixed cost dominates: squeeze-and-excitation 1×1
convolutions on a 1×1 image, global average pools, 2×2 max pools and 1×1
convolutions on images of at most 7×7, as the networks suite generates them
(:mod:`convarith.bench_networks`, images 112 and 224, batch ``--batch``). Each
layer's forward (``conv`` against ``F.conv2d`` / ``F.avg_pool2d`` /
``F.max_pool2d``) and backward (``conv_vjp`` against ``torch.autograd.grad``)
are timed by one thread's CPU time, the two runners alternating, best of
``--rounds`` rounds of about 2 ms each. ``--stub`` replaces every algorithm
and the pooling loops by one returning a preallocated output: what remains is
the engine's own per-call cost.

    python scripts/cpu_time_tiny.py [--jit off] [--batch 1] [--only "1x1,"] [--stub]
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                  "CONVARITH_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import functools  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402


def tiny_layers(images: tuple[int, ...] = (112, 224)) -> list[Any]:
    """The networks' distinct layers whose per-call cost dominates (see the module doc)."""
    from convarith import bench_networks as nets

    picked: list[Any] = []
    for image in images:
        for name in nets.NETWORKS:
            for layer in nets.distinct(nets.NETWORKS[name](image)):
                cells = math.prod(layer.size)
                global_pool = layer.kind == "avg_pool" and layer.output_size() == (1,) * layer.rank
                small_max = layer.kind == "max_pool" and layer.kernel == 2 and cells <= 56 * 56
                small_conv = layer.kind == "conv" and layer.kernel == 1 and cells <= 49
                if (global_pool or small_max or small_conv) and layer not in picked:
                    picked.append(layer)
    return picked


def interleaved(ours: Callable[[], Any], theirs: Callable[[], Any], rounds: int,
                budget: float = 0.002) -> tuple[float, float]:
    """CPU seconds per call of each, best of ``rounds`` alternating rounds of ~``budget``."""
    for fn in (ours, theirs, ours, theirs):
        fn()
    counts = []
    for fn in (ours, theirs):
        start = time.process_time()
        for _ in range(10):
            fn()
        once = (time.process_time() - start) / 10
        counts.append(max(1, int(budget / max(once, 1e-6))))
    best = [math.inf, math.inf]
    for _ in range(rounds):
        for which, fn in enumerate((ours, theirs)):
            start = time.process_time()
            for _ in range(counts[which]):
                fn()
            best[which] = min(best[which], (time.process_time() - start) / counts[which])
    return best[0], best[1]


def torch_layer(layer: Any, x: np.ndarray, kernel: np.ndarray | None, dy: np.ndarray,
                backward: bool) -> Callable[[], Any]:
    """PyTorch's call for ``layer`` (channels-last tensors, as the suite's best layout
    for these layers; NCHW and channels-last are the same memory for a 1×1 image)."""
    import torch
    import torch.nn.functional as tf

    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).contiguous(
        memory_format=torch.channels_last)
    gt = torch.from_numpy(np.moveaxis(dy, -1, 1).copy()).contiguous(
        memory_format=torch.channels_last)
    if kernel is None:
        if layer.kind == "max_pool":
            def call(a: Any, w: Any) -> Any:
                return tf.max_pool2d(a, layer.kernel, layer.stride, int(layer.padding))
        else:
            def call(a: Any, w: Any) -> Any:
                return tf.avg_pool2d(a, layer.kernel, layer.stride, int(layer.padding),
                                     count_include_pad=False)
        wt = None
    else:
        wt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1))))
        wt = wt.contiguous(memory_format=torch.channels_last)

        def call(a: Any, w: Any) -> Any:
            return tf.conv2d(a, w, None, layer.stride, int(layer.padding))
    if not backward:
        def forward() -> Any:
            with torch.no_grad():
                return call(xt, wt)
        return forward
    a = xt.clone().requires_grad_(True)
    w = None if wt is None else wt.clone().requires_grad_(True)
    inputs = (a,) if w is None else (a, w)
    return lambda: torch.autograd.grad(call(a, w), inputs, gt)


def stub_engine() -> None:
    """Every algorithm (and the pooling loops) returns a preallocated output at once."""
    from convarith.engine import core, dispatch, pooling

    outputs: dict[tuple[Any, ...], np.ndarray] = {}

    def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        key = (shape, np.dtype(dtype))
        if key not in outputs:
            outputs[key] = np.zeros(shape, dtype)
        return outputs[key]

    def direct(xp: np.ndarray, kernel: np.ndarray, strides: Any, dilation: Any, groups: int,
               out_size: Any, padding: Any = None) -> np.ndarray:
        return empty((xp.shape[0], *out_size, kernel.shape[-1]), xp.dtype)

    def weight_grad(xp: np.ndarray, dy: np.ndarray, kernel_size: Any, strides: Any,
                    dilation: Any, groups: int, padding: Any = None) -> np.ndarray:
        return empty((*kernel_size, xp.shape[-1] // groups, dy.shape[-1]), xp.dtype)

    def transposed(x: np.ndarray, kernel: np.ndarray, strides: Any, dilation: Any,
                   groups: int, padding: Any, out_size: Any) -> np.ndarray:
        return empty((x.shape[0], *out_size, kernel.shape[-2] * groups), x.dtype)

    dispatch.register_algorithm("stub", direct, cost=lambda p: 0.0, weight_grad=weight_grad,
                                pads_zeros=True)
    dispatch.register_algorithm("stub_transposed", transposed, cost=lambda p: -1.0,
                                kind="transposed")

    def pool_forward(x: np.ndarray, resolved: Any, planned: Any = None) -> np.ndarray:
        return empty((x.shape[0], *resolved.output_size, x.shape[-1]), x.dtype)

    def pool_backward(x: np.ndarray, resolved: Any, dy: np.ndarray, planned: Any = None
                      ) -> np.ndarray:
        return empty(x.shape, x.dtype)

    pooling.forward = pool_forward  # type: ignore[assignment]
    pooling.backward = pool_backward  # type: ignore[assignment]
    core.pooling = pooling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jit", choices=("on", "off", "numpy"), default="on")
    parser.add_argument("--isa", default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--only", default=None,
                        help="only layers whose title holds one of these (comma-separated)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--stub", action="store_true",
                        help="algorithms stubbed: the engine's own per-call cost")
    args = parser.parse_args()
    os.cpu_count = lambda: 1
    from convarith import bench_networks as nets

    nets.set_mode(args.jit, args.isa)
    import torch

    from convarith.engine import conv, conv_vjp

    torch.set_num_threads(1)
    if args.stub:
        stub_engine()
    print(nets.mode_description(), "(stubbed algorithms)" if args.stub else "", flush=True)
    print("ratio = PyTorch / convarith; times in µs of one thread's CPU time")
    rng = np.random.default_rng(args.batch)
    ratios: dict[str, list[float]] = {"forward": [], "backward": []}
    for layer in tiny_layers():
        if args.only and not any(text in layer.title for text in args.only.split(",")):
            continue
        spec = layer.spec()
        x = np.maximum(rng.standard_normal(layer.input_shape(args.batch)), 0).astype(np.float32)
        shape = layer.kernel_shape()
        kernel = None if shape is None else (
            rng.standard_normal(shape) * math.sqrt(2 / math.prod(shape[:-1]))).astype(np.float32)
        dy = rng.standard_normal(conv(x, kernel, spec).shape).astype(np.float32)
        cells = []
        for direction in ("forward",) if args.forward_only else ("forward", "backward"):
            backward = direction == "backward"
            ours: Callable[[], Any] = (
                functools.partial(conv_vjp, x, kernel, spec, dy) if backward
                else functools.partial(conv, x, kernel, spec))
            mine, theirs = interleaved(ours, torch_layer(layer, x, kernel, dy, backward),
                                       args.rounds)
            ratios[direction].append(theirs / mine)
            cells.append(f"{direction[:3]} {theirs / mine:5.2f} {mine * 1e6:7.1f} "
                         f"{theirs * 1e6:7.1f}")
        print(f"{layer.title:40s} " + "   ".join(cells), flush=True)
    for direction, values in ratios.items():
        if values:
            geomean = math.exp(math.fsum(map(math.log, values)) / len(values))
            print(f"{direction}: {len(values)} layers, geomean {geomean:.2f}, "
                  f"min {min(values):.2f}")


if __name__ == "__main__":
    main()
