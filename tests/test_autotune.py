"""The autotune (``CONVARITH_AUTOTUNE=1``): measured choices remembered on disk, per machine.

Each test gets its own cache directory (``XDG_CACHE_HOME``) and empties the
process caches, so no choice made elsewhere is reused here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import convarith
from _helpers import check, reference_direct
from convarith import ConvSpec
from convarith.engine import autotune, dispatch, state

SRC = str(Path(__file__).resolve().parents[1] / "src")
# a problem with several candidates within the autotune's spread of the best estimate
SHAPE, KERNEL, SPEC = (2, 12, 12, 8), (3, 3, 8, 16), ConvSpec(3)


def _problem(dtype: type = np.float32) -> dispatch.ConvProblem:
    return dispatch.ConvProblem(SHAPE, KERNEL, (1, 1), (1, 1), 1, (10, 10), np.dtype(dtype))


def _arrays(seed: int, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(SHAPE).astype(dtype), rng.standard_normal(KERNEL).astype(dtype)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CONVARITH_AUTOTUNE", "1")
    state.clear_caches()
    yield tmp_path / "convarith"
    monkeypatch.undo()
    state.clear_caches()


def _ranked(problem: dispatch.ConvProblem) -> list[dispatch.Algorithm]:
    found = [a for a in dispatch._REGISTRY.snapshot() if a.kind == "direct" and a.applies(problem)]
    return sorted(found, key=lambda a: (a.cost(problem), a.name))


def test_the_problem_has_several_candidates() -> None:
    ranked = _ranked(_problem())
    assert len(ranked) >= 2
    assert autotune.worth_measuring(_problem(), ranked[:2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_equal_the_reference(cache: Path, dtype: type) -> None:
    x, kernel = _arrays(1, dtype)
    y = convarith.conv(x, kernel, SPEC)
    check(y, reference_direct(x, kernel, (1, 1), (1, 1), 1, (10, 10)), dtype, 1, "autotuned")
    entries = json.loads(autotune.cache_path().read_text())["choices"]
    key = autotune.problem_key(_problem(dtype), dispatch.worker_count(), dispatch.WORKSPACE_BYTES)
    assert entries[key] in {a.name for a in _ranked(_problem(dtype))}


def test_a_remembered_choice_is_used_without_measuring(cache: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    problem = _problem()
    ranked = _ranked(problem)
    second = ranked[1].name  # not the estimates' choice: only the file can make it win
    key = autotune.problem_key(problem, dispatch.worker_count(), dispatch.WORKSPACE_BYTES)
    path = autotune.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"choices": {key: second}}))

    def no_measuring(*args: object) -> float:
        raise AssertionError("measured although the file holds the choice")

    monkeypatch.setattr(autotune, "measure", no_measuring)
    assert dispatch.cheapest(problem).name == second
    x, kernel = _arrays(2)
    check(convarith.conv(x, kernel, SPEC),
          reference_direct(x, kernel, (1, 1), (1, 1), 1, (10, 10)), np.float32, 2, second)


_PROCESS = textwrap.dedent(
    """
    import numpy as np, convarith
    from convarith.engine import autotune, dispatch
    calls = []
    measure = autotune.measure
    autotune.measure = lambda *args: calls.extend(a.name for a in args[0]) or measure(*args)
    x = np.ones((2, 12, 12, 8), np.float32)
    convarith.conv(x, np.ones((3, 3, 8, 16), np.float32), convarith.ConvSpec(3))
    problem = dispatch.ConvProblem((2, 12, 12, 8), (3, 3, 8, 16), (1, 1), (1, 1), 1, (10, 10),
                                   np.dtype(np.float32))
    print(len(calls), dispatch.cheapest(problem).name)
    """
)


def _run(cache_home: Path, setting: str) -> tuple[int, str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home), "CONVARITH_AUTOTUNE": setting,
           "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", _PROCESS], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    measured, name = done.stdout.split()
    return int(measured), name


def test_the_choice_is_reused_by_the_next_process(tmp_path: Path) -> None:
    measured, first = _run(tmp_path, "1")
    assert measured >= 2
    files = list((tmp_path / "convarith").glob("autotune-*.json"))
    assert len(files) == 1
    assert first in json.loads(files[0].read_text())["choices"].values()
    measured_again, again = _run(tmp_path, "1")
    assert (measured_again, again) == (0, first)


def test_off_never_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    measured, _ = _run(tmp_path, "0")
    assert measured == 0
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("CONVARITH_AUTOTUNE", raising=False)  # unset: off too
    state.clear_caches()
    try:
        x, kernel = _arrays(5)
        convarith.conv(x, kernel, SPEC)
        assert dispatch.cheapest(_problem()).name == _ranked(_problem())[0].name
    finally:
        monkeypatch.undo()
        state.clear_caches()
    assert not (tmp_path / "convarith").exists()


def test_a_corrupt_file_is_ignored_and_replaced(cache: Path) -> None:
    path = autotune.cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00{not json")
    x, kernel = _arrays(3)
    check(convarith.conv(x, kernel, SPEC),
          reference_direct(x, kernel, (1, 1), (1, 1), 1, (10, 10)), np.float32, 3, "corrupt")
    assert json.loads(path.read_text())["choices"]
    for data in ('{"choices": []}', '["a"]', '{"choices": {"k": 3}}'):
        path.write_text(data)
        state.clear_caches()
        assert dispatch.cheapest(_problem()).name in {a.name for a in _ranked(_problem())}


def test_an_unwritable_cache_directory_is_ignored(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # convarith/ cannot be made inside it
    monkeypatch.setenv("CONVARITH_AUTOTUNE", "1")
    state.clear_caches()
    try:
        x, kernel = _arrays(4)
        check(convarith.conv(x, kernel, SPEC),
              reference_direct(x, kernel, (1, 1), (1, 1), 1, (10, 10)), np.float32, 4,
              "unwritable")
        assert blocker.read_text() == "not a folder"
    finally:
        monkeypatch.undo()
        state.clear_caches()


def test_huge_problems_are_not_measured(cache: Path) -> None:
    problem = dispatch.ConvProblem((64, 226, 226, 64), (3, 3, 64, 64), (1, 1), (1, 1), 1,
                                   (224, 224), np.dtype(np.float32))
    assert not autotune.worth_measuring(problem, _ranked(problem))
    assert dispatch.cheapest(problem).name == _ranked(problem)[0].name
    assert not cache.exists()


def test_the_machine_key_names_cpu_isa_and_versions() -> None:
    key = autotune.machine_key()
    assert set(key) == {"cpu", "flags", "isa", "jit", "convarith", "numpy"}
    assert key["convarith"] == convarith.__version__ and key["numpy"] == np.__version__
