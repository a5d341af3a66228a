"""Is a context used? The model's teacher-forced output on held-out examples, given each ground-truth
context the mixture trains it with: for t2i the generator's flow loss (and the visual-token
rollout's code loss, `rollout_context_use`), for vqa / spatial the answer
(`answer_context_use`: its greedy correctness and loss), for depth the depth head's map.

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
from omni.model.batch import Segment
from omni.model.config import IMAGE_CLEAN, IMAGE_GEN, IMAGE_IN
from omni.tokens.image import unpatchify
from omni.train.data import DRILLS, FORMS, Writer, conclusion_cut, conclusion_text
from omni.unroll.format import BLOCKS
from omni.world import sample
from omni.world.tasks import LETTERS, VQA_PIECES, VQA_STEP_PARTS, conclusion_pieces, split_of_range, vqa_thought_pieces

from .ablate import group_means, question_types
from .metrics import bootstrap_ci, depth_metrics, pair_auc
from .report import AblationTable, ablation_table
from .run import eval_world

NOISE_LEVELS = (0.5, 0.8, 0.95)
ANSWER_TASKS = ("vqa", "spatial", "depth")  # tasks whose output is read off the context, not generated


def context_forms(task: str) -> list[str]:
    """The forms of FORMS[task] that write a context a plan writes: all but its drills (DRILLS)."""
    return [f for f in FORMS[task] if f not in DRILLS.get(task, ())]


def row_names(task: str = "t2i") -> list[str]:
    """t2i: 'prompt' (the direct form), 'none' (unconditional), then '+form' for each context form;
    the answer tasks: 'direct', then '+form'."""
    if task == "t2i":
        return ["prompt", "none", *(f"+{f}" for f in context_forms("t2i") if f != "direct")]
    if task not in ANSWER_TASKS:
        raise ValueError(f"context use is measured for t2i, {', '.join(ANSWER_TASKS)}; got {task!r}")
    return ["direct", *(f"+{f}" for f in context_forms(task) if f != "direct")]


def check_noise_levels(ts: Sequence[float], what: str = "noise levels") -> None:
    """Each level in (0, 1], at least one, no two alike as the tables name them (`t=0.5`): a level given
    twice scored every example twice in one table (n doubled, its interval too narrow), and two that
    print alike (0.5, 0.5000001) wrote one table over the other."""
    ts = list(ts)
    if not ts or not all(0.0 < t <= 1.0 for t in ts):  # NaN fails too
        raise ValueError(f"{what} must lie in (0, 1], got {ts}")
    names = [f"t={t:g}" for t in ts]
    if len(set(names)) != len(names):
        raise ValueError(f"{what} must differ, got {ts}")


def _check(model: OmniModel, n: int, seed_start: int) -> None:
    if model.tokenizer is None or model.visual is None:
        raise ValueError("the model has no tokenizers attached (load it with OmniModel.from_pretrained)")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    split_of_range(seed_start, n)


@torch.no_grad()
def flow_context_use(model: OmniModel, n: int, seed_start: int, ts: Sequence[float] = NOISE_LEVELS,
                     seed: int = 0, world_revision: int = 1) -> dict[str, AblationTable]:
    """One table per noise level t: each row's mean per-example flow MSE over n t2i examples from
    seed_start, with 95% intervals and the paired difference to the prompt row (lower is better)."""
    _check(model, n, seed_start)
    check_noise_levels(ts)
    model = model.eval()
    cfg = model.cfg
    w = Writer(model.tokenizer, model.visual, cfg)
    exs = sample("t2i", list(range(seed_start, seed_start + n)),
                 eval_world("t2i", size=cfg.image_size, revision=world_revision))
    names = row_names()
    scores = {t: {k: [] for k in names} for t in ts}
    device = next(model.parameters()).device
    for i, ex in enumerate(exs):
        rng = np.random.default_rng([seed, i])
        seqs = {("prompt" if f == "direct" else f"+{f}"): w.write(ex, f, rng) for f in context_forms("t2i")}
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


def _target_logits(model: OmniModel, b, h: torch.Tensor, r: int, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Row r's teacher-forced prediction at each of its loss positions: the fp32 logits over the
    vocabulary columns `cols` (text or visual ids) and the true next ids, counted from cols.start."""
    at = torch.nonzero(b.target[r] >= 0).squeeze(1)
    return model.logits(h[r, at], cols).float(), b.target[r, at] - cols.start


