"""Prepacked kernels (``convarith.engine.prepack``) with any channel counts, on every path
that takes them, against PyTorch in float64.

A prepacked kernel's calls are recorded once in a table and replayed with the arrays'
addresses; the table once baked in an output of ``F`` channels where the kernels write
whole vectors (``F`` rounded up), so a 1×1 1280 -> 1000 classifier on 7² gave values
of 1e8. The channel counts here are drawn from everywhere (not multiples of a vector),
and the threshold from which a kernel is packed once is lowered so that small random
layers take the prepacked paths too. The seed and the layer are printed on failure.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import random_vjp_operands, relative_error, torch_vjp_nhwc
from convarith import ConvSpec
from convarith.engine import clear_caches, conv, conv_vjp, dispatch, prepack
from convarith.engine.algorithms import _llvm, _threads
from convarith.engine.algorithms import register_tiles as rt

CI = os.environ.get("CI") == "true"
LAYERS = 6 if CI else 40


def _torch(x: np.ndarray, kernel: np.ndarray, spec: ConvSpec) -> np.ndarray:
    torch = pytest.importorskip("torch")
    pads = [a for a, _ in spec.padding]
    y = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2),
                                   torch.from_numpy(kernel.astype(np.float64)).permute(3, 2, 0, 1),
                                   stride=spec.strides, padding=pads, dilation=spec.dilation,
                                   groups=spec.groups)
    return y.permute(0, 2, 3, 1).numpy()


#: The direct convolution algorithms (each tried on every layer).
DIRECT = tuple(name for name in dispatch.available_algorithms()
               if dispatch.get_algorithm(name).kind == "direct")


def _bound(dtype: np.dtype) -> float:
    return 2e-5 if dtype == np.float32 else 1e-11


@pytest.mark.skipif(not _llvm.available(), reason="no compiled kernels here")
def test_weight_heavy_prepacked_layers_with_any_output_channels() -> None:
    """Kernels of 1 MiB and more (packed once as they are), output channels not whole
    vectors: the planner's choice and register_tiles, one and two threads."""
    pytest.importorskip("torch")
    cases = [((1, 7, 7, 1280), (1, 1, 1280, 1000), 1, 0),  # a classifier as a 1×1
             ((3, 5, 5, 300), (3, 3, 300, 200), 1, 1),
             ((1, 4, 4, 1152), (1, 1, 1152, 330), 1, 0),
             ((2, 9, 9, 384), (3, 3, 384, 250), 2, 1)]
    for x_shape, k_shape, stride, pad in cases:
        rng = np.random.default_rng(sum(k_shape))
        x = rng.standard_normal(x_shape).astype(np.float32)
        kernel = rng.standard_normal(k_shape).astype(np.float32)
        spec = ConvSpec(k_shape[0], strides=stride, padding=pad)
        frozen = prepack(kernel)
        assert rt.packs_once(frozen, x_shape[-1])
        expected = _torch(x, kernel, spec)
        for algorithm in (None, "register_tiles"):
            for threads in (1, 2):
                with _threads.thread_limit(threads):
                    y = conv(x, frozen, spec, algorithm=algorithm)
                error = relative_error(y, expected)
                assert error <= 2e-5, (
                    f"{x_shape} * {k_shape} s{stride} p{pad}, algorithm={algorithm}, "
                    f"threads={threads}: relative error {error:.2e}")


