"""A global average's remembered plan (``pooling.bind``): repeated calls, vector ISA
switches, one or several threads, and several threads calling one plan at once."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from convarith import ConvSpec
from convarith.engine import conv, pooling, thread_limit
from convarith.engine.algorithms import _llvm, _llvm_pool

torch = pytest.importorskip("torch")
functional = pytest.importorskip("torch.nn.functional")

SEED = 71


def _torch_global_average(x: np.ndarray) -> np.ndarray:
    """PyTorch's average over every cell of channels-last ``x``, in float64, channels-last."""
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64))
    rank = x.ndim - 2
    pool = getattr(functional, f"avg_pool{rank}d")
    y = pool(xt, tuple(x.shape[1:-1]))
    return np.moveaxis(y.numpy(), 1, -1)


def _close(y: np.ndarray, expected: np.ndarray, note: str) -> None:
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(y, expected, rtol=2e-6, atol=2e-6 * scale, err_msg=note)


@pytest.mark.parametrize("threaded", [False, True])
def test_repeated_calls_across_isa_switches_match_pytorch(threaded: bool,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    # one plan per shape, called again after the vector ISA setting changes: each call
    # reads the kernel in use, returns a new array, and leaves earlier results alone
    if _llvm_pool.global_average_kernel(np.float32) is None:
        pytest.skip("no compiled kernels here")
    if threaded:
        monkeypatch.setattr(pooling, "GLOBAL_THREADED_VALUES", 0)
    isas = [name for name in ("native", "avx2") if _llvm.target_named(name).runs_here]
    rng = np.random.default_rng(SEED)
    shapes = [(16, 4, 4, 1280), (1, 4, 4, 2048), (3, 7, 7, 33), (2, 5, 240), (2, 3, 2, 2, 17)]
    for shape in shapes:
        for dtype in (np.float32, np.float64):
            spec = ConvSpec(shape[1:-1], pool="avg", rank=len(shape) - 2)
            results = []
            for call, isa in enumerate(isas * 2):
                monkeypatch.setenv(_llvm.ISA_VARIABLE, isa)
                x = rng.standard_normal(shape).astype(dtype)
                note = (f"seed {SEED}: {shape} {np.dtype(dtype).name} call {call} isa {isa} "
                        f"threaded={threaded}")
                with thread_limit(2 if threaded else 1):
                    y = conv(x, None, spec)
                assert y.shape == (shape[0], *(1,) * (len(shape) - 2), shape[-1]), note
                assert y.dtype == dtype, note
                _close(y, _torch_global_average(x), note)
                results.append((y, y.copy()))
            for number, (y, kept) in enumerate(results):  # no later call wrote over it
                np.testing.assert_array_equal(y, kept, err_msg=f"seed {SEED}: {shape} "
                                              f"result {number} changed by a later call")


def test_threads_calling_one_plan_at_once_get_their_own_results(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the threaded plan's table of calls is filled per call: several threads running the
    # same remembered plan at once each get the average of their own input
    if _llvm_pool.global_average_kernel(np.float32) is None:
        pytest.skip("no compiled kernels here")
    monkeypatch.setattr(pooling, "GLOBAL_THREADED_VALUES", 0)
    shape = (4, 4, 4, 96)
    spec = ConvSpec(4, pool="avg")
    inputs = [np.random.default_rng(SEED + i).standard_normal(shape).astype(np.float32)
              for i in range(4)]
    expected = [x.astype(np.float64).mean(axis=(1, 2), keepdims=True) for x in inputs]
    with thread_limit(2):
        conv(inputs[0], None, spec)  # the plan, made once
    failures: list[str] = []

    def work(i: int) -> None:
        with thread_limit(2):
            for call in range(40):
                y = conv(inputs[i], None, spec)
                if not np.allclose(y, expected[i], rtol=2e-6, atol=2e-6):
                    failures.append(f"seed {SEED + i}: thread {i} call {call}")
                    return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


@pytest.mark.parametrize("filler", [True, False])
def test_split_plan_with_and_without_the_table_filler_matches_pytorch(
        filler: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # the threaded plan fills its table of calls through numba (the arrays' addresses
    # and the table's), or without numba through .ctypes; either way each call's result
    # is PyTorch's, one thread's bit for bit, and a new array
    if _llvm_pool.global_average_kernel(np.float32) is None:
        pytest.skip("no compiled kernels here")
    if filler and _llvm_pool.table_filler() is None:
        pytest.skip("no numba")
    if not filler:
        monkeypatch.setattr(_llvm_pool, "table_filler", lambda: None)
    rng = np.random.default_rng(SEED + 5)
    for shape in [(16, 4, 4, 2048), (5, 7, 7, 240), (1, 3, 3, 4100), (3, 9, 130)]:
        for dtype in (np.float32, np.float64):
            spec = ConvSpec(shape[1:-1], pool="avg", rank=len(shape) - 2)
            note = f"seed {SEED + 5}: {shape} {np.dtype(dtype).name} filler={filler}"
            results = []
            for _ in range(3):
                x = rng.standard_normal(shape).astype(dtype)
                monkeypatch.setattr(pooling, "GLOBAL_THREADED_VALUES", 1 << 40)
                with thread_limit(1):
                    alone = conv(x, None, spec)
                monkeypatch.setattr(pooling, "GLOBAL_THREADED_VALUES", 0)
                with thread_limit(2):
                    y = conv(x, None, spec)
                np.testing.assert_array_equal(y, alone, err_msg=note)
                _close(y, _torch_global_average(x), note)
                results.append((y, y.copy()))
            for y, kept in results:
                np.testing.assert_array_equal(y, kept, err_msg=note)
