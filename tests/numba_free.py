"""Run a test script in a fresh interpreter where ``import numba`` fails (for tests only).

The script gets ``np`` and ``must_refuse(call)``, which asserts that ``call()``
raises an ImportError naming numba; it passes when it runs to the end.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

_HEADER = '''
import sys
sys.modules["numba"] = None  # import numba -> ImportError
import numpy as np


def must_refuse(call):
    try:
        call()
    except ImportError as error:
        assert "numba" in str(error)
    else:
        raise AssertionError("use_numba=True without numba must fail")
'''


def run_without_numba(body: str) -> None:
    """Run ``body`` (indented freely) after the header; fail with its stderr if it fails."""
    script = _HEADER + textwrap.dedent(body) + '\nprint("ok")\n'
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
