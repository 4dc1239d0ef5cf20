"""Poolings through ``engine.conv``'s remembered call plans (``pooling.bind``) and the
compiled global average, against PyTorch's and Keras's poolings.

Each call is made twice: the first plans it (every check of ``prepare``), the
second runs the remembered plan's bound function on the array as it is. Randomized
configurations (seeds in the messages) beyond the networks suite's: 1-3 spatial
axes, padding, dilation, ceil mode, ``count_include_pad`` both ways, "same"
padding, float64, channels-first data, with the compiled kernels, numba's loops
(``CONVARITH_JIT=0``-like) or NumPy's, and the AVX2 kernels where this CPU runs them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pytest

from _helpers import peak_extra_bytes
from convarith import ConvSpec
from convarith.engine import conv, pooling
from convarith.engine.algorithms import _llvm, _llvm_pool, _numba_pool
from convarith.engine.algorithms._threads import thread_limit

torch = pytest.importorskip("torch")
functional = pytest.importorskip("torch.nn.functional")

CONFIGS = 40 if os.environ.get("CI") == "true" else 300


@pytest.fixture(params=["compiled", "ctypes", "numba", "numpy"])
def mode(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which loops pool: llvmlite's kernels (through numba or ctypes), numba's, NumPy's."""
    if request.param in ("compiled", "ctypes"):
        made = _llvm_pool.global_average_kernel(np.float32)
        if made is None or (request.param == "compiled" and made.call is None):
            pytest.skip("no compiled kernels here (or no numba to call them through)")
        if request.param == "ctypes":
            kernel, average = _llvm_pool.pool_kernel, _llvm_pool.global_average_kernel
            monkeypatch.setattr(_llvm_pool, "pool_kernel", lambda dtype, kind: None if (
                k := kernel(dtype, kind)) is None else dataclasses.replace(k, call=None))
            monkeypatch.setattr(_llvm_pool, "global_average_kernel", lambda dtype: None if (
                k := average(dtype)) is None else dataclasses.replace(k, call=None))
        return str(request.param)
    monkeypatch.setattr(_llvm_pool, "pool_kernel", lambda dtype, kind: None)
    monkeypatch.setattr(_llvm_pool, "global_average_kernel", lambda dtype: None)
    if request.param == "numba" and _numba_pool.numba_kernels() is None:
        pytest.skip("no numba")
    if request.param == "numpy":
        monkeypatch.setattr(_numba_pool, "numba_kernels", lambda: None)
    return str(request.param)


def _torch_pool(x_first: np.ndarray, kind: str, k: tuple[int, ...], s: tuple[int, ...],
                p: tuple[int, ...], d: tuple[int, ...], ceil: bool, include: bool
                ) -> np.ndarray:
    """PyTorch's pooling of channels-first ``x_first``."""
    rank = x_first.ndim - 2
    xt = torch.from_numpy(x_first.copy())
    if kind == "max":
        fn = (functional.max_pool1d, functional.max_pool2d, functional.max_pool3d)[rank - 1]
        return fn(xt, k, s, p, d, ceil_mode=ceil).numpy()
    fn = (functional.avg_pool1d, functional.avg_pool2d, functional.avg_pool3d)[rank - 1]
    return fn(xt, k, s, p, ceil_mode=ceil, count_include_pad=include).numpy()


def _close(y: np.ndarray, expected: np.ndarray, note: str) -> None:
    assert y.shape == expected.shape, note
    assert y.dtype == expected.dtype and y.flags.c_contiguous, note
    tolerance = 2e-6 if y.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=tolerance, atol=tolerance, err_msg=note)


