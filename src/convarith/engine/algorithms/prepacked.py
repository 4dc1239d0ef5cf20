"""Kernels that cannot change, and the packed copies the engine keeps of them.

A weight-heavy layer on few output cells (deep stages at batch 1) spends its time
reading the kernel. Read where it lies, a block of output channels steps one kernel
row (``F`` values) at a time down the sum, which the hardware prefetchers follow
poorly; packed into contiguous panels it streams, but packing copies the whole
kernel, which costs more than it saves when done at every call. Inference runtimes
pack once, when the model is loaded (onnxruntime at session creation).

:func:`prepack` gives the same once-only packing without any risk of a stale
result: it returns a read-only copy of the kernel whose memory belongs to an
immutable ``bytes`` object, so NumPy refuses to make it, or any view of it,
writeable again. Only such kernels (:func:`frozen_owner`) have their packed
panels remembered (:func:`remembered`), keyed on that owner (held alive by the
entry, so its identity cannot be reused), the data's address, shape, strides and
dtype, and the packing's own key. A writeable kernel, even one never changed, is
packed or read in place at every call, as before. What is remembered per frozen
kernel: register_tiles' panels (:func:`.register_tiles.packs_once`, kernels of
:data:`.register_tiles.PREPACK_BYTES` and more) with its table of calls per input
shape (:func:`.register_tiles._packed_call_table`), Winograd's transformed kernel
(:func:`.winograd.remembered_transform`, any size), a transposed convolution's flipped,
swapped kernel (:func:`.core.flipped`, prepacked in turn) and a grouped kernel's output
phases' panels (``register_tiles_phases``), and the kernel's ``max |value|``
that the transforms' value check reads (:func:`.dispatch.value_limits`). The planner
knows (``ConvProblem.prepacked``): Winograd's cost then leaves the transform out.

The remembered entries are bounded: :data:`KEEP_BYTES` in all (the entries and,
once, the kernel they hold alive counted together). To make room, the entries of
kernels no one else holds any more are dropped, all of a kernel's at once, least
recently used first; the others stay, and a kernel that does not fit then is read as
it is at each call. A kernel larger than a quarter of the bound is never remembered.

Examples
--------
>>> import numpy as np
>>> kernel = prepack(np.ones((3, 3, 8, 16), np.float32))
>>> kernel.flags.writeable, frozen_owner(kernel) is not None
(False, True)
>>> frozen_owner(np.ones((3, 3, 8, 16), np.float32)) is None
True
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

__all__ = ["prepack", "frozen_owner", "remembered", "clear", "KEEP_BYTES", "KEYS_KEPT"]

#: Bytes of packed panels, with the frozen kernels they keep alive, remembered in all.
KEEP_BYTES = 512 << 20

#: Frozen kernels whose keys are kept at most (the keys of dead kernels are dropped as
#: they die; beyond this many live ones, all are dropped and worked out again).
KEYS_KEPT = 4096


def prepack(kernel: Any, dtype: Any = None) -> np.ndarray:
    """A read-only copy of ``kernel`` that cannot change, whose packed form the engine
    computes once and reuses (the engine's layout, ``(*K, C/groups, F)``).

    Use it for the weights of a model that runs many times (inference): a one-group
    float32 or float64 kernel of at least :data:`.register_tiles.PREPACK_BYTES` is then
    packed into the compiled kernels' panels, and any kernel transformed for Winograd,
    at its first call only. The values are
    those of ``kernel`` (cast to ``dtype`` if given); results are the same as with
    ``kernel`` itself. To change the weights, prepack the new ones.

    Parameters
    ----------
    kernel : array_like
        The kernel, in the engine's layout (Keras's: ``(*K, in/groups, out)``).
    dtype : dtype, optional
        Its element type (default: the kernel's own).

    Returns
    -------
    numpy.ndarray
        C-contiguous, read-only, backed by an immutable ``bytes`` object.

    Examples
    --------
    >>> import numpy as np
    >>> import convarith
    >>> kernel = prepack(np.ones((3, 3, 4, 16), np.float32))
    >>> y = convarith.conv2d(np.ones((1, 5, 5, 4), np.float32), kernel)
    >>> float(y[0, 0, 0, 0])
    36.0
    >>> kernel[0, 0, 0, 0] = 2.0
    Traceback (most recent call last):
    ...
    ValueError: assignment destination is read-only
    """
    array = np.ascontiguousarray(kernel, dtype=dtype)
    if array.dtype == object:
        raise ValueError(f"prepack needs a numeric kernel, got dtype {array.dtype}")
    frozen = np.frombuffer(array.tobytes(), dtype=array.dtype).reshape(array.shape)
    assert not frozen.flags.writeable
    return frozen


def frozen_owner(array: np.ndarray) -> bytes | None:
    """The immutable ``bytes`` object that owns ``array``'s memory, or ``None`` when
    its values could change (a writeable array, or a read-only view of memory that
    something else may write: another array, a ``bytearray``, a memory map).

    >>> import numpy as np
    >>> frozen_owner(np.frombuffer(bytes(8), np.float32)) is not None
    True
    >>> frozen = np.zeros(2, np.float32)
    >>> frozen.flags.writeable = False  # (its owner may make it writeable again)
    >>> frozen_owner(frozen) is None
    True
    """
    base: Any = array
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return None
        base = base.base
    return base if type(base) is bytes else None


class _Remembered:
    """Least recently used packed panels of frozen kernels, bounded by bytes."""

    def __init__(self) -> None:
        self.entries: OrderedDict[Hashable, tuple[bytes, Any, int]] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()
        # id(kernel) -> (a weak reference to it, its key without the packing), while the
        # kernel lives: its address alone (``ctypes.data``) costs ~1 µs a read, and a
        # layer's call may look up two or three packings of its kernel
        self.keys: dict[int, tuple[weakref.ref[np.ndarray], tuple[Any, ...]]] = {}

    def key(self, kernel: np.ndarray, owner: bytes) -> tuple[Any, ...]:
        """``kernel``'s key without the packing: its owner's identity, address, shape,
        strides and dtype (a frozen kernel's cannot change while it lives)."""
        known = self.keys.get(id(kernel))
        if known is not None and known[0]() is kernel:
            return known[1]
        key = (id(owner), kernel.ctypes.data, kernel.shape, kernel.strides, kernel.dtype.str)
        if len(self.keys) >= KEYS_KEPT:
            self.keys.clear()
        identity = id(kernel)
        self.keys[identity] = (
            weakref.ref(kernel, lambda gone: self._forget(identity, gone)), key)
        return key

    def _forget(self, identity: int, gone: weakref.ref[np.ndarray]) -> None:
        known = self.keys.get(identity)
        if known is not None and known[0] is gone:
            del self.keys[identity]

    def get(self, key: Hashable, owner: bytes) -> Any:
        with self.lock:
            entry = self.entries.get(key)
            if entry is None or entry[0] is not owner:
                return None
            self.entries.move_to_end(key)
            return entry[1]

    def put(self, key: Hashable, owner: bytes, value: Any, size: int) -> bool:
        """Remember ``value`` (``size`` bytes besides the kernel's): room is made by dropping
        the entries of kernels nobody else holds (least recently used first, all of a
        kernel's entries at once); where that is not enough, the entries kept stay and
        ``value`` is not remembered (a model larger than the bound, run layer after
        layer, would otherwise drop each layer's panels just before it runs again). A
        kernel's own bytes are counted with its first entry."""
        with self.lock:
            if key in self.entries:
                return True
            held: dict[int, int] = {}  # entries per owner
            for entry in self.entries.values():
                held[id(entry[0])] = held.get(id(entry[0]), 0) + 1
            size += 0 if id(owner) in held else len(owner)
            for old in list(self.entries):
                if self.bytes + size <= KEEP_BYTES:
                    break
                if old not in self.entries:
                    continue  # (dropped with its kernel's other entries)
                stale = self.entries[old][0]
                # held by its entries alone (getrefcount's argument and ``stale`` too)
                if stale is not owner and sys.getrefcount(stale) <= held[id(stale)] + 2:
                    for other in [k for k, e in self.entries.items() if e[0] is stale]:
                        self.bytes -= self.entries.pop(other)[2]
                    del held[id(stale)]
                del stale
            if self.bytes + size > KEEP_BYTES:
                return False
            self.entries[key] = (owner, value, size)
            self.bytes += size
            return True

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
            self.bytes = 0
        self.keys.clear()


_REMEMBERED = _Remembered()


def remembered(kernel: np.ndarray, packing: Hashable,
               pack: Callable[[], tuple[Any, int]]) -> Any:
    """``pack()``'s value ``(value, its bytes)`` for a frozen ``kernel`` and a ``packing``
    key, computed once and remembered (see the module's docstring); ``None`` when
    ``kernel`` is not frozen or is too large to keep (the caller then reads it as it is)."""
    owner = frozen_owner(kernel)
    if owner is None or 4 * (len(owner) + kernel.nbytes) > KEEP_BYTES:
        return None
    key = (*_REMEMBERED.key(kernel, owner), packing)
    value = _REMEMBERED.get(key, owner)
    if value is None:
        value, size = pack()
        _REMEMBERED.put(key, owner, value, size)
    return value


def clear() -> None:
    """Forget every remembered packing (:func:`.state.clear_caches`)."""
    _REMEMBERED.clear()
