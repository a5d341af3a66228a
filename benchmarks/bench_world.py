"""Benchmark of the procedural world renderer `omni.world.render.render` on one CPU thread.

    python benchmarks/bench_world.py [--json]

Measures frames per second (RGB + depth + ids, i.e. a plain `render(...)` call) at 32x32 and 64x64:
batched (many frames per call), one frame per call, and batched with cast shadows. If open3d can be
imported, the same scenes and cameras are also rendered with open3d's Embree-based
`RaycastingScene` (triangle meshes of the shapes and the ground, the same pixel-centre rays), timed
including the conversion of its hits into depth, Lambert-shaded RGB and instance ids, and checked
against ours (fraction of pixels whose depth agrees within 1%).

Everything runs on one thread: OMP/MKL/OpenBLAS are pinned to 1 before torch is imported, torch
gets `set_num_threads(1)`, open3d gets `utility.set_max_threads(1)` and `nthreads=1`. Each timing
also records CPU time / wall time, which stays close to 1.0 when only one core was busy.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from omni.world.camera import intrinsics, orbit_camera  # noqa: E402
from omni.world.render import AMBIENT, DEPTH_FAR, ID_GROUND, ID_SKY, LIGHT_DIR, render  # noqa: E402
from omni.world.scene import GROUND_HALF, GROUND_RGB, PALETTE, SKY_RGB, Scene, sample_scene  # noqa: E402

SIZES = (32, 64)
FOV = 50.0
N_BATCH = 512  # frames per batched call (and scenes in the fixed set)
N_SINGLE = 128  # frames rendered one call at a time
N_O3D = 256  # frames rendered with open3d (one RaycastingScene each)
REPEATS = 3  # best of, after a warm-up
MESH_RES = 64  # tessellation of the curved shapes for open3d (sides of the polygons)


def timed(fn, repeats: int = REPEATS, warmup: bool = True) -> tuple[float, float]:
    """Best wall time of `repeats` calls of fn (after one untimed call), and CPU/wall of that call."""
    if warmup:
        fn()
    best = (math.inf, 0.0)
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        best = min(best, (wall, cpu / wall))
    return best


def make_inputs(n: int) -> tuple[list[Scene], np.ndarray]:
    """A fixed, seeded set of n scenes and n orbit cameras (w2c, (n, 4, 4)) looking at them."""
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(n)]
    w2c = np.stack([orbit_camera(rng.uniform(0.0, 360.0), rng.uniform(28.0, 45.0), rng.uniform(4.6, 5.6),
                                 (0.0, 0.0, 0.35)) for _ in range(n)])
    return scenes, w2c


def bench_ours(scenes, w2c, size: int) -> dict:
    K = intrinsics(FOV, size)
    n1 = min(N_SINGLE, len(scenes))

    def batched(shadows=False):
        render(scenes, w2c, K, size, shadows=shadows)

    def one_at_a_time():
        for b in range(n1):
            render(scenes[b : b + 1], w2c[b : b + 1], K, size)

    t_b, u_b = timed(batched)
    t_1, u_1 = timed(one_at_a_time)
    t_s, u_s = timed(lambda: batched(shadows=True))
    fps_b, fps_1 = len(scenes) / t_b, n1 / t_1
    return {"batched_fps": fps_b, "single_fps": fps_1, "batched_over_single": fps_b / fps_1,
            "shadows_batched_fps": len(scenes) / t_s,
            "cpu_over_wall": {"batched": u_b, "single": u_1, "shadows": u_s}}


def bench_chunk(scenes, w2c, size: int, chunks=(16, 64, 256, 512)) -> dict:
    """Batched fps as a function of `render(chunk=...)` (default 64)."""
    K = intrinsics(FOV, size)
    return {c: len(scenes) / timed(lambda c=c: render(scenes, w2c, K, size, chunk=c))[0] for c in chunks}


# ---------------------------------------------------------------------------------------------- open3d


def load_open3d():
    """open3d's compiled module (with .t, .core, .utility) and a note on how it was loaded, or (None, why).

    open3d/__init__.py eagerly imports its plotly/dash visualiser; when those are missing the import
    fails *after* the compiled core `open3d.pybind` has been loaded, and that core is all we need."""
    try:
        import open3d

        return open3d, f"open3d {open3d.__version__}"
    except ImportError as e:
        core = sys.modules.get("open3d.pybind")
        if core is None or not hasattr(core, "t"):
            return None, f"open3d unavailable ({e})"
        return core, f"open3d compiled core only (`import open3d` failed: {e})"


def cpu_model() -> str:
    """platform.processor() is often empty on Linux: fall back to /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def open3d_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("open3d")
    except Exception:
        return None


