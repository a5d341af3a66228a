"""A helper's audit of omni.unroll (engine, trace) and omni.serve (app): each test fails on the code
before its fix. The random tiny model: the outputs are noise, the plumbing is what is tested."""

import json
import time

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from omni.serve import ServeSettings, create_app
from omni.serve.testing import LiveServer, random_tiny_model
from omni.unroll import Item, Result, parse_plan
from omni.unroll.trace import write_trace

FAST = dict(flow_steps=2, think_tokens=8, layout_tokens=8)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return random_tiny_model(0)


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model=model, settings=ServeSettings(**FAST))) as c:
        yield c


def test_a_plain_run_stops_when_its_client_goes_away(model, gated):
    """POST /v1/unroll (not streamed) ran every step for a client that had hung up, holding the model
    and a place in the queue; it now stops at the next step, as a streamed run does."""
    gate, marks = gated
    app = create_app(model=model, settings=ServeSettings(**FAST))
    body = {"task": "vqa", "seed": 1, "plan": "gated_wait,gated_mark"}
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/unroll", json=body, timeout=1.0)  # the client gives up and hangs up
        time.sleep(0.3)
        gate.set()
        idle = {"running": 0, "waiting": 0, "capacity": 9}
        for _ in range(250):
            if c.get("/healthz").json()["queue"] == idle:
                break
            time.sleep(0.02)
        assert c.get("/healthz").json()["queue"] == idle
        assert marks == []  # the step after the one running when the client left never ran
        r = c.post("/v1/unroll", json={"task": "vqa", "seed": 1, "plan": "gated_mark"})  # a client that waits
        assert r.status_code == 200 and marks == ["ran"] and r.json()["plan"] == ["gated_mark"]


@pytest.mark.parametrize("setting,needle", [({"flow_steps": 2.5}, "flow_steps must be an integer"),
                                            ({"think_tokens": True}, "think_tokens must be an integer"),
                                            # a run's images were 404 by the time a long run ended
                                            ({"artifact_ttl_s": 60.0, "timeout_s": 120.0},
                                             r"artifact_ttl_s \(60 s\) must be at least timeout_s \(120 s\)")])
def test_settings_the_engine_refuses_fail_when_the_app_is_made(model, setting, needle):
    """A setting that passed ServeSettings.validate but that the engine refuses made every request a 500."""
    with pytest.raises(ValueError, match=needle):
        create_app(model=model, settings=ServeSettings(**{**FAST, **setting}))


def test_a_traced_depth_map_is_coloured_on_its_finite_pixels(tmp_path):
    """write_trace coloured output.png over every pixel: one infinite depth made the whole image black
    (the server colours the finite pixels); the .npy keeps the map as it is."""
    from omni.world.export import colorize_depth

    d = np.linspace(1, 5, 32 * 32, dtype=np.float32).reshape(32, 32)
    d[0, 0] = np.inf
    res = Result("depth", [], Item("output", "depth", data={"depth": d}), [Item("input", "text", text="")])
    write_trace(res, tmp_path)
    png = np.asarray(Image.open(tmp_path / "output.png"))
    assert np.array_equal(png, colorize_depth(d, np.isfinite(d)))
    assert (png.sum(-1) > 0).sum() == d.size - 1
    assert np.array_equal(np.load(tmp_path / "output.npy"), d)
    finite = d.copy()
    finite[0, 0] = 1.0  # a finite map is coloured as before
    write_trace(Result("depth", [], Item("output", "depth", data={"depth": finite}), res.items), tmp_path)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "output.png")),
                          colorize_depth(finite, np.ones_like(finite, dtype=bool)))


