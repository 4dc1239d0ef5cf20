"""Writers killed mid-write leave nothing half-written (fuzz/faults.py, small budget)."""

from __future__ import annotations

import importlib.util
import io
import pathlib
import sys

import pytest

pytest.importorskip("PIL")

spec = importlib.util.spec_from_file_location(
    "convarith_faults", pathlib.Path(__file__).parents[1] / "fuzz" / "faults.py"
)
faults = importlib.util.module_from_spec(spec)
sys.modules["convarith_faults"] = faults
spec.loader.exec_module(faults)  # type: ignore[union-attr]

NEEDS = {"apply": ["dask", "zarr"], "save": [], "animate": [], "tour": []}


@pytest.mark.slow
@pytest.mark.parametrize("writer", sorted(faults.WRITERS))
def test_interrupted_writer_leaves_no_half_written_file(writer: str) -> None:
    for module in NEEDS[writer]:
        pytest.importorskip(module)
    out = io.StringIO()
    outcome = faults.run(2, [writer], stream=out)[writer]
    assert outcome.runs == 2
    assert not outcome.problems, out.getvalue()
