import json
import subprocess
import sys

import numpy as np
import pytest

from omni.eval.checker import (
    Detection,
    check,
    checker_for,
    degrade,
    evaluate_spec,
    mismatched_specs,
    validate_on_examples,
    validate_on_world,
)
from omni.eval.report import ablation_table
from omni.world import SPLITS, T2I_CATEGORIES, WorldConfig, sample

HELD_OUT = SPLITS["test"][0] + 100_000  # 2,000 held-out seeds


@pytest.fixture(scope="module")
def rendered():
    return sample("t2i", range(HELD_OUT, HELD_OUT + 2000))


@pytest.fixture(scope="module")
def clean(rendered):
    return validate_on_examples(rendered)


def test_validate_on_world_is_validate_on_examples_of_its_renders(rendered):
    r = validate_on_world(100, HELD_OUT, noise=0.03, blur=1)
    same = validate_on_examples(rendered[:100], noise=0.03, blur=1)
    assert r == {"n": 100, "seed_start": HELD_OUT, "size": 32, **same}


def test_checker_on_ground_truth(clean):
    cats = clean["matched"]["categories"]
    assert set(cats) == set(T2I_CATEGORIES)
    for cat, v in cats.items():
        assert v["n"] >= 150, (cat, v)
        assert v["pass"] >= 0.98, (cat, v)


def test_checker_rejects_mismatched_specs(clean):
    for cat, v in clean["mismatched"]["categories"].items():
        assert v["n"] >= 150 and v["pass"] <= 0.20, (cat, v)


def test_checker_robust_to_noise_and_blur(rendered):
    """Gaussian noise sigma 0.03 after a 1-pixel blur (binomial kernel of radius 1)."""
    r = validate_on_examples(rendered, noise=0.03, blur=1)
    for cat, v in r["matched"]["categories"].items():
        assert v["pass"] >= 0.95, (cat, v)
    for cat, v in r["mismatched"]["categories"].items():
        assert v["pass"] <= 0.20, (cat, v)


def test_check_api_and_scores():
    ex = sample("t2i", range(HELD_OUT, HELD_OUT + 40))
    for e in ex:
        r = check(e.views["target"].rgb, e.spec)
        assert r.passed and r.score == 1.0 and r.category == e.spec["category"]
        u8 = (e.views["target"].rgb * 255 + 0.5).astype(np.uint8)
        assert check(u8, e.spec).passed
    # an empty image: nothing found, every include constraint fails, excludes hold
    blank = np.broadcast_to(np.array([0.93, 0.95, 0.98], np.float32), (32, 32, 3))
    for e in ex[:10]:
        r = check(blank, e.spec)
        assert not r.passed and r.detections == []
        n_inc = len(e.spec["include"])
        assert r.score == pytest.approx(len(e.spec["exclude"]) / (n_inc + len(e.spec["exclude"])
                                        + sum("position" in q for q in e.spec["include"])))


def test_evaluate_spec_rules():
    d = [Detection("red", "cube", (2, 10, 8, 16), 30, 0.9), Detection("blue", "sphere", (20, 10, 26, 16), 30, 0.9)]
    spec = {"category": "position", "include": [{"shape": "sphere", "color": None, "count": 1},
                                                {"shape": "cube", "color": None, "count": 1,
                                                 "position": ["left of", 0]}], "exclude": []}
    assert evaluate_spec(d, spec).passed
    spec["include"][1]["position"] = ["right of", 0]
    r = evaluate_spec(d, spec)
    assert not r.passed and r.score == pytest.approx(2 / 3)
    count = {"category": "counting", "include": [{"shape": "cube", "color": None, "count": 2}],
             "exclude": [{"shape": "cube", "color": None, "count": 3}]}
    assert not evaluate_spec(d, count).passed
    assert evaluate_spec(d + [Detection("green", "cube", (12, 2, 16, 6), 12, 0.8)], count).passed
    three = d + [Detection("green", "cube", (12, 2, 16, 6), 12, 0.8),
                 Detection("gray", "cube", (12, 20, 16, 24), 9, 0.7)]
    assert not evaluate_spec(three, count).passed  # exclude: fewer than 3 cubes
    attr = {"category": "color_attr", "include": [{"shape": "cube", "color": "blue", "count": 1}], "exclude": []}
    assert not evaluate_spec(d, attr).passed  # the cube is red


