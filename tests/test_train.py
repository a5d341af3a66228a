import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from omni.model import preset
from omni.tokens.text import TextTokenizer
from omni.tokens.visual import VisualTokenizer
from omni.train import FORMS, Mixture, MixtureConfig, Writer, lr_at
from omni.train.data import DRILLS
from omni.train.loop import DEFAULT_VISUAL, TrainConfig

SMALL = json.dumps({"d_model": 64, "n_layers": 2, "n_heads": 4})
ARGS = ["--steps", "8", "--save-every", "2", "--rows", "2", "--row-len", "512", "--workers", "0", "--warmup", "2",
        "--lr", "2e-3", "--threads", "1", "--model", SMALL]


def run_train(out, *extra, launcher=(sys.executable, "-m", "omni.train")):
    return subprocess.Popen([*launcher, "--out", str(out), *ARGS, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def losses(run_dir) -> dict[int, float]:
    out = {}
    for line in (Path(run_dir) / "log.jsonl").read_text().splitlines():
        m = json.loads(line)
        out[m["step"]] = m["loss"]  # a resumed run rewrites the steps after its checkpoint: keep the last
    return out


@pytest.fixture(scope="module")
def writer():
    return Writer(TextTokenizer.default(), VisualTokenizer.load(DEFAULT_VISUAL), preset("tiny"))


def test_mixture_yields_every_context_variant(writer):
    mix = Mixture(MixtureConfig(), writer)
    seen = Counter((t, f) for s in range(60) for slot in range(40) for t, f, _, _ in [mix.draw(s, slot)])
    assert set(seen) == {(t, f) for t, forms in FORMS.items() for f in forms if f not in DRILLS.get(t, ())}
    tok = writer.tok
    from omni.world import sample

    def tags_of(task, form):
        ex = sample(task, [7])[0]
        import numpy as np

        segs = writer.write(ex, form, np.random.default_rng(0))
        ids = [i for s in segs if s.kind == "text" for i in s.tokens]
        kinds = [s.kind for s in segs]
        return {tok.tk.id_to_token(i) for i in ids if i < 64}, kinds, segs

    t, k, segs = tags_of("t2i", "long+visual")
    assert {"<layout>", "<vis>", "<gen>"} <= t and "visual" in k and "image_gen" in k
    assert all(s.loss for s in segs if s.kind in ("visual", "image_gen"))
    t, k, _ = tags_of("t2i", "direct")
    assert "<layout>" not in t and "<think>" not in t and "visual" not in k
    t, k, _ = tags_of("spatial", "views")
    assert {"<campose>", "<look_up>", "<look_down>", "<look_left>", "<look_right>", "<think>", "<answer>"} <= t
    assert k.count("image_clean") == 4 and k.count("image_in") == 2
    t, k, segs = tags_of("depth", "depthcap+visual")
    assert {"<depthcap>", "<vis>", "<view>"} <= t
    assert sum(s.depth is not None for s in segs if s.kind == "image_in") == 1
    t, _, _ = tags_of("vqa", "think")
    assert {"<think>", "<answer>"} <= t
    for task in ("pose", "nvs", "video", "edit"):
        assert tags_of(task, "direct")[0]


def test_batches_are_a_function_of_seed_and_step(writer):
    a = Mixture(MixtureConfig(rows=2, row_len=512), writer).batch(5)[0]
    b = Mixture(MixtureConfig(rows=2, row_len=512), writer).batch(5)[0]
    c = Mixture(MixtureConfig(rows=2, row_len=512, data_seed=1), writer).batch(5)[0]
    assert torch.equal(a.token, b.token) and torch.equal(a.latents, b.latents)
    assert torch.equal(a.flow_target, b.flow_target)
    assert not torch.equal(a.token, c.token)
    assert a.kind.shape == (2, 512)


def test_a_wide_batch_draws_enough_examples_to_fill_its_rows(writer):
    # 48 draws fill about 9 rows of 1,024 tokens; --rows 32 (the GPU plan's) was two-thirds padding
    narrow = Mixture(MixtureConfig(rows=8, row_len=1024), writer)
    wide = Mixture(MixtureConfig(rows=24, row_len=1024), writer)
    assert narrow.slots() == 48 and wide.slots() == 144
    _, info = wide.batch(0)
    assert info["tokens"] > 0.8 * 24 * 1024, info["tokens"]
    # up to 8 rows the draws are unchanged: the first sequences of a step are the same
    seqs8, seqs2 = narrow.sequences(3), Mixture(MixtureConfig(rows=2, row_len=1024), writer).sequences(3)
    assert [(t, f) for t, f, _ in seqs2] == [(t, f) for t, f, _ in seqs8[:len(seqs2)]]


def test_t_shift_moves_generated_images_noise_levels_toward_pure_noise(writer, tmp_path):
    import numpy as np

    from omni.train import Trainer
    from omni.world import sample

    x0 = writer.latents([sample("t2i", [3])[0].views["target"].rgb])[0]

    def levels(w):
        return np.array([w.gen(x0, np.random.default_rng(i))[1].t for i in range(400)])

    plain = levels(writer)
    shifted = levels(Writer(writer.tok, writer.vq, writer.cfg, t_shift=3.0))
    u = plain  # the same draws: t = 3u / (1 + 2u)
    assert np.allclose(shifted, 3 * u / (1 + 2 * u)) and (shifted >= plain).all()
    assert (shifted > 0.9).mean() > 4 * (plain > 0.9).mean()
    assert ((0 < shifted) & (shifted < 1)).all()
    with pytest.raises(ValueError, match="--t-shift must be a finite number >= 0.001"):
        MixtureConfig(t_shift=0.0)
    # the run's mixture config reaches the writer, and survives train_config.json
    cfg = TrainConfig(steps=1, mixture=MixtureConfig(t_shift=2.5))
    assert Trainer(cfg, tmp_path / "run").mixture.w.t_shift == 2.5
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).mixture.t_shift == 2.5


def test_edit_start_trains_edits_on_the_path_from_their_noised_source(writer, tmp_path):
    """--edit-start s: an edit's flow is trained on the straight path from its before image noised at s
    (what `sample_latents(start=s)` starts from) to its after image; the levels are the plain draws
    scaled into (0, s], nothing else changes (nvs keeps the plain path) and a bad s is a clear error."""
    import numpy as np

    from omni.train import Trainer
    from omni.world import sample

    ex = sample("edit", [5])[0]
    src, x0 = writer.latents([ex.views["before"].rgb, ex.views["after"].rgb])
    s = 0.7
    started = Writer(writer.tok, writer.vq, writer.cfg, edit_start=s)
    for i in range(5):
        plain = [g for g in writer.write(ex, "direct", np.random.default_rng(i)) if g.kind == "image_gen"][0]
        moved = [g for g in started.write(ex, "direct", np.random.default_rng(i)) if g.kind == "image_gen"][0]
        assert moved.t == pytest.approx(s * plain.t) and 0 < moved.t <= s
        assert torch.allclose(moved.latents, x0, atol=1e-6) and moved.uncond == plain.uncond
        # at the start level the path is the source noised with the plain draw: x_s = (1 - s) src + s noise
        x_s = (1 - s) * x0 + s * moved.noise
        assert torch.allclose(x_s, (1 - s) * src + s * plain.noise, atol=1e-5)
        assert not torch.allclose(moved.noise, plain.noise)
    nvs = sample("nvs", [5])[0]
    a = [g for g in writer.write(nvs, "direct", np.random.default_rng(0)) if g.kind == "image_gen"][0]
    b = [g for g in started.write(nvs, "direct", np.random.default_rng(0)) if g.kind == "image_gen"][0]
    assert a.t == b.t and torch.equal(a.noise, b.noise)
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match="--edit-start must be in"):
            MixtureConfig(edit_start=bad)
    cfg = TrainConfig(steps=1, mixture=MixtureConfig(edit_start=0.8))
    assert Trainer(cfg, tmp_path / "run").mixture.w.edit_start == 0.8
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).mixture.edit_start == 0.8


