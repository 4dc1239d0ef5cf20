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

from . import callbacks, constraints, regularizers
from .functional import Model, SymbolicTensor
from .io import from_keras, from_torch, load_model, load_torch_state_dict, save_model
from .layers import (
    Activation,
    AveragePooling1D,
    AveragePooling2D,
    AveragePooling3D,
    BatchNormalization,
    Conv1D,
    Conv1DTranspose,
    Conv2D,
    Conv2DTranspose,
    Conv3D,
    Conv3DTranspose,
    Dense,
    DepthwiseConv1D,
    DepthwiseConv2D,
    Dropout,
    Flatten,
    Input,
    InputLayer,
    Layer,
    MaxPooling1D,
    MaxPooling2D,
    MaxPooling3D,
    SeparableConv1D,
    SeparableConv2D,
)
from .losses import (
    BinaryCrossentropy,
    CategoricalCrossentropy,
    MeanSquaredError,
    SparseCategoricalCrossentropy,
)
from .merging import Add, Average, Concatenate, Dot, Maximum, Minimum, Multiply, Subtract
from .models import History, Sequential, TrainingStopped
from .optimizers import SGD, Adam, RMSprop
from .reshaping import (
    Cropping1D,
    Cropping2D,
    Cropping3D,
    GlobalAveragePooling1D,
    GlobalAveragePooling2D,
    GlobalAveragePooling3D,
    GlobalMaxPooling1D,
    GlobalMaxPooling2D,
    GlobalMaxPooling3D,
    Permute,
    Reshape,
    UpSampling1D,
    UpSampling2D,
    UpSampling3D,
    ZeroPadding1D,
    ZeroPadding2D,
    ZeroPadding3D,
)

__all__ = [
    "Activation", "Adam", "Add", "Average", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "BatchNormalization", "BinaryCrossentropy", "CategoricalCrossentropy", "Concatenate",
    "Conv1D", "Conv1DTranspose", "Conv2D", "Conv2DTranspose", "Conv3D", "Conv3DTranspose",
    "Cropping1D", "Cropping2D", "Cropping3D", "Dense", "DepthwiseConv1D", "DepthwiseConv2D", "Dot",
    "Dropout", "Flatten", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "History", "Input", "InputLayer", "Layer", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "Maximum", "MeanSquaredError", "Minimum", "Model", "Multiply", "Permute", "RMSprop",
    "Reshape", "SGD", "SeparableConv1D", "SeparableConv2D", "Sequential",
    "SparseCategoricalCrossentropy", "Subtract", "SymbolicTensor", "TrainingStopped",
    "UpSampling1D", "UpSampling2D", "UpSampling3D", "ZeroPadding1D", "ZeroPadding2D",
    "ZeroPadding3D", "from_keras", "from_torch", "load_model", "load_torch_state_dict",
    "save_model", "callbacks", "constraints", "regularizers",
]
