"""Values a transform would not take are set aside, their outputs summed directly.

On shapes the dispatch really sends to Winograd (float32 and float64) and FFT
(1-D and 2-D), a non-finite or huge value at random positions
(corners, edges, interior, several at once, a whole row) reaches exactly the
outputs PyTorch makes non-finite, and the other outputs match PyTorch's
float64 result; a value just under the accuracy limit still runs the fast
algorithm and keeps the untouched outputs within the conformance bound.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import convarith
from convarith import ConvSpec
from convarith.engine import dispatch

torch = pytest.importorskip("torch")
CI = os.environ.get("CI") == "true"


def _torch(x: np.ndarray, kernel: np.ndarray, padding: int, transposed: bool = False,
           stride: int = 1) -> np.ndarray:
    rank = x.ndim - 2
    xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    order = (rank + 1, rank, *range(rank))
    kt = torch.from_numpy(np.ascontiguousarray(kernel.transpose(order)))
    fn = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}[rank]
    with torch.no_grad():
        if transposed:
            y = torch.nn.functional.conv_transpose2d(xt, kt, stride=stride, padding=padding)
        else:
            y = fn(xt, kt, padding=padding)
    return np.moveaxis(y.numpy(), 1, -1)


def _placements(rng: np.random.Generator, shape: tuple[int, ...]) -> list[list[tuple]]:
    """Sets of positions: a corner, an edge cell, an interior cell, several, a whole row."""
    n, *spatial, c = shape
    def cell(kind: str) -> tuple:
        where = []
        for size in spatial:
            if kind == "corner":
                where.append(int(rng.choice([0, size - 1])))
            elif kind == "inner":
                where.append(int(rng.integers(1, size - 1)))
            else:
                where.append(int(rng.integers(size)))
        if kind == "edge":
            where[-1] = int(rng.choice([0, spatial[-1] - 1]))
        return (int(rng.integers(n)), *where, int(rng.integers(c)))
    several = [cell(k) for k in ("corner", "inner", "inner", "edge")]
    row = (int(rng.integers(n)), int(rng.integers(spatial[0])), *([slice(None)] * (len(spatial) - 1)),
           int(rng.integers(c)))
    return [[cell("corner")], [cell("edge")], [cell("inner")], several, [row]]


# (name, x shape, kernel shape, padding, dtype, transposed stride or 0, the dispatch's choice)
CASES = [
    ("winograd-f32", (1, 128, 128, 32), (3, 3, 32, 32), 1, np.float32, 0, "winograd"),
    ("winograd-f64", (1, 128, 128, 32), (3, 3, 32, 32), 1, np.float64, 0, "winograd"),
    ("fft-2d", (4, 126, 126, 4), (63, 63, 4, 4), 0, np.float32, 0, "fft"),
    ("fft-1d", (4, 8192, 4), (1023, 4, 4), 0, np.float32, 0, "fft"),
]


def _choice(name, shape, kshape, padding, dtype, stride) -> str:
    from convarith.engine import core
    if stride:
        pads = [(kshape[0] - 1 - padding,) * 2] * 2
        return core.transposed_algorithm(shape, kshape, (stride,) * 2, (1, 1), 1, pads, dtype)
    rank = len(shape) - 2
    padded = (shape[0], *(n + 2 * padding for n in shape[1:-1]), shape[-1])
    out = tuple(n + 2 * padding - k + 1 for n, k in zip(shape[1:-1], kshape))
    return dispatch.choose(dispatch.ConvProblem(padded, kshape, (1,) * rank, (1,) * rank, 1, out,
                                                np.dtype(dtype))).name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_set_aside_values_reach_only_their_windows(case) -> None:
    name, shape, kshape, padding, dtype, stride, expected = case
    seed = 4100 + CASES.index(case)
    rng = np.random.default_rng(seed)
    assert _choice(name, shape, kshape, padding, dtype, stride) == expected, (
        f"seed {seed}: the shape no longer goes to {expected}")
    x = rng.standard_normal(shape).astype(dtype)
    kernel = rng.standard_normal(kshape).astype(dtype)
    rank = len(shape) - 2
    spec = ConvSpec(kshape[:rank], padding=padding, strides=stride or 1, rank=rank,
                    transposed=bool(stride))
    huge = [1e300] if dtype == np.float64 else [3e37, 1e38]
    values = [np.inf, -np.inf, np.nan, *huge]
    placements = _placements(rng, shape)
    runs = [(v, p) for i, v in enumerate(values) for j, p in enumerate(placements)
            if not CI or j == i % len(placements)]
    if CI:  # seconds per run on a busy machine: one in CI, none for the 63×63 FFT
        runs = [] if name == "fft-2d" else runs[3:4]
    elif expected == "fft":  # the float64 oracle takes ~10 s a run on a 63×63 kernel
        runs = runs[::4]
    runs = [(v, list(p)) for v, p in runs]
    # the kernel: a value at a random tap (every output of its filter reads it)
    taps = [tuple(int(rng.integers(n)) for n in kshape) for _ in values]
    runs += [(v, [("kernel", t)]) for v, t in zip(values, taps)][: 1 if CI else None]
    for value, where in runs:
        if (np.isfinite(value) and len(where) == 1 and where[0][0] != "kernel"
                and isinstance(where[0][rank], slice)):
            continue  # a whole row of huge values overflows float32 sums in any order
        bad, bad_kernel = x.copy(), kernel.copy()
        for position in where:
            if position[0] == "kernel":
                bad_kernel[position[1]] = value
            else:
                bad[position] = value
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = convarith.conv(bad, bad_kernel, spec)
        low = _torch(bad, bad_kernel, padding, bool(stride), stride)  # the mask: same dtype
        want = _torch(bad.astype(np.float64), bad_kernel.astype(np.float64), padding,
                      bool(stride), stride)
        message = f"seed {seed}, {value} at {where}"
        if where[0][0] == "kernel" and not np.isfinite(value):
            # PyTorch's float32 CPU kernels skip the zero padding (finite there), its
            # float64 ones and JAX multiply it (0 · inf = nan), as a direct sum does
            low = want
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(low), err_msg=message)
        finite = np.isfinite(want) & np.isfinite(got)
        scale = np.abs(want[finite]).max()
        tolerance = 1e-5 if dtype == np.float32 else 1e-10
        assert np.abs(got[finite] - want[finite]).max() <= tolerance * scale, message


def test_a_value_just_under_the_accuracy_limit_keeps_the_fast_path_accurate() -> None:
    """A value at 0.99 × the limit runs Winograd as is; the outputs that do not read it
    stay within 1e-5 of the float64 result (seed printed on failure)."""
    seed = 4200
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 128, 128, 32)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    problem = dispatch.ConvProblem((1, 130, 130, 32), kernel.shape, (1, 1), (1, 1), 1,
                                   (128, 128), np.dtype(np.float32))
    winograd = dispatch.choose(problem)
    assert winograd.name == "winograd"
    plain = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).astype(np.float64)
    rms = float(np.sqrt(np.mean(plain ** 2)))  # what the engine sees: the padded input
    for scale, runs_as_is in ((0.99, True), (1.5, False)):
        bad = x.copy()
        i, j = 60, 61
        bad[0, i, j, 5] = scale * dispatch.OUTLIER_RATIO[np.dtype(np.float32)] * rms
        padded = np.pad(bad, ((0, 0), (1, 1), (1, 1), (0, 0)))
        assert (dispatch.value_limits(winograd, problem, padded, kernel) is None) == runs_as_is
        got = convarith.conv(bad, kernel, ConvSpec(3, padding=1))
        want = _torch(bad.astype(np.float64), kernel.astype(np.float64), 1)
        untouched = np.ones(want.shape, bool)
        untouched[0, i - 1:i + 2, j - 1:j + 2] = False
        error = np.linalg.norm((got - want)[untouched]) / np.linalg.norm(want[untouched])
        assert error <= 1e-5, f"seed {seed}, scale {scale}: {error:.2e}"


def test_weight_gradient_sets_aside_channels() -> None:
    seed = 4300
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 64, 64, 32)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    dy = rng.standard_normal((1, 64, 64, 32)).astype(np.float32)
    problem = dispatch.ConvProblem((1, 66, 66, 32), kernel.shape, (1, 1), (1, 1), 1, (64, 64),
                                   np.dtype(np.float32))
    assert dispatch.choose_weight_grad(problem).name == "winograd"
    for value in (np.inf, np.nan, 1e38):
        bad_x, bad_dy = x.copy(), dy.copy()
        bad_x[0, 0, 5, 3] = value
        bad_dy[0, 17, 31, 9] = value
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _, d_kernel, _ = convarith.conv_vjp(bad_x, kernel, ConvSpec(3, padding=1), bad_dy)
        def reference(dtype, bad_x=bad_x, bad_dy=bad_dy):
            xt = torch.from_numpy(np.moveaxis(bad_x, -1, 1).astype(dtype))
            dyt = torch.from_numpy(np.moveaxis(bad_dy, -1, 1).astype(dtype))
            w = torch.nn.grad.conv2d_weight(xt, (32, 32, 3, 3), dyt, padding=1).numpy()
            return w.transpose(2, 3, 1, 0)
        low, want = reference(np.float32), reference(np.float64)
        message = f"seed {seed}, value {value}"
        np.testing.assert_array_equal(np.isfinite(d_kernel), np.isfinite(low), err_msg=message)
        finite = np.isfinite(want) & np.isfinite(d_kernel)
        scale = np.abs(want[finite]).max()
        assert np.abs(d_kernel[finite] - want[finite]).max() <= 1e-5 * scale, message


def test_subpixel_sets_aside_values_in_input_and_kernel() -> None:
    """Sub-pixel (Winograd on the phases) is taken by the dispatch where the compiled
    kernels are off; here it is made the cheapest for the test."""
    from convarith.engine.algorithms import subpixel
    seed = 4400
    rng = np.random.default_rng(seed)
    shape, kshape = (2, 14, 14, 64), (4, 4, 32, 64)
    pads = ((2, 2), (2, 2))
    dispatch.register_algorithm("subpixel_first", subpixel.transposed, applies=subpixel.applies,
                                cost=lambda p: 0.0, kind="transposed",
                                value_gain=subpixel.value_gain)
    try:
        from convarith.engine import core
        assert core.transposed_algorithm(shape, kshape, (2, 2), (1, 1), 1, pads) == "subpixel_first"
        x = rng.standard_normal(shape).astype(np.float32)
        kernel = rng.standard_normal(kshape).astype(np.float32)
        spec = ConvSpec(4, strides=2, padding=1, transposed=True)
        cases = [("x", (0, 0, 0, 3), np.inf), ("x", (1, 7, 13, 0), np.nan),
                 ("x", (1, 5, 6, 9), 3e37), ("x", (0, 3, 4, 2), 1e3),
                 ("kernel", (0, 3, 5, 7), -np.inf), ("kernel", (2, 1, 0, 0), 1e38)]
        for what, position, value in cases[: 3 if CI else None]:
            bad, bad_kernel = x.copy(), kernel.copy()
            (bad if what == "x" else bad_kernel)[position] = value
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = convarith.conv(bad, bad_kernel, spec)
            want = _torch(bad.astype(np.float64), bad_kernel.astype(np.float64), 1, True, 2)
            message = f"seed {seed}, {value} in {what} at {position}"
            np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want), err_msg=message)
            finite = np.isfinite(want)
            scale = np.abs(want[finite]).max()
            assert np.abs(got[finite] - want[finite]).max() <= 1e-5 * scale, message
    finally:
        dispatch.unregister_algorithm("subpixel_first")
