"""How a run's held-out scores grew with its steps: every complete checkpoint of a training run
(`step-N/`, its EMA weights exported as the shipped model is, bf16 on disk), scored with the direct
plan on the same held-out examples as `omni eval TASK`; or, as the task `spatial-thought`, by where
the true spatial thought breaks (`thought_steps`: its option, copy, verdict and letter steps).

Each (step, task) result is written to `out/step-N/TASK.json` (the `omni eval TASK --json` object,
with `source`: which model it scored) as soon as it exists and is reused when present (if of the same
model), so the command can follow a run that is still training, be stopped, and be run again.
`out/scores_by_step.json` and `.png` summarise them.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from omni.eval.run import EVAL_TASKS, POSE_NUMBERS
from omni.io import atomic_write_bytes

# not a task of its own: spatial's true thought step by step (`omni.eval.context_use.thought_steps`),
# scored per step like the tasks, so a run shows when each step of the thought is learned
THOUGHT = "spatial-thought"
# the score each task is charted by (higher is better unless named in LOWER)
MAIN = {"vqa": "accuracy", "spatial": "accuracy", "depth": "delta1", "pose": "auc@30", "t2i": "pass",
        "nvs": "psnr", "video": "psnr", "edit": "psnr", THOUGHT: "verdict"}
TASKS = ("vqa", "spatial", "depth", "pose", "t2i")


def _score(model, task: str, n: int, seed_start: int, world_revision: int = 1) -> dict:
    """`omni eval TASK --json`'s object for the direct plan, or for THOUGHT one holding
    thought_steps' steps as its metrics (and its letters and question types)."""
    from omni.eval.run import evaluate
    from omni.unroll import Engine

    if task != THOUGHT:  # a fresh engine per task: the same draws as `omni eval TASK`
        return evaluate(Engine(model), task, n, seed_start, "direct", world_revision=world_revision)
    from omni.eval.context_use import STEP_NAMES, thought_steps

    r = thought_steps(model, n, seed_start, world_revision=world_revision)
    return {"task": task, "n": n, "seed_start": seed_start, "metrics": {k: r[k] for k in STEP_NAMES},
            "letters": r["letters"], "by_group": r["by_group"],
            **({"world_revision": world_revision} if world_revision != 1 else {})}


def run_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """A run's complete checkpoints, step -> directory (omni.train's listing); a missing run is an error."""
    from omni.train.loop import run_checkpoints as listing

    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    return listing(run_dir)


def _export_step(step_dir: Path, dest: Path) -> Path:
    """The checkpoint `step_dir` (a run's `step-N`) as a shippable model in `dest`."""
    from omni.train import export

    return export(step_dir.parent, dest, dtype="bfloat16", step=int(step_dir.name.split("-")[1]))


