"""The explorer's JSON API: every endpoint, every rejection, and the geometry it sends.

Expected numbers come from hand derivations (28 -> 14 with 'same' pads (0, 1);
the lesson's 28, k3, p1, s3 -> 10; PyTorch's transposed formula) or from
convarith's own resolved spec, which the page must reproduce exactly; images
are checked against a slow loop written here.
"""

from __future__ import annotations

import base64
import io
import random
import struct
import sys
import warnings
import zlib

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
Image = pytest.importorskip("PIL.Image")

with warnings.catch_warnings():  # starlette's notice about httpx2
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

import convarith  # noqa: E402
from convarith import ConvSpec  # noqa: E402
from convarith.web import create_app  # noqa: E402
from convarith.web.api import Limits  # noqa: E402
from convarith.web.app import STATIC_DIR  # noqa: E402


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


def post(client: TestClient, path: str, body: object) -> tuple[int, dict]:
    response = client.post(path, json=body)
    assert response.headers["content-type"].startswith("application/json")
    return response.status_code, response.json()


def rejected(client: TestClient, path: str, body: object, status: int = 422, *words: str) -> str:
    code, data = post(client, path, body)
    assert code == status, data
    message = data["error"]["message"]
    assert data["error"]["status"] == status
    for word in words:
        assert word in message, message
    return message


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(raw: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(raw).decode()


# --------------------------------------------------------------------------- page and health


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "convarith" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "style.css", "sample.png"):
        assert client.get(f"/static/{name}").status_code == 200


def test_page_loads_nothing_from_the_network():
    import re

    for path in STATIC_DIR.iterdir():
        if path.suffix in (".html", ".js", ".css"):
            urls = set(re.findall(r"https?://[^\s\"')]+", path.read_text()))
            assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)


@pytest.mark.parametrize(
    "path",
    ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/%2e%2e%2fapi.py",
     "/static//etc/passwd", "/static/../../../../etc/passwd", "/static/..\\app.py"],
)
def test_static_files_refuse_path_traversal(client, path):
    response = client.get(path)
    assert response.status_code in (400, 404)
    assert "create_app" not in response.text and "root:" not in response.text


def test_health_lists_parts_and_limits(client):
    data = client.get("/api/health").json()
    assert data["version"] == convarith.__version__
    assert set(data["parts"]) >= {"frontdoors", "engine", "port", "receptive", "pillow"}
    assert data["limits"]["max_input"] == 64


def test_unknown_api_path_and_wrong_method_are_json_errors(client):
    response = client.get("/api/nothing")
    assert response.status_code == 404 and response.json()["error"]["status"] == 404
    response = client.get("/api/resolve")
    assert response.status_code == 405 and "error" in response.json()


# --------------------------------------------------------------------------- resolve / explain


def test_resolve_same_stride_two_pads_the_odd_pixel_at_the_end(client):
    code, data = post(client, "/api/resolve",
                      {"input_size": [28, 28], "kernel_size": 3, "strides": 2, "padding": "same"})
    assert code == 200
    assert data["output_size"] == [14, 14]
    assert data["padding"] == [[0, 1], [0, 1]]  # hand: total (14-1)*2+3-28 = 1, odd pixel at end
    assert data["dropped"] == [0, 0]
    assert data["explain"]["output_size"] == [14, 14]
    assert any("PyTorch" in note for note in data["explain"]["notes"])


def test_resolve_lesson_example_and_dropped_rows(client):
    code, data = post(client, "/api/resolve",
                      {"input_size": [28, 28], "kernel_size": 3, "strides": 3, "padding": 1})
    assert code == 200 and data["output_size"] == [10, 10]  # floor((28+2-3)/3)+1
    assert data["dropped"] == [0, 0]
    code, data = post(client, "/api/resolve", {"input_size": [28, 28], "kernel_size": 3, "strides": 2})
    assert data["output_size"] == [13, 13] and data["dropped"] == [1, 1]  # row 27 never read
    assert any("dropped" in note for note in data["explain"]["notes"])


