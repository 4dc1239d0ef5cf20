"""The explorer server under load and abuse, on loopback only.

Starts ``convarith serve`` on a free 127.0.0.1 port in a child process, then,
all bounded in count and time:

1. sustained load: ``--requests`` mixed API requests at ``--concurrency``,
   while ``--slow`` slow clients trickle their headers a byte at a time;
2. abuse: oversized bodies, malformed JSON, wrong methods, path traversal
   attempts on the static files, an image bomb; each must get its 4xx;
3. the server still answers after all that, its memory (RSS) is compared
   before and after, and it stops cleanly on SIGTERM.

Prints a table and exits 1 on any 5xx, unexpected status, crash or a dirty
shutdown. ``python fuzz/abuse.py --requests 5000 --concurrency 50`` is the
full run; CI runs a small one.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

GOOD = [
    ("/api/resolve", {"input_size": [28, 28], "kernel_size": 3, "strides": 2, "padding": "same"}),
    ("/api/explain", {"input_size": [5, 5], "kernel_size": 3, "strides": 2, "padding": "same"}),
    ("/api/geometry", {"input_size": [7, 7], "kernel_size": 3, "dilation": 2}),
    ("/api/solve", {"size": 28, "target": 14}),
    ("/api/port", {"input_size": [28, 28], "kernel_size": 3, "strides": 2, "padding": "same",
                   "to": "torch"}),
]


@dataclass
class Report:
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def count(self, what: str, status: int) -> None:
        self.statuses.setdefault(what, {}).setdefault(status, 0)
        self.statuses[what][status] += 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_server(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "convarith.cli", "serve", "--port", str(port),
         "--header-timeout", "3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start within 30 s")


async def load(base: str, requests: int, concurrency: int, report: Report) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                path, body = GOOD[i % len(GOOD)]
                start = time.perf_counter()
                try:
                    response = await client.post(path, json=body)
                    report.count(f"load {path}", response.status_code)
                    if response.status_code != 200:
                        report.problems.append(f"{path}: {response.status_code} {response.text[:120]}")
                except httpx.HTTPError as error:
                    report.count(f"load {path}", -1)
                    report.problems.append(f"{path}: {type(error).__name__}")
                report.latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


async def slow_client(port: int, seconds: float, report: Report) -> None:
    """Send a request's headers one byte at a time; the server must not stall for it."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as error:
        report.problems.append(f"slow client could not connect: {error}")
        return
    request = b"POST /api/resolve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    deadline = time.monotonic() + seconds
    try:
        for byte in request:
            if time.monotonic() > deadline:
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(seconds / len(request))
        report.count("slow client", 0)
    except OSError:
        report.count("slow client (closed by server)", 0)
    finally:
        writer.close()


def abuse(base: str, report: Report) -> None:
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("L", (20000, 20000)).save(bomb, format="PNG")  # 400 MPix, compresses to ~400 KB
    cases: list[tuple[str, str, dict[str, Any], set[int]]] = [
        ("oversized body", "/api/resolve", {"content": b"{" + b" " * (8 << 20) + b"}"}, {413}),
        ("malformed JSON", "/api/resolve", {"content": b"{not json"}, {400}),
        ("JSON not an object", "/api/resolve", {"content": b"[1, 2, 3]"}, {400, 422}),
        ("huge numbers", "/api/resolve", {"json": {"input_size": [10**12], "kernel_size": 10**9}}, {400, 422}),
        ("1000-layer stack", "/api/stack",
         {"json": {"input_size": [28, 28], "layers": [{"kernel_size": 3}] * 1000}}, {400, 413, 422}),
        ("image bomb", "/api/image",
         {"json": {"image": "data:image/png;base64," + base64.b64encode(bomb.getvalue()).decode()}},
         {400, 413, 422}),
        ("not an image", "/api/image", {"json": {"image": "data:image/png;base64,AAAA"}}, {400, 415, 422}),
        ("JSON nested 30,000 deep", "/api/resolve", {"content": b"[" * 30_000 + b"]" * 30_000}, {400}),
        ("JSON nested 1000 deep in a field", "/api/stack",
         {"content": b'{"input_size": [8, 8], "layers": ' + b"[" * 1000 + b"]" * 1000 + b"}"}, {400}),
        ("a 5000-digit integer", "/api/resolve",
         {"content": b'{"input_size": [' + b"9" * 5000 + b', 8], "kernel_size": 3}'}, {400}),
        ("NaN / 1e400", "/api/solve", {"content": b'{"size": NaN, "target": 1e400}'}, {400}),
        ("kernel cell 'a'", "/api/image",
         {"json": {"image": "sample", "kernel": "custom", "numbers": [[1, "a"]]}}, {422}),
        ("kernel cell {}", "/api/image",
         {"json": {"image": "sample", "kernel": "custom", "numbers": [[1, {}]]}}, {422}),
        ("kernel cell 10**400", "/api/image",
         {"content": b'{"image": "sample", "kernel": "custom", "numbers": [[1, 1' + b"0" * 60 + b"]]}"},
         {422}),
        ("JPEG with 20,000 scans", "/api/image", {"json": {"image": _many_scans_jpeg(20_000)}}, {413}),
        ("16-bit grey PNG (valid)", "/api/image", {"json": {"image": _png16()}}, {200}),
        ("cross-origin text/plain POST", "/api/resolve",
         {"content": json.dumps(GOOD[0][1]).encode(),
          "headers": {"origin": "http://evil.example", "content-type": "text/plain"}}, {403}),
        ("DNS-rebound Host", "/api/resolve",
         {"json": GOOD[0][1], "headers": {"host": "evil.example"}}, {403}),
    ]
    with httpx.Client(base_url=base, timeout=30) as client:
        for what, path, kwargs, expected in cases:
            response = client.post(path, **kwargs)
            report.count(what, response.status_code)
            if response.status_code not in expected:
                report.problems.append(f"{what}: got {response.status_code}, expected {sorted(expected)}")
        for path in ["/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/etc/passwd",
                     "/static/..%2f..%2fsetup.py", "/static//etc/passwd", "/../../etc/passwd",
                     "/static/%00", "/api/../../etc/passwd"]:
            response = client.get(path)
            report.count("path traversal", response.status_code)
            if response.status_code not in (400, 404, 405) or "root:" in response.text:
                report.problems.append(f"traversal {path}: {response.status_code}")
        response = client.get("/api/resolve")
        report.count("wrong method", response.status_code)
        if response.status_code != 405 or response.headers.get("allow") != "POST":
            report.problems.append(f"GET /api/resolve: {response.status_code}, "
                                   f"Allow {response.headers.get('allow')!r}")


