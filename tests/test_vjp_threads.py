"""Which threads ``conv_vjp``'s two gradients run on, by the layer's size: below
``TINY_BACKWARD_FLOPS`` both on the calling thread, up to ``SMALL_BACKWARD_FLOPS`` (with
exactly two workers up to ``TWO_CORES_FLOPS`` for one image) side by side on two workers (one thread
each), above that one after the other."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from convarith import ConvSpec, engine
from convarith.engine import core
from convarith.engine.algorithms import _threads


@pytest.fixture(autouse=True)
def _constants_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are the constants' choice: no mode timed on the first calls
    (:mod:`convarith.engine.gradient_modes`, tested on its own)."""
    monkeypatch.setenv("CONVARITH_AUTOTUNE", "0")


@pytest.mark.parametrize("channels, size, batch, two_cores", [
    (8, 8, 1, None), (32, 28, 4, None), (64, 32, 16, None), (64, 56, 1, None),
    (64, 56, 1, 1e8)])
def test_gradients_threads_by_layer_size(channels: int, size: int, batch: int,
                                         two_cores: float | None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if two_cores is not None:  # a layer above the two workers' side-by-side range
        monkeypatch.setattr(core, "TWO_CORES_FLOPS", two_cores)
    seen: dict[str, tuple[int, Any]] = {}
    transposed, weight_grad = core.transposed_conv, core._weight_grad

    def spy_input(*args: Any, **kwargs: Any) -> Any:
        seen["input"] = (threading.get_ident(), _threads._LIMIT.get())
        return transposed(*args, **kwargs)

    def spy_kernel(*args: Any, **kwargs: Any) -> Any:
        seen["kernel"] = (threading.get_ident(), _threads._LIMIT.get())
        return weight_grad(*args, **kwargs)

    handed_out: list[str] = []
    pair = core.run_pair

    def spy_pair(first: Any, second: Any) -> Any:
        handed_out.append("pair")
        return pair(first, second)

    monkeypatch.setattr(core, "transposed_conv", spy_input)
    monkeypatch.setattr(core, "_weight_grad", spy_kernel)
    monkeypatch.setattr(core, "run_pair", spy_pair)
    rng = np.random.default_rng(channels * size)
    x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, channels, channels)).astype(np.float32)
    spec = ConvSpec(3, padding="same", rank=2)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    flops = 2 * kernel.size * batch * size * size
    with engine.thread_limit(2):
        if _threads.worker_count() < 2:
            pytest.skip("one core: every gradient runs on it")
        engine.conv_vjp(x, kernel, spec, dy)
    caller = threading.get_ident()
    if flops < core.TINY_BACKWARD_FLOPS:
        assert seen["input"] == seen["kernel"] == (caller, 1), flops
        assert handed_out == [], flops
    elif flops < core.SMALL_BACKWARD_FLOPS or (
            flops < core.TWO_CORES_FLOPS and core._side_by_side_on_two(x, kernel, dy, 2)):
        assert batch == 1 or flops < core.SMALL_BACKWARD_FLOPS
        # handed to two workers, one job each; which thread takes which is the
        # scheduler's (a helper that starts late leaves both to the caller)
        assert handed_out == ["pair"], flops
        assert seen["input"][1] == seen["kernel"][1] == 1, flops
    else:
        assert seen["input"] == seen["kernel"] == (caller, 2), flops
        assert handed_out == [], flops


