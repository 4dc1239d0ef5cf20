"""Front doors: framework arguments in, ConvSpec out, framework rules enforced, clear errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from convarith import ConvSpec
from convarith.frontdoors import from_jax, from_keras, from_onnx, from_torch

# --------------------------------------------------------------------------- mapping


def test_keras_conv_same_stride_two_pads_at_the_end() -> None:
    spec = ConvSpec.from_keras("Conv2D", filters=8, kernel_size=3, strides=2, padding="same")
    assert spec.convention == "keras" and spec.data_format == "channels_last"
    resolved = spec.resolve((1, 28, 28, 3))
    assert resolved.output_shape == (1, 14, 14, 8)
    assert resolved.padding == ((0, 1), (0, 1))


def test_torch_padding_one_is_symmetric() -> None:
    spec = ConvSpec.from_torch("Conv2d", in_channels=3, out_channels=8, kernel_size=3, stride=2, padding=1)
    resolved = spec.resolve((1, 3, 28, 28))
    assert resolved.output_shape == (1, 8, 14, 14)
    assert resolved.padding == ((1, 1), (1, 1))


def test_keras_pooling_strides_default_to_pool_size_and_never_count_padding() -> None:
    spec = from_keras("AveragePooling2D", pool_size=(2, 3), padding="same")
    assert spec.strides == (2, 3) and spec.pool == "avg" and spec.count_include_pad is False


def test_torch_avg_pool_counts_padding_by_default() -> None:
    assert from_torch("AvgPool2d", kernel_size=3, padding=1).count_include_pad is True
    assert from_torch("AvgPool2d", kernel_size=3, count_include_pad=False).count_include_pad is False


def test_keras_causal_conv1d() -> None:
    resolved = from_keras("Conv1D", filters=2, kernel_size=3, dilation_rate=4, padding="causal").resolve((10, 1))
    assert resolved.padding == ((8, 0),) and resolved.output_size == (10,)


def test_keras_depthwise_output_channels() -> None:
    spec = from_keras("DepthwiseConv2D", kernel_size=3, depth_multiplier=2, strides=2, dilation_rate=2)
    assert spec.groups == "depthwise"
    assert spec.resolve((1, 9, 9, 3)).output_shape == (1, 3, 3, 6)


def test_keras_transposed_default_output_padding() -> None:
    assert from_keras("Conv2DTranspose", filters=1, kernel_size=1, strides=3).resolve((5, 5)).output_size == (15, 15)
    assert from_keras("Conv1DTranspose", filters=1, kernel_size=3, strides=2, padding="same",
                      output_padding=1).resolve((4,)).output_size == (8,)


def test_torch_transposed_crop() -> None:
    spec = from_torch("ConvTranspose1d", in_channels=1, out_channels=1, kernel_size=4, stride=2,
                      padding=1, output_padding=1)
    resolved = spec.resolve((1, 1, 14))
    assert resolved.output_shape == (1, 1, 29) and resolved.crop == ((1, 0),)  # output_padding counts in hi


def test_jax_layouts_and_same_lower() -> None:
    nchw = from_jax("conv_general_dilated", kernel_size=(3, 3), window_strides=(2, 2), padding="SAME_LOWER")
    assert nchw.data_format == "channels_first"
    assert nchw.resolve((6, 6)).padding == ((1, 0), (1, 0))
    nhwc = from_jax("conv_general_dilated", kernel_size=(3,), window_strides=(1,), padding=[(1, 2)],
                    dimension_numbers=("NWC", "WIO", "NWC"))
    assert nhwc.data_format == "channels_last" and nhwc.resolve((5,)).output_size == (6,)


def test_jax_lhs_dilation_is_a_transposed_convolution() -> None:
    spec = from_jax("conv_general_dilated", kernel_size=(3,), window_strides=(1,), padding=[(2, 2)],
                    lhs_dilation=(2,))
    assert spec.transposed and spec.resolve((4,)).output_size == (9,)  # (4-1)*2+1 + 4 - 2


def test_jax_conv_transpose_padding_meanings() -> None:
    same = from_jax("conv_transpose", kernel_size=(3,), strides=(2,), padding="SAME")
    assert same.resolve((5,)).output_size == (10,)
    pairs = from_jax("conv_transpose", kernel_size=(3,), strides=(2,), padding=[(2, 2)])
    consistent = from_jax("conv_transpose", kernel_size=(3,), strides=(2,), padding=[(0, 0)],
                          use_consistent_padding=True)
    assert pairs.resolve((5,)).output_size == consistent.resolve((5,)).output_size == (11,)


def test_onnx_conv_and_pool() -> None:
    spec = from_onnx("Conv", kernel_shape=[3, 3], pads=[1, 0, 1, 2], strides=[2, 2], weight_shape=[4, 2, 3, 3])
    assert spec.padding == ((1, 1), (0, 2)) and spec.filters == 4
    assert spec.resolve((1, 2, 7, 7)).output_shape == (1, 4, 4, 4)
    assert from_onnx("Conv", weight_shape=[4, 2, 5]).kernel_size == (5,)
    assert from_onnx("AveragePool", kernel_shape=[2], count_include_pad=1).count_include_pad is True


def test_onnx_conv_transpose_output_shape_needs_the_input() -> None:
    with pytest.raises(TypeError, match="input_shape"):
        from_onnx("ConvTranspose", kernel_shape=[3], strides=[2], output_shape=[6])
    spec = from_onnx("ConvTranspose", kernel_shape=[3], strides=[2], output_shape=[6], input_shape=[1, 1, 3])
    assert spec.resolve((1, 1, 3)).output_size == (6,)


# --------------------------------------------------------------------------- framework rules


REJECTED: list[tuple[Any, str, dict[str, Any], str]] = [
    (from_keras, "Conv2D", dict(filters=4, kernel_size=3, strides=2, dilation_rate=2), "dilation_rate"),
    (from_keras, "Conv2DTranspose", dict(filters=4, kernel_size=3, strides=2, dilation_rate=2), "strides"),
    (from_keras, "Conv2D", dict(filters=4, kernel_size=3, padding="causal"), "causal"),
    (from_keras, "Conv1DTranspose", dict(filters=4, kernel_size=3, padding="causal"), "causal"),
    (from_keras, "Conv2D", dict(filters=5, kernel_size=3, groups=2), "groups=2"),
    (from_keras, "Conv2D", dict(filters=4, kernel_size=3, padding=(1, 1)), "ZeroPadding"),
    (from_keras, "Conv2DTranspose", dict(filters=4, kernel_size=3, strides=2, output_padding=2), "output_padding"),
    (from_keras, "Conv2D", dict(filters=4, kernel_size=(3, 0)), "kernel_size"),
    (from_keras, "Conv2D", dict(filters=0, kernel_size=3), "filters=0"),
    (from_keras, "Conv2D", dict(filters=4, kernel_size=3, data_format="NHWC"), "data_format"),
    (from_keras, "MaxPooling2D", dict(pool_size=2, strides=0), "strides"),
    (from_keras, "MaxPooling2D", dict(pool_size=2, padding="full"), "padding"),
    (from_keras, "Conv2D", dict(filters=4, kernel_size=(3, 3, 3)), "3 values"),
    (from_keras, "Conv4D", dict(filters=4, kernel_size=3), "Conv4D"),
    (from_keras, "DepthwiseConv3D", dict(kernel_size=3), "DepthwiseConv3D"),
    (from_torch, "Conv2d", dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding="same"), "same"),
    (from_torch, "Conv2d", dict(in_channels=3, out_channels=4, kernel_size=3, groups=2), "in_channels=3"),
    (from_torch, "Conv2d", dict(in_channels=4, out_channels=3, kernel_size=3, groups=2), "out_channels=3"),
    (from_torch, "Conv2d", dict(in_channels=4, out_channels=4, kernel_size=3, padding_mode="wrap"), "padding_mode"),
    (from_torch, "Conv2d", dict(in_channels=4, out_channels=4, kernel_size=3, padding="SAME"), "padding"),
    (from_torch, "Conv2d", dict(in_channels=4, out_channels=4, kernel_size=3, padding=-1), "padding"),
    (from_torch, "ConvTranspose2d", dict(in_channels=1, out_channels=1, kernel_size=3, stride=2, output_padding=2), "output_padding"),
    (from_torch, "ConvTranspose2d", dict(in_channels=1, out_channels=1, kernel_size=3, padding="same"), "padding"),
    (from_torch, "ConvTranspose2d", dict(in_channels=1, out_channels=1, kernel_size=3, padding_mode="reflect"), "padding_mode"),
    (from_torch, "MaxPool2d", dict(kernel_size=2, padding=2), "half"),
    (from_torch, "MaxPool1d", dict(kernel_size=2, padding=2, dilation=3), "half"),
    (from_torch, "AvgPool1d", dict(kernel_size=3, padding=2), "half"),
    (from_torch, "AvgPool2d", dict(kernel_size=3, divisor_override=2), "divisor_override"),
    (from_torch, "Conv2d", dict(in_channels=1, out_channels=1, kernel_size=3, stride=0), "stride"),
    (from_jax, "conv_general_dilated", dict(kernel_size=(3,), window_strides=(1,), padding="same_upper"), "padding"),
    (from_jax, "conv_general_dilated", dict(kernel_size=(3,), window_strides=(1,), padding="SAME", lhs_dilation=(2,)), "lhs_dilation"),
    (from_jax, "conv_general_dilated", dict(kernel_size=(3,), window_strides=(2,), padding=[(0, 0)], lhs_dilation=(2,)), "window_strides"),
    (from_jax, "conv_general_dilated", dict(kernel_size=(3,), window_strides=(1,), padding="SAME", feature_group_count=2, filters=3), "feature_group_count"),
    (from_jax, "conv_general_dilated", dict(kernel_size=(3,), window_strides=(1, 1), padding="SAME"), "window_strides"),
    (from_jax, "conv_transpose", dict(kernel_size=(3,), strides=(2,), padding="same"), "strides"),
    (from_jax, "conv_transpose", dict(kernel_size=(3,), strides=(1,), padding="same", use_consistent_padding=True), "padding"),
    (from_jax, "max_pool", dict(window_shape=(0, 2)), "window_shape"),
    (from_jax, "conv", dict(kernel_size=(3,)), "conv"),
    (from_onnx, "Conv", dict(kernel_shape=[3], auto_pad="SAME_UPPER", dilations=[2]), "dilations"),
    (from_onnx, "Conv", dict(kernel_shape=[3], auto_pad="same_upper"), "auto_pad"),
    (from_onnx, "Conv", dict(kernel_shape=[3], pads=[1]), "pads"),
    (from_onnx, "Conv", dict(kernel_shape=[3], pads=[1, -1]), "pads"),
    (from_onnx, "Conv", dict(kernel_shape=[3], weight_shape=[4, 1, 5]), "kernel_shape"),
    (from_onnx, "Conv", dict(kernel_shape=[3], group=3, weight_shape=[4, 1, 3]), "group"),
    (from_onnx, "MaxPool", dict(kernel_shape=[2], pads=[2, 0]), "pads"),
    (from_onnx, "MaxPool", dict(kernel_shape=[2], auto_pad="VALID", pads=[2, 0]), "pads"),
    (from_onnx, "ConvTranspose", dict(kernel_shape=[3], strides=[2], output_padding=[2]), "output_padding"),
    (from_onnx, "ConvTranspose", dict(kernel_shape=[3], dilations=[2], output_padding=[1]), "stride"),
    (from_onnx, "ConvTranspose", dict(kernel_shape=[3], auto_pad="VALID", pads=[0, 0]), "auto_pad"),
    (from_onnx, "ConvTranspose", dict(kernel_shape=[3], strides=[2], output_shape=[9], input_shape=[1, 1, 3]), "output_shape"),
]


@pytest.mark.parametrize(("door", "layer", "kwargs", "word"), REJECTED,
                         ids=[f"{d.__name__}-{layer}-{w}" for d, layer, _, w in REJECTED])
def test_rejections_name_the_framework_argument_and_value(
    door: Any, layer: str, kwargs: dict[str, Any], word: str
) -> None:
    with pytest.raises((ValueError, TypeError)) as caught:
        door(layer, **kwargs)
    message = str(caught.value)
    framework = {"from_keras": "Keras", "from_torch": "PyTorch", "from_jax": "JAX", "from_onnx": "ONNX"}
    assert message.startswith(framework[door.__name__]), message
    assert word in message, message


def test_message_has_argument_value_rule_and_fix() -> None:
    with pytest.raises(ValueError) as caught:
        from_keras("Conv2D", filters=4, kernel_size=3, strides=2, dilation_rate=2)
    message = str(caught.value)
    assert "Keras Conv2D: strides=(2, 2)" in message
    assert "dilation_rate=(2, 2)" in message and "use strides=1" in message


@pytest.mark.parametrize("bad", [True, 2.0, "3", None, np.float32(3), [3, True]])
def test_non_integers_and_booleans_are_type_errors(bad: Any) -> None:
    with pytest.raises(TypeError, match="kernel_size"):
        from_keras("Conv2D", filters=4, kernel_size=bad)
    with pytest.raises(TypeError, match="kernel_size"):
        from_torch("Conv2d", in_channels=1, out_channels=1, kernel_size=bad)


@pytest.mark.parametrize("door, layer, kwargs, name", [
    (from_keras, "Conv2D", dict(filters=4, kernel_size=3), "strides"),
    (from_torch, "Conv2d", dict(in_channels=1, out_channels=1, kernel_size=3), "stride"),
    (from_torch, "MaxPool2d", dict(kernel_size=3), "stride"),
    (from_jax, "conv_general_dilated", dict(kernel_size=(3, 3), padding="SAME"), "window_strides"),
    (from_onnx, "Conv", dict(kernel_shape=[3, 3]), "strides"),
])
@pytest.mark.parametrize("value", [-1, 0, True, 1.5])
def test_negative_zero_bool_float_strides(door: Any, layer: str, kwargs: dict[str, Any], name: str, value: Any) -> None:
    if isinstance(value, bool) or not float(value).is_integer():
        expected: Any = TypeError
    else:
        expected = ValueError
    with pytest.raises(expected) as caught:
        door(layer, **kwargs, **{name: value})
    assert f"{name}={value!r}" in str(caught.value)


def test_booleans_rejected_everywhere_integers_are_expected() -> None:
    with pytest.raises(TypeError, match="filters=True"):
        from_keras("Conv2D", filters=True, kernel_size=3)
    with pytest.raises(TypeError, match="groups=True"):
        from_torch("Conv2d", in_channels=2, out_channels=2, kernel_size=3, groups=True)
    with pytest.raises(TypeError, match="padding"):
        from_torch("Conv2d", in_channels=2, out_channels=2, kernel_size=3, padding=False)
    with pytest.raises(TypeError, match="feature_group_count"):
        from_jax("conv_general_dilated", kernel_size=(3,), window_strides=(1,), padding="SAME",
                 feature_group_count=True)
    with pytest.raises(TypeError, match="ceil_mode"):
        from_torch("MaxPool2d", kernel_size=2, ceil_mode="yes")


def test_unknown_arguments_are_type_errors_naming_them() -> None:
    with pytest.raises(TypeError, match="stride=2"):
        from_keras("Conv2D", filters=4, kernel_size=3, stride=2)  # Keras spells it strides
    with pytest.raises(TypeError, match="strides=2"):
        from_torch("Conv2d", in_channels=1, out_channels=1, kernel_size=3, strides=2)
    with pytest.raises(TypeError, match="kernel_size"):
        from_onnx("Conv", kernel_size=[3])


def test_missing_required_arguments() -> None:
    with pytest.raises(TypeError, match="filters"):
        from_keras("Conv2D", kernel_size=3)
    with pytest.raises(TypeError, match="in_channels"):
        from_torch("Conv2d", out_channels=1, kernel_size=3)
    with pytest.raises(TypeError, match="kernel_shape"):
        from_onnx("MaxPool", strides=[2])


def test_geometry_free_arguments_are_accepted() -> None:
    spec = from_keras("Conv2D", filters=4, kernel_size=3, activation="relu", use_bias=False, name="c")
    assert spec.kernel_size == (3, 3)
    assert from_torch("Conv2d", in_channels=1, out_channels=1, kernel_size=3, bias=False,
                      device="cpu").kernel_size == (3, 3)


def test_size_problems_are_left_to_resolve() -> None:
    spec = from_torch("Conv2d", in_channels=1, out_channels=1, kernel_size=5)
    with pytest.raises(ValueError, match="kernel"):
        spec.resolve((1, 1, 3, 3))
    reflect = from_torch("Conv1d", in_channels=1, out_channels=1, kernel_size=5, padding=3,
                         padding_mode="reflect")
    with pytest.raises(ValueError, match="reflect"):
        reflect.resolve((1, 1, 3))
