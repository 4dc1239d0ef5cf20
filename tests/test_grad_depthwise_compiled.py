"""The compiled depthwise kernel gradient (``_llvm_depthwise.grad_module_ir``, run by
``depthwise.weight_grad`` with multiplier 1) against PyTorch's ``convolution_backward``
in float64 on random layers: kernels 1–7 per axis, strides 1–3, dilation 1–3, zero
padding and crops, channels that are not a multiple of the vector width, rows long
enough for the tile loop, 1-D and 2-D, float32 and float64, one and two threads, the
native instruction set and AVX2. Each failure names its seed. Bounds: relative error
≤ 1e-5 in float32, ≤ 1e-10 in float64."""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import TOLERANCE, compiled_isas, relative_error
from convarith.engine.algorithms import _llvm, _llvm_depthwise, depthwise
from convarith.engine.padding import pad

torch = pytest.importorskip("torch")

CI = os.environ.get("CI") == "true"
ISAS = compiled_isas()


def torch_kernel_gradient(x: np.ndarray, dy: np.ndarray, kernel: tuple[int, ...],
                          strides: tuple[int, ...], dilation: tuple[int, ...],
                          pads: tuple[tuple[int, int], ...]) -> np.ndarray:
    """``(*kernel, 1, C)`` by PyTorch in float64, the padding (or crop) applied first."""
    channels = x.shape[-1]
    padded = pad(x.astype(np.float64), pads)
    expected = torch.ops.aten.convolution_backward(
        torch.from_numpy(np.moveaxis(dy.astype(np.float64), -1, 1).copy()),
        torch.from_numpy(np.moveaxis(padded, -1, 1).copy()),
        torch.zeros((channels, 1, *kernel), dtype=torch.float64),
        None, list(strides), [0] * len(kernel), list(dilation), False, [0] * len(kernel),
        channels, [False, True, False])[1].numpy()
    return np.moveaxis(expected, (0, 1), (-1, -2))


def random_layer(seed: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], tuple[int, ...],
                                     tuple[int, ...], tuple[tuple[int, int], ...]]:
    rng = np.random.default_rng(seed)
    rank = 1 if rng.random() < 0.2 else 2
    while True:
        channels = int(rng.choice([1, 3, 16, 20, 33, 96, 150]))
        kernel = tuple(int(v) for v in rng.choice([1, 2, 3, 3, 5, 7], rank))
        strides = tuple(int(v) for v in rng.choice([1, 1, 2, 3], rank))
        dilation = tuple(int(v) for v in rng.choice([1, 1, 2, 3], rank))
        size = tuple(int(v) for v in rng.integers(1, 24, rank))
        if rng.random() < 0.2:  # long rows: several tiles in the compiled loop
            size = (*size[:-1], int(rng.integers(60, 160)))
        pads = tuple((int(a), int(b)) for a, b in rng.integers(-1, 5, (rank, 2)))
        out = tuple((n + lo + hi - (k - 1) * d - 1) // s + 1
                    for n, (lo, hi), k, d, s in zip(size, pads, kernel, dilation, strides))
        if min(out) > 0 and min(n + lo for n, (lo, _) in zip(size, pads)) > 0:
            break
    x = rng.standard_normal((int(rng.integers(1, 4)), *size, channels))
    dy = rng.standard_normal((x.shape[0], *out, channels))
    return x, dy, kernel, strides, dilation, pads


@pytest.mark.oracle
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("seed", range(12 if CI else 40))
def test_compiled_kernel_gradient_against_torch(seed: int, isa: str, monkeypatch) -> None:
    monkeypatch.setenv(_llvm.ISA_VARIABLE, isa)
    if seed % 2:  # the next row's data asked for ahead whatever the layer's size
        monkeypatch.setattr(depthwise, "GRAD_PREFETCH_BYTES", 0)
    x, dy, kernel, strides, dilation, pads = random_layer(7100 + seed)
    expected = torch_kernel_gradient(x, dy, kernel, strides, dilation, pads)
    for dtype in (np.float32, np.float64):
        what = (f"seed {7100 + seed} ({isa}, {dtype.__name__}): x {x.shape}, kernel {kernel}, "
                f"strides {strides}, dilation {dilation}, padding {pads}")
        # where the crop is negative the engine crops first; the kernel reads what is left
        crop = tuple((min(lo, 0), min(hi, 0)) for lo, hi in pads)
        kept = tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads)
        xs = pad(x, crop).astype(dtype)
        for threads in (1, 2):
            compiled = depthwise._compiled_weight_grad(xs, dy.astype(dtype), kernel, strides,
                                                       dilation, kept, threads)
            assert compiled is not None, what
            found = depthwise.weight_grad(xs, dy.astype(dtype), kernel, strides, dilation,
                                          x.shape[-1], threads=threads, padding=kept)
            for d_kernel in (compiled, found):
                assert d_kernel.dtype == dtype and d_kernel.shape == expected.shape, what
                error = relative_error(d_kernel, expected)
                assert error <= TOLERANCE[dtype], f"{what}, {threads} threads: {error:.2e}"


@pytest.mark.oracle
@pytest.mark.parametrize("shape", [(16, 56, 56, 32), (2, 12, 300, 20)])
def test_float32_sums_over_many_cells(shape: tuple[int, ...]) -> None:
    """Float32 products summed a row at a time, rows added in float64: 50 176 cells
    (MobileNet's 3×3 layer of 32 channels at batch 16: the next row's data asked for
    ahead) or rows of 300 cells."""
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32) + 0.5
    dy = rng.standard_normal(shape).astype(np.float32) + 0.5  # same-sign terms: long sums
    pads = ((1, 1), (1, 1))
    expected = torch_kernel_gradient(x, dy, (3, 3), (1, 1), (1, 1), pads)
    d_kernel = depthwise.weight_grad(x, dy, (3, 3), (1, 1), (1, 1), shape[-1], padding=pads)
    assert relative_error(d_kernel, expected) <= 1e-5


@pytest.mark.parametrize("kernel, stride, dilation, pad, width", [
    (3, 1, 1, 1, 56), (3, 2, 1, 1, 28), (5, 1, 2, 4, 30), (7, 1, 1, 3, 9), (1, 3, 1, 0, 5)])
def test_tiles_cover_each_row_once(kernel: int, stride: int, dilation: int, pad: int,
                                   width: int) -> None:
    """A row's tiles cover its cells once, in order, and a tile is marked inside exactly
    when every tap of its cells reads a column of the input."""
    in_width = (width - 1) * stride + (kernel - 1) * dilation + 1 - 2 * pad
    tiles = _llvm_depthwise.grad_tiles(kernel, stride, dilation, pad, in_width, width, 8)
    cells = [first + m for first, count, _ in tiles for m in range(count)]
    assert cells == list(range(width))
    for first, count, inside in tiles:
        columns = [(first + m) * stride + b * dilation - pad
                   for m in range(count) for b in range(kernel)]
        assert inside == all(0 <= c < in_width for c in columns)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_module_compiles_for_aarch64(dtype) -> None:
    """The module, with a partial vector of channels, compiles for NEON."""
    llvm = _llvm._llvm()
    if llvm is None:
        pytest.skip("no llvmlite")
    target = _llvm.target_named("neon")
    try:
        text = _llvm.ir_assembly(
            _llvm_depthwise.grad_module_ir(dtype, target.width(dtype), kernel=3, stride=2,
                                           dilation=1, pad=1, in_width=20, out_width=10,
                                           cells=6, sets=2, lanes=1), target)
    except RuntimeError as error:  # llvmlite without the AArch64 backend
        pytest.skip(str(error))
    assert "fmla" in text
