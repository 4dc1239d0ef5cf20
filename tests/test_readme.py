"""README's examples run as written, and its two commands stay in step with CI."""

from __future__ import annotations

import doctest
import pathlib

ROOT = pathlib.Path(__file__).parents[1]


def test_readme_examples() -> None:
    result = doctest.testfile(str(ROOT / "README.md"), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0


def test_ci_runs_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'pip install -e ".[test]" && python -m pytest'
    assert command in readme.split("\n\n")[2] or command in readme[:600]
    assert command in ci