def object_mesh(o3d, obj) -> tuple[np.ndarray, np.ndarray]:
    """World-frame vertices (float32) and triangles (uint32) of one object, placed as in scene.py."""
    TM = o3d.t.geometry.TriangleMesh
    r, h = obj.radius, obj.height
    if obj.shape == "cube":  # side 2r, base on the ground, yawed about its vertical axis
        m, offset = TM.create_box(2 * r, 2 * r, h), (-r, -r, 0.0)
    elif obj.shape == "sphere":
        m, offset = TM.create_sphere(r, MESH_RES // 2), (0.0, 0.0, r)  # 2 * resolution meridians
    elif obj.shape == "cylinder":  # open3d's is centred on the origin
        m, offset = TM.create_cylinder(r, h, MESH_RES, 1), (0.0, 0.0, h / 2)
    elif obj.shape == "cone":  # open3d's has its base at z = 0
        m, offset = TM.create_cone(r, h, MESH_RES, 1), (0.0, 0.0, 0.0)
    else:
        raise ValueError(obj.shape)
    v = m.vertex.positions.numpy().astype(np.float64) + offset
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    v = v @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # x' = c x - s y, y' = s x + c y
    v += (obj.x, obj.y, 0.0)
    return v.astype(np.float32), m.triangle.indices.numpy().astype(np.uint32)


GROUND_V = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32) * GROUND_HALF
GROUND_T = np.array([[0, 1, 2], [0, 2, 3]], np.uint32)


class O3DFrame:
    """One scene as an open3d RaycastingScene plus lookup tables from geometry id to id and colour."""

    def __init__(self, o3d, scene: Scene):
        c = o3d.core
        self.rs = o3d.t.geometry.RaycastingScene(nthreads=1)
        gids = [self.rs.add_triangles(*(c.Tensor(a) for a in object_mesh(o3d, ob))) for ob in scene.objects]
        gids.append(self.rs.add_triangles(c.Tensor(GROUND_V), c.Tensor(GROUND_T)))
        n = max(gids) + 2  # the last row stands for INVALID_ID (sky)
        self.invalid = o3d.t.geometry.RaycastingScene.INVALID_ID
        self.ids = np.full(n, ID_SKY, np.int16)
        self.rgb = np.tile(np.asarray(SKY_RGB, np.float32), (n, 1))
        for k, (g, ob) in enumerate(zip(gids[:-1], scene.objects, strict=True)):
            self.ids[g], self.rgb[g] = k, PALETTE[ob.color]
        self.ids[gids[-1]], self.rgb[gids[-1]] = ID_GROUND, GROUND_RGB


def o3d_rays(o3d, w2c: np.ndarray, K: np.ndarray, size: int):
    """The same rays as ours: world directions d (H, W, 3) with camera-z 1, and open3d's (H, W, 6) rays."""
    R_c2w, centre = w2c[:3, :3].T, -w2c[:3, :3].T @ w2c[:3, 3]
    j, i = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    uv1 = np.stack([j, i, np.ones_like(i)], -1)
    d = uv1 @ (R_c2w @ np.linalg.inv(K)).T
    return d, o3d.core.Tensor(np.concatenate([np.broadcast_to(centre, d.shape), d], -1).astype(np.float32))


