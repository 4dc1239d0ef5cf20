"""The planner with prepacked kernels (``convarith.engine.prepack``): it knows that
Winograd's transform of such a kernel is made once, a plan made for a prepacked kernel
is not reused for a writeable one of the same layout, and the remembered ``max |kernel|``
sets huge values aside as before."""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import relative_error
from convarith import conv2d
from convarith.engine import clear_caches, dispatch, prepack
from convarith.engine.algorithms import _llvm, winograd

CI = os.environ.get("CI") == "true"


def _problem(prepacked: bool) -> dispatch.ConvProblem:
    return dispatch.ConvProblem((1, 9, 9, 256), (3, 3, 256, 256), (1, 1), (1, 1), 1, (7, 7),
                                np.dtype("float32"), prepacked=prepacked)


def test_winograd_costs_less_for_a_prepacked_kernel_where_it_keeps_the_transform() -> None:
    plain, kept = winograd.cost(_problem(False)), winograd.cost(_problem(True))
    if winograd._numba_kernels() is None or not _llvm.available(np.dtype("float32")):
        assert kept == plain  # (the NumPy passes and BLAS products keep nothing)
    else:
        assert kept < plain
    huge = dispatch.ConvProblem((1, 9, 9, 4096), (3, 3, 4096, 4096), (1, 1), (1, 1), 1, (7, 7),
                                np.dtype("float32"), prepacked=True)
    assert not winograd.transform_kept(huge)  # 604 MB: more than the cache keeps


def test_plan_marks_prepacked_kernels_and_keeps_their_plans_apart() -> None:
    clear_caches()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 9, 9, 256)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 256, 256)).astype(np.float32)
    seen: list[bool] = []
    original = dispatch.choose

    def spying(problem: dispatch.ConvProblem, *args: object, **kwargs: object):
        seen.append(problem.prepacked)
        return original(problem, *args, **kwargs)

    dispatch.choose = spying  # type: ignore[assignment]
    try:
        for k in (kernel, prepack(kernel), kernel, prepack(kernel)):
            conv2d(x, k)
    finally:
        dispatch.choose = original  # type: ignore[assignment]
    # one plan per kind of kernel, each made once and reused
    assert seen == [False, True]
    read_only = kernel.copy()
    read_only.flags.writeable = False  # (its owner could make it writeable again)
    assert not dispatch._frozen(read_only) and dispatch._frozen(prepack(kernel))


@pytest.mark.parametrize("seed", [0] if CI else [0, 1, 2])
def test_prepacked_kernels_agree_with_torch_whichever_path_the_planner_takes(seed: int) -> None:
    """Random layers (1×1 and 3×3, strides 1-2, 16-512 channels, 1²-14², batch 1-3,
    float32/float64), each run twice with a prepacked kernel (the second call reuses
    whatever was kept) and once with the plain kernel, against PyTorch; then a huge
    value in the input, which the transforms set aside as with a plain kernel."""
    torch = pytest.importorskip("torch")
    clear_caches()
    rng = np.random.default_rng(200 + seed)
    for case in range(3 if CI else 8):
        k = int(rng.choice([1, 3]))
        s = int(rng.choice([1, 1, 2]))
        n, size = int(rng.choice([1, 1, 3])), int(rng.choice([1, 4, 7, 14]))
        c, f = int(rng.choice([16, 64, 256, 512])), int(rng.choice([32, 64, 256]))
        dtype = np.float32 if rng.random() < 0.7 else np.float64
        p = k // 2
        x = rng.standard_normal((n, size, size, c)).astype(dtype)
        kernel = rng.standard_normal((k, k, c, f)).astype(dtype)
        what = f"seed {200 + seed} case {case}: {n}x{size}²x{c} -> {f} {k}x{k} s{s} {dtype.__name__}"
        expected = torch.nn.functional.conv2d(
            torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2),
            torch.from_numpy(kernel.astype(np.float64)).permute(3, 2, 0, 1),
            stride=s, padding=p).permute(0, 2, 3, 1).numpy()
        bound = 2e-5 if dtype == np.float32 else 1e-10
        frozen = prepack(kernel)
        pads = [(p, p), (p, p)]
        for kern in (frozen, frozen, kernel):
            y = conv2d(x, kern, strides=s, padding=pads)
            assert relative_error(y, expected) <= bound, what
        if size < 4:
            continue
        x[0, 0, 0, 0] = 1e30 if dtype == np.float32 else 1e200
        y = conv2d(x, frozen, strides=s, padding=pads)
        # the last row of outputs does not read the huge value: it keeps its precision
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(y[:, -1], expected[:, -1], rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=what)
        assert not np.isfinite(y[0, 0, 0]).all() or np.abs(y[0, 0, 0]).max() > 1e20, what
