"""Prepacked kernels (``convarith.engine.prepack``): packed into register_tiles' panels
once and reused, never stale, within a bounded cache."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from _helpers import peak_extra_bytes, relative_error
from convarith import conv2d
from convarith.engine import clear_caches, prepack
from convarith.engine.algorithms import _llvm, prepacked
from convarith.engine.algorithms import register_tiles as rt

needs_kernels = pytest.mark.skipif(not _llvm.available(), reason="no compiled kernels here")

CASES = 3 if os.environ.get("CI") == "true" else 24


def _torch_conv(x, kernel, stride, dilation, pad):
    torch = pytest.importorskip("torch")
    y = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2),
                                   torch.from_numpy(kernel.astype(np.float64)).permute(3, 2, 0, 1),
                                   stride=stride, padding=pad, dilation=dilation)
    return y.permute(0, 2, 3, 1).numpy()


def test_prepack_is_an_immutable_copy() -> None:
    kernel = np.arange(2 * 3 * 4 * 16, dtype=np.float32).reshape(2, 3, 4, 16)
    frozen = prepack(kernel)
    np.testing.assert_array_equal(frozen, kernel)
    assert frozen.dtype == kernel.dtype and frozen.flags.c_contiguous
    kernel[...] = 0  # a copy: the caller's array stays theirs
    assert frozen[1, 2, 3, 15] == 2 * 3 * 4 * 16 - 1
    for view in (frozen, frozen[0], frozen.reshape(-1), frozen[..., ::2]):
        with pytest.raises(ValueError):
            view.flags.writeable = True
        with pytest.raises(ValueError):
            view[...] = 1
    assert prepack(kernel, np.float64).dtype == np.float64
    assert prepacked.frozen_owner(frozen[..., ::2]) is not None


def test_only_kernels_that_cannot_change_count_as_frozen() -> None:
    kernel = np.ones((3, 3, 8, 16), np.float32)
    assert prepacked.frozen_owner(kernel) is None
    read_only = kernel.view()
    read_only.flags.writeable = False  # its owner stays writeable
    assert prepacked.frozen_owner(read_only) is None
    mutable = np.frombuffer(bytearray(kernel.tobytes()), np.float32)
    mutable.flags.writeable = False
    assert prepacked.frozen_owner(mutable) is None
    with pytest.raises(ValueError, match="numeric"):
        prepack(np.array([object()]))


@needs_kernels
@pytest.mark.parametrize("seed", [0, 1])
def test_prepacked_layers_agree_with_torch(seed: int) -> None:
    """Random weight-heavy layers (kernels of 1 MiB and more), prepacked, on one and two
    threads, against PyTorch in float64; the panels were packed once and reused."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    ran = 0
    for case in range(CASES):
        n, size = int(rng.choice([1, 1, 2, 3])), int(rng.choice([1, 2, 4, 5, 7]))
        k = int(rng.choice([1, 3]))
        c = int(rng.choice([256, 320, 512])) if k == 3 else int(rng.choice([512, 1024]))
        f = int(rng.choice([128, 256, 512, 1024]))
        s, d, p = int(rng.choice([1, 2])), int(rng.choice([1, 1, 2])), int(rng.integers(0, 2))
        dtype = np.float32 if rng.random() < 0.7 else np.float64
        x = rng.standard_normal((n, size, size, c)).astype(dtype)
        kernel = rng.standard_normal((k, k, c, f)).astype(dtype)
        out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        if out < 1 or kernel.nbytes < rt.PREPACK_BYTES:
            continue
        frozen = prepack(kernel)
        assert rt.packs_once(frozen, c) and not rt.packs_once(kernel, c)
        expected = _torch_conv(x, kernel, s, d, p)
        for threads in (1, 2, 1):
            y = rt.direct(x, frozen, (s, s), (d, d), 1, (out, out), padding=[(p, p), (p, p)],
                          threads=threads)
            error = relative_error(y, expected)
            assert error <= (1e-5 if dtype == np.float32 else 1e-10), (
                f"seed {seed} case {case}: {n}x{size}x{size}x{c} -> {f}, k{k} s{s} d{d} p{p} "
                f"{np.dtype(dtype).name} threads={threads}: relative error {error:.2e}")
        ran += 1
    assert ran, f"seed {seed}: no case drawn"


@needs_kernels
def test_packing_is_done_once_and_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_caches()
    packs = []
    remember = prepacked.remembered

    def counting(kernel, packing, pack):
        def counted():
            if packing[0] == "register_tiles":  # (the panels: not their table of calls)
                packs.append(packing)
            return pack()
        return remember(kernel, packing, counted)

    monkeypatch.setattr(prepacked, "remembered", counting)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 4, 4, 512)).astype(np.float32)
    frozen = prepack(rng.standard_normal((3, 3, 512, 512)).astype(np.float32))
    path = "register_tiles"  # (the planner may take Winograd, whose transform is kept)
    first = conv2d(x, frozen, padding="same", algorithm=path)
    for _ in range(3):
        np.testing.assert_array_equal(conv2d(x, frozen, padding="same", algorithm=path), first)
    small = x[:, :3, :3]  # another input size: the same panels
    assert relative_error(conv2d(small, frozen, padding="same", algorithm=path),
                          conv2d(small, np.array(frozen), padding="same")) <= 1e-5
    assert len(packs) == 1, packs  # (another input size reuses the panels too)


