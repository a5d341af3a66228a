import json
import subprocess
import sys

import numpy as np
import pytest

from omni.eval.ablate import ablate, markdown, save_ablation
from omni.eval.run import inputs_of
from omni.serve.testing import random_tiny_model
from omni.unroll import PLANS, Engine, Inputs, parse_plan
from omni.unroll.trace import write_trace
from omni.world import WorldConfig, sample


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(0)  # d 64, 2 layers, the shipped tokenizers, a non-trivial generation path


def engine(model, **kw):
    return Engine(model, flow_steps=2, think_tokens=12, layout_tokens=16, seed=3, **kw)


def flagged(**flags):
    """The random tiny model with config flags switched on: its weights, the flags' new parameters at
    their initial (zero) maps, the same tokenizers; in eval mode."""
    import dataclasses

    from omni.model import OmniModel

    base = random_tiny_model(0)
    m = OmniModel(dataclasses.replace(base.cfg, **flags))
    m.load_state_dict({**m.state_dict(), **base.state_dict()})
    m.tokenizer = base.tokenizer
    object.__setattr__(m, "visual", base.visual)
    return m.eval()


@pytest.mark.parametrize("task,plan,reencode", [
    ("vqa", "+thinking", "primitive"), ("t2i", "+long+visual", "primitive"), ("depth", "default", "primitive"),
    ("spatial", "+novel views", "primitive"), ("pose", "direct", "primitive"),
    ("vqa", "+thinking", "step"), ("t2i", "+long+visual", "step"), ("spatial", "+novel views", "step")])
def test_cached_unrolling_equals_reencoding(model, task, plan, reencode):
    """Both baselines (re-encode before every primitive; before every token and flow step, i.e. no
    cache) make the same choices as the cached workspace."""
    ex = sample(task, [2_000_000_001])[0]
    a = engine(model).run(inputs_of(ex), plan)
    b = engine(model, reencode=reencode).run(inputs_of(ex), plan)
    assert [it.text for it in a.items] == [it.text for it in b.items]
    assert a.output.text == b.output.text
    assert a.output.tokens == b.output.tokens > 0  # every decoder adds to the context (<gen>, the depth query)
    for x, y in zip(a.items, b.items, strict=True):
        assert x.tokens == y.tokens and (x.image is None) == (y.image is None)
        if x.image is not None:
            assert np.abs(x.image - y.image).max() < 1e-3
    if a.output.image is not None:
        assert np.abs(a.output.image - b.output.image).max() < 1e-3
    if "depth" in a.output.data:
        assert np.abs(a.output.data["depth"] - b.output.data["depth"]).max() < 1e-3


@pytest.mark.parametrize("reencode", [False, "step"])
def test_images_sampled_together_equal_one_by_one(model, reencode):
    """gen_images (synthesize_views' four views in one cache of four rows) makes the images that
    gen_image makes one at a time with the same seed: the same noise, the same flow, up to rounding;
    inputs of unequal lengths fall back to one at a time."""
    view = sample("spatial", [2_000_000_003])[0].views["view1"].rgb
    sides = [Inputs("nvs", {"source": view}, f"look {d} 30 degrees.") for d in ("up", "down", "left", "right")]
    for xs in (sides, sides[:2] + [Inputs("nvs", {"source": view}, "look up 30 degrees, then a little more.")]):
        e = engine(model, reencode=reencode)
        one = [e.gen_image(e.start(x))[:2] for x in xs]
        e = engine(model, reencode=reencode)
        together = e.gen_images(xs)
        assert len(together) == len(xs)
        for (img, lat), (img2, lat2) in zip(one, together, strict=True):
            assert img2.shape == img.shape and lat2.shape == lat.shape
            assert float((lat - lat2).abs().max()) < 1e-4 and np.abs(img - img2).max() < 1e-4
        assert float((together[0][1] - together[1][1]).abs().max()) > 1e-3  # rows drew their own noise


def test_forks_do_not_leak(model):
    ex = sample("t2i", [2_000_000_002])[0]
    e = engine(model)
    base = e.start(inputs_of(ex))
    # encoded without autograd: a graph kept alive by the cache grew an n = 500 ablation to 8 GB
    assert not base.cache.k.requires_grad and not base.cache.last_hidden.requires_grad
    length, record = base.cache.length, list(base.record)
    e.generator.manual_seed(5)
    first = e.continue_plan(base.fork(), ["think_long", "rollout_visual"])
    e.continue_plan(base.fork(), ["think", "rollout_visual"])  # another branch in between
    e.generator.manual_seed(5)
    again = e.continue_plan(base.fork(), ["think_long", "rollout_visual"])
    assert base.cache.length == length and base.record == record
    assert [it.text for it in first.items] == [it.text for it in again.items]
    assert np.array_equal(first.output.image, again.output.image)


def test_continue_plan_checks_what_it_is_given(model):
    """continue_plan took any steps unchecked (a string was run letter by letter, a missing input was a
    KeyError deep inside, an oversize plan filled the KV cache midway), ran another engine's workspace
    with that engine's generator, and decoded a workspace twice, the first answer left in the second
    run's context. Each is a clear error before any compute now; a numpy seed works."""
    from omni.unroll.engine import PRIMITIVES, register

    e = engine(model)
    vqa = inputs_of(sample("vqa", [2_000_000_003])[0])
    ws = e.start(vqa)
    assert e.continue_plan(ws.fork(), "+thinking").plan == ["think"]  # a row name, as run takes it
    for steps, needle in (("nope", "unknown primitive"), (["synthesize_views"], "cannot run on this input"),
                          (["think"] * 9, "at most 8")):
        with pytest.raises(ValueError, match=needle):
            e.continue_plan(ws.fork(), steps)
    with pytest.raises(ValueError, match="a workspace this engine started"):
        engine(model).continue_plan(ws.fork(), ["think"])
    done = ws.fork()
    e.continue_plan(done, [])
    for again in (done, done.fork()):
        with pytest.raises(ValueError, match="decoded already"):
            e.continue_plan(again, ["think"])
    small = Engine(random_tiny_model(0, max_seq=512), flow_steps=1, think_tokens=12, seed=3)
    t2i = small.start(inputs_of(sample("t2i", [2_000_000_002])[0]))
    with pytest.raises(ValueError, match="may need up to"):
        small.continue_plan(t2i, ["rollout_visual"] * 8)  # 8 x 66 codes: more than the 512 the model holds
    assert t2i.cache.length == t2i.fork().cache.length and not t2i.items[1:]  # nothing ran
    assert Engine(model, seed=np.int64(5)).seed == 5  # torch's generator took no numpy integer
    for name, needle in (("a/b", "letters, digits and _"), ("", "letters"), ("x,y", "letters")):
        with pytest.raises(ValueError, match=needle):
            register(name)
    with pytest.raises(TypeError, match="decorates a function"):
        register("test_not_callable")(42)
    assert "test_not_callable" not in PRIMITIVES


