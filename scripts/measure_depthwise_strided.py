"""PyTorch time / convarith time on the depthwise and strided layers of real networks.

Every distinct depthwise layer of MobileNetV2 and EfficientNet-B0 (forward and
backward) and every strided layer of ResNet-50 and MobileNetV2 (backward: input
and weight gradient), at batch 1 and 16, float32, PyTorch at its best of NCHW
and channels_last (median wall time, or with ``--cpu-time`` the best CPU time of one
thread). Run it once per thread count (the engine reads
``CONVARITH_NUM_THREADS`` once)::

    CONVARITH_NUM_THREADS=1 python scripts/measure_depthwise_strided.py --threads 1
    CONVARITH_NUM_THREADS=2 python scripts/measure_depthwise_strided.py --threads 2

Each line: the layer, the batch, the direction, the median times, the ratio
(above 1: convarith is faster) and the algorithms the engine picks.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from convarith.bench import alternate, torch_runner
from convarith.bench_networks import NETWORKS, NetLayer, _case, _paths, distinct
from convarith.engine import conv, conv_vjp

#: Layers the issue names outside those networks: depthwise 5×5 and 7×7 on 96 channels
#: (batch 2 at 56²), ConvNeXt's depthwise 7×7, a 3×3 stride-2 convolution 32 -> 64.
EXTRA = (NetLayer("conv", (56, 56), 96, 96, 5, 1, 2, 1, 96),
         NetLayer("conv", (56, 56), 96, 96, 7, 1, 3, 1, 96),
         NetLayer("conv", (56, 56), 96, 96, 7, 1, 3, 2, 96),
         NetLayer("conv", (56, 56), 32, 64, 3, 2, 1, 1, 1))


def layers(kind: str) -> list[NetLayer]:
    """The distinct depthwise (``kind="depthwise"``) or strided layers, or :data:`EXTRA`."""
    if kind == "extra":
        return list(EXTRA)
    names = (("mobilenet_v2", "efficientnet_b0") if kind == "depthwise"
             else ("resnet50", "mobilenet_v2"))
    found: dict[NetLayer, None] = {}
    for name in names:
        for layer in distinct(NETWORKS[name](224)):
            if layer.kind != "conv":
                continue
            depthwise = layer.groups > 1 and layer.groups == layer.in_channels
            if (kind == "depthwise" and depthwise) or (kind == "strided" and layer.stride > 1):
                found[layer] = None
    return list(found)


def cpu_times(runners: dict[str, Callable[[], Any]], repeat: int) -> dict[str, list[float]]:
    """The CPU time of the calling thread per call, in turn (one thread only: the
    time other processes take from this core is not counted)."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeat):
        for name, fn in runners.items():
            start = time.thread_time()
            fn()
            samples[name].append(time.thread_time() - start)
    return samples


def measure(layer: NetLayer, batch: int, backward: bool, threads: int, repeat: int,
            cpu_time: bool = False) -> tuple[float, float, list[str]]:
    import torch

    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal(layer.input_shape(batch), np.float32), 0)
    kernel_shape = layer.kernel_shape()
    assert kernel_shape is not None
    kernel = rng.standard_normal(kernel_shape, np.float32)
    spec = layer.spec()
    d_out = rng.standard_normal(layer.output_shape(batch), np.float32)

    def ours() -> Any:
        if backward:
            return conv_vjp(x, kernel, spec, d_out)[:2]
        return conv(x, kernel, spec)

    picked = torch_runner(_case(layer, batch), x, kernel, backward)
    assert picked is not None
    torch.set_num_threads(threads)
    runners: dict[str, Callable[[], Any]] = {"convarith": ours, "torch": picked[0]}
    if cpu_time:
        samples = cpu_times(runners, repeat)
        return min(samples["convarith"]), min(samples["torch"]), _paths(layer, batch, backward)
    samples = alternate(runners, repeat, 1, 0.002)
    return (statistics.median(samples["convarith"]), statistics.median(samples["torch"]),
            _paths(layer, batch, backward))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=("depthwise", "strided", "extra"), default=None)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--match", default="", help="only layers whose title contains this")
    parser.add_argument("--cpu-time", action="store_true",
                        help="best CPU time of the calling thread (with --threads 1: robust "
                             "on a busy machine) instead of the median wall time")
    parser.add_argument("--forward-only", action="store_true")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    for kind in ("extra", "depthwise", "strided"):
        if args.only not in (None, kind):
            continue
        for layer in layers(kind):
            if args.match not in layer.title:
                continue
            for batch in ([2] if kind == "extra" else batches):
                directions = ((True,) if kind == "strided" else
                              (False,) if args.forward_only else (False, True))
                for backward in directions:
                    ours, theirs, paths = measure(layer, batch, backward, args.threads,
                                                  args.repeat, args.cpu_time)
                    print(f"{kind:9} {layer.title:44} b{batch:<3} "
                          f"{'bwd' if backward else 'fwd'}  ours {ours * 1e3:8.2f} ms  "
                          f"torch {theirs * 1e3:8.2f} ms  ratio {theirs / ours:5.2f}  "
                          f"{'/'.join(paths)}", flush=True)


if __name__ == "__main__":
    main()
