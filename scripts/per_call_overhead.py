"""Per-call time of small 1x1 layers: ``engine.conv`` and ``convarith.conv2d`` against PyTorch.

EfficientNet-B0's squeeze-excitation layers (1x1 convolutions on a 1x1 image) and
the pointwise layers on 4x4 images, each timed as the median of 200 calls in a loop
(``time.perf_counter``), one thread for every library::

    CONVARITH_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python scripts/per_call_overhead.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SQUEEZE_EXCITATION = [(32, 8), (8, 32), (96, 4), (4, 96), (144, 6), (6, 144), (240, 10),
                      (10, 240), (480, 20), (20, 480), (672, 28), (28, 672), (1152, 48),
                      (48, 1152)]
POINTWISE_4X4 = [(1152, 192), (1152, 320), (320, 1280), (960, 160)]


def median_us(fn: Callable[[], Any], calls: int = 200) -> float:
    for _ in range(20):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    import torch
    import torch.nn.functional as tf

    import convarith
    from convarith import ConvSpec
    from convarith.engine import conv

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    ratios = []
    layers = [(1, c, f) for c, f in SQUEEZE_EXCITATION] + [(4, c, f) for c, f in POINTWISE_4X4]
    for size, channels, filters in layers:
        x = rng.standard_normal((1, size, size, channels), np.float32)
        kernel = rng.standard_normal((1, 1, channels, filters), np.float32)
        spec = ConvSpec(1)
        ours = median_us(lambda x=x, kernel=kernel, spec=spec: conv(x, kernel, spec))
        functional = median_us(lambda x=x, kernel=kernel: convarith.conv2d(x, kernel))
        x_torch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
        w_torch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1))))
        with torch.no_grad():
            theirs = median_us(lambda a=x_torch, w=w_torch: tf.conv2d(a, w))
        if size == 1:
            ratios.append(theirs / ours)
        print(f"{size}x{size} {channels:5d}->{filters:<5d} engine.conv {ours:6.1f}  conv2d "
              f"{functional:6.1f}  torch {theirs:6.1f} us  torch/engine {theirs / ours:.2f}",
              flush=True)
    geomean = float(np.exp(np.mean(np.log(ratios))))
    print(f"squeeze-excitation layers: geomean torch/engine.conv {geomean:.2f}")


if __name__ == "__main__":
    main()