ROLLOUT_FORMS = {"prompt": "visual", "+short": "short+visual", "+long": "long+visual", "other prompt": "visual"}


@torch.no_grad()
def rollout_context_use(model: OmniModel, n: int, seed_start: int, batch: int = 8,
                        world_revision: int = 1) -> dict[str, AblationTable]:
    """Does the visual-token rollout read the text before it? The target image's visual codes,
    teacher-forced after the prompt alone ("prompt"), after the world's short thought ("+short") and
    after its layout text ("+long"), written exactly as the mixture's visual forms write them, and
    after another example's prompt ("other prompt": the next example's, the last taking the first's;
    how much the prompt itself decides), on n t2i examples from seed_start. Per example: `codes nll`
    (nats per code, over the visual vocabulary, as the rollout samples) and `codes accuracy` (the
    fraction of codes that are the argmax given the true codes before them). The layout states each
    object's cell, so a rollout that reads it predicts the codes better with it; equal rows mean the
    rollout draws the image from the prompt alone, and the layout can reach the image only through
    the generator."""
    _check(model, n, seed_start)
    model = model.eval()
    cfg = model.cfg
    w = Writer(model.tokenizer, model.visual, cfg)
    exs = sample("t2i", list(range(seed_start, seed_start + n)),
                 eval_world("t2i", size=cfg.image_size, revision=world_revision))
    names = list(ROLLOUT_FORMS)
    scores = {k: {name: [] for name in names} for k in ("codes nll", "codes accuracy")}
    device = next(model.parameters()).device
    vis = slice(cfg.text_vocab, cfg.vocab_size)
    for lo in range(0, n, batch):
        seqs = []
        for i, ex in enumerate(exs[lo:lo + batch], lo):
            other = exs[(i + 1) % n].texts["prompt"]
            for name, form in ROLLOUT_FORMS.items():
                this = dataclasses.replace(ex, texts={**ex.texts, "prompt": other}) if name == "other prompt" else ex
                segs = w.write(this, form, np.random.default_rng([i]))
                at = next(j for j, s in enumerate(segs) if s.kind == "visual")  # the codes; nothing after them
                seqs.append([dataclasses.replace(s, loss=j == at) for j, s in enumerate(segs[:at + 1])])
        b = pack(seqs, cfg).to(device)
        h = model(b)
        for r in range(len(seqs)):
            lg, tgt = _target_logits(model, b, h, r, vis)
            if len(tgt) != cfg.latent_grid ** 2 or bool((tgt < 0).any()):
                raise AssertionError("the visual form's codes changed shape; update rollout_context_use")
            name = names[r % len(names)]
            scores["codes nll"][name].append(float(torch.nn.functional.cross_entropy(lg, tgt)))
            scores["codes accuracy"][name].append(float((lg.argmax(-1) == tgt).float().mean()))
    return {k: ablation_table(v, title="t2i: the rollout's visual codes given the text before them",
                              metric=k, higher_is_better=k == "codes accuracy") for k, v in scores.items()}


def _answer_only(w: Writer, segs: list) -> list:
    """A vqa / spatial sequence with its loss on the answer alone, as greedy decoding produces it: the
    engine opens <answer> itself and stops at </answer>, so the targets are the body and the closing
    tag, each predicted from the true tokens before it (the trailing <eos> is left out)."""
    *ctx, ans = segs
    ids = list(ans.tokens)
    if ids[:1] != w.ids("<answer>") or ids[-1] != w.tok.eos:
        raise AssertionError("the mixture's answer block changed shape; update _answer_only")
    return ([dataclasses.replace(s, loss=False) for s in ctx]
            + [w.tags("<answer>"), dataclasses.replace(ans, tokens=ids[1:-1], loss=True)])


