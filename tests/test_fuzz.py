"""The fuzz harness at a small budget: every target ends in a documented outcome."""

from __future__ import annotations

import importlib.util
import io
import pathlib
import sys

import pytest

spec = importlib.util.spec_from_file_location(
    "convarith_fuzz", pathlib.Path(__file__).parents[1] / "fuzz" / "run.py"
)
fuzz = importlib.util.module_from_spec(spec)
sys.modules["convarith_fuzz"] = fuzz  # dataclasses look their module up
spec.loader.exec_module(fuzz)  # type: ignore[union-attr]

BUDGET = 150


@pytest.mark.parametrize("target", [t.name for t in fuzz.TARGETS])
def test_fuzz_target(target: str) -> None:
    if not next(t for t in fuzz.TARGETS if t.name == target).available():
        pytest.skip(f"{target}: not available")
    counts = fuzz.run(BUDGET, [target], stream=io.StringIO())
    assert counts.get(target, 0) >= BUDGET // 2
