"""Register-tiled compiled kernels (``register_tiles``) against the definition and PyTorch.

Expected values come from the float64 definition written out tap by tap
(``_helpers.reference_direct`` / ``reference_transposed``), from
PyTorch's ``conv2d`` / ``conv_transpose2d`` and from float64 ``np.matmul``
(the packed batched products). Bounds: relative error ≤ 1e-5
in float32, ≤ 1e-10 in float64 (the kernels only change the order of the sum).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from _helpers import (
    assert_cheapest_applies,
    assert_runs_as_reference,
    reference_direct,
    reference_transposed,
    relative_error,
)
from convarith.engine import conv, thread_limit
from convarith.engine.algorithms import _llvm, _llvm_thin, register_tiles
from convarith.engine.dispatch import ConvProblem
from convarith.engine.padding import pad

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}

pytestmark = pytest.mark.skipif(
    not _llvm.available(), reason="no compiled kernels here (llvmlite, AVX2+FMA or AVX-512)")


@pytest.fixture(autouse=True)
def fresh_layouts():
    """Kernel layouts are remembered per shape; a test that watches what gets compiled
    needs them worked out again."""
    register_tiles._layout.cache_clear()
    yield
    register_tiles._layout.cache_clear()


def random_direct(seed):
    """A 1-D or 2-D convolution with zero padding (negative crops) that fits its input."""
    rng = np.random.default_rng(seed)
    while True:
        rank = int(rng.integers(1, 3))
        kernel_size = tuple(int(v) for v in rng.integers(1, 6, rank))
        strides = tuple(int(v) for v in rng.integers(1, 4, rank))
        dilation = tuple(int(v) for v in rng.integers(1, 3, rank))
        size = tuple(int(v) for v in rng.integers(1, 14, rank))
        pads = tuple((int(a), int(b)) for a, b in rng.integers(-1, 4, (rank, 2)))
        padded = [n + lo + hi for n, (lo, hi) in zip(size, pads)]
        out = tuple((p - (k - 1) * d - 1) // s + 1
                    for p, k, d, s in zip(padded, kernel_size, dilation, strides))
        if min(out) > 0:
            break
    channels = int(rng.choice([1, 3, 8, 21, 70]))
    # filters: below a vector, whole vectors, and blocks of vectors plus a rest
    filters = int(rng.choice([1, 5, 16, 32, 48, 64, 100, 136]))
    x = rng.standard_normal((int(rng.integers(1, 4)), *size, channels))
    kernel = rng.standard_normal((*kernel_size, channels, filters))
    return x, kernel, strides, dilation, pads, out


@pytest.mark.parametrize("seed", range(24))
def test_direct_against_definition(seed):
    x, kernel, strides, dilation, pads, out = random_direct(9100 + seed)
    expected = reference_direct(pad(x, pads), kernel, strides, dilation, 1, out)
    for dtype in (np.float32, np.float64):
        for threads in (1, 2):
            what = (f"seed {9100 + seed}, {dtype.__name__}, threads {threads}, x {x.shape}, "
                    f"kernel {kernel.shape}, strides {strides}, dilation {dilation}, "
                    f"padding {pads}")
            y = register_tiles.direct(x.astype(dtype), kernel.astype(dtype), strides, dilation,
                                      1, out, padding=pads, threads=threads)
            assert y.dtype == dtype and y.shape == expected.shape, what
            assert relative_error(y, expected) <= TOLERANCE[dtype], what


@pytest.mark.parametrize("seed", range(4))
def test_channel_steps_and_tiny_chunks_add_up(seed, monkeypatch):
    """Kernel panels split over steps of input channels (summed in place) and slabs of
    one row give the same result."""
    x, kernel, strides, dilation, pads, out = random_direct(9200 + seed)
    monkeypatch.setattr(register_tiles, "PANEL_BYTES", 1)  # one input channel per step
    monkeypatch.setattr(register_tiles, "SLAB_BYTES", 1)  # one output row per chunk
    assert len(register_tiles._channel_steps(9, x.shape[-1], 64, 16, 4, 1)) == x.shape[-1]
    expected = reference_direct(pad(x, pads), kernel, strides, dilation, 1, out)
    y = register_tiles.direct(x, kernel, strides, dilation, 1, out, padding=pads, threads=2)
    assert relative_error(y, expected) <= 1e-10, f"seed {9200 + seed}"


def test_unpadded_input_is_read_in_place_and_rows_span_blocks():
    """No padding: the kernels read the caller's array (no slab); a block of cells wraps
    from one output row to the next (OW = 5 is not a multiple of the block's rows)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 7, 7, 4))
    kernel = rng.standard_normal((3, 3, 4, 16))
    y = register_tiles.direct(x, kernel, (1, 1), (1, 1), 1, (5, 5))
    expected = reference_direct(x, kernel, (1, 1), (1, 1), 1, (5, 5))
    assert relative_error(y, expected) <= 1e-10


@pytest.mark.parametrize(("pads", "strides"), [(((0, 0), (0, 0)), (1, 1)),
                                               (((1, 1), (2, 0)), (1, 1)),
                                               (((1, 2), (1, 1)), (2, 2))])
def test_small_images_go_several_to_a_chunk(pads, strides, monkeypatch):
    """Many small images: a chunk is several whole images (rows wrap into the next
    image), read in place or from one padded copy of them all (one image per chunk
    when the copy would not fit the slab)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 5, 6, 3))
    kernel = rng.standard_normal((3, 3, 3, 20))
    padded = pad(x, pads)
    out = tuple((p - 3) // s + 1 for p, s in zip(padded.shape[1:3], strides))
    expected = reference_direct(padded, kernel, strides, (1, 1), 1, out)
    monkeypatch.setattr(register_tiles, "MIN_CHUNK_FLOPS", 1.0)  # cut as a large job
    for slab_bytes in (1 << 20, 1):
        monkeypatch.setattr(register_tiles, "SLAB_BYTES", slab_bytes)
        monkeypatch.setattr(register_tiles, "KERNEL_SLAB_BYTES", slab_bytes)
        jobs = register_tiles._jobs(x, kernel, strides, (1, 1), out, list(pads),
                                    np.empty((40, *out, 32)), 2)
        in_place = pads == ((0, 0), (0, 0))
        assert len(jobs) == (40 if slab_bytes == 1 and not in_place else 8)
        y = register_tiles.direct(x, kernel, strides, (1, 1), 1, out, padding=pads, threads=2)
        assert relative_error(y, expected) <= 1e-10, f"padding {pads}, slab {slab_bytes}"


@pytest.mark.parametrize("channels", [1, 8])
def test_large_outputs_are_stored_past_the_caches(monkeypatch, channels):
    """Outputs of STREAM_BYTES and more use non-temporal stores (aligned, whole lines),
    in the thin-input kernels (1 channel) and the others (8); the values are the same."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((64, 28, 28, channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, channels, 32)).astype(np.float32)
    pads = ((1, 1), (1, 1))
    assert 64 * 28 * 28 * 32 * 4 >= register_tiles.STREAM_BYTES
    built = []
    register_tiles._layout.cache_clear()
    if register_tiles.thin(channels):
        compiled_rows = _llvm_thin.compiled_rows

        def recording_rows(dtype, vectors, x_cell, streaming=False):
            built.append(streaming)
            return compiled_rows(dtype, vectors, x_cell, streaming)

        monkeypatch.setattr(_llvm_thin, "compiled_rows", recording_rows)
    else:
        compiled = _llvm.compiled

        def recording(dtype, vectors, streaming=False):
            built.append(streaming)
            return compiled(dtype, vectors, streaming)

        monkeypatch.setattr(_llvm, "compiled", recording)
    y = register_tiles.direct(x, kernel, (1, 1), (1, 1), 1, (28, 28), padding=pads)
    assert built == [True]
    expected = reference_direct(pad(x, pads), kernel, (1, 1), (1, 1), 1, (28, 28))
    assert relative_error(y, expected) <= 1e-6
    built.clear()
    register_tiles.direct(x[:2], kernel, (1, 1), (1, 1), 1, (28, 28), padding=pads)
    assert built == [False]  # a small output stays in the caches
    assert register_tiles._aligned(register_tiles.aligned_empty((2, 3, 4, 16), np.float32))
    assert not register_tiles._aligned(np.empty((2, 3, 4, 17), np.float32)[..., :16])


@pytest.mark.parametrize("seed", range(6))
def test_packed_products_match_matmul(seed):
    """Winograd's batched products: blocks of vectors plus a rest, and few rows."""
    rng = np.random.default_rng(9500 + seed)
    batch, cells, k = int(rng.integers(1, 40)), int(rng.integers(1, 130)), int(rng.integers(1, 300))
    dtype = (np.float32, np.float64)[seed % 2]
    width = _llvm.vector_width(dtype)
    f = width * int(rng.integers(1, 11))
    v = rng.standard_normal((batch, cells, k)).astype(dtype)
    u = rng.standard_normal((batch, k, f)).astype(dtype)
    packed = register_tiles.pack_products(u)
    out = register_tiles.packed_matmul(v, packed, np.empty((batch, cells, f), dtype))
    expected = np.matmul(v.astype(np.float64), u.astype(np.float64))
    assert relative_error(out, expected) <= TOLERANCE[dtype], f"seed {9500 + seed}"
    # not a whole number of vectors, or a dtype without kernels: not packed
    assert register_tiles.pack_products(u[..., : f - 1]) is None
    assert register_tiles.pack_products(u.astype(np.int32)) is None
    with pytest.raises(ValueError, match="packed_matmul needs"):
        register_tiles.packed_matmul(v[:, :, :-1], packed, out)


def random_transposed(seed):
    rng = np.random.default_rng(seed)
    while True:
        rank = int(rng.integers(1, 3))
        kernel_size = tuple(int(v) for v in rng.integers(1, 6, rank))
        strides = tuple(int(v) for v in rng.integers(1, 4, rank))
        dilation = tuple(int(v) for v in rng.integers(1, 3, rank))
        size = tuple(int(v) for v in rng.integers(1, 9, rank))
        padding = tuple((int(a), int(b)) for a, b in rng.integers(-1, 5, (rank, 2)))
        out = [(n - 1) * s + 1 + lo + hi - d * (k - 1)
               for n, s, (lo, hi), d, k in zip(size, strides, padding, dilation, kernel_size)]
        if any(s > 1 for s in strides) and min(out) > 0:
            break
    channels = int(rng.choice([1, 3, 8, 40]))
    filters = int(rng.choice([1, 7, 16, 32, 80]))
    x = rng.standard_normal((int(rng.integers(1, 20)), *size, channels))
    kernel = rng.standard_normal((*kernel_size, filters, channels))
    return x, kernel, strides, dilation, padding


@pytest.mark.parametrize("seed", range(20))
def test_transposed_phases_against_definition(seed):
    """Kernels smaller than the stride (phases only zeros reach), dilation, cropping
    padding, several images per chunk; every phase reads one shared padded input."""
    x, kernel, strides, dilation, padding = random_transposed(9300 + seed)
    expected = reference_transposed(x, kernel, strides, dilation, padding)
    for dtype in (np.float32, np.float64):
        what = (f"seed {9300 + seed}, {dtype.__name__}, x {x.shape}, kernel {kernel.shape}, "
                f"strides {strides}, dilation {dilation}, padding {padding}")
        y = register_tiles.transposed(x.astype(dtype), kernel.astype(dtype), strides, dilation,
                                      1, padding, expected.shape[1:-1], threads=2)
        assert y.dtype == dtype and y.shape == expected.shape, what
        assert relative_error(y, expected) <= TOLERANCE[dtype], what


def test_transposed_phases_against_pytorch():
    """The benchmark's up-sampling layer (4×4 stride 2, Keras "same"), via the engine."""
    torch = pytest.importorskip("torch")
    from convarith import ConvSpec

    rng = np.random.default_rng(9350)
    x = rng.standard_normal((3, 11, 9, 64)).astype(np.float32)
    kernel = rng.standard_normal((4, 4, 32, 64)).astype(np.float32)  # (K, out, in)
    spec = ConvSpec(4, strides=2, padding=1, transposed=True, rank=2)
    y = conv(x, kernel, spec, algorithm="register_tiles_phases")
    with torch.no_grad():
        expected = torch.nn.functional.conv_transpose2d(
            torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(kernel).permute(3, 2, 0, 1),
            stride=2, padding=1).permute(0, 2, 3, 1).numpy()
    assert y.shape == expected.shape and relative_error(y, expected) <= 1e-5


@pytest.mark.parametrize("seed", range(4))
def test_against_pytorch(seed):
    """Forced through the engine's ``conv`` (explicit padding, strides, dilation)."""
    torch = pytest.importorskip("torch")
    from convarith import ConvSpec

    rng = np.random.default_rng(9400 + seed)
    c, f = int(rng.choice([3, 16, 64])), int(rng.choice([16, 40, 64]))
    k, s, d = int(rng.integers(2, 6)), int(rng.integers(1, 3)), int(rng.integers(1, 3))
    x = rng.standard_normal((2, 17, 13, c)).astype(np.float32)
    w = rng.standard_normal((k, k, c, f)).astype(np.float32)
    pads = (k - 1) * d // 2
    spec = ConvSpec(k, strides=s, dilation=d, padding=pads, rank=2)
    y = conv(x, w, spec, algorithm="register_tiles")
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(
            torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w).permute(3, 2, 0, 1),
            stride=s, dilation=d, padding=pads).permute(0, 2, 3, 1).numpy()
    assert relative_error(y, expected) <= 1e-5, f"seed {9400 + seed}"


