"""``grouped_tiles.weight_grad`` summed in blocks of output cells: a padded input is padded
by each chunk, whole images a block at a time, into its thread's workspace; later blocks
add to the gradient (or, where a group's vectors spill into the next group's columns,
through a scratch gradient). Random grouped layers (groups of 2 to 64 channels, widths
that spill and that do not, strides, dilation, padding, 1 to 24 images, float32 and
float64, one and two threads, blocks and chunks made small to have many) against
PyTorch's kernel gradient; each case prints its seed on failure."""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import relative_error
from convarith.engine.algorithms import _llvm, grouped_tiles

torch = pytest.importorskip("torch")

CASES = 4 if os.environ.get("CI") == "true" else 24


def _layer(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    group = int(rng.choice([2, 3, 4, 5, 8, 12, 16, 24, 32, 64]))
    groups = int(rng.choice([2, 3, 4, 8, 16, 32, 64]))
    while groups * group > 1024:
        groups //= 2
    return dict(groups=groups, group=group, group_out=int(rng.choice([group, group, 2 * group])),
                size=int(rng.integers(3, 15)), batch=int(rng.choice([1, 2, 5, 16, 24])),
                taps=int(rng.choice([1, 2, 3, 3])), stride=int(rng.choice([1, 2])),
                dilation=int(rng.choice([1, 1, 2])),
                padding=tuple(int(p) for p in rng.integers(0, 3, 4)),
                threads=int(rng.choice([1, 2])), small_blocks=bool(rng.random() < 0.6),
                dtype=np.float64 if rng.random() < 0.25 else np.float32)


@pytest.mark.parametrize("seed", range(CASES))
def test_grouped_weight_grad_in_blocks_matches_pytorch(seed: int, monkeypatch) -> None:
    layer = _layer(9400 + seed)
    where = f"seed {9400 + seed}: {layer}"
    dtype = np.dtype(layer["dtype"])
    if not _llvm.available(dtype):
        pytest.skip("no compiled kernels here")
    if layer["small_blocks"]:  # many blocks per chunk, many chunks
        monkeypatch.setattr(grouped_tiles, "MIN_SHARE", 4)
        monkeypatch.setattr(grouped_tiles, "BLOCK_BYTES", 1)
    rng = np.random.default_rng(9400 + seed)
    g, group, group_out = layer["groups"], layer["group"], layer["group_out"]
    top, bottom, left, right = layer["padding"]
    taps, stride, dilation = layer["taps"], layer["stride"], layer["dilation"]
    size = max(layer["size"], dilation * (taps - 1) + 1 - min(top + bottom, left + right))
    x = rng.standard_normal((layer["batch"], size, size, g * group)).astype(dtype)
    out = [(size + lo + hi - dilation * (taps - 1) - 1) // stride + 1
           for lo, hi in ((top, bottom), (left, right))]
    dy = rng.standard_normal((layer["batch"], *out, g * group_out)).astype(dtype)
    dk = grouped_tiles.weight_grad(x, dy, (taps, taps), (stride, stride), (dilation, dilation),
                                   g, padding=((top, bottom), (left, right)),
                                   threads=layer["threads"])
    xt = torch.nn.functional.pad(torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64)),
                                 (left, right, top, bottom))
    kt = torch.zeros((g * group_out, group, taps, taps), dtype=torch.float64,
                     requires_grad=True)
    y = torch.nn.functional.conv2d(xt, kt, stride=stride, dilation=dilation, groups=g)
    y.backward(torch.from_numpy(np.moveaxis(dy, -1, 1).astype(np.float64)))
    expected = np.moveaxis(kt.grad.numpy(), (0, 1), (-1, -2))
    bound = 1e-5 if dtype == np.float32 else 1e-10
    assert dk.shape == expected.shape, where
    assert relative_error(dk, expected) <= bound, where
