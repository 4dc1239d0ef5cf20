"""The depth-to-space transposed convolution (windows that do not overlap) against a slow
definition, against PyTorch's ``conv_transpose``, and through the engine's planner.

The reference scatters every input cell through every tap to ``o = i·S + t·D - P``
(the definition PyTorch documents), in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import (
    assert_transposed_cheapest_applies,
    assert_transposed_runs_as_reference,
    peak_extra_bytes,
    reference_scatter,
    relative_error,
)
from convarith import ConvSpec
from convarith.engine import conv, conv_vjp, thread_limit
from convarith.engine.algorithms import depth_to_space
from convarith.engine.dispatch import ConvProblem

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


def random_case(rng, rank):
    """Sizes, kernel, strides >= the dilated kernel, dilation, grid padding (crops too)."""
    size = [int(v) for v in rng.integers(1, 6, rank)]
    kernel_size = [int(v) for v in rng.integers(1, 4, rank)]
    dilation = tuple(int(v) for v in rng.integers(1, 3, rank))
    strides = tuple((k - 1) * d + 1 + int(rng.integers(0, 2))
                    for k, d in zip(kernel_size, dilation))
    padding = []
    for i, k, s, d in zip(size, kernel_size, strides, dilation):
        while True:  # lo / hi from cropping (negative) to beyond the kernel's reach
            lo, hi = (int(v) for v in rng.integers(-3, d * (k - 1) + 3, 2))
            if (i - 1) * s + 1 + lo + hi - d * (k - 1) > 0:
                break
        padding.append((lo, hi))
    x = rng.standard_normal((int(rng.integers(1, 3)), *size, int(rng.integers(1, 6))))
    kernel = rng.standard_normal((*kernel_size, int(rng.integers(1, 6)), x.shape[-1]))
    return x, kernel, strides, dilation, tuple(padding)


def exact_case(rng, rank):
    """Kernel equal to the stride, no crop: every output cell is one tap of one input cell."""
    size = [int(v) for v in rng.integers(1, 5, rank)]
    strides = tuple(int(v) for v in rng.integers(1, 4, rank))
    padding = tuple((s - 1, s - 1) for s in strides)
    x = rng.standard_normal((int(rng.integers(1, 3)), *size, int(rng.integers(1, 6))))
    kernel = rng.standard_normal((*strides, int(rng.integers(1, 6)), x.shape[-1]))
    return x, kernel, strides, (1,) * rank, padding


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("seed", range(10))
def test_depth_to_space_against_definition(seed, rank):
    rng = np.random.default_rng(7000 + 100 * rank + seed)
    for case in (random_case(rng, rank), exact_case(rng, rank)):
        x, kernel, strides, dilation, padding = case
        expected = reference_scatter(x, kernel, strides, dilation, 1, padding)
        what = (f"seed {seed} rank {rank}: x {x.shape} kernel {kernel.shape} strides {strides} "
                f"dilation {dilation} padding {padding}")
        for dtype in (np.float32, np.float64):
            # one block, row blocks on one thread, row blocks on two threads
            for threads, block_bytes in [(1, None), (1, 1), (2, 1)]:
                y = depth_to_space.transposed(x.astype(dtype), kernel.astype(dtype), strides,
                                              dilation, 1, padding, expected.shape[1:-1],
                                              threads=threads, block_bytes=block_bytes)
                assert y.shape == expected.shape and y.dtype == dtype, what
                error = relative_error(y, expected)
                assert error <= TOLERANCE[dtype], f"{what} {dtype.__name__} threads {threads} " \
                                                  f"block_bytes {block_bytes}: error {error:.2e}"


def test_both_product_orders_and_the_exact_store():
    """Few cells and wide columns (the transposed product), many cells and narrow columns
    (the cells-major product, exact and cropped): each is the scatter reference."""
    rng = np.random.default_rng(11)
    for x_shape, kernel_shape, padding in [
            ((1, 2, 3, 6), (2, 2, 16, 6), ((1, 1), (1, 1))),   # 6 cells < 64 columns
            ((2, 9, 8, 5), (2, 2, 3, 5), ((1, 1), (1, 1))),    # exact tiling
            ((2, 9, 8, 5), (2, 2, 3, 5), ((0, 1), (1, -1)))]:  # cropped, then zero cells
        x = rng.standard_normal(x_shape)
        kernel = rng.standard_normal(kernel_shape)
        expected = reference_scatter(x, kernel, (2, 2), (1, 1), 1, padding)
        y = depth_to_space.transposed(x, kernel, (2, 2), (1, 1), 1, padding,
                                      expected.shape[1:-1])
        assert relative_error(y, expected) <= 1e-10, (x_shape, kernel_shape, padding)


def test_blocks_of_both_product_orders_share_one_buffer():
    """Rows cut into a block of 12 cells (12 columns: the cells-major product, one
    first-axis tap at a time, 6 columns) and one of 8 (the transposed product, all 12
    columns): the buffer holds the larger need, and the result is the reference's."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 5, 4, 2))
    kernel = rng.standard_normal((2, 2, 3, 2))
    padding = ((1, 1), (1, 1))
    expected = reference_scatter(x, kernel, (2, 2), (1, 1), 1, padding)
    y = depth_to_space.transposed(x, kernel, (2, 2), (1, 1), 1, padding, (10, 8), threads=1,
                                  block_bytes=12 * 6 * 8)
    assert relative_error(y, expected) <= 1e-10


