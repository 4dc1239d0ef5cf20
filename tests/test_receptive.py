"""Receptive fields: hand-derived values, and a brute-force check through the engine.

The brute force perturbs one input pixel at a time and sees which output cells
change (positive weights and inputs, so nothing cancels); the set of input
pixels that move a chosen output cell must equal :func:`exact_field`, and lie
within the formula's span (equal to it when the span is inside the input and
every layer is a direct convolution with zero padding).
"""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import pytest

import convarith
from convarith import ConvSpec
from convarith.receptive import ReceptiveField, exact_field, stack_fields


def chain(specs, size):
    resolved = []
    for spec in specs:
        r = spec.resolve(size)
        resolved.append(r)
        size = r.output_size
    return resolved


# --------------------------------------------------------------------------- by hand


def test_three_3x3_convolutions_see_7x7() -> None:
    fields = stack_fields(chain([ConvSpec(3)] * 3, (32, 32)))
    assert [f.size for f in fields] == [(3, 3), (5, 5), (7, 7)]
    assert fields[-1].jump == (1, 1) and fields[-1].start == (0, 0)


def test_strides_multiply_the_jump() -> None:
    # conv 3 s2 -> conv 3 s2: r = 3 + (3 - 1) * 2 = 7, jump 4; 'same' on 32 pads (0, 1) then (0, 1)
    fields = stack_fields(chain([ConvSpec(3, strides=2, padding="same")] * 2, (32, 32)))
    assert fields[-1].size == (7, 7)
    assert fields[-1].jump == (4, 4)
    assert fields[-1].start == (0, 0)


def test_backward_formula_from_the_textbook() -> None:
    # r_in = r_out * s + (k_eff - s), read from the last layer back to the input
    specs = [ConvSpec(7, strides=2, padding=3), ConvSpec(3, strides=2, padding=1, pool="max"),
             ConvSpec(3, dilation=2, padding=2), ConvSpec(2, strides=2)]
    r = 1
    for spec in reversed(specs):
        s, k_eff = spec.strides[0], spec.effective_kernel[0]
        r = r * s + (k_eff - s)
    fields = stack_fields(chain(specs, (64, 64)))
    assert fields[-1].size == (r, r)
    assert fields[-1].jump == (8, 8)


def test_padding_moves_the_start_and_center() -> None:
    f = ReceptiveField.identity(1).through(ConvSpec(5, padding=2, rank=1).resolve(10))
    assert f.start == (-2,) and f.center == (0,)
    f = ReceptiveField.identity(1).through(ConvSpec(3, strides=2, padding="same", rank=1).resolve(8))
    assert f.start == (0,) and f.center == (1,)  # Keras 'same' pads (0, 1): cell 0 centred on pixel 1


def test_transposed_jump_is_a_fraction() -> None:
    f = ReceptiveField.identity(1).through(ConvSpec(4, strides=2, padding=1, transposed=True, rank=1).resolve(8))
    assert f.jump == (Fraction(1, 2),)
    assert f.to_dict()["jump"] == ["1/2"]


def test_span_and_errors() -> None:
    f = ReceptiveField((3, 3), (2, 2), (-1, 0))
    assert f.span((2, 1)) == ((3, 5), (2, 4))
    with pytest.raises(ValueError, match="coordinates"):
        f.span((1,))
    with pytest.raises(ValueError, match="at least one"):
        exact_field([], (0,))


# --------------------------------------------------------------------------- brute force


def random_chain(rng: random.Random, rank: int, allow_transposed: bool):
    size = tuple(rng.randint(8, 12) for _ in range(rank))
    specs = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["conv", "conv", "pool"] + (["transposed"] if allow_transposed else []))
        k = rng.randint(1, 3)
        s = rng.randint(1, 2)
        d = rng.randint(1, 2)
        if kind == "conv":
            padding = rng.choice(["valid", "same", rng.randint(0, 2)])
            mode = rng.choice(["zeros", "zeros", "reflect", "replicate"]) if allow_transposed else "zeros"
            specs.append(ConvSpec(k, strides=s, dilation=d, padding=padding, padding_mode=mode, rank=rank))
        elif kind == "pool":
            specs.append(ConvSpec(max(k, 2), strides=s, padding=rng.choice(["valid", "same"]), pool="avg",
                                  rank=rank))
        else:
            specs.append(ConvSpec(k, strides=s, padding=rng.choice(["valid", "same"]), transposed=True, rank=rank))
    return specs, size


def run_chain(specs, x, kernels):
    for spec, kernel in zip(specs, kernels):
        x = convarith.conv(x, kernel, spec)
    return x


def brute_force(specs, size, cell):
    rank = len(size)
    kernels = [None if s.pool else np.full((*s.kernel_size, 1, 1), 0.5) for s in specs]
    # one batch: item 0 is the base input, item i + 1 has pixel i raised by one
    pixels = list(np.ndindex(*size))
    batch = np.ones((len(pixels) + 1, *size, 1))
    for i, index in enumerate(pixels):
        batch[(i + 1, *index, 0)] += 1.0
    values = run_chain(specs, batch, kernels)[(slice(None), *cell, 0)]
    touched = [index for index, v in zip(pixels, values[1:]) if abs(v - values[0]) > 1e-9]
    per_axis = tuple(tuple(sorted({t[a] for t in touched})) for a in range(rank))
    product = {tuple(c) for c in np.ndindex(*[len(p) for p in per_axis])}
    assert len(product) == len(touched), "the field of a separable chain is a product of axes"
    return per_axis


@pytest.mark.parametrize("seed", range(24))
def test_fields_match_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    rank = 1 if seed % 3 == 0 else 2
    allow_transposed = seed % 2 == 1
    specs, size = random_chain(rng, rank, allow_transposed)
    try:
        resolved = chain(specs, size)
    except ValueError:
        pytest.skip(f"seed {seed}: chain does not fit the input")
    out = resolved[-1].output_size
    cell = tuple(rng.randrange(n) for n in out)
    seen = brute_force(specs, size, cell)
    assert seen == exact_field(resolved, cell), f"seed {seed}: {specs}"
    span = stack_fields(resolved)[-1].span(cell)
    for axis, cells in enumerate(seen):
        lo, hi = span[axis]
        assert all(lo <= c <= hi for c in cells), f"seed {seed}: axis {axis} outside {span}"
        direct = all(not s.transposed and s.padding_mode == "zeros" for s in specs)
        if direct and cells and 0 <= lo and hi < size[axis]:
            assert (cells[0], cells[-1]) == (lo, hi), f"seed {seed}: axis {axis}"
