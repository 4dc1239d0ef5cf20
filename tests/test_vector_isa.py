"""The compiled kernels on every instruction set: AVX2 forced on this machine, AArch64
NEON compiled (not run), and the generated module checked on single tiles.

Expected values come from a NumPy loop over the driver's definition (stated in
``_llvm``'s module docstring), from the float64 convolution definition
(``test_algorithms.reference_direct`` / ``reference_transposed``) and from
float64 ``np.matmul``. Bounds: relative error ≤ 1e-5 in float32, ≤ 1e-10 in
float64.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from convarith.engine.algorithms import _llvm, register_tiles
from convarith.engine.padding import pad
from test_algorithms import reference_direct, reference_transposed, relative_error
from test_algorithms_register_tiles import (
    random_depthwise,
    random_direct,
    random_grouped,
    random_transposed,
)

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


def driver_definition(x, w, y, offsets, cells, sums, width, vectors, batch=_llvm.ONE_PROBLEM):
    """The driver's sum, one output value at a time (float64)."""
    out = y.astype(np.float64)
    columns = vectors * width
    for p in range(batch.problems):
        xb, wb, yb = p * batch.x_stride, p * batch.w_stride, p * batch.y_stride
        for r in range(cells.rows):
            g, i = divmod(r, cells.image_rows)
            for o in range(cells.row_cells):
                for b in range(sums.blocks):
                    for j in range(columns):
                        total = sum(
                            float(x[xb + g * cells.x_image + i * cells.x_row + o * cells.x_cell
                                    + offsets[k]])
                            * float(w[wb + b * sums.block_stride + k * sums.step_stride + j])
                            for k in range(sums.steps))
                        at = yb + g * cells.y_image + i * cells.y_row + o * cells.y_cell \
                            + b * columns + j
                        out[at] = (out[at] if sums.accumulate else 0.0) + total
    return out


