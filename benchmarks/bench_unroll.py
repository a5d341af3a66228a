"""The unrolling engine's cost: each plan with the workspace's KV cache vs re-encoding the whole
context before every step, and each row's cost relative to the direct plan.

    python benchmarks/bench_unroll.py [--json] [--checkpoint DIR] [--n 3]

Both engines make the same greedy choices from the same seed (a test holds this), so the times
compare the same computation with and without reuse.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from omni.eval.run import inputs_of
from omni.model import OmniModel
from omni.unroll.engine import PLANS, Engine
from omni.world import SPLITS, sample

ROWS = {"t2i": ["baseline", "+long", "+long+visual"], "vqa": ["direct", "+thinking"],
        "spatial": ["baseline", "+pose text", "+novel views"], "depth": ["baseline", "+depth caption+visual"]}


def time_plan(engine: Engine, examples, plan) -> tuple[float, float]:
    t = time.perf_counter()
    tokens = 0
    for ex in examples:
        engine.generator.manual_seed(0)
        res = engine.run(inputs_of(ex), plan)
        tokens += sum(it.tokens for it in res.items) + res.output.tokens
    return (time.perf_counter() - t) / len(examples), tokens / len(examples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--checkpoint", default="checkpoints/omni-tiny")
    ap.add_argument("--n", type=int, default=3, help="examples per plan")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = OmniModel.from_pretrained(args.checkpoint)
    cached, baseline = Engine(model), Engine(model, reencode=True)
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__}, "checkpoint": args.checkpoint, "n": args.n, "tasks": {}}
    for task, rows in ROWS.items():
        exs = sample(task, range(SPLITS["test"][0], SPLITS["test"][0] + args.n))
        res = {}
        for row in rows:
            t_c, tok = time_plan(cached, exs, PLANS[task][row])
            t_r, _ = time_plan(baseline, exs, PLANS[task][row])
            res[row] = {"plan": PLANS[task][row], "cached_s": round(t_c, 3), "reencode_s": round(t_r, 3),
                        "speedup": round(t_r / t_c, 2), "context_tokens": round(tok, 1)}
        base = res[rows[0]]["cached_s"]
        for row in rows:
            res[row]["cost_vs_direct"] = round(res[row]["cached_s"] / base, 2)
        out["tasks"][task] = res
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"unrolling benchmark | {out['machine']['platform']} | {out['machine']['threads']} threads | "
          f"{args.checkpoint}, {args.n} examples per plan")
    print(f"{'task':<8}{'row':<24}{'tokens':>8}{'cached s':>10}{'re-encode s':>13}{'speedup':>9}{'x direct':>10}")
    for task, rows in out["tasks"].items():
        for row, r in rows.items():
            print(f"{task:<8}{row:<24}{r['context_tokens']:>8}{r['cached_s']:>10}{r['reencode_s']:>13}"
                  f"{r['speedup']:>9}{r['cost_vs_direct']:>10}")


if __name__ == "__main__":
    main()
