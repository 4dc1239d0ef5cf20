"""The depthwise row kernels (``_llvm_depthwise``) and ``register_tiles_depthwise``.

Expected values come from the float64 definition of a depthwise convolution
(``_helpers.reference_direct`` with one group per channel) and, for one module
called directly, from a NumPy loop over the sum stated in ``_llvm_depthwise``'s
docstring. Configurations are random (channels, kernel 1–7 per axis, strides,
dilation, padding and crops, row lengths that leave an overlapping last tile);
each failure names its seed. Bounds: relative error ≤ 1e-5 in float32, ≤ 1e-10
in float64. The AVX2 code is run on this machine too where it can (AVX2 code
runs on AVX-512 CPUs), and the AArch64 module is compiled.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from _helpers import TOLERANCE, compiled_isas, kernels_here, reference_direct, relative_error
from convarith.engine.algorithms import _llvm, _llvm_depthwise, register_tiles
from convarith.engine.padding import pad

CI = os.environ.get("CI") == "true"
ISAS = compiled_isas()
SEEDS = range(12 if CI else 60)


def random_case(seed: int):
    """A random 2-D (or 1-D) depthwise problem with zero padding and crops."""
    rng = np.random.default_rng(seed)
    rank = 1 if rng.random() < 0.2 else 2
    while True:
        channels = int(rng.choice([1, 2, 5, 8, 16, 24, 33, 64, 96, 150]))
        kernel = tuple(int(v) for v in rng.integers(1, 8, rank))
        strides = tuple(int(v) for v in rng.integers(1, 4, rank))
        dilation = tuple(int(v) for v in rng.integers(1, 4, rank))
        size = tuple(int(v) for v in rng.integers(1, 40, rank))
        pads = tuple((int(a), int(b)) for a, b in rng.integers(-1, 5, (rank, 2)))
        out = tuple((n + lo + hi - (k - 1) * d - 1) // s + 1
                    for n, (lo, hi), k, d, s in zip(size, pads, kernel, dilation, strides))
        if min(out) > 0:
            break
    x = rng.standard_normal((int(rng.integers(1, 4)), *size, channels))
    weights = rng.standard_normal((*kernel, 1, channels))
    return x, weights, strides, dilation, pads, out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("seed", SEEDS)
def test_register_tiles_depthwise_against_definition(seed, isa, monkeypatch):
    monkeypatch.setenv(_llvm.ISA_VARIABLE, isa)
    x, weights, strides, dilation, pads, out = random_case(4200 + seed)
    channels = x.shape[-1]
    expected = reference_direct(pad(x, pads), weights, strides, dilation, channels, out)
    for dtype in (np.float32, np.float64):
        what = (f"seed {4200 + seed} ({isa}, {dtype.__name__}): x {x.shape}, kernel "
                f"{weights.shape}, strides {strides}, dilation {dilation}, padding {pads}")
        for threads in (1, 2):
            y = register_tiles.depthwise(x.astype(dtype), weights.astype(dtype), strides,
                                         dilation, channels, out, padding=pads,
                                         threads=threads)
            assert y.dtype == dtype and y.shape == expected.shape, what
            error = relative_error(y, expected)
            assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.2e}"


def test_non_finite_input_reaches_only_its_windows():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 12, 30, 32)).astype(np.float32)
    x[0, 5, 17, 3] = np.inf
    weights = rng.standard_normal((5, 5, 1, 32)).astype(np.float32)
    y = register_tiles.depthwise(x, weights, (1, 1), (1, 1), 32, (12, 30),
                                 padding=((2, 2), (2, 2))) if kernels_here("native") else None
    if y is None:
        pytest.skip("no compiled kernels here")
    bad = ~np.isfinite(y)
    expected = np.zeros_like(bad)
    expected[0, 3:8, 15:20, 3] = True
    np.testing.assert_array_equal(bad, expected)


def drive_definition(x, w, y, fields, kernel, stride, dilation, cells, width):
    """The sum in ``_llvm_depthwise``'s docstring, one output value at a time (float64)."""
    f = dict(zip(_llvm_depthwise.DRIVE_FIELDS, fields))
    out = y.astype(np.float64)
    for g, r in itertools.product(range(f["images"]), range(f["rows"])):
        for c in range(f["blocks"]):
            for t in range(f["tiles"]):
                o0 = min(t * cells, f["last_start"])
                for m in range(cells):
                    for j in range(width):
                        total = 0.0
                        for a in range(f["kernel_rows"]):
                            for b in range(kernel):
                                xi = (g * f["x_image"] + r * f["x_row"] + a * f["x_tap_row"]
                                      + (o0 * stride + m * stride + b * dilation) * f["x_cell"]
                                      + c * width + j)
                                total += float(x[xi]) * float(w[(a * kernel + b) * f["w_tap"]
                                                                 + c * width + j])
                        out[g * f["y_image"] + r * f["y_row"] + (o0 + m) * f["y_cell"] + c * width + j] = total
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_module_against_its_docstring(isa, dtype, monkeypatch):
    monkeypatch.setenv(_llvm.ISA_VARIABLE, isa)
    kernel, stride, dilation, cells = 3, 2, 2, 3
    module = _llvm_depthwise.row_kernel(dtype, kernel=kernel, stride=stride, dilation=dilation,
                                        cells=cells)
    assert module is not None
    width = module.width
    images, blocks, rows, kernel_rows, row_length = 2, 2, 3, 2, 7
    tiles = -(-row_length // cells)
    cell_x = blocks * width + width  # cells further apart than their channels
    span = (row_length - 1) * stride + (kernel - 1) * dilation + 1
    x_tap_row = span * cell_x
    x_row = 2 * x_tap_row
    rng = np.random.default_rng(3)
    x_image = rows * x_row + kernel_rows * x_tap_row
    x = rng.standard_normal(images * x_image).astype(dtype)
    w = rng.standard_normal(kernel * kernel_rows * blocks * width).astype(dtype)
    y_cell, y_row = blocks * width, row_length * blocks * width + width
    y_image = rows * y_row + width
    y = np.full(images * y_image, 7.0, dtype)
    fields = (images, x_image, y_image, rows, tiles, row_length - cells, blocks, kernel_rows, x_row, x_tap_row, cell_x,
              y_row, y_cell, blocks * width)
    expected = drive_definition(x, w, y, fields, kernel, stride, dilation, cells, width)
    module.drive(x.ctypes.data, w.ctypes.data, y.ctypes.data, *fields)
    error = relative_error(y, expected)
    assert error <= TOLERANCE[dtype], f"{isa} {dtype.__name__}: relative error {error:.2e}"
    untouched = expected == 7.0
    assert untouched.any() and (y[untouched] == 7.0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_module_compiles_for_aarch64(dtype):
    if _llvm._llvm() is None:
        pytest.skip("llvmlite is not installed")
    neon = _llvm.target_named("neon")
    try:
        text = _llvm_depthwise.row_assembly(neon, dtype, kernel=5, stride=1, dilation=1,
                                            cells=_llvm_depthwise.row_cells(5, 56, neon))
    except RuntimeError as error:  # pragma: no cover - an llvmlite without AArch64
        pytest.skip(str(error))
    assert "fmla" in text


@pytest.mark.parametrize("kernel, stride, dilation, cells", [(5, 1, 1, 4), (3, 2, 1, 5),
                                                              (7, 1, 2, 3), (4, 3, 2, 6)])
def test_window_loads_each_column_once(kernel, stride, dilation, cells):
    window = _llvm_depthwise.row_window(kernel, stride, dilation, cells)
    pairs = [pair for column in window for pair in column]
    assert sorted(pairs) == [(m, b) for m in range(cells) for b in range(kernel)]
    columns = {m * stride + b * dilation for m in range(cells) for b in range(kernel)}
    assert len(window) == len(columns)
    assert len(window) <= cells * stride + (kernel - 1) * dilation


@pytest.mark.parametrize("isa", ["avx2", "avx512", "neon"])
@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
def test_tiles_fit_the_registers(isa, kernel):
    target = _llvm.target_named(isa)
    for length in (1, 7, 14, 28, 56, 57, 112):
        cells = _llvm_depthwise.row_cells(kernel, length, target)
        assert 1 <= cells <= min(length, _llvm_depthwise.MAX_CELLS)
        assert cells + kernel + 2 <= target.registers or cells == 1
        tiles = -(-length // cells)
        assert (tiles - 1) * cells < length <= tiles * cells


def torch_depthwise(x, weights, strides, dilation, pads):
    """PyTorch's depthwise ``conv2d`` of channels-last ``x`` with per-side zero padding
    (negative: crops), back in channels-last float64."""
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).double()
    (top, bottom), (left, right) = pads
    t = torch.nn.functional.pad(t, (left, right, top, bottom))
    k = torch.from_numpy(np.ascontiguousarray(np.moveaxis(weights[:, :, 0, :], -1, 0)[:, None]))
    y = torch.nn.functional.conv2d(t, k.double(), stride=strides, dilation=dilation,
                                   groups=x.shape[-1])
    return np.moveaxis(y.numpy(), 1, -1)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("seed", range(10 if CI else 40))
def test_in_place_cells_against_torch(seed, isa, monkeypatch):
    """Channel counts that fill whole vectors (the cells inside the input read it in
    place) and others, kernels 1-7, strides 1-2, dilation, padding on some sides, crops.
    Inputs of any size read in place here (not only from DEPTHWISE_IN_PLACE_BYTES on)."""
    monkeypatch.setenv(_llvm.ISA_VARIABLE, isa)
    monkeypatch.setattr(register_tiles, "DEPTHWISE_IN_PLACE_BYTES", 0)
    monkeypatch.setattr(register_tiles, "DEPTHWISE_IN_PLACE_CELLS", 1)
    rng = np.random.default_rng(9100 + seed)
    while True:
        channels = int(rng.choice([8, 16, 32, 48, 144, 3, 20, 40]))
        kernel = (int(rng.integers(1, 8)), int(rng.integers(1, 8)))
        strides = tuple(int(v) for v in rng.integers(1, 3, 2))
        dilation = tuple(int(v) for v in rng.choice([1, 1, 2], 2))
        size = tuple(int(v) for v in rng.integers(1, 30, 2))
        pads = tuple((int(a), int(b)) for a, b in rng.choice([-1, 0, 1, 2, 3, 8], (2, 2)))
        out = tuple((n + lo + hi - (k - 1) * d - 1) // s + 1
                    for n, (lo, hi), k, d, s in zip(size, pads, kernel, dilation, strides))
        if min(out) > 0:
            break
    x = rng.standard_normal((int(rng.integers(1, 4)), *size, channels))
    weights = rng.standard_normal((*kernel, 1, channels))
    expected = torch_depthwise(x, weights, strides, dilation, pads)
    for dtype in (np.float32, np.float64):
        y = register_tiles.depthwise(x.astype(dtype), weights.astype(dtype), strides,
                                     dilation, channels, out, padding=pads, threads=2)
        error = relative_error(y, expected)
        assert error <= TOLERANCE[dtype], (
            f"seed {9100 + seed} ({isa}, {dtype.__name__}): x {x.shape}, kernel {kernel}, "
            f"strides {strides}, dilation {dilation}, padding {pads}: relative error "
            f"{error:.2e}")


@pytest.mark.parametrize("isa", ISAS)
def test_outputs_past_the_cache_are_streamed_correctly(isa, monkeypatch):
    """An output of at least STREAM_BYTES (non-temporal stores), 3x3 and 5x5 stride 2."""
    monkeypatch.setenv(_llvm.ISA_VARIABLE, isa)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 40, 40, 192)).astype(np.float32)
    for kernel, stride, pads in ((3, 1, ((1, 1), (1, 1))), (5, 2, ((2, 2), (1, 2)))):
        weights = rng.standard_normal((kernel, kernel, 1, 192)).astype(np.float32)
        out = tuple((40 + lo + hi - kernel) // stride + 1 for lo, hi in pads)
        y = register_tiles.depthwise(x, weights, (stride, stride), (1, 1), 192, out,
                                     padding=pads)
        assert y.nbytes >= register_tiles.STREAM_BYTES or stride > 1
        expected = torch_depthwise(x.astype(np.float64), weights.astype(np.float64),
                                   (stride, stride), (1, 1), pads)
        assert relative_error(y, expected) <= TOLERANCE[np.float32], (kernel, stride)


@pytest.mark.parametrize("seed", range(200))
def test_inner_cells_and_kernel_row_groups(seed):
    """Against the definition: cell ``o`` reads input cells ``o·s - before + a·d``."""
    rng = np.random.default_rng(seed)
    size, kernel, stride, dilation = (int(v) for v in rng.integers(1, 9, 4))
    before = int(rng.integers(-2, 9))
    out = int(rng.integers(1, 12))
    reads = [[o * stride - before + a * dilation for a in range(kernel)] for o in range(out)]
    inside = [o for o in range(out) if all(0 <= i < size for i in reads[o])]
    lo, hi = register_tiles.inner_cells(size, (kernel - 1) * dilation + 1, stride, before, out)
    assert list(range(lo, hi)) == inside, f"seed {seed}"
    groups = register_tiles._kernel_row_groups(size, kernel, stride, dilation, before, out)
    assert [g[0] for g in groups[1:]] == [g[1] for g in groups[:-1]], f"seed {seed}"
    assert groups[0][0] == 0 and groups[-1][1] == out, f"seed {seed}"
    for r0, r1, a0, a1 in groups:
        for o in range(r0, r1):
            taps = [a for a in range(kernel) if 0 <= reads[o][a] < size]
            assert (taps == list(range(a0, a1))) if taps else a0 == a1, f"seed {seed}, row {o}"


@pytest.mark.parametrize("isa", ["native", "avx2"])
@pytest.mark.parametrize("seed", range(12 if CI else 60))
def test_depthwise_phases_against_definition(seed, isa, monkeypatch):
    """The transposed convolution by output phases against its definition: the zero-inserted,
    padded (or cropped) grid convolved with the flipped kernel (float64 reference). Without
    the row kernels (CONVARITH_JIT=0, or an instruction set this machine lacks) its phases
    run on the depthwise loop or NumPy."""
    from convarith.engine.algorithms import depthwise
    from convarith.engine.padding import zero_insert

    monkeypatch.setenv(_llvm.ISA_VARIABLE, isa)
    if seed % 2:  # the phases' inputs read in place whatever their size
        monkeypatch.setattr(register_tiles, "DEPTHWISE_IN_PLACE_BYTES", 0)
        monkeypatch.setattr(register_tiles, "DEPTHWISE_IN_PLACE_CELLS", 1)
    rng = np.random.default_rng(5300 + seed)
    while True:
        channels = int(rng.choice([1, 3, 8, 16, 32, 48, 144]))
        kernel = tuple(int(v) for v in rng.integers(1, 6, 2))
        strides = tuple(int(v) for v in rng.integers(1, 4, 2))
        dilation = tuple(int(v) for v in rng.choice([1, 1, 2], 2))
        size = tuple(int(v) for v in rng.integers(1, 14, 2))
        pads = tuple((int(a), int(b)) for a, b in rng.integers(-2, 6, (2, 2)))
        out = tuple((n - 1) * s + 1 + lo + hi - (k - 1) * d for n, s, (lo, hi), k, d
                    in zip(size, strides, pads, kernel, dilation))
        if min(out) > 0 and max(strides) > 1:
            break
    x = rng.standard_normal((int(rng.integers(1, 3)), *size, channels))
    weights = rng.standard_normal((*kernel, 1, channels))
    expected = reference_direct(zero_insert(x, strides, pads), weights[::-1, ::-1], (1, 1),
                                dilation, channels, out)
    for dtype in (np.float32, np.float64):
        y = depthwise.transposed(x.astype(dtype), weights.astype(dtype), strides, dilation,
                                 channels, pads, out, threads=2)
        error = relative_error(y, expected)
        assert y.dtype == dtype and error <= TOLERANCE[dtype], (
            f"seed {5300 + seed} ({isa}, {dtype.__name__}): x {x.shape}, kernel {kernel}, "
            f"strides {strides}, dilation {dilation}, padding {pads}: error {error:.2e}")


def test_strided_depthwise_gradients_against_torch():
    """MobileNet/EfficientNet-style strided depthwise layers: the input gradient (by
    output phases where they are cheaper than the zero-inserted grid) and the weight
    gradient against PyTorch."""
    torch = pytest.importorskip("torch")
    from convarith import ConvSpec
    from convarith.engine import conv_vjp

    rng = np.random.default_rng(21)
    for channels, size, kernel, stride, batch in ((96, 23, 3, 2, 2), (144, 16, 5, 2, 1),
                                                  (40, 9, 3, 3, 2), (7, 12, 3, 2, 1)):
        x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
        w = rng.standard_normal((kernel, kernel, 1, channels)).astype(np.float32)
        spec = ConvSpec(kernel, strides=stride, padding=kernel // 2, groups=channels)
        xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).double().requires_grad_()
        wt = torch.from_numpy(np.moveaxis(w[:, :, 0, :], -1, 0)[:, None].copy()).double()
        wt.requires_grad_()
        yt = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=kernel // 2,
                                        groups=channels)
        dy = rng.standard_normal(yt.shape)
        yt.backward(torch.from_numpy(dy))
        d_x, d_w, _ = conv_vjp(x, w, spec, np.moveaxis(dy, 1, -1).astype(np.float32))
        what = f"{channels} channels, {size}², {kernel}×{kernel} stride {stride}"
        assert relative_error(d_x, np.moveaxis(xt.grad.numpy(), 1, -1)) <= 1e-5, what
        expected_w = np.moveaxis(wt.grad.numpy()[:, 0], 0, -1)[:, :, None, :]
        assert relative_error(d_w, expected_w) <= 1e-5, what
