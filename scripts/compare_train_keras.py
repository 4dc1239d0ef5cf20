"""Train the `convarith train` model with convarith and with Keras 3 (JAX backend); compare.

Same data split, same architecture, same initial weights (copied from the
convarith model), same optimizer (Adam), learning rate, batch size and
epochs. Prints test accuracy and training wall time of each, one after the
other in one process.

Usage:
    KERAS_BACKEND=jax python scripts/compare_train_keras.py [--epochs 8] [--padding same]
        [--strides 1] [--dilation 1] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

from convarith import nn  # noqa: E402
from convarith.commands.train import DEFAULTS, build_model, load_digits_images  # noqa: E402


def keras_model(keras, size, padding, strides, dilation, filters):
    return keras.Sequential([
        keras.Input(shape=(size, size, 1)),
        keras.layers.Conv2D(filters, 3, padding=padding, strides=strides, dilation_rate=dilation,
                            activation="relu"),
        keras.layers.Conv2D(filters, 3, padding=padding, strides=strides, dilation_rate=dilation,
                            activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("padding", "strides", "dilation", "epochs", "batch_size", "filters", "size",
                 "learning_rate", "seed"):
        default = DEFAULTS[name]
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--repeats", type=int, default=1, help="train each this many times")
    args = parser.parse_args()

    import keras

    data = load_digits_images(args.size, args.seed)
    x_train, x_test, y_train, y_test = data
    results: dict[str, list[tuple[float, float]]] = {"convarith": [], "keras (jax)": []}
    for _ in range(args.repeats):
        ours = build_model(args.size, args.padding, args.strides, args.dilation, args.filters,
                           args.seed)
        initial = ours.get_weights()
        ours.compile(nn.Adam(args.learning_rate), "sparse_categorical_crossentropy", ["accuracy"])
        start = time.perf_counter()
        ours.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
        seconds = time.perf_counter() - start
        results["convarith"].append((ours.evaluate(x_test, y_test)[1], seconds))

        theirs = keras_model(keras, args.size, args.padding, args.strides, args.dilation,
                             args.filters)
        theirs.set_weights(initial)
        theirs.compile(keras.optimizers.Adam(args.learning_rate),
                       loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        start = time.perf_counter()
        theirs.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=0)
        seconds = time.perf_counter() - start
        accuracy = theirs.evaluate(x_test, y_test, verbose=0)[1]
        results["keras (jax)"].append((float(accuracy), seconds))

    print(f"digits {args.size}x{args.size}: {len(x_train)} train / {len(x_test)} test; "
          f"padding={args.padding} strides={args.strides} dilation={args.dilation} "
          f"filters={args.filters} epochs={args.epochs} batch={args.batch_size} "
          f"Adam lr={args.learning_rate}; cores={os.cpu_count()}")
    for name, runs in results.items():
        accuracies = [a for a, _ in runs]
        times = [t for _, t in runs]
        print(f"{name:12s} test accuracy {statistics.median(accuracies):.4f}  "
              f"train wall {statistics.median(times):6.1f}s (median of {len(runs)}; "
              f"all: {', '.join(f'{t:.1f}' for t in times)})")
    ratio = statistics.median(t for _, t in results["convarith"]) / statistics.median(
        t for _, t in results["keras (jax)"])
    print(f"convarith / keras wall time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
