"""``core.flip_swap``, the kernel of every input gradient and transposed convolution run
on the grid, against its definition written out with NumPy's flips and transposes."""

from __future__ import annotations

import numpy as np
import pytest

from convarith.engine.core import flip_swap


def _by_definition(kernel: np.ndarray, groups: int) -> np.ndarray:
    rank = kernel.ndim - 2
    group_in, filters = kernel.shape[-2:]
    group_out = filters // groups
    result = np.empty((*kernel.shape[:rank], group_out, groups * group_in), kernel.dtype)
    flipped = np.flip(kernel, axis=tuple(range(rank)))
    for g in range(groups):
        block = flipped[..., g * group_out:(g + 1) * group_out]  # (*K, Cg, Fg)
        result[..., g * group_in:(g + 1) * group_in] = np.swapaxes(block, -1, -2)
    return result


@pytest.mark.parametrize("seed", range(12))
def test_flip_swap_matches_its_definition(seed: int) -> None:
    rng = np.random.default_rng(900 + seed)
    rank = int(rng.integers(1, 4))
    groups = int(rng.choice([1, 2, 3, 8]))
    taps = tuple(int(k) for k in rng.integers(1, 5, rank))
    group_in, group_out = (int(v) for v in rng.integers(1, 6, 2))
    kernel = rng.standard_normal((*taps, group_in, groups * group_out)).astype(np.float32)
    if seed % 3 == 0:
        kernel = np.asfortranarray(kernel)  # any memory layout
    swapped = flip_swap(kernel, groups)
    assert swapped.flags.c_contiguous
    np.testing.assert_array_equal(swapped, _by_definition(kernel, groups),
                                  err_msg=f"seed {900 + seed}: {kernel.shape}, {groups} groups")
    np.testing.assert_array_equal(flip_swap(swapped, groups), kernel)
