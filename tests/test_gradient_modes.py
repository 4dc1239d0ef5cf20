"""The backward pass's way of running its two gradients, timed on its first calls
(:mod:`convarith.engine.gradient_modes`).

The modes it measures must give the same values bit for bit (a choice made by timing
must not change a result from one run to the next), the schedule of trials and the
pick must follow the times (fed here, never measured: no test depends on a clock),
and ``CONVARITH_AUTOTUNE=0`` must leave the constants' choice alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from convarith import ConvSpec, engine
from convarith.engine import core, gradient_modes
from convarith.engine.algorithms import _threads

SEED = 20261207


@pytest.fixture(autouse=True)
def _fresh_choices(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CONVARITH_AUTOTUNE", raising=False)
    gradient_modes.clear()
    yield
    gradient_modes.clear()


def _random_layer(rng: np.random.Generator):
    """A layer whose backward pass is in the measured range (or near it)."""
    transposed = bool(rng.random() < 0.25)
    groups = 1 if transposed else int(rng.choice([1, 1, 4, 8]))
    k = int(rng.choice([1, 3, 5]))
    stride = int(rng.choice([1, 2]))
    channels = int(rng.choice([4, 8, 16])) * groups if groups > 1 else int(
        rng.choice([16, 32, 64, 96]))
    filters = int(rng.choice([4, 8, 16])) * groups if groups > 1 else int(
        rng.choice([32, 64, 96]))
    size = int(rng.integers(max(10, k + 3), 30))
    batch = int(rng.choice([1, 1, 2, 4]))
    dtype = np.float64 if rng.random() < 0.25 else np.float32
    padding = str(rng.choice(["same", "valid"])) if not transposed else "valid"
    spec = ConvSpec(k, strides=stride, padding=padding, groups=groups, transposed=transposed,
                    rank=2)
    shape = (k, k, filters, channels) if transposed else (k, k, channels // groups, filters)
    x = rng.standard_normal((batch, size, size, channels)).astype(dtype)
    kernel = rng.standard_normal(shape).astype(dtype)
    return spec, x, kernel


def test_measured_modes_give_the_same_gradients_bit_for_bit() -> None:
    """Side by side or one after the other on one thread: the same arrays exactly (both
    run each gradient on one thread, BLAS too; the values themselves are the conformance
    suites' to check)."""
    rng = np.random.default_rng(SEED)
    with engine.thread_limit(2):
        if _threads.worker_count() < 2:
            pytest.skip("one core: nothing to choose")
        checked = 0
        for trial in range(60):
            spec, x, kernel = _random_layer(rng)
            try:
                y = engine.conv(x, kernel, spec)
            except ValueError:
                continue  # a grid too small for this kernel and stride
            dy = rng.standard_normal(y.shape).astype(x.dtype)
            got: dict[str, Any] = {}
            asked: list[str] = []
            for mode in gradient_modes.CANDIDATES:
                with pytest.MonkeyPatch.context() as patch:
                    def forced(problem: Any, static: str, candidates: Any, mode: str = mode,
                               asked: list[str] = asked) -> tuple[str, bool]:
                        asked.append(static)
                        return mode, False

                    patch.setattr(gradient_modes, "next_mode", forced)
                    got[mode] = engine.conv_vjp(x, kernel, spec, dy)
            if not asked:
                continue  # the constants run it on the calling thread: nothing measured
            first, *others = gradient_modes.CANDIDATES
            for mode in others:
                for a, b in zip(got[first][:2], got[mode][:2]):
                    assert np.array_equal(a, b), (SEED, trial, mode, spec, x.shape, x.dtype)
            checked += 1
        assert checked >= 12, checked


def _spy_modes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The mode of each ``conv_vjp`` call from now on (side by side: ``run_chunks`` was
    handed the two gradients)."""
    seen: list[str] = []
    side_by_side = core._side_by_side
    both = core._both_gradients

    def spy_pair(*args: Any, input_first: bool = False) -> Any:
        seen[-1] = "pair_swapped" if input_first else "pair"
        return side_by_side(*args, input_first=input_first)

    def spy_both(*args: Any, **kwargs: Any) -> Any:
        seen.append("one")
        return both(*args, **kwargs)

    monkeypatch.setattr(core, "_side_by_side", spy_pair)
    monkeypatch.setattr(core, "_both_gradients", spy_both)
    return seen


def _measured_layer():
    # 3×3 64 -> 64 on one 28² image: 58 MFLOPs, side by side by the constants
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 28, 28, 64)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    spec = ConvSpec(3, padding="same", rank=2)
    flops = 2 * kernel.size * 28 * 28
    assert core.TINY_BACKWARD_FLOPS <= flops < core.SMALL_BACKWARD_FLOPS
    return x, kernel, spec, dy


@pytest.mark.parametrize("quickest", ["pair", "pair_swapped", "one"])
def test_first_calls_time_each_candidate_then_keep_the_quickest(
        quickest: str, monkeypatch: pytest.MonkeyPatch) -> None:
    x, kernel, spec, dy = _measured_layer()
    monkeypatch.delenv("CONVARITH_AUTOTUNE", raising=False)
    # the times the calls report: the quickest mode 1 s, the other 2 s (no clock read)
    recorded: list[tuple[str, float]] = []
    record = gradient_modes.record

    def fixed_record(problem: Any, mode: str, seconds: float) -> None:
        seconds = 1.0 if mode == quickest else 2.0
        recorded.append((mode, seconds))
        record(problem, mode, seconds)

    monkeypatch.setattr(gradient_modes, "record", fixed_record)
    with engine.thread_limit(2):
        if _threads.worker_count() < 2:
            pytest.skip("one core: nothing to choose")
        seen = _spy_modes(monkeypatch)
        calls = 1 + gradient_modes.TRIALS * len(gradient_modes.CANDIDATES) + 3
        for _ in range(calls):
            engine.conv_vjp(x, kernel, spec, dy)
    trials = gradient_modes.TRIALS * len(gradient_modes.CANDIDATES)
    # the constants' choice first (untimed), the candidates in alternating order, then
    # the quickest on every call
    assert seen[0] == "pair"
    assert [mode for mode, _ in recorded] == (
        ["pair_swapped", "one", "pair", "pair", "one", "pair_swapped"] * 3)[:trials]
    assert seen[1:1 + trials] == [mode for mode, _ in recorded]
    assert seen[1 + trials:] == [quickest] * 3
    (choice,) = gradient_modes._CHOICES
    assert gradient_modes.chosen(choice) == quickest


def test_autotune_off_keeps_the_constants_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    x, kernel, spec, dy = _measured_layer()
    monkeypatch.setenv("CONVARITH_AUTOTUNE", "0")
    with engine.thread_limit(2):
        if _threads.worker_count() < 2:
            pytest.skip("one core: nothing to choose")
        seen = _spy_modes(monkeypatch)
        for _ in range(6):
            engine.conv_vjp(x, kernel, spec, dy)
    assert seen == ["pair"] * 6
    assert not gradient_modes._CHOICES


def test_passes_on_the_calling_thread_and_kernel_only_passes_are_not_measured(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVARITH_AUTOTUNE", raising=False)
    rng = np.random.default_rng(5)
    tiny = rng.standard_normal((1, 6, 6, 4)).astype(np.float32)
    tiny_kernel = rng.standard_normal((3, 3, 4, 4)).astype(np.float32)
    spec = ConvSpec(3, padding="same", rank=2)
    assert 2 * tiny_kernel.size * 36 < core.TINY_BACKWARD_FLOPS
    x, kernel, _, dy = _measured_layer()
    with engine.thread_limit(2):
        if _threads.worker_count() < 2:
            pytest.skip("one core: nothing to choose")
        for _ in range(6):
            engine.conv_vjp(tiny, tiny_kernel, spec, np.ones_like(tiny))
            engine.conv_vjp(x, kernel, spec, dy, need_input_grad=False)
    assert not gradient_modes._CHOICES


def test_choices_stay_bounded_and_clear_caches_forgets_them(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setattr(gradient_modes, "KEPT", 8)
    for problem in range(20):
        gradient_modes.next_mode(problem, "pair", gradient_modes.CANDIDATES)
        assert len(gradient_modes._CHOICES) <= 8
    assert 19 in gradient_modes._CHOICES and 0 not in gradient_modes._CHOICES
    engine.clear_caches()
    assert not gradient_modes._CHOICES


def test_a_trial_left_running_elsewhere_does_not_stall_the_choice() -> None:
    """Every trial handed out but one not yet recorded (another thread's call still
    running): the calls meanwhile take the best mode seen so far, untimed."""
    problem = ("layer",)
    schedule = [gradient_modes.next_mode(problem, "pair", ("pair", "one"))
                for _ in range(1 + 2 * gradient_modes.TRIALS)]
    assert schedule[0] == ("pair", False) and all(timed for _, timed in schedule[1:])
    assert schedule[-1][0] == "one"
    for mode, _ in schedule[1:-1]:
        gradient_modes.record(problem, mode, 1.0 if mode == "pair" else 3.0)
    assert gradient_modes.chosen(problem) is None
    assert gradient_modes.next_mode(problem, "pair", ("pair", "one")) == ("pair", False)
    gradient_modes.record(problem, "one", 0.5)  # the last trial: one at 0.5
    assert gradient_modes.chosen(problem) == "one"


@pytest.mark.parametrize("other, kept", [(0.96, "pair"), (0.94, "one")])
def test_another_mode_must_beat_the_constants_choice_by_the_margin(other: float,
                                                                   kept: str) -> None:
    problem = ("layer", other)
    gradient_modes.next_mode(problem, "pair", ("pair", "one"))  # the untimed first call
    for _ in range(2 * gradient_modes.TRIALS):
        mode, timed = gradient_modes.next_mode(problem, "pair", ("pair", "one"))
        assert timed
        gradient_modes.record(problem, mode, 1.0 if mode == "pair" else other)
    assert gradient_modes.MARGIN == 0.95
    assert gradient_modes.chosen(problem) == kept
