"""The explorer server's transport limits: JSON bounds, image decoding, Host/Origin, timeouts.

Each class of hostile input from the abuse review gets its variants here; the
server-process checks (timeouts, 16 concurrent first requests, memory) start
``convarith serve`` on a free 127.0.0.1 port.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
Image = pytest.importorskip("PIL.Image")

import httpx  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from convarith.web import create_app  # noqa: E402
from convarith.web.api import Limits  # noqa: E402

SETTINGS = {"input_size": [7, 7], "kernel_size": 3}
#: every JSON endpoint and a valid body for it
ENDPOINTS: dict[str, dict[str, Any]] = {
    "/api/resolve": SETTINGS,
    "/api/explain": SETTINGS,
    "/api/geometry": SETTINGS,
    "/api/footprint": {**SETTINGS, "output": [0, 0]},
    "/api/solve": {"size": 28, "target": 14},
    "/api/stack": {"input_size": [28, 28], "layers": [{"kernel_size": 3}]},
    "/api/port": {**SETTINGS, "to": "torch"},
    "/api/image": {"image": "sample", "kernel": "edge"},
}


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(), raise_server_exceptions=False)


def error_of(response: httpx.Response, status: int | tuple[int, ...]) -> str:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    message = response.json()["error"]["message"]
    assert "Traceback" not in message
    return str(message)


@pytest.mark.parametrize("path", sorted(ENDPOINTS))
def test_every_endpoint_accepts_its_valid_body(client: TestClient, path: str) -> None:
    assert client.post(path, json=ENDPOINTS[path]).status_code == 200


@pytest.mark.parametrize("path", sorted(ENDPOINTS))
@pytest.mark.parametrize("depth", [33, 1000, 5000, 100_000])
@pytest.mark.parametrize("bracket", ["[]", "{}"])
def test_deep_nesting_is_a_400(client: TestClient, path: str, depth: int, bracket: str) -> None:
    opening, closing = (("[", "]") if bracket == "[]" else ('{"a":', "}"))
    body = opening * depth + "1" + closing * depth
    if len(body) > 60_000:
        body = opening * (60_000 // len(opening)) + "1"  # unterminated: still refused, never 500
    message = error_of(client.post(path, content=body), 400)
    assert "deep" in message or "not valid JSON" in message


def test_nesting_at_the_limit_is_parsed(client: TestClient) -> None:
    limits = Limits()
    inner: object = 1
    for _ in range(limits.max_json_depth - 1):
        inner = [inner]
    # accepted by the parser, refused by the field check (422, not 400)
    body = json.dumps({**SETTINGS, "kernel_size": inner})
    error_of(client.post("/api/resolve", content=body), 422)


def _numeric_fields(value: object) -> list[tuple[str, ...]]:
    """Paths (keys and list indices) to every integer in a body."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [()]
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list) else [])
    return [(str(key), *sub) for key, child in items for sub in _numeric_fields(child)]


def _replace(body: object, where: tuple[str, ...], value: str) -> object:
    """``body`` with the number at ``where`` swapped for raw JSON ``value``."""
    marker = "__NUMBER__"
    data = json.loads(json.dumps(body))
    target = data
    for step in where[:-1]:
        target = target[int(step)] if isinstance(target, list) else target[step]
    last = where[-1]
    if isinstance(target, list):
        target[int(last)] = marker
    else:
        target[last] = marker
    return json.dumps(data).replace(f'"{marker}"', value)


BIG_NUMBERS = ["1" * 65, "-" + "9" * 5000, "1" * 4301, "10" * 40, "1e400", "-1e400",
               "1" * 400 + ".5", "NaN", "Infinity", "-Infinity", "123456789012345678901234567890"]


