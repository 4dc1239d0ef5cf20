"""grouped_gemm's peak memory (the grouped path without compiled kernels): blocks of
gathered input sized to the layer, the kernel and output read and written where they
lie, so a call's peak extra memory (tracemalloc, result included) stays within 1.5×
the bytes of its input, kernel and output; the results equal PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import peak_extra_bytes, relative_error
from convarith.engine.algorithms import grouped_gemm

torch = pytest.importorskip("torch")

#: The bound of the networks benchmark: peak extra bytes / (x + kernel + output bytes).
PEAK_LIMIT = 1.5




@pytest.mark.parametrize("batch, size, channels, stride, groups", [
    (1, 7, 512, 1, 32),    # ResNeXt-50 at 112²: 3.0x before
    (1, 14, 256, 1, 32),   # 3.7x before
    (1, 28, 128, 1, 32),   # 2.4x before (channels-first gather)
    (1, 14, 512, 2, 32),   # 1.9x before
    (1, 28, 256, 1, 64),   # 1.7x before
    (1, 4, 1024, 1, 32),
])
def test_peak_memory_within_bound_and_matches_pytorch(batch, size, channels, stride, groups):
    rng = np.random.default_rng(size * channels + stride)
    x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, channels // groups, channels)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = (size - 1) // stride + 1
    peak = peak_extra_bytes(lambda: grouped_gemm.direct(xp, kernel, (stride, stride), (1, 1),
                                                   groups, (out, out)))
    ratio = peak / (x.nbytes + kernel.nbytes + batch * out * out * channels * 4)
    assert ratio <= PEAK_LIMIT, f"peak {peak} bytes = {ratio:.2f}x (x + kernel + output)"
    y = grouped_gemm.direct(xp, kernel, (stride, stride), (1, 1), groups, (out, out))
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64)),
        torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).astype(np.float64)),
        stride=stride, padding=1, groups=groups).numpy()
    assert relative_error(y, np.moveaxis(expected, 1, -1)) <= 1e-5