def scores_by_step(run_dir: str | Path | None, out: str | Path, tasks: Sequence[str] = TASKS, n: int = 500,
                   n_by_task: Mapping[str, int] | None = None, seed_start: int = 2_000_000_000,
                   extra: Mapping[int, str | Path] | None = None, log: Callable[[str], None] | None = None,
                   world_revision: int = 1) -> dict:
    """Score every complete checkpoint of `run_dir` (and `extra`: step -> an exported model directory,
    e.g. the shipped model at its last step) on each task, n examples each (n_by_task overrides per
    task), with the direct plan, on the world's `world_revision` (WorldConfig.revision). Returns {"tasks",
    "n", "seed_start", "steps": {step: {task: {metric: {"mean", "lo", "hi"}}}}} and writes it with a plot
    into `out`."""
    from omni.eval.run import eval_world
    from omni.model import OmniModel
    from omni.world.tasks import split_of_range

    bad = [t for t in tasks if t not in (*EVAL_TASKS, THOUGHT)]
    if bad or not tasks:
        raise ValueError(f"unknown task(s) {bad or tasks!r}; known: {', '.join((*EVAL_TASKS, THOUGHT))}")
    eval_world("spatial", revision=world_revision)  # the revision checked before any model loads
    sizes = {t: (n_by_task or {}).get(t, n) for t in tasks}
    for t, k in sizes.items():
        if k < 1:
            raise ValueError(f"n for {t} must be positive, got {k}")
        split_of_range(seed_start, k)
    points = {s: ("run", d) for s, d in (run_checkpoints(run_dir).items() if run_dir is not None else [])}
    for s, d in (extra or {}).items():
        if not (Path(d) / "config.json").is_file():
            raise FileNotFoundError(f"no model (config.json) in {d}")
        points[int(s)] = ("model", Path(d))
    if not points:
        raise ValueError(f"no complete checkpoint in {run_dir} and no other model to score")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps: dict[int, dict] = {}
    fits: dict[int, list] = {}  # pose: how each of the six numbers follows the truth, per step
    for s in sorted(points):
        kind, d = points[s]
        where = out / f"step-{s:07d}"
        source = _source(d)
        todo = [t for t in tasks if not (where / f"{t}.json").is_file()]
        if todo:
            where.mkdir(exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                model_dir = _export_step(d, Path(tmp) / "model") if kind == "run" else d
                model = OmniModel.from_pretrained(model_dir)
                for t in todo:
                    r = {**_score(model, t, sizes[t], seed_start, world_revision), "source": source}
                    atomic_write_bytes(where / f"{t}.json", json.dumps(r).encode())
                    if log:
                        log(f"step {s}: {t} " + ", ".join(f"{k} {v['mean']:.4f}" for k, v in r["metrics"].items()))
        steps[s] = {}
        for t in tasks:
            r = _kept(where / f"{t}.json", t)
            if r.get("source", source) != source:  # files written before sources were recorded are taken as they are
                raise ValueError(f"{where / f'{t}.json'} scores another model at step {s} ({r['source']}, not "
                                 f"{source}): remove it or use another --out")
            if r.get("world_revision", 1) != world_revision:
                raise ValueError(f"{where / f'{t}.json'} scores the world's revision {r.get('world_revision', 1)}, not "
                                 f"{world_revision}: remove it or use another --out")
            if r.get("n") != sizes[t] or r.get("seed_start") != seed_start:
                raise ValueError(f"{where / f'{t}.json'} scores n={r.get('n')} from seed {r.get('seed_start')}, "
                                 f"not n={sizes[t]} from {seed_start}: remove it or use another --out")
            steps[s][t] = r["metrics"]
            if t == "pose":
                fits[s] = r.get("pose_fit", {}).get("corr") or [None] * 6
    summary = {"tasks": list(tasks), "n": sizes, "seed_start": seed_start, "steps": steps,
               **({"world_revision": world_revision} if world_revision != 1 else {}),
               **({"pose_corr": fits} if fits else {})}
    atomic_write_bytes(out / "scores_by_step.json", json.dumps(summary, indent=1).encode())
    atomic_write_bytes(out / "scores_by_step.md", steps_markdown(summary).encode())
    plot_scores_by_step(summary, out / "scores_by_step.png")
    return summary


def _source(d: Path) -> str:
    """Which model a step's scores are of: the SHA-256 (16 hex digits) of its checkpoint's config.json,
    which records its training (run config, data seed, step; or an export's source and weights). A step
    number alone said nothing of it: a second run, or an --also model at a step the run has, reused the
    first one's scores (the same config means the same weights: training is deterministic)."""
    import hashlib

    return "config.json sha256 " + hashlib.sha256((Path(d) / "config.json").read_bytes()).hexdigest()[:16]


def _kept(path: Path, task: str) -> dict:
    """A score file this command wrote before (it is reused, not recomputed), checked: the task's, with
    its main metric's mean and interval; a ValueError naming the file otherwise."""
    from omni.io import read_json

    r = read_json(path)  # a JSON object, or a ValueError naming the file
    metrics = r.get("metrics")
    main = metrics.get(MAIN[task]) if isinstance(metrics, Mapping) else None
    if r.get("task") != task or not (isinstance(main, Mapping) and {"mean", "lo", "hi"} <= set(main)):
        raise ValueError(f"{path}: not this command's {task} scores (task {r.get('task')!r}, its {MAIN[task]} "
                         "with mean and interval): remove it or use another --out")
    return r


def _at(by_step: Mapping, step: int | str):
    """A per-step entry of a summary, whose step keys are ints as built and strings once read back
    from its JSON."""
    return by_step[step] if step in by_step else by_step[str(step)]


def steps_markdown(summary: dict) -> str:
    """The summary as a Markdown table: one row per step, each task's main score with its 95% interval
    (and, with pose, the correlation of each of its six numbers with the truth: — where constant)."""
    tasks = summary["tasks"]
    corr = summary.get("pose_corr")
    heads = [f"{t} {MAIN[t]} (n = {summary['n'][t]})" for t in tasks]
    if corr:
        heads.append("pose corr " + " ".join(POSE_NUMBERS))
    lines = ["| step | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for s in sorted(summary["steps"], key=int):
        cells = []
        for t in tasks:
            m = summary["steps"][s][t][MAIN[t]]
            cells.append(f"{m['mean']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]")
        if corr:
            c = _at(corr, s)
            cells.append(" ".join("—" if v is None else f"{v:.2f}" for v in c))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_scores_by_step(summary: dict, path: str | Path) -> Path:
    """One panel per task: its main score at each step with the 95% interval; with pose, one more:
    the correlation of each of its six numbers with the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import _save_figure

    tasks = summary["tasks"]
    corr = summary.get("pose_corr")
    panels = len(tasks) + bool(corr)
    fig, axes = plt.subplots(1, panels, figsize=(2.9 * panels, 2.7), dpi=110, squeeze=False)
    steps = sorted(int(s) for s in summary["steps"])
    if corr:
        ax = axes[0][-1]
        for i, name in enumerate(POSE_NUMBERS):
            c = [_at(corr, s)[i] for s in steps]
            ax.plot(steps, [float("nan") if v is None else v for v in c], marker="o", ms=3, label=name)
        ax.set_title("pose: correlation with the truth", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(-0.2, 1.0)
        ax.legend(fontsize=6, ncol=2)
        ax.grid(alpha=0.3)
    for ax, t in zip(axes[0], tasks, strict=False):
        key = MAIN[t]
        ms = [_at(summary["steps"], s)[t][key] for s in steps]
        y = [m["mean"] for m in ms]
        err = [[m["mean"] - m["lo"] for m in ms], [m["hi"] - m["mean"] for m in ms]]
        ax.errorbar(steps, y, yerr=err, marker="o", ms=3, capsize=2, color="#4c72b0")
        ax.set_title(f"{t}: {key} (n={summary['n'][t]})", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path)
