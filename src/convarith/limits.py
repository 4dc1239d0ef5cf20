"""Resource limits: requests that would need huge memory or time are refused up front.

The defaults suit a laptop; change them for a block of code with
:func:`limits`, which is a context manager (the setting belongs to the current
thread or task, not to the module):

>>> from convarith.limits import current_limits, limits
>>> current_limits().max_output_values
268435456
>>> with limits(max_output_values=1000):
...     current_limits().max_output_values
1000

Arrays larger than memory belong in :mod:`convarith.scale`, which tiles them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, fields, replace

__all__ = ["Limits", "current_limits", "limits", "check_values", "check_layers", "check_picture"]


@dataclass(frozen=True)
class Limits:
    """Caps that convarith's library, CLI and server check before working.

    Attributes
    ----------
    max_output_values
        Values in one array the engine allocates (output, padded input or
        working buffer): 2**28, 1 GiB of float32.
    max_layers
        Layers in one stack (receptive fields, summaries, models).
    max_image_pixels
        Pixels in one decoded picture.
    max_animation_frames
        Steps in one animation (one per output cell, or per input cell for a
        scattered transposed convolution): 4096, a 64x64 input. Frames are
        drawn and encoded one at a time, so memory does not grow with them;
        time and file size do.
    max_picture_pixels
        Pixels of one drawn picture, counted at the 2x supersampled size
        (an animation's canvas, or a sheet of every step): 2**26, 192 MiB of
        RGB.
    """

    max_output_values: int = 2**28
    max_layers: int = 512
    max_image_pixels: int = 50_000_000
    max_animation_frames: int = 4096
    max_picture_pixels: int = 2**26


_LIMITS: ContextVar[Limits] = ContextVar("convarith_limits", default=Limits())  # noqa: B039 (frozen)


def current_limits() -> Limits:
    """The limits in force in this thread or task."""
    return _LIMITS.get()


@contextlib.contextmanager
def limits(**changes: int) -> Iterator[Limits]:
    """Change some limits inside a ``with`` block.

    >>> with limits(max_layers=10) as active:
    ...     active.max_layers
    10
    """
    names = {f.name for f in fields(Limits)}
    for name, value in changes.items():
        if name not in names:
            raise TypeError(f"unknown limit {name!r}; the limits are {sorted(names)}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"limit {name} must be a positive integer, got {value!r}")
    token = _LIMITS.set(replace(_LIMITS.get(), **changes))
    try:
        yield _LIMITS.get()
    finally:
        _LIMITS.reset(token)


def check_values(what: str, shape: Sequence[int]) -> None:
    """Refuse an array of ``shape`` larger than ``max_output_values``.

    >>> check_values("the output", (2, 3))
    >>> with limits(max_output_values=5):
    ...     check_values("the output", (2, 3))
    Traceback (most recent call last):
    ...
    ValueError: the output would hold 6 values (shape (2, 3)), over the limit max_output_values=5; ...
    """
    count = math.prod(int(n) for n in shape)
    cap = current_limits().max_output_values
    if count > cap:
        raise ValueError(
            f"{what} would hold {count:,} values (shape {tuple(int(n) for n in shape)}), over the "
            f"limit max_output_values={cap:,}; raise it with convarith.limits.limits("
            "max_output_values=...) or tile the work with convarith.scale"
        )


def check_layers(count: int) -> None:
    """Refuse a stack of more than ``max_layers`` layers."""
    cap = current_limits().max_layers
    if count > cap:
        raise ValueError(
            f"the stack has {count} layers, over the limit max_layers={cap}; raise it with "
            "convarith.limits.limits(max_layers=...)"
        )


def check_picture(what: str, width: int, height: int, fix: str) -> None:
    """Refuse a drawing of more than ``max_picture_pixels`` pixels, before it is allocated.

    >>> check_picture("the sheet", 100, 100, "draw one step")
    >>> with limits(max_picture_pixels=10):
    ...     check_picture("the sheet", 4, 3, "draw one step")
    Traceback (most recent call last):
    ...
    ValueError: the sheet would be 4x3 = 12 pixels, over the limit max_picture_pixels=10; draw one step, ...
    """
    count = int(width) * int(height)
    cap = current_limits().max_picture_pixels
    if count > cap:
        raise ValueError(
            f"{what} would be {int(width)}x{int(height)} = {count:,} pixels, over the limit "
            f"max_picture_pixels={cap:,}; {fix}, or raise the limit with convarith.limits.limits("
            "max_picture_pixels=...)"
        )
