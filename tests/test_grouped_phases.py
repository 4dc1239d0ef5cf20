"""Strided grouped input gradients by output phases (``register_tiles_phases``, planned
once per shape by :mod:`convarith.engine.algorithms.grouped_phases`) against PyTorch:
random grouped layers (2 to 64 groups, 2 to 64 channels per group, square groups of 8
on the spread kernels, stride 2 or 3, dilation 1 or 2), float32 and float64, writable
and prepacked kernels, the vector ISA in force and AVX2, and the whole backward pass
in both layouts with the compiled kernels on and off. Each case prints its seed on
failure."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import relative_error
from convarith import ConvSpec
from convarith.engine import conv_vjp, prepack
from convarith.engine.algorithms import _llvm, grouped_phases
from convarith.engine.core import transposed_conv

torch = pytest.importorskip("torch")


def _random_layer(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    groups = int(rng.choice([2, 3, 4, 8, 16, 32, 64]))
    if rng.random() < 0.5:
        group_in = group_out = int(rng.choice([4, 8, 8, 16, 32]))
    else:
        # (groups of one input or output channel are not this algorithm's)
        group_in = int(rng.choice([2, 3, 4, 8, 16, 32, 64]))
        group_out = int(rng.choice([2, 4, 8, 12, 16, 32, 64]))
    while groups * max(group_in, group_out) > 1024:
        groups //= 2
    groups = max(groups, 2)
    kernel = int(rng.choice([2, 3, 3, 4, 5]))
    stride = int(rng.choice([2, 2, 3]))
    dilation = int(rng.choice([1, 1, 2]))
    reach = dilation * (kernel - 1) + 1
    size = max(reach, int(rng.choice([4, 5, 7, 8, 14, 28])))
    batch = int(rng.choice([1, 1, 2, 3]))
    while batch * size * size * groups * group_in > 60_000 and size > max(4, reach):
        size = max(reach, size // 2)
    padding = int(rng.integers(0, kernel // 2 + 1))
    return dict(groups=groups, group_in=group_in, group_out=group_out, size=size,
                batch=batch, kernel=kernel, stride=stride, dilation=dilation,
                padding=padding)


def _case(seed: int, dtype: type) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray,
                                           np.ndarray]:
    """A layer, its input, kernel and output gradient, and PyTorch's input gradient
    (float64, channels-last)."""
    layer = _random_layer(seed)
    rng = np.random.default_rng(seed)
    channels = layer["groups"] * layer["group_in"]
    filters = layer["groups"] * layer["group_out"]
    x = rng.standard_normal((layer["batch"], layer["size"], layer["size"], channels)
                            ).astype(dtype)
    kernel = rng.standard_normal((layer["kernel"], layer["kernel"], layer["group_in"],
                                  filters)).astype(dtype)
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64)).requires_grad_(True)
    wt = torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).astype(np.float64))
    y = torch.nn.functional.conv2d(xt, wt, stride=layer["stride"], padding=layer["padding"],
                                   dilation=layer["dilation"], groups=layer["groups"])
    dy = rng.standard_normal(tuple(y.shape)).astype(dtype)
    (dx,) = torch.autograd.grad(y, (xt,), torch.from_numpy(dy.astype(np.float64)))
    return layer, x, kernel, np.moveaxis(dy, 1, -1).copy(), np.moveaxis(dx.numpy(), 1, -1)


def _phases_input_grad(layer: dict, x: np.ndarray, kernel: np.ndarray,
                       dy: np.ndarray) -> np.ndarray:
    """The input gradient by ``register_tiles_phases``, as conv_vjp asks for it."""
    spec = ConvSpec(layer["kernel"], strides=layer["stride"], padding=layer["padding"],
                    dilation=layer["dilation"], groups=layer["groups"])
    resolved = spec.resolve(x.shape)
    pads = tuple((a - lo, b - hi) for (a, b), (lo, hi) in
                 zip(resolved.input_gradient_padding, resolved.padding))
    return transposed_conv(dy, kernel, spec.strides, spec.dilation, layer["groups"], pads,
                           "register_tiles_phases")


def _check(seed: int, dtype: type, frozen: bool = False) -> None:
    layer, x, kernel, dy, expected = _case(seed, dtype)
    dx = _phases_input_grad(layer, x, prepack(kernel) if frozen else kernel, dy)
    assert dx.dtype == dtype
    tolerance = 1e-5 if dtype == np.float32 else 1e-10
    assert relative_error(dx, expected) <= tolerance, f"seed {seed}: {layer}"


needs_kernels = pytest.mark.skipif(not _llvm.available(), reason="no compiled kernels here")


@needs_kernels
@pytest.mark.parametrize("seed", range(30))
def test_strided_grouped_input_gradient_matches_pytorch(seed: int) -> None:
    _check(7300 + seed, np.float32)


@needs_kernels
@pytest.mark.parametrize("seed", range(8))
def test_float64_and_prepacked_kernels(seed: int) -> None:
    _check(7400 + seed, np.float64)
    _check(7500 + seed, np.float32, frozen=True)


@needs_kernels
@pytest.mark.parametrize("seed", range(8))
def test_avx2_kernels(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVARITH_VECTOR_ISA", "avx2")
    if not _llvm.available():
        pytest.skip("no AVX2 here")
    _check(7600 + seed, np.float32)


@needs_kernels
@pytest.mark.parametrize("channels, size", [(256, 28), (512, 14), (1024, 7)])
def test_resnext_layers_are_planned(channels: int, size: int) -> None:
    """ResNeXt's 3×3 stride-2 layers (32 groups) run on a plan (not the per-call packing),
    groups of 8 on the spread kernels, and match PyTorch."""
    layer = dict(groups=32, group_in=channels // 32, group_out=channels // 32, size=size,
                 batch=1, kernel=3, stride=2, dilation=1, padding=1)
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((1, size, size, channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, channels // 32, channels)).astype(np.float32)
    half = (size + 1) // 2
    dy = rng.standard_normal((1, half, half, channels)).astype(np.float32)
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64)).requires_grad_(True)
    wt = torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).astype(np.float64))
    y = torch.nn.functional.conv2d(xt, wt, stride=2, padding=1, groups=32)
    (expected,) = torch.autograd.grad(y, (xt,), torch.from_numpy(
        np.moveaxis(dy, -1, 1).astype(np.float64)))
    grouped_phases._plan.cache_clear()
    dx = _phases_input_grad(layer, x, kernel, dy)
    assert relative_error(dx, np.moveaxis(expected.numpy(), 1, -1)) <= 1e-5
    assert grouped_phases._plan.cache_info().currsize == 1
    if channels == 256 and _llvm.vector_width(np.float32) == 16:
        # spread panels have no zero (a merged block-diagonal kernel would be half zeros)
        (plan,) = [grouped_phases._plan(*args) for args in _plan_arguments(layer, x, dy)]
        assert plan is not None and plan.packed_size == kernel.size


def _plan_arguments(layer: dict, x: np.ndarray, dy: np.ndarray) -> list[tuple]:
    spec = ConvSpec(layer["kernel"], strides=layer["stride"], padding=layer["padding"],
                    groups=layer["groups"])
    resolved = spec.resolve(x.shape)
    pads = tuple((a - lo, b - hi) for (a, b), (lo, hi) in
                 zip(resolved.input_gradient_padding, resolved.padding))
    channels = x.shape[-1]
    return [(dy.shape, (3, 3, channels // 32, channels), (2, 2), (1, 1), pads, x.shape[1:3],
             32, np.dtype(np.float32), _llvm.vector_target())]


@pytest.mark.parametrize("jit", ["1", "0"])
@pytest.mark.parametrize("channels_first", [False, True])
def test_backward_both_layouts(jit: str, channels_first: bool,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole backward pass of a strided grouped layer (whatever the dispatch picks)
    in both layouts, compiled kernels on and off."""
    monkeypatch.setenv("CONVARITH_JIT", jit)
    layer, x, kernel, dy, expected = _case(7700 + int(channels_first), np.float32)
    spec = ConvSpec(layer["kernel"], strides=layer["stride"], padding=layer["padding"],
                    dilation=layer["dilation"], groups=layer["groups"],
                    data_format="channels_first" if channels_first else "channels_last")
    if channels_first:
        x, dy = np.moveaxis(x, -1, 1).copy(), np.moveaxis(dy, -1, 1).copy()
        expected = np.moveaxis(expected, -1, 1)
    dx, _, _ = conv_vjp(x, kernel, spec, dy)
    assert relative_error(dx, expected) <= 1e-5, f"{layer}"


