"""Load run of the explorer on loopback: light requests stay fast while heavy ones run.

Starts ``convarith serve`` on a free 127.0.0.1 port in a subprocess and sends
``--requests`` requests with ``--concurrency`` clients (httpx, async), mixing

* light requests: ``GET /api/health`` and the shape/arithmetic endpoints the
  page calls on every change (resolve, explain, geometry, footprint of one
  cell, stack, solve);
* heavy ones (``--heavy-share`` of them): picture uploads (a 4096x4096 RGBA
  PNG, a progressive 2048x2048 JPEG, a 16-bit grey PNG, the sample) and the
  largest frame list ``/api/footprint`` gives (a 34x34x34 input, 39,304 taps).

It prints p50/p95/p99 latency per endpoint and for the light and heavy groups,
the failures (any status but 200), and the server's memory (RSS, sampled
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


async def run(base: str, jobs: list[tuple[str, Job]], concurrency: int, time_limit: float
              ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, int], float]:
    queue: asyncio.Queue[tuple[str, Job]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    by_path: dict[str, list[float]] = defaultdict(list)
    by_group: dict[str, list[float]] = defaultdict(list)
    failures: dict[str, int] = defaultdict(int)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while True:
            try:
                group, (method, path, body) = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            start = time.perf_counter()
            try:
                response = await client.request(method, base + path, json=body)
                status = response.status_code
            except httpx.HTTPError as error:
                status = type(error).__name__  # type: ignore[assignment]
            elapsed = time.perf_counter() - start
            if status == 200:
                by_path[f"{method} {path}"].append(elapsed)
                by_group[group].append(elapsed)
            else:
                failures[f"{method} {path} -> {status}"] += 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        started = time.perf_counter()
        tasks = [asyncio.create_task(client_loop(client)) for _ in range(concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=time_limit)
        for task in pending:
            task.cancel()
        wall = time.perf_counter() - started
    return by_path, by_group, failures, wall


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
        rss_rest = rss_mb(server.pid)
        peak = [rss_rest]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.02):
                peak[0] = max(peak[0], rss_mb(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        by_path, by_group, failures, wall = asyncio.run(
            run(base, jobs, args.concurrency, args.time_limit))
        sampling.set()
        sampler.join()
        time.sleep(3.0)
        rss_after = rss_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    finished = sum(len(v) for v in by_group.values())
    failed = sum(failures.values())
    unfinished = len(jobs) - finished - failed
    heavy = sum(1 for group, _ in jobs if group == "heavy")
    print(f"{len(jobs)} requests ({heavy} heavy) at concurrency {args.concurrency}: {finished} ok, "
          f"{failed} failed, {unfinished} not run in time; {wall:.1f} s wall, "
          f"{finished / wall:.0f} requests/s")
    table(by_path)
    table(by_group)
    for what, count in sorted(failures.items()):
        print(f"FAILED {count} x {what}")
    light_p95 = percentile(by_group["light"], 95) * 1e3
    print(f"server RSS: {rss_rest:.0f} MB at rest (warmed up), {peak[0]:.0f} MB peak, "
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