@pytest.mark.parametrize("x_shape, kernel_shape, strides, padding", [
    ((2, 3, 50, 3), (2, 2, 4, 3), (2, 2), ((1, 1), (1, 1))),        # 50 cells a row
    ((1, 2, 64, 2), (3, 2, 2, 2), (3, 2), ((2, 2), (1, 1))),        # 3 first-axis taps
    ((2, 64, 3), (2, 5, 3), (2,), ((1, 1),)),                       # rank 1: one cell a row
])
def test_long_rows_multiply_straight_into_the_output(x_shape, kernel_shape, strides, padding):
    """An exact store of rows of at least DIRECT_ROW_CELLS cells needs no buffer: each
    first-axis tap's product lands in its output rows; one and two threads, both dtypes."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal(x_shape)
    kernel = rng.standard_normal(kernel_shape)
    rank = len(strides)
    assert x_shape[-2] >= depth_to_space.DIRECT_ROW_CELLS or rank == 1
    expected = reference_scatter(x, kernel, strides, (1,) * rank, 1, padding)
    for dtype in (np.float32, np.float64):
        for threads in (1, 2):
            y = depth_to_space.transposed(x.astype(dtype), kernel.astype(dtype), strides,
                                          (1,) * rank, 1, padding, expected.shape[1:-1],
                                          threads=threads)
            assert y.dtype == dtype
            assert relative_error(y, expected) <= TOLERANCE[dtype], (x_shape, dtype, threads)


@pytest.mark.parametrize("blas_threads", [True, False])
def test_one_image_is_shared_among_workers(blas_threads, monkeypatch):
    """One image (U-Net at batch 1): its one product on BLAS's own threads
    (``SHARED_BLOCK_BLAS``), or its rows cut among the workers, or, where the kernel
    outweighs the image, its first-axis taps (each worker multiplies by its share of the
    kernel); either way the result is the reference's, on two threads."""
    monkeypatch.setattr(depth_to_space, "SHARED_BLOCK_BLAS", blas_threads)
    assert depth_to_space._shares([(0, 1, 0, 9)], 2, 2, False) == [
        (0, 1, 0, 2, 0, 2), (0, 1, 2, 4, 0, 2), (0, 1, 4, 6, 0, 2), (0, 1, 6, 9, 0, 2)]
    assert depth_to_space._shares([(0, 1, 0, 9)], 2, 2, True) == [
        (0, 1, 0, 4, 0, 1), (0, 1, 4, 9, 0, 1), (0, 1, 0, 4, 1, 2), (0, 1, 4, 9, 1, 2)]
    assert depth_to_space._shares([(0, 1, 0, 9)], 3, 4, True) == [
        (0, 1, 0, 4, 0, 1), (0, 1, 4, 9, 0, 1), (0, 1, 0, 4, 1, 2), (0, 1, 4, 9, 1, 2),
        (0, 1, 0, 4, 2, 3), (0, 1, 4, 9, 2, 3)]
    assert depth_to_space._shares([(0, 1, 0, 1)], 2, 2, True) == [
        (0, 1, 0, 1, 0, 1), (0, 1, 0, 1, 1, 2)]
    assert depth_to_space._shares([(0, 1, 0, 1)], 2, 2, False) == [(0, 1, 0, 1, 0, 2)]
    rng = np.random.default_rng(14)
    for x_shape, kernel_shape, strides, padding in [
            ((1, 3, 3, 8), (2, 2, 16, 8), (2, 2), ((1, 1), (1, 1))),    # kernel-heavy, exact
            ((1, 3, 3, 8), (2, 2, 16, 8), (3, 2), ((1, 0), (0, 1))),    # ... with gaps, crops
            ((1, 9, 7, 2), (2, 2, 1, 2), (2, 2), ((1, 1), (1, 1))),     # rows, exact
            ((1, 9, 7, 2), (2, 1, 3, 2), (2, 3), ((0, 1), (1, 0))),     # rows, gaps
            ((1, 5, 3, 4, 3), (2, 2, 2, 9, 3), (2, 2, 2), ((1, 1),) * 3)]:  # 3-D, taps
        x = rng.standard_normal(x_shape)
        kernel = rng.standard_normal(kernel_shape)
        rank = len(strides)
        expected = reference_scatter(x, kernel, strides, (1,) * rank, 1, padding)
        y = depth_to_space.transposed(x, kernel, strides, (1,) * rank, 1, padding,
                                      expected.shape[1:-1], threads=2)
        assert relative_error(y, expected) <= 1e-10, (x_shape, kernel_shape, strides, padding)


