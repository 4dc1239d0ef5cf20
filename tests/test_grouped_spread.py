"""Groups of half a vector (8 with AVX-512's 16 float32 lanes) on the spread kernels
(``_llvm.spread_module_ir``: each output's sum split over 4 lanes, added when stored):
PyTorch's results for random layers (2 to 64 groups, 1×1 to 5×5 kernels, strides,
dilation, padding on either side, 1 to 4 images, kernels prepacked or writeable, one or
two threads, the calls run inline or as a table of jobs), and a sum added to the output
where the kernels are told to accumulate. Each case prints its seed on failure."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from _helpers import relative_error
from convarith.engine import prepack
from convarith.engine.algorithms import _llvm
from convarith.engine.algorithms import grouped_tiles as gt

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(
    _llvm.vector_width(np.float32) != 16 or _llvm.compiled_spread(np.float32, 4, 4, 8) is None,
    reason="no 16-lane float32 kernels on this machine")

CASES = 4 if os.environ.get("CI") == "true" else 30


def _layer(rng: random.Random) -> dict:
    kernel = rng.choice([1, 3, 3, 5])
    dilation = rng.choice([1, 1, 2])
    pads = tuple(rng.choice([(0, 0), (1, 1), (0, 1), (2, 1)]) for _ in range(2))
    size = max(rng.randint(2, 16), dilation * (kernel - 1) + 1)
    return dict(batch=rng.choice([1, 1, 2, 4]), size=size, groups=rng.choice([2, 4, 6, 32, 64]),
                kernel=kernel, stride=rng.choice([1, 2]), dilation=dilation, pads=pads,
                frozen=rng.random() < 0.5, threads=rng.choice([1, 2]),
                table=rng.random() < 0.3)


def _spread_drives(plan) -> bool:
    """Whether every step of ``plan`` calls a spread kernel."""
    drives = {id(kernels.drive) for kernels in (
        _llvm.compiled_spread(np.float32, vectors, gt.SPREAD, 8) for vectors in (1, 2, 3, 4))
        if kernels is not None}
    return all(id(step.drive) in drives for step in plan.steps)


def test_groups_of_8_on_the_spread_kernels_match_pytorch(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for case in range(CASES):
        layer = _layer(rng)
        where = f"seed {seed}, case {case}: {layer}"
        if layer["table"]:  # every pass cut for the threads, its calls run as a table
            monkeypatch.setenv("CONVARITH_SPIN_US", "1000")
            monkeypatch.setattr(gt, "PARALLEL_FLOPS", 0.0)
        gt._forward_plan.cache_clear()
        data = np.random.default_rng(seed + case)
        g, k = layer["groups"], layer["kernel"]
        x = data.standard_normal((layer["batch"], layer["size"], layer["size"], 8 * g)
                                 ).astype(np.float32)
        kernel = data.standard_normal((k, k, 8, 8 * g)).astype(np.float32)
        if layer["frozen"]:
            kernel = prepack(kernel)
        reach = layer["dilation"] * (k - 1) + 1
        out = tuple((layer["size"] + lo + hi - reach) // layer["stride"] + 1
                    for lo, hi in layer["pads"])
        strides, dilation = (layer["stride"],) * 2, (layer["dilation"],) * 2
        plan = gt._forward_plan(x.shape, kernel.shape, strides, dilation, out, layer["pads"], g,
                                x.dtype, _llvm.vector_target(), layer["threads"], "", True,
                                layer["frozen"])
        assert plan is not None and _spread_drives(plan), where
        y = gt.direct(x, kernel, strides, dilation, g, out, padding=layer["pads"],
                      threads=layer["threads"])
        (top, bottom), (left, right) = layer["pads"]
        xt = torch.nn.functional.pad(torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64)),
                                     (left, right, top, bottom))
        wt = torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).astype(np.float64))
        expected = torch.nn.functional.conv2d(xt, wt, stride=strides, dilation=dilation,
                                              groups=g).numpy()
        assert relative_error(y, np.moveaxis(expected, 1, -1)) <= 1e-5, where
        monkeypatch.undo()
    gt._forward_plan.cache_clear()


def test_spread_kernels_add_to_the_output_when_told_to_accumulate() -> None:
    """A call with ``accumulate`` set adds its sums to the output's values: run twice on
    the same output, the second call doubles the first's result."""
    rng = np.random.default_rng(17)
    x = rng.standard_normal((1, 7, 9, 48)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 8, 48)).astype(np.float32)
    plan = gt._forward_plan(x.shape, kernel.shape, (1, 1), (1, 1), (5, 7), ((0, 0), (0, 0)),
                            6, x.dtype, _llvm.vector_target(), 1, "", True, False)
    assert plan is not None and _spread_drives(plan) and not plan.in_place
    once = gt._run_plan(plan, x, kernel, (5, 7), 1)
    twice = once.copy()
    panels = gt._panels(plan, kernel)
    at = 0
    for step in plan.steps:
        for job in plan.jobs:
            step.drive(x.ctypes.data + job.x_offset * 4, panels.ctypes.data + at * 4,
                       twice.ctypes.data + job.y_offset * 4 + step.first_channel_bytes,
                       step.offsets_address, *job.cells, *step.sums._replace(accumulate=1),
                       *step.batch)
        at += int(np.prod(step.panel))
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-6, atol=1e-6)
