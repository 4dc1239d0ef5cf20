"""Pooling gradients against PyTorch: random windows, ties, NaN inputs, non-finite gradients.

The backward pass spreads average windows axis by axis and sends a max window's
gradient to its first maximum (its last NaN when it holds one); these tests
hold it to ``torch.autograd.grad`` of ``F.max_pool2d`` / ``F.avg_pool2d`` on
random configurations, global pools and the networks' 2×2 stride-2 pools.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from convarith import ConvSpec
from convarith.engine import conv, conv_vjp
from convarith.engine.pooling import spread_windows

torch = pytest.importorskip("torch")
functional = pytest.importorskip("torch.nn.functional")

CONFIGS = 25 if os.environ.get("CI") == "true" else 300


def _torch_grad(x: np.ndarray, dy: np.ndarray, kind: str, kernel: Any, stride: Any,
                padding: int, dilation: Any, ceil_mode: bool, include: bool) -> np.ndarray:
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).requires_grad_(True)
    if kind == "max":
        yt = functional.max_pool2d(xt, kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    else:
        yt = functional.avg_pool2d(xt, kernel, stride, padding, ceil_mode=ceil_mode,
                                   count_include_pad=include)
    (gx,) = torch.autograd.grad(yt, xt, torch.from_numpy(np.moveaxis(dy, -1, 1).copy()))
    return np.moveaxis(gx.numpy(), 1, -1)


def _output_shape(x: np.ndarray, spec: ConvSpec) -> tuple[int, ...]:
    return (x.shape[0], *spec.resolve(x.shape).output_size, x.shape[-1])


@pytest.mark.parametrize("seed", [0, 1])
def test_pooling_gradients_match_pytorch(seed: int) -> None:
    rng = np.random.default_rng(seed)
    checked = 0
    for trial in range(CONFIGS):
        kind = str(rng.choice(["max", "avg"]))
        kernel, stride = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        dilation = int(rng.integers(1, 3)) if kind == "max" else 1
        padding = int(rng.integers(0, kernel // 2 + 1))
        ceil_mode, include = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
        size = int(rng.integers((kernel - 1) * dilation + 1, 9))
        x = rng.standard_normal((2, size, size + 1, 3))
        if rng.random() < 0.4:
            x = np.round(x)  # ties: the first maximum in window order takes the gradient
        if rng.random() < 0.15:
            x[0, int(rng.integers(size)), 0, 0] = np.nan
        spec = ConvSpec(kernel, strides=stride, padding=padding, dilation=dilation, pool=kind,
                        ceil_mode=ceil_mode, count_include_pad=include)
        try:
            shape = _output_shape(x, spec)
        except ValueError:
            continue
        dy = rng.standard_normal(shape)
        if rng.random() < 0.15:
            dy[0, 0, 0, 0] = np.inf  # reaches only the cells its window sends it to
        try:
            expected = _torch_grad(x, dy, kind, kernel, stride, padding, dilation, ceil_mode,
                                   include)
        except RuntimeError:  # a configuration PyTorch refuses
            continue
        got, _, _ = conv_vjp(x, None, spec, dy)
        np.testing.assert_allclose(
            got, expected, rtol=1e-12, atol=1e-12,
            err_msg=f"seed {seed}, trial {trial}: {spec!r} on {x.shape}")
        checked += 1
    assert checked > CONFIGS // 3


def test_dilated_windows_side_by_side_leave_the_skipped_cells_zero() -> None:
    """Windows of 2 taps dilated by 2 with stride 3 meet every third cell once and skip
    the cells between their taps: those get no gradient."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 2, 9, 2))
    spec = ConvSpec((1, 2), strides=(1, 3), dilation=(1, 2), pool="max")
    dy = rng.standard_normal(_output_shape(x, spec))
    got, _, _ = conv_vjp(x, None, spec, dy)
    expected = _torch_grad(x, dy, "max", (1, 2), (1, 3), 0, (1, 2), False, False)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert not got[:, :, 1::3].any()


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize(("size", "kernel", "channels"),
                         [(7, 7, 5), (4, 4, 3), (28, 2, 4), (7, 2, 6), (9, 3, 2)])
def test_network_pools_match_pytorch(kind: str, size: int, kernel: int, channels: int) -> None:
    rng = np.random.default_rng(size * kernel)
    stride = kernel if kernel != 3 else 2
    x = np.maximum(rng.standard_normal((2, size, size, channels)), 0).astype(np.float32)
    spec = ConvSpec(kernel, strides=stride, pool=kind)
    dy = rng.standard_normal(_output_shape(x, spec)).astype(np.float32)
    expected = _torch_grad(x, dy, kind, kernel, stride, 0, 1, False, False)
    got, _, _ = conv_vjp(x, None, spec, dy)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("loops", ["numba", "numpy"])
