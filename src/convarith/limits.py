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

__all__ = ["Limits", "current_limits", "limits", "check_values", "check_layers", "check_model_layers"]


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
    max_model_layers
        Layers (ONNX nodes, Keras layers) in one model file that
        :func:`convarith.summary.summarize` and the model readers accept; real
        networks have thousands (``convarith summary --max-layers``).
    """

    max_output_values: int = 2**28
    max_layers: int = 512
    max_image_pixels: int = 50_000_000
    max_model_layers: int = 20_000


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


def check_model_layers(count: int, where: str = "the model") -> None:
    """Refuse a model file of more than ``max_model_layers`` layers (counted before building any)."""
    cap = current_limits().max_model_layers
    if count > cap:
        raise ValueError(
            f"{where} has {count:,} layers, over the limit max_model_layers={cap:,}; raise it with "
            "--max-layers N (CLI) or convarith.limits.limits(max_model_layers=...)"
        )
