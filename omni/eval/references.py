"""Model-free reference scores on the same held-out examples `omni eval` uses: what a model must beat
to be "above chance". Each is scored by the same code as the model (omni.eval.run.score's metrics).

    vqa       the most frequent answer of each question kind on training seeds (a prior that sees
              the question's kind, not the image)
    spatial   the most frequent option letter on training seeds (uniform chance is 25 %); and
              `accuracy_option_prior`: of the four options offered, the one that is the answer most
              often on training seeds for the question's type (a prior that reads the options, not the
              images: in revision 1 camera_object's answer is never behind the camera, so it picks among two)
    t2i       the checker on the ground-truth render of another test prompt of the same category
              (an image of the right kind, not of this prompt)
    depth     every pixel at the mean ground-truth depth of training images (metric, no alignment)
    pose      the best constant guess: the one relative pose, among half the training pairs', that
              scores the best AUC@30 on the other half, given to every test pair whatever its images
              (an image-blind prior; "it did not move", the identity, scores 0: rotation and translation
              direction errors are those of the same guess)
    nvs, video, edit   copying the input image (`copy_psnr` in the task's own scores)

    python -m omni.eval.references [--n 500] [--seed-start 2000000000] [--train 2000] [--world-revision 1]

In the world's revision 2 (docs/world_audit.md) camera_object's answers lie in all four quadrants, and the
options' prior falls to chance (25.2 % on the 500 test examples, against 35.8 % in revision 1).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict

import numpy as np

from omni.world import WorldConfig, sample
from omni.world.tasks import split_of_range

from .checker import check
from .metrics import bootstrap_ci, depth_metrics, psnr, qa_accuracy
from .run import pair_pose_scores


def held_out(seed_start: int, n: int, n_train: int) -> None:
    """A ValueError unless the scored seeds lie in the val or test split (never the training seeds 0..n_train-1
    a reference is fit on: scored there, the VQA prior answered every question right)."""
    split = split_of_range(seed_start, n)
    if split == "train":
        raise ValueError(f"seeds {seed_start}..{seed_start + n - 1} are training seeds: score on the val or test "
                         f"split (the reference is fit on seeds 0..{n_train - 1})")


def references(n: int = 500, seed_start: int = 2_000_000_000, n_train: int = 2000, revision: int = 1) -> dict:
    """Every reference's per-example scores on n held-out examples from seed_start, fit on training seeds
    0..n_train-1, in the world's `revision` (WorldConfig.revision; pose, depth and the copies are the same
    in both: revision 2 changes vqa, t2i and spatial only)."""
    world = WorldConfig(revision=revision)
    held_out(seed_start, n, n_train)
    test = range(seed_start, seed_start + n)
    train = range(0, n_train)
    out: dict[str, dict] = {}

    tr = sample("vqa", train, world)
    prior: dict[str, Counter] = defaultdict(Counter)
    for ex in tr:
        prior[ex.spec["kind"]][ex.answer] += 1
    te = sample("vqa", test, world)
    preds = [prior[ex.spec["kind"]].most_common(1)[0][0] if prior[ex.spec["kind"]] else "" for ex in te]
    out["vqa"] = {"accuracy": qa_accuracy(preds, [ex.answer for ex in te])["scores"]}

    out["spatial"] = spatial_priors(train, test, world)

    te = sample("t2i", test, world)
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(te):
        by_cat[ex.spec["category"]].append(i)
    passed, soft = [], []
    for i, ex in enumerate(te):
        same = by_cat[ex.spec["category"]]
        j = same[(same.index(i) + 1) % len(same)]  # the next test prompt of the same category
        r = check(te[j].views["target"].rgb, ex.spec)
        passed.append(float(r.passed))
        soft.append(r.score)
    out["t2i"] = {"pass": passed, "score": soft}

    mean_depth = float(np.mean([ex.views["image"].depth[ex.views["image"].valid].mean()
                                for ex in sample("depth", range(0, min(n_train, 500)))]))
    d1, ar = [], []
    for ex in sample("depth", test):
        v = ex.views["image"]
        m = depth_metrics(np.full_like(v.depth, mean_depth), v.depth, mask=v.valid)
        d1.append(m["delta1"])
        ar.append(m["abs_rel"])
    out["depth"] = {"delta1": d1, "abs_rel": ar}

    out["pose"] = _pose_prior(range(0, min(n_train, 300)), test)

    for task, (src, tgt) in {"nvs": ("source", "target"), "video": ("frame0", "frame1"),
                             "edit": ("before", "after")}.items():
        out[task] = {"psnr": [psnr(ex.views[src].rgb, ex.views[tgt].rgb) for ex in sample(task, test)]}
    return {"n": n, "seed_start": seed_start, "train_seeds": n_train, **({"world_revision": revision} if revision != 1
                                                                        else {}),
            "metrics": {t: {k: bootstrap_ci(v) for k, v in m.items()} for t, m in out.items()}}


def spatial_priors(train: range, test: range, world: WorldConfig) -> dict[str, list[float]]:
    """The spatial references' per-example scores on `test`: the most frequent letter on `train`
    ("accuracy"), and the option most often the answer of the question's type ("accuracy_option_prior")."""
    tr = sample("spatial", train, world)
    letter = Counter(ex.answer for ex in tr).most_common(1)[0][0]
    answers: dict[str, Counter] = defaultdict(Counter)
    for ex in tr:
        answers[ex.spec["qtype"]][ex.spec["answer_text"]] += 1
    te = sample("spatial", test, world)
    # ties (and options never the answer) go to the first offered: max keeps the first of equals
    picked = [max(ex.spec["options"], key=lambda o, c=answers[ex.spec["qtype"]]: c[o]) for ex in te]
    return {"accuracy": qa_accuracy([letter] * len(te), [ex.answer for ex in te])["scores"],
            "accuracy_option_prior": [float(o == ex.spec["answer_text"]) for o, ex in zip(picked, te, strict=True)]}


def best_constant_pose(train: range) -> np.ndarray:
    """The relative pose, among the first half of `train`'s pairs, that scores the best mean AUC@30 on
    the second half when guessed for every pair (ties: the first)."""
    pairs = sample("pose", train)
    half = len(pairs) // 2
    if half < 1:
        raise ValueError(f"the constant pose needs at least 2 training pairs, got {len(pairs)}")
    cands = [np.asarray(ex.spec["relative_pose"]["matrix"], dtype=np.float64) for ex in pairs[:half]]
    fit = pairs[half:]
    aucs = [np.mean([pair_pose_scores(ex, T)["auc@30"] for ex in fit]) for T in cands]
    return cands[int(np.argmax(aucs))]


def _pose_prior(train: range, test: range) -> dict[str, list[float]]:
    T = best_constant_pose(train)
    per = [pair_pose_scores(ex, T) for ex in sample("pose", test)]
    return {k: [p[k] for p in per] for k in ("auc@30", "rre", "rte")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed-start", type=int, default=2_000_000_000)
    ap.add_argument("--train", type=int, default=2000, help="training seeds the priors are counted on")
    ap.add_argument("--world-revision", type=int, default=1, help="the world's revision (1: the shipped tables')")
    a = ap.parse_args(argv)
    if a.n <= 0 or a.train <= 0:
        ap.error("--n and --train must be positive")
    try:
        print(json.dumps(references(a.n, a.seed_start, a.train, a.world_revision)))
    except (ValueError, TypeError) as e:  # one line, as argparse's own errors (it was a traceback)
        ap.error(str(e))


if __name__ == "__main__":
    main()