@pytest.mark.parametrize("x_shape, kernel_shape", [
    ((1, 56, 56, 16), (2, 2, 8, 16)),      # long rows: straight into the output
    ((2, 28, 28, 32), (2, 2, 16, 32)),     # through the buffer
    ((1, 7, 7, 256), (2, 2, 128, 256)),    # one image, kernel-heavy: taps shared
])
def test_up_sampling_memory_stays_within_its_operands(x_shape, kernel_shape):
    """Peak extra memory of the engine's 2×2 stride-2 up-sampling by depth-to-space, on
    one and two threads, at most 1.5× its input, kernel and output together."""
    rng = np.random.default_rng(15)
    x = rng.standard_normal(x_shape).astype(np.float32)
    kernel = rng.standard_normal(kernel_shape).astype(np.float32)
    spec = ConvSpec(2, strides=2, transposed=True, rank=2)
    operands = x.nbytes + kernel.nbytes + 4 * x.nbytes // x_shape[-1] * kernel_shape[2]
    for threads in (1, 2):
        with thread_limit(threads):
            peak = peak_extra_bytes(lambda: conv(x, kernel, spec, algorithm="depth_to_space"))
        assert peak <= 1.5 * operands, (x_shape, threads, peak, operands)


def test_depth_to_space_refuses_overlapping_windows():
    x = np.ones((1, 4, 4, 2))
    with pytest.raises(ValueError, match="do not overlap"):
        depth_to_space.transposed(x, np.ones((3, 3, 2, 2)), (2, 2), (1, 1), 1,
                                  ((2, 2), (2, 2)), (8, 8))
    with pytest.raises(ValueError, match="groups=1"):
        depth_to_space.transposed(x, np.ones((2, 2, 1, 2)), (2, 2), (1, 1), 2,
                                  ((1, 1), (1, 1)), (8, 8))
    problem = ConvProblem((1, 4, 4, 2), (2, 2, 2, 2), (2, 2), (2, 1), 1, (8, 8),
                          np.dtype(np.float32))
    assert not depth_to_space.applies(problem)  # dilation 2 makes the kernel reach 3 > 2
    assert depth_to_space.applies.failed(problem) == [
        "windows that do not overlap (dilated kernel <= stride on every axis)"]


UNET_UP = [  # a U-Net decoder's 2×2 stride-2 up-sampling, and nearby shapes
    ((1, 7, 7, 1024), (2, 2, 512, 1024)),
    ((16, 14, 14, 512), (2, 2, 256, 512)),
    ((1, 28, 28, 256), (2, 2, 128, 256)),
    ((16, 56, 56, 128), (2, 2, 64, 128)),
    ((4, 20, 12, 48), (3, 3, 24, 48)),
]


