"""Evaluation edge cases found in an audit of omni/eval and the eval / ablate / demo commands: each was
silently wrong or failed with an error that did not say what was wrong."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from omni.cli import app
from omni.serve.testing import random_tiny_model

TEST = 2_000_000_000


@pytest.fixture(scope="module")
def model():
    return random_tiny_model(0)


def cli(*args):
    return CliRunner().invoke(app, list(args))


def strict_json(text: str):
    """json.loads refusing NaN and Infinity (what `json.dumps` writes for them is not JSON)."""
    def refuse(c):
        raise ValueError(f"not JSON: {c}")

    return json.loads(text, parse_constant=refuse)


class CopyEngine:
    """An engine whose nvs output is the target itself: a PSNR of identical images, inf."""

    def __init__(self):
        self.model = SimpleNamespace(cfg=SimpleNamespace(pose_head=False, image_size=32))
        self.flow_start, self.pose_decoder = 1.0, "text"

    def run(self, inputs, plan):
        from omni.unroll.engine import Item, Result
        from omni.world import sample

        ex = next(e for e in sample("nvs", range(TEST, TEST + 2)) if np.array_equal(e.views["source"].rgb,
                                                                                   inputs.images["source"]))
        return Result("nvs", [], Item("output", "image", image=ex.views["target"].rgb.copy()), [])


def test_an_infinite_score_names_its_metric_and_example():
    """bootstrap_ci said only "values hold NaN or infinite entries", after the whole evaluation."""
    from omni.eval.run import evaluate

    with pytest.raises(ValueError, match=r"nvs: metric 'psnr' is not finite for 2 of 2 examples "
                                         r"\(first: example 0, seed 2000000000: inf\)"):
        evaluate(CopyEngine(), "nvs", 2, TEST)


def test_an_infinite_ablation_score_names_its_row_and_metric(model, monkeypatch):
    """ablation_table named the row only (not the metric, nor the example's seed)."""
    from omni.eval.ablate import ablate
    from omni.unroll import Engine

    monkeypatch.setattr("omni.eval.ablate.score", lambda ex, res: {"accuracy": 1.0, "psnr": float("inf")})
    with pytest.raises(ValueError, match=r"vqa row 'direct': metric 'psnr' is not finite .* seed 2000000000"):
        ablate(Engine(model), "vqa", 1, TEST, rows={"direct": []})


def test_ablate_checks_its_task_and_n(model):
    """A KeyError ('bogus') and a KeyError ('accuracy', n = 0) before."""
    from omni.eval.ablate import ablate
    from omni.unroll import Engine

    with pytest.raises(ValueError, match="unknown task 'bogus'"):
        ablate(Engine(model), "bogus", 1, TEST)
    with pytest.raises(ValueError, match="n must be positive, got 0"):
        ablate(Engine(model), "vqa", 0, TEST)


def test_resume_refuses_a_focused_thoughts_progress(model, tmp_path):
    """`vqa_thought` is kept in the progress file only when it is not the default, and only the run's own
    keys were compared: an inventory run resumed a focused run's file, its context scores the focused
    thought's, its output saying inventory."""
    from omni.eval.ablate import ablate
    from omni.unroll import Engine

    p = tmp_path / "vqa_partial.json"
    rows = {"+thinking": ["think"]}
    ablate(Engine(model, think_tokens=4), "vqa", 1, TEST, rows=rows, partial=p, vqa_thought="focused")
    assert json.loads(p.read_text())["vqa_thought"] == "focused"
    with pytest.raises(ValueError, match="keeps another ablation's progress \\(vqa_thought differ\\)"):
        ablate(Engine(model, think_tokens=4), "vqa", 1, TEST, rows=rows, partial=p, resume=True)
    again = ablate(Engine(model, think_tokens=4), "vqa", 1, TEST, rows=rows, partial=p, resume=True,
                   vqa_thought="focused")  # the same run resumes
    assert again["vqa_thought"] == "focused"


def test_a_64px_model_is_scored_on_64px_worlds(model):
    """evaluate, ablate and demo sampled the world at its default 32 px whatever the model's size, so a
    64-px model (a configurable size) failed on its first example."""
    from omni.eval.ablate import ablate
    from omni.eval.run import evaluate
    from omni.model import OmniModel
    from omni.unroll import Engine

    big = OmniModel(dataclasses.replace(model.cfg, image_size=64)).eval()
    big.tokenizer = model.tokenizer
    object.__setattr__(big, "visual", model.visual)
    r = evaluate(Engine(big), "vqa", 1, TEST, "direct")
    assert r["n"] == 1 and 0 <= r["metrics"]["accuracy"]["mean"] <= 1
    assert ablate(Engine(big), "depth", 1, TEST, rows={"baseline": []})["scores"]["baseline"]["delta1"]


def test_demo_at_the_models_size(model, tmp_path):
    from omni.eval.demo import demo
    from omni.model import OmniModel
    from omni.unroll import Engine

    big = OmniModel(dataclasses.replace(model.cfg, image_size=64)).eval()
    big.tokenizer = model.tokenizer
    object.__setattr__(big, "visual", model.visual)
    traces = demo(Engine(big), tmp_path / "d.png", TEST, tasks=("depth",))
    assert set(traces) == {"depth"} and (tmp_path / "d.png").is_file()



def test_unroll_at_the_models_size(model, tmp_path):
    """omni unroll sampled its example at 32 px whatever the model's size (as eval and ablate did)."""
    from omni.model import OmniModel

    big = OmniModel(dataclasses.replace(model.cfg, image_size=64)).eval()
    big.tokenizer = model.tokenizer
    object.__setattr__(big, "visual", model.visual)
    big.save_pretrained(tmp_path / "ck")
    r = cli("unroll", "depth", "--plan", "direct", "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, r.stderr
    assert np.load(tmp_path / "o" / "output.npy").shape[:2] == (64, 64)

def test_curves_read_each_log_once(tmp_path, monkeypatch):
    """The command read every log twice (the plot, then the divergence warnings): twice the time, and
    a log still being written could show the plot one set of entries and the warnings another."""
    from PIL import Image

    from omni.eval import report

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps({"step": s, "text_ce": 2.0}) for s in range(1, 31)))
    b.write_text("\n".join(json.dumps({"step": s, "text_ce": 1.0 if s < 10 else float("nan")}) for s in range(1, 21)))
    report.plot_training([a, b], tmp_path / "before.png")
    reads = []
    real = report.read_log
    monkeypatch.setattr(report, "read_log", lambda p: reads.append(str(p)) or real(p))
    r = cli("eval", "curves", "--log", str(a), "--log", str(b), "--out", str(tmp_path / "c.png"))
    assert r.exit_code == 0, r.stderr
    assert sorted(reads) == sorted([str(a), str(b)])
    assert "warning: text_ce is not finite from step 40" in r.stderr and r.stdout == f"wrote {tmp_path / 'c.png'}\n"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "c.png")), np.asarray(Image.open(tmp_path / "before.png")))


