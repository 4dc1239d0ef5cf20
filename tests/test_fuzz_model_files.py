"""The model-file fuzzer (``fuzz/model_files.py``) at a small budget: no undocumented outcome."""

from __future__ import annotations

import importlib.util
import io
import os
import pathlib
import sys

spec = importlib.util.spec_from_file_location(
    "convarith_fuzz_model_files", pathlib.Path(__file__).parents[1] / "fuzz" / "model_files.py"
)
fuzz = importlib.util.module_from_spec(spec)
sys.modules["convarith_fuzz_model_files"] = fuzz
spec.loader.exec_module(fuzz)  # type: ignore[union-attr]

BUDGET = 60 if os.environ.get("CI") else 200


def test_damaged_model_files_end_in_documented_outcomes() -> None:
    counts = fuzz.run(BUDGET, seed=3, stream=io.StringIO())  # a Finding names the seed and trial
    assert sum(counts.values()) == BUDGET
    assert any("exit 2" in key for key in counts) and any("exit 0" in key for key in counts)
