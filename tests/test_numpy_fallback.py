"""The NumPy paths (no compiled kernels): grouped as one batched product, depthwise
by one einsum over a window view, each against PyTorch on random configurations,
directly and through the engine with ``CONVARITH_JIT=0`` and numba unimportable."""

from __future__ import annotations

import os

import numpy as np
import pytest

from convarith.engine.algorithms import depthwise, grouped_gemm
from convarith.engine.dispatch import ConvProblem, choose
from numba_free import run_without_numba

torch = pytest.importorskip("torch")

CASES = 12 if os.environ.get("CI") == "true" else 60


def _random_problem(rng, depthwise_only=False):
    rank = int(rng.integers(1, 4))
    groups = int(rng.integers(2, 5))
    group_in = 1 if depthwise_only else int(rng.integers(2, 5))
    group_out = int(rng.integers(1, 4))
    ksize = tuple(int(k) for k in rng.integers(1, 4, rank))
    strides = tuple(int(s) for s in rng.integers(1, 3, rank))
    dilation = tuple(int(d) for d in rng.integers(1, 3, rank))
    out = tuple(int(o) for o in rng.integers(1, 5, rank))
    size = tuple((o - 1) * s + (k - 1) * d + 1 + int(rng.integers(0, 2))
                 for o, s, k, d in zip(out, strides, ksize, dilation))
    batch = int(rng.integers(1, 3))
    xp = rng.standard_normal((batch, *size, groups * group_in))
    kernel = rng.standard_normal((*ksize, group_in, groups * group_out))
    return xp, kernel, strides, dilation, groups, out


def _torch_conv(xp, kernel, strides, dilation, groups):
    rank = kernel.ndim - 2
    conv = (None, torch.nn.functional.conv1d, torch.nn.functional.conv2d,
            torch.nn.functional.conv3d)[rank]
    x = torch.from_numpy(np.moveaxis(xp, -1, 1).copy()).requires_grad_(True)
    w = torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).copy()).requires_grad_(True)
    y = conv(x, w, stride=strides, dilation=dilation, groups=groups)
    return x, w, y


def _crop(yt, out):
    # the input may hold one cell more than out needs; the direct contract stops at out
    return yt[(slice(None), slice(None)) + tuple(slice(0, o) for o in out)]


@pytest.mark.parametrize("algorithm", ["grouped_gemm", "depthwise"])
def test_numpy_paths_match_pytorch(algorithm):
    seed = {"grouped_gemm": 17, "depthwise": 18}[algorithm]
    rng = np.random.default_rng(seed)
    module = grouped_gemm if algorithm == "grouped_gemm" else depthwise
    extra = {} if algorithm == "grouped_gemm" else {"use_numba": False}
    for case in range(CASES):
        xp, kernel, strides, dilation, groups, out = _random_problem(
            rng, depthwise_only=algorithm == "depthwise")
        x, w, yt = _torch_conv(xp, kernel, strides, dilation, groups)
        yt = _crop(yt, out)
        y = module.direct(xp, kernel, strides, dilation, groups, out, **extra)
        expected = np.moveaxis(yt.detach().numpy(), 1, -1)
        note = f"seed {seed} case {case}: {xp.shape} {kernel.shape} s{strides} d{dilation} g{groups}"
        assert y.shape == expected.shape, note
        np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10, err_msg=note)
        if algorithm == "grouped_gemm":
            continue  # no weight gradient of its own (offset_gemm's is faster)
        dy = rng.standard_normal(expected.shape)
        yt.backward(torch.from_numpy(np.moveaxis(dy, -1, 1).copy()))
        dk = module.weight_grad(xp, dy, kernel.shape[:-2], strides, dilation, groups, **extra)
        expected_dk = np.moveaxis(w.grad.numpy(), (0, 1), (-1, -2))
        np.testing.assert_allclose(dk, expected_dk, rtol=1e-10, atol=1e-10, err_msg=note)


def test_grouped_gemm_float32_and_word_copies():
    """float32 with 4 channels a group (gathered as 16-byte words) and with 3 (not)."""
    rng = np.random.default_rng(5)
    for group_in in (3, 4, 8):
        xp = rng.standard_normal((2, 9, 8, 4 * group_in)).astype(np.float32)
        kernel = rng.standard_normal((3, 3, group_in, 8)).astype(np.float32)
        _, _, yt = _torch_conv(xp, kernel, (1, 1), (1, 1), 4)
        y = grouped_gemm.direct(xp, kernel, (1, 1), (1, 1), 4, (7, 6))
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, np.moveaxis(yt.detach().numpy(), 1, -1), rtol=1e-4,
                                   atol=1e-4, err_msg=f"group_in {group_in}")


def test_grouped_gemm_chosen_over_offset_gemm_for_grouped_problems():
    problem = ConvProblem((2, 30, 30, 128), (3, 3, 4, 128), (1, 1), (1, 1), 32, (28, 28),
                          np.dtype("float32"))
    assert choose(problem).name != "offset_gemm"
    depthwise_problem = ConvProblem((2, 30, 30, 8), (3, 3, 1, 8), (1, 1), (1, 1), 8, (28, 28),
                                    np.dtype("float32"))
    assert choose(depthwise_problem).name != "grouped_gemm"


def test_engine_without_any_jit_matches_pytorch():
    """``CONVARITH_JIT=0`` and numba unimportable: forward and gradients through the
    engine on grouped, depthwise, 1x1 and strided layers, against PyTorch."""
    os.environ["CONVARITH_JIT"] = "0"
    try:
        run_without_numba(
            """
            import torch
            import convarith
            from convarith import ConvSpec
            from convarith.engine import conv, conv_vjp
            from convarith.engine.algorithms import _llvm
            assert not _llvm.available(np.dtype("float32"))
            rng = np.random.default_rng(3)
            for c, f, k, s, g in ((16, 16, 3, 1, 4), (16, 32, 3, 2, 8), (12, 12, 5, 1, 12),
                                  (12, 24, 3, 2, 12), (16, 8, 1, 1, 1), (8, 16, 3, 2, 1)):
                x = rng.standard_normal((2, 11, 10, c)).astype(np.float32)
                w = rng.standard_normal((k, k, c // g, f)).astype(np.float32)
                spec = ConvSpec(k, strides=s, padding=k // 2, groups=g, rank=2)
                y = conv(x, w, spec)
                tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
                tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
                ty = torch.nn.functional.conv2d(tx, tw, stride=s, padding=k // 2, groups=g)
                note = (c, f, k, s, g)
                assert np.allclose(y, ty.permute(0, 2, 3, 1).detach().numpy(), atol=1e-4), note
                dy = rng.standard_normal(y.shape).astype(np.float32)
                ty.backward(torch.from_numpy(dy).permute(0, 3, 1, 2))
                dx, dk, _ = conv_vjp(x, w, spec, dy)
                assert np.allclose(dx, tx.grad.permute(0, 2, 3, 1).numpy(), atol=1e-3), note
                assert np.allclose(dk, tw.grad.permute(2, 3, 1, 0).numpy(), atol=1e-3), note
            """
        )
    finally:
        del os.environ["CONVARITH_JIT"]
