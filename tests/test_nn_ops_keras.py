"""The functional ops against ``keras.ops``: groups inferred from the kernel, separable
convolution of any rank, depthwise errors that name depthwise's own arguments."""

from __future__ import annotations

import os

import numpy as np
import pytest

from convarith import engine

keras = pytest.importorskip("keras")

CASES = 6 if os.environ.get("CI") == "true" else 25


def _close(ours: np.ndarray, theirs: object, context: str) -> None:
    theirs = np.asarray(theirs)
    assert ours.shape == theirs.shape, context
    error = float(np.linalg.norm(ours - theirs)) / max(float(np.linalg.norm(theirs)), 1e-6)
    assert error <= 1e-4, f"{context}: relative error {error:.2e}"


def test_conv_infers_groups_like_keras_ops() -> None:
    for seed in range(CASES):
        rng = np.random.default_rng(seed)
        rank = int(rng.integers(1, 4))
        groups = int(rng.integers(1, 4))
        per_group = int(rng.integers(1, 3))
        filters = groups * int(rng.integers(1, 3))
        x = rng.standard_normal((2, *rng.integers(4, 7, rank), groups * per_group)).astype(np.float32)
        kernel = rng.standard_normal((*(2,) * rank, per_group, filters)).astype(np.float32)
        padding = str(rng.choice(["valid", "same"]))
        expected = keras.ops.conv(x, kernel, padding=padding)
        _close(engine.conv_nd(x, kernel, padding=padding), expected, f"seed {seed}")


@pytest.mark.parametrize("rank", [1, 2])
def test_separable_conv_matches_keras_ops(rank: int) -> None:
    for seed in range(CASES):
        rng = np.random.default_rng(100 + seed)
        channels, multiplier, filters = (int(v) for v in rng.integers(1, 4, 3))
        x = rng.standard_normal((2, *rng.integers(5, 8, rank), channels)).astype(np.float32)
        depthwise = rng.standard_normal((*(3,) * rank, channels, multiplier)).astype(np.float32)
        pointwise = rng.standard_normal((*(1,) * rank, channels * multiplier, filters)).astype(np.float32)
        strides = int(rng.integers(1, 3))
        padding = str(rng.choice(["valid", "same"]))
        expected = keras.ops.separable_conv(x, depthwise, pointwise, strides=strides, padding=padding)
        _close(engine.separable_conv(x, depthwise, pointwise, strides=strides, padding=padding),
               expected, f"seed {seed}")
        if rank == 1:
            _close(engine.separable_conv1d(x, depthwise, pointwise, strides=strides,
                                           padding=padding), expected, f"seed {seed}")


def test_depthwise_error_names_depthwise_arguments() -> None:
    with pytest.raises(ValueError, match="depthwise_kernel of shape") as error:
        engine.depthwise_conv2d(np.ones((1, 5, 5, 3)), np.ones((3, 3, 2, 1)))
    assert "groups" not in str(error.value)


def test_kernel_that_does_not_divide_channels_is_refused() -> None:
    with pytest.raises(ValueError, match="not a multiple of 2"):
        engine.conv2d(np.ones((1, 5, 5, 3)), np.ones((3, 3, 2, 4)))