def test_resolve_transposed_crop_and_output_padding(client):
    code, data = post(client, "/api/resolve", {
        "input_size": [28, 28], "kernel_size": 4, "strides": 2, "padding": 1, "transposed": True})
    assert code == 200 and data["output_size"] == [56, 56]  # (28-1)*2 - 2 + 4
    assert data["crop"] == [[1, 1], [1, 1]] and data["kind"] == "conv_transpose"
    code, data = post(client, "/api/resolve", {
        "input_size": [5], "rank": 1, "kernel_size": 3, "strides": 2, "padding": [[1, 1]],
        "transposed": True, "output_padding": [1]})
    assert code == 200 and data["output_size"] == [10]  # (5-1)*2 - 2 + 3 + 1


def test_resolve_pooling_groups_and_shapes(client):
    code, data = post(client, "/api/resolve", {
        "input_size": [5, 5], "kernel_size": 2, "strides": 2, "pool": "max", "ceil_mode": True})
    assert code == 200 and data["output_size"] == [3, 3] and data["kind"] == "max_pool"
    code, data = post(client, "/api/resolve", {
        "input_size": [8, 8], "in_channels": 4, "filters": 6, "groups": 2, "kernel_size": 3})
    assert data["output_shape"] == [6, 6, 6]
    assert data["kernel_shape"] == {"keras": [3, 3, 2, 6], "torch": [6, 2, 3, 3]}
    assert data["channel_groups"] == {"inputs": [[0, 1], [2, 3]], "outputs": [[0, 1, 2], [3, 4, 5]]}
    code, data = post(client, "/api/resolve", {
        "input_size": [8, 8], "in_channels": 4, "filters": 6, "groups": 2, "kernel_size": 3,
        "transposed": True, "strides": 2})
    # torch.nn.ConvTranspose2d(4, 6, 3, groups=2).weight.shape == (4, 3, 3, 3)
    assert data["kernel_shape"]["torch"] == [4, 3, 3, 3]


def test_resolve_one_dimensional_causal(client):
    code, data = post(client, "/api/resolve", {
        "rank": 1, "input_size": [16], "kernel_size": 3, "dilation": 4, "padding": "causal"})
    assert code == 200 and data["padding"] == [[8, 0]] and data["output_size"] == [16]


@pytest.mark.parametrize("convention, accepted, word", [
    ("keras", False, "Keras"), ("torch", False, "PyTorch"), ("jax", True, None), ("onnx", None, None),
])
def test_conventions_report_their_own_rejections(client, convention, accepted, word):
    code, data = post(client, "/api/resolve", {
        "input_size": [7, 7], "kernel_size": 3, "strides": 2, "dilation": 2, "padding": "same",
        "convention": convention})
    assert code == 200
    report = data["convention"]
    assert report["name"] == convention
    if accepted is not None:
        assert report["accepted"] is accepted
    if word:
        assert word in report["error"]
    # the drawing stays available whatever the framework says
    assert data["output_size"] == [4, 4]


def test_keras_rejects_explicit_padding_that_jax_accepts(client):
    body = {"input_size": [8, 8], "kernel_size": 3, "padding": [[0, 2], [1, 1]]}
    _, keras = post(client, "/api/resolve", {**body, "convention": "keras"})
    _, jax = post(client, "/api/resolve", {**body, "convention": "jax"})
    assert keras["convention"]["accepted"] is False and "Keras" in keras["convention"]["error"]
    assert jax["convention"]["accepted"] is True and jax["padding"] == [[0, 2], [1, 1]]


def test_explain_endpoint(client):
    code, data = post(client, "/api/explain", {"input_size": [28, 28], "kernel_size": 3,
                                                "strides": 3, "padding": 1})
    assert code == 200 and data["output_size"] == [10, 10]
    assert data["axes"][0]["steps"][-1] == "O = floor(27 / 3) + 1 = 10"
    assert "text" in data


