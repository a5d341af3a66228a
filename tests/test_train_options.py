"""`omni train` / `python -m omni.train` options: every value is checked before a model is built (a
ValueError naming the option), --row-len must hold the mixture's sequences, and --resume refuses
options that differ from the run it continues."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import omni.train
import omni.train.loop
from omni.model import preset
from omni.tokens.text import TextTokenizer
from omni.tokens.visual import VisualTokenizer
from omni.train import Mixture, MixtureConfig, TrainConfig, Trainer, Writer, train_main
from omni.train.data import FORMS
from omni.train.loop import DEFAULT_VISUAL
from omni.world import sample

SMALL = {"d_model": 64, "n_layers": 2, "n_heads": 4}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def fast(**kw) -> dict:
    """The tiniest run: one row of 512 tokens, a 2-layer model, no worker processes."""
    return {"workers": 0, "threads": 1, "warmup": 2, "model_overrides": SMALL,
            "mixture": MixtureConfig(rows=1, row_len=512), **kw}


def quiet(*_):
    pass


def no_model(*a, **k):
    raise AssertionError("a model was built before the options were checked")


@pytest.fixture(scope="module")
def writer():
    return Writer(TextTokenizer.default(), VisualTokenizer.load(DEFAULT_VISUAL), preset("tiny"))


@pytest.mark.parametrize("kw, needle", [
    ({"steps": 0}, "--steps must be >= 1, got 0"),
    ({"save_every": 0}, "--save-every must be >= 1, got 0"),
    ({"keep": 0}, "--keep must be >= 1, got 0"),
    ({"accum": 0}, "--accum must be >= 1, got 0"),
    ({"warmup": -1}, "--warmup must be >= 0, got -1"),
    ({"threads": -2}, "--threads must be >= 0, got -2"),
    ({"workers": -1}, "--workers must be >= 0, got -1"),
    ({"lr": -1.0}, "--lr must be > 0, got -1.0"),
    ({"lr": 0.0}, "--lr must be > 0"),
    ({"lr": float("nan")}, "--lr must be > 0, got nan"),
    ({"lr": float("inf")}, "--lr must be > 0, got inf"),
    ({"ema": 1.5}, "--ema must be in [0, 1)"),
    ({"ema": 1.0}, "--ema must be in [0, 1)"),
    ({"ema": -0.1}, "--ema must be in [0, 1)"),
    ({"ema": float("nan")}, "--ema must be in [0, 1)"),
    ({"clip": 0.0}, "--clip must be > 0"),
    ({"clip": float("nan")}, "--clip must be > 0"),
    ({"min_lr_ratio": 2.0}, "--min-lr-ratio must be in [0, 1]"),
    ({"weight_decay": float("nan")}, "--weight-decay must be >= 0"),
    ({"betas": (0.9, 1.0)}, "--betas must be two numbers in [0, 1)"),
    ({"device": "tpu"}, "--device must be cpu or cuda"),
    ({"preset": "huge"}, "--preset: unknown preset 'huge'"),
    ({"model_overrides": {"d_modle": 64}}, "--model: unknown model config fields 'd_modle'"),
    ({"model_overrides": {"text_vocab": 100}}, "--model: text_vocab come from the tokenizers"),  # was a TypeError
])
def test_train_config_rejects_bad_values_naming_the_option(kw, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        TrainConfig(**kw)


@pytest.mark.parametrize("kw, needle", [
    ({"rows": 0}, "--rows must be >= 1, got 0"),
    ({"row_len": 0}, "--row-len must be >= 1, got 0"),
    ({"data_seed": -1}, "--data-seed must be >= 0, got -1"),
    ({"t_shift": 0.0}, "--t-shift must be a finite number >= 0.001, got 0.0"),
    ({"t_shift": float("nan")}, "--t-shift must be a finite number >= 0.001, got nan"),
    ({"t_shift": float("inf")}, "--t-shift must be a finite number >= 0.001, got inf"),  # NaN levels at step 0
    ({"row_len": 10**8}, "--row-len must be at most 65536"),  # its mask asked for 10 PB
    ({"task_weights": {"vqa": float("inf")}}, "the weight of 'vqa' must be a number in [0, 1e+06]"),
    ({"task_weights": {"vqa": 10**400}}, "the weight of 'vqa' must be a number in [0, 1e+06]"),
    ({"form_weights": {"vqa": {"think": float("inf")}}}, "the weight of 'think' must be a number in [0, 1e+06]"),
    ({"pose_motions": ("orbit", "spin")}, "--pose-motions: pose motions must be distinct names among orbit, "
                                          "move_turn, got ('orbit', 'spin')"),
    ({"pose_motions": ()}, "--pose-motions: pose motions must be distinct names"),
    ({"pose_motions": ("orbit", "orbit")}, "--pose-motions: pose motions must be distinct names"),
    # the world's own checks (WorldConfig), under the flag that set them
    ({"vqa_thought": "short"}, "--vqa-thought: vqa thought must be one of inventory, focused, measured, got 'short'"),
    ({"world_revision": 4}, "--world-revision: world revision must be one of 1, 2, 3"),
    ({"world_revision": 2.0}, "--world-revision: WorldConfig.revision must be an integer, got float 2.0"),
    ({"world_revision": True}, "--world-revision: WorldConfig.revision must be an integer, got bool True"),
])
def test_mixture_config_rejects_bad_values_naming_the_option(kw, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        MixtureConfig(**kw)


def test_pose_motions_reach_the_mixtures_world_and_survive_the_saved_config(writer):
    """--pose-motions orbit,move_turn: a tuple in the config, the same after the JSON round trip of
    train_config.json (so --resume compares equal values), and the world the mixture samples from."""
    mix = MixtureConfig(pose_motions=["orbit", "move_turn"])
    assert mix.pose_motions == ("orbit", "move_turn") and MixtureConfig().pose_motions == ("orbit",)
    cfg = TrainConfig(mixture=mix)
    back = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back.mixture == mix and back.mixture.pose_motions == ("orbit", "move_turn")
    assert Mixture(mix, writer).world.pose_motions == ("orbit", "move_turn")


def test_vqa_thought_reaches_the_mixtures_vqa_sequences(writer):
    """--vqa-thought focused: recorded in train_config.json, the mixture's world writes the focused
    thought into the think form's text (and the inventory's otherwise); a bad name names the option."""
    mix = MixtureConfig(vqa_thought="focused", task_weights={"vqa": 1, **{t: 0 for t in FORMS if t != "vqa"}})
    back = TrainConfig.from_dict(json.loads(json.dumps(TrainConfig(mixture=mix).to_dict())))
    assert back.mixture == mix and MixtureConfig().vqa_thought == "inventory"
    texts = {}
    for m in (mix, dataclasses.replace(mix, vqa_thought="inventory")):
        mx = Mixture(m, writer)
        ex = sample("vqa", [5], mx.world)[0]
        segs = writer.write(ex, "think", np.random.default_rng(0))
        texts[m.vqa_thought] = writer.tok.decode([t for sg in segs if sg.kind == "text" for t in sg.tokens])
        assert ex.texts["thinking"] in texts[m.vqa_thought]
    assert "i see" in texts["inventory"] and "i see" not in texts["focused"]
    assert mx.form_lengths(4)[("vqa", "think")] != Mixture(mix, writer).form_lengths(4)[("vqa", "think")]
    with pytest.raises(ValueError, match="--vqa-thought: vqa thought must be one of inventory, focused, measured"):
        MixtureConfig(vqa_thought="short")


def test_train_main_checks_before_building_anything(tmp_path, monkeypatch):
    """Bad values, --device cuda without CUDA and NaN --max-minutes are ValueErrors from train_main
    itself, before a Trainer (a model) exists."""
    monkeypatch.setattr(omni.train, "Trainer", no_model)
    out = str(tmp_path / "run")
    for kw, needle in (({"save_every": 0}, "--save-every must be >= 1"), ({"threads": -2}, "--threads must be >= 0"),
                       ({"max_minutes": float("nan")}, "--max-minutes must be >= 0"),
                       ({"steps": 0}, "--steps must be >= 1")):
        with pytest.raises(ValueError, match=re.escape(needle)):
            train_main(out, log=quiet, **fast(**kw))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=re.escape("device 'cuda': CUDA is not available")):
        train_main(out, steps=1, device="cuda", log=quiet, **fast())
    with pytest.raises(ValueError, match=re.escape("device 'cuda:1': CUDA is not available")):
        train_main(out, steps=1, device="cuda:1", log=quiet, **fast())
    with pytest.raises(ValueError, match=re.escape("--device must be cpu or cuda (or cuda:N), got 'gpu'")):
        train_main(out, steps=1, device="gpu", log=quiet, **fast())
    assert not (tmp_path / "run").exists()


def test_row_len_must_hold_the_mixtures_sequences(writer, tmp_path, monkeypatch):
    """--row-len 8 trained on nothing (0 tokens, loss 0): now an error naming the shortest sequence of
    each task; a row that holds some forms but not all is a warning with the length that holds every form."""
    with pytest.raises(ValueError, match=r"--row-len 8 cannot hold a sequence of vqa \(at least \d+ tokens\)") as e:
        Mixture(MixtureConfig(row_len=8), writer).check_row_len()
    assert "spatial" in str(e.value) and "every form fits in --row-len" in str(e.value)
    warning = Mixture(MixtureConfig(row_len=300), writer).check_row_len()
    assert warning and "--row-len 300" in warning and "spatial/views" in warning
    need = int(re.search(r"every form fits in --row-len (\d+)", warning).group(1))
    lengths = Mixture(MixtureConfig(), writer).form_lengths()
    assert need == max(hi for _, hi in lengths.values()) and need > 512  # spatial/views: 6 images and text
    assert lengths[("spatial", "views")][0] > 300
    assert Mixture(MixtureConfig(row_len=need), writer).check_row_len() is None
    # without the views form, 300 holds every spatial form the mixture draws; forms of weight 0 do not count
    no_views = MixtureConfig(row_len=need, form_weights={"spatial": {"views": 0}})
    assert ("spatial", "views") not in Mixture(no_views, writer).form_lengths()
    # a task none of whose drawn forms fits is an error even if other tasks fit
    only_views = MixtureConfig(row_len=400, form_weights={"spatial": {"direct": 0, "think": 0, "pose": 0}})
    with pytest.raises(ValueError, match=r"--row-len 400 cannot hold a sequence of spatial \(at least"):
        Mixture(only_views, writer).check_row_len()
    # the Trainer checks it before building a model
    monkeypatch.setattr(omni.train.loop, "OmniModel", no_model)
    with pytest.raises(ValueError, match="--row-len 8 cannot hold"):
        Trainer(TrainConfig(**fast(mixture=MixtureConfig(rows=1, row_len=8))), tmp_path / "x", log=quiet)


def test_max_seq_must_hold_the_sequences_trained_on(tmp_path, monkeypatch):
    """`--model '{"max_seq": 100}'` trained on sequences of up to --row-len tokens without a word, and
    the model it made could not hold one of them in its KV cache to answer. A row longer than max_seq is
    fine (positions restart with each packed sequence); a sequence longer than it is an error."""
    vq = VisualTokenizer.load(DEFAULT_VISUAL)
    short = Writer(TextTokenizer.default(), vq, preset("tiny", max_seq=300))
    with pytest.raises(ValueError, match=r"max_seq 300 .* shorter than sequences it would train on: .*spatial/views"):
        Mixture(MixtureConfig(row_len=2048), short).check_row_len()
    longest = max(hi for _, hi in Mixture(MixtureConfig(), short).form_lengths().values())
    fits = Writer(TextTokenizer.default(), vq, preset("tiny", max_seq=longest))
    assert Mixture(MixtureConfig(row_len=2 * longest), fits).check_row_len() is None  # rows beyond max_seq are fine
    monkeypatch.setattr(omni.train.loop, "OmniModel", no_model)
    with pytest.raises(ValueError, match="max_seq 100 "):
        Trainer(TrainConfig(**fast(model_overrides={**SMALL, "max_seq": 100})), tmp_path / "x", log=quiet)


def test_resume_refuses_options_that_differ_from_the_saved_run(tmp_path):
    """--resume used to train with the saved config whatever else was passed (only --steps was taken).
    Now an option that differs from both its default and the saved value is an error listing them with
    the saved values; options left at their defaults take the saved values; --steps and the per-slice
    options (device, threads, workers, fsdp) come from the command line. --resume with no complete
    checkpoint says it starts a fresh run."""
    run = tmp_path / "tr"
    said = []
    train_main(str(run), steps=1, resume=True, log=said.append, **fast())
    assert any("no complete checkpoint" in s and "starting a fresh run" in s for s in said)
    assert (run / "step-0000001" / "COMPLETE").is_file()
    spatial3 = MixtureConfig.weights('{"spatial": 3}')
    with pytest.raises(ValueError) as e:
        train_main(str(run), steps=2, resume=True, lr=0.5, preset="small", log=quiet,
                   **fast(warmup=0, mixture=MixtureConfig(rows=1, row_len=512, **spatial3)))
    msg = str(e.value)
    for want in ("--lr 0.5 (saved: 0.001)", "--warmup 0 (saved: 2)", "--preset small (saved: tiny)",
                 '--task-weights {"depth"', '"spatial": 3', '"spatial": 1.0'):
        assert want in msg, (want, msg)
    for kw, needle in (({"mixture": MixtureConfig(rows=2, row_len=512)}, "--rows 2 (saved: 1)"),
                       ({"model_overrides": {**SMALL, "visual_cells": True}}, "--visual-cells"),
                       ({"model_overrides": {"d_model": 32}}, "--model d_model 32 (saved: 64)"),
                       ({"ema": 0.9}, "--ema 0.9 (saved: 0.0)"), ({"init_from": "elsewhere"}, "--init-from")):
        with pytest.raises(ValueError, match=re.escape(needle)):
            train_main(str(run), steps=2, resume=True, log=quiet, **fast(**kw))
    assert not (run / "step-0000002").exists()
    # nothing but --steps and per-slice options: the saved run continues (its rows, model, warmup)
    said = []
    last = train_main(str(run), steps=2, resume=True, workers=0, threads=1, fsdp=True, log=said.append)
    assert last["step"] == 2 and (run / "step-0000002" / "COMPLETE").is_file()
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["mixture"]["rows"] == 1 and saved["model_overrides"] == SMALL and saved["warmup"] == 2
    assert saved["steps"] == 2 and saved["fsdp"] is True
    assert any("--steps 2 (saved: 1)" in s and "--fsdp True (saved: False)" in s for s in said), said
    assert any("--fsdp shards across torchrun's processes; this is one process" in s for s in said), said
    with pytest.raises(ValueError, match="--steps 1 is below the step of the checkpoint"):
        train_main(str(run), steps=1, resume=True, log=quiet, **fast())
    said = []  # a finished run resumed at its own --steps: nothing trained, and it says so
    assert train_main(str(run), steps=2, resume=True, log=said.append, **fast()) == {"step": 2, "steps": 2,
                                                                                     "done": True}
    assert any("already at step 2 of 2: nothing to train" in s for s in said), said
    # the command line: one clean line, exit code 2, before any training
    r = subprocess.run([sys.executable, "-m", "omni.cli", "train", "--out", str(run), "--resume", "--steps", "3",
                        "--lr", "0.5", "--workers", "0"], capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 2 and "--lr 0.5 (saved: 0.001)" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (run / "step-0000003").exists()


def test_resume_compares_every_option_the_command_line_gave_even_at_its_default(tmp_path):
    """An option given at its default value used to count as left out, so the saved value silently won
    (`--lr 0.001` resuming a run saved with 0.5 trained at 0.5). The command knows what it was given:
    such an option now conflicts, and a bookkeeping option given at its default is taken."""
    run = tmp_path / "g"
    train_main(str(run), steps=1, lr=0.5, keep=20, log=quiet, **fast())
    base = [sys.executable, "-m", "omni.train", "--out", str(run), "--resume", "--workers", "0", "--threads", "1"]
    r = subprocess.run([*base, "--steps", "2", "--lr", "0.001"], capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 2 and "--lr 0.001 (saved: 0.5)" in r.stderr, r.stderr
    r = subprocess.run([*base, "--steps", "2", "--keep", "2", "--lr", "0.5"], capture_output=True, text=True,
                       timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["keep"] == 2 and saved["lr"] == 0.5


def test_resume_without_steps_keeps_the_saved_steps(tmp_path):
    """`omni train --resume` without --steps used to take the option's default (1000) as the run's steps,
    so a 1,200-step run resumed at step 900 decayed its cosine schedule to a 1,000-step end (the lr at
    step 924 fell from 4.6e-5 to 2.3e-5), said only in a log line. Left out, --steps now keeps the saved
    run's; given, it still sets them; in a fresh run it is 1000."""
    run = tmp_path / "s"
    train_main(str(run), steps=4, max_minutes=0, log=quiet, **fast())  # stops after step 1, with a checkpoint
    assert [p.name for p in run.glob("step-*")] == ["step-0000001"]
    r = subprocess.run([sys.executable, "-m", "omni.train", "--out", str(run), "--resume", "--workers", "0",
                        "--threads", "1", "--max-minutes", "0"], capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == 2 and "--steps" not in r.stderr, r.stderr
    assert json.loads((run / "train_config.json").read_text())["steps"] == 4
    said = []  # the Python API likewise: steps left out keep the saved 4
    assert train_main(str(run), resume=True, log=said.append, **fast())["step"] == 4
    assert (run / "step-0000004" / "COMPLETE").is_file() and not any("--steps" in s for s in said), said
    said = []
    train_main(str(run), steps=5, resume=True, log=said.append, **fast())  # given: it still grows the run
    assert (run / "step-0000005" / "COMPLETE").is_file() and any("--steps 5 (saved: 4)" in s for s in said)
    assert TrainConfig.steps == 1000


def test_python_m_omni_train_is_omni_train():
    """The module entry point (for torchrun) is the same command as `omni train`: every option of one is
    an option of the other, --model and --accum included (they were kept in two lists that drifted)."""
    from omni.cli import app

    want = {o for p in typer_command(app, "train").params for o in p.opts}
    assert {"--model", "--accum", "--source-cond", "--device", "--out"} <= want
    r = subprocess.run([sys.executable, "-m", "omni.train", "--help"], capture_output=True, text=True, timeout=300,
                       env={**ENV, "COLUMNS": "200"})
    assert r.returncode == 0 and "Usage: python -m omni.train" in r.stdout
    assert all(o in r.stdout for o in want), sorted(o for o in want if o not in r.stdout)
    r = subprocess.run([sys.executable, "-m", "omni.train", "--out", "x", "--model", "{\"source_cond\": false}",
                        "--source-cond"], capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 2 and "--source-cond and --model source_cond false disagree" in r.stderr, r.stderr


def documented_train_commands() -> list[tuple[str, list[str]]]:
    """Every `omni train` / `python -m omni.train` / `torchrun ... -m omni.train` command written in the
    README and docs/*.md, continuation lines joined, as (file:line, its arguments after the command).
    Alternatives written `[--a | --b]` are all kept."""
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    found = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            start, text = i, lines[i].strip()
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            i += 1
            m = re.match(r"(?:omni train|python -m omni\.train|torchrun .*?-m omni\.train)\s(.*)", text)
            if m is None:
                continue
            words = shlex.split(m.group(1), comments=True)
            # `[--a | --b]` writes alternatives: each must be an option, so keep them all
            words = [w.strip("[]") for w in words if w != "|"]
            found.append((f"{path.name}:{start + 1}", words))
    return found


def test_every_documented_train_command_parses():
    """The training commands the README and docs/gpu_training.md tell people to run name only options
    the command has, with values of the right type, and --model gets a JSON object: a renamed or
    dropped flag fails here instead of on a lent GPU's first slice."""
    from omni.cli import app

    command = typer_command(app, "train")
    found = documented_train_commands()
    assert len(found) >= 10 and any(w == "gpu_training.md" for w in (f.split(":")[0] for f, _ in found))
    for where, words in found:
        try:
            ctx = command.make_context("train", list(words))
        except Exception as e:
            raise AssertionError(f"{where}: {e}") from e
        model = ctx.params.get("model")
        if model:
            assert isinstance(json.loads(model), dict), where


def typer_command(app, name):
    import typer

    return typer.main.get_command(app).commands[name]


def test_bad_options_are_one_line_and_exit_2_from_both_entry_points(tmp_path):
    for cmd in ([sys.executable, "-m", "omni.cli", "train", "--rows", "0"],
                [sys.executable, "-m", "omni.train", "--save-every", "0"]):
        r = subprocess.run([*cmd, "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300, env=ENV)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip() in ("error: --rows must be >= 1, got 0", "error: --save-every must be >= 1, got 0")
    assert not (tmp_path / "x").exists()


def test_resume_keeps_bookkeeping_options_unless_given(tmp_path):
    """--save-every and --keep change no result: a resumed run takes them when given (no conflict) and
    otherwise keeps the saved ones (a run saved with --keep 20 does not drop to the default 2)."""
    run = tmp_path / "k"
    train_main(str(run), steps=1, keep=20, save_every=1, log=quiet, **fast())
    train_main(str(run), steps=2, resume=True, log=quiet, **fast())
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["keep"] == 20 and saved["save_every"] == 1
    train_main(str(run), steps=3, resume=True, keep=5, log=quiet, **fast())
    assert json.loads((run / "train_config.json").read_text())["keep"] == 5
    assert [p.name for p in sorted(run.glob("step-*"))] == ["step-0000001", "step-0000002", "step-0000003"]


def test_an_exported_continuation_records_the_run_it_continued(tmp_path, monkeypatch):
    """A model trained with --init-from and exported carries its source's training record (steps, data
    seed, config) under training.init, so a shipped continuation says how all of it was trained; the
    source's path is recorded relative to the working directory, never as this machine's path."""
    from omni.io import read_json
    from omni.train import export

    monkeypatch.chdir(tmp_path)
    train_main("a", steps=1, log=quiet, **fast())
    export("a", tmp_path / "a_model")
    train_main("b", steps=2, log=quiet, init_from=str(tmp_path / "a_model"),
               **fast(mixture=MixtureConfig(rows=1, row_len=512, data_seed=7)))
    meta = read_json(export("b", tmp_path / "b_model") / "config.json")["training"]
    assert meta["step"] == 2 and meta["data_seed"] == 7 and meta["config"]["init_from"] == "a_model"
    assert meta["init"]["training"]["step"] == 1 and meta["init"]["training"]["data_seed"] == 0
    assert meta["init"]["exported_from"] == "step-0000001" and "init" not in meta["init"]


def test_nothing_is_written_over_what_is_read(tmp_path, monkeypatch):
    """export into its own checkpoint replaced the fp32 training weights by bf16 ones (still marked
    complete); average into one of its sources replaced it; an empty destination was the current
    directory; a resumed checkpoint whose trainer.json says another step than its directory (a copy, an
    edit) restarted there and overwrote good checkpoints. Each is now an error, and nothing is written."""
    import hashlib

    from omni.train import average, export

    monkeypatch.chdir(tmp_path)
    train_main("r", steps=2, save_every=1, keep=3, log=quiet, **fast())

    def digest():
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path("r").rglob("*")) if p.is_file()}

    before = digest()
    for dest, needle in (("r/step-0000002", "which it reads"), ("r/step-0000001/sub", "which it reads"),
                         ("r", "into the run directory"), ("", "needs a destination")):
        with pytest.raises(ValueError, match=needle):
            export("r", dest)
    export("r", "a"), export("r", "b", step=1)
    for sources, dest, needle in ((["a", "b"], "a", "which it reads"), (["a", "b"], "", "needs a destination"),
                                  (["a", "a"], "c", "named twice")):
        with pytest.raises(ValueError, match=needle):
            average(sources, dest)
    with pytest.raises(TypeError, match="a list of checkpoint directories"):
        average("a", "c")
    for w in ([1e308, 1e308], [10**400, 1]):  # the sum overflowed: every weight became 0 (or a traceback)
        with pytest.raises(ValueError, match="weights must be 2 finite"):
            average(["a", "b"], "c", weights=w)
    assert not Path("c").exists() and digest() == before
    with pytest.raises(ValueError, match="--out needs a run directory"):
        train_main("", steps=1, log=quiet, **fast())
    Path("f").write_text("x")
    with pytest.raises(ValueError, match="--out f is a file"):
        train_main("f", steps=1, log=quiet, **fast())
    trainer = Path("r/step-0000002/trainer.json")
    trainer.write_text(json.dumps({**json.loads(trainer.read_text()), "step": 0}))
    before = digest()
    with pytest.raises(ValueError, match="step 0 is not the directory's"):
        train_main("r", steps=3, resume=True, log=quiet, **fast())
    assert digest() == before


def test_a_corrupt_saved_config_or_checkpoint_is_named_on_resume(tmp_path, monkeypatch):
    """A malformed train_config.json, or a newest checkpoint missing its optimizer or random state, was a
    TypeError or KeyError deep in the resume; each is now a ValueError naming the file."""
    monkeypatch.chdir(tmp_path)
    train_main("r", steps=1, log=quiet, **fast())
    saved = Path("r/train_config.json")
    good = json.loads(saved.read_text())
    for edit, needle in (({"mixture": {"foo": 1}}, "unknown mixture fields: foo"),
                         ({"mixture": [1]}, "mixture must be a JSON object"), ({"betas": 5}, "--betas must be two"),
                         ({"mixture": {**good["mixture"], "t_shift": "x"}}, "a value of the wrong type")):
        saved.write_text(json.dumps({**good, **edit}))
        with pytest.raises(ValueError, match=f"train_config.json: the saved run's config: {needle}"):
            train_main("r", steps=2, resume=True, log=quiet, **fast())
    saved.write_text(json.dumps(good))
    trainer = Path("r/step-0000001/trainer.json")
    meta = json.loads(trainer.read_text())
    for broken, needle in (({k: v for k, v in meta.items() if k != "rng"}, "KeyError: 'rng'"),
                           ({**meta, "rng": [1, 2, 3]}, "RuntimeError"), ({**meta, "optimizer": {}}, "KeyError")):
        trainer.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=f"step-0000001: a checkpoint this run cannot resume from \\(.*{needle}"):
            train_main("r", steps=2, resume=True, log=quiet, **fast())
    trainer.write_text(json.dumps({}))
    with pytest.raises(ValueError, match="step None is not the directory's"):
        train_main("r", steps=2, resume=True, log=quiet, **fast())


def test_average_of_models_is_their_weighted_mean_and_records_each(tmp_path, monkeypatch):
    """omni.train.average: every floating tensor the weighted mean of the sources' (to bf16 rounding),
    tensors equal in all kept exactly, the record naming each source (relative path, weight, training);
    weights (1, 0) give the first model back exactly; clear errors for one model, another architecture
    and bad weights."""
    from omni.io import read_json
    from omni.model import OmniModel
    from omni.train import average

    monkeypatch.chdir(tmp_path)

    def model(seed, **cfg):
        torch.manual_seed(seed)
        m = OmniModel(preset("tiny", **{**SMALL, **cfg}))
        m.tokenizer = TextTokenizer.default()
        object.__setattr__(m, "visual", VisualTokenizer.load(DEFAULT_VISUAL))
        return m

    for name, seed in (("a", 0), ("b", 1)):
        model(seed).save_pretrained(name, dtype="bfloat16", meta={"training": {"step": seed + 1}, "weights": "ema"})
    a, b = OmniModel.from_pretrained("a"), OmniModel.from_pretrained("b")  # one tensor the same in both
    sb = b.state_dict()
    shared = next(k for k, v in a.state_dict().items() if v.is_floating_point() and not torch.equal(v, sb[k]))
    sb[shared] = a.state_dict()[shared].clone()
    b.load_state_dict(sb)
    b.save_pretrained("b", dtype="bfloat16", meta={"training": {"step": 2}, "weights": "ema"})

    out = OmniModel.from_pretrained(average(["a", "b"], "soup", weights=[3, 1]))
    sa, sb = a.state_dict(), OmniModel.from_pretrained("b").state_dict()
    differ = 0
    for k, v in out.state_dict().items():
        want = (0.75 * sa[k].double() + 0.25 * sb[k].double()).to(torch.bfloat16).to(v.dtype)
        if v.is_floating_point():
            assert torch.allclose(v, want, rtol=1e-2, atol=1e-6), k
            differ += not torch.equal(sa[k], sb[k])
    assert differ > 10 and torch.equal(out.state_dict()[shared], sa[shared])
    rec = read_json(tmp_path / "soup" / "config.json")
    assert rec["weights"] == "average" and rec["dtype"] == "bfloat16"
    assert [(r["source"], r["weight"], r["training"]["step"]) for r in rec["training"]["average"]] == [
        ("a", 0.75, 1), ("b", 0.25, 2)]
    first = OmniModel.from_pretrained(average(["a", "b"], "first", weights=[1, 0]))
    assert all(torch.equal(v, sa[k]) for k, v in first.state_dict().items())
    # first_only: the generation side as the first model has it, the rest averaged as before
    gen = re.compile(OmniModel.GENERATION_TENSORS)
    part = OmniModel.from_pretrained(average(["a", "b"], "part", weights=[3, 1], first_only=gen.pattern))
    kept = [k for k in sa if gen.match(k)]
    assert any(".experts.1." in k for k in kept) and "flow_head.weight" in kept
    assert not any(".experts.0." in k for k in kept) and "tok_emb.weight" not in kept
    for k, v in part.state_dict().items():
        assert torch.equal(v, sa[k] if gen.match(k) else out.state_dict()[k]), k
    assert read_json(tmp_path / "part" / "config.json")["training"]["first_only"] == OmniModel.GENERATION_TENSORS

    with pytest.raises(ValueError, match="at least two"):
        average(["a"], "x")
    for bad in ([1], [1, -1], [0, 0], [float("nan"), 1]):
        with pytest.raises(ValueError, match="weights must be 2"):
            average(["a", "b"], "x", weights=bad)
    with pytest.raises(ValueError, match="not a regular expression"):
        average(["a", "b"], "x", first_only="layers.(")
    with pytest.raises(ValueError, match="matches none"):
        average(["a", "b"], "x", first_only="no_such_tensor")
    model(2, n_layers=3).save_pretrained("deeper")
    with pytest.raises(ValueError, match="n_layers"):
        average(["a", "deeper"], "x")
    assert not (tmp_path / "x").exists()


def test_resume_when_the_recorded_visual_tokenizer_is_gone(tmp_path):
    """A run records its visual tokenizer's absolute path; resuming after that directory was removed
    (a run started from a temporary checkout) failed with "missing file". It now continues with the copy
    in its newest checkpoint, kept in the run directory so that rotating checkpoints cannot lose it, and
    trains as it would have."""
    import shutil

    vis = tmp_path / "vis"
    shutil.copytree(DEFAULT_VISUAL, vis)
    run = tmp_path / "r"
    train_main(str(run), steps=1, keep=1, visual=str(vis), log=quiet, **fast())
    shutil.rmtree(vis)
    said = []
    last = train_main(str(run), steps=3, resume=True, log=said.append, **fast(keep=1))
    assert last["step"] == 3 and [p.name for p in run.glob("step-*")] == ["step-0000003"]
    own = run / "visual-tokenizer"
    assert any("is gone" in s and str(own) in s for s in said), said
    assert json.loads((run / "train_config.json").read_text())["visual"] == str(own)
    a, b = VisualTokenizer.load(DEFAULT_VISUAL), VisualTokenizer.load(own)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    # the same losses as a run that never lost its tokenizer
    ref = tmp_path / "ref"
    train_main(str(ref), steps=1, log=quiet, **fast())
    train_main(str(ref), steps=3, resume=True, log=quiet, **fast())
    logs = [[json.loads(x)["loss"] for x in (d / "log.jsonl").read_text().splitlines() if '"loss"' in x]
            for d in (run, ref)]
    assert logs[0] == logs[1] and len(logs[0]) >= 3, logs
    # nothing to fall back on: the error still names the missing file
    shutil.rmtree(own)
    for d in run.glob("step-*"):
        (d / "visual_tokenizer.json").unlink()
    with pytest.raises((FileNotFoundError, ValueError), match="visual_tokenizer.json"):
        train_main(str(run), steps=4, resume=True, log=quiet, **fast(keep=1))


def test_a_warmup_longer_than_the_run_is_said(tmp_path):
    """--warmup > --steps was accepted without a word: the learning rate never reaches --lr."""
    said = []
    train_main(str(tmp_path / "w"), steps=1, log=said.append, **fast(warmup=4, lr=1e-3))
    assert any("--warmup 4 is longer than the run (--steps 1): the learning rate peaks at 0.00025, not --lr 0.001"
               in s for s in said), said
    said = []
    train_main(str(tmp_path / "v"), steps=2, log=said.append, **fast(warmup=2))
    assert not any("--warmup" in s for s in said), said
