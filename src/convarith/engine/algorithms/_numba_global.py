"""A global average pool's loop as a C function (numba's ``cfunc``), for a native batch.

:func:`._threads.run_native_jobs` shares the images of a global average among the
caller and the spinning helpers without the GIL: each job is one call of
``average(x, y, cells, channels, first, stop)``, which writes the means of images
``[first, stop)`` of ``x`` (``(N, cells, channels)``, C order) into ``y``
(``(N, channels)``). Run through Python closures instead, a helper woken for a
40 µs share started about 0.1 ms late on a virtual machine's cores, and two threads
took longer than one (16 images of 4²×2048: 65 against 39 µs).

The sum is :mod:`._numba_pool`'s ``global_average``'s (rows added four at a time,
``(r0 + r1) + (r2 + r3)``, then the rest one by one), the same however the images
are split. numba is imported, and the functions compiled or loaded from numba's
cache (:mod:`._numba_global_kernels`), on first use.

Examples
--------
>>> compiled = average(np.dtype(np.float32))
>>> compiled is None or compiled.address > 0
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..state import cached_once

__all__ = ["average", "NativeAverage"]


class NativeAverage:
    """A compiled ``average`` (the module docstring): its ``address``; it keeps numba's
    compiled function, and so its machine code, alive."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.address = int(function.address)


@cached_once
def average(dtype: np.dtype[Any]) -> NativeAverage | None:
    """The compiled ``void average(T* x, T* y, int64 cells, int64 channels, int64 first,
    int64 stop)`` for float32 or float64 (``T``), or ``None`` (no numba, another dtype,
    or a numba that cannot compile it)."""
    if np.dtype(dtype).char not in "fd":
        return None
    try:
        from . import _numba_global_kernels
    except Exception:  # pragma: no cover - a numba that cannot compile them
        return None
    compiled = _numba_global_kernels.AVERAGE.get(np.dtype(dtype).char)
    return NativeAverage(compiled) if compiled is not None and compiled.address else None
