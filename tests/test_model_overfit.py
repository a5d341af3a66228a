"""The model can fit a fixed handful of world examples: text CE, flow MSE and the depth loss each
fall by at least 90 % (a check that every head and its gradients are wired right)."""

import numpy as np
import pytest
import torch

from omni.model import OmniConfig, OmniModel, Segment, pack
from omni.tokens.text import TextTokenizer
from omni.world import sample


def world_batch(cfg: OmniConfig):
    tok = TextTokenizer.default()
    g = torch.Generator().manual_seed(0)
    seqs = []
    for ex in sample("vqa", range(4)):
        v = ex.views["image"]
        seqs.append([Segment("text", [tok.id("<vqa>")]),
                     Segment("image_in", pixels=torch.from_numpy(v.rgb), depth=torch.from_numpy(v.depth),
                             depth_valid=torch.from_numpy(v.valid)),
                     Segment("text", tok.encode(ex.texts["question"]) + [tok.id("<answer>")]),
                     Segment("text", tok.encode(ex.answer) + [tok.eos], loss=True)])
    for ex in sample("t2i", range(4)):
        x0 = torch.randn(cfg.latent_grid ** 2, cfg.latent_dim, generator=g)  # stands in for the image's latents
        seqs.append([Segment("text", [tok.id("<t2i>")] + tok.encode(ex.texts["prompt"]), loss=True),
                     Segment("image_gen", latents=x0, t=0.7, loss=True,
                             noise=torch.randn(x0.shape, generator=g))])
    return pack(seqs, cfg, row_len=256)


@pytest.mark.slow
def test_overfit_eight_world_examples():
    torch.manual_seed(0)
    cfg = OmniConfig(d_model=128, n_layers=3, n_heads=4, max_seq=512)
    model = OmniModel(cfg).train()
    b = world_batch(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(400):
        out = model.losses(b)
        first = first or {k: float(v.detach()) for k, v in out.items()}
        opt.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    last = {k: float(v.detach()) for k, v in model.losses(b).items()}
    for k in ("text_ce", "flow_mse", "depth"):
        assert last[k] <= 0.1 * first[k], (k, first[k], last[k])
    assert np.isfinite(last["loss"])
