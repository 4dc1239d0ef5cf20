"""Backward passes of the networks suite's layer classes: the input and kernel gradients
of ``conv_vjp`` against PyTorch's ``convolution_backward`` (randomized, each case
prints its seed), and the input gradient's plan remembered from one call to the next.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import relative_error
from convarith import ConvSpec
from convarith.engine import conv_vjp, core
from convarith.engine.algorithms import pointwise

CASES = 8 if os.environ.get("CI") == "true" else 40


def _torch_gradients(x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, strides, padding,
                     groups: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's (float64) input and kernel gradients, in convarith's layouts."""
    torch = pytest.importorskip("torch")
    rank = x.ndim - 2
    d_x, d_kernel, _ = torch.ops.aten.convolution_backward(
        torch.from_numpy(np.moveaxis(dy, -1, 1).astype(np.float64)),
        torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64)),
        torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).astype(np.float64)),
        None, list(strides), list(padding), [1] * rank, False, [0] * rank, groups,
        [True, True, False])
    return (np.moveaxis(d_x.numpy(), 1, -1),
            np.moveaxis(d_kernel.numpy(), (0, 1), (-1, -2)))


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(CASES))
def test_pointwise_gradients_of_few_cells_against_torch(seed: int) -> None:
    """1×1 layers on few cells (SE layers on 1², ResNet/EfficientNet tails on 4² and 7²)
    with long and short sums, stride 1 or 2, one or a few images: both gradients."""
    rng = np.random.default_rng(seed)
    size = int(rng.choice([1, 2, 4, 7, 11]))
    batch = int(rng.choice([1, 1, 2, 3]))
    channels, filters = (int(v) for v in rng.choice([3, 8, 48, 160, 320], 2))
    stride = int(rng.choice([1, 1, 2]))
    x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
    kernel = rng.standard_normal((1, 1, channels, filters)).astype(np.float32)
    spec = ConvSpec(1, strides=stride)
    out = spec.resolve(x.shape).output_size
    dy = rng.standard_normal((batch, *out, filters)).astype(np.float32)
    d_x, d_kernel, _ = conv_vjp(x, kernel, spec, dy)
    expected_x, expected_kernel = _torch_gradients(x, kernel, dy, (stride, stride), (0, 0), 1)
    what = f"seed {seed}: {batch}x{size}²x{channels} -> {filters}, stride {stride}"
    assert relative_error(d_x, expected_x) <= 1e-5, f"{what}: input gradient"
    assert relative_error(d_kernel, expected_kernel) <= 1e-5, f"{what}: kernel gradient"


@pytest.mark.parametrize("seed", range(4))
def test_pointwise_few_cells_agree_either_way(seed: int, monkeypatch) -> None:
    """The kernel times the cells' transpose (few cells, long or short sums) and the cells
    times the kernel's transpose give the same input gradient (float64, to rounding)."""
    rng = np.random.default_rng(50 + seed)
    cells, channels, filters = int(rng.integers(1, 40)), int(rng.integers(64, 300)), 7
    dy = rng.standard_normal((1, cells, channels))
    kernel = rng.standard_normal((1, filters, channels))
    assert cells <= pointwise.FEW_ROWS and channels >= 2 * filters
    if seed % 2:  # a short sum: the kernel first below FEW_ROWS cells too
        dy, kernel = dy[..., :filters], rng.standard_normal((1, 70, filters))
    by_kernel = pointwise.transposed(dy, kernel, (1,), (1,), 1, ((0, 0),), (cells,))
    monkeypatch.setattr(pointwise, "FEW_ROWS", 0)
    by_cells = pointwise.transposed(dy, kernel, (1,), (1,), 1, ((0, 0),), (cells,))
    assert by_kernel.flags.c_contiguous and by_kernel.shape == (1, cells, kernel.shape[1])
    assert relative_error(by_kernel, by_cells) <= 1e-12, f"seed {50 + seed}"


def test_the_input_gradient_is_planned_once(monkeypatch) -> None:
    """A layer's second backward call reuses the input gradient's plan (checks and choice):
    planning it again took longer than the products of a 1×1 layer on a 1² image."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 6, 6, 4)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    spec = ConvSpec(3, padding="same")
    dy = rng.standard_normal((1, 6, 6, 5)).astype(np.float32)
    conv_vjp(x, kernel, spec, dy)
    planned = []
    original = core._transposed_plan
    monkeypatch.setattr(core, "_transposed_plan",
                        lambda *args, **kwargs: planned.append(1) or original(*args, **kwargs))
    first = conv_vjp(x, kernel, spec, dy)[0]
    again = conv_vjp(x, kernel, spec, dy)[0]
    assert planned == []
    assert np.array_equal(first, again)


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(CASES))
def test_depthwise_weight_gradient_against_torch(seed: int) -> None:
    """The depthwise kernel gradient (compiled loop and NumPy's per-tap sums), over
    kernel sizes, strides, dilations and paddings that put taps on the padding, with a
    channel multiplier of one: against PyTorch's ``convolution_backward``."""
    from convarith.engine.algorithms import depthwise

    rng = np.random.default_rng(7000 + seed)
    kernel_size = tuple(int(v) for v in rng.choice([1, 3, 5], 2))
    strides = tuple(int(v) for v in rng.choice([1, 2], 2))
    dilation = tuple(int(v) for v in rng.choice([1, 1, 2], 2))
    padding = tuple((int(rng.integers(0, k)), int(rng.integers(0, k))) for k in kernel_size)
    channels = int(rng.choice([1, 8, 32, 144]))
    size = tuple(int(v) for v in rng.integers(9, 20, 2))  # at least the widest kernel
    batch = int(rng.choice([1, 2]))
    spec = ConvSpec(kernel_size, strides=strides, dilation=dilation, groups=channels,
                    padding=padding)
    x = rng.standard_normal((batch, *size, channels)).astype(np.float32)
    out_size = spec.resolve(x.shape).output_size
    dy = rng.standard_normal((batch, *out_size, channels)).astype(np.float32)
    torch = pytest.importorskip("torch")
    padded = np.pad(x, ((0, 0), *padding, (0, 0)))  # PyTorch pads both sides alike
    expected = torch.ops.aten.convolution_backward(
        torch.from_numpy(np.moveaxis(dy, -1, 1).astype(np.float64)),
        torch.from_numpy(np.moveaxis(padded, -1, 1).astype(np.float64)),
        torch.zeros((channels, 1, *kernel_size), dtype=torch.float64), None, list(strides),
        [0, 0], list(dilation), False, [0, 0], channels, [False, True, False])[1].numpy()
    expected = np.moveaxis(expected, (0, 1), (-1, -2))
    for use_numba in (None, False):
        d_kernel = depthwise.weight_grad(x, dy, kernel_size, strides, dilation, channels,
                                         use_numba=use_numba, padding=padding)
        error = relative_error(d_kernel, expected)
        assert error <= 1e-5, (f"seed {7000 + seed} numba={use_numba}: {spec} on {x.shape}: "
                               f"error {error:.2e}")