@pytest.mark.parametrize("path", sorted(ENDPOINTS))
def test_big_numbers_in_every_numeric_field_are_4xx(client: TestClient, path: str) -> None:
    body: dict[str, Any] = {**ENDPOINTS[path], "strides": 1, "dilation": 1, "filters": 1, "in_channels": 1}
    if path == "/api/solve":
        body = {**ENDPOINTS[path], "max_kernel": 3, "max_stride": 2, "max_dilation": 1,
                "max_padding": 1}
    if path == "/api/stack":  # only the layers' own fields count
        body = {"input_size": [28, 28],
                "layers": [{"kernel_size": 3, "strides": 1, "dilation": 1, "filters": 1}]}
    if path == "/api/image":  # the image endpoint sets channels itself
        body = {"image": "sample", "strides": 1, "dilation": 1, "kernel": "custom",
                "numbers": [[1, 0], [0, 1]]}
    fields = _numeric_fields(body)
    assert len(fields) >= 3
    for where in fields:
        for number in BIG_NUMBERS:
            response = client.post(path, content=_replace(body, where, number))
            error_of(response, (400, 422))


@pytest.mark.parametrize("cell", ['"a"', "{}", "[]", "null", "true", "1e400", "NaN",
                                  "10" + "0" * 400, "-" + "1" * 60, '"1"'])
@pytest.mark.parametrize("as_text", [False, True])
def test_custom_kernel_cells_are_4xx(client: TestClient, cell: str, as_text: bool) -> None:
    if as_text and cell == '"1"':  # in the text form that is the number 1
        return
    if as_text:  # the "1 0 -1; ..." text form
        text = json.dumps(f"1 0; {json.loads(cell) if cell.startswith(chr(34)) else cell} 1")
        body = '{"image": "sample", "kernel": "custom", "numbers": ' + text + "}"
    else:
        body = '{"image": "sample", "kernel": "custom", "numbers": [[1, 0], [' + cell + ", 1]]}"
    message = error_of(client.post("/api/image", content=body), (400, 422))
    assert "number" in message or "JSON" in message


def test_405_carries_allow(client: TestClient) -> None:
    for path in ENDPOINTS:
        response = client.get(path)
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
    response = client.post("/api/health")
    assert response.status_code == 405 and "GET" in response.headers["allow"]


def test_every_response_says_the_time_the_server_spent(client: TestClient) -> None:
    replies = [client.get("/api/health"), client.get("/"), client.get("/static/nothing.js"),
               client.post("/api/resolve", json={"input_size": [8, 8], "kernel_size": 3}),
               client.post("/api/resolve", content=b"[[[")]
    assert [reply.status_code for reply in replies] == [200, 200, 404, 200, 400]
    for reply in replies:
        name, _, duration = reply.headers["server-timing"].partition(";dur=")
        assert name == "app" and 0 <= float(duration) < 60_000, reply.headers["server-timing"]


@pytest.mark.parametrize("length", [0, 1, 499, 500, 501, 1234])
def test_replies_encode_as_plain_json_whatever_their_list_lengths(length: int) -> None:
    from convarith.web.app import _render

    payload = {"frames": [{"taps": [[i, "é"]], "n": i} for i in range(length)],
               "name": "a\"b", "nested": {"list": list(range(length))}, "empty": []}
    assert json.loads(_render(payload)) == payload
    assert json.loads(_render(payload, piece=7)) == payload


# --------------------------------------------------------------------------- images


def data_url(picture: object, fmt: str, **options: object) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)  # type: ignore[attr-defined]
    kind = "png" if fmt == "PNG" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode()


def gradient(width: int, height: int) -> np.ndarray:
    return np.add.outer(np.arange(height), np.arange(width)) / (width + height - 2)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "RGBA", "I;16", "P"])
@pytest.mark.parametrize("size", [(5, 3), (300, 200), (1024, 64)])
def test_png_modes_are_accepted_with_their_grey_values(
    client: TestClient, mode: str, size: tuple[int, int]
) -> None:
    width, height = size
    values = gradient(width, height)
    if mode == "I;16":
        picture = Image.fromarray(np.round(values * 65535).astype(np.uint16))
        assert picture.mode == "I;16"
    else:
        picture = Image.fromarray(np.round(values * 255).astype(np.uint8)).convert(mode)
    body = {"image": data_url(picture, "PNG"), "kernel": "identity", "padding": "same",
            "format": "array"}
    response = client.post("/api/image", json=body)
    assert response.status_code == 200, (mode, response.text[:300])
    out = np.array(response.json()["output"])
    scale = min(1.0, 256 / max(width, height))
    assert out.shape == (max(1, round(height * scale)), max(1, round(width * scale)))
    # grey values survive every mode (up to the 1-bit threshold): top-left dark, bottom-right light
    assert out[0, 0] < 0.2 and out[-1, -1] > 0.8, (mode, out[0, 0], out[-1, -1])


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("size", [(64, 48), (1000, 700)])
def test_jpeg_baseline_and_progressive_are_accepted(
    client: TestClient, progressive: bool, size: tuple[int, int]
) -> None:
    picture = Image.fromarray(np.round(gradient(*size) * 255).astype(np.uint8))
    body = {"image": data_url(picture, "JPEG", progressive=progressive, quality=90)}
    assert client.post("/api/image", json=body).status_code == 200


