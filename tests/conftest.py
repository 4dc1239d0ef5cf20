"""Shared test setup: Keras runs on its JAX backend (no TensorFlow needed)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture
def grouped_rows_shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The grouped forward passes' threads share the output's rows, never the groups
    (``grouped_tiles.CHANNEL_SPLIT_FLOPS`` infinite), for tests of the plans that do
    (their borders' tables, their calls on the calling thread): batch-1 layers share the
    groups otherwise. The plans and runners remembered meanwhile are dropped after."""
    from convarith.engine.algorithms import grouped_tiles

    def forget() -> None:
        grouped_tiles._forward_plan.cache_clear()
        grouped_tiles._FAST.clear()

    forget()
    monkeypatch.setattr(grouped_tiles, "CHANNEL_SPLIT_FLOPS", math.inf)
    yield
    forget()
