"""Pooling against PyTorch: the llvmlite kernels, numba's loops and the NumPy path,
forward and the max pool's input gradient.

Both read each window's cells inside the unpadded input (no padded copy). Random
configurations (1-3 spatial axes, windows 1-4, strides 1-3, dilation, padding up
to half the window, ceil mode, ``count_include_pad``, channel counts that leave a
vector tail, ties, NaN and infinities, float32 and float64) are held to
``torch.nn.functional``'s pooling; the networks' pooling shapes at batch 1 and 16;
windows wholly in the padding against the padded reference; worker threads
against one thread; peak memory against the networks benchmark's bound. The max
pool's gradient (first maximum, last NaN, a window of ``-inf`` values: its first
cell inside the input) against ``torch.autograd.grad``, also split over threads.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pytest

from _helpers import peak_extra_bytes
from convarith import ConvSpec
from convarith.engine import conv, conv_vjp, pooling, thread_limit
from convarith.engine.algorithms import _llvm, _llvm_pool, _numba_pool
from convarith.engine.padding import pad

torch = pytest.importorskip("torch")
functional = pytest.importorskip("torch.nn.functional")

CONFIGS = 30 if os.environ.get("CI") == "true" else 400

MODES = ["compiled", "ctypes", "numba", "numpy"]


@pytest.fixture(params=MODES)
def mode(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which loops pool: llvmlite's kernels (called through numba, or through ctypes as
    without numba), numba's (``CONVARITH_JIT=0``), or NumPy's."""
    if request.param in ("compiled", "ctypes"):
        kernel = _llvm_pool.pool_kernel(np.float32, "max")
        if kernel is None:
            pytest.skip("no compiled kernels here (no llvmlite, CONVARITH_JIT=0 or no AVX2)")
        if request.param == "compiled" and kernel.call is None:
            pytest.skip("no numba to call the kernels through")
        monkeypatch.setattr(pooling, "SMALL_WORK", 0)  # (small pools may run numba's loops)
        if request.param == "ctypes":
            compiled = _llvm_pool.pool_kernel
            monkeypatch.setattr(_llvm_pool, "pool_kernel", lambda dtype, kind: None if (
                made := compiled(dtype, kind)) is None else dataclasses.replace(made, call=None))
            average = _llvm_pool.global_average_kernel
            monkeypatch.setattr(_llvm_pool, "global_average_kernel", lambda dtype: None if (
                made := average(dtype)) is None else dataclasses.replace(made, call=None))
        return str(request.param)
    monkeypatch.setattr(_llvm_pool, "pool_kernel", lambda dtype, kind: None)
    monkeypatch.setattr(_llvm_pool, "global_average_kernel", lambda dtype: None)
    if request.param == "numba":
        if _numba_pool.numba_kernels() is None:
            pytest.skip("no numba")
    else:
        monkeypatch.setattr(_numba_pool, "numba_kernels", lambda: None)
    return str(request.param)


def _torch_pool(x: np.ndarray, kind: str, k: int, s: int, p: int, d: int, ceil: bool,
                include: bool) -> np.ndarray:
    rank = x.ndim - 2
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    if kind == "max":
        fn = (functional.max_pool1d, functional.max_pool2d, functional.max_pool3d)[rank - 1]
        yt = fn(xt, k, s, p, d, ceil_mode=ceil)
    else:
        fn = (functional.avg_pool1d, functional.avg_pool2d, functional.avg_pool3d)[rank - 1]
        yt = fn(xt, k, s, p, ceil_mode=ceil, count_include_pad=include)
    return np.moveaxis(yt.numpy(), 1, -1)


