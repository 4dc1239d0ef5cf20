"""A small layer's backward pass: the input and kernel gradients side by side.

Below ``SMALL_BACKWARD_FLOPS`` with two or more workers, ``conv_vjp`` runs each
gradient on one thread, the two at once: the values must be exactly those of the
one-thread pass (each gradient takes the same algorithm and chunks), for direct
and transposed convolutions, with and without the input gradient.
"""

from __future__ import annotations

import numpy as np
import pytest

from convarith import ConvSpec, engine
from convarith.engine import core
from convarith.engine.algorithms import _threads

SEED = 20261206


def _cases(rng: np.random.Generator):
    for trial in range(10):
        transposed = bool(trial % 3 == 2)
        k = int(rng.choice([1, 3, 5]))
        stride = int(rng.choice([1, 2]))
        channels, filters = int(rng.choice([1, 3, 16])), int(rng.choice([4, 16]))
        size, batch = int(rng.integers(k + 2, 20)), int(rng.choice([1, 4, 8]))
        padding = "same" if stride == 1 and not transposed else "valid"
        spec = ConvSpec(k, strides=stride, padding=padding, transposed=transposed, rank=2)
        shape = (k, k, filters, channels) if transposed else (k, k, channels, filters)
        x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
        yield trial, spec, x, rng.standard_normal(shape).astype(np.float32)


def test_side_by_side_gradients_equal_the_one_thread_pass():
    rng = np.random.default_rng(SEED)
    with engine.thread_limit(2):
        if _threads.worker_count() < 2:
            pytest.skip("one core: no second worker")
        checked = 0
        for trial, spec, x, kernel in _cases(rng):
            y = engine.conv(x, kernel, spec)
            dy = rng.standard_normal(y.shape).astype(np.float32)
            flops = 2 * kernel.size * (x if spec.transposed else y)[..., 0].size
            context = f"seed {SEED} trial {trial}: {spec}, x {x.shape}, {flops:.3g} FLOPs"
            if flops >= core.SMALL_BACKWARD_FLOPS:
                continue  # each gradient on every worker: another test's subject
            checked += 1
            for need in (True, False):
                paired = engine.conv_vjp(x, kernel, spec, dy, need_input_grad=need)
                with engine.thread_limit(1):
                    alone = engine.conv_vjp(x, kernel, spec, dy, need_input_grad=need)
                for got, expected in zip(paired, alone):
                    assert (got is None) == (expected is None), context
                    if expected is not None:
                        np.testing.assert_array_equal(got, expected, err_msg=context)
    assert checked >= 8


def test_an_error_in_either_gradient_is_raised_by_the_call(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("kernel gradient failed")

    monkeypatch.setattr(core, "_weight_grad", broken)
    x = np.ones((2, 8, 8, 4), np.float32)
    kernel = np.ones((3, 3, 4, 4), np.float32)
    spec = ConvSpec(3, padding="same", rank=2)
    with engine.thread_limit(2), pytest.raises(ValueError, match="kernel gradient failed"):
        engine.conv_vjp(x, kernel, spec, np.ones((2, 8, 8, 4), np.float32))
