"""The compiled kernels of narrow stride-1 1×1 layers (:mod:`._llvm_pointwise`) against
PyTorch's ``conv2d`` in float64.

Configurations are drawn at random (the seed is in every failure message): 1 to 300
input channels, every output count the kernels take (8 to 64 with AVX-512: whole
vectors and a half), 1 to 700 cells (whole register blocks and every tail), float32
and float64, natively and with the AVX2 kernels. Then through ``pointwise_rows`` on one
and two threads (the chunks of cells), through ``conv`` as the planner binds it, and a
NaN in one cell reaching only that cell's outputs. Bounds: relative error ≤ 1e-5 in
float32, ≤ 1e-10 in float64.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import relative_error
from convarith import ConvSpec
from convarith.engine import conv
from convarith.engine.algorithms import _llvm, _llvm_pointwise, pointwise_rows

torch = pytest.importorskip("torch")

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
SEEDS = 8 if os.environ.get("CI") == "true" else 30

pytestmark = pytest.mark.skipif(
    not _llvm.available(), reason="no compiled kernels here (llvmlite, AVX2+FMA or AVX-512)")


@pytest.fixture(autouse=True)
def kernel_at_every_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel on two threads for small layers too (the planner gives those to BLAS)."""
    monkeypatch.setattr(pointwise_rows, "KERNEL_SHARED_FLOPS", 0.0)


def _torch_pointwise(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """PyTorch's 1×1 convolution in float64 of cells ``x`` ``(cells, C)`` with ``kernel``
    ``(C, F)``, as ``(cells, F)``."""
    a = torch.from_numpy(x.astype(np.float64).T.copy()[None, :, :, None])
    w = torch.from_numpy(kernel.astype(np.float64).T.copy()[:, :, None, None])
    return torch.nn.functional.conv2d(a, w)[0, :, :, 0].numpy().T


def _targets() -> list[_llvm.VectorTarget]:
    names = ["native"] + (["avx2"] if _llvm.target_named("avx2").runs_here else [])
    return [_llvm.vector_target() if name == "native" else _llvm.target_named(name)
            for name in names]


@pytest.mark.parametrize("seed", range(SEEDS))
def test_kernel_matches_pytorch(seed: int) -> None:
    rng = np.random.default_rng(4100 + seed)
    dtype = np.float32 if rng.random() < 0.5 else np.float64
    channels = int(rng.choice([1, 2, 3, 5, 8, 16, 24, 32, 96, 144, 300]))
    cells = int(rng.integers(1, 700))
    for target in _targets():
        width = target.width(np.dtype(dtype))
        most = _llvm.max_vectors(target)
        choices = [f for f in range(1, 4 * width + 1) if _llvm_pointwise.pieces(f, width, most)]
        assert choices, f"seed {seed}: no output count for {width} lanes"
        filters = int(rng.choice(choices))
        kernels = _llvm_pointwise._compiled(np.dtype(dtype), channels, filters, target)
        what = (f"seed {seed}: {target.name}, {cells} cells, {channels} -> {filters}, "
                f"{np.dtype(dtype)}")
        assert kernels is not None, what
        x = rng.standard_normal((cells, channels)).astype(dtype)
        w = rng.standard_normal((channels, filters)).astype(dtype)
        y = np.full((cells + 1, filters), 7, dtype)  # one row past the end: left alone
        kernels.run(x, w, y, 0, cells)
        error = relative_error(y[:cells], _torch_pointwise(x, w))
        assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.2e}"
        assert (y[cells] == 7).all(), f"{what}: wrote past the last cell"
        if cells > 2:  # a range of the rows only
            part = np.full_like(y, 7)
            kernels.run(x, w, part, 1, cells - 1)
            assert (part[0] == 7).all() and (part[cells - 1:] == 7).all(), what
            np.testing.assert_array_equal(part[1:cells - 1], y[1:cells - 1], err_msg=what)


def test_kernels_take_whole_vectors_and_one_half() -> None:
    assert _llvm_pointwise.pieces(24, 16) == [(0, 16), (16, 8)]
    assert _llvm_pointwise.pieces(8, 16) == [(0, 8)]
    assert _llvm_pointwise.pieces(12, 8) == [(0, 8), (8, 4)]
    assert _llvm_pointwise.pieces(40, 16) == [(0, 16), (16, 16), (32, 8)]
    assert _llvm_pointwise.pieces(40, 16, vectors=2) is None
    assert _llvm_pointwise.pieces(20, 16) is None
    assert _llvm_pointwise.pieces(72, 16) is None


@pytest.mark.parametrize("x_shape, filters, dtype", [
    ((16, 28, 28, 144), 24, np.float32),   # MobileNetV2 / EfficientNet-B0
    ((16, 56, 56, 32), 16, np.float32),
    ((16, 14, 14, 240), 40, np.float32),   # EfficientNet-B0: two vectors and a half
    ((2, 28, 28, 64), 64, np.float32),     # four vectors
    ((3, 17, 19, 40), 8, np.float64),      # cells not a multiple of a block or a chunk
    ((2, 300, 96), 16, np.float32),        # 1-D
    ((1, 7, 8, 9, 5), 12, np.float64),     # 3-D, a whole vector and a half
])
def test_pointwise_rows_runs_the_kernel_as_pytorch(x_shape, filters, dtype) -> None:
    seed = 4300 + sum(x_shape)
    rng = np.random.default_rng(seed)
    rank = len(x_shape) - 2
    channels = x_shape[-1]
    x = rng.standard_normal(x_shape).astype(dtype)
    kernel = rng.standard_normal((*(1,) * rank, channels, filters)).astype(dtype)
    cells = int(np.prod(x_shape[:-1]))
    if not pointwise_rows.compiled_narrow(np.dtype(dtype), cells, channels, filters):
        pytest.skip(f"no kernel here for {filters} outputs of {np.dtype(dtype)}")
    expected = _torch_pointwise(x.reshape(cells, channels),
                                kernel.reshape(channels, filters)).reshape(*x_shape[:-1], filters)
    what = f"seed {seed}: x {x_shape} -> {filters}"
    for threads in (1, 2):
        y = pointwise_rows.direct(x, kernel, (1,) * rank, (1,) * rank, 1, x_shape[1:-1],
                                  threads=threads)
        error = relative_error(y, expected)
        assert error <= TOLERANCE[dtype], f"{what}, {threads} threads: {error:.2e}"
    spec = ConvSpec(kernel_size=(1,) * rank)
    for _ in range(2):  # planned, then the plan's bound call
        y = conv(x, kernel, spec, algorithm="pointwise_rows")
        error = relative_error(y, expected)
        assert error <= TOLERANCE[dtype], f"{what}, through conv: {error:.2e}"


def test_a_nan_reaches_only_its_cells_outputs() -> None:
    if not pointwise_rows.compiled_narrow(np.dtype(np.float32), 16 * 20 * 20, 32, 16):
        pytest.skip("no kernel here for 16 float32 outputs")
    rng = np.random.default_rng(4400)
    x = rng.standard_normal((16, 20, 20, 32)).astype(np.float32)
    x[3, 5, 7, 11] = np.nan
    kernel = rng.standard_normal((1, 1, 32, 16)).astype(np.float32)
    y = pointwise_rows.direct(x, kernel, (1, 1), (1, 1), 1, (20, 20), threads=2)
    bad = ~np.isfinite(y).all(axis=-1)
    assert bad[3, 5, 7] and bad.sum() == 1
