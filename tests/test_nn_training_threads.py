"""A training step runs a small convolution layer's engine calls on one thread
(``layers.ONE_THREAD_TRAINING_FLOPS``), a large one's on the engine's own choice,
and inference is left to the engine."""

from __future__ import annotations

import numpy as np
import pytest

from convarith import engine, nn
from convarith.engine import core
from convarith.nn import layers


def _threads_seen(monkeypatch: pytest.MonkeyPatch, layer: nn.Layer, batch: int) -> set[int]:
    """The engine's worker counts inside ``layer``'s training forward and backward."""
    seen: set[int] = set()
    for owner, name in ((engine, "conv"), (engine, "conv_vjp"), (core, "conv")):
        original = getattr(owner, name)

        def spy(*args, _original=original, **kwargs):
            seen.add(engine.worker_count())
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)
    x = np.random.default_rng(3).standard_normal((batch, 12, 12, 4)).astype(np.float32)
    y = layer.forward(x, training=True, keep=True)
    layer.backward(np.ones_like(y))
    return seen


@pytest.mark.parametrize("make", [lambda: nn.Conv2D(8, 3, padding="same"),
                                  lambda: nn.SeparableConv2D(8, 3, padding="same")])
def test_small_layers_train_on_one_thread_large_ones_on_the_engines_choice(
        make, monkeypatch: pytest.MonkeyPatch) -> None:
    if engine.worker_count() < 2:
        pytest.skip("the engine has one thread here")
    layer = make()
    layer.build((12, 12, 4))
    flops = layer.training_flops(4)
    assert flops is not None and 0 < flops < layers.ONE_THREAD_TRAINING_FLOPS
    assert _threads_seen(monkeypatch, layer, 4) == {1}
    monkeypatch.setattr(layers, "ONE_THREAD_TRAINING_FLOPS", flops / 2)
    assert 1 not in _threads_seen(monkeypatch, layer, 4)


def test_training_flops_count_the_forward_multiply_adds() -> None:
    # 2 · batch · output cells · filters · taps · input channels of a group
    layer = nn.Conv2D(6, (3, 2), strides=2, groups=2, padding="valid")
    layer.build((9, 8, 4))
    assert layer.output_shape == (4, 4, 6)
    assert layer.training_flops(5) == 2 * 5 * 4 * 4 * 6 * 3 * 2 * 2
    depthwise = nn.DepthwiseConv2D(3, depth_multiplier=2, padding="same")
    depthwise.build((7, 7, 3))
    assert depthwise.training_flops(1) == 2 * 7 * 7 * 6 * 9