@pytest.mark.parametrize("bad,match", [
    ({"category": "bogus", "include": [{"shape": "cube", "color": None, "count": 1}]}, "unknown category"),
    ({"category": "colors", "include": [{"shape": "torus", "color": None, "count": 1}]}, "unknown shape"),
    ({"category": "colors", "include": [{"shape": "cube", "color": None, "count": 0}]}, "positive integer"),
    ({"category": "colors", "include": []}, "no include"),
    ("not a spec", "must be a dict"),
])
def test_bad_specs(bad, match):
    with pytest.raises(ValueError, match=match):
        check(np.zeros((32, 32, 3)), bad)


def test_bad_images():
    spec = {"category": "single_object", "include": [{"shape": "cube", "color": None, "count": 1}]}
    with pytest.raises(ValueError, match="H, W, 3"):
        check(np.zeros((32, 32)), spec)
    with pytest.raises(ValueError, match="NaN"):
        check(np.full((32, 32, 3), np.nan), spec)
    with pytest.raises(ValueError, match="square"):
        check(np.zeros((32, 40, 3)), spec)
    with pytest.raises(ValueError, match="this checker is for"):
        checker_for(32).detect(np.zeros((16, 16, 3)))


def test_mismatched_specs_ask_for_other_objects(rendered):
    specs = [e.spec for e in rendered[:200]]
    for s, m in zip(specs, mismatched_specs(specs), strict=True):
        if m is not None:
            assert m["category"] == s["category"] and m["include"] != s["include"]


def test_degrade_is_deterministic_and_bounded():
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    a, b = degrade(x, 0.03, 1, seed=4), degrade(x, 0.03, 1, seed=4)
    assert np.array_equal(a, b) and a.min() >= 0 and a.max() <= 1 and not np.array_equal(a, x)
    flat = np.full((1, 8, 8, 3), 0.5, np.float32)
    assert np.allclose(degrade(flat, blur=1), 0.5)  # blur keeps a flat image


def test_checker_64px():
    ex = sample("t2i", range(HELD_OUT, HELD_OUT + 60), WorldConfig(size=64))
    assert all(check(e.views["target"].rgb, e.spec).passed for e in ex)


def test_ablation_table(tmp_path):
    rng = np.random.default_rng(0)
    base = (rng.random(500) < 0.3).astype(float)
    better = np.maximum(base, (rng.random(500) < 0.3).astype(float))
    t = ablation_table({"baseline": base, "+thinking": better}, title="vqa", metric="accuracy %")
    md = t.markdown()
    assert "| baseline |" in md and "| +thinking |" in md and "n = 500" in md
    r0, r1 = t.rows
    assert r0.lo < r0.mean < r0.hi and r1.delta == pytest.approx(better.mean() - base.mean())
    assert r1.delta_lo > 0  # a paired improvement on the same examples is significant
    paths = t.save(tmp_path, "vqa")
    assert json.loads(paths["json"].read_text())["rows"][1]["name"] == "+thinking"
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    piped = ablation_table({"a|b": [1.0, 0.0], "c": [1.0, 1.0]}).markdown().splitlines()
    assert "vs a\\|b |" in piped[2] and piped[4].startswith("| a\\|b | ")  # one cell, not two
    assert all(line.replace("\\|", "").count("|") == 6 for line in piped[2:6])
    with pytest.raises(ValueError, match="same examples"):
        ablation_table({"a": [1, 0], "b": [1]})
    with pytest.raises(ValueError):
        ablation_table({})