def o3d_render(o3d, frame: O3DFrame, w2c: np.ndarray, K: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """RGB + depth + ids of one frame (rays, cast, then the same outputs as ours)."""
    d, rays = o3d_rays(o3d, w2c, K, size)
    hit = frame.rs.cast_rays(rays, nthreads=1)
    t = hit["t_hit"].numpy()
    valid = np.isfinite(t)
    depth = np.where(valid, t, DEPTH_FAR)  # t along a ray whose camera-z is 1 *is* the z-depth
    g = hit["geometry_ids"].numpy()
    g = np.where(g == frame.invalid, len(frame.ids) - 1, g)
    n = hit["primitive_normals"].numpy()
    n = np.where((np.einsum("hwk,hwk->hw", n, d) > 0)[..., None], -n, n)  # face the camera
    light = np.asarray(LIGHT_DIR) / np.linalg.norm(LIGHT_DIR)
    shade = AMBIENT + (1.0 - AMBIENT) * np.clip(n @ light, 0.0, None)
    rgb = frame.rgb[g] * np.where(valid, shade, 1.0)[..., None]
    return {"rgb": np.clip(rgb, 0.0, 1.0), "depth": depth, "ids": frame.ids[g]}


def limit_open3d_threads(o3d) -> str:
    """Ask open3d (TBB, no OMP_NUM_THREADS equivalent) for one thread; say what could be set."""
    said = "RaycastingScene(nthreads=1), cast_rays(nthreads=1)"
    if hasattr(o3d.utility, "set_max_threads"):
        o3d.utility.set_max_threads(1)
        return f"utility.set_max_threads(1) (process-wide TBB limit), {said}"
    return f"{said}; no utility.set_max_threads in this version (TBB default pool otherwise)"


def bench_open3d(o3d, scenes, w2c) -> dict:
    scenes, w2c = scenes[:N_O3D], w2c[:N_O3D]
    frames = [O3DFrame(o3d, sc) for sc in scenes]
    out = {}
    for size in SIZES:
        K = intrinsics(FOV, size)

        def cast_all(size=size, K=K):  # the first call also builds each scene's BVH (lazily)
            return [o3d_render(o3d, f, w2c[b], K, size) for b, f in enumerate(frames)]

        def build_and_cast(size=size, K=K):
            for b, sc in enumerate(scenes):
                o3d_render(o3d, O3DFrame(o3d, sc), w2c[b], K, size)

        rays = [o3d_rays(o3d, w2c[b], K, size)[1] for b in range(len(frames))]

        def cast_only(rays=rays):
            for f, r in zip(frames, rays, strict=True):
                f.rs.cast_rays(r, nthreads=1)

        t, u = timed(cast_all)
        t_cast, _ = timed(cast_only)
        t_build, u_build = timed(build_and_cast, repeats=1, warmup=False)
        mine = render(scenes, w2c, K, size).numpy()
        theirs = cast_all()
        d_o3d = np.stack([f["depth"] for f in theirs])
        ids_o3d = np.stack([f["ids"] for f in theirs])
        rgb_o3d = np.stack([f["rgb"] for f in theirs])
        either = (d_o3d < DEPTH_FAR) | mine["valid"]
        agree = np.abs(d_o3d - mine["depth"]) <= 0.01 * mine["depth"]
        out[f"{size}x{size}"] = {
            "fps": len(frames) / t, "fps_with_scene_build": len(frames) / t_build,
            "cast_rays_only_fps": len(frames) / t_cast,
            "depth_agree_1pct": float(agree[either].mean()),
            "ids_agree": float((ids_o3d == mine["ids"])[either].mean()),
            "rgb_mean_abs_diff": float(np.abs(rgb_o3d - mine["rgb"]).mean()),
            "cpu_over_wall": {"cast": u, "build_and_cast": u_build},
        }
    return out


# ---------------------------------------------------------------------------------------------- report


def run() -> dict:
    torch.set_num_threads(1)
    scenes, w2c = make_inputs(N_BATCH)
    ours = {f"{s}x{s}": bench_ours(scenes, w2c, s) for s in SIZES}
    chunk = bench_chunk(scenes, w2c, SIZES[-1])
    o3d, o3d_note = load_open3d()
    o3d_res = threads_note = None
    if o3d is not None:
        threads_note = limit_open3d_threads(o3d)
        o3d_res = bench_open3d(o3d, scenes, w2c)
        for key, r in o3d_res.items():
            r["ours_batched_over_open3d"] = ours[key]["batched_fps"] / r["fps"]
            r["ours_single_over_open3d"] = ours[key]["single_fps"] / r["fps"]
            r["ours_batched_over_cast_rays_only"] = ours[key]["batched_fps"] / r["cast_rays_only_fps"]
    return {
        "config": {"sizes": list(SIZES), "fov_deg": FOV, "batched_frames": N_BATCH, "single_frames": N_SINGLE,
                   "open3d_frames": N_O3D, "repeats": REPEATS, "render_chunk_default": 64,
                   "open3d_mesh_resolution": MESH_RES, "dtype": "float32", "device": "cpu"},
        "env": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                "torch_threads": torch.get_num_threads(),
                "env_threads": {v: os.environ[v] for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
                "open3d": open3d_version() if o3d is not None else None, "open3d_note": o3d_note,
                "open3d_threads": threads_note,
                "platform": {"system": platform.system(), "release": platform.release(),
                             "machine": platform.machine(), "processor": platform.processor(),
                             "cpu_model": cpu_model(), "platform": platform.platform(),
                             "cpu_count": os.cpu_count()}},
        "ours": ours,
        "ours_batched_fps_by_chunk": {f"{SIZES[-1]}x{SIZES[-1]}": chunk},
        "open3d": o3d_res,
    }


def print_table(res: dict) -> None:
    env = res["env"]
    print(f"omni.world.render benchmark  |  torch {env['torch']}, {env['torch_threads']} thread(s), "
          f"{env['platform']['platform']}")
    print(f"{env['platform']['cpu_model']}, {env['platform']['cpu_count']} CPUs")
    print(f"{res['config']['batched_frames']} fixed scenes/cameras (seed 0), fov {res['config']['fov_deg']}, "
          f"float32 CPU; fps = frames/s for RGB + depth + ids, best of {res['config']['repeats']}\n")
    o3d = res["open3d"]
    head = f"{'size':>6} {'batched':>9} {'1-at-a-time':>12} {'ratio':>6} {'+shadows':>9}"
    if o3d:
        head += f" {'open3d':>8} {'o3d+build':>10} {'ours/o3d':>9} {'1-at-a-time/o3d':>16} {'depth@1%':>9}"
    print(head)
    for key, r in res["ours"].items():
        line = (f"{key:>6} {r['batched_fps']:9.0f} {r['single_fps']:12.0f} {r['batched_over_single']:5.1f}x "
                f"{r['shadows_batched_fps']:9.0f}")
        if o3d:
            q = o3d[key]
            line += (f" {q['fps']:8.0f} {q['fps_with_scene_build']:10.0f}"
                     f" {q['ours_batched_over_open3d']:8.2f}x {q['ours_single_over_open3d']:15.2f}x"
                     f" {100 * q['depth_agree_1pct']:8.2f}%")
        print(line)
    for key, by_chunk in res["ours_batched_fps_by_chunk"].items():
        print(f"\nbatched fps at {key} by render(chunk=...): "
              + ", ".join(f"{c}: {f:.0f}" for c, f in by_chunk.items()))
    cpu = {f"{k} {m}": round(x, 2) for k, r in res["ours"].items() for m, x in r["cpu_over_wall"].items()}
    print(f"cpu/wall (1.0 = one busy core): ours {cpu}")
    if o3d:
        cpu = {f"{k} {m}": round(x, 2) for k, q in o3d.items() for m, x in q["cpu_over_wall"].items()}
        print(f"cpu/wall: open3d {cpu}")
        print(f"open3d: {env['open3d']} via {env['open3d_note']}; threads: {env['open3d_threads']}")
        print(f"open3d: {res['config']['open3d_frames']} frames, one RaycastingScene each (BVH prebuilt; "
              f"'o3d+build' also builds meshes + BVH per frame), curved shapes with "
              f"{res['config']['open3d_mesh_resolution']}-sided polygons")
        raw = ", ".join(f"{k}: {q['cast_rays_only_fps']:.0f} fps (ours batched / it "
                        f"{q['ours_batched_over_cast_rays_only']:.2f}x)" for k, q in o3d.items())
        print(f"open3d cast_rays alone (rays prebuilt, no depth/shade/ids): {raw}")
        ids = ", ".join(f"{k}: {100 * q['ids_agree']:.2f}%" for k, q in o3d.items())
        rgb = ", ".join(f"{k}: {q['rgb_mean_abs_diff']:.4f}" for k, q in o3d.items())
        print(f"ours vs open3d: depth within 1% (column above) and ids agree {ids} on pixels hit by either; "
              f"RGB mean |diff| over all pixels {rgb}")
    else:
        print(f"open3d comparison skipped: {env['open3d_note']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    res = run()
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(res)


if __name__ == "__main__":
    main()
