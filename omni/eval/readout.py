"""What omni's hidden states carry, layer by layer: linear probes on the VQA thought's sequences.

`vqa_thought_steps` shows the inventory's colour words right 15-22 % of the time given the true
thought before them (chance 12.5 %). That is either the image tokens not holding the objects'
colours, or the text not reading them out. This module separates the two. It runs the model,
teacher-forced, on the world's VQA think sequences (image, question, the true inventory thought),
keeps the residual stream after the embedding (layer 0) and after each layer, and fits one linear
classifier (multinomial logistic regression) per layer and target on training seeds, scored on
held-out seeds:

- image patches (the 4 x 4-pixel image tokens): "patch object" (does an object cover most of the
  patch), and over those patches the covering object's "patch colour", "patch shape" and "patch size";
  the same classifiers on the patch's raw pixels are the reference (what a linear map of the input
  already reads);
- the thought's text: at the token that predicts each listed object's size, colour, shape and
  position word (and the number of objects), what that word is. Here the model's own LM head,
  restricted to the words of that kind, is the reference (it is a linear readout of the last layer),
  and so is the same probe with another example's image in place of the example's own (the text
  unchanged): what the probe reads without the image is a text prior;
- the relation step's x centres ("the purple cone is centred at x 9 and the blue cylinder at x 30"):
  at the token that predicts each number's first digit, the patch column the named object's x centre
  lies in ("x column"); the LM head's reference is its first digit (digits are tokens of their own,
  so "3" begins 3 and 30 alike);
- where the thought's tokens look: each layer's attention at those tokens, recomputed from the
  layer's input, its mass on the image and the share of that on the patches of the object whose
  word comes next (against the object's share of the image: looking everywhere alike), over the
  heads' mean and in each head (one head that finds the object shows there before it moves the mean).

    omni eval readout --checkpoint DIR [--train 1000] [--n 500] [--json]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from omni.model import OmniModel, pack
from omni.model.config import IMAGE_IN
from omni.model.transformer import apply_rope
from omni.tokens.image import patchify
from omni.train.data import Writer
from omni.world import language as L
from omni.world import sample
from omni.world.render import ID_GROUND, ID_SKY
from omni.world.scene import COLORS, SHAPES, SIZES
from omni.world.tasks import LEFT_RIGHT_X, split_of_range

from .context_use import _vqa_thought_sequence
from .metrics import bootstrap_ci
from .run import eval_world

PATCH_TARGETS = ("patch object", "patch colour", "patch shape", "patch size")
TEXT_TARGETS = ("count", "size", "colour", "shape", "position")  # vqa_thought_pieces' names
X_TARGET = "x column"  # the left_right step's x centres, by the patch column they lie in (none in revision 3's steps)
POSITIONS = ("on the left", "in the center", "on the right")
CLASSES = {"patch object": ("background", "object"), "patch colour": COLORS, "patch shape": SHAPES,
           "patch size": SIZES, "size": SIZES, "colour": COLORS, "shape": SHAPES, "position": POSITIONS,
           "count": tuple(str(k) for k in range(1, 11))}


def _x_targets(ex) -> list[tuple[int, int]]:
    """A left_right example's two stated x centres, in the step's order, each with the index of the object
    it belongs to (-1 where the name is not one object's), from its true thought; [] for other questions."""
    m = LEFT_RIGHT_X.search(ex.texts["thinking"]) if ex.spec.get("kind") == "left_right" else None
    if not m:
        return []
    names: dict[str, list[int]] = {}
    for st in ex.stats("image"):
        names.setdefault(st.obj.name, []).append(st.index)
    return [(int(m[j + 1]), names[m[j]][0] if len(names.get(m[j], [])) == 1 else -1) for j in (1, 3)]


def _patch_labels(ex, patch: int) -> np.ndarray:
    """(n_patches, 4) per image token (row-major): the index of the object covering at least half its
    pixels in the example's scene (-1: none), and that object's colour, shape and size indices (-1)."""
    view = ex.views["image"]
    objs = ex.scenes[view.scene].objects
    ids = view.ids.astype(np.int64)
    H, W = ids.shape
    cells = ids.reshape(H // patch, patch, W // patch, patch).transpose(0, 2, 1, 3).reshape(-1, patch * patch)
    out = np.full((len(cells), 4), -1, dtype=np.int64)
    for c, px in enumerate(cells):
        px = px[(px != ID_SKY) & (px != ID_GROUND)]
        if len(px) * 2 < patch * patch:
            continue
        k = int(np.bincount(px).argmax())
        if (px == k).sum() * 2 < patch * patch:
            continue
        o = objs[k]
        out[c] = (k, COLORS.index(o.color), SHAPES.index(o.shape), SIZES.index(o.size))
    return out


@torch.no_grad()
def _queries_keys(model: OmniModel, inputs: list[tuple]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer, from its input, the rotated queries and keys (B, H, L, dh) and the mask (B, 1, L, L)
    as the understanding expert computes them (every token of a VQA sequence is the understanding
    expert's)."""
    cfg = model.cfg
    H, dh = cfg.n_heads, cfg.head_dim
    out = []
    for layer, (x, r) in zip(model.layers, inputs, strict=True):
        e = layer.experts[0]
        B, L, _ = x.shape
        q, k, _ = e.qkv(e.norm1(x)).reshape(B, L, 3, H, dh).unbind(2)
        q, k = (apply_rope(t.transpose(1, 2), r.cos, r.sin) for t in (e.q_norm(q), e.k_norm(k)))
        out.append((q, k, r.mask))
    return out


def _attention_at(qk: list[tuple], row: int, p: int, keys: torch.Tensor) -> torch.Tensor:
    """(layers, heads, len(keys)) each head's attention weight of the token at (row, p) on the tokens
    `keys` of its row (`_queries_keys`' layers)."""
    out = []
    for q, k, mask in qk:
        logits = torch.einsum("hd,hld->hl", q[row, :, p], k[row]) / q.shape[-1] ** 0.5
        logits = logits.masked_fill(~mask[row, 0, p][None], float("-inf"))
        out.append(logits.softmax(-1)[:, keys].float().cpu())
    return torch.stack(out)


def _look(f: dict, heads: torch.Tensor, labels: np.ndarray, k_obj: int | None) -> None:
    """Where a token looks, from its attention on the image's patches (layers, heads, n_patches): appended
    to f's "image mass" and, for an object k_obj, the share of that mass on its patches ("object mass",
    over the heads' mean; "object mass by head") and its patches' share of the image ("object share")."""
    att = heads.mean(1)
    f["image mass"].append(att.sum(1)[None])
    if k_obj is not None:
        on = torch.from_numpy(labels[:, 0] == k_obj)
        f["object mass"].append((att[:, on].sum(1) / att.sum(1).clamp_min(1e-12))[None])
        f["object mass by head"].append((heads[:, :, on].sum(2) / heads.sum(2).clamp_min(1e-12))[None])
        f["object share"].append(torch.tensor([float(on.float().mean())]))


@torch.no_grad()
def collect(model: OmniModel, seeds: Sequence[int], batch: int = 8, other_image: bool = False,
            attention: bool = False, revision: int = 1) -> dict:
    """The residual stream (layer 0 = the embedding, then after each layer) at the VQA think sequences'
    image tokens and at the thought's named tokens, for the examples of `seeds`, with their labels.
    other_image: each example's image replaced by the next one's (the last takes the first's); the
    labels stay the example's own (for text) and the shown image's (for patches). attention (own
    image only): also where each listed word's token looks, per layer: its attention mass on the
    image ("image mass") and, for a listed object's size, colour and shape, the share of that mass
    on the patches the object covers ("object mass") and those patches' share of the image ("object
    share": what looking everywhere alike would give), and that share in each head ("object mass by
    head"). revision: the world's (WorldConfig.revision).
    Returns {"patch": {"x": (N, layers + 1, d), "pixels": (N, p*p*3), "y": (N, 4)},
             name: {"x": (M, layers + 1, d), "y": (M,), "lm": (M,) the LM head's choice among the
             kind's words, "image mass": (M, layers), "object mass": (M', layers), "object mass by
             head": (M', layers, heads), "object share": (M',), the last four empty without attention}
             for each of TEXT_TARGETS}."""
    model = model.eval()
    cfg = model.cfg
    w = Writer(model.tokenizer, model.visual, cfg)
    exs = sample("vqa", list(seeds), eval_world("vqa", size=cfg.image_size, revision=revision))
    device = next(model.parameters()).device
    grabbed: list[torch.Tensor] = []
    inputs: list[tuple] = []  # each layer's (x, routing): its attention is recomputed at the probed tokens
    hooks = [layer.register_forward_hook(lambda m, i, o: grabbed.append(o.detach())) for layer in model.layers]
    hooks += [layer.register_forward_pre_hook(lambda m, i: inputs.append((i[0].detach(), i[1])))
              for layer in model.layers]
    words = {name: [w.tok.encode(" " + c)[-1] for c in CLASSES[name]] for name in TEXT_TARGETS}
    text_keys = ("x", "y", "lm", "image mass", "object mass", "object mass by head", "object share")
    feats: dict[str, dict[str, list]] = {"patch": {"x": [], "pixels": [], "y": []},
                                         **{name: {k: [] for k in text_keys} for name in (*TEXT_TARGETS, X_TARGET)}}
    digits = [w.tok.encode(str(k))[-1] for k in range(10)]
    try:
        for lo in range(0, len(exs), batch):
            chunk = exs[lo:lo + batch]
            shown = [exs[(lo + i + 1) % len(exs)] if other_image else ex for i, ex in enumerate(chunk)]
            seqs, spans = [], []
            for ex, im in zip(chunk, shown, strict=True):
                seq, span = _vqa_thought_sequence(w, ex, im if other_image else None)
                seqs.append(seq)
                spans.append(span)
            b = pack(seqs, cfg).to(device)
            grabbed.clear()
            inputs.clear()
            hN = model(b)  # the final (normalised) states the LM head reads
            hs = torch.stack([inputs[0][0], *grabbed], 2).float().cpu()  # (B, L, layers + 1, d): the embedding first
            looks = attention and not other_image
            qk = _queries_keys(model, inputs) if looks else None
            listed = [[st.index for st in L.by_position(ex.stats("image"))] for ex in chunk] if looks else None
            for i, im in enumerate(shown):
                row, start, length = b.where[i]
                span = slice(start, start + length)
                kind = b.kind[row, span].cpu()
                at = torch.nonzero(kind == IMAGE_IN).squeeze(1) + start
                cells = b.cell[row, at].cpu().numpy()
                labels = _patch_labels(im, cfg.patch)[cells]
                feats["patch"]["x"].append(hs[row, at.cpu()])
                pix = torch.from_numpy(im.views["image"].rgb).float()
                feats["patch"]["pixels"].append(patchify(pix[None], cfg.patch)[0][cells])
                feats["patch"]["y"].append(torch.from_numpy(labels))
                loss_at = (torch.nonzero(b.target[row, span] >= 0).squeeze(1) + start).cpu()
                n_listed = dict.fromkeys(TEXT_TARGETS, 0)
                xs = _x_targets(chunk[i])  # the step's x centres, in order (left_right only)
                prev = ""
                k = 0
                for size, what in spans[i]:
                    p = int(loss_at[k + size - 1])  # the position that predicts the piece's last token
                    word = w.tok.decode(b.target[row, loss_at[k:k + size]].tolist()).strip()
                    if what in TEXT_TARGETS and word in CLASSES[what]:
                        label = CLASSES[what].index(word)
                        feats[what]["x"].append(hs[row, p][None])
                        feats[what]["y"].append(torch.tensor([label]))
                        lm = model.logits(hN[row, p][None], slice(None))[0, words[what]].argmax()
                        feats[what]["lm"].append(lm.cpu()[None])
                        if looks:  # where it looks: its object's patches, the image's
                            k_obj = listed[i][n_listed[what]] if what in ("size", "colour", "shape") else None
                            _look(feats[what], _attention_at(qk, row, p, at), labels, k_obj)
                            n_listed[what] += 1
                    if what == "step" and prev == "x" and xs and size >= 2:  # " 9": " " then the digits
                        x_c, k_obj = xs.pop(0)
                        q = int(loss_at[k + 1])  # the position that predicts the number's first digit
                        f = feats[X_TARGET]
                        f["x"].append(hs[row, q][None])
                        f["y"].append(torch.tensor([min(x_c // cfg.patch, cfg.patch_grid - 1)]))
                        first = model.logits(hN[row, q][None], slice(None))[0, digits].argmax()
                        f["lm"].append(torch.tensor([int(first) == int(str(x_c)[0])]))
                        if looks:
                            _look(f, _attention_at(qk, row, q, at), labels, k_obj if k_obj >= 0 else None)
                    prev = word
                    k += size
    finally:
        for hk in hooks:
            hk.remove()
    out = {}
    for name, parts in feats.items():
        out[name] = {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}
    return out


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-3, iters: int = 200) -> torch.nn.Linear:
    """A multinomial logistic regression on standardised x (full-batch L-BFGS, deterministic); the
    standardisation is folded into the returned linear map."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    lin = torch.nn.Linear(x.shape[1], n_classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=iters, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(z), y) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        w = lin.weight / sd
        b = lin.bias - (lin.weight * (mu / sd)).sum(1)
        out = torch.nn.Linear(x.shape[1], n_classes)
        out.weight.copy_(w)
        out.bias.copy_(b)
    return out


def _probe_scores(train_x, train_y, test_x, test_y, n_classes) -> dict:
    probe = fit_probe(train_x, train_y, n_classes)
    with torch.no_grad():
        hit = (probe(test_x).argmax(-1) == test_y).float().numpy()
    return bootstrap_ci(hit.tolist())


def _targets(data: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """target -> (features (N, layers + 1, d), labels, raw pixels or None) over the examples it has."""
    p = data["patch"]
    obj = p["y"][:, 0] >= 0
    out = {"patch object": (p["x"], obj.long(), p["pixels"])}
    for j, name in enumerate(("patch colour", "patch shape", "patch size"), start=1):
        out[name] = (p["x"][obj], p["y"][obj, j], p["pixels"][obj])
    for name in (*TEXT_TARGETS, X_TARGET):
        out[name] = (data[name]["x"], data[name]["y"], None)
    return out


def check_seeds(n_train: int, n: int, train_start: int, seed_start: int) -> None:
    """Each range in one split, the two in different ones, at least 2 examples in each, and the held-out
    ones not training seeds (the model was trained on those: probes scored there read what it memorised)."""
    if n_train < 2 or n < 2:
        raise ValueError(f"the probes need at least 2 training and 2 held-out examples, got {n_train} and {n}")
    held = split_of_range(seed_start, n)
    if split_of_range(train_start, n_train) == held:
        raise ValueError("the probes' training seeds and held-out seeds must lie in different splits")
    if held == "train":
        raise ValueError(f"the probes' held-out seeds {seed_start}..{seed_start + n - 1} are training seeds, which "
                         "the model was trained on: score them on the val or test split (--seed-start)")


def readout(model: OmniModel, n_train: int = 1000, n: int = 500, train_start: int = 0,
            seed_start: int = 2_000_000_000, batch: int = 8, revision: int = 1) -> dict:
    """Per target (PATCH_TARGETS, TEXT_TARGETS) and layer, a linear probe's held-out accuracy
    (bootstrap mean and 95 % interval), with its references: the majority class of the training
    labels, for patches the probe on raw pixels, for text the LM head's choice among the target's
    words and the probe with another example's image. Trains on n_train examples from train_start,
    scores n from seed_start (each range must lie in one split), on the world's `revision` (recorded
    as `world_revision` where it is not 1)."""
    check_seeds(n_train, n, train_start, seed_start)
    trains, tests = range(train_start, train_start + n_train), range(seed_start, seed_start + n)
    train = _targets(collect(model, trains, batch, revision=revision))
    test_data = collect(model, tests, batch, attention=True, revision=revision)
    test = _targets(test_data)
    train_o = _targets(collect(model, trains, batch, other_image=True, revision=revision))
    test_o = _targets(collect(model, tests, batch, other_image=True, revision=revision))
    layers = model.cfg.n_layers + 1
    res: dict = {"n_train": n_train, "n": n, "seed_start": seed_start, "train_start": train_start,
                 **({"world_revision": revision} if revision != 1 else {}),
                 "layers": list(range(layers)), "targets": {}}
    for name, (xtr, ytr, ptr) in train.items():
        xte, yte, pte = test[name]
        classes = CLASSES.get(name) or tuple(str(c) for c in range(model.cfg.patch_grid))  # the x columns
        k = len(classes)
        if len(ytr) < 2 or len(yte) < 1:
            continue
        major = int(torch.bincount(ytr, minlength=k).argmax())
        row = {"n train": len(ytr), "n test": len(yte), "classes": list(classes),
               "majority": bootstrap_ci((yte == major).float().tolist()),
               "layer": [_probe_scores(xtr[:, li], ytr, xte[:, li], yte, k) for li in range(layers)]}
        if ptr is not None:
            row["pixels"] = _probe_scores(ptr, ytr, pte, yte, k)
        else:
            lm = test_data[name]["lm"]  # the x column's: whether its first digit is right
            row["lm head"] = bootstrap_ci((lm if name == X_TARGET else lm == yte).float().tolist())
            xo, yo, _ = train_o[name]
            xoe, yoe, _ = test_o[name]
            row["other image"] = [_probe_scores(xo[:, li], yo, xoe[:, li], yoe, k) for li in range(layers)]
            d = test_data[name]  # where the token looks, per layer (layer 0's input is the embedding)
            row["image mass"] = [float(v) for v in d["image mass"].mean(0)]
            if len(d["object mass"]):
                row["object mass"] = [float(v) for v in d["object mass"].mean(0)]
                row["object mass by head"] = d["object mass by head"].mean(0).tolist()  # [layer][head]
                row["object share"] = float(d["object share"].mean())
        res["targets"][name] = row
    return res


def readout_markdown(res: dict) -> str:
    """One table: a row per target, the majority rate, the reference(s), then each layer's probe."""
    layers = res["layers"]
    head = ["target", "n test", "majority", "reference", *(f"layer {li}" for li in layers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in res["targets"].items():
        ref = (f"pixels {row['pixels']['mean']:.3f}" if "pixels" in row else f"LM head {row['lm head']['mean']:.3f}")
        cells = [f"{x['mean']:.3f}" for x in row["layer"]]
        lines.append(f"| {name} | {row['n test']} | {row['majority']['mean']:.3f} | {ref} | "
                     + " | ".join(cells) + " |")
        if "other image" in row:
            other = [f"{x['mean']:.3f}" for x in row["other image"]]
            lines.append(f"| {name}, other image | {row['n test']} | | | " + " | ".join(other) + " |")
    att = [(name, row) for name, row in res["targets"].items() if "image mass" in row]
    if att:  # where the listed word's token looks, in each layer's attention
        n_att = len(att[0][1]["image mass"])
        head = ["token that predicts", "attention", *(f"layer {li}" for li in range(1, n_att + 1))]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, row in att:
            lines.append(f"| {name} | on the image | " + " | ".join(f"{v:.3f}" for v in row["image mass"]) + " |")
            if "object mass" in row:
                lines.append(f"| {name} | its object's share of that (uniform: {row['object share']:.3f}) | "
                             + " | ".join(f"{v:.3f}" for v in row["object mass"]) + " |")
                if "object mass by head" in row:  # a head that finds the object shows here before the mean
                    best = [max(range(len(v)), key=v.__getitem__) for v in row["object mass by head"]]
                    lines.append(f"| {name} | … the share in its best head | " + " | ".join(
                        f"{v[h]:.3f} (head {h})" for v, h in zip(row["object mass by head"], best, strict=True)) + " |")
    return "\n".join(lines) + "\n"
