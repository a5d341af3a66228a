import json
import subprocess
import sys

import pytest
import torch

from omni.model import OmniModel, preset
from omni.tokens.text import TextTokenizer
from omni.tokens.visual import VisualTokenizer
from omni.train import MixtureConfig
from omni.train.gradients import TERMS, gradients_markdown, loss_gradients
from omni.train.loop import DEFAULT_VISUAL

MIX = MixtureConfig(data_seed=3, rows=1, row_len=1024,
                    task_weights={"vqa": 1, "t2i": 0, "spatial": 0, "depth": 1, "pose": 1, "nvs": 0, "video": 0,
                                  "edit": 0})


def model(w_pose: float = 1.0) -> OmniModel:
    torch.manual_seed(0)
    m = OmniModel(preset("tiny", d_model=64, n_layers=2, n_heads=4, pose_head=True, w_pose=w_pose))
    m.tokenizer = TextTokenizer.default()
    object.__setattr__(m, "visual", VisualTokenizer.load(DEFAULT_VISUAL))
    with torch.no_grad():  # a fresh model's heads are zero: no gradient would reach the layers through them
        for head in (m.flow_head, m.depth_head, m.pose_head, m.final_ada):
            head.weight.normal_(0, 0.05)
    return m


def test_each_term_and_task_and_the_loss_weights():
    m = model()
    r = loss_gradients(m, MIX, batches=1)
    assert set(r["tasks"]) == {"vqa", "depth", "pose"}  # the tasks the mixture draws
    vqa = r["tasks"]["vqa"]
    assert vqa["text_ce"] > 0 and all(vqa[t] == 0 for t in TERMS if t != "text_ce")  # VQA trains text only
    assert vqa["total"] == pytest.approx(vqa["text_ce"], rel=1e-4)
    assert r["tasks"]["pose"]["pose"] > 0 and r["tasks"]["depth"]["depth"] > 0
    mix = r["mixture"]
    # the terms' gradients add up to the loss's: its norm lies within the triangle inequality's bounds
    top, rest = max(mix[t] for t in TERMS), sum(mix[t] for t in TERMS) - max(mix[t] for t in TERMS)
    assert top - rest - 1e-4 <= mix["total"] <= (top + rest) * (1 + 1e-4)
    assert all(p.grad is None for p in m.parameters())  # the model's own gradients are left alone
    # the pose term's gradient scales with its loss weight, the others do not move
    r10 = loss_gradients(model(w_pose=10.0), MIX, batches=1, by_task=False)
    assert r10["mixture"]["pose"] == pytest.approx(10 * mix["pose"], rel=1e-3)
    assert r10["mixture"]["text_ce"] == pytest.approx(mix["text_ce"], rel=1e-4)
    assert r10["tasks"] == {} and r10["loss_weights"]["pose"] == 10
    # every parameter (the heads and embeddings too) holds at least the layers' norm
    full = loss_gradients(m, MIX, batches=1, trunk=False, by_task=False)
    assert full["mixture"]["total"] >= mix["total"] * (1 - 1e-4) and not full["trunk"]
    table = gradients_markdown(r)
    assert "| the mixture |" in table and "| pose alone |" in table and "pose 1" in table
    with pytest.raises(ValueError, match="batches"):
        loss_gradients(m, MIX, batches=0)


def test_cli(tmp_path):
    model().save_pretrained(tmp_path / "ck")
    cmd = [sys.executable, "-m", "omni.cli", "eval", "gradients", "--checkpoint", str(tmp_path / "ck"), "--batches",
           "1", "--rows", "1", "--task-weights", json.dumps(MIX.task_weights)]
    r = subprocess.run([*cmd, "--json", "--model", '{"w_pose": 3}'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["loss_weights"]["pose"] == 3 and set(out["tasks"]) == {"vqa", "depth", "pose"}
    bad = subprocess.run([*cmd, "--model", '{"w_posee": 3}'], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "loss weights" in bad.stderr, bad.stderr
    bad = subprocess.run([*cmd, "--row-len", "5"], capture_output=True, text=True, timeout=300)  # a table of zeros
    assert bad.returncode == 2 and "--row-len 5 cannot hold" in bad.stderr, bad.stderr
