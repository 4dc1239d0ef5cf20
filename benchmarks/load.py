"""Load run of the explorer on loopback: light requests stay fast while heavy ones run.

Starts ``convarith serve`` on a free 127.0.0.1 port in a subprocess and sends
``--requests`` requests with ``--concurrency`` clients (plain asyncio sockets
with keep-alive by default, ``--client httpx`` for httpx), mixing

* light requests: ``GET /api/health`` and the shape/arithmetic endpoints the
  page calls on every change (resolve, explain, geometry, footprint of one
  cell, stack, solve);
* heavy ones (``--heavy-share`` of them): picture uploads (a 4096x4096 RGBA
  PNG, a progressive 2048x2048 JPEG, a 16-bit grey PNG, the sample) and the
  largest frame list ``/api/footprint`` gives (a 34x34x34 input, 39,304 taps).

It prints p50/p95/p99 latency per endpoint and for the light and heavy groups,
the time the server itself spent on each (its ``Server-Timing`` header; the
rest is waiting to be read and the load generator), the CPU time per request
of the server and of the load generator, the failures (any status but 200),
and the server's memory (RSS, sampled
every 20 ms): at rest before the run (after one request of each kind), the
peak during it and a few seconds after it. Bounded in time by ``--time-limit``: whatever has not finished by
then is cancelled and counted. Exits 1 on any failure, on a light p95 over
``--light-p95-ms``, or when the memory does not come back to within
``--rss-slack-mb`` of where it started.

    python benchmarks/load.py --requests 3000 --concurrency 50
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from typing import Any

import httpx

Job = tuple[str, str, dict[str, Any] | None]  # method, path, body


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a heavy-work process, when the server has one)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
        except OSError:
            pass
    return found


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, in MB."""
    return sum(rss_mb(member) for member in process_tree(pid))


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by ``pid`` and its live descendants."""
    total = 0.0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def pictures() -> dict[str, str]:
    """Data URLs of the pictures the heavy requests upload (made here, not read from disk)."""
    import numpy as np
    from PIL import Image

    def url(picture: Any, fmt: str, **options: Any) -> str:
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt, **options)
        kind = "png" if fmt == "PNG" else "jpeg"
        return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode()

    ramp = np.add.outer(np.arange(2048), np.arange(2048)) % 256
    rgba = np.zeros((4096, 4096, 4), np.uint8)
    rgba[::7, ::5] = 200
    return {
        "png-rgba-4096": url(Image.fromarray(rgba, "RGBA"), "PNG"),
        "jpeg-progressive-2048": url(Image.fromarray(ramp.astype(np.uint8)), "JPEG",
                                     progressive=True, quality=80),
        "png-16bit-2048": url(Image.fromarray((ramp * 257).astype(np.uint16)), "PNG"),
    }


def workload(rng: random.Random, heavy_share: float, uploads: dict[str, str]) -> tuple[str, Job]:
    """One request (its group, light or heavy, and the request): random but valid."""
    if rng.random() < heavy_share:
        roll = rng.random()
        if roll < 0.4:
            return "heavy", ("POST", "/api/footprint", {"input_size": [34, 34, 34],
                                                        "kernel_size": 1, "frames": True})
        name = rng.choice([*uploads, "sample"])
        image = "sample" if name == "sample" else uploads[name]
        return "heavy", ("POST", "/api/image", {"image": image, "kernel": "edge"})
    size = [rng.randint(5, 64), rng.randint(5, 64)]
    settings: dict[str, Any] = {
        "input_size": size, "kernel_size": rng.choice([1, 3, 5]), "strides": rng.choice([1, 2]),
        "dilation": rng.choice([1, 1, 2]), "padding": rng.choice(["valid", "same", "full"]),
        "convention": rng.choice([None, "keras", "torch", "jax", "onnx"]),
    }
    kinds = ["health"] * 2 + ["/api/geometry"] * 3 + ["/api/resolve"] * 2 + [
        "/api/explain", "/api/footprint", "/api/stack", "/api/solve"]
    path = rng.choice(kinds)
    if path == "health":
        return "light", ("GET", "/api/health", None)
    if path == "/api/footprint":
        return "light", ("POST", path, {**settings, "padding": "same", "output": [0, 0]})
    if path == "/api/stack":
        return "light", ("POST", path, {"input_size": size, "layers": [
            {"kernel_size": 3, "padding": "same"}, {"kernel_size": 3, "strides": 2}]})
    if path == "/api/solve":
        return "light", ("POST", path, {"size": size[0], "target": max(1, size[0] // 2)})
    return "light", ("POST", path, settings)


def valid_jobs(rng: random.Random, count: int, heavy_share: float, uploads: dict[str, str]
               ) -> list[tuple[str, Job]]:
    """``count`` requests the explorer accepts (random settings it refuses are drawn again)."""
    from starlette.testclient import TestClient

    from convarith.web import create_app

    checker = TestClient(create_app())
    jobs: list[tuple[str, Job]] = []
    while len(jobs) < count:
        group, (method, path, body) = workload(rng, heavy_share, uploads)
        if group == "light" and method == "POST" and checker.post(path, json=body).status_code != 200:
            continue
        jobs.append((group, (method, path, body)))
    return jobs


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Results:
    """What the clients saw: latencies per endpoint and group, the server's share, failures."""

    def __init__(self) -> None:
        self.by_path: dict[str, list[float]] = defaultdict(list)
        self.by_group: dict[str, list[float]] = defaultdict(list)
        self.server_by_group: dict[str, list[float]] = defaultdict(list)
        self.failures: dict[str, int] = defaultdict(int)

    def add(self, group: str, key: str, status: int | str, elapsed: float,
            server_ms: float | None) -> None:
        if status != 200:
            self.failures[f"{key} -> {status}"] += 1
            return
        self.by_path[key].append(elapsed)
        self.by_group[group].append(elapsed)
        if server_ms is not None:
            self.server_by_group[group].append(server_ms / 1e3)


