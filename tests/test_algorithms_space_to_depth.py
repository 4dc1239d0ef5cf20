"""The space-to-depth algorithm against the slow float64 reference and against PyTorch.

Every path is forced (compiled and NumPy, blocks down to one output cell,
one or two threads) on random strided problems of ranks 1 to 3, with zero
padding still to apply (negative values crop).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from _helpers import (
    DTYPES,
    assert_cheapest_applies,
    assert_runs_as_reference,
    check,
    random_padding,
    reference_direct,
    reference_weight_grad,
)
from convarith.engine import conv
from convarith.engine.algorithms import space_to_depth
from convarith.engine.dispatch import ConvProblem
from convarith.spec import ConvSpec
from numba_free import run_without_numba

SEEDS = range(6)


def random_strided_problem(rng, rank):
    """A random input, kernel, stride (some axis above 1) and dilation."""
    kernel = tuple(int(v) for v in rng.integers(1, 6, rank))
    strides = tuple(int(v) for v in rng.integers(1, 4, rank))
    if all(s == 1 for s in strides):
        strides = (int(rng.integers(2, 4)),) + strides[1:]
    dilation = tuple(int(v) for v in rng.integers(1, 3, rank))
    channels, filters = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    size = tuple(e + int(rng.integers(0, 9)) for e in effective)
    x = rng.standard_normal((int(rng.integers(1, 4)), *size, channels))
    k = rng.standard_normal((*kernel, channels, filters))
    return x, k, strides, dilation


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_space_to_depth_against_reference(seed, rank):
    rng = np.random.default_rng(3000 + 10 * rank + seed)
    x, k, strides, dilation = random_strided_problem(rng, rank)
    pads, xp, out_size = random_padding(rng, x, k, strides, dilation)
    expected = reference_direct(xp, k, strides, dilation, 1, out_size)
    what = f"rank {rank} strides={strides} dilation={dilation} padding={pads}"
    for dtype in DTYPES:
        results = {}
        for use_numba, (block_bytes, threads) in itertools.product(
                [None, False], [(None, None), (1, 2), (200, 1)]):
            y = space_to_depth.direct(x.astype(dtype), k.astype(dtype), strides, dilation, 1,
                                      out_size, padding=pads, use_numba=use_numba,
                                      block_bytes=block_bytes, threads=threads)
            check(y, expected, dtype, seed,
                  f"space_to_depth {what} numba={use_numba} block_bytes={block_bytes}")
            results[use_numba, block_bytes] = y
        # compiled and NumPy steps copy the same values: the products see the same columns
        for block_bytes in (None, 1, 200):
            np.testing.assert_array_equal(results[None, block_bytes],
                                          results[False, block_bytes],
                                          err_msg=f"seed {seed}: numba vs NumPy, {what}")
        # already padded input, no padding argument
        y = space_to_depth.direct(xp.astype(dtype), k.astype(dtype), strides, dilation, 1,
                                  out_size)
        check(y, expected, dtype, seed, f"space_to_depth pre-padded {what}")


def random_thin_problem(rng, rank):
    """A random input of 1 to 4 channels, kernel, any strides (1 included) and dilation."""
    x, k, strides, dilation = random_strided_problem(rng, rank)
    if rng.random() < 0.5:
        strides = (1,) * rank
    channels = int(rng.integers(1, 5))
    x = rng.standard_normal((*x.shape[:-1], channels))
    k = rng.standard_normal((*k.shape[:-2], channels, int(rng.integers(1, 40))))
    return x, k, strides, dilation


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_stride_one_thin_inputs_against_reference(seed, rank):
    """Stride 1 applies with at most 4 input channels: forward and weight gradient."""
    rng = np.random.default_rng(3400 + 10 * rank + seed)
    x, k, _, dilation = random_thin_problem(rng, rank)
    strides = (1,) * rank
    pads, xp, out_size = random_padding(rng, x, k, strides, dilation)
    expected = reference_direct(xp, k, strides, dilation, 1, out_size)
    y = space_to_depth.direct(x, k, strides, dilation, 1, out_size, padding=pads)
    check(y, expected, np.float64, seed, f"stride 1, rank {rank}, padding {pads}")
    dy = rng.standard_normal(expected.shape)
    dk = space_to_depth.weight_grad(x, dy, k.shape[:rank], strides, dilation, 1, padding=pads)
    check(dk, reference_weight_grad(xp, dy, k.shape[:rank], strides, dilation, 1),
          np.float64, seed, f"weight gradient, stride 1, rank {rank}, padding {pads}")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_weight_grad_against_reference(seed, rank):
    """The kernel gradient from the blocks' columns, every path (compiled and NumPy,
    blocks down to one cell, one or two threads), padded or not."""
    rng = np.random.default_rng(3600 + 10 * rank + seed)
    x, k, strides, dilation = random_thin_problem(rng, rank)
    pads, xp, out_size = random_padding(rng, x, k, strides, dilation)
    dy = rng.standard_normal((x.shape[0], *out_size, k.shape[-1]))
    kernel_size = k.shape[:rank]
    expected = reference_weight_grad(xp, dy, kernel_size, strides, dilation, 1)
    what = f"rank {rank} strides={strides} dilation={dilation} padding={pads} seed {seed}"
    for dtype in DTYPES:
        for use_numba, (block_bytes, threads) in itertools.product(
                [None, False], [(None, None), (1, 2), (200, 1)]):
            dk = space_to_depth.weight_grad(
                x.astype(dtype), dy.astype(dtype), kernel_size, strides, dilation, 1,
                padding=pads, use_numba=use_numba, block_bytes=block_bytes, threads=threads)
            assert dk.shape == expected.shape and dk.dtype == dtype, what
            check(dk, expected, dtype, seed,
                  f"weight_grad {what} numba={use_numba} block_bytes={block_bytes}")
        dk = space_to_depth.weight_grad(xp.astype(dtype), dy.astype(dtype), kernel_size,
                                        strides, dilation, 1)
        check(dk, expected, dtype, seed, f"weight_grad pre-padded {what}")


@pytest.mark.oracle
@pytest.mark.parametrize("stride", [1, 2])
def test_first_layer_weight_grad_against_torch(stride):
    """The engine's weight gradient of RGB first layers (which space_to_depth computes where
    it is the cheapest with one) against PyTorch's autograd."""
    torch = pytest.importorskip("torch")
    from convarith.engine import conv_vjp

    rng = np.random.default_rng(50 + stride)
    x = rng.standard_normal((2, 45, 38, 3)).astype(np.float32)
    k = rng.standard_normal((7, 7, 3, 24)).astype(np.float32)
    spec = ConvSpec(7, strides=stride, padding=3)
    dy = rng.standard_normal(conv(x, k, spec).shape).astype(np.float32)
    for algorithm in (None, "space_to_depth"):
        _, dk, _ = conv_vjp(x, k, spec, dy, algorithm=algorithm, need_input_grad=False)
        wt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(k, (-1, -2), (0, 1))))
        wt = wt.double().requires_grad_(True)
        xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).double()
        yt = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=3)
        (grad,) = torch.autograd.grad(yt, (wt,), torch.from_numpy(np.moveaxis(dy, -1, 1).copy())
                                      .double())
        expected = np.moveaxis(grad.numpy(), (0, 1), (-1, -2))
        check(dk, expected, np.float32, stride, f"first layer weight gradient, {algorithm}")


