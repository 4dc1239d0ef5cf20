"""The engine's one entry point: normalize, pad once, dispatch; and the gradients.

:func:`conv` runs any :class:`~convarith.spec.ConvSpec` (convolution,
transposed convolution, max or average pooling) on a NumPy array:

1. normalize: channels-last, a float compute dtype (float16 runs in float32);
2. resolve the spec against the input shape (padding and output size come
   from the spec, never from here) and check the kernel against it;
3. pad once (padding modes via :mod:`.padding`); a transposed convolution
   is a stride-1 convolution of the zero-inserted, padded input with the
   flipped, in/out-swapped kernel;
4. hand the padded input to an algorithm chosen by :mod:`.dispatch`.

:func:`conv_vjp` gives the gradients through the same algorithm contract:
the input gradient of a convolution is a transposed convolution of the output
gradient and vice versa; the kernel gradient is the algorithm's
``weight_grad``.

Examples
--------
>>> import numpy as np
>>> from convarith import ConvSpec
>>> x = np.arange(16.0).reshape(1, 4, 4, 1)
>>> conv(x, np.ones((2, 2, 1, 1)), ConvSpec(2, strides=2))[0, :, :, 0]
array([[10., 18.],
       [42., 50.]])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np

from ..arithmetic import transposed_grid_output_size, window_reach, zero_inserted_size
from ..limits import check_values, current_limits
from ..spec import ConvSpec, ResolvedConv
from . import dispatch as _dispatch
from . import gradient_modes, pooling
from .algorithms import prepacked
from .algorithms._llvm_transpose import transpose_into
from .algorithms._threads import (
    blas_single_threaded,
    run_pair,
    thread_limit,
    worker_count,
)
from .dispatch import (
    Algorithm,
    ConvProblem,
    cheapest,
    cheapest_weight_grad,
    choose,
    describe,
    plan,
    plan_transposed,
    plan_weight_grad,
    recalled_plan,
    remembered_layout,
    remembered_plan,
    set_aside,
    value_limits,
)
from .padding import pad, pad_adjoint, zero_insert

__all__ = ["conv", "conv_vjp", "direct_conv", "transposed_conv", "flip_swap", "Prepared", "prepare",
           "finish", "as_numeric", "CallPlan", "call_plan"]


# --------------------------------------------------------------------------- preparation


@dataclass(frozen=True)
class Prepared:
    """A call after normalization: channels-last arrays in the compute dtype."""

    x: np.ndarray  # (N, *spatial, C)
    kernel: np.ndarray | None
    bias: np.ndarray | None
    resolved: ResolvedConv
    groups: int
    result_dtype: np.dtype[Any]
    channels_first: bool
    unbatched: bool


def as_numeric(name: str, value: Any) -> np.ndarray:
    """``value`` as an array of real numbers, or a ``TypeError`` naming ``name`` and its dtype.

    >>> as_numeric("x", [1, 2]).dtype.kind
    'i'
    """
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        kind = "complex" if array.dtype.kind == "c" else "non-numeric"
        raise TypeError(
            f"{name} must hold real numbers (float16/32/64, int or bool), got dtype "
            f"{array.dtype} ({kind})"
        )
    return array


def _compute_dtypes(*arrays: np.ndarray | None) -> tuple[np.dtype[Any], np.dtype[Any]]:
    """(dtype computed in, dtype returned): floats keep theirs, float16 runs in float32."""
    result = np.result_type(*(a.dtype for a in arrays if a is not None))
    if result.kind in "biu":
        result = np.dtype(np.float64)
    compute = np.dtype(np.float32) if result.itemsize < 4 else result
    if compute.itemsize > 8:
        compute = result = np.dtype(np.float64)
    return compute, result


def _layout_hint(spec: ConvSpec, shape: tuple[int, ...], expected: int) -> str:
    if spec.data_format == "channels_first" and shape[-1] == expected:
        return (
            f"; the data looks channels_last (NHWC): its last axis has {expected} channels, "
            "so pass data_format='channels_last' (or move the channel axis)"
        )
    if spec.data_format == "channels_last" and len(shape) > 2 and shape[1] == expected:
        return (
            f"; the data looks channels_first (NCHW): its axis 1 has {expected} channels, "
            "so pass data_format='channels_first' (or move the channel axis)"
        )
    return ""


def prepare(
    x: Any, kernel: Any, spec: ConvSpec, bias: Any = None, need_kernel: bool = True
) -> Prepared:
    """Check and normalize one call (the engine's and every backend's): ``x``, kernel and
    bias against ``spec`` (axes, channels, groups, filters, size budget), each refusal
    naming the argument, its value and the rule; arrays channels-last, batched, in
    the compute dtype. :func:`finish` returns a result to the caller's layout.

    >>> from convarith import ConvSpec
    >>> prepare(np.ones((2, 5, 5)), np.ones((3, 3, 2, 4)), ConvSpec(3, data_format="channels_first")).x.shape
    (1, 5, 5, 2)
    """
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec must be a convarith.ConvSpec, got {type(spec).__name__}")
    x = as_numeric("x", x)
    rank = spec.rank
    assert rank is not None
    layout = "(batch, spatial..., channels)" if spec.data_format == "channels_last" else (
        "(batch, channels, spatial...)")
    if x.ndim not in (rank + 1, rank + 2):
        raise ValueError(
            f"x must have {rank + 2} axes {layout} for a rank-{rank} spec "
            f"(or {rank + 1} without batch), got shape {x.shape}"
        )
    unbatched = x.ndim == rank + 1
    if unbatched:
        x = x[None]
    channels_first = spec.data_format == "channels_first"
    channels = x.shape[1] if channels_first else x.shape[-1]

    kernel_array: np.ndarray | None = None
    groups = 1
    if spec.pool is None:
        if kernel is None:
            raise ValueError(f"kernel is required for a {spec.kind}, got None")
        kernel_array = as_numeric("kernel", kernel)
        if kernel_array.ndim != rank + 2:
            what = "(k..., out/groups, in)" if spec.transposed else "(k..., in/groups, out)"
            raise ValueError(
                f"kernel must have {rank + 2} axes {what} for a rank-{rank} spec, got shape "
                f"{kernel_array.shape}"
            )
        if tuple(kernel_array.shape[:rank]) != spec.kernel_size:
            hint = ""
            if tuple(kernel_array.shape[2:]) == spec.kernel_size:  # (out, in/groups, k...): PyTorch/ONNX
                hint = ("; it looks like a PyTorch/ONNX weight (out, in/groups, k...): convert it with "
                        "convarith.kernel_from_torch(w) (or convarith.io.onnx_node.kernel_from_onnx(w))")
            raise ValueError(
                f"kernel shape {kernel_array.shape} does not match spec.kernel_size="
                f"{spec.kernel_size}: its first {rank} axes must be the kernel size{hint}"
            )
        groups = channels if spec.groups == "depthwise" else int(spec.groups)
        if spec.transposed:
            kernel_in = kernel_array.shape[-1]
            if kernel_in != channels:
                raise ValueError(
                    f"a transposed kernel (k..., out/groups, in) of shape {kernel_array.shape} "
                    f"takes {kernel_in} input channels, but x {x.shape} has {channels} "
                    f"({spec.data_format})" + _layout_hint(spec, x.shape, kernel_in)
                )
            if channels % groups:
                raise ValueError(
                    f"x's {channels} channels must be divisible by groups={groups}"
                )
        else:
            kernel_in = kernel_array.shape[-2]
            if kernel_in * groups != channels:
                hint = _layout_hint(spec, x.shape, kernel_in * groups)
                if not hint and spec.groups != "depthwise" and kernel_in and not channels % kernel_in:
                    hint = f"; for a grouped convolution pass groups={channels // kernel_in}"
                if spec.groups == "depthwise":
                    hint = (
                        "; a depthwise kernel for conv() has the grouped layout "
                        "(k..., 1, channels * multiplier) (Keras's (k..., channels, multiplier) "
                        "goes to depthwise_conv2d)"
                    )
                raise ValueError(
                    f"kernel in-channels ({kernel_in}) x groups ({groups}) = {kernel_in * groups} "
                    f"must equal x's channels ({channels}, {spec.data_format}, x shape "
                    f"{x.shape}){hint}"
                )
            multiplier = spec.depth_multiplier
            if spec.groups == "depthwise" and multiplier is not None and (
                    kernel_array.shape[-1] != channels * multiplier):
                raise ValueError(
                    f"a depthwise kernel with depth_multiplier={multiplier} over {channels} "
                    f"channels must have {channels * multiplier} outputs, got kernel shape "
                    f"{kernel_array.shape}"
                )
            if kernel_array.shape[-1] % groups:
                raise ValueError(
                    f"kernel out-channels ({kernel_array.shape[-1]}) must be divisible by "
                    f"groups={groups}"
                )
    elif kernel is not None:
        raise ValueError(f"a {spec.kind} takes no kernel; pass kernel=None")

    bias_array = None if bias is None else as_numeric("bias", bias)
    if bias_array is not None:
        if spec.pool is not None:
            raise ValueError(f"a {spec.kind} takes no bias; pass bias=None")
        assert kernel_array is not None
        filters = kernel_array.shape[-1] if not spec.transposed else (
            kernel_array.shape[-2] * groups)
        if bias_array.shape != (filters,):
            raise ValueError(
                f"bias must have shape ({filters},) (one per output channel), got "
                f"{bias_array.shape}"
            )

    resolved = spec.resolve(x.shape)
    _check_budget(resolved, x.shape[0], channels, kernel_array, groups)
    if spec.filters is not None and kernel_array is not None:
        filters = kernel_array.shape[-1] if not spec.transposed else (
            kernel_array.shape[-2] * groups)
        if filters != spec.filters:
            raise ValueError(
                f"kernel shape {kernel_array.shape} gives {filters} output channels but "
                f"spec.filters={spec.filters}"
            )
    compute, result = _compute_dtypes(x, kernel_array, bias_array)
    return Prepared(
        x=to_channels_last(x, compute) if channels_first else as_channels_last(x, compute),
        kernel=None if kernel_array is None else np.ascontiguousarray(kernel_array, dtype=compute),
        bias=None if bias_array is None else bias_array.astype(compute),
        resolved=resolved,
        groups=groups,
        result_dtype=result,
        channels_first=channels_first,
        unbatched=unbatched,
    )


@dataclass(frozen=True)
class CallPlan:
    """What :func:`prepare` derives from one call's arguments, and the algorithm plan.

    It depends only on the spec, the named algorithm, the limits in force and
    each array's shape, strides and dtype (and the worker count and workspace
    budget the choice reads), so a call with the same ones reuses it
    (:func:`call_plan`): ``prepare``'s checks and the dispatch's are skipped,
    and arrays already channels-last, C-contiguous and in the compute dtype are
    used as they are.
    """

    resolved: ResolvedConv
    groups: int
    compute_dtype: np.dtype[Any]
    result_dtype: np.dtype[Any]
    channels_first: bool
    unbatched: bool
    x_as_is: bool  # x is batched-or-not, channels-last, C-contiguous, in the compute dtype
    kernel_as_is: bool
    direct: tuple[Any, ...] | None  # the direct plan of a zero-padded convolution
    pool: pooling.PoolPlan | None  # a pooling's
    # the direct plan as one function of the prepared x and kernel, where it needs no
    # crop and no check of the values (:func:`_bound_direct`); a pooling's plan
    # (:func:`_bound_pool`)
    run: Callable[[np.ndarray, Any], np.ndarray] | None = None
    # run on x and kernel as they are, plus the bias, gives the result: x, kernel and
    # bias as_is, x batched and channels-last, the result dtype the compute dtype
    plain: bool = False
    # a plain 1×1 layer's output shape where :func:`conv_vjp` takes its two gradients as
    # two products (:func:`_tiny_pointwise`); else ``None``
    tiny_pointwise: tuple[int, ...] | None = None

    def arrays(self, x: Any, kernel: Any, bias: Any
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``x``, kernel and bias as :func:`prepare` makes them (the bias is not copied)."""
        if self.unbatched:
            x = x[None]
        if self.channels_first:
            x = to_channels_last(x, self.compute_dtype)
        if not self.x_as_is:
            x = as_channels_last(x, self.compute_dtype)
        if kernel is not None and not self.kernel_as_is:
            kernel = np.ascontiguousarray(kernel, dtype=self.compute_dtype)
        if bias is not None:
            bias = bias.astype(self.compute_dtype, copy=False)
        return x, kernel, bias


