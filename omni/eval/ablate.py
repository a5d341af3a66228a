"""The paper's ablations: every row of a task's table (a plan) on the same held-out examples, with the
same weights; the input is encoded once per example and each row continues from a fork of it.

A long ablation (t2i: eight rows of 500 prompts, two hours of this CPU) can keep its progress in a
partial file (`ablate(..., partial=PATH)`, `omni ablate` writes OUT/TASK_partial.json): the examples
done, their scores and texts, and the engine's random state, so `resume=True` (`omni ablate
--resume`) continues it where it stopped with the same draws as a run that never stopped, on the
same weights and settings only."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import numpy as np
import torch

from omni.unroll.engine import PLANS, Engine, parse_plan
from omni.world import sample
from omni.world.tasks import split_of_range

from .report import AblationTable, ablation_table, higher_is_better
from .run import check_scores_finite, eval_world, fidelity, held_out, inputs_of, score, texts_of

# the score each table reports (and whether higher is better); more columns go into the JSON
MAIN_METRIC = {"vqa": ("accuracy", True), "spatial": ("accuracy", True), "t2i": ("pass", True),
               "depth": ("delta1", True), "pose": ("auc@30", True), "nvs": ("psnr", True), "video": ("psnr", True),
               "edit": ("psnr", True)}
# the world's question type, for the per-type breakdown (ex.spec[key])
GROUP_KEY = {"vqa": "family", "spatial": "qtype"}


def question_types(task: str, examples) -> list[str]:
    """Each example's question type (ex.spec[GROUP_KEY[task]]); [] for a task without types."""
    return [str(ex.spec.get(GROUP_KEY[task], "")) for ex in examples] if task in GROUP_KEY else []


def group_means(groups: list[str], rows: dict[str, dict[str, list[float | None]]]) -> dict:
    """Per question type: for each row the number of examples of that type and the mean of each of
    its per-example score lists (in the examples' order, as `groups`), over the examples that have a
    score (None: none, as a vqa thought without a colour word in its step); a score no example of the
    type has is left out."""
    out = {}
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        out[g] = {name: {"n": len(idx), **{k: float(np.mean(got)) for k, v in r.items()
                                           if (got := [v[i] for i in idx if v[i] is not None])}}
                  for name, r in rows.items()}
    return out


TITLES = {"vqa": "Understanding: VQA", "t2i": "Generation: t2i (checker pass rate)",
          "spatial": "Spatial: two-view questions", "depth": "Depth: delta1"}


def engine_settings(engine: Engine) -> dict:
    """Everything of an engine that its results depend on, besides the model and its random state."""
    return {"temperature": engine.temperature, "top_k": engine.top_k, "visual_temperature": engine.visual_temperature,
            "visual_top_k": engine.visual_top_k, "seed": engine.seed, "cfg_scale": engine.cfg_scale,
            "cfg_interval": list(engine.cfg_interval), "flow_steps": engine.flow_steps,
            "flow_shift": engine.flow_shift, "think_tokens": engine.think_tokens,
            "layout_tokens": engine.layout_tokens, "pose_decoder": engine.pose_decoder, "reencode": engine.reencode,
            "flow_start": engine.flow_start}  # image-to-image flows start there (the Python API's option)