def test_space_to_depth_long_rows_split():
    """A 1-D row longer than one block is cut into pieces of one row."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 301, 3))
    k = rng.standard_normal((5, 3, 4))
    pads = ((2, 2),)
    out = ((301 + 4 - 5) // 2 + 1,)
    expected = reference_direct(np.pad(x, ((0, 0), (2, 2), (0, 0))), k, (2,), (1,), 1, out)
    for use_numba in (None, False):
        y = space_to_depth.direct(x, k, (2,), (1,), 1, out, padding=pads, block_bytes=2000,
                                  threads=2, use_numba=use_numba)
        check(y, expected, np.float64, 7, f"space_to_depth long row numba={use_numba}")


def test_applies_and_dispatch():
    f32 = np.dtype(np.float32)
    stem = ConvProblem((8, 117, 117, 3), (7, 7, 3, 64), (2, 2), (1, 1), 1, (56, 56), f32)
    wide = ConvProblem((8, 57, 57, 64), (3, 3, 64, 128), (2, 2), (1, 1), 1, (28, 28), f32)
    volume = ConvProblem((4, 33, 33, 33, 8), (3, 3, 3, 8, 16), (2, 2, 2), (1, 1, 1), 1,
                         (16, 16, 16), f32)
    tiny = ConvProblem((2, 17, 17, 3), (3, 3, 3, 8), (2, 2), (1, 1), 1, (8, 8), f32)
    # the costs are measured on one machine: whichever wins applies and costs least
    for problem in (stem, wide, volume, tiny):
        assert space_to_depth.applies(problem), problem
        assert_cheapest_applies(problem)
    assert_runs_as_reference(tiny, 8300)
    assert_runs_as_reference(ConvProblem((1, 17, 17, 17, 8), (3, 3, 3, 8, 16), (2, 2, 2),
                                         (1, 1, 1), 1, (8, 8, 8), f32), 8301)
    # stride 1: only few input channels (a first layer)
    assert space_to_depth.applies(
        ConvProblem((1, 9, 9, 3), (3, 3, 3, 4), (1, 1), (1, 1), 1, (7, 7), f32))
    assert not space_to_depth.applies(
        ConvProblem((1, 9, 9, 5), (3, 3, 5, 4), (1, 1), (1, 1), 1, (7, 7), f32))
    assert_cheapest_applies(
        ConvProblem((16, 114, 114, 3), (3, 3, 3, 64), (1, 1), (1, 1), 1, (112, 112), f32))
    assert not space_to_depth.applies(
        ConvProblem((1, 9, 9, 4), (3, 3, 2, 4), (2, 2), (1, 1), 2, (4, 4), f32))
    assert not space_to_depth.applies(
        ConvProblem((1, 5, 5, 5, 5, 1), (3, 3, 3, 3, 1, 1), (2,) * 4, (1,) * 4, 1,
                    (2,) * 4, f32))
    with pytest.raises(ValueError, match="groups=1"):
        space_to_depth.direct(np.ones((1, 9, 4)), np.ones((3, 2, 4)), (2,), (1,), 2, (4,))


@pytest.mark.oracle
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_space_to_depth_against_torch(rank):
    torch = pytest.importorskip("torch")
    seed = 40 + rank
    rng = np.random.default_rng(seed)
    size = {1: (97,), 2: (32, 29), 3: (11, 12, 9)}[rank]
    kernel = {1: (7,), 2: (7, 7), 3: (3, 4, 3)}[rank]
    x = rng.standard_normal((2, *size, 3)).astype(np.float32)
    k = rng.standard_normal((*kernel, 3, 16)).astype(np.float32)
    spec = ConvSpec(kernel, strides=2, padding="same", rank=rank)
    resolved = spec.resolve(x.shape)
    y = conv(x, k, spec, algorithm="space_to_depth")
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    widths = [w for lo, hi in reversed(resolved.padding) for w in (lo, hi)]
    xt = torch.nn.functional.pad(xt, widths)
    wt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(k, (-1, -2), (0, 1))))
    fn = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d,
          3: torch.nn.functional.conv3d}[rank]
    expected = np.moveaxis(fn(xt.double(), wt.double(), stride=2).numpy(), 1, -1)
    check(y, expected, np.float32, seed, f"space_to_depth rank {rank} vs torch")


def test_paths_without_numba_installed():
    """With numba unimportable the default path runs in NumPy; use_numba=True says why not."""
    run_without_numba(
        """
        from convarith.engine.algorithms import space_to_depth
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 9, 8, 3))
        k = rng.standard_normal((3, 3, 3, 4))
        y = space_to_depth.direct(x, k, (2, 2), (1, 1), 1, (4, 4), padding=((1, 0), (1, 1)))
        xp = np.pad(x, ((0, 0), (1, 0), (1, 1), (0, 0)))
        ref = sum(np.einsum("nhwc,cf->nhwf", xp[:, i:i + 7:2, j:j + 7:2], k[i, j])
                  for i in range(3) for j in range(3))
        assert np.allclose(y, ref, rtol=0, atol=1e-12), "space_to_depth"
        must_refuse(lambda: space_to_depth.direct(x, k, (2, 2), (1, 1), 1, (4, 4),
                                                  use_numba=True))
        """
    )


@pytest.mark.parametrize("module", ["space_to_depth", "register_tiles"])
def test_small_job_on_two_workers_is_one_chunk_like_one_worker(monkeypatch, module):
    """A job run inline (below ``SMALL_WORK``) is cut as for one worker, whatever the
    worker count: its chunks would run one after another, each paying its set-up. A
    large one, or one given ``threads``, is still cut for the workers."""
    from convarith.engine.algorithms import _llvm, _threads, register_tiles

    if module == "register_tiles" and not _llvm.available(np.dtype("float32")):
        pytest.skip("no compiled kernels on this machine")
    algorithm = {"space_to_depth": space_to_depth, "register_tiles": register_tiles}[module]
    seen: list[tuple[int, int | None]] = []
    real = _threads.run_chunks

    def counting(work, total, chunk, **options):
        seen.append((-(-total // chunk), options.get("threads")))
        return real(work, total, chunk, **options)

    monkeypatch.setattr(algorithm, "run_chunks", counting)
    real_native = _threads.run_native_jobs

    def counting_native(runner, rows, jobs, **options):  # register_tiles' table of calls
        seen.append((len(jobs), options.get("threads")))
        return real_native(runner, rows, jobs, **options)

    monkeypatch.setattr(_threads, "run_native_jobs", counting_native)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 56, 56, 3)).astype(np.float32)
    k = rng.standard_normal((3, 3, 3, 16)).astype(np.float32)
    problem = ((2, 2), (1, 1), 1, (27, 27))
    assert 2.0 * 27 * 27 * 27 * 16 < _threads.SMALL_WORK
    expected = reference_direct(x.astype(np.float64), k.astype(np.float64), *problem)
    chunks = {}
    for workers, threads in [(1, None), (2, None), (2, 2)]:
        for owner in (_threads, algorithm):
            monkeypatch.setattr(owner, "worker_count", lambda workers=workers: workers,
                                raising=False)
        seen.clear()
        y = algorithm.direct(x, k, *problem, threads=threads)
        check(y, expected, np.float32, 7, f"{module} workers={workers} threads={threads}")
        # (none seen: register_tiles ran the thin layer as one call, thin_call)
        chunks[workers, threads] = seen[-1][0] if seen else 1
    assert chunks[2, None] == chunks[1, None], chunks
    assert chunks[2, 2] > 1, chunks


def test_first_layer_weight_grad_is_planned_by_cost():
    """The weight gradient goes to the cheapest algorithm that has one, by the weight
    gradients' own costs; for RGB stems they rank space-to-depth below flat_rows
    (measured, one core: 113² -> 56², 0.13 against 0.23 ms; 33² -> 16², 0.050 against
    0.063)."""
    from convarith.engine.dispatch import available_algorithms, cheapest_weight_grad, get_algorithm

    f32 = np.dtype(np.float32)
    stem = ConvProblem((1, 113, 113, 3), (3, 3, 3, 32), (2, 2), (1, 1), 1, (56, 56), f32)
    tiny = ConvProblem((1, 33, 33, 3), (3, 3, 3, 16), (2, 2), (1, 1), 1, (16, 16), f32)
    for problem in (stem, tiny):
        chosen = cheapest_weight_grad(problem)
        costs = {name: get_algorithm(name).gradient_cost(problem)
                 for name in available_algorithms()
                 if get_algorithm(name).weight_grad is not None
                 and get_algorithm(name).kind == "direct" and get_algorithm(name).applies(problem)}
        assert costs[chosen.name] == min(costs.values()), (problem, chosen.name, costs)
    ours, theirs = get_algorithm("space_to_depth"), get_algorithm("flat_rows")
    assert ours.gradient_cost(stem) < theirs.gradient_cost(stem)
    assert ours.gradient_cost(tiny) < theirs.gradient_cost(tiny)
    rng = np.random.default_rng(8400)
    x = rng.standard_normal(stem.input_shape)
    dy = rng.standard_normal((1, 56, 56, 32))
    dk = cheapest_weight_grad(stem).weight_grad(x, dy, (3, 3), (2, 2), (1, 1), 1)
    check(dk, reference_weight_grad(x, dy, (3, 3), (2, 2), (1, 1), 1), np.float64, 8400,
          "stem weight gradient")
