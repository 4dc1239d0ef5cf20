"""Per-call time of small layers: ``engine.conv`` and ``convarith``'s functions against PyTorch.

EfficientNet-B0's squeeze-excitation layers (1x1 convolutions on a 1x1 image),
the pointwise layers on 4x4 images, and the networks' small poolings (global
averages at batch 1 and 16, 2x2 and 3x3 max pools, channels-last and
channels-first; for a global average also the compiled kernel alone, called
through numba: the rest of ``engine.conv``'s time is Python), each timed as the
median of 200 calls in a loop (``time.perf_counter``), one thread for every
library::

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
# (kind, kernel, stride, padding, size, channels, batch)
POOLS = [("avg", 4, 1, 0, 4, 2048, 1), ("avg", 4, 1, 0, 4, 1280, 1), ("avg", 7, 1, 0, 7, 240, 1),
         ("avg", 14, 1, 0, 14, 144, 1), ("avg", 4, 1, 0, 4, 672, 16),
         ("avg", 4, 1, 0, 4, 1280, 16), ("avg", 7, 1, 0, 7, 480, 16),
         ("avg", 14, 1, 0, 14, 240, 16), ("max", 2, 2, 0, 7, 512, 1),
         ("max", 2, 2, 0, 14, 512, 1), ("max", 3, 2, 1, 56, 64, 1)]


def kernel_alone(x: np.ndarray) -> Callable[[], Any] | None:
    """The compiled global average of channels-last ``x`` called through numba (``None``
    where it is not here)."""
    from convarith.engine.algorithms import _llvm_pool

    kernel = _llvm_pool.global_average_kernel(x.dtype)
    if kernel is None or kernel.call is None:
        return None
    batch, channels = x.shape[0], x.shape[-1]
    cells = x[0].size // channels
    y = np.empty((batch, 1, 1, channels), x.dtype)
    chunk = _llvm_pool.global_chunk(channels, x.itemsize)
    return lambda: kernel.call(x, y, 0, batch, cells, channels, 0, channels, chunk)


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
    pool_ratios = []
    for kind, k, s, p, size, channels, batch in POOLS:
        x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
        spec = ConvSpec(k, strides=s, padding=p, pool=kind)
        x_first = np.ascontiguousarray(np.moveaxis(x, -1, 1))
        first = ConvSpec(k, strides=s, padding=p, pool=kind, data_format="channels_first")
        ours = median_us(lambda x=x, spec=spec: conv(x, None, spec))
        ours_first = median_us(lambda x=x_first, spec=first: conv(x, None, spec))
        function = convarith.max_pool if kind == "max" else convarith.avg_pool
        functional = median_us(lambda x=x, k=k, s=s, p=p, f=function: f(x, k, s, p))
        pool = tf.max_pool2d if kind == "max" else tf.avg_pool2d
        x_last = torch.from_numpy(x).permute(0, 3, 1, 2)  # channels-last memory
        x_torch = torch.from_numpy(x_first)
        with torch.no_grad():
            theirs = median_us(lambda a=x_last, k=k, s=s, p=p, f=pool: f(a, k, s, p))
            theirs_first = median_us(lambda a=x_torch, k=k, s=s, p=p, f=pool: f(a, k, s, p))
        pool_ratios.append(theirs / ours)
        alone = kernel_alone(x) if kind == "avg" and k == size else None
        kernel = "" if alone is None else f" (kernel {median_us(alone):6.1f})"
        print(f"{kind} pool {k}x{k} s{s} p{p} on {batch}x{size}x{size}x{channels}: engine.conv "
              f"{ours:6.1f}{kernel} (NCHW {ours_first:6.1f})  {function.__name__} {functional:6.1f}  "
              f"torch {theirs:6.1f} (NCHW {theirs_first:6.1f}) us  torch/engine "
              f"{theirs / ours:.2f}", flush=True)
    geomean = float(np.exp(np.mean(np.log(pool_ratios))))
    print(f"poolings: geomean torch/engine.conv {geomean:.2f}")


if __name__ == "__main__":
    main()
