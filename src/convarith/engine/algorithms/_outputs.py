"""Large output arrays whose memory is used again once the caller drops them.

glibc's ``malloc`` hands a request above 32 MiB (its largest mmap threshold) to
``mmap`` and gives it back with ``munmap`` when it is freed, so every call that
returns such an output starts on fresh pages: the kernel zeroes each one at its
first write (system time, on the thread that writes it). WaveNet's 1×1
64 -> 256 on 16 × 4096 samples (a 67 MB output) spent 6.4-6.6 ms of its ~29 ms
of CPU time so (33 huge-page faults per call), where onnxruntime, whose arena
keeps its buffers, spent none. Smaller outputs come back from glibc's heap
already mapped.

:func:`output_empty` gives outputs of :data:`POOL_BYTES` or more from a few kept
buffers instead: each array it returns hands its buffer back when it and every
view of it are gone (a :func:`weakref.finalize` on their common base), and the next output of a size
that fits takes it. At most :data:`KEEP_BUFFERS` buffers, :data:`KEEP_BYTES` in
all, wait so; :func:`clear` drops them.

Examples
--------
>>> import numpy as np
>>> a = output_empty((3, 5), np.float32)
>>> a.shape, a.ctypes.data % 64
((3, 5), 0)
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from typing import Any

import numpy as np

from ._threads import ALIGN, aligned_empty

__all__ = ["output_empty", "clear", "POOL_BYTES", "KEEP_BUFFERS", "KEEP_BYTES"]

#: Outputs of at least this many bytes come from the kept buffers (glibc maps larger
#: requests afresh at each call; smaller ones it reuses itself).
POOL_BYTES = 32 << 20

#: Buffers kept waiting at most, and their bytes in all.
KEEP_BUFFERS = 4
KEEP_BYTES = 512 << 20

_LOCK = threading.RLock()  # (a finalizer may run on any thread, inside this module too)
_FREE: list[np.ndarray] = []  # raw uint8 buffers waiting, the most recently freed last


def output_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array on an :data:`~._threads.ALIGN`-byte boundary,
    from a kept buffer when it takes :data:`POOL_BYTES` or more.

    >>> big = output_empty((9 << 20,), np.float32)  # 36 MiB
    >>> address = big.ctypes.data
    >>> del big
    >>> output_empty((9 << 20,), np.float32).ctypes.data == address
    True
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if size < POOL_BYTES:
        return aligned_empty(shape, dtype)
    raw = _take(size + ALIGN)
    owner = _Owner(raw, shape, dtype)
    weakref.finalize(owner, _give_back, raw).atexit = False
    return np.asarray(owner)


class _Owner:
    """The base of an array over a kept buffer (and of every view of it: NumPy's views
    name the first base that is not an array), so that it lives exactly as long as they
    do; an array's own base would be skipped by its views."""

    def __init__(self, raw: np.ndarray, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.raw = raw
        self.__array_interface__ = {
            "shape": tuple(shape), "typestr": dtype.str, "version": 3,
            "data": (raw.ctypes.data + -raw.ctypes.data % ALIGN, False)}


def _take(size: int) -> np.ndarray:
    """A kept buffer of ``size`` to twice as many bytes (the smallest), or a new one."""
    with _LOCK:
        fits = [i for i, raw in enumerate(_FREE) if size <= raw.nbytes <= 2 * size]
        if fits:
            return _FREE.pop(min(fits, key=lambda i: _FREE[i].nbytes))
    return np.empty(size, np.uint8)


def _give_back(raw: np.ndarray) -> None:
    """Keep ``raw`` for a later output, dropping the oldest kept beyond the limits."""
    with _LOCK:
        _FREE.append(raw)
        while len(_FREE) > KEEP_BUFFERS or sum(kept.nbytes for kept in _FREE) > KEEP_BYTES:
            _FREE.pop(0)


def _forget_in_child() -> None:
    """A forked child starts with no kept buffers and a lock no thread holds."""
    global _LOCK
    _LOCK = threading.RLock()
    _FREE.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def clear() -> None:
    """Drop the kept buffers (arrays still in use keep theirs, and hand them back later)."""
    with _LOCK:
        _FREE.clear()
