"""Benchmark of the training data pipeline on one CPU thread: how many batches of the shipped
checkpoint's mixture one data-loader worker makes a second, and where its time goes.

    python benchmarks/bench_data.py [--rows 32] [--batches 6] [--checkpoint checkpoints/omni-tiny]
                                    [--world-revision N] [--json]

A worker of `omni train` calls `Mixture.batch(step)` once per step (one thread each, as
`BatchStream` sets). This times that call for `--batches` consecutive steps of the mixture the
checkpoint was trained with (its config.json's training.config.mixture: task and form weights, pose
motions, image size, world revision; `--rows` replaces its rows, `--world-revision` its world's revision),
after one untimed warm-up batch, and splits the
time into the stages of `Mixture.sequences` and `Mixture.batch`, by wrapping the functions they call:

    render   `omni.world.sample`: scenes drawn, rendered (RGB, depth, ids) and described, per task
    encode   the visual tokenizer: latents and codes of the images the sequences hold
    write    the rest of `Writer.write`: text tokenized, pixels patched, segments made
    pack     `omni.model.batch.pack`: segments into fixed-length rows
    other    draws, first-fit placement and padding (the rest of the wall time)

From the rate it prints the loader's ceiling: how many worker processes keep a GPU that steps
`--gpu-steps-per-s` times a second (13 steps/s: stage 6's 32-row step of 0.076 s on an H200, from
docs/gpu_training.md) fed, assuming one core per worker.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import omni.train.data as data  # noqa: E402
from omni.model import preset  # noqa: E402
from omni.tokens.text import TextTokenizer  # noqa: E402
from omni.tokens.visual import VisualTokenizer  # noqa: E402
from omni.train.loop import TrainConfig, tokenizer_fields  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Timers:
    """Seconds spent inside wrapped functions, by stage; a call nested in another stage's call counts
    for the inner stage only (encoding inside write is encode, not write)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._stack: list[list] = []

    def wrap(self, stage: str, fn):
        def timed(*a, **k):
            frame = [stage, time.perf_counter(), 0.0]  # stage, start, seconds of nested stages
            self._stack.append(frame)
            try:
                return fn(*a, **k)
            finally:
                self._stack.pop()
                total = time.perf_counter() - frame[1]
                self.seconds[stage] = self.seconds.get(stage, 0.0) + total - frame[2]
                if self._stack:
                    self._stack[-1][2] += total
        return timed


def mixture_of(checkpoint: Path, rows: int | None, world_revision: int | None = None) -> tuple[data.Mixture, dict]:
    cfg = json.loads((checkpoint / "config.json").read_text())
    record = cfg["training"]
    if "average" in record:  # an average of trained models: the newest source's mixture (its last slice)
        record = record["average"][-1]["training"]
    train = TrainConfig.from_dict(record["config"])
    mix = train.mixture if rows is None else dataclasses.replace(train.mixture, rows=rows)
    if world_revision is not None:
        mix = dataclasses.replace(mix, world_revision=world_revision)
    tok = TextTokenizer.default()
    vq = VisualTokenizer.load(ROOT / train.visual)
    mcfg = preset(train.preset, **tokenizer_fields(tok, vq), **train.model_overrides)
    return data.Mixture(mix, data.Writer(tok, vq, mcfg, t_shift=mix.t_shift)), dataclasses.asdict(mix)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "omni-tiny"))
    ap.add_argument("--rows", type=int, default=32, help="rows a batch (stage 6 trained 16 and 32)")
    ap.add_argument("--batches", type=int, default=6, help="timed batches (after one warm-up batch)")
    ap.add_argument("--first-step", type=int, default=1000)
    ap.add_argument("--gpu-steps-per-s", type=float, default=13.0)
    ap.add_argument("--world-revision", type=int, default=None,
                    help="draw from this revision of the world instead of the checkpoint's (docs/world_audit.md)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.rows < 1 or args.batches < 1:
        sys.exit("--rows and --batches must be >= 1")
    torch.set_num_threads(1)
    try:
        mixture, mix = mixture_of(Path(args.checkpoint), args.rows, args.world_revision)
    except ValueError as e:
        sys.exit(f"error: {e}")
    timers = Timers()
    vq = mixture.w.vq
    vq.latents, vq.encode = timers.wrap("encode", vq.latents), timers.wrap("encode", vq.encode)
    data.sample = timers.wrap("render", data.sample)
    data.pack = timers.wrap("pack", data.pack)
    write = data.Writer.write
    mixture.w.write = timers.wrap("write", write.__get__(mixture.w))

    mixture.batch(args.first_step - 1)  # warm-up: form lengths, lazy imports, allocator
    timers.seconds.clear()
    examples = tokens = 0
    tasks: dict[str, int] = {}
    c0, t0 = time.process_time(), time.perf_counter()
    for step in range(args.first_step, args.first_step + args.batches):
        _, info = mixture.batch(step)
        examples += info["examples"]
        tokens += info["tokens"]
        for t, k in info["tasks"].items():
            tasks[t] = tasks.get(t, 0) + k
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stages = {k: timers.seconds.get(k, 0.0) for k in ("render", "encode", "write", "pack")}
    stages["other"] = max(0.0, wall - sum(stages.values()))
    per_batch = wall / args.batches
    out = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "checkpoint": str(args.checkpoint), "world_revision": mix["world_revision"], "rows": args.rows,
        "row_len": mix["row_len"], "batches": args.batches,
        "seconds_per_batch": per_batch, "cpu_over_wall": cpu / wall,
        "batches_per_s": 1 / per_batch, "examples_per_s": examples / wall, "tokens_per_s": tokens / wall,
        "fill": tokens / (args.batches * args.rows * mix["row_len"]),
        "stages_share": {k: v / wall for k, v in stages.items()},
        "examples_per_batch": {t: k / args.batches for t, k in sorted(tasks.items())},
        "gpu_steps_per_s": args.gpu_steps_per_s,
        "workers_to_feed_gpu": args.gpu_steps_per_s * per_batch,
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['machine']['processor']}, torch {torch.__version__}, one thread; {args.checkpoint}'s mixture, "
          f"{args.rows} rows x {mix['row_len']} tokens, the world's revision {mix['world_revision']}")
    print(f"  {per_batch:.2f} s a batch ({out['batches_per_s']:.2f} batches/s, {out['examples_per_s']:.0f} "
          f"examples/s, {out['tokens_per_s']:,.0f} tokens/s; rows {out['fill']:.0%} full; cpu/wall {cpu / wall:.2f})")
    print("  time: " + ", ".join(f"{k} {v:.0%}" for k, v in out["stages_share"].items()))
    print(f"  a GPU stepping {args.gpu_steps_per_s:g} times a second needs "
          f"{out['workers_to_feed_gpu']:.1f} such workers (one core each)")


if __name__ == "__main__":
    main()
