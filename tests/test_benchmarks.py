"""The benchmark scripts still run on the shipped checkpoint (each prints its figures; no timing is
asserted). bench_data reads the checkpoint's training record, whose shape changes with what is
shipped: it failed with a KeyError once the shipped model was an average of trained models."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_data_runs_on_the_shipped_checkpoint():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_data.py"), "--batches", "1", "--rows", "2",
                        "--json"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["rows"] == 2 and out["batches"] == 1 and out["tokens_per_s"] > 0 and 0 < out["fill"] <= 1
    assert abs(sum(out["stages_share"].values()) - 1) < 1e-6
    assert out["world_revision"] == 1  # the shipped model's mixture
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_data.py"), "--batches", "1", "--rows", "1",
                        "--world-revision", "2", "--json"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and json.loads(r.stdout)["world_revision"] == 2, r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_data.py"), "--world-revision", "9"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "--world-revision: world revision must be one of 1, 2, 3" in r.stderr, r.stderr
