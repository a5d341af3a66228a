import json
import subprocess
import sys

import pytest

from omni.train import MixtureConfig, train_main

SMALL = {"d_model": 64, "n_layers": 2, "n_heads": 4}


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("steps") / "run"
    train_main(str(d), steps=2, save_every=1, keep=5, ema=0.9, workers=0, threads=1, warmup=1,
               model_overrides=SMALL, mixture=MixtureConfig(rows=1, row_len=1024), log=quiet)
    return d


def test_every_checkpoint_scored_as_omni_eval_scores_it(run, tmp_path, monkeypatch):
    from omni.eval import steps as steps_mod
    from omni.train import export

    shipped = export(run, tmp_path / "exported")  # the newest checkpoint as a model, another point
    out = tmp_path / "out"
    r = steps_mod.scores_by_step(run, out, ["vqa", "depth"], n=2, extra={9: shipped})
    assert sorted(r["steps"]) == [1, 2, 9] and r["n"] == {"vqa": 2, "depth": 2}
    for s in (1, 2, 9):
        assert set(r["steps"][s]) == {"vqa", "depth"} and 0 <= r["steps"][s]["depth"]["delta1"]["mean"] <= 1
    assert json.loads((out / "scores_by_step.json").read_text())["tasks"] == ["vqa", "depth"]
    assert (out / "scores_by_step.png").stat().st_size > 1000
    md = (out / "scores_by_step.md").read_text().splitlines()
    assert md[0].startswith("| step | vqa accuracy (n = 2) | depth delta1 (n = 2) |") and len(md) == 5
    assert md[3].startswith("| 2 | ") and md[4].startswith("| 9 | ")
    # the last step exported by the command scores as `omni eval` scores the exported model
    cli = subprocess.run([sys.executable, "-m", "omni.cli", "eval", "depth", "--checkpoint", str(shipped), "--n", "2",
                          "--json"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["scores"] == json.loads((out / "step-0000002" / "depth.json").read_text())["scores"]
    assert r["steps"][2] == r["steps"][9]
    # results on disk are reused: nothing is evaluated again
    monkeypatch.setattr("omni.eval.run.evaluate", lambda *a, **k: pytest.fail("evaluated again"))
    assert steps_mod.scores_by_step(run, out, ["vqa", "depth"], n=2, extra={9: shipped})["steps"] == r["steps"]
    with pytest.raises(ValueError, match="not n=3"):
        steps_mod.scores_by_step(run, out, ["vqa"], n=3)
    # a reused file that is not this command's scores is named (AttributeError, KeyError, or accepted before)
    kept = out / "step-0000001" / "vqa.json"
    good = json.loads(kept.read_text())
    for bad, needle in (("[1]", "expected a JSON object"), ('{"n": 2', "not valid JSON"),
                        (json.dumps({**good, "task": "depth"}), "not this command's vqa scores"),
                        (json.dumps({k: v for k, v in good.items() if k != "metrics"}), "not this command's"),
                        (json.dumps({**good, "metrics": {"psnr": good["metrics"]["accuracy"]}}), "not this command's")):
        kept.write_text(bad)
        with pytest.raises(ValueError, match=needle):
            steps_mod.scores_by_step(run, out, ["vqa", "depth"], n=2, extra={9: shipped})


def test_scores_of_another_model_at_a_step_are_not_reused(run, tmp_path):
    """Reuse went by step number alone: an --also model at a step the run has (or a second run into
    the same --out) was given the first model's scores. Each file records its model's config digest."""
    from omni.eval.steps import scores_by_step
    from omni.serve.testing import random_tiny_checkpoint

    out = tmp_path / "out"
    first = scores_by_step(run, out, ["depth"], n=1)
    src = json.loads((out / "step-0000002" / "depth.json").read_text())["source"]
    assert src.startswith("config.json sha256 ")
    other = random_tiny_checkpoint(tmp_path / "other")
    with pytest.raises(ValueError, match="scores another model at step 2"):
        scores_by_step(None, out, ["depth"], n=1, extra={2: other})
    assert scores_by_step(run, out, ["depth"], n=1)["steps"] == first["steps"]  # its own: reused


def test_steps_on_the_worlds_revision_2(run, tmp_path):
    """`omni eval steps --world-revision 2` scores the mended world's examples (as `omni eval TASK
    --world-revision 2` does), records the revision, and reuses no score of the other revision."""
    from omni.eval.steps import scores_by_step

    out = tmp_path / "out"
    r = scores_by_step(run, out, ["spatial"], n=2, world_revision=2)
    assert r["world_revision"] == 2
    assert json.loads((out / "step-0000002" / "spatial.json").read_text())["world_revision"] == 2
    with pytest.raises(ValueError, match="scores the world's revision 2, not 1"):
        scores_by_step(run, out, ["spatial"], n=2)
    r = scores_by_step(run, tmp_path / "o2", ["spatial-thought"], n=2, world_revision=2)
    assert json.loads((tmp_path / "o2" / "step-0000002" / "spatial-thought.json").read_text())["world_revision"] == 2
    with pytest.raises(ValueError, match="world revision must be one of 1, 2, 3"):
        scores_by_step(run, tmp_path / "o3", ["vqa"], n=2, world_revision=7)


def test_export_a_chosen_step(run, tmp_path):
    """export(step=N) ships that checkpoint's EMA weights, not the newest, says which in its record,
    and refuses a step the run did not keep."""
    import torch

    from omni.model import OmniModel
    from omni.train import export

    one = export(run, tmp_path / "one", dtype="float32", step=1)
    two = export(run, tmp_path / "two", dtype="float32")
    assert json.loads((one / "config.json").read_text())["exported_from"] == "step-0000001"
    assert json.loads((two / "config.json").read_text())["exported_from"] == "step-0000002"
    a, b = (OmniModel.from_pretrained(d).state_dict() for d in (one, two))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], v) for k, v in OmniModel.from_pretrained(
        export(run, tmp_path / "again", dtype="float32", step=1)).state_dict().items())
    with pytest.raises(FileNotFoundError, match=r"no complete checkpoint of step 7 .*\[1, 2\]"):
        export(run, tmp_path / "x", step=7)


