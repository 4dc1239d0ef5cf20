"""The backward pass of stride-1 1×1 layers: the compiled kernel gradient
(:mod:`._llvm_pointwise_grad`, through ``pointwise_rows.weight_grad``) and the input
gradient by the forward pass's kernel (:mod:`._llvm_pointwise`, its outputs in blocks
for more than 64, through ``pointwise.transposed``), against PyTorch in float64.

Configurations are drawn at random (the seed is in every failure message): 1 to 300
input channels, every output count the kernels take up to three column blocks, 1 to
3000 cells, float32 and float64, natively and with the AVX2 kernels; parts of the cells
and of the channels (the workers' shares); whole ``conv_vjp`` calls at batch 1 and 16,
channels-last and channels-first, on one and two threads, with the compiled kernels, the
AVX2 ones and none (``CONVARITH_JIT=0``); a NaN in one cell reaching only its input
channel's row of the kernel gradient. Bounds: relative error ≤ 1e-5 in float32, ≤ 1e-10
in float64.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import relative_error
from convarith import ConvSpec
from convarith.engine import clear_caches, conv_vjp
from convarith.engine.algorithms import (
    _llvm,
    _llvm_pointwise,
    _llvm_pointwise_grad,
    pointwise,
    pointwise_rows,
)

torch = pytest.importorskip("torch")

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
SEEDS = 8 if os.environ.get("CI") == "true" else 24


def _targets() -> list[_llvm.VectorTarget]:
    if not _llvm.available():
        return []
    names = ["native"] + (["avx2"] if _llvm.target_named("avx2").runs_here else [])
    return [_llvm.vector_target() if name == "native" else _llvm.target_named(name)
            for name in names]


def _torch_weight_grad(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """PyTorch's kernel gradient of a 1×1 ``conv1d`` in float64 of cells ``x``
    ``(cells, C)`` and output gradient ``dy`` ``(cells, F)``, as ``(C, F)``."""
    a = torch.from_numpy(x.astype(np.float64).T.copy()[None])
    g = torch.from_numpy(dy.astype(np.float64).T.copy()[None])
    w = torch.nn.grad.conv1d_weight(a, (dy.shape[1], x.shape[1], 1), g)
    return w[:, :, 0].numpy().T


@pytest.mark.skipif(not _llvm.available(), reason="no compiled kernels here")
@pytest.mark.parametrize("seed", range(SEEDS))
def test_kernel_matches_pytorch(seed: int) -> None:
    rng = np.random.default_rng(5300 + seed)
    dtype = np.float32 if rng.random() < 0.5 else np.float64
    channels = int(rng.choice([1, 2, 3, 5, 7, 12, 16, 25, 32, 96, 144, 300]))
    cells = int(rng.integers(1, 3000))
    for target in _targets():
        width = target.width(np.dtype(dtype))
        most = _llvm.max_vectors(target)
        choices = [f for f in range(1, 3 * most * width + 1)
                   if _llvm_pointwise.column_blocks(f, width, most)]
        filters = int(rng.choice(choices))
        kernels = _llvm_pointwise_grad._compiled(np.dtype(dtype), channels, filters, target)
        what = (f"seed {seed}: {target.name}, {cells} cells, {channels} -> {filters}, "
                f"{np.dtype(dtype)}")
        assert kernels is not None, what
        x = rng.standard_normal((cells, channels)).astype(dtype)
        dy = rng.standard_normal((cells, filters)).astype(dtype)
        expected = _torch_weight_grad(x, dy)
        out = np.zeros((channels + 1, filters), dtype)  # one row past the end: left alone
        out[channels] = 7
        kernels.run(x, dy, out)
        error = relative_error(out[:channels], expected)
        assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.2e}"
        assert (out[channels] == 7).all(), f"{what}: wrote past the last channel"
        # the workers' shares: two ranges of cells added up, and a range of channels alone
        middle, c_first, c_last = (int(rng.integers(0, cells + 1)),
                                   *sorted(int(v) for v in rng.integers(0, channels + 1, 2)))
        parts = np.zeros((channels, filters), dtype)
        kernels.run(x, dy, parts, 0, middle)
        kernels.run(x, dy, parts, middle, cells)
        error = relative_error(parts, expected)
        assert error <= TOLERANCE[dtype], f"{what}: cells split at {middle}: {error:.2e}"
        rows = np.full((channels, filters), 7, dtype)
        rows[c_first:c_last] = 0
        kernels.run(x, dy, rows, c_first=c_first, c_last=c_last)
        if c_last > c_first:
            error = relative_error(rows[c_first:c_last], expected[c_first:c_last])
            assert error <= TOLERANCE[dtype], f"{what}: channels {c_first}:{c_last}: {error:.2e}"
        assert (rows[:c_first] == 7).all() and (rows[c_last:] == 7).all(), (
            f"{what}: channels {c_first}:{c_last} wrote outside them")


@pytest.mark.skipif(not _llvm.available(), reason="no compiled kernels here")
@pytest.mark.parametrize("seed", range(SEEDS // 2))
def test_wide_forward_kernel_matches_pytorch(seed: int) -> None:
    """The forward kernel with its outputs in blocks (the input gradient's product
    ``dy @ kernelᵀ`` of layers with more than 64 inputs)."""
    rng = np.random.default_rng(5600 + seed)
    dtype = np.float32 if rng.random() < 0.5 else np.float64
    channels = int(rng.choice([1, 3, 16, 24, 32, 40, 64, 160, 512]))
    cells = int(rng.integers(1, 900))
    for target in _targets():
        width = target.width(np.dtype(dtype))
        most = _llvm.max_vectors(target)
        choices = [f for f in range(1, 4 * most * width + 1)
                   if _llvm_pointwise.column_blocks(f, width, most)]
        filters = int(rng.choice(choices))
        kernels = _llvm_pointwise._compiled(np.dtype(dtype), channels, filters, target, True)
        what = (f"seed {5600 + seed}: {target.name}, {cells} cells, {channels} -> {filters}, "
                f"{np.dtype(dtype)}")
        assert kernels is not None, what
        x = rng.standard_normal((cells, channels)).astype(dtype)
        w = rng.standard_normal((channels, filters)).astype(dtype)
        y = np.full((cells + 1, filters), 7, dtype)
        kernels.run(x, w, y, 0, cells)
        expected = _torch_weight_grad(x.T.copy(), w)  # (xᵀ)ᵀ @ w, by PyTorch
        error = relative_error(y[:cells], expected)
        assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.2e}"
        assert (y[cells] == 7).all(), f"{what}: wrote past the last cell"


def test_the_wide_input_gradient_kernel_leaves_large_kernels_to_blas() -> None:
    f32 = np.dtype("float32")
    assert not pointwise.wide_kernel_runs(f32, 4096, 160, 960, 1)  # 600 KiB of kernel
    assert not pointwise.wide_kernel_runs(f32, 16, 24, 144, 1)  # too few cells
    assert pointwise.wide_kernel_runs(f32, 4096, 24, 144, 1) == _llvm_pointwise.supported(
        f32, 144, wide=True)


def test_column_blocks_cover_every_output_channel_once() -> None:
    for width, most in ((16, 4), (8, 2), (8, 4), (4, 2)):
        for filters in range(1, 5 * most * width):
            blocks = _llvm_pointwise.column_blocks(filters, width, most)
            if blocks is None:
                assert filters % (width // 2), (width, filters)
                continue
            lanes = [first + i for block in blocks for first, n in block for i in range(n)]
            assert lanes == list(range(filters)), (width, most, filters)
            assert all(len(block) <= most for block in blocks), (width, most, filters)


@pytest.mark.parametrize("seed", range(SEEDS // 2))
@pytest.mark.parametrize("threads", ["1", "2"])
def test_layer_gradients_against_pytorch(seed: int, threads: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole ``conv_vjp`` calls of stride-1 1×1 layers, at batch 1 and 16, both layouts,
    each compiled-kernel setting, with the kernels' shares at every size."""
    monkeypatch.setenv("CONVARITH_NUM_THREADS", threads)
    monkeypatch.setattr(pointwise_rows, "KERNEL_SHARED_FLOPS", 0.0)
    monkeypatch.setattr("convarith.engine.algorithms._threads.SMALL_WORK_NO_BLAS", 0)
    monkeypatch.setattr("convarith.engine.algorithms.pointwise_rows.SMALL_WORK_NO_BLAS", 0)
    monkeypatch.setattr("convarith.engine.core.SMALL_BACKWARD_FLOPS", 0)  # each on all workers
    monkeypatch.setattr(pointwise_rows, "KERNEL_CELLS", 1)
    monkeypatch.setattr(pointwise_rows, "KERNEL_GRAD_CELLS", 2)
    rng = np.random.default_rng(5400 + seed)
    dtype = np.float32 if seed % 2 else np.float64
    batch = 16 if seed % 4 < 2 else 1
    size = tuple(int(n) for n in rng.integers(1, 12 if batch == 16 else 40, 2))
    channels = int(rng.choice([3, 16, 24, 32, 64, 96, 144, 200]))
    filters = int(rng.choice([8, 16, 20, 24, 32, 40, 64, 96, 128]))
    first = bool(rng.integers(0, 2))
    x = rng.standard_normal((batch, *size, channels)).astype(dtype)
    kernel = rng.standard_normal((1, 1, channels, filters)).astype(dtype)
    dy = rng.standard_normal((batch, *size, filters)).astype(dtype)
    tx = torch.tensor(np.moveaxis(x, -1, 1).astype(np.float64), requires_grad=True)
    tk = torch.tensor(np.transpose(kernel, (3, 2, 0, 1)).astype(np.float64), requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tk)
    ex, ek = torch.autograd.grad(ty, (tx, tk), torch.tensor(np.moveaxis(dy, -1, 1)
                                                           .astype(np.float64)))
    expected_dx = ex.numpy() if first else np.moveaxis(ex.numpy(), 1, -1)
    expected_dk = np.transpose(ek.numpy(), (2, 3, 1, 0))
    spec = ConvSpec(1, rank=2, data_format="channels_first" if first else "channels_last")
    args = ((np.moveaxis(x, -1, 1), kernel, spec, np.moveaxis(dy, -1, 1)) if first
            else (x, kernel, spec, dy))
    for jit, isa in (("1", "native"), ("1", "avx2"), ("0", "native")):
        if isa == "avx2" and not _llvm.target_named("avx2").runs_here:
            continue
        monkeypatch.setenv("CONVARITH_JIT", jit)
        monkeypatch.setenv("CONVARITH_VECTOR_ISA", isa)
        clear_caches()
        try:
            dx, dk = conv_vjp(*args)[:2]
        finally:
            clear_caches()
        what = (f"seed {5400 + seed}: {x.shape} -> {filters}, {np.dtype(dtype)}, "
                f"{'NCHW' if first else 'NHWC'}, {threads} threads, JIT {jit} {isa}")
        assert dx.dtype == dtype and dk.dtype == dtype, what
        assert relative_error(dx, expected_dx) <= TOLERANCE[dtype], what
        assert relative_error(dk, expected_dk) <= TOLERANCE[dtype], what


