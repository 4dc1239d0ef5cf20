"""The NumPy paths a machine without compiled kernels runs, against real oracles.

Randomized configurations (the seed is in every failure message): pooling
(one axis at a time) against PyTorch, NaN included.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from convarith import ConvSpec
from convarith.engine import pooling

torch = pytest.importorskip("torch")

CASES = 60 if os.environ.get("CI") == "true" else 300


def _torch_pool(x, kind, k, s, p, d, ceil, include_pad):
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    if kind == "max":
        yt = torch.nn.functional.max_pool2d(xt, k, s, p, d, ceil_mode=ceil)
    else:
        yt = torch.nn.functional.avg_pool2d(xt, k, s, p, ceil_mode=ceil,
                                            count_include_pad=include_pad)
    return np.moveaxis(yt.numpy(), 1, -1)


def test_pooling_matches_pytorch_on_random_configurations():
    seed = 170
    rng = np.random.default_rng(seed)
    checked = 0
    for case in range(CASES):
        kind = ("max", "avg")[int(rng.integers(0, 2))]
        k, s = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        d = int(rng.integers(1, 3)) if kind == "max" else 1
        p = int(rng.integers(0, k // 2 + 1))
        ceil, include_pad = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
        size = (int(rng.integers((k - 1) * d + 2, 14)), int(rng.integers((k - 1) * d + 2, 14)))
        x = rng.standard_normal((2, *size, 3))
        if case % 4 == 0:
            x[0, 1, 1, 0] = np.nan
        if rng.integers(0, 3) == 0:  # a global pool: one window per axis
            k, s, p, d = size[0], 1, 0, 1
            x = x[:, :, : size[0]]
        note = (f"seed {seed} case {case}: {kind} pool k{k} s{s} p{p} d{d} ceil={ceil} "
                f"count_include_pad={include_pad} input {x.shape}")
        try:
            spec = ConvSpec(k, strides=s, padding=p, dilation=d, pool=kind, ceil_mode=ceil,
                            count_include_pad=include_pad)
            resolved = spec.resolve(x.shape)
        except ValueError:
            continue  # a setting the spec refuses (PyTorch refuses it too)
        y = pooling.forward(x, resolved)
        expected = _torch_pool(x, kind, k, s, p, d, ceil, include_pad)
        assert y.shape == expected.shape, note
        assert y.flags.c_contiguous and y.dtype == x.dtype, note
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12, err_msg=note)
        checked += 1
    assert checked > CASES // 2
