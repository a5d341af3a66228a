import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omni.world.render import DEPTH_FAR


def omni(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "omni.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_world_sample_writes_everything(tmp_path):
    out = tmp_path / "ex"
    r = omni("world", "sample", "--task", "spatial", "--n", "3", "--seed", "10", "--size", "24",
             "--out", str(out), "--shapes", "cube,cone", "--colors", "red,blue,green", "--max-objects", "4")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert [x["seed"] for x in recs] == [10, 11, 12]
    for rec in recs:
        assert rec["task"] == "spatial" and rec["answer"] in "ABCD" and rec["split"] == "train"
        assert set(rec["views"]) >= {"view1", "view2", "look_up", "look_down", "look_left", "look_right"}
        for o in rec["scenes"]["main"]["objects"]:
            assert o["shape"] in ("cube", "cone") and o["color"] in ("red", "blue", "green")
        for v in rec["views"].values():
            assert np.array(v["K"]).shape == (3, 3) and np.array(v["w2c"]).shape == (4, 4)
            img = np.asarray(Image.open(out / v["files"]["rgb"]))
            assert img.shape == (24, 24, 3)
            depth = np.load(out / v["files"]["depth"])
            assert depth.dtype == np.float32 and depth.shape == (24, 24) and (depth > 0).all()
            assert (depth <= DEPTH_FAR).all()
            assert np.asarray(Image.open(out / v["files"]["depth_png"])).shape == (24, 24, 3)
            assert np.load(out / v["files"]["ids"]).dtype == np.int16


def test_world_sheet(tmp_path):
    r = omni("world", "sheet", "--task", "all", "--n", "1", "--out", str(tmp_path / "s.png"))
    assert r.returncode == 0, r.stderr
    im = Image.open(tmp_path / "s.png")
    assert im.width > 500 and im.height > 8 * 128


@pytest.mark.parametrize("args,needle", [
    (["--task", "bogus"], "unknown task"),
    (["--task", "vqa", "--n", "0"], "--n must be positive"),
    (["--task", "vqa", "--n", "-3"], "--n must be positive"),
    (["--task", "vqa", "--size", "7"], "must lie in 8..1024"),
    (["--task", "vqa", "--size", "100000"], "must lie in 8..1024"),
    (["--task", "vqa", "--shapes", "cube,torus"], "unknown shape 'torus'"),
    (["--task", "vqa", "--colors", "red,pink"], "unknown color 'pink'"),
    (["--task", "vqa", "--min-objects", "5", "--max-objects", "2"], "object count"),
])
def test_bad_input_one_line_exit_2(tmp_path, args, needle):
    r = omni("world", "sample", *args, "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for cmd in (["sample", "--task", "vqa", "--out", str(blocker / "sub")],
                ["sheet", "--task", "vqa", "--out", str(blocker / "sub" / "s.png")]):
        r = omni("world", *cmd)
        assert r.returncode == 2 and r.stderr.startswith("error: cannot write") and r.stderr.count("\n") == 1, r.stderr


def test_writable_dir_probe_is_its_own(tmp_path):
    """The write probe takes a name of its own each time, so two processes writing into one directory
    (or a leftover under the old fixed name, here a directory) never make it look unwritable; the
    probe leaves nothing behind."""
    from omni.world.export import ensure_writable_dir

    (tmp_path / "out" / ".omni_write_test").mkdir(parents=True)
    assert ensure_writable_dir(tmp_path / "out") == tmp_path / "out"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".omni_write_test"]


