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

import asyncio
import contextlib
import json
import multiprocessing
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from . import api

__all__ = ["create_app", "HeavyWorker", "STATIC_DIR", "give_big_blocks_back"]

STATIC_DIR = Path(__file__).parent / "static"

#: The page loads nothing from elsewhere; the policy makes that a rule.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_CSP_BYTES = CONTENT_SECURITY_POLICY.encode()


def _error(error: api.ApiError) -> JSONResponse:
    return JSONResponse(error.to_dict(), status_code=error.status)


async def _read_body(request: Request, limit: int, seconds: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise api.ApiError(413, f"the request body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    with anyio.move_on_after(seconds) as timer:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise api.ApiError(413, f"the request body is over the limit of {limit} bytes")
    if timer.cancelled_caught:
        raise api.ApiError(408, f"the request body took over {seconds:g} s to arrive")
    if not body:
        raise api.ApiError(400, "the request body is empty; send a JSON object")
    return bytes(body)


def parse_json(body: bytes, limits: api.Limits) -> Any:
    """The JSON value in ``body``, bounded in nesting depth and number length.

    Plain JSON only: ``NaN``/``Infinity`` are refused, integers may have at most
    ``limits.max_number_digits`` digits, arrays and objects nest at most
    ``limits.max_json_depth`` deep. Every refusal is a 400 :class:`api.ApiError`.

    >>> parse_json(b'{"kernel_size": [3, 3]}', api.Limits())
    {'kernel_size': [3, 3]}
    >>> parse_json(b'[[[1]]]', api.Limits(max_json_depth=2))
    Traceback (most recent call last):
    ...
    convarith.web.api.ApiError: the request body nests arrays/objects 3 deep; the limit is 2
    """
    digits = limits.max_number_digits

    def number(text: str) -> int:
        if len(text.lstrip("-")) > digits:
            raise api.ApiError(400, f"the request body has a {len(text)}-digit number; "
                               f"numbers may have at most {digits} digits")
        return int(text)

    def constant(name: str) -> Any:
        raise api.ApiError(400, f"the request body is not valid JSON: {name} is not a JSON number")

    try:
        data = json.loads(body, parse_int=number, parse_constant=constant)
    except RecursionError:
        raise api.ApiError(400, "the request body nests arrays/objects too deeply; the limit is "
                           f"{limits.max_json_depth}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise api.ApiError(400, f"the request body is not valid JSON: {error}") from error
    except ValueError as error:  # e.g. a float literal too long to convert
        raise api.ApiError(400, f"the request body is not valid JSON: {error}") from error
    depth = _depth(data)
    if depth > limits.max_json_depth:
        raise api.ApiError(400, f"the request body nests arrays/objects {depth} deep; "
                           f"the limit is {limits.max_json_depth}")
    return data


def _depth(value: Any) -> int:
    """How deep arrays/objects nest in ``value`` (0 for a plain value), without recursion."""
    deepest, level = 0, [(value, 0)]
    while level:
        item, depth = level.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth + 1)
            level.extend((child, depth + 1) for child in
                         (item.values() if isinstance(item, dict) else item))
    return deepest


def _render(payload: dict[str, Any], piece: int = 500) -> bytes:
    """``payload`` as compact JSON; long lists are encoded ``piece`` items at a time.

    ``json.dumps`` holds the interpreter lock for its whole run: encoding a
    10 MB frame list in one call would stall the event loop for as long.
    """
    def dumps(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    if not any(isinstance(value, list) and len(value) > piece for value in payload.values()):
        return dumps(payload).encode()  # the common, small reply: one call
    parts = []
    for key, value in payload.items():
        if isinstance(value, list) and len(value) > piece:
            items = ",".join(dumps(value[i:i + piece])[1:-1] for i in range(0, len(value), piece))
            parts.append(f"{dumps(key)}:[{items}]")
        else:
            parts.append(f"{dumps(key)}:{dumps(value)}")
    return ("{" + ",".join(parts) + "}").encode()


Handler = Callable[[Any, api.Limits], dict[str, Any]]


def _json_endpoint(
    handler: Handler,
    body_limit: Callable[[api.Limits], int] | None = None,
    heavy: Callable[[Any], bool] | None = None,
    upload: bool = False,
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint reading JSON into ``handler``, run off the event loop.

    Parsing, the handler and the rendering of the reply all run in a worker
    thread, so the event loop only moves bytes. Requests for which ``heavy``
    says so take one of ``limits.max_heavy_at_once`` heavy slots; ``upload``
    endpoints also take one of ``limits.max_uploads_at_once`` slots before
    their body is read, so waiting uploads hold no memory.
    """

    async def endpoint(request: Request) -> Response:
        limits: api.Limits = request.app.state.limits
        slots: Slots = request.app.state.slots
        try:
            limit = body_limit(limits) if body_limit else limits.max_body_bytes
            async with slots.uploads if upload else _NO_SLOT:
                body = await _read_body(request, limit, limits.max_body_seconds)
                if heavy is None:  # one trip to a worker thread: parse, answer, render
                    reply = await anyio.to_thread.run_sync(_answer, handler, body, limits)
                else:
                    data = await anyio.to_thread.run_sync(parse_json, body, limits)
                    del body
                    if heavy(data) and slots.worker is not None:
                        async with slots.heavy:
                            reply = await slots.worker.run(handler, data, limits)
                    elif heavy(data):
                        reply = await anyio.to_thread.run_sync(_answer_heavy, handler, data,
                                                               limits, limiter=slots.heavy)
                    else:
                        reply = await anyio.to_thread.run_sync(_answer, handler, data, limits)
        except api.ApiError as error:
            return _error(error)
        return Response(reply, media_type="application/json")

    return endpoint


def _answer(handler: Handler, data: Any, limits: api.Limits) -> bytes:
    if isinstance(data, bytes):
        data = parse_json(data, limits)
    return _render(handler(data, limits))


def _answer_heavy(handler: Handler, data: Any, limits: api.Limits) -> bytes:
    try:
        return _answer(handler, data, limits)
    finally:
        _trim_heap()


def _trim_heap() -> None:
    """Hand the heap's free pages back to the system (glibc), after a heavy request.

    A frame list or a decode leaves many freed small blocks behind; without
    this the server's memory stays near its peak after a burst.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Any:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


class _NoSlot:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_SLOT = _NoSlot()


class Slots:
    """The app's bounds on concurrent heavy work (one set per application)."""

    def __init__(self, limits: api.Limits, worker: HeavyWorker | None = None) -> None:
        self.heavy = anyio.CapacityLimiter(limits.max_heavy_at_once)
        self.uploads = anyio.CapacityLimiter(limits.max_uploads_at_once)
        self.worker = worker


class HeavyWorker:
    """Heavy requests answered in separate processes, so the server's interpreter lock stays free.

    Decoding a picture or building and encoding a frame list holds the
    interpreter lock for much of its run; in a thread of the server that
    slows every light request beside it. Here they run in ``workers``
    processes (``spawn``-ed on the first heavy request, so a server that
    never gets one never starts them), each limited to ``memory_bytes`` of
    address space: a request that needs more is a 503, and a process that
    dies is replaced on the next request.
    """

    def __init__(self, workers: int = 1, memory_bytes: int | None = 3 << 30) -> None:
        self.workers = workers
        self.memory_bytes = memory_bytes
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_heavy_process, initargs=(self.memory_bytes,))
        return self._pool

    async def run(self, handler: Handler, data: Any, limits: api.Limits) -> bytes:
        """``handler``'s reply to ``data``, rendered, from a heavy-work process."""
        return await self.call(_answer_heavy, handler, data, limits)

    async def call(self, work: Callable[..., bytes], *args: Any) -> bytes:
        """``work(*args)`` in a heavy-work process (``work`` and ``args`` must pickle)."""
        future = self._executor().submit(_answer_in_process, work, *args)
        try:
            reply, refusal = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # the request was given up (a client that left, a shutdown): the process
            # keeps working, so the heavy slot is held until it is done
            with anyio.CancelScope(shield=True):
                while not future.done():
                    await anyio.sleep(0.05)
            raise
        except BrokenProcessPool:
            self.close()
            raise api.ApiError(503, "the heavy-work process stopped (out of memory?); "
                               "send the request again") from None
        if refusal is None:
            return reply
        if refusal[0] == 0:  # MemoryError
            size = f"{self.memory_bytes / 2**20:.0f} MB" if self.memory_bytes else "its limit"
            raise api.ApiError(503, f"this request needs more memory than the heavy-work "
                               f"process may use ({size})")
        raise api.ApiError(*refusal)

    def close(self) -> None:
        """Stop the processes (they are started again by the next heavy request)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _answer_in_process(work: Callable[..., bytes], *args: Any
                       ) -> tuple[bytes, tuple[int, str, str | None] | None]:
    """``work(*args)`` in a heavy-work process: the reply, or the refusal as plain values."""
    try:
        return work(*args), None
    except api.ApiError as error:
        return b"", (error.status, error.message, error.field)
    except MemoryError:
        return b"", (0, "", None)


#: glibc's mallopt() parameter number for the size from which blocks are mmap()ed.
_M_MMAP_THRESHOLD = -3


def give_big_blocks_back(threshold: int = 1 << 20) -> bool:
    """Make glibc map every block of ``threshold`` bytes or more on its own, so freeing returns it.

    glibc raises its mmap threshold (up to 32 MiB) each time a mapped block is
    freed, after which decoded pictures land in the heap, and the heap keeps
    them: twenty 4096x4096 uploads left the server at 2.2 GB. A fixed
    threshold keeps the server's memory near its resting size after a burst.
    A no-op (``False``) off glibc. The server calls it at start, and each
    heavy-work process at its start.

    >>> give_big_blocks_back() in (True, False)
    True
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def _start_heavy_process(memory_bytes: int | None) -> None:
    """A heavy-work process's setup: its address-space cap, glibc's fixed mmap threshold,
    and a watch that ends the process when the server is gone (killed, not shut down)."""
    import os
    import resource
    import threading

    server = os.getppid()

    def end_with_the_server() -> None:
        while os.getppid() == server:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=end_with_the_server, daemon=True).start()
    give_big_blocks_back()
    if memory_bytes is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = memory_bytes if hard == resource.RLIM_INFINITY else min(memory_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _wants_frames(data: Any) -> bool:
    return isinstance(data, dict) and data.get("frames") is True


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
    """``POST /api/animation.gif``: the settings as a GIF, drawn in one of the heavy
    slots (like every heavy request: in the heavy-work process when the app has one)."""
    limits: api.Limits = request.app.state.limits
    slots: Slots = request.app.state.slots
    try:
        body = await _read_body(request, limits.max_body_bytes, limits.max_body_seconds)
        data = await anyio.to_thread.run_sync(parse_json, body, limits)
        if slots.worker is not None:
            async with slots.heavy:
                gif = await slots.worker.call(_gif_heavy, data, limits)
        else:
            gif = await anyio.to_thread.run_sync(_gif_heavy, data, limits, limiter=slots.heavy)
    except api.ApiError as error:
        return _error(error)
    return Response(gif, media_type="image/gif",
                    headers={"content-disposition": 'attachment; filename="convarith.gif"'})


def _gif_heavy(data: Any, limits: api.Limits) -> bytes:
    try:
        return api.animation_gif(data, limits)
    finally:
        _trim_heap()


async def health(request: Request) -> Response:
    return JSONResponse(api.health_payload(request.app.state.limits))


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


async def not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = exc.detail if isinstance(exc, HTTPException) else "internal error"
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}  # 405: Allow
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": {"message": f"{message}: {request.url.path}",
                                       "field": None, "status": status}}, status_code=status,
                            headers=headers)
    return Response(f"{status} {message}", status_code=status, media_type="text/plain",
                    headers=headers)