@needs_kernels
def test_never_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel changed in place is read afresh (writeable kernels are never
    remembered), and new frozen kernels, even at a reused address, are packed anew."""
    clear_caches()
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 5, 5, 256)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 256, 256)).astype(np.float32)
    expected = _torch_conv(x, kernel, 1, 1, 1)
    assert relative_error(conv2d(x, kernel, padding="same"), expected) <= 1e-5
    kernel *= -0.5  # in place
    assert relative_error(conv2d(x, kernel, padding="same"), -0.5 * expected) <= 1e-5
    read_only = kernel.view()
    read_only.flags.writeable = False
    assert relative_error(conv2d(x, read_only, padding="same"), -0.5 * expected) <= 1e-5
    kernel *= -2.0  # through its owner
    assert relative_error(conv2d(x, read_only, padding="same"), expected) <= 1e-5
    # frozen kernels made and dropped one after another (the allocator may reuse the
    # memory of a dropped one; the cache holds each owner it remembers alive)
    for scale in (1.0, 2.0, -3.0, 0.25):
        frozen = prepack(kernel * scale)
        assert relative_error(conv2d(x, frozen, padding="same"), scale * expected) <= 1e-5
        del frozen
        gc.collect()


def test_kernel_keys_follow_each_kernels_lifetime() -> None:
    """A frozen kernel's key is worked out once while it lives: views of one owner
    (other addresses, strides) keep their own keys and results, a dead kernel's key
    goes with it, and a new kernel at a reused ``id`` gets its own."""
    clear_caches()
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 9, 9, 16)).astype(np.float32)
    whole = rng.standard_normal((3, 3, 16, 32)).astype(np.float32)
    both = prepack(np.stack([whole, -whole]))  # two contiguous kernels of one owner
    keys = prepacked._REMEMBERED.keys
    for view, sign in ((both[0], 1.0), (both[1], -1.0)):
        assert prepacked.frozen_owner(view) is not None
        for algorithm in ("winograd", None):
            got = conv2d(x, view, padding="same", algorithm=algorithm)
            assert relative_error(got, sign * _torch_conv(x, whole, 1, 1, 1)) <= 1e-5
    assert len(keys) >= 1
    del view, both
    gc.collect()
    assert not keys  # (the views and the kernel are gone: so are their keys)
    seen: dict[int, float] = {}
    for scale in (1.0, -2.0, 0.5, 3.0, -0.25, 4.0):
        kernel = prepack(whole * scale)
        seen[id(kernel)] = seen.get(id(kernel), 0) + 1
        got = conv2d(x, kernel, padding="same", algorithm="winograd")
        assert relative_error(got, scale * _torch_conv(x, whole, 1, 1, 1)) <= 1e-5, scale
        del kernel
    assert len(keys) <= 1


@needs_kernels
def test_remembered_panels_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within KEEP_BYTES: kernels no one holds make room; live ones are kept, and a
    kernel that does not fit beside them is read as it is (no thrashing)."""
    clear_caches()
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 2, 2, 512)).astype(np.float32)
    kernel = rng.standard_normal((1, 1, 512, 512)).astype(np.float32)  # 1 MiB
    entries = prepacked._REMEMBERED.entries

    def check(frozen, scale):
        np.testing.assert_allclose(conv2d(x, frozen, algorithm="register_tiles"),
                                   scale * (x @ kernel[0, 0]), rtol=1e-4, atol=1e-3)
        assert prepacked._REMEMBERED.bytes <= prepacked.KEEP_BYTES

    # a kernel's entries count their panels (and table of calls: a few hundred bytes)
    # and, once, the kernel they keep alive: 2 MiB here
    monkeypatch.setattr(prepacked, "KEEP_BYTES", 10 * kernel.nbytes + 8192)
    for scale in range(8):  # each dropped by the next
        frozen = prepack(kernel * scale)
        check(frozen, scale)
    assert len({id(owner) for owner, _, _ in entries.values()}) == 5
    live = [prepack(kernel * (scale + 10)) for scale in range(7)]
    for _ in range(2):
        for scale, frozen in enumerate(live):
            check(frozen, scale + 10)
    owners = [prepacked.frozen_owner(frozen) for frozen in live]
    kept = [owner for owner, _, _ in entries.values()]
    assert [any(o is k for k in kept) for o in owners] == [True] * 5 + [False] * 2
    monkeypatch.setattr(prepacked, "KEEP_BYTES", 3 * kernel.nbytes)  # too large to keep
    clear_caches()
    conv2d(x, prepack(kernel), algorithm="register_tiles")
    assert not entries
    clear_caches()
    assert prepacked._REMEMBERED.bytes == 0 and not entries


@needs_kernels
def test_a_prepacked_call_needs_no_more_memory_than_one_in_place() -> None:
    """Once packed, a call allocates no copy of the kernel (the panels are kept): its
    peak extra memory is the output's, as a kernel read in place."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 4, 4, 512)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 512, 512)).astype(np.float32)
    frozen = prepack(kernel)
    io = x.nbytes + kernel.nbytes + 4 * 4 * 512 * 4
    in_place = peak_extra_bytes(lambda: conv2d(x, kernel, padding="same"))
    packed = peak_extra_bytes(lambda: conv2d(x, frozen, padding="same"))
    assert packed <= max(in_place, 0) + kernel.nbytes // 8, (packed, in_place)
    assert packed <= 1.5 * io
