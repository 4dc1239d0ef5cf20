"""Thin-input layers (1–4 input channels, one group) on the calling thread by a remembered
plan (:func:`.thin_call.planned`): the same calls as :func:`.thin_call.run`, so the same
values bit for bit, against PyTorch's ``conv2d`` in float64 too; the kernel's values are
read at each call (a kernel changed in place, or another one of the same shape, gives its
own results), and the plan is taken only where it applies.

Configurations are drawn at random (the seed is in every failure message): 1 to 4 input
channels, 16 to 64 outputs (whole vectors: the kernel read in place), 3×3 to 7×7
kernels, strides 1 and 2, dilation 1 and 2, per-side padding (or a crop), 1 or 2 images of
6² to 40², float32 and float64.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import peak_extra_bytes, relative_error
from convarith.engine.algorithms import _llvm, _native_jobs, register_tiles, thin_call
from test_llvm_thin_random import torch_conv  # PyTorch float64, channels last

torch = pytest.importorskip("torch")

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
SEEDS = 6 if os.environ.get("CI") == "true" else 25

pytestmark = pytest.mark.skipif(
    not _llvm.available(), reason="no compiled kernels here (llvmlite, AVX2+FMA or AVX-512)")


def draw(seed):
    rng = np.random.default_rng(seed)
    dtype = (np.float32, np.float64)[seed % 2]
    width = _llvm.vector_width(np.dtype(dtype))
    c = int(rng.integers(1, 5))
    f = width * int(rng.integers(1, max(2, 64 // width + 1)))
    k = int(rng.choice([3, 5, 7]))
    s, d = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    size = int(rng.integers(max(6, d * (k - 1)), 41))
    pads = tuple((int(rng.integers(-1, k)), int(rng.integers(-1, k))) for _ in range(2))
    out = tuple((size + lo + hi - d * (k - 1) - 1) // s + 1 for lo, hi in pads)
    x = rng.standard_normal((int(rng.integers(1, 3)), size, size, c)).astype(dtype)
    kernel = rng.standard_normal((k, k, c, f)).astype(dtype)
    return x, kernel, (s, s), (d, d), out, pads


@pytest.mark.parametrize("seed", range(SEEDS))
def test_the_plan_gives_the_calls_values_and_pytorchs(seed):
    x, kernel, strides, dilation, out, pads = draw(seed)
    where = f"seed {seed}: x {x.shape} {x.dtype}, kernel {kernel.shape}, strides {strides}, " \
            f"dilation {dilation}, pads {pads}"
    if min(out) < 1:
        pytest.skip(f"{where}: no output")
    y = thin_call.planned(x, kernel, strides, dilation, out, pads, 1)
    assert y is not None, where
    expected = torch_conv(x, kernel, strides, dilation, pads)
    assert y.shape == expected.shape, where
    assert relative_error(y, expected) <= TOLERANCE[x.dtype.type], where
    unplanned = np.empty_like(y)
    thin_call.run(x, kernel, strides, dilation, out, pads, unplanned)
    np.testing.assert_array_equal(y, unplanned, err_msg=where)
    # the kernel's values are read at each call, not remembered with the plan
    kernel *= -2
    again = thin_call.planned(x, kernel, strides, dilation, out, pads, 1)
    np.testing.assert_array_equal(again, -2 * y, err_msg=where)
    other = np.ascontiguousarray(kernel[..., ::-1])
    np.testing.assert_array_equal(thin_call.planned(x, other, strides, dilation, out, pads, 1),
                                  -2 * y[..., ::-1], err_msg=where)


def test_register_tiles_takes_the_plan_on_one_thread_only():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 112, 112, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 32)).astype(np.float32)
    pads = ((0, 1), (0, 1))
    thin_call.one_call_plan.cache_clear()
    y = register_tiles.direct(x, kernel, (2, 2), (1, 1), 1, (56, 56), padding=pads, threads=1)
    assert thin_call.one_call_plan.cache_info().misses == 1
    expected = torch_conv(x, kernel, (2, 2), (1, 1), pads)
    assert relative_error(y, expected) <= 1e-5
    # shared among two threads: the other way, the same values
    shared = register_tiles.direct(x, kernel, (2, 2), (1, 1), 1, (56, 56), padding=pads,
                                   threads=2)
    np.testing.assert_array_equal(shared, y)


@pytest.mark.parametrize("why, kernel_shape, x_dtype", [
    ("outputs not whole vectors (the kernel is packed)", (3, 3, 3, 24), np.float32),
    ("a kernel of another dtype", (3, 3, 3, 32), np.float64),
    ("not thin", (3, 3, 8, 32), np.float32),
])
def test_the_plan_declines(why, kernel_shape, x_dtype):
    x = np.ones((1, 16, 16, kernel_shape[2]), x_dtype)
    kernel = np.ones(kernel_shape, np.float32)
    if kernel_shape[-1] % _llvm.vector_width(np.dtype(np.float32)) == 0 and why.startswith("out"):
        pytest.skip("24 channels are whole vectors here")
    assert thin_call.planned(x, kernel, (1, 1), (1, 1), (16, 16), ((1, 1), (1, 1)), 1) is None, why


@pytest.mark.parametrize("seed", range(SEEDS))
def test_the_shared_plan_gives_the_shared_calls_values_and_pytorchs(seed):
    """On two threads the remembered table (:func:`.thin_call.shared_plan`) makes the calls
    :func:`.thin_call.run` makes on two threads (the same values bit for bit), and reads the
    kernel at each call; it declines crops and layers of too few rows to share (the
    draw's crops made paddings here, but for every fourth seed)."""
    x, kernel, strides, dilation, out, pads = draw(seed)
    if seed % 4:
        k, size = kernel.shape[0], x.shape[1]
        pads = tuple((max(0, lo), max(0, hi)) for lo, hi in pads)
        out = tuple((size + lo + hi - dilation[0] * (k - 1) - 1) // strides[0] + 1
                    for lo, hi in pads)
    where = f"seed {seed}: x {x.shape} {x.dtype}, kernel {kernel.shape}, strides {strides}, " \
            f"dilation {dilation}, pads {pads}"
    if min(out) < 1:
        pytest.skip(f"{where}: no output")
    y = thin_call.planned(x, kernel, strides, dilation, out, pads, 2)
    shares = thin_call.runs_shared(x, kernel, pads, out, strides, dilation, kernel.shape[-1], 2)
    if not shares or _native_jobs.kernel_runner() is None:
        assert y is None, where
        return
    assert y is not None, where
    expected = torch_conv(x, kernel, strides, dilation, pads)
    assert y.shape == expected.shape, where
    assert relative_error(y, expected) <= TOLERANCE[x.dtype.type], where
    unplanned = np.empty_like(y)
    thin_call.run(x, kernel, strides, dilation, out, pads, unplanned, threads=2)
    np.testing.assert_array_equal(y, unplanned, err_msg=where)
    kernel *= -2
    again = thin_call.planned(x, kernel, strides, dilation, out, pads, 2)
    np.testing.assert_array_equal(again, -2 * y, err_msg=where)


def test_a_stem_on_two_threads_by_the_shared_plan():
    """A 224² stem shared by two threads through :func:`.register_tiles.direct`: planned
    once (remembered), PyTorch's values, and those of the calling thread alone."""
    if _native_jobs.kernel_runner() is None:
        pytest.skip("no table runner here")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 224, 224, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 32)).astype(np.float32)
    pads = ((0, 1), (0, 1))
    thin_call.shared_plan.cache_clear()
    y = register_tiles.direct(x, kernel, (2, 2), (1, 1), 1, (112, 112), padding=pads,
                              threads=2)
    again = register_tiles.direct(x, kernel, (2, 2), (1, 1), 1, (112, 112), padding=pads,
                                  threads=2)
    info = thin_call.shared_plan.cache_info()
    assert (info.misses, info.hits) == (1, 1)
    assert relative_error(y, torch_conv(x, kernel, (2, 2), (1, 1), pads)) <= 1e-5
    np.testing.assert_array_equal(again, y)
    one = thin_call.planned(x, kernel, (2, 2), (1, 1), (112, 112), pads, 1)
    np.testing.assert_array_equal(one, y)


