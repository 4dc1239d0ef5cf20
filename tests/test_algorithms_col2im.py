"""The col2im transposed convolution against a slow definition and against PyTorch.

The reference scatters every input cell through every tap to
``o = i·S + t·D - P`` (the definition PyTorch documents), in float64.
"""

from __future__ import annotations

import itertools

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
from convarith.engine import conv
from convarith.engine.algorithms import col2im, subpixel
from convarith.engine.dispatch import ConvProblem
from numba_free import run_without_numba

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
SEEDS = list(range(12))


def random_case(rng, rank):
    groups = int(rng.choice([1, 1, 2, 3]))
    size = [int(v) for v in rng.integers(1, 6, rank)]
    kernel_size = [int(v) for v in rng.integers(1, 5, rank)]
    strides = tuple(int(v) for v in rng.integers(1, 4, rank))
    dilation = tuple(int(v) for v in rng.integers(1, 3, rank))
    padding = []
    for i, k, s, d in zip(size, kernel_size, strides, dilation):
        while True:  # lo / hi from cropping (negative) to beyond the kernel's reach
            lo, hi = (int(v) for v in rng.integers(-3, d * (k - 1) + 3, 2))
            if (i - 1) * s + 1 + lo + hi - d * (k - 1) > 0:
                break
        padding.append((lo, hi))
    batch = int(rng.integers(1, 3))
    x = rng.standard_normal((batch, *size, groups * int(rng.integers(1, 5))))
    kernel = rng.standard_normal((*kernel_size, int(rng.integers(1, 5)), x.shape[-1]))
    return x, kernel, strides, dilation, groups, tuple(padding)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("seed", SEEDS)
def test_col2im_against_definition(seed, rank):
    rng = np.random.default_rng(1000 * rank + seed)
    x, kernel, strides, dilation, groups, padding = random_case(rng, rank)
    expected = reference_scatter(x, kernel, strides, dilation, groups, padding)
    what = (f"seed {seed} rank {rank}: x {x.shape} kernel {kernel.shape} strides {strides} "
            f"dilation {dilation} groups {groups} padding {padding}")
    for dtype in (np.float32, np.float64):
        results = []
        for use_numba, threads, chunk_bytes in [(None, 1, None), (False, 1, None),
                                                (None, 2, 1), (False, 2, 1)]:
            y = col2im.transposed(x.astype(dtype), kernel.astype(dtype), strides, dilation,
                                  groups, padding, expected.shape[1:-1], use_numba=use_numba,
                                  threads=threads,
                                  chunk_bytes=chunk_bytes)
            assert y.dtype == dtype and y.shape == expected.shape, what
            error = relative_error(y, expected)
            assert error <= TOLERANCE[dtype], f"{what} numba={use_numba}: error {error:.2e}"
            results.append(y)
        # the compiled gather and the NumPy slice adds sum in the same order
        np.testing.assert_array_equal(results[0], results[1], err_msg=what)
        np.testing.assert_array_equal(results[2], results[3], err_msg=what)


