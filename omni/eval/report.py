"""Ablation tables like the paper's: rows are plans scored on the same examples.

`ablation_table({"baseline": scores, "+thinking": scores, ...})` gives, per row, the mean with a
95 % bootstrap interval and the difference to the first row with a paired bootstrap interval
(the rows share examples, so the difference is resampled example-wise). It renders as Markdown,
as JSON and as a bar plot with error bars.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics import bootstrap_ci


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a row named "a|b" would split into two cells."""
    return text.replace("|", "\\|")


@dataclass
class Row:
    name: str
    mean: float
    lo: float
    hi: float
    delta: float  # mean minus the first row's mean
    delta_lo: float
    delta_hi: float


@dataclass
class AblationTable:
    title: str
    metric: str
    n: int
    rows: list[Row]
    higher_is_better: bool = True
    notes: list[str] = field(default_factory=list)

    def markdown(self, digits: int = 3) -> str:
        scale = 100.0 if self.metric.endswith("%") else 1.0
        f = f"{{:.{max(digits - 2, 1) if scale == 100 else digits}f}}"
        lines = [f"**{self.title}** — {self.metric}, n = {self.n} examples per row, "
                 f"95% bootstrap intervals ({'higher' if self.higher_is_better else 'lower'} is better)", "",
                 f"| row | {_cell(self.metric)} | 95% CI | Δ vs {_cell(self.rows[0].name)} | Δ 95% CI |",
                 "|---|---|---|---|---|"]
        for i, r in enumerate(self.rows):
            ci = f"[{f.format(r.lo * scale)}, {f.format(r.hi * scale)}]"
            if i == 0:
                d, dci = "—", "—"
            else:
                d = ("+" if r.delta >= 0 else "") + f.format(r.delta * scale)
                dci = f"[{f.format(r.delta_lo * scale)}, {f.format(r.delta_hi * scale)}]"
            lines.append(f"| {_cell(r.name)} | {f.format(r.mean * scale)} | {ci} | {d} | {dci} |")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def to_json(self) -> dict:
        return {"title": self.title, "metric": self.metric, "n": self.n,
                "higher_is_better": self.higher_is_better, "notes": self.notes,
                "rows": [vars(r) for r in self.rows]}

    def plot(self, path: str | Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        scale = 100.0 if self.metric.endswith("%") else 1.0
        means = np.array([r.mean for r in self.rows]) * scale
        err = np.array([[r.mean - r.lo for r in self.rows], [r.hi - r.mean for r in self.rows]]) * scale
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(self.rows), 3.4), dpi=120)
        ax.bar(range(len(self.rows)), means, yerr=err, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(self.rows)), [r.name for r in self.rows], rotation=30, ha="right")
        ax.set_ylabel(self.metric)
        ax.set_title(f"{self.title} (n = {self.n}, 95% CI)")
        ax.grid(axis="y", alpha=0.3)
        return _save_figure(fig, path)

    def save(self, out_dir: str | Path, stem: str) -> dict[str, Path]:
        """Write <stem>.md, <stem>.json and <stem>.png into out_dir."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from omni.io import atomic_write_bytes  # a run stopped mid-write left a cut-off table

        atomic_write_bytes(out / f"{stem}.md", self.markdown().encode())
        atomic_write_bytes(out / f"{stem}.json", json.dumps(self.to_json(), indent=2).encode())
        return {"md": out / f"{stem}.md", "json": out / f"{stem}.json", "png": self.plot(out / f"{stem}.png")}


def higher_is_better(metric: str) -> bool:
    """Errors (abs_rel*, rre, rte) fall as a model gets better; every other score rises."""
    return not (metric.startswith("abs_rel") or metric in ("rre", "rte"))


def _per_example_scores(name: str, out: Mapping) -> dict[str, tuple[str, list]]:
    """key -> (metric, per-example scores) of one output: an `omni eval TASK --json` output keys its
    scores by metric; an `omni ablate` `<task>_scores.json` by row, then metric ("ROW: METRIC")."""
    if not isinstance(out, Mapping) or not isinstance(out.get("scores"), Mapping):
        raise ValueError(f"{name}: not an `omni eval TASK --json` output or an `omni ablate` "
                         "<task>_scores.json (no per-example scores)")
    for key in ("task", "n", "seed_start"):
        if key not in out:
            raise ValueError(f"{name}: no {key!r}: not an `omni eval TASK --json` output or an `omni ablate` "
                             "<task>_scores.json")
    scores = out["scores"]
    if not isinstance(out.get("rows"), Mapping):
        flat = {k: (k, v) for k, v in scores.items()}
    else:
        flat = {}
        for row, metrics in scores.items():
            if not isinstance(metrics, Mapping):
                raise ValueError(f"{name}: row {row!r} of an `omni ablate` output holds no metrics")
            flat.update({f"{row}: {k}": (k, v) for k, v in metrics.items()})
    for key, (_, v) in flat.items():  # one number per example (nested lists were flattened into more)
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise ValueError(f"{name}: the scores of {key!r} are not a list of numbers, one per example")
        if len(v) != out["n"]:  # a partial ablation's file (its "done" first examples) paired as if all n
            done = f" (a partial ablation: {out['done']} done)" if "done" in out else ""
            raise ValueError(f"{name}: {key!r} scores {len(v)} examples, not its n = {out['n']!r}{done}; "
                             "compare needs every example scored")
    return flat


# what else an output's examples depend on, with the value an output that does not record it had
EXAMPLE_KEYS = {"pose_motions": ["orbit"], "vqa_thought": "inventory", "world_revision": 1}


def compare_outputs(outputs: Mapping[str, Mapping]) -> dict[str, AblationTable]:
    """Outputs (name -> the parsed JSON) of one task on the same examples, e.g. two checkpoints' — each
    an `omni eval TASK --json` output, or each an `omni ablate` `<task>_scores.json` — per metric (per
    row and metric for the ablations), a table with a row per output and the Δ paired against the first."""
    if len(outputs) < 2:
        raise ValueError("compare needs at least two `omni eval --json` or `omni ablate` outputs")
    flat = {name: _per_example_scores(name, out) for name, out in outputs.items()}
    first_name, first = next(iter(outputs.items()))
    for name, out in outputs.items():
        for key in ("task", "n", "seed_start", *EXAMPLE_KEYS):
            mine, theirs = (o.get(key, EXAMPLE_KEYS.get(key)) for o in (out, first))
            if mine != theirs:
                raise ValueError(f"{name}: {key} {mine!r} differs from the first output's {theirs!r}; compare "
                                 "needs the same task on the same examples")
        seeds = out.get("sampling_seeds")  # a number or a list of lists was a TypeError traceback below
        if seeds is not None and (not isinstance(seeds, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
            raise ValueError(f"{name}: sampling_seeds must be a list of integers, got {seeds!r}")
        if isinstance(out.get("rows"), Mapping) != isinstance(first.get("rows"), Mapping):
            raise ValueError(f"{name}: compare needs outputs of one kind: `omni eval --json` outputs "
                             f"or `omni ablate` <task>_scores.json files, not both")
    keys = [k for k in flat[first_name] if all(k in f for f in flat.values())]
    if not keys:
        raise ValueError("the outputs share no scored metric (or ablation row) to compare")
    notes = [f"the same {first['n']} examples (seeds {first['seed_start']}..), Δ paired per example"]
    sampled = {name: out.get("sampling_seeds") for name, out in outputs.items()}  # recorded since 2026-12-07
    if None not in sampled.values() and len({tuple(v) for v in sampled.values()}) > 1:
        # a same-seed pairing shares the sampler's noise; another seed's does not (far wider intervals)
        notes.append("sampling seeds differ: " + "; ".join(f"{n} {v}" for n, v in sampled.items()))
    return {k: ablation_table({name: f[k][1] for name, f in flat.items()},
                              title=f"{first['task']}: {' vs '.join(outputs)}", metric=k,
                              higher_is_better=higher_is_better(flat[first_name][k][0]), notes=notes) for k in keys}


def ablation_table(rows: Mapping[str, Sequence[float]], title: str = "ablation", metric: str = "score",
                   higher_is_better: bool = True, n_boot: int = 1000, seed: int = 0,
                   notes: Sequence[str] = ()) -> AblationTable:
    """Rows (name -> per-example scores, the same examples in the same order for every row)
    summarised with bootstrap intervals; the first row is the reference for the deltas.
    A metric name ending in '%' is shown x100."""
    if not rows:
        raise ValueError("an ablation table needs at least one row")
    arrays = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in rows.items()}
    n = {len(v) for v in arrays.values()}
    if len(n) != 1:
        raise ValueError(f"rows must score the same examples; lengths differ: "
                         f"{ {k: len(v) for k, v in arrays.items()} }")
    (n,) = n
    if n == 0:
        raise ValueError("rows hold no scores")
    for k, v in arrays.items():  # bootstrap_ci's own error would not say which row
        if not np.isfinite(v).all():
            i = int(np.flatnonzero(~np.isfinite(v))[0])
            raise ValueError(f"row {k!r} holds NaN or infinite scores (example {i}: {v[i]})")
    names = list(arrays)
    base = arrays[names[0]]
    out = []
    for k in names:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, in one line
            diff = arrays[k] - base
            ci = bootstrap_ci(arrays[k], n=n_boot, seed=seed)
            d = bootstrap_ci(diff, n=n_boot, seed=seed) if np.isfinite(diff).all() else {"mean": math.inf}
        row = Row(k, ci["mean"], ci["lo"], ci["hi"], d["mean"], d.get("lo", math.inf), d.get("hi", math.inf))
        if not all(map(math.isfinite, (row.mean, row.lo, row.hi, row.delta, row.delta_lo, row.delta_hi))):
            # finite scores whose sum overflows (1e308s) wrote nan and inf into the Markdown and JSON
            raise ValueError(f"row {k!r}: its scores are too large to average or subtract (mean {row.mean}, "
                             f"Δ {row.delta}); the table would show NaN or inf")
        out.append(row)
    return AblationTable(title, metric, n, out, higher_is_better, list(notes))


def read_log(log_path: str | Path) -> dict[int, dict]:
    """A run's log.jsonl as step -> metrics (a resumed run rewrites steps: the last entry wins). Blank
    lines are skipped, and so is a last line cut off mid-write (the log of a run still going); any
    other bad line is a ValueError naming the file and line. No entries at all is an error too."""
    path = Path(log_path)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as e:  # the error named neither the file nor what it was
        raise ValueError(f"{path}: not a text log ({e})") from None
    rows: dict[int, dict] = {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            m = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                break  # being written
            raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
        except (ValueError, RecursionError) as e:  # an integer of > 4300 digits; nesting too deep (a traceback)
            raise ValueError(f"{path}:{i}: not JSON ({type(e).__name__}: {e})") from None
        step = m.get("step") if isinstance(m, dict) else None
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"{path}:{i}: an entry needs an integer 'step', got {line[:80]!r}")
        bad = [k for k, v in m.items() if k != "step" and not isinstance(v, (int, float, str, type(None)))]
        if bad:
            raise ValueError(f"{path}:{i}: values must be numbers, got {', '.join(bad)}")
        rows[step] = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if not rows:
        raise ValueError(f"{path}: no log entries")
    return rows


LOSS_CURVES = ("text_ce", "visual_ce", "flow_mse", "depth")


def diverged(rows: Mapping[int, Mapping]) -> dict[str, int]:
    """metric -> the first step it was NaN or infinite at, for each metric of a log that ever was."""
    out: dict[str, int] = {}
    for s in sorted(rows):
        for k, v in rows[s].items():
            if k not in out and not math.isfinite(v):
                out[k] = s
    return out


def chain_logs(log_paths: Sequence[str | Path]) -> tuple[dict[int, dict], list[int]]:
    """Several runs' logs end to end, as one stage trained in slices, each from the one before's
    weights (a run that starts again at step 1): each log's steps are shifted by the last step of the
    logs before it. Returns the chained step -> metrics and the step where each later log starts."""
    if not log_paths:
        raise ValueError("no log given")
    rows: dict[int, dict] = {}
    starts: list[int] = []
    offset = 0
    for i, path in enumerate(log_paths):
        part = read_log(path)
        if i:
            starts.append(offset)
        rows.update({offset + s: m for s, m in part.items()})
        offset += max(part)
    return rows, starts


def plot_training(log_path: str | Path | Sequence[str | Path], out: str | Path,
                  keys: Sequence[str] | None = None, window: int = 25) -> Path:
    """Loss curves from a run's log.jsonl (moving average over `window` steps; a batch mixes tasks,
    so single steps are noisy). Zero entries — a loss absent from that batch — are skipped. By
    default the four losses every run has, and the pose head's where the run logged one. Several
    logs are chained end to end (`chain_logs`), a dashed line where each later one starts."""
    paths = [log_path] if isinstance(log_path, (str, Path)) else list(log_path)
    return plot_chained(*chain_logs(paths), out, keys, window)


def plot_chained(rows: Mapping[int, Mapping], starts: Sequence[int], out: str | Path,
                 keys: Sequence[str] | None = None, window: int = 25) -> Path:
    """`plot_training` of logs already read and chained (`chain_logs`' rows and starts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(rows)
    if keys is None:
        keys = LOSS_CURVES + (("pose",) if any(r.get("pose", 0) > 0 for r in rows.values()) else ())
    bad = diverged(rows)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), dpi=110)
    for ax, k in zip(np.atleast_1d(axes), keys, strict=True):
        xs = np.array([s for s in steps if rows[s].get(k, 0) > 0])
        ys = np.array([rows[s][k] for s in xs])
        if len(ys):
            w = min(window, len(ys))
            smooth = np.convolve(ys, np.ones(w) / w, mode="valid")
            ax.plot(xs, ys, color="#c0c8d8", lw=0.6)
            ax.plot(xs[w - 1:], smooth, color="#4c72b0", lw=1.5)
        for x in starts:
            ax.axvline(x, color="#888888", lw=0.8, ls="--")
        first = bad.get(k)
        if first is not None:  # NaN fails `> 0` above: a run that diverged looked as if it had stopped
            ax.axvline(first, color="#d62728", lw=1.2)
        ax.set_title(k if first is None else f"{k}: not finite from step {first}",
                     color="black" if first is None else "#d62728", fontsize=None if first is None else 7)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return _save_figure(fig, out)


def _save_figure(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
