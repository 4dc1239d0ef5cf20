"""Winograd's peak memory: the transformed kernel is made one block of output channels
at a time, so a call's peak extra memory (tracemalloc, result included) stays within
1.5× the bytes of its input, kernel and output; the blocked results equal PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import check, peak_extra_bytes
from convarith.engine.algorithms import winograd

pytest.importorskip("numba")

#: The bound of the networks benchmark: peak extra bytes / (x + kernel + output bytes).
PEAK_LIMIT = 1.5




@pytest.mark.parametrize("use_numba", [True, False])
@pytest.mark.parametrize("batch, size, channels, filters, dtype", [
    (1, 28, 256, 512, np.float32),   # VGG-16 / U-Net at 28²: 2.9× before blocking
    (1, 28, 128, 256, np.float32),
    (1, 7, 512, 512, np.float32),    # F(2×2): 1.8× before
    (1, 14, 128, 128, np.float64),
])
def test_peak_memory_within_bound(batch, size, channels, filters, dtype, use_numba):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, channels)).astype(dtype)
    k = rng.standard_normal((3, 3, channels, filters)).astype(dtype)
    out_bytes = batch * size * size * filters * np.dtype(dtype).itemsize
    # one thread: a helper thread's first call makes its kept chunk buffers, and
    # which helper gets a chunk varies, so the peak with helpers is not repeatable
    peak = peak_extra_bytes(lambda: winograd.direct(
        x, k, (1, 1), (1, 1), 1, (size, size), padding=((1, 1), (1, 1)),
        use_numba=use_numba, threads=1))
    ratio = peak / (x.nbytes + k.nbytes + out_bytes)
    assert ratio <= PEAK_LIMIT, (
        f"numba={use_numba}: peak {peak} bytes = {ratio:.2f}x (x + kernel + output)")


def test_channel_block_fits_the_budget():
    rng = np.random.default_rng(1)
    for _ in range(200):
        channels = int(rng.integers(1, 2049))
        per_channel = int(rng.integers(1, 1 << 16))
        io, allocated = int(rng.integers(1, 1 << 26)), int(rng.integers(0, 1 << 24))
        block = winograd._channel_block(channels, per_channel, io, allocated)
        budget = winograd.KERNEL_BLOCK_SHARE * io - allocated
        case = (channels, per_channel, io, allocated, block)
        assert 1 <= block <= channels and channels % block == 0, case
        halved = block < channels
        assert not halved or block >= winograd.MIN_CHANNEL_BLOCK, case
        # the largest half that fits, else as small as allowed
        fits = block * per_channel <= budget
        assert not halved or 2 * block * per_channel > budget, case
        assert fits or block % 2 or block // 2 < winograd.MIN_CHANNEL_BLOCK, case


@pytest.mark.parametrize("seed", range(6))
def test_blocked_output_channels_match_torch(seed):
    # small images and many channels: the transformed kernel is over the budget, so
    # the output channels are done in several blocks
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(300 + seed)
    dtype = [np.float32, np.float64][seed % 2]
    m = [2, 4][seed // 2 % 2]
    channels, filters = int(rng.integers(24, 80)), 64 * int(rng.integers(2, 4))
    size = (int(rng.integers(3, 10)), int(rng.integers(3, 10)))
    dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    pads = ((int(rng.integers(0, 3)), int(rng.integers(0, 3))),
            (int(rng.integers(0, 3)), int(rng.integers(0, 3))))
    batch = int(rng.integers(1, 3))
    x = rng.standard_normal((batch, *size, channels)).astype(dtype)
    k = rng.standard_normal((3, 3, channels, filters)).astype(dtype)
    grown = [s + lo + hi for s, (lo, hi) in zip(size, pads)]
    out_size = tuple(g - 2 * d for g, d in zip(grown, dilation))
    if min(out_size) < 1:
        out_size = (1, 1)
        pads = tuple((lo, hi + 2 * d) for (lo, hi), d in zip(pads, dilation))
    padded = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)))
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(padded).permute(0, 3, 1, 2),
        torch.from_numpy(k.astype(np.float64)).permute(3, 2, 0, 1),
        dilation=dilation)[:, :, :out_size[0], :out_size[1]].permute(0, 2, 3, 1).numpy()
    for use_numba in (True, False):
        y = winograd.direct(x, k, (1, 1), dilation, 1, out_size, m=m, use_numba=use_numba,
                            padding=pads)
        check(y, expected, dtype, seed,
              f"winograd F({m}) blocked, dilation={dilation} pads={pads} numba={use_numba}")


@pytest.mark.parametrize("seed", range(3))
def test_blocked_phases_match_the_unblocked_shuffle(seed):
    # depth-to-space output (phases): each block takes its channels from every phase
    rng = np.random.default_rng(400 + seed)
    channels, fo = int(rng.integers(24, 64)), 64 * int(rng.integers(2, 3))
    x = rng.standard_normal((1, 6, 7, channels)).astype(np.float32)
    k = rng.standard_normal((3, 3, channels, 4 * fo)).astype(np.float32)
    z = winograd.direct(x, k, (1, 1), (1, 1), 1, (6, 7), use_numba=True, m=4,
                        padding=((1, 1), (1, 1)))
    y = winograd.direct(x, k, (1, 1), (1, 1), 1, (6, 7), use_numba=True, m=4,
                        padding=((1, 1), (1, 1)), phases=(2, 2))
    expected = z.reshape(1, 6, 7, 2, 2, fo).transpose(0, 1, 3, 2, 4, 5).reshape(1, 12, 14, fo)
    np.testing.assert_array_equal(y, expected, err_msg=f"seed {seed}")


@pytest.mark.parametrize("seed", range(3))
def test_blocked_weight_grad_matches_torch(seed, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(winograd, "KERNEL_BLOCK_SHARE", 0.0)  # blocks as small as allowed
    rng = np.random.default_rng(500 + seed)
    dtype = [np.float32, np.float64][seed % 2]
    channels, filters = int(rng.integers(8, 24)), 16 * int(rng.integers(2, 5))
    dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    # enough tiles for the Winograd gradient (else it hands over to flat_rows)
    x = rng.standard_normal((2, 60, 58, channels)).astype(dtype)
    pads = ((1, 1), (1, 1))
    out_size = (60 + 2 - 2 * dilation[0], 58 + 2 - 2 * dilation[1])
    dy = rng.standard_normal((2, *out_size, filters)).astype(dtype)
    blocks = []
    whole = winograd._gradient_block
    monkeypatch.setattr(winograd, "_gradient_block",
                        lambda *args: blocks.append(args[2].shape[-1]) or whole(*args))
    dk = winograd.weight_grad(x, dy, (3, 3), (1, 1), dilation, 1, padding=pads)
    assert len(blocks) > 1, f"seed {seed}: one block of {blocks}"
    x64 = torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2)
    k64 = torch.zeros((filters, channels, 3, 3), dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv2d(x64, k64, padding=1, dilation=dilation)
    (grad,) = torch.autograd.grad(y, k64, torch.from_numpy(dy.astype(np.float64)).permute(0, 3, 1, 2))
    check(dk, grad.permute(2, 3, 1, 0).numpy(), dtype, seed,
          f"winograd weight_grad blocked, dilation={dilation}")