def test_export_refuses_colliding_examples_and_empty_sheets(tmp_path):
    """Files are named by (task, seed): two examples of one seed (two configs' samples, say) once
    silently overwrote each other's images, both records naming the second's files. An empty sheet
    failed in max()."""
    from omni.world import WorldConfig, sample
    from omni.world.export import contact_sheet, save_examples

    small, larger = sample("pose", [0], WorldConfig(size=8))[0], sample("pose", [0], WorldConfig(size=16))[0]
    with pytest.raises(ValueError, match="two examples share task 'pose' and seed 0"):
        save_examples([small, larger], tmp_path / "dup")
    assert not (tmp_path / "dup").exists()  # refused before anything was written
    save_examples([small, sample("pose", [1], WorldConfig(size=8))[0]], tmp_path / "ok")
    assert (tmp_path / "ok" / "pose_0_view1.png").exists() and (tmp_path / "ok" / "pose_1_view1.png").exists()
    with pytest.raises(ValueError, match="at least one example"):
        contact_sheet([], tmp_path / "sheet.png")


@pytest.mark.parametrize("args,needle", [
    (["eval", "vqa", "--n", "2", "--seed-start", "1500000000"], "lies in no split"),
    (["eval", "vqa", "--n", "5", "--seed-start", "1000999998"], "run past the val split"),
    (["eval", "t2i", "--n", "1", "--cfg-scale", "nan"], "--cfg-scale must be >= 0"),
    (["eval", "t2i", "--n", "1", "--cfg-scale", "-5"], "--cfg-scale must be >= 0"),
    (["eval", "t2i", "--n", "1", "--visual-temperature", "nan"], "--visual-temperature must be >= 0"),
    (["eval", "t2i", "--n", "1", "--flow-shift", "nan"], "--flow-shift must be >= 0.001"),
    (["eval", "t2i", "--n", "1", "--flow-shift", "1e-10"], "--flow-shift must be >= 0.001"),
    (["eval", "edit", "--n", "1", "--flow-start", "0"], "--flow-start must be in (0, 1]"),
    (["eval", "edit", "--n", "1", "--flow-start", "1.5"], "--flow-start must be in (0, 1]"),
    (["eval", "pose", "--n", "1", "--pose-decoder", "regress"], "--pose-decoder must be text or head"),
    (["eval", "pose", "--n", "1", "--pose-motions", "orbit,spin"], "pose motions must be distinct names among"),
    (["eval", "vqa", "--n", "1", "--pose-motions", "move_turn"], "--pose-motions applies to the pose task only"),
    (["eval", "context-use", "--n", "1", "--seed-start", "1500000000"], "lies in no split"),
    (["unroll", "vqa", "--seed", "1500000000", "--out", "o"], "lies in no split"),
    (["unroll", "vqa", "--out", ""], "an output directory is needed"),  # it wrote into the current directory
    (["unroll", "vqa", "--out", "blocker/x"], "cannot write"),
    (["demo", "--flow-steps", "0"], "--flow-steps must be positive"),
    (["demo", "--out", "blocker.d"], "--out must be an image file name"),
    (["ablate", "vqa", "--n", "1", "--out", "blocker/x"], "cannot write"),
    (["ablate", "vqa", "--n", "1", "--out", "busy"], "keeps an unfinished run: --resume continues it"),
    (["ablate", "vqa", "--n", "1", "--out", "done"], "holds a finished vqa ablation: choose another --out, or"),
    (["ablate", "vqa", "--n", "1", "--out", "done", "--resume"], "holds a finished vqa ablation"),
    (["serve", "--max-body-mb", "nan"], "--max-body-mb must be positive"),
    (["eval", "vqa", "--n", "1", "--device", "gpu"], "unknown device 'gpu'"),
    (["ablate", "vqa", "--n", "1", "--out", "o", "--device", "cuda:7"], "device 'cuda:7'"),
    (["serve", "--threads", "-2"], "--threads must be >= 0"),
    (["serve", "--host", "999.1.1.1"], "--host '999.1.1.1' is not an address to listen on"),  # uvicorn exited 3
    (["eval", "gradients", "--model", '{"w_pose": [1]}'], "loss weight w_pose must be a finite number >= 0"),
    (["eval", "gradients", "--model", '{"w_text": -1}'], "loss weight w_text must be a finite number >= 0"),
    (["serve", "--device", "gpu"], "unknown device 'gpu'"),
    (["serve", "--device", "cuda"], "CUDA is not available"),
])
def test_bad_options_fail_before_the_model_loads(tmp_path, monkeypatch, args, needle):
    """Each is refused with one line before any checkpoint is read (there is none to read here). In
    process (typer's runner), so the 32 cases pay torch's import once; the entry point itself is run as
    a process by the tests around it."""
    from typer.testing import CliRunner

    from omni.cli import app

    (tmp_path / "blocker").write_text("x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "vqa_partial.json").write_text("{}")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "vqa_scores.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, [*args, "--checkpoint", str(tmp_path / "no-such-checkpoint")])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_serve_on_a_port_in_use_is_one_line(tmp_path):
    """A port another socket listens on is named before the model loads (uvicorn exited 3 with a log line)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = omni("serve", "--port", str(port), "--checkpoint", str(tmp_path / "no-such-checkpoint"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}"), r.stderr
    assert r.stderr.count("\n") == 1


def test_curves_read_a_log_being_written_and_name_bad_lines(tmp_path):
    from omni.eval.report import read_log

    log = tmp_path / "log.jsonl"
    good = [json.dumps({"step": s, "text_ce": 3.0 / s, "flow_mse": 0.5, "device": "cpu"}) for s in range(1, 40)]
    log.write_text("\n".join(good) + "\n\n" + '{"step": 40, "text_')  # a blank line, a last line cut off
    r = omni("eval", "curves", "--log", str(log), "--out", str(tmp_path / "c.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "c.png").width > 100
    assert sorted(read_log(log)) == list(range(1, 40)) and read_log(log)[2] == {"step": 2, "text_ce": 1.5,
                                                                                  "flow_mse": 0.5}
    from typer.testing import CliRunner

    from omni.cli import app

    def curves(log_path, png):  # in process: the rest pay torch's import once (the first call, above, does not)
        return CliRunner().invoke(app, ["eval", "curves", "--log", str(log_path), "--out", str(png)])

    # a run with a pose head logged its loss: a fifth panel
    posed = tmp_path / "posed.jsonl"
    posed.write_text("\n".join(json.dumps({"step": s, "text_ce": 1.0, "pose": 0.3}) for s in range(1, 40)))
    r = curves(posed, tmp_path / "p.png")
    assert r.exit_code == 0 and "warning" not in r.stderr
    assert Image.open(tmp_path / "p.png").width > 1.2 * Image.open(tmp_path / "c.png").width
    # a run that diverged: its NaN losses were dropped silently, as if it had stopped; now it is said
    nan = tmp_path / "nan.jsonl"
    nan.write_text("\n".join(json.dumps({"step": s, "text_ce": 1.0 if s < 30 else float("nan")}) for s in range(1, 40)))
    r = curves(nan, tmp_path / "n.png")
    assert r.exit_code == 0 and "warning: text_ce is not finite from step 30" in r.stderr, r.stderr
    for body, needle in [(good[0] + "\n{oops\n" + good[1], "log.jsonl:2: not JSON"),
                         ('{"loss": 1}', "log.jsonl:1: an entry needs an integer 'step'"),
                         (good[0] + '\n{"step": 2, "loss": [1]}', "log.jsonl:2: values must be numbers"),
                         ("", "no log entries")]:
        log.write_text(body)
        r = curves(log, tmp_path / "c.png")
        assert r.exit_code == 2 and needle in r.stderr, r.stderr


def test_curves_chain_the_logs_of_a_stage_trained_in_slices(tmp_path):
    from omni.eval.report import chain_logs

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps({"step": s, "text_ce": 2.0}) for s in range(1, 31)))
    b.write_text("\n".join(json.dumps({"step": s, "text_ce": 1.0}) for s in range(1, 21)))
    rows, starts = chain_logs([a, b])
    assert sorted(rows) == list(range(1, 51)) and starts == [30]
    assert rows[30]["text_ce"] == 2.0 and rows[31]["text_ce"] == 1.0
    r = omni("eval", "curves", "--log", str(a), "--log", str(b), "--out", str(tmp_path / "ab.png"))
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "ab.png").width > 100
    b.write_text("")
    r = omni("eval", "curves", "--log", str(a), "--log", str(b), "--out", str(tmp_path / "ab.png"))
    assert r.returncode == 2 and "b.jsonl: no log entries" in r.stderr, r.stderr


SHIPPED_VISUAL = Path(__file__).resolve().parents[1] / "checkpoints" / "visual-tokenizer"


def test_tokenizer_commands_check_options_before_work(tmp_path):
    (tmp_path / "blocker").write_text("x")
    for args, needle in [(["train-visual", "--out", str(tmp_path / "v"), "--size", "30"], "not divisible"),
                         (["train-visual", "--out", str(tmp_path / "v"), "--codebook", "1"], "codebook_size"),
                         (["train-visual", "--out", str(tmp_path / "v"), "--lr", "-1"], "--lr must be positive"),
                         (["build-text", "--out", str(tmp_path / "blocker" / "sub" / "tok.json")], "cannot write"),
                         (["build-text", "--out", str(tmp_path)], "is a directory"),  # failed after the corpus
                         (["train-visual", "--out", str(SHIPPED_VISUAL)], "already holds a visual tokenizer")]:
        r = omni("tokens", *args)
        assert r.returncode == 2 and needle in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_command_line_sampler_defaults_are_the_engines():
    """The command line writes the engine's defaults as literals (it loads without torch); every command's
    --flow-steps and --cfg-scale default, and the server's settings, must be the engine's own."""
    import typer

    from omni.cli import app
    from omni.serve import ServeSettings
    from omni.unroll.engine import CFG_SCALE, FLOW_STEPS, LAYOUT_TOKENS, THINK_TOKENS

    want = {"flow_steps": FLOW_STEPS, "cfg_scale": CFG_SCALE}
    seen = set()
    for name, cmd in typer.main.get_command(app).commands.items():
        for sub in getattr(cmd, "commands", {}).values() or [cmd]:
            for p in sub.params:
                if p.name in want:
                    assert p.default == want[p.name], (name, sub.name, p.name, p.default)
                    seen.add(p.name)
    assert seen == set(want)
    s = ServeSettings()
    assert (s.flow_steps, s.cfg_scale, s.think_tokens, s.layout_tokens) == (FLOW_STEPS, CFG_SCALE, THINK_TOKENS,
                                                                         LAYOUT_TOKENS)


def test_ablate_resume_continues_a_stopped_run(tmp_path):
    """`omni ablate` keeps its progress in OUT/TASK_partial.json and removes it when done; `--resume`
    continues a run stopped half-way (here stopped by the library, with the CLI's engine) to the
    same table as one uninterrupted command."""
    from omni.cli import DEFAULT_CHECKPOINT
    from omni.eval.ablate import ablate
    from omni.model import OmniModel
    from omni.unroll import Engine

    args = ("ablate", "vqa", "--n", "2", "--seed-start", "2000000040", "--json")
    whole = omni(*args, "--out", str(tmp_path / "a"))
    assert whole.returncode == 0, whole.stderr
    assert not (tmp_path / "a" / "vqa_partial.json").exists() and (tmp_path / "a" / "vqa.md").is_file()

    class Stop(Exception):
        pass

    (tmp_path / "b").mkdir()
    engine = Engine(OmniModel.from_pretrained(DEFAULT_CHECKPOINT), seed=0)
    with pytest.raises(Stop):
        ablate(engine, "vqa", 2, 2_000_000_040, log=lambda _m: (_ for _ in ()).throw(Stop()),
               partial=tmp_path / "b" / "vqa_partial.json", save_every=0)
    assert json.loads((tmp_path / "b" / "vqa_partial.json").read_text())["done"] == 1
    resumed = omni(*args, "--out", str(tmp_path / "b"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = json.loads(whole.stdout), json.loads(resumed.stdout)
    assert a["scores"] == b["scores"] and a["texts"] == b["texts"] and a["tables"] == b["tables"]
    assert not (tmp_path / "b" / "vqa_partial.json").exists()
