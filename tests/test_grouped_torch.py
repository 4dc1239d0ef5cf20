"""Grouped convolutions through the engine against PyTorch: forward, input and kernel
gradients, on random layers of the class :mod:`convarith.engine.algorithms.grouped_tiles`
runs (2 to 64 groups, 1 to 64 channels per group, images 4² to 56², stride 1 or 2,
batch 1 or a few), with the compiled kernels on whatever vector ISA is in force
(``CONVARITH_VECTOR_ISA=avx2`` forces the AVX2 ones) and with them off
(``CONVARITH_JIT=0``). Each case prints its seed on failure.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import assert_cheapest_applies, relative_error
from convarith import ConvSpec
from convarith.engine import conv, conv_vjp
from convarith.engine.algorithms import _llvm
from convarith.engine.dispatch import ConvProblem

torch = pytest.importorskip("torch")

CASES = 6 if os.environ.get("CI") == "true" else 40


def _random_layer(seed: int) -> dict:
    """A random grouped layer; about half have as many outputs as inputs per group (the
    shuffling and interleaved kernels), the others any widths (groups of whole vectors,
    or merged into block-diagonal kernels)."""
    rng = np.random.default_rng(seed)
    groups = int(rng.choice([2, 3, 4, 8, 16, 32, 64]))
    if rng.random() < 0.5:
        group_in = group_out = int(rng.choice([2, 4, 8, 16, 32]))
    else:
        group_in = int(rng.choice([1, 2, 3, 4, 8, 16, 32, 64]))
        group_out = int(rng.choice([1, 2, 4, 8, 12, 16, 32, 64]))
    while groups * max(group_in, group_out) > 1024:
        groups //= 2
    groups = max(groups, 2)
    size = int(rng.choice([4, 5, 7, 8, 14, 28, 56]))
    batch = int(rng.choice([1, 1, 2, 3]))
    while batch * size * size * groups * group_in > 120_000 and size > 4:
        size //= 2
    kernel = int(rng.choice([1, 3, 3, 5]))
    stride = int(rng.choice([1, 1, 2]))
    dilation = int(rng.choice([1, 1, 2]))
    padding = int(rng.integers(0, kernel // 2 + 2)) if size + 2 >= dilation * (kernel - 1) + 1 \
        else dilation * (kernel - 1)
    return dict(groups=groups, group_in=group_in, group_out=group_out, size=size,
                batch=batch, kernel=kernel, stride=stride, dilation=dilation,
                padding=padding)


def _torch_results(x: np.ndarray, kernel: np.ndarray, layer: dict, dy: np.ndarray):
    """PyTorch's (float64) output and gradients, channels-last like convarith's."""
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64)).requires_grad_(True)
    wt = torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).astype(np.float64)
                          ).requires_grad_(True)
    y = torch.nn.functional.conv2d(xt, wt, stride=layer["stride"], padding=layer["padding"],
                                   dilation=layer["dilation"], groups=layer["groups"])
    dyt = torch.from_numpy(np.moveaxis(dy, -1, 1).astype(np.float64))
    dx, dw = torch.autograd.grad(y, (xt, wt), dyt)
    return (np.moveaxis(y.detach().numpy(), 1, -1), np.moveaxis(dx.numpy(), 1, -1),
            np.moveaxis(dw.numpy(), (0, 1), (-1, -2)))


@pytest.mark.parametrize("seed", range(CASES))
def test_grouped_layers_match_pytorch(seed: int) -> None:
    layer = _random_layer(4100 + seed)
    rng = np.random.default_rng(4100 + seed)
    channels = layer["groups"] * layer["group_in"]
    filters = layer["groups"] * layer["group_out"]
    x = rng.standard_normal((layer["batch"], layer["size"], layer["size"], channels)
                            ).astype(np.float32)
    kernel = rng.standard_normal((layer["kernel"], layer["kernel"], layer["group_in"],
                                  filters)).astype(np.float32)
    spec = ConvSpec(layer["kernel"], strides=layer["stride"], padding=layer["padding"],
                    dilation=layer["dilation"], groups=layer["groups"])
    where = f"seed {4100 + seed}: {layer}"
    y = conv(x, kernel, spec)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    expected_y, expected_dx, expected_dk = _torch_results(x, kernel, layer, dy)
    assert y.shape == expected_y.shape, where
    assert relative_error(y, expected_y) <= 1e-5, where
    dx, dk, _ = conv_vjp(x, kernel, spec, dy)
    assert relative_error(dx, expected_dx) <= 1e-5, where
    assert relative_error(dk, expected_dk) <= 1e-5, where


@pytest.mark.parametrize("seed", range(CASES))
def test_grouped_forward_kernels_match_pytorch_and_cost_least(seed: int) -> None:
    """The grouped kernels' forward pass itself (whichever family runs it) equals
    PyTorch's, and the planner's pick for the layer is the cheapest that applies."""
    from convarith.engine.algorithms import grouped_tiles

    if not _llvm.available():
        pytest.skip("no compiled kernels here")
    layer = _random_layer(5200 + seed)
    rng = np.random.default_rng(5200 + seed)
    g, p, s, d = layer["groups"], layer["padding"], layer["stride"], layer["dilation"]
    x = rng.standard_normal((layer["batch"], layer["size"], layer["size"],
                             g * layer["group_in"])).astype(np.float32)
    kernel = rng.standard_normal((layer["kernel"], layer["kernel"], layer["group_in"],
                                  g * layer["group_out"])).astype(np.float32)
    reach = d * (layer["kernel"] - 1) + 1
    out = (layer["size"] + 2 * p - reach) // s + 1
    where = f"seed {5200 + seed}: {layer}"
    y = grouped_tiles.direct(x, kernel, (s, s), (d, d), g, (out, out),
                             padding=((p, p), (p, p)))
    dy = np.zeros(y.shape, np.float32)
    expected, _, _ = _torch_results(x, kernel, layer, dy)
    assert relative_error(y, expected) <= 1e-5, where
    problem = ConvProblem((layer["batch"], layer["size"] + 2 * p, layer["size"] + 2 * p,
                           x.shape[-1]), kernel.shape, (s, s), (d, d), g, (out, out),
                          np.dtype(np.float32))
    assert_cheapest_applies(problem)


def test_resnext_groups_run_on_the_grouped_kernels() -> None:
    """ResNeXt-50's 3×3 layers (32 groups of 4 to 32 channels) take the grouped kernels,
    not merged block-diagonal ones, wherever the compiled kernels run."""
    from convarith.engine.algorithms import grouped_tiles

    width = _llvm.vector_width(np.float32)
    if not width:
        pytest.skip("no compiled kernels here")
    for channels, size in ((128, 30), (256, 16), (512, 9), (1024, 6)):
        group = channels // 32
        problem = ConvProblem((1, size, size, channels), (3, 3, group, channels), (1, 1),
                              (1, 1), 32, (size - 2, size - 2), np.dtype(np.float32))
        family = grouped_tiles._family(32, group, group, channels, width)
        assert family, (channels, width)
        assert grouped_tiles.cost(problem) < grouped_tiles.tiles_cost(problem), (channels, family)


@pytest.mark.parametrize("in_place_cells", [0, 1 << 30])
@pytest.mark.parametrize("seed", range(max(2, CASES // 4)))
def test_kernel_read_in_place_or_packed_matches_pytorch(seed: int, in_place_cells: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The forward pass reads the kernel where it lies (few output cells) or packs it
    into panels (many): both equal PyTorch's, whatever the layer."""
    from convarith.engine.algorithms import grouped_tiles

    if not _llvm.available():
        pytest.skip("no compiled kernels here")
    monkeypatch.setattr(grouped_tiles, "IN_PLACE_CELLS", in_place_cells)
    grouped_tiles._forward_plan.cache_clear()
    layer = _random_layer(6300 + seed)
    layer["group_out"] = layer["group_in"] if seed % 2 else layer["group_out"]
    rng = np.random.default_rng(6300 + seed)
    g, p, s, d = layer["groups"], layer["padding"], layer["stride"], layer["dilation"]
    x = rng.standard_normal((layer["batch"], layer["size"], layer["size"],
                             g * layer["group_in"])).astype(np.float32)
    kernel = rng.standard_normal((layer["kernel"], layer["kernel"], layer["group_in"],
                                  g * layer["group_out"])).astype(np.float32)
    reach = d * (layer["kernel"] - 1) + 1
    p = layer["padding"] = max(p, -(-(reach - layer["size"]) // 2))  # at least one output
    out = (layer["size"] + 2 * p - reach) // s + 1
    where = f"seed {6300 + seed}, in place up to {in_place_cells} cells: {layer}"
    try:
        y = grouped_tiles.direct(x, kernel, (s, s), (d, d), g, (out, out),
                                 padding=((p, p), (p, p)))
    finally:
        grouped_tiles._forward_plan.cache_clear()
    expected, _, _ = _torch_results(x, kernel, layer, np.zeros(y.shape, np.float32))
    assert y.shape == expected.shape, where
    assert relative_error(y, expected) <= 1e-5, where


@pytest.mark.parametrize("size, channels, stride", [(28, 128, 1), (14, 256, 1), (7, 512, 1),
                                                     (14, 512, 2), (4, 1024, 1)])
def test_batch_1_chunks_for_two_threads_match_pytorch(size: int, channels: int,
                                                      stride: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """ResNeXt's batch-1 layers cut into balanced chunks for two threads give PyTorch's
    result, as one chunk on one thread does (they now run on one thread, below
    PARALLEL_FLOPS: the split is forced here so that it stays checked)."""
    from convarith.engine.algorithms import grouped_tiles

    if not _llvm.available():
        pytest.skip("no compiled kernels here")
    monkeypatch.setattr(grouped_tiles, "PARALLEL_FLOPS", 0.0)
    grouped_tiles._forward_plan.cache_clear()
    rng = np.random.default_rng(size * channels)
    x = rng.standard_normal((1, size, size, channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, channels // 32, channels)).astype(np.float32)
    out = (size - 1) // stride + 1
    layer = dict(stride=stride, padding=1, dilation=1, groups=32)
    expected, _, _ = _torch_results(x, kernel, layer, np.zeros((1, out, out, channels),
                                                               np.float32))
    for threads in (1, 2):
        y = grouped_tiles.direct(x, kernel, (stride, stride), (1, 1), 32, (out, out),
                                 padding=((1, 1), (1, 1)), threads=threads)
        assert relative_error(y, expected) <= 1e-5, (size, channels, stride, threads)
    cells = out * out
    jobs = grouped_tiles._job_count(cells, 2.0 * cells * 9 * channels * channels // 32, 2)
    grouped_tiles._forward_plan.cache_clear()
    assert jobs % 2 == 0 and cells // jobs >= grouped_tiles.MIN_JOB_CELLS, jobs


def test_batch_1_resnext_layers_stay_on_one_thread() -> None:
    """Below PARALLEL_FLOPS (every batch-1 layer of ResNeXt-50: 7-10 MFLOP) the forward
    pass is one chunk; 16 images of 4² with 1024 channels are cut for two threads."""
    from convarith.engine.algorithms import grouped_tiles

    for cells, channels in ((28 * 28, 128), (14 * 14, 256), (7 * 7, 512), (4 * 4, 1024)):
        flops = 2.0 * cells * 9 * channels * channels // 32
        assert flops < grouped_tiles.PARALLEL_FLOPS
        assert grouped_tiles._job_count(cells, flops, 2) == 1, (cells, channels)
    cells, channels = 16 * 4 * 4, 1024
    assert grouped_tiles._job_count(cells, 2.0 * cells * 9 * channels * channels // 32, 2) > 1
