"""The ONNX front doors refuse each bad argument with one error: TypeError for a wrong type, ValueError for a
wrong value, and the message names the argument."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from convarith import ConvSpec

F = ConvSpec.from_onnx

# (argument, call, expected error)
DOOR: list[tuple[str, Callable[[], Any], type[Exception]]] = [
    ("op", lambda: F(3), TypeError),
    ("op", lambda: F("Gemm", kernel_shape=[3]), ValueError),
    ("foo", lambda: F("Conv", kernel_shape=[3], foo=1), TypeError),
    ("kernel_shape", lambda: F("Conv", kernel_shape="3"), TypeError),
    ("kernel_shape", lambda: F("Conv", kernel_shape=3), TypeError),
    ("kernel_shape", lambda: F("Conv", kernel_shape=[3.5]), TypeError),
    ("kernel_shape", lambda: F("Conv", kernel_shape=[0]), ValueError),
    ("kernel_shape", lambda: F("Conv", kernel_shape=[3] * 4), ValueError),
    ("kernel_shape", lambda: F("Conv"), TypeError),
    ("kernel_shape", lambda: F("MaxPool"), TypeError),
    ("strides", lambda: F("Conv", kernel_shape=[3], strides="2"), TypeError),
    ("strides", lambda: F("Conv", kernel_shape=[3], strides=[0]), ValueError),
    ("strides", lambda: F("Conv", kernel_shape=[3], strides=[1, 1]), ValueError),
    ("dilations", lambda: F("Conv", kernel_shape=[3], dilations=[1.0]), TypeError),
    ("dilations", lambda: F("Conv", kernel_shape=[3], dilations=[-1]), ValueError),
    ("auto_pad", lambda: F("Conv", kernel_shape=[3], auto_pad=1), TypeError),
    ("auto_pad", lambda: F("Conv", kernel_shape=[3], auto_pad="SAME"), ValueError),
    ("pads", lambda: F("Conv", kernel_shape=[3], pads="1"), TypeError),
    ("pads", lambda: F("Conv", kernel_shape=[3], pads=[-1, 0]), ValueError),
    ("pads", lambda: F("MaxPool", kernel_shape=[3], pads=[3, 0]), ValueError),
    ("group", lambda: F("Conv", kernel_shape=[3], group="2"), TypeError),
    ("group", lambda: F("Conv", kernel_shape=[3], group=0), ValueError),
    ("group", lambda: F("Conv", weight_shape=[8, 3, 3], group=3), ValueError),
    ("weight_shape", lambda: F("Conv", weight_shape="abc"), TypeError),
    ("weight_shape", lambda: F("Conv", weight_shape=8), TypeError),
    ("weight_shape", lambda: F("Conv", weight_shape=[8, 3, "3"]), TypeError),
    ("weight_shape", lambda: F("Conv", weight_shape=[8, 3, -3]), ValueError),
    ("weight_shape", lambda: F("Conv", weight_shape=[8, 3]), ValueError),
    ("kernel_shape", lambda: F("Conv", kernel_shape=[3], weight_shape=[8, 3, 5]), ValueError),
    ("ceil_mode", lambda: F("MaxPool", kernel_shape=[3], ceil_mode="yes"), TypeError),
    ("ceil_mode", lambda: F("MaxPool", kernel_shape=[3], ceil_mode=2), ValueError),
    ("count_include_pad", lambda: F("AveragePool", kernel_shape=[3], count_include_pad=[1]), TypeError),
    ("count_include_pad", lambda: F("AveragePool", kernel_shape=[3], count_include_pad=5), ValueError),
    ("storage_order", lambda: F("MaxPool", kernel_shape=[3], storage_order="a"), TypeError),
    ("storage_order", lambda: F("MaxPool", kernel_shape=[3], storage_order=2), ValueError),
    ("output_padding", lambda: F("ConvTranspose", kernel_shape=[3], strides=[2], output_padding="1"), TypeError),
    ("output_padding", lambda: F("ConvTranspose", kernel_shape=[3], strides=[2], output_padding=[2]), ValueError),
    ("output_shape", lambda: F("ConvTranspose", kernel_shape=[3], output_shape="5", input_shape=[1, 1, 3]),
     TypeError),
    ("output_shape", lambda: F("ConvTranspose", kernel_shape=[3], output_shape=[50], input_shape=[1, 1, 3]),
     ValueError),
    ("input_shape", lambda: F("ConvTranspose", kernel_shape=[3], output_shape=[5]), TypeError),
    ("input_shape", lambda: F("ConvTranspose", kernel_shape=[3], output_shape=[5], input_shape="abc"), TypeError),
    ("input_shape", lambda: F("ConvTranspose", kernel_shape=[3], output_shape=[5], input_shape=3), TypeError),
    ("input_shape", lambda: F("ConvTranspose", kernel_shape=[3], output_shape=[5], input_shape=[1, 1, 0]),
     ValueError),
]


@pytest.mark.parametrize(("argument", "call", "error"), DOOR, ids=[f"{a}-{e.__name__}-{i}" for i, (a, _, e) in
                                                                   enumerate(DOOR)])
def test_from_onnx_error_kind_and_argument(argument: str, call: Callable[[], Any], error: type[Exception]) -> None:
    with pytest.raises(Exception) as caught:
        call()
    assert type(caught.value) is error, caught.value
    assert argument in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def node_cases() -> list[tuple[str, Callable[[], Any], type[Exception]]]:
    helper = pytest.importorskip("onnx").helper
    conv = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])
    pool = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3])
    N = ConvSpec.from_onnx_node
    return [
        ("node", lambda: N("Conv"), TypeError),
        ("op_type", lambda: N(helper.make_node("Relu", ["x"], ["y"])), ValueError),
        ("kernel_shape", lambda: N(helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[0, 3])), ValueError),
        ("input_shape", lambda: N(conv, input_shape="abc"), TypeError),
        ("input_shape", lambda: N(conv, input_shape=5), TypeError),
        ("input_shape", lambda: N(conv, input_shape=[1, 3, "a", 8]), TypeError),
        ("input_shape", lambda: N(conv, input_shape=[1, 3, 8.5, 8]), TypeError),
        ("input_shape", lambda: N(conv, input_shape=[1, 3, -8, 8]), ValueError),
        ("input_shape", lambda: N(conv, input_shape=[8]), ValueError),
        ("kernel", lambda: N(conv, input_shape=[1, 3, 2, 2]), ValueError),
        ("weight_shape", lambda: N(conv, weight_shape="abc"), TypeError),
        ("weight_shape", lambda: N(conv, weight_shape=5), TypeError),
        ("weight_shape", lambda: N(conv, weight_shape=[8, 3, 3, "3"]), TypeError),
        ("weight_shape", lambda: N(conv, weight_shape=[8, 3, 3, 0]), ValueError),
        ("weight_shape", lambda: N(conv, weight_shape=[8, 3, 5, 5]), ValueError),
        ("weight", lambda: N(conv, weight_shape=[8, 3, 3, 3], weight=np.zeros((8, 3, 3, 3))), TypeError),
        ("weight", lambda: N(pool, weight_shape=[8, 3, 3, 3]), TypeError),
        ("weight", lambda: N(conv, weight="abc"), TypeError),
    ]


def test_from_onnx_node_error_kind_and_argument() -> None:
    for argument, call, error in node_cases():
        with pytest.raises(Exception) as caught:
            call()
        assert type(caught.value) is error, (argument, caught.value)
        assert argument in str(caught.value), (argument, caught.value)


def test_good_calls_still_pass() -> None:
    assert F("Conv", weight_shape=[8, 3, 3, 3], group=1).kernel_size == (3, 3)
    assert F("MaxPool", kernel_shape=[3], ceil_mode=1, storage_order=1).ceil_mode
    assert F("ConvTranspose", kernel_shape=[3], strides=[2], output_shape=[7], input_shape=(1, 1, 3)).transposed
    helper = pytest.importorskip("onnx").helper
    conv = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])
    spec = ConvSpec.from_onnx_node(conv, input_shape=np.array([1, 3, 8, 8]), weight=np.zeros((4, 3, 3, 3)))
    assert spec.filters == 4
