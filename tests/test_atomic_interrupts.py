"""An interrupt at any moment of an atomic write leaves no temporary file behind.

``fuzz/faults.py`` sends SIGINT to writers at random moments; one run found a
``.model.npz.<random>.part`` left when the interrupt landed just after the
temporary file was created. Here the interrupt is raised at each step of
:func:`convarith._atomic.atomic_path` in turn (creating the file, closing it,
writing, syncing, renaming) and the folder must hold only what it held before
(plus the complete destination, when the rename happened).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from convarith import _atomic


class Interrupt(BaseException):
    """Stands in for KeyboardInterrupt (pytest treats a real one as a request to stop)."""


STEPS = ["open", "close", "write", "fsync", "replace"]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("after", [False, True])
def test_an_interrupt_at_any_step_leaves_no_temporary_file(step: str, after: bool, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.npz"
    real = {"open": os.open, "close": os.close, "fsync": os.fsync, "replace": os.replace}

    def interrupting(name: str):
        def call(*args, **kwargs):
            if not after:
                raise Interrupt(name)
            real[name](*args, **kwargs)
            raise Interrupt(name)
        return call

    if step in real:
        monkeypatch.setattr(_atomic.os, step, interrupting(step))

    def write(stream) -> None:
        stream.write(b"x" * 1000)
        if step == "write":
            raise Interrupt("write")

    with pytest.raises(Interrupt):
        _atomic.write_atomic(target, write)
    monkeypatch.undo()
    left = sorted(p.name for p in tmp_path.iterdir())
    if step == "replace" and after:
        assert left == ["model.npz"] and target.read_bytes() == b"x" * 1000
    else:
        assert left == [], f"interrupt at {step} ({'after' if after else 'before'} it ran) left {left}"
