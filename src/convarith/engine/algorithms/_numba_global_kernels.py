"""The compiled global averages of :mod:`._numba_global` (numba; imported only by
:func:`._numba_global.average`, where numba is installed). Module globals compiled
with numba's on-disk cache: a later process loads them instead of compiling them.

Examples
--------
>>> all(function.address > 0 for function in AVERAGE.values())
True
"""

from __future__ import annotations

from typing import Any

__all__ = ["AVERAGE"]

#: The C functions by dtype character (``"f"``, ``"d"``); empty without numba.
AVERAGE: dict[str, Any] = {}

numba: Any
try:
    import numba
    from numba import types
except ImportError:  # the engine's checks import every module: import without numba
    numba = None

if numba is not None:
    @numba.njit(nogil=True, error_model="numpy", cache=True)
    def _average_loop(x: Any, y: Any, cells: int, channels: int, first: int, stop: int
                      ) -> None:  # pragma: no cover - compiled by numba
        fours = cells // 4
        for n in range(first, stop):
            image, out = n * cells * channels, n * channels
            for c in range(channels):
                y[out + c] = 0
            for q in range(fours):
                r0 = image + 4 * q * channels
                r1, r2, r3 = r0 + channels, r0 + 2 * channels, r0 + 3 * channels
                for c in range(channels):
                    y[out + c] += (x[r0 + c] + x[r1 + c]) + (x[r2 + c] + x[r3 + c])
            for i in range(4 * fours, cells):
                row = image + i * channels
                for c in range(channels):
                    y[out + c] += x[row + c]
            for c in range(channels):
                y[out + c] /= cells


    def _signature(scalar: Any) -> Any:
        pointer = types.CPointer(scalar)
        return types.void(pointer, pointer, types.int64, types.int64, types.int64, types.int64)


    @numba.cfunc(_signature(types.float32), nogil=True, error_model="numpy", cache=True)
    def _average_float32(x_ptr: Any, y_ptr: Any, cells: int, channels: int, first: int,
                         stop: int) -> None:  # pragma: no cover - compiled by numba, run in C
        _average_loop(numba.carray(x_ptr, (stop * cells * channels,)),
                      numba.carray(y_ptr, (stop * channels,)), cells, channels, first, stop)


    @numba.cfunc(_signature(types.float64), nogil=True, error_model="numpy", cache=True)
    def _average_float64(x_ptr: Any, y_ptr: Any, cells: int, channels: int, first: int,
                         stop: int) -> None:  # pragma: no cover - compiled by numba, run in C
        _average_loop(numba.carray(x_ptr, (stop * cells * channels,)),
                      numba.carray(y_ptr, (stop * channels,)), cells, channels, first, stop)

    AVERAGE.update(f=_average_float32, d=_average_float64)
