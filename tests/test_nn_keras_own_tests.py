"""Keras 3's own layer tests (the ``*_test.py`` files shipped in the keras wheel), run
against convarith.nn through a small adapter.

Every test method of those modules runs with ``layers`` replaced by a proxy whose
layer classes are Keras's own, subclassed so that each concrete call also builds the
convarith layer from the same arguments, copies the Keras weights into it, runs it on
the same inputs and compares (rtol 1e-4, float32) and ``get_config()``; the Keras
result is returned so Keras's own assertions run unchanged. The conv/pool tests of
``keras/src/ops/nn_test.py`` run the same way with ``knn.conv`` etc. compared with
``convarith.engine.api``. Calls on symbolic tensors (KerasTensor, jit tracers), masked
calls and non-float32 dtype policies are counted as not compared, with the reason.

Besides, every case that checks a layer through Keras's ``run_layer_test`` is
redirected: the adapter builds the convarith layer of the same class name from the same arguments,
copies the Keras layer's weights into it, and compares its output with Keras's
(rtol 1e-4, float32), with the test's expected output and shape when it gives them,
and ``get_config()`` with Keras's. Tests that exercise Keras internals are listed
in ``NOT_APPLICABLE`` with the reason.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import unittest
from typing import Any

import numpy as np
import pytest

from convarith import nn

keras = pytest.importorskip("keras")
pytest.importorskip("absl")

ALL_MODULES = [
    "convolutional.conv_test", "convolutional.conv_transpose_test",
    "convolutional.depthwise_conv_test", "convolutional.separable_conv_test",
    "pooling.max_pooling_test", "pooling.average_pooling_test",
    "pooling.global_average_pooling_test", "pooling.global_max_pooling_test",
    "reshaping.cropping1d_test", "reshaping.cropping2d_test", "reshaping.cropping3d_test",
    "reshaping.zero_padding1d_test", "reshaping.zero_padding2d_test",
    "reshaping.zero_padding3d_test", "reshaping.up_sampling1d_test",
    "reshaping.up_sampling2d_test", "reshaping.up_sampling3d_test", "reshaping.permute_test",
    "reshaping.reshape_test", "merging.merging_test",
]
MODULES = (["reshaping.zero_padding2d_test", "reshaping.cropping2d_test", "merging.merging_test"]
           if os.environ.get("CI") == "true" else ALL_MODULES)

NOT_APPLICABLE = {
    "test_lora_rank_argument": "LoRA is refused by design (one clear error naming lora_rank)",
    "test_enable_lora": "LoRA (Keras's enable_lora on its own layer): refused by design",
    "test_permute_sparse": "sparse tensors: convarith.nn runs dense NumPy arrays",
    "test_sparse_dot": "sparse tensors: convarith.nn runs dense NumPy arrays",
}


class _Checked(Exception):
    """Raised by the adapter after its checks, so the Keras test stops there."""


def _adapter(layer_cls: Any, init_kwargs: dict[str, Any], input_shape: Any = None,
             input_data: Any = None, expected_output_shape: Any = None,
             expected_output: Any = None, expected_num_trainable_weights: Any = None,
             **_: Any) -> None:
    ours = getattr(nn, layer_cls.__name__)(**init_kwargs)
    theirs = layer_cls(**init_kwargs)
    several = isinstance(input_shape, (list, tuple)) and bool(input_shape) and \
        isinstance(input_shape[0], (list, tuple))
    if input_data is None:
        rng = np.random.default_rng(0)
        shapes = list(input_shape) if several else [input_shape]
        data = [rng.standard_normal(tuple(s)).astype(np.float32) for s in shapes]
        input_data = data if several else data[0]
    expected = np.asarray(theirs(input_data))
    if isinstance(input_data, (list, tuple)):
        got = ours([np.asarray(v, np.float32) for v in input_data])
    else:
        x = np.asarray(input_data, np.float32)
        ours.build(x.shape[1:])
        ours.set_weights([np.asarray(w) for w in theirs.get_weights()])
        got = ours(x)
        if expected_num_trainable_weights is not None:
            assert len(ours.trainable_weights) == expected_num_trainable_weights
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    if expected_output_shape is not None:
        assert tuple(got.shape) == tuple(expected_output_shape)
    if expected_output is not None:
        np.testing.assert_allclose(got, np.asarray(expected_output), rtol=1e-4, atol=1e-5)
    config, ours_config = theirs.get_config(), ours.get_config()
    ours_config["name"] = config["name"]
    assert json.loads(json.dumps(ours_config)) == json.loads(json.dumps(config))
    raise _Checked


class _Tally:
    """Counts of the calls the redirection compared, skipped (with why) and failed."""

    def __init__(self) -> None:
        self.compared = 0
        self.skipped: dict[str, int] = {}
        self.failures: list[str] = []

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _concrete(value: Any) -> np.ndarray | None:
    """``value`` as a NumPy array, or None when it is symbolic or traced (not comparable)."""
    import jax

    if isinstance(value, jax.core.Tracer) or type(value).__name__ == "KerasTensor":
        return None
    try:
        array = np.asarray(value)
    except Exception:
        return None
    return array if array.dtype.kind in "fiu" else None


def _close(got: np.ndarray, expected: np.ndarray) -> None:
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * max(1.0, scale))


def _compare_layer_call(layer: Any, args: tuple, kwargs: dict[str, Any], out: Any,
                        tally: _Tally) -> None:
    name = type(layer).__name__
    if not args:
        return tally.skip("called without positional input")
    if layer.dtype_policy.compute_dtype != "float32":
        return tally.skip(f"dtype policy {layer.dtype_policy.name}: convarith.nn computes float32")
    several = isinstance(args[0], (list, tuple))
    inputs = [_concrete(v) for v in (args[0] if several else [args[0]])]
    expected = _concrete(out)
    if expected is None or any(v is None for v in inputs):
        return tally.skip("symbolic or traced call (KerasTensor/jit plumbing)")
    masked = [getattr(v, "_keras_mask", None) for v in (args[0] if several else [args[0]])]
    positional_mask = len(args) > 1 and args[1] is not None  # layer(x, mask)
    if kwargs.get("mask") is not None or positional_mask or any(m is not None for m in masked):
        return tally.skip("masked call: convarith.nn has no masks")
    init_args, init_kwargs = layer._convarith_init
    try:
        ours = getattr(nn, name)(*init_args, **init_kwargs)
    except Exception as error:
        return tally.skip(f"refused by convarith.nn: {str(error)[:80]}")
    arrays = [np.asarray(v, np.float32) for v in inputs]
    try:
        if several:
            got = ours(arrays)
        else:
            ours.build(arrays[0].shape[1:])
            ours.set_weights([np.asarray(w) for w in layer.get_weights()])
            got = ours(arrays[0], training=bool(kwargs.get("training", False)))
        _close(np.asarray(got), expected.astype(np.float32))
        config, ours_config = layer.get_config(), ours.get_config()
        ours_config["name"] = config["name"]
        assert json.loads(json.dumps(ours_config)) == json.loads(json.dumps(config)), \
            "get_config differs"
    except Exception as error:
        shapes = [a.shape for a in arrays]
        tally.failures.append(f"{name}({init_kwargs}) on {shapes}: {type(error).__name__}: "
                              f"{str(error)[:300]}")
        return None
    tally.compared += 1
    return None


def _compared_class(cls: type, tally: _Tally) -> type:
    """A subclass of the Keras layer ``cls`` whose calls are also run through convarith.nn."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, *args, **kwargs)  # type: ignore[misc]
        self._convarith_init = (args, kwargs)

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = cls.__call__(self, *args, **kwargs)
        _compare_layer_call(self, args, kwargs, out, tally)
        return out

    compared = type(cls.__name__, (cls,), {"__init__": __init__, "__call__": __call__,
                                           "__module__": cls.__module__})
    compared.__qualname__ = cls.__qualname__
    return compared