def repeated_scans(scans: int, side: int = 512) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has ``scans`` scans."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(gradient(side, side) * 255).astype(np.uint8)).save(
        buffer, format="JPEG", progressive=True, quality=20)
    raw = buffer.getvalue()
    starts = [i for i in range(len(raw) - 1) if raw[i:i + 2] == b"\xff\xda"]
    last = raw[starts[-1]:-2]
    return raw[:-2] + last * (scans - len(starts)) + b"\xff\xd9"


@pytest.mark.parametrize("scans", [33, 500, 20_000])
def test_jpeg_with_too_many_scans_is_refused_before_decoding(client: TestClient, scans: int) -> None:
    raw = repeated_scans(scans)
    if len(raw) > Limits().max_upload_bytes:
        raw = raw[: Limits().max_upload_bytes]
    start = time.perf_counter()
    response = client.post("/api/image", json={
        "image": "data:image/jpeg;base64," + base64.b64encode(raw).decode()})
    message = error_of(response, 413)
    assert "scans" in message
    assert time.perf_counter() - start < 5


def test_jpeg_at_the_scan_limit_is_decoded(client: TestClient) -> None:
    raw = repeated_scans(Limits().max_jpeg_scans)
    response = client.post("/api/image", json={
        "image": "data:image/jpeg;base64," + base64.b64encode(raw).decode()})
    assert response.status_code == 200, response.text[:300]


# --------------------------------------------------------------------------- Host and Origin


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example",
                                  "localhost.evil.example:80", "[::2]:8000", ""])
