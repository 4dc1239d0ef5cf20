"""Resource limits: huge requests are refused before any memory is spent."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

import convarith
from convarith.limits import current_limits, limits


@pytest.mark.parametrize(
    "spec",
    [
        convarith.ConvSpec(3, padding=100_000),  # a 4·10^10-cell padded input
        convarith.ConvSpec(3, strides=40_000, padding="same", transposed=True),  # 1.6·10^11 out
        convarith.ConvSpec(1, dilation=1, padding=((0, 0), (0, 10**9))),
    ],
)
def test_engine_refuses_huge_outputs_up_front(spec) -> None:
    x = np.ones((1, 10, 10, 1), np.float32)
    kernel = np.ones((*spec.kernel_size, 1, 1), np.float32)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="max_output_values"):
            convarith.conv(x, kernel, spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_limit_is_configurable_and_scoped() -> None:
    x = np.ones((1, 40, 40, 1), np.float32)
    kernel = np.ones((3, 3, 1, 1), np.float32)
    spec = convarith.ConvSpec(3, padding="same")
    with limits(max_output_values=1000):
        with pytest.raises(ValueError, match="1,600 values"):
            convarith.conv(x, kernel, spec)
        seen = []
        thread = threading.Thread(target=lambda: seen.append(current_limits().max_output_values))
        thread.start()
        thread.join()
        assert seen == [2**28]  # another thread keeps the default
    assert convarith.conv(x, kernel, spec).shape == (1, 40, 40, 1)


@pytest.mark.parametrize("bad, error", [({"max_layers": 0}, ValueError), ({"max_layerz": 3}, TypeError),
                                        ({"max_layers": True}, ValueError)])
def test_bad_limits(bad, error) -> None:
    with pytest.raises(error, match="max_layer"):
        with limits(**bad):
            pass


def test_kernel_larger_than_input_is_refused() -> None:
    with pytest.raises(ValueError, match="kernel spans 9"):
        convarith.conv(np.ones((1, 5, 5, 1)), np.ones((9, 9, 1, 1)), convarith.ConvSpec(9))


def test_a_1000_layer_stack_is_refused_with_the_limit_named() -> None:
    from convarith.receptive import stack_fields

    layers = [convarith.ConvSpec(1).resolve((8, 8))] * 1000
    with pytest.raises(ValueError, match="1000 layers, over the limit max_layers=512"):
        stack_fields(layers)
    with limits(max_layers=1000):
        assert len(stack_fields(layers)) == 1000


def test_summary_cli_refuses_a_1000_layer_file(tmp_path, capsys) -> None:
    import json

    from convarith.cli import main

    path = tmp_path / "deep.json"
    path.write_text(json.dumps({"input": [28, 28, 1], "layers": ["Conv2D(1, 1)"] * 1000}))
    assert main(["summary", str(path), "--max-layers", "999"]) == 2
    assert "1,000 layers, over the limit max_model_layers=999" in capsys.readouterr().err
    path.write_text(json.dumps({"input": [28, 28, 1], "layers": ["Conv2D(1, 1)"] * 20_001}))
    assert main(["summary", str(path)]) == 2  # counted before any layer is built
    assert "max_model_layers=20,000" in capsys.readouterr().err