# --------------------------------------------------------------------------- every rejection of the settings

BASE = {"input_size": [7, 7], "kernel_size": 3}


@pytest.mark.parametrize("changes, field, status", [
    ({"input_size": None}, "input_size", 422),
    ({"input_size": [65, 7]}, "input_size", 422),
    ({"input_size": [0, 7]}, "input_size", 422),
    ({"input_size": [7, 7], "rank": 1}, "input_size", 422),
    ({"input_size": [7, "7"]}, "input_size", 422),
    ({"input_size": [True, 7]}, "input_size", 422),
    ({"kernel_size": 16}, "kernel_size", 422),
    ({"kernel_size": [3]}, "kernel_size", 422),
    ({"strides": 0}, "strides", 422),
    ({"strides": 9}, "strides", 422),
    ({"dilation": 0}, "dilation", 422),
    ({"padding": "half"}, "padding", 422),
    ({"padding": [[-1, 0], [0, 0]]}, "padding", 422),
    ({"padding": [[0, 33], [0, 0]]}, "padding", 422),
    ({"padding": [[0, 1, 2], [0, 0]]}, "padding", 422),
    ({"padding": {"lo": 1}}, "padding", 422),
    ({"padding_mode": "mirror"}, "padding_mode", 422),
    ({"groups": 0}, "groups", 422),
    ({"in_channels": 300}, "in_channels", 422),
    ({"transposed": "yes"}, "transposed", 422),
    ({"pool": "min"}, "pool", 422),
    ({"ceil_mode": 1}, "ceil_mode", 422),
    ({"convention": "tensorflow"}, "convention", 422),
    ({"rank": 4}, "rank", 422),
    ({"output_padding": [9, 9], "transposed": True}, "output_padding", 422),
])
def test_bad_settings_name_the_field(client, changes, field, status):
    body = {**BASE, **changes}
    body = {k: v for k, v in body.items() if v is not None}
    code, data = post(client, "/api/resolve", body)
    assert code == status, data
    assert data["error"]["field"] == field
    assert field in data["error"]["message"]


@pytest.mark.parametrize("changes, words", [
    ({"groups": 2, "in_channels": 3}, ("divisible", "groups")),
    ({"kernel_size": 9}, ("kernel spans 9",)),
    ({"padding": "causal"}, ("causal", "1-D")),
    ({"transposed": True, "strides": 2, "output_padding": [2, 2]}, ("output_padding",)),
    ({"transposed": True, "pool": "max"}, ("pool",)),
    ({"padding_mode": "reflect", "padding": 7}, ("reflect",)),
    ({"transposed": True, "padding": "full"}, ("transposed",)),
])
def test_settings_convarith_rejects_come_back_in_words(client, changes, words):
    rejected(client, "/api/resolve", {**BASE, **changes}, 422, *words)


