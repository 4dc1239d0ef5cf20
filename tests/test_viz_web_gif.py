"""The explorer's GIF export: ``POST /api/animation.gif`` draws what ``convarith animate`` draws."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("PIL")
pytest.importorskip("starlette")
from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from convarith import ConvSpec, animate  # noqa: E402
from convarith.web import api  # noqa: E402
from convarith.web.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


@pytest.mark.parametrize(("body", "spec", "size", "kwargs"), [
    ({"input_size": [5, 5], "kernel_size": 3, "strides": 2, "padding": "same"},
     ConvSpec(3, strides=2, padding="same"), (5, 5), {}),
    ({"input_size": [9], "kernel_size": [3], "dilation": [2], "rank": 1},
     ConvSpec((3,), dilation=2), (9,), {}),
    ({"input_size": [3, 3], "kernel_size": 3, "strides": 2, "padding": [[1, 1], [1, 1]], "transposed": True,
      "view": "scatter"}, ConvSpec(3, strides=2, padding=1, transposed=True), (3, 3), {"view": "scatter"}),
    ({"input_size": [8, 8], "kernel_size": 3, "every": 5}, ConvSpec(3), (8, 8), {"every": 5}),
    ({"input_size": [3, 4, 4], "kernel_size": [2, 3, 3], "rank": 3}, ConvSpec((2, 3, 3)), (3, 4, 4), {}),
])
def test_gif_is_the_commands_animation(client, body, spec, size, kwargs):
    response = client.post("/api/animation.gif", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/gif"
    assert "attachment" in response.headers["content-disposition"]
    want = animate(spec, size, **kwargs)
    assert response.content == want.to_gif()  # the same bytes as the library (and the command) writes
    with Image.open(io.BytesIO(response.content)) as gif:
        assert gif.n_frames == len(want.steps)


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"input_size": [64, 64], "kernel_size": 3, "padding": "same"}, "every", "4096 frames"),
    ({"input_size": [5, 5], "kernel_size": 3, "view": "scatter"}, None, "not transposed"),
    ({"input_size": [5, 5], "kernel_size": 3, "view": "sideways"}, "view", "view"),
    ({"input_size": [5, 5], "kernel_size": 3, "every": 0}, "every", "every"),
    ({"input_size": [500, 5], "kernel_size": 3}, "input_size", "input_size"),
])
def test_gif_refusals_name_the_setting(client, body, field, words):
    response = client.post("/api/animation.gif", json=body)
    assert response.status_code in (400, 422), response.status_code
    error = response.json()["error"]
    assert words in error["message"], error
    if field:
        assert error["field"] == field, error


def test_gif_frames_are_bounded_by_the_limits():
    small = api.Limits(max_gif_frames=10)
    with pytest.raises(api.ApiError, match="at most 10"):
        api.animation_gif({"input_size": [5, 5], "kernel_size": 1}, small)
    assert api.animation_gif({"input_size": [5, 5], "kernel_size": 1, "every": 3}, small)[:6] == b"GIF89a"