@pytest.mark.parametrize("layer", range(len(UNET_UP)))
def test_planner_on_up_sampling_layers(layer):
    """Depth-to-space applies to each; whichever algorithm the registered costs pick
    applies, is the cheapest, and computes the convolution (on one image)."""
    x_shape, kernel_shape = UNET_UP[layer]
    strides = kernel_shape[:2]
    padding = tuple((k - 1, k - 1) for k in strides)  # PyTorch's padding=0
    out = tuple(i * s for i, s in zip(x_shape[1:3], strides))
    problem = ConvProblem(x_shape, kernel_shape, strides, (1, 1), 1, out, np.dtype(np.float32))
    assert depth_to_space.applies(problem)
    assert_transposed_cheapest_applies(x_shape, kernel_shape, strides, (1, 1), 1, padding)
    assert_transposed_runs_as_reference(x_shape, kernel_shape, strides, (1, 1), 1, padding,
                                            seed=8800 + layer, batch=1)


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(8))
def test_depth_to_space_against_torch(seed):
    """Forward and both gradients of the engine's transposed convolution, with windows that
    do not overlap, against PyTorch (``conv_transpose1d/2d/3d`` and autograd)."""
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torch.nn.functional")
    rng = np.random.default_rng(9100 + seed)
    rank = 1 + seed % 3
    kernel_size = tuple(int(v) for v in rng.integers(1, 4, rank))
    dilation = tuple(int(v) for v in rng.integers(1, 3, rank))
    strides = tuple((k - 1) * d + 1 + int(rng.integers(0, 2))
                    for k, d in zip(kernel_size, dilation))
    crop = tuple(int(rng.integers(0, d * (k - 1) + 1)) for k, d in zip(kernel_size, dilation))
    extra = tuple(int(rng.integers(0, s)) for s in strides)
    size = tuple(int(v) for v in rng.integers(2, 7, rank))
    x = rng.standard_normal((2, *size, int(rng.integers(1, 9)))).astype(np.float32)
    kernel = rng.standard_normal((*kernel_size, int(rng.integers(1, 9)), x.shape[-1])
                                 ).astype(np.float32)
    padding = tuple((d * (k - 1) - p, d * (k - 1) - p + op)
                    for k, d, p, op in zip(kernel_size, dilation, crop, extra))
    fn = {1: functional.conv_transpose1d, 2: functional.conv_transpose2d,
          3: functional.conv_transpose3d}[rank]
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).requires_grad_()
    wt = torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).copy()).requires_grad_()
    yt = fn(xt, wt, stride=strides, padding=crop, output_padding=extra, dilation=dilation)
    dy = rng.standard_normal(yt.shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    expected = np.moveaxis(yt.detach().numpy(), 1, -1)
    what = f"seed {seed}: strides {strides} dilation {dilation} crop {crop} extra {extra}"
    y = depth_to_space.transposed(x, kernel, strides, dilation, 1, padding, expected.shape[1:-1])
    assert relative_error(y, expected) <= 1e-5, what
    spec = ConvSpec(kernel_size, strides=strides, dilation=dilation, transposed=True,
                    padding=tuple((p, p) for p in crop), output_padding=extra)
    assert spec.resolve(x.shape).padding == padding, what
    assert spec.resolve(x.shape).output_size == expected.shape[1:-1], what
    named = "depth_to_space" if max(strides) > 1 else None  # it takes strided problems only
    assert relative_error(conv(x, kernel, spec, algorithm=named), expected) <= 1e-5, what
    dx, dk = conv_vjp(x, kernel, spec, np.moveaxis(dy, 1, -1))[:2]
    assert relative_error(dx, np.moveaxis(xt.grad.numpy(), 1, -1)) <= 1e-5, what
    assert relative_error(dk, np.moveaxis(wt.grad.numpy(), (0, 1), (-1, -2))) <= 1e-5, what


def test_long_rows_weights_are_made_once_for_a_frozen_kernel():
    """The exact store of long rows multiplies by each first-axis tap's weights: made once
    for a prepacked kernel (the same arrays at the next call), at every call for a
    writeable one; the results are the reference's either way."""
    from convarith.engine import prepack

    rng = np.random.default_rng(15)
    x = rng.standard_normal((1, 3, depth_to_space.DIRECT_ROW_CELLS, 6))
    kernel = rng.standard_normal((2, 2, 5, 6))
    padding = ((1, 1), (1, 1))
    expected = reference_scatter(x, kernel, (2, 2), (1, 1), 1, padding)
    frozen = prepack(kernel)
    assert depth_to_space._tap_weights(frozen, 2) is depth_to_space._tap_weights(frozen, 2)
    assert depth_to_space._tap_weights(kernel, 2) is not depth_to_space._tap_weights(kernel, 2)
    for weights in (kernel, frozen, frozen):
        for threads in (1, 2):
            y = depth_to_space.transposed(x, weights, (2, 2), (1, 1), 1, padding,
                                          expected.shape[1:-1], threads=threads)
            assert relative_error(y, expected) <= 1e-10