@pytest.mark.skipif(not _llvm.available(), reason="no compiled kernels here")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("vectors", [1, 2])
def test_generated_module_on_small_tiles_against_a_numpy_loop(dtype, vectors):
    """One call: 2 images of 2 rows of 3 cells (a block wraps rows and images, the tail
    is smaller than a block), 2 column blocks, 5 steps (odd: the unrolled loop's
    rest), accumulating; then a batch of 2 problems."""
    rng = np.random.default_rng(31 + vectors)
    kernels = _llvm.compiled(dtype, vectors)
    width = kernels.width
    columns = vectors * width
    cells = _llvm.Cells(rows=4, row_cells=3, image_rows=2, x_row=7, x_cell=2, x_image=19,
                        y_row=3 * 2 * columns + 5, y_cell=2 * columns + 1,
                        y_image=2 * (3 * 2 * columns + 5) + 3)
    steps = 5
    sums = _llvm.Sums(blocks=2, steps=steps, step_stride=columns + 3,
                      block_stride=steps * (columns + 3) + 2, accumulate=1)
    offsets = np.array([0, 5, 1, 11, 3], np.int64)
    x = rng.standard_normal(64).astype(dtype)
    w = rng.standard_normal(2 * sums.block_stride + columns).astype(dtype)
    y = rng.standard_normal(2 * cells.y_image + 8 * columns).astype(dtype)
    expected = driver_definition(x, w, y, offsets, cells, sums, width, vectors)
    kernels.run(x.ctypes.data, w.ctypes.data, y.ctypes.data, offsets.ctypes.data, cells, sums)
    assert relative_error(y, expected) <= TOLERANCE[dtype]
    # a batch of two problems, overwriting
    batch = _llvm.Batch(problems=2, x_stride=3, w_stride=1, y_stride=y.size // 2)
    one_image = cells._replace(rows=2, image_rows=2)
    fresh = sums._replace(accumulate=0)
    out = np.zeros_like(y)
    expected = driver_definition(x, w, out, offsets, one_image, fresh, width, vectors, batch)
    kernels.run(x.ctypes.data, w.ctypes.data, out.ctypes.data, offsets.ctypes.data, one_image,
                fresh, batch)
    assert relative_error(out, expected) <= TOLERANCE[dtype]


def test_the_signature_is_generated_from_the_named_fields():
    ir = _llvm.module_ir(np.float64, 2, 3, 4)
    names = _llvm.Cells._fields + _llvm.Sums._fields + _llvm.Batch._fields
    assert "define void @drive(double* %x, double* %w, double* %y, i64* %offsets, " + ", ".join(
        f"i64 %{name}" for name in names) + ")" in ir
    # no adding of zero, no pointer moved by nothing
    assert not re.search(r"= add i64 \S+, 0\n|getelementptr [^\n]*, i64 0\n", ir)


def test_an_unknown_instruction_set_is_refused(monkeypatch):
    monkeypatch.setenv(_llvm.ISA_VARIABLE, "sse9")
    with pytest.raises(ValueError, match="CONVARITH_VECTOR_ISA='sse9' is not an instruction "
                                         "set .* use one of native, avx2, avx512, neon"):
        _llvm.vector_target()


avx2 = pytest.mark.skipif(not _llvm.target_named("avx2").runs_here,
                          reason="this CPU (or llvmlite) does not run AVX2 with FMA")


@pytest.fixture
def forced_avx2(monkeypatch):
    """The kernels made for AVX2 (8 floats a vector, 16 registers) on whatever runs
    AVX2 here, an AVX-512 machine included."""
    monkeypatch.setenv(_llvm.ISA_VARIABLE, "avx2")
    register_tiles._layout.cache_clear()
    yield
    register_tiles._layout.cache_clear()


@avx2
def test_avx2_target_is_what_runs(forced_avx2):
    assert _llvm.vector_width(np.float32) == 8 and _llvm.vector_width(np.float64) == 4
    assert _llvm.max_vectors() == 2
    kernels = _llvm.compiled(np.float32, 2)
    assert (kernels.width, kernels.rows) == (8, _llvm.block_rows(2)) == (8, 6)


@avx2
@pytest.mark.parametrize("seed", range(12))
def test_avx2_direct_against_definition(seed, forced_avx2):
    x, kernel, strides, dilation, pads, out = random_direct(9100 + seed)
    expected = reference_direct(pad(x, pads), kernel, strides, dilation, 1, out)
    for dtype in (np.float32, np.float64):
        what = (f"seed {9100 + seed}, {dtype.__name__}, x {x.shape}, kernel {kernel.shape}, "
                f"strides {strides}, dilation {dilation}, padding {pads}")
        y = register_tiles.direct(x.astype(dtype), kernel.astype(dtype), strides, dilation, 1,
                                  out, padding=pads, threads=2)
        assert y.dtype == dtype and y.shape == expected.shape, what
        assert relative_error(y, expected) <= TOLERANCE[dtype], what


@avx2
@pytest.mark.parametrize("seed", range(8))
def test_avx2_transposed_against_definition(seed, forced_avx2):
    x, kernel, strides, dilation, padding = random_transposed(9300 + seed)
    expected = reference_transposed(x, kernel, strides, dilation, padding)
    for dtype in (np.float32, np.float64):
        what = f"seed {9300 + seed}, {dtype.__name__}, x {x.shape}, kernel {kernel.shape}"
        y = register_tiles.transposed(x.astype(dtype), kernel.astype(dtype), strides, dilation,
                                      1, padding, expected.shape[1:-1], threads=2)
        assert relative_error(y, expected) <= TOLERANCE[dtype], what


@avx2
@pytest.mark.parametrize("seed", range(4))
def test_avx2_packed_products_against_matmul(seed, forced_avx2):
    rng = np.random.default_rng(9500 + seed)
    dtype = (np.float32, np.float64)[seed % 2]
    batch, cells, k = int(rng.integers(1, 20)), int(rng.integers(1, 70)), int(rng.integers(1, 90))
    f = _llvm.vector_width(dtype) * int(rng.integers(1, 7))
    v = rng.standard_normal((batch, cells, k)).astype(dtype)
    u = rng.standard_normal((batch, k, f)).astype(dtype)
    packed = register_tiles.pack_products(u)
    out = register_tiles.packed_matmul(v, packed, np.empty((batch, cells, f), dtype))
    expected = np.matmul(v.astype(np.float64), u.astype(np.float64))
    assert relative_error(out, expected) <= TOLERANCE[dtype], f"seed {9500 + seed}"


@avx2
def test_avx2_through_the_engine_in_a_fresh_process():
    """The environment variable alone switches every compiled path (a fresh process:
    nothing compiled before), the engine's choice and forced algorithms alike."""
    script = (
        "import numpy as np\n"
        "from convarith import ConvSpec\n"
        "from convarith.engine import conv\n"
        "from convarith.engine.algorithms import _llvm\n"
        "assert _llvm.vector_width(np.float32) == 8\n"
        "rng = np.random.default_rng(3)\n"
        "x = rng.standard_normal((2, 12, 11, 24))\n"
        "w = rng.standard_normal((3, 3, 24, 40))\n"
        "a = conv(x, w, ConvSpec(3, strides=2, padding='same'), algorithm='register_tiles')\n"
        "b = conv(x, w, ConvSpec(3, strides=2, padding='same'), algorithm='offset_gemm')\n"
        "assert np.linalg.norm(a - b) <= 1e-12 * np.linalg.norm(b)\n"
        "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, _llvm.ISA_VARIABLE: "avx2"})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_neon_module_compiles_for_aarch64(dtype):
    """The same IR, made for AArch64 with NEON (128-bit vectors, 32 registers), compiles
    to fused multiply-adds on vectors; it cannot run here."""
    pytest.importorskip("llvmlite")
    if _llvm._llvm() is None:
        pytest.skip("CONVARITH_JIT=0")
    neon = _llvm.target_named("neon")
    try:
        text = _llvm.assembly(neon, dtype, _llvm.max_vectors(neon))
    except RuntimeError as error:
        if "No available targets" in str(error) or "aarch64" in str(error).lower():
            pytest.skip(f"this llvmlite has no AArch64 backend: {error}")
        raise
    lanes = "4s" if dtype == np.float32 else "2d"
    assert "fmla\tv" in text and f".{lanes}" in text, text[:2000]
    assert "zmm" not in text and "ymm" not in text
    streaming = _llvm.assembly(neon, dtype, 1, streaming=True)
    assert "stnp" in streaming or "str" in streaming


@avx2
@pytest.mark.parametrize("seed", range(6))
def test_avx2_grouped_against_definition(seed, forced_avx2):
    """Groups merge to fill AVX2's 8-float vectors (16-float ones with AVX-512)."""
    x, kernel, strides, dilation, groups, pads, out = random_grouped(9600 + seed)
    expected = reference_direct(pad(x, pads), kernel, strides, dilation, groups, out)
    for dtype in (np.float32, np.float64):
        y = register_tiles.direct(x.astype(dtype), kernel.astype(dtype), strides, dilation,
                                  groups, out, padding=pads, threads=2)
        assert relative_error(y, expected) <= TOLERANCE[dtype], f"seed {9600 + seed} {dtype}"


@avx2
@pytest.mark.parametrize("seed", range(6))
def test_avx2_depthwise_against_definition(seed, forced_avx2):
    x, kernel, strides, dilation, pads, out = random_depthwise(9800 + seed)
    channels = x.shape[-1]
    expected = reference_direct(pad(x, pads), kernel, strides, dilation, channels, out)
    for dtype in (np.float32, np.float64):
        y = register_tiles.depthwise(x.astype(dtype), kernel.astype(dtype), strides, dilation,
                                     channels, out, padding=pads, threads=2)
        assert relative_error(y, expected) <= TOLERANCE[dtype], f"seed {9800 + seed} {dtype}"
