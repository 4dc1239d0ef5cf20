"""Depth-to-space's one-image product on BLAS's threads and its cost against the other
transposed algorithms on 2×2 stride-2 up-sampling (U-Net's decoder and nearby shapes).

Values are checked against the scatter definition (``reference_scatter``); the choices
against the registered costs, which the planner compares.
"""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import reference_scatter, relative_error
from convarith.engine.algorithms import _llvm, depth_to_space
from convarith.engine.core import transposed_algorithm
from convarith.engine.dispatch import ConvProblem, get_algorithm


def up_sampling(batch, size, channels, filters):
    """A 2×2 stride-2 transposed layer with PyTorch's padding=0, as a ConvProblem."""
    return ConvProblem((batch, size, size, channels), (2, 2, filters, channels), (2, 2),
                       (1, 1), 1, (2 * size, 2 * size), np.dtype(np.float32))


@pytest.mark.parametrize("seed", range(6))
def test_one_image_on_blas_threads_is_the_definition(seed):
    """One image on two workers (one block: the product on BLAS's own threads), random
    sizes, kernel up to the stride (gaps between windows), crops and output padding,
    rank 1 to 3, float32 and float64."""
    rng = np.random.default_rng(5300 + seed)
    rank = 1 + seed % 3
    strides = tuple(int(v) for v in rng.integers(1, 4, rank))
    kernel_size = tuple(int(rng.integers(1, s + 1)) for s in strides)
    size = tuple(int(v) for v in rng.integers(2, 40 if rank < 3 else 8, rank))
    padding = tuple((k - 1 - int(rng.integers(0, k)), k - 1 + int(rng.integers(-1, s)))
                    for k, s in zip(kernel_size, strides))
    channels, filters = (int(v) for v in rng.integers(8, 80, 2))
    x = rng.standard_normal((1, *size, channels))
    kernel = rng.standard_normal((*kernel_size, filters, channels))
    expected = reference_scatter(x, kernel, strides, (1,) * rank, 1, padding)
    what = (f"seed {seed}: x {x.shape} kernel {kernel.shape} strides {strides} "
            f"padding {padding}")
    for dtype, tolerance in ((np.float32, 1e-5), (np.float64, 1e-10)):
        y = depth_to_space.transposed(x.astype(dtype), kernel.astype(dtype), strides,
                                      (1,) * rank, 1, padding, expected.shape[1:-1],
                                      threads=2)
        assert y.shape == expected.shape and y.dtype == dtype, what
        assert relative_error(y, expected) <= tolerance, f"{what} {dtype.__name__}"


def test_cost_counts_the_store_of_large_outputs():
    """Beyond STORE_CACHED_BYTES of output, with 64 filters or more, the store adds to
    the cost (at most STORE_MOST per real FLOP, below col2im's); small outputs, few
    filters and many channels keep the product's 0.5 per real FLOP."""
    def per_real_flop(problem):
        return depth_to_space.cost(problem) / (problem.flops / 4)

    assert per_real_flop(up_sampling(1, 28, 256, 128)) < 0.52      # 1.6 MB out
    assert per_real_flop(up_sampling(16, 28, 256, 128)) == pytest.approx(
        depth_to_space.STORE_MOST)                                    # 25.7 MB out
    assert per_real_flop(up_sampling(16, 7, 1024, 512)) < 0.56       # many channels
    assert per_real_flop(up_sampling(16, 112, 64, 32)) < 0.54        # 32 filters
    col2im = get_algorithm("col2im")
    for batch, size, channels in ((16, 56, 128), (4, 112, 64), (16, 28, 64)):
        problem = up_sampling(batch, size, channels, channels)
        assert depth_to_space.cost(problem) < col2im.cost(problem), (batch, size, channels)


@pytest.mark.skipif(not _llvm.available(np.float32), reason="no llvmlite kernels here")
@pytest.mark.parametrize("batch, size, channels, expected", [
    (16, 28, 256, "register_tiles_phases"),   # U-Net 256 -> 128, batch 16
    (16, 56, 128, "register_tiles_phases"),   # U-Net 128 -> 64, batch 16
    (16, 7, 1024, "depth_to_space"),          # U-Net 1024 -> 512: many channels
    (1, 28, 256, "depth_to_space"),           # batch 1: one image, the output cached
    (1, 7, 1024, "depth_to_space"),
])
def test_planner_on_batched_up_sampling(batch, size, channels, expected):
    """Which algorithm the planner picks for U-Net's 2×2 stride-2 layers (native vectors)."""
    if _llvm.narrower_than_host():
        pytest.skip("kernels made for narrower vectors than the host's")
    problem = up_sampling(batch, size, channels, channels // 2)
    name = transposed_algorithm(problem.input_shape, problem.kernel_shape, (2, 2), (1, 1), 1,
                                ((1, 1), (1, 1)))
    assert name == expected, (batch, size, channels, name)