def test_dispatch_takes_the_cheapest_that_applies_for_common_layers():
    """1x1, wide 3x3, a 7x7 stem and one-channel first layers: whichever algorithm the
    costs measured here pick, it applies, is the cheapest, and computes the convolution
    (the register-tiled kernels apply to all of them where they are compiled)."""
    f32 = np.dtype(np.float32)
    problems = [
        ConvProblem((8, 28, 28, 64), (1, 1, 64, 64), (1, 1), (1, 1), 1, (28, 28), f32),
        ConvProblem((32, 14, 14, 256), (1, 1, 256, 256), (1, 1), (1, 1), 1, (14, 14), f32),
        ConvProblem((8, 58, 58, 64), (3, 3, 64, 64), (1, 1), (1, 1), 1, (56, 56), f32),
        ConvProblem((8, 117, 117, 3), (7, 7, 3, 64), (2, 2), (1, 1), 1, (56, 56), f32),
        ConvProblem((64, 30, 30, 1), (3, 3, 1, 32), (1, 1), (1, 1), 1, (28, 28), f32),
        ConvProblem((64, 32, 32, 1), (5, 5, 1, 16), (1, 1), (1, 1), 1, (28, 28), f32),
    ]
    for problem in problems:
        assert_cheapest_applies(problem)
        assert register_tiles.applies(problem) == _llvm.available(f32), problem
    # the results agree on the smaller ones (a first layer, a 1x1)
    assert_runs_as_reference(ConvProblem((4, 30, 30, 1), (3, 3, 1, 32), (1, 1), (1, 1), 1,
                                         (28, 28), f32), 9500)
    assert_runs_as_reference(ConvProblem((2, 14, 14, 64), (1, 1, 64, 64), (1, 1), (1, 1), 1,
                                         (14, 14), f32), 9501)