def test_task_and_form_weights_from_the_command_line(writer, tmp_path):
    """--task-weights merges onto the defaults, --form-weights reweights a task's forms; the draws
    follow them (a zero weight is never drawn) and bad JSON, names or weights are clear errors."""
    kw = MixtureConfig.weights('{"spatial": 3, "t2i": 0}', '{"spatial": {"pose": 2, "views": 0}}')
    mix = MixtureConfig(**kw)
    assert mix.task_weights == {**MixtureConfig().task_weights, "spatial": 3, "t2i": 0}
    m = Mixture(mix, writer)
    seen = Counter((t, f) for s in range(40) for slot in range(40) for t, f, _, _ in [m.draw(s, slot)])
    tasks = Counter(t for t, _ in seen.elements())
    assert tasks["t2i"] == 0 and tasks["spatial"] > 2 * tasks["vqa"]
    forms = {f: seen[("spatial", f)] for f in FORMS["spatial"]}
    assert forms["views"] == 0 and forms["pose"] > 1.4 * forms["direct"] and forms["think"] > 0
    assert TrainConfig.from_dict(json.loads(json.dumps(TrainConfig(mixture=mix).to_dict()))).mixture == mix
    for tw, fw, needle in (("{bad", "", "--task-weights is not JSON"), ("[1]", "", "must be a JSON object"),
                           ('{"audio": 1}', "", "unknown name 'audio'"), ('{"vqa": -1}', "", "number in"),
                           ("", '{"vqa": {"think": "x"}}', "number in"), ("", '{"vqa": {"nope": 1}}', "unknown name"),
                           ("", '{"vqa": {"direct": 0, "think": 0}}', "at least one form"),
                           (json.dumps(dict.fromkeys(FORMS, 0)), "", "at least one task")):
        with pytest.raises(ValueError, match=needle):
            MixtureConfig(**MixtureConfig.weights(tw, fw))
    r = subprocess.run([sys.executable, "-m", "omni.cli", "train", "--out", str(tmp_path / "x"), "--task-weights",
                        '{"vqa": -2}'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "must be a number in [0, 1e+06]" in r.stderr and "Traceback" not in r.stderr


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 100) == pytest.approx(0.1) and lr_at(cfg, 55) == pytest.approx(0.55)


def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    ref = run_train(tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    want = losses(tmp_path / "ref")
    assert sorted(want) == list(range(1, 9))
    # the same run, killed with SIGKILL once its step-4 checkpoint is complete, then resumed
    p = run_train(tmp_path / "cut")
    deadline = time.time() + 600
    while not (tmp_path / "cut" / "step-0000004" / "COMPLETE").exists():
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = run_train(tmp_path / "cut", "--resume")
    assert r.wait(timeout=600) == 0, r.stderr.read()
    got = losses(tmp_path / "cut")
    assert sorted(got) == list(range(1, 9))
    for s in range(1, 9):
        assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-6), (s, got[s], want[s])
    kept = sorted(p.name for p in (tmp_path / "cut").glob("step-*"))
    assert kept == ["step-0000006", "step-0000008"]  # the last two are kept
    # the same run in time slices (--max-minutes 0: stop after one step, with a checkpoint of it),
    # resumed until done, follows the same curve
    for i in range(3):
        sl = run_train(tmp_path / "sliced", "--max-minutes", "0", *(["--resume"] if i else []))
        stdout, stderr = sl.communicate(timeout=600)
        assert sl.returncode == 0, stderr
        assert json.loads(stdout.splitlines()[-1])["stopped_early"] and "continue with --resume" in stdout
        assert (tmp_path / "sliced" / f"step-{i + 1:07d}" / "COMPLETE").is_file()
    r = run_train(tmp_path / "sliced", "--resume")
    assert r.wait(timeout=600) == 0, r.stderr.read()
    got = losses(tmp_path / "sliced")
    assert sorted(got) == list(range(1, 9)) and all(got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-6)
                                                    for s in got)
    with pytest.raises(subprocess.CalledProcessError):  # a second run into the same directory needs --resume
        subprocess.run([sys.executable, "-m", "omni.train", "--out", str(tmp_path / "cut"), *ARGS], check=True,
                       capture_output=True, timeout=600)
    # export: the newest checkpoint's weights in bf16, with the training record, loadable on its own
    from omni.io import read_json
    from omni.model import OmniModel
    from omni.train import export

    dest = export(tmp_path / "cut", tmp_path / "shipped", dtype="bfloat16")
    meta = read_json(tmp_path / "shipped" / "config.json")
    assert meta["training"]["step"] == 8 and meta["weights"] == "raw" and meta["dtype"] == "bfloat16"
    assert meta["exported_from"] == "step-0000008" and meta["training"]["data_seed"] == 0
    shipped, last = OmniModel.from_pretrained(dest), OmniModel.from_pretrained(tmp_path / "cut" / "step-0000008")
    for k, v in last.state_dict().items():
        assert torch.equal(shipped.state_dict()[k].float(), v.to(torch.bfloat16).float()), k


