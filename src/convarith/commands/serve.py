"""``convarith serve``: the interactive explorer in your browser."""

from __future__ import annotations

import argparse
import errno
import socket
import threading
import webbrowser
from typing import Any


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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    try:
        import uvicorn
    except ImportError as error:
        raise ValueError(
            f"convarith serve needs uvicorn ({error}); pip install 'convarith[web]'"
        ) from error
    from ..web import create_app

    _check_can_listen(args.host, args.port)
    app = create_app()
    shown_host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{shown_host}:{args.port}/"
    print(f"convarith explorer on {url}  (Ctrl+C to stop)")
    if args.open:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


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