def test_plan_validation():
    one_image = Inputs("vqa", {"image": np.zeros((32, 32, 3))}, "how many cubes are there?")
    assert parse_plan("t2i", "+long+visual") == ["think_long", "rollout_visual"]
    assert parse_plan("t2i", "think_long, rollout_visual") == ["think_long", "rollout_visual"]
    assert parse_plan("vqa", "direct") == [] and parse_plan("spatial", "default")[-1] == "think"
    with pytest.raises(ValueError, match="unknown primitive"):
        parse_plan("vqa", "think,dance")
    with pytest.raises(ValueError, match="estimate_pose.*view1, view2"):
        parse_plan("vqa", "estimate_pose", one_image)
    with pytest.raises(ValueError, match="oracle_text"):
        parse_plan("t2i", "oracle_text", Inputs("t2i", {}, "a photo of a cube."))
    with pytest.raises(ValueError, match="at most 8"):
        parse_plan("vqa", ",".join(["think"] * 9))
    with pytest.raises(ValueError, match="unknown task"):
        parse_plan("audio", "think")
    # separators alone ran the direct plan; a row name with a space around it was an unknown primitive
    for bad in (",", ",,", "think,", "think,,rollout_visual", " , "):
        with pytest.raises(ValueError, match="empty step"):
            parse_plan("t2i", bad)
    assert parse_plan("vqa", " +thinking ") == parse_plan("vqa", "+thinking") == ["think"]
    assert parse_plan("vqa", " direct ") == [] and parse_plan("vqa", ["think "]) == ["think"]
    with pytest.raises(TypeError, match="a plan is a string or a list"):
        parse_plan("vqa", np.array(["think"]))
    for task, rows in PLANS.items():
        for steps in rows.values():
            parse_plan(task, steps)


def test_trace_schema(model, tmp_path):
    ex = sample("spatial", [2_000_000_003])[0]
    res = engine(model).run(inputs_of(ex), "+novel views")
    path = write_trace(res, tmp_path / "tr", extra={"seed": 3})
    tr = json.loads(path.read_text())
    assert tr["task"] == "spatial" and tr["plan"] == ["estimate_pose", "synthesize_views", "think"]
    assert [s["step"] for s in tr["steps"]] == ["input", "estimate_pose", "synthesize_views", "think"]
    for s in tr["steps"]:
        assert {"step", "kind", "text", "tokens", "seconds"} <= set(s) and s["tokens"] > 0 and s["seconds"] >= 0
    views = tr["steps"][2]
    assert (tmp_path / "tr" / views["image"]).is_file() and views["tokens"] >= 4 * 64
    assert tr["output"]["kind"] == "text" and tr["seed"] == 3
    tr = json.loads(write_trace(res, tmp_path / "np", extra={"c": np.arange(3), "s": np.float32(0.5)}).read_text())
    assert tr["c"] == [0, 1, 2] and tr["s"] == 0.5  # arrays failed under default=float
    # a second run into the same directory: the first's images it does not write are removed (they
    # stayed beside the new trace.json, as if they were its steps); other files are left alone
    (tmp_path / "tr" / "notes.txt").write_text("mine")
    write_trace(engine(model).run(inputs_of(ex), "direct"), tmp_path / "tr")
    assert sorted(p.name for p in (tmp_path / "tr").iterdir()) == ["notes.txt", "trace.json"]


def test_ablation_rows_share_examples(model, tmp_path):
    r = ablate(engine(model), "vqa", 2, 2_000_000_010)
    t = r["tables"]["accuracy"]
    assert [row.name for row in t.rows] == ["direct", "+thinking"] and t.n == 2
    assert r["context_tokens_per_example"]["+thinking"] > r["context_tokens_per_example"]["direct"]
    files = save_ablation(r, tmp_path / "abl")
    assert files["accuracy.md"].read_text().startswith("**Understanding: VQA**")
    assert json.loads(files["scores"].read_text())["scores"]["direct"]["accuracy"]
    assert set(r["context_fidelity"]["+thinking"]) == {"think:exact", "think:similarity", "think:close",
                                                       "think:step", "think:listing", "think:answer",
                                                       "think:followed"}
    assert r["context_fidelity"]["direct"] == {}
    # the fidelities per example are kept beside the answers' scores: their means are the table's
    per = json.loads(files["scores"].read_text())["context_scores"]
    assert per["direct"] == {} and set(per["+thinking"]) == set(r["context_fidelity"]["+thinking"])
    for k, v in per["+thinking"].items():
        assert len(v) == 2 and np.mean(v) == r["context_fidelity"]["+thinking"][k]
    # per question family: the examples' own families, each row's score over them
    fams = [ex.spec["family"] for ex in sample("vqa", range(2_000_000_010, 2_000_000_012))]
    assert r["groups"] == fams and set(r["by_group"]) == set(fams)
    for g, rows in r["by_group"].items():
        idx = [i for i, f in enumerate(fams) if f == g]
        assert rows["direct"]["n"] == len(idx)
        assert rows["direct"]["accuracy"] == np.mean([r["scores"]["direct"]["accuracy"][i] for i in idx])
    assert "by question family" in markdown(r)
    # the rows split by whether the thought's own inventory is right: the two parts cover every example
    split = r["by_listing"]["+thinking"]
    assert sum(p["n"] for p in split.values()) == 2 and set(split) <= {"right", "wrong"}
    assert "own inventory is right (every object, every word)" in markdown(r)
    # every row's texts, per example: the thought in +thinking, the answer in both
    saved = json.loads(files["scores"].read_text())["texts"]
    assert [len(saved[k]) for k in ("direct", "+thinking")] == [2, 2]
    assert saved["direct"][0]["steps"] == [] and saved["direct"][0]["output"] is not None
    assert [s for s, _ in saved["+thinking"][1]["steps"]] == ["think"]