def test_init_from_a_checkpoint_adds_a_feature_at_zero(tmp_path):
    """--init-from loads a checkpoint's weights into a fresh run; a feature the source lacks
    (visual_cells) starts at zero, so the new model computes the source's losses; weights that do
    not fit, or no checkpoint, are clear errors."""
    from omni.train.loop import Trainer

    small = json.loads(SMALL)
    mix = MixtureConfig(rows=1, row_len=512)
    src = Trainer(TrainConfig(model_overrides=small, workers=0, mixture=mix), tmp_path / "a", log=lambda *_: None)
    src.model.save_pretrained(tmp_path / "src")
    said = []
    new = Trainer(TrainConfig(model_overrides={**small, "visual_cells": True}, init_from=str(tmp_path / "src"),
                              workers=0, seed=1, mixture=mix), tmp_path / "b", log=said.append)
    assert "cell_vis" in said[0] and torch.equal(new.model.cell_vis, torch.zeros_like(new.model.cell_vis))
    for k, v in src.model.state_dict().items():
        assert torch.equal(new.model.state_dict()[k], v), k
    b, _ = src.mixture.batch(0)
    with torch.no_grad():
        assert float(new.model(b, losses=True)["loss"]) == pytest.approx(float(src.model(b, losses=True)["loss"]),
                                                                          rel=1e-5)
    # the pose head likewise: at zero it adds its own loss and changes no other
    said = []
    posed = Trainer(TrainConfig(model_overrides={**small, "pose_head": True}, init_from=str(tmp_path / "src"),
                                workers=0, seed=1, mixture=mix), tmp_path / "p", log=said.append)
    assert "pose_head.weight" in said[0] and "pose_head.bias" in said[0]
    assert not any(p.abs().sum() for p in posed.model.pose_head.parameters())
    with torch.no_grad():
        a, c = src.model(b, losses=True), posed.model(b, losses=True)
    assert all(float(a[k]) == pytest.approx(float(c[k]), rel=1e-5, abs=1e-7) for k in ("text_ce", "flow_mse", "depth"))
    with pytest.raises(ValueError, match="shape"):
        Trainer(TrainConfig(model_overrides={**small, "d_model": 32}, init_from=str(tmp_path / "src"), workers=0,
                            mixture=mix), tmp_path / "c", log=lambda *_: None)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(TrainConfig(model_overrides=small, init_from=str(tmp_path), workers=0, mixture=mix), tmp_path / "d",
                log=lambda *_: None)
    # a resumed run continues from its own checkpoint and no longer needs the source
    from omni.train import train_main

    kw = dict(workers=0, threads=1, model_overrides=small, init_from=str(tmp_path / "src"), mixture=mix)
    train_main(str(tmp_path / "run"), steps=1, log=lambda *_: None, **kw)
    shutil.rmtree(tmp_path / "src")
    assert train_main(str(tmp_path / "run"), steps=2, resume=True, log=lambda *_: None)["step"] == 2