class SecurityHeaders:
    """Adds the content security policy and no-sniff headers to every response.

    It also adds ``Server-Timing: app;dur=<ms>``: the time from the request
    reaching the application to its response starting (what the server
    spent, queueing for the event loop and the worker threads included, but
    not the time the request waited for the server to read it).
    ``benchmarks/load.py`` reads it to split latency into server and queue.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                spent = (time.perf_counter() - started) * 1e3
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", _CSP_BYTES),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"server-timing", b"app;dur=%.2f" % spent),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


#: Host names a loopback server answers to (``testserver`` is Starlette's test client).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "testserver")

#: Methods that change nothing and that a cross-origin page may send anyway.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _host_name(value: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:8000`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class LocalOnly:
    """Refuses requests a web page elsewhere could forge (as Jupyter does).

    * ``Host`` must name this server (``allowed_hosts``; ``None`` accepts any,
      for a server bound to every interface): this defeats DNS rebinding, where
      a page on ``evil.example`` re-points its name at 127.0.0.1 to read replies.
    * A request that is not GET/HEAD/OPTIONS must not come from another origin:
      its ``Origin`` header, when sent, must be this server's own, and
      ``Sec-Fetch-Site`` must not say ``cross-site``/``same-site``. Browsers send
      these on every cross-origin POST, including "simple" ``text/plain`` ones
      that skip the CORS preflight. Clients that are not browsers send neither.

    Refusals are ``403`` with a JSON error saying which header was wrong.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str] | None) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = self.problem(scope["method"], headers)
        if problem is None:
            await self.app(scope, receive, send)
            return
        body = {"error": {"message": problem, "field": None, "status": 403}}
        await JSONResponse(body, status_code=403)(scope, receive, send)

    def problem(self, method: str, headers: Headers) -> str | None:
        host = headers.get("host", "")
        if self.allowed is not None and _host_name(host) not in self.allowed:
            return (f"the Host header {host!r} is not this server's address "
                    f"(one of {sorted(self.allowed)}); open the address convarith serve printed")
        if method in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is not None:
            scheme, _, rest = origin.partition("://")
            if origin == "null" or rest.lower() != host.lower() or scheme not in ("http", "https"):
                return (f"cross-origin request refused: Origin {origin!r} is not this server "
                        f"({host!r})")
        site = headers.get("sec-fetch-site")
        if site in ("cross-site", "same-site"):
            return f"cross-origin request refused (Sec-Fetch-Site: {site})"
        return None


