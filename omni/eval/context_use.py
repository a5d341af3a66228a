"""Is a context used? The t2i generator's teacher-forced flow loss on held-out targets, given each
ground-truth context the mixture trains it with.

Every row holds the same target latents, noise level t and noise; rows differ only in what precedes
<gen>: nothing the generator may see (the unconditional branch of guidance), the prompt, and the
prompt with the world's own short thought, layout text and visual codes of the target (the contexts
of FORMS["t2i"], written exactly as in training). A generator that uses a context predicts the
velocity better with it: its loss falls below the prompt row's. The visual codes fix the target's
latents up to quantisation, so a generator that fully used them would approach the quantisation
error at every t. Where unrolling fails, this separates "the context is wrong" (the generator
improves given the true context) from "the context is ignored" (it does not).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from omni.model import OmniModel, pack
from omni.model.config import IMAGE_CLEAN, IMAGE_GEN
from omni.train.data import FORMS, Writer
from omni.world import WorldConfig, sample

from .report import AblationTable, ablation_table

NOISE_LEVELS = (0.5, 0.8, 0.95)


def row_names() -> list[str]:
    """'prompt' (the direct form), 'none' (unconditional), then '+form' for each context form."""
    return ["prompt", "none", *(f"+{f}" for f in FORMS["t2i"] if f != "direct")]


@torch.no_grad()
def flow_context_use(model: OmniModel, n: int, seed_start: int, ts: Sequence[float] = NOISE_LEVELS,
                     seed: int = 0) -> dict[str, AblationTable]:
    """One table per noise level t: each row's mean per-example flow MSE over n t2i examples from
    seed_start, with 95% intervals and the paired difference to the prompt row (lower is better)."""
    if model.tokenizer is None or model.visual is None:
        raise ValueError("the model has no tokenizers attached (load it with OmniModel.from_pretrained)")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    bad = [t for t in ts if not 0.0 < t <= 1.0]
    if bad or not ts:
        raise ValueError(f"noise levels must lie in (0, 1], got {list(ts)}")
    model = model.eval()
    cfg = model.cfg
    w = Writer(model.tokenizer, model.visual, cfg)
    exs = sample("t2i", list(range(seed_start, seed_start + n)), WorldConfig(size=cfg.image_size))
    names = row_names()
    scores = {t: {k: [] for k in names} for t in ts}
    device = next(model.parameters()).device
    for i, ex in enumerate(exs):
        rng = np.random.default_rng([seed, i])
        seqs = {("prompt" if f == "direct" else f"+{f}"): w.write(ex, f, rng) for f in FORMS["t2i"]}
        seqs["none"] = seqs["prompt"]
        shape = next(s for s in seqs["prompt"] if s.kind == "image_gen").latents.shape
        noise = torch.from_numpy(rng.standard_normal(tuple(shape)).astype(np.float32))
        for t in ts:
            rows = [[dataclasses.replace(s, t=float(t), noise=noise, uncond=name == "none")
                     if s.kind == "image_gen" else s for s in seqs[name]] for name in names]
            b = pack(rows, cfg).to(device)
            h = model(b).reshape(-1, cfg.d_model)
            kind = b.kind.reshape(-1)
            lat = torch.nonzero((kind == IMAGE_GEN) | (kind == IMAGE_CLEAN)).squeeze(1)
            err = (model.velocity(h.index_select(0, lat)) - b.flow_target.to(h.dtype)).square().mean(-1)
            row_of = lat // b.kind.shape[1]
            m = b.flow_mask
            for r, name in enumerate(names):
                scores[t][name].append(float(err[m & (row_of == r)].mean()))
    return {f"t={t:g}": ablation_table(scores[t], title=f"t2i flow loss given each true context, t = {t:g}",
                                       metric="flow mse", higher_is_better=False) for t in ts}