@pytest.mark.slow
def test_torchrun_two_processes_match_one_with_the_same_global_batch(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    single = run_train(tmp_path / "one", "--accum", "2")
    assert single.wait(timeout=900) == 0, single.stderr.read()
    ddp = run_train(tmp_path / "two", launcher=(torchrun, "--standalone", "--nproc_per_node", "2", "-m", "omni.train"))
    assert ddp.wait(timeout=900) == 0, ddp.stderr.read()
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-3), (s, a[s], b[s])


@pytest.mark.slow
def test_fsdp_two_processes_match_one_and_resume_exactly(tmp_path):
    """FSDP (weights, gradients, optimizer state and EMA sharded over 2 CPU processes) follows the
    single-process curve at the same global batch; its checkpoints hold full tensors (loadable as
    a model, resumable with or without sharding), and a sliced, resumed FSDP run equals an
    unsliced one."""
    torchrun = (shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun")),
                "--standalone", "--nproc_per_node", "2", "-m", "omni.train")
    ema = ("--ema", "0.9")

    def done(p):
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
        return out

    done(run_train(tmp_path / "one", "--accum", "2", *ema))
    done(run_train(tmp_path / "fsdp", "--fsdp", *ema, launcher=torchrun))
    a, b = losses(tmp_path / "one"), losses(tmp_path / "fsdp")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-3), (s, a[s], b[s])
    # time slices under FSDP: stop after step 1, then resume to the end
    assert "continue with --resume" in done(run_train(tmp_path / "sliced", "--fsdp", "--max-minutes", "0", *ema,
                                                     launcher=torchrun))
    done(run_train(tmp_path / "sliced", "--fsdp", "--resume", *ema, launcher=torchrun))
    c = losses(tmp_path / "sliced")
    assert sorted(c) == list(range(1, 9)) and all(c[s] == pytest.approx(b[s], rel=1e-6, abs=1e-6) for s in c)
    # the FSDP checkpoint resumes in one process (the same global batch: 2 micro-batches)
    shutil.copytree(tmp_path / "sliced", tmp_path / "mixed")
    for d in (tmp_path / "mixed").glob("step-*"):
        if d.name != "step-0000006":
            shutil.rmtree(d)
    (tmp_path / "mixed" / "log.jsonl").write_text("")
    saved = json.loads((tmp_path / "mixed" / "train_config.json").read_text())  # a resume runs the saved config
    (tmp_path / "mixed" / "train_config.json").write_text(json.dumps({**saved, "fsdp": False, "accum": 2}))
    done(run_train(tmp_path / "mixed", "--resume"))
    m = losses(tmp_path / "mixed")
    assert sorted(m) == [7, 8] and all(m[s] == pytest.approx(b[s], rel=1e-3) for s in m)
    # full tensors on disk: the exported EMA weights match the single-process run's
    from omni.model import OmniModel
    from omni.train import export

    x = OmniModel.from_pretrained(export(tmp_path / "one", tmp_path / "x", dtype="float32")).state_dict()
    y = OmniModel.from_pretrained(export(tmp_path / "fsdp", tmp_path / "y", dtype="float32")).state_dict()
    assert set(x) == set(y)
    assert max(float((x[k] - y[k]).abs().max()) for k in x) < 2e-2


