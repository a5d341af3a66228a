"""A learned reference for relative pose and for the objects' shapes: what a small network, trained on
nothing but the world's pose pairs (or VQA images' shapes), reads from the same 32 x 32 pixels the
model sees. It tells "the pixels do not carry it at this resolution" from "the model has not learned
to read it": omni-tiny's pose texts are a near-constant guess (`pose_fit` in `omni eval pose`), and
this probe is scored by the same code on the same held-out pairs.

The network sees the two views stacked as 6 channels and regresses the pose text's six numbers
(`tx ty tz rx ry rz`: translation, axis-angle), standardised on its training pairs, with an MSE loss.
`--arch vit` trains instead a small transformer that sees the views as omni does, 4 x 4 pixel patches
through a linear map plus a learned embedding of each patch's cell (and of its view), the two views'
128 tokens attending to one another; `--arch vit-stacked` gives each cell's token both views' patches
(omni's `pair_cond`); `--arch vit-conv` puts an early-convolution stem before each view's patches. Same
data, loss and schedule: whether omni's way of seeing two images, not its training, is what keeps it
from the pose.

`--task shape` trains the same networks (one view: 3 channels, or one view's tokens) on VQA images
to name, for each of the world's colours, the shape of the one object of that colour (a colour no
object or two objects have is not asked): the inventory's "a small purple cone" without the words
around it, and VQA's "what shape is the purple object?". Scored on the held-out images: `shape`, the
share of an image's asked colours whose shape is right, and `all shapes`, every one right; beside
them `majority`, the training images' commonest shape for every colour (what a prior gets). Whether
the pixels carry the shapes omni's inventory gets wrong half the time (docs/experiments.md, "What the
thought is worth where its inventory is right"), and whether omni's 4 x 4 linear patches do.

    python -m omni.eval.probe [--task pose|shape] [--arch cnn|vit|vit-stacked|vit-conv] [--train 20000]
                              [--steps 3000] [--n 500] [--seed 0] [--threads 1] [--lr 2e-3] [--batch 64]
                              [--width 128 --layers 4 --heads 4]

prints one JSON object: for pose the metrics of `omni eval pose` (AUC@30, rotation and translation-direction
errors, with 95 % intervals) and `pose_fit`, for shape the metrics above; and the run's settings and seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

import numpy as np
import torch
from torch import nn

from omni.tokens.image import patchify
from omni.world import sample
from omni.world.camera import axis_angle_to_matrix, pose_to_numbers
from omni.world.scene import COLORS, SHAPES

from .metrics import bootstrap_ci
from .references import held_out
from .run import pair_pose_scores, pose_fit


def pose_pairs(seeds: range) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(n, 6, H, W) the two views stacked, (n, 6) their relative pose numbers, and the examples."""
    exs = sample("pose", seeds)
    x = np.stack([np.concatenate([e.views["view1"].rgb, e.views["view2"].rgb], -1) for e in exs])
    y = np.array([pose_to_numbers(np.asarray(e.spec["relative_pose"]["matrix"], dtype=np.float64)) for e in exs])
    return torch.from_numpy(x).float().permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).float(), exs