@torch.no_grad()
def answer_context_use(model: OmniModel, task: str, n: int, seed_start: int,
                       batch: int = 8, vqa_thought: str = "inventory", world_revision: int = 1) -> dict:
    """The answer tasks' output given each true context of FORMS[task] (the world's thought, pose
    text, novel views, captions, visual codes, written as in training), on n examples from
    seed_start, every row on the same examples. vqa / spatial: `accuracy` — 1 when every answer token
    is the argmax over the text vocabulary given the true tokens before it, i.e. exactly when greedy
    decoding returns the true answer — and `answer nll` (nats per token). depth: `delta1` and
    `abs_rel` of the depth head's map on the query copy (metric, as `omni eval depth` scores it).
    Set against the ablation rows (the same contexts written by the model), this separates "the
    context is wrong" from "the context is ignored". vqa_thought (vqa only): the world's thought
    written as the true one ("focused" for a model trained on it). Returns {"tables": metric ->
    AblationTable, "by_group": question type (vqa family, spatial qtype) -> row -> {"n", metric means}}."""
    names = row_names(task)
    if task == "t2i":
        raise ValueError("t2i's context use is the generator's flow loss: use flow_context_use")
    _check(model, n, seed_start)
    model = model.eval()
    cfg = model.cfg
    w = Writer(model.tokenizer, model.visual, cfg)
    world = eval_world(task, vqa_thought=vqa_thought, size=cfg.image_size, revision=world_revision)
    exs = sample(task, list(range(seed_start, seed_start + n)), world)
    keys = ("delta1", "abs_rel") if task == "depth" else ("accuracy", "answer nll")
    scores = {k: {name: [] for name in names} for k in keys}
    device = next(model.parameters()).device
    forms = context_forms(task)
    for lo in range(0, n, batch):
        chunk = exs[lo:lo + batch]
        seqs = []
        for i, ex in enumerate(chunk):
            rng = np.random.default_rng([lo + i])  # unused by these tasks' forms (no generated image)
            for f in forms:
                segs = w.write(ex, f, rng)
                seqs.append(segs if task == "depth" else _answer_only(w, segs))
        b = pack(seqs, cfg).to(device)
        h = model(b)  # (rows, L, d): one row per (example, form)
        for r, (ex, f) in enumerate((ex, f) for ex in chunk for f in forms):
            name = "direct" if f == "direct" else f"+{f}"
            if task == "depth":
                v = ex.views["image"]
                rows = torch.nonzero(b.kind[r] == IMAGE_IN).squeeze(1)[-cfg.patch_grid ** 2:]  # the query copy
                d = unpatchify(model.log_depth(h[r, rows]).exp()[None], cfg.patch, cfg.image_size,
                               cfg.image_size)[0, :, :, 0].float().cpu().numpy()
                m = depth_metrics(d, v.depth, mask=v.valid)
                scores["delta1"][name].append(m["delta1"])
                scores["abs_rel"][name].append(m["abs_rel"])
            else:
                lg, tgt = _target_logits(model, b, h, r, slice(0, cfg.text_vocab))
                scores["accuracy"][name].append(float((lg.argmax(-1) == tgt).all()))
                scores["answer nll"][name].append(float(torch.nn.functional.cross_entropy(lg, tgt)))
    better = {"delta1": True, "abs_rel": False, "accuracy": True, "answer nll": False}
    tables = {k: ablation_table(scores[k], title=f"{task}: the output given each true context", metric=k,
                                higher_is_better=better[k]) for k in keys}
    by_group = group_means(question_types(task, exs), {name: {k: scores[k][name] for k in keys} for name in names})
    return {"tables": tables, "by_group": by_group}


STEP_NAMES = ("option", "copy", "verdict", "letter")