def test_block_rows_fit_the_registers():
    registers = 32 if _llvm.max_vectors() == 4 else 16
    for vectors in range(1, _llvm.max_vectors() + 1):
        rows = _llvm.block_rows(vectors)
        assert rows >= 1 and rows * vectors + vectors + 2 <= registers


def test_switched_off_without_llvmlite_and_by_environment():
    """``CONVARITH_JIT=0`` or no llvmlite: the algorithm does not apply, conv still works."""
    script = (
        "import sys\n"
        "if sys.argv[1] == 'blocked':\n"
        "    sys.modules['llvmlite'] = None\n"
        "    sys.modules['llvmlite.binding'] = None\n"
        "import numpy as np\n"
        "from convarith.engine import conv, available_algorithms\n"
        "from convarith.engine.algorithms import _llvm\n"
        "from convarith import ConvSpec\n"
        "assert not _llvm.available()\n"
        "x = np.ones((1, 9, 9, 3), np.float32)\n"
        "y = conv(x, np.ones((3, 3, 3, 16), np.float32), ConvSpec(3, padding='same'))\n"
        "assert y.shape == (1, 9, 9, 16) and y[0, 4, 4, 0] == 27.0\n"
        "try:\n"
        "    conv(x, np.ones((3, 3, 3, 16), np.float32), ConvSpec(3), algorithm='register_tiles')\n"
        "except ValueError as error:\n"
        "    assert 'does not apply' in str(error)\n"
        "else:\n"
        "    raise AssertionError('forced register_tiles must be refused')\n"
        "print('ok')\n")
    for mode, env in (("blocked", {}), ("env", {"CONVARITH_JIT": "0"})):
        done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                              text=True, timeout=120, env={**os.environ, **env})
        assert done.returncode == 0 and done.stdout.strip() == "ok", (mode, done.stderr)