def _ready(a: Any, dtype: np.dtype[Any]) -> bool:
    """Whether ``a`` is a C-contiguous ndarray of ``dtype`` (used as it is)."""
    return type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous


def call_plan(x: Any, kernel: Any, spec: ConvSpec, bias: Any = None,
              algorithm: str | None = None) -> tuple[CallPlan, Prepared | None]:
    """The :class:`CallPlan` of a call, and its :class:`Prepared` arrays when it was made now.

    A call's first time runs every check of :func:`prepare` (and raises what it
    raises) and plans the algorithm on the prepared arrays; the plan is then
    remembered with the dispatch's plans (``dispatch._PLANS``, keyed on the
    spec, the algorithm, the ``max_output_values`` limit and each array's
    shape, strides and dtype), so a later call of plain arrays of the same
    layout skips both. Other array types (lists, subclasses) and unhashable
    specs are prepared every time. A plan that raises is not remembered.

    >>> from convarith import ConvSpec
    >>> plan, prepared = call_plan(np.ones((2, 5, 5)), np.ones((3, 3, 2, 4)), ConvSpec(3, data_format="channels_first"))
    >>> prepared.x.shape, plan.unbatched, plan.resolved.output_size
    ((1, 5, 5, 2), True, (3, 3))
    """
    return _keyed_call_plan(_call_key(x, kernel, spec, bias, algorithm), x, kernel, spec, bias,
                            algorithm)


def _call_key(x: Any, kernel: Any, spec: Any, bias: Any, algorithm: str | None
              ) -> tuple[Any, ...] | None:
    """The key a call's plan is remembered under: the spec, the algorithm, the
    ``max_output_values`` limit, each array's shape, strides and dtype, the worker count
    and the workspace budget, in one tuple (this runs on every call of a layer); ``None``
    for arrays other than plain ``numpy.ndarray`` and specs other than ``ConvSpec``."""
    if type(spec) is not ConvSpec or type(x) is not np.ndarray:
        return None
    limit = current_limits().max_output_values
    if type(kernel) is np.ndarray and bias is None:
        # (writeable: a prepacked kernel's plan, costed as such, is kept apart)
        return ("call", spec, algorithm, limit, x.shape, x.strides, x.dtype, kernel.shape,
                kernel.strides, kernel.dtype, kernel.flags.writeable, worker_count(),
                _dispatch.WORKSPACE_BYTES)
    if (kernel is None or type(kernel) is np.ndarray) and (
            bias is None or type(bias) is np.ndarray):
        return ("call", spec, algorithm, limit, x.shape, x.strides, x.dtype,
                *_layout(kernel), *_layout(bias), worker_count(), _dispatch.WORKSPACE_BYTES)
    return None


def _keyed_call_plan(key: tuple[Any, ...] | None, x: Any, kernel: Any, spec: ConvSpec,
                     bias: Any, algorithm: str | None) -> tuple[CallPlan, Prepared | None]:
    """:func:`call_plan` given its :func:`_call_key`."""
    made: list[Prepared] = []
    if key is None:
        return _make_call_plan(x, kernel, spec, bias, algorithm, made), made[0]
    plan = recalled_plan(key)
    if plan is not None:
        return plan, None
    plan = remembered_layout(key, lambda: _make_call_plan(x, kernel, spec, bias, algorithm,
                                                          made))
    return plan, (made[0] if made else None)


def _layout(a: np.ndarray | None) -> tuple[Any, ...]:
    """An array's part of a plan's key: its shape, strides and dtype (``None``: absent)."""
    return (None,) if a is None else (a.shape, a.strides, a.dtype)


def _make_call_plan(x: Any, kernel: Any, spec: ConvSpec, bias: Any, algorithm: str | None,
                    made: list[Prepared]) -> CallPlan:
    """:func:`call_plan`'s plan made now: :func:`prepare` (its arrays appended to ``made``)
    and the direct plan."""
    # only a zero-padded convolution's plan holds an algorithm choice (the others are
    # planned by pooling, transposed_conv and direct_conv, each remembered there)
    # (a spec of the wrong type reaches prepare's own check first)
    chooses = (isinstance(spec, ConvSpec) and spec.pool is None and not spec.transposed
               and spec.padding_mode == "zeros")
    prepared = prepare(x, kernel, spec, bias)
    made.append(prepared)
    resolved = prepared.resolved
    direct = None
    if chooses:
        assert prepared.kernel is not None
        direct = _direct_plan(prepared.x, prepared.kernel, spec.strides, spec.dilation,
                              prepared.groups, resolved.output_size, algorithm,
                              resolved.padding)
    compute = prepared.x.dtype
    x_as_is = not prepared.channels_first and _ready(x, compute)
    kernel_as_is = _ready(kernel, compute)
    pool = None if spec.pool is None else pooling.pool_plan(resolved, compute)
    run = (_bound_pool(resolved, pool) if pool is not None else
           None if direct is None else _bound_direct(direct, algorithm))
    plain = (run is not None and x_as_is and (kernel is None or kernel_as_is)
             and (bias is None or _ready(bias, compute)) and not prepared.unbatched
             and prepared.result_dtype == compute)
    tiny = None
    if plain and direct is not None and algorithm is None and _tiny_pointwise(
            prepared.x.shape, prepared.kernel, spec.strides, prepared.groups,
            resolved.padding):
        assert prepared.kernel is not None
        tiny = (prepared.x.shape[0], *resolved.output_size, prepared.kernel.shape[-1])
    return CallPlan(resolved, prepared.groups, compute, prepared.result_dtype,
                    prepared.channels_first, prepared.unbatched, x_as_is, kernel_as_is, direct,
                    pool, run, plain, tiny)


#: FLOPs of both gradients of a 1×1 layer (``4 · cells · C · F``) up to which
#: :func:`conv_vjp` computes them as two NumPy products straight away (each at most
#: 250K multiply-adds: one BLAS thread), without the planned algorithms' calls: their
#: lookups, checks and dispatch cost more than the products there (EfficientNet-B0's
#: squeeze-and-excitation layers at batch 1, 4 -> 96 on 1×1: 35-40 µs a backward pass,
#: of which the products are about 2).
TINY_POINTWISE_FLOPS = 1e6


def _tiny_pointwise(shape: tuple[int, ...], kernel: np.ndarray | None, strides: Sequence[int],
                    groups: int, padding: Sequence[tuple[int, int]]) -> bool:
    """Whether a zero-padded convolution of an ``x`` of ``shape`` (channels-last) is a
    1×1 layer of one group, stride 1 and no padding, float32 or float64, whose two
    gradients take at most :data:`TINY_POINTWISE_FLOPS`.

    >>> k = np.zeros((1, 1, 4, 96), np.float32)
    >>> _tiny_pointwise((1, 1, 1, 4), k, (1, 1), 1, ((0, 0), (0, 0)))
    True
    >>> _tiny_pointwise((1, 1, 1, 4), k, (2, 2), 1, ((0, 0), (0, 0)))
    False
    """
    if (kernel is None or groups != 1 or kernel.dtype.char not in "fd"
            or any(size != 1 for size in kernel.shape[:-2])
            or any(step != 1 for step in strides)
            or any(lo or hi for lo, hi in padding)):
        return False
    cells = math.prod(shape[:-1])
    return 4.0 * cells * kernel.shape[-2] * kernel.shape[-1] <= TINY_POINTWISE_FLOPS