class _LayersProxy:
    """``keras.src.layers`` with each layer convarith.nn also has replaced by a compared one."""

    def __init__(self, real: Any, tally: _Tally) -> None:
        self._real, self._tally = real, tally
        self._made: dict[str, type] = {}

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._real, name)
        if isinstance(value, type) and hasattr(nn, name) and name not in ("Input", "InputLayer"):
            if name not in self._made:
                self._made[name] = _compared_class(value, self._tally)
            return self._made[name]
        return value


OPS = {"conv": "conv_nd", "depthwise_conv": "depthwise_conv",
       "separable_conv": "separable_conv", "conv_transpose": "conv_transpose",
       "max_pool": "max_pool", "average_pool": "avg_pool"}


def _compared_op(name: str, real: Any, tally: _Tally) -> Any:
    """``keras.ops.<name>`` that also runs ``convarith.engine.api`` on the same arguments."""
    from convarith.engine import api

    signature = inspect.signature(real)

    def op(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        given = dict(bound.arguments)
        maybe = {k: _concrete(v) for k, v in given.items()
                 if k in ("inputs", "kernel", "depthwise_kernel", "pointwise_kernel")}
        arrays = {k: v for k, v in maybe.items() if v is not None}
        expected = _concrete(out)
        if expected is None or len(arrays) < len(maybe):
            tally.skip("symbolic or traced call (KerasTensor/jit plumbing)")
            return out
        if any(v.dtype != np.float32 and v.dtype != np.float64 for v in arrays.values()):
            tally.skip("non-float32 dtype: convarith computes float32")
            return out
        positional = [arrays[k].astype(np.float32) for k in given if k in arrays]
        given = {k: v for k, v in given.items() if k not in arrays}
        given["data_format"] = given["data_format"] or "channels_last"
        x = positional[0]
        try:
            got = getattr(api, OPS[name])(*positional, **given)
            _close(np.asarray(got), expected.astype(np.float32))
        except Exception as error:
            tally.failures.append(f"ops.{name}({given}) "
                                  f"on {x.shape}: {type(error).__name__}: {str(error)[:300]}")
            return out
        tally.compared += 1
        return out

    return op


class _KnnProxy:
    """``keras.src.ops.nn`` with the convolution and pooling ops compared."""

    def __init__(self, real: Any, tally: _Tally) -> None:
        self._ops = {name: _compared_op(name, getattr(real, name), tally) for name in OPS}
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return self._ops[name] if name in self._ops else getattr(self._real, name)


def _run_cases(loaded: Any, names: Any, tally: _Tally) -> tuple[int, int, list[str]]:
    """Run the Keras test methods of ``loaded`` chosen by ``names``; (passed, skipped, failed)."""
    passed, skipped, failures = 0, 0, []
    for _, cls in inspect.getmembers(loaded, inspect.isclass):
        if not (issubclass(cls, unittest.TestCase) and cls.__module__ == loaded.__name__):
            continue
        for name in sorted(n for n in dir(cls) if n.startswith("test") and names(n)):
            if any(name.startswith(prefix) for prefix in NOT_APPLICABLE):
                skipped += 1
                continue
            case = cls(name)
            case.run_layer_test = _adapter  # type: ignore[attr-defined]
            try:
                getattr(case, name)()
                passed += 1
            except _Checked:
                passed += 1
            except BaseException as error:  # Keras's own skips are pytest/unittest skips
                if type(error).__name__ in ("Skipped", "SkipTest"):
                    skipped += 1
                    continue
                failures.append(f"{cls.__name__}.{name}: {type(error).__name__}: "
                                f"{str(error)[:200]}")
    return passed, skipped, failures


def _report(module: str, passed: int, skipped: int, failures: list[str], tally: _Tally) -> None:
    print(f"{module}: {passed} passed, {len(failures)} failed, {skipped} skipped or not "
          f"applicable; {tally.compared} calls compared with convarith, "
          f"{len(tally.failures)} differed; not compared: {tally.skipped}")
    problems = failures + tally.failures
    assert not problems, f"{module}:\n" + "\n".join(problems[:40])


@pytest.mark.parametrize("module", MODULES)
def test_keras_layer_tests_pass_on_convarith(module: str) -> None:
    loaded = importlib.import_module(f"keras.src.layers.{module}")
    tally = _Tally()
    real = vars(loaded)["layers"]
    vars(loaded)["layers"] = _LayersProxy(real, tally)
    try:
        passed, skipped, failures = _run_cases(loaded, lambda name: True, tally)
    finally:
        vars(loaded)["layers"] = real
    _report(module, passed, skipped, failures, tally)
    assert tally.compared > 0


def test_keras_nn_ops_conv_pool_tests_pass_on_convarith() -> None:
    loaded = importlib.import_module("keras.src.ops.nn_test")
    tally = _Tally()
    real = vars(loaded)["knn"]
    vars(loaded)["knn"] = _KnnProxy(real, tally)
    selected = (("test_conv_2d", "test_average_pool_same")
                if os.environ.get("CI") == "true" else ("conv", "pool"))
    try:
        passed, skipped, failures = _run_cases(
            loaded, lambda name: any(word in name for word in selected), tally)
    finally:
        vars(loaded)["knn"] = real
    _report("ops.nn_test", passed, skipped, failures, tally)
    assert tally.compared > 0
