"""Helpers shared by the tests: the relative error, and slow reference implementations.

The references are the definitions written out tap by tap in float64; they
re-derive their own sizes on purpose (they must not lean on the code under
test). Bounds: relative error ``‖a − b‖ / ‖b‖`` ≤ 1e-5 in float32, ≤ 1e-10
in float64.
"""

from __future__ import annotations

import itertools
import random
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from convarith import ConvSpec

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
DTYPES = [np.float32, np.float64]


def peak_extra_bytes(fn: Callable[[], Any]) -> int:
    """Peak bytes NumPy allocates while ``fn()`` runs (its result included), above those
    held before; ``fn`` is called once first, so plans, compiled modules and the threads'
    kept scratch buffers are made outside the measurement (the benchmarks' "peak x io"
    counts the same way)."""
    fn()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        tracemalloc.stop()
    return peak - base


def relative_error(actual, expected) -> float:
    """``‖a − b‖ / ‖b‖`` in float64 (``‖a − b‖`` when ``b`` is all zeros).

    The shapes must agree, and non-finite expected cells (``-inf`` from a
    max-pool window made only of padding, ``nan``) must be matched exactly.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    finite = np.isfinite(expected)
    if not finite.all():
        np.testing.assert_array_equal(actual[~finite], expected[~finite])
        actual, expected = actual[finite], expected[finite]
    scale = np.linalg.norm(expected)
    diff = np.linalg.norm(actual - expected)
    return float(diff / scale) if scale > 0 else float(diff)


def check(result, expected, dtype, seed, what):
    assert result.dtype == dtype, f"{what} (seed {seed}): dtype {result.dtype}, expected {dtype}"
    assert result.shape == expected.shape, f"{what} (seed {seed}): shape {result.shape}"
    error = relative_error(result, expected)
    assert error <= TOLERANCE[dtype], f"{what} (seed {seed}): relative error {error:.2e}"


def reference_direct(xp, kernel, strides, dilation, groups, out_size):
    """``y[n, o, g·Fg + f] = Σ_{k, c} xp[n, o·S + k·D, g·Cg + c] · kernel[k, c, g·Fg + f]``."""
    rank = len(out_size)
    xp = np.asarray(xp, np.float64)
    kernel = np.asarray(kernel, np.float64)
    group_in, filters = kernel.shape[-2:]
    group_out = filters // groups
    y = np.zeros((xp.shape[0], *out_size, filters))
    for tap in itertools.product(*(range(k) for k in kernel.shape[:rank])):
        index = tuple(
            slice(k * d, k * d + (o - 1) * s + 1, s)
            for k, s, d, o in zip(tap, strides, dilation, out_size)
        )
        cells = xp[(slice(None),) + index]
        for g in range(groups):
            x_g = cells[..., g * group_in:(g + 1) * group_in]
            w_g = kernel[tap][:, g * group_out:(g + 1) * group_out]
            y[..., g * group_out:(g + 1) * group_out] += x_g @ w_g
    return y


def reference_weight_grad(xp, dy, kernel_size, strides, dilation, groups):
    rank = len(kernel_size)
    xp = np.asarray(xp, np.float64)
    dy = np.asarray(dy, np.float64)
    out_size = dy.shape[1:-1]
    group_in = xp.shape[-1] // groups
    filters = dy.shape[-1]
    group_out = filters // groups
    dk = np.zeros((*kernel_size, group_in, filters))
    for tap in itertools.product(*(range(k) for k in kernel_size)):
        index = tuple(
            slice(k * d, k * d + (o - 1) * s + 1, s)
            for k, s, d, o in zip(tap, strides, dilation, out_size)
        )
        cells = xp[(slice(None),) + index].reshape(-1, xp.shape[-1])
        grads = dy.reshape(-1, filters)
        for g in range(groups):
            dk[tap][:, g * group_out:(g + 1) * group_out] = (
                cells[:, g * group_in:(g + 1) * group_in].T
                @ grads[:, g * group_out:(g + 1) * group_out]
            )
    del rank
    return dk


def reference_transposed(x, kernel, strides, dilation, padding):
    """Zero-insert, pad (negative crops), convolve with the flipped, swapped kernel."""
    rank = len(strides)
    n, *size, c = x.shape
    grid = np.zeros((n, *[(i - 1) * s + 1 for i, s in zip(size, strides)], c))
    grid[(slice(None),) + tuple(slice(None, None, s) for s in strides)] = x
    widths = [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in padding] + [(0, 0)]
    grid = np.pad(grid, widths)
    crop = tuple(slice(max(-lo, 0), grid.shape[1 + a] - max(-hi, 0))
                 for a, (lo, hi) in enumerate(padding))
    grid = grid[(slice(None),) + crop]
    direct_kernel = np.swapaxes(np.asarray(kernel)[(slice(None, None, -1),) * rank], -1, -2)
    effective = [(k - 1) * d + 1 for k, d in zip(kernel.shape[:rank], dilation)]
    out = tuple(g - e + 1 for g, e in zip(grid.shape[1:-1], effective))
    return reference_direct(grid, direct_kernel, (1,) * rank, dilation, 1, out)


def reference_scatter(x, kernel, strides, dilation, groups, padding):
    """``y[n, i·S + t·D - P, g·Fg + f] += x[n, i, g·Cg + c] · kernel[t, f, g·Cg + c]``,
    with ``P = D·(K - 1) - lo`` and cells outside the output dropped."""
    rank = len(strides)
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    n, *size, c = x.shape
    taps, fg = kernel.shape[:rank], kernel.shape[rank]
    cg = c // groups
    reach = [d * (k - 1) - lo for d, k, (lo, _) in zip(dilation, taps, padding)]
    out = [(i - 1) * s + 1 + lo + hi - d * (k - 1)
           for i, s, (lo, hi), d, k in zip(size, strides, padding, dilation, taps)]
    y = np.zeros((n, *out, fg * groups))
    for cell in itertools.product(*(range(i) for i in size)):
        for tap in itertools.product(*(range(k) for k in taps)):
            o = tuple(i * s + t * d - p for i, t, s, d, p in zip(cell, tap, strides, dilation, reach))
            if any(v < 0 or v >= limit for v, limit in zip(o, out)):
                continue
            for g in range(groups):
                inputs = x[(slice(None),) + cell + (slice(g * cg, (g + 1) * cg),)]  # (n, Cg)
                weights = kernel[tap + (slice(None), slice(g * cg, (g + 1) * cg))]  # (Fg, Cg)
                y[(slice(None),) + o + (slice(g * fg, (g + 1) * fg),)] += inputs @ weights.T
    return y


def random_padding(rng, x, k, strides, dilation):
    """Random zero padding of ``x`` (-1 crops), the padded input and the output size."""
    rank = len(strides)
    effective = [(n - 1) * d + 1 for n, d in zip(k.shape[:rank], dilation)]
    pads = tuple((int(rng.integers(-1, 3)), int(rng.integers(-1, 3))) for _ in range(rank))
    if any(n + lo + hi < e for n, (lo, hi), e in zip(x.shape[1:-1], pads, effective)):
        pads = tuple((abs(lo), abs(hi)) for lo, hi in pads)  # the crop left too little
    crop = tuple(slice(max(-lo, 0), n - max(-hi, 0)) for n, (lo, hi) in zip(x.shape[1:-1], pads))
    xp = np.pad(x[(slice(None),) + crop],
                ((0, 0), *((max(lo, 0), max(hi, 0)) for lo, hi in pads), (0, 0)))
    out_size = tuple((p - e) // s + 1 for p, e, s in zip(xp.shape[1:-1], effective, strides))
    return pads, xp, out_size


def assert_cheapest_applies(problem) -> str:
    """The dispatch's choice applies and costs least by every registered cost model.

    The costs are measured on one machine (vector width, worker count), so the
    name chosen may differ elsewhere; this property may not.
    """
    from convarith.engine.dispatch import available_algorithms, choose, get_algorithm

    chosen = choose(problem)
    costs = {name: get_algorithm(name).cost(problem) for name in available_algorithms()
             if get_algorithm(name).kind == "direct" and get_algorithm(name).applies(problem)}
    assert chosen.name in costs, (problem, chosen.name, costs)
    assert costs[chosen.name] == min(costs.values()), (problem, chosen.name, costs)
    return chosen.name


def assert_runs_as_reference(problem, seed, batch=None) -> None:
    """The chosen algorithm's result on random values is the slow reference's.

    ``batch``: run the algorithm chosen for ``problem`` on only that many
    images (the reference of a large layer takes seconds).
    """
    from convarith.engine.dispatch import choose

    rng = np.random.default_rng(seed)
    shape = problem.input_shape if batch is None else (batch, *problem.input_shape[1:])
    x = rng.standard_normal(shape).astype(problem.dtype)
    kernel = rng.standard_normal(problem.kernel_shape).astype(problem.dtype)
    chosen = choose(problem)
    y = chosen.direct(x, kernel, problem.strides, problem.dilation, problem.groups,
                      problem.out_size)
    expected = reference_direct(x.astype(np.float64), kernel.astype(np.float64),
                                problem.strides, problem.dilation, problem.groups,
                                problem.out_size)
    assert relative_error(y, expected) <= TOLERANCE[problem.dtype.type], \
        f"seed {seed}, {chosen.name}, {problem}"


def transposed_problems(x_shape, kernel_shape, strides, dilation, groups, padding,
                        dtype=np.float32):
    """The transposed problem and the stride-1 direct problem on its zero-inserted grid.

    ``padding`` is the grid's (negative crops); the sizes come from
    :mod:`convarith.arithmetic`, as the engine's do.
    """
    from convarith import arithmetic as ar
    from convarith.engine.dispatch import ConvProblem

    rank = len(strides)
    taps = tuple(kernel_shape[:rank])
    out = tuple(ar.transposed_grid_output_size(*axis)
                for axis in zip(x_shape[1:-1], taps, strides, dilation, padding))
    grid = tuple(ar.zero_inserted_size(n, s) + lo + hi
                 for n, s, (lo, hi) in zip(x_shape[1:-1], strides, padding))
    swapped = (*taps, kernel_shape[-1] // groups, kernel_shape[-2] * groups)
    problem = ConvProblem(tuple(x_shape), tuple(kernel_shape), tuple(strides), tuple(dilation),
                          groups, out, np.dtype(dtype))
    grid_problem = ConvProblem((x_shape[0], *grid, x_shape[-1]), swapped, (1,) * rank,
                               tuple(dilation), groups, out, np.dtype(dtype))
    return problem, grid_problem


def assert_transposed_cheapest_applies(x_shape, kernel_shape, strides, dilation, groups,
                                       padding, dtype=np.float32) -> str:
    """The engine's choice for a transposed convolution applies and costs least.

    The candidates are the ``kind="transposed"`` algorithms that apply to the
    transposed problem and the direct ones that apply to the stride-1 problem
    on the zero-inserted grid, each at its registered cost (on the grid plus
    its copy of the kernel, ``grid_kernel_cost``); a transposed one runs only
    when strictly cheaper than the best on the grid.
    """
    from convarith.engine.core import transposed_algorithm
    from convarith.engine.dispatch import available_algorithms, get_algorithm, grid_kernel_cost

    problem, grid_problem = transposed_problems(x_shape, kernel_shape, strides, dilation, groups,
                                                padding, dtype)
    name = transposed_algorithm(x_shape, kernel_shape, strides, dilation, groups, padding, dtype)
    algorithms = [get_algorithm(n) for n in available_algorithms()]
    transposed = {a.name: a.cost(problem) for a in algorithms
                  if a.kind == "transposed" and a.applies(problem)}
    on_grid = {a.name: a.cost(grid_problem) + grid_kernel_cost(problem) for a in algorithms
               if a.kind == "direct" and a.applies(grid_problem)}
    what = (problem, name, transposed, on_grid)
    assert on_grid, what
    if name in transposed:
        assert transposed[name] == min(transposed.values()) < min(on_grid.values()), what
    else:
        assert name in on_grid and on_grid[name] == min(on_grid.values()), what
        assert not transposed or min(transposed.values()) >= on_grid[name], what
    return name


def assert_transposed_runs_as_reference(x_shape, kernel_shape, strides, dilation, groups,
                                        padding, seed, batch=None) -> None:
    """The algorithm the engine chooses for these shapes gives the scatter reference's result
    (on ``batch`` images of random values if given)."""
    from convarith.engine.core import transposed_algorithm, transposed_conv

    name = transposed_algorithm(x_shape, kernel_shape, strides, dilation, groups, padding)
    rng = np.random.default_rng(seed)
    shape = tuple(x_shape) if batch is None else (batch, *x_shape[1:])
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal(kernel_shape).astype(np.float32)
    y = transposed_conv(x, kernel, strides, dilation, groups, padding, algorithm=name)
    expected = reference_scatter(x, kernel, strides, dilation, groups, padding)
    assert relative_error(y, expected) <= TOLERANCE[np.float32], f"seed {seed}, {name}"


# --------------------------------------------------------------------------- backend calls


def random_backend_case(rng: random.Random) -> tuple[ConvSpec, tuple[int, ...]]:
    """A random spec (any kind, rank 1–3, both layouts) and an input shape for it."""
    rank = rng.choice([1, 2, 2, 3])
    size = tuple(rng.randint(3, 9 if rank < 3 else 5) for _ in range(rank))
    kernel = tuple(rng.randint(1, 3) for _ in range(rank))
    strides = tuple(rng.randint(1, 3) for _ in range(rank))
    dilation = tuple(rng.randint(1, 2) for _ in range(rank))
    kind = rng.choice(["conv", "conv", "transposed", "max", "avg"])
    data_format = rng.choice(["channels_last", "channels_first"])
    channels = rng.choice([1, 2, 4])
    if kind == "conv":
        padding = rng.choice(["valid", "same", "same_lower", "full",
                              tuple((rng.randint(0, 2), rng.randint(0, 2)) for _ in range(rank))])
        mode = rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"])
        groups = rng.choice([g for g in (1, 2) if channels % g == 0])
        spec = ConvSpec(kernel, strides, dilation, padding=padding, padding_mode=mode, groups=groups,
                        filters=groups * rng.randint(1, 3), data_format=data_format, rank=rank)
    elif kind == "transposed":
        padding = rng.choice(["valid", "same", tuple((rng.randint(-1, 2), rng.randint(-1, 2)) for _ in range(rank))])
        output_padding = None
        if rng.random() < 0.4:
            output_padding = tuple(rng.randrange(max(s, d)) for s, d in zip(strides, dilation))
        groups = rng.choice([g for g in (1, 2) if channels % g == 0])
        spec = ConvSpec(kernel, strides, dilation, padding=padding, transposed=True,
                        output_padding=output_padding, groups=groups, filters=groups * rng.randint(1, 3),
                        data_format=data_format, rank=rank)
    else:
        padding = rng.choice(["valid", "same", tuple((rng.randint(0, 1), rng.randint(0, 1)) for _ in range(rank))])
        spec = ConvSpec(kernel, strides, dilation if kind == "max" else 1, padding=padding, pool=kind,
                        ceil_mode=rng.random() < 0.3, count_include_pad=rng.random() < 0.5,
                        data_format=data_format, rank=rank)
    shape = (rng.randint(1, 2), *size, channels) if data_format == "channels_last" else (
        rng.randint(1, 2), channels, *size)
    return spec, shape


def random_backend_calls(count: int) -> Iterator[tuple[ConvSpec, np.ndarray, np.ndarray | None,
                                                       np.ndarray | None, int]]:
    """``count`` valid random calls ``(spec, x, kernel, bias, seed)``, a fifth of them unbatched."""
    seed = made = 0
    while made < count:
        seed += 1
        rng = random.Random(seed)
        spec, shape = random_backend_case(rng)
        try:
            resolved = spec.resolve(shape)
        except ValueError:
            continue
        data = np.random.default_rng(seed)
        x = data.standard_normal(shape).astype(np.float32)
        kernel = bias = None
        if spec.pool is None:
            groups = resolved.groups or 1
            cin, cout = resolved.in_channels, resolved.out_channels
            kshape = ((*spec.kernel_size, cout // groups, cin) if spec.transposed
                      else (*spec.kernel_size, cin // groups, cout))
            kernel = data.standard_normal(kshape).astype(np.float32)
            bias = data.standard_normal(cout).astype(np.float32) if rng.random() < 0.7 else None
        if rng.random() < 0.2:
            x = x[0]  # unbatched
        made += 1
        yield spec, x, kernel, bias, seed


def kernels_here(isa: str) -> bool:
    """Whether the compiled kernels of vector ISA ``isa`` ("native", "avx2") run here."""
    from convarith.engine.algorithms import _llvm

    target = _llvm.target_named(isa)
    return _llvm._llvm() is not None and target.runs_here and target.vector_bytes > 0


def compiled_isas() -> list[Any]:
    """The ``isa`` parameters of a test of the compiled kernels: native and AVX2, each
    skipped (with the reason) where its kernels do not run."""
    return [pytest.param(isa, marks=pytest.mark.skipif(not kernels_here(isa),
                                                       reason=f"no {isa} kernels on this machine"))
            for isa in ("native", "avx2")]


def torch_conv2d_nhwc(x: np.ndarray, kernel: np.ndarray, pads: Any, stride: int,
                      dilation: int, groups: int = 1) -> np.ndarray:
    """PyTorch's 2-D convolution in float64 of channels-last ``x`` (N, H, W, C) and
    ``kernel`` (KH, KW, C/groups, F), zero-padded by ``pads`` ((top, bottom), (left,
    right); negative crops), channels-last."""
    import torch

    (top, bottom), (left, right) = pads
    xt = torch.nn.functional.pad(torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64)),
                                 (left, right, top, bottom))
    wt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(kernel), (-1, -2), (0, 1))
                                               ).astype(np.float64))
    y = torch.nn.functional.conv2d(xt, wt, stride=stride, dilation=dilation, groups=groups)
    return np.moveaxis(y.numpy(), 1, -1)


def torch_vjp_nhwc(x: np.ndarray, kernel: np.ndarray, dy: np.ndarray,
                   spec: ConvSpec) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's (float64) input and kernel gradients of ``spec`` (zero padding, any
    strides, dilation and groups) in convarith's channels-last layouts: ``x`` padded here
    as ``spec`` resolves it (PyTorch pads both sides alike), its gradient cropped back."""
    torch = pytest.importorskip("torch")
    resolved = spec.resolve(x.shape)
    rank = spec.rank
    padded = np.pad(x, ((0, 0), *resolved.padding, (0, 0)))
    # (contiguous: PyTorch's slow_conv2d refuses some strided layouts, "grad_weight must
    # be contiguous")
    d_x, d_kernel, _ = torch.ops.aten.convolution_backward(
        torch.from_numpy(np.ascontiguousarray(np.moveaxis(dy, -1, 1), np.float64)),
        torch.from_numpy(np.ascontiguousarray(np.moveaxis(padded, -1, 1), np.float64)),
        torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1)),
                                              np.float64)),
        None, list(spec.strides), [0] * rank, list(spec.dilation), False, [0] * rank,
        spec.groups, [True, True, False])
    crop = (slice(None), *(slice(lo, lo + n) for (lo, _), n in
                           zip(resolved.padding, x.shape[1:-1])))
    return (np.moveaxis(d_x.numpy(), 1, -1)[crop],
            np.moveaxis(d_kernel.numpy(), (0, 1), (-1, -2)))


