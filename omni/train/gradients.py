"""Which loss moves the shared weights: each weighted loss term's gradient, on a mixture's batches.

The mixture's task weights say how many examples each task gets; what each task gets of a step is
its loss terms' gradient on the weights the tasks share (the transformer's layers). AdamW scales
each weight's step by the root mean square of its gradient, so on a weight where one term's
gradient is ten times another's, the smaller term might be expected to move it less (on the CPU,
pose's head term at ten times the text's did not slow VQA against a tenth of that weight: docs/experiments.md,
"Is it the loss weights?"). `loss_gradients` measures, on a few of the mixture's batches, the L2
norm of each weighted term (text CE, visual CE, flow MSE, depth, pose; OmniModel.losses) over the
layers' parameters (or every parameter), the norm of their sum, and the same for each task alone.

    omni eval gradients --checkpoint DIR [--task-weights JSON] [--batches 3] [--json]
"""

from __future__ import annotations

from dataclasses import replace

import torch

from omni.model import OmniModel

from .data import Mixture, MixtureConfig, Writer

TERMS = ("text_ce", "visual_ce", "flow_mse", "depth", "pose")  # OmniModel.losses' weighted terms
WEIGHTS = {"text_ce": "w_text", "visual_ce": "w_visual", "flow_mse": "w_flow", "depth": "w_depth", "pose": "w_pose"}


def _grad_norm(loss: torch.Tensor, params: list[torch.Tensor], retain: bool) -> float:
    """The L2 norm of loss's gradient over params (a parameter it does not reach counts 0)."""
    g = torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True)
    return float(torch.sqrt(sum((x.float() ** 2).sum() for x in g if x is not None)))


def _norms(model: OmniModel, mixture: Mixture, batches: int, params: list[torch.Tensor]) -> dict:
    """Mean over `batches` batches (steps 0, 1, ...) of each weighted term's gradient norm on `params`
    (0 for a term the batches lack) and of the total loss's; examples per batch."""
    cfg = model.cfg
    sums = dict.fromkeys((*TERMS, "total"), 0.0)
    examples = 0
    for step in range(batches):
        b, info = mixture.batch(step)
        b = b.to(next(model.parameters()).device)
        examples += info["examples"]
        out = model.losses(b)
        for term in TERMS:
            if not out[term].requires_grad:  # a term no token of the batch has
                continue
            sums[term] += _grad_norm(getattr(cfg, WEIGHTS[term]) * out[term], params, retain=True)
        sums["total"] += _grad_norm(out["loss"], params, retain=False)
    return {**{k: v / batches for k, v in sums.items()}, "examples": examples / batches}


def loss_gradients(model: OmniModel, mixture: MixtureConfig, batches: int = 3, trunk: bool = True,
                   by_task: bool = True) -> dict:
    """{"mixture": norms, "tasks": {task: norms}} for the mixture and (by_task) each of its tasks
    alone (the same rows, form weights and data seed), where norms = {term: the mean L2 norm of its
    weighted gradient, "total": the full loss's, "examples": per batch}. trunk: the norms over the
    transformer layers' parameters (what every task shares), else over every parameter. The model
    is put in train mode (dropout-free here) and its gradients are left untouched."""
    if batches < 1:
        raise ValueError(f"--batches must be >= 1, got {batches}")
    model = model.train()
    params = [p for n, p in model.named_parameters() if p.requires_grad and (not trunk or n.startswith("layers."))]
    writer = Writer.for_mixture(model.tokenizer, model.visual, model.cfg, mixture)
    Mixture(mixture, writer).check_row_len()  # rows no sequence fits in gave a table of zeros, as training refuses
    res: dict = {"batches": batches, "rows": mixture.rows, "row_len": mixture.row_len, "trunk": trunk,
                 "task_weights": dict(mixture.task_weights),
                 "loss_weights": {t: getattr(model.cfg, WEIGHTS[t]) for t in TERMS},
                 "mixture": _norms(model, Mixture(mixture, writer), batches, params), "tasks": {}}
    if by_task:
        for task, w in mixture.task_weights.items():
            if w <= 0:
                continue
            alone = {t: (1.0 if t == task else 0.0) for t in mixture.task_weights}
            cfg = replace(mixture, task_weights=alone)
            res["tasks"][task] = _norms(model, Mixture(cfg, writer), batches, params)
    return res


def gradients_markdown(res: dict) -> str:
    """A row for the mixture and each task alone: each term's gradient norm, the total, and the
    text CE's share of the total (its norm over the total's)."""
    head = ["batches of", "examples", *TERMS, "total", "text CE / total"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [("the mixture", res["mixture"]), *((f"{t} alone", r) for t, r in res["tasks"].items())]
    for name, r in rows:
        share = r["text_ce"] / r["total"] if r["total"] > 0 else 0.0
        lines.append(f"| {name} | {r['examples']:.1f} | " + " | ".join(f"{r[t]:.3f}" for t in TERMS)
                     + f" | {r['total']:.3f} | {share:.2f} |")
    where = "the transformer layers' parameters" if res["trunk"] else "every parameter"
    weights = ", ".join(f"{t} {w:g}" for t, w in res["loss_weights"].items())
    return ("\n".join(lines) + f"\n\nL2 norms of each weighted term's gradient on {where}, mean of {res['batches']} "
            f"batches of {res['rows']} rows x {res['row_len']} tokens; loss weights: {weights}.\n")
