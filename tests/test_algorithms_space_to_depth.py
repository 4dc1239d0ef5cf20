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
    assert not space_to_depth.applies(
        ConvProblem((1, 9, 9, 3), (3, 3, 3, 4), (1, 1), (1, 1), 1, (7, 7), f32))
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
