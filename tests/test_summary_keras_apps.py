"""`convarith summary` on ``keras.applications`` models saved as ``.keras``, read without Keras.

Each application is built once with ``weights=None`` (nothing is downloaded)
at a small input size, saved with ``model.save``, and read back by
convarith's reader (``config.json`` only). The oracle is Keras itself: every
layer's ``output.shape`` and ``count_params()``, and the model's
``count_params()``. Receptive fields of ResNet50 are checked against the
hand derivation in ``test_receptive_published.py`` (Keras puts the stride on
the first 1x1 of a block, as Caffe: r = 483, jump 32, start -241).

Building these models is slow (seconds to tens of seconds each); under
``CI=true`` only MobileNetV2 and the small functional model run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

keras = pytest.importorskip("keras")

from convarith.io import read_model  # noqa: E402
from convarith.summary import summarize  # noqa: E402

APPS = {  # input sizes: the smallest each architecture accepts, or close to it
    "MobileNetV2": 96,
    "ResNet50": 64,
    "EfficientNetB0": 64,
    "DenseNet121": 64,
    "InceptionV3": 75,
    "VGG16": 32,
}
IN_CI = bool(os.environ.get("CI"))


def check_against_keras(model, path: Path):
    model.save(path)
    summary = summarize(read_model(path))
    mismatches = []
    for layer in model.layers:
        row = summary.row(layer.name)
        expected = (tuple(layer.output.shape), layer.count_params())
        if (row.output_shape, row.params) != expected:
            mismatches.append((layer.name, type(layer).__name__, row.output_shape, row.params, expected))
    assert not mismatches, mismatches[:5]
    assert summary.total_params == model.count_params()
    assert not [w for w in summary.warnings if "unknown" in w], summary.warnings
    return summary


@pytest.mark.parametrize("name", list(APPS))
def test_keras_application(name: str, tmp_path: Path) -> None:
    if IN_CI and name != "MobileNetV2":
        pytest.skip("slow to build; run without CI=true")
    size = APPS[name]
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    summary = check_against_keras(model, tmp_path / f"{name}.keras")
    assert summary.rows[-1].output_shape == (None, 1000)
    if name == "ResNet50":
        field = summary.row("conv5_block3_out").field
        assert (field.size, field.jump, field.start) == ((483, 483), (32, 32), (-241, -241))


def test_functional_branches_and_merges(tmp_path: Path) -> None:
    layers = keras.layers
    x = keras.Input((32, 32, 3))
    a = layers.Conv2D(8, 3, padding="same", name="a")(x)
    b = layers.Conv2D(8, 1, name="b")(x)
    added = layers.Add(name="add")([a, b])
    c = layers.Conv2D(4, 3, strides=2, padding="same", name="c")(added)
    d = layers.MaxPooling2D(2, name="d")(added)
    joined = layers.Concatenate(name="cat")([c, d])
    squeeze = layers.GlobalAveragePooling2D(keepdims=True, name="gap")(joined)
    gate = layers.Conv2D(12, 1, activation="sigmoid", name="gate")(squeeze)
    scaled = layers.Multiply(name="scale")([joined, gate])  # broadcast over positions
    flat = layers.Reshape((-1,), name="flatten")(scaled)
    out = layers.Dense(10, name="out")(flat)
    model = keras.Model(x, out)
    summary = check_against_keras(model, tmp_path / "branches.keras")
    assert summary.row("scale").field == summary.row("cat").field  # the gate does not move the field
    # add: a (3x3 same, start -1) with b (1x1): size 3, start -1.  c: 3x3/2 'same' on 32 pads (0, 1):
    # size 3 + 2 = 5, start -1.  d: 2x2/2 pool: size 3 + 1 = 4, start -1.  Union: size 5, start -1;
    # centres 1 (c) and 1/2 (d) differ, so the merge is flagged as misaligned
    cat = summary.row("cat")
    assert (cat.field.size, cat.field.jump, cat.field.start) == ((5, 5), (2, 2), (-1, -1))
    assert any("misaligned" in w for w in cat.warnings)


def test_legacy_h5_keras3_and_keras2_configs(tmp_path: Path, capsys) -> None:
    h5py = pytest.importorskip("h5py")
    import json

    from convarith.cli import main

    layers = keras.layers
    x = keras.Input((16, 16, 3), name="img")
    a = layers.Conv2D(4, 3, name="a")(x)
    b = layers.Conv2D(4, 3, name="b")(x)
    model = keras.Model(x, layers.Add(name="add")([a, b]))
    model.save(tmp_path / "k3.h5")
    summary = summarize(read_model(tmp_path / "k3.h5"))
    assert summary.row("add").output_shape == tuple(model.get_layer("add").output.shape)
    assert summary.total_params == model.count_params()
    # A Keras 2 (tf.keras) config: batch_input_shape and list-style inbound nodes
    keras2 = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "name": "input_1", "config": {"batch_input_shape": [None, 16, 16, 3]},
         "inbound_nodes": []},
        {"class_name": "Conv2D", "name": "c", "config": {"filters": 4, "kernel_size": [3, 3], "strides": [2, 2],
                                                          "padding": "same"}, "inbound_nodes": [[["input_1", 0, 0, {}]]]},
        {"class_name": "Flatten", "name": "f", "config": {}, "inbound_nodes": [[["c", 0, 0, {}]]]},
        {"class_name": "Dense", "name": "d", "config": {"units": 3}, "inbound_nodes": [[["f", 0, 0, {}]]]}]}}
    with h5py.File(tmp_path / "k2.h5", "w") as handle:
        handle.attrs["model_config"] = json.dumps(keras2)
    summary = summarize(read_model(tmp_path / "k2.h5"))
    assert [r.output_shape for r in summary.rows] == [(None, 16, 16, 3), (None, 8, 8, 4), (None, 256), (None, 3)]
    assert summary.total_params == (3 * 3 * 3 * 4 + 4) + (256 * 3 + 3)  # what Keras 2 reports for this model
    with h5py.File(tmp_path / "weights.h5", "w") as handle:
        handle["w"] = [1.0]
    assert main(["summary", str(tmp_path / "weights.h5")]) == 2
    assert "without a model_config" in capsys.readouterr().err
    (tmp_path / "junk.h5").write_bytes(b"not hdf5" * 10)
    assert main(["summary", str(tmp_path / "junk.h5")]) == 2
    assert "not a readable HDF5 file" in capsys.readouterr().err