def server_ms(value: str | None) -> float | None:
    """The ``dur`` of a ``Server-Timing: app;dur=<ms>`` header."""
    if not value or "dur=" not in value:
        return None
    try:
        return float(value.split("dur=", 1)[1].split(";")[0].split(",")[0])
    except ValueError:
        return None


def encode_request(method: str, path: str, body: dict[str, Any] | None, host: str) -> bytes:
    """One HTTP/1.1 request, keep-alive, as bytes."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nhost: {host}\r\n"
    if body is not None:
        head += f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n"
    return (head + "\r\n").encode() + payload


async def raw_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
                       ) -> tuple[int, float | None, bool]:
    """Send ``request``, read the reply: its status, server time and whether the server closes."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, timing, closing = 0, None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "server-timing":
            timing = server_ms(value.strip())
        elif name == "connection" and value.strip().lower() == "close":
            closing = True
    await reader.readexactly(length)
    return status, timing, closing


async def run_raw(host: str, port: int, jobs: list[tuple[str, Job]], concurrency: int,
                  time_limit: float) -> tuple[Results, float]:
    """The run with plain asyncio sockets (keep-alive, requests encoded beforehand): a light client."""
    results = Results()
    queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
    for group, (method, path, body) in jobs:
        queue.put_nowait((group, f"{method} {path}",
                          encode_request(method, path, body, f"{host}:{port}")))

    async def client_loop() -> None:
        reader = writer = None
        while True:
            try:
                group, key, request = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            start = time.perf_counter()
            timing = None
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                assert reader is not None
                status, timing, closing = await raw_exchange(reader, writer, request)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as error:
                status, closing = type(error).__name__, True  # type: ignore[assignment]
            results.add(group, key, status, time.perf_counter() - start, timing)
            if closing and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    tasks = [asyncio.create_task(client_loop()) for _ in range(concurrency)]
    _, pending = await asyncio.wait(tasks, timeout=time_limit)
    for task in pending:
        task.cancel()
    return results, time.perf_counter() - started


