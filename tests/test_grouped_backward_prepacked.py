"""Input gradients of grouped layers whose kernel cannot change (``engine.prepack``): the
flipped kernel (``core.flipped``) and the output phases' panels (``register_tiles_phases``)
are made once and reused. Random layers (groups of 1 to 64 channels, 2 to 64 groups,
strides 1 and 2, dilation, padding, both layouts, float32 and float64) against PyTorch's
gradients, at the first call and again, and bit for bit against the same kernel passed
writeable (made at every call) where one algorithm is named; each case prints its seed
on failure."""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import relative_error
from convarith import ConvSpec
from convarith.engine import conv_vjp, prepack
from convarith.engine.algorithms import _llvm
from convarith.engine.core import flip_swap, flipped, transposed_conv

torch = pytest.importorskip("torch")

CASES = 4 if os.environ.get("CI") == "true" else 20


def _layer(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    group = int(rng.choice([1, 2, 4, 8, 16, 32, 64]))
    groups = int(rng.choice([2, 4, 8, 16, 32, 64]))
    while groups * group > 1024:
        groups //= 2
    return dict(groups=groups, group=group, size=int(rng.choice([4, 5, 7, 9, 14])),
                batch=int(rng.choice([1, 1, 2, 3])), stride=int(rng.choice([1, 2, 2])),
                dilation=int(rng.choice([1, 1, 2])), padding=int(rng.integers(0, 3)),
                channels_first=bool(rng.random() < 0.3),
                dtype=np.float64 if rng.random() < 0.25 else np.float32)


def _torch_gradients(x: np.ndarray, kernel: np.ndarray, d_out: np.ndarray, layer: dict,
                     padding: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's input and kernel gradients in float64, channels-last and Keras's layout."""
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64)).requires_grad_()
    kt = torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).astype(np.float64)
                          ).requires_grad_()
    y = torch.nn.functional.conv2d(xt, kt, stride=layer["stride"], padding=padding,
                                   dilation=layer["dilation"], groups=layer["groups"])
    y.backward(torch.from_numpy(np.moveaxis(d_out, -1, 1).astype(np.float64)))
    return (np.moveaxis(xt.grad.numpy(), 1, -1),
            np.moveaxis(kt.grad.numpy(), (0, 1), (-1, -2)))


@pytest.mark.parametrize("seed", range(CASES))
def test_prepacked_grouped_input_gradients_match_pytorch(seed: int) -> None:
    layer = _layer(9300 + seed)
    where = f"seed {9300 + seed}: {layer}"
    rng = np.random.default_rng(9300 + seed)
    g, group, dtype, stride = layer["groups"], layer["group"], layer["dtype"], layer["stride"]
    reach = layer["dilation"] * 2 + 1
    padding = max(layer["padding"], -(-(reach - layer["size"]) // 2))
    x = rng.standard_normal((layer["batch"], layer["size"], layer["size"], g * group)
                            ).astype(dtype)
    writeable = rng.standard_normal((3, 3, group, g * group)).astype(dtype)
    frozen = prepack(writeable)
    out = (layer["size"] + 2 * padding - reach) // stride + 1
    d_out = rng.standard_normal((layer["batch"], out, out, g * group)).astype(dtype)
    expected_dx, expected_dk = _torch_gradients(x, writeable, d_out, layer, padding)
    spec = ConvSpec(3, strides=stride, padding=padding, dilation=layer["dilation"], groups=g,
                    data_format="channels_first" if layer["channels_first"] else "channels_last")
    if layer["channels_first"]:
        x, d_out = np.moveaxis(x, -1, 1), np.moveaxis(d_out, -1, 1)
        expected_dx = np.moveaxis(expected_dx, -1, 1)
    bound = 1e-5 if dtype == np.float32 else 1e-10
    for call in ("first", "again"):  # again: the remembered flipped kernel and panels
        dx, dk, _ = conv_vjp(x, frozen, spec, d_out)
        assert relative_error(dx, expected_dx) <= bound, f"{where}, {call} call"
        assert relative_error(dk, expected_dk) <= bound, f"{where}, {call} call"
    if stride == 2 and group > 1 and _llvm.available(np.dtype(dtype)):
        # the output phases named: the input gradient as conv_vjp makes it (the zero
        # padding's cells left out of the grid)
        resolved = ConvSpec(3, strides=stride, padding=padding, dilation=layer["dilation"],
                            groups=g).resolve(x.shape if not layer["channels_first"]
                                              else np.moveaxis(x, 1, -1).shape)
        grid = tuple((a - lo, b - hi) for (a, b), (lo, hi) in
                     zip(resolved.input_gradient_padding, resolved.padding))
        dy = np.ascontiguousarray(np.moveaxis(d_out, 1, -1) if layer["channels_first"]
                                  else d_out)
        expected_last = (np.moveaxis(expected_dx, 1, -1) if layer["channels_first"]
                         else expected_dx)

        def phases(kernel: np.ndarray) -> np.ndarray:
            return transposed_conv(dy, kernel, (stride,) * 2, (layer["dilation"],) * 2, g,
                                   grid, "register_tiles_phases")

        dx, again, made = phases(frozen), phases(frozen), phases(writeable)
        assert relative_error(dx, expected_last) <= bound, f"{where}, output phases"
        assert np.array_equal(dx, made) and np.array_equal(again, made), where


def test_flipped_kernel_is_made_once_for_prepacked_kernels_only() -> None:
    rng = np.random.default_rng(9350)
    writeable = rng.standard_normal((3, 3, 8, 64)).astype(np.float32)
    frozen = prepack(writeable)
    kept = flipped(frozen, 8)
    assert flipped(frozen, 8) is kept and not kept.flags.writeable
    assert np.array_equal(kept, flip_swap(writeable, 8))
    assert flipped(frozen, 4) is not kept  # another grouping, another copy
    assert np.array_equal(flipped(frozen, 4), flip_swap(writeable, 4))
    assert flipped(writeable, 8) is not flipped(writeable, 8)


@pytest.mark.parametrize("shape, groups, dtype", [
    ((3, 3, 32, 1024), 32, np.float32),   # ResNeXt's 1024 channels: rows 4 KiB apart
    ((3, 3, 128, 64), 1, np.float64),
    ((3, 3, 256, 256), 1, np.float32),    # rows 1 KiB apart
    ((1, 1, 64, 2048), 2, np.float64),
    ((3, 96, 256), 4, np.float32),
    ((2, 2, 2, 16, 512), 16, np.float32),
])
def test_flip_swap_of_large_kernels_matches_flips_and_transposes(shape, groups, dtype) -> None:
    """Kernels whose rows are spaced out before the transpose (``core._spaced_flip``), and
    some whose rows are not."""
    kernel = np.random.default_rng(9360).standard_normal(shape).astype(dtype)
    rank = kernel.ndim - 2
    group_in, filters = shape[-2:]
    by_group = np.flip(kernel, axis=tuple(range(rank))).reshape(
        *shape[:rank], group_in, groups, filters // groups)
    expected = np.swapaxes(by_group, -1, -3).reshape(*shape[:rank], filters // groups,
                                                     groups * group_in)
    swapped = flip_swap(kernel, groups)
    assert swapped.flags.c_contiguous
    np.testing.assert_array_equal(swapped, expected)
    np.testing.assert_array_equal(flip_swap(swapped, groups), kernel)