def test_checker_json_is_json_without_mismatched_specs(monkeypatch):
    """With no spec of another example of its category (here one example) the mismatched overall rate
    was NaN, and `--json` printed `NaN`, which no strict JSON reader accepts; the table printed nan%."""
    from omni.eval.checker import CheckResult, summarize

    assert summarize([])["overall"] == {"pass": None, "score": None}
    one = {"noise": 0.0, "blur": 0, "blur_sigma": 0.0, "matched": summarize([CheckResult("mapping", [("has", True)])]),
           "mismatched": summarize([])}  # validate_on_world's result for seed 2000000000 alone, without the renders
    monkeypatch.setattr("omni.eval.checker.validate_on_world",
                        lambda n, seed_start, size, *a, **k: {"n": n, "seed_start": seed_start, "size": size, **one})
    r = cli("eval", "checker", "--n", "1", "--json")
    assert r.exit_code == 0, r.stderr
    out = strict_json(r.stdout)
    assert out["mismatched"]["overall"]["pass"] is None and out["matched"]["overall"]["pass"] == 1.0
    text = cli("eval", "checker", "--n", "1")
    assert text.exit_code == 0 and "nan" not in text.stdout and text.stdout.splitlines()[-1].split()[-1] == "-"


def test_checker_blur_radius_is_checked_before_the_renders(monkeypatch):
    """--blur 3 passed the command's check (>= 0) and failed in degrade after every render, without the
    option's name."""
    monkeypatch.setattr("omni.eval.checker.validate_on_world", lambda *a: pytest.fail("rendered"))
    for v in ("3", "-1"):
        r = cli("eval", "checker", "--n", "2", "--blur", v)
        assert r.exit_code == 2 and f"--blur must be one of 0, 1, 2 (px), got {v}" in r.stderr, r.stderr


