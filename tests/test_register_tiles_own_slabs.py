"""Dense padded layers on the remembered call tables (``register_tiles._record_table``)
whose jobs each pad their own input rows into their own part of a slab, on the thread
that runs them (``register_tiles._own_slabs``): PyTorch's results and, bit for bit, those
of the same table with the input padded once by the caller, for random padded layers
(kernels 1 to 5, strides 1 and 2, dilation, padding on either side, rows cropped too,
1 to 3 images, rows of one image, runs of images or shares of the output channels per
job, float32 and float64, kernels prepacked or read in place, the AVX-512 and AVX2
kernels). Each case prints its seed on failure."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from _helpers import compiled_isas, relative_error, torch_conv2d_nhwc
from convarith.engine import prepack
from convarith.engine.algorithms import _native_jobs
from convarith.engine.algorithms import register_tiles as rt

torch = pytest.importorskip("torch")

CASES = 8 if os.environ.get("CI") == "true" else 60

#: ResNet-50's batch-1 3×3 stride-2 layer of 128 channels on 28² (shares of the output
#: channels, each job its own copy of the padded input): checked first.
RESNET_LAYER = dict(batch=1, size=28, channels=128, filters=128, kernel=3, stride=2,
                    dilation=1, pads=((0, 1), (0, 1)), dtype=np.float32, frozen=True)


def _layer(rng: random.Random) -> dict:
    kernel = rng.choice([1, 2, 3, 3, 5])
    return dict(batch=rng.choice([1, 1, 2, 3]), size=rng.choice([7, 14, 17, 28, 40]),
                channels=rng.choice([16, 32, 64, 128]), filters=rng.choice([16, 48, 64, 128]),
                kernel=kernel, stride=rng.choice([1, 2]), dilation=rng.choice([1, 1, 2]),
                pads=tuple((rng.randrange(-1, kernel + 1), rng.randrange(-1, kernel + 1))
                           for _ in range(2)),
                dtype=rng.choice([np.float32, np.float32, np.float64]),
                frozen=rng.random() < 0.5)


@pytest.mark.parametrize("isa", compiled_isas())
def test_own_slabs_match_pytorch_and_the_callers_copy(isa, monkeypatch):
    if _native_jobs.padded_rows_filler() is None or _native_jobs.kernel_runner() is None:
        pytest.skip("no compiled filler or spinning helpers here")
    monkeypatch.setenv("CONVARITH_VECTOR_ISA", isa)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    layers = [RESNET_LAYER] + [_layer(rng) for _ in range(CASES)]
    ran = 0
    for index, layer in enumerate(layers):
        size, kernel_size = layer["size"], layer["kernel"]
        reach = (kernel_size - 1) * layer["dilation"] + 1
        pads = [tuple(p) for p in layer["pads"]]
        if size + min(sum(p) for p in pads) < reach:
            continue
        out = [(size + sum(p) - reach) // layer["stride"] + 1 for p in pads]
        data = np.random.default_rng(seed + index)
        x = data.standard_normal((layer["batch"], size, size, layer["channels"])).astype(
            layer["dtype"])
        kernel = data.standard_normal((kernel_size, kernel_size, layer["channels"],
                                       layer["filters"])).astype(layer["dtype"])
        if layer["frozen"]:
            kernel = prepack(kernel)
        strides, dilation = (layer["stride"],) * 2, (layer["dilation"],) * 2
        plan = rt._table_plan(x, kernel, 1, strides, dilation, tuple(out), pads, 2)
        if plan is None or plan.fill_rows is None:
            continue
        ran += 1
        where = f"seed {seed}, layer {layer}"
        got = rt.direct(x, kernel, strides, dilation, 1, out, padding=pads, threads=2)
        expected = torch_conv2d_nhwc(x, kernel, layer["pads"], layer["stride"],
                                     layer["dilation"])
        tolerance = 1e-5 if layer["dtype"] == np.float32 else 1e-10
        assert relative_error(got, expected) < tolerance, where
        # the same calls on the input padded once by the caller: the same values
        caller = plan._replace(fill_rows=None, slab_elems=0, rows=np.delete(
            _callers_rows(plan, x, pads), plan.fill_rows, axis=0), spans=_spans(plan))
        with monkeypatch.context() as patch:
            patch.setattr(rt, "_table_plan", lambda *args, plan=caller, **kwargs: plan)
            again = rt.direct(x, kernel, strides, dilation, 1, out, padding=pads, threads=2)
        assert np.array_equal(got, again), where
    assert ran >= 1, f"seed {seed}: no layer took the jobs' own slabs"


def _callers_rows(plan, x, pads):
    """The plan's rows with every call's input offset taken back from its job's slab to
    the input padded once (the layout the caller's copy has)."""
    rows = plan.rows.copy()
    (top, _), (left, right) = pads
    n, h, w, c = x.shape
    _, needed, padded_w, _ = plan.padded_shape
    itemsize = x.dtype.itemsize
    for (first, count), at in zip(plan.spans, plan.fill_rows):
        slab_at, image_at = rows[at, 1], rows[at, 2]
        image = image_at // (h * w * c * itemsize)
        row0 = rows[at, 7] + top
        rows[first + 1:first + count, 1] += (image * needed * padded_w * c
                                             + row0 * padded_w * c) * itemsize - slab_at
    return rows


def _spans(plan):
    """The plan's jobs without their filler rows."""
    spans, at = [], 0
    for _, count in plan.spans:
        spans.append((at, count - 1))
        at += count - 1
    return tuple(spans)


def test_shares_of_the_output_channels_copy_a_large_input_once():
    """Jobs that share the output channels each copy the whole padded input only while it
    takes at most ``SLAB_BYTES``: ResNet-50's 3×3 stride-2 512 -> 512 on 16 images of 7²
    (7.4 MB padded) keeps one copy made by the caller (two took 1.88× the operands'
    memory), its batch-1 3×3 stride-2 128 on 28² (0.43 MB) one per job."""
    if _native_jobs.padded_rows_filler() is None or _native_jobs.kernel_runner() is None:
        pytest.skip("no compiled filler or spinning helpers here")
    large = rt._table_plan(np.empty((16, 7, 7, 512), np.float32),
                           prepack(np.ones((3, 3, 512, 512), np.float32)), 1, (2, 2), (1, 1),
                           (4, 4), [(0, 1), (0, 1)], 2)
    small = rt._table_plan(np.empty((1, 28, 28, 128), np.float32),
                           prepack(np.ones((3, 3, 128, 128), np.float32)), 1, (2, 2), (1, 1),
                           (14, 14), [(0, 1), (0, 1)], 2)
    assert large is not None and large.fill_rows is None
    assert small is not None and small.fill_rows is not None