def random_grouped(seed):
    """Groups of 1 … 32 channels in and out (below a vector, a vector, and between:
    merged groups, spills into the next group), 1-D and 2-D, strides, dilation, padding."""
    rng = np.random.default_rng(seed)
    groups = int(rng.choice([2, 3, 4, 6, 8, 32, 64]))
    group_in = int(rng.choice([1, 2, 4, 5, 16, 32]))
    group_out = int(rng.choice([1, 3, 4, 8, 16, 20, 32]))
    k, s, d = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(1, 3))
    rank = int(rng.integers(1, 3))
    size = tuple(int(v) for v in rng.integers(k * d + 1, 11, rank))
    pads = tuple((int(a), int(b)) for a, b in rng.integers(0, 3, (rank, 2)))
    x = rng.standard_normal((int(rng.integers(1, 4)), *size, groups * group_in))
    kernel = rng.standard_normal(((k,) * rank) + (group_in, groups * group_out))
    out = tuple((n + lo + hi - (k - 1) * d - 1) // s + 1 for n, (lo, hi) in zip(size, pads))
    return x, kernel, (s,) * rank, (d,) * rank, groups, pads, out


@pytest.mark.parametrize("seed", range(16))
def test_grouped_against_definition(seed):
    x, kernel, strides, dilation, groups, pads, out = random_grouped(9600 + seed)
    expected = reference_direct(pad(x, pads), kernel, strides, dilation, groups, out)
    for dtype in (np.float32, np.float64):
        what = (f"seed {9600 + seed}, {dtype.__name__}, x {x.shape}, kernel {kernel.shape}, "
                f"groups {groups}, strides {strides}, dilation {dilation}, padding {pads}")
        y = register_tiles.direct(x.astype(dtype), kernel.astype(dtype), strides, dilation,
                                  groups, out, padding=pads, threads=2)
        assert y.dtype == dtype and y.shape == expected.shape, what
        assert relative_error(y, expected) <= TOLERANCE[dtype], what


@pytest.mark.parametrize("seed", range(4))
def test_grouped_against_pytorch(seed):
    torch = pytest.importorskip("torch")
    from convarith import ConvSpec

    rng = np.random.default_rng(9700 + seed)
    groups = int(rng.choice([2, 4, 32]))
    channels, filters = groups * int(rng.choice([4, 8, 32])), groups * int(rng.choice([4, 16]))
    k, s = int(rng.choice([1, 3, 5])), int(rng.integers(1, 3))
    x = rng.standard_normal((2, 15, 12, channels)).astype(np.float32)
    w = rng.standard_normal((k, k, channels // groups, filters)).astype(np.float32)
    spec = ConvSpec(k, strides=s, padding=k // 2, groups=groups, rank=2)
    y = conv(x, w, spec, algorithm="register_tiles")
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(
            torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w).permute(3, 2, 0, 1),
            stride=s, padding=k // 2, groups=groups).permute(0, 2, 3, 1).numpy()
    assert relative_error(y, expected) <= 1e-5, f"seed {9700 + seed}"


def test_grouped_layers_take_the_cheapest_that_applies():
    """ResNeXt-50's grouped 3×3 (32 groups of 4 and 8), 4 groups of 32, and a 5×5 depthwise:
    the register-tiled kernels apply where they are compiled, and whichever algorithm the
    registered costs pick (``GROUPED_SCALE`` prices the per-group products) applies, is the
    cheapest, and computes the convolution."""
    f32 = np.dtype(np.float32)
    problems = [ConvProblem(shape, kernel, (1, 1), (1, 1), groups, (shape[1] - 2,) * 2, f32)
                for shape, kernel, groups in (((2, 58, 58, 128), (3, 3, 4, 128), 32),
                                              ((2, 30, 30, 256), (3, 3, 8, 256), 32),
                                              ((2, 58, 58, 128), (3, 3, 32, 128), 4))]
    for seed, problem in enumerate(problems):
        assert register_tiles.applies(problem) == _llvm.available(f32), problem
        assert_cheapest_applies(problem)
        assert_runs_as_reference(problem, 9600 + seed, batch=1)
    depthwise = ConvProblem((2, 60, 60, 96), (5, 5, 1, 96), (1, 1), (1, 1), 96, (56, 56), f32)
    assert_cheapest_applies(depthwise)
    assert_runs_as_reference(depthwise, 9603, batch=1)


def random_depthwise(seed):
    """Channels below, at and between whole vectors; 1×1 … 7×7; strides, dilation,
    zero padding and crops."""
    rng = np.random.default_rng(seed)
    while True:
        channels = int(rng.choice([2, 3, 16, 17, 40, 96, 130]))
        k, s, d = int(rng.choice([1, 3, 5, 7])), int(rng.integers(1, 3)), int(rng.integers(1, 3))
        rank = int(rng.integers(1, 3))
        size = tuple(int(v) for v in rng.integers((k - 1) * d + 1, 14, rank))
        pads = tuple((int(a), int(b)) for a, b in rng.integers(-1, 4, (rank, 2)))
        out = tuple((n + lo + hi - (k - 1) * d - 1) // s + 1 for n, (lo, hi) in zip(size, pads))
        if min(out) > 0:
            break
    x = rng.standard_normal((int(rng.integers(1, 4)), *size, channels))
    kernel = rng.standard_normal(((k,) * rank) + (1, channels))
    return x, kernel, (s,) * rank, (d,) * rank, pads, out


@pytest.mark.parametrize("seed", range(16))
def test_depthwise_against_definition(seed):
    x, kernel, strides, dilation, pads, out = random_depthwise(9800 + seed)
    channels = x.shape[-1]
    expected = reference_direct(pad(x, pads), kernel, strides, dilation, channels, out)
    for dtype in (np.float32, np.float64):
        what = (f"seed {9800 + seed}, {dtype.__name__}, x {x.shape}, kernel {kernel.shape}, "
                f"strides {strides}, dilation {dilation}, padding {pads}")
        y = register_tiles.depthwise(x.astype(dtype), kernel.astype(dtype), strides, dilation,
                                     channels, out, padding=pads, threads=2)
        assert y.dtype == dtype and y.shape == expected.shape, what
        assert relative_error(y, expected) <= TOLERANCE[dtype], what


def test_depthwise_against_pytorch_and_the_cheapest_chosen():
    """EfficientNet's 5×5 depthwise (stride 1 and 2) and MobileNet-style 7×7 through the
    engine; the dispatch takes the cheapest that applies for the 5×5 and a 3×3."""
    torch = pytest.importorskip("torch")
    from convarith import ConvSpec

    rng = np.random.default_rng(9850)
    for k, s, channels in ((5, 1, 96), (5, 2, 40), (7, 1, 33)):
        x = rng.standard_normal((2, 19, 17, channels)).astype(np.float32)
        w = rng.standard_normal((k, k, 1, channels)).astype(np.float32)
        spec = ConvSpec(k, strides=s, padding=k // 2, groups=channels, rank=2)
        y = conv(x, w, spec, algorithm="register_tiles_depthwise")
        with torch.no_grad():
            expected = torch.nn.functional.conv2d(
                torch.from_numpy(x).permute(0, 3, 1, 2),
                torch.from_numpy(w).permute(3, 2, 0, 1), stride=s, padding=k // 2,
                groups=channels).permute(0, 2, 3, 1).numpy()
        assert relative_error(y, expected) <= 1e-5, (k, s, channels)
    f32 = np.dtype(np.float32)
    large = ConvProblem((2, 60, 60, 96), (5, 5, 1, 96), (1, 1), (1, 1), 96, (56, 56), f32)
    small = ConvProblem((2, 58, 58, 96), (3, 3, 1, 96), (1, 1), (1, 1), 96, (56, 56), f32)
    for problem in (large, small):  # whichever the registered costs pick is the cheapest
        assert_cheapest_applies(problem)


def random_thin(seed):
    """A 2-D convolution of 1-4 input channels: rows shorter and longer than a block of
    cells, strides up to 3 (each a compiled cell step), channels past whole vectors."""
    rng = np.random.default_rng(seed)
    channels = int(rng.integers(1, 5))
    filters = int(rng.choice([1, 5, 16, 24, 32, 48, 64, 100, 136]))
    k = int(rng.choice([1, 2, 3, 5, 7]))
    s, d = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    size = (int(rng.integers(max(1, (k - 1) * d), 40)), int(rng.integers(1, 40)))
    pads = (k - 1) * d // 2 if rng.random() < 0.7 else int(rng.integers(0, 3))
    x = rng.standard_normal((int(rng.choice([1, 2, 5])), *size, channels))
    w = rng.standard_normal((k, k, channels, filters))
    return x, w, s, d, pads


@pytest.mark.parametrize("seed", range(4 if os.environ.get("CI") == "true" else 10))
def test_thin_inputs_against_pytorch(seed):
    """1-4 input channels (run by ``_llvm_thin``'s kernels) against PyTorch's conv2d, in
    float32 and float64, on one and two threads."""
    torch = pytest.importorskip("torch")
    from convarith import ConvSpec

    x, w, s, d, pads = random_thin(9700 + seed)
    assert register_tiles.thin(x.shape[-1])
    k = w.shape[0]
    if min(n + 2 * pads - (k - 1) * d for n in x.shape[1:3]) < 1:
        pads += (k - 1) * d  # the kernel fits the padded input
    spec = ConvSpec(k, strides=s, dilation=d, padding=pads, rank=2)
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(
            torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w).permute(3, 2, 0, 1),
            stride=s, dilation=d, padding=pads).permute(0, 2, 3, 1).numpy()
    for dtype in (np.float32, np.float64):
        for threads in (1, 2):
            with thread_limit(threads):
                y = conv(x.astype(dtype), w.astype(dtype), spec, algorithm="register_tiles")
            assert y.shape == expected.shape and y.dtype == dtype
            assert relative_error(y, expected) <= TOLERANCE[dtype], (
                f"seed {9700 + seed}, {dtype.__name__}, threads {threads}, x {x.shape}, "
                f"kernel {w.shape}, stride {s}, dilation {d}, padding {pads}")


def test_thin_kernels_with_avx2_vectors():
    """The thin-input kernels built for AVX2 (8 lanes, 16 registers: smaller blocks)
    against the definition, where this machine runs AVX2."""
    if not _llvm.target_named("avx2").runs_here:
        pytest.skip("this machine does not run AVX2")
    script = (
        "import numpy as np\n"
        "from convarith.engine.algorithms import register_tiles, _llvm\n"
        "assert _llvm.vector_width(np.float32) == 8\n"
        "rng = np.random.default_rng(9800)\n"
        "worst = 0.0\n"
        "for c, f, k, s, w in [(1, 32, 3, 1, 28), (3, 64, 7, 2, 37), (3, 16, 3, 2, 5),\n"
        "                      (4, 24, 5, 1, 13), (2, 8, 3, 3, 20)]:\n"
        "    x = rng.standard_normal((3, 9, (w - 1) * s + k, c))\n"
        "    kernel = rng.standard_normal((k, k, c, f))\n"
        "    out = ((9 - k) // s + 1, w)\n"
        "    y = register_tiles.direct(x, kernel, (s, s), (1, 1), 1, out)\n"
        "    ref = np.zeros((3, *out, f))\n"
        "    for a in range(k):\n"
        "        for b in range(k):\n"
        "            part = x[:, a:a + (out[0] - 1) * s + 1:s, b:b + (out[1] - 1) * s + 1:s]\n"
        "            ref += part @ kernel[a, b]\n"
        "    worst = max(worst, np.linalg.norm(y - ref) / np.linalg.norm(ref))\n"
        "print(worst)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, _llvm.ISA_VARIABLE: "avx2"})
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) <= 1e-10, done.stdout


def test_thin_blocks_fit_the_registers():
    for name in ("avx2", "avx512", "neon"):
        target = _llvm.target_named(name)
        for vectors in range(1, _llvm.max_vectors(target) + 1):
            cells = _llvm_thin.row_block_cells(vectors, target)
            assert 1 <= cells <= _llvm_thin.MAX_CELLS
            assert cells * vectors + vectors + 1 <= target.registers, (name, vectors)