def test_noise_levels_must_differ(model, tmp_path):
    """--t 0.5,0.5 scored every example twice in one table (n = 2 x --n, its interval too narrow); two
    levels printed alike (t=0.5) wrote one table over the other."""
    from omni.eval.context_use import flow_context_use

    for ts in ((0.5, 0.5), (0.5, 0.5000001)):
        with pytest.raises(ValueError, match="noise levels must differ"):
            flow_context_use(model, 1, 1_000_000_000, ts=ts)
    assert flow_context_use(model, 1, 1_000_000_000, ts=(0.5, 0.8))["t=0.5"].n == 1
    r = cli("eval", "context-use", "--t", "0.5,0.50", "--checkpoint", str(tmp_path / "absent"))
    assert r.exit_code == 2 and "--t: noise levels must differ, got [0.5, 0.5]" in r.stderr, r.stderr  # before loading


def test_ablate_sampling_seed_is_checked_before_the_model_loads(tmp_path):
    """The engine refused --seed -1 only after the model had loaded, as "seed must be >= 0"."""
    r = cli("ablate", "vqa", "--n", "1", "--seed", "-1", "--out", str(tmp_path / "o"),
            "--checkpoint", str(tmp_path / "absent"))
    assert r.exit_code == 2 and "--seed must be" in r.stderr and "'-1'" in r.stderr, r.stderr


def test_pose_decoder_head_needs_a_pose_head(tmp_path):
    """On a model without a pose head the engine decoded the pose texts, and the output (which records
    pose_decoder only where there is a head) did not say the option did nothing."""
    from omni.serve.testing import random_tiny_checkpoint

    random_tiny_checkpoint(tmp_path / "ck")
    r = cli("eval", "pose", "--checkpoint", str(tmp_path / "ck"), "--n", "1", "--pose-decoder", "head", "--json")
    assert r.exit_code == 2 and "--pose-decoder head:" in r.stderr and "has no pose head" in r.stderr, r.stderr


def test_probe_needs_two_training_pairs():
    """One pair's standard deviation is NaN: every prediction was NaN, refused only when scored, as
    "pred_w2c holds NaN or infinite values"."""
    from omni.eval.probe import probe

    with pytest.raises(ValueError, match="--train must be at least 2"):
        probe(n_train=1, steps=1, n=1, batch=1)


def test_resume_refuses_another_flow_start(model, tmp_path):
    """The resume check compared every engine setting the scores depend on but flow_start (where an
    image-to-image flow starts): a run at 0.8 continued one at 1.0."""
    from omni.eval.ablate import ablate
    from omni.unroll import Engine

    p = tmp_path / "depth_partial.json"
    ablate(Engine(model, flow_steps=1), "depth", 1, TEST, rows={"baseline": []}, partial=p)
    assert json.loads(p.read_text())["engine"]["flow_start"] == 1.0
    with pytest.raises(ValueError, match="keeps another ablation's progress \\(engine differ\\)"):
        ablate(Engine(model, flow_steps=1, flow_start=0.8), "depth", 1, TEST, rows={"baseline": []}, partial=p,
               resume=True)


def test_demo_on_revision_2(model, tmp_path):
    """omni demo sampled revision 1 only; --world-revision 2 shows the mended world's example, and the
    traces say which."""
    from omni.eval.demo import demo
    from omni.eval.run import inputs_of
    from omni.unroll import Engine
    from omni.world import WorldConfig, sample

    traces = demo(Engine(model, think_tokens=4), tmp_path / "d.png", TEST, tasks=("spatial",), revision=2)
    question = traces["spatial"]["steps"][0]["text"]
    assert traces["spatial"]["world_revision"] == 2
    assert question == inputs_of(sample("spatial", [TEST], WorldConfig(revision=2))[0]).text
    assert question != inputs_of(sample("spatial", [TEST])[0]).text
    assert json.loads((tmp_path / "d.json").read_text())["spatial"]["world_revision"] == 2
    r = cli("demo", "--world-revision", "0", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "x.png"))
    assert r.exit_code == 2 and "world revision must be one of 1, 2, 3" in r.stderr
