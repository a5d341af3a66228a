"""The unrolling engine's cost: each plan with the workspace's KV cache vs two baselines that
re-encode the whole context — before every primitive (a KV cache inside each primitive, none kept
between them), and before every decoded token and every flow step (no KV cache at all) — and each
row's cost relative to the direct plan.

    python benchmarks/bench_unroll.py [--json] [--checkpoint DIR] [--n 3]

All three engines make the same greedy choices from the same seed (a test holds this), so the
times compare the same computation with and without reuse.
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
    engine.generator.manual_seed(0)
    engine.run(inputs_of(examples[0]), plan)  # warm-up, not timed (first calls, lazily built tables)
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
    cached, per_primitive, per_step = Engine(model), Engine(model, reencode="primitive"), Engine(model, reencode="step")
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__}, "checkpoint": args.checkpoint, "n": args.n, "tasks": {}}
    for task, rows in ROWS.items():
        exs = sample(task, range(SPLITS["test"][0], SPLITS["test"][0] + args.n))
        res = {}
        for row in rows:
            t_c, tok = time_plan(cached, exs, PLANS[task][row])
            t_p, _ = time_plan(per_primitive, exs, PLANS[task][row])
            t_s, _ = time_plan(per_step, exs, PLANS[task][row])
            res[row] = {"plan": PLANS[task][row], "cached_s": round(t_c, 3), "context_tokens": round(tok, 1),
                        "reencode_per_primitive_s": round(t_p, 3), "speedup_vs_per_primitive": round(t_p / t_c, 2),
                        "no_cache_s": round(t_s, 3), "speedup_vs_no_cache": round(t_s / t_c, 2)}
        base = res[rows[0]]["cached_s"]
        for row in rows:
            res[row]["cost_vs_direct"] = round(res[row]["cached_s"] / base, 2)
        out["tasks"][task] = res
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"unrolling benchmark | {out['machine']['platform']} | {out['machine']['threads']} threads | "
          f"{args.checkpoint}, {args.n} examples per plan")
    print(f"{'task':<8}{'row':<24}{'tokens':>8}{'cached s':>10}{'per-primitive s':>17}{'x':>7}"
          f"{'no cache s':>12}{'x':>7}{'x direct':>10}")
    for task, rows in out["tasks"].items():
        for row, r in rows.items():
            print(f"{task:<8}{row:<24}{r['context_tokens']:>8}{r['cached_s']:>10}{r['reencode_per_primitive_s']:>17}"
                  f"{r['speedup_vs_per_primitive']:>7}{r['no_cache_s']:>12}{r['speedup_vs_no_cache']:>7}"
                  f"{r['cost_vs_direct']:>10}")


if __name__ == "__main__":
    main()