def _draw(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...], ConvSpec,
                                              np.dtype]:
    k = int(rng.choice([1, 1, 3, 5]))
    groups = int(rng.choice([1, 1, 1, 2, 3]))
    c = groups * int(rng.integers(1, 40))
    f = groups * int(rng.integers(1, 40))
    stride, dilation = int(rng.choice([1, 1, 2])), int(rng.choice([1, 1, 2]))
    pad = int(rng.integers(0, k))
    reach = dilation * (k - 1) + 1
    size = int(rng.integers(max(1, reach - 2 * pad), reach + 9))
    n = int(rng.choice([1, 1, 2, 3]))
    dtype = np.dtype(np.float32 if rng.random() < 0.75 else np.float64)
    spec = ConvSpec(k, strides=stride, dilation=dilation, padding=pad, groups=groups)
    return (n, size, size + int(rng.integers(0, 3)), c), (k, k, c // groups, f), spec, dtype


@pytest.mark.parametrize("seed", [int(s) for s in os.environ.get("SEEDS", "11,12").split(",")])
def test_every_path_agrees_on_small_prepacked_layers(seed: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Random small layers with every kernel packed once (the threshold lowered to one
    byte), each on the planner's choice and on every algorithm that applies, on one and
    two threads."""
    pytest.importorskip("torch")
    monkeypatch.setattr(rt, "PREPACK_BYTES", 1)
    clear_caches()
    rng = np.random.default_rng(seed)
    ran = 0
    try:
        for layer in range(LAYERS):
            x_shape, k_shape, spec, dtype = _draw(rng)
            x = rng.standard_normal(x_shape).astype(dtype)
            kernel = rng.standard_normal(k_shape).astype(dtype)
            expected = _torch(x, kernel, spec)
            if expected.size == 0:
                continue
            frozen = prepack(kernel)
            for algorithm in (None, *DIRECT):
                for threads in (1, 2):
                    try:
                        with _threads.thread_limit(threads):
                            y = conv(x, frozen, spec, algorithm=algorithm)
                    except ValueError as refused:
                        if "does not apply" in str(refused):
                            break  # (a path that does not take this layer)
                        raise
                    error = relative_error(y, expected)
                    assert error <= _bound(dtype), (
                        f"seed {seed} layer {layer}: {x_shape} * {k_shape} {spec} "
                        f"{dtype.name}, algorithm={algorithm}, threads={threads}: "
                        f"relative error {error:.2e}")
            ran += 1
    finally:
        clear_caches()  # (the panels packed under the lowered threshold)
    assert ran, f"seed {seed}: no layer drawn"


@pytest.mark.parametrize("seed", [int(s) for s in os.environ.get("BACKWARD_SEEDS", "21").split(",")])
def test_backward_and_transposed_layers_with_prepacked_kernels(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same random layers' gradients with a prepacked kernel (``conv_vjp``), and
    transposed layers (which prepack their flipped kernels), every kernel packed once,
    one and two threads, against PyTorch."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(rt, "PREPACK_BYTES", 1)
    clear_caches()
    rng = np.random.default_rng(seed)
    try:
        for layer in range(LAYERS // 2):
            x_shape, k_shape, spec, dtype = _draw(rng)
            x, kernel, dy = random_vjp_operands(rng, spec, x_shape, k_shape, dtype)
            if dy.size == 0:
                continue
            expected_x, expected_kernel = torch_vjp_nhwc(x, kernel, dy, spec)
            for threads in (1, 2):
                with _threads.thread_limit(threads):
                    d_x, d_kernel, _ = conv_vjp(x, prepack(kernel), spec, dy)
                what = (f"seed {seed} layer {layer}: {x_shape} * {k_shape} {spec} {dtype.name}, "
                        f"threads={threads}")
                assert relative_error(d_x, expected_x) <= _bound(dtype) * 5, f"{what}: d_x"
                assert relative_error(d_kernel, expected_kernel) <= _bound(dtype) * 5, (
                    f"{what}: d_kernel")
            # the transposed layer of the same kernel: x's channels are its outputs
            stride = spec.strides[0]
            transposed = ConvSpec(k_shape[0], strides=stride, transposed=True,
                                  groups=spec.groups)
            t_in = rng.standard_normal((x_shape[0], 3, 4, k_shape[-1])).astype(dtype)
            t_kernel = np.ascontiguousarray(kernel)  # (K, K, C/g, F): F inputs -> C outputs
            # (Keras's "valid" size: PyTorch's plus an output padding of max(0, s - k))
            extra = [size - ((t - 1) * stride + k_shape[0]) for size, t in
                     zip(transposed.resolve(t_in.shape).output_size, t_in.shape[1:3])]
            expected = torch.nn.functional.conv_transpose2d(
                torch.from_numpy(t_in.astype(np.float64)).permute(0, 3, 1, 2),
                torch.from_numpy(t_kernel.astype(np.float64)).permute(3, 2, 0, 1),
                stride=stride, groups=spec.groups, output_padding=extra
            ).permute(0, 2, 3, 1).numpy()
            for threads in (1, 2):
                with _threads.thread_limit(threads):
                    y = conv(t_in, t_kernel, transposed)
                error = relative_error(y, expected)
                assert error <= _bound(dtype) * 5, (
                    f"seed {seed} layer {layer}: transposed {t_in.shape} * {k_shape} s{stride} "
                    f"g{spec.groups} {dtype.name}, threads={threads}: relative error {error:.2e}")
    finally:
        clear_caches()