def _close(y: np.ndarray, expected: np.ndarray, note: str) -> None:
    assert y.shape == expected.shape, note
    assert y.flags.c_contiguous and y.dtype == expected.dtype, note
    tolerance = 2e-6 if y.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=tolerance, atol=tolerance, err_msg=note)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_pools_match_pytorch(mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    checked = 0
    for case in range(CONFIGS):
        kind = str(rng.choice(["max", "avg"]))
        k, s = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        d = int(rng.integers(1, 3)) if kind == "max" else 1
        p = int(rng.integers(0, k // 2 + 1))
        ceil, include = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
        rank = int(rng.choice([1, 2, 2, 3]))
        reach = (k - 1) * d + 1
        size = tuple(int(rng.integers(reach, reach + (10 if rank < 3 else 4)))
                     for _ in range(rank))
        channels = int(rng.choice([1, 3, 8, 16, 17, 33, 64, 70, 130]))
        dtype = np.float32 if rng.random() < 0.6 else np.float64
        x = rng.standard_normal((int(rng.integers(1, 4)), *size, channels)).astype(dtype)
        if rng.random() < 0.3:
            x = np.round(x)  # ties
        if rng.random() < 0.2:
            x.flat[rng.integers(x.size, size=3)] = [np.nan, np.inf, -np.inf]
        note = (f"{mode} seed {seed} case {case}: {kind} k{k} s{s} p{p} d{d} ceil={ceil} "
                f"count_include_pad={include} x {x.shape} {np.dtype(dtype).name}")
        try:
            spec = ConvSpec(k, strides=s, padding=p, dilation=d, pool=kind, ceil_mode=ceil,
                            count_include_pad=include, rank=rank)
            resolved = spec.resolve(x.shape)
        except ValueError:
            continue  # a setting the spec refuses (PyTorch refuses it too)
        with np.errstate(invalid="ignore"):
            expected = _torch_pool(x, kind, k, s, p, d, ceil, include)
            y = pooling.forward(x, resolved)
        _close(y, expected, note)
        checked += 1
    assert checked > CONFIGS // 2


# the networks' pooling layers (ResNet's stem pool, VGG / U-Net 2×2, global averages)
# and a spread around them: channels 3-1024, images 4²-112², batch 1 and 16
NETWORK_POOLS = [
    ("max", 3, 2, 1, False, 56, 64), ("max", 3, 2, 1, False, 28, 3),
    ("max", 3, 2, 1, True, 15, 256), ("max", 3, 1, 1, False, 14, 96),
    ("max", 2, 2, 0, False, 112, 64), ("max", 2, 2, 0, False, 56, 128),
    ("max", 2, 2, 0, False, 7, 512), ("max", 2, 2, 0, True, 7, 1024),
    ("max", 2, 1, 0, False, 4, 24), ("avg", 4, 4, 0, False, 4, 2048),
    ("avg", 3, 2, 1, False, 28, 40), ("avg", 2, 2, 0, True, 9, 200),
    ("avg", 7, 1, 0, False, 7, 672),
]


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("kind, k, s, p, ceil, size, channels", NETWORK_POOLS)
def test_network_pools_match_pytorch(mode: str, batch: int, kind: str, k: int, s: int,
                                     p: int, ceil: bool, size: int, channels: int) -> None:
    if batch == 16 and size * size * channels > 56 * 56 * 64 and os.environ.get("CI") == "true":
        pytest.skip("large batch: outside CI only")
    rng = np.random.default_rng(size * channels + batch)
    x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
    spec = ConvSpec(k, strides=s, padding=p, pool=kind, ceil_mode=ceil,
                    count_include_pad=False)
    note = f"{mode}: {kind} {k}x{k} s{s} p{p} ceil={ceil} x {x.shape}"
    _close(conv(x, None, spec), _torch_pool(x, kind, k, s, p, 1, ceil, False), note)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_windows_wholly_in_the_padding(mode: str, kind: str) -> None:
    # a padding wider than the window (ONNX and JAX allow it): windows that read no
    # input cell give -inf (max) or 0 / 0 (average without the padding), as the padded
    # reference does
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 5, 4, 19))
    spec = ConvSpec(2, strides=3, padding=((3, 2), (2, 4)), pool=kind, count_include_pad=False)
    resolved = spec.resolve(x.shape)
    planned = pooling.pool_plan(resolved)
    if kind == "max":
        xp = pad(x, planned.window_padding, "zeros", fill=-np.inf)
        expected = pooling.reduce_windows(xp, np.maximum, spec.kernel_size, spec.strides,
                                          spec.dilation, resolved.output_size)
    else:
        xp = pad(x, planned.window_padding)
        total = pooling.reduce_windows(xp, np.add, spec.kernel_size, spec.strides,
                                       spec.dilation, resolved.output_size)
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = total / pooling.divisor(resolved)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = pooling.forward(x, resolved)
    assert (np.isinf(y) | np.isnan(y)).any(), "no window lies wholly in the padding"
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=0, err_msg=f"{mode} {kind}")


