"""Large float32 1×1 layers go to the register kernels (measured faster than BLAS's
product there, see ``register_tiles.WIDE_POINTWISE_PER_FLOP``), and give PyTorch's result."""

from __future__ import annotations

import numpy as np
import pytest

from convarith.engine import dispatch
from convarith.engine.algorithms import _llvm, register_tiles
from convarith.engine.dispatch import ConvProblem


def _problem(batch: int, size: int, c: int, f: int, stride: int = 1,
             dtype: str = "float32") -> ConvProblem:
    out = -(-size // stride)
    return ConvProblem((batch, size, size, c), (1, 1, c, f), (stride, stride), (1, 1), 1,
                       (out, out), np.dtype(dtype))


def _native() -> bool:
    return _llvm.available(np.float32) and not _llvm.narrower_than_host()


def test_which_layers_count_as_wide() -> None:
    if not _native():
        pytest.skip("no native compiled kernels here")
    assert register_tiles.wide_pointwise(_problem(16, 28, 256, 64))
    assert register_tiles.wide_pointwise(_problem(16, 56, 256, 64))  # 12.8 MB out
    assert register_tiles.wide_pointwise(_problem(16, 56, 64, 256))  # 51 MB out, kept
    assert not register_tiles.wide_pointwise(_problem(64, 112, 64, 256))  # 822 MB: not kept
    assert not register_tiles.wide_pointwise(_problem(16, 28, 256, 64, dtype="float64"))
    assert not register_tiles.wide_pointwise(_problem(16, 28, 256, 64, stride=2))
    assert not register_tiles.wide_pointwise(_problem(16, 28, 144, 24))  # not whole vectors
    assert not register_tiles.wide_pointwise(_problem(1, 28, 256, 64))  # under 1e8 FLOPs
    assert not register_tiles.wide_pointwise(_problem(1, 112, 256, 64))  # one image


def test_the_planner_picks_the_register_kernels_for_them() -> None:
    if not _native():
        pytest.skip("no native compiled kernels here")
    from convarith.engine.algorithms import pointwise_rows

    # 64 outputs: a compiled kernel, register_tiles' or pointwise_rows' narrow one
    # (measured faster than register_tiles there: 16×28² 256 -> 64, one core, 4.1
    # against 5.2 ms), never BLAS's product
    chosen = dispatch.choose(_problem(16, 28, 256, 64)).name
    assert chosen == "register_tiles" or (
        chosen == "pointwise_rows"
        and pointwise_rows.compiled_narrow(np.dtype("float32"), 16 * 28 * 28, 256, 64)), chosen
    # an output the kept buffers hold (51 MB) no longer pays fresh pages at each call
    assert dispatch.choose(_problem(16, 56, 64, 256)).name == "register_tiles"
    assert dispatch.choose(_problem(64, 112, 64, 256)).name != "register_tiles"


def test_a_wide_pointwise_layer_matches_pytorch() -> None:
    torch = pytest.importorskip("torch")
    from convarith import conv2d

    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 27, 29, 160)).astype(np.float32)
    w = rng.standard_normal((1, 1, 160, 64)).astype(np.float32)
    problem = ConvProblem(x.shape, w.shape, (1, 1), (1, 1), 1, (27, 29), x.dtype)
    assert not _native() or register_tiles.wide_pointwise(problem)
    y = conv2d(x, w)
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(
            torch.from_numpy(x).permute(0, 3, 1, 2).double(),
            torch.from_numpy(w).permute(3, 2, 0, 1).double()).permute(0, 2, 3, 1).numpy()
    error = np.linalg.norm(y - expected) / np.linalg.norm(expected)
    assert error < 1e-6, f"seed 5: relative error {error:.2e}"
