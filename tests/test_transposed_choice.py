"""``transposed_algorithm`` names the algorithm ``transposed_conv`` really runs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from convarith.engine import core, dispatch
from convarith.engine.algorithms import phase

CASES = [
    # x shape, kernel (*K, F/g, C), strides, dilation, groups, grid padding
    ((2, 28, 28, 64), (4, 4, 32, 64), (2, 2), (1, 1), 1, ((2, 2), (2, 2))),
    ((1, 9, 9, 8), (3, 3, 8, 8), (1, 1), (1, 1), 1, ((2, 2), (2, 2))),
    ((1, 12, 12, 64), (3, 3, 64, 64), (1, 1), (1, 1), 1, ((2, 2), (2, 2))),
    ((1, 10, 6), (3, 4, 6), (2,), (2,), 1, ((4, 3),)),
    ((1, 7, 7, 8), (3, 3, 2, 8), (2, 2), (1, 1), 4, ((1, 2), (1, 2))),
    ((1, 6, 6, 4), (3, 3, 1, 4), (3, 3), (1, 1), 4, ((0, 1), (2, 2))),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_named_algorithm_is_the_one_that_runs(case, monkeypatch) -> None:
    x_shape, k_shape, strides, dilation, groups, padding = case
    ran: list[str] = []
    dispatch.available_algorithms()  # load the registry before patching it
    for name, algorithm in list(dispatch._REGISTRY.algorithms.items()):
        def recorded(*args, _name=name, _fn=algorithm.direct, **kwargs):
            ran.append(_name)
            return _fn(*args, **kwargs)
        monkeypatch.setitem(dispatch._REGISTRY.algorithms, name,
                            dataclasses.replace(algorithm, direct=recorded))
    original = phase.transposed

    def phase_recorded(*args, **kwargs):
        ran.append("phase")
        return original(*args, **kwargs)

    monkeypatch.setattr(phase, "transposed", phase_recorded)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    kernel = rng.standard_normal(k_shape).astype(np.float32)
    core.transposed_conv(x, kernel, strides, dilation, groups, padding)
    assert ran, "no algorithm recorded"
    assert ran[0] == core.transposed_algorithm(x_shape, k_shape, strides, dilation, groups,
                                               padding)
