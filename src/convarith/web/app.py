"""The explorer's ASGI application (Starlette): the page and its JSON API.

``create_app()`` builds a fresh application; nothing is shared between apps.
The page (``/``) and its files (``/static/...``) are served from the package's
``web/static`` folder by Starlette's ``StaticFiles``, which refuses any path
outside that folder. Every ``/api/...`` endpoint takes and returns JSON (see
:mod:`convarith.web.api`).

Examples
--------
>>> from starlette.testclient import TestClient
>>> client = TestClient(create_app())
>>> client.post("/api/resolve", json={"input_size": [28, 28], "kernel_size": 3,
...             "strides": 2, "padding": "same"}).json()["padding"]
[[0, 1], [0, 1]]
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from . import api

__all__ = ["create_app", "STATIC_DIR"]

STATIC_DIR = Path(__file__).parent / "static"

#: The page loads nothing from elsewhere; the policy makes that a rule.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def _error(error: api.ApiError) -> JSONResponse:
    return JSONResponse(error.to_dict(), status_code=error.status)


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise api.ApiError(413, f"the request body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise api.ApiError(413, f"the request body is over the limit of {limit} bytes")
    if not body:
        raise api.ApiError(400, "the request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise api.ApiError(400, f"the request body is not valid JSON: {error}") from error


Handler = Callable[[Any, api.Limits], dict[str, Any]]


def _json_endpoint(
    handler: Handler,
    body_limit: Callable[[api.Limits], int] | None = None,
    in_thread: bool = False,
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint reading JSON into ``handler``; slow handlers run off the event loop."""

    async def endpoint(request: Request) -> Response:
        limits: api.Limits = request.app.state.limits
        try:
            limit = body_limit(limits) if body_limit else limits.max_body_bytes
            data = await _read_json(request, limit)
            if in_thread:
                payload = await run_in_threadpool(handler, data, limits)
            else:
                payload = handler(data, limits)
        except api.ApiError as error:
            return _error(error)
        return JSONResponse(payload)

    return endpoint


def _settings_handler(make: Callable[..., dict[str, Any]], with_limits: bool) -> Handler:
    def handler(data: Any, limits: api.Limits) -> dict[str, Any]:
        settings = api.parse_settings(data, limits)
        return make(settings, limits) if with_limits else make(settings)

    return handler


def _explain(settings: api.Settings) -> dict[str, Any]:
    return dict(api.resolve_payload(settings)["explain"])


def _sample_bytes() -> bytes:
    return (STATIC_DIR / "sample.png").read_bytes()


def _image(data: Any, limits: api.Limits) -> dict[str, Any]:
    return api.image_payload(data, limits, _sample_bytes)


async def animation_gif(request: Request) -> Response:
    """``POST /api/animation.gif``: the settings as a GIF (drawn off the event loop)."""
    limits: api.Limits = request.app.state.limits
    try:
        data = await _read_json(request, limits.max_body_bytes)
        gif = await run_in_threadpool(api.animation_gif, data, limits)
    except api.ApiError as error:
        return _error(error)
    return Response(gif, media_type="image/gif",
                    headers={"content-disposition": 'attachment; filename="convarith.gif"'})


async def health(request: Request) -> Response:
    return JSONResponse(api.health_payload(request.app.state.limits))


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


async def not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = exc.detail if isinstance(exc, HTTPException) else "internal error"
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": {"message": f"{message}: {request.url.path}",
                                       "field": None, "status": status}}, status_code=status)
    return Response(f"{status} {message}", status_code=status, media_type="text/plain")


class SecurityHeaders:
    """Adds the content security policy and no-sniff headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(limits: api.Limits | None = None) -> Starlette:
    """A new explorer application.

    Parameters
    ----------
    limits
        Caps on request sizes and settings; :class:`convarith.web.api.Limits`
        defaults otherwise.
    """
    post = partial(Route, methods=["POST"])
    routes = [
        Route("/", index),
        Route("/api/health", health),
        post("/api/resolve", _json_endpoint(_settings_handler(api.resolve_payload, False))),
        post("/api/explain", _json_endpoint(_settings_handler(_explain, False))),
        post("/api/geometry", _json_endpoint(_settings_handler(api.geometry_payload, True))),
        post("/api/footprint", _json_endpoint(api.footprint_payload)),
        post("/api/solve", _json_endpoint(api.solve_payload)),
        post("/api/stack", _json_endpoint(api.stack_payload)),
        post("/api/port", _json_endpoint(api.port_payload)),
        post("/api/image", _json_endpoint(
            _image, body_limit=lambda limits: limits.max_upload_bytes * 4 // 3 + 4096,
            in_thread=True)),
        post("/api/animation.gif", animation_gif),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found})
    app.state.limits = limits or api.Limits()
    app.add_middleware(SecurityHeaders)
    return app