@pytest.mark.parametrize("raw, status", [
    (b"", 400), (b"{not json", 400), (b"[1, 2]", 400), (b"\xff\xfe", 400),
])
def test_malformed_bodies(client, raw, status):
    response = client.post("/api/resolve", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"]["message"]


def test_oversized_body_is_refused(client):
    response = client.post("/api/resolve", content=b"{" + b" " * 70_000 + b"}",
                           headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_limits_are_per_app():
    small = TestClient(create_app(Limits(max_input=8)))
    assert small.post("/api/resolve", json={"input_size": [9, 9], "kernel_size": 3}).status_code == 422
    assert small.post("/api/resolve", json={"input_size": [8, 8], "kernel_size": 3}).status_code == 200


# --------------------------------------------------------------------------- geometry and footprint


def random_settings(rng: random.Random) -> dict:
    rank = rng.choice([1, 2, 2])
    transposed = rng.random() < 0.25
    pool = None if transposed or rng.random() < 0.7 else rng.choice(["max", "avg"])
    body = {
        "rank": rank,
        "input_size": [rng.randint(3, 12) for _ in range(rank)],
        "kernel_size": [rng.randint(1, 4) for _ in range(rank)],
        "strides": [rng.randint(1, 3) for _ in range(rank)],
        "dilation": [rng.randint(1, 2) for _ in range(rank)],
        "transposed": transposed,
        "pool": pool,
    }
    words = ["valid", "same", "explicit"] + ([] if transposed else ["same_lower", "full"])
    word = rng.choice(words)
    if word == "explicit":
        low = -1 if transposed else 0
        body["padding"] = [[rng.randint(low, 2), rng.randint(low, 2)] for _ in range(rank)]
    else:
        body["padding"] = word
    if not transposed and not pool and rng.random() < 0.3:
        body["padding_mode"] = rng.choice(["replicate", "circular", "reflect"])
    return body


def spec_of(body: dict) -> tuple[ConvSpec, tuple[int, ...]]:
    padding = body["padding"]
    if isinstance(padding, list):
        padding = tuple(tuple(p) for p in padding)
    spec = ConvSpec(
        kernel_size=tuple(body["kernel_size"]), strides=tuple(body["strides"]),
        dilation=tuple(body["dilation"]), padding=padding, transposed=body["transposed"],
        pool=body["pool"], padding_mode=body.get("padding_mode", "zeros"), rank=body["rank"])
    return spec, tuple(body["input_size"])


def product(lists):
    result = [()]
    for options in lists:
        result = [(*r, o) for r in result for o in options]
    return result


def test_geometry_matches_the_resolved_spec_everywhere(client):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    checked = 0
    while checked < 40:
        body = random_settings(rng)
        try:
            spec, size = spec_of(body)
            resolved = spec.resolve(size)
        except ValueError:
            assert client.post("/api/geometry", json=body).status_code == 422, (seed, body)
            continue
        code, data = post(client, "/api/geometry", body)
        assert code == 200, (seed, body, data)
        assert data["output_size"] == list(resolved.output_size), (seed, body)
        assert data["padding"] == [list(p) for p in resolved.padding], (seed, body)
        assert data["frames"] == int(np.prod(resolved.output_size))
        axes = data["axes"]
        for out in resolved.positions():
            combos = product([axes[a]["taps"][o] for a, o in enumerate(out)])
            page = sorted(
                (tuple(t["kernel"][0] for t in c), tuple(t["position"][0] for t in c),
                 None if any(t["source"] is None for t in c) else tuple(t["source"][0] for t in c))
                for c in combos)
            want = sorted((t.kernel, t.position, t.source) for t in resolved.footprint(out))
            assert page == want, (seed, body, out)
            for tap in resolved.footprint(out):  # the grid says what each tapped cell holds
                cells = [axes[a]["grid"][p] for a, p in enumerate(tap.position)]
                if tap.source is not None:
                    assert all(c["source"] == s for c, s in zip(cells, tap.source)), (seed, body)
                    assert all(c["kind"] in ("input", "copy") for c in cells)
                else:
                    assert any(c["kind"] in ("padding", "inserted", "beyond") for c in cells)
        for cell in product([range(n) for n in resolved.input_size]):
            combos = product([axes[a]["feeds"][i] for a, i in enumerate(cell)])
            page = sorted((tuple(f[0] for f in c), tuple(f[1] for f in c)) for c in combos)
            assert page == sorted(resolved.feeds(cell)), (seed, body, cell)
        for axis in range(resolved.rank):
            dropped = [c for c in axes[axis]["grid"] if c["kind"] == "dropped"]
            assert len(dropped) == resolved.dropped[axis]
        checked += 1


def test_geometry_refuses_what_is_too_large_to_draw(client):
    rejected(client, "/api/geometry", {"input_size": [64, 64], "kernel_size": 15, "strides": 8,
                                       "transposed": True}, 422, "too many to draw")


def test_footprint_of_an_output_and_an_input_cell(client):
    body = {"input_size": [5, 5], "kernel_size": 3, "strides": 2, "padding": "same"}
    code, data = post(client, "/api/footprint", {**body, "output": [0, 0]})
    assert code == 200
    reads = sorted(tuple(t["source"]) for t in data["taps"] if t["source"])
    assert reads == [(0, 0), (0, 1), (1, 0), (1, 1)]  # hand: padding (1, 1), window rows -1..1
    code, data = post(client, "/api/footprint", {**body, "input": [1, 1]})
    assert sorted(tuple(f["output"]) for f in data["feeds"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_footprint_frame_list_follows_the_animation_order(client):
    body = {"input_size": [4, 5], "kernel_size": 2, "strides": [1, 2], "frames": True}
    code, data = post(client, "/api/footprint", body)
    assert code == 200
    # hand: 3 x 2 outputs, row-major; cell (2, 1) reads rows 2..3, columns 2..3
    assert [f["output"] for f in data["frames"]] == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]]
    assert sorted(t["source"] for t in data["frames"][-1]["taps"]) == [[2, 2], [2, 3], [3, 2], [3, 3]]
    rejected(client, "/api/footprint", {"input_size": [64, 64], "kernel_size": 15,
                                        "padding": "full", "frames": True}, 422, "geometry")


@pytest.mark.parametrize("extra, words", [
    ({"output": [3, 0]}, ("outside",)),
    ({"output": [0]}, ("list of 2",)),
    ({"output": [0, "a"]}, ("integers",)),
    ({"input": [5, 0]}, ("outside",)),
    ({"output": [0, 0], "input": [0, 0]}, ("exactly one",)),
    ({}, ("exactly one",)),
])
def test_footprint_rejections(client, extra, words):
    body = {"input_size": [5, 5], "kernel_size": 3, "strides": 2, "padding": "same", **extra}
    rejected(client, "/api/footprint", body, 422, *words)


# --------------------------------------------------------------------------- solver


def test_solver_finds_stride_two_settings(client):
    code, data = post(client, "/api/solve", {"size": 28, "target": 14, "max_kernel": 3,
                                              "max_dilation": 1})
    assert code == 200
    found = {(s["kernel"], s["stride"], tuple(s["padding"])) for s in data["solutions"]}
    assert (3, 2, (0, 1)) in found and (2, 2, (0, 0)) in found
    for s in data["solutions"]:  # every answer really gives 14
        assert ConvSpec(s["kernel"], strides=s["stride"], dilation=s["dilation"],
                        padding=(tuple(s["padding"]),), rank=1).resolve(28).output_size == (14,)


@pytest.mark.parametrize("body, field", [
    ({"size": 28}, "target"),
    ({"size": 0, "target": 1}, "size"),
    ({"size": 10**6, "target": 1}, "size"),
    ({"size": 28, "target": 14, "max_kernel": 99}, "max_kernel"),
    ({"size": 28, "target": 14, "max_stride": 0}, "max_stride"),
    ({"size": 28, "target": 14, "symmetric": "no"}, "symmetric"),
    ({"size": 28, "target": 14, "max_padding": -1}, "max_padding"),
])
def test_solver_rejections(client, body, field):
    code, data = post(client, "/api/solve", body)
    assert code == 422 and data["error"]["field"] == field


# --------------------------------------------------------------------------- stack and receptive field


def test_stack_sizes_and_receptive_field(client):
    layers = [{"kernel_size": 3, "padding": "same"}, {"kernel_size": 3, "strides": 2},
              {"kernel_size": 2, "strides": 2, "pool": "max"}]
    code, data = post(client, "/api/stack", {"input_size": [16, 16], "layers": layers,
                                              "cell": [0, 0]})
    assert code == 200
    # hand: 16 -same-> 16 -k3 s2-> 7 -pool 2-> 3
    assert [row["output_size"] for row in data["layers"]] == [[16, 16], [7, 7], [3, 3]]
    rf = data["receptive"]
    # cell 0 of the pool reads conv-2 cells 0..1, which read conv-1 cells 0..4, which read 0..5
    assert rf["exact"] == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]
    # hand: size 1 -> 3 -> 3 + 2*1 = 5 -> 5 + 1*2 = 7; jump 1 -> 2 -> 4; start -1 (the 'same' pad)
    assert rf["fields"][-1]["size"] == [7, 7]
    assert rf["fields"][-1]["jump"] == [4, 4]
    assert rf["fields"][-1]["start"] == [-1, -1]


@pytest.mark.parametrize("body, words", [
    ({"input_size": [8, 8], "layers": []}, ("layers",)),
    ({"input_size": [8, 8], "layers": [{"kernel_size": 3}] * 13}, ("at most 12",)),
    ({"input_size": [8, 8], "layers": [{"kernel_size": 3}, {"kernel_size": 9}]}, ("layer 2",)),
    ({"input_size": [8, 8], "layers": [{"kernel_size": 3, "strides": 0}]}, ("layer 1", "strides")),
    ({"input_size": [8, 8], "layers": ["conv"]}, ("layer 1",)),
    ({"input_size": [80, 8], "layers": [{"kernel_size": 3}]}, ("input_size",)),
])
def test_stack_rejections(client, body, words):
    rejected(client, "/api/stack", body, 422, *words)


def test_stack_cell_outside_output_is_reported(client):
    code, data = post(client, "/api/stack", {"input_size": [8, 8], "layers": [{"kernel_size": 3}],
                                              "cell": [6, 0]})
    assert code == 200 and data["receptive"] is None and "outside" in data["receptive_error"]


def test_stack_without_receptive_module_says_so(client, monkeypatch):
    monkeypatch.setitem(sys.modules, "convarith.receptive", None)
    code, data = post(client, "/api/stack", {"input_size": [8, 8], "layers": [{"kernel_size": 3}]})
    assert code == 200 and data["layers"][0]["output_size"] == [6, 6]
    assert "not available" in data["receptive_error"]


# --------------------------------------------------------------------------- port


@pytest.mark.parametrize("to, words", [
    ("keras", ("keras.layers.Conv2D",)), ("torch", ("torch.nn.Conv2d", "F.pad")), ("jax", ("lax.",)),
])
def test_port_writes_code(client, to, words):
    body = {"input_size": [28, 28], "kernel_size": 3, "strides": 2, "padding": "same",
            "in_channels": 3, "filters": 8, "to": to}
    code, data = post(client, "/api/port", body)
    assert code == 200, data
    for word in words:
        assert word in data["code"]


def test_port_rejections_and_missing_module(client, monkeypatch):
    body = {"input_size": [8, 8], "kernel_size": 3}
    rejected(client, "/api/port", body, 422, "to")
    rejected(client, "/api/port", {**body, "to": "caffe"}, 422, "to")
    monkeypatch.setitem(sys.modules, "convarith.port", None)
    rejected(client, "/api/port", {**body, "to": "torch"}, 503, "not available")


# --------------------------------------------------------------------------- image


def correlate(x: np.ndarray, k: np.ndarray, stride: int = 1) -> np.ndarray:
    """Slow valid cross-correlation, the reference for the image endpoint."""
    kh, kw = k.shape
    rows = (x.shape[0] - kh) // stride + 1
    cols = (x.shape[1] - kw) // stride + 1
    out = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            out[i, j] = (x[i * stride:i * stride + kh, j * stride:j * stride + kw] * k).sum()
    return out


def test_image_sample_with_identity_kernel_is_the_picture_cropped(client):
    code, data = post(client, "/api/image", {"image": "sample", "kernel": "identity",
                                              "format": "array"})
    assert code == 200, data
    sample = np.asarray(Image.open(STATIC_DIR / "sample.png").convert("L"), np.float64) / 255
    assert data["input_size"] == list(sample.shape)
    assert data["output_size"] == [sample.shape[0] - 2, sample.shape[1] - 2]
    np.testing.assert_allclose(data["output"], sample[1:-1, 1:-1], atol=1e-6)
    assert data["output_png"].startswith("data:image/png;base64,")


def test_image_upload_custom_kernel_and_stride(client):
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, size=(10, 13), dtype=np.uint8)
    body = {"image": data_url(png_bytes(pixels)), "kernel": "custom",
            "numbers": "1 0 -1; 2 0 -2", "strides": 2, "format": "array"}
    code, data = post(client, "/api/image", body)
    assert code == 200, data
    want = correlate(pixels / 255.0, np.array([[1, 0, -1], [2, 0, -2]]), stride=2)
    np.testing.assert_allclose(data["output"], want, atol=1e-5)


