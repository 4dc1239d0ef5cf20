"""register_tiles' remembered call tables (``_call_table``): the calls of a layer are
worked out once per shape and run on each call's own arrays."""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import relative_error
from convarith.engine.algorithms import _llvm
from convarith.engine.algorithms import register_tiles as rt

pytestmark = pytest.mark.skipif(not _llvm.available(), reason="no compiled kernels here")

CASES = 6 if os.environ.get("CI") == "true" else 40


def _torch_conv(x, kernel, stride, dilation, pad):
    torch = pytest.importorskip("torch")
    y = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2),
                                   torch.from_numpy(kernel).permute(3, 2, 0, 1),
                                   stride=stride, padding=pad, dilation=dilation)
    return y.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("seed", [0, 1])
def test_tables_agree_with_torch_on_random_layers(seed: int) -> None:
    """Random one-group layers whose kernel is read in place (outputs whole vectors),
    on one and two threads, against PyTorch."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    for case in range(CASES):
        n, h, w = (int(v) for v in rng.integers(1, 9, 3))
        c = int(rng.choice([5, 16, 64, 200, 512]))
        f = int(rng.choice([16, 32, 64, 128, 512, 1024]))
        k, s, d, p = int(rng.choice([1, 3])), int(rng.choice([1, 2])), int(rng.choice([1, 2])), \
            int(rng.integers(0, 3))
        dtype = np.float32 if rng.random() < 0.7 else np.float64
        oh, ow = ((v + 2 * p - d * (k - 1) - 1) // s + 1 for v in (h, w))
        if oh < 1 or ow < 1:
            continue
        x = rng.standard_normal((n, h, w, c)).astype(dtype)
        kernel = rng.standard_normal((k, k, c, f)).astype(dtype)
        expected = _torch_conv(x, kernel, s, d, p)
        for threads in (None, 1, 2):
            y = rt.direct(x, kernel, (s, s), (d, d), 1, (oh, ow), padding=[(p, p), (p, p)],
                          threads=threads)
            error = relative_error(y, expected)
            assert error <= (1e-5 if dtype == np.float32 else 1e-10), (
                f"seed {seed} case {case}: {n}x{h}x{w}x{c} -> {f}, k{k} s{s} d{d} p{p} "
                f"{np.dtype(dtype).name} threads={threads}: relative error {error:.2e}")


def test_tables_match_the_recorded_chunks_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The remembered calls are the chunks' own calls: the same sums in the same order."""
    rng = np.random.default_rng(3)
    layers = [((1, 7, 7, 256), (1, 1, 256, 1024), 1, 0), ((1, 4, 4, 512), (3, 3, 512, 512), 1, 1),
              ((2, 9, 9, 64), (3, 3, 64, 128), 2, 1), ((1, 14, 14, 128), (1, 1, 128, 64), 2, 0)]
    for shape, kernel_shape, stride, pad in layers:
        x = rng.standard_normal(shape).astype(np.float32)
        kernel = rng.standard_normal(kernel_shape).astype(np.float32)
        out = tuple((v + 2 * pad - kernel_shape[0]) // stride + 1 for v in shape[1:3])
        for threads in (1, 2):
            arguments = (x, kernel, (stride, stride), (1, 1), 1, out)
            padding = [(pad, pad), (pad, pad)]
            tabled = rt.direct(*arguments, padding=padding, threads=threads)
            with monkeypatch.context() as patched:
                patched.setattr(rt, "_table_plan", lambda *args: None)
                chunked = rt.direct(*arguments, padding=padding, threads=threads)
            assert tabled.tobytes() == chunked.tobytes(), (shape, kernel_shape, threads)


def test_a_table_runs_on_each_calls_own_arrays() -> None:
    """One remembered table, fresh arrays at each call (other addresses, other values)."""
    rt._call_table.cache_clear()
    rng = np.random.default_rng(4)
    for _ in range(3):
        x = rng.standard_normal((1, 5, 5, 32)).astype(np.float32)
        kernel = rng.standard_normal((3, 3, 32, 64)).astype(np.float32)
        y = rt.direct(x, kernel, (1, 1), (1, 1), 1, (5, 5), padding=[(1, 1), (1, 1)], threads=1)
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).astype(np.float64)
        expected = sum(np.einsum("nhwc,cf->nhwf", padded[:, i:i + 5, j:j + 5], kernel[i, j])
                       for i in range(3) for j in range(3))
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    assert rt._call_table.cache_info().currsize == 1


def test_rows_over_zero_padding_skip_those_kernel_rows() -> None:
    """A 3×3 layer with padding 1 on small images: on a batch, the top and bottom output
    rows run two kernel rows of three (their own calls), with PyTorch's values; one
    image keeps whole blocks of cells (no skipping)."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    for n, size, stride, skips in ((16, 4, 1, True), (8, 7, 2, True), (1, 4, 1, False)):
        x = rng.standard_normal((n, size, size, 64)).astype(np.float32)
        kernel = rng.standard_normal((3, 3, 64, 128)).astype(np.float32)
        out = (size + 2 - 3) // stride + 1
        rt._call_table.cache_clear()
        for threads in (1, 2):
            y = rt.direct(x, kernel, (stride, stride), (1, 1), 1, (out, out),
                          padding=[(1, 1), (1, 1)], threads=threads)
            error = relative_error(y, _torch_conv(x, kernel, stride, 1, 1))
            assert error <= 1e-5, (n, size, stride, threads, error)
        plan = rt._call_table((n, size, size, 64), (3, 3, 64, 128), (stride, stride), (1, 1),
                              (out, out), ((1, 1), (1, 1)), np.dtype(np.float32),
                              _llvm.vector_target(), 1)
        assert plan is not None
        # each row: the function, x, w, y, offsets, then Cells' fields and Sums' steps
        steps = set(plan.rows[:, 5 + len(_llvm.Cells._fields) + 1].tolist())
        assert steps == ({2 * 3 * 64, 3 * 3 * 64} if skips else {3 * 3 * 64}), (n, steps)


def test_tables_keep_memory_within_the_bound() -> None:
    """A weight-heavy padded layer run by a table (its input padded once): peak extra
    memory at most 1.5 × (input + kernel + output), as every fast path."""
    from _helpers import peak_extra_bytes

    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 7, 7, 256)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 256, 256)).astype(np.float32)
    for threads in (1, 2):
        def run(threads: int = threads) -> np.ndarray:
            return rt.direct(x, kernel, (2, 2), (1, 1), 1, (4, 4), padding=[(1, 1), (1, 1)],
                             threads=threads)

        io = x.nbytes + kernel.nbytes + 8 * 4 * 4 * 256 * 4
        assert peak_extra_bytes(run) <= 1.5 * io, threads
