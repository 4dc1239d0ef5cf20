"""The explorer: a Starlette app serving a page and a JSON API.

Needs the ``web`` extra (``pip install convarith[web]``: starlette, uvicorn,
Pillow). Start it with ``convarith serve``.

>>> from convarith.web import create_app   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """Build the explorer application (see :func:`convarith.web.app.create_app`)."""
    try:
        from .app import create_app as build
    except ImportError as error:
        raise ImportError(
            f"the explorer needs starlette and uvicorn ({error}); "
            "install them with: pip install 'convarith[web]'"
        ) from error
    return build(*args, **kwargs)
