"""``convarith serve``: the interactive explorer in your browser."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
import threading
import webbrowser
from typing import Any

#: Seconds a connection may take to send a request's headers (new or kept-alive).
HEADER_TIMEOUT_S = 15.0
#: Seconds an idle kept-alive connection stays open after a response.
KEEP_ALIVE_TIMEOUT_S = 15
#: Connections plus requests at once beyond which uvicorn answers 503 (below a 1024 fd limit).
MAX_CONNECTIONS = 900
#: Largest request head (request line plus headers) in bytes.
MAX_HEAD_BYTES = 16 * 1024


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="start the interactive explorer (a local web page)",
        description="Serve the explorer page and its JSON API. It binds 127.0.0.1 by default, "
        "so only this machine can reach it.",
        epilog="example: convarith serve --port 8000 --open",
    )
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to bind (default 127.0.0.1; 0.0.0.0 exposes it to your network)",
    )
    parser.add_argument("--open", action="store_true", help="open the page in a web browser")
    parser.add_argument(
        "--header-timeout", type=float, default=HEADER_TIMEOUT_S, metavar="SECONDS",
        help=f"close connections that take longer to send a request's headers "
        f"(default {HEADER_TIMEOUT_S:g})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    if not 0 < args.header_timeout <= 3600:
        raise ValueError(f"--header-timeout must be over 0 and at most 3600 seconds, got {args.header_timeout}")
    try:
        import uvicorn
    except ImportError as error:
        raise ValueError(
            f"convarith serve needs uvicorn ({error}); pip install 'convarith[web]'"
        ) from error
    from ..web.app import HeavyWorker, create_app, give_big_blocks_back

    _check_can_listen(args.host, args.port)
    everywhere = args.host in ("0.0.0.0", "::")
    # picture uploads and frame lists run in a separate process, so their work
    # does not hold the interpreter lock the light requests need
    app = create_app(allowed_hosts=None if everywhere else _host_names(args.host),
                     heavy_worker=HeavyWorker())
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    if everywhere:
        shown_host = _outward_address(args.host)
        print(f"WARNING: --host {args.host} serves the explorer to every machine that can reach "
              "this one; use the default --host 127.0.0.1 to keep it private")
    url = f"http://{shown_host}:{args.port}/"
    print(f"convarith explorer on {url}  (Ctrl+C to stop)")
    if args.open:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    give_big_blocks_back()
    # light requests run in worker threads; a short switch interval hands the
    # interpreter lock back to the event loop sooner
    sys.setswitchinterval(0.001)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", **server_settings(args.header_timeout))
    return 0


def server_settings(header_timeout: float = HEADER_TIMEOUT_S) -> dict[str, Any]:
    """uvicorn's settings for the explorer: timeouts and caps on connections and headers.

    >>> server_settings()["timeout_keep_alive"]
    15
    """
    return {
        "http": _header_timeout_protocol(header_timeout),
        "timeout_keep_alive": KEEP_ALIVE_TIMEOUT_S,
        "limit_concurrency": MAX_CONNECTIONS,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "timeout_graceful_shutdown": 5,
    }


def _header_timeout_protocol(seconds: float) -> Any:
    """uvicorn's h11 protocol, closing connections that do not send a request's headers in time.

    uvicorn's keep-alive timer stops at the first byte received, so a client
    trickling a header a byte at a time, or one that connects and sends
    nothing, would hold its socket forever. This timer runs from the moment
    the connection opens (and again after each response) until a whole
    request head has arrived; request bodies are bounded by the app
    (``Limits.max_body_seconds``).
    """
    import asyncio

    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._start_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
            super().connection_lost(exc)

        def _start_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
            self.header_timer = self.loop.call_later(seconds, self._header_timeout)

        def _header_timeout(self) -> None:
            waiting_for_head = self.cycle is None or self.cycle.response_complete
            if waiting_for_head and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11


def _host_names(host: str) -> tuple[str, ...]:
    """The names a browser may put in ``Host`` for a server bound to ``host``."""
    names = {host, "127.0.0.1", "localhost", "::1"}
    if host not in ("127.0.0.1", "localhost", "::1"):
        names |= {socket.gethostname(), socket.getfqdn()}
    return tuple(sorted(names))


def _outward_address(host: str) -> str:
    """This machine's address on its network (what another machine would type), else loopback."""
    family = socket.AF_INET6 if host == "::" else socket.AF_INET
    target = ("2001:db8::1", 9) if family == socket.AF_INET6 else ("192.0.2.1", 9)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(target)  # UDP: picks the outgoing interface, sends nothing
            address = str(probe.getsockname()[0])
    except OSError:
        address = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    return f"[{address}]" if ":" in address else address


def _check_can_listen(host: str, port: int) -> None:
    """Fail in one line, before the banner, when ``host:port`` cannot be bound (port taken, bad host)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise ValueError(f"--host {host!r} is not an address of this machine ({error.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as error:
            reason = error.strerror.lower() if error.strerror else str(error)
            hint = (f"pick another port, e.g. --port {port + 1 if port < 65535 else 8000}"
                    if error.errno == errno.EADDRINUSE else "check --host (default 127.0.0.1)")
            raise ValueError(f"cannot listen on {host}:{port}: {reason}; {hint}") from None