def test_unroll_cli(model, tmp_path):
    model.save_pretrained(tmp_path / "ck")
    r = subprocess.run([sys.executable, "-m", "omni.cli", "unroll", "depth", "--checkpoint", str(tmp_path / "ck"),
                        "--plan", "default", "--out", str(tmp_path / "u")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    tr = json.loads((tmp_path / "u" / "trace.json").read_text())
    assert tr["plan"] == ["depth_caption", "rollout_visual"] and (tmp_path / "u" / "output.npy").is_file()
    assert np.load(tmp_path / "u" / "output.npy").shape == (32, 32)
    bad = subprocess.run([sys.executable, "-m", "omni.cli", "unroll", "vqa", "--checkpoint", str(tmp_path / "ck"),
                          "--plan", "estimate_pose", "--out", str(tmp_path / "v")], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "estimate_pose" in bad.stderr
    # the mended world's example (docs/world_audit.md): a camera_object question whose answer is behind the camera
    r = subprocess.run([sys.executable, "-m", "omni.cli", "unroll", "spatial", "--checkpoint", str(tmp_path / "ck"),
                        "--plan", "direct", "--seed", "2000000001", "--world-revision", "2", "--out",
                        str(tmp_path / "r2")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    tr = json.loads((tmp_path / "r2" / "trace.json").read_text())
    assert tr["world_revision"] == 2 and tr["seed"] == 2_000_000_001


def test_context_fidelity_against_the_world():
    """A context equal to the world's truth scores perfect fidelity; a wrong one does not."""
    from omni.eval.run import fidelity
    from omni.unroll.engine import Item, Result

    ex = sample("spatial", [2_000_000_020])[0]
    grid = np.concatenate([np.concatenate([ex.views["look_up"].rgb, ex.views["look_down"].rgb], 1),
                           np.concatenate([ex.views["look_left"].rgb, ex.views["look_right"].rgb], 1)], 0)
    out = Item("output", "text", text=ex.answer)
    good = Result("spatial", [], out, [Item("estimate_pose", "pose", text=ex.texts["pose"]),
                                       Item("synthesize_views", "image", image=grid * 0.98),
                                       Item("think", "text", text=ex.texts["thinking"])])
    f = fidelity(ex, good)
    assert f["estimate_pose:parsed"] == 1 and f["estimate_pose:auc@30"] > 0.95
    assert f["think:exact"] == 1 and f["think:similarity"] == 1 and f["synthesize_views:psnr"] > 30
    assert f["think:answer"] == 1 and f["think:followed"] == 1
    assert f["think:option"] == 1 and f["think:lookup"] == 1  # the world's thought names its option, then its letter
    opts = ex.spec["options"]
    other = next(o for o in opts if o != ex.spec["answer_text"])
    for letter, lookup in ((ex.answer, 0.0), ("ABCD"[opts.index(other)], 1.0)):  # names a wrong option
        named = Item("think", "text", text=f"that is: {other}, so the answer is {letter}.")
        f = fidelity(ex, Result("spatial", [], out, [named]))
        assert f["think:option"] == 0 and f["think:lookup"] == lookup
    bad = Result("spatial", [], out, [Item("estimate_pose", "pose", text="not a pose"),
                                      Item("synthesize_views", "image", image=np.zeros_like(grid)),
                                      Item("think", "text", text="the sky is green")])
    f = fidelity(ex, bad)
    assert f["estimate_pose:parsed"] == 0 and f["think:exact"] == 0 and f["think:similarity"] < 0.5
    assert f["synthesize_views:psnr"] < 15 and f["think:answer"] == 0 and f["think:followed"] == 0
    assert f["think:option"] == 0 and f["think:lookup"] == 0  # names no option
    # a thought that states a wrong answer, which the output then follows (or not)
    wrong = next(c for c in "ABCD" if c != ex.answer)
    said = Item("think", "text", text=f"the camera moved. so the answer is {wrong}.")
    f = fidelity(ex, Result("spatial", [], Item("output", "text", text=wrong), [said]))
    assert f["think:answer"] == 0 and f["think:followed"] == 1
    f = fidelity(ex, Result("spatial", [], out, [said]))
    assert f["think:answer"] == 0 and f["think:followed"] == 0
    t2i = sample("t2i", [2_000_000_020])[0]
    f = fidelity(t2i, Result("t2i", [], out, [Item("rollout_visual", "visual", image=t2i.views["target"].rgb),
                                              Item("think_long", "text", text=t2i.texts["oracle"])]))
    assert f == {"rollout_visual:pass": 1.0, "think_long:exact": 1.0, "think_long:similarity": 1.0}


def test_close_fidelity_forgives_measurements_only():
    """A VQA relation thought or a depth caption states distances and x positions to the decimal: `close`
    is exact but for those, each within CLOSE_METRES / CLOSE_PIXELS; a count, a word, an order or a
    measurement off by more is not close; other primitives and tasks get no `close`."""
    from omni.eval.run import CLOSE_METRES, close_text, fidelity
    from omni.unroll.engine import Item, Result
    from omni.world.language import depth_caption_objects
    from omni.world.tasks import vqa_inventory, vqa_step

    truth = "the cone is centred at x 9 and the cube at x 30, so the cone is left of the cube. so the answer is yes."
    assert close_text(truth, truth) and close_text(truth.replace("x 9", "x 11"), truth)
    assert not close_text(truth.replace("x 9", "x 12"), truth)  # 3 pixels off
    assert not close_text(truth.replace("left of", "right of"), truth)
    truth = "the cone is about 3.4 m away and the cube about 4.9 m. so the answer is cone."
    assert close_text(truth.replace("3.4", "3.6").replace("4.9", "4.7"), truth)
    assert not close_text(truth.replace("3.4", f"{3.4 + CLOSE_METRES + 0.1:.1f}"), truth)
    assert not close_text(truth.replace("3.4 m", "3 m"), truth)  # a measurement dropped is not close
    assert not close_text("i see 3 objects.", "i see 4 objects.")  # counts stay exact
    ex = next(e for e in sample("vqa", range(2_000_000_000, 2_000_000_100)) if " m away" in e.texts["thinking"])
    out = Item("output", "text", text=ex.answer)
    moved = _nudge_decimals(ex.texts["thinking"], 0.1)
    f = fidelity(ex, Result("vqa", [], out, [Item("think", "text", text=moved)]))
    assert moved != ex.texts["thinking"] and f["think:exact"] == 0 and f["think:close"] == 1
    f = fidelity(ex, Result("vqa", [], out, [Item("think", "text", text=_nudge_decimals(ex.texts["thinking"], 1.0))]))
    assert f["think:close"] == 0 and f["think:step"] == 0
    # the question's step apart from the inventory: right after a wrong inventory, wrong after a right one
    truth = ex.texts["thinking"]
    inventory, step = truth.split(". ", 1)
    assert vqa_step(truth) == step[:step.rfind("so the answer is")].strip() and "so the answer" not in vqa_step(truth)
    assert vqa_step("the cone is cyan. so the answer is cyan.") == "the cone is cyan."  # a focused thought
    assert vqa_step("i see 2 objects: a") == "" and vqa_step("") == ""
    wrong_inventory = inventory.replace("i see ", "i see 1", 1) + ". " + step  # "i see 14 objects: ..."
    f = fidelity(ex, Result("vqa", [], out, [Item("think", "text", text=wrong_inventory)]))
    assert f["think:exact"] == 0 and f["think:close"] == 0 and f["think:step"] == 1 and f["think:listing"] == 0
    f = fidelity(ex, Result("vqa", [], out, [Item("think", "text", text=inventory + ". so the answer is 3.")]))
    assert f["think:step"] == 0 and f["think:listing"] == 1
    assert vqa_inventory(truth) == inventory + "." and vqa_inventory("the cone is cyan. so the answer is cyan.") == ""
    assert vqa_inventory("i see 2 objects: a") == "i see 2 objects: a"  # cut off: what there is
    # a measured thought's listing is its objects' words: its distances are not compared (any number)
    wm = WorldConfig(vqa_thought="measured")
    exm = sample("vqa", [ex.seed], wm)[0]
    assert exm.texts["thinking"] != truth and " m," in vqa_inventory(exm.texts["thinking"]) + ","
    far = _nudge_decimals(vqa_inventory(exm.texts["thinking"]), 3.0) + " so the answer is 1."
    f = fidelity(exm, Result("vqa", [], out, [Item("think", "text", text=far)]))
    assert f["think:listing"] == 1 and f["think:close"] == 0
    f = fidelity(exm, Result("vqa", [], out, [Item("think", "text", text=truth)]))  # no distances: not the listing
    assert f["think:listing"] == 0
    # a focused thought lists nothing: no listing to score
    exf = sample("vqa", [ex.seed], WorldConfig(vqa_thought="focused"))[0]
    assert "think:listing" not in fidelity(exf, Result("vqa", [], out, [Item("think", "text", text=truth)]))
    dep = sample("depth", [2_000_000_000])[0]
    cap = _nudge_decimals(dep.texts["depth_caption"], -0.1)
    f = fidelity(dep, Result("depth", [], out, [Item("depth_caption", "text", text=cap),
                                                 Item("describe", "text", text=dep.texts["detailed"])]))
    assert f["depth_caption:exact"] == 0 and f["depth_caption:close"] == 1
    assert f["describe:exact"] == 1 and "describe:close" not in f
    assert {f[f"depth_caption:{k}"] for k in ("count", "colour", "shape", "nearest")} == {1.0}
    # the listing, place by place: one object's colour wrong, the nearest 0.5 m off, one left out
    objs = depth_caption_objects(dep.texts["depth_caption"])
    assert len(objs) >= 3
    (c0, s0, d0), (c1, s1, d1) = objs[0], objs[1]
    other = next(c for c in ("red", "blue", "green") if c != c1)
    said = f"front to back: {c0} {s0} {d0 + 0.5:.1f} m, {other} {s1} {d1:.1f} m. every object stands on the ground."
    f = fidelity(dep, Result("depth", [], out, [Item("depth_caption", "text", text=said)]))
    assert f["depth_caption:count"] == 0 and f["depth_caption:nearest"] == 0
    assert f["depth_caption:colour"] == pytest.approx(1 / len(objs))
    assert f["depth_caption:shape"] == pytest.approx(2 / len(objs))
    f = fidelity(dep, Result("depth", [], out, [Item("depth_caption", "text", text="the sky is green")]))
    assert {f[f"depth_caption:{k}"] for k in ("count", "colour", "shape", "nearest")} == {0.0}
    swapped = dep.texts["depth_caption"].replace("front to back: ", "front to back: x, ", 1)
    f = fidelity(dep, Result("depth", [], out, [Item("depth_caption", "text", text=swapped)]))
    assert f["depth_caption:close"] == 0


def _nudge_decimals(text: str, by: float) -> str:
    import re
    return re.sub(r"\d+\.\d", lambda m: f"{float(m.group()) + by:.1f}", text)


def _cli(*args):
    """`omni ARGS` in process (typer's runner: torch is imported once, not once per case); the entry
    point itself runs as a process in test_unroll_cli."""
    from typer.testing import CliRunner

    from omni.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_ablate_cli_rejects_an_unknown_row_before_loading(tmp_path):
    r = _cli("ablate", "spatial", "--rows", "baseline,+nope", "--checkpoint", tmp_path / "absent", "--n", "2",
             "--out", tmp_path / "a")
    assert r.exit_code == 2 and "+nope" in r.stderr and "+pose text" in r.stderr and "Traceback" not in r.stderr


def test_ablate_vqa_against_the_focused_thought(model, tmp_path):
    """--vqa-thought focused: the same examples and the model's same thoughts (same seed), measured
    against the focused truth instead of the inventory: the answers' scores are equal, the thought's
    truth they are held against is not; the result and its partial file record it; other tasks refuse it."""
    from omni.eval.run import eval_world, fidelity
    from omni.unroll.engine import Item, Result

    inv = ablate(engine(model), "vqa", 2, 2_000_000_000)
    foc = ablate(engine(model), "vqa", 2, 2_000_000_000, vqa_thought="focused", partial=tmp_path / "p.json")
    assert inv["scores"] == foc["scores"] and inv["texts"] == foc["texts"]
    # a focused thought lists no inventory: no listing to score, nor to split the rows by
    assert set(foc["context_fidelity"]["+thinking"]) == set(inv["context_fidelity"]["+thinking"]) - {"think:listing"}
    assert "think:exact" in foc["context_fidelity"]["+thinking"] and "by_listing" not in foc and "by_listing" in inv
    # the truth a thought is held against: the focused world's (the random model's own thought is empty)
    ex_inv, ex_foc = (sample("vqa", [2_000_000_000], eval_world("vqa", vqa_thought=v))[0]
                      for v in ("inventory", "focused"))
    said = Item("think", "text", text=ex_foc.texts["thinking"])
    out = Item("output", "text", text=ex_foc.answer)
    assert fidelity(ex_foc, Result("vqa", [], out, [said]))["think:exact"] == 1
    assert fidelity(ex_inv, Result("vqa", [], out, [said]))["think:exact"] == 0
    assert foc["vqa_thought"] == "focused" and "vqa_thought" not in inv
    assert json.loads((tmp_path / "p.json").read_text())["vqa_thought"] == "focused"
    with pytest.raises(ValueError, match="--vqa-thought applies to the vqa task only"):
        ablate(engine(model), "spatial", 1, 2_000_000_000, vqa_thought="focused")
    r = _cli("ablate", "depth", "--vqa-thought", "focused", "--checkpoint", tmp_path / "absent", "--n", "1",
             "--out", tmp_path / "a")
    assert r.exit_code == 2 and "--vqa-thought applies to the vqa task only" in r.stderr, r.stderr


def test_visual_tokens_are_sampled_text_stays_greedy(model):
    """By default text is greedy and visual tokens are sampled (greedy rollouts collapse onto one
    code): another sampling seed changes the rollout, never the text; visual_temperature=0 makes the
    rollout greedy too, and None makes visual tokens follow the text setting."""
    ex = sample("t2i", [2_000_000_003])[0]

    def rollout(seed, **kw):
        e = Engine(model, flow_steps=1, think_tokens=12, seed=seed, **kw)
        ws = e.start(inputs_of(ex))
        items = e.continue_plan(ws, ["think", "rollout_visual"]).items
        return items[1].text, items[2].data["codes"]

    (t1, c1), (t2, c2), (t1b, c1b) = rollout(1), rollout(2), rollout(1)
    assert t1 == t2 and c1 != c2 and (t1, c1) == (t1b, c1b)
    (_, g1), (_, g2) = rollout(1, visual_temperature=0.0), rollout(2, visual_temperature=0.0)
    assert g1 == g2
    (_, f1), (_, f2) = rollout(1, visual_temperature=None, visual_top_k=None), rollout(2, visual_temperature=None)
    assert f1 == f2 == g1  # follows the (greedy) text setting
    e = Engine(model, temperature=0.5, top_k=3, visual_temperature=None, visual_top_k=None)
    assert (e.sampling("visual")["temperature"], e.sampling("visual")["top_k"]) == (0.5, 3)
    with pytest.raises(ValueError, match="visual_top_k"):
        Engine(model, visual_top_k=-1)
    with pytest.raises(ValueError, match="flow_shift"):
        Engine(model, flow_shift=0.0)


def test_ablate_cli_sampling_options(tmp_path):
    for flag in ("--temperature", "--visual-temperature", "--visual-top-k", "--flow-steps", "--flow-shift"):
        bad = _cli("ablate", "t2i", flag, "-1", "--checkpoint", tmp_path / "absent", "--n", "1",
                   "--out", tmp_path / "a")
        assert bad.exit_code == 2 and flag in bad.stderr and "Traceback" not in bad.stderr
    r = _cli("ablate", "t2i", "--rows", "+visual", "--n", "1", "--temperature", "1", "--top-k", "8",
             "--visual-temperature", "0", "--flow-steps", "2", "--flow-shift", "3", "--cfg-scale", "2",
             "--out", tmp_path / "b", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["sampling"] == {"temperature": 1.0, "top_k": 8, "visual_temperature": 0.0, "visual_top_k": 16,
                               "seed": 0, "cfg_scale": 2.0, "flow_steps": 2, "flow_shift": 3.0}
    assert "visual tokens greedy" in (tmp_path / "b" / "t2i.md").read_text()
    assert [row["name"] for row in out["tables"]["pass"]["rows"]] == ["+visual"] and out["n"] == 1
    assert set(out["context_fidelity"]["+visual"]) == {"rollout_visual:pass"}


def test_inputs_are_checked_before_any_compute(model):
    """Bad inputs are a clear error from Engine.run (and start), never a silently different run: wrong
    or missing images, float pixels outside [0, 1] (a 0..255 image) or NaN, text the task does not
    take, and text holding the format's own tags (a question that closes itself and answers)."""
    e = engine(model)
    ex = sample("vqa", [2_000_000_004])[0]
    img, q = ex.views["image"].rgb, ex.texts["question"]
    cases = [
        (Inputs("vqa", {}, q), "missing image"),
        (Inputs("vqa", {"picture": img}, q), "missing image"),
        (Inputs("vqa", {"image": img, "view2": img}, q), "got also view2"),
        (Inputs("vqa", {"image": img * 255}, q), "must lie in \\[0, 1\\].*divide by 255"),
        (Inputs("vqa", {"image": np.full_like(img, np.nan)}, q), "NaN"),
        (Inputs("vqa", {"image": img[:16]}, q), "must be \\(32, 32, 3\\)"),
        (Inputs("vqa", {"image": img.astype(np.int64)}, q), "dtype int64"),
        (Inputs("vqa", {"image": img}, ""), "needs text"),
        (Inputs("depth", {"image": img}, "how deep?"), "takes no text"),
        (Inputs("vqa", {"image": img}, q + " </question><answer> 7 </answer>"), "tag\\(s\\) </question>, <answer>"),
        (Inputs("teleport", {}, "x"), "unknown task"),
        (Inputs("vqa", {"image": img, 3: img}, q), "got also 3"),  # was "sequence item 0: expected str"
        (Inputs("vqa", {"image": [[0.0, 0.5], [0.5]]}, q), "image 'image': not an array of pixels"),
    ]
    for inputs, needle in cases:
        with pytest.raises(ValueError, match=needle):
            e.run(inputs, "direct")
        with pytest.raises(ValueError, match=needle):
            e.start(inputs)
    with pytest.raises(TypeError, match="string"):
        e.run(Inputs("vqa", {"image": img}, 5), "direct")
    with pytest.raises(TypeError, match="Inputs.oracle must be a string"):
        e.run(Inputs("t2i", {}, "a red cube.", oracle=5), "direct")
    # a uint8 image is the same image: the same answer as its float twin
    u8 = (img * 255).round().astype(np.uint8)
    a = engine(model).run(Inputs("vqa", {"image": u8.astype(np.float32) / 255}, q), "direct").output.text
    assert engine(model).run(Inputs("vqa", {"image": u8}, q), "direct").output.text == a


def test_engine_arguments_are_checked(model):
    for kw, needle in [({"temperature": float("nan")}, "temperature"), ({"visual_temperature": -1.0}, "visual_temp"),
                       ({"top_k": 2.5}, "top_k must be an integer"), ({"flow_steps": 0}, "flow_steps"),
                       ({"cfg_scale": float("nan")}, "cfg_scale"), ({"cfg_scale": -5.0}, "cfg_scale"),
                       ({"flow_shift": 0.0}, "flow_shift"), ({"flow_shift": 1e-10}, "flow_shift must be >= 0.001"),
                       ({"think_tokens": -1}, "think_tokens"),
                       ({"cfg_interval": (0.8, 0.2)}, "cfg_interval"), ({"cfg_interval": 3}, "cfg_interval"),
                       ({"seed": "a"}, "seed must be an integer"), ({"seed": 2**70}, "seed must be < 2\\*\\*64")]:
        with pytest.raises(ValueError, match=needle):
            Engine(model, **kw)
    with pytest.raises(TypeError, match="OmniModel"):
        Engine("checkpoints/omni-tiny")


def test_a_plan_that_cannot_fit_the_cache_fails_before_running(model):
    ex = sample("spatial", [2_000_000_000])[0]
    e = engine(model)
    with pytest.raises(ValueError, match="context tokens; the model holds"):
        e.run(inputs_of(ex), ",".join(["synthesize_views"] * 8))


def test_plan_types_and_row_names_of_another_task():
    for bad in (5, {"think": 1}, ["think", 3]):
        with pytest.raises(TypeError, match="a plan is a string or a list"):
            parse_plan("vqa", bad)
    assert parse_plan("vqa", [" think "]) == ["think"]
    with pytest.raises(ValueError, match="vqa's rows: direct, \\+thinking"):
        parse_plan("vqa", "+pose text")


@pytest.mark.parametrize("on", [False, True])
def test_source_latents_are_written_alike_in_training_and_by_the_engine(on):
    """With OmniConfig.source_latents, nvs, edit and video see their source image twice: its pixel
    patches, then its clean latents; the engine opens a workspace with exactly the segments that
    training writes before <gen>, so the weights meet the format they learned. Off: patches only."""
    import dataclasses

    import torch

    from omni.train import Writer

    m = random_tiny_model(0)
    m.cfg = dataclasses.replace(m.cfg, source_latents=on)
    w, e = Writer(m.tokenizer, m.visual, m.cfg), engine(m)
    gen = m.tokenizer.id("<gen>")

    def flat(segs):
        return [(s.kind, list(s.tokens or ()), None if s.pixels is None else s.pixels.numpy().round(6).tolist(),
                 None if s.latents is None else s.latents.numpy().round(5).tolist()) for s in segs]

    for task, src in (("nvs", "source"), ("edit", "before"), ("video", "frame0")):
        ex = sample(task, [2_000_000_001])[0]
        segs = w.write(ex, "direct", np.random.default_rng(0))
        cut = next(i for i, s in enumerate(segs) if s.kind == "text" and list(s.tokens) == [gen])
        assert flat(segs[:cut]) == flat(e.input_segments(inputs_of(ex)))
        clean = [s for s in segs if s.kind == "image_clean"]
        assert len(clean) == on
        if on:
            assert torch.allclose(clean[0].latents, w.latents([ex.views[src].rgb])[0])
    ex = sample("edit", [2_000_000_002])[0]
    res = e.run(inputs_of(ex), "direct")  # the workspace holds the source's latents, the image comes out
    assert res.items[0].tokens == sum(s.length(m.cfg) for s in e.input_segments(inputs_of(ex)))
    assert res.output.image.shape == ex.views["after"].rgb.shape


def test_both_source_flags_encode_the_source_once_and_hand_the_same_latents_to_both():
    """With source_latents and source_cond, the writer encodes an image-to-image example's source
    once (and its target once): the clean latents in context and the per-cell input are one tensor."""
    import dataclasses

    from omni.train import Writer

    m = random_tiny_model(0)
    w = Writer(m.tokenizer, m.visual, dataclasses.replace(m.cfg, source_latents=True, source_cond=True))
    calls = []
    encode = w.latents
    w.latents = lambda rgbs: calls.append(len(rgbs)) or encode(rgbs)
    for task in ("nvs", "edit", "video"):
        calls.clear()
        segs = w.write(sample(task, [2_000_000_001])[0], "direct", np.random.default_rng(0))
        assert calls == [1, 1], (task, calls)
        clean = next(s for s in segs if s.kind == "image_clean")
        gen = next(s for s in segs if s.kind == "image_gen")
        assert gen.source is clean.latents


def test_engine_encodes_the_source_once_per_run():
    """The engine asks for an image-to-image source's latents twice, for the context and for the
    sampler; with both source flags one encode serves both, and the next run encodes its own."""
    e = Engine(flagged(source_latents=True, source_cond=True), flow_steps=2)
    calls = []
    encode = e.fmt.latents
    e.fmt.latents = lambda rgbs: calls.append(len(rgbs)) or encode(rgbs)
    for task in ("nvs", "edit", "video"):
        calls.clear()
        ex = sample(task, [2_000_000_001])[0]
        a = e.run(inputs_of(ex), "direct").output.image
        assert calls == [1], (task, calls)
        b = e.run(inputs_of(sample(task, [2_000_000_002])[0]), "direct").output.image
        assert calls == [1, 1] and not np.allclose(a, b), task


def test_source_cond_reaches_the_generator_in_training_and_sampling():
    """With source_cond, the image being generated for nvs, edit and video takes its source image's
    latents as an input: training writes them on the image_gen segment, the engine hands the same to
    every flow step (one row each when images are sampled together), and they change the image."""
    import torch

    from omni.train import Writer

    base, m = random_tiny_model(0), flagged(source_cond=True)
    w, e = Writer(m.tokenizer, m.visual, m.cfg), engine(m)
    for task, src in (("nvs", "source"), ("edit", "before"), ("video", "frame0")):
        ex = sample(task, [2_000_000_001])[0]
        gen = next(s for s in w.write(ex, "direct", np.random.default_rng(0)) if s.kind == "image_gen")
        want = w.latents([ex.views[src].rgb])[0]
        assert torch.allclose(gen.source, want)
        assert torch.allclose(e.gen_sources([inputs_of(ex)])[0], want)
    t2i = sample("t2i", [2_000_000_001])[0]
    assert next(s for s in w.write(t2i, "direct", np.random.default_rng(0)) if s.kind == "image_gen").source is None
    assert e.gen_sources([inputs_of(t2i)]) is None and engine(base).gen_sources([inputs_of(ex)]) is None
    ex = sample("edit", [2_000_000_002])[0]
    at_zero = engine(m).run(inputs_of(ex), "direct").output.image
    assert np.abs(at_zero - engine(base).run(inputs_of(ex), "direct").output.image).max() < 1e-4
    with torch.no_grad():
        torch.nn.init.normal_(m.source_in.weight, std=0.2)
    assert np.abs(engine(m).run(inputs_of(ex), "direct").output.image - at_zero).max() > 1e-2
    view = sample("spatial", [2_000_000_003])[0].views["view1"].rgb
    sides = [Inputs("nvs", {"source": view}, f"look {d} 30 degrees.") for d in ("up", "down", "left", "right")]
    one = [engine(m).gen_image(engine(m).start(x))[1] for x in sides[:1]]
    together = engine(m).gen_images(sides)
    assert float((together[0][1] - one[0]).abs().max()) < 1e-4


@pytest.mark.parametrize("task,rows", [("vqa", ["direct", "+thinking"]), ("depth", ["baseline", "+depth caption"]),
                                       ("spatial", ["baseline", "+pose text"])])
def test_an_ablation_row_is_the_evaluation_of_its_plan(model, task, rows):
    """A greedy row of `omni ablate` (a fork of the input's one encoding) scores and writes exactly
    what `omni eval --plan` of the same steps does (a fresh encoding per example)."""
    from omni.eval.run import evaluate

    r = ablate(engine(model), task, 3, 2_000_000_020, rows={k: PLANS[task][k] for k in rows})
    for name in rows:
        e = evaluate(engine(model), task, 3, 2_000_000_020, PLANS[task][name])
        assert e["plan"] == PLANS[task][name]
        for k, v in e["scores"].items():
            np.testing.assert_allclose(r["scores"][name][k], v, rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")
        assert r.get("texts", {}).get(name, [None] * 3) == e.get("texts", [None] * 3)


def test_pair_cond_pairs_the_two_views_in_training_and_in_the_engine():
    """With pair_cond, pose and spatial write view 2 with view 1 as its pair, alike in training and in
    the engine's workspace (one method, Format.view_pair); other tasks' images and models without the
    flag have none; at the map's zero the engine's answers are the flagless model's."""
    import torch

    from omni.train import Writer

    base, m = random_tiny_model(0), flagged(pair_cond=True)
    w, e = Writer(m.tokenizer, m.visual, m.cfg), engine(m)
    for task in ("pose", "spatial"):
        ex = sample(task, [2_000_000_001])[0]
        for segs in (w.write(ex, "direct", np.random.default_rng(0)), e.input_segments(inputs_of(ex))):
            ims = [s for s in segs if s.kind == "image_in"]
            assert len(ims) == 2 and ims[0].pair is None
            assert torch.equal(ims[1].pair, torch.from_numpy(ex.views["view1"].rgb).float())
        plain = Writer(base.tokenizer, base.visual, base.cfg).write(ex, "direct", np.random.default_rng(0))
        assert all(s.pair is None for s in plain)
    vqa = sample("vqa", [2_000_000_001])[0]
    assert all(s.pair is None for s in w.write(vqa, "direct", np.random.default_rng(0)))
    ex = sample("pose", [2_000_000_002])[0]
    assert engine(m).run(inputs_of(ex), "direct").output.text == engine(base).run(inputs_of(ex), "direct").output.text


@pytest.mark.parametrize("task,plan", [("spatial", "+novel views"), ("t2i", "+long+visual")])
def test_rope_2d_cached_equals_reencoding(task, plan):
    """With rope_2d, images (input, generated, written back) keep their cells' rotary angles in the
    cache: the cached workspace makes the re-encoding baseline's choices."""
    m = flagged(rope_2d=True)
    ex = sample(task, [2_000_000_001])[0]
    a = engine(m).run(inputs_of(ex), plan)
    b = engine(m, reencode="step").run(inputs_of(ex), plan)
    assert [it.text for it in a.items] == [it.text for it in b.items]
    if task == "t2i":
        assert np.abs(a.output.image - b.output.image).max() < 1e-3


def test_pose_head_targets_in_training_and_pose_texts_in_the_engine():
    """With pose_head, every pose text of the training mixture (the pose task, spatial's pose and
    novel-view forms) carries its six numbers as the head's target on its <campose> token; the engine
    writes the head's numbers as the pose text (pose task and estimate_pose alike, the same tokens as
    training writes) with pose_decoder="head", cached and re-encoded alike, and by default decodes the
    digits, as the same weights without the head do."""
    import torch

    from omni.train import Writer
    from omni.world.camera import numbers_to_text, pose_to_numbers, text_to_pose
    from omni.world.tasks import POSE_CENTRE, POSE_SPREAD

    base, m = random_tiny_model(0), flagged(pose_head=True)
    w = Writer(m.tokenizer, m.visual, m.cfg)
    for task, form in (("pose", "direct"), ("spatial", "pose"), ("spatial", "views")):
        ex = sample(task, [2_000_000_001])[0]
        segs = w.write(ex, form, np.random.default_rng(0))
        poses = [s for s in segs if s.pose is not None]
        assert len(poses) == 1 and poses[0].tokens[0] == m.tokenizer.id("<campose>")
        want = torch.tensor(pose_to_numbers(text_to_pose(ex.texts["pose"])), dtype=torch.float32)
        assert torch.allclose(poses[0].pose, want, atol=1e-6)
        plain = Writer(base.tokenizer, base.visual, base.cfg).write(ex, form, np.random.default_rng(0))
        assert all(s.pose is None for s in plain)
    assert all(s.pose is None for s in w.write(sample("spatial", [2_000_000_001])[0], "think",
                                                np.random.default_rng(0)))
    vals = [1.25, -0.5, 2.0, 0.125, -0.75, 0.0625]
    with torch.no_grad():  # the head predicts standardised numbers
        m.pose_head.bias.copy_((torch.tensor(vals) - torch.tensor(POSE_CENTRE)) / torch.tensor(POSE_SPREAD))
    text = numbers_to_text(vals)
    ex, sp = sample("pose", [2_000_000_002])[0], sample("spatial", [2_000_000_002])[0]
    res = engine(m, pose_decoder="head").run(inputs_of(ex), "direct")
    assert res.output.text == text and res.output.data["valid"]
    assert engine(m, reencode="primitive", pose_decoder="head").run(inputs_of(ex), "direct").output.text == text
    step = engine(m, pose_decoder="head").run(inputs_of(sp), "+pose text").items[-1]
    assert step.step == "estimate_pose" and step.text == text
    # the workspace holds what training writes: <campose> numbers </campose>
    ws = engine(m, pose_decoder="head").start(inputs_of(ex))
    ws.write_pose()
    block = Writer(m.tokenizer, m.visual, m.cfg).pose_block(text)
    assert [t for seg in ws.record[-2:] for t in seg.tokens] == list(block.tokens)
    decoded = engine(m).run(inputs_of(ex), "direct").output.text
    assert decoded != text  # not the head's numbers: the same weights' digits
    assert decoded == engine(m, pose_decoder="text").run(inputs_of(ex), "direct").output.text
    assert decoded == engine(base).run(inputs_of(ex), "direct").output.text
    with pytest.raises(ValueError, match="pose_decoder must be one of"):
        engine(m, pose_decoder="regress")
    # a diverged head's huge numbers are written within ±999.999, so the text keeps to the allowance
    # context_bound counts (1e9 wrote 90 tokens where 62 are allowed)
    with torch.no_grad():
        m.pose_head.bias.fill_(1e9)
    e = engine(m, pose_decoder="head")
    step = e.run(inputs_of(sp), "estimate_pose").items[-1]
    assert step.text == numbers_to_text([999.999] * 6) and step.tokens <= 62


class _Stop(Exception):
    """What _stopped_ablation's log raises: an ablation cut off mid-run, as a killed one is."""


def _stopped_ablation(model, args: tuple, rows: dict, partial, after: int) -> dict:
    """`ablate(*args)` stopped at its `after`-th progress message, its partial file written at every
    example: the file's JSON."""
    calls = []

    def log(_msg):
        calls.append(1)
        if len(calls) == after:
            raise _Stop

    with pytest.raises(_Stop):
        ablate(engine(model), *args, rows=rows, log=log, partial=partial, save_every=0)
    return json.loads(partial.read_text())


def test_an_ablation_resumes_with_the_draws_of_a_run_that_never_stopped(model, tmp_path):
    """Stopped after two of three examples and resumed by a fresh engine from its partial file, a
    sampled ablation (the novel views' flow noise) scores and writes exactly what one run does, and
    only with the stopped run's random state; a partial file of other arguments, settings or weights
    is refused."""
    import torch

    from omni.model.checkpoint import weights_digest

    rows = {k: PLANS["spatial"][k] for k in ("baseline", "+novel views")}
    args = ("spatial", 3, 2_000_000_030)
    whole = ablate(engine(model), *args, rows=rows)

    partial = tmp_path / "spatial_partial.json"
    kept = _stopped_ablation(model, args, rows, partial, after=2)
    assert kept["done"] == 2
    resumed = ablate(engine(model), *args, rows=rows, partial=partial, resume=True)
    for key in ("scores", "texts", "context_fidelity", "context_scores", "tables"):
        assert resumed[key] == whole[key], key
    # the random state matters: resumed with a fresh engine's, the third example's views differ
    import base64
    fresh = base64.b64encode(engine(model).generator.get_state().numpy().tobytes()).decode()
    partial.write_text(json.dumps({**kept, "generator": fresh}))
    other = ablate(engine(model), *args, rows=rows, partial=partial, resume=True)
    psnr = "synthesize_views:psnr"
    assert other["context_fidelity"]["+novel views"][psnr] != whole["context_fidelity"]["+novel views"][psnr]
    partial.write_text(json.dumps(kept))
    for n, rws, kw, what in ((4, rows, {}, "n"), (3, dict(reversed(rows.items())), {}, "rows"),
                             (3, rows, {"temperature": 0.5}, "engine")):
        with pytest.raises(ValueError, match=f"another ablation's progress \\({what} differ"):
            ablate(engine(model, **kw), "spatial", n, 2_000_000_030, rows=rws, partial=partial, resume=True)
    changed = flagged()
    with torch.no_grad():
        changed.tok_emb.weight[0, 0] += 1e-3
    assert weights_digest(changed) != weights_digest(model) == weights_digest(flagged())
    with pytest.raises(ValueError, match="weights differ"):
        ablate(engine(changed), *args, rows=rows, partial=partial, resume=True)
    # a corrupt partial file is named, with what is broken (these were KeyError, TypeError, torch errors)
    for edit, needle in (({"generator": None}, "generator is not base64"),
                         ({"generator": "AAAA"}, "3 bytes, the engine.s has"),
                         ({"generator": "!!notb64"}, "generator is not base64"), ({"done": "x"}, "done must be"),
                         ({"done": 5}, "done must be"), ({"done": 1}, "scores must hold"),
                         ({"scores": {}}, "scores must hold"), ({"tokens": {"baseline": 1.5}}, "tokens must hold"),
                         ({"texts": {k: [] for k in rows}}, "texts must hold")):
        partial.write_text(json.dumps({**kept, **edit}))
        with pytest.raises(ValueError, match=f"spatial_partial.json: corrupt progress file \\(.*{needle}"):
            ablate(engine(model), *args, rows=rows, partial=partial, resume=True)
    partial.write_text(json.dumps({k: v for k, v in kept.items() if k != "seconds"}))
    with pytest.raises(ValueError, match="corrupt progress file \\(no seconds\\)"):
        ablate(engine(model), *args, rows=rows, partial=partial, resume=True)


def test_a_resumed_ablation_of_code_that_scored_less_context_keeps_the_examples_aligned(model, tmp_path):
    """A partial file written before a fidelity was scored (vqa's think:listing): resumed, the new
    score is None for the examples done before it (its list was shorter than the others and misaligned
    with the question families); its means are over what was scored, it is saved and resumed again,
    and the listing split (`by_listing`), which needs every example, is left out."""
    rows = {k: PLANS["vqa"][k] for k in ("direct", "+thinking")}
    args = ("vqa", 3, 2_000_000_010)
    whole = ablate(engine(model), *args, rows=rows)
    assert sum(p["n"] for p in whole["by_listing"]["+thinking"].values()) == 3

    partial = tmp_path / "vqa_partial.json"
    kept = _stopped_ablation(model, args, rows, partial, after=1)
    assert kept["done"] == 1
    del kept["context"]["+thinking"]["think:listing"]  # as older code wrote it
    partial.write_text(json.dumps(kept))
    resumed = ablate(engine(model), *args, rows=rows, partial=partial, resume=True)
    listed = resumed["context_scores"]["+thinking"]["think:listing"]
    assert listed[0] is None and listed[1:] == whole["context_scores"]["+thinking"]["think:listing"][1:]
    assert resumed["context_fidelity"]["+thinking"]["think:listing"] == np.mean(listed[1:])
    assert "by_listing" not in resumed and resumed["scores"] == whole["scores"]
    assert all(len(v) == 3 for v in resumed["context_scores"]["+thinking"].values())
    # saved with its None and resumed again from there: accepted (a None in the scores is not)
    again = _stopped_ablation(model, args, rows, partial, after=1)
    again["context"]["+thinking"]["think:listing"][0] = None
    partial.write_text(json.dumps(again))
    assert ablate(engine(model), *args, rows=rows, partial=partial, resume=True)["scores"] == whole["scores"]
    again["scores"]["direct"]["accuracy"][0] = None
    partial.write_text(json.dumps(again))
    with pytest.raises(ValueError, match="corrupt progress file \\(scores must hold"):
        ablate(engine(model), *args, rows=rows, partial=partial, resume=True)


def test_flow_start_draws_image_to_image_outputs_from_their_source():
    """flow_start < 1 starts nvs / video / edit's flow from their noised source (SDEdit): near 0 the
    output is the source's own decoded latents; t2i (no source) samples as before; a flow_start outside
    (0, 1] is an error before anything runs."""
    m = flagged(source_cond=True)
    ex = sample("edit", [2_000_000_002])[0]
    src = ex.views["before"].rgb
    recon = m.visual.decode_latents(engine(m).fmt.latents([src]))[0].numpy()
    kept = engine(m, flow_start=1e-4).run(inputs_of(ex), "direct").output.image
    drawn = engine(m).run(inputs_of(ex), "direct").output.image
    assert np.abs(kept - recon).max() < 0.02 < np.abs(drawn - recon).max()
    t2i = inputs_of(sample("t2i", [2_000_000_001])[0])
    assert np.array_equal(engine(m, flow_start=0.5).run(t2i, "direct").output.image,
                          engine(m).run(t2i, "direct").output.image)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="flow_start"):
            engine(m, flow_start=bad)
    from omni.eval.run import evaluate

    r = evaluate(engine(m, flow_start=0.5), "edit", 1, 2_000_000_000)  # an evaluation records it
    assert r["flow_start"] == 0.5 and "change_drawn" in r["metrics"]
    assert "flow_start" not in evaluate(engine(m, flow_start=0.5), "t2i", 1, 2_000_000_000)
