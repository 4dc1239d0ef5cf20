"""The PyTorch and JAX backends compute what the NumPy engine computes, on random specs.

The engine is itself checked against the frameworks' own layers elsewhere;
here the backends (explicit padding from the resolved spec, full transposed
output cropped, pooling as windowed sums) must match it to float32
tolerance for every kind of spec, both layouts, and unbatched input.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import convarith
from _helpers import relative_error as rel_error
from convarith import ConvSpec

pytestmark = pytest.mark.oracle

COUNT = 40


def random_case(rng: random.Random):
    rank = rng.choice([1, 2, 2, 3])
    size = tuple(rng.randint(3, 9 if rank < 3 else 5) for _ in range(rank))
    kernel = tuple(rng.randint(1, 3) for _ in range(rank))
    strides = tuple(rng.randint(1, 3) for _ in range(rank))
    dilation = tuple(rng.randint(1, 2) for _ in range(rank))
    kind = rng.choice(["conv", "conv", "transposed", "max", "avg"])
    data_format = rng.choice(["channels_last", "channels_first"])
    channels = rng.choice([1, 2, 4])
    if kind == "conv":
        padding = rng.choice(["valid", "same", "same_lower", "full",
                              tuple((rng.randint(0, 2), rng.randint(0, 2)) for _ in range(rank))])
        mode = rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"])
        groups = rng.choice([g for g in (1, 2) if channels % g == 0])
        spec = ConvSpec(kernel, strides, dilation, padding=padding, padding_mode=mode, groups=groups,
                        filters=groups * rng.randint(1, 3), data_format=data_format, rank=rank)
    elif kind == "transposed":
        padding = rng.choice(["valid", "same", tuple((rng.randint(-1, 2), rng.randint(-1, 2)) for _ in range(rank))])
        output_padding = None
        if rng.random() < 0.4:
            output_padding = tuple(rng.randrange(max(s, d)) for s, d in zip(strides, dilation))
        groups = rng.choice([g for g in (1, 2) if channels % g == 0])
        spec = ConvSpec(kernel, strides, dilation, padding=padding, transposed=True,
                        output_padding=output_padding, groups=groups, filters=groups * rng.randint(1, 3),
                        data_format=data_format, rank=rank)
    else:
        padding = rng.choice(["valid", "same", tuple((rng.randint(0, 1), rng.randint(0, 1)) for _ in range(rank))])
        spec = ConvSpec(kernel, strides, dilation if kind == "max" else 1, padding=padding, pool=kind,
                        ceil_mode=rng.random() < 0.3, count_include_pad=rng.random() < 0.5,
                        data_format=data_format, rank=rank)
    shape = (rng.randint(1, 2), *size, channels) if data_format == "channels_last" else (
        rng.randint(1, 2), channels, *size)
    return spec, shape


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_backend_matches_engine(backend: str) -> None:
    pytest.importorskip(backend)
    done = 0
    seed = 0
    while done < COUNT:
        seed += 1
        rng = random.Random(seed)
        spec, shape = random_case(rng)
        try:
            resolved = spec.resolve(shape)
        except ValueError:
            continue
        data = np.random.default_rng(seed)
        x = data.standard_normal(shape).astype(np.float32)
        kernel = bias = None
        if spec.pool is None:
            cin = resolved.in_channels
            groups = resolved.groups
            cout = resolved.out_channels
            taps = spec.kernel_size
            kshape = (*taps, cout // groups, cin) if spec.transposed else (*taps, cin // groups, cout)
            kernel = data.standard_normal(kshape).astype(np.float32)
            bias = data.standard_normal(cout).astype(np.float32) if rng.random() < 0.7 else None
        if rng.random() < 0.2:
            x = x[0]  # unbatched
        expected = convarith.conv(x, kernel, spec, bias)
        got = convarith.conv(x, kernel, spec, bias, backend=backend)
        error = rel_error(got, expected)
        assert error <= 1e-5, f"seed {seed}: {spec} on {shape}: relative error {error:.2e}"
        done += 1


def test_backend_errors_are_clear() -> None:
    pytest.importorskip("torch")
    spec = ConvSpec(3)
    x = np.ones((1, 5, 5, 1), np.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        convarith.conv(x, np.ones((3, 3, 1, 1), np.float32), spec, backend="tensorflow")
    with pytest.raises(ValueError, match="kernel is required"):
        convarith.conv(x, None, spec, backend="torch")
    with pytest.raises(ValueError, match="algorithm="):
        convarith.conv(x, np.ones((3, 3, 1, 1), np.float32), spec, algorithm="offset_gemm", backend="jax")