def test_cli_eval_checker_json():
    r = subprocess.run([sys.executable, "-m", "omni.cli", "eval", "checker", "--n", "60", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 60 and out["matched"]["overall"]["pass"] > 0.9
    assert set(out["mismatched"]["categories"]) <= set(T2I_CATEGORIES)
    from typer.testing import CliRunner

    from omni.cli import app

    for args, needle in ((["--n", "-1"], "--n"), (["--noise", "inf"], "--noise must be a finite number"),
                         (["--blur-sigma", "nan"], "--blur-sigma must be a finite number")):  # these two passed 0 %
        bad = CliRunner().invoke(app, ["eval", "checker", "--n", "2", *args])  # in process: no torch import each
        assert bad.exit_code == 2 and bad.stderr.startswith("error:") and bad.stderr.count("\n") == 1
        assert needle in bad.stderr, bad.stderr


def test_cli_eval_checker_on_revision_2():
    """The checker's ceiling on the world's revision 2 (whose t2i prompts keep their hard counts and
    positions across redrafts): its renders, its record."""
    from typer.testing import CliRunner

    from omni.cli import app

    r = CliRunner().invoke(app, ["eval", "checker", "--n", "40", "--world-revision", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["world_revision"] == 2 and out["matched"]["overall"]["pass"] > 0.9
    exs = sample("t2i", range(2_000_000_000, 2_000_000_040), WorldConfig(revision=2))
    assert out == {"n": 40, "seed_start": 2_000_000_000, "size": 32, "world_revision": 2,
                   **validate_on_examples(exs)}
    bad = CliRunner().invoke(app, ["eval", "checker", "--n", "2", "--world-revision", "4"])
    assert bad.exit_code == 2 and "world revision must be one of 1, 2, 3" in bad.stderr


def test_compare_pairs_two_eval_outputs_example_by_example(tmp_path):
    """`omni eval compare` reads two `omni eval --json` outputs of one task on the same examples and
    gives each metric's Δ paired per example; errors fall when a model improves (lower is better);
    outputs of another task or other examples are refused."""
    import json
    import subprocess
    import sys

    from omni.eval.report import compare_outputs

    old = {"task": "depth", "n": 4, "seed_start": 7, "scores": {"delta1": [0.5, 0.6, 0.7, 0.8],
                                                                 "abs_rel": [0.2, 0.2, 0.3, 0.3]}}
    new = {**old, "scores": {"delta1": [0.6, 0.7, 0.8, 0.9], "abs_rel": [0.1, 0.1, 0.2, 0.2]}}
    t = compare_outputs({"old": old, "new": new})
    assert set(t) == {"delta1", "abs_rel"}
    assert t["delta1"].rows[1].delta == pytest.approx(0.1) and t["delta1"].rows[1].delta_lo == pytest.approx(0.1)
    assert t["abs_rel"].rows[1].delta == pytest.approx(-0.1) and not t["abs_rel"].higher_is_better
    for bad, needle in (({**new, "task": "vqa"}, "task 'vqa' differs"), ({**new, "seed_start": 8}, "seed_start 8"),
                        ({"task": "depth"}, "no per-example scores")):
        with pytest.raises(ValueError, match=needle):
            compare_outputs({"old": old, "bad": bad})
    with pytest.raises(ValueError, match="at least two"):
        compare_outputs({"old": old})
    # outputs scored with other sampling seeds are compared, and the table says so (not when unrecorded)
    seeded = compare_outputs({"s0": {**old, "sampling_seeds": [0]}, "s1": {**new, "sampling_seeds": [1]}})
    assert "sampling seeds differ: s0 [0]; s1 [1]" in seeded["delta1"].markdown()
    unrecorded = compare_outputs({"old": old, "s1": {**new, "sampling_seeds": [1]}})
    assert "sampling seeds" not in unrecorded["delta1"].markdown()
    for name, d in (("a.json", old), ("b.json", new)):
        (tmp_path / name).write_text(json.dumps(d))
    r = subprocess.run([sys.executable, "-m", "omni.cli", "eval", "compare", str(tmp_path / "a.json"),
                        str(tmp_path / "b.json"), "--names", "old,new", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["delta1"]["rows"][1]["name"] == "new"
    r = subprocess.run([sys.executable, "-m", "omni.cli", "eval", "compare", str(tmp_path / "a.json"),
                        str(tmp_path / "b.json"), "--names", "x"], capture_output=True, text=True)
    assert r.returncode == 2 and "--names must give 2 distinct names" in r.stderr
    r = subprocess.run([sys.executable, "-m", "omni.cli", "eval", "compare", str(tmp_path / "a.json"),
                        str(tmp_path / "a.json")], capture_output=True, text=True)
    assert r.returncode == 2 and "a file is named twice" in r.stderr, r.stderr  # it blamed --names None
    # outputs that are not of the same examples, or not outputs, are refused (they were paired, or a traceback)
    for bad, needle in (({**new, "pose_motions": ["move_turn"]}, "pose_motions \\['move_turn'\\] differs"),
                        ({k: v for k, v in new.items() if k != "task"}, "no 'task'"),
                        ({**new, "scores": {"delta1": {"a": 1}}}, "not a list of numbers"),
                        ({**new, "scores": {"delta1": [[0.5, 0.5]] * 2}}, "not a list of numbers")):
        with pytest.raises(ValueError, match=needle):
            compare_outputs({"old": old, "new": bad})


def test_compare_pairs_two_ablation_tables_row_by_row():
    """`omni eval compare` also reads `omni ablate` <task>_scores.json files (two checkpoints' tables):
    each row's metric paired per example, errors lower-is-better; a table and an eval output, or
    tables that share no row, are refused."""
    from omni.eval.report import compare_outputs

    old = {"task": "depth", "n": 3, "seed_start": 7, "rows": {"baseline": [], "+depth caption": ["depth_caption"]},
           "scores": {"baseline": {"delta1": [0.5, 0.6, 0.7], "abs_rel": [0.3, 0.3, 0.3]},
                      "+depth caption": {"delta1": [0.6, 0.6, 0.7], "abs_rel": [0.2, 0.3, 0.3]}}}
    new = {**old, "scores": {"baseline": {"delta1": [0.5, 0.6, 0.9], "abs_rel": [0.3, 0.3, 0.6]},
                             "+depth caption": {"delta1": [0.6, 0.6, 0.4], "abs_rel": [0.2, 0.3, 0.0]}}}
    t = compare_outputs({"old": old, "new": new})
    assert list(t) == ["baseline: delta1", "baseline: abs_rel", "+depth caption: delta1", "+depth caption: abs_rel"]
    assert t["baseline: delta1"].rows[1].delta == pytest.approx(0.2 / 3)
    assert t["+depth caption: delta1"].rows[1].delta == pytest.approx(-0.1)
    assert t["+depth caption: abs_rel"].rows[1].delta == pytest.approx(-0.1)
    assert not t["baseline: abs_rel"].higher_is_better and t["baseline: delta1"].higher_is_better
    evald = {"task": "depth", "n": 3, "seed_start": 7, "scores": {"delta1": [0.5, 0.6, 0.7]}}
    with pytest.raises(ValueError, match="one kind"):
        compare_outputs({"old": old, "eval": evald})
    other = {**old, "rows": {"x": []}, "scores": {"x": {"delta1": [0.1, 0.2, 0.3]}}}
    with pytest.raises(ValueError, match="share no scored metric"):
        compare_outputs({"old": old, "other": other})
    with pytest.raises(ValueError, match="holds no metrics"):
        compare_outputs({"old": old, "bad": {**old, "scores": {"baseline": [0.1, 0.2, 0.3]}}})
    # two partial ablations (their first 2 of 3 examples) were paired and said to be "the same 3 examples"
    part = {**old, "done": 2, "scores": {r: {k: v[:2] for k, v in m.items()} for r, m in old["scores"].items()}}
    with pytest.raises(ValueError, match=r"'baseline: delta1' scores 2 examples, not its n = 3 \(a partial "
                                         r"ablation: 2 done\)"):
        compare_outputs({"a": part, "b": {**part}})
    with pytest.raises(ValueError, match="scores 2 examples, not its n = 3; compare"):
        compare_outputs({"old": evald, "short": {**evald, "scores": {"delta1": [0.5, 0.6]}}})


def test_ablation_table_names_the_row_holding_nan():
    """bootstrap_ci's own error did not say which row (e.g. a PSNR of identical images: inf)."""
    with pytest.raises(ValueError, match="row 'b' holds NaN or infinite scores \\(example 1: inf\\)"):
        ablation_table({"a": [1.0, 2.0], "b": [1.0, float("inf")]})
    with pytest.raises(ValueError, match="row 'a' holds NaN"):
        ablation_table({"a": [float("nan"), 2.0], "b": [1.0, 2.0]})
