"""Train a ResNet-style network and a small U-Net (Functional API) with convarith and with
Keras 3 (JAX backend) on the digits data, from the same initial weights; compare.

Same data split, architecture (built by one function for both libraries), initial
weights (convarith's, copied into Keras layer by layer), optimizer (Adam, or plain
SGD with ``--optimizer sgd``), learning rate, batch size and epochs. Prints test
accuracy, training wall time and process CPU time of each.

Usage:
    KERAS_BACKEND=jax python scripts/compare_functional_keras.py [--epochs 5] [--size 16]
        [--optimizer adam|sgd] [--models resnet unet]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

from convarith import nn  # noqa: E402
from convarith.commands.train import load_digits_images  # noqa: E402


def resnet(lib, layers, size):
    inputs = lib.Input((size, size, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    for block in range(2):
        y = layers.Conv2D(16, 3, padding="same", activation="relu", name=f"b{block}_conv1")(x)
        y = layers.Conv2D(16, 3, padding="same", name=f"b{block}_conv2")(y)
        x = layers.Add(name=f"b{block}_add")([x, y])
        x = layers.Activation("relu", name=f"b{block}_relu")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(10, activation="softmax", name="head")(x)
    return lib.Model(inputs, outputs, name="resnet")


def unet(lib, layers, size):
    inputs = lib.Input((size, size, 1), name="image")
    d1 = layers.Conv2D(8, 3, padding="same", activation="relu", name="down1")(inputs)
    p1 = layers.MaxPooling2D(name="pool1")(d1)
    d2 = layers.Conv2D(16, 3, padding="same", activation="relu", name="down2")(p1)
    p2 = layers.MaxPooling2D(name="pool2")(d2)
    b = layers.Conv2D(32, 3, padding="same", activation="relu", name="bottom")(p2)
    u2 = layers.Conv2DTranspose(16, 2, strides=2, name="up2")(b)
    c2 = layers.Concatenate(name="skip2")([u2, d2])
    e2 = layers.Conv2D(16, 3, padding="same", activation="relu", name="dec2")(c2)
    u1 = layers.UpSampling2D(name="up1")(e2)
    c1 = layers.Concatenate(name="skip1")([u1, d1])
    e1 = layers.Conv2D(8, 3, padding="same", activation="relu", name="dec1")(c1)
    x = layers.GlobalAveragePooling2D(name="gap")(e1)
    outputs = layers.Dense(10, activation="softmax", name="head")(x)
    return lib.Model(inputs, outputs, name="unet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="default: 3e-3 for Adam, 0.05 for SGD")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--models", nargs="+", choices=("resnet", "unet"),
                        default=["resnet", "unet"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras

    if args.learning_rate is None:
        args.learning_rate = 3e-3 if args.optimizer == "adam" else 0.05
    optimizers = {"adam": (nn.Adam, keras.optimizers.Adam), "sgd": (nn.SGD, keras.optimizers.SGD)}
    ours_optimizer, theirs_optimizer = optimizers[args.optimizer]
    x_train, x_test, y_train, y_test = load_digits_images(args.size, args.seed)
    print(f"digits {args.size}x{args.size}: {len(x_train)} train / {len(x_test)} test; "
          f"epochs={args.epochs} batch={args.batch_size} {args.optimizer} lr={args.learning_rate}; "
          f"cores={os.cpu_count()}")
    for builder in (resnet if name == "resnet" else unet for name in args.models):
        ours = builder(nn, nn, args.size)
        theirs = builder(keras, keras.layers, args.size)
        for layer in ours.layers:
            if layer.variables:
                theirs.get_layer(layer.name).set_weights(layer.get_weights())
        ours.compile(ours_optimizer(args.learning_rate), "sparse_categorical_crossentropy",
                     metrics=["accuracy"])
        theirs.compile(theirs_optimizer(args.learning_rate),
                       loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        start, cpu = time.perf_counter(), time.process_time()
        ours.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=0,
                 shuffle=False)
        ours_time, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        theirs.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=0,
                   shuffle=False)
        theirs_time, theirs_cpu = time.perf_counter() - start, time.process_time() - cpu
        ours_acc = ours.evaluate(x_test, y_test)[1]
        theirs_acc = float(theirs.evaluate(x_test, y_test, verbose=0)[1])
        print(f"{builder.__name__:7s} params {ours.count_params():6d}  convarith test accuracy "
              f"{ours_acc:.4f} in {ours_time:6.1f}s (cpu {ours_cpu:5.1f}s)   keras (jax) "
              f"{theirs_acc:.4f} in {theirs_time:6.1f}s (cpu {theirs_cpu:5.1f}s)   "
              f"wall ratio {ours_time / theirs_time:.2f}x cpu ratio {ours_cpu / theirs_cpu:.2f}x")


if __name__ == "__main__":
    main()
