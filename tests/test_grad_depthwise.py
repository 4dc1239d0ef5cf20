"""The depthwise kernel gradient (``depthwise.weight_grad``): against PyTorch's
``convolution_backward`` on random layers, and its memory on few cells of many channels
(MobileNet's and EfficientNet's 3×3 depthwise layers on 4² and 7²)."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import peak_extra_bytes, relative_error
from convarith.engine.algorithms import depthwise


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(8))
def test_depthwise_kernel_gradient_against_torch(seed: int) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1200 + seed)
    channels = int(rng.choice([1, 3, 16, 40, 96]))
    multiplier = int(rng.choice([1, 1, 2]))
    batch = int(rng.choice([1, 2]))
    size = int(rng.integers(2, 12))  # 4 to 121 cells an image: both sums' kinds
    kernel_size, stride, dilation = int(rng.choice([1, 3, 5])), int(rng.choice([1, 2])), 1
    pad = kernel_size // 2
    x = rng.standard_normal((batch, size, size + 1, channels)).astype(np.float32)
    out = [(n + 2 * pad - kernel_size) // stride + 1 for n in x.shape[1:3]]
    dy = rng.standard_normal((batch, *out, channels * multiplier)).astype(np.float32)
    expected = torch.ops.aten.convolution_backward(
        torch.from_numpy(np.moveaxis(dy, -1, 1).copy()),
        torch.from_numpy(np.moveaxis(x, -1, 1).copy()),
        torch.zeros((channels * multiplier, 1, kernel_size, kernel_size)),
        None, [stride] * 2, [pad] * 2, [dilation] * 2, False, [0, 0], channels,
        [False, True, False])[1].numpy()
    expected = np.moveaxis(expected, (0, 1), (-1, -2))  # (K, K, 1, F)
    for threads in (1, 2):
        d_kernel = depthwise.weight_grad(x, dy, (kernel_size,) * 2, (stride,) * 2,
                                         (dilation,) * 2, channels, threads=threads,
                                         padding=((pad, pad), (pad, pad)))
        error = relative_error(d_kernel, expected)
        assert error <= 1e-5, (f"seed {1200 + seed}: {x.shape} {kernel_size}x{kernel_size} "
                               f"s{stride} x{multiplier}, {threads} threads: {error:.2e}")


@pytest.mark.parametrize("size, channels", [(4, 960), (4, 1152), (7, 576)])
@pytest.mark.parametrize("threads", [1, 2])
def test_depthwise_kernel_gradient_memory_on_few_cells(size: int, channels: int,
                                                       threads: int) -> None:
    """Peak extra memory at most 1.5 × (input + kernel + output gradient): the partial
    sums of pieces of a few rows each, float64 and alive until added, took 2.6×."""
    rng = np.random.default_rng(size * channels)
    x = rng.standard_normal((1, size, size, channels)).astype(np.float32)
    dy = rng.standard_normal((1, size, size, channels)).astype(np.float32)

    def run() -> np.ndarray:
        return depthwise.weight_grad(x, dy, (3, 3), (1, 1), (1, 1), channels, threads=threads,
                                     padding=((1, 1), (1, 1)))

    io = x.nbytes + dy.nbytes + run().nbytes
    extra = peak_extra_bytes(run)
    assert extra <= 1.5 * io, f"{size}² × {channels}, {threads} threads: {extra / io:.2f}×"
