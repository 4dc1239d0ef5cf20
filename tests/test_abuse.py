"""The explorer server under a small load and every abuse case (fuzz/abuse.py, small budget)."""

from __future__ import annotations

import importlib.util
import io
import pathlib
import sys

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytest.importorskip("PIL")

spec = importlib.util.spec_from_file_location(
    "convarith_abuse", pathlib.Path(__file__).parents[1] / "fuzz" / "abuse.py"
)
abuse = importlib.util.module_from_spec(spec)
sys.modules["convarith_abuse"] = abuse
spec.loader.exec_module(abuse)  # type: ignore[union-attr]


@pytest.mark.slow
def test_server_survives_load_and_abuse() -> None:
    out = io.StringIO()
    report = abuse.run(requests=300, concurrency=20, slow=3, stream=out)
    assert not report.problems, out.getvalue()
    # every abuse case got its 4xx (checked inside), and the load was all 200s
    assert all(set(counts) == {200} for what, counts in report.statuses.items() if what.startswith("load"))
