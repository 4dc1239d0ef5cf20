"""Outputs of 32 MiB or more come from kept buffers (``_outputs``): a buffer is taken
again only when no array uses it, and the results stay PyTorch's."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from convarith.engine import state
from convarith.engine.algorithms import _llvm, _outputs

BIG = (_outputs.POOL_BYTES // 4 + 1024,)  # float32 values just over the threshold


def test_a_dropped_output_is_taken_again_and_a_used_one_is_not() -> None:
    state.clear_caches()
    first = _outputs.output_empty(BIG, np.float32)
    view = first[5:]  # keeps the buffer in use after ``first`` is gone
    address = first.ctypes.data
    del first
    gc.collect()
    second = _outputs.output_empty(BIG, np.float32)
    assert not np.shares_memory(second, view)
    assert second.ctypes.data % 64 == 0 and second.shape == BIG
    del view
    gc.collect()
    third = _outputs.output_empty(BIG, np.float32)
    assert third.ctypes.data == address  # the first buffer, free again
    assert not np.shares_memory(second, third)


def test_small_outputs_and_far_larger_buffers_are_not_shared() -> None:
    state.clear_caches()
    big = _outputs.output_empty((3 * BIG[0],), np.float32)  # three times the size
    del big
    other = _outputs.output_empty(BIG, np.float32)  # too small to take it (over 2x)
    small = _outputs.output_empty((1000,), np.float32)
    assert other.nbytes < 2 * _outputs.POOL_BYTES and small.shape == (1000,)
    assert len(_outputs._FREE) == 1
    state.clear_caches()
    assert not _outputs._FREE


def test_at_most_the_kept_number_wait() -> None:
    state.clear_caches()
    arrays = [_outputs.output_empty(BIG, np.float32) for _ in range(_outputs.KEEP_BUFFERS + 2)]
    del arrays
    gc.collect()
    assert len(_outputs._FREE) == _outputs.KEEP_BUFFERS
    state.clear_caches()


@pytest.mark.parametrize("seed", [0, 1])
def test_large_outputs_in_turn_match_pytorch(seed: int) -> None:
    """Several 1-D layers with outputs over the threshold, the earlier results kept while
    later ones are made (they must not share memory) and dropped in between (their
    buffers taken again), each against PyTorch."""
    torch = pytest.importorskip("torch")
    if not _llvm.available(np.float32):
        pytest.skip("no compiled kernels here")
    from convarith.engine import conv
    from convarith.spec import ConvSpec

    rng = np.random.default_rng(seed)
    kept = []
    for turn in range(4):
        dilation = int(rng.integers(1, 5))
        n, length, c, f = 2, 16384 + int(rng.integers(0, 64)), 16, 256
        x = rng.standard_normal((n, length, c)).astype(np.float32)
        k = rng.standard_normal((2, c, f)).astype(np.float32)
        y = conv(x, k, ConvSpec(2, dilation=dilation, padding="causal", rank=1),
                 algorithm="register_tiles")
        assert y.nbytes >= _outputs.POOL_BYTES
        with torch.no_grad():
            xt = torch.nn.functional.pad(torch.from_numpy(x).double().permute(0, 2, 1),
                                         (dilation, 0))
            expected = torch.nn.functional.conv1d(
                xt, torch.from_numpy(k).double().permute(2, 1, 0),
                dilation=dilation).permute(0, 2, 1).numpy()
        error = np.linalg.norm(y - expected) / np.linalg.norm(expected)
        assert error < 1e-5, f"seed {seed}, turn {turn}: relative error {error:.2e}"
        for earlier, values in kept:
            assert not np.shares_memory(earlier, y)
            assert np.array_equal(earlier, values), f"seed {seed}: an earlier output changed"
        if turn % 2 == 0:
            kept.append((y, y.copy()))
        else:
            y[...] = np.nan  # a buffer taken again must be written whole
        del y
        gc.collect()


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_flat_rows_large_outputs_match_pytorch(kernel_size: int) -> None:
    """flat_rows' products into kept buffers (1×1 and 3×3 "same", outputs over the
    threshold), an earlier result kept while the next is made, against PyTorch."""
    torch = pytest.importorskip("torch")
    from convarith.engine import conv
    from convarith.spec import ConvSpec

    rng = np.random.default_rng(7 + kernel_size)
    state.clear_caches()
    kept = []
    dropped = 0
    for turn in range(3):
        x = rng.standard_normal((2, 128, 128 + turn % 2, 8)).astype(np.float32)
        k = rng.standard_normal((kernel_size, kernel_size, 8, 256)).astype(np.float32)
        y = conv(x, k, ConvSpec(kernel_size, padding="same"), algorithm="flat_rows")
        assert y.nbytes >= _outputs.POOL_BYTES
        with torch.no_grad():
            expected = torch.nn.functional.conv2d(
                torch.from_numpy(x).double().permute(0, 3, 1, 2),
                torch.from_numpy(k).double().permute(3, 2, 0, 1),
                padding=kernel_size // 2).permute(0, 2, 3, 1).numpy()
        error = np.linalg.norm(y - expected) / np.linalg.norm(expected)
        assert error < 1e-5, f"seed {7 + kernel_size}, turn {turn}: relative error {error:.2e}"
        for earlier, values in kept:
            assert not np.shares_memory(earlier, y)
            assert np.array_equal(earlier, values)
        if turn == 2:
            assert y.ctypes.data == dropped  # turn 1's buffer, full of NaN, taken again
        if turn == 0:
            kept.append((y, y.copy()))
        else:
            y[...] = np.nan  # a buffer taken again must be written whole
            dropped = y.ctypes.data
        del y
        gc.collect()