def test_foreign_host_is_refused(host: str) -> None:
    client = TestClient(create_app(allowed_hosts=("127.0.0.1", "localhost", "::1")),
                        base_url="http://127.0.0.1:8000")
    for method, path in (("GET", "/api/health"), ("GET", "/"), ("POST", "/api/resolve")):
        response = client.request(method, path, json=SETTINGS, headers={"host": host})
        assert response.status_code == 403, (host, path)
        assert "Host" in response.json()["error"]["message"]


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "127.0.0.1"])
def test_loopback_hosts_are_served(host: str) -> None:
    client = TestClient(create_app(allowed_hosts=("127.0.0.1", "localhost", "::1")),
                        base_url="http://127.0.0.1:8000")
    assert client.get("/api/health", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("path", sorted(ENDPOINTS))
@pytest.mark.parametrize("headers", [
    {"origin": "http://evil.example"}, {"origin": "null"},
    {"origin": "http://127.0.0.1:9999"}, {"origin": "http://localhost:8000"},
    {"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"},
])
def test_cross_origin_posts_are_refused(path: str, headers: dict[str, str]) -> None:
    client = TestClient(create_app(), base_url="http://127.0.0.1:8000")
    body = json.dumps(ENDPOINTS[path])
    for content_type in ("text/plain", "application/json"):
        response = client.post(path, content=body,
                               headers={**headers, "content-type": content_type})
        assert response.status_code == 403
        assert "cross-origin" in response.json()["error"]["message"]


def test_same_origin_and_non_browser_posts_are_served() -> None:
    client = TestClient(create_app(), base_url="http://127.0.0.1:8000")
    for headers in ({}, {"origin": "http://127.0.0.1:8000"},
                    {"origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-origin"},
                    {"sec-fetch-site": "none"}):
        assert client.post("/api/resolve", json=SETTINGS, headers=headers).status_code == 200
    # a page elsewhere may still GET the page itself (a link), never the API by POST
    assert client.get("/", headers={"sec-fetch-site": "cross-site"}).status_code == 200


# --------------------------------------------------------------------------- a real server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


HEADER_TIMEOUT_S = 1.5


@pytest.fixture()
def server() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "convarith.cli", "serve", "--port", str(port),
         "--header-timeout", str(HEADER_TIMEOUT_S)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    with socket.socket() as probe:  # wait for the port only: no request before the test's own
        while probe.connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline and process.poll() is None, "server did not start"
            time.sleep(0.05)
    yield port, process
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def test_sixteen_concurrent_first_image_requests_all_succeed(server: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, _ = server

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            replies = await asyncio.gather(*(
                client.post("/api/image", json={"image": "sample", "kernel": kernel})
                for kernel in ["edge", "blur", "sharpen", "sobel_x"] * 4))
            return [r.status_code for r in replies]

    assert asyncio.run(burst()) == [200] * 16


def test_idle_and_half_sent_connections_are_closed(server: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, _ = server
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    for number, sock in enumerate(sockets):
        sock.settimeout(HEADER_TIMEOUT_S + 10)
        if number % 2:
            sock.sendall(b"POST /api/resolve HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
    start = time.monotonic()
    # light requests are still served while the sockets hang
    assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).status_code == 200
    for sock in sockets:
        assert sock.recv(100) == b""  # closed by the server
        sock.close()
    assert time.monotonic() - start < HEADER_TIMEOUT_S + 5


def test_the_serve_banner_warns_when_bound_to_every_interface() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "convarith.cli", "serve", "--host", "0.0.0.0", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        first, second = process.stdout.readline(), process.stdout.readline()
    finally:
        process.terminate()
        process.wait(timeout=15)
    assert first.startswith("WARNING: --host 0.0.0.0")
    assert "http://" in second and "0.0.0.0" not in second and f":{port}/" in second


# --------------------------------------------------------------------------- frame lists


@pytest.mark.parametrize("seed", range(6))
def test_frame_list_matches_the_footprint_of_every_cell(client: TestClient, seed: int) -> None:
    import random

    rng = random.Random(seed)
    rank = rng.choice([1, 2, 3])
    body: dict[str, Any] = {
        "input_size": [rng.randint(3, 9) for _ in range(rank)],
        "kernel_size": rng.choice([1, 2, 3]), "strides": rng.choice([1, 2]),
        "dilation": rng.choice([1, 2]), "padding": rng.choice(["valid", "same", 1]),
        "transposed": rng.choice([False, True]), "frames": True,
    }
    if body["transposed"] and body["padding"] == 1:
        body["padding"] = "valid"
    if not body["transposed"] and rng.random() < 0.5 and body["padding"] == 1:
        body["padding_mode"] = rng.choice(["reflect", "replicate", "circular"])
    response = client.post("/api/footprint", json=body)
    assert response.status_code == 200, (seed, body, response.text[:200])
    frames = response.json()["frames"]
    from convarith.web import api

    settings = api.parse_settings(body, Limits())  # the same spec the server resolves
    resolved = api._resolve(api.build_spec(settings)[0], settings)
    cells = list(resolved.positions())
    assert [f["output"] for f in frames] == [list(c) for c in cells]
    for frame, cell in zip(frames, cells):
        expected = [{"kernel": list(t.kernel), "position": list(t.position),
                     "source": None if t.source is None else list(t.source),
                     "in_padding": t.in_padding} for t in resolved.footprint(cell)]
        assert frame["taps"] == expected, (seed, body, cell)


def test_frame_list_over_the_cap_is_refused(client: TestClient) -> None:
    body = {"input_size": [46, 46, 46], "kernel_size": 1, "frames": True}
    message = error_of(client.post("/api/footprint", json=body), 422)
    assert "97336 taps" in message and str(Limits().max_frame_taps) in message


def test_a_body_that_never_finishes_is_a_408() -> None:
    import anyio

    app = create_app(Limits(max_body_seconds=0.3))
    sent: list[dict[str, Any]] = []
    first = [True]

    async def receive() -> dict[str, Any]:
        if first[0]:
            first[0] = False
            return {"type": "http.request", "body": b'{"input_size": [5, ', "more_body": True}
        await anyio.sleep(30)  # the rest never comes
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/resolve", "raw_path": b"/api/resolve",
             "root_path": "", "query_string": b"", "http_version": "1.1", "scheme": "http",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]}
    start = time.monotonic()
    anyio.run(app, scope, receive, send)
    assert time.monotonic() - start < 10
    assert sent[0]["status"] == 408
    assert b"took over 0.3 s" in sent[1]["body"]


# --------------------------------------------------------------------------- heavy-work process


def _runs_out_of_memory(data: Any, limits: Limits) -> dict[str, Any]:
    raise MemoryError


def _dies(data: Any, limits: Limits) -> dict[str, Any]:
    import os

    os._exit(3)


def test_heavy_requests_in_a_process_answer_as_in_a_thread() -> None:
    from convarith.web.app import HeavyWorker

    frames = {"input_size": [9, 8], "kernel_size": 3, "strides": 2, "frames": True}
    too_big = {"input_size": [46, 46, 46], "kernel_size": 1, "frames": True}
    bad_picture = {"image": "data:image/png;base64,iVBORw0KGgo=", "kernel": "edge"}
    in_thread = TestClient(create_app(), raise_server_exceptions=False)
    with TestClient(create_app(heavy_worker=HeavyWorker()),
                    raise_server_exceptions=False) as in_process:
        for path, body in [("/api/footprint", frames), ("/api/footprint", too_big),
                           ("/api/image", bad_picture), ("/api/image", ENDPOINTS["/api/image"])]:
            mine, theirs = in_process.post(path, json=body), in_thread.post(path, json=body)
            assert (mine.status_code, mine.json()) == (theirs.status_code, theirs.json()), path
        assert [in_process.post("/api/footprint", json=frames).status_code] == [200]
        gif = {"input_size": [4, 4], "kernel_size": 3}
        mine, theirs = (in_process.post("/api/animation.gif", json=gif),
                        in_thread.post("/api/animation.gif", json=gif))
        assert mine.status_code == theirs.status_code == 200, mine.text[:200]
        assert mine.content == theirs.content and mine.content[:6] == b"GIF89a"


def test_heavy_process_out_of_memory_or_dead_is_a_503_and_the_next_request_is_served() -> None:
    from convarith.web.api import ApiError
    from convarith.web.app import HeavyWorker

    async def ask(worker: HeavyWorker, handler: Any) -> tuple[int, str]:
        try:
            reply = await worker.run(handler, {"input_size": [5], "kernel_size": 3,
                                               "frames": True}, Limits())
        except ApiError as error:
            return error.status, error.message
        return 200, reply.decode()

    from convarith.web import api

    worker = HeavyWorker(memory_bytes=4 << 30)
    try:
        status, message = asyncio.run(ask(worker, _runs_out_of_memory))
        assert status == 503 and "more memory" in message and "4096 MB" in message, message
        status, message = asyncio.run(ask(worker, _dies))
        assert status == 503 and "stopped" in message, message
        status, text = asyncio.run(ask(worker, api.footprint_payload))
        assert status == 200 and len(json.loads(text)["frames"]) == 3, text[:200]
    finally:
        worker.close()


def test_the_heavy_process_ends_when_the_server_is_killed(
        server: tuple[int, subprocess.Popen[bytes]]) -> None:
    import os
    import signal

    port, process = server
    body = {"input_size": [9, 9], "kernel_size": 3, "frames": True}
    reply = httpx.post(f"http://127.0.0.1:{port}/api/footprint", json=body, timeout=60)
    assert reply.status_code == 200
    children = [int(child) for task in os.listdir(f"/proc/{process.pid}/task")
                for child in open(f"/proc/{process.pid}/task/{task}/children").read().split()]
    assert children, "the frame list was not answered by a heavy-work process"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{child}") for child in children):
        status = [open(f"/proc/{child}/stat").read().split()[2] for child in children
                  if os.path.exists(f"/proc/{child}")]
        if all(state == "Z" for state in status):
            break
        assert time.monotonic() < deadline, f"heavy-work processes {children} outlived the server"
        time.sleep(0.1)