def test_image_pooling_and_rgb_jpeg(client):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:4, :4] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
    code, data = post(client, "/api/image", {"image": data_url(buffer.getvalue(), "jpeg"),
                                              "pool": "max", "kernel_size": 2, "strides": 2})
    assert code == 200, data
    assert data["output_size"] == [4, 4]


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (the pixel data is never valid)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("image, status, words", [
    ("https://example.com/cat.png", 415, ("data: URL",)),
    (42, 422, ("image",)),
    ("data:image/gif;base64,R0lGODlhAQABAAAAACw=", 415, ("PNG or JPEG",)),
    ("data:image/png;base64,@@@", 415, ()),
    ("data:image/png;base64," + base64.b64encode(b"not a png").decode(), 415, ("PNG or JPEG",)),
    (data_url(bomb_png(64, 64)), 422, ("decoded",)),  # a good header, broken pixel data
    (data_url(bomb_png(30_000, 30_000)), 413, ("pixels",)),
    (data_url(bomb_png(9000, 10)), 413, ("per side",)),
])
def test_image_rejections(client, image, status, words):
    rejected(client, "/api/image", {"image": image, "kernel": "edge"}, status, *words)


def test_image_disguised_format_is_refused(client):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buffer, format="GIF")
    rejected(client, "/api/image", {"image": data_url(buffer.getvalue()), "kernel": "edge"},
             415, "PNG or JPEG")


