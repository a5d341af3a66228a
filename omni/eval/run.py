"""Running a model on held-out world examples and scoring it, task by task, plan by plan.

Every task's per-example scores come from exact world knowledge (the protocols in metrics.py and
the generation checker), and every reported mean carries a 95 % bootstrap interval.

    vqa, spatial  exact-match accuracy of the answer (spatial: the option letter; chance 25 %)
    t2i           the generation checker: pass (GenEval) and soft score (GenEval-2 style)
    depth         delta1 and AbsRel per image (Marigold protocol): metric (no alignment), and after a
                  least-squares scale and shift per image ("_aligned")
    pose          AUC@30 over the pairs (each pair's share of the 1..30 degree thresholds it meets); and
                  `pose_fit`: how each of the six numbers follows the truth (a constant guess scores
                  AUC@30 too: see references.py)
    nvs, video, edit  PSNR and SSIM of the generated image, and PSNR of copying the input image;
                  edit also split by region (metrics.edit_regions): PSNR over the pixels the edit
                  changes and over the rest, and `change_drawn`, the share of the change's error removed
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence

import numpy as np

from omni.unroll.engine import Engine, Inputs, Result, parse_pose
from omni.unroll.format import SOURCE_VIEW, VIEW_TAGS
from omni.world import Example, sample
from omni.world.camera import pose_to_numbers, text_to_numbers
from omni.world.language import depth_caption_objects
from omni.world.tasks import LETTERS, WorldConfig, split_of_range, stated_answer, stated_option, vqa_inventory, vqa_step

from .checker import check
from .metrics import bootstrap_ci, depth_metrics, edit_regions, pose_errors, psnr, qa_accuracy, ssim

EVAL_TASKS = ("vqa", "t2i", "spatial", "depth", "pose", "nvs", "video", "edit")


def inputs_of(ex: Example) -> Inputs:
    """What the model is given for an example (never its answer or target)."""
    v, t = ex.views, ex.texts
    task = ex.task
    if task == "vqa":
        return Inputs(task, {"image": v["image"].rgb}, t["question"])
    if task == "t2i":
        return Inputs(task, {}, t["prompt"], oracle=t["oracle"])
    if task == "spatial":
        return Inputs(task, {"view1": v["view1"].rgb, "view2": v["view2"].rgb}, t["question"])
    if task == "depth":
        return Inputs(task, {"image": v["image"].rgb})
    if task == "pose":
        return Inputs(task, {"view1": v["view1"].rgb, "view2": v["view2"].rgb})
    if task == "nvs":
        return Inputs(task, {"source": v["source"].rgb}, t["instruction"])
    if task == "video":
        return Inputs(task, {"frame0": v["frame0"].rgb}, t["caption"])
    if task == "edit":
        return Inputs(task, {"before": v["before"].rgb}, t["instruction"])
    raise ValueError(f"unknown task {task!r}; known: {', '.join(EVAL_TASKS)}")


def pair_pose_scores(ex: Example, T: np.ndarray | None) -> dict:
    """One view pair's pose scores for a predicted relative pose T (view 2 in view 1's frame; None =
    unparseable, scored as if the camera did not move): AUC@30 (the share of the 1..30 degree
    thresholds it meets), RRE, RTE and whether it parsed."""
    a, b = ex.views["view1"].w2c, ex.views["view2"].w2c
    pred_b = np.linalg.inv(T) @ a if T is not None else a
    rre, rte = pose_errors(np.stack([a, pred_b])[None], np.stack([a, b])[None])
    err = max(float(rre[0]), float(rte[0]))
    return {"auc@30": float(np.mean([err < k for k in range(1, 31)])), "rre": float(rre[0]),
            "rte": float(rte[0]), "parsed": float(T is not None)}


POSE_NUMBERS = ("tx", "ty", "tz", "rx", "ry", "rz")


def pose_fit(examples: Sequence[Example], texts: Sequence[str | None]) -> dict:
    """Whether predicted poses follow the true ones (the world's pose text, of pose or spatial examples),
    number by number (`tx ty tz rx ry rz`: translation, axis-angle): the correlation over the pairs
    whose text parses (None where either side is constant), and each side's mean and standard
    deviation. A model that guesses one pose for every pair scores AUC@30 well above 0 with
    correlations near 0."""
    pred, true = [], []
    for ex, t in zip(examples, texts, strict=True):
        T = parse_pose(t or "")
        if T is not None:
            pred.append(pose_to_numbers(T))
            true.append(text_to_numbers(ex.texts["pose"]))
    out = {"numbers": list(POSE_NUMBERS), "parsed": len(pred)}
    if not pred:
        return out
    P, G = np.array(pred), np.array(true)
    corr = [float(np.corrcoef(P[:, i], G[:, i])[0, 1]) if min(P[:, i].std(), G[:, i].std()) > 1e-9 else None
            for i in range(6)]
    return {**out, "corr": corr, "pred_mean": P.mean(0).tolist(), "pred_std": P.std(0).tolist(),
            "true_mean": G.mean(0).tolist(), "true_std": G.std(0).tolist()}


def held_out(split: str) -> str:
    """How a report names examples of a split: the training split is not held out."""
    return "held-out" if split != "train" else "training-split (not held-out)"


def score(ex: Example, res: Result) -> dict:
    """Per-example scores of one result."""
    out = res.output
    task = ex.task
    if task in ("vqa", "spatial"):
        return {"accuracy": qa_accuracy([out.text or ""], [ex.answer])["scores"][0]}
    if task == "t2i":
        r = check(out.image, ex.spec)
        return {"pass": float(r.passed), "score": r.score}
    if task == "depth":
        v = ex.views["image"]
        m = depth_metrics(out.data["depth"], v.depth, mask=v.valid)
        a = depth_metrics(out.data["depth"], v.depth, mask=v.valid, align="scale_shift")
        return {"delta1": m["delta1"], "abs_rel": m["abs_rel"], "delta1_aligned": a["delta1"],
                "abs_rel_aligned": a["abs_rel"]}
    if task == "pose":
        return pair_pose_scores(ex, parse_pose(out.text or ""))
    src = SOURCE_VIEW[task]
    tgt = {"nvs": "target", "video": "frame1", "edit": "after"}[task]
    gt = ex.views[tgt].rgb
    regions = edit_regions(out.image, ex.views[src].rgb, gt) if task == "edit" else {}
    return {"psnr": psnr(out.image, gt), "ssim": ssim(out.image, gt), "copy_psnr": psnr(ex.views[src].rgb, gt),
            **regions}


# the world's ground truth for each text primitive, per task: (texts key)
_TEXT_TRUTH = {"think": {"vqa": "thinking", "spatial": "thinking", "t2i": "short"},
               "think_long": {"t2i": "oracle"}, "describe": {"depth": "detailed"},
               "depth_caption": {"depth": "depth_caption"}}


# the measurements in a VQA thought or a depth caption: distances ("about 3.4 m", "yellow cone 4.2 m") and
# x positions in pixels ("centred at x 9"); `close_text` lets each differ from the truth by up to these
CLOSE_METRES, CLOSE_PIXELS = 0.2, 2
_MEASURE = re.compile(r"-?\d+\.\d+|(?<=\bx )-?\d+")


def close_text(said: str, truth: str, metres: float = CLOSE_METRES, pixels: float = CLOSE_PIXELS) -> bool:
    """Whether `said` is `truth` word for word but for its measurements, each distance (a decimal) within
    `metres` and each x position (an integer after "x ") within `pixels` of the truth's. Every other
    word and number (counts, sizes, the order of a list) must be exact, so close is never below exact."""
    said, truth = said.strip(), truth.strip()
    a, b = _MEASURE.findall(said), _MEASURE.findall(truth)
    if len(a) != len(b) or _MEASURE.sub("#", said) != _MEASURE.sub("#", truth):
        return False
    for x, y in zip(a, b, strict=True):
        if ("." in x) != ("." in y) or abs(float(x) - float(y)) > (metres if "." in y else pixels) + 1e-9:
            return False
    return True


def _listing_fidelity(said: str, truth: str) -> dict[str, float]:
    """A depth caption's front-to-back listing against the truth's: `count` (as many objects listed),
    `colour` and `shape` (the fraction of the truth's objects whose word the caption has at the same
    place in the order; 0 for places it leaves out), `nearest` (the first object's distance within
    CLOSE_METRES)."""
    a, b = depth_caption_objects(said), depth_caption_objects(truth)
    if not b:  # nothing to list: right when the caption lists nothing either
        return dict.fromkeys(("count", "colour", "shape", "nearest"), float(not a))
    pairs = list(zip(a, b, strict=False))  # place by place, as far as both go
    return {"count": float(len(a) == len(b)),
            "colour": sum(x[0] == y[0] for x, y in pairs) / len(b),
            "shape": sum(x[1] == y[1] for x, y in pairs) / len(b),
            "nearest": float(bool(a) and abs(a[0][2] - b[0][2]) <= CLOSE_METRES + 1e-9)}


def texts_of(res: Result) -> dict | None:
    """The text a run wrote, for checking claims about it later: each primitive's text as
    [step, text] in order, and the output's text; None when it wrote none (an image, a depth map)."""
    steps = [[it.step, it.text] for it in res.items if it.step != "input" and it.text is not None]
    if not steps and res.output.text is None:
        return None
    return {"steps": steps, "output": res.output.text}


def fidelity(ex: Example, res: Result) -> dict:
    """How close each piece of context the model produced is to the world's ground truth — the first
    question when a context does not help (is it produced correctly?). Per step, keyed `step:what`:
      text primitives   `exact` (1/0) and `similarity` (difflib ratio) against the text the training
                        mixture teaches for that block (t2i layouts are one valid layout among many, so
                        there similarity is a lower bound of correctness); the vqa thought and the depth
                        caption also `close` (1/0, `close_text`): exact but for distances within
                        CLOSE_METRES and x positions within CLOSE_PIXELS (a relation thought or a caption
                        states them to the decimal, so is almost never exact); the vqa thought also
                        `step`: its question's step (`vqa_step`: after the inventory, before the
                        closing) is close to the truth's, whatever the inventory says, and, where the
                        truth lists every object (not a focused thought), `listing`: its inventory
                        (`vqa_inventory`) names the truth's objects in order, each word right (a
                        measured thought's distances not compared: as context use's `listing`),
                        whatever the step says; the depth
                        caption also its listing's `count`, `colour`, `shape` and `nearest`
                        (`_listing_fidelity`)
      think (vqa, spatial)  also `answer`: the thought states the true answer ("so the answer is X"),
                        and `followed`: the final output is the answer the thought states (0 when it
                        states none) — a thought can be wrong, or right and not followed; spatial
                        also `option`: it names the true option ("that is: <option>. ..."), and
                        `lookup`: the letter it states is that of the option it names
      estimate_pose     `parsed` and `auc@30` of the relative pose, as the pose task scores it
      rollout_visual    t2i: the generation checker's `pass` on the decoded preview; otherwise the
                        preview's `psnr` against the input image it should reproduce
      synthesize_views  `psnr` of the four generated views against the world's renders
    """
    import difflib

    out: dict[str, float] = {}
    for it in res.items:
        s = it.step
        key = _TEXT_TRUTH.get(s, {}).get(ex.task)
        if key and it.text is not None:
            truth = ex.texts[key]
            out[f"{s}:exact"] = float(it.text.strip() == truth.strip())
            out[f"{s}:similarity"] = difflib.SequenceMatcher(None, it.text.strip(), truth.strip()).ratio()
            # the two texts that state measurements: the vqa thought and the depth caption
            if (s, ex.task) == ("think", "vqa"):
                out[f"{s}:close"] = float(close_text(it.text, truth))
                out[f"{s}:step"] = float(close_text(vqa_step(it.text), vqa_step(truth)))
                if listed := vqa_inventory(truth):
                    out[f"{s}:listing"] = float(close_text(vqa_inventory(it.text), listed, metres=math.inf))
            if s == "depth_caption":
                out[f"{s}:close"] = float(close_text(it.text, truth))
                out.update({f"{s}:{k}": v for k, v in _listing_fidelity(it.text, truth).items()})
            if s == "think" and ex.task in ("vqa", "spatial"):
                said = stated_answer(it.text)
                out[f"{s}:answer"] = qa_accuracy([said or ""], [ex.answer])["scores"][0] if said else 0.0
                out[f"{s}:followed"] = (qa_accuracy([res.output.text or ""], [said])["scores"][0]
                                        if said else 0.0)
                if ex.task == "spatial":  # "that is: <option>. A. ...: no. B. ...: yes, so the answer is B."
                    named, opts = stated_option(it.text), ex.spec["options"]
                    out[f"{s}:option"] = float(named == ex.spec["answer_text"])
                    out[f"{s}:lookup"] = float(named in opts and said == LETTERS[opts.index(named)])
        elif s == "estimate_pose":
            p = pair_pose_scores(ex, parse_pose(it.text or ""))
            out[f"{s}:parsed"], out[f"{s}:auc@30"] = p["parsed"], p["auc@30"]
        elif s == "rollout_visual" and it.image is not None:
            if ex.task == "t2i":
                out[f"{s}:pass"] = float(check(it.image, ex.spec).passed)
            else:
                src = next(iter(inputs_of(ex).images.values()))
                out[f"{s}:psnr"] = psnr(np.clip(it.image, 0, 1), src)
        elif s == "synthesize_views" and it.image is not None:
            h, w = it.image.shape[0] // 2, it.image.shape[1] // 2
            tiles = {"up": it.image[:h, :w], "down": it.image[:h, w:], "left": it.image[h:, :w],
                     "right": it.image[h:, w:]}
            out[f"{s}:psnr"] = float(np.mean([psnr(np.clip(tiles[d], 0, 1), ex.views[f"look_{d}"].rgb)
                                              for d in VIEW_TAGS]))
    return out


def eval_world(task: str, pose_motions: Sequence[str] = ("orbit",), vqa_thought: str = "inventory",
               size: int = 32, revision: int = 1) -> WorldConfig:
    """The world `evaluate` samples `task` from: the benchmark's, or for pose other camera motions, or
    for vqa the focused thought (the questions, images and answers are the same: only the true thought
    the model's own is compared with changes), its images at `size` (the model's), of the world's
    `revision` (WorldConfig.revision: 1, the shipped tables' world, or 2, docs/world_audit.md's mends). A
    ValueError for unknown motions, thoughts or revisions, or for either option given to another task."""
    world = WorldConfig(size=size, pose_motions=tuple(pose_motions), vqa_thought=vqa_thought, revision=revision)
    if task != "pose" and world.pose_motions != ("orbit",):
        raise ValueError(f"--pose-motions applies to the pose task only, not {task}")
    if task != "vqa" and vqa_thought != "inventory":
        raise ValueError(f"--vqa-thought applies to the vqa task only, not {task}")
    return world


def check_scores_finite(scores: dict[str, Sequence[float]], seeds: Sequence[int], where: str) -> None:
    """A ValueError naming the metric, the example and its seed where a per-example score is NaN or
    infinite (a PSNR of identical images is inf; the mean and its interval would be too): bootstrap_ci's
    own error does not say which metric. `where` names the run (a task, an ablation row)."""
    for k, v in scores.items():
        bad = [i for i, x in enumerate(v) if not np.isfinite(x)]
        if bad:
            i = bad[0]
            raise ValueError(f"{where}: metric {k!r} is not finite for {len(bad)} of {len(v)} examples "
                             f"(first: example {i}, seed {seeds[i]}: {v[i]}); its mean and interval "
                             "would be meaningless")


def evaluate_seeds(make_engine, seeds: Sequence[int], task: str, n: int, seed_start: int,
                   plan: str | Sequence[str] | None = None, log=None, pose_motions: Sequence[str] = ("orbit",),
                   world_revision: int = 1) -> dict:
    """`evaluate` once per sampling seed (`make_engine(seed)` builds each run's engine), each example's
    scores averaged over the seeds: an image task's score then stands for the model rather than one draw
    of the sampler's noise, whose redraw moves a mean over 500 examples by as much as two models differ
    (docs/experiments.md, "How wide is an image task's noise?"). Intervals and paired comparisons are taken
    over the averaged per-example scores; texts and the pose fit are the first seed's."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("no sampling seeds given")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"sampling seeds must differ, got {seeds}")
    runs = []
    for s in seeds:
        runs.append(evaluate(make_engine(s), task, n, seed_start, plan, log=log, pose_motions=pose_motions,
                             world_revision=world_revision))
        runs[-1]["sampling_seeds"] = [s]
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    per = {k: [float(x) for x in np.mean([r["scores"][k] for r in runs], axis=0)] for k in first["scores"]}
    return {**first, "metrics": {k: bootstrap_ci(v) for k, v in per.items()}, "scores": per,
            "context_tokens": float(np.mean([r["context_tokens"] for r in runs])),
            "seconds": round(sum(r["seconds"] for r in runs), 1), "sampling_seeds": seeds}


def evaluate(engine: Engine, task: str, n: int, seed_start: int, plan: str | Sequence[str] | None = None,
             log=None, pose_motions: Sequence[str] = ("orbit",), world_revision: int = 1) -> dict:
    """Run `plan` on n examples of `task` (seeds seed_start ...) and summarise every score with its
    95 % bootstrap interval; per-example scores are kept for paired comparisons. `pose_motions`
    (pose only) draws the pairs from other camera motions than the orbits of the default benchmark;
    `world_revision` samples the examples from that revision of the world (`eval_world`)."""
    if task not in EVAL_TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(EVAL_TASKS)}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    # a 64-px model sees 64-px worlds
    world = eval_world(task, pose_motions, size=engine.model.cfg.image_size, revision=world_revision)
    split = split_of_range(seed_start, n)
    examples = sample(task, range(seed_start, seed_start + n), world)
    per: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    steps = None
    tokens = []
    texts = []
    for i, ex in enumerate(examples):
        res = engine.run(inputs_of(ex), plan)
        steps = res.plan
        texts.append(texts_of(res))
        tokens.append(sum(it.tokens for it in res.items) + res.output.tokens)
        for k, v in score(ex, res).items():
            per.setdefault(k, []).append(v)
        if log and (i + 1) % max(1, n // 10) == 0:
            log(f"{task}: {i + 1}/{n}")
    check_scores_finite(per, range(seed_start, seed_start + n), task)
    metrics = {k: bootstrap_ci(v) for k, v in per.items()}
    fit = {"pose_fit": pose_fit(examples, [t and t["output"] for t in texts])} if task == "pose" else {}
    return {"task": task, "plan": steps, "n": n, "seed_start": seed_start, "split": split, "metrics": metrics,
            "scores": per, "context_tokens": float(np.mean(tokens)), "seconds": round(time.perf_counter() - t0, 1),
            **({"texts": texts} if any(texts) else {}), **fit,
            **({"pose_decoder": engine.pose_decoder} if engine.model.cfg.pose_head else {}),
            **({"flow_start": engine.flow_start} if task in SOURCE_VIEW and engine.flow_start != 1 else {}),
            **({"pose_motions": list(world.pose_motions)} if world.pose_motions != ("orbit",) else {}),
            **({"world_revision": world.revision} if world.revision != 1 else {})}