def verdict_report(records: Sequence[tuple[str, int, bool, float]]) -> dict[str, dict]:
    """Does a thought's yes / no compare the option it copied with the one it stated, or only guess by
    place? records: one (question type, place, truth, margin) per verdict: its place among the listed
    options (1, 2, ...), whether it is a yes, and the model's logit of "yes" minus that of "no". Per
    question type and "all": `n_match` / `n_mismatch` (verdicts whose truth is yes / no),
    `said_yes_if_match` / `said_yes_if_mismatch` (margin > 0), `auc`: the chance that a match's margin
    exceeds a mismatch's at the same place (pairs counted within places, so the places' priors — the
    thought stops at its yes, so a later place is a yes more often — do not count: 0.5 is no
    comparison at all, 1 a perfect one; None without both at one place), and `pooled_auc`, the same
    over all pairs, priors included."""
    out: dict[str, dict] = {}
    for q in sorted({r[0] for r in records}) + ["all"]:
        rs = [r for r in records if q in ("all", r[0])]
        match = [m for _, _, t, m in rs if t]
        miss = [m for _, _, t, m in rs if not t]
        u = pairs = 0.0
        for place in sorted({r[1] for r in rs}):
            pos = [m for _, p, t, m in rs if p == place and t]
            neg = [m for _, p, t, m in rs if p == place and not t]
            if pos and neg:
                u += pair_auc(pos, neg) * len(pos) * len(neg)
                pairs += len(pos) * len(neg)
        out[q] = {"n_match": len(match), "n_mismatch": len(miss),
                  "said_yes_if_match": float(np.mean(np.array(match) > 0)) if match else None,
                  "said_yes_if_mismatch": float(np.mean(np.array(miss) > 0)) if miss else None,
                  "auc": u / pairs if pairs else None, "pooled_auc": pair_auc(match, miss)}
    return out


def _thought_pieces(w: Writer, thought: str, cut=conclusion_pieces) -> list[tuple[list[int], str | None]]:
    """A world thought as token runs, each named by the piece it is or None (the world's cut: for
    spatial `omni.world.tasks.conclusion_pieces`, option, copy, verdict, letter; for vqa
    `vqa_thought_pieces`). Their concatenation is exactly the tokens `Writer.block` writes for its body."""
    text = " " + thought.strip()
    parts = [(w.tok.encode(p), what) for p, what in cut(thought)]
    if [t for ids, _ in parts for t in ids] != w.tok.encode(text):
        raise AssertionError("the thought's pieces tokenize differently from the whole; split it elsewhere")
    return parts


THOUGHT_FORMS = ("think", "views")  # the spatial forms whose thought a plan writes (think: after the question)


def _thought_sequence(w: Writer, ex, form: str = "think") -> tuple[list[Segment], list[tuple[int, str]]]:
    """A spatial example's think form, as training writes it, up to the thought's closing tag, with
    its loss only on the thought's named steps (`_thought_pieces`); and those spans' (token count,
    name) in order. form: "views" writes the thought after the true pose text and the four true views
    (the views form: where the +novel views plan thinks); a drill (DRILLS: "conclusion" or "reasoned",
    text alone, or "reasoned+views", after the views; the option is context there, so no "option" span;
    "deduced", the reasoned drill with the option under loss)."""
    if form not in THOUGHT_FORMS + DRILLS["spatial"]:
        raise ValueError(f"unknown spatial thought form {form!r}; known: "
                         f"{', '.join(THOUGHT_FORMS + DRILLS['spatial'])}")
    segs = w.write(ex, form, np.random.default_rng(0))
    before = _before_thought(w, segs)  # every segment up to the <think> tag, no loss
    if form in DRILLS["spatial"]:  # the drill's <think> segment carries its context, no loss: up to the option
        blocks = FORMS["spatial"][form]  # ("deduced": the option is under loss) or with it (the other drills)
        before = before[:-1] + [segs[len(before) - 1]]
        body = _thought_pieces(w, conclusion_text(ex.texts["thinking"], "reasoning" in blocks))
        body = body[conclusion_cut("option" in blocks):]
    else:
        body = _thought_pieces(w, ex.texts["thinking"])
    seq = before + [Segment("text", ids, loss=what is not None) for ids, what in body] + [w.tags(BLOCKS["think"][1])]
    return seq, [(len(ids), what) for ids, what in body if what]


