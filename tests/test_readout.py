import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_context_use import tiny
from typer.testing import CliRunner

from omni.eval.readout import (
    CLASSES,
    X_TARGET,
    _patch_labels,
    _x_targets,
    collect,
    fit_probe,
    readout,
    readout_markdown,
)
from omni.tokens.image import patchify
from omni.world import sample
from omni.world.render import ID_GROUND, ID_SKY
from omni.world.scene import COLORS
from omni.world.tasks import vqa_thought_pieces


def test_patch_labels_name_the_object_covering_half_the_patch():
    for ex in sample("vqa", range(3)):
        view = ex.views["image"]
        objs = ex.scenes[view.scene].objects
        lab = _patch_labels(ex, 4)
        assert lab.shape == (64, 4) and (lab[:, 0] >= 0).any() and (lab[:, 0] < 0).any()
        for c, (k, col, shape, size) in enumerate(lab):
            px = view.ids[4 * (c // 8):4 * (c // 8) + 4, 4 * (c % 8):4 * (c % 8) + 4].ravel()
            if k >= 0:
                assert (px == k).sum() >= 8 and COLORS[col] == objs[k].color
            else:
                assert col == shape == size == -1
                assert all((px == j).sum() < 8 for j in set(px.tolist()) - {ID_SKY, ID_GROUND})


def test_collect_keeps_every_layer_at_the_image_and_the_listed_words():
    m = tiny()
    seeds = range(1_000_000_000, 1_000_000_004)
    d = collect(m, seeds, batch=3, attention=True)
    exs = sample("vqa", seeds)
    layers = m.cfg.n_layers + 1
    assert d["patch"]["x"].shape == (4 * 64, layers, m.cfg.d_model)
    pix = torch.cat([patchify(torch.from_numpy(ex.views["image"].rgb)[None].float(), 4)[0] for ex in exs])
    assert torch.allclose(d["patch"]["pixels"], pix)  # every image's patches, in cell order
    listed = [w.strip() for ex in exs for w, what in vqa_thought_pieces(ex.texts["thinking"]) if what == "colour"]
    assert [CLASSES["colour"][i] for i in d["colour"]["y"].tolist()] == listed
    assert d["colour"]["x"].shape == (len(listed), layers, m.cfg.d_model) and d["colour"]["lm"].shape == (len(listed),)
    for key in ("image mass", "object mass"):  # where each listed colour's token looks, per layer
        assert d["colour"][key].shape == (len(listed), m.cfg.n_layers) and 0 <= d["colour"][key].min()
        assert d["colour"][key].max() <= 1 + 1e-5
    assert d["colour"]["object share"].shape == (len(listed),) and d["count"]["object mass"].numel() == 0
    by_head = d["colour"]["object mass by head"]
    assert by_head.shape == (len(listed), m.cfg.n_layers, m.cfg.n_heads) and 0 <= by_head.min() <= by_head.max() <= 1
    # the heads' mean attention is the mean of the heads: its share lies within theirs
    assert (by_head.amin(2) - 1e-5 <= d["colour"]["object mass"]).all()
    assert (d["colour"]["object mass"] <= by_head.amax(2) + 1e-5).all()
    assert collect(m, seeds, batch=3)["colour"]["image mass"].numel() == 0  # only when asked
    pos = [w.strip() for ex in exs for w, what in vqa_thought_pieces(ex.texts["thinking"]) if what == "position"]
    assert [CLASSES["position"][i] for i in d["position"]["y"].tolist()] == pos
    # layer 0 is the embedding: the same patches give the same vectors wherever they sit
    other = collect(m, seeds, batch=1)
    assert torch.allclose(other["patch"]["x"][:, 0], d["patch"]["x"][:, 0], atol=1e-5)
    # another image: the patches are the next example's, the text labels the example's own
    swapped = collect(m, seeds, batch=3, other_image=True)
    assert torch.equal(swapped["colour"]["y"], d["colour"]["y"])
    assert torch.allclose(swapped["patch"]["pixels"], torch.roll(pix, -64, 0))


def test_collect_reads_the_relation_steps_x_centres():
    """The left_right step's x centres ("centred at x 9 and the blue cylinder at x 30"): one label per
    number, its patch column, in the step's order; the LM head's first digit is a rate; the attention at
    the token that predicts the first digit names the object the number belongs to."""
    m = tiny()
    seeds = [1_000_000_013, 1_000_000_016, 1_000_000_020, 1_000_000_025]  # three left_right questions
    exs = sample("vqa", seeds)
    d = collect(m, seeds, batch=3, attention=True)[X_TARGET]
    xs = [int(v) for ex in exs if ex.spec["kind"] == "left_right"
          for v in re.findall(r"at x (\d+)", ex.texts["thinking"])]
    assert len(xs) == 6 and d["y"].tolist() == [min(x // 4, 7) for x in xs]
    assert d["x"].shape == (6, m.cfg.n_layers + 1, m.cfg.d_model) and d["lm"].shape == (6,)
    assert d["object mass"].shape == (6, m.cfg.n_layers) and d["object share"].max() > 0
    for i, ex in enumerate(ex for ex in exs if ex.spec["kind"] == "left_right"):
        (x1, k1), (x2, k2) = _x_targets(ex)
        objs = ex.scenes[ex.views["image"].scene].objects
        named = re.search(r"the ([a-z ]+?) is centred at x \d+ and the ([a-z ]+?) at x", ex.texts["thinking"])
        assert (objs[k1].name, objs[k2].name) == (named[1], named[2]) and [x1, x2] == xs[2 * i:2 * i + 2]
    assert _x_targets(next(ex for ex in exs if ex.spec["kind"] != "left_right")) == []
    assert collect(m, seeds, batch=3, other_image=True)[X_TARGET]["y"].tolist() == d["y"].tolist()


def test_fit_probe_separates_what_a_linear_map_can():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 12, generator=g) * 5 + 3
    w = torch.randn(12, 3, generator=g)
    y = (x @ w).argmax(1)
    probe = fit_probe(x[:400], y[:400], 3)
    acc = (probe(x[400:]).argmax(1) == y[400:]).float().mean()
    assert acc > 0.9
    noise = torch.randint(0, 3, (600,), generator=g)  # labels unrelated to x: no better than chance
    p2 = fit_probe(x[:400], noise[:400], 3)
    assert (p2(x[400:]).argmax(1) == noise[400:]).float().mean() < 0.5


def test_readout_on_a_random_model():
    """Colour sits in the pixels of a patch: the pixel probe and layer 0 (a linear map of them) read it
    far above the majority class; every score is a rate; the table has a row per target."""
    m = tiny()
    r = readout(m, n_train=24, n=12, train_start=0, seed_start=1_000_000_000)
    col = r["targets"]["patch colour"]
    assert col["pixels"]["mean"] > col["majority"]["mean"] + 0.3
    assert col["layer"][0]["mean"] > col["majority"]["mean"] + 0.3
    assert len(col["layer"]) == m.cfg.n_layers + 1 == len(r["layers"])
    for name, row in r["targets"].items():
        scores = [row["majority"], *row["layer"], *row.get("other image", []),
                  row["pixels"] if "pixels" in row else row["lm head"]]
        assert all(0 <= s["mean"] <= 1 for s in scores), name
    table = readout_markdown(r)
    assert all(f"| {name} |" in table for name in r["targets"])
    assert "| colour | its object's share of that (uniform: " in table  # where the listed colour's token looks
    assert len(r["targets"]["colour"]["object mass"]) == m.cfg.n_layers
    assert [len(v) for v in r["targets"]["colour"]["object mass by head"]] == [m.cfg.n_heads] * m.cfg.n_layers
    assert "| colour | … the share in its best head | " in table
    with pytest.raises(ValueError, match="different splits"):
        readout(m, n_train=4, n=4, train_start=0, seed_start=10)
    with pytest.raises(ValueError, match="held-out seeds 5..8 are training seeds"):  # probes fit on test seeds
        readout(m, n_train=4, n=4, train_start=2_000_000_000, seed_start=5)
    with pytest.raises(ValueError, match="at least 2"):
        readout(m, n_train=1, n=4)


def test_cli(tmp_path):
    tiny().save_pretrained(tmp_path / "ck")
    r = subprocess.run([sys.executable, "-m", "omni.cli", "eval", "readout", "--checkpoint", str(tmp_path / "ck"),
                        "--train", "4", "--n", "2", "--seed-start", "1000000000", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 2 and "patch colour" in out["targets"]
    bad = subprocess.run([sys.executable, "-m", "omni.cli", "eval", "readout", "--checkpoint",
                          str(tmp_path / "none"), "--train", "4", "--n", "4", "--seed-start", "20"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "different splits" in bad.stderr, bad.stderr
    assert np.isfinite(out["targets"]["patch colour"]["layer"][0]["mean"])


def test_readout_on_revision_2(tmp_path, monkeypatch):
    """Every example the probes fit and score on is drawn from the world's revision asked for, and the
    output says which; an unknown revision is refused before the model loads."""
    import omni.eval.readout as ro
    from omni.cli import app

    drawn = []
    real = ro.sample
    monkeypatch.setattr(ro, "sample", lambda task, seeds, cfg: drawn.append(cfg.revision) or real(task, seeds, cfg))
    tiny().save_pretrained(tmp_path / "ck")
    r = CliRunner().invoke(app, ["eval", "readout", "--checkpoint", str(tmp_path / "ck"), "--train", "4", "--n", "2",
                                 "--seed-start", "1000000000", "--world-revision", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["world_revision"] == 2 and drawn == [2] * 4
    bad = CliRunner().invoke(app, ["eval", "readout", "--checkpoint", str(tmp_path / "none"), "--train", "4",
                                   "--n", "2", "--seed-start", "1000000000", "--world-revision", "9"])
    assert bad.exit_code == 2 and "world revision must be one of 1, 2, 3" in bad.stderr, bad.output


def test_attention_is_the_models_own(monkeypatch):
    """_attention_at recomputes, from each layer's input, the weights the layer's attention used: the
    same as softmax(q k^T / sqrt(d) | mask) on the q, k and mask the model hands to SDPA."""
    import torch.nn.functional as F

    from omni.eval.context_use import _vqa_thought_sequence
    from omni.eval.readout import _attention_at, _queries_keys
    from omni.model import pack
    from omni.model import transformer as T
    from omni.train.data import Writer

    m = tiny(seed=3)
    with torch.no_grad():  # a random model's attention is near uniform: make it peaked
        for layer in m.layers:
            layer.experts[0].qkv.weight.mul_(4)
    w = Writer(m.tokenizer, m.visual, m.cfg)
    seqs = [_vqa_thought_sequence(w, ex)[0] for ex in sample("vqa", range(2))]
    b = pack(seqs, m.cfg)
    seen, inputs = [], []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None):
        seen.append((q, k, attn_mask))
        return real(q, k, v, attn_mask=attn_mask)

    monkeypatch.setattr(T.F, "scaled_dot_product_attention", spy)
    hooks = [layer.register_forward_pre_hook(lambda mod, i: inputs.append((i[0], i[1]))) for layer in m.layers]
    with torch.no_grad():
        m(b)
    for hk in hooks:
        hk.remove()
    row, start, length = b.where[1]
    p = start + length - 3
    keys = torch.arange(start, start + length)
    mine = _attention_at(_queries_keys(m, inputs), row, p, keys)
    for li, (q, k, mask) in enumerate(seen):
        s = torch.einsum("hd,hld->hl", q[row, :, p], k[row]) / q.shape[-1] ** 0.5
        ref = s.masked_fill(~mask[row, 0, p], float("-inf")).softmax(-1)[:, keys]
        assert torch.allclose(mine[li], ref, atol=1e-5), li  # each head's weights
        assert torch.allclose(mine[li].sum(-1), torch.ones(m.cfg.n_heads), atol=1e-4)  # all on the example's own tokens
    assert float(mine.max()) > 3 / length  # not uniform: a real check of which tokens are weighted
