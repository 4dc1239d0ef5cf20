"""The engine under concurrent first use, on non-finite values, and its refusals.

- Eight threads making their first call at once in a fresh process get the
  serial results bit for bit (registry loading, remembered choices, compiled
  kernels and the helper pool all start under that load).
- A non-finite or huge value reaches only the outputs whose window reads it,
  also on shapes the dispatch sends to Winograd and FFT (PyTorch is the oracle).
- The dispatch refuses arrays that do not match the problem before any
  algorithm runs; a named algorithm that does not apply says why.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import convarith
from _helpers import assert_cheapest_applies
from convarith import ConvSpec
from convarith.engine import core, dispatch, state

SRC = str(Path(convarith.__file__).resolve().parents[1])

# --------------------------------------------------------------------------- concurrency

_FIRST_CALLS = textwrap.dedent(
    """
    import sys, threading
    import numpy as np
    import convarith
    from convarith import ConvSpec

    rng = np.random.default_rng(int(sys.argv[1]))
    f32 = np.float32
    # (x shape, kernel shape, spec): winograd, register_tiles/flat_rows, space_to_depth,
    # depthwise, a transposed convolution, 1-D, float64
    cases = [
        ((1, 40, 40, 32), (3, 3, 32, 32), ConvSpec(3, padding="same"), f32),
        ((2, 20, 20, 8), (3, 3, 8, 16), ConvSpec(3, padding="same"), f32),
        ((2, 24, 24, 16), (3, 3, 16, 16), ConvSpec(3, strides=2, padding="same"), f32),
        ((2, 16, 16, 16), (3, 3, 1, 16), ConvSpec(3, groups=16, padding="same"), f32),
        ((2, 12, 12, 16), (4, 4, 8, 16), ConvSpec(4, strides=2, padding="same", transposed=True), f32),
        ((2, 64, 8), (5, 8, 8), ConvSpec(5, rank=1), f32),
        ((1, 20, 20, 16), (3, 3, 16, 16), ConvSpec(3, padding="same"), np.float64),
    ]
    inputs = [(rng.standard_normal(xs).astype(dt), rng.standard_normal(ks).astype(dt), spec)
              for xs, ks, spec, dt in cases]
    threads = 8
    barrier = threading.Barrier(threads)
    results = [[None] * len(inputs) for _ in range(threads)]
    errors = []

    def run(t):
        try:
            barrier.wait()
            for i in range(len(inputs)):
                j = (i + t) % len(inputs)  # each thread starts with another shape
                x, k, spec = inputs[j]
                results[t][j] = convarith.conv(x, k, spec)
        except BaseException as error:  # reported below
            errors.append(repr(error))

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    serial = [convarith.conv(x, k, spec) for x, k, spec in inputs]
    for t in range(threads):
        for j, want in enumerate(serial):
            got = results[t][j]
            assert got.tobytes() == want.tobytes(), (t, j, float(np.abs(got - want).max()))
    print("ok")
    """
)


@pytest.mark.parametrize("seed", [0] if os.environ.get("CI") == "true" else [0, 1, 2])
def test_eight_threads_first_calls_match_serial_bitwise(seed: int) -> None:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", _FIRST_CALLS, str(seed)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, (
        f"seed {seed}:\n{done.stdout}\n{done.stderr[-3000:]}")


def test_remembered_choices_are_keyed_on_the_worker_count() -> None:
    problem = dispatch.ConvProblem((1, 10, 10, 8), (3, 3, 8, 8), (1, 1), (1, 1), 1, (8, 8),
                                   np.dtype(np.float32))
    dispatch._CHOICES.clear()
    dispatch.cheapest(problem)
    with convarith.engine.thread_limit(1):
        dispatch.cheapest(problem)
    counts = {key[-2] for key in dispatch._CHOICES if key[0] == problem}
    assert 1 in counts and len(counts) == (1 if convarith.engine.algorithms._threads.worker_count()
                                           == 1 else 2)


# --------------------------------------------------------------------------- non-finite values


def _torch_conv(x: np.ndarray, kernel: np.ndarray, padding: int) -> np.ndarray:
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    kt = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    with torch.no_grad():
        y = torch.nn.functional.conv2d(xt, kt, padding=padding)
    return np.moveaxis(y.numpy(), 1, -1)


def _positions(rng: np.random.Generator, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """A corner, a point on an edge and an interior point of a random image and channel."""
    n, h, w, c = shape
    image, channel = int(rng.integers(n)), int(rng.integers(c))
    corner = (image, int(rng.choice([0, h - 1])), int(rng.choice([0, w - 1])), channel)
    edge = (image, int(rng.integers(h)), int(rng.choice([0, w - 1])), channel)
    inner = (image, int(rng.integers(2, h - 2)), int(rng.integers(2, w - 2)), channel)
    return [corner, edge, inner]


# (x shape, kernel size, padding, dtype, a value-transforming algorithm that applies; the
# dispatch picks it on the machines measured so far, but which one wins is the cost models')
NONFINITE_SHAPES = [
    ((1, 128, 128, 32), 3, 1, np.float32, "winograd"),
    ((1, 128, 128, 32), 3, 1, np.float64, "winograd"),
    ((4, 126, 126, 4), 63, 0, np.float32, "fft"),
]


@pytest.mark.parametrize("case", NONFINITE_SHAPES, ids=lambda c: f"{c[4]}-{np.dtype(c[3])}")
def test_nonfinite_values_reach_only_their_windows(case) -> None:
    shape, k, padding, dtype, expected = case
    seed = 20260 + NONFINITE_SHAPES.index(case)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, shape).astype(dtype)
    kernel = (rng.uniform(0.5, 1, (k, k, shape[-1], shape[-1]))
              * rng.choice([-1, 1], (k, k, shape[-1], shape[-1]))).astype(dtype)
    spec = ConvSpec(k, padding=padding)
    out = tuple(n + 2 * padding - k + 1 for n in shape[1:3])
    problem = dispatch.ConvProblem((shape[0], *(n + 2 * padding for n in shape[1:3]), shape[-1]),
                                   kernel.shape, (1, 1), (1, 1), 1, out, np.dtype(dtype))
    chosen_name = assert_cheapest_applies(problem)
    transforming = dispatch.get_algorithm(expected)
    assert transforming.applies(problem) and transforming.value_gain is not None, (
        f"seed {seed}: {expected} no longer applies to the shape or transforms values")
    checked = [transforming] + ([dispatch.get_algorithm(chosen_name)]
                                if chosen_name != expected else [])
    huge = [1e300] if dtype == np.float64 else [3e37, 1e38]
    values = [*huge, np.inf, -np.inf, np.nan]
    positions = _positions(rng, shape)
    for value in values:
        for position in positions:
            bad = x.copy()
            bad[position] = value
            padded = np.pad(bad, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
            assert dispatch.plan(problem, padded, kernel).name == chosen_name
            for algorithm in checked:
                assert (algorithm.value_gain is None or dispatch.value_limits(
                    algorithm, problem, padded, kernel) is not None), (
                    f"seed {seed}: {value} at {position} would reach {algorithm.name}'s "
                    f"transforms")
    # run them: every value and position (CI: one position per value; FFT's fallback on
    # its tiny-channel layer takes seconds, so two values outside CI only)
    ci = os.environ.get("CI") == "true"
    if expected == "fft":
        runs = [(np.inf, positions[1])] if not ci else []
    else:
        runs = [(value, position) for index, value in enumerate(values)
                for position in ([positions[index % 3]] if ci else positions)]
    for value, position in runs:
        bad = x.copy()
        bad[position] = value
        got = convarith.conv(bad, kernel, spec)
        want = _torch_conv(bad, kernel, padding)  # float64 too: PyTorch sums directly
        message = f"seed {seed}, value {value} at {position}"
        np.testing.assert_array_equal(~np.isfinite(got), ~np.isfinite(want), err_msg=message)
        finite = np.isfinite(want)
        scale = np.abs(want[finite]).max()
        tolerance = 1e-5 if dtype == np.float32 else 1e-12
        assert np.abs(got[finite] - want[finite]).max() <= tolerance * scale, message
    # finite, ordinary values still take the fast algorithm
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    assert dispatch.plan(problem, padded, kernel).name == expected


def test_nonfinite_weight_gradient_stays_in_its_windows() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (1, 64, 64, 32)).astype(np.float32)
    kernel = rng.uniform(-1, 1, (3, 3, 32, 32)).astype(np.float32)
    dy = rng.uniform(-1, 1, (1, 64, 64, 32)).astype(np.float32)
    problem = dispatch.ConvProblem((1, 66, 66, 32), kernel.shape, (1, 1), (1, 1), 1, (64, 64),
                                   np.dtype(np.float32))
    assert dispatch.choose_weight_grad(problem).name == "winograd"
    x[0, 0, 5, 3] = np.inf
    _, d_kernel, _ = convarith.conv_vjp(x, kernel, ConvSpec(3, padding=1), dy)
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    dyt = torch.from_numpy(np.moveaxis(dy, -1, 1).copy())
    want = torch.nn.grad.conv2d_weight(xt, (32, 32, 3, 3), dyt, padding=1).numpy()
    want = want.transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(~np.isfinite(d_kernel), ~np.isfinite(want))


def test_finiteness_check_is_cheap() -> None:
    x = np.ones((1, 128, 128, 32), np.float32)
    assert dispatch.magnitude(x) == 1.0
    x[0, 3, 4, 5] = np.nan
    assert np.isnan(dispatch.magnitude(x))
    x[0, 3, 4, 5] = -np.inf
    assert dispatch.magnitude(x) == np.inf


# --------------------------------------------------------------------------- refusals


def _arrays(dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return (rng.standard_normal((1, 10, 10, 8)).astype(dtype),
            rng.standard_normal((3, 3, 8, 8)).astype(dtype))


@pytest.mark.parametrize("algorithm", [None, "register_tiles", "offset_gemm", "winograd",
                                       "flat_rows"])
def test_impossible_out_size_is_refused_before_any_algorithm(algorithm) -> None:
    x, kernel = _arrays()
    with pytest.raises(ValueError, match=r"out_size\[0\]=12 needs 14 input cells"):
        core.direct_conv(x, kernel, (1, 1), (1, 1), 1, (12, 8), algorithm)


@pytest.mark.parametrize("change, message", [
    (lambda x, k: (x.astype(np.float64), k), "x has dtype float64"),
    (lambda x, k: (x, k[:, :, :4]), r"kernel has shape \(3, 3, 4, 8\)"),
    (lambda x, k: (x[:, ::-1], k), "x .* is not C-contiguous"),
    (lambda x, k: (x, np.asfortranarray(k)), "kernel .* is not C-contiguous"),
    (lambda x, k: (x, list(k)), "kernel must be a numpy.ndarray"),
])
def test_mismatched_arrays_are_refused(change, message) -> None:
    x, kernel = change(*_arrays())
    problem = dispatch.ConvProblem((1, 10, 10, 8), (3, 3, 8, 8), (1, 1), (1, 1), 1, (8, 8),
                                   np.dtype(np.float32))
    with pytest.raises(ValueError, match=message):
        dispatch.plan(problem, x, kernel, "register_tiles")


@pytest.mark.parametrize("change, message", [
    (lambda x, k: (x.astype(np.float64), k), "has dtype float"),
    (lambda x, k: (x[:, ::-1], k), "x .* is not C-contiguous"),
    (lambda x, k: (x, np.asfortranarray(k)), "kernel .* is not C-contiguous"),
    (lambda x, k: (np.asfortranarray(x), k), "x .* is not C-contiguous"),
])
@pytest.mark.parametrize("entry", ["direct", "weight_grad", "transposed"])
def test_remembered_plans_still_refuse_mismatched_arrays(change, message, entry) -> None:
    """A plan remembered for one call's arrays is not reused for arrays of another layout."""
    x, kernel = _arrays()
    pad = ((1, 1), (1, 1))

    def call(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        if entry == "direct":
            return core.direct_conv(x, kernel, (1, 1), (1, 1), 1, (10, 10), None, pad)
        if entry == "weight_grad":
            return core._weight_grad(x, np.ones((1, 10, 10, 8), np.float32), (3, 3), (1, 1),
                                     (1, 1), 1, None, pad)
        return core.transposed_conv(x, kernel, (2, 2), (1, 1), 1, pad)

    for _ in range(2):  # the second call is served by the remembered plan
        call(x, kernel)
    assert any(key[0] == entry for key in dispatch._PLANS)
    bad_x, bad_kernel = change(x, kernel)
    if entry == "weight_grad" and bad_kernel is not kernel:
        pytest.skip("the weight gradient takes no kernel")
    with pytest.raises(ValueError, match=message):
        call(bad_x, bad_kernel)


def test_remembered_plans_are_bounded_and_cleared() -> None:
    kernel = np.ones((3, 1, 1), np.float32)
    for n in range(3, 3 + dispatch._PLANS_MAX + 5):
        core.direct_conv(np.ones((1, n, 1), np.float32), kernel, (1,), (1,), 1, (n - 2,))
    assert 0 < len(dispatch._PLANS) <= dispatch._PLANS_MAX
    state.clear_caches()
    assert not dispatch._PLANS


def test_named_algorithm_that_does_not_apply_says_why() -> None:
    x = np.ones((1, 8, 8, 4), np.float32)
    with pytest.raises(ValueError) as raised:
        convarith.conv(x, np.ones((5, 5, 4, 4), np.float32), ConvSpec(5, strides=2),
                       algorithm="winograd")
    text = str(raised.value)
    assert "needs a 3x3 kernel; stride 1" in text
    assert "ConvProblem(" not in text
    applying = text.split("Algorithms that apply: ")[1].split(", ")
    assert "offset_gemm" in applying and "winograd" not in applying
    problem = dispatch.ConvProblem((1, 8, 8, 4), (5, 5, 4, 4), (2, 2), (1, 1), 1, (2, 2),
                                   np.dtype(np.float32))
    assert sorted(applying) == list(dispatch.applicable(problem))
    assert all(dispatch.get_algorithm(name).applies(problem) for name in applying)


# --------------------------------------------------------------------------- process state


def test_clear_caches_empties_every_cache_and_results_stay() -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 20, 20, 32)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    before = convarith.conv(x, kernel, ConvSpec(3, padding="same"))
    assert dispatch._CHOICES
    state.clear_caches()
    assert not dispatch._CHOICES
    from convarith.engine.algorithms import winograd

    assert winograd._numba_kernels.cache_info().currsize == 0
    after = convarith.conv(x, kernel, ConvSpec(3, padding="same"))
    assert after.tobytes() == before.tobytes()
    assert convarith.engine.clear_caches is state.clear_caches