def test_global_average_gradients_match_pytorch(loops: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # one window over the whole input: each image's dy / cells in every cell (numba's
    # loop, or NumPy's broadcast without numba), 1-3 spatial axes, both dtypes, both
    # layouts, an infinite or NaN gradient reaching only its own image and channel
    from convarith.engine.algorithms import _numba_pool

    if loops == "numba" and _numba_pool.numba_kernels() is None:
        pytest.skip("no numba")
    if loops == "numpy":
        monkeypatch.setattr(_numba_pool, "numba_kernels", lambda: None)
    pools = (functional.avg_pool1d, functional.avg_pool2d, functional.avg_pool3d)
    rng = np.random.default_rng(21)
    for trial in range(24):
        rank = int(rng.integers(1, 4))
        size = tuple(int(rng.integers(1, 8 if rank < 3 else 5)) for _ in range(rank))
        channels = int(rng.choice([1, 3, 16, 33, 96]))
        batch = int(rng.choice([1, 2, 5]))
        dtype = np.float32 if rng.random() < 0.5 else np.float64
        first = rng.random() < 0.3
        x = rng.standard_normal((batch, *size, channels)).astype(dtype)
        dy = rng.standard_normal((batch, *(1,) * rank, channels)).astype(dtype)
        if rng.random() < 0.3:
            dy.flat[int(rng.integers(dy.size))] = [np.inf, np.nan][int(rng.integers(2))]
        xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).requires_grad_(True)
        yt = pools[rank - 1](xt, size)
        (gx,) = torch.autograd.grad(yt, xt, torch.from_numpy(np.moveaxis(dy, -1, 1).copy()))
        expected = np.moveaxis(gx.numpy(), 1, -1)
        spec = ConvSpec(size, pool="avg", rank=rank,
                        data_format="channels_first" if first else "channels_last")
        if first:
            got, _, _ = conv_vjp(np.moveaxis(x, -1, 1), None, spec, np.moveaxis(dy, -1, 1))
            got = np.moveaxis(got, 1, -1)
        else:
            got, _, _ = conv_vjp(x, None, spec, dy)
        note = f"{loops} trial {trial}: {x.shape} {np.dtype(dtype).name} first={first}"
        assert got.dtype == dtype and got.shape == x.shape, note
        tolerance = 1e-6 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance, err_msg=note)


def test_spread_windows_is_the_adjoint_of_the_window_sum() -> None:
    rng = np.random.default_rng(7)
    for trial in range(40):
        kernel = tuple(int(k) for k in rng.integers(1, 4, 2))
        strides = tuple(int(s) for s in rng.integers(1, 4, 2))
        dilation = tuple(int(d) for d in rng.integers(1, 3, 2))
        out = tuple(int(o) for o in rng.integers(0, 4, 2))
        padded = tuple(int((o - 1) * s + (k - 1) * d + 1 + extra) if o else int(extra)
                       for o, s, k, d, extra in zip(out, strides, kernel, dilation,
                                                   rng.integers(0, 3, 2)))
        xp = rng.standard_normal((1, *padded, 2))
        dy = rng.standard_normal((1, *out, 2))
        windows = np.zeros((1, *out, 2))
        for i in range(out[0]):
            for j in range(out[1]):
                rows = slice(i * strides[0], i * strides[0] + (kernel[0] - 1) * dilation[0] + 1,
                             dilation[0])
                cols = slice(j * strides[1], j * strides[1] + (kernel[1] - 1) * dilation[1] + 1,
                             dilation[1])
                windows[0, i, j] = xp[0, rows, cols].sum(axis=(0, 1))
        spread = spread_windows(dy, kernel, strides, dilation, padded)
        assert spread.shape == xp.shape, f"trial {trial}"
        # <window_sum(xp), dy> == <xp, spread(dy)>
        np.testing.assert_allclose(np.vdot(windows, dy), np.vdot(xp, spread), rtol=1e-12,
                                   atol=1e-12, err_msg=f"trial {trial}")


@pytest.mark.parametrize("seed", [2])
def test_pooling_forward_matches_pytorch(seed: int) -> None:
    """Every path of the forward pass (global windows, windows side by side, overlapping,
    dilated, padded, ceil mode) against ``F.max_pool2d`` / ``F.avg_pool2d``."""
    rng = np.random.default_rng(seed)
    checked = 0
    for trial in range(CONFIGS):
        kind = str(rng.choice(["max", "avg"]))
        size = int(rng.integers(1, 9))
        kernel = int(rng.integers(1, size + 1)) if rng.random() < 0.7 else size
        stride = int(rng.integers(1, 4))
        dilation = int(rng.integers(1, 3)) if kind == "max" else 1
        padding = int(rng.integers(0, kernel // 2 + 1))
        ceil_mode, include = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
        batch = int(rng.integers(1, 3))
        x = rng.standard_normal((batch, size, size, 3))
        if rng.random() < 0.15:
            x[0, int(rng.integers(size)), 0, 0] = np.nan
        xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
        try:
            if kind == "max":
                yt = functional.max_pool2d(xt, kernel, stride, padding, dilation,
                                           ceil_mode=ceil_mode)
            else:
                yt = functional.avg_pool2d(xt, kernel, stride, padding, ceil_mode=ceil_mode,
                                           count_include_pad=include)
        except RuntimeError:
            continue
        spec = ConvSpec(kernel, strides=stride, padding=padding, dilation=dilation, pool=kind,
                        ceil_mode=ceil_mode, count_include_pad=include)
        for _ in range(2):  # a first call, then the remembered plan
            got = conv(x, None, spec)
            np.testing.assert_allclose(
                got, np.moveaxis(yt.numpy(), 1, -1), rtol=1e-12, atol=1e-12,
                err_msg=f"seed {seed}, trial {trial}: {spec!r} on {x.shape}")
        checked += 1
    assert checked > CONFIGS // 3
