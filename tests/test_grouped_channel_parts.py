"""Grouped forward passes of one chunk of output (batch 1) cut among threads by groups:
each thread pads its own channels into a slab of its own and runs its share of the
groups or column blocks. Checked against PyTorch and, bit for bit, against one
thread, for random grouped layers (every family of grouped kernels, 2 to 64
groups, padding, strides, dilation, float32 and float64); the channel filler
against ``np.pad``. Each case prints its seed on failure."""

from __future__ import annotations

import ctypes
import os
import random

import numpy as np
import pytest

from _helpers import peak_extra_bytes, relative_error
from convarith.engine.algorithms import _llvm, _native_jobs, _spin
from convarith.engine.algorithms import grouped_tiles as gt

pytestmark = pytest.mark.skipif(
    not _llvm.available(np.float32) or _spin.spinner() is None
    or _native_jobs.rows_runner(_native_jobs.KERNEL_POINTERS,
                                _native_jobs.KERNEL_FIELDS) is None
    or _native_jobs.padded_channels_filler() is None,
    reason="no compiled kernels, spinner or filler on this machine")

CASES = 4 if os.environ.get("CI") == "true" else 60


@pytest.fixture(autouse=True)
def _spinning(monkeypatch):
    """The helpers spin (the table needs them); every one-chunk pass is cut by groups."""
    monkeypatch.setenv("CONVARITH_SPIN_US", "1000")
    monkeypatch.setattr(gt, "CHANNEL_SPLIT_FLOPS", 0.0)
    gt._forward_plan.cache_clear()
    yield
    gt._forward_plan.cache_clear()


def _layer(rng: random.Random) -> dict:
    group = rng.choice([2, 4, 8, 16, 32])
    groups = rng.choice([2, 4, 8, 16, 32, 64])
    kernel = rng.choice([1, 3, 3, 5])
    dilation = rng.choice([1, 1, 2])
    reach = dilation * (kernel - 1) + 1
    pad = rng.choice([(0, 0), (1, 1), (0, 1), (2, 1)])
    size = max(rng.randint(2, 14), reach - pad[0] - pad[1])
    return dict(size=size, channels=group * groups, groups=groups, kernel=kernel,
                stride=rng.choice([1, 2]), dilation=dilation, pad=pad,
                dtype=rng.choice([np.float32, np.float32, np.float64]))


#: ResNeXt-50's 3×3 32-group layer on 14² (batch 1).
RESNEXT_LAYER = dict(size=14, channels=256, groups=32, kernel=3, stride=1, dilation=1,
                     pad=(1, 1), dtype=np.float32)


def _plan(layer: dict, out: int, threads: int):
    c, k = layer["channels"], layer["kernel"]
    dtype = np.dtype(layer["dtype"])
    return gt._forward_plan((1, layer["size"], layer["size"], c), (k, k, c // layer["groups"], c),
                            (layer["stride"],) * 2, (layer["dilation"],) * 2, (out, out),
                            (layer["pad"], layer["pad"]), layer["groups"], dtype,
                            _llvm.vector_target(), threads, "")


def test_groups_shared_among_threads_give_one_threads_results_and_pytorchs():
    torch = pytest.importorskip("torch")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    shared = 0
    for case in range(CASES + 1):
        # case 0: a ResNeXt layer, which is cut by groups, so that a draw of layers too
        # small to cut still checks a shared pass
        layer = RESNEXT_LAYER if case == 0 else _layer(rng)
        threads = 2 if case == 0 else rng.choice([2, 2, 4])
        where = f"seed {seed}, case {case}: {layer}, {threads} threads"
        data = np.random.default_rng(seed + case)
        c, k = layer["channels"], layer["kernel"]
        x = data.standard_normal((1, layer["size"], layer["size"], c)).astype(layer["dtype"])
        kernel = data.standard_normal((k, k, c // layer["groups"], c)).astype(layer["dtype"])
        lo, hi = layer["pad"]
        out = (layer["size"] + lo + hi - layer["dilation"] * (k - 1) - 1) // layer["stride"] + 1

        y, alone = (gt.direct(x, kernel, (layer["stride"],) * 2, (layer["dilation"],) * 2,
                              layer["groups"], (out, out), padding=(layer["pad"],) * 2,
                              threads=count) for count in (threads, 1))
        plan = _plan(layer, out, threads)
        shared += plan is not None and plan.parts > 1
        assert np.array_equal(y, alone), where
        xt = torch.nn.functional.pad(torch.from_numpy(np.moveaxis(x, -1, 1).copy()),
                                     (lo, hi, lo, hi))
        wt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1))))
        reference = torch.nn.functional.conv2d(xt, wt, stride=layer["stride"],
                                               dilation=layer["dilation"],
                                               groups=layer["groups"]).numpy()
        tolerance = 1e-5 if layer["dtype"] == np.float32 else 1e-10
        assert relative_error(y, np.moveaxis(reference, 1, -1)) <= tolerance, where
    assert shared > 0, f"seed {seed}: no layer's groups were shared among threads"


