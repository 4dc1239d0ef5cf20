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


def _torch_conv(xp, kernel, strides, dilation, groups, out):
    rank = kernel.ndim - 2
    conv = (None, torch.nn.functional.conv1d, torch.nn.functional.conv2d,
            torch.nn.functional.conv3d)[rank]
    x = torch.from_numpy(np.moveaxis(xp, -1, 1).copy())
    w = torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).copy())
    y = conv(x, w, stride=strides, dilation=dilation, groups=groups)
    y = y[(slice(None), slice(None)) + tuple(slice(0, o) for o in out)]
    return np.moveaxis(y.numpy(), 1, -1)


def _random_grouped(rng, depthwise=False):
    rank = int(rng.integers(1, 4))
    groups = int(rng.integers(2, 6))
    group_in = 1 if depthwise else int(rng.integers(1, 5))
    group_out = 1 if depthwise else int(rng.integers(1, 4))
    ksize = tuple(int(k) for k in rng.integers(1, 5, rank))
    strides = tuple(int(s) for s in rng.integers(1, 4, rank))
    dilation = tuple(int(d) for d in rng.integers(1, 3, rank))
    out = tuple(int(o) for o in rng.integers(1, 13 - 3 * rank, rank))
    size = tuple((o - 1) * s + (k - 1) * d + 1 + int(rng.integers(0, 3))
                 for o, s, k, d in zip(out, strides, ksize, dilation))
    xp = rng.standard_normal((int(rng.integers(1, 3)), *size, groups * group_in))
    kernel = rng.standard_normal((*ksize, group_in, groups * group_out))
    return xp, kernel, strides, dilation, groups, out


def test_grouped_channels_first_matches_pytorch_on_random_configurations():
    """Any rank, stride, dilation and grouping (the direct calls strided problems
    the other way, the function itself takes them), float64 against PyTorch."""
    from convarith.engine.algorithms import grouped_gemm

    seed = 171
    rng = np.random.default_rng(seed)
    for case in range(CASES // 3):
        xp, kernel, strides, dilation, groups, out = _random_grouped(rng)
        note = (f"seed {seed} case {case}: input {xp.shape} kernel {kernel.shape} s{strides} "
                f"d{dilation} g{groups} out {out}")
        expected = _torch_conv(xp, kernel, strides, dilation, groups, out)
        y = grouped_gemm.direct_channels_first(xp, kernel, strides, dilation, groups, out)
        assert y.shape == expected.shape, note
        np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10, err_msg=note)
        y32 = grouped_gemm.direct(xp.astype(np.float32), kernel.astype(np.float32), strides,
                                  dilation, groups, out)
        assert y32.dtype == np.float32, note
        np.testing.assert_allclose(y32, expected, rtol=1e-4, atol=1e-4, err_msg=note)


