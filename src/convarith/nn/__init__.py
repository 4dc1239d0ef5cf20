"""Keras-compatible layers and models on the convarith engine, in NumPy only.

Write the lesson's Keras model with convarith, inspect it, run it, train it,
save it, and load real Keras or PyTorch weights into it.

Examples
--------
>>> import numpy as np
>>> from convarith import nn
>>> model = nn.Sequential([
...     nn.Input(shape=(16, 16, 1)),
...     nn.Conv2D(8, 3, padding="same", strides=2, activation="relu"),
...     nn.Flatten(),
...     nn.Dense(10, activation="softmax"),
... ])
>>> model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
>>> model.predict(np.zeros((2, 16, 16, 1))).shape
(2, 10)
"""

from .io import from_keras, from_torch, load_model, load_torch_state_dict, save_model
from .layers import (
    Activation,
    AveragePooling1D,
    AveragePooling2D,
    BatchNormalization,
    Conv1D,
    Conv2D,
    Conv2DTranspose,
    Conv3D,
    Dense,
    DepthwiseConv2D,
    Dropout,
    Flatten,
    GlobalAveragePooling2D,
    Input,
    InputLayer,
    Layer,
    MaxPooling1D,
    MaxPooling2D,
    SeparableConv2D,
    ZeroPadding2D,
)
from .losses import CategoricalCrossentropy, MeanSquaredError, SparseCategoricalCrossentropy
from .models import History, Sequential, TrainingStopped
from .optimizers import SGD, Adam, RMSprop

__all__ = [
    "Activation",
    "Adam",
    "RMSprop",
    "AveragePooling1D",
    "AveragePooling2D",
    "BatchNormalization",
    "CategoricalCrossentropy",
    "Conv1D",
    "Conv2D",
    "Conv2DTranspose",
    "Conv3D",
    "Dense",
    "DepthwiseConv2D",
    "Dropout",
    "Flatten",
    "GlobalAveragePooling2D",
    "History",
    "Input",
    "InputLayer",
    "Layer",
    "MaxPooling1D",
    "MaxPooling2D",
    "MeanSquaredError",
    "SGD",
    "SeparableConv2D",
    "Sequential",
    "SparseCategoricalCrossentropy",
    "TrainingStopped",
    "ZeroPadding2D",
    "from_keras",
    "from_torch",
    "load_model",
    "load_torch_state_dict",
    "save_model",
]