def test_a_steps_depth_map_is_written_as_the_outputs_and_the_servers_are(tmp_path):
    """A depth map a (user) primitive adds as a step was dropped by write_trace (Item.to_json leaves arrays
    out) where the server wrote it: now it is step_<i>_<step>_depth.npy in metres and a coloured .png beside
    the step's own image, both named in trace.json, and a later trace without it removes them."""
    from omni.world.export import colorize_depth

    d = np.linspace(1, 5, 8 * 8, dtype=np.float32).reshape(8, 8)
    img = np.zeros((8, 8, 3), np.float32)
    steps = [Item("input", "text", text=""), Item("guess", "depth", data={"depth": d}),
             Item("both", "depth", image=img, data={"depth": d * 2})]
    tr = json.loads(write_trace(Result("vqa", ["guess", "both"], Item("output", "text", text="a"), steps),
                                tmp_path).read_text())
    assert tr["steps"][1]["depth"] == "step_1_guess_depth.npy" and tr["steps"][1]["image"] == "step_1_guess_depth.png"
    assert np.array_equal(np.load(tmp_path / "step_1_guess_depth.npy"), d)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "step_1_guess_depth.png")),
                          colorize_depth(d, np.isfinite(d)))
    assert tr["steps"][2]["image"] == "step_2_both.png" and tr["steps"][2]["depth_image"] == "step_2_both_depth.png"
    assert np.array_equal(np.load(tmp_path / tr["steps"][2]["depth"]), d * 2)
    assert not {"depth", "image"} & set(tr["output"])  # a text output writes no file
    write_trace(Result("vqa", [], Item("output", "text", text="a"), steps[:1]), tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["trace.json"]


def test_a_trace_writes_a_uint8_image_as_the_server_does(tmp_path):
    """A user primitive's uint8 image was clipped to 0 / 255 by write_trace (as if floats in [0, 1]) where
    the server kept it; a float image with NaN pixels was cast from NaN. One conversion (to_uint8) for both."""
    import io

    from omni.serve.app import png_bytes

    rgb8 = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    rgbf = np.linspace(0, 1, 32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3)
    rgbf[0, 0, 0] = np.nan
    items = [Item("input", "text", text=""), Item("mine", "image", image=rgb8), Item("yours", "image", image=rgbf)]
    write_trace(Result("vqa", ["mine", "yours"], Item("output", "text", text="a"), items), tmp_path)
    for i, (name, img) in enumerate((("mine", rgb8), ("yours", rgbf)), start=1):
        png = np.asarray(Image.open(tmp_path / f"step_{i}_{name}.png"))
        assert np.array_equal(png, np.asarray(Image.open(io.BytesIO(png_bytes(img)))))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "step_1_mine.png")), rgb8)
    assert np.asarray(Image.open(tmp_path / "step_2_yours.png"))[0, 0, 0] == 0


def test_a_trace_is_strict_json_when_a_score_is_infinite(tmp_path):
    """trace.json was written with NaN and Infinity (a PSNR of identical images is inf), which JSON
    parsers refuse; they are null now, as in the server's answers. One json_safe for both."""
    import json

    from omni.unroll.trace import json_safe

    def refuse(c):
        raise ValueError(c)

    d = np.ones((8, 8), np.float32)
    res = Result("depth", [], Item("output", "depth", data={"depth": d}), [Item("input", "text", text="")])
    path = write_trace(res, tmp_path, extra={"score": {"psnr": float("inf"), "ssim": np.float32(0.5),
                                                      "delta1": np.float64("nan")}})
    t = json.loads(path.read_text(), parse_constant=refuse)
    assert t["score"] == {"psnr": None, "ssim": 0.5, "delta1": None}
    assert json_safe({1: (np.int64(2), np.array([1.5, np.inf]))}) == {"1": [2, [1.5, None]]}

def test_a_plan_list_with_an_empty_step_says_so(client):
    """A list plan with an empty or blank name was "unknown primitive ''" (a string plan's empty step is
    named as one)."""
    for plan in (["think", "  "], [""]):
        with pytest.raises(ValueError, match="empty step"):
            parse_plan("vqa", plan)
    assert parse_plan("vqa", [" think "]) == ["think"]
    r = client.post("/v1/unroll", json={"task": "vqa", "seed": 1, "plan": ["think", " "]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_plan"
    assert "empty step" in r.json()["error"]["message"]


def test_a_body_of_another_content_type_is_named(client):
    """A JSON body sent as text/plain (or with no Content-Type) was "body: Input should be a valid
    dictionary", which did not say that the Content-Type was the problem; still a 422."""
    raw = b'{"task": "vqa", "seed": 1, "plan": "direct"}'
    for headers, got in (({"content-type": "text/plain"}, "got 'text/plain'"), ({}, "none was given")):
        r = client.post("/v1/unroll", content=raw, headers=headers)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
        assert "Content-Type: application/json" in r.json()["error"]["message"] and got in r.json()["error"]["message"]
    r = client.post("/v1/unroll", content=b"null", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "Content-Type" not in r.json()["error"]["message"]  # JSON, just not an object
    r = client.post("/v1/unroll", content=raw, headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200
