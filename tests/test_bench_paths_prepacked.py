"""The networks suite's path column names the algorithm its forward call runs: with the
kernel prepacked (the suite's default), as the dispatcher then counts a kept packing or
Winograd transform as free (ResNet-50's 3×3 128 on one 14² image ran Winograd while the
column said register_tiles)."""

from __future__ import annotations

import numpy as np
import pytest

from convarith import bench_networks as nets
from convarith.engine import conv, dispatch, prepack


def _ran(layer: nets.NetLayer, x: np.ndarray, kernel: np.ndarray) -> list[str]:
    """Names the dispatcher chose for one forward call of ``layer`` (prepacked kernel)."""
    chosen: list[str] = []
    original = dispatch.cheapest

    def spy(problem: dispatch.ConvProblem, *args: object, **kwargs: object) -> object:
        found = original(problem, *args, **kwargs)  # type: ignore[arg-type]
        chosen.append(getattr(found, "name", ""))
        return found

    dispatch._CHOICES.clear()
    dispatch._PLANS.clear()
    dispatch.cheapest = spy  # type: ignore[assignment]
    try:
        conv(x, prepack(kernel), layer.spec())
    finally:
        dispatch.cheapest = original
        dispatch._CHOICES.clear()
        dispatch._PLANS.clear()
    return chosen


@pytest.mark.parametrize("title", ["3x3, 128->128, 14x14", "3x3, 256->256, 7x7",
                                   "1x1, 512->256, 14x14", "3x3 s2, 128->128, 28x28"])
def test_the_path_column_names_what_a_prepacked_call_runs(
        title: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(nets.WEIGHTS_VARIABLE, "prepacked")
    layers = nets.distinct(nets.NETWORKS["resnet50"](112))
    layer = next(one for one in layers if one.title == title)
    x, kernel = nets._inputs({layer: 1}, 1, seed=1)[layer]
    assert kernel is not None
    ran = _ran(layer, x, kernel)
    assert ran, "the call asked the dispatcher nothing"
    assert nets._paths(layer, 1, backward=False) == [ran[0]]
