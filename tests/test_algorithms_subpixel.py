"""Strided transposed convolutions as one Winograd 3×3 convolution with interleaved phases.

Expected values come from the float64 scatter definition (``o = i·S + t - P``)
of ``test_algorithms_col2im`` and from PyTorch's ``conv_transpose2d``.
Bounds: relative error ≤ 1e-5 in float32 (Winograd F(4×4, 3×3) on few
channels stays near 1e-6), ≤ 1e-10 in float64.
"""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import (
    assert_transposed_cheapest_applies,
    assert_transposed_runs_as_reference,
    reference_scatter,
    relative_error,
)
from convarith import ConvSpec
from convarith.engine import conv
from convarith.engine.algorithms import subpixel, winograd
from convarith.engine.dispatch import ConvProblem

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


def random_case(seed):
    """A 2-D transposed convolution whose phases read at most 3 offsets per axis."""
    rng = np.random.default_rng(seed)
    while True:
        kernel_size = tuple(int(v) for v in rng.integers(1, 7, 2))
        strides = tuple(int(v) for v in rng.integers(1, 4, 2))
        if strides != (1, 1) and all(
                subpixel._widest(k, s) <= 3 for k, s in zip(kernel_size, strides)):
            break
    size = tuple(int(v) for v in rng.integers(1, 9, 2))
    # the zero-inserted grid's padding: from cropping most of the kernel to extra rows
    padding = tuple((int(rng.integers(-1, k + 1)), int(rng.integers(-1, k + s)))
                    for k, s in zip(kernel_size, strides))
    grid = [(n - 1) * s + 1 + lo + hi for n, s, (lo, hi) in zip(size, strides, padding)]
    if any(g < k for g, k in zip(grid, kernel_size)):
        padding = tuple((k, k) for k in kernel_size)
    x = rng.standard_normal((int(rng.integers(1, 3)), *size, int(rng.choice([1, 3, 8]))))
    kernel = rng.standard_normal((*kernel_size, int(rng.choice([1, 2, 5])), x.shape[-1]))
    return x, kernel, strides, padding


@pytest.mark.parametrize("seed", range(16))
def test_subpixel_against_definition(seed):
    x, kernel, strides, padding = random_case(7000 + seed)
    expected = reference_scatter(x, kernel, strides, (1, 1), 1, padding)
    for dtype in (np.float32, np.float64):
        for use_numba in (None, False):
            what = (f"seed {7000 + seed}, {dtype.__name__}, numba={use_numba}, x {x.shape}, "
                    f"kernel {kernel.shape}, strides {strides}, padding {padding}")
            y = subpixel.transposed(x.astype(dtype), kernel.astype(dtype), strides, (1, 1), 1,
                                    padding, expected.shape[1:-1], use_numba=use_numba)
            assert y.dtype == dtype and y.shape == expected.shape, what
            assert relative_error(y, expected) <= TOLERANCE[dtype], what


def test_union_kernel_places_every_tap_once():
    """Each tap of a K = 4, S = 2 kernel lands in exactly one (offset, phase) slot."""
    kernel = np.arange(1.0, 4 * 4 * 1 * 1 + 1).reshape(4, 4, 1, 1)
    for lo in range(0, 4):  # every P mod 2, and a few offsets
        shifts = [3 - lo, 3 - lo]
        firsts = [subpixel._offsets(4, 2, p)[0] for p in shifts]
        u = subpixel.union_kernel(kernel, (2, 2), shifts, firsts)
        assert u.shape == (3, 3, 1, 4)
        assert sorted(u[u != 0].tolist()) == list(range(1, 17)), f"lo {lo}"