def _progress(saved: dict, plans: dict, n: int, engine: Engine, path: Path):
    """A partial file's progress, each part checked against the run it continues: a ValueError naming
    the file and the broken part (it was a KeyError, TypeError or torch error mid-resume)."""
    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: corrupt progress file ({why}): remove it to start the ablation again")

    missing = [k for k in ("done", "scores", "context", "texts", "seconds", "tokens", "generator") if k not in saved]
    if missing:
        raise bad(f"no {', '.join(missing)}")
    done = saved["done"]
    if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= n:
        raise bad(f"done must be a count of examples in 0..{n}, got {done!r}")

    def per_row(key: str, ok) -> dict:
        v = saved[key]
        if not isinstance(v, dict) or set(v) != set(plans) or not all(ok(x) for x in v.values()):
            raise bad(f"{key} must hold each row's ({', '.join(plans)}) {'numbers' if key != 'texts' else 'texts'}")
        return v

    def lists(x, unscored=()) -> bool:  # metric -> one number per example done (or unscored)
        return isinstance(x, dict) and all(isinstance(s, list) and len(s) == done and all(
            isinstance(a, (int, float)) or a in unscored for a in s) for s in x.values())

    scores, context = per_row("scores", lists), per_row("context", lambda x: lists(x, (None,)))
    texts = per_row("texts", lambda x: isinstance(x, list) and len(x) == done)
    seconds = per_row("seconds", lambda x: isinstance(x, (int, float)) and not isinstance(x, bool))
    tokens = per_row("tokens", lambda x: isinstance(x, int) and not isinstance(x, bool))
    want = engine.generator.get_state().numel()
    try:
        raw = base64.b64decode(saved["generator"], validate=True)
    except (TypeError, ValueError) as e:  # binascii.Error is a ValueError
        raise bad(f"generator is not base64 ({e})") from None
    if len(raw) != want:
        raise bad(f"generator state of {len(raw)} bytes, the engine's has {want}")
    return done, scores, context, texts, seconds, tokens, torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def ablate(engine: Engine, task: str, n: int, seed_start: int, rows: dict[str, list[str]] | None = None,
           log=None, partial: str | Path | None = None, resume: bool = False, save_every: float = 10.0,
           vqa_thought: str = "inventory", world_revision: int = 1) -> dict:
    """Per-example scores of every row on the same examples, and a table per reported score.

    vqa_thought (vqa only): the world's thought the model's own is compared with ("focused" for a
    model trained on it; the examples and their answers are the same). world_revision: the world's
    revision the examples are drawn from (`eval_world`; 1, the shipped tables').

    partial: a file that keeps the progress (written atomically at most every `save_every` seconds and
    after the last example); with resume=True and that file present, the run continues from it (a
    ValueError if it is another ablation's: other task, examples, rows, settings or weights)."""
    from omni.io import read_json, write_json
    from omni.model.checkpoint import weights_digest

    if task not in PLANS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(PLANS)}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    rows = rows or PLANS[task]
    plans = {name: parse_plan(task, steps) for name, steps in rows.items()}
    split = split_of_range(seed_start, n)
    world = eval_world(task, vqa_thought=vqa_thought, size=engine.model.cfg.image_size,  # at the model's size
                       revision=world_revision)
    examples = sample(task, range(seed_start, seed_start + n), world)
    focused = {"vqa_thought": vqa_thought} if vqa_thought != "inventory" else {}
    if world_revision != 1:
        focused["world_revision"] = world_revision
    scores: dict[str, dict[str, list[float]]] = {name: {} for name in plans}
    context: dict[str, dict[str, list[float]]] = {name: {} for name in plans}
    texts: dict[str, list[dict | None]] = {name: [] for name in plans}
    groups = question_types(task, examples)
    seconds = {name: 0.0 for name in plans}
    tokens = {name: 0 for name in plans}
    done = 0
    if partial is not None:
        partial = Path(partial)
        which = {"task": task, "n": n, "seed_start": seed_start, "rows": [[k, v] for k, v in plans.items()],
                 "engine": engine_settings(engine),
                 "weights": weights_digest(engine.model), "vqa_thought": vqa_thought, "world_revision": world_revision}
        if resume and partial.is_file():
            saved = read_json(partial)
            # progress files written before 2026-12-07 name vqa_thought only when it is not the default (an
            # inventory run resumed a focused run's file), and no world revision: theirs are read with the
            # defaults filled in
            differ = [k for k, v in which.items()
                      if {"vqa_thought": "inventory", "world_revision": 1, **saved}.get(k) != v]
            if differ:
                raise ValueError(f"{partial} keeps another ablation's progress ({', '.join(differ)} differ): "
                                 "remove it, or resume with the same arguments and checkpoint")
            done, scores, context, texts, seconds, tokens, state = _progress(saved, plans, n, engine, partial)
            engine.generator.set_state(state)
            if log:
                log(f"{task}: resumed after {done}/{n} examples from {partial}")
    written = time.perf_counter()
    for i, ex in enumerate(examples[done:], done):
        inputs = inputs_of(ex)
        for steps in plans.values():  # every row can run on this input, before any compute
            parse_plan(task, steps, inputs)
        t = time.perf_counter()
        base = engine.start(inputs)
        shared = time.perf_counter() - t
        for name, steps in plans.items():
            t = time.perf_counter()
            res = engine.continue_plan(base.fork(), steps)
            seconds[name] += time.perf_counter() - t + shared
            tokens[name] += sum(it.tokens for it in res.items) + res.output.tokens
            texts[name].append(texts_of(res))
            for k, v in score(ex, res).items():
                scores[name].setdefault(k, []).append(v)
            for k, v in fidelity(ex, res).items():  # None for the examples before: a resumed partial
                context[name].setdefault(k, [None] * i).append(v)  # file of code that did not score k
        if partial is not None and (i + 1 == n or time.perf_counter() - written >= save_every):
            state = base64.b64encode(engine.generator.get_state().numpy().tobytes()).decode()
            write_json(partial, {**which, "done": i + 1, "scores": scores, "context": context, "texts": texts,
                                 "seconds": seconds, "tokens": tokens, "generator": state})
            written = time.perf_counter()
        if log and (i + 1) % max(1, n // 10) == 0:
            log(f"{task}: {i + 1}/{n} examples")
    metric, higher = MAIN_METRIC[task]
    sampling = {"temperature": engine.temperature, "top_k": engine.top_k,
                "visual_temperature": engine.visual_temperature, "visual_top_k": engine.visual_top_k,
                "seed": engine.seed, "cfg_scale": engine.cfg_scale, "flow_steps": engine.flow_steps,
                "flow_shift": engine.flow_shift}
    how = (f"text {_how(engine.temperature, engine.top_k)}, visual tokens "
           f"{_how(engine.visual_temperature, engine.visual_top_k)}, sampling seed {engine.seed}")
    for name in plans:  # ablation_table's own error would name the row, not the metric or the seed
        check_scores_finite(scores[name], range(seed_start, seed_start + n), f"{task} row {name!r}")
    tables = {}
    for key in scores[next(iter(plans))]:
        tables[key] = ablation_table({name: scores[name][key] for name in plans},
                                     title=TITLES.get(task, task), metric=key,
                                     higher_is_better=higher if key == metric else higher_is_better(key),
                                     notes=[f"same weights, same {n} {held_out(split)} examples "
                                            f"(seeds {seed_start}..), rows differ only in the plan", how])
    by_group = group_means(groups, {name: {metric: scores[name][metric], **context[name]} for name in plans})
    by_listing = _by_listing(scores, context, metric, higher) if task == "vqa" else {}
    return {"task": task, "n": n, "seed_start": seed_start, "split": split, "sampling": sampling, **focused,
            "rows": {k: list(v) for k, v in plans.items()},
            "main_metric": metric, "tables": tables, "scores": scores,
            "context_fidelity": {name: {k: float(np.mean(got)) for k, v in c.items()
                                        if (got := [x for x in v if x is not None])} for name, c in context.items()},
            "context_scores": context,
            "groups": groups, "by_group": by_group, **({"by_listing": by_listing} if by_listing else {}),
            "texts": {name: t for name, t in texts.items() if any(t)},
            "seconds_per_example": {k: v / n for k, v in seconds.items()},
            "context_tokens_per_example": {k: v / n for k, v in tokens.items()}}


def _by_listing(scores: dict, context: dict, metric: str, higher: bool) -> dict:
    """For each row whose vqa thought lists the objects (`think:listing` in its fidelity), every row's
    `metric` on the examples where that row's own inventory is right (`think:listing`: "right") and on
    the rest ("wrong"), each with its paired Δ against the first row: where the thought reads the image
    right, is the answer after it better than the direct one? (docs/experiments.md, "What the thought
    is worth where its inventory is right")."""
    out = {}
    for row, c in context.items():
        listed = c.get("think:listing")
        if not listed or None in listed:  # a resumed run of code that did not score it: not every example
            continue
        right = np.asarray(listed) > 0.5
        split = {}
        for part, mask in (("right", right), ("wrong", ~right)):
            if not mask.any():
                continue
            t = ablation_table({name: np.asarray(s[metric], float)[mask] for name, s in scores.items()},
                               metric=metric, higher_is_better=higher)
            split[part] = {"n": int(mask.sum()), **{r.name: {"mean": r.mean, "delta": r.delta, "delta_lo": r.delta_lo,
                                                              "delta_hi": r.delta_hi} for r in t.rows}}
        out[row] = split
    return out


def _how(temperature: float, top_k: int) -> str:
    if temperature == 0:
        return "greedy"
    return f"sampled (temperature {temperature:g}" + (f", top-k {top_k})" if top_k else ")")


def save_ablation(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """<task>.md / .json / .png for the main metric, <task>_<metric>.* for the others, and
    <task>_scores.json with every per-example score (the answers' and, under `context_scores`, how
    close each row's own context was to the world's truth), the seconds and context tokens per row."""
    from omni.io import write_json

    out: dict[str, Path] = {}
    for key, table in result["tables"].items():
        stem = result["task"] if key == result["main_metric"] else f"{result['task']}_{key.replace('@', '')}"
        out.update({f"{key}.{k}": v for k, v in table.save(out_dir, stem).items()})
    raw = Path(out_dir) / f"{result['task']}_scores.json"
    write_json(raw, {k: v for k, v in result.items() if k != "tables"})
    out["scores"] = raw
    return out


def markdown(result: dict) -> str:
    t: AblationTable = result["tables"][result["main_metric"]]
    cost = "\n".join(f"- {name}: {result['seconds_per_example'][name]:.2f} s and "
                      f"{result['context_tokens_per_example'][name]:.0f} context tokens per example"
                      for name in result["rows"])
    fid = "\n".join(f"- {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in result["context_fidelity"][name].items())
                    for name in result["rows"] if result["context_fidelity"][name])
    if fid:
        fid = "\nHow close each row's own context is to the world's ground truth (means):\n" + fid + "\n"
    grp = ""
    if result.get("by_group"):
        metric, names = result["main_metric"], list(result["rows"])
        key = GROUP_KEY[result["task"]]
        head = f"| {key} | n | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names) + "\n"
        grp = (f"\n{metric} by question {key} (the world's question type):\n\n" + head + "".join(
            f"| {g} | {rows[names[0]]['n']} | " + " | ".join(f"{rows[r][metric]:.3f}" for r in names) + " |\n"
            for g, rows in result["by_group"].items()))
    lst = ""
    names = list(result["rows"])
    for row, split in result.get("by_listing", {}).items():
        lst += (f"\n{result['main_metric']} where the {row} row's own inventory is right (every object, every "
                "word), and where not:\n")
        lst += "".join(f"- {part} ({v['n']} of {result['n']}): " + ", ".join(
            f"{name} {v[name]['mean']:.3f}" + (f" (Δ {v[name]['delta']:+.3f} [{v[name]['delta_lo']:+.3f}, "
                                              f"{v[name]['delta_hi']:+.3f}])" if name != names[0] else "")
            for name in names) + "\n" for part, v in split.items())
    return t.markdown() + "\n" + cost + "\n" + fid + grp + lst
