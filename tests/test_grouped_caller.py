"""Grouped forward passes that run on the calling thread by their remembered calls
(``grouped_tiles._on_caller``: one chunk, or one thread): PyTorch's results and, bit
for bit, those of the plan's Python jobs (``grouped_tiles._run_plan``), for random
grouped layers of every family (groups of 2 to 32 channels, 2 to 64 groups, strides,
dilation, padding on either side, 1 to 3 images, float32 and float64, kernels prepacked
or writeable, one or two threads, the AVX-512 and AVX2 kernels). Each case prints its
seed on failure."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from _helpers import random_grouped_layer, relative_error, torch_conv2d_nhwc
from convarith.engine import prepack
from convarith.engine.algorithms import _llvm
from convarith.engine.algorithms import grouped_tiles as gt

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not _llvm.available(np.float32),
                                reason="no compiled kernels on this machine")

CASES = 4 if os.environ.get("CI") == "true" else 40

#: ResNeXt-50's batch-1 3×3 layer of 256 channels in 32 groups at stride 2 on 28²: it
#: runs on the calling thread (checked first, so a draw of layers cut for threads still
#: checks one that does).
RESNEXT_LAYER = dict(batch=1, size=28, group=8, groups=32, kernel=3, stride=2, dilation=1,
                     pads=((1, 1), (1, 1)), dtype=np.float32, frozen=True, threads=2)


@pytest.mark.parametrize("isa", ["", "avx2"])
def test_calls_on_the_calling_thread_give_the_python_jobs_results_and_pytorchs(
        isa: str, monkeypatch: pytest.MonkeyPatch, grouped_rows_shared: None) -> None:
    if isa:
        monkeypatch.setenv("CONVARITH_VECTOR_ISA", isa)
        if not _llvm.available(np.float32):
            pytest.skip(f"no {isa} kernels on this machine")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    ran_here = 0
    for case in range(CASES + 1):
        layer = RESNEXT_LAYER if case == 0 else random_grouped_layer(rng)
        where = f"seed {seed}, case {case}: {layer}"
        data = np.random.default_rng(seed + case)
        c, k, g = layer["group"] * layer["groups"], layer["kernel"], layer["groups"]
        x = data.standard_normal((layer["batch"], layer["size"], layer["size"], c)
                                 ).astype(layer["dtype"])
        kernel = data.standard_normal((k, k, layer["group"], c)).astype(layer["dtype"])
        if layer["frozen"]:
            kernel = prepack(kernel)
        reach = layer["dilation"] * (k - 1) + 1
        out = tuple((layer["size"] + lo + hi - reach) // layer["stride"] + 1
                    for lo, hi in layer["pads"])
        args = ((layer["stride"],) * 2, (layer["dilation"],) * 2, g, out)
        plan = gt._forward_plan(x.shape, kernel.shape, *args[:2], out, layer["pads"], g,
                                x.dtype, _llvm.vector_target(), layer["threads"], "", True,
                                layer["frozen"])
        here = plan is not None and plan.caller_jobs is not None
        ran_here += here
        assert case > 0 or here, where
        y = gt.direct(x, kernel, *args, padding=layer["pads"], threads=layer["threads"])
        if here:
            assert plan is not None
            jobs = gt._run_plan(plan, x, kernel, out, layer["threads"])
            assert np.array_equal(y, jobs), where
            again = gt.direct(x, kernel, *args, padding=layer["pads"],
                              threads=layer["threads"])
            assert np.array_equal(again, y), where
        tolerance = 1e-5 if layer["dtype"] == np.float32 else 1e-10
        expected = torch_conv2d_nhwc(x, kernel, layer["pads"], layer["stride"],
                                     layer["dilation"], layer["groups"])
        assert relative_error(y, expected) <= tolerance, where
    assert ran_here > 0, f"seed {seed}: no layer ran on the calling thread"