def test_phases_keyword_interleaves_like_depth_to_space():
    """winograd.direct(phases=(S0, S1)) equals the plain output, depth-to-space, for both tiles."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 9, 7, 6))
    kernel = rng.standard_normal((3, 3, 6, 2 * 3 * 4))
    for m in (4, 2):
        for use_numba in (None, False):
            plain = winograd.direct(x, kernel, (1, 1), (1, 1), 1, (7, 5), m=m,
                                    use_numba=use_numba)
            expected = plain.reshape(2, 7, 5, 2, 3, 4).transpose(0, 1, 3, 2, 4, 5)
            expected = expected.reshape(2, 14, 15, 4)
            y = winograd.direct(x, kernel, (1, 1), (1, 1), 1, (7, 5), m=m,
                                use_numba=use_numba, phases=(2, 3))
            np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="phases"):
        winograd.direct(x, kernel, (1, 1), (1, 1), 1, (7, 5), phases=(5, 1))


def _problem(x_shape, kernel_shape, strides):
    out = tuple(n * s for n, s in zip(x_shape[1:-1], strides))
    return ConvProblem(x_shape, kernel_shape, strides, (1, 1), 1, out, np.dtype(np.float32))


def test_dispatch_takes_the_cheapest_for_upsampling_layers():
    """The benchmark's L9 (4×4 stride 2, Keras "same": grid padding 2) and a 3×3 stride 2:
    subpixel applies to both; whichever algorithm the registered costs pick (subpixel,
    col2im, the register-tiled phases, or a direct one on the zero-inserted grid) applies,
    is the cheapest, and computes the convolution. Where subpixel does not apply it is not
    taken."""
    same = ((2, 2), (2, 2))  # Keras "same" for K = 4, S = 2: the grid's padding
    l9 = ((8, 28, 28, 64), (4, 4, 32, 64), (2, 2), (1, 1), 1, same)
    three = ((8, 28, 28, 64), (3, 3, 32, 64), (2, 2), (1, 1), 1, ((1, 2), (1, 2)))
    for seed, layer in enumerate((l9, three)):
        assert subpixel.applies(_problem(layer[0], layer[1], (2, 2)))
        assert_transposed_cheapest_applies(*layer)
        assert_transposed_runs_as_reference(*layer, seed=9300 + seed, batch=1)
    # few channels: Winograd's transforms cost more than they save
    assert not subpixel.applies(_problem((8, 28, 28, 8), (4, 4, 4, 8), (2, 2)))
    # 8×8 stride 2 reads 4 offsets per axis; groups and dilation are not handled
    assert not subpixel.applies(_problem((8, 28, 28, 64), (8, 8, 32, 64), (2, 2)))
    grouped = ConvProblem((8, 28, 28, 64), (4, 4, 16, 64), (2, 2), (1, 1), 2, (56, 56),
                          np.dtype(np.float32))
    assert not subpixel.applies(grouped)
    for layer in (((8, 28, 28, 8), (4, 4, 4, 8), (2, 2), (1, 1), 1, same),
                  ((8, 28, 28, 64), (4, 4, 16, 64), (2, 2), (1, 1), 2, same)):
        assert assert_transposed_cheapest_applies(*layer) != "subpixel"


def test_subpixel_refuses_what_it_does_not_handle():
    x = np.ones((1, 4, 4, 2))
    with pytest.raises(ValueError, match="groups=1 and no dilation"):
        subpixel.transposed(x, np.ones((4, 4, 1, 2)), (2, 2), (2, 2), 1, ((2, 2), (2, 2)),
                            (5, 5))
    with pytest.raises(ValueError, match="at most 3 input offsets"):
        subpixel.transposed(x, np.ones((8, 8, 1, 2)), (2, 2), (1, 1), 1, ((4, 4), (4, 4)),
                            (8, 8))


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(4))
def test_engine_default_path_against_torch(seed):
    """The engine's subpixel path on L9-like layers equals PyTorch."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8000 + seed)
    size = tuple(int(v) for v in rng.integers(3, 12, 2))
    x = rng.standard_normal((2, *size, 32)).astype(np.float32)
    kernel = rng.standard_normal((4, 4, 16, 32)).astype(np.float32)  # (*K, F, C)
    spec = ConvSpec(4, strides=2, padding="same", transposed=True)
    assert subpixel.applies(_problem(x.shape, (4, 4, 16, 32), (2, 2)))
    y = conv(x, kernel, spec, algorithm="subpixel")
    # Keras "same" for K = 4, S = 2 is PyTorch's padding=1 (the grid's 2 = K - 1 - 1)
    expected = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(np.moveaxis(x, -1, 1).copy()),
        torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).copy()),
        stride=2, padding=1).numpy()
    expected = np.moveaxis(expected, 1, -1)
    assert y.shape == expected.shape, f"seed {8000 + seed}"
    error = relative_error(y, expected)
    assert error <= 1e-5, f"seed {8000 + seed}: error {error:.2e}"