def _before_thought(w: Writer, segs: list[Segment]) -> list[Segment]:
    """A think form's segments up to and including its <think> tag, with no loss on any of them."""
    open_tag = BLOCKS["think"][0]
    at = next(i for i, sg in enumerate(segs) if sg.kind == "text" and list(sg.tokens[:1]) == w.ids(open_tag))
    return [dataclasses.replace(sg, loss=False) for sg in segs[:at]] + [w.tags(open_tag)]


@torch.no_grad()
def thought_steps(model: OmniModel, n: int, seed_start: int, batch: int = 8, form: str = "think",
                  world_revision: int = 1) -> dict:
    """Where a spatial thought breaks, step by step, given the world's true thought up to each step
    (teacher-forced, as in training, on n examples from seed_start). Per example, a step scores 1
    when every token of every span of it is the argmax given the true thought before it:
    `option` — the option it concludes ("that is: <option>"; the comparison of the stated angles,
    distances or motion); `copy` — each option's words copied from the question after its letter;
    `verdict` — each yes / no (is the option just copied the one stated?); `letter` — the letter
    it then states (that of the option it said yes to). form="views" scores the thought written after
    the true pose text and four true views (the views form); form="conclusion", "reasoned" or
    "reasoned+views" the same steps on that drill's sequence (`omni.train.data.DRILLS`: the question,
    then the thought from its option on, or the whole thought, with no images or after the views; its
    "option" is context there, so always 1).
    Returns {"n", "option", "copy", "verdict", "letter": bootstrap mean and 95% interval, "letters":
    how often each letter is the argmax, "by_group": question type -> {"n", one mean per step},
    "copy_words": question type -> the fraction of the copied options' j-th words (tokens) that are
    the argmax, j = 0, 1, ...: where in an option the copy goes wrong, "verdicts": `verdict_report` of
    each yes / no's margin (the first token of " yes" against " no"): whether the verdicts compare}."""
    _check(model, n, seed_start)
    model = model.eval()
    cfg = model.cfg
    w = Writer(model.tokenizer, model.visual, cfg)
    exs = sample("spatial", list(range(seed_start, seed_start + n)),
                 eval_world("spatial", size=cfg.image_size, revision=world_revision))
    device = next(model.parameters()).device
    scores: dict[str, list[float]] = {k: [] for k in STEP_NAMES}
    letters = {c: 0 for c in LETTERS}
    yes, no = w.tok.encode(" yes")[0], w.tok.encode(" no")[0]
    verdicts: list[tuple[str, int, bool, float]] = []
    words: dict[str, dict[int, list[float]]] = {}
    for lo in range(0, n, batch):
        chunk = exs[lo:lo + batch]
        seqs, spans = [], []
        for ex in chunk:
            seq, span = _thought_sequence(w, ex, form)
            seqs.append(seq)
            spans.append(span)
        b = pack(seqs, cfg).to(device)
        h = model(b)
        for r in range(len(chunk)):
            lg, tgt = _target_logits(model, b, h, r, slice(0, cfg.text_vocab))
            pred = lg.argmax(-1)
            hit = pred == tgt
            k, place, right = 0, 0, {name: True for name in STEP_NAMES}
            qtype = chunk[r].spec["qtype"]
            by_word = words.setdefault(qtype, {})
            for size, what in spans[r]:
                right[what] &= bool(hit[k:k + size].all())
                if what == "verdict":
                    place += 1
                    verdicts.append((qtype, place, int(tgt[k]) == yes, float(lg[k, yes] - lg[k, no])))
                if what == "copy":
                    for j in range(size):
                        by_word.setdefault(j, []).append(float(hit[k + j]))
                if what == "letter":
                    guess = w.tok.decode(pred[k:k + size].tolist()).strip()
                    letters[guess] = letters.get(guess, 0) + 1
                k += size
            for name in STEP_NAMES:
                scores[name].append(float(right[name]))
    groups = question_types("spatial", exs)
    return {"n": n, **{k: bootstrap_ci(v) for k, v in scores.items()}, "letters": letters,
            "by_group": {g: rows["true"] for g, rows in group_means(groups, {"true": scores}).items()},
            "copy_words": {g: [float(np.mean(by[j])) for j in sorted(by)] for g, by in sorted(words.items())},
            "verdicts": verdict_report(verdicts)}