def test_col2im_rows_shared_by_blocks():
    """One tall image cut into blocks of output rows (shared input rows recomputed)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 37, 5, 6))
    kernel = rng.standard_normal((5, 3, 4, 6))
    padding = ((2, 1), (1, 2))
    expected = reference_scatter(x, kernel, (2, 1), (2, 1), 1, padding)
    for chunk_bytes, use_numba in itertools.product([1, 2000, 20000], [None, False]):
        y = col2im.transposed(x, kernel, (2, 1), (2, 1), 1, padding, expected.shape[1:-1],
                              use_numba=use_numba, chunk_bytes=chunk_bytes)
        assert relative_error(y, expected) <= 1e-12, (chunk_bytes, use_numba)


def test_col2im_phases_without_taps_are_zero():
    """Stride 2, dilation 2: every tap lands on one phase; the other cells are zeros."""
    x = np.ones((1, 3, 1))
    kernel = np.ones((2, 1, 1))
    # out = (3 - 1)·2 + 1 + 1 + 1 - 2·1 = 5; P = 2·1 - 1 = 1, so o = 2i + 2t - 1:
    # (i, t) = (0, 1), (1, 0) -> 1; (1, 1), (2, 0) -> 3; (0, 0) -> -1 and (2, 1) -> 5 dropped
    for use_numba in (None, False):
        y = col2im.transposed(x, kernel, (2,), (2,), 1, ((1, 1),), (5,), use_numba=use_numba)
        np.testing.assert_array_equal(y[0, :, 0], [0, 2, 0, 2, 0])


def test_col2im_rejects_rank_four():
    with pytest.raises(ValueError, match="1 to 3 spatial axes"):
        col2im.transposed(np.ones((1, 2, 2, 2, 2, 1)), np.ones((1, 1, 1, 1, 1, 1)),
                          (1,) * 4, (1,) * 4, 1, ((0, 0),) * 4, (2,) * 4)


def test_dispatch_takes_the_cheapest_for_strided_layers():
    """3×3 stride 2 from 64 channels, 4×4 stride 2 with few channels (too few for Winograd's
    subpixel form) and a depthwise 4×4: col2im applies to each; whichever algorithm the
    registered costs pick applies, is the cheapest, and computes the convolution."""
    def problem(x_shape, kernel_shape, strides, groups=1):
        rank = len(strides)
        out = tuple(i * s for i, s in zip(x_shape[1:-1], strides))
        return ConvProblem(x_shape, kernel_shape, strides, (1,) * rank, groups, out,
                           np.dtype(np.float32))

    layers = [((8, 28, 28, 64), (3, 3, 32, 64), (2, 2), (1, 1), 1, ((1, 2), (1, 2))),
              ((8, 28, 28, 8), (4, 4, 16, 8), (2, 2), (1, 1), 1, ((2, 2), (2, 2))),
              ((8, 14, 14, 32), (4, 4, 1, 32), (2, 2), (1, 1), 32, ((2, 2), (2, 2)))]
    for seed, layer in enumerate(layers):
        assert col2im.applies(problem(layer[0], layer[1], layer[2], layer[4]))
        assert_transposed_cheapest_applies(*layer)
        assert_transposed_runs_as_reference(*layer, seed=9900 + seed, batch=1)
    assert not subpixel.applies(problem((8, 28, 28, 8), (4, 4, 16, 8), (2, 2)))


@pytest.mark.parametrize(("kernel_size", "strides", "channels", "filters"), [
    (7, 2, 3, 64), (3, 2, 3, 32), (3, 1, 3, 64), (5, 1, 3, 24), (3, 2, 1, 32), (3, 2, 16, 32)])
def test_input_gradients_of_network_stems_take_the_cheapest(kernel_size, strides, channels,
                                                            filters):
    """The input gradient of a first convolution (few input channels: a narrow
    transposed output): the engine's choice applies, costs least, and gives the
    scatter reference's result."""
    spec = ConvSpec(kernel_size, strides=strides, padding="same")
    x_shape = (2, 16, 16, channels)
    resolved = spec.resolve(x_shape)
    dy_shape = (2, *resolved.output_size, filters)
    grid_padding = tuple((a - lo, b - hi) for (a, b), (lo, hi) in
                         zip(resolved.input_gradient_padding, resolved.padding))
    layer = (dy_shape, (kernel_size, kernel_size, channels, filters), (strides,) * 2, (1, 1), 1,
             grid_padding)
    assert_transposed_cheapest_applies(*layer)
    assert_transposed_runs_as_reference(*layer, seed=kernel_size * 100 + channels)


def test_narrow_outputs_cost_more_only_below_a_phase_of_seven_columns():
    """The narrow share follows a phase's product width (taps × output channels /
    strides): 7×7 stride 2 with 3 channels is not narrow, 3×3 stride 2 with 1 is."""
    def cost(kernel_size, strides, filters, batch=8, groups=1):
        problem = ConvProblem((batch, 8, 8, 64), (kernel_size, kernel_size, filters, 64),
                              (strides,) * 2, (1, 1), groups, (8 * strides,) * 2,
                              np.dtype(np.float32))
        return col2im.cost(problem) / (problem.flops / strides ** 2)

    taps_share = 0.6 + 0.3 / 49
    assert cost(7, 2, 3) == pytest.approx(taps_share)
    assert cost(3, 2, 1) == pytest.approx((0.6 + 0.3 / 9) * col2im.NARROW_COLUMNS / 2.25)
    assert cost(3, 1, 3) == pytest.approx(0.6 + 0.3 / 9)  # narrow: no stride-1 share
    assert cost(3, 1, 16) == pytest.approx((0.6 + 0.3 / 9) * col2im.STRIDE_1_SHARE)
    # few cells (one 8x8 image: 64 <= FEW_CELLS) take no stride-1 share, unless grouped
    assert 64 <= col2im.FEW_CELLS < 8 * 64
    assert cost(3, 1, 16, batch=1) == pytest.approx(0.6 + 0.3 / 9)
    assert cost(3, 1, 16, batch=1, groups=2) == pytest.approx(
        (0.6 + 0.3 / 9) * col2im.STRIDE_1_SHARE * (1 + 16 / 32))