def _random_pool(rng: np.random.Generator, global_share: float = 0.25
                 ) -> tuple[ConvSpec, np.ndarray, tuple[Any, ...]]:
    """A random pooling a PyTorch function computes: the spec, a channels-last or -first
    input, and PyTorch's arguments (kind, k, s, p, d, ceil, include)."""
    rank = int(rng.choice([1, 2, 2, 3]))
    kind = str(rng.choice(["max", "avg"]))
    channels = int(rng.choice([1, 3, 16, 17, 64, 96, 130, 240]))
    batch = int(rng.integers(1, 4))
    if rng.random() < global_share:  # a global pool: one window over the whole input
        size = tuple(int(rng.integers(1, 9 if rank > 1 else 60)) for _ in range(rank))
        k, s, p, d = size, (1,) * rank, (0,) * rank, (1,) * rank
        ceil, include = False, True
    else:
        k = tuple(int(rng.integers(1, 4)) for _ in range(rank))
        s = tuple(int(rng.integers(1, 4)) for _ in range(rank))
        d = tuple(int(rng.choice([1, 1, 2])) if kind == "max" else 1 for _ in range(rank))
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        size = tuple(int(rng.integers((kk - 1) * dd + 1, 13 if rank == 3 else 24))
                     for kk, dd in zip(k, d))
        ceil, include = bool(rng.random() < 0.3), bool(rng.random() < 0.5)
    dtype = np.float32 if rng.random() < 0.7 else np.float64
    first = bool(rng.random() < 0.3)
    x = rng.standard_normal((batch, *size, channels)).astype(dtype)
    if first:
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    spec = ConvSpec(k, strides=s, padding=[(q, q) for q in p], dilation=d, pool=kind,
                    ceil_mode=ceil, count_include_pad=include, rank=rank,
                    data_format="channels_first" if first else "channels_last")
    return spec, x, (kind, k, s, p, d, ceil, include)


