"""The page in a real browser: headless Chromium (Debian's package, driven by Playwright with
`executable_path`; no browser is downloaded) loads `/`, runs plans, sees each step appear, and saves a
screenshot (to $OMNI_SERVE_SCREENSHOT if set, e.g. docs/serve.png, else into the test's tmp dir).
The model is a random tiny one unless $OMNI_SERVE_CHECKPOINT names a checkpoint (the README's
screenshot: OMNI_SERVE_CHECKPOINT=checkpoints/omni-tiny OMNI_SERVE_SCREENSHOT=docs/serve.png)."""

import json
import os
import time
from pathlib import Path

import pytest

from omni.serve import ServeSettings, create_app
from omni.serve.testing import LiveServer, random_tiny_checkpoint
from omni.unroll.engine import PRIMITIVES

CHROMIUM = os.environ.get("OMNI_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ck = os.environ.get("OMNI_SERVE_CHECKPOINT")
    if ck:
        app = create_app(ck, ServeSettings())
    else:
        ck = random_tiny_checkpoint(tmp_path_factory.mktemp("browser") / "ck")
        app = create_app(ck, ServeSettings(flow_steps=2, think_tokens=24, layout_tokens=24))
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def stream_read_to_end(request) -> bool:
    """Chromium reports a fetch whose body the page read through a ReadableStream to its end as
    `net::ERR_ABORTED` now and then (curl sees the chunked body end properly); the tests check instead
    that the stream's last event (`done`) reached the page."""
    return request.url.endswith("/v1/unroll/stream") and request.failure == "net::ERR_ABORTED"


@pytest.fixture
def problems():
    """Console errors, page errors and failed requests of a test's page; none may be left at its end."""
    return []


@pytest.fixture
def page(browser, server, problems):
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: None if stream_read_to_end(r) else problems.append(
        f"request failed: {r.url} {r.failure}"))
    page.goto(server.url + "/")
    page.wait_for_selector("#task option", state="attached")
    yield page
    page.close()
    assert not problems, problems


def steps_of(page, col):
    return page.eval_on_selector_all(f'.column[data-col="{col}"] .card', "cs => cs.map(c => c.dataset.step)")


def wait_done(page, cols=("A",)):
    for c in cols:
        page.wait_for_selector(f'.column[data-col="{c}"][data-status="done"]', timeout=60_000)
    page.wait_for_selector("#run:enabled")  # every stream read to its end


def all_images_loaded(page) -> bool:
    return page.evaluate("[...document.querySelectorAll('.column img')].every(i => i.complete && i.naturalWidth > 0)")


def test_steps_appear_one_by_one(page, monkeypatch):
    think = PRIMITIVES["think"]

    def slow_think(engine, ws):  # hold the last step so the page is seen mid-run
        time.sleep(1.5)
        return think(engine, ws)

    monkeypatch.setitem(PRIMITIVES, "think", slow_think)
    page.select_option("#task", "spatial")
    page.select_option("#plan-a", "+novel views")
    page.click("#run")
    page.wait_for_selector('.column[data-col="A"] .card[data-step="synthesize_views"]', timeout=30_000)
    assert steps_of(page, "A") == ["input", "estimate_pose", "synthesize_views"]  # think is still running
    assert page.get_attribute('.column[data-col="A"]', "data-status") == "running"
    wait_done(page)
    assert steps_of(page, "A") == ["input", "estimate_pose", "synthesize_views", "think", "output"]
    assert page.inner_text('.column[data-col="A"] .col-plan') == "estimate_pose → synthesize_views → think"
    assert page.locator('.card[data-step="input"] figure img').count() == 2  # view1, view2
    assert page.locator('.card[data-step="estimate_pose"] svg [data-camera="1"]').count() == 1
    assert "novel views" in page.inner_text('.card[data-step="synthesize_views"]')
    assert "ground truth:" in page.inner_text('.column[data-col="A"] > .summary')
    assert all_images_loaded(page)