def random_vjp_operands(rng: np.random.Generator, spec: ConvSpec, x_shape: tuple[int, ...],
                        kernel_shape: tuple[int, ...], dtype: Any
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standard-normal ``x``, kernel and output gradient of ``spec`` (drawn in that
    order) in ``dtype``."""
    x = rng.standard_normal(x_shape).astype(dtype)
    kernel = rng.standard_normal(kernel_shape).astype(dtype)
    out = spec.resolve(x.shape).output_size
    dy = rng.standard_normal((x_shape[0], *out, kernel_shape[-1])).astype(dtype)
    return x, kernel, dy


def assert_two_thread_vjp_matches_torch(x: np.ndarray, kernel: np.ndarray, dy: np.ndarray,
                                        spec: ConvSpec, what: str) -> None:
    """``conv_vjp`` on two workers (skipped on one core): both gradients within the
    conformance bound (1e-5 float32, 1e-10 float64) of PyTorch's (:func:`torch_vjp_nhwc`)."""
    from convarith import engine
    from convarith.engine.algorithms import _threads

    with engine.thread_limit(2):
        if _threads.worker_count() < 2:
            pytest.skip("one core: no second worker")
        d_x, d_kernel, _ = engine.conv_vjp(x, kernel, spec, dy)
    expected_x, expected_kernel = torch_vjp_nhwc(x, kernel, dy, spec)
    tolerance = 1e-10 if x.dtype == np.float64 else 1e-5
    assert relative_error(d_x, expected_x) <= tolerance, f"{what}: input gradient"
    assert relative_error(d_kernel, expected_kernel) <= tolerance, f"{what}: kernel gradient"


def random_grouped_layer(rng: Any) -> dict:
    """A random 2-D grouped layer (a ``random.Random`` draws it): groups of 2 to 32
    channels, 2 to 64 groups (at most 1024 channels), 1×1 to 5×5, strides 1 and 2,
    dilation, padding on either side, 1 to 3 images, float32 or float64, a prepacked or
    writeable kernel, one or two threads."""
    group = rng.choice([2, 4, 8, 16, 32])
    groups = rng.choice([2, 4, 8, 16, 32, 64])
    while group * groups > 1024:
        groups //= 2
    kernel = rng.choice([1, 3, 3, 5])
    dilation = rng.choice([1, 1, 2])
    pads = tuple(rng.choice([(0, 0), (1, 1), (0, 1), (2, 1)]) for _ in range(2))
    reach = dilation * (kernel - 1) + 1
    size = max(rng.randint(2, 16), reach)
    return dict(batch=rng.choice([1, 1, 2, 3]), size=size, group=group, groups=groups,
                kernel=kernel, stride=rng.choice([1, 2]), dilation=dilation, pads=pads,
                dtype=rng.choice([np.float32, np.float32, np.float64]),
                frozen=rng.random() < 0.5, threads=rng.choice([1, 2]))


def weight_grad_suppliers(problem: Any, exact: bool = False) -> dict[str, Any]:
    """The registered algorithms that supply ``problem``'s kernel gradient, by name (as
    :func:`convarith.engine.dispatch.cheapest_weight_grad` takes its candidates;
    ``exact``: none that transforms its operands)."""
    from convarith.engine import dispatch

    return {a.name: a for a in dispatch._REGISTRY.snapshot()
            if a.weight_grad is not None and a.kind == "direct" and a.applies(problem)
            and not (exact and a.value_gain is not None)}