def test_planned_pools_match_pytorch(mode: str) -> None:
    # the first call plans, the second runs the remembered plan's bound function
    seed = 41
    rng = np.random.default_rng(seed)
    for case in range(CONFIGS // 4):
        spec, x, arguments = _random_pool(rng)
        first = spec.data_format == "channels_first"
        note = (f"{mode} seed {seed} case {case}: {arguments} on x {x.shape} "
                f"{x.dtype.name} {spec.data_format}")
        expected = _torch_pool(x if first else np.moveaxis(x, -1, 1), *arguments)
        if not first:
            expected = np.moveaxis(expected, 1, -1)
        with thread_limit(1):
            planned = conv(x, None, spec)
            remembered = conv(x, None, spec)
        _close(planned, expected, note + ", first call")
        _close(remembered, expected, note + ", remembered plan")


def test_planned_pools_on_other_layouts_match_pytorch(mode: str) -> None:
    # a strided view, then a C-contiguous array, then the view again: each call of the
    # same spec takes its own plan (the arrays' strides are in its key) and is right
    rng = np.random.default_rng(43)
    for kind, k in (("avg", 3), ("max", 2), ("avg", 6)):
        whole = rng.standard_normal((2, 6, 12, 33)).astype(np.float32)
        views = [whole[:, :, ::2, :32], np.ascontiguousarray(whole[:, :, ::2, :32]),
                 whole[:, :, 1::2, 1:]]
        spec = ConvSpec(k, strides=k // 2 or 1, pool=kind)
        for number, x in enumerate(views + views[:1]):
            expected = np.moveaxis(_torch_pool(
                np.moveaxis(x, -1, 1), kind, (k, k), (k // 2 or 1,) * 2, (0, 0), (1, 1),
                False, True), 1, -1)
            _close(conv(x, None, spec), expected, f"{mode} seed 43: {kind} {k} view {number}")


def test_same_padding_pools_match_keras(mode: str) -> None:
    keras = pytest.importorskip("keras")
    seed = 47
    rng = np.random.default_rng(seed)
    for case in range(CONFIGS // 20):  # (each new shape compiles JAX's reduce_window)
        rank = int(rng.choice([1, 2, 3]))
        kind = str(rng.choice(["max", "avg"]))
        k = tuple(int(rng.integers(1, 5)) for _ in range(rank))
        s = tuple(int(rng.integers(1, 4)) for _ in range(rank))
        size = tuple(int(rng.integers(1, 12 if rank == 3 else 20)) for _ in range(rank))
        x = rng.standard_normal((int(rng.integers(1, 3)), *size,
                                 int(rng.choice([1, 5, 16, 40])))).astype(np.float32)
        note = f"{mode} seed {seed} case {case}: {kind} k{k} s{s} 'same' on x {x.shape}"
        op = keras.ops.max_pool if kind == "max" else keras.ops.average_pool
        expected = np.asarray(op(x, k, s, padding="same"))
        spec = ConvSpec(k, strides=s, padding="same", pool=kind, rank=rank)
        with thread_limit(1):
            planned = conv(x, None, spec)
            remembered = conv(x, None, spec)
        np.testing.assert_allclose(planned, expected, rtol=2e-6, atol=2e-6, err_msg=note)
        np.testing.assert_allclose(remembered, expected, rtol=2e-6, atol=2e-6, err_msg=note)


def test_global_average_on_each_vector_isa(monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernel for the CONVARITH_VECTOR_ISA in force (read at each call), its
    # vector width that target's
    if _llvm_pool.global_average_kernel(np.float32) is None:
        pytest.skip("no compiled kernels here")
    rng = np.random.default_rng(53)
    for name in ("avx2", "native"):
        target = _llvm.target_named(name)
        if not target.runs_here:
            continue
        monkeypatch.setenv(_llvm.ISA_VARIABLE, name)
        for dtype in (np.float32, np.float64):
            kernel = _llvm_pool.global_average_kernel(dtype)
            assert kernel is not None and kernel.width == target.width(dtype), name
            for shape in ((1, 7, 7, 240), (3, 4, 4, 2051), (2, 56, 56, 17)):
                x = rng.standard_normal(shape).astype(dtype)
                spec = ConvSpec(shape[1:3], pool="avg")
                expected = np.moveaxis(_torch_pool(np.moveaxis(x, -1, 1), "avg", shape[1:3],
                                                   (1, 1), (0, 0), (1, 1), False, True), 1, -1)
                for _ in range(2):
                    _close(conv(x, None, spec), expected, f"seed 53: {name} {shape} {dtype}")


def test_global_average_module_compiles_for_avx2_and_neon() -> None:
    if _llvm._llvm() is None:
        pytest.skip("no llvmlite (or CONVARITH_JIT=0)")
    for name in ("avx2", "neon"):
        target = _llvm.target_named(name)
        for dtype in (np.float32, np.float64):
            ir = _llvm_pool.global_average_ir(dtype, target.width(dtype))
            assert "drive" in _llvm.ir_assembly(ir, target)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(16, 28, 28, 144), (1, 56, 56, 96), (16, 4, 4, 2048)])
def test_global_average_memory_within_the_bound(shape: tuple[int, ...], threads: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # peak extra bytes <= 1.5 x (input + output), split over the threads or not
    if threads == 2:
        monkeypatch.setattr(pooling, "GLOBAL_THREADED_VALUES", 0)
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    spec = ConvSpec(shape[1:3], pool="avg")
    with thread_limit(threads):
        out = conv(x, None, spec)
        peak = peak_extra_bytes(lambda: conv(x, None, spec))
    ratio = peak / (x.nbytes + out.nbytes)
    assert ratio <= 1.5, f"{shape} {threads} threads: peak {peak} bytes = {ratio:.2f}x"
    np.testing.assert_allclose(out[:, 0, 0], x.astype(np.float64).mean(axis=(1, 2)),
                               rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_global_pools_of_channels_first_data_match_pytorch(kind: str) -> None:
    # channels-first global pools reduce each channel's contiguous cells where they lie
    # (the remembered plan's calls), batched or not, views, float64, NaN and infinities
    seed = 59
    rng = np.random.default_rng(seed)
    for case in range(12):
        rank = 1 + case % 3
        size = tuple(int(rng.integers(1, 8)) for _ in range(rank))
        dtype = np.float32 if case % 2 else np.float64
        whole = rng.standard_normal((3, 2 * int(rng.integers(1, 70)), *size)).astype(dtype)
        if case % 4 == 3:
            whole.flat[rng.integers(whole.size, size=2)] = [np.nan, np.inf]
        x = whole[:, ::2] if case % 3 == 0 else whole
        spec = ConvSpec(size, pool=kind, rank=rank, data_format="channels_first")
        expected = _torch_pool(x, kind, size, (1,) * rank, (0,) * rank, (1,) * rank, False,
                               True)
        note = f"seed {seed} case {case}: global {kind} of x {x.shape} {x.dtype.name}"
        for call in range(3):
            _close(conv(x, None, spec), expected, f"{note}, call {call}")
            _close(conv(x[0], None, spec), expected[0], f"{note}, unbatched, call {call}")