def _tiny_pointwise_vjp(x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, bias: Any,
                        need_input_grad: bool
                        ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """:func:`conv_vjp` of a layer that :func:`_tiny_pointwise` takes, on arrays as its
    plan takes them (channels-last, C-contiguous, one dtype; ``dy`` the output's shape):
    ``dx = dy · Kᵀ`` and ``dk = xᵀ · dy`` over the cells."""
    channels, filters = kernel.shape[-2:]
    rows = dy.reshape(-1, filters)
    weights = kernel.reshape(channels, filters)
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN propagate silently
        d_x = (rows @ weights.T).reshape(x.shape) if need_input_grad else None
        cells = x.reshape(-1, channels)
        # one cell: an outer product (BLAS took 60-75 µs for 1152 × 48 on one cell, its
        # product of depth one, against 17 for einsum; from two cells 5 µs)
        d_kernel = (np.einsum("i,f->if", cells[0], rows[0]) if len(rows) == 1
                    else cells.T @ rows).reshape(kernel.shape)
        d_bias = None if bias is None else _bias_grad(rows)
    return d_x, d_kernel, d_bias


def _bias_grad(rows: np.ndarray) -> np.ndarray:
    """The bias gradient: ``rows`` (the output gradient's cells × channels) summed over
    the cells, as a product with a vector of ones (one BLAS call: a tenth of NumPy's sum
    over the leading axes, which adds the rows one after the other, 0.15 ms for 32
    images of 16²×16)."""
    return np.ones(len(rows), rows.dtype) @ rows


def _check_budget(resolved: ResolvedConv, batch: int, channels: int,
                  kernel: np.ndarray | None, groups: int) -> None:
    """Refuse, before allocating, outputs and padded inputs over the configured limit."""
    if kernel is None:
        out_channels = channels
    else:
        out_channels = kernel.shape[-2] * groups if resolved.spec.transposed else kernel.shape[-1]
    check_values("the output", (batch, *resolved.output_size, out_channels))
    check_values("the padded input", (batch, *resolved.padded_size, channels))


def finish(y: np.ndarray | None, prepared: Prepared) -> np.ndarray | None:
    """Back to the caller's layout, batch and dtype."""
    if y is None:
        return None
    if prepared.channels_first:
        y = to_channels_first(y, prepared.result_dtype)
    if prepared.unbatched:
        y = y[0]
    return np.ascontiguousarray(y, dtype=prepared.result_dtype)


def _grad_in(d_out: Any, prepared: Prepared) -> np.ndarray:
    """The output gradient, checked and brought to channels-last compute dtype."""
    dy = as_numeric("d_out", d_out)
    resolved = prepared.resolved
    batch = prepared.x.shape[0]
    if prepared.kernel is None:
        channels = prepared.x.shape[-1]
    elif resolved.spec.transposed:
        channels = prepared.kernel.shape[-2] * prepared.groups
    else:
        channels = prepared.kernel.shape[-1]
    spatial = resolved.output_size
    last = (batch, *spatial, channels)
    expected = (channels, *spatial) if prepared.channels_first else (*spatial, channels)
    if not prepared.unbatched:
        expected = (batch, *expected)
    if dy.shape != expected:
        raise ValueError(f"d_out must have the output's shape {expected}, got {dy.shape}")
    if prepared.unbatched:
        dy = dy[None]
    if prepared.channels_first:
        dy = to_channels_last(dy, prepared.x.dtype)
    assert dy.shape == last
    return as_channels_last(dy, prepared.x.dtype)


def to_channels_last(x: np.ndarray, dtype: Any) -> np.ndarray:
    """``x`` ``(N, C, *S)`` as a C-contiguous ``(N, *S, C)`` array of ``dtype``.

    Each image's ``(C, S)`` matrix is turned by the compiled transposes
    (:mod:`.algorithms._llvm_transpose`) where they run and ``x`` is already a
    C-contiguous array of ``dtype``; else by NumPy (one element at a time: 16 images
    of 1024 channels on 14², float32, one core: 4.2 ms against 1.6), plane by plane for
    up to :data:`FEW_CHANNELS` channels.

    >>> to_channels_last(np.arange(6.0).reshape(1, 2, 3), np.float64)[0].tolist()
    [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    """
    dtype = np.dtype(dtype)
    if type(x) is np.ndarray and x.ndim >= 3:
        turned = _images_transposed(x, dtype, x.shape[1], math.prod(x.shape[2:]),
                                    (x.shape[0], *x.shape[2:], x.shape[1]))
        if turned is not None:
            return turned
    if type(x) is np.ndarray and x.ndim >= 3 and 1 < x.shape[1] <= FEW_CHANNELS:
        # an image's few planes, one after another into every cell (16 RGB images of
        # 112², one core: 0.84 -> 0.22 ms)
        turned = np.empty((x.shape[0], *x.shape[2:], x.shape[1]), dtype)
        for channel in range(x.shape[1]):
            turned[..., channel] = x[:, channel]
        return turned
    return np.ascontiguousarray(np.moveaxis(x, 1, -1), dtype=dtype)


#: Channels up to which :func:`to_channels_last` copies plane by plane where no block of
#: the compiled transposes fits (16 images of 3136 cells, float32, one core: 6 channels
#: 0.39 -> 0.12 ms that way, 8 even, 12 0.35 -> 0.40).
FEW_CHANNELS = 6


def as_channels_last(x: np.ndarray, dtype: Any) -> np.ndarray:
    """``x`` (channels last) as a C-contiguous array of ``dtype``: through
    :func:`to_channels_last` where ``x`` is a channels-first array's channels-last view
    (``np.moveaxis(a, 1, -1)``, as a Keras-style layer of channels-first data hands
    the engine), else NumPy's copy (none where it is one already).

    >>> a = np.arange(6.0).reshape(1, 2, 3)
    >>> as_channels_last(np.moveaxis(a, 1, -1), np.float64).flags.c_contiguous
    True
    """
    if (type(x) is np.ndarray and x.ndim >= 3 and not x.flags.c_contiguous
            and x.dtype == dtype):
        moved = np.moveaxis(x, -1, 1)
        if moved.flags.c_contiguous:
            return to_channels_last(moved, dtype)
    return np.ascontiguousarray(x, dtype=dtype)


def to_channels_first(y: np.ndarray, dtype: Any) -> np.ndarray:
    """``y`` ``(N, *S, C)`` as a C-contiguous ``(N, C, *S)`` array of ``dtype``: the
    inverse of :func:`to_channels_last`.

    >>> to_channels_first(np.arange(6.0).reshape(1, 3, 2), np.float64)[0].tolist()
    [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]]
    """
    dtype = np.dtype(dtype)
    if type(y) is np.ndarray and y.ndim >= 3:
        turned = _images_transposed(y, dtype, math.prod(y.shape[1:-1]), y.shape[-1],
                                    (y.shape[0], y.shape[-1], *y.shape[1:-1]))
        if turned is not None:
            return turned
    return np.ascontiguousarray(np.moveaxis(y, -1, 1), dtype=dtype)


def _images_transposed(a: np.ndarray, dtype: np.dtype[Any], rows: int, cols: int,
                       shape: tuple[int, ...]) -> np.ndarray | None:
    """Each image of ``a`` (a ``rows × cols`` matrix) transposed, into a new array of
    ``shape``, by the compiled transposes; ``None`` where they do not take it (``a`` not
    a C-contiguous array of ``dtype``, empty, too narrow, no compiled kernels)."""
    if a.dtype != dtype or not a.flags.c_contiguous or not a.size:
        return None
    turned = np.empty(shape, dtype)
    matrix = rows * cols
    if transpose_into(turned, a, 0, (a.shape[0], matrix, matrix), (1, 0, 0), rows, cols, cols,
                      rows):
        return turned
    return None


# --------------------------------------------------------------------------- the two cores


def flip_swap(kernel: np.ndarray, groups: int) -> np.ndarray:
    """Flip every spatial axis and swap in/out channels, group by group.

    A direct kernel ``(*K, Cg, G*Fg)`` becomes ``(*K, Fg, G*Cg)``; applied
    twice it is the identity. It turns a transposed kernel ``(*K, out/g, in)``
    into the direct kernel of the equivalent stride-1 convolution.

    >>> import numpy as np
    >>> flip_swap(np.arange(8.0).reshape(1, 2, 4), 2)[0].tolist()
    [[0.0, 4.0, 2.0, 6.0], [1.0, 5.0, 3.0, 7.0]]
    """
    rank = kernel.ndim - 2
    taps = kernel.shape[:rank]
    group_in, filters = kernel.shape[-2:]
    group_out = filters // groups
    if sum(side > 1 for side in (group_in, groups, group_out)) <= 1:
        # nothing to swap (a depthwise kernel; one channel on both sides of one group):
        # the taps reversed in one copy (3×3 on 960 channels: 5.2 -> 1.6 µs)
        return np.ascontiguousarray(kernel.reshape(-1, group_in * filters)[::-1]).reshape(
            *taps, group_out, groups * group_in)
    if kernel.flags.c_contiguous and kernel.size:
        # compiled: each tap's (Cg, Fg) matrix of each group turned block by block in the
        # vector registers, the taps read last to first (float32, one core: 3×3 512 ->
        # 512 3.1 -> 1.2 ms, 256 -> 256 0.43 -> 0.09, 64 -> 64 0.024 -> 0.011; groups
        # narrower than a vector gained nothing: NumPy's copy)
        count = math.prod(taps)
        swapped = np.empty((*taps, group_out, groups * group_in), kernel.dtype)
        if transpose_into(swapped, kernel, (count - 1) * group_in * filters,
                          (count, -group_in * filters, group_out * groups * group_in),
                          (groups, group_out, group_in), group_in, group_out, filters,
                          groups * group_in, whole_vectors=True):
            return swapped
    # one copy: flipping every spatial axis reverses the taps' flat order, and the swap
    # is one transpose (Cg, G, Fg) -> (Fg, G, Cg) per tap; the transpose then a flipped
    # copy of it took 3-8x as long for grouped kernels (one thread: 3×3 32 groups of 16,
    # 0.30 against 0.04 ms; of 32, 1.96 against 0.68)
    by_tap = kernel.reshape(-1, group_in, filters)[::-1]
    if _spaced_flip(group_in, filters * kernel.itemsize):
        spaced = np.empty((by_tap.shape[0], group_in, filters + 16), kernel.dtype)
        spaced[..., :filters] = by_tap
        by_tap = spaced[..., :filters]
    swapped = np.empty((by_tap.shape[0], group_out, groups, group_in), kernel.dtype)
    np.copyto(swapped, by_tap.reshape(-1, group_in, groups, group_out).transpose(0, 3, 2, 1))
    return swapped.reshape(*taps, group_out, groups * group_in)


def _spaced_flip(rows: int, row_bytes: int) -> bool:
    """Whether :func:`flip_swap` copies the kernel's rows (``rows`` of a tap, ``row_bytes``
    apart) 16 elements further apart before its transpose, which reads down their
    columns: rows 1 KiB apart or a multiple of 2^k KiB share 1/4 or fewer of the L1
    cache's sets (a set per 4 KiB), whose 12 ways then hold fewer rows than the column
    spans. Measured one thread, float32, 3×3: 32 groups of 32 (rows 4 KiB apart) 0.64
    -> 0.23 ms, one group of 256 0.55 -> 0.26, of 512 5.7 -> 2.7, 1×1 1024 -> 2048
    7.9 -> 2.8; where the rows fit (one group of 128, 32 groups of 16) spaced rows ran
    as fast or up to 6× slower.

    >>> _spaced_flip(32, 4096), _spaced_flip(16, 2048), _spaced_flip(128, 512)
    (True, False, False)
    """
    low_bit = row_bytes & -row_bytes
    return low_bit >= 1024 and rows * min(low_bit, 4096) >= 12 * 4096


def flipped(kernel: np.ndarray, groups: int) -> np.ndarray:
    """:func:`flip_swap` of ``kernel``, made once for a prepacked kernel (remembered with
    its packings, :func:`.algorithms.prepacked.remembered`, and itself prepacked, so the
    algorithms remember their packings of it too); else made at each call.

    >>> from convarith.engine import prepack
    >>> kernel = prepack(np.arange(8.0).reshape(1, 2, 4))
    >>> flipped(kernel, 2) is flipped(kernel, 2), flipped(kernel, 2)[0].tolist()
    (True, [[0.0, 4.0, 2.0, 6.0], [1.0, 5.0, 3.0, 7.0]])
    """
    if kernel.flags.writeable:
        return flip_swap(kernel, groups)
    kept = prepacked.remembered(kernel, ("flip_swap", groups),
                                lambda: (prepacked.prepack(flip_swap(kernel, groups)),
                                         kernel.nbytes))
    return flip_swap(kernel, groups) if kept is None else kept


def _crop_negative(
    xp: np.ndarray, padding: Sequence[tuple[int, int]] | None
) -> tuple[np.ndarray, Sequence[tuple[int, int]] | None]:
    """Apply the negative (cropping) sides of ``padding`` to ``xp`` now; the rest stays
    zero padding for the algorithm (which accepts only non-negative padding)."""
    if padding is None or all(lo >= 0 and hi >= 0 for lo, hi in padding):
        return xp, padding
    cropped = np.ascontiguousarray(pad(xp, [(min(lo, 0), min(hi, 0)) for lo, hi in padding]))
    return cropped, [(max(lo, 0), max(hi, 0)) for lo, hi in padding]


def _direct_plan(
    xp: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_size: Sequence[int],
    algorithm: str | None,
    padding: Sequence[tuple[int, int]] | None,
) -> tuple[ConvProblem, Algorithm, Any, Any]:
    """:func:`direct_conv`'s checks and choice, remembered for arrays of this layout
    (``dispatch._PLANS``): ``(problem, algorithm, crop to apply first, zero padding
    left to apply)``; a padding of zeros only is ``None``."""
    def make() -> tuple[ConvProblem, Algorithm, Any, Any]:
        cropped, rest = _crop_negative(xp, padding)
        if rest is not None and not any(lo or hi for lo, hi in rest):
            rest = None
        problem = ConvProblem(
            input_shape=(cropped.shape[0], *_padded_size(cropped, rest), cropped.shape[-1]),
            kernel_shape=tuple(kernel.shape),
            strides=tuple(strides),
            dilation=tuple(dilation),
            groups=groups,
            out_size=tuple(out_size),
            dtype=cropped.dtype,
        )
        chosen = plan(problem, cropped, kernel, algorithm, rest)
        return problem, chosen, _crop_of(cropped is xp, padding), _as_pairs(rest)

    return remembered_plan(
        ("direct", strides, dilation, groups, out_size, algorithm, padding), xp, kernel, make)


def _run_direct(planned: tuple[ConvProblem, Algorithm, Any, Any], xp: np.ndarray,
                kernel: np.ndarray, algorithm: str | None) -> np.ndarray:
    """Run a plan of :func:`_direct_plan` on its arrays."""
    problem, chosen, crop, padding = planned
    if crop is not None:
        xp = np.ascontiguousarray(pad(xp, crop))
    limits = None if algorithm is not None else value_limits(chosen, problem, xp, kernel)
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN propagate silently
        if limits is not None:
            return _direct_set_aside(problem, xp, kernel, chosen, limits, padding)
        if padding is not None and chosen.pads_zeros:
            return chosen.direct(xp, kernel, problem.strides, problem.dilation, problem.groups,
                                 problem.out_size, padding=padding)
        if padding is not None:
            xp = pad(xp, padding)
        return chosen.direct(
            xp, kernel, problem.strides, problem.dilation, problem.groups, problem.out_size
        )


def _bound_direct(planned: tuple[ConvProblem, Algorithm, Any, Any], algorithm: str | None
                  ) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """What :func:`_run_direct` does with a plan, as one function of the arrays (the
    algorithm's :attr:`~.dispatch.Algorithm.bind` where it has one), for a plan that
    crops nothing and whose algorithm takes every value (no ``value_gain``, or named);
    ``None`` for the others. Like :func:`_run_direct` it lets inf and NaN propagate
    silently (``np.errstate`` as a decorator: half the time of a ``with`` block)."""
    problem, chosen, crop, padding = planned
    if crop is not None or (chosen.value_gain is not None and algorithm is None):
        return None
    strides, dilation, groups, out_size = (problem.strides, problem.dilation, problem.groups,
                                           problem.out_size)
    run: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
    if padding is not None:
        if chosen.pads_zeros:
            def run(xp: np.ndarray, kernel: np.ndarray) -> np.ndarray:
                return chosen.direct(xp, kernel, strides, dilation, groups, out_size,
                                     padding=padding)
        else:
            def run(xp: np.ndarray, kernel: np.ndarray) -> np.ndarray:
                return chosen.direct(pad(xp, padding), kernel, strides, dilation, groups,
                                     out_size)
    elif chosen.bind is not None:
        run = chosen.bind(problem)
    if run is None:
        def run(xp: np.ndarray, kernel: np.ndarray) -> np.ndarray:
            return chosen.direct(xp, kernel, strides, dilation, groups, out_size)
    quiet: Callable[[np.ndarray, np.ndarray], np.ndarray] = np.errstate(
        invalid="ignore", over="ignore")(run)
    return quiet


def _bound_pool(resolved: ResolvedConv, pool: pooling.PoolPlan
                ) -> Callable[[np.ndarray, Any], np.ndarray]:
    """A pooling plan as one function of the prepared input (its kernel is ``None``)."""
    run = pooling.bind(resolved, pool)
    return lambda x_last, kernel: run(x_last)


def direct_conv(
    xp: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_size: Sequence[int],
    algorithm: str | None = None,
    padding: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """Run the algorithm contract on a padded channels-last input (dispatching).

    With ``padding`` (zeros, ``(before, after)`` per spatial axis) ``xp`` is
    not padded yet: the chosen algorithm pads it, or skips the padded cells
    if it can (``pads_zeros``). The arrays are checked against the problem
    first (:func:`.dispatch.plan`): a wrong shape, dtype, layout or an
    ``out_size`` that does not fit is a ValueError, never a read past a buffer.
    Negative padding crops.
    """
    planned = _direct_plan(xp, kernel, strides, dilation, groups, out_size, algorithm, padding)
    return _run_direct(planned, xp, kernel, algorithm)


def _padded_size(x: np.ndarray, padding: Sequence[tuple[int, int]] | None) -> tuple[int, ...]:
    """The spatial size of ``x`` once ``padding`` (or none) is applied."""
    if padding is None:
        return tuple(x.shape[1:-1])
    return tuple(n + lo + hi for n, (lo, hi) in zip(x.shape[1:-1], padding))


def _crop_of(uncropped: bool, padding: Sequence[tuple[int, int]] | None
             ) -> tuple[tuple[int, int], ...] | None:
    """The negative sides of ``padding`` (what :func:`_crop_negative` cut), ``None`` if none."""
    if uncropped or padding is None:
        return None
    return tuple((min(lo, 0), min(hi, 0)) for lo, hi in padding)


def _as_pairs(padding: Sequence[tuple[int, int]] | None) -> tuple[tuple[int, int], ...] | None:
    return None if padding is None else tuple((lo, hi) for lo, hi in padding)


#: Beyond this share of the outputs to sum directly, the whole layer is summed directly.
DIRECT_SHARE = 0.5


def _exact_direct(problem: ConvProblem, xp: np.ndarray, kernel: np.ndarray,
                  out_size: Sequence[int]) -> np.ndarray:
    """The cheapest algorithm without transforms, on a sub-problem of ``problem``."""
    sub = ConvProblem(tuple(xp.shape), tuple(kernel.shape), problem.strides, problem.dilation,
                      problem.groups, tuple(out_size), problem.dtype)
    exact = cheapest(sub, exact=True)
    if exact is None:
        raise ValueError(f"no registered algorithm without transforms applies to "
                         f"{describe(sub)}, and its values are not finite or too large")
    return exact.direct(np.ascontiguousarray(xp), np.ascontiguousarray(kernel), sub.strides,
                        sub.dilation, sub.groups, sub.out_size)


def _tap_ranges(cell: Sequence[int], problem: ConvProblem) -> list[tuple[slice, slice]] | None:
    """For a stride-1 problem, the (output slice, kernel-tap slice) per spatial axis of
    the outputs that read padded input ``cell`` and the taps they read it with; ``None``
    when no output reads it."""
    ranges = []
    for p, k, d, o in zip(cell, problem.kernel_size, problem.dilation, problem.out_size):
        first_tap = max(0, -(-(p - o + 1) // d))  # outputs p - t·d must be < o
        last_tap = min(k - 1, p // d)  # and >= 0
        if first_tap > last_tap:
            return None
        # outputs ascending p - last·d ... p - first·d, taps descending last ... first
        ranges.append((slice(p - last_tap * d, p - first_tap * d + 1, d),
                       slice(last_tap, first_tap - 1 if first_tap > 0 else None, -1)))
    return ranges


def _add_set_aside(y: np.ndarray, problem: ConvProblem, kernel: np.ndarray,
                   cells: np.ndarray, values: np.ndarray, clean: np.ndarray,
                   kernel_cells: np.ndarray, real: np.ndarray | None = None) -> None:
    """Add to ``y`` (computed without them) what the values set aside contribute, as a
    direct sum would, for a stride-1, one-group ``problem``: each input value
    (``values`` at ``cells``, padded-input coordinates) times the taps that read it,
    into the outputs that read it; then each kernel value at ``kernel_cells`` times
    the cells of ``clean`` (the padded input without the values set aside) it reads:
    its whole filter; with ``real`` (``(1, *spatial, 1)``, true at the cells of a
    transposed convolution's grid that hold an input value), only the cells that
    hold one, as a transposed convolution scatters its input (PyTorch's
    ``conv_transpose``): its inserted zeros are not multiplied."""
    for cell, value in zip(cells.tolist(), values):
        ranges = _tap_ranges(cell[1:-1], problem)
        if ranges is None:
            continue
        outputs: tuple[Any, ...] = (cell[0],) + tuple(r[0] for r in ranges)
        taps: tuple[Any, ...] = tuple(r[1] for r in ranges) + (cell[-1],)
        y[outputs] += value * kernel[taps]
    for index in kernel_cells.tolist():
        window: tuple[Any, ...] = tuple(
            slice(t * d, t * d + o) for t, d, o in
            zip(index[:-2], problem.dilation, problem.out_size))
        part = clean[(slice(None),) + window + (index[-2],)] * kernel[tuple(index)]
        if real is not None:
            part = np.where(real[(slice(None),) + window + (0,)], part, 0)
        y[..., index[-1]] += part


def _none_set_aside(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return a, np.zeros(a.shape, bool)


def _direct_set_aside(problem: ConvProblem, xp: np.ndarray, kernel: np.ndarray,
                      chosen: Algorithm, limits: Any, padding: Any) -> np.ndarray:
    """Run ``chosen`` on the values its transforms take, and add what the others
    contribute as a direct sum would (:func:`_add_set_aside`): a value set aside
    reaches exactly the outputs whose window reads it. When that is more work than
    half the layer, the whole layer is summed directly."""
    if padding is not None:
        xp = pad(xp, padding)
    strides, dilation, out_size = problem.strides, problem.dilation, problem.out_size
    inputs = set_aside(xp, limits.first)
    weights = set_aside(kernel, limits.second)
    taps = math.prod(problem.kernel_size)
    work = ((0 if inputs is None else int(inputs[1].sum())) * taps * problem.out_channels
            + (0 if weights is None else int(weights[1].sum())) * problem.batch
            * math.prod(out_size))
    if any(s != 1 for s in strides) or problem.groups != 1 or (
            work > DIRECT_SHARE * problem.flops / 2):
        return _exact_direct(problem, xp, kernel, out_size)
    clean, where = inputs or _none_set_aside(xp)
    clean_kernel, kernel_where = weights or _none_set_aside(kernel)
    y = chosen.direct(clean, clean_kernel, strides, dilation, problem.groups, out_size)
    _add_set_aside(y, problem, kernel, np.argwhere(where), xp[where], clean,
                   np.argwhere(kernel_where))
    return y


def _weight_grad(
    xp: np.ndarray,
    dy: np.ndarray,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    algorithm: str | None,
    padding: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    # with padding (zeros) xp is not padded yet, as in direct_conv
    def make() -> tuple[ConvProblem, Algorithm, Any, Any]:
        cropped, rest = _crop_negative(xp, padding)
        problem = ConvProblem(
            input_shape=(cropped.shape[0], *_padded_size(cropped, rest), cropped.shape[-1]),
            kernel_shape=(*kernel_size, cropped.shape[-1] // groups, dy.shape[-1]),
            strides=tuple(strides),
            dilation=tuple(dilation),
            groups=groups,
            out_size=tuple(dy.shape[1:-1]),
            dtype=cropped.dtype,
        )
        chosen = plan_weight_grad(problem, cropped, dy, algorithm, rest)
        return problem, chosen, _crop_of(cropped is xp, padding), _as_pairs(rest)

    problem, chosen, crop, padding = remembered_plan(
        ("weight_grad", kernel_size, strides, dilation, groups, algorithm, padding), xp, dy,
        make)
    if crop is not None:
        xp = np.ascontiguousarray(pad(xp, crop))
    assert chosen.weight_grad is not None
    limits = None if algorithm == chosen.name else value_limits(chosen, problem, xp, dy,
                                                                 spatial=False)
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN propagate silently
        if limits is not None:
            return _weight_grad_set_aside(problem, xp, dy, chosen, limits, padding)
        if padding is not None and chosen.pads_zeros:
            return chosen.weight_grad(xp, dy, problem.kernel_size, problem.strides,
                                      problem.dilation, groups, padding=padding)
        if padding is not None:
            xp = pad(xp, padding)
        return chosen.weight_grad(
            xp, dy, problem.kernel_size, problem.strides, problem.dilation, groups
        )


def _weight_grad_set_aside(problem: ConvProblem, xp: np.ndarray, dy: np.ndarray,
                           chosen: Algorithm, limits: Any, padding: Any) -> np.ndarray:
    """The weight gradient with ``chosen`` on the values its transforms take; the input
    channels and output filters that hold a value set aside are summed directly
    (``dk[..., c, f]`` reads only channel ``c`` of ``x`` and filter ``f`` of ``dy``:
    ``chosen`` is one-group)."""
    if padding is not None:
        xp = pad(xp, padding)
    inputs = set_aside(xp, limits.first)
    grads = set_aside(dy, limits.second)
    bad_in = (np.zeros(xp.shape[-1], bool) if inputs is None else
              inputs[1].reshape(-1, xp.shape[-1]).any(axis=0))
    bad_out = (np.zeros(dy.shape[-1], bool) if grads is None else
               grads[1].reshape(-1, dy.shape[-1]).any(axis=0))
    size, args = problem.kernel_size, (problem.strides, problem.dilation, problem.groups)

    def exact(x_part: np.ndarray, dy_part: np.ndarray) -> np.ndarray:
        x_part, dy_part = np.ascontiguousarray(x_part), np.ascontiguousarray(dy_part)
        sub = ConvProblem(x_part.shape, (*size, x_part.shape[-1], dy_part.shape[-1]),
                          *args, problem.out_size, problem.dtype)
        found = cheapest_weight_grad(sub, exact=True)
        assert found.weight_grad is not None
        return found.weight_grad(x_part, dy_part, size, *args)

    if float(np.mean(bad_in)) + float(np.mean(bad_out)) > DIRECT_SHARE:
        return exact(xp, dy)
    assert chosen.weight_grad is not None
    dk = chosen.weight_grad(xp if inputs is None else inputs[0],
                            dy if grads is None else grads[0], size, *args)
    if bad_in.any():
        dk[..., bad_in, :] = exact(xp[..., bad_in], dy)
    if bad_out.any():
        dk[..., bad_out] = exact(xp, dy[..., bad_out])
    return dk


def _transposed_plan(
    x_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    padding: Sequence[tuple[int, int]],
    dtype: Any,
    algorithm: str | None = None,
    x: np.ndarray | None = None,
    kernel: np.ndarray | None = None,
) -> tuple[tuple[int, ...], Algorithm | None]:
    """Output size, and the ``kind="transposed"`` algorithm to run (``None``: the grid way),
    decided by :func:`.dispatch.plan_transposed` (with the values check given the arrays)."""
    rank = len(strides)
    taps = tuple(kernel_shape[:rank])
    grid_size = tuple(zero_inserted_size(n, s) + lo + hi
                      for n, s, (lo, hi) in zip(x_shape[1:-1], strides, padding))
    out_size = tuple(transposed_grid_output_size(*axis)
                     for axis in zip(x_shape[1:-1], taps, strides, dilation, padding))
    swapped_shape = (*taps, kernel_shape[-1] // groups, kernel_shape[-2] * groups)
    grid_problem = ConvProblem(
        (x_shape[0], *grid_size, x_shape[-1]), swapped_shape, (1,) * rank, tuple(dilation),
        groups, out_size, np.dtype(dtype))
    problem = ConvProblem(tuple(x_shape), tuple(kernel_shape), tuple(strides), tuple(dilation),
                          groups, out_size, np.dtype(dtype))
    return out_size, plan_transposed(problem, grid_problem, algorithm, x, kernel)


def transposed_problem(x_shape: Sequence[int], kernel_shape: Sequence[int],
                       strides: Sequence[int], dilation: Sequence[int], groups: int,
                       out_size: Sequence[int], dtype: Any) -> ConvProblem:
    """The :class:`ConvProblem` a ``kind="transposed"`` algorithm sees."""
    return ConvProblem(tuple(x_shape), tuple(kernel_shape), tuple(strides), tuple(dilation),
                       groups, tuple(out_size), np.dtype(dtype))


def _transposed_set_aside(x: np.ndarray, kernel: np.ndarray, strides: Sequence[int],
                          dilation: Sequence[int], padding: Sequence[tuple[int, int]],
                          out_size: Sequence[int], chosen: Algorithm, limits: Any
                          ) -> np.ndarray:
    """Like :func:`_direct_set_aside`, for a one-group transposed algorithm: the values
    set aside are added back on the zero-inserted grid, with the flipped kernel."""
    rank = len(strides)
    inputs = set_aside(x, limits.first)
    weights = set_aside(kernel, limits.second)
    clean, where = inputs or _none_set_aside(x)
    clean_kernel, kernel_where = weights or _none_set_aside(kernel)
    direct_kernel = flip_swap(kernel, 1)
    grid = zero_insert(clean, strides, padding)
    grid_problem = ConvProblem(grid.shape, direct_kernel.shape, (1,) * rank, tuple(dilation), 1,
                               tuple(out_size), x.dtype)
    set_aside_cells = int(where.sum()) * math.prod(kernel.shape[:rank]) * kernel.shape[-2]
    set_aside_taps = int(kernel_where.sum()) * x.shape[0] * math.prod(out_size)
    if set_aside_cells + set_aside_taps > DIRECT_SHARE * grid_problem.flops / 2:
        exact = cheapest(transposed_problem(x.shape, kernel.shape, strides, dilation, 1,
                                            out_size, x.dtype), kind="transposed", exact=True)
        if exact is not None:  # scatters the input, as PyTorch's conv_transpose
            return exact.direct(x, kernel, tuple(strides), tuple(dilation), 1,
                                tuple(tuple(p) for p in padding), tuple(out_size))
        return _exact_direct(grid_problem, zero_insert(x, strides, padding), direct_kernel,
                             out_size)
    y = chosen.direct(clean, clean_kernel, tuple(strides), tuple(dilation), 1,
                      tuple(tuple(p) for p in padding), tuple(out_size))
    cells = np.argwhere(where)
    cells[:, 1:-1] = cells[:, 1:-1] * np.asarray(strides) + np.asarray([lo for lo, _ in padding])
    real = zero_insert(np.ones((1, *x.shape[1:-1], 1), bool), strides, padding)
    _add_set_aside(y, grid_problem, direct_kernel, cells, x[where], grid,
                   np.argwhere(flip_swap(kernel_where, 1)), real)
    return y


def transposed_algorithm(
    x_shape: Sequence[int],
    kernel_shape: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    padding: Sequence[tuple[int, int]],
    dtype: Any = np.float32,
) -> str:
    """The name of the algorithm :func:`transposed_conv` runs for these shapes.

    >>> transposed_algorithm((1, 8, 8, 4), (3, 3, 2, 4), (2, 2), (1, 1), 4, ((2, 2), (2, 2)))
    'depthwise'
    """
    rank = len(strides)
    out_size, transposed = _transposed_plan(x_shape, kernel_shape, strides, dilation, groups,
                                            padding, dtype)
    if transposed is not None:
        return transposed.name
    grid_size = tuple(window_reach(o, k, 1, d)
                      for o, k, d in zip(out_size, kernel_shape[:rank], dilation))
    swapped = (*kernel_shape[:rank], kernel_shape[-1] // groups, kernel_shape[-2] * groups)
    return choose(ConvProblem((x_shape[0], *grid_size, x_shape[-1]), swapped, (1,) * rank,
                              tuple(dilation), groups, out_size, np.dtype(dtype))).name


def transposed_conv(
    x: np.ndarray,
    kernel: np.ndarray,
    strides: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    padding: Sequence[tuple[int, int]],
    algorithm: str | None = None,
) -> np.ndarray:
    """Transposed convolution of channels-last ``x`` with kernel ``(*K, out/g, in)``.

    ``padding`` is the padding of the zero-inserted input (the resolved
    spec's ``.padding``; negative values crop): the result is the stride-1
    convolution of that grid with :func:`flip_swap` of the kernel. A
    registered ``kind="transposed"`` algorithm (output phases, col2im, ...)
    runs instead when it is named, or when it is cheaper than the best direct
    algorithm on that grid: one decision, :func:`.dispatch.plan_transposed`.
    """
    def make() -> tuple[Any, ...]:
        out_size, transposed = _transposed_plan(x.shape, kernel.shape, strides, dilation,
                                                groups, padding, x.dtype, algorithm, x, kernel)
        problem = None if transposed is None else transposed_problem(
            x.shape, kernel.shape, strides, dilation, groups, out_size, x.dtype)
        stride1 = all(s == 1 for s in strides)
        in_place = stride1 and all(lo >= 0 and hi >= 0 for lo, hi in padding)
        return out_size, transposed, problem, _as_pairs(padding), stride1, in_place

    # the checks and the choice, remembered for arrays of this layout (dispatch._PLANS)
    out_size, transposed, problem, pairs, stride1, in_place = remembered_plan(
        ("transposed", strides, dilation, groups, padding, algorithm), x, kernel, make)
    if transposed is not None:
        with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN propagate silently
            limits = None if algorithm is not None else value_limits(
                transposed, problem, x, kernel)
            if limits is not None:
                return _transposed_set_aside(x, kernel, strides, dilation, padding, out_size,
                                             transposed, limits)
            return transposed.direct(x, kernel, problem.strides, problem.dilation, groups,
                                     pairs, out_size)
    rank = len(out_size)
    if in_place:
        # stride 1 inserts nothing: the padding is plain zero padding, which the
        # direct algorithm may read in place
        return direct_conv(x, flipped(kernel, groups), (1,) * rank, dilation, groups,
                           out_size, algorithm, padding=pairs)
    grid = pad(x, padding) if stride1 else zero_insert(x, strides, padding)
    return direct_conv(
        grid, flipped(kernel, groups), (1,) * rank, dilation, groups, out_size, algorithm
    )


# --------------------------------------------------------------------------- public


def conv(
    x: Any,
    kernel: Any,
    spec: ConvSpec,
    bias: Any = None,
    algorithm: str | None = None,
    backend: str = "numpy",
) -> np.ndarray:
    """Run ``spec`` (convolution, transposed convolution or pooling) on ``x``.

    Parameters
    ----------
    x
        ``(N, *spatial, C)`` for ``channels_last`` specs, ``(N, C, *spatial)``
        for ``channels_first`` (the batch axis may be left out).
    kernel
        ``(*K, C // groups, F)`` (Keras's layout); for a transposed spec
        ``(*K, F // groups, C)``; ``None`` for pooling.
        :func:`~convarith.engine.kernel_from_torch` converts PyTorch's.
    spec
        The :class:`~convarith.ConvSpec`; it is resolved with ``x.shape``.
    bias
        Optional ``(F,)`` added to every output cell.
    algorithm
        Force a registered algorithm (see :func:`available_algorithms`).
    backend
        ``"numpy"`` (this engine), or ``"torch"`` / ``"jax"`` to run the same
        spec through that framework (:mod:`convarith.backends`; GPU if present).

    Returns
    -------
    numpy.ndarray
        In ``x``'s layout and the inputs' dtype (float16 is computed in
        float32; integers in float64, except max pooling, which keeps an integer
        dtype as onnxruntime does).

    Examples
    --------
    >>> import numpy as np
    >>> from convarith import ConvSpec
    >>> x = np.ones((1, 5, 5, 2), dtype=np.float32)
    >>> conv(x, np.ones((3, 3, 2, 4), np.float32), ConvSpec(3, padding="same")).shape
    (1, 5, 5, 4)
    >>> conv(np.arange(4.0).reshape(1, 4, 1), None, ConvSpec(2, strides=2, pool="max", rank=1))[0, :, 0]
    array([1., 3.])
    """
    if backend != "numpy":
        from ..backends import BACKENDS, run  # the one router: the backends never call back

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if algorithm is not None:
            raise ValueError(f"algorithm={algorithm!r} applies to the NumPy engine, not backend={backend!r}")
        return run(x, kernel, spec, bias, backend=backend)
    key = _call_key(x, kernel, spec, bias, algorithm)
    if key is not None:
        remembered: CallPlan | None = recalled_plan(key)
        if remembered is not None and remembered.plain:
            # a layer called before, on arrays it takes as they are: its bound plan alone
            assert remembered.run is not None
            result = remembered.run(x, kernel)
            if bias is not None:
                result += bias
            return np.ascontiguousarray(result)
    planned, prepared = _keyed_call_plan(key, x, kernel, spec, bias, algorithm)
    if (prepared is None and planned.channels_first and planned.pool is not None
            and planned.pool.whole and bias is None):
        # a global pool of channels-first data: its cells are contiguous already
        pooled = pooling.global_channels_first(
            x[None] if planned.unbatched else x, planned.pool, str(spec.pool),
            planned.compute_dtype)
        if pooled is not None:
            return np.ascontiguousarray(pooled[0] if planned.unbatched else pooled,
                                        dtype=planned.result_dtype)
    if prepared is not None:
        x_last, kernel_last, bias_last = prepared.x, prepared.kernel, prepared.bias
    else:
        x_last, kernel_last, bias_last = planned.arrays(x, kernel, bias)
    resolved = planned.resolved
    y: np.ndarray
    if planned.run is not None:
        y = planned.run(x_last, kernel_last)
    elif spec.pool is not None:
        y = pooling.forward(x_last, resolved, planned.pool)
    elif planned.direct is not None:
        assert kernel_last is not None
        y = _run_direct(planned.direct, x_last, kernel_last, algorithm)
    elif spec.transposed:
        assert kernel_last is not None
        y = transposed_conv(
            x_last, kernel_last, resolved.spec.strides,
            resolved.spec.dilation, planned.groups, resolved.padding, algorithm,
        )
    else:
        assert kernel_last is not None
        xp = pad(x_last, resolved.padding, spec.padding_mode)
        y = direct_conv(xp, kernel_last, spec.strides, spec.dilation, planned.groups,
                        resolved.output_size, algorithm)
    if bias_last is not None:
        y += bias_last
    # back to the caller's layout, batch and dtype (finish(), without a Prepared)
    if planned.channels_first:
        y = to_channels_first(y, planned.result_dtype)
    if planned.unbatched:
        y = y[0]
    result = np.ascontiguousarray(y, dtype=planned.result_dtype)
    if spec.pool == "max":  # the max of integers is one of them: keep the dtype, as onnxruntime does
        source = np.asarray(x).dtype
        if source.kind in "iu" and np.isfinite(result).all():
            result = result.astype(source)
    return result


#: Below this many forward FLOPs, with two or more workers, :func:`conv_vjp` runs each
#: gradient on one thread: the input and the kernel gradients side by side, or the
#: kernel gradient alone. A small layer's chunks are too few and too short to keep
#: two workers busy (each call's set-up, the products' partial sums and the wait at
#: its end are serial; measured on 2 cores, 3×3 "same", batch 32, 16²: for a
#: 38-MFLOP layer two workers took 1.0-1.4× one thread's wall time and 1.2-1.65× its
#: CPU time, for an 85-MFLOP one 0.97× wall for 1.1× CPU), while the two gradients are
#: independent and of the same FLOPs. The model of ``convarith train`` (3×3, 16 -> 16
#: on 32 images of 16², 38 MFLOPs) runs its backward pass this way.
SMALL_BACKWARD_FLOPS = 1e8

#: Below this many forward FLOPs :func:`conv_vjp` runs both gradients on the calling
#: thread, one after the other: handing one to a second worker costs more than it
#: runs. Measured on 2 cores (networks suite at batch 1, backward, two threads, wall
#: time at real-time priority, convarith and PyTorch interleaved in one process, two
#: runs each): per-layer geomean x PyTorch over ResNet-50, ResNeXt-50, MobileNetV2,
#: EfficientNet-B0 and WaveNet 0.81 and 0.87 side by side, 1.15 and 1.18 this way
#: (MobileNetV2's total 0.71 -> 1.16-1.32, EfficientNet-B0's 0.79-0.93 -> 1.43-1.52;
#: thresholds 3e6 and 1e7 gave 1.09 and 1.37 on those two, 3e7 1.30).
TINY_BACKWARD_FLOPS = 2e7

#: With exactly two workers, below this many forward FLOPs :func:`conv_vjp` runs the input
#: and the kernel gradients of one image (see :func:`_side_by_side_on_two`) side by side,
#: one thread each, at any size from :data:`TINY_BACKWARD_FLOPS`: each gradient's own
#: split over two threads (a few long products, the helper's start, BLAS's threads
#: spinning between calls) ran them 1.2-2.3× slower on 2 cores (wall time at real-time
#: priority, both ways interleaved in one process, 00:30-00:45 UTC 2026-12-07): 3×3 64 ->
#: 128 on one 56² image 13.5 -> 8.4 ms, 3×3 64 on one 112² image 11.9 -> 7.1, WaveNet's
#: 64 -> 128 on 4096 9.6 -> 4.3 (the networks suite: WaveNet's layers at batch 1 0.51-0.78
#: -> 0.98-1.21 × PyTorch, U-Net's 3×3 on 56² and 28² 0.53-0.70 -> 0.79-0.86).
#: Larger layers keep each gradient's split: side by side, their working memory is
#: alive at once (3×3 512 on 16×7²: peak 0.98 -> 1.84× the operands).
TWO_CORES_FLOPS = 1.5e9

#: Bytes of ``x`` and ``dy`` together above which a backward pass under
#: :data:`SMALL_BACKWARD_FLOPS` still runs each gradient on every worker, one after the
#: other, rather than the two side by side: beyond the last-level cache (32 MiB on the
#: 2-core EPYC) both stream from memory at once and share its bandwidth. Measured there
#: (two threads, wall time, quiet): U-Net's 1×1 64 -> 2 on 16×112² (x 49 MiB) 15.8 ms
#: side by side, 9.2 one after the other; MobileNetV2's 16 -> 96 on 16×56² (21.5 MiB)
#: 2.02 and 2.00, EfficientNet's 32 -> 16 on 16×56² 0.80 and 0.81.
SIDE_BY_SIDE_BYTES = 32 << 20


def _side_by_side_on_two(x: np.ndarray, kernel: np.ndarray, dy: np.ndarray, rank: int
                         ) -> bool:
    """Whether :data:`TWO_CORES_FLOPS` applies: one image, more than one tap, and a kernel
    no larger than ``x`` and ``dy`` together. The others ran slower side by side (the
    networks suite, two threads: 1×1 layers at batch 1 and 16, e.g. ResNet-50's 64 -> 256
    on 16×28² 7.1 -> 11.9 ms, where one gradient is much the longer, and the 7×7 stride 2
    stems at batch 16 20.9 -> 37.2 ms), or held too much memory at once (the kernel's
    flipped copy and transforms beside the other gradient's workspace)."""
    return (x.shape[0] == 1 and math.prod(kernel.shape[:rank]) > 1
            and kernel.size <= x.size + dy.size)


#: Output cells per image up to which a grouped convolution's two gradients at stride 1
#: (groups of several channels, not depthwise) run side by side on two workers at any
#: batch (:func:`_grouped_pair`). On such small grids each gradient's own split over two
#: threads gains little: ResNeXt-50's 3×3 g32 512 on 16 images of 7² took 2.34 ms on two
#: quiet threads (the networks suite, 10:36 UTC 2026-12-07), 2.98 on one (CPU time);
#: 1024 on 16×4² 2.87 and 5.04. At stride 1 the input gradient is the forward pass's
#: convolution, as long as the kernel gradient (1.44 and 1.40 ms; 2.39 and 2.44), and
#: side by side each thread's CPU time was 1.49-1.68 and 1.36-1.62 ms (2.35-2.65 and
#: 2.07-2.62; medians and minima of 60 calls, busy machine). At stride 2 the input
#: gradient is the shorter (1024 on 16×7²: 1.87 against 2.78 ms alone, 1.76-1.93 against
#: 2.92-3.97 side by side, where the two threads took 3.69 ms one after the other).
#: Quiet machine, two threads, both ways in alternating processes (the suite's pattern,
#: medians of two runs of 4 and 6 rounds): 1024 on 16×4² 3.16 and 3.45 ms side by side
#: against 3.40 and 4.17; 512 on 16×7² 2.10 and 2.74 against 1.97 and 2.66 (even).
GROUPED_PAIR_CELLS = 64


def _grouped_pair(x: np.ndarray, kernel: np.ndarray, dy: np.ndarray,
                  strides: Sequence[int]) -> bool:
    """Whether a (direct) grouped convolution's gradients run side by side on two at any
    batch: stride 1, groups of more than one input channel but not one group, more than
    one tap, at most :data:`GROUPED_PAIR_CELLS` output cells per image, and a kernel no
    larger than ``x`` and ``dy`` together (the memory of :func:`_side_by_side_on_two`)."""
    rank = len(strides)
    return (all(s == 1 for s in strides) and 1 < kernel.shape[-2] < x.shape[-1]
            and math.prod(kernel.shape[:rank]) > 1
            and math.prod(dy.shape[1:1 + rank]) <= GROUPED_PAIR_CELLS
            and kernel.size <= x.size + dy.size)


#: A grouped layer's multiply-adds (narrow groups, not depthwise) count this many times
#: against :data:`TINY_BACKWARD_FLOPS`: its kernels run at about a sixth of a dense
#: layer's rate (16 against 100 GFLOP/s on one core), so a batch-1 grouped backward
#: pass under the threshold still took 0.4-0.85 ms on the calling thread alone
#: (ResNeXt's 3×3 s2 g32 256 on one 28² image: 0.37× PyTorch's two threads).
GROUPED_TINY_SCALE = 6.0


def _both_gradients(input_grad: Any, kernel_grad: Any, need_input_grad: bool,
                    multiply_adds: int, pairs_on_two: bool = False,
                    operand_bytes: int = 0, tiny_scale: float = 1.0,
                    problem: Callable[[], Hashable] | None = None) -> tuple[Any, Any]:
    """``(input_grad() or None, kernel_grad())``, run in one of
    :data:`.gradient_modes.MODES`.

    The constants choose: for a backward pass of ``multiply_adds`` (the forward pass's)
    below :data:`SMALL_BACKWARD_FLOPS` with two or more workers and ``x`` and ``dy`` of
    at most :data:`SIDE_BY_SIDE_BYTES` (``operand_bytes``), or below
    :data:`TWO_CORES_FLOPS` with exactly two (both gradients wanted, and
    ``pairs_on_two``: :func:`_side_by_side_on_two`), each on one thread
    (:func:`~.algorithms._threads.thread_limit`), the two side by side on two workers
    (``"pair"``; below :data:`TINY_BACKWARD_FLOPS`, the multiply-adds counted
    ``tiny_scale`` times, one after the other on the calling thread, ``"one"``);
    otherwise one after the other, each on every worker (``"all"``). Where they choose
    side by side, the first calls of ``problem()`` (a key of the call's shapes) time it
    against ``"pair_swapped"`` (the input gradient on the calling thread) and ``"one"``
    and keep the quickest (:mod:`.gradient_modes`; not with ``CONVARITH_AUTOTUNE=0``).
    An error of either gradient is raised here."""
    workers = worker_count()
    if workers < 2:
        return (input_grad() if need_input_grad else None), kernel_grad()
    small = 2 * multiply_adds < SMALL_BACKWARD_FLOPS and operand_bytes <= SIDE_BY_SIDE_BYTES
    side_by_side = (need_input_grad and pairs_on_two and workers == 2
                    and 2 * multiply_adds < TWO_CORES_FLOPS)
    if not (small or side_by_side):
        return (input_grad() if need_input_grad else None), kernel_grad()
    flops = 2 * multiply_adds * tiny_scale
    static = "one" if flops < TINY_BACKWARD_FLOPS or not need_input_grad else "pair"
    measured = static == "pair" and problem is not None and gradient_modes.measuring()
    key = problem() if measured and problem is not None else None
    mode, timed = gradient_modes.next_mode(key, static, gradient_modes.CANDIDATES) if (
        measured) else (static, False)
    start = time.perf_counter() if timed else 0.0
    if mode == "one" and measured:
        # BLAS on one thread too, as side by side: the kernel gradient's products then
        # add in the same order either way (BLAS on two threads changed its last bits)
        with thread_limit(1), blas_single_threaded():
            done = input_grad(), kernel_grad()
    elif mode == "one":
        with thread_limit(1):
            done = (input_grad() if need_input_grad else None), kernel_grad()
    else:
        done = _side_by_side(input_grad, kernel_grad, input_first=mode == "pair_swapped")
    if timed:
        gradient_modes.record(key, mode, time.perf_counter() - start)
    return done


def _side_by_side(input_grad: Any, kernel_grad: Any, input_first: bool = False
                  ) -> tuple[Any, Any]:
    """The two gradients on two workers, one thread each: ``(d_input, d_kernel)``."""
    # the calling thread takes the first job at once, a held helper the second once the
    # caller's job lets go of the GIL (run_pair; a helper that has not taken it by the
    # end of the first job leaves it to the caller): by default the kernel gradient,
    # often the longer (per-tap products), is first; ``input_first`` puts the input
    # gradient first (gradient_modes' "pair_swapped")
    jobs = (input_grad, kernel_grad) if input_first else (kernel_grad, input_grad)

    def run(index: int) -> Any:
        with thread_limit(1):
            return jobs[index]()

    with blas_single_threaded() as limited:
        if not limited:  # BLAS's own threads would share the cores with the pair's
            done = (run(0), run(1))
        else:
            done = run_pair(lambda: run(0), lambda: run(1))
    return (done[0], done[1]) if input_first else (done[1], done[0])


@overload
def conv_vjp(
    x: Any, kernel: Any, spec: ConvSpec, d_out: Any, bias: Any = None,
    algorithm: str | None = None, *, need_input_grad: Literal[True] = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]: ...


@overload
def conv_vjp(
    x: Any, kernel: Any, spec: ConvSpec, d_out: Any, bias: Any = None,
    algorithm: str | None = None, *, need_input_grad: bool,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]: ...


def conv_vjp(
    x: Any,
    kernel: Any,
    spec: ConvSpec,
    d_out: Any,
    bias: Any = None,
    algorithm: str | None = None,
    *,
    need_input_grad: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Gradients of ``sum(conv(x, kernel, spec, bias) * d_out)``.

    Returns ``(d_input, d_kernel, d_bias)`` in the layouts of ``x``,
    ``kernel`` and ``bias``; ``d_kernel`` is ``None`` for pooling and
    ``d_bias`` is ``None`` when there is no bias. Max pooling sends each
    gradient to the first maximum of its window (as PyTorch does).
    ``need_input_grad=False`` skips the input gradient (``d_input`` is
    ``None``): a network's first layer needs only its weight gradients.

    Examples
    --------
    >>> import numpy as np
    >>> from convarith import ConvSpec
    >>> x, k = np.arange(4.0).reshape(1, 4, 1), np.ones((2, 1, 1))
    >>> dx, dk, db = conv_vjp(x, k, ConvSpec(2, rank=1), np.ones((1, 3, 1)), bias=np.zeros(1))
    >>> dx[0, :, 0], dk[:, 0, 0], db
    (array([1., 2., 2., 1.]), array([3., 6.]), array([3.]))
    >>> no_dx, dk, _ = conv_vjp(x, k, ConvSpec(2, rank=1), np.ones((1, 3, 1)),
    ...                         need_input_grad=False)
    >>> no_dx is None, dk[:, 0, 0]
    (True, array([3., 6.]))
    """
    if not isinstance(need_input_grad, bool):
        raise TypeError(f"need_input_grad must be True or False, got {need_input_grad!r}")
    key = _call_key(x, kernel, spec, bias, algorithm)
    if key is not None:
        remembered: CallPlan | None = recalled_plan(key)
        if (remembered is not None and remembered.tiny_pointwise is not None
                and type(d_out) is np.ndarray and d_out.shape == remembered.tiny_pointwise
                and d_out.dtype == remembered.compute_dtype and d_out.flags.c_contiguous):
            # a small 1×1 layer called before, on arrays its plan takes as they are
            return _tiny_pointwise_vjp(x, kernel, d_out, bias, need_input_grad)
    planned, first = _keyed_call_plan(key, x, kernel, spec, bias, algorithm)
    prepared = first if first is not None else Prepared(
        *planned.arrays(x, kernel, bias), planned.resolved, planned.groups,
        planned.result_dtype, planned.channels_first, planned.unbatched)
    dy = _grad_in(d_out, prepared)
    resolved = prepared.resolved
    strides: tuple[int, ...] = spec.strides
    dilation: tuple[int, ...] = spec.dilation
    groups = prepared.groups
    d_kernel: np.ndarray | None = None
    d_x: np.ndarray | None = None
    if spec.pool is not None:
        d_x = pooling.backward(prepared.x, resolved, dy, planned.pool) if need_input_grad else None
    elif spec.transposed:
        kernel = prepared.kernel
        assert kernel is not None
        dy_cropped = np.ascontiguousarray(pad(dy, resolved.crop))
        d_x, d_kernel = _both_gradients(
            lambda: direct_conv(dy_cropped, kernel, strides, dilation, groups,
                                resolved.input_size, algorithm),
            lambda: _weight_grad(dy_cropped, prepared.x, spec.kernel_size, strides, dilation,
                                 groups, algorithm),
            need_input_grad, prepared.x.size // prepared.x.shape[-1] * kernel.size,
            _side_by_side_on_two(prepared.x, kernel, dy, len(strides)),
            prepared.x.nbytes + dy.nbytes,
            problem=lambda: ("transposed", prepared.x.shape, kernel.shape, dy.shape, strides,
                             dilation, groups, resolved.crop, dy.dtype.char, algorithm,
                             worker_count()))
    else:
        kernel = prepared.kernel
        assert kernel is not None
        zeros = spec.padding_mode == "zeros"
        xp = prepared.x if zeros else pad(prepared.x, resolved.padding, spec.padding_mode)

        def input_grad() -> np.ndarray:
            if zeros and all(lo >= 0 and hi >= 0 for lo, hi in resolved.padding):
                # the zero cells' gradient is dropped: leave them out of the grid (crop it)
                # rather than compute them and crop the result (a third more cells at 16x16)
                # a tuple: the plan is remembered under it (a list is planned every call)
                return transposed_conv(dy, kernel, strides, dilation, groups, tuple(
                    (a - lo, b - hi) for (a, b), (lo, hi) in
                    zip(resolved.input_gradient_padding, resolved.padding)), algorithm)
            d_xp = transposed_conv(dy, kernel, strides, dilation, groups,
                                   resolved.input_gradient_padding, algorithm)
            return pad_adjoint(d_xp, resolved.padding, spec.padding_mode)

        def kernel_grad() -> np.ndarray:
            return _weight_grad(
                xp, dy, spec.kernel_size, strides, dilation, groups, algorithm,
                resolved.padding if zeros else None,
            )

        d_x, d_kernel = _both_gradients(input_grad, kernel_grad, need_input_grad,
                                        dy.size // dy.shape[-1] * kernel.size,
                                        _side_by_side_on_two(prepared.x, kernel, dy,
                                                             len(strides))
                                        or _grouped_pair(prepared.x, kernel, dy, strides),
                                        prepared.x.nbytes + dy.nbytes,
                                        GROUPED_TINY_SCALE if 1 < groups < prepared.x.shape[-1]
                                        else 1.0,
                                        lambda: ("direct", prepared.x.shape, kernel.shape,
                                                 dy.shape, strides, dilation, groups,
                                                 resolved.padding, spec.padding_mode,
                                                 dy.dtype.char, algorithm, worker_count()))
    d_bias = None
    if prepared.bias is not None:
        d_bias = _bias_grad(dy.reshape(-1, dy.shape[-1])).astype(prepared.result_dtype)
    d_input = finish(d_x, prepared)
    if d_kernel is not None:
        d_kernel = d_kernel.astype(prepared.result_dtype, copy=False)
    return d_input, d_kernel, d_bias