def test_eval_cli_on_a_random_tiny_model_every_task(tmp_path):
    from typer.testing import CliRunner

    from omni.cli import app
    from omni.model import OmniModel

    torch.manual_seed(0)
    m = OmniModel(preset("tiny"))
    m.tokenizer = TextTokenizer.default()
    object.__setattr__(m, "visual", VisualTokenizer.load(DEFAULT_VISUAL))
    m.save_pretrained(tmp_path / "ck", dtype="bfloat16")
    cli = CliRunner()  # in one process: the eight tasks pay torch's import once, not eight times

    def omni_eval(*args):
        return cli.invoke(app, ["eval", *args], catch_exceptions=False)

    for task in ("vqa", "t2i", "spatial", "depth", "pose", "nvs", "video", "edit"):
        r = omni_eval(task, "--checkpoint", str(tmp_path / "ck"), "--n", "1", "--flow-steps", "2", "--json")
        assert r.exit_code == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["task"] == task and out["n"] == 1 and out["metrics"]
        assert ("pose_fit" in out) == (task == "pose")
        assert ("change_drawn" in out["metrics"]) == (task == "edit")  # edits also scored by region
        for v in out["metrics"].values():
            assert v["lo"] <= v["mean"] <= v["hi"]
    # pose pairs moved like spatial's second view: a different benchmark, named in the output
    r = omni_eval("pose", "--checkpoint", str(tmp_path / "ck"), "--n", "2", "--pose-motions", "move_turn", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["pose_motions"] == ["move_turn"] and out["n"] == 2 and "auc@30" in out["metrics"]
    bad = omni_eval("vqa", "--checkpoint", str(tmp_path / "ck"), "--plan", "dance")
    assert bad.exit_code == 2 and "unknown primitive" in bad.stderr
    # several sampling seeds: each example's scores are their mean, and the seeds are recorded
    runs = {s: json.loads(omni_eval("nvs", "--checkpoint", str(tmp_path / "ck"), "--n", "2", "--flow-steps", "2",
                                    "--seed", s, "--json").stdout) for s in ("0", "1", "0,1")}
    assert [runs[s]["sampling_seeds"] for s in ("0", "1", "0,1")] == [[0], [1], [0, 1]]
    assert runs["0"]["scores"]["psnr"] != runs["1"]["scores"]["psnr"]
    assert np.allclose(runs["0,1"]["scores"]["psnr"],
                       (np.array(runs["0"]["scores"]["psnr"]) + runs["1"]["scores"]["psnr"]) / 2)
    for seeds in ("x", "1,1", "-1", ","):
        bad = omni_eval("nvs", "--checkpoint", str(tmp_path / "nope"), "--seed", seeds)
        assert bad.exit_code == 2 and "--seed must be" in bad.stderr, (seeds, bad.stderr)
    # and once through the installed module's entry point, as a user runs it
    missing = subprocess.run([sys.executable, "-m", "omni.cli", "eval", "vqa", "--checkpoint", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_training_steps_under_bf16_autocast(tmp_path, monkeypatch):
    """The CUDA run's step (bf16 autocast around the model, fp32 weights, AdamW, clipping, EMA),
    taken here under the CPU's bf16 autocast: finite losses, and fp32 weights that moved."""
    import omni.train.loop as loop

    monkeypatch.setattr(loop, "autocast_for", lambda device: torch.autocast("cpu", dtype=torch.bfloat16))
    cfg = TrainConfig(model_overrides=json.loads(SMALL), workers=0, steps=2, ema=0.9, save_every=10,
                      mixture=MixtureConfig(rows=1, row_len=1024))
    tr = loop.Trainer(cfg, tmp_path / "run", log=lambda *_: None)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    last = tr.run()
    assert last["step"] == 2 and all(math.isfinite(v) for k, v in last.items() if isinstance(v, float))
    after = tr.model.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values() if v.dtype.is_floating_point)
    assert any(not torch.equal(before[k], after[k]) for k in after)
    assert all(torch.isfinite(v).all() for v in tr.ema.values() if v.dtype.is_floating_point)


def test_a_runs_checkpoints_are_its_complete_step_dirs_only(tmp_path):
    from omni.eval.steps import run_checkpoints as eval_listing
    from omni.train.loop import checkpoint_dirs, run_checkpoints

    for name, complete in [("step-0000500", True), ("step-0000250", True), ("step-0000750", False),
                           ("step-0000250-backup", True), (".tmp-step-0001000", True), ("step-x", True)]:
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "COMPLETE").write_text("ok\n")
    assert run_checkpoints(tmp_path) == {250: tmp_path / "step-0000250", 500: tmp_path / "step-0000500"}
    assert checkpoint_dirs(tmp_path) == [tmp_path / "step-0000250", tmp_path / "step-0000500"]
    assert eval_listing(tmp_path) == run_checkpoints(tmp_path)
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        eval_listing(tmp_path / "missing")


def test_spatial_conclusion_drill(writer):
    """The drill is off unless named; named, it is drawn and written as text alone: the question, the
    thought from its stated option on (no loss on the option) with a loss on the copies, verdicts and
    letter, then the answer; its tokens are the thought's own."""
    from omni.world import sample

    names, p = Mixture(MixtureConfig(), writer).mix.forms("spatial")
    assert names[-4:] == ["conclusion", "reasoned", "reasoned+views", "deduced"] and list(p[-4:]) == [0.0] * 4
    mix = Mixture(MixtureConfig(**MixtureConfig.weights("", '{"spatial": {"conclusion": 2}}')), writer)
    names, p = mix.mix.forms("spatial")
    assert abs(p[names.index("conclusion")] - 2 / 6) < 1e-12 and p[-1] == p[-2] == p[-3] == 0
    for ex in sample("spatial", range(40, 52)):
        segs = writer.write(ex, "conclusion", np.random.default_rng(0))
        assert {s.kind for s in segs} == {"text"}
        text = [writer.tok.decode(list(s.tokens)) for s in segs]
        assert [s.loss for s in segs] == [False, False, False, True, True]
        c = ex.texts["thinking"]
        c = c[c.rindex("that is:"):]
        assert text[2].endswith("that is: " + ex.spec["answer_text"])
        assert (text[2] + text[3]).strip() == c  # the tags are special tokens, not decoded
        assert segs[3].tokens[-1] == writer.ids("</think>")[0]
        assert text[4].strip() == ex.answer and segs[4].tokens[-1] == writer.tok.eos
        # the same tokens as the thought written whole (the think form's block, from "that is:" on)
        whole = writer.block("think", c).tokens
        assert list(segs[2].tokens) + list(segs[3].tokens) == list(whole)
        # "reasoned": the same, with the whole thought before the option as context
        r = writer.write(ex, "reasoned", np.random.default_rng(0))
        assert [s.loss for s in r] == [s.loss for s in segs] and r[3].tokens == segs[3].tokens
        assert list(r[2].tokens) + list(r[3].tokens) == list(writer.block("think", ex.texts["thinking"]).tokens)
        # "reasoned+views": the reasoned drill after the views form's context (images, question, pose, views)
        rv, views = (writer.write(ex, f, np.random.default_rng(0)) for f in ("reasoned+views", "views"))
        assert len(rv) == len(views) + 1 and [s.loss for s in rv[-3:]] == [False, True, True]
        for a, b in zip(rv[:-3], views[:-2], strict=True):  # all but the views form's thought and answer
            assert a.kind == b.kind and a.loss == b.loss and np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
        assert all(list(a.tokens) == list(b.tokens) for a, b in zip(rv[-3:], r[-3:], strict=True))
        # "deduced": the reasoned drill's tokens, its loss from the option on (the option reasoned to as well)
        d = writer.write(ex, "deduced", np.random.default_rng(0))
        assert [s.loss for s in d] == [s.loss for s in r] and d[4].tokens == r[4].tokens
        assert list(d[2].tokens) + list(d[3].tokens) == list(r[2].tokens) + list(r[3].tokens)
        assert writer.tok.decode(list(d[2].tokens)).endswith("that is:")
        assert writer.tok.decode(list(d[3].tokens)).startswith(" " + ex.spec["answer_text"] + ".")


def test_vqa_deduced_drill(writer):
    """vqa's drill is off unless named; named, it is written as text alone: the question, the thought
    up to its step's last number as context, a loss on the rest (left_right's relation, closer's
    choice, the closing) and on the answer; its tokens are the think form's thought and answer."""
    from omni.world import sample
    from omni.world.tasks import vqa_conclusion_cut

    names, p = Mixture(MixtureConfig(), writer).mix.forms("vqa")
    assert names == ["direct", "think", "deduced"] and list(p) == [0.5, 0.5, 0.0]
    names, p = Mixture(MixtureConfig(**MixtureConfig.weights("", '{"vqa": {"deduced": 2}}')), writer).mix.forms("vqa")
    assert list(p) == [0.25, 0.25, 0.5]
    kinds = set()
    for ex in sample("vqa", range(40, 60)):
        segs = writer.write(ex, "deduced", np.random.default_rng(0))
        think = writer.write(ex, "think", np.random.default_rng(0))
        assert {s.kind for s in segs} == {"text"} and [s.loss for s in segs] == [False, False, False, True, True]
        assert list(segs[2].tokens) + list(segs[3].tokens) == list(think[-2].tokens)  # the think form's block
        assert segs[4].tokens == think[-1].tokens and segs[4].tokens[-1] == writer.tok.eos
        assert segs[1].tokens == think[-3].tokens  # the question
        thought = " " + ex.texts["thinking"].strip()
        rest = writer.tok.decode(list(segs[3].tokens))
        assert rest == thought[vqa_conclusion_cut(ex.texts["thinking"]):]  # the closing tag is special
        kinds.add(ex.spec["kind"])
        if ex.spec["kind"] == "left_right":
            assert " left of " in rest or " right of " in rest
    assert "left_right" in kinds or "closer" in kinds
    with pytest.raises(ValueError, match="tokenizes differently"):  # a cut inside a word splits a token
        writer.cut_block("think", "the cube is red.", 7)


def test_log_every_spaces_tensorboard_and_the_bar_not_the_jsonl(tmp_path, monkeypatch):
    """log.jsonl has every step; TensorBoard's scalars (and the bar's figures) come every log_every steps
    and at the last."""
    from omni.train import loop

    written = []

    class Board:
        def add_scalar(self, k, v, step):
            written.append((k, step))

        def close(self):
            pass

    monkeypatch.setattr(loop, "_tensorboard", lambda out: Board())
    cfg = TrainConfig(steps=5, log_every=2, save_every=5, workers=0, warmup=1,
                      model_overrides=json.loads(SMALL), mixture=MixtureConfig(rows=1, row_len=512))
    loop.Trainer(cfg, tmp_path, log=lambda *_: None).run()
    steps = [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    assert sorted({s for k, s in written if k == "loss"}) == [2, 4, 5]
    with pytest.raises(ValueError, match="--log-every must be >= 1"):
        TrainConfig(log_every=0)
