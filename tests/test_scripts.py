"""scripts/gpu_lease.sh, the lent GPU's one command, dry-run on the CPU: a lease is 15 minutes, so a
command that fails on the current code (a renamed option, a file that no longer exists) loses it. And the
counting scripts behind figures in the docs (world_skews.py, vqa_relations.py)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omni.model import OmniModel

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_lease.sh"
SHIPPED = ROOT / "checkpoints" / "omni-tiny"


def lease(tmp_path, **env):
    full = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "OUT": str(tmp_path / "out"), "RUN": str(tmp_path / "run"), "DEVICE": "cpu", "ROWS": "1",
            "WORKERS": "0", "THREADS": "1", "STEPS": "2", **env}
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="needs the shipped checkpoint")
def test_the_lease_command_trains_exports_and_fills_out(tmp_path):
    r = lease(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size < 16 * 2**20 for f in files)  # what $OUT brings back
    assert {"config.json", "model.safetensors.index.json", "log.jsonl", "train_config.json"} <= set(files)
    meta = json.loads((out / "config.json").read_text())
    assert meta["dtype"] == "bfloat16" and meta["weights"] == "ema"
    assert meta["training"]["step"] == 2 and meta["training"]["data_seed"] == 75
    assert meta["training"]["config"]["init_from"] == "checkpoints/omni-tiny"
    assert meta["training"]["config"]["mixture"]["world_revision"] == 3  # docs/world_audit.md's mended world
    assert meta["training"]["config"]["mixture"]["form_weights"]["spatial"]["deduced"] == 4  # its behind quadrants
    assert meta["training"]["config"]["mixture"]["form_weights"]["vqa"] == {"direct": 1, "think": 1, "deduced": 1}
    assert meta["training"]["init"]["training"] == json.loads((SHIPPED / "config.json").read_text())["training"]
    assert json.loads((out / "log.jsonl").read_text().splitlines()[-1])["step"] == 2
    # what the CPU does with it afterwards: the shipped tokenizers beside the weights, then load
    for name in ("tokenizer.json", "visual_tokenizer.json", "visual_tokenizer.safetensors"):
        shutil.copy(SHIPPED / name, out / name)
    assert OmniModel.from_pretrained(out).cfg == OmniModel.from_pretrained(SHIPPED, with_tokenizers=False).cfg


def test_the_lease_command_refuses_bad_settings(tmp_path):
    r = lease(tmp_path, OUT="")
    assert r.returncode != 0 and "set OUT" in r.stderr
    r = lease(tmp_path, ROWS="6x")
    assert r.returncode == 2 and "ROWS must be a whole number" in r.stderr
    (tmp_path / "run").mkdir()
    r = lease(tmp_path)
    assert r.returncode == 2 and "exists" in r.stderr and not (tmp_path / "out").exists()
    r = lease(tmp_path, WORLD_REVISION="4", RUN=str(tmp_path / "run4"))  # the mixture refuses it before training
    assert r.returncode == 2 and "--world-revision: world revision must be one of 1, 2, 3" in r.stderr


def test_world_skews_counts_what_the_world_gives_away():
    """scripts/world_skews.py (docs/world_audit.md's table) runs and counts; camera_object's answers are
    never behind the camera in revision 1 (the shipped model's world), and are in revision 2."""
    run = [sys.executable, str(ROOT / "scripts" / "world_skews.py")]
    r = subprocess.run([*run, "--n", "60", "--json"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    cam = out["spatial"]["answers"]["camera_object"]
    assert cam and not any(a.startswith("behind") for a in cam)
    assert sum(out["t2i"]["categories"].values()) == 60
    assert sum(out["t2i"]["math_objects_drawn"].values()) == out["t2i"]["categories"].get("math", 0)
    r = subprocess.run([*run, "--n", "60", "--revision", "2", "--json"], capture_output=True, text=True, timeout=600,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["revision"] == 2 and any(a.startswith("behind") for a in out["spatial"]["answers"]["camera_object"])
    assert out["spatial"]["object_object_answer_not_leftmost_of_scene"] == 0
    # no split holds the second's seeds; the world has no revision 4
    for bad in (["--n", "0"], ["--seed-start", "999999990", "--n", "20"], ["--revision", "4"]):
        r = subprocess.run([*run, *bad], capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_vqa_relations_reads_the_thoughts_numbers(tmp_path):
    """scripts/vqa_relations.py (docs/experiments.md, "VQA's relation answers"): the world's own thoughts,
    as if a model wrote them, read every relation right with no error; the same thoughts with the two
    objects' numbers swapped order none of them right, and their own step no longer follows from them."""
    from omni.world import WorldConfig, sample

    seeds = range(2_000_000_000, 2_000_000_120)
    exs = sample("vqa", seeds, WorldConfig(revision=2))

    def swapped(t: str) -> str:  # the x centres, or the distances, of the two objects exchanged
        m = re.search(r"x (\d+) and the ([a-z ]+) at x (\d+)", t) or re.search(
            r"about (\d+\.\d) m away and the ([a-z ]+) about (\d+\.\d) m", t)
        if not m or m[1] == m[3]:
            return t
        return t[:m.start(1)] + m[3] + t[m.end(1):m.start(3)] + m[1] + t[m.end(3):]

    def scores(name: str, edit, revision: int = 2, thought: str = "inventory") -> Path:
        drawn = exs if revision == 2 else sample("vqa", seeds, WorldConfig(revision=revision, vqa_thought=thought))
        texts = [{"steps": [["think", edit(ex.texts["thinking"])]], "output": ex.answer} for ex in drawn]
        path = tmp_path / name / "vqa_scores.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"task": "vqa", "n": len(exs), "seed_start": seeds[0], "vqa_thought": thought,
                                    "world_revision": revision, "texts": {"+thinking": texts}}))
        return path.parent

    run = [sys.executable, str(ROOT / "scripts" / "vqa_relations.py"), "--json"]
    r = subprocess.run([*run, str(scores("true", lambda t: t)), str(scores("swapped", swapped))],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    true, swap = json.loads(r.stdout)
    lr, cl = true["left_right"], true["closer"]
    assert lr["n"] >= 5 and cl["n"] >= 5
    assert lr["named"] == lr["relation"] == lr["order"] == lr["step"] == lr["follows"] == lr["n"]
    assert lr["x_error"] == 0 and lr["x_error_n"] == lr["n"] and lr["x_error_centre"] > 0
    assert cl["named"] == cl["order"] == cl["follows"] == cl["n"] and cl["m_error"] == 0 and cl["ties"] == 0
    slr, scl = swap["left_right"], swap["closer"]
    assert slr["order"] == 0 and slr["step"] == 0 and slr["relation"] == lr["n"] and slr["x_error"] > 0
    assert scl["order"] == 0 and scl["follows"] == 0 and scl["m_error"] > 0
    # revision 3's step cites the thought's own inventory: its relations flipped follow from nothing; its
    # list emptied is a copy only where nothing came after the object, and a step only to "right of"
    def flipped(t: str) -> str:
        return re.sub(r"is (left|right) of", lambda m: "is " + {"left": "right", "right": "left"}[m[1]] + " of", t)

    def emptied(t: str) -> str:
        return re.sub(r"the list has: [^;]+;", "the list has: none;", t)

    r = subprocess.run([*run, *(str(scores(k, f, 3)) for k, f in (("true3", lambda t: t), ("flipped3", flipped),
                                                                  ("emptied3", emptied)))],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    true, flip, empty = (d["left_right"] for d in json.loads(r.stdout))
    n = true["n"]
    assert n >= 5 and "x_error" not in true
    assert true["named"] == true["listed"] == true["relation"] == true["copied"] == true["step"] == true["follows"] == n
    assert flip["relation"] == flip["step"] == flip["follows"] == 0 and flip["copied"] == flip["listed"] == n
    thoughts = [ex.texts["thinking"] for ex in sample("vqa", seeds, WorldConfig(revision=3))
                if ex.spec["kind"] == "left_right"]
    right = sum(1 for t in thoughts if re.search(r"so the (.+) is right of", t))
    last = sum(1 for t in thoughts if "the list has: none;" in t)
    assert 0 < last < right < n and empty["copied"] == last and empty["step"] == right and empty["relation"] == n
    # a measured thought's closer step copies its two distances from its own inventory: one of them raised
    # by a metre is no copy, and the step's order and answer then follow the raised number
    def raised(t: str) -> str:
        m = re.search(r"is about (\d+)\.\d m away", t)
        return t if not m else t[:m.start(1)] + str(int(m[1]) + 1) + t[m.end(1):]

    r = subprocess.run([*run, *(str(scores(k, f, 3, "measured")) for k, f in (("truem", lambda t: t),
                                                                              ("raisedm", raised)))],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    (true, _), (bad, _) = ((d["closer"], d["left_right"]) for d in json.loads(r.stdout))
    assert true["copied"] == true["order"] == true["follows"] == true["n"] >= 5 and bad["copied"] == 0
    assert bad["m_error"] > 0 and bad["order"] < bad["n"]
    r = subprocess.run([*run, str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode != 0 and "no vqa_scores.json" in r.stderr and "Traceback" not in r.stderr


def test_vqa_inventory_counts_the_words_a_thought_gets_wrong(tmp_path):
    """scripts/vqa_inventory.py (docs/experiments.md, "What the thought is worth where its inventory is
    right"): the world's own thoughts, as if a model wrote them, are right in every count; the same
    thoughts with every cube listed as a sphere lose exactly the cubes' shapes (in place, in the
    confusion, in each colour's shape), and nothing else; an ablation without the row is one line."""
    from omni.world import WorldConfig, sample

    seeds = range(2_000_000_000, 2_000_000_080)
    exs = sample("vqa", seeds, WorldConfig(revision=3))

    def scores(name: str, edit, row: str = "+thinking") -> Path:
        texts = [{"steps": [["think", edit(ex.texts["thinking"])]], "output": ex.answer} for ex in exs]
        path = tmp_path / name / "vqa_scores.json"
        path.parent.mkdir()
        path.write_text(json.dumps({"task": "vqa", "n": len(exs), "seed_start": seeds[0], "world_revision": 3,
                                    "texts": {row: texts}}))
        return path.parent

    def no_cubes(t: str) -> str:  # the inventory's cubes only: the step after it is left alone
        inventory, rest = t.split(". ", 1)
        return inventory.replace(" cube ", " sphere ") + ". " + rest

    run = [sys.executable, str(ROOT / "scripts" / "vqa_inventory.py"), "--json"]
    r = subprocess.run([*run, str(scores("true", lambda t: t)), str(scores("spheres", no_cubes))],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    true, bad = json.loads(r.stdout)
    assert true["n"] == 80 and true["listing"] == true["count"] == 1 and true["colour_shape"] == 1
    assert set(true["in_place"].values()) == set(true["recalled"].values()) == {1.0}
    assert sum(v[1] for v in true["listing_by_objects"].values()) == 80
    assert sum(v["n"] for v in true["by_pixels"].values()) == true["placed_objects"]
    conf = true["confusion"]
    assert all(conf[a][b] == 0 for a in conf for b in conf[a] if a != b) and conf["cube"]["cube"] > 0
    cubes = conf["cube"]["cube"]
    assert bad["confusion"]["cube"] == {"cube": 0, "sphere": cubes, "cylinder": 0, "cone": 0}
    assert bad["in_place"]["shape"] == pytest.approx(1 - cubes / true["placed_objects"])
    assert bad["in_place"]["colour"] == bad["in_place"]["size"] == bad["count"] == 1
    assert bad["colour_shape"] < 1 and bad["listing"] < 1
    # the listing is right exactly where the image has no cube
    no_cube = sum(all(o.shape != "cube" for o in ex.scenes["main"].objects) for ex in exs)
    assert bad["listing"] == pytest.approx(no_cube / 80)
    r = subprocess.run([*run[:-1], str(scores("other", lambda t: t, row="direct"))],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 1 and "has no texts for row '+thinking'; rows: direct" in r.stderr
    assert "Traceback" not in r.stderr