def test_every_cached_function_of_the_engine_is_listed() -> None:
    import importlib
    import pkgutil

    from convarith.engine import algorithms

    listed = state.process_caches()
    cleared: set[int] = set()
    for clear in listed.values():
        cells = getattr(clear, "__closure__", None) or ()
        for cell in cells:
            if isinstance(cell.cell_contents, tuple):
                cleared.update(id(f) for f in cell.cell_contents)
    modules = [importlib.import_module(f"{algorithms.__name__}.{m.name}")
               for m in pkgutil.iter_modules(algorithms.__path__)]
    missing = [
        f"{module.__name__}.{name}" for module in modules for name, value in vars(module).items()
        if callable(value) and hasattr(value, "cache_clear") and id(value) not in cleared
        and getattr(value, "__module__", None) == module.__name__
    ]
    assert not missing, f"caches not in engine.state's list: {missing}"


def test_every_refusal_names_conditions_not_a_repr() -> None:
    problems = [
        dispatch.ConvProblem((1, 9, 9, 4), (3, 3, 2, 4), (2, 2), (1, 1), 2, (4, 4),
                             np.dtype(np.float32)),
        dispatch.ConvProblem((1, 9, 4), (3, 4, 4), (1,), (1,), 1, (7,), np.dtype(np.float16)),
        dispatch.ConvProblem((1, 5, 5, 5, 5, 4), (3, 3, 3, 3, 4, 4), (1,) * 4, (1,) * 4, 1,
                             (3, 3, 3, 3), np.dtype(np.float32)),
    ]
    refused = 0
    for name in dispatch.available_algorithms():
        algorithm = dispatch.get_algorithm(name)
        for problem in problems:
            reasons = algorithm.why_not(problem)
            assert bool(reasons) != bool(algorithm.applies(problem)), (name, problem)
            for reason in reasons:
                refused += 1
                assert reason and "ConvProblem(" not in reason, (name, reason)
    assert refused > 5


def test_one_helper_pool_per_process_whatever_the_worker_count() -> None:
    import threading

    from convarith.engine.algorithms import _threads

    pool = _threads._POOL.get()
    seen: list[tuple[int, int]] = []
    for limit in (2, 3, 4):
        with convarith.engine.thread_limit(limit):
            _threads.run_chunks(lambda a, b: seen.append((a, b)), 40, 5, threads=limit)
        assert _threads._POOL.get() is pool
    assert sorted(seen) == sorted([(a, a + 5) for a in range(0, 40, 5)] * 3)
    helpers = [t for t in threading.enumerate() if t.name.startswith("convarith")]
    assert len(helpers) <= max(1, (os.cpu_count() or 1) - 1)