def test_large_operands_run_each_gradient_on_every_worker(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Under SMALL_BACKWARD_FLOPS but with x and dy above SIDE_BY_SIDE_BYTES the two
    gradients run one after the other on every worker (both would stream from memory at
    once side by side), with the same values."""
    seen: dict[str, Any] = {}
    transposed, weight_grad = core.transposed_conv, core._weight_grad

    def spy_input(*args: Any, **kwargs: Any) -> Any:
        seen["input"] = (threading.get_ident(), _threads._LIMIT.get())
        return transposed(*args, **kwargs)

    def spy_kernel(*args: Any, **kwargs: Any) -> Any:
        seen["kernel"] = (threading.get_ident(), _threads._LIMIT.get())
        return weight_grad(*args, **kwargs)

    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 56, 56, 64)).astype(np.float32)
    kernel = rng.standard_normal((1, 1, 64, 32)).astype(np.float32)
    spec = ConvSpec(1, rank=2)
    dy = rng.standard_normal((4, 56, 56, 32)).astype(np.float32)
    flops = 2 * kernel.size * 4 * 56 * 56
    assert core.TINY_BACKWARD_FLOPS <= flops < core.SMALL_BACKWARD_FLOPS
    with engine.thread_limit(2):
        if _threads.worker_count() < 2:
            pytest.skip("one core: every gradient runs on it")
        expected = engine.conv_vjp(x, kernel, spec, dy)
        monkeypatch.setattr(core, "transposed_conv", spy_input)
        monkeypatch.setattr(core, "_weight_grad", spy_kernel)
        monkeypatch.setattr(core, "SIDE_BY_SIDE_BYTES", x.nbytes + dy.nbytes - 1)
        result = engine.conv_vjp(x, kernel, spec, dy)
    caller = threading.get_ident()
    assert seen["input"] == seen["kernel"] == (caller, 2)
    for got, want in zip(result[:2], expected[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("groups, handed", [(32, True), (1, False)])
def test_grouped_layers_count_their_slower_kernels(groups: int, handed: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A grouped layer's multiply-adds count GROUPED_TINY_SCALE times against
    TINY_BACKWARD_FLOPS (its kernels run at a fraction of a dense layer's rate): ResNeXt's
    3×3 s2 g32 256 on one 28² image is handed to two workers, while a dense layer of as
    many multiply-adds stays on the calling thread; the values are the same either way."""
    handed_out: list[str] = []
    pair = core.run_pair

    def spy_pair(first: Any, second: Any) -> Any:
        handed_out.append("pair")
        return pair(first, second)

    rng = np.random.default_rng(groups)
    channels = 256 if groups > 1 else 32  # (the dense layer: 256·8 = 32·64 inputs per tap)
    filters = 256 if groups > 1 else 64
    x = rng.standard_normal((1, 28, 28, channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, channels // groups, filters)).astype(np.float32)
    spec = ConvSpec(3, strides=2, padding="same", groups=groups, rank=2)
    dy = rng.standard_normal((1, 14, 14, filters)).astype(np.float32)
    flops = 2 * kernel.size * 14 * 14
    assert flops < core.TINY_BACKWARD_FLOPS <= flops * core.GROUPED_TINY_SCALE
    with engine.thread_limit(2):
        if _threads.worker_count() < 2:
            pytest.skip("one core: every gradient runs on it")
        alone = engine.conv_vjp(x, kernel, spec, dy)
        monkeypatch.setattr(core, "run_pair", spy_pair)
        result = engine.conv_vjp(x, kernel, spec, dy)
    assert (handed_out == ["pair"]) is handed, handed_out
    for got, want in zip(result[:2], alone[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_without_a_blas_limit_the_pair_runs_on_the_calling_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Where BLAS cannot be held to one thread (no threadpoolctl), the two gradients that
    would run side by side run one after the other on the calling thread (BLAS's own
    threads would share the cores with the pair), with the same values."""
    import contextlib

    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 28, 28, 64)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    spec = ConvSpec(3, padding="same", rank=2)
    with engine.thread_limit(2):
        if _threads.worker_count() < 2:
            pytest.skip("one core: every gradient runs on it")
        expected = engine.conv_vjp(x, kernel, spec, dy)
        pairs: list[str] = []
        threads: set[int] = set()
        transposed = core.transposed_conv

        def spy_input(*args: Any, **kwargs: Any) -> Any:
            threads.add(threading.get_ident())
            return transposed(*args, **kwargs)

        monkeypatch.setattr(core, "blas_single_threaded", lambda: contextlib.nullcontext(False))
        monkeypatch.setattr(core, "run_pair", lambda *a: pairs.append("pair"))
        monkeypatch.setattr(core, "transposed_conv", spy_input)
        got = engine.conv_vjp(x, kernel, spec, dy)
    assert pairs == [] and threads == {threading.get_ident()}
    for a, b in zip(got[:2], expected[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