IMAGES = ("own image", "other image")


def _vqa_thought_sequence(w: Writer, ex, image_of=None) -> tuple[list[Segment], list[tuple[int, str]]]:
    """A vqa example's think form, as training writes it, up to the thought's last token, with its loss
    only on the thought's named pieces (`vqa_thought_pieces`); and those pieces' (token count, name)
    in order. image_of: another example whose image replaces the example's own (the text unchanged)."""
    segs = w.write(ex, "think", np.random.default_rng(0))
    if image_of is not None:
        segs = [*w.write(image_of, "direct", np.random.default_rng(0))[:3], *segs[3:]]
    pieces = _thought_pieces(w, ex.texts["thinking"], vqa_thought_pieces)
    seq = _before_thought(w, segs) + [Segment("text", ids, loss=what is not None) for ids, what in pieces]
    return seq, [(len(ids), what) for ids, what in pieces if what]


@torch.no_grad()
def vqa_thought_steps(model: OmniModel, n: int, seed_start: int, batch: int = 8,
                      vqa_thought: str = "inventory", world_revision: int = 1) -> dict:
    """Where a vqa thought breaks, piece by piece, given the world's true thought up to each piece
    (teacher-forced, as in training, on n examples from seed_start): the number of objects seen, each
    listed object's size, colour, shape and position word (and distance, in a measured thought), the
    question's step (all of it; and its colour and shape words alone, most of them copies, left_right's
    relation word, read from the two x centres the step states or from revision 3's copied list, and
    revision 2's verdict on it) and the answer
    (`omni.world.tasks.vqa_thought_pieces`; a piece is right when every token of it is the argmax).
    Scored twice: with the example's own image ("own image") and, the text unchanged, with the next
    example's image (the last takes the first's; "other image", where n >= 2): what the thought gets
    from the image is the difference, and what it gets without it lies at or above the chance rate of
    guessing among the world's words ("chance").
    Returns {"n", image -> piece -> bootstrap mean and 95% interval of the per-example rate of that
    piece, over the examples that have one ("step": 1 when every word of the step is right; "listing":
    every listed word), "chance", "by_group": vqa family -> image -> {"n", piece means}, "by_kind": the
    same per question kind (left_right, closer, sum, ...), "yes_no": image -> true answer -> the
    answer the model states (the likelier of yes and no after the true thought) -> count, over the yes /
    no questions}."""
    _check(model, n, seed_start)
    model = model.eval()
    cfg = model.cfg
    w = Writer(model.tokenizer, model.visual, cfg)
    wc = eval_world("vqa", vqa_thought=vqa_thought, size=cfg.image_size, revision=world_revision)
    exs = sample("vqa", list(range(seed_start, seed_start + n)), wc)
    device = next(model.parameters()).device
    names = (*VQA_PIECES, "listing")
    images = IMAGES if n >= 2 else IMAGES[:1]
    rates: dict[str, dict[str, list[float | None]]] = {im: {k: [] for k in names} for im in images}
    yes_no: dict[str, dict[str, dict[str, int]]] = {im: {} for im in images}
    first = {a: w.tok.encode(f" {a}")[0] for a in ("yes", "no")}  # the answer's first token tells them apart
    for lo in range(0, n, batch):
        chunk = exs[lo:lo + batch]
        seqs, spans, kept = [], [], []
        for im in images:
            for i, ex in enumerate(chunk):
                seq, span = _vqa_thought_sequence(w, ex, exs[(lo + i + 1) % n] if im == "other image" else None)
                seqs.append(seq)
                spans.append(span)
                kept.append(im)
        b = pack(seqs, cfg).to(device)
        h = model(b)
        for r, im in enumerate(kept):
            lg, tgt = _target_logits(model, b, h, r, slice(0, cfg.text_vocab))
            hit = lg.argmax(-1) == tgt
            k, got = 0, {}
            ex = chunk[r % len(chunk)]
            for size, what in spans[r]:
                got.setdefault(what, []).append(bool(hit[k:k + size].all()))
                if what == "answer" and ex.answer in ("yes", "no"):  # the likelier of the two first tokens
                    said = max(first, key=lambda a: float(lg[k, first[a]]))
                    counts = yes_no[im].setdefault(ex.answer, {})
                    counts[said] = counts.get(said, 0) + 1
                k += size
            for name in VQA_PIECES:  # None where a thought has no such piece (a step without a colour)
                if name == "step":  # the whole step: its colour and shape words too
                    rates[im][name].append(float(all(x for p in VQA_STEP_PARTS for x in got.get(p, ()))))
                else:
                    rates[im][name].append(float(np.mean(got[name])) if name in got else None)
            rates[im]["listing"].append(float(all(x for p in ("size", "colour", "shape", "position") for x in got[p]))
                                        if "size" in got else None)  # a focused thought lists no inventory
    out = {"n": n, **({"vqa_thought": vqa_thought} if vqa_thought != "inventory" else {})}
    for im in images:
        out[im] = {k: bootstrap_ci(kept) for k, v in rates[im].items() if (kept := [x for x in v if x is not None])}
    out["chance"] = {"size": 1 / len(wc.scene.sizes), "colour": 1 / len(wc.scene.colors),
                     "shape": 1 / len(wc.scene.shapes)}
    keys = ("count", "colour", "shape", "distance", "listing", *VQA_STEP_PARTS, "answer")  # distance: measured
    for name, groups in (("by_group", question_types("vqa", exs)), ("by_kind", [ex.spec["kind"] for ex in exs])):
        out[name] = group_means(groups, {im: {k: rates[im][k] for k in keys} for im in images})
    out["yes_no"] = yes_no
    return out


