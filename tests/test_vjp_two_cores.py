"""One image's larger backward passes on two workers: above ``SMALL_BACKWARD_FLOPS``
and below ``TWO_CORES_FLOPS`` ``conv_vjp`` runs the input and kernel gradients side by
side, one thread each. Randomized layers of that range (3×3 "same", strided, dilated
1-D causal), float32 and float64, against PyTorch's ``convolution_backward`` (float64);
each case prints its seed."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from _helpers import assert_two_thread_vjp_matches_torch, random_vjp_operands
from convarith import ConvSpec
from convarith.engine import core

CASES = 4 if os.environ.get("CI") == "true" else 16


def _draw(rng: np.random.Generator) -> tuple[ConvSpec, tuple[int, ...], tuple[int, ...]]:
    if rng.random() < 0.3:  # WaveNet's dilated causal 1-D layers
        dilation = int(rng.choice([1, 2, 8, 64]))
        channels, filters = (int(v) for v in rng.choice([64, 128, 256], 2))
        length = int(rng.integers(2048, 4097))
        return (ConvSpec(2, rank=1, dilation=dilation, padding=[(dilation, 0)]),
                (1, length, channels), (2, channels, filters))
    stride = int(rng.choice([1, 1, 2]))
    channels, filters = (int(v) for v in rng.choice([32, 48, 64, 96], 2))
    size = int(rng.integers(32, 72)) * stride
    return (ConvSpec(3, strides=stride, padding=[(1, 1), (1, 1)]),
            (1, size, size, channels), (3, 3, channels, filters))


def _layer(rng: np.random.Generator) -> tuple[ConvSpec, tuple[int, ...], tuple[int, ...]]:
    """A spec, ``x``'s shape and the kernel's shape of 1e8 to 4e8 FLOPs on one image (in
    the side-by-side range, small enough for a quick test)."""
    while True:
        spec, x_shape, kernel_shape = _draw(rng)
        flops = 2 * math.prod(spec.resolve(x_shape).output_size) * math.prod(kernel_shape)
        if core.SMALL_BACKWARD_FLOPS <= flops < 4e8:
            return spec, x_shape, kernel_shape


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(CASES))
def test_one_image_gradients_side_by_side_against_torch(seed: int) -> None:
    pytest.importorskip("torch")
    rng = np.random.default_rng(9100 + seed)
    spec, x_shape, kernel_shape = _layer(rng)
    dtype = np.float64 if seed % 2 else np.float32
    x, kernel, dy = random_vjp_operands(rng, spec, x_shape, kernel_shape, dtype)
    resolved = spec.resolve(x.shape)
    flops = 2 * math.prod(resolved.output_size) * kernel.size
    what = f"seed {9100 + seed}: {spec} on {x.shape}, {dtype.__name__}, {flops:.3g} FLOPs"
    assert core.SMALL_BACKWARD_FLOPS <= flops < core.TWO_CORES_FLOPS, what
    assert core._side_by_side_on_two(x, kernel, dy, spec.rank), what
    assert_two_thread_vjp_matches_torch(x, kernel, dy, spec, what)
