"""Winograd with a prepacked kernel (``convarith.engine.prepack``): its transformed
kernel is made once and reused, with the same values as made at each call."""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import peak_extra_bytes, relative_error
from convarith.engine import clear_caches, prepack
from convarith.engine.algorithms import prepacked, winograd

pytest.importorskip("numba")

CI = os.environ.get("CI") == "true"
CASES = 2 if CI else 12


def _torch_conv(x, kernel, dilation, pad):
    torch = pytest.importorskip("torch")
    y = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2),
                                   torch.from_numpy(kernel.astype(np.float64)).permute(3, 2, 0, 1),
                                   padding=pad, dilation=dilation)
    return y.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("seed", [0] if CI else [0, 1])
def test_prepacked_winograd_agrees_with_torch_and_with_a_plain_kernel(seed: int) -> None:
    """Random 3×3 layers of 1 MiB kernels and more, on few tiles (shared tiles) and
    many (chunks), one and two threads: the remembered transform gives the plain
    kernel's results bit for bit, within the float bounds of PyTorch's."""
    pytest.importorskip("torch")
    clear_caches()
    rng = np.random.default_rng(100 + seed)
    for case in range(CASES):
        n, size = int(rng.choice([1, 2] if CI else [1, 1, 2, 6])), int(rng.choice([4, 7, 14]))
        c, f = int(rng.choice([128, 256, 384])), int(rng.choice([256, 512]))
        d, p = int(rng.choice([1, 1, 2])), 1
        dtype = np.float32 if rng.random() < 0.7 else np.float64
        out = size + 2 * p - 2 * d
        if out < 1:
            continue
        x = rng.standard_normal((n, size, size, c)).astype(dtype)
        kernel = rng.standard_normal((3, 3, c, f)).astype(dtype)
        frozen = prepack(kernel)
        expected = _torch_conv(x, kernel, d, p)
        what = (f"seed {100 + seed} case {case}: {n}x{size}x{size}x{c} -> {f} d{d} "
                f"{np.dtype(dtype).name}")
        for threads in (1, 2):
            plain = winograd.direct(x, kernel, (1, 1), (d, d), 1, (out, out),
                                    padding=((p, p), (p, p)), threads=threads)
            for _ in range(2):
                y = winograd.direct(x, frozen, (1, 1), (d, d), 1, (out, out),
                                    padding=((p, p), (p, p)), threads=threads)
                np.testing.assert_array_equal(y, plain, err_msg=what)
            error = relative_error(y, expected)
            assert error <= (2e-5 if dtype == np.float32 else 1e-10), f"{what}: {error:.2e}"
    assert prepacked._REMEMBERED.entries, "no transform was remembered"


def test_transform_made_once_and_no_memory_after(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_caches()
    made = []
    kernel_transform = winograd._compiled_kernel_transform

    def counting(*args):
        made.append(1)
        return kernel_transform(*args)

    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 7, 7, 256)).astype(np.float32)  # many tiles: chunks
    kernel = rng.standard_normal((3, 3, 256, 256)).astype(np.float32)
    frozen = prepack(kernel)
    monkeypatch.setattr(winograd, "_compiled_kernel_transform", counting)
    def run(k):
        return winograd.direct(x, k, (1, 1), (1, 1), 1, (7, 7), padding=((1, 1), (1, 1)),
                               shared_tiles=False)

    run(frozen)
    blocks = len(made)  # (one per block of output channels)
    assert blocks >= 1
    for _ in range(2):
        run(frozen)
    assert len(made) == blocks
    run(kernel)
    assert len(made) == 2 * blocks  # a writeable kernel: at each call
    io = x.nbytes * 2 + kernel.nbytes
    assert peak_extra_bytes(lambda: run(frozen)) <= peak_extra_bytes(lambda: run(kernel))
    assert peak_extra_bytes(lambda: run(frozen)) <= 1.5 * io


def test_a_writeable_kernel_changed_in_place_is_transformed_again() -> None:
    clear_caches()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 14, 14, 256)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 256, 512)).astype(np.float32)
    def run(k):
        return winograd.direct(x, k, (1, 1), (1, 1), 1, (14, 14), padding=((1, 1), (1, 1)))

    first = run(kernel)
    kernel *= 2.0
    np.testing.assert_allclose(run(kernel), 2.0 * first, rtol=1e-5, atol=1e-4)
    assert not prepacked._REMEMBERED.entries
