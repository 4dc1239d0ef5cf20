"""Load run of the explorer API on loopback: latency percentiles under concurrency.

Starts the explorer with uvicorn on a free 127.0.0.1 port in a subprocess,
sends ``--requests`` requests with ``--concurrency`` clients (httpx, async)
spread over the endpoints the page calls on every change (geometry, resolve,
footprint, stack, solve, plus a share of image runs), and prints p50 / p95 /
p99 latency per endpoint and overall, the throughput and any errors. Bounded
in time by ``--time-limit``: whatever has not finished by then is cancelled
and counted.

    .venv/bin/python benchmarks/load.py --requests 1000 --concurrency 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def workload(rng: random.Random, image_share: float) -> tuple[str, dict[str, Any]]:
    """One request like the page sends: random but valid settings."""
    size = [rng.randint(5, 64), rng.randint(5, 64)]
    settings: dict[str, Any] = {
        "input_size": size, "kernel_size": rng.choice([1, 3, 5]), "strides": rng.choice([1, 2]),
        "dilation": rng.choice([1, 1, 2]), "padding": rng.choice(["valid", "same", "full"]),
        "convention": rng.choice([None, "keras", "torch", "jax", "onnx"]),
    }
    roll = rng.random()
    if roll < image_share:
        return "/api/image", {"image": "sample", "kernel": rng.choice(["edge", "blur", "sharpen"]),
                              "strides": settings["strides"], "padding": settings["padding"]}
    kinds = ["/api/geometry"] * 4 + ["/api/resolve"] * 2 + ["/api/footprint", "/api/stack", "/api/solve"]
    path = rng.choice(kinds)
    if path == "/api/footprint":
        return path, {**settings, "padding": "same", "output": [0, 0]}
    if path == "/api/stack":
        return path, {"input_size": size, "layers": [{"kernel_size": 3, "padding": "same"},
                                                     {"kernel_size": 3, "strides": 2}]}
    if path == "/api/solve":
        return path, {"size": size[0], "target": max(1, size[0] // 2)}
    return path, settings


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def run(base: str, total: int, concurrency: int, time_limit: float, seed: int,
              image_share: float) -> int:
    rng = random.Random(seed)
    jobs = [workload(rng, image_share) for _ in range(total)]
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    latencies: dict[str, list[float]] = defaultdict(list)
    failures: dict[str, int] = defaultdict(int)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while True:
            try:
                path, body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            start = time.perf_counter()
            try:
                response = await client.post(base + path, json=body)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            elapsed = time.perf_counter() - start
            if ok:
                latencies[path].append(elapsed)
            else:
                failures[path] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        started = time.perf_counter()
        tasks = [asyncio.create_task(client_loop(client)) for _ in range(concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=time_limit)
        for task in pending:
            task.cancel()
        wall = time.perf_counter() - started
    finished = sum(len(v) for v in latencies.values())
    unfinished = total - finished - sum(failures.values())
    print(f"{finished} ok, {sum(failures.values())} failed, {unfinished} not run in time; "
          f"{wall:.2f} s wall, {finished / wall:.0f} requests/s at concurrency {concurrency}")
    print(f"{'endpoint':<16}{'n':>6}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    everything: list[float] = []
    for path in sorted(latencies):
        values = latencies[path]
        everything += values
        print(f"{path:<16}{len(values):>6}{percentile(values, 50) * 1e3:>10.1f}"
              f"{percentile(values, 95) * 1e3:>10.1f}{percentile(values, 99) * 1e3:>10.1f}")
    print(f"{'all':<16}{len(everything):>6}{percentile(everything, 50) * 1e3:>10.1f}"
          f"{percentile(everything, 95) * 1e3:>10.1f}{percentile(everything, 99) * 1e3:>10.1f}")
    return 0 if not failures and not unfinished else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds for the whole run")
    parser.add_argument("--image-share", type=float, default=0.05,
                        help="fraction of requests that run the engine on the sample picture")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "convarith.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, env={**os.environ},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
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
        return asyncio.run(run(base, args.requests, args.concurrency, args.time_limit, args.seed,
                               args.image_share))
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    raise SystemExit(main())
