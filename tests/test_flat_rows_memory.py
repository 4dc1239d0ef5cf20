"""flat_rows' kernel gradient with strides reads its phase images from the unpadded
input (no padded copy of the whole input besides them): the call's peak extra memory
(tracemalloc, result included) stays below 1.75 padded inputs (over 2 before), and the
result equals PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import peak_extra_bytes
from convarith.engine.algorithms import flat_rows


@pytest.mark.parametrize("size, channels, strides, dtype", [
    (28, 128, (2, 2), np.float32),   # ResNet-50's 3×3 s2 128 (2.2 padded inputs before)
    (21, 32, (2, 2), np.float64),
    (17, 48, (3, 2), np.float32),
])
def test_strided_weight_grad_peak_and_value(size, channels, strides, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    batch, filters, padding = 4, 32, ((1, 1), (1, 1))
    x = rng.standard_normal((batch, size, size, channels)).astype(dtype)
    out = [(size + 2 - 3) // s + 1 for s in strides]
    dy = rng.standard_normal((batch, *out, filters)).astype(dtype)
    padded_bytes = batch * (size + 2) ** 2 * channels * x.itemsize
    # one thread: the helpers' kept buffers would make the peak vary from call to call
    peak = peak_extra_bytes(lambda: flat_rows.weight_grad(
        x, dy, (3, 3), strides, (1, 1), 1, threads=1, padding=padding))
    assert peak < 1.75 * padded_bytes, f"peak {peak} bytes = {peak / padded_bytes:.2f} padded inputs"
    got = flat_rows.weight_grad(x, dy, (3, 3), strides, (1, 1), 1, padding=padding)
    xt = torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2).requires_grad_(False)
    dyt = torch.from_numpy(dy.astype(np.float64)).permute(0, 3, 1, 2)
    expected = torch.nn.grad.conv2d_weight(xt, (filters, channels, 3, 3), dyt, stride=strides,
                                           padding=1).permute(2, 3, 1, 0).numpy()
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, expected, rtol=tolerance,
                               atol=tolerance * np.abs(expected).max())


def test_phase_images_read_unpadded_equal_padded_copy():
    """Phases read from the unpadded input equal those of the padded copy, exactly, on
    random ranks, strides, dilations and (asymmetric) paddings."""
    from convarith.engine.padding import pad
    seed = np.random.SeedSequence().entropy
    rng = np.random.default_rng(seed)
    for _ in range(60):
        rank = int(rng.integers(1, 4))
        size = [int(rng.integers(1, 9)) for _ in range(rank)]
        strides = [int(rng.integers(1, 4)) for _ in range(rank)]
        if all(s == 1 for s in strides):
            strides[0] = 2
        dilation = [int(rng.integers(1, 3)) for _ in range(rank)]
        kernel = [int(rng.integers(1, 4)) for _ in range(rank)]
        padding = [(int(rng.integers(0, 4)), int(rng.integers(0, 4))) for _ in range(rank)]
        padded = [e + lo + hi for e, (lo, hi) in zip(size, padding)]
        if any(p < (k - 1) * d + 1 for p, k, d in zip(padded, kernel, dilation)):
            continue
        x = rng.standard_normal((2, *size, 3))
        flat_plan = flat_rows.plan(tuple(padded), tuple(kernel), tuple(strides), tuple(dilation))
        expected = flat_rows._phase_images(pad(x, padding), flat_plan, strides)
        got = flat_rows._phase_images(x, flat_plan, strides, padding)
        assert np.array_equal(got, expected), (
            f"seed {seed}: size {size} strides {strides} dilation {dilation} kernel {kernel} "
            f"padding {padding}")
