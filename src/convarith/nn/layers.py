"""Keras-compatible layers: same names, arguments, defaults, weight shapes and order.

Every layer maps a batch of inputs to outputs (``forward``) and, after a
forward pass with ``keep=True``, an output gradient to an input gradient
(``backward``), leaving the weight gradients in ``layer.grads``. The
convolution and pooling layers build a :class:`~convarith.ConvSpec` through
Keras's front door (so Keras's rules apply, e.g. strides > 1 together with
dilation > 1 is rejected) and run it on :mod:`convarith.engine`.

Examples
--------
>>> import numpy as np
>>> layer = Conv2D(8, 3, strides=2, padding="same", activation="relu")
>>> layer(np.zeros((2, 28, 28, 1), np.float32)).shape
(2, 14, 14, 8)
>>> [w.shape for w in layer.get_weights()]
[(3, 3, 1, 8), (8,)]
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..spec import ConvSpec, ResolvedConv, per_axis
from . import activations as activations_module
from . import constraints as constraints_module
from . import initializers as initializers_module
from . import regularizers as regularizers_module

__all__ = [
    "Layer",
    "InputLayer",
    "Input",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "Flatten",
    "Dense",
    "Dropout",
    "BatchNormalization",
    "Activation",
    "LAYERS",
]

Shape = tuple[int, ...]

#: the size an open (``None``) axis is resolved at to find the other numbers
OPEN_STAND_IN = 4096



def bias_gradient(d_z: np.ndarray) -> np.ndarray:
    """The gradient of a bias added on the last axis: ``d_z`` summed over the others.

    A product with a vector of ones: one BLAS call, 10-15x faster than NumPy's
    ``sum`` over the leading axes of a training step's ``(32, 16, 16, 16)`` float32
    gradient, and no less accurate (NumPy's sum down an axis adds the rows one after
    the other).

    >>> bias_gradient(np.ones((2, 3, 4), np.float32))
    array([6., 6., 6., 6.], dtype=float32)
    """
    rows = d_z.reshape(-1, d_z.shape[-1])
    return np.ones(len(rows), d_z.dtype) @ rows


def _engine() -> Any:
    """The convolution engine (:mod:`convarith.engine`), imported when first needed."""
    from .. import engine

    return engine


#: A convolution layer whose training forward pass is below this many FLOPs (two per
#: multiply-add, the batch's) runs its engine calls, forward and backward, on one thread.
#: Back to back in a training step such calls gained nothing from a second thread on a
#: 2-core EPYC and took up to 2.7x the CPU time (``docs/training-speed.md``); the
#: engine's own thresholds are set for a call on its own.
ONE_THREAD_TRAINING_FLOPS = 1e8


def keras_spec(layer: str, **kwargs: Any) -> ConvSpec:
    """``ConvSpec.from_keras(layer, **kwargs)``: Keras's arguments and acceptance rules."""
    return ConvSpec.from_keras(layer, **kwargs)


def snake_case(name: str) -> str:
    """Keras's ``to_snake_case``: ``Conv2DTranspose`` -> ``conv2d_transpose``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_data_format(value: Any) -> str:
    """Keras's ``data_format`` argument checked: ``None`` is ``"channels_last"``.

    >>> check_data_format(None), check_data_format("channels_first")
    ('channels_last', 'channels_first')
    """
    if value is None:
        return "channels_last"
    if value not in ("channels_last", "channels_first"):
        raise ValueError(
            f"data_format must be 'channels_last', 'channels_first' or None, got {value!r}"
        )
    return str(value)


def format_shape(shape: Sequence[Any]) -> str:
    """A shape as Keras prints it.

    >>> format_shape((None, 28)), format_shape((3,))
    ('(None, 28)', '(3,)')
    """
    return "(" + ", ".join("None" if v is None else str(v) for v in shape) + (
        ",)" if len(shape) == 1 else ")")


def _dtype_name(dtype: Any) -> Any:
    """``"float32"`` from a name or Keras's DTypePolicy config (``{"config": {"name": ...}}``)."""
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    return dtype


def _sample_shape(shape: Sequence[Any]) -> Shape:
    """A sample shape of ints and ``None`` (open sizes)."""
    return tuple(None if v is None else int(v) for v in shape)  # type: ignore[misc]


#: Keras arguments convarith.nn does not implement, refused by name.
UNSUPPORTED_ARGUMENTS = ("lora_rank", "lora_alpha", "quantization_config")


def _refuse_unknown(layer: str, unknown: dict[str, Any]) -> None:
    """One clear error naming the Keras arguments this layer does not implement."""
    if not unknown:
        return
    names = sorted(unknown)
    keras_only = [n for n in names if n in UNSUPPORTED_ARGUMENTS and unknown[n] not in (None, 0)]
    other = [n for n in names if n not in UNSUPPORTED_ARGUMENTS]
    if keras_only and not other:
        raise ValueError(
            f"{layer}: {', '.join(f'{n}={unknown[n]!r}' for n in keras_only)} is a Keras "
            "feature convarith.nn does not implement; leave it out"
        )
    if other:
        raise ValueError(
            f"{layer}: unknown argument(s) {', '.join(other)}; it takes the arguments of "
            f"keras.layers.{layer}"
        )


