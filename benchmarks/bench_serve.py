"""The server under a burst: N concurrent POST /v1/unroll requests on loopback.

    python benchmarks/bench_serve.py [--checkpoint DIR | --random-tiny] [--n 50] [--queue 8] [--json]

Starts `omni serve` in a subprocess on a free loopback port, fires the requests at once (a mix of
tasks with their default plans on held-out world seeds, and t2i from a typed prompt), then checks
that every answer was 200 or 429 (the bounded queue refusing the rest), that the server is alive
afterwards and still runs a request, and reports the server's peak resident memory (VmHWM from
/proc) and the latency percentiles. Exits non-zero if any answer was something else or the server died.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REQUESTS = [{"task": "vqa", "plan": "default"}, {"task": "spatial", "plan": "default"},
            {"task": "depth", "plan": "default"}, {"task": "pose", "plan": "default"},
            {"task": "t2i", "plan": "default", "text": "a photo of a red cube left of a blue sphere."}]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process in bytes, from /proc (Linux); empty elsewhere."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(val.split()[0]) * 1024
    return out


def body(i: int) -> dict:
    b = dict(REQUESTS[i % len(REQUESTS)])
    if "text" not in b:
        b["seed"] = 2_000_000_000 + i
    return b


async def fire(url: str, n: int, timeout: float) -> list[tuple[int, float]]:
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as c:
        async def one(i: int) -> tuple[int, float]:
            t = time.perf_counter()
            try:
                r = await c.post("/v1/unroll", json=body(i))
                return r.status_code, time.perf_counter() - t
            except httpx.HTTPError:
                return -1, time.perf_counter() - t

        return await asyncio.gather(*(one(i) for i in range(n)))


def pct(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50": None, "p90": None, "p99": None}
    return {f"p{q}": round(float(np.percentile(xs, q)), 3) for q in (50, 90, 99)}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/omni-tiny")
    ap.add_argument("--random-tiny", action="store_true", help="serve a temporary random tiny checkpoint instead")
    ap.add_argument("--n", type=int, default=50, help="concurrent requests")
    ap.add_argument("--queue", type=int, default=8, help="the server's --queue (waiting runs)")
    ap.add_argument("--timeout", type=float, default=120.0, help="the server's per-run --timeout")
    ap.add_argument("--flow-steps", type=int, default=20, help="the server's --flow-steps")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    tmp = None
    ckpt = args.checkpoint
    if args.random_tiny:
        from omni.serve.testing import random_tiny_checkpoint

        tmp = tempfile.TemporaryDirectory()
        ckpt = str(random_tiny_checkpoint(Path(tmp.name) / "random-tiny"))
    elif not Path(ckpt).is_dir():
        print(f"error: checkpoint directory not found: {ckpt} (or pass --random-tiny)", file=sys.stderr)
        return 2
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "omni.cli", "serve", "--checkpoint", ckpt, "--port", str(port), "--queue",
           str(args.queue), "--timeout", str(args.timeout), "--flow-steps", str(args.flow_steps)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(url + "/healthz", timeout=2).json()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    print(f"error: the server did not start: {server.stderr.read()[-2000:]}", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        idle = proc_status(server.pid)
        t0 = time.perf_counter()
        results = asyncio.run(fire(url, args.n, args.timeout + 60))
        wall = time.perf_counter() - t0
        alive = server.poll() is None and httpx.get(url + "/healthz", timeout=10).status_code == 200
        again = None
        if alive:  # once the burst has drained, the server still runs a request
            for _ in range(int(args.timeout * 5)):
                r = httpx.post(url + "/v1/unroll", json=body(0), timeout=args.timeout + 60)
                if r.status_code != 429:
                    again = r.status_code
                    break
                time.sleep(0.2)
        mem = proc_status(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        if tmp is not None:
            tmp.cleanup()
    codes = [c for c, _ in results]
    counts = {str(c): codes.count(c) for c in sorted(set(codes))}
    ok = all(c in (200, 429) for c in codes)
    out = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "checkpoint": "random-tiny (temporary)" if args.random_tiny else ckpt, "model": health["model"],
        "requests": args.n, "queue_capacity": health["queue"]["capacity"], "flow_steps": args.flow_steps,
        "counts": counts, "all_200_or_429": ok, "alive_after": alive, "request_after": again,
        "burst_wall_s": round(wall, 3),
        "latency_s": {"all": pct([t for _, t in results]), "200": pct([t for c, t in results if c == 200]),
                      "429": pct([t for c, t in results if c == 429])},
        "rss_mb": {"idle": round(idle.get("VmRSS", 0) / 2**20, 1), "after": round(mem.get("VmRSS", 0) / 2**20, 1),
                   "peak": round(mem.get("VmHWM", 0) / 2**20, 1)},
    }
    if args.json:
        print(json.dumps(out))
    else:
        m = out["machine"]
        print(f"omni serve under {args.n} concurrent POST /v1/unroll ({m['cpus']} CPUs, {m['platform']})")
        print(f"  checkpoint {out['checkpoint']}: {health['model']['parameters']:,} parameters, flow steps "
              f"{args.flow_steps}, queue capacity {out['queue_capacity']} (1 running + {args.queue} waiting)")
        print(f"  answers: {', '.join(f'{k}: {v}' for k, v in counts.items())}; every one 200 or 429: {ok}")
        print(f"  server alive afterwards: {alive}; a request after the burst: {again}")
        print(f"  peak RSS {out['rss_mb']['peak']} MB (idle {out['rss_mb']['idle']} MB, after "
              f"{out['rss_mb']['after']} MB)")
        for k, v in out["latency_s"].items():
            print(f"  latency {k:>3}: p50 {v['p50']} s, p90 {v['p90']} s, p99 {v['p99']} s")
        print(f"  burst wall time {out['burst_wall_s']} s")
    return 0 if ok and alive and again == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
