"""`convarith port`: the text it writes, safe parsing, what a target cannot say, the command.

The numbers themselves are checked by executing the snippets against the real
frameworks in ``test_port_oracle.py``; here: the worked example of the brief,
parsing (one constructor call, literals only, never evaluated), the cases a
target cannot express, and JAX sources executed in JAX.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from convarith import ConvSpec
from convarith.cli import main
from convarith.port import PortError, parse_layer, port, port_text


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keras_same_stride_2_to_torch_pads_explicitly() -> None:
    p = port_text("Conv2D(32, 3, strides=2, padding='same')", "keras", "torch", (28, 28, 1))
    # Keras 'same' on 28 with k=3, s=2: out 14, total pad (14-1)*2 + 3 - 28 = 1 -> (0, 1)
    assert "conv(F.pad(x, (0, 1, 0, 1)))" in p.code
    assert "padding=0" in p.code
    assert "w = np.transpose(kernel, (3, 2, 0, 1))" in p.code  # (kh, kw, in, out) -> (out, in, kh, kw)
    assert "(0, 1)" in p.summary and "F.pad" in p.summary
    assert p.resolved.output_size == (14, 14)


def test_odd_input_needs_no_explicit_pad() -> None:
    p = port_text("Conv2D(32, 3, strides=2, padding='same')", "keras", "torch", (27, 27, 1))
    assert "padding=(1, 1)" in p.code and "F.pad" not in p.code


def test_torch_padding_to_keras_uses_zero_padding_or_same() -> None:
    p = port_text("Conv2d(3, 8, 3, stride=1, padding=1)", "torch", "keras", (3, 28, 28))
    assert "padding='same'" in p.code and "ZeroPadding" not in p.code
    p = port_text("Conv2d(3, 8, 3, stride=2, padding=1)", "torch", "keras", (3, 28, 28))
    assert "ZeroPadding2D(((1, 1), (1, 1)))" in p.code and "padding='valid'" in p.code


def test_strides_with_dilation_into_keras_uses_ops_conv() -> None:
    p = port_text("Conv2d(3, 8, 3, stride=2, dilation=2)", "torch", "keras", (3, 32, 32))
    assert "keras.ops.conv(" in p.code and "dilation_rate=(2, 2)" in p.code
    assert "rejects strides > 1 with dilation_rate > 1" in p.summary


def test_keras_itself_rejects_strides_with_dilation() -> None:
    with pytest.raises(ValueError, match="cannot be combined with dilation_rate"):
        port_text("Conv2D(8, 3, strides=2, dilation_rate=2)", "keras", "torch", (16, 16, 1))


@pytest.mark.parametrize("text, source, to, shape, words", [
    ("ConvTranspose2d(4, 4, 3, stride=2, groups=2)", "torch", "keras", (4, 8, 8), "grouped transposed"),
    ("MaxPool2d(3, stride=1, dilation=2)", "torch", "keras", (1, 9, 9), "Keras pooling has no dilation"),
    ("max_pool(window_shape=(2,), strides=(1,), padding=((2, 2),))", "jax", "onnx", (6, 1),
     "ONNX pooling needs pads smaller than the kernel"),
])
def test_what_a_target_cannot_say(text, source, to, shape, words) -> None:
    with pytest.raises(PortError, match=words) as info:
        port_text(text, source, to, shape)
    message = str(info.value)
    assert "\n" not in message
    assert any(name in message for name in ("JAX", "split", "Pad")), message


@pytest.mark.parametrize("text, source, to, shape, expected", [
    ("AvgPool1d(3, stride=1, padding=1)", "torch", "keras", (1, 9), "keras.ops.pad(x, ((0, 0), (1, 1), (0, 0)))"),
    ("Conv2DTranspose(2, 1, strides=2, padding='same')", "keras", "onnx", (4, 4, 1), "output_padding=[1, 1]"),
    ("conv_transpose(kernel_size=(2,), strides=(1,), padding=((3, 0),), in_channels=1, filters=1)",
     "jax", "onnx", (6, 1), "helper.make_node('Pad', ['full', 'crop']"),
    ("conv_transpose(kernel_size=(2,), strides=(1,), padding=((3, 0),), in_channels=1, filters=1)",
     "jax", "torch", (6, 1), "F.pad(conv(x), (2, -1))"),
    ("Conv1d(1, 1, 3, padding=2, padding_mode='reflect')", "torch", "keras", (1, 9), "mode='reflect'"),
    ("Conv1d(1, 1, 3, padding=2, padding_mode='circular')", "torch", "jax", (1, 9), "mode='wrap'"),
])
def test_what_a_target_says_another_way(text, source, to, shape, expected) -> None:
    assert expected in port_text(text, source, to, shape).code


@pytest.mark.parametrize("text, message", [
    ("x = 1", "not a single constructor call"),
    ("Conv2D", "not a single constructor call"),
    ("Conv2D(32, 3); import os", "not a single constructor call"),
    ("Conv2D(32, 3)(x)", "not a single constructor call"),
    ("__import__('os').system('true')", "not a single constructor call"),
    ("Conv2D(32, kernel_size=int('3'))", "is not a literal"),
    ("Conv2D(*sizes)", "*args and **kwargs"),
    ("Conv2D(32, 3, filters=4)", "given twice"),
    ("Conv2D(1, 2, 3, 'same', None, 1, 1, None, True, 9)", "at most 9 positional"),
    ("Conv2D(32, 3", "not a single constructor call"),
])
def test_parsing_is_safe_and_clear(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*")) as info:
        parse_layer(text, "keras")
    assert "\n" not in str(info.value)


def test_parse_keeps_literals_and_prefixes() -> None:
    layer = parse_layer("keras.layers.Conv2D(32, (3, 5), padding='same', use_bias=False)", "keras")
    assert layer.name == "Conv2D"
    assert layer.kwargs == {"filters": 32, "kernel_size": (3, 5), "padding": "same", "use_bias": False}
    assert parse_layer("torch.nn.Conv2d(3, 8, 3)", "torch").kwargs["out_channels"] == 8
    with pytest.raises(ValueError, match="keyword arguments only"):
        parse_layer("Conv(3)", "onnx")


def test_port_api_errors() -> None:
    spec = ConvSpec(3)
    with pytest.raises(ValueError, match="to must be one of"):
        port(spec, to="tensorflow", input_shape=(8, 8))
    with pytest.raises(ValueError, match="input_shape is required"):
        port(spec, to="torch")
    with pytest.raises(TypeError, match="ConvSpec"):
        port("Conv2D", to="torch", input_shape=(8, 8))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- JAX sources


@pytest.mark.oracle
@pytest.mark.parametrize("text, shape", [
    ("conv_general_dilated(kernel_size=(3, 2), window_strides=(2, 1), padding='SAME', rhs_dilation=(1, 2), "
     "dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=2, in_channels=4, filters=6)", (7, 8, 4)),
    ("conv_general_dilated(kernel_size=(3, 3), window_strides=(2, 2), padding=((2, 0), (1, 1)), "
     "in_channels=2, filters=3)", (2, 9, 6)),
    ("conv_transpose(kernel_size=(3, 3), strides=(2, 2), padding='SAME', transpose_kernel=True, "
     "in_channels=2, filters=3)", (5, 6, 2)),
    ("conv_transpose(kernel_size=(4, 3), strides=(2, 3), padding=((1, 2), (0, 1)), in_channels=2, "
     "filters=3)", (5, 4, 2)),
])
@pytest.mark.parametrize("to", ["torch", "keras"])
def test_jax_sources_run_the_same(text: str, shape, to: str) -> None:
    jax = pytest.importorskip("jax")
    pytest.importorskip(to)
    from jax import lax

    parsed = parse_layer(text, "jax")
    spec, _ = ConvSpec.from_jax(parsed.name, **parsed.kwargs), None
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    kwargs = {k: v for k, v in parsed.kwargs.items() if k not in ("kernel_size", "in_channels", "filters")}
    cin, cout, groups = parsed.kwargs["in_channels"], parsed.kwargs["filters"], kwargs.get("feature_group_count", 1)
    ks = parsed.kwargs["kernel_size"]
    numbers = kwargs.get("dimension_numbers")
    if parsed.name == "conv_transpose":
        kernel_shape = (*ks, cout, cin) if kwargs.get("transpose_kernel") else (*ks, cin, cout)
        kernel = rng.standard_normal(kernel_shape).astype(np.float32)
        y = np.asarray(lax.conv_transpose(x, kernel, **kwargs))
    else:
        oihw = numbers is None
        kernel_shape = (cout, cin // groups, *ks) if oihw else (*ks, cin // groups, cout)
        kernel = rng.standard_normal(kernel_shape).astype(np.float32)
        y = np.asarray(lax.conv_general_dilated(x, kernel, **kwargs))
    ported = port_text(text, "jax", to, shape)
    namespace = {"kernel": kernel, "bias": None}
    exec(compile(ported.code, "<port>", "exec"), namespace)
    first = spec.data_format == "channels_first"
    target_first = to == "torch"
    xt = x if first == target_first else (np.moveaxis(x, 1, -1) if not target_first else np.moveaxis(x, -1, 1))
    if to == "torch":
        import torch

        out = namespace["forward"](torch.from_numpy(np.ascontiguousarray(xt))).detach().numpy()
    else:
        out = np.asarray(namespace["forward"](np.ascontiguousarray(xt)))
    if first != target_first:
        out = np.moveaxis(out, 1, -1) if target_first else np.moveaxis(out, -1, 1)
    assert out.shape == y.shape
    assert np.linalg.norm(out - y) <= 1e-5 * np.linalg.norm(y), ported.code
    del jax


# --------------------------------------------------------------------------- the command


def test_cli_port(capsys) -> None:
    code, out, err = run(capsys, "port", "--from", "keras", "Conv2D(32, 3, strides=2, padding='same')",
                         "--to", "torch", "--input", "28x28")
    assert code == 0 and err == ""
    assert "F.pad(x, (0, 1, 0, 1))" in out and "torch.nn.Conv2d(3, 32" in out
    assert "assumed 3 input channels" in out
    code, out, _ = run(capsys, "port", "--from", "torch", "Conv2d(1, 4, 3, padding=1)", "--to", "jax",
                       "--input", "1x8x8", "--json")
    data = json.loads(out)
    assert data["output_size"] == [8, 8] and "lax.conv_general_dilated" in data["code"]


@pytest.mark.parametrize("argv, message", [
    (["--from", "keras", "Conv2D(32, 3) + 1", "--to", "torch", "--input", "28"], "not a single constructor call"),
    (["--from", "keras", "Dense(3)", "--to", "torch", "--input", "28"], "not a layer this front door knows"),
    (["--from", "torch", "ConvTranspose2d(4, 4, 3, groups=2)", "--to", "keras", "--input", "4x8x8"],
     "grouped transposed"),
    (["--from", "keras", "Conv2D(4, 5)", "--to", "torch", "--input", "3x3"], "kernel spans 5 cells"),
])
def test_cli_port_errors_are_one_line(capsys, argv, message) -> None:
    code, out, err = run(capsys, "port", *argv)
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1
