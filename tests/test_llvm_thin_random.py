"""``register_tiles`` on thin-input layers (1–4 input channels: RGB, grey and RGBA
stems) against PyTorch's ``conv2d`` in float64, with the kernel read where it lies
(``in_place``, outputs of whole vectors) and packed into panels, natively and with
the AVX2 kernels, on one thread (:mod:`.thin_call`'s single call where the padded input
is small) and two (:mod:`.thin_call`'s pieces of rows, or register_tiles' chunks), bit for
bit alike.

Configurations are drawn at random (the seed is in every failure message): 1 to 4
input channels, 1 to 70 outputs (whole vectors and not), 1×1 to 7×7 kernels (not
square too), strides 1 to 3, dilation 1 and 2, per-side zero padding (or a crop), 1 to 3
images of 5² to 40², float32 and float64. Bounds: relative error ≤ 1e-5 in
float32, ≤ 1e-10 in float64.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import relative_error
from convarith.engine.algorithms import _llvm, register_tiles

torch = pytest.importorskip("torch")

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
SEEDS = 8 if os.environ.get("CI") == "true" else 30

pytestmark = pytest.mark.skipif(
    not _llvm.available(), reason="no compiled kernels here (llvmlite, AVX2+FMA or AVX-512)")


@pytest.fixture(autouse=True)
def fresh_layouts():
    register_tiles._layout.cache_clear()
    yield
    register_tiles._layout.cache_clear()


def random_layer(seed):
    """A thin layer: ``x`` (N, H, W, C), kernel (KH, KW, C, F), strides, dilation, pads."""
    rng = np.random.default_rng(seed)
    channels = int(rng.integers(1, register_tiles.THIN_CHANNELS + 1))
    filters = int(rng.choice([1, 5, 16, 24, 32, 48, 64, 70]))
    kh, kw = (int(v) for v in rng.choice([1, 2, 3, 5, 7], size=2))
    if rng.random() < 0.5:
        kw = kh
    strides = tuple(int(v) for v in rng.integers(1, 4, size=2))
    dilation = tuple(int(v) for v in rng.choice([1, 1, 2], size=2))
    pads = tuple((int(a), int(b)) for a, b in rng.integers(-1, 4, size=(2, 2)))  # -1 crops
    batch = int(rng.integers(1, 4))
    dtype = [np.float32, np.float64][int(rng.integers(2))]
    reach = [d * (k - 1) + 1 for k, d in zip((kh, kw), dilation)]
    h, w = (int(rng.integers(max(5, r + 2), 41)) for r in reach)
    x = rng.standard_normal((batch, h, w, channels)).astype(dtype)
    kernel = rng.standard_normal((kh, kw, channels, filters)).astype(dtype)
    return x, kernel, strides, dilation, pads


def torch_conv(x, kernel, strides, dilation, pads):
    """PyTorch's float64 result for channels-last ``x`` and a ``(KH, KW, C, F)`` kernel."""
    xt = torch.from_numpy(np.asarray(x, np.float64).transpose(0, 3, 1, 2).copy())
    (top, bottom), (left, right) = pads
    xt = torch.nn.functional.pad(xt, (left, right, top, bottom))
    kt = torch.from_numpy(np.asarray(kernel, np.float64).transpose(3, 2, 0, 1).copy())
    with torch.no_grad():
        y = torch.nn.functional.conv2d(xt, kt, stride=strides, dilation=dilation)
    return y.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("isa", ["native", "avx2"])
@pytest.mark.parametrize("seed", range(SEEDS))
def test_thin_layers_against_torch(seed, isa, monkeypatch):
    if isa == "avx2":
        if not _llvm.target_named("avx2").runs_here:
            pytest.skip("this CPU (or llvmlite) does not run AVX2 with FMA")
        monkeypatch.setenv(_llvm.ISA_VARIABLE, "avx2")
    seed += 7100
    x, kernel, strides, dilation, pads = random_layer(seed)
    expected = torch_conv(x, kernel, strides, dilation, pads)
    what = (f"seed {seed} ({isa}): x {x.shape} {x.dtype}, kernel {kernel.shape}, "
            f"strides {strides}, dilation {dilation}, padding {pads}")
    width = _llvm.vector_width(x.dtype)
    # whole vectors of outputs: read in place; a non-contiguous copy: packed
    assert register_tiles.in_place(kernel, x.shape[-1]) == (kernel.shape[-1] % width == 0), what
    strided = np.asfortranarray(kernel)
    if not strided.flags.c_contiguous:  # (a 1×1 kernel of one channel is both)
        assert not register_tiles.in_place(strided, x.shape[-1]), what
    for k in (kernel, strided):
        results = []
        for threads in (1, 2):
            y = register_tiles.direct(x, k, strides, dilation, 1, expected.shape[1:3],
                                      padding=pads, threads=threads)
            results.append(y)
            error = relative_error(y, expected)
            assert y.shape == expected.shape, what
            assert error <= TOLERANCE[x.dtype.type], (
                f"{what}, threads {threads}, kernel contiguous "
                f"{k.flags.c_contiguous}: relative error {error:.2e}")
        # each cell summed alike whichever thread and piece of rows runs it
        assert np.array_equal(results[0], results[1]), f"{what}: one thread against two"


@pytest.mark.parametrize("layer, threads", [
    ((1, 112, 3, 32, 3, 2, ((0, 1), (0, 1))), (1, 2)),   # MobileNetV2's stem
    ((1, 112, 3, 64, 7, 2, ((3, 3), (3, 3))), (1, 2)),   # ResNet's
    ((2, 56, 1, 24, 5, 1, ((2, 2), (2, 2))), (1,)),      # 24 outputs: written unpadded
    ((2, 56, 3, 5, 3, 1, ((1, 1), (1, 1))), (1,)),
    ((16, 64, 4, 16, 3, 1, ((1, 1), (1, 1))), (1, 2)),   # input beyond the one-call slab
])
def test_peak_memory_of_thin_layers(layer, threads):
    """Peak extra bytes (output included) at most 1.5x (input + kernel + output), the
    padded input copy included. (Outputs not whole vectors shared among workers are
    still written padded, then cropped: up to 2.25x; one thread writes them unpadded.)"""
    from _helpers import peak_extra_bytes

    n, h, c, f, k, s, pads = layer
    rng = np.random.default_rng(7000)
    x = rng.standard_normal((n, h, h, c)).astype(np.float32)
    kernel = rng.standard_normal((k, k, c, f)).astype(np.float32)
    out = (h + sum(pads[0]) - k) // s + 1
    for workers in threads:
        peak = peak_extra_bytes(lambda workers=workers: register_tiles.direct(
            x, kernel, (s, s), (1, 1), 1, (out, out), padding=pads, threads=workers))
        ratio = peak / (x.nbytes + kernel.nbytes + n * out * out * f * 4)
        assert ratio <= 1.5, f"{layer}, threads {workers}: peak {peak} bytes = {ratio:.2f}x"