def _stop_on_shutdown(worker: HeavyWorker | None) -> Callable[[Starlette], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if worker is not None:
                worker.close()

    return lifespan


def create_app(
    limits: api.Limits | None = None, allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS,
    heavy_worker: HeavyWorker | None = None,
) -> Starlette:
    """A new explorer application.

    Parameters
    ----------
    limits
        Caps on request sizes and settings; :class:`convarith.web.api.Limits`
        defaults otherwise.
    allowed_hosts
        Host names the ``Host`` header may carry (loopback names by default);
        ``None`` accepts any host (a server bound to every interface). Cross-origin
        POSTs are refused either way (:class:`LocalOnly`).
    heavy_worker
        Where heavy requests (picture uploads, frame lists) run: a
        :class:`HeavyWorker`'s processes (``convarith serve`` uses one), or
        ``None`` for a worker thread of this process. Either way at most
        ``limits.max_heavy_at_once`` run at once. The app stops the processes
        when it shuts down.
    """
    post = partial(Route, methods=["POST"])
    routes = [
        Route("/", index),
        Route("/api/health", health),
        post("/api/resolve", _json_endpoint(_settings_handler(api.resolve_payload, False))),
        post("/api/explain", _json_endpoint(_settings_handler(_explain, False))),
        post("/api/geometry", _json_endpoint(_settings_handler(api.geometry_payload, True))),
        post("/api/volume", _json_endpoint(api.volume_payload)),
        post("/api/footprint", _json_endpoint(api.footprint_payload, heavy=_wants_frames)),
        post("/api/solve", _json_endpoint(api.solve_payload)),
        post("/api/stack", _json_endpoint(api.stack_payload)),
        post("/api/port", _json_endpoint(api.port_payload)),
        post("/api/image", _json_endpoint(
            _image, body_limit=lambda limits: limits.max_upload_bytes * 4 // 3 + 4096,
            heavy=lambda data: True, upload=True)),
        post("/api/animation.gif", animation_gif),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_found},
                    lifespan=_stop_on_shutdown(heavy_worker))
    app.state.limits = limits or api.Limits()
    app.state.slots = Slots(app.state.limits, heavy_worker)
    app.add_middleware(LocalOnly, allowed_hosts=allowed_hosts)
    app.add_middleware(SecurityHeaders)
    return app