def test_grouped_gemm_takes_the_channels_first_gather_on_large_stride_1_outputs():
    """ResNeXt's 3x3 with 32 groups at 12x12 and more (float32 against float64 PyTorch)."""
    from convarith.engine.algorithms import grouped_gemm

    rng = np.random.default_rng(172)
    xp = rng.standard_normal((2, 14, 13, 64)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 2, 64)).astype(np.float32)
    out = (12, 11)
    assert out[0] * out[1] >= grouped_gemm.CHANNELS_FIRST_CELLS
    y = grouped_gemm.direct(xp, kernel, (1, 1), (1, 1), 32, out)
    expected = _torch_conv(xp.astype(np.float64), kernel.astype(np.float64), (1, 1), (1, 1),
                           32, out)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_winograd_without_numba_matches_pytorch_on_random_configurations():
    """F(2x2) and F(4x4) by whole-array NumPy passes (no dilation) and by einsum
    (dilation), float64 against PyTorch: odd sizes, tiles past the input's end."""
    from convarith.engine.algorithms import winograd

    seed = 173
    rng = np.random.default_rng(seed)
    for case in range(CASES // 10):
        dilation = (1, 1) if case % 3 else tuple(int(d) for d in rng.integers(1, 3, 2))
        out = tuple(int(o) for o in rng.integers(1, 12, 2))
        size = tuple(o + 2 * d + int(rng.integers(0, 3)) for o, d in zip(out, dilation))
        c, f = (int(v) for v in rng.integers(1, 9, 2))
        xp = rng.standard_normal((int(rng.integers(1, 3)), *size, c))
        kernel = rng.standard_normal((3, 3, c, f))
        expected = _torch_conv(xp, kernel, (1, 1), dilation, 1, out)
        for m in (2, 4):
            note = f"seed {seed} case {case}: F({m}) input {xp.shape} kernel {kernel.shape} " \
                   f"d{dilation} out {out}"
            y = winograd.direct(xp, kernel, (1, 1), dilation, 1, out, m=m, use_numba=False,
                                workspace_bytes=int(rng.integers(1, 4)) << 12)
            assert y.shape == expected.shape, note
            np.testing.assert_allclose(y, expected, rtol=1e-9, atol=1e-9, err_msg=note)


def test_engine_without_numba_runs_the_numpy_paths_like_pytorch():
    """``CONVARITH_JIT=0`` and numba unimportable: grouped (channels first), Winograd
    F(2x2) in NumPy, pooling, through the engine, against PyTorch in float64."""
    from numba_free import run_without_numba

    os.environ["CONVARITH_JIT"] = "0"
    try:
        run_without_numba(
            """
            import torch
            from convarith import ConvSpec
            from convarith.engine import conv
            rng = np.random.default_rng(174)
            for c, f, g, algorithm in ((64, 64, 16, "grouped_gemm"), (64, 48, 1, "winograd"),
                                       (64, 48, 1, None)):
                x = rng.standard_normal((2, 14, 13, c))
                w = rng.standard_normal((3, 3, c // g, f))
                spec = ConvSpec(3, padding=1, groups=g, rank=2)
                y = conv(x, w, spec, algorithm=algorithm)
                tx = torch.from_numpy(x).permute(0, 3, 1, 2)
                tw = torch.from_numpy(w).permute(3, 2, 0, 1)
                ty = torch.nn.functional.conv2d(tx, tw, padding=1, groups=g)
                expected = ty.permute(0, 2, 3, 1).numpy()
                assert np.allclose(y, expected, rtol=1e-9, atol=1e-9), (c, f, g, algorithm)
            x = rng.standard_normal((2, 9, 9, 5))
            for pool in ("max", "avg"):
                y = conv(x, None, ConvSpec(3, strides=2, padding=1, pool=pool,
                                           count_include_pad=True))
                tx = torch.from_numpy(x).permute(0, 3, 1, 2)
                ty = (torch.nn.functional.max_pool2d(tx, 3, 2, 1) if pool == "max" else
                      torch.nn.functional.avg_pool2d(tx, 3, 2, 1))
                assert np.allclose(y, ty.permute(0, 2, 3, 1).numpy(), atol=1e-12), pool
            """
        )
    finally:
        del os.environ["CONVARITH_JIT"]


def test_depthwise_without_numba_matches_pytorch_on_random_configurations():
    """One pass per tap (2-D and 3-D, unit stride along the last axis) or the einsum
    (other strides, 1-D), float64 against PyTorch."""
    from convarith.engine.algorithms import depthwise

    seed = 175
    rng = np.random.default_rng(seed)
    for case in range(CASES // 5):
        xp, kernel, strides, dilation, groups, out = _random_grouped(rng, depthwise=True)
        note = (f"seed {seed} case {case}: input {xp.shape} kernel {kernel.shape} s{strides} "
                f"d{dilation} out {out}")
        expected = _torch_conv(xp, kernel, strides, dilation, groups, out)
        y = depthwise.direct(xp, kernel, strides, dilation, groups, out, use_numba=False)
        assert y.shape == expected.shape, note
        np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10, err_msg=note)
