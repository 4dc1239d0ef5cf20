"""Grouped layers with a kernel that cannot change (``engine.prepack``): the grouped
kernels' panels are packed once and reused, whatever the cells, and the results are
PyTorch's and, bit for bit, those of the same kernel passed writeable (read in place or
packed at every call). Random layers of every family (groups of 2 to 64 channels,
strides, dilation, padding, float32 and float64); each case prints its seed on failure.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import peak_extra_bytes, relative_error
from convarith import ConvSpec
from convarith.engine import conv, prepack
from convarith.engine.algorithms import _llvm, grouped_tiles, prepacked

torch = pytest.importorskip("torch")

CASES = 4 if os.environ.get("CI") == "true" else 24


def _layer(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    group = int(rng.choice([2, 4, 8, 16, 32]))
    groups = int(rng.choice([2, 4, 8, 16, 32, 64]))
    while groups * group > 1024:
        groups //= 2
    size = int(rng.choice([4, 5, 7, 9, 14]))
    return dict(groups=groups, group=group, size=size, batch=int(rng.choice([1, 1, 2, 5])),
                kernel=int(rng.choice([1, 3, 3])), stride=int(rng.choice([1, 1, 2])),
                dilation=int(rng.choice([1, 1, 2])), padding=int(rng.integers(0, 3)),
                dtype=np.float64 if rng.random() < 0.2 else np.float32)


@pytest.mark.parametrize("seed", range(CASES))
def test_prepacked_grouped_kernels_match_pytorch_and_writeable_kernels(seed: int) -> None:
    layer = _layer(8800 + seed)
    where = f"seed {8800 + seed}: {layer}"
    rng = np.random.default_rng(8800 + seed)
    g, group, dtype = layer["groups"], layer["group"], layer["dtype"]
    reach = layer["dilation"] * (layer["kernel"] - 1) + 1
    padding = max(layer["padding"], -(-(reach - layer["size"]) // 2))
    x = rng.standard_normal((layer["batch"], layer["size"], layer["size"], g * group)
                            ).astype(dtype)
    writeable = rng.standard_normal((layer["kernel"], layer["kernel"], group, g * group)
                                    ).astype(dtype)
    frozen = prepack(writeable)
    spec = ConvSpec(layer["kernel"], strides=layer["stride"], padding=padding,
                    dilation=layer["dilation"], groups=g)
    first = conv(x, frozen, spec)
    again = conv(x, frozen, spec)  # the remembered panels
    y = conv(x, writeable, spec)
    assert np.array_equal(first, y), where
    assert np.array_equal(again, y), where
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(
            torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64)),
            torch.from_numpy(np.moveaxis(writeable, (-1, -2), (0, 1)).astype(np.float64)),
            stride=layer["stride"], padding=padding, dilation=layer["dilation"], groups=g)
    bound = 1e-5 if dtype == np.float32 else 1e-10
    assert relative_error(y, np.moveaxis(expected.numpy(), 1, -1)) <= bound, where


def test_prepacked_panels_are_packed_once_and_kept_within_memory() -> None:
    """ResNeXt's 3×3 layer of 1024 channels in 32 groups: the second call reuses the
    first call's panels (one remembered packing of the kernel), and a call's own extra
    memory stays within 1.5x its input, kernel and output."""
    if not _llvm.available():
        pytest.skip("no compiled kernels here")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 4, 4, 1024)).astype(np.float32)
    kernel = prepack(rng.standard_normal((3, 3, 32, 1024)).astype(np.float32))
    plan = grouped_tiles._forward_plan(
        x.shape, kernel.shape, (1, 1), (1, 1), (2, 2), ((0, 0), (0, 0)), 32,
        np.dtype(np.float32), _llvm.vector_target(), 1, frozen=True)
    assert plan is not None and not plan.in_place
    panels = grouped_tiles._panels(plan, kernel)
    assert grouped_tiles._panels(plan, kernel) is panels
    assert not panels.flags.writeable
    writeable = np.array(kernel)
    assert grouped_tiles._panels(plan, writeable) is not grouped_tiles._panels(plan, writeable)
    spec = ConvSpec(3, padding=1, groups=32)
    prepacked.clear()
    io_bytes = x.nbytes + kernel.nbytes + x.nbytes
    assert peak_extra_bytes(lambda: conv(x, kernel, spec)) <= 1.5 * io_bytes