def _torch_max_grad(x: np.ndarray, dy: np.ndarray, k: int, s: int, p: int, d: int,
                    ceil: bool) -> np.ndarray:
    rank = x.ndim - 2
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).requires_grad_(True)
    fn = (functional.max_pool1d, functional.max_pool2d, functional.max_pool3d)[rank - 1]
    yt = fn(xt, k, s, p, d, ceil_mode=ceil)
    (gx,) = torch.autograd.grad(yt, xt, torch.from_numpy(np.moveaxis(dy, -1, 1).copy()))
    return np.moveaxis(gx.numpy(), 1, -1)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_max_gradients_match_pytorch(mode: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    checked = 0
    for case in range(CONFIGS // 2):
        k, s, d = int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
        p, ceil = int(rng.integers(0, k // 2 + 1)), bool(rng.integers(0, 2))
        rank = int(rng.choice([1, 2, 2, 3]))
        reach = (k - 1) * d + 1
        size = tuple(int(rng.integers(reach, reach + (10 if rank < 3 else 4)))
                     for _ in range(rank))
        channels = int(rng.choice([1, 3, 16, 17, 64, 70, 130]))
        dtype = np.float32 if rng.random() < 0.6 else np.float64
        x = rng.standard_normal((int(rng.integers(1, 4)), *size, channels)).astype(dtype)
        if rng.random() < 0.3:
            x = np.round(x)  # ties: the first maximum in window order
        if rng.random() < 0.2:
            x.flat[rng.integers(x.size, size=3)] = [np.nan, np.inf, -np.inf]
        if rng.random() < 0.1:
            x[...] = -np.inf  # PyTorch: each window's first cell inside the input
        note = (f"{mode} seed {seed} case {case}: max k{k} s{s} p{p} d{d} ceil={ceil} "
                f"x {x.shape} {np.dtype(dtype).name}")
        try:
            resolved = ConvSpec(k, strides=s, padding=p, dilation=d, pool="max",
                                ceil_mode=ceil, rank=rank).resolve(x.shape)
        except ValueError:
            continue
        dy = rng.standard_normal((x.shape[0], *resolved.output_size, channels)).astype(dtype)
        _close(pooling.backward(x, resolved, dy), _torch_max_grad(x, dy, k, s, p, d, ceil),
               note)
        checked += 1
    assert checked > CONFIGS // 4


@pytest.mark.parametrize("seed", [0, 1])
def test_tiling_max_gradients_match_pytorch(mode: str, seed: int,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # windows side by side from the input's start (stride = window, no padding): the
    # compiled kernel writes every cell they cover (dy or zero), nothing zeroed first;
    # the cells past the last window (a size of k·m + r, floor mode) are zeroed apart
    monkeypatch.setattr(pooling, "THREADED_WORK", 0)  # split whatever the size
    rng = np.random.default_rng(300 + seed)
    for case in range(CONFIGS // 8):
        k, rank = int(rng.integers(1, 5)), int(rng.choice([1, 2, 2]))
        size = tuple(k * int(rng.integers(1, 7)) + int(rng.integers(0, k) if rng.random() < 0.5
                                                       else 0) for _ in range(rank))
        channels = int(rng.choice([1, 3, 16, 17, 64, 70, 130]))
        dtype = np.float32 if rng.random() < 0.6 else np.float64
        batch = int(rng.choice([1, 2, 5, 16]))
        x = rng.standard_normal((batch, *size, channels)).astype(dtype)
        if rng.random() < 0.4:
            x = np.round(x)  # ties: the first maximum in window order
        if rng.random() < 0.3:
            x.flat[rng.integers(x.size, size=3)] = [np.nan, np.inf, -np.inf]
        if rng.random() < 0.1:
            x[...] = -np.inf  # PyTorch: each window's first cell
        resolved = ConvSpec(k, strides=k, pool="max", rank=rank).resolve(x.shape)
        dy = rng.standard_normal((batch, *resolved.output_size, channels)).astype(dtype)
        if rng.random() < 0.2:
            dy.flat[rng.integers(dy.size)] = np.inf  # only its own cell takes it
        expected = _torch_max_grad(x, dy, k, k, 0, 1, False)
        for threads in (1, 2):
            with thread_limit(threads):
                _close(pooling.backward(x, resolved, dy), expected,
                       f"{mode} seed {seed} case {case}: max k{k} s{k} x {x.shape} "
                       f"{np.dtype(dtype).name}, {threads} threads")


@pytest.mark.parametrize("threads", [1, 2])
def test_tiling_max_gradients_zero_the_cells_past_the_last_window(
        threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # VGG-16's 2x2 stride-2 pool on 7²: the last row and column are in no window; the
    # gradient's arrays come back NaN-filled from the allocator here, so a cell the
    # kernel or the zeroing leaves alone shows
    monkeypatch.setattr(pooling, "THREADED_WORK", 0)
    monkeypatch.setattr(pooling, "STREAM_BYTES", 0)
    rng = np.random.default_rng(77)
    cases = [((16, 7, 7, 64), 2), ((3, 7, 9, 70), 2), ((2, 11, 10, 16), 3), ((5, 9, 32), 4)]
    expected_all = []
    for shape, k in cases:
        x = rng.standard_normal(shape).astype(np.float32)
        rank = len(shape) - 2
        resolved = ConvSpec(k, strides=k, pool="max", rank=rank).resolve(x.shape)
        dy = rng.standard_normal((shape[0], *resolved.output_size, shape[-1])).astype(np.float32)
        expected_all.append((x, resolved, dy, _torch_max_grad(x, dy, k, k, 0, 1, False)))
    empty_like, aligned_empty = np.empty_like, pooling._threads.aligned_empty

    def poisoned(a: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        out = empty_like(a, *args, **kwargs)
        out.fill(np.nan)
        return out

    def poisoned_aligned(shape: Any, dtype: Any) -> np.ndarray:
        out = aligned_empty(shape, dtype)
        out.fill(np.nan)
        return out

    monkeypatch.setattr(np, "empty_like", poisoned)
    monkeypatch.setattr(pooling._threads, "aligned_empty", poisoned_aligned)
    for x, resolved, dy, expected in expected_all:
        with thread_limit(threads):
            got = pooling.backward(x, resolved, dy)
        assert pooling._tiles(resolved, pooling.pool_plan(resolved))
        _close(got, expected, f"{x.shape} k{resolved.spec.kernel_size}, {threads} threads")


@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_tiling_max_gradients_match_pytorch(mode: str, seed: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # tiling windows whose gradient is written past the caches (forced at any size):
    # the same values as PyTorch's, on one thread and split, whether or not the
    # channels are whole vectors (the kernel streams only then)
    monkeypatch.setattr(pooling, "THREADED_WORK", 0)
    monkeypatch.setattr(pooling, "STREAM_BYTES", 0)
    rng = np.random.default_rng(400 + seed)
    streamed = 0
    # (the first case's channels are whole vectors: it streams wherever the kernel can)
    for case in range(max(2, CONFIGS // 16)):
        k, rank = int(rng.integers(1, 4)), int(rng.choice([1, 2, 2]))
        size = tuple(k * int(rng.integers(1, 6)) for _ in range(rank))
        channels = 64 if case == 0 else int(rng.choice([8, 16, 48, 64, 128, 256, 70]))
        dtype = np.float32 if case == 0 or rng.random() < 0.6 else np.float64
        batch = int(rng.choice([1, 2, 16]))
        x = rng.standard_normal((batch, *size, channels)).astype(dtype)
        if rng.random() < 0.4:
            x = np.round(x)
        if rng.random() < 0.3:
            x.flat[rng.integers(x.size, size=3)] = [np.nan, np.inf, -np.inf]
        resolved = ConvSpec(k, strides=k, pool="max", rank=rank).resolve(x.shape)
        dy = rng.standard_normal((batch, *resolved.output_size, channels)).astype(dtype)
        kernel = _llvm_pool.pool_kernel(dtype, "max_grad_stream")
        streamed += kernel is not None and pooling._streams(kernel.width, x)
        expected = _torch_max_grad(x, dy, k, k, 0, 1, False)
        for threads in (1, 2):
            with thread_limit(threads):
                _close(pooling.backward(x, resolved, dy), expected,
                       f"{mode} seed {seed} case {case}: max k{k} s{k} x {x.shape} "
                       f"{np.dtype(dtype).name}, {threads} threads, streamed")
    kernel = _llvm_pool.pool_kernel(np.float32, "max_grad_stream")
    if kernel is not None and kernel.width * 4 % 64 == 0:
        assert streamed > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_covering_max_gradients_match_pytorch(mode: str, seed: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # overlapping windows that cover every input cell (max_grad_first: each cell written
    # by the first window holding it, added to by the others, nothing zeroed): against
    # PyTorch on one thread and split (images, or pieces of channels for one image)
    monkeypatch.setattr(pooling, "THREADED_WORK", 0)
    rng = np.random.default_rng(500 + seed)
    covered = 0
    for case in range(CONFIGS // 8):
        k, rank = int(rng.integers(2, 6)), int(rng.choice([1, 2, 2]))
        s = int(rng.integers(1, k + 1))
        p, ceil = int(rng.integers(0, k // 2 + 1)), bool(rng.integers(0, 2))
        size = tuple(int(rng.integers(k, k + 12)) for _ in range(rank))
        channels = int(rng.choice([1, 5, 16, 64, 70, 130, 256]))
        dtype = np.float32 if rng.random() < 0.6 else np.float64
        x = rng.standard_normal((int(rng.choice([1, 2, 5])), *size, channels)).astype(dtype)
        if rng.random() < 0.4:
            x = np.round(x)
        if rng.random() < 0.3:
            x.flat[rng.integers(x.size, size=3)] = [np.nan, np.inf, -np.inf]
        if rng.random() < 0.1:
            x[...] = -np.inf
        try:
            resolved = ConvSpec(k, strides=s, padding=p, pool="max", ceil_mode=ceil,
                                rank=rank).resolve(x.shape)
        except ValueError:
            continue
        covered += pooling.pool_plan(resolved, x.dtype).first_rows is not None
        dy = rng.standard_normal((x.shape[0], *resolved.output_size, channels)).astype(dtype)
        if rng.random() < 0.2:
            dy.flat[rng.integers(dy.size)] = np.inf
        expected = _torch_max_grad(x, dy, k, s, p, 1, ceil)
        for threads in (1, 2):
            with thread_limit(threads):
                _close(pooling.backward(x, resolved, dy), expected,
                       f"{mode} seed {seed} case {case}: max k{k} s{s} p{p} ceil={ceil} "
                       f"x {x.shape} {np.dtype(dtype).name}, {threads} threads")
    assert covered > CONFIGS // 32


def test_first_writes_hold_what_earlier_windows_reach() -> None:
    # the third column against a direct count: a window's cells that an earlier one holds
    rng = np.random.default_rng(9)
    for _ in range(300):
        k, s = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        p, size = int(rng.integers(0, k)), int(rng.integers(1, 20))
        out = (size + 2 * p - k) // s + 1
        if out < 1:
            continue
        spans = pooling.window_spans(size, k, s, 1, p, out)
        table = pooling.first_writes(spans, size)
        cells = [set(range(a, a + n)) for a, n in spans.tolist()]
        if not all(cells) or set().union(*cells) != set(range(size)):
            assert table is None, (k, s, p, size)
            continue
        assert table is not None and (table[:, :2] == spans).all(), (k, s, p, size)
        for o, (a, n, held) in enumerate(table.tolist()):
            earlier = set().union(*cells[:o])
            assert held == sum(1 for cell in range(a, a + n) if cell in earlier), (k, s, p)
            assert all(cell in earlier for cell in range(a, a + held)), (k, s, p)


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_max_gradient_threads_give_one_threads_result(batch: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if _llvm_pool.pool_kernel(np.float32, "max_grad") is None:
        pytest.skip("no compiled kernels here")
    monkeypatch.setattr(pooling, "THREADED_WORK", 0)  # split whatever the size
    rng = np.random.default_rng(batch)
    x = np.round(rng.standard_normal((batch, 29, 28, 160)), 1).astype(np.float32)
    spec = ConvSpec(3, strides=2, padding=1, pool="max")
    dy = rng.standard_normal((batch, 15, 14, 160)).astype(np.float32)
    with thread_limit(1):
        alone, _, _ = conv_vjp(x, None, spec, dy)
    with thread_limit(2):
        split, _, _ = conv_vjp(x, None, spec, dy)
    np.testing.assert_array_equal(split, alone, err_msg=f"batch {batch}")
    _close(split, _torch_max_grad(x, dy, 3, 2, 1, 1, False), f"batch {batch}")


@pytest.mark.parametrize("loop", ["compiled", "ctypes", "numba", "gemv"])
def test_random_global_averages_match_pytorch(loop: str, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    # a global average (one window over the whole input): the compiled kernel (through
    # numba or ctypes), on several threads (forced here, whatever the size) as one table
    # of its calls, images or (one image) channels split, bit for bit one thread's
    # result; without it BLAS's gemv on one thread, on several numba's one-pass loop,
    # the images split over the threads, or without numba the gemv
    monkeypatch.setattr(pooling, "GLOBAL_THREADED_VALUES", 0)
    compiled = _llvm_pool.global_average_kernel
    if loop in ("compiled", "ctypes"):
        made = compiled(np.float32)
        if made is None or (loop == "compiled" and made.call is None):
            pytest.skip("no compiled kernels here (or no numba to call them through)")
        if loop == "ctypes":
            monkeypatch.setattr(_llvm_pool, "global_average_kernel", lambda dtype: None if (
                kernel := compiled(dtype)) is None else dataclasses.replace(kernel, call=None))
    else:
        monkeypatch.setattr(_llvm_pool, "global_average_kernel", lambda dtype: None)
    if loop == "gemv":
        monkeypatch.setattr(_numba_pool, "numba_kernels", lambda: None)
    elif loop == "numba" and _numba_pool.numba_kernels() is None:
        pytest.skip("no numba")
    rng = np.random.default_rng(21)
    for case in range(CONFIGS // 4):
        rank = int(rng.choice([1, 2, 2]))
        size = tuple(int(rng.integers(1, 9 if rank == 2 else 60)) for _ in range(rank))
        if rng.random() < 0.1:
            size = (56, 56)[:rank]
        channels = int(rng.choice([1, 3, 16, 17, 32, 96, 130, 240, 480, 2048]))
        dtype = np.float32 if rng.random() < 0.6 else np.float64
        x = rng.standard_normal((int(rng.integers(1, 7)), *size, channels)).astype(dtype)
        if rng.random() < 0.2:
            x.flat[rng.integers(x.size, size=3)] = [np.nan, np.inf, -np.inf]
        note = (f"{loop} seed 21 case {case}: global average of x {x.shape} "
                f"{np.dtype(dtype).name}")
        spec = ConvSpec(size, pool="avg", rank=rank)
        resolved = spec.resolve(x.shape)
        assert pooling.pool_plan(resolved).whole, note
        expected = _torch_pool(x, "avg", size[0] if rank == 1 else size, 1, 0, 1, False, True)
        with thread_limit(1), np.errstate(invalid="ignore"):
            alone = pooling.forward(x, resolved)
        with thread_limit(2), np.errstate(invalid="ignore"):
            split = pooling.forward(x, resolved)
        # NaN where an image holds NaN or both infinities, as PyTorch
        _close(alone, expected, note + ", one thread")
        _close(split, expected, note + ", two threads")
        if loop in ("compiled", "ctypes"):
            np.testing.assert_array_equal(split, alone, err_msg=note)


def test_random_pools_split_as_native_batches_match_pytorch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # every compiled pooling split over two threads as one table of the kernel's calls
    # (whatever its size), against PyTorch and against one thread bit for bit
    if _llvm_pool.pool_kernel(np.float32, "max") is None:
        pytest.skip("no compiled kernels here")
    monkeypatch.setattr(pooling, "NATIVE_THREADED_WORK", 0)
    monkeypatch.setattr(pooling, "SMALL_WORK", 0)  # (small pools may run numba's loops)
    rng = np.random.default_rng(31)
    for case in range(CONFIGS // 4):
        rank = int(rng.choice([1, 2, 2]))
        kind = str(rng.choice(["max", "avg"]))
        k, s = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        d = int(rng.choice([1, 1, 2])) if kind == "max" else 1
        p = int(rng.integers(0, k // 2 + 1))
        size = int(rng.integers((k - 1) * d + 1, 20))
        channels = int(rng.choice([1, 3, 16, 17, 64, 130]))
        dtype = np.float32 if rng.random() < 0.7 else np.float64
        x = rng.standard_normal((int(rng.integers(2, 6)), *(size,) * rank, channels)
                                ).astype(dtype)
        include = bool(rng.random() < 0.5)
        note = (f"seed 31 case {case}: {kind} pool k{k} s{s} p{p} d{d} on x {x.shape} "
                f"{np.dtype(dtype).name} count_include_pad={include}")
        spec = ConvSpec(k, strides=s, padding=p, dilation=d, pool=kind, rank=rank,
                        count_include_pad=include)
        with thread_limit(1):
            alone = conv(x, None, spec)
        with thread_limit(2):
            split = conv(x, None, spec)
        np.testing.assert_array_equal(split, alone, err_msg=note)
        _close(split, _torch_pool(x, kind, k, s, p, d, False, include), note)


def test_window_spans_against_the_positions() -> None:
    rng = np.random.default_rng(7)
    for case in range(300):
        size, k = int(rng.integers(1, 12)), int(rng.integers(1, 5))
        s, d, lo = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 4))
        out = int(rng.integers(0, 8))
        spans = pooling.window_spans(size, k, s, d, lo, out)
        for o in range(out):
            inside = [o * s - lo + t * d for t in range(k) if 0 <= o * s - lo + t * d < size]
            first, count = spans[o]
            note = f"case {case}: size {size} k{k} s{s} d{d} lo{lo} window {o}"
            assert count == len(inside), note
            assert not inside or first == inside[0], note


@pytest.mark.parametrize("split", ["native", "closures"])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_worker_threads_give_one_threads_result(kind: str, split: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # the chunks as a native batch (the helpers without the GIL) or as Python closures
    if _llvm_pool.pool_kernel(np.float32, kind) is None:
        pytest.skip("no compiled kernels here")
    monkeypatch.setattr(pooling, "THREADED_WORK", 0)  # split whatever the size
    monkeypatch.setattr(pooling, "NATIVE_THREADED_WORK", 0 if split == "native" else 1 << 62)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 57, 56, 64)).astype(np.float32)
    spec = ConvSpec(3, strides=2, padding=1, pool=kind, ceil_mode=True)
    with thread_limit(1):
        alone = conv(x, None, spec)
    with thread_limit(2):
        split = conv(x, None, spec)
    np.testing.assert_array_equal(split, alone)




@pytest.mark.parametrize("kind, k, s, p, size, channels", [
    ("max", 3, 2, 1, 56, 64), ("max", 2, 2, 0, 56, 128), ("avg", 3, 2, 1, 28, 64),
    ("avg", 3, 1, 1, 28, 32), ("max", 3, 1, 1, 28, 32),
])
def test_peak_memory_within_the_bound(mode: str, kind: str, k: int, s: int, p: int,
                                      size: int, channels: int) -> None:
    # the networks benchmark's bound: peak extra bytes <= 1.5 x (input + output)
    x = np.random.default_rng(3).standard_normal((2, size, size, channels)).astype(np.float32)
    spec = ConvSpec(k, strides=s, padding=p, pool=kind)
    with thread_limit(1):
        peak = peak_extra_bytes(lambda: conv(x, None, spec))
        out = conv(x, None, spec)
    ratio = peak / (x.nbytes + out.nbytes)
    assert ratio <= 1.5, f"{mode}: peak {peak} bytes = {ratio:.2f}x (input + output)"


def test_module_compiles_for_avx2_and_neon() -> None:
    if _llvm._llvm() is None:
        pytest.skip("no llvmlite (or CONVARITH_JIT=0)")
    for name in ("avx2", "neon"):
        target = _llvm.target_named(name)
        for dtype in (np.float32, np.float64):
            for kind in _llvm_pool.KINDS:
                ir = _llvm_pool.module_ir(dtype, kind, target.width(dtype))
                assert "drive" in _llvm.ir_assembly(ir, target)


def test_kernel_follows_the_vector_isa_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernels are remembered per CONVARITH_VECTOR_ISA setting, read at each call
    if _llvm_pool.pool_kernel(np.float32, "max") is None:
        pytest.skip("no compiled kernels here")
    for name in ("avx2", "native"):
        target = _llvm.target_named(name)
        if not target.runs_here:
            continue
        monkeypatch.setenv(_llvm.ISA_VARIABLE, name)
        kernel = _llvm_pool.pool_kernel(np.float32, "max")
        assert kernel is not None and kernel.width == target.width(np.float32), name
