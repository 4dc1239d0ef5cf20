"""The data-safety fuzz targets at a small budget (larger outside CI): no invariant breaks."""

from __future__ import annotations

import importlib.util
import io
import os
import pathlib
import sys

import pytest

pytest.importorskip("hypothesis")
pytest.importorskip("PIL")
pytest.importorskip("dask.array")
pytest.importorskip("zarr")

spec = importlib.util.spec_from_file_location(
    "convarith_fuzz_data_safety", pathlib.Path(__file__).parents[1] / "fuzz" / "data_safety.py"
)
fuzz = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
sys.modules["convarith_fuzz_data_safety"] = fuzz
spec.loader.exec_module(fuzz)  # type: ignore[union-attr]

BUDGET = 6 if os.environ.get("CI") == "true" else 30


@pytest.mark.skipif(os.name != "posix", reason="symbolic links, FIFOs and device nodes are POSIX")
@pytest.mark.parametrize("target", sorted(fuzz.TARGETS))
def test_data_safety_target(target: str) -> None:
    # hypothesis is derandomized here: a failure names its input and reproduces as is
    counts = fuzz.run(BUDGET, [target], stream=io.StringIO())
    assert counts.get(target, 0) >= BUDGET // 2