def shape_images(seeds: range) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(n, 3, H, W) VQA images, (n, len(COLORS)) per colour the index in SHAPES of the one object of that
    colour (-1: no object has it, or two do), and the examples."""
    exs = sample("vqa", seeds)
    x = np.stack([e.views["image"].rgb for e in exs])
    y = np.full((len(exs), len(COLORS)), -1, dtype=np.int64)
    for i, e in enumerate(exs):
        objs = e.scenes[e.views["image"].scene].objects
        for c, colour in enumerate(COLORS):
            have = [o.shape for o in objs if o.color == colour]
            if len(have) == 1:
                y[i, c] = SHAPES.index(have[0])
    return torch.from_numpy(x).float().permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y), exs


# per task: input channels (a view's 3 each), views, outputs (pose: six numbers; shape: a shape's logits per colour)
TASKS = {"pose": {"channels": 6, "views": 2, "outputs": 6},
         "shape": {"channels": 3, "views": 1, "outputs": len(COLORS) * len(SHAPES)}}


class PoseNet(nn.Module):
    """Four stride-2 convolutions (32 -> 2 pixels) and a two-layer head: about 0.4 M parameters. Named
    for the task it was written for; `channels` and `outputs` fit it to another (TASKS)."""

    def __init__(self, width: int = 32, channels: int = 6, outputs: int = 6):
        super().__init__()
        w = width
        layers, c = [], channels
        for out in (w, 2 * w, 4 * w, 4 * w):
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.GELU()]
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * 4, 256), nn.GELU(), nn.Linear(256, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class PoseViT(nn.Module):
    """Two views as omni's tokens: p x p patches (row-major cells) through a linear map, plus learned
    cell and view embeddings; pre-norm transformer layers over both views' tokens; the mean token to
    the six numbers. stacked: one token per cell holding both views' patches (omni's pair_cond).
    views and outputs fit it to another task (TASKS: shape sees one view)."""

    def __init__(self, size: int = 32, patch: int = 4, width: int = 128, layers: int = 4, heads: int = 4,
                 stacked: bool = False, conv: int = 0, views: int = 2, outputs: int = 6):
        super().__init__()
        if width % heads:
            raise ValueError(f"--width {width} is not a multiple of --heads {heads}")
        if stacked and views != 2:
            raise ValueError("a stacked probe stacks two views; this task has one")
        self.patch, self.stacked, self.views = patch, stacked, views
        cells = (size // patch) ** 2
        c = 6 if stacked else 3
        self.embed = nn.Linear(patch * patch * c, width)
        # conv > 0: an early-convolution stem (Xiao et al. 2021) of two 3 x 3 convolutions of `conv`
        # channels, full resolution, before the patches; a patch token then sees its neighbours' edges
        self.stem = (nn.Sequential(nn.Conv2d(c, conv, 3, padding=1), nn.GELU(), nn.Conv2d(conv, c, 3, padding=1))
                     if conv else None)
        self.cell = nn.Parameter(torch.randn(cells, width) * 0.02)
        self.view = nn.Parameter(torch.zeros(1 if stacked else views, 1, width))
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, outputs))

    def tokens(self, img: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, cells, p * p * C), cells and each patch row-major (omni's patchify)."""
        return patchify(img.permute(0, 2, 3, 1), self.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stem is not None:
            x = x + self.stem(x) if self.stacked else torch.cat([v + self.stem(v) for v in x.split(3, 1)], 1)
        if self.stacked:
            h = self.embed(self.tokens(x)) + self.cell + self.view[0]
        else:
            h = torch.cat([self.embed(self.tokens(x[:, 3 * v:3 * v + 3])) + self.cell + self.view[v]
                           for v in range(self.views)], dim=1)
        return self.head(self.layers(h).mean(1))


ARCHS = {"cnn": PoseNet, "vit": PoseViT, "vit-stacked": partial(PoseViT, stacked=True),
         "vit-conv": partial(PoseViT, conv=32)}
VIT_SIZES = ("width", "layers", "heads")  # what --width, --layers and --heads set in the vit probes


def probe(n_train: int = 20_000, steps: int = 3000, n: int = 500, seed: int = 0, seed_start: int = 2_000_000_000,
          batch: int = 64, lr: float = 2e-3, log=None, arch: str = "cnn", size: dict | None = None,
          task: str = "pose") -> dict:
    """Train the probe network `arch` (PoseNet, or PoseViT whole or stacked) on `task`'s training seeds
    0..n_train-1 (pose pairs, or VQA images' shapes) and score it on n held-out ones. size: a PoseViT's
    width, layers and heads over its defaults (e.g. omni-tiny's 256, 6, 4)."""
    size = {k: v for k, v in (size or {}).items() if v is not None}
    if task not in TASKS:
        raise ValueError(f"unknown --task {task!r}; known: {', '.join(TASKS)}")
    for name, v in (("--train", n_train), ("--steps", steps), ("--n", n), ("--batch", batch),
                    *((f"--{k}", v) for k, v in size.items())):
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
    if n_train < 2:  # one pair's standard deviation is NaN: every prediction was NaN, refused only when scored
        raise ValueError(f"--train must be at least 2 (the pose numbers are standardised over the training "
                         f"pairs), got {n_train}")
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; known: {', '.join(ARCHS)}")
    if set(size) - set(VIT_SIZES) or (size and arch == "cnn"):
        raise ValueError(f"size {sorted(size)}: the vit probes take {', '.join(VIT_SIZES)}; the cnn none")
    if not 0 < lr < float("inf"):
        raise ValueError(f"--lr must be a positive number, got {lr}")
    held_out(seed_start, n, n_train)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    shape = TASKS[task]
    # before the data are rendered: a size (or a stacked shape probe) PoseViT refuses costs nothing
    net = (ARCHS[arch](channels=shape["channels"], outputs=shape["outputs"]) if arch == "cnn" else
           ARCHS[arch](**size, views=shape["views"], outputs=shape["outputs"]))
    if task == "pose":
        x, y, _ = pose_pairs(range(0, n_train))
        mean, std = y.mean(0), y.std(0).clamp_min(1e-6)
        y = (y - mean) / std

        def loss_of(out, target):
            return nn.functional.mse_loss(out, target)
    else:
        x, y, _ = shape_images(range(0, n_train))

        def loss_of(out, target):  # each asked colour's shape; the colours not asked are ignored
            return nn.functional.cross_entropy(out.reshape(-1, len(SHAPES)), target.reshape(-1), ignore_index=-1)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    # a 5 % warmup; OneCycleLR divides by zero where that is one step exactly (--steps 20), so two there
    warm = 0.05 if steps != 20 else 0.1
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=warm)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, n_train, (batch,), generator=g)
        loss = loss_of(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log and (step + 1) % max(1, steps // 10) == 0:
            log(f"probe: step {step + 1}/{steps}, loss {np.mean(losses[-100:]):.4f}")
    run = {"arch": arch, **({"size": size} if size else {}), "batch": batch, "lr": lr,
           "parameters": sum(p.numel() for p in net.parameters()), "n": n, "seed_start": seed_start}
    net.eval()
    if task == "shape":
        xt, yt, _ = shape_images(range(seed_start, seed_start + n))
        with torch.no_grad():
            said = net(xt).reshape(len(xt), len(COLORS), len(SHAPES)).argmax(-1)
        commonest = torch.bincount(y[y >= 0], minlength=len(SHAPES)).argmax()
        asked = yt >= 0
        keep = asked.any(1)  # an image whose colours are all shared asks nothing
        per = {"shape": ((said == yt) & asked).sum(1)[keep] / asked.sum(1)[keep],
               "all shapes": ((said == yt) | ~asked).all(1)[keep].float(),
               "majority": ((yt == commonest) & asked).sum(1)[keep] / asked.sum(1)[keep]}
        per = {k: v.double().tolist() for k, v in per.items()}
        return {"task": "shape", "reference": f"{type(net).__name__} (omni.eval.probe --task shape --arch {arch}) "
                                              "trained on VQA images' shapes only",
                **run, "train_images": n_train, "scored_images": int(keep.sum()), "asked": int(asked.sum()),
                "steps": steps, "seed": seed, "train_loss_last100": float(np.mean(losses[-100:])),
                "metrics": {k: bootstrap_ci(v) for k, v in per.items()}, "scores": per,
                "seconds": round(time.perf_counter() - t0, 1)}
    xt, _, exs = pose_pairs(range(seed_start, seed_start + n))
    with torch.no_grad():
        pred = (net(xt) * std + mean).double().numpy()
    texts, per = [], {}
    for ex, p in zip(exs, pred, strict=True):
        T = np.eye(4)
        T[:3, :3] = axis_angle_to_matrix(p[3:])
        T[:3, 3] = p[:3]
        texts.append(" ".join(f"{v:.3f}" for v in p))
        for k, v in pair_pose_scores(ex, T).items():
            per.setdefault(k, []).append(v)
    return {"task": "pose",
            "reference": f"{type(net).__name__} (omni.eval.probe --arch {arch}) trained on pose pairs only",
            **run, "train_pairs": n_train, "steps": steps, "seed": seed,
            "train_loss_last100": float(np.mean(losses[-100:])),
            "metrics": {k: bootstrap_ci(v) for k, v in per.items() if k != "parsed"},
            "scores": {k: v for k, v in per.items() if k != "parsed"},
            "pose_fit": pose_fit(exs, texts), "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=list(TASKS), default="pose",
                    help="pose: two views' relative pose; shape: each colour's object's shape in a VQA image")
    ap.add_argument("--train", type=int, default=20_000, help="training pose pairs or images (seeds 0..)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--n", type=int, default=500, help="held-out pairs or images scored")
    ap.add_argument("--seed-start", type=int, default=2_000_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arch", choices=list(ARCHS), default="cnn")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=64, help="pairs per step")
    for k in VIT_SIZES:
        ap.add_argument(f"--{k}", type=int, help=f"the vit probes' {k} (default: PoseViT's)")
    a = ap.parse_args(argv)
    if min(a.train, a.steps, a.n, a.threads, a.batch) <= 0:
        ap.error("--train, --steps, --n, --threads and --batch must be positive")
    torch.set_num_threads(a.threads)
    try:
        print(json.dumps(probe(a.train, a.steps, a.n, a.seed, a.seed_start, lr=a.lr, arch=a.arch, batch=a.batch,
                               size={k: getattr(a, k) for k in VIT_SIZES}, task=a.task,
                               log=lambda m: print(m, file=sys.stderr))))
    except ValueError as e:  # one line, as argparse's own errors (it was a traceback)
        ap.error(str(e))


if __name__ == "__main__":
    main()
