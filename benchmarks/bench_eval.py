"""Speed of the evaluation side on one CPU thread.

    python benchmarks/bench_eval.py [--json] [--n 400]

- the generation checker: images per second at 32x32 and 64x64 on ground-truth t2i renders, one
  image per call (`check`) and a batch per call (`Checker.check_many`), plus its one-time library
  build;
- pose AUC over 10,000 independent two-view pairs and over all pairs of 142 cameras (10,011 pairs);
- depth metrics over 500 images of 32x32 (Marigold protocol, scale-shift alignment).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from omni.eval.checker import Checker  # noqa: E402
from omni.eval.metrics import depth_metrics, pose_auc  # noqa: E402
from omni.world import SPLITS, WorldConfig, orbit_camera, sample  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_checker(size: int, n: int) -> dict:
    t = time.perf_counter()
    ck = Checker(size)
    build = time.perf_counter() - t
    exs = sample("t2i", range(SPLITS["test"][0], SPLITS["test"][0] + n), WorldConfig(size=size))
    imgs = np.stack([e.views["target"].rgb for e in exs])
    specs = [e.spec for e in exs]
    single = best_of(lambda: [ck.check(im, s) for im, s in zip(imgs, specs, strict=True)], 2)
    batched = best_of(lambda: ck.check_many(imgs, specs), 2)
    passed = np.mean([r.passed for r in ck.check_many(imgs, specs)])
    return {"images": n, "library_build_s": round(build, 2), "library_size": int(len(ck.lib_mask)),
            "single_images_per_s": round(n / single, 1), "batched_images_per_s": round(n / batched, 1),
            "pass_rate_on_ground_truth": float(passed)}


def bench_pose() -> dict:
    rng = np.random.default_rng(0)

    def cams(k):
        return np.stack([orbit_camera(rng.uniform(0, 360), rng.uniform(10, 60), rng.uniform(3, 8))
                         for _ in range(k)])

    gt_pairs = cams(20000).reshape(10000, 2, 4, 4)
    pred_pairs = gt_pairs + rng.normal(0, 0.01, gt_pairs.shape) * np.array([1, 1, 1, 0])
    pairs_s = best_of(lambda: pose_auc(pred_pairs, gt_pairs))
    gt_set = cams(142)
    pred_set = gt_set + rng.normal(0, 0.01, gt_set.shape) * np.array([1, 1, 1, 0])
    set_s = best_of(lambda: pose_auc(pred_set, gt_set))
    return {"independent_pairs": 10000, "independent_pairs_s": round(pairs_s, 4),
            "set_cameras": 142, "set_pairs": 142 * 141 // 2, "set_s": round(set_s, 4)}


def bench_depth() -> dict:
    rng = np.random.default_rng(1)
    gt = rng.uniform(2, 15, size=(500, 32, 32))
    pred = gt * 1.1 + rng.normal(0, 0.1, gt.shape)
    s = best_of(lambda: depth_metrics(pred, gt, align="scale_shift"))
    return {"images": 500, "size": 32, "seconds": round(s, 4), "images_per_s": round(500 / s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--n", type=int, default=400, help="t2i images per checker measurement")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                       "cpus": os.cpu_count(), "threads": 1, "torch": torch.__version__, "numpy": np.__version__},
           "checker": {f"{s}x{s}": bench_checker(s, args.n) for s in (32, 64)},
           "pose_auc": bench_pose(), "depth_metrics": bench_depth()}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"evaluation benchmark | {out['machine']['platform']} | 1 thread | torch {torch.__version__}")
    print(f"{'checker':<10}{'single img/s':>14}{'batched img/s':>15}{'library':>10}{'build s':>9}{'GT pass':>9}")
    for k, v in out["checker"].items():
        print(f"{k:<10}{v['single_images_per_s']:>14}{v['batched_images_per_s']:>15}{v['library_size']:>10}"
              f"{v['library_build_s']:>9}{v['pass_rate_on_ground_truth']:>9.1%}")
    p = out["pose_auc"]
    print(f"pose AUC: {p['independent_pairs']} independent pairs in {p['independent_pairs_s']} s; "
          f"all {p['set_pairs']} pairs of {p['set_cameras']} cameras in {p['set_s']} s")
    d = out["depth_metrics"]
    print(f"depth metrics: {d['images']} images of {d['size']}x{d['size']} in {d['seconds']} s "
          f"({d['images_per_s']} images/s)")


if __name__ == "__main__":
    main()