@pytest.mark.parametrize("size, channels, stride", [
    (28, 256, 2), (14, 256, 1), (14, 512, 2), (7, 512, 1), (7, 1024, 2), (4, 1024, 1)])
def test_resnext_batch_one_layers_share_groups_within_the_memory_target(monkeypatch, size,
                                                                        channels, stride):
    """ResNeXt's batch-1 grouped layers on two threads run as two jobs (one per share of
    the groups), within 1.5x the input, kernel and output bytes."""
    monkeypatch.setattr(gt, "CHANNEL_SPLIT_FLOPS", 4e6)
    ran: list[int] = []
    original = _spin.SpinningPool.run_native

    def spy(self, *arguments):
        ran.append(arguments[3])
        return original(self, *arguments)

    monkeypatch.setattr(_spin.SpinningPool, "run_native", spy)
    rng = np.random.default_rng(size * channels)
    x = rng.standard_normal((1, size, size, channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, channels // 32, channels)).astype(np.float32)
    out = (size - 1) // stride + 1

    def forward(threads: int = 2) -> np.ndarray:
        return gt.direct(x, kernel, (stride, stride), (1, 1), 32, (out, out),
                         padding=((1, 1), (1, 1)), threads=threads)

    y = forward()
    assert ran == [2], ran
    assert np.array_equal(y, forward(1))
    extra = peak_extra_bytes(forward)
    assert extra <= 1.5 * (x.nbytes + kernel.nbytes + y.nbytes), extra


def test_the_channel_filler_pads_a_range_of_channels_as_numpy_does():
    """The filler row of a share copies its range of channels of rows of images,
    zero-padded as ``np.pad`` does, into a slab of that range only (random shapes;
    seed printed)."""
    filler = _native_jobs.padded_channels_filler()
    assert filler is not None
    fill = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * _native_jobs.KERNEL_POINTERS,
                            *[ctypes.c_int64] * _native_jobs.KERNEL_FIELDS)(filler.address)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for _ in range(30):
        n, h, w, c = (rng.randint(1, 3), rng.randint(1, 6), rng.randint(1, 6),
                      rng.randint(1, 40))
        top, bottom, left, right = (rng.randint(0, 3) for _ in range(4))
        dtype = rng.choice([np.float32, np.float64])
        channel = rng.randint(0, c - 1)
        count = rng.randint(1, c - channel)
        x = np.random.default_rng(seed).standard_normal((n, h, w, c)).astype(dtype)
        first = rng.randint(-top, h + bottom - 1)  # the slab's first row, in input rows
        rows = rng.randint(1, h + bottom - first)
        padded_w = w + left + right
        slab = np.full((n, rows, padded_w, count), np.nan, dtype)
        item = x.itemsize
        fields = (n, rows, first, h, w * c * item, h * w * c * item,
                  padded_w * count * item, rows * padded_w * count * item, left, w, right,
                  c * item, count * item, channel * item, count * item)
        fill(slab.ctypes.data, x.ctypes.data, 0, 0, *fields,
             *[0] * (_native_jobs.KERNEL_FIELDS - len(fields)))
        padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
        expected = padded[:, first + top:first + top + rows, :, channel:channel + count]
        assert np.array_equal(slab, expected), (seed, x.shape, first, rows, top, left, right,
                                                channel, count)
