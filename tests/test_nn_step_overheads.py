"""Training-step shortcuts: the input gradient nobody reads is not computed.

``conv_vjp(..., need_input_grad=False)`` must give the same weight gradients as
the full backward pass (whose values the oracle tests check against PyTorch and
finite differences), and a model's training step must use it for the first
layer only; PyTorch's own ``conv2d_weight`` gradient is the outside reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from convarith import ConvSpec, conv_vjp, engine, nn

SEED = 1717


def _random_case(rng: np.random.Generator) -> tuple[ConvSpec, np.ndarray, np.ndarray | None,
                                                    np.ndarray | None]:
    """A random 1-D/2-D convolution, transposed convolution or pooling with its arrays."""
    rank = int(rng.integers(1, 3))
    kind = ["conv", "transposed", "pool"][int(rng.integers(0, 3))]
    k = int(rng.integers(1, 4))
    stride = int(rng.integers(1, 3))
    data_format = ["channels_last", "channels_first"][int(rng.integers(0, 2))]
    batch, size = int(rng.integers(1, 3)), int(rng.integers(5, 9))
    if kind == "pool":
        spec = ConvSpec(k, strides=stride, pool=["max", "avg"][int(rng.integers(0, 2))],
                        rank=rank, data_format=data_format)
        channels, kernel, bias = 2, None, None
    else:
        groups = int(rng.integers(1, 3))
        channels, filters = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        dilation = int(rng.integers(1, 3))
        if kind == "transposed":
            spec = ConvSpec(k, strides=stride, dilation=dilation, groups=groups, transposed=True,
                            rank=rank, data_format=data_format)
            kernel = rng.standard_normal((*(k,) * rank, filters // groups, channels))
        else:
            padding_mode = "zeros" if rng.integers(0, 2) else "reflect"
            padding = "same" if stride == 1 else int(rng.integers(0, 2))
            spec = ConvSpec(k, strides=stride, dilation=dilation, groups=groups,
                            padding=padding, padding_mode=padding_mode, rank=rank,
                            data_format=data_format)
            kernel = rng.standard_normal((*(k,) * rank, channels // groups, filters))
        bias = rng.standard_normal(kernel.shape[-1] if kind == "conv" else kernel.shape[-2] * groups)
    spatial = (size,) * rank
    shape = (batch, *spatial, channels) if data_format == "channels_last" else (
        batch, channels, *spatial)
    return spec, rng.standard_normal(shape), kernel, bias


def test_skipping_the_input_gradient_keeps_the_weight_gradients() -> None:
    rng = np.random.default_rng(SEED)
    checked = 0
    for trial in range(40):
        spec, x, kernel, bias = _random_case(rng)
        try:
            y = engine.conv(x, kernel, spec, bias=bias)
        except ValueError:
            continue  # a random geometry the spec rejects (too small an input, ...)
        d_out = rng.standard_normal(y.shape)
        full = conv_vjp(x, kernel, spec, d_out, bias=bias)
        weights_only = conv_vjp(x, kernel, spec, d_out, bias=bias, need_input_grad=False)
        context = f"seed {SEED} trial {trial}: {spec}"
        assert full[0] is not None and full[0].shape == x.shape, context
        assert weights_only[0] is None, context
        for expected, actual in zip(full[1:], weights_only[1:]):
            assert (expected is None) == (actual is None), context
            if expected is not None:
                np.testing.assert_array_equal(actual, expected, err_msg=context)
        checked += 1
    assert checked >= 20


def test_weight_gradient_alone_matches_pytorch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((2, 9, 8, 3))
    kernel = rng.standard_normal((3, 3, 3, 4))
    spec = ConvSpec(3, strides=2, dilation=1, padding=1)
    y = engine.conv(x, kernel, spec)
    d_out = rng.standard_normal(y.shape)
    d_x, d_kernel, d_bias = conv_vjp(x, kernel, spec, d_out, need_input_grad=False)
    expected = torch.nn.grad.conv2d_weight(
        torch.from_numpy(x).permute(0, 3, 1, 2), (4, 3, 3, 3),
        torch.from_numpy(d_out).permute(0, 3, 1, 2), stride=2, padding=1,
    ).permute(2, 3, 1, 0).numpy()
    assert d_x is None and d_bias is None
    np.testing.assert_allclose(d_kernel, expected, rtol=1e-10, atol=1e-10)


def test_need_input_grad_must_be_a_bool() -> None:
    x, k = np.ones((1, 4, 1)), np.ones((2, 1, 1))
    with pytest.raises(TypeError, match="need_input_grad must be True or False, got 'no'"):
        conv_vjp(x, k, ConvSpec(2, rank=1), np.ones((1, 3, 1)), need_input_grad="no")  # type: ignore[call-overload]


def _spy_on_vjp(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    calls: list[bool] = []
    original = engine.conv_vjp

    def spy(*args: Any, need_input_grad: bool = True, **kwargs: Any) -> Any:
        calls.append(need_input_grad)
        return original(*args, need_input_grad=need_input_grad, **kwargs)

    monkeypatch.setattr(engine, "conv_vjp", spy)
    return calls


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return rng.standard_normal((8, 6, 6, 2)).astype("float32"), rng.integers(0, 3, 8)


def test_sequential_training_skips_only_the_first_input_gradient(
        monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _data()
    model = nn.Sequential([nn.Input((6, 6, 2)), nn.Conv2D(3, 3, activation="relu"),
                           nn.Conv2D(3, 3), nn.Flatten(), nn.Dense(3, activation="softmax")])
    model.compile(nn.SGD(0.1), "sparse_categorical_crossentropy")
    calls = _spy_on_vjp(monkeypatch)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert calls == [True, False]  # second conv needs its input gradient, the first does not
    # the public backward still returns the input gradient
    model.forward(x, training=True, keep=True)
    d_x = model.backward(np.ones((8, 3), "float32"))
    assert d_x.shape == x.shape


def test_functional_training_skips_input_gradients_of_layers_reading_inputs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = _data()
    inputs = nn.Input((6, 6, 2))
    a = nn.Conv2D(3, 3, padding="same")(inputs)
    b = nn.Conv2D(3, 3, padding="same")(a)
    merged = nn.Add()([a, b])
    outputs = nn.Dense(3, activation="softmax")(nn.Flatten()(merged))
    model = nn.Model(inputs, outputs)
    model.compile(nn.SGD(0.1), "sparse_categorical_crossentropy")
    calls = _spy_on_vjp(monkeypatch)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert sorted(calls) == [False, True]
    model.run([x], training=True, keep=True)
    (d_x,) = model.backward_outputs([np.ones((8, 3), "float32")])
    assert d_x.shape == x.shape and np.any(d_x != 0)


def test_small_conv_layers_run_each_gradient_on_one_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Below SMALL_BACKWARD_FLOPS (with two workers) the engine runs each gradient on one
    thread, the two side by side; above, each on every worker. Same values either way."""
    from convarith.engine import core
    from convarith.engine.algorithms import _threads

    limits: dict[str, list[int | None]] = {"input": [], "kernel": []}
    transposed, weight_grad = core.transposed_conv, core._weight_grad

    def spy_input(*args: Any, **kwargs: Any) -> Any:
        limits["input"].append(_threads._LIMIT.get())
        return transposed(*args, **kwargs)

    def spy_kernel(*args: Any, **kwargs: Any) -> Any:
        limits["kernel"].append(_threads._LIMIT.get())
        return weight_grad(*args, **kwargs)

    monkeypatch.setattr(core, "transposed_conv", spy_input)
    monkeypatch.setattr(core, "_weight_grad", spy_kernel)
    monkeypatch.setattr(core, "TWO_CORES_FLOPS", 0.0)  # larger layers: every worker each
    rng = np.random.default_rng(SEED)
    with engine.thread_limit(2):
        if _threads.worker_count() < 2:
            pytest.skip("one core: every gradient runs on it")
        for channels, size, expected in ((4, 8, 1), (64, 32, 2)):
            layer = nn.Sequential([nn.Input((size, size, channels)),
                                   nn.Conv2D(channels, 3, padding="same")]).layers[0]
            x = rng.standard_normal((2, size, size, channels)).astype("float32")
            y = layer.forward(x, training=True, keep=True)
            flops = 2 * 9 * channels * channels * 2 * size * size
            assert (flops < core.SMALL_BACKWARD_FLOPS) == (expected == 1)
            d_x = layer.backward(np.ones_like(y))
            assert limits["input"][-1] == limits["kernel"][-1] == expected, (channels, size)
            with engine.thread_limit(1):
                d_x1, d_k1, _ = core.conv_vjp(x, layer.variables["kernel"], layer.spec,
                                              np.ones_like(y))
            # one thread and two may choose different algorithms (their costs know the
            # workers: Winograd on one, register_tiles on two here), so the same values
            # up to float32's rounding of a 576-term sum, not bit for bit
            np.testing.assert_allclose(d_x, d_x1, rtol=1e-5,
                                       atol=1e-5 * float(np.abs(d_x1).max()))
            # (the kernel gradient: two workers sum their halves of the cells apart)
            np.testing.assert_allclose(layer.grads["kernel"], d_k1, rtol=1e-5,
                                       atol=1e-5 * float(np.abs(d_k1).max()))