class Layer:
    """Base class of all layers.

    Parameters
    ----------
    name
        Unique within a model; the snake-case class name by default.
    trainable
        Whether ``fit`` updates the layer's trainable weights.
    dtype
        ``"float32"`` (Keras's default) or ``"float64"``.
    input_shape
        Shape of one sample; lets a :class:`~convarith.nn.Sequential` build
        when this is its first layer.
    """

    #: number of axes of one sample the layer accepts (None: any)
    input_ndim: int | None = None

    def __init__(self, *, name: str | None = None, trainable: bool = True,
                 dtype: Any = None, input_shape: Sequence[int] | None = None,
                 activity_regularizer: Any = None, **unknown: Any) -> None:
        _refuse_unknown(type(self).__name__, unknown)
        dtype = _dtype_name(dtype)
        self.activity_regularizer = regularizers_module.get(activity_regularizer)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name or snake_case(type(self).__name__)
        self._auto_name = name is None
        if not isinstance(trainable, bool):
            raise TypeError(f"trainable must be True or False, got {trainable!r}")
        self.trainable = trainable
        if dtype not in (None, "float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = np.dtype(dtype or "float32")
        self.input_shape_arg: Shape | None = None
        if input_shape is not None:
            self.input_shape_arg = tuple(
                None if v is None else _positive_int(f"input_shape[{i}]", v)
                for i, v in enumerate(input_shape)
            )
        self.variables: dict[str, np.ndarray] = {}
        self.trainable_names: list[str] = []
        self.grads: dict[str, np.ndarray] = {}
        self.built = False
        self.input_shape: Shape | None = None
        self.output_shape: Shape | None = None
        self._cache: Any = None

    # ------------------------------------------------------------------ building

    def build(self, input_shape: Sequence[int], rng: np.random.Generator | None = None) -> None:
        """Create the weights for samples of ``input_shape`` (no batch axis; ``None`` = any size)."""
        shape = _sample_shape(input_shape)
        if self.input_ndim is not None and len(shape) != self.input_ndim:
            raise ValueError(
                f"layer {self.name!r} ({type(self).__name__}) expects samples with "
                f"{self.input_ndim} axes, received samples of shape {format_shape(shape)} "
                f"(batch shape {format_shape((None, *shape))})"
            )
        try:
            self._build(shape, rng if rng is not None else np.random.default_rng(0))
            output_shape = self.compute_output_shape(shape)
        except ValueError as error:
            if str(error).startswith("layer "):
                raise
            raise ValueError(
                f"layer {self.name!r} ({type(self).__name__}) on input shape "
                f"{format_shape((None, *shape))}: {error}"
            ) from None
        self.input_shape = shape
        self.output_shape = output_shape
        self.built = True

    def _build(self, input_shape: Shape, rng: np.random.Generator) -> None:
        """Subclasses create their weights here."""

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def add_weight(self, name: str, shape: Shape, initializer: Any, rng: np.random.Generator,
                   trainable: bool = True) -> np.ndarray:
        value = initializers_module.get(initializer)(shape, rng).astype(self.dtype)
        self.variables[name] = value
        if trainable:
            self.trainable_names.append(name)
        return value

    # ------------------------------------------------------------------ running

    def __call__(self, x: Any, training: bool = False) -> Any:
        """Outputs for the batch ``x``; on a symbolic tensor (from :func:`Input`), a new
        symbolic tensor for the Functional API (``Model(inputs, outputs)``)."""
        from .functional import call_symbolic, is_symbolic

        if is_symbolic(x):
            return call_symbolic(self, x)
        x = np.asarray(x, dtype=self.dtype)
        if not self.built:
            self.build(x.shape[1:])
        self.check_input(x.shape[1:])
        return self.forward(x, training=training)

    def _weight_axes(self, ndim: int) -> tuple[int, ...]:
        """The sample axes the weights depend on (the rest may change from call to call)."""
        return (ndim - 1,) if self.variables else ()

    def check_input(self, shape: Shape) -> None:
        """Raise if samples of ``shape`` do not fit the built layer.

        The number of axes must match, and so must the sizes the weights
        depend on (the channels); other sizes may differ from call to call.
        """
        if self.input_shape is None:
            return
        expected = self.input_shape
        fixed = self._weight_axes(len(expected))
        if len(shape) != len(expected) or any(
            expected[a] is not None and shape[a] != expected[a] for a in fixed
        ):
            raise ValueError(
                f"input of layer {self.name!r} ({type(self).__name__}) is incompatible: "
                f"expected shape {format_shape((None, *self.input_shape))}, received "
                f"{format_shape((None, *shape))}"
            )

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        """Outputs for the batch ``x``; ``keep`` stores what ``backward`` needs."""
        raise NotImplementedError

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        """Input gradient from output gradient (after ``forward(..., keep=True)``).

        Weight gradients go to ``self.grads``.
        """
        raise NotImplementedError

    def backward_weights(self, d_out: np.ndarray) -> None:
        """Only the weight gradients (into ``self.grads``), for a layer whose input
        gradient nothing reads (a model's first layer in training); layers that can
        skip computing the input gradient override this."""
        self.backward(d_out)

    def _kept(self) -> Any:
        if self._cache is None:
            raise RuntimeError(
                f"layer {self.name!r}: backward() needs a forward(..., keep=True) first"
            )
        cache, self._cache = self._cache, None
        return cache

    # ------------------------------------------------------------------ weights

    @property
    def weights(self) -> list[np.ndarray]:
        return list(self.variables.values())

    @property
    def trainable_weights(self) -> list[np.ndarray]:
        return [self.variables[n] for n in self.trainable_names] if self.trainable else []

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the weights, in Keras's order."""
        return [w.copy() for w in self.variables.values()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replace the weights (same count, shapes as :meth:`get_weights`)."""
        if not self.built:
            raise ValueError(
                f"layer {self.name!r} is not built yet: call it on data or give input_shape first"
            )
        names = list(self.variables)
        weights = list(weights)
        if len(weights) != len(names):
            raise ValueError(
                f"layer {self.name!r} ({type(self).__name__}) has {len(names)} weights "
                f"({', '.join(names) or 'none'}), got {len(weights)}"
            )
        for name, value in zip(names, weights):
            array = np.asarray(value)
            if array.shape != self.variables[name].shape:
                raise ValueError(
                    f"layer {self.name!r} weight {name!r} has shape "
                    f"{self.variables[name].shape}, got {array.shape}"
                )
            self.variables[name][...] = array

    def count_params(self) -> int:
        return int(sum(w.size for w in self.variables.values()))

    def get_config(self) -> dict[str, Any]:
        """The layer's arguments with Keras's keys and values (``from_config`` rebuilds it)."""
        return {"name": self.name, "trainable": self.trainable,
                "dtype": {"module": "keras", "class_name": "DTypePolicy",
                          "config": {"name": str(self.dtype)}, "registered_name": None},
                **self._config_items()}

    def _config_items(self) -> dict[str, Any]:
        """The layer's own arguments, in Keras's order (subclasses)."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        """The layer ``get_config()`` describes (fresh weights)."""
        return cls(**config)

    def _penalised(self) -> dict[str, Any]:
        """Weight name -> regularizer (or None) whose penalty the loss counts."""
        return {}

    def _constrained(self) -> dict[str, Any]:
        """Weight name -> constraint (or None) applied after each update."""
        return {}

    def regularization_loss(self) -> float:
        """The penalties of the layer's weights (not the activity penalty)."""
        return sum(
            (reg(self.variables[name]) for name, reg in self._penalised().items()
             if reg is not None and name in self.variables), 0.0)

    def add_regularization_gradients(self) -> None:
        """Add the weight penalties' gradients to ``self.grads``."""
        for name, reg in self._penalised().items():
            if reg is not None and name in self.grads:
                self.grads[name] = self.grads[name] + reg.gradient(self.variables[name])

    def apply_constraints(self) -> None:
        """Replace each constrained weight by its constrained value (after an update)."""
        for name, constraint in self._constrained().items():
            if constraint is not None and name in self.variables:
                self.variables[name][...] = constraint(self.variables[name])

    # ------------------------------------------------------------------ geometry

    def resolved(self) -> ResolvedConv | None:
        """The resolved spec of a spatial layer, for receptive-field bookkeeping."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"


class InputLayer(Layer):
    """Declares the shape of one sample (Keras's ``Input(shape=...)``)."""

    def __init__(self, shape: Sequence[int] | None = None, *, batch_shape: Sequence[Any] | None = None,
                 name: str | None = None, dtype: Any = None, sparse: bool = False,
                 ragged: bool = False, optional: bool = False, **kwargs: Any) -> None:
        kwargs.pop("batch_size", None)
        for flag, value in (("sparse", sparse), ("ragged", ragged), ("optional", optional)):
            if value:
                raise ValueError(f"Input: {flag}=True is a Keras feature convarith.nn does not "
                                 "implement; leave it out")
        _refuse_unknown("InputLayer", kwargs)
        if shape is None and batch_shape is not None:
            shape = tuple(batch_shape)[1:]
        if shape is None:
            raise ValueError("InputLayer needs shape=(...) (one sample, no batch axis)")
        if isinstance(shape, numbers.Integral):
            shape = (int(shape),)
        super().__init__(name=name or "input_layer", dtype=dtype, input_shape=tuple(shape))
        self.shape = self.input_shape_arg

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        return x

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        return d_out

    def get_config(self) -> dict[str, Any]:
        return {"batch_shape": (None, *(self.shape or ())), "dtype": str(self.dtype),
                "sparse": False, "ragged": False, "name": self.name, "optional": False}


def Input(shape: Sequence[int] | int, name: str | None = None, dtype: str | None = None) -> InputLayer:
    """The start of a model: ``Sequential([Input(shape=(28, 28, 1)), ...])``.

    >>> Input(shape=(28, 28, 1)).shape
    (28, 28, 1)
    """
    return InputLayer(shape=shape if not isinstance(shape, int) else (shape,), name=name, dtype=dtype)


# --------------------------------------------------------------------------- convolutions


class SpatialLayer(Layer):
    """Shared channels-first handling: the engine always runs channels-last."""

    rank = 2
    data_format = "channels_last"

    @property
    def input_ndim(self) -> int:  # type: ignore[override]
        return self.rank + 1

    def _to_last(self, x: np.ndarray) -> np.ndarray:
        return np.moveaxis(x, 1, -1) if self.data_format == "channels_first" else x

    def _from_last(self, y: np.ndarray) -> np.ndarray:
        return np.moveaxis(y, -1, 1) if self.data_format == "channels_first" else y

    def _last_shape(self, shape: Shape) -> Shape:
        return (*shape[1:], shape[0]) if self.data_format == "channels_first" else shape

    def _from_last_shape(self, shape: Shape) -> Shape:
        return (shape[-1], *shape[:-1]) if self.data_format == "channels_first" else shape

    def _weight_axes(self, ndim: int) -> tuple[int, ...]:
        if not self.variables:
            return ()
        return (0,) if self.data_format == "channels_first" else (ndim - 1,)

    def _resolve_open(self, spec: ConvSpec, last_shape: Shape) -> tuple[ResolvedConv, Shape]:
        """``spec`` resolved on a channels-last sample shape whose sizes may be ``None``.

        An open (``None``) axis is resolved at a stand-in size (each axis is
        independent of the others) and its output size is reported as ``None``.
        """
        spatial = last_shape[:-1]
        stand_in = tuple(OPEN_STAND_IN if v is None else v for v in spatial)
        resolved = spec.resolve((*stand_in, last_shape[-1]))
        out = tuple(None if v is None else o for v, o in zip(spatial, resolved.output_size))
        return resolved, out

    def resolved(self) -> ResolvedConv | None:
        spec = getattr(self, "spec", None)
        if spec is None or self.input_shape is None:
            return None
        return self._resolve_open(spec, self._last_shape(self.input_shape))[0]


class _Conv(SpatialLayer):
    """Conv1D/2D/3D (and the base of the other convolution layers)."""

    keras_name = "Conv2D"

    def __init__(self, filters: int, kernel_size: int | Sequence[int], strides: int | Sequence[int] = 1,
                 padding: str = "valid", data_format: str | None = None,
                 dilation_rate: int | Sequence[int] = 1, groups: int = 1,
                 activation: str | None = None, use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None,
                 activity_regularizer: Any = None, kernel_constraint: Any = None,
                 bias_constraint: Any = None, **kwargs: Any) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.filters = _positive_int("filters", filters)
        self.kernel_size = per_axis("kernel_size", kernel_size, self.rank)
        self.strides = per_axis("strides", strides, self.rank)
        self.dilation_rate = per_axis("dilation_rate", dilation_rate, self.rank)
        self.padding = padding.lower() if isinstance(padding, str) else padding
        self.data_format = check_data_format(data_format)
        self.groups = _positive_int("groups", groups)
        self.activation = activations_module.get(activation)
        if not isinstance(use_bias, bool):
            raise TypeError(f"use_bias must be True or False, got {use_bias!r}")
        self.use_bias = use_bias
        self.kernel_initializer = initializers_module.get(kernel_initializer)
        self.bias_initializer = initializers_module.get(bias_initializer)
        self.kernel_regularizer = regularizers_module.get(kernel_regularizer)
        self.bias_regularizer = regularizers_module.get(bias_regularizer)
        self.kernel_constraint = constraints_module.get(kernel_constraint)
        self.bias_constraint = constraints_module.get(bias_constraint)
        self.spec = self._make_spec()

    def _make_spec(self) -> ConvSpec:
        return keras_spec(
            self.keras_name, filters=self.filters, kernel_size=self.kernel_size,
            strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate,
            groups=self.groups,
        )

    def _kernel_shape(self, channels: int) -> Shape:
        if channels % self.groups:
            raise ValueError(
                f"layer {self.name!r}: the input's {channels} channels must be divisible by "
                f"groups={self.groups}"
            )
        return (*self.kernel_size, channels // self.groups, self.filters)

    def _build(self, input_shape: Shape, rng: np.random.Generator) -> None:
        channels = self._last_shape(input_shape)[-1]
        self.add_weight("kernel", self._kernel_shape(channels), self.kernel_initializer, rng)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer, rng)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        last = self._last_shape(input_shape)
        _, size = self._resolve_open(self.spec, last)
        return self._from_last_shape((*size, self._out_channels(last[-1])))

    def _out_channels(self, channels: int) -> int:
        return self.filters

    def _engine_kernel(self) -> np.ndarray:
        return self.variables["kernel"]

    def training_flops(self, batch: int) -> float | None:
        """Twice the multiply-adds of this layer's forward pass on ``batch`` samples (an
        upper bound for a transposed convolution, whose strides skip taps); ``None`` for
        an open output size.

        >>> layer = Conv2D(16, 3, padding="same")
        >>> layer.build((16, 16, 16))
        >>> layer.training_flops(32) == 2 * 32 * 16 * 16 * 16 * 3 * 3 * 16
        True
        """
        if self.output_shape is None or None in self.output_shape:
            return None
        # the kernel's every axis but the last: the taps and the input channels a group reads
        taps = math.prod(self._engine_kernel().shape[:-1])
        return 2.0 * batch * math.prod(self.output_shape) * taps

    def _training_threads(self, batch: int) -> contextlib.AbstractContextManager[Any]:
        """The engine's threads for a training step's calls on ``batch`` samples: one
        below :data:`ONE_THREAD_TRAINING_FLOPS`, else the engine's own choice."""
        flops = self.training_flops(batch)
        if flops is not None and flops < ONE_THREAD_TRAINING_FLOPS:
            return _engine().thread_limit(1)
        return contextlib.nullcontext()

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        if not keep:
            return self._forward(x)
        with self._training_threads(len(x)):
            return self._forward(x, keep=True)

    def _forward(self, x: np.ndarray, keep: bool = False) -> np.ndarray:
        x_last = self._to_last(x)
        bias = self.variables.get("bias")
        kernel = self._engine_kernel()
        if x_last.dtype != kernel.dtype or kernel.dtype not in (np.float32, np.float64):
            # (float16 is computed in float32 and the bias added before rounding)
            z = _engine().conv(x_last, kernel, self.spec, bias)
            y = self.activation.forward(z) if np.may_share_memory(z, x_last) else \
                self.activation.overwrite(z)
        else:
            # the engine's output is a new array of the kernel's dtype: the bias and the
            # activation go into it in one pass (activations.Activation.overwrite_with_bias)
            z = _engine().conv(x_last, kernel, self.spec)
            y = self.activation.forward(z if bias is None else z + bias) \
                if np.may_share_memory(z, x_last) else \
                self.activation.overwrite_with_bias(z, bias)
        if keep:
            self._cache = (x_last, y)
        return self._from_last(y)

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        d_x = self._backward(d_out, need_input_grad=True)
        assert d_x is not None
        return self._from_last(d_x)

    def backward_weights(self, d_out: np.ndarray) -> None:
        self._backward(d_out, need_input_grad=False)

    def _backward(self, d_out: np.ndarray, need_input_grad: bool) -> np.ndarray | None:
        with self._training_threads(len(d_out)):
            return self._backward_gradients(d_out, need_input_grad)

    def _backward_gradients(self, d_out: np.ndarray, need_input_grad: bool) -> np.ndarray | None:
        x_last, y = self._kept()
        # every activation's gradient reads y alone (activations.Activation.overwrite)
        d_z, d_bias = self.activation.backward_with_bias(self._to_last(d_out), y)
        # a small layer's gradients run on one thread each (engine.core.SMALL_BACKWARD_FLOPS)
        d_x, d_kernel, _ = _engine().conv_vjp(
            x_last, self._engine_kernel(), self.spec, d_z, need_input_grad=need_input_grad,
        )
        assert d_kernel is not None
        self.grads = {"kernel": d_kernel.reshape(self.variables["kernel"].shape)}
        if self.use_bias:
            self.grads["bias"] = d_bias
        return d_x

    def _penalised(self) -> dict[str, Any]:
        return {"kernel": self.kernel_regularizer, "bias": self.bias_regularizer}

    def _constrained(self) -> dict[str, Any]:
        return {"kernel": self.kernel_constraint, "bias": self.bias_constraint}

    def _config_items(self) -> dict[str, Any]:
        from .initializers import serialize as init_serialize

        return {
            "filters": self.filters,
            "kernel_size": tuple(self.kernel_size),
            "strides": tuple(self.strides),
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": tuple(self.dilation_rate),
            "groups": self.groups,
            "activation": self.activation.name,
            "use_bias": self.use_bias,
            "kernel_initializer": init_serialize(self.kernel_initializer),
            "bias_initializer": init_serialize(self.bias_initializer),
            "kernel_regularizer": regularizers_module.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers_module.serialize(self.bias_regularizer),
            "activity_regularizer": regularizers_module.serialize(self.activity_regularizer),
            "kernel_constraint": constraints_module.serialize(self.kernel_constraint),
            "bias_constraint": constraints_module.serialize(self.bias_constraint),
        }


class Conv1D(_Conv):
    """1-D convolution on ``(batch, steps, channels)``; ``padding`` may be ``"causal"``.

    >>> Conv1D(4, 3, padding="causal", dilation_rate=2)(np.ones((1, 10, 2))).shape
    (1, 10, 4)
    """

    rank = 1
    keras_name = "Conv1D"


class Conv2D(_Conv):
    """2-D convolution on ``(batch, rows, cols, channels)``, as ``keras.layers.Conv2D``.

    >>> Conv2D(2, 3, dilation_rate=2)(np.ones((1, 7, 7, 1))).shape
    (1, 3, 3, 2)
    """

    rank = 2
    keras_name = "Conv2D"


class Conv3D(_Conv):
    """3-D convolution on ``(batch, depth, rows, cols, channels)``.

    >>> Conv3D(2, 3)(np.ones((1, 4, 5, 6, 1))).shape
    (1, 2, 3, 4, 2)
    """

    rank = 3
    keras_name = "Conv3D"


class _ConvTranspose(_Conv):
    """Transposed convolution; kernel ``(k..., filters, in_channels)`` as in Keras."""

    def __init__(self, filters: int, kernel_size: int | Sequence[int], strides: int | Sequence[int] = 1,
                 padding: str = "valid", output_padding: int | Sequence[int] | None = None,
                 data_format: str | None = None, dilation_rate: int | Sequence[int] = 1,
                 activation: str | None = None, use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 **kwargs: Any) -> None:
        self.output_padding = (
            None if output_padding is None
            else per_axis("output_padding", output_padding, self.rank, 0)
        )
        super().__init__(filters, kernel_size, strides, padding, data_format, dilation_rate, 1,
                         activation, use_bias, kernel_initializer, bias_initializer, **kwargs)

    def _make_spec(self) -> ConvSpec:
        return keras_spec(
            self.keras_name, filters=self.filters, kernel_size=self.kernel_size,
            strides=self.strides, padding=self.padding, output_padding=self.output_padding,
            dilation_rate=self.dilation_rate,
        )

    def _kernel_shape(self, channels: int) -> Shape:
        return (*self.kernel_size, self.filters, channels)

    def _config_items(self) -> dict[str, Any]:
        items = super()._config_items()
        del items["groups"]
        items["output_padding"] = (
            None if self.output_padding is None else tuple(self.output_padding)
        )
        return _reorder(items, "padding", "output_padding")


class Conv1DTranspose(_ConvTranspose):
    """Transposed 1-D convolution, as ``keras.layers.Conv1DTranspose``.

    >>> Conv1DTranspose(3, 3, strides=2)(np.ones((1, 4, 2))).shape
    (1, 9, 3)
    """

    rank, keras_name = 1, "Conv1DTranspose"


class Conv2DTranspose(_ConvTranspose):
    """Transposed 2-D convolution; kernel ``(kh, kw, filters, in_channels)`` as in Keras.

    >>> Conv2DTranspose(3, 3, strides=2, padding="same")(np.ones((1, 4, 4, 2))).shape
    (1, 8, 8, 3)
    """

    rank, keras_name = 2, "Conv2DTranspose"


class Conv3DTranspose(_ConvTranspose):
    """Transposed 3-D convolution, as ``keras.layers.Conv3DTranspose``.

    >>> Conv3DTranspose(2, 2, strides=2)(np.ones((1, 2, 3, 4, 1))).shape
    (1, 4, 6, 8, 2)
    """

    rank, keras_name = 3, "Conv3DTranspose"


class _DepthwiseConv(_Conv):
    """One filter (or ``depth_multiplier``) per input channel; kernel ``(k..., in, mult)``."""

    kernel_weight = "kernel"

    def __init__(self, kernel_size: int | Sequence[int], strides: int | Sequence[int] = 1,
                 padding: str = "valid", depth_multiplier: int = 1, data_format: str | None = None,
                 dilation_rate: int | Sequence[int] = 1, activation: str | None = None,
                 use_bias: bool = True, depthwise_initializer: Any = "glorot_uniform",
                 bias_initializer: Any = "zeros", depthwise_regularizer: Any = None,
                 depthwise_constraint: Any = None, **kwargs: Any) -> None:
        self.depth_multiplier = _positive_int("depth_multiplier", depth_multiplier)
        super().__init__(1, kernel_size, strides, padding, data_format, dilation_rate, 1,
                         activation, use_bias, depthwise_initializer, bias_initializer,
                         kernel_regularizer=depthwise_regularizer,
                         kernel_constraint=depthwise_constraint, **kwargs)

    def _make_spec(self) -> ConvSpec:
        return keras_spec(
            self.keras_name, kernel_size=self.kernel_size, strides=self.strides,
            padding=self.padding, depth_multiplier=self.depth_multiplier,
            dilation_rate=self.dilation_rate,
        )

    def _build(self, input_shape: Shape, rng: np.random.Generator) -> None:
        channels = self._last_shape(input_shape)[-1]
        if channels is None:
            raise ValueError("the channels axis must have a known size")
        self.filters = channels * self.depth_multiplier
        # grouped layout for the engine: one group per input channel
        self.spec = self.spec.replace(groups=channels, filters=None, depth_multiplier=None)
        self.add_weight("kernel", (*self.kernel_size, channels, self.depth_multiplier),
                        self.kernel_initializer, rng)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer, rng)

    def _out_channels(self, channels: int) -> int:
        return channels * self.depth_multiplier

    def _engine_kernel(self) -> np.ndarray:
        kernel = self.variables[self.kernel_weight]
        return kernel.reshape(*kernel.shape[:-2], 1, kernel.shape[-2] * kernel.shape[-1])

    def _config_items(self) -> dict[str, Any]:
        items = super()._config_items()
        for key in ("filters", "groups"):
            del items[key]
        items = _reorder(items, "padding", "depth_multiplier", self.depth_multiplier)
        items = _rename(items, {"kernel_initializer": "depthwise_initializer",
                                "kernel_regularizer": "depthwise_regularizer",
                                "kernel_constraint": "depthwise_constraint"})
        order = ["kernel_size", "strides", "padding", "depth_multiplier", "data_format",
                 "dilation_rate", "activation", "use_bias", "depthwise_initializer",
                 "bias_initializer", "depthwise_regularizer", "bias_regularizer",
                 "activity_regularizer", "depthwise_constraint", "bias_constraint"]
        return {key: items[key] for key in order}


class DepthwiseConv1D(_DepthwiseConv):
    """1-D depthwise convolution, as ``keras.layers.DepthwiseConv1D``.

    >>> DepthwiseConv1D(3, depth_multiplier=2)(np.ones((1, 5, 3))).shape
    (1, 3, 6)
    """

    rank, keras_name = 1, "DepthwiseConv1D"


class DepthwiseConv2D(_DepthwiseConv):
    """One filter (or ``depth_multiplier``) per input channel; kernel ``(kh, kw, in, mult)``.

    >>> DepthwiseConv2D(3, depth_multiplier=2)(np.ones((1, 5, 5, 3))).shape
    (1, 3, 3, 6)
    """

    rank, keras_name = 2, "DepthwiseConv2D"


class _SeparableConv(_DepthwiseConv):
    """A depthwise convolution followed by a pointwise (1x1) convolution, as in Keras."""

    kernel_weight = "depthwise_kernel"

    def __init__(self, filters: int, kernel_size: int | Sequence[int], strides: int | Sequence[int] = 1,
                 padding: str = "valid", data_format: str | None = None,
                 dilation_rate: int | Sequence[int] = 1, depth_multiplier: int = 1,
                 activation: str | None = None, use_bias: bool = True,
                 depthwise_initializer: Any = "glorot_uniform",
                 pointwise_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 depthwise_regularizer: Any = None, pointwise_regularizer: Any = None,
                 depthwise_constraint: Any = None, pointwise_constraint: Any = None,
                 **kwargs: Any) -> None:
        self.pointwise_initializer = initializers_module.get(pointwise_initializer)
        self.pointwise_regularizer = regularizers_module.get(pointwise_regularizer)
        self.pointwise_constraint = constraints_module.get(pointwise_constraint)
        super().__init__(kernel_size, strides, padding, depth_multiplier, data_format,
                         dilation_rate, activation, use_bias, depthwise_initializer,
                         bias_initializer, depthwise_regularizer, depthwise_constraint, **kwargs)
        self.filters = _positive_int("filters", filters)
        self.pointwise_spec = ConvSpec(1, rank=self.rank)

    def _make_spec(self) -> ConvSpec:
        return keras_spec(
            self.keras_name, filters=1, kernel_size=self.kernel_size, strides=self.strides,
            padding=self.padding, depth_multiplier=self.depth_multiplier,
            dilation_rate=self.dilation_rate,
        )

    def _build(self, input_shape: Shape, rng: np.random.Generator) -> None:
        channels = self._last_shape(input_shape)[-1]
        if channels is None:
            raise ValueError("the channels axis must have a known size")
        self.spec = self.spec.replace(groups=channels, filters=None, depth_multiplier=None)
        self.add_weight("depthwise_kernel", (*self.kernel_size, channels, self.depth_multiplier),
                        self.kernel_initializer, rng)
        self.add_weight("pointwise_kernel",
                        (*(1,) * self.rank, channels * self.depth_multiplier, self.filters),
                        self.pointwise_initializer, rng)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer, rng)

    def _out_channels(self, channels: int) -> int:
        return self.filters

    def _forward(self, x: np.ndarray, keep: bool = False) -> np.ndarray:
        engine = _engine()
        x_last = self._to_last(x)
        middle = engine.conv(x_last, self._engine_kernel(), self.spec)
        z = engine.conv(middle, self.variables["pointwise_kernel"], self.pointwise_spec,
                        self.variables.get("bias"))
        y = self.activation.forward(z)
        if keep:
            self._cache = (x_last, middle, z, y)
        return self._from_last(y)

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        with self._training_threads(len(d_out)):
            return self._separable_backward(d_out)

    def _separable_backward(self, d_out: np.ndarray) -> np.ndarray:
        engine = _engine()
        x_last, middle, z, y = self._kept()
        d_z = self.activation.backward(self._to_last(d_out), z, y)
        d_middle, d_pointwise, d_bias = engine.conv_vjp(
            middle, self.variables["pointwise_kernel"], self.pointwise_spec, d_z,
            self.variables.get("bias"),
        )
        d_x, d_depthwise, _ = engine.conv_vjp(x_last, self._engine_kernel(), self.spec, d_middle)
        self.grads = {
            "depthwise_kernel": d_depthwise.reshape(self.variables["depthwise_kernel"].shape),
            "pointwise_kernel": d_pointwise,
        }
        if self.use_bias:
            self.grads["bias"] = d_bias
        return self._from_last(d_x)

    def backward_weights(self, d_out: np.ndarray) -> None:
        # its own backward (the depthwise part's kept values are not _Conv's)
        self.backward(d_out)

    def _penalised(self) -> dict[str, Any]:
        return {"depthwise_kernel": self.kernel_regularizer,
                "pointwise_kernel": self.pointwise_regularizer, "bias": self.bias_regularizer}

    def _constrained(self) -> dict[str, Any]:
        return {"depthwise_kernel": self.kernel_constraint,
                "pointwise_kernel": self.pointwise_constraint, "bias": self.bias_constraint}

    def _config_items(self) -> dict[str, Any]:
        items = super()._config_items()
        from .initializers import serialize as init_serialize

        out: dict[str, Any] = {"filters": self.filters}
        for key in ("kernel_size", "strides", "padding", "data_format", "dilation_rate",
                    "depth_multiplier", "activation", "use_bias", "depthwise_initializer"):
            out[key] = items[key]
        out["pointwise_initializer"] = init_serialize(self.pointwise_initializer)
        out["bias_initializer"] = items["bias_initializer"]
        out["depthwise_regularizer"] = items["depthwise_regularizer"]
        out["pointwise_regularizer"] = regularizers_module.serialize(self.pointwise_regularizer)
        out["bias_regularizer"] = items["bias_regularizer"]
        out["activity_regularizer"] = items["activity_regularizer"]
        out["depthwise_constraint"] = items["depthwise_constraint"]
        out["pointwise_constraint"] = constraints_module.serialize(self.pointwise_constraint)
        out["bias_constraint"] = items["bias_constraint"]
        return out


class SeparableConv1D(_SeparableConv):
    """1-D separable convolution, as ``keras.layers.SeparableConv1D``.

    >>> SeparableConv1D(4, 3)(np.ones((1, 5, 2))).shape
    (1, 3, 4)
    """

    rank, keras_name = 1, "SeparableConv1D"


class SeparableConv2D(_SeparableConv):
    """A depthwise convolution followed by a 1x1 (pointwise) convolution, as in Keras.

    >>> layer = SeparableConv2D(4, 3)
    >>> layer(np.ones((1, 5, 5, 2))).shape, [w.shape for w in layer.get_weights()]
    ((1, 3, 3, 4), [(3, 3, 2, 1), (1, 1, 2, 4), (4,)])
    """

    rank, keras_name = 2, "SeparableConv2D"


def _reorder(items: dict[str, Any], after: str, key: str, value: Any = None) -> dict[str, Any]:
    """``items`` with ``key`` (moved, or added with ``value``) right after ``after``."""
    if key in items:
        value = items.pop(key)
    out: dict[str, Any] = {}
    for k, v in items.items():
        out[k] = v
        if k == after:
            out[key] = value
    return out


def _rename(items: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names.get(k, k): v for k, v in items.items()}


# --------------------------------------------------------------------------- pooling


class _Pooling(SpatialLayer):
    pool = "max"
    keras_name = "MaxPooling2D"

    def __init__(self, pool_size: int | Sequence[int] = 2, strides: int | Sequence[int] | None = None,
                 padding: str = "valid", data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool_size = per_axis("pool_size", pool_size, self.rank)
        self.strides = self.pool_size if strides is None else per_axis("strides", strides, self.rank)
        self.padding = padding
        self.data_format = check_data_format(data_format)
        self.spec = keras_spec(self.keras_name, pool_size=self.pool_size, strides=self.strides,
                               padding=self.padding)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        last = self._last_shape(input_shape)
        return self._from_last_shape((*self._resolve_open(self.spec, last)[1], last[-1]))

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        x_last = self._to_last(x)
        if keep:
            self._cache = x_last
        return self._from_last(_engine().conv(x_last, None, self.spec))

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        x_last = self._kept()
        d_x = _engine().conv_vjp(x_last, None, self.spec, self._to_last(d_out))[0]
        return self._from_last(d_x)

    def _config_items(self) -> dict[str, Any]:
        return {"pool_size": tuple(self.pool_size), "padding": self.padding,
                "strides": tuple(self.strides), "data_format": self.data_format}


class MaxPooling1D(_Pooling):
    """Max over windows of ``pool_size`` steps (default 2, strides = pool_size)."""

    rank, pool, keras_name = 1, "max", "MaxPooling1D"


class MaxPooling2D(_Pooling):
    """Max over ``pool_size`` windows (default (2, 2), strides = pool_size).

    >>> MaxPooling2D()(np.arange(16.0).reshape(1, 4, 4, 1))[0, :, :, 0]
    array([[ 5.,  7.],
           [13., 15.]], dtype=float32)
    """

    rank, pool, keras_name = 2, "max", "MaxPooling2D"


class AveragePooling1D(_Pooling):
    """Mean over windows; padded cells do not count (Keras). ``pool_size`` is required."""

    rank, pool, keras_name = 1, "avg", "AveragePooling1D"

    def __init__(self, pool_size: int | Sequence[int], strides: int | Sequence[int] | None = None,
                 padding: str = "valid", data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class AveragePooling2D(_Pooling):
    """Mean over windows; with ``padding="same"`` padded cells do not count (Keras).

    ``pool_size`` is required, as in Keras 3.
    """

    rank, pool, keras_name = 2, "avg", "AveragePooling2D"

    def __init__(self, pool_size: int | Sequence[int], strides: int | Sequence[int] | None = None,
                 padding: str = "valid", data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


class MaxPooling3D(_Pooling):
    """Max over ``pool_size`` windows of the three spatial axes (default (2, 2, 2))."""

    rank, pool, keras_name = 3, "max", "MaxPooling3D"


class AveragePooling3D(_Pooling):
    """Mean over windows of the three spatial axes; ``pool_size`` is required."""

    rank, pool, keras_name = 3, "avg", "AveragePooling3D"

    def __init__(self, pool_size: int | Sequence[int], strides: int | Sequence[int] | None = None,
                 padding: str = "valid", data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(pool_size, strides, padding, data_format, **kwargs)


# --------------------------------------------------------------------------- the rest


class Flatten(Layer):
    """``(batch, ...) -> (batch, product)`` in row-major channels-last order.

    With ``data_format="channels_first"`` the channels axis is moved last
    first, as Keras 3 does.
    """

    def __init__(self, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_format = check_data_format(data_format)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if any(v is None for v in input_shape):
            return (None,)  # type: ignore[return-value]
        return (int(np.prod(input_shape)),)

    def _channels_first(self, x: np.ndarray) -> bool:
        return self.data_format == "channels_first" and x.ndim > 2

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        if self._channels_first(x):
            x = np.moveaxis(x, 1, -1)
        if keep:
            self._cache = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        shape = self._kept()
        d_x = d_out.reshape(shape)
        return np.moveaxis(d_x, -1, 1) if self.data_format == "channels_first" and len(shape) > 2 \
            else d_x

    def _config_items(self) -> dict[str, Any]:
        return {"data_format": self.data_format}


class Dense(Layer):
    """Fully connected: ``activation(x @ kernel + bias)`` on the last axis.

    >>> Dense(10, activation="softmax")(np.ones((2, 4))).sum(axis=1)
    array([1., 1.], dtype=float32)
    """

    def __init__(self, units: int, activation: str | None = None, use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None,
                 activity_regularizer: Any = None, kernel_constraint: Any = None,
                 bias_constraint: Any = None, **kwargs: Any) -> None:
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = _positive_int("units", units)
        self.activation = activations_module.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers_module.get(kernel_initializer)
        self.bias_initializer = initializers_module.get(bias_initializer)
        self.kernel_regularizer = regularizers_module.get(kernel_regularizer)
        self.bias_regularizer = regularizers_module.get(bias_regularizer)
        self.kernel_constraint = constraints_module.get(kernel_constraint)
        self.bias_constraint = constraints_module.get(bias_constraint)

    def _build(self, input_shape: Shape, rng: np.random.Generator) -> None:
        if not input_shape:
            raise ValueError(f"layer {self.name!r} (Dense) needs inputs with at least one axis")
        self.add_weight("kernel", (input_shape[-1], self.units), self.kernel_initializer, rng)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer, rng)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (*input_shape[:-1], self.units)

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        z = x @ self.variables["kernel"]
        if self.use_bias:
            z = z + self.variables["bias"]
        y = self.activation.forward(z)
        if keep:
            self._cache = (x, z, y)
        return y

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        x, z, y = self._kept()
        d_z = self.activation.backward(d_out, z, y)
        rows = x.reshape(-1, x.shape[-1])
        d_rows = d_z.reshape(-1, self.units)
        self.grads = {"kernel": rows.T @ d_rows}
        if self.use_bias:
            self.grads["bias"] = bias_gradient(d_rows)
        return d_z @ self.variables["kernel"].T

    def _penalised(self) -> dict[str, Any]:
        return {"kernel": self.kernel_regularizer, "bias": self.bias_regularizer}

    def _constrained(self) -> dict[str, Any]:
        return {"kernel": self.kernel_constraint, "bias": self.bias_constraint}

    def _config_items(self) -> dict[str, Any]:
        from .initializers import serialize as init_serialize

        return {"units": self.units, "activation": self.activation.name,
                "use_bias": self.use_bias,
                "kernel_initializer": init_serialize(self.kernel_initializer),
                "bias_initializer": init_serialize(self.bias_initializer),
                "kernel_regularizer": regularizers_module.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers_module.serialize(self.bias_regularizer),
                "kernel_constraint": constraints_module.serialize(self.kernel_constraint),
                "bias_constraint": constraints_module.serialize(self.bias_constraint),
                "quantization_config": None}


class Dropout(Layer):
    """Zeroes a fraction ``rate`` of inputs while training, scaling the rest by ``1/(1-rate)``."""

    def __init__(self, rate: float, noise_shape: Sequence[int] | None = None,
                 seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
            raise ValueError(f"rate must be a number in [0, 1), got {rate!r}")
        if noise_shape is not None:
            raise ValueError("noise_shape is not supported; leave it None")
        self.rate: float = float(rate)
        self.seed: int | None = seed
        self.rng: np.random.Generator = np.random.default_rng(seed)

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        if not training or self.rate == 0:
            if keep:
                self._cache = 1.0
            return x
        mask = (self.rng.random(x.shape) >= self.rate).astype(x.dtype) / x.dtype.type(1 - self.rate)
        if keep:
            self._cache = mask
        return x * mask

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        return d_out * self._kept()

    def _config_items(self) -> dict[str, Any]:
        return {"rate": self.rate, "seed": self.seed, "noise_shape": None}


class BatchNormalization(Layer):
    """Normalises each feature of the last axis (Keras 3's training and inference maths).

    Weights, in Keras's order: ``gamma``, ``beta`` (trainable), ``moving_mean``,
    ``moving_variance``.
    """

    def __init__(self, axis: int = -1, momentum: float = 0.99, epsilon: float = 1e-3,
                 center: bool = True, scale: bool = True, beta_initializer: Any = "zeros",
                 gamma_initializer: Any = "ones", moving_mean_initializer: Any = "zeros",
                 moving_variance_initializer: Any = "ones", beta_regularizer: Any = None,
                 gamma_regularizer: Any = None, beta_constraint: Any = None,
                 gamma_constraint: Any = None, synchronized: bool = False, renorm: bool = False,
                 renorm_clipping: Any = None, renorm_momentum: float = 0.99,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unsupported = {key: value for key, value in (
            ("beta_regularizer", beta_regularizer), ("gamma_regularizer", gamma_regularizer),
            ("beta_constraint", beta_constraint), ("gamma_constraint", gamma_constraint),
            ("synchronized", synchronized), ("renorm", renorm),
            ("renorm_clipping", renorm_clipping)) if value}
        if unsupported:
            raise ValueError(
                "BatchNormalization: " + ", ".join(f"{k}={v!r}" for k, v in unsupported.items())
                + " is a Keras feature convarith.nn does not implement; leave it out")
        if axis not in (-1,):
            raise ValueError(f"axis must be -1 (channels-last), got {axis!r}")
        self.axis = -1
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        if self.epsilon <= 0:
            raise ValueError(f"epsilon must be positive, got {epsilon!r}")
        self.center, self.scale = bool(center), bool(scale)
        self.initializers = {
            "gamma": gamma_initializer, "beta": beta_initializer,
            "moving_mean": moving_mean_initializer, "moving_variance": moving_variance_initializer,
        }

    def _build(self, input_shape: Shape, rng: np.random.Generator) -> None:
        if not input_shape:
            raise ValueError(f"layer {self.name!r} (BatchNormalization) needs a feature axis")
        features = (input_shape[-1],)
        if self.scale:
            self.add_weight("gamma", features, self.initializers["gamma"], rng)
        if self.center:
            self.add_weight("beta", features, self.initializers["beta"], rng)
        self.add_weight("moving_mean", features, self.initializers["moving_mean"], rng, False)
        self.add_weight("moving_variance", features, self.initializers["moving_variance"], rng,
                        False)

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        axes = tuple(range(x.ndim - 1))
        gamma = self.variables.get("gamma")
        beta = self.variables.get("beta")
        if training and self.trainable:
            mean = x.mean(axis=axes)
            variance = ((x - mean) ** 2).mean(axis=axes)
            m = x.dtype.type(self.momentum)
            self.variables["moving_mean"][...] = self.variables["moving_mean"] * m + mean * (1 - m)
            self.variables["moving_variance"][...] = (
                self.variables["moving_variance"] * m + variance * (1 - m)
            )
        else:
            mean = self.variables["moving_mean"]
            variance = self.variables["moving_variance"]
        inv = 1 / np.sqrt(variance + x.dtype.type(self.epsilon))
        x_hat = (x - mean) * inv
        y = x_hat * gamma if gamma is not None else x_hat
        if beta is not None:
            y = y + beta
        if keep:
            self._cache = (x_hat, inv, bool(training and self.trainable))
        return y.astype(x.dtype, copy=False)

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        x_hat, inv, batch_statistics = self._kept()
        axes = tuple(range(d_out.ndim - 1))
        self.grads = {}
        if self.scale:
            self.grads["gamma"] = (d_out * x_hat).sum(axis=axes)
        if self.center:
            self.grads["beta"] = d_out.sum(axis=axes)
        gamma = self.variables.get("gamma")
        d_hat = d_out * gamma if gamma is not None else d_out
        if not batch_statistics:
            return d_hat * inv
        count = int(np.prod([d_out.shape[a] for a in axes]))
        return inv / count * (
            count * d_hat - d_hat.sum(axis=axes) - x_hat * (d_hat * x_hat).sum(axis=axes)
        )

    def _config_items(self) -> dict[str, Any]:
        from .initializers import serialize as init_serialize

        inits = {key: init_serialize(initializers_module.get(value))
                 for key, value in self.initializers.items()}
        return {"axis": self.axis, "momentum": self.momentum, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale,
                "beta_initializer": inits["beta"], "gamma_initializer": inits["gamma"],
                "moving_mean_initializer": inits["moving_mean"],
                "moving_variance_initializer": inits["moving_variance"],
                "beta_regularizer": None, "gamma_regularizer": None, "beta_constraint": None,
                "gamma_constraint": None, "synchronized": False, "renorm": False,
                "renorm_clipping": None, "renorm_momentum": 0.99}


class Activation(Layer):
    """Applies an activation: ``Activation("relu")``."""

    def __init__(self, activation: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activation = activations_module.get(activation)

    def forward(self, x: np.ndarray, training: bool = False, keep: bool = False) -> np.ndarray:
        y = self.activation.forward(x)
        if keep:
            self._cache = (x, y)
        return y

    def backward(self, d_out: np.ndarray) -> np.ndarray:
        x, y = self._kept()
        return self.activation.backward(d_out, x, y)

    def _config_items(self) -> dict[str, Any]:
        return {"activation": self.activation.name}


#: Layer classes of this module by Keras class name (:data:`convarith.nn.registry.LAYERS`
#: has every layer).
LAYERS: dict[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (
        InputLayer, Conv1D, Conv2D, Conv3D, Conv1DTranspose, Conv2DTranspose, Conv3DTranspose,
        DepthwiseConv1D, DepthwiseConv2D, SeparableConv1D, SeparableConv2D,
        MaxPooling1D, MaxPooling2D, MaxPooling3D, AveragePooling1D, AveragePooling2D,
        AveragePooling3D, Flatten, Dense, Dropout, BatchNormalization, Activation,
    )
}