def test_engine_runs_the_l9_shape_as_the_reference():
    """The default path and col2im forced, on an L9-like layer, are the scatter reference."""
    rng = np.random.default_rng(3)
    spec = ConvSpec(4, strides=2, padding="same", transposed=True)
    x = rng.standard_normal((2, 6, 5, 8)).astype(np.float32)
    kernel = rng.standard_normal((4, 4, 4, 8)).astype(np.float32)
    padding = spec.resolve(x.shape).padding
    expected = reference_scatter(x, kernel, (2, 2), (1, 1), 1, padding)
    assert relative_error(conv(x, kernel, spec), expected) <= 1e-5
    assert relative_error(conv(x, kernel, spec, algorithm="col2im"), expected) <= 1e-5


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(8))
def test_col2im_against_torch(seed):
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torch.nn.functional")
    rng = np.random.default_rng(seed)
    rank = 1 + seed % 3
    groups = [1, 2][seed % 2]
    strides = tuple(int(v) for v in rng.integers(1, 4, rank))
    dilation = tuple(int(v) for v in rng.integers(1, 3, rank))
    kernel_size = tuple(int(v) for v in rng.integers(1, 5, rank))
    crop = tuple(int(rng.integers(0, d * (k - 1) + 1)) for k, d in zip(kernel_size, dilation))
    extra = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(strides, dilation))
    size = tuple(int(v) for v in rng.integers(2, 7, rank))
    x = rng.standard_normal((2, *size, 2 * groups)).astype(np.float32)
    kernel = rng.standard_normal((*kernel_size, 3, x.shape[-1])).astype(np.float32)
    # torch: x (N, C, *size), weight (C, F/g, *K); crop p and output padding op give
    # the zero-inserted grid's padding D·(K - 1) - p before and D·(K - 1) - p + op after
    padding = tuple((d * (k - 1) - p, d * (k - 1) - p + op)
                    for k, d, p, op in zip(kernel_size, dilation, crop, extra))
    fn = {1: functional.conv_transpose1d, 2: functional.conv_transpose2d,
          3: functional.conv_transpose3d}[rank]
    expected = fn(torch.from_numpy(np.moveaxis(x, -1, 1).copy()),
                  torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).copy()),
                  stride=strides, padding=crop, output_padding=extra, groups=groups,
                  dilation=dilation).numpy()
    expected = np.moveaxis(expected, 1, -1)
    for use_numba in (None, False):
        y = col2im.transposed(x, kernel, strides, dilation, groups, padding,
                              expected.shape[1:-1], use_numba=use_numba)
        assert y.shape == expected.shape, f"seed {seed}"
        error = relative_error(y, expected)
        assert error <= 1e-5, f"seed {seed} numba={use_numba}: error {error:.2e}"