def _many_scans_jpeg(scans: int) -> str:
    """A progressive JPEG whose last scan is repeated (slow to decode, small to send)."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    ramp = (np.add.outer(np.arange(1024), np.arange(1024)) // 8 % 256).astype(np.uint8)
    Image.fromarray(ramp).save(buffer, format="JPEG", progressive=True, quality=10)
    raw = buffer.getvalue()
    last = raw[raw.rindex(b"\xff\xda"):-2]
    raw = (raw[:-2] + last * scans)[: 2 * 1024 * 1024 - 2] + b"\xff\xd9"
    return "data:image/jpeg;base64," + base64.b64encode(raw).decode()


def _png16() -> str:
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def idle_sockets(port: int, count: int, report: Report) -> None:
    """Open ``count`` sockets that send nothing or half a header; light requests must go on."""
    opened = []
    for number in range(count):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as error:
            report.problems.append(f"idle socket {number} could not connect: {error}")
            break
        if number % 2:
            writer.write(b"POST /api/resolve HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        opened.append((reader, writer))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for _ in range(10):
            response = await client.get("/api/health")
            report.count(f"health beside {count} idle sockets", response.status_code)
            if response.status_code != 200:
                report.problems.append(f"health beside idle sockets: {response.status_code}")
    closed = 0
    for reader, writer in opened:
        try:
            closed += await asyncio.wait_for(reader.read(1), timeout=30) == b""
        except (asyncio.TimeoutError, OSError):
            pass
        writer.close()
    report.count(f"idle sockets closed by the server (of {count})", closed)
    if closed != len(opened):
        report.problems.append(f"only {closed} of {len(opened)} idle sockets were closed")


def run(requests: int, concurrency: int, slow: int, stream: Any = sys.stdout,
        idle: int = 300) -> Report:
    report = Report()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(port)
    try:
        with httpx.Client(base_url=base) as client:  # warm up, then measure memory
            for path, body in GOOD * 4:
                client.post(path, json=body)
        rss_before = rss_kib(server.pid)

        async def both() -> float:
            slow_tasks = [asyncio.create_task(slow_client(port, 5.0, report)) for _ in range(slow)]
            elapsed = await load(base, requests, concurrency, report)
            await asyncio.gather(*slow_tasks)
            return elapsed

        elapsed = asyncio.run(both())
        abuse(base, report)
        asyncio.run(idle_sockets(port, idle, report))
        rss_after_abuse = rss_kib(server.pid)
        elapsed_second = asyncio.run(load(base, requests, concurrency, Report()))
        rss_after = rss_kib(server.pid)
        if httpx.post(f"{base}/api/resolve", json=GOOD[0][1]).status_code != 200:
            report.problems.append("the server stopped answering after the abuse")
    finally:
        server.send_signal(signal.SIGTERM)
        code: int | None
        try:
            code = server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            code = None
        stderr = server.stderr.read().decode() if server.stderr else ""
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -15 is clean
    if code not in (0, -signal.SIGTERM):
        report.problems.append(f"SIGTERM: exit status {code}; stderr tail: {stderr[-300:]}")
    if "Traceback" in stderr:
        report.problems.append(f"the server printed a traceback: {stderr[-500:]}")

    lat = sorted(report.latencies)
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p95 = lat[int(0.95 * (len(lat) - 1))] * 1000 if lat else float("nan")
    print(f"load: {requests} requests, concurrency {concurrency}, {slow} slow clients: "
          f"{elapsed:.1f} s ({requests / elapsed:.0f} req/s), p50 {p50:.1f} ms, p95 {p95:.1f} ms",
          file=stream)
    print(f"second load run: {elapsed_second:.1f} s", file=stream)
    print(f"memory (RSS): {rss_before / 1024:.1f} MiB after warm-up, "
          f"{rss_after_abuse / 1024:.1f} MiB after load and abuse, "
          f"{rss_after / 1024:.1f} MiB after a second load run", file=stream)
    for what, counts in sorted(report.statuses.items()):
        print(f"  {what:32s} {json.dumps(counts)}", file=stream)
    print(f"SIGTERM: exit status {code}", file=stream)
    report.statuses["_rss_kib"] = {0: rss_before, 1: rss_after_abuse, 2: rss_after}
    if rss_after > rss_after_abuse * 1.25 + 20 * 1024:
        report.problems.append(f"memory grew from {rss_after_abuse} KiB to {rss_after} KiB over a second load run")
    for problem in report.problems[:20]:
        print(f"PROBLEM: {problem}", file=stream)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--slow", type=int, default=20, help="slow clients during the load")
    parser.add_argument("--idle", type=int, default=300, help="idle sockets opened after the abuse")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    report = run(args.requests, args.concurrency, args.slow, idle=args.idle)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