def test_side_by_side_and_screenshot(page, tmp_path):
    page.select_option("#task", "spatial")
    page.select_option("#plan-a", "+novel views")
    page.check("#compare")
    page.select_option("#plan-b", "baseline")
    page.click("details summary")
    page.fill("#temperature", "0.8")  # sampled text, so the (untrained) model's cards are not empty
    page.fill("#visual-temperature", "0.5")
    page.fill("#visual-top-k", "4")
    page.fill("#cfg-scale", "2")
    page.fill("#flow-shift", "3")
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/v1/unroll/stream")) as req:
        page.click("#run")
    body = json.loads(req.value.post_data)
    assert (body["temperature"], body["visual_temperature"], body["visual_top_k"]) == (0.8, 0.5, 4)
    assert (body["cfg_scale"], body["flow_shift"]) == (2, 3)
    wait_done(page, ("A", "B"))
    assert steps_of(page, "A") == ["input", "estimate_pose", "synthesize_views", "think", "output"]
    assert steps_of(page, "B") == ["input", "output"]
    a_in, b_in = (page.inner_text(f'.column[data-col="{c}"] .card[data-step="input"] pre') for c in "AB")
    assert a_in == b_in and a_in.startswith(("standing", "from", "if", "where", "which", "how", "is", "the"))
    assert all_images_loaded(page)
    page.wait_for_timeout(400)  # let the cards' fade-in end
    out = Path(os.environ.get("OMNI_SERVE_SCREENSHOT") or tmp_path / "serve.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True, animations="disabled")
    assert out.stat().st_size > 20_000


def test_outputs_of_each_kind(page):
    page.select_option("#task", "depth")  # depth: colorized map with its legend
    page.click("#run")
    wait_done(page)
    out = page.locator('.column[data-col="A"] .card[data-step="output"]')
    assert out.locator("img").count() == 1 and "near" in out.inner_text() and "far" in out.inner_text()
    assert steps_of(page, "A") == ["input", "depth_caption", "rollout_visual", "output"]
    assert "visual tokens" in page.inner_text('.card[data-step="rollout_visual"]')
    page.select_option("#task", "t2i")  # t2i from a typed prompt: the layout text, the visual tokens, the image
    page.check("#source-upload")
    page.fill("#text", "a photo of a red cube left of a blue sphere.")
    page.click("#run")
    wait_done(page)
    assert steps_of(page, "A") == ["input", "think_long", "rollout_visual", "output"]
    assert page.locator('.card[data-step="output"] img').count() == 1
    assert all_images_loaded(page)
    # the camera diagram draws both cameras when the pose text parses
    n = page.evaluate("""poseBlock({text: '0.500 0.000 1.000 0.000 0.300 0.000',
        pose: {center: [0.5, 0, 1], forward: [0.3, 0, 0.95], matrix: []}})
        .querySelectorAll('[data-camera]').length""")
    assert n == 2


def test_upload_and_errors(page, problems, tmp_path):
    from PIL import Image

    from omni.world import sample

    img = tmp_path / "scene.png"
    Image.fromarray((sample("vqa", [2_000_000_000])[0].views["image"].rgb * 255).astype("uint8")).save(img)
    page.select_option("#task", "vqa")
    page.check("#source-upload")
    page.click("#run")  # no image chosen: the server's 400 is shown
    page.wait_for_selector(".error-box")
    assert "needs image(s) image" in page.inner_text(".error-box")
    assert page.get_attribute('.column[data-col="A"]', "data-status") == "error"
    assert [p for p in problems if "status of 400" not in p] == []  # the browser logs the 400 it was sent
    problems.clear()
    page.set_input_files("#img-image", str(img))
    page.fill("#text", "how many cubes are there?")
    page.select_option("#plan-a", "+thinking")
    page.click("#run")
    wait_done(page)
    assert steps_of(page, "A") == ["input", "think", "output"]
    assert "how many cubes are there?" in page.inner_text('.card[data-step="input"]')
    assert all_images_loaded(page)


def test_an_empty_sampling_field_leaves_the_servers_default(page):
    """An emptied sampling box was sent as 0 (visual temperature 0: greedy visual tokens, which
    collapse onto one code, instead of the default 1); it is now left out of the request."""
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/v1/unroll/stream")
            else None)
    page.select_option("#task", "vqa")
    page.click("summary:has-text('sampling')")  # the sampling fields are folded away
    page.fill("#visual-temperature", "")
    page.fill("#temperature", "0.5")
    page.click("#run")
    wait_done(page)
    sent = bodies[-1]
    assert "visual_temperature" not in sent and sent["temperature"] == 0.5 and sent["visual_top_k"] == 16, sent


def test_a_world_seed_of_revision_2(page):
    """The page asks for the world's revision with the seed, and the input card says which it drew from."""
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/v1/unroll/stream")
            else None)
    page.select_option("#task", "spatial")
    page.select_option("#plan-a", "baseline")
    page.select_option("#world-revision", "2")
    page.click("#run")
    wait_done(page)
    assert bodies[-1]["world_revision"] == 2 and bodies[-1]["seed"] == 2000000000
    assert "world seed 2000000000 (world revision 2)" in page.inner_text('.card[data-step="input"]')