def test_col2im_without_numba_installed():
    """With numba unimportable the default path runs (NumPy slice adds), exactly."""
    run_without_numba(
        """
        from convarith.engine.algorithms import col2im, phase, subpixel
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 5, 4, 3))
        k = rng.standard_normal((3, 2, 2, 3))
        y = col2im.transposed(x, k, (2, 1), (1, 2), 1, ((1, 0), (2, 1)), (8, 5))
        same = col2im.transposed(x, k, (2, 1), (1, 2), 1, ((1, 0), (2, 1)), (8, 5),
                                 use_numba=False)
        assert np.array_equal(y, same)
        must_refuse(lambda: col2im.transposed(x, k, (2, 1), (1, 2), 1, ((1, 0), (2, 1)), (8, 5),
                                              use_numba=True))
        """
    )


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(6))
def test_col2im_input_gradient_against_torch_convolution_backward(seed):
    """The input gradient of a (grouped) convolution, run by col2im with the groups
    batched in one product and one gather, or one group at a time (a tiny chunk
    budget), against PyTorch's ``convolution_backward``."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(100 + seed)
    rank = 1 + seed % 2
    groups = int(rng.choice([1, 4, 8, 32]))
    strides = tuple(int(v) for v in rng.integers(1, 3, rank))
    dilation = tuple(int(v) for v in rng.integers(1, 3, rank))
    kernel_size = tuple(int(v) for v in rng.integers(1, 4, rank))
    padding = tuple(int(rng.integers(0, k)) for k in kernel_size)
    spec = ConvSpec(kernel_size, strides=strides, dilation=dilation, groups=groups,
                    padding=tuple((p, p) for p in padding))
    size = tuple(int(v) for v in rng.integers(3, 9, rank))
    x_shape = (int(rng.integers(1, 4)), *size, groups * int(rng.integers(1, 4)))
    resolved = spec.resolve(x_shape)
    kernel = rng.standard_normal((*kernel_size, x_shape[-1] // groups,
                                  groups * int(rng.integers(1, 4)))).astype(np.float32)
    dy = rng.standard_normal((x_shape[0], *resolved.output_size, kernel.shape[-1])
                             ).astype(np.float32)
    expected = torch.ops.aten.convolution_backward(
        torch.from_numpy(np.moveaxis(dy, -1, 1).copy()),
        torch.zeros((x_shape[0], x_shape[-1], *size)),
        torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).copy()),
        None, list(strides), list(padding), list(dilation), False, [0] * rank, groups,
        [True, False, False])[0].numpy()
    expected = np.moveaxis(expected, 1, -1)
    # the input gradient: the transposed convolution of dy, its grid cropped to the input
    grid_padding = tuple((a - lo, b - hi) for (a, b), (lo, hi) in
                         zip(resolved.input_gradient_padding, resolved.padding))
    for use_numba, chunk_bytes in itertools.product((None, False), (None, 64)):
        d_x = col2im.transposed(dy, kernel, strides, dilation, groups, grid_padding, size,
                                use_numba=use_numba, chunk_bytes=chunk_bytes)
        error = relative_error(d_x, expected)
        assert error <= 1e-5, (f"seed {100 + seed} numba={use_numba} chunk={chunk_bytes}: "
                               f"{spec} on {x_shape}: error {error:.2e}")


def _col2im_both_orders_against_torch(torch, monkeypatch, spec, x_shape, dy, kernel,
                                      label):
    """col2im's input gradient of ``spec`` on ``x_shape`` run kernel first (the cell limit
    as it is) and cells first (the limit set to zero), each with and without the compiled
    gather, against PyTorch's ``convolution_backward``."""
    resolved = spec.resolve(x_shape)
    rank = len(x_shape) - 2
    assert all(lo == hi for lo, hi in resolved.padding), resolved.padding  # as torch pads
    expected = torch.ops.aten.convolution_backward(
        torch.from_numpy(np.moveaxis(dy, -1, 1).copy()),
        torch.zeros((x_shape[0], x_shape[-1], *x_shape[1:-1])),
        torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).copy()),
        None, list(spec.strides), [lo for lo, _ in resolved.padding], list(spec.dilation),
        False, [0] * rank,
        spec.groups, [True, False, False])[0].numpy()
    expected = np.moveaxis(expected, 1, -1)
    grid_padding = tuple((a - lo, b - hi) for (a, b), (lo, hi) in
                         zip(resolved.input_gradient_padding, resolved.padding))
    for limit, use_numba in itertools.product((col2im.KERNEL_FIRST_CELLS, 0), (None, False)):
        monkeypatch.setattr(col2im, "KERNEL_FIRST_CELLS", limit)
        d_x = col2im.transposed(dy, kernel, spec.strides, spec.dilation, spec.groups,
                                grid_padding, x_shape[1:-1], use_numba=use_numba)
        error = relative_error(d_x, expected)
        assert error <= 1e-5, (f"{label} cell limit {limit} numba={use_numba}: "
                               f"{spec} on {x_shape}: error {error:.2e}")


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(6))
def test_grouped_input_gradients_kernel_first_and_by_phases_against_torch(seed, monkeypatch):
    """ResNeXt-like grouped input gradients (3×3, stride 1 or 2, many groups of 4 to 32
    channels, few cells): the products run kernel first (few cells) or by output phases
    (the cell limit set to zero), each with and without the compiled gather, all equal
    to PyTorch's ``convolution_backward``."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(500 + seed)
    groups = int(rng.choice([8, 16, 32]))
    group_in, group_out = (int(v) for v in rng.choice([4, 8, 16, 32], 2))
    stride = int(rng.choice([1, 2]))
    size = int(rng.integers(2, 10))
    batch = int(rng.choice([1, 1, 2]))
    spec = ConvSpec((3, 3), strides=(stride, stride), groups=groups, padding=((1, 1), (1, 1)))
    x_shape = (batch, size, size, groups * group_in)
    resolved = spec.resolve(x_shape)
    kernel = rng.standard_normal((3, 3, group_in, groups * group_out)).astype(np.float32)
    dy = rng.standard_normal((batch, *resolved.output_size, kernel.shape[-1])).astype(np.float32)
    _col2im_both_orders_against_torch(torch, monkeypatch, spec, x_shape, dy, kernel,
                                      f"seed {500 + seed}")


@pytest.mark.parametrize("size, channels, group_in, stride", [
    (4, 1024, 32, 2), (4, 1024, 32, 1), (7, 128, 4, 1), (7, 512, 16, 2)])
def test_grouped_input_gradients_kernel_first_memory(size, channels, group_in, stride):
    """ResNeXt's grouped input gradients at batch 1, run kernel first: peak extra memory
    at most 1.5 × (input + kernel + output), the engine's rule for fast paths."""
    rng = np.random.default_rng(size * channels)
    groups = channels // group_in
    dy = rng.standard_normal((1, size, size, channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, group_in, channels)).astype(np.float32)
    out = (size - 1) * stride + 1
    y = col2im.transposed(dy, kernel, (stride,) * 2, (1, 1), groups, ((1, 1), (1, 1)),
                          (out, out))
    assert dy.size <= col2im.KERNEL_FIRST_CELLS * channels
    extra = peak_extra_bytes(lambda: col2im.transposed(
        dy, kernel, (stride,) * 2, (1, 1), groups, ((1, 1), (1, 1)), (out, out)))
    assert extra <= 1.5 * (dy.nbytes + kernel.nbytes + y.nbytes), (
        f"{size}² {channels} channels, {group_in} a group, stride {stride}: {extra} bytes")


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(6))
def test_one_group_input_gradients_on_few_cells_against_torch(seed, monkeypatch):
    """Input gradients of one group on few cells (ResNet's 3×3 on 4² and 7², stride 1 or
    2, any dilation): the products run kernel first (at most KERNEL_FIRST_CELLS cells) or
    cells first (the limit set to zero), each with and without the compiled gather, all
    equal to PyTorch's ``convolution_backward``."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(600 + seed)
    channels, filters = (int(v) for v in rng.choice([1, 3, 16, 64, 96], 2))
    stride, dilation = int(rng.choice([1, 2])), int(rng.choice([1, 1, 2]))
    size = int(rng.integers(2, 9))
    kernel_size = int(rng.choice([1, 2, 3]))
    spec = ConvSpec((kernel_size,) * 2, strides=(stride,) * 2, dilation=(dilation,) * 2,
                    padding=((1, 1), (1, 1)))
    x_shape = (1, size + dilation * (kernel_size - 1), size, channels)
    resolved = spec.resolve(x_shape)
    kernel = rng.standard_normal((kernel_size,) * 2 + (channels, filters)).astype(np.float32)
    dy = rng.standard_normal((1, *resolved.output_size, filters)).astype(np.float32)
    _col2im_both_orders_against_torch(torch, monkeypatch, spec, x_shape, dy, kernel,
                                      f"seed {600 + seed}")


def test_one_group_input_gradient_on_few_cells_memory():
    """ResNet's 3×3 512 -> 512 input gradient on one 4² image, run kernel first: peak
    extra memory at most 1.5 × (input + kernel + output)."""
    rng = np.random.default_rng(7)
    dy = rng.standard_normal((1, 4, 4, 512)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 512, 512)).astype(np.float32)
    args = ((1, 1), (1, 1), 1, ((1, 1), (1, 1)), (4, 4))
    y = col2im.transposed(dy, kernel, *args)
    extra = peak_extra_bytes(lambda: col2im.transposed(dy, kernel, *args))
    assert extra <= 1.5 * (dy.nbytes + kernel.nbytes + y.nbytes), f"{extra} bytes"


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(8))
def test_stem_input_gradients_against_torch(seed, monkeypatch):
    """A first layer's input gradient (1-4 input channels, so a transposed convolution
    to 1-4 channels): all the phases' taps in one product (JOINT_CHANNELS) or a product
    per phase, with and without the compiled gather, against PyTorch's
    ``convolution_backward`` in float32 and float64."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(700 + seed)
    k = int(rng.choice([3, 5, 7]))
    stride = int(rng.choice([1, 2, 2]))
    pad = int(rng.integers(0, k // 2 + 1))
    channels = int(rng.integers(1, 5))
    filters = int(rng.choice([8, 16, 32, 64]))
    dtype = np.float32 if seed % 2 == 0 else np.float64
    size = tuple(int(v) for v in rng.integers(k, k + 24, 2))
    x_shape = (int(rng.integers(1, 4)), *size, channels)
    spec = ConvSpec(k, strides=stride, padding=((pad, pad), (pad, pad)))
    resolved = spec.resolve(x_shape)
    kernel = rng.standard_normal((k, k, channels, filters)).astype(dtype)
    dy = rng.standard_normal((x_shape[0], *resolved.output_size, filters)).astype(dtype)
    expected = torch.ops.aten.convolution_backward(
        torch.from_numpy(np.moveaxis(dy, -1, 1).copy()),
        torch.zeros((x_shape[0], channels, *size), dtype=torch.from_numpy(dy).dtype),
        torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).copy()),
        None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1,
        [True, False, False])[0].numpy()
    expected = np.moveaxis(expected, 1, -1)
    grid_padding = tuple((a - lo, b - hi) for (a, b), (lo, hi) in
                         zip(resolved.input_gradient_padding, resolved.padding))
    results = []
    for joint, use_numba in itertools.product((col2im.JOINT_CHANNELS, 0), (None, False)):
        monkeypatch.setattr(col2im, "JOINT_CHANNELS", joint)
        d_x = col2im.transposed(dy, kernel, (stride,) * 2, (1, 1), 1, grid_padding, size,
                                use_numba=use_numba)
        error = relative_error(d_x, expected)
        assert error <= TOLERANCE[dtype], (
            f"seed {700 + seed} joint={joint} numba={use_numba}: {spec} on {x_shape} "
            f"{np.dtype(dtype).name}: error {error:.2e}")
        results.append(d_x)
    # the compiled gather and the NumPy slice adds sum in the same order
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[2], results[3])