def test_image_upload_byte_cap():
    small = TestClient(create_app(Limits(max_upload_bytes=1000)))
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    response = small.post("/api/image", json={"image": data_url(png_bytes(noise))})
    assert response.status_code == 413


@pytest.mark.parametrize("extra, words", [
    ({"kernel": "emboss"}, ("kernel",)),
    ({"kernel": "custom", "numbers": "1 2; 3"}, ("same count",)),
    ({"kernel": "custom", "numbers": "1 x"}, ("numbers",)),
    ({"kernel": "custom", "numbers": []}, ("numbers",)),
    ({"kernel": "custom", "numbers": "nan 1"}, ("finite",)),
    ({"kernel": "custom", "numbers": ";".join(["1 " * 16] * 16)}, ("at most",)),
    ({"strides": 0}, ("strides",)),
])
def test_image_kernel_rejections(client, extra, words):
    rejected(client, "/api/image", {"image": "sample", **extra}, 422, *words)


def test_image_without_engine_is_503(client, monkeypatch):
    monkeypatch.delattr(convarith, "conv")
    rejected(client, "/api/image", {"image": "sample"}, 503, "engine")


# --------------------------------------------------------------------------- the serve command


def test_serve_command_binds_loopback_by_default(monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    from convarith.cli import build_parser

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.open) == ("127.0.0.1", 8000, False)
    assert args.func(args) == 0
    assert len(calls) == 1
    assert {k: calls[0][k] for k in ("host", "port", "log_level")} == {
        "host": "127.0.0.1", "port": 8000, "log_level": "warning"}
    assert calls[0]["timeout_keep_alive"] > 0 and calls[0]["limit_concurrency"] > 50
    args = build_parser().parse_args(["serve", "--port", "0"])
    with pytest.raises(ValueError, match="--port"):
        args.func(args)