async def run_httpx(base: str, jobs: list[tuple[str, Job]], concurrency: int, time_limit: float
                    ) -> tuple[Results, float]:
    """The run with httpx's async client (what a Python program would use)."""
    import httpx

    queue: asyncio.Queue[tuple[str, Job]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    results = Results()

    async def client_loop(client: httpx.AsyncClient) -> None:
        while True:
            try:
                group, (method, path, body) = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            start = time.perf_counter()
            timing = None
            try:
                response = await client.request(method, base + path, json=body)
                status = response.status_code
                timing = server_ms(response.headers.get("server-timing"))
            except httpx.HTTPError as error:
                status = type(error).__name__  # type: ignore[assignment]
            results.add(group, f"{method} {path}", status, time.perf_counter() - start, timing)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        started = time.perf_counter()
        tasks = [asyncio.create_task(client_loop(client)) for _ in range(concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=time_limit)
        for task in pending:
            task.cancel()
        wall = time.perf_counter() - started
    return results, wall


def table(rows: dict[str, list[float]]) -> None:
    print(f"{'':<24}{'n':>6}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for name in sorted(rows):
        values = rows[name]
        print(f"{name:<24}{len(values):>6}{percentile(values, 50) * 1e3:>10.1f}"
              f"{percentile(values, 95) * 1e3:>10.1f}{percentile(values, 99) * 1e3:>10.1f}"
              f"{max(values) * 1e3:>10.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--heavy-share", type=float, default=0.05,
                        help="fraction of heavy requests (uploads, big frame lists)")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds for the whole run")
    parser.add_argument("--light-p95-ms", type=float, default=200.0)
    parser.add_argument("--rss-slack-mb", type=float, default=64.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="raw: plain asyncio sockets, requests encoded beforehand (light, "
                        "so the load generator takes little of the CPU it shares with the "
                        "server); httpx: httpx's async client")
    args = parser.parse_args(argv)
    if not (0 < args.requests <= 100_000 and 0 < args.concurrency <= 500):
        parser.error("--requests must be 1..100000 and --concurrency 1..500")
    rng = random.Random(args.seed)
    uploads = pictures()
    jobs = valid_jobs(rng, args.requests, args.heavy_share, uploads)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "convarith.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, env={**os.environ},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("the server did not start", file=sys.stderr)
                return 2
            time.sleep(0.1)
        # warm up: every endpoint (the engine compiles its kernels on first use) ...
        for _, (method, path, body) in [workload(random.Random(i), 0.0, uploads)
                                        for i in range(40)]:
            httpx.request(method, base + path, json=body, timeout=120)
        # ... and each heavy request once (the engine keeps a compiled kernel per picture size)
        for image in ["sample", *uploads.values()]:
            httpx.post(base + "/api/image", json={"image": image, "kernel": "edge"}, timeout=120)
        httpx.post(base + "/api/footprint", json={"input_size": [34, 34, 34], "kernel_size": 1,
                                                  "frames": True}, timeout=120)
        time.sleep(1.0)
        rss_rest = tree_rss_mb(server.pid)
        peak = [rss_rest]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.02):
                peak[0] = max(peak[0], tree_rss_mb(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
        if args.client == "raw":
            results, wall = asyncio.run(
                run_raw("127.0.0.1", port, jobs, args.concurrency, args.time_limit))
        else:
            results, wall = asyncio.run(run_httpx(base, jobs, args.concurrency, args.time_limit))
        server_cpu = cpu_seconds(server.pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
        sampling.set()
        sampler.join()
        time.sleep(3.0)
        rss_after = tree_rss_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    by_group, failures = results.by_group, results.failures
    finished = sum(len(v) for v in by_group.values())
    failed = sum(failures.values())
    unfinished = len(jobs) - finished - failed
    heavy = sum(1 for group, _ in jobs if group == "heavy")
    print(f"{len(jobs)} requests ({heavy} heavy) at concurrency {args.concurrency}: {finished} ok, "
          f"{failed} failed, {unfinished} not run in time; {wall:.1f} s wall, "
          f"{finished / wall:.0f} requests/s")
    table(results.by_path)
    table(by_group)
    print("time spent in the server (Server-Timing: app reached -> response started):")
    table(results.server_by_group)
    done = max(1, finished + failed)
    print(f"CPU per request: server {server_cpu / done * 1e3:.2f} ms "
          f"({server_cpu:.1f} s in all, {server_cpu / wall * 100:.0f}% of one core), "
          f"load generator ({args.client}) {client_cpu / done * 1e3:.2f} ms "
          f"({client_cpu:.1f} s); {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}")
    for what, count in sorted(failures.items()):
        print(f"FAILED {count} x {what}")
    light_p95 = percentile(by_group["light"], 95) * 1e3
    print(f"server RSS (with its heavy-work process, if any): {rss_rest:.0f} MB at rest (warmed up), {peak[0]:.0f} MB peak, "
          f"{rss_after:.0f} MB 3 s after the run")
    problems = []
    if failed or unfinished:
        problems.append(f"{failed} failed and {unfinished} unfinished requests")
    if light_p95 > args.light_p95_ms:
        problems.append(f"light p95 {light_p95:.0f} ms is over {args.light_p95_ms:.0f} ms")
    if rss_after > rss_rest + args.rss_slack_mb:
        problems.append(f"RSS after the run {rss_after:.0f} MB is over {rss_rest:.0f} + "
                        f"{args.rss_slack_mb:.0f} MB")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