def context_use(model: OmniModel, task: str, n: int, seed_start: int,
                ts: Sequence[float] | None = None, vqa_thought: str = "inventory", world_revision: int = 1) -> dict:
    """Either measure, by task, in one shape: {"tables": name -> AblationTable, "by_group": question
    type -> row -> {"n", metric means}}. t2i: `flow_context_use` at the noise levels ts (default
    NOISE_LEVELS; tables "t=0.95", ...; no question types), then `rollout_context_use` (tables "codes
    nll", "codes accuracy"). vqa / spatial / depth:
    `answer_context_use` (ts must be None: they have no noise level); spatial adds "thought_steps"
    (`thought_steps`: where the true thought's last steps break) and "thought_steps_views" (the same
    with the thought after the true pose text and views, where the +novel views plan thinks).
    world_revision: the world's revision every measure samples (WorldConfig.revision); recorded when not 1."""
    eval_world(task, vqa_thought=vqa_thought, revision=world_revision)  # vqa's focused thought, for vqa only
    rev = {"world_revision": world_revision} if world_revision != 1 else {}
    if task == "t2i":
        return {"tables": {**flow_context_use(model, n, seed_start, NOISE_LEVELS if ts is None else ts,
                                              world_revision=world_revision),
                           **rollout_context_use(model, n, seed_start, world_revision=world_revision)},
                "by_group": {}, **rev}
    row_names(task)  # an unknown task fails here, before anything else
    if ts is not None:
        raise ValueError(f"noise levels apply to t2i's context use only, not {task}")
    res = answer_context_use(model, task, n, seed_start, vqa_thought=vqa_thought, world_revision=world_revision)
    if task == "spatial":
        res["thought_steps"] = thought_steps(model, n, seed_start, world_revision=world_revision)
        res["thought_steps_views"] = thought_steps(model, n, seed_start, form="views", world_revision=world_revision)
    if task == "vqa":
        res["thought_steps"] = vqa_thought_steps(model, n, seed_start, vqa_thought=vqa_thought,
                                                 world_revision=world_revision)
    return {**res, **rev}