@pytest.mark.parametrize("size, stride, filters", [(3, 2, 32), (7, 2, 64), (3, 1, 64)])
def test_the_plans_memory(size, stride, filters):
    """Peak extra memory of a planned stem at most 1.5 times its input, kernel and output
    (the output itself and this thread's kept padded input, made by the first call)."""
    rng = np.random.default_rng(size)
    x = rng.standard_normal((1, 112, 112, 3)).astype(np.float32)
    kernel = rng.standard_normal((size, size, 3, filters)).astype(np.float32)
    p = size // 2
    out = ((112 + 2 * p - size) // stride + 1,) * 2
    pads = ((p, p), (p, p))
    y = thin_call.planned(x, kernel, (stride, stride), (1, 1), out, pads, 1)
    assert y is not None
    peak = peak_extra_bytes(lambda: thin_call.planned(x, kernel, (stride, stride), (1, 1),
                                                      out, pads, 1))
    assert peak <= 1.5 * (x.nbytes + kernel.nbytes + y.nbytes), (peak, y.nbytes)


def test_a_one_dimensional_thin_layer_through_the_plan():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 100, 1)).astype(np.float32)  # one channel (audio)
    kernel = rng.standard_normal((5, 1, 32)).astype(np.float32)
    thin_call.one_call_plan.cache_clear()
    y = register_tiles.direct(x, kernel, (2,), (1,), 1, (50,), padding=((2, 2),), threads=1)
    assert thin_call.one_call_plan.cache_info().misses == 1
    xt = torch.from_numpy(x.astype(np.float64).transpose(0, 2, 1).copy())
    kt = torch.from_numpy(kernel.astype(np.float64).transpose(2, 1, 0).copy())
    with torch.no_grad():
        expected = torch.nn.functional.conv1d(xt, kt, stride=2, padding=2).numpy()
    assert y.shape == (2, 50, 32)
    assert relative_error(y, expected.transpose(0, 2, 1)) <= 1e-5


def test_the_shared_plan_is_not_taken_once_spinning_is_turned_off(monkeypatch):
    """A remembered table needs the spinning helpers: with ``CONVARITH_SPIN_US=0`` set
    after it was made, the layer goes :func:`.register_tiles.direct`'s other way (the
    same values)."""
    if _native_jobs.kernel_runner() is None:
        pytest.skip("no table runner here")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 40, 40, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 32)).astype(np.float32)
    pads = ((1, 1), (1, 1))
    y = thin_call.planned(x, kernel, (1, 1), (1, 1), (40, 40), pads, 2)
    assert y is not None
    monkeypatch.setenv("CONVARITH_SPIN_US", "0")
    assert thin_call.planned(x, kernel, (1, 1), (1, 1), (40, 40), pads, 2) is None
    other = register_tiles.direct(x, kernel, (1, 1), (1, 1), 1, (40, 40), padding=pads,
                                  threads=2)
    np.testing.assert_array_equal(other, y)
    assert relative_error(y, torch_conv(x, kernel, (1, 1), (1, 1), pads)) <= 1e-5
