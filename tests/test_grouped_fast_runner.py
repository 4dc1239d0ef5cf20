"""Grouped forward passes whose decisions are made once per call's shapes and settings
(``grouped_tiles._fast_runner``): bit for bit the values of the usual way (every call
deciding anew) and within bounds of PyTorch's, for random grouped layers (every family,
2 to 64 groups, strides, dilation, padding, 1 to 3 images, float32 and float64,
prepacked or writeable kernels, one or two threads, AVX-512 and AVX2), and for one
layer's calls alternating what the key must tell apart: the thread count, the vector
instruction set, a prepacked against a writeable kernel. Each case prints its seed."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from _helpers import random_grouped_layer, relative_error, torch_conv2d_nhwc
from convarith.engine import prepack, thread_limit
from convarith.engine.algorithms import _llvm
from convarith.engine.algorithms import grouped_tiles as gt

pytestmark = pytest.mark.skipif(not _llvm.available(np.float32),
                                reason="no compiled kernels on this machine")

CASES = 6 if os.environ.get("CI") == "true" else 60


def _operands(layer: dict, seed: int):
    data = np.random.default_rng(seed)
    c, k = layer["group"] * layer["groups"], layer["kernel"]
    x = data.standard_normal((layer["batch"], layer["size"], layer["size"], c)
                             ).astype(layer["dtype"])
    kernel = data.standard_normal((k, k, layer["group"], c)).astype(layer["dtype"])
    reach = layer["dilation"] * (k - 1) + 1
    out = tuple((layer["size"] + lo + hi - reach) // layer["stride"] + 1
                for lo, hi in layer["pads"])
    args = ((layer["stride"],) * 2, (layer["dilation"],) * 2, layer["groups"], out)
    return x, kernel, args


def _usual(x, kernel, args, pads, threads):
    """The call without the remembered runners."""
    original = gt._fast_runner
    gt._fast_runner = lambda *arguments: None
    try:
        return gt.direct(x, kernel, *args, padding=pads, threads=threads)
    finally:
        gt._fast_runner = original


@pytest.mark.parametrize("isa", ["", "avx2"])
def test_fast_runners_give_the_usual_ways_bits_and_pytorchs_values(isa, monkeypatch):
    if isa:
        monkeypatch.setenv("CONVARITH_VECTOR_ISA", isa)
        if not _llvm.available(np.float32):
            pytest.skip(f"no {isa} kernels on this machine")
    gt._forward_plan.cache_clear()
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    fast = 0
    for case in range(CASES):
        layer = random_grouped_layer(rng)
        where = f"seed {seed}, case {case}: {layer}"
        x, kernel, args = _operands(layer, seed + case)
        if min(args[3]) < 1:
            continue
        if layer["frozen"]:
            kernel = prepack(kernel)
        before = len(gt._FAST)
        ran = [gt.direct(x, kernel, *args, padding=layer["pads"], threads=layer["threads"])
               for _ in range(2)]
        fast += any(v is not None for v in list(gt._FAST.values())[before:])
        usual = _usual(x, kernel, args, layer["pads"], layer["threads"])
        for y in ran:
            assert np.array_equal(y, usual), where
        tolerance = 1e-5 if layer["dtype"] == np.float32 else 1e-10
        expected = torch_conv2d_nhwc(x, kernel, layer["pads"], layer["stride"],
                                     layer["dilation"], layer["groups"])
        assert relative_error(ran[0], expected) <= tolerance, where
    gt._forward_plan.cache_clear()
    if not CASES < 10:
        assert fast, f"seed {seed}: no layer drawn ran by a remembered runner"


def test_one_layers_calls_alternating_threads_isa_and_kernels_stay_right(monkeypatch):
    """ResNeXt-50's batch-1 3×3 32-group layer on 7² (a runner of shares of the groups on
    two threads), called in turn on one and two threads, with the AVX2 kernels and the
    native ones, prepacked and writeable: each call gives the usual way's bits."""
    layer = dict(batch=1, size=7, group=16, groups=32, kernel=3, stride=1, dilation=1,
                 pads=((1, 1), (1, 1)), dtype=np.float32, frozen=True, threads=2)
    x, kernel, args = _operands(layer, 5)
    frozen = prepack(kernel)
    from convarith.engine.algorithms import _threads

    shared_among = []  # the workers each table of calls was handed to
    table = _threads.run_native_table

    def spying(runner, rows, count, jobs, jobs_count, workers):
        shared_among.append(workers)
        return table(runner, rows, count, jobs, jobs_count, workers)

    monkeypatch.setattr(_threads, "run_native_table", spying)  # (the usual way's tables)
    monkeypatch.setattr(gt, "run_native_table", spying)  # (the remembered runners')
    gt._forward_plan.cache_clear()
    for turn in range(3):
        for isa in ("", "avx2"):
            monkeypatch.setenv("CONVARITH_VECTOR_ISA", isa)
            if not _llvm.available(np.float32):
                continue
            for k in (frozen, kernel):
                for threads in (None, 1, 2):
                    with thread_limit(2):  # (threads=1 below: fewer than the workers)
                        shared_among.clear()
                        y = gt.direct(x, k, *args, padding=layer["pads"], threads=threads)
                        if threads == 1:  # (one thread asked for: no table shared)
                            assert max(shared_among, default=1) == 1, shared_among
                        usual = _usual(x, k, args, layer["pads"], threads)
                    assert np.array_equal(y, usual), (turn, isa, k is frozen, threads)
    assert any(v is not None for v in gt._FAST.values())  # (a runner was made and used)
    # spinning turned off: the usual way runs Python jobs, and so does the call
    monkeypatch.setenv("CONVARITH_SPIN_US", "0")
    shared_among.clear()
    with thread_limit(2):
        y = gt.direct(x, frozen, *args, padding=layer["pads"], threads=2)
    assert not shared_among and np.array_equal(y, _usual(x, frozen, args, layer["pads"], 2))
    gt._forward_plan.cache_clear()