@pytest.mark.parametrize("seed", range(8))
def test_thin_joint_product_gathers_by_output_rows(seed, monkeypatch):
    """Few output channels of one group over several phases (an RGB stem's input
    gradient): the joint product's compiled col2im by output rows runs, agrees with the
    definition, and sums in the NumPy slice adds' order (the same numbers)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(5000 + seed)
    rank = int(rng.integers(1, 4))
    calls = []
    compiled = col2im._numba_joint_rows()

    def counted(*args):
        calls.append(args[7:9])
        return compiled(*args)

    monkeypatch.setattr(col2im, "_numba_joint_rows", lambda: counted)
    size = [int(v) for v in rng.integers(3, 9, rank)]
    kernel_size = [int(v) for v in rng.integers(2, 6, rank)]
    strides = [int(v) for v in rng.integers(1, 4, rank)]
    strides[int(rng.integers(rank))] = int(rng.integers(2, 4))  # several phases
    dilation = tuple(int(v) for v in rng.integers(1, 3, rank))
    while True:  # lo / hi from cropping to beyond the kernel's reach
        padding = tuple((int(rng.integers(-1, 3)), int(rng.integers(-1, 3)))
                        for _ in range(rank))
        out = tuple((i - 1) * s + 1 + lo + hi - d * (k - 1) for i, s, (lo, hi), d, k in
                    zip(size, strides, padding, dilation, kernel_size))
        if min(out) > 0:
            break
    x = rng.standard_normal((int(rng.integers(1, 3)), *size, int(rng.integers(8, 33))))
    kernel = rng.standard_normal((*kernel_size, int(rng.integers(1, 5)), x.shape[-1]))
    expected = reference_scatter(x, kernel, tuple(strides), dilation, 1, padding)
    what = (f"seed {5000 + seed}: x {x.shape} kernel {kernel.shape} strides {strides} "
            f"dilation {dilation} padding {padding}")
    for dtype in (np.float32, np.float64):
        results = [col2im.transposed(x.astype(dtype), kernel.astype(dtype), tuple(strides),
                                     dilation, 1, padding, out, use_numba=use_numba,
                                     threads=threads, chunk_bytes=chunk_bytes)
                   for use_numba, threads, chunk_bytes in [(None, 1, None), (False, 1, None),
                                                           (None, 2, 1), (False, 2, 1)]]
        for y in results:
            error = relative_error(y, expected)
            assert error <= TOLERANCE[dtype], f"{what}: error {error:.2e}"
        np.testing.assert_array_equal(results[0], results[1], err_msg=what)
        np.testing.assert_array_equal(results[2], results[3], err_msg=what)
    assert calls, what
