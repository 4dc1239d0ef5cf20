"""Keras 3's own layer tests (the ``*_test.py`` files shipped in the keras wheel), run
against convarith.nn through a small adapter.

Every case that checks a layer through Keras's ``run_layer_test`` is redirected: the
adapter builds the convarith layer of the same class name from the same arguments,
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
    "test_permute_sparse": "sparse tensors: convarith.nn runs dense NumPy arrays",
    "test_basic_dot_2d": "Dot is not a convolution-family layer",
    "test_basic_dot_3d": "Dot is not a convolution-family layer",
    "test_sparse_dot_2d": "Dot is not a convolution-family layer",
    "test_sparse_dot_3d": "Dot is not a convolution-family layer",
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


def _cases(module: str) -> list[tuple[type, str]]:
    loaded = importlib.import_module(f"keras.src.layers.{module}")
    cases = []
    for _, cls in inspect.getmembers(loaded, inspect.isclass):
        if issubclass(cls, unittest.TestCase) and cls.__module__ == loaded.__name__:
            cases += [(cls, name) for name in dir(cls) if name.startswith("test")]
    return cases


@pytest.mark.parametrize("module", MODULES)
def test_keras_layer_tests_pass_on_convarith(module: str) -> None:
    checked, failures = 0, []
    for cls, name in _cases(module):
        if name.rstrip("0123456789") in NOT_APPLICABLE or name in NOT_APPLICABLE:
            continue
        case = cls(name)
        case.run_layer_test = _adapter  # type: ignore[attr-defined]
        try:
            getattr(case, name)()
        except _Checked:
            checked += 1
        except BaseException as error:  # Keras's own skips are pytest/unittest skips
            if type(error).__name__ in ("Skipped", "SkipTest"):
                continue
            failures.append(f"{name}: {type(error).__name__}: {str(error)[:200]}")
    assert not failures, f"{module}: {len(failures)} failed, {checked} passed:\n" + "\n".join(failures)
