"""The benchmark script runs, with and without the oracle frameworks.

Timings are never asserted (speed is read from the table, not tested); what
is checked is that every column is filled from a real run, that the errors
against float64 are small, and that missing PyTorch or JAX leaves their
columns empty instead of failing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from convarith import ConvSpec, bench

TINY = (
    bench.BenchCase("T1", "3x3 same, 4->8", (2, 9, 9, 4), (3, 3, 4, 8),
                    ConvSpec(3, padding="same"), backward=True),
    bench.BenchCase("T2", "transposed 3x3 s2", (2, 5, 5, 4), (3, 3, 6, 4),
                    ConvSpec(3, strides=2, padding="same", transposed=True)),
)


def test_flop_count_is_the_direct_definition() -> None:
    # 2 · N · output cells · taps · C · F, derived by hand for T1
    assert TINY[0].flops == 2 * 2 * 9 * 9 * 9 * 4 * 8
    # transposed: every input cell meets every tap once: 2 · N · 25 · 9 · F · C
    assert TINY[1].flops == 2 * 2 * 5 * 5 * 9 * 6 * 4
    assert TINY[1].output_shape == (2, 10, 10, 6)


def test_run_fills_every_column_and_measures_error() -> None:
    results = bench.run(TINY, repeat=2, block=1)
    assert [(r.case, r.direction) for r in results] == [
        ("T1", "forward"), ("T1", "backward"), ("T2", "forward")]
    for result in results:
        assert result.convarith_s > 0 and result.matmul_gflops > 0
        assert result.rel_error < 1e-5, result
        assert all(len(times) == 2 for times in result.samples.values())
        if result.torch_s is not None:
            assert result.ratio == pytest.approx(result.torch_s / result.convarith_s)
    table = bench.render(results, plain=True)
    assert "T1" in table and "T2" in table


def test_bad_block_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        bench.main(["--cases", "L6", "--block", "0"])
    assert stop.value.code == 2
    assert "--block must be at least 1, got 0" in capsys.readouterr().err


def test_runs_without_torch_and_jax(tmp_path) -> None:
    out = tmp_path / "bench.json"
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        sys.modules["jax"] = None
        from convarith import bench
        sys.exit(bench.main(["--cases", "L6", "--repeat", "1", "--block", "1", "--quick",
                             "--plain", "--json", {str(out)!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "L6" in done.stdout
    figures = json.loads(out.read_text())["results"]
    assert len(figures) == 1
    assert figures[0]["torch_s"] is None and figures[0]["jax_s"] is None
    assert figures[0]["convarith_s"] > 0 and figures[0]["rel_error"] < 1e-5


def test_script_quiets_openblas_idle_threads(tmp_path) -> None:
    """``python -m convarith.bench`` re-runs itself with OpenBLAS's spin time cut."""
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    done = subprocess.run(
        [sys.executable, "-m", "convarith.bench", "--cases", "L6", "--repeat", "1", "--block",
         "1", "--quick", "--plain", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "OPENBLAS_THREAD_TIMEOUT=22" in done.stdout
