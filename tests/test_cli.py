import json
import subprocess
import sys

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
    (["--task", "vqa", "--size", "7"], "at least 8"),
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
