"""The stride-1 transposed convolution by per-tap products over the real cells
(``real_taps``, :func:`convarith.engine.algorithms.flat_rows.taps_transposed`): against
the scatter reference (random ranks, dilations, paddings that crop or reach past the
kernel, both dtypes, one and two threads), against PyTorch's input gradient through
:func:`~convarith.engine.conv_vjp`, its conditions and its memory.
"""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import (
    assert_transposed_cheapest_applies,
    peak_extra_bytes,
    reference_scatter,
    relative_error,
)
from convarith import ConvSpec
from convarith.engine import conv_vjp, thread_limit
from convarith.engine.algorithms import flat_rows
from convarith.engine.core import transposed_algorithm
from convarith.engine.dispatch import ConvProblem

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


def random_case(rng, rank):
    """Stride 1, sizes 1-6, kernel 1-4 (dilated up to 2), padding from cropping to past
    the kernel's reach (some taps then read no input cell at all)."""
    size = [int(v) for v in rng.integers(1, 7, rank)]
    kernel_size = [int(v) for v in rng.integers(1, 5, rank)]
    dilation = tuple(int(v) for v in rng.integers(1, 3, rank))
    padding = []
    for i, k, d in zip(size, kernel_size, dilation):
        while True:
            lo, hi = (int(v) for v in rng.integers(-2, d * (k - 1) + 3, 2))
            if i + lo + hi - d * (k - 1) > 0:
                break
        padding.append((lo, hi))
    x = rng.standard_normal((int(rng.integers(1, 4)), *size, int(rng.integers(1, 7))))
    kernel = rng.standard_normal((*kernel_size, int(rng.integers(1, 7)), x.shape[-1]))
    return x, kernel, (1,) * rank, dilation, tuple(padding)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("seed", range(12))
def test_real_taps_against_definition(seed, rank):
    rng = np.random.default_rng(9100 + 100 * rank + seed)
    x, kernel, strides, dilation, padding = random_case(rng, rank)
    expected = reference_scatter(x, kernel, strides, dilation, 1, padding)
    what = (f"seed {seed} rank {rank}: x {x.shape} kernel {kernel.shape} dilation {dilation} "
            f"padding {padding}")
    for dtype in (np.float32, np.float64):
        for threads in (1, 2):
            y = flat_rows.taps_transposed(x.astype(dtype), kernel.astype(dtype), strides,
                                          dilation, 1, padding, expected.shape[1:-1],
                                          threads=threads)
            assert y.shape == expected.shape and y.dtype == dtype, what
            error = relative_error(y, expected)
            assert error <= TOLERANCE[dtype], f"{what} {dtype.__name__} threads {threads}: " \
                                              f"error {error:.2e}"


def test_wide_channels_cut_among_workers():
    """Channels wide enough to be cut among two workers (each running every tap on its
    share), with and without a tap that covers every output cell."""
    rng = np.random.default_rng(9001)
    for padding in (((1, 1), (1, 1)), ((3, 0), (0, 3))):
        x = rng.standard_normal((3, 4, 5, 24))
        kernel = rng.standard_normal((3, 3, 160, 24))
        expected = reference_scatter(x, kernel, (1, 1), (1, 1), 1, padding)
        for threads in (1, 2):
            y = flat_rows.taps_transposed(x, kernel, (1, 1), (1, 1), 1, padding,
                                          expected.shape[1:-1], threads=threads)
            assert relative_error(y, expected) <= 1e-10, (padding, threads)


@pytest.mark.parametrize("batch, size, channels, filters", [
    (16, 4, 256, 256), (9, 5, 256, 320), (4, 7, 288, 256)])
def test_input_gradient_against_pytorch(batch, size, channels, filters):
    """A small image's 3×3 "same" input gradient through the engine runs ``real_taps``
    and matches PyTorch's, float32 and float64."""
    torch = pytest.importorskip("torch")
    assert transposed_algorithm((batch, size, size, filters), (3, 3, channels, filters),
                                (1, 1), (1, 1), 1, ((1, 1), (1, 1))) == "real_taps"
    rng = np.random.default_rng(batch * size)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((batch, size, size, channels)).astype(dtype)
        kernel = (rng.standard_normal((3, 3, channels, filters)) / 40).astype(dtype)
        d_out = rng.standard_normal((batch, size, size, filters)).astype(dtype)
        dx, _, _ = conv_vjp(x, kernel, ConvSpec(3, padding="same", rank=2), d_out)
        tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
        tk = torch.tensor(kernel.transpose(3, 2, 0, 1))
        y = torch.nn.functional.conv2d(tx, tk, padding=1)
        y.backward(torch.tensor(d_out.transpose(0, 3, 1, 2)))
        expected = tx.grad.numpy().transpose(0, 2, 3, 1)
        assert relative_error(dx, expected) <= TOLERANCE[dtype], (batch, size, dtype)


def test_conditions_and_the_choice():
    f32 = np.dtype(np.float32)
    small = ConvProblem((16, 4, 4, 512), (3, 3, 512, 512), (1, 1), (1, 1), 1, (4, 4), f32)
    assert flat_rows.applies_taps(small)
    assert round(flat_rows.real_tap_share(small), 3) == round(100 / 144, 3)
    large = ConvProblem((16, 28, 28, 512), (3, 3, 512, 512), (1, 1), (1, 1), 1, (28, 28), f32)
    assert flat_rows.applies_taps.failed(large) == ["at most 90% of the products on input cells"]
    strided = ConvProblem((16, 4, 4, 512), (3, 3, 512, 512), (2, 2), (1, 1), 1, (9, 9), f32)
    assert "stride 1" in flat_rows.applies_taps.failed(strided)
    narrow = ConvProblem((16, 4, 4, 64), (3, 3, 64, 64), (1, 1), (1, 1), 1, (4, 4), f32)
    assert not flat_rows.applies_taps(narrow)
    one_image = ConvProblem((1, 4, 4, 512), (3, 3, 512, 512), (1, 1), (1, 1), 1, (4, 4), f32)
    assert not flat_rows.applies_taps(one_image)
    with pytest.raises(ValueError, match="stride 1"):
        flat_rows.taps_transposed(np.ones((1, 3, 2)), np.ones((3, 2, 2)), (2,), (1,), 1,
                                  ((2, 2),), (7,))
    for shape in ((16, 4, 4, 512), (4, 7, 7, 512), (16, 7, 7, 256)):
        assert_transposed_cheapest_applies(shape, (3, 3, 512, shape[-1]), (1, 1), (1, 1), 1,
                                           ((1, 1), (1, 1)))


def test_memory_stays_within_its_operands():
    """Peak extra memory of the input gradient by ``real_taps``, one and two threads, at
    most 1.5× ``dy``, kernel and ``dx`` together."""
    from convarith.engine.core import transposed_conv

    rng = np.random.default_rng(9002)
    dy = rng.standard_normal((16, 4, 4, 256)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 256, 256)).astype(np.float32)
    operands = 2 * dy.nbytes + kernel.nbytes
    for threads in (1, 2):
        with thread_limit(threads):
            peak = peak_extra_bytes(lambda: transposed_conv(
                dy, kernel, (1, 1), (1, 1), 1, ((1, 1), (1, 1)), algorithm="real_taps"))
        assert peak <= 1.5 * operands, (threads, peak, operands)
