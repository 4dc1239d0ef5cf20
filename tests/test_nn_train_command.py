"""`convarith train`: runs, reports, saves atomically, refuses to overwrite, rejects bad switches."""

from __future__ import annotations

import numpy as np
import pytest

from convarith import nn
from convarith.cli import main

pytest.importorskip("sklearn")


def test_train_small_run_prints_summary_epochs_accuracy_and_saves(tmp_path, capsys):
    out = tmp_path / "digits.npz"
    code = main(["train", "--epochs", "2", "--size", "8", "--filters", "8", "--strides", "2",
                 "--learning-rate", "0.01", "--quiet", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "Receptive field" in text and "(None, 4, 4, 8)" in text  # 8 -> 4 -> 2 (same, stride 2)
    assert "Epoch 2/2" in text and "accuracy" in text
    accuracy = float(text.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.7  # 2 epochs of a tiny model: well above chance (0.1)
    model = nn.load_model(out)
    assert model.output_shape == (10,)
    assert model.layers[0].strides == (2, 2)


def test_train_refuses_to_overwrite_before_training(tmp_path, capsys):
    out = tmp_path / "digits.npz"
    out.write_bytes(b"precious")
    code = main(["train", "--epochs", "1", "--out", str(out)])
    assert code == 2
    captured = capsys.readouterr()
    assert "exists" in captured.err and "--force" in captured.err
    assert "Epoch" not in captured.out  # checked before any training
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--strides", "2", "--dilation", "2"], "dilation"),
        (["--epochs", "0"], "--epochs"),
        (["--out", "model.bin"], ".npz"),
        (["--size", "7"], "--size"),
        (["--size", "8", "--padding", "valid", "--dilation", "3"], "kernel spans 7"),
    ],
)
def test_train_bad_switches_exit_2_with_one_line(tmp_path, capsys, argv, message):
    if "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "m.npz")]
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "m.npz").exists()


def test_digits_are_upsampled_by_repetition():
    from convarith.commands.train import load_digits_images

    x_train, x_test, y_train, y_test = load_digits_images(16, 0)
    assert x_train.shape[1:] == (16, 16, 1) and len(x_train) + len(x_test) == 1797
    np.testing.assert_array_equal(x_train[:, ::2, ::2], x_train[:, 1::2, 1::2])
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    mnist_like = load_digits_images(28, 0)[0]
    assert mnist_like.shape[1:] == (28, 28, 1)
    # 28 / 8 = 3.5: source pixels repeat 3 or 4 times, in order
    np.testing.assert_array_equal(mnist_like[:, ::7, ::7], x_train[:, ::4, ::4])
