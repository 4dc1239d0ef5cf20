"""Grouped convolutions' gradients side by side at any batch (``core._grouped_pair``):
stride 1, groups of several channels, small grids. Which layers qualify (ResNeXt-50's
and their neighbours), and randomized such layers on two workers (2-64 groups, 1-4
images, "same" and valid padding, dilation, float32 and float64) against PyTorch's
``convolution_backward`` (float64); each case prints its seed."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from _helpers import assert_two_thread_vjp_matches_torch, random_vjp_operands
from convarith import ConvSpec
from convarith.engine import core


@pytest.fixture(autouse=True)
def _constants_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are the constants' choice: no mode timed on the first calls
    (:mod:`convarith.engine.gradient_modes`, tested on its own)."""
    monkeypatch.setenv("CONVARITH_AUTOTUNE", "0")

CASES = 4 if os.environ.get("CI") == "true" else 12


def _pairs(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], strides: tuple[int, ...],
           out: tuple[int, ...]) -> bool:
    x = np.empty(x_shape, np.float32)
    dy = np.empty((x_shape[0], *out, kernel_shape[-1]), np.float32)
    return core._grouped_pair(x, np.empty(kernel_shape, np.float32), dy, strides)


def test_which_layers_pair() -> None:
    # ResNeXt-50's 3×3 g32 at stride 1 on 7² and 4², 16 images
    assert _pairs((16, 7, 7, 512), (3, 3, 16, 512), (1, 1), (7, 7))
    assert _pairs((16, 4, 4, 1024), (3, 3, 32, 1024), (1, 1), (4, 4))
    # larger grids, stride 2, depthwise, one group, a 1×1 kernel: their own ways
    assert not _pairs((16, 14, 14, 256), (3, 3, 8, 256), (1, 1), (14, 14))
    assert not _pairs((16, 7, 7, 1024), (3, 3, 32, 1024), (2, 2), (4, 4))
    assert not _pairs((16, 7, 7, 512), (3, 3, 1, 512), (1, 1), (7, 7))
    assert not _pairs((16, 7, 7, 512), (3, 3, 512, 512), (1, 1), (7, 7))
    assert not _pairs((16, 7, 7, 512), (1, 1, 16, 512), (1, 1), (7, 7))
    # a kernel larger than x and dy together (two wide groups on one small image)
    assert not _pairs((1, 4, 4, 512), (3, 3, 256, 512), (1, 1), (4, 4))


def _layer(rng: np.random.Generator) -> tuple[ConvSpec, tuple[int, ...], tuple[int, ...]]:
    while True:
        groups = int(rng.choice([2, 4, 8, 16, 32, 64]))
        group_in = int(rng.choice([4, 8, 16, 32]))
        group_out = int(rng.choice([group_in, group_in, 4, 16]))
        size = int(rng.integers(3, 9))
        dilation = int(rng.choice([1, 1, 2]))
        padding = "same" if rng.random() < 0.7 else "valid"
        spec = ConvSpec(3, padding=padding, groups=groups, dilation=dilation)
        x_shape = (int(rng.integers(1, 5)), size, size, groups * group_in)
        kernel_shape = (3, 3, group_in, groups * group_out)
        if padding == "valid" and size <= 2 * dilation:
            continue  # (the window is larger than the input)
        out = tuple(spec.resolve(x_shape).output_size)
        # past the size at which both gradients stay on the calling thread
        multiply_adds = x_shape[0] * math.prod(out) * math.prod(kernel_shape)
        if (_pairs(x_shape, kernel_shape, (1, 1), out) and core.TINY_BACKWARD_FLOPS
                <= 2 * multiply_adds * core.GROUPED_TINY_SCALE):
            return spec, x_shape, kernel_shape


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(CASES))
def test_grouped_gradients_side_by_side_against_torch(seed: int) -> None:
    pytest.importorskip("torch")
    rng = np.random.default_rng(9300 + seed)
    spec, x_shape, kernel_shape = _layer(rng)
    dtype = np.float64 if seed % 2 else np.float32
    x, kernel, dy = random_vjp_operands(rng, spec, x_shape, kernel_shape, dtype)
    what = f"seed {9300 + seed}: {spec} on {x.shape}, kernel {kernel.shape}, {dtype.__name__}"
    assert_two_thread_vjp_matches_torch(x, kernel, dy, spec, what)
