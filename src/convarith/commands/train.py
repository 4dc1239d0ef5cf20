"""``convarith train``: the lesson's CNN, with your padding, strides and dilation, on digits.

Trains ``Conv2D -> Conv2D -> Flatten -> Dense(softmax)`` on scikit-learn's
8x8 handwritten digits (upsampled by nearest-neighbour pixel repetition, 16x16 by default),
with the lesson's three tweaks applied to both convolutions. Prints the
model summary (with receptive fields), the loss and accuracy of each epoch,
the test accuracy, and saves the model as a convarith ``.npz`` file.

Example: ``convarith train --padding valid --strides 2 --epochs 5 --out strided.npz``
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from .._atomic import check_writable

DEFAULTS = {
    "padding": "same",
    "strides": 1,
    "dilation": 1,
    "epochs": 8,
    "batch_size": 32,
    "filters": 16,
    "size": 16,
    "learning_rate": 2e-3,
    "seed": 0,
    "out": "digits_cnn.npz",
}


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the lesson's CNN on handwritten digits with your padding/strides/dilation",
        description="Train the lesson's CNN (two Conv2D layers, Flatten, Dense softmax) on "
        "scikit-learn's 8x8 digits, upsampled, with the given padding, strides and dilation on "
        "both convolutions. Needs scikit-learn (pip install 'convarith[train]').",
        epilog="examples: convarith train | convarith train --padding valid --strides 2 "
        "| convarith train --dilation 2 --epochs 5 --out dilated.npz --force",
    )
    parser.add_argument("--padding", default=DEFAULTS["padding"], choices=("valid", "same"),
                        help="Conv2D padding (default: %(default)s)")
    parser.add_argument("--strides", type=int, default=DEFAULTS["strides"],
                        help="Conv2D strides (default: %(default)s)")
    parser.add_argument("--dilation", type=int, default=DEFAULTS["dilation"],
                        help="Conv2D dilation_rate (default: %(default)s); Keras rejects "
                        "strides > 1 together with dilation > 1")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"],
                        help="passes over the training set (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"],
                        help="samples per step (default: %(default)s)")
    parser.add_argument("--filters", type=int, default=DEFAULTS["filters"],
                        help="filters of each Conv2D (default: %(default)s)")
    parser.add_argument("--size", type=int, default=DEFAULTS["size"],
                        help="image side after upsampling the 8x8 digits, 8 to 64, e.g. 28 like "
                        "MNIST (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"],
                        help="Adam's learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                        help="seeds the split, the initial weights and the shuffling")
    parser.add_argument("-o", "--out", "--output", dest="out", default=DEFAULTS["out"],
                        help="where to save the trained model (.npz; default: %(default)s)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars, one line per epoch")
    parser.set_defaults(func=run)


def load_digits_images(size: int, seed: int) -> tuple[np.ndarray, ...]:
    """(x_train, x_test, y_train, y_test): digits in [0, 1], ``size`` pixels, 80/20 stratified."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError(
            "convarith train needs scikit-learn for its digits: pip install 'convarith[train]'"
        ) from None
    if not 8 <= size <= 64:
        raise ValueError(f"--size must be between 8 and 64 pixels, got {size}")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    source = np.arange(size) * 8 // size  # nearest-neighbour: each pixel repeated
    images = images[:, source][:, :, source][..., None]
    return tuple(train_test_split(images, digits.target, test_size=0.2, random_state=seed,
                                  stratify=digits.target))


def build_model(size: int, padding: str, strides: int, dilation: int, filters: int,
                seed: int) -> Any:
    """The lesson-style CNN (its Keras spelling is in scripts/compare_train_keras.py)."""
    from .. import nn

    return nn.Sequential([
        nn.Input(shape=(size, size, 1)),
        nn.Conv2D(filters, 3, padding=padding, strides=strides, dilation_rate=dilation,
                  activation="relu"),
        nn.Conv2D(filters, 3, padding=padding, strides=strides, dilation_rate=dilation,
                  activation="relu"),
        nn.Flatten(),
        nn.Dense(10, activation="softmax"),
    ], name="lesson_cnn", seed=seed)


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"--{name} must be at least 1, got {value}")


def run(args: argparse.Namespace) -> int:
    from .. import nn

    for name in ("strides", "dilation", "epochs", "batch_size", "filters"):
        _positive(name.replace("_", "-"), getattr(args, name))
    if not args.learning_rate > 0:
        raise ValueError(f"--learning-rate must be positive, got {args.learning_rate}")
    if not 8 <= args.size <= 64:
        raise ValueError(f"--size must be between 8 and 64 pixels, got {args.size}")
    if not args.out.endswith(".npz"):
        raise ValueError(f"--out must end in .npz, got {args.out!r}")
    check_writable(args.out, force=args.force)  # fail now, not after training

    model = build_model(args.size, args.padding, args.strides, args.dilation, args.filters,
                        args.seed)
    model.compile(optimizer=nn.Adam(args.learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.summary()
    x_train, x_test, y_train, y_test = load_digits_images(args.size, args.seed)
    print(f"\ndigits: {len(x_train)} training and {len(x_test)} test images, "
          f"{args.size}x{args.size}\n")
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        verbose=2 if args.quiet else 1)
    seconds = time.perf_counter() - start
    if history.stopped:
        print(f"training stopped early: {history.stopped}")
    test_loss, test_accuracy = model.evaluate(x_test, y_test)
    print(f"\ntest accuracy: {test_accuracy:.4f}  (test loss {test_loss:.4f}, "
          f"training {seconds:.1f}s)")
    nn.save_model(model, args.out, overwrite=args.force)
    print(f"saved {args.out}  (load with convarith.nn.load_model)")
    return 1 if history.stopped else 0
