"""The summary explains, in its output, where a receptive field differs from a framework variant.

Expected values are derived by hand from the published architectures or read
from the ONNX files' own attributes (rules: ``r += (K_eff - 1) j``,
``j *= S``, ``start -= pad_lo j``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from convarith.io.layers_file import layers_from_data
from convarith.summary import summarize


def bottleneck(first_stride: int, second_stride: int) -> dict:
    """A ResNet bottleneck in Keras layers, the stride on the 1x1 or on the 3x3."""
    return {"input": [56, 56, 8], "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": 1, "strides": first_stride, "name": "reduce"},
        {"type": "BatchNormalization"},
        {"type": "ReLU"},
        {"type": "Conv2D", "filters": 4, "kernel_size": 3, "strides": second_stride, "padding": "same",
         "name": "spatial"},
        {"type": "Conv2D", "filters": 8, "kernel_size": 1, "name": "expand"},
        {"type": "Conv2D", "filters": 8, "kernel_size": 1, "strides": 2, "name": "skip", "inputs": ["input"]},
        {"type": "Add", "inputs": ["expand", "skip"], "name": "sum"},
    ]}


def test_stride_on_the_1x1_names_the_other_variant() -> None:
    summary = summarize(layers_from_data(bottleneck(2, 1)))
    spatial = summary.row("spatial")
    # stride on the 1x1 (Caffe/Keras ResNet): 3x3 at jump 2 -> r = 1 + 2*2 = 5, start = -1*2 = -2
    assert spatial.field.size == (5, 5) and spatial.field.start == (-2, -2)
    # stride on the 3x3 (v1.5): 3x3 at jump 1 -> r = 3; Keras "same" at stride 2 on 56 pads
    # max(0, 27*2 + 3 - 56) = 1 pixel, (0, 1): start 0
    (note,) = spatial.notes
    assert "stride 2x2 sits on the 1x1 reduce" in note and "3x3 (start 0x0) instead of 5x5 (start -2x-2)" in note
    assert f"spatial: {note}" in summary.notes and f"note: spatial: {note}" in str(summary)
    assert not [w for w in summary.warnings if "misaligned" in w]  # both paths centre cell 0 on pixel 0


def test_stride_on_the_3x3_names_the_other_variant() -> None:
    summary = summarize(layers_from_data(bottleneck(1, 2)))
    (note,) = summary.row("spatial").notes
    assert "sits on this 3x3" in note and "5x5 (start -2x-2) instead of 3x3 (start 0x0)" in note


def test_no_note_without_a_residual_sum() -> None:
    data = bottleneck(2, 1)
    data["layers"] = data["layers"][:3]
    assert not summarize(layers_from_data(data)).notes


def zoo(name: str) -> Path:
    onnx = pytest.importorskip("onnx")
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not shipped with this onnx")
    return path


def test_zoo_resnet50_notes_the_stride_placement() -> None:
    from convarith.io import read_model

    summary = summarize(read_model(zoo("resnet50")))
    notes = [n for n in summary.notes if "sits on this 3x3" in n]
    assert len(notes) == 3  # the first unit of stages 3, 4 and 5
    # stage 3's strided 3x3: conv1 7/2 (r 7, j 2), pool 3/2 (r 11, j 4), stage 2's three 3x3s at j 4
    # (r 35); this 3x3 at j 4: 43; with the stride on the 1x1 it runs at j 8: 35 + 2*8 = 51
    assert "would be 51x51" in notes[0] and "instead of 43x43" in notes[0]


def test_zoo_inception_v2_misalignment_is_real_and_named() -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    from convarith.io import read_model

    path = zoo("inception_v2")
    model = onnx.load(str(path))
    nodes = {n.name: n for n in model.graph.node}
    summary = summarize(read_model(path))
    misaligned = [w for w in summary.warnings if "misaligned" in w]
    assert len(misaligned) == 2
    for warning, (conv, pool, branch, jump) in zip(misaligned, [("n132", "n160", "n124", 8),
                                                                ("n373", "n401", "n365", 16)]):
        conv_attrs = {a.name: helper.get_attribute_value(a) for a in nodes[conv].attribute}
        pool_attrs = {a.name: helper.get_attribute_value(a) for a in nodes[pool].attribute}
        # from the file: both windows 3 wide, stride 2; the conv pads 1 before, the pool 0 before
        assert conv_attrs["kernel_shape"] == pool_attrs["kernel_shape"] == [3, 3]
        assert conv_attrs["pads"][:2] == [1, 1] and pool_attrs["pads"][:2] == [0, 0]
        # so cell 0 of the pool is centred 1 cell of the branch point later: 1 * jump input pixels
        shift = conv_attrs["pads"][0] - pool_attrs["pads"][0]
        assert f"off by {shift * jump}x{shift * jump} input pixels" in warning
        assert f"the paths from {branch}" in warning
        assert f"{conv} (Conv 3x3 stride 2x2, pads 1+1)" in warning
        assert f"{pool} (MaxPool 3x3 stride 2x2, pads 0+1)" in warning
        assert f"= 1x1 cells of {branch}, whose cells are {jump}x{jump} input pixels apart" in warning
    # Inception's 1x1 -> strided 3x3 is not a residual branch: no ResNet note
    assert not summary.notes


def test_no_note_where_the_other_variant_does_not_fit() -> None:
    # 1x1 then a valid 3x3 stride 2 on 3x3: with the stride on the 1x1 the 3x3 would meet a 2x2 input
    summary = summarize(layers_from_data({"input": [3, 3, 8], "layers": [
        "Conv2D(4, 1)", "Conv2D(4, 3, strides=2)"]}))
    assert summary.rows[-1].output_shape == (None, 1, 1, 4) and not summary.notes