def test_the_kernel_gradient_leaves_small_products_to_blas() -> None:
    f32 = np.dtype("float32")
    assert not pointwise_rows.kernel_grad_runs(f32, 49, 80, 480)  # operands in cache
    assert not pointwise_rows.kernel_grad_runs(f32, 256, 2048, 512)  # 4 MiB, 4 chunks
    assert not pointwise_rows.kernel_grad_runs(f32, 1, 32, 16)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_nan_reaches_only_its_channel(threads: int) -> None:
    rng = np.random.default_rng(5500)
    x = rng.standard_normal((4, 30, 30, 24)).astype(np.float32)
    dy = rng.standard_normal((4, 30, 30, 16)).astype(np.float32)
    x[2, 7, 11, 5] = np.nan
    dk = pointwise_rows.weight_grad(x, dy, (1, 1), (1, 1), (1, 1), 1, threads=threads)
    assert np.isnan(dk[0, 0, 5]).all(), "the NaN's channel"
    others = np.delete(dk[0, 0], 5, axis=0)
    assert np.isfinite(others).all(), "the other channels stay finite"
    clean = np.delete(x, 5, axis=-1).reshape(-1, 23)
    error = relative_error(others, _torch_weight_grad(clean, dy.reshape(-1, 16)))
    assert error <= 1e-5, f"{threads} threads: {error:.2e}"