@needs_kernels
@pytest.mark.parametrize("padding, images", [(1, 4), (0, 8), (1, 2)])
def test_kernel_gradient_cut_by_groups_matches_pytorch(padding: int, images: int) -> None:
    """A grouped kernel gradient of too few output cells for a share per thread, cut
    among two threads by groups (groups of whole vectors), against PyTorch."""
    from convarith.engine.algorithms.grouped_tiles import weight_grad

    rng = np.random.default_rng(7800 + padding + images)
    groups, group = 8, 2 * _llvm.vector_width(np.float32)
    x = rng.standard_normal((images, 4, 4, groups * group)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, group, groups * group)).astype(np.float32)
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64))
    wt = torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).astype(np.float64)
                          ).requires_grad_(True)
    y = torch.nn.functional.conv2d(xt, wt, padding=padding, groups=groups)
    dy = rng.standard_normal(tuple(y.shape))
    (expected,) = torch.autograd.grad(y, (wt,), torch.from_numpy(dy))
    dk = weight_grad(x, np.moveaxis(dy, 1, -1).astype(np.float32).copy(), (3, 3), (1, 1),
                     (1, 1), groups, padding=((padding, padding),) * 2, threads=2)
    assert relative_error(dk, np.moveaxis(expected.numpy(), (0, 1), (-1, -2))) <= 1e-5