def test_spatial_thought_steps_by_checkpoint(run, tmp_path):
    """The spatial thought's steps (thought_steps) charted per checkpoint like a task's score."""
    from omni.eval.context_use import STEP_NAMES
    from omni.eval.steps import scores_by_step

    r = scores_by_step(run, tmp_path / "o", ["spatial-thought"], n=2)
    assert sorted(r["steps"]) == [1, 2]
    for s in (1, 2):
        m = r["steps"][s]["spatial-thought"]
        assert set(m) == set(STEP_NAMES) and all(0 <= v["mean"] <= 1 for v in m.values())
    saved = json.loads((tmp_path / "o" / "step-0000002" / "spatial-thought.json").read_text())
    assert saved["n"] == 2 and sum(saved["letters"].values()) == 2
    assert (tmp_path / "o" / "scores_by_step.md").read_text().startswith("| step | spatial-thought verdict (n = 2) |")


def test_errors(run, tmp_path):
    from omni.eval.steps import scores_by_step

    with pytest.raises(ValueError, match="unknown task"):
        scores_by_step(run, tmp_path / "o", ["teleport"])
    with pytest.raises(ValueError, match="lies in no split"):
        scores_by_step(run, tmp_path / "o", ["vqa"], n=1, seed_start=1_500_000_000)
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        scores_by_step(tmp_path / "nope", tmp_path / "o", ["vqa"], n=1)
    with pytest.raises(FileNotFoundError, match="no model"):
        scores_by_step(None, tmp_path / "o", ["vqa"], n=1, extra={5: tmp_path})
    r = subprocess.run([sys.executable, "-m", "omni.cli", "eval", "steps", "--out", str(tmp_path / "o"),
                        "--also", "x=y"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--also takes STEP=MODEL_DIR" in r.stderr, r.stderr


def test_pose_correlations_by_step(run, tmp_path):
    """With pose, each step also records how each of its six numbers follows the truth (the
    orbit's direction, tx and ry, is what the pose runs wait for), as a column and a panel."""
    from omni.eval.run import POSE_NUMBERS
    from omni.eval.steps import plot_scores_by_step, scores_by_step, steps_markdown

    r = scores_by_step(run, tmp_path / "o", ["pose"], n=2)
    assert sorted(r["pose_corr"]) == [1, 2] and all(len(c) == 6 for c in r["pose_corr"].values())
    saved = json.loads((tmp_path / "o" / "step-0000002" / "pose.json").read_text())
    assert r["pose_corr"][2] == (saved["pose_fit"].get("corr") or [None] * 6)
    md = (tmp_path / "o" / "scores_by_step.md").read_text().splitlines()
    assert md[0] == "| step | pose auc@30 (n = 2) | pose corr " + " ".join(POSE_NUMBERS) + " |"
    # the column as it reads once correlations exist, and — where a number was constant
    summary = {"tasks": ["pose"], "n": {"pose": 500}, "seed_start": 0,
               "steps": {"10": {"pose": {"auc@30": {"mean": 0.25, "lo": 0.2, "hi": 0.3}}}},
               "pose_corr": {"10": [0.614, None, -0.05, 0.9, 0.6, 0.59]}}
    assert steps_markdown(summary).splitlines()[2] == "| 10 | 0.250 [0.200, 0.300] | 0.61 — -0.05 0.90 0.60 0.59 |"
    assert plot_scores_by_step(summary, tmp_path / "p.png").stat().st_size > 1000
    assert "pose_corr" not in scores_by_step(run, tmp_path / "v", ["vqa"], n=1)
