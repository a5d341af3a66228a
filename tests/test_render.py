import math

import numpy as np
import pytest
import torch

from omni.world import camera as C
from omni.world.render import DEPTH_FAR, ID_GROUND, ID_SKY, render
from omni.world.scene import GROUND_HALF, Obj, Scene, SceneOptions, sample_scene

SIZE = 33  # odd: the centre pixel's ray is the optical axis


def surface_residual(o: Obj, p: np.ndarray) -> np.ndarray:
    """Distance-like residual of points p (N, 3) from the surface of object o (0 on the surface)."""
    dx, dy, z = p[:, 0] - o.x, p[:, 1] - o.y, p[:, 2]
    r, h = o.radius, o.height
    rho = np.hypot(dx, dy)
    if o.shape == "sphere":
        return np.abs(np.sqrt(dx**2 + dy**2 + (z - r) ** 2) - r)
    if o.shape == "cube":
        c, s = math.cos(o.yaw), math.sin(o.yaw)
        lx, ly = c * dx + s * dy, -s * dx + c * dy
        return np.abs(np.maximum(np.maximum(np.abs(lx), np.abs(ly)), np.abs(z - r)) - r)
    if o.shape == "cylinder":
        side = np.abs(rho - r) + np.maximum(z - h, 0) + np.maximum(-z, 0)
        cap = np.abs(z - h) + np.maximum(rho - r, 0)
        return np.minimum(side, cap)
    k = r / h
    return np.abs(rho - k * (h - z)) + np.maximum(z - h, 0) + np.maximum(-z, 0)


def render_np(scenes, w2c, size=SIZE, fov=50.0, dtype=torch.float64, **kw):
    K = C.intrinsics(fov, size)
    return render(scenes, np.stack(w2c), K, size, dtype=dtype, **kw).numpy(), K


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_analytic_depth_on_axis(dtype):
    """Camera at height z looking horizontally at each shape: the optical-axis pixel's z-depth
    is the distance to the axis minus the radius at that height."""
    D = 4.0
    cases = []
    for shape in ("sphere", "cube", "cylinder", "cone"):
        o = Obj(shape, "red", "large", 0.0, 0.0, 0.0)
        zc = o.radius if shape == "sphere" else o.height * 0.4
        radius_at = {"sphere": o.radius, "cube": o.radius, "cylinder": o.radius,
                     "cone": o.radius * (o.height - zc) / o.height}[shape]
        cases.append((o, zc, D - radius_at))
    scenes = [Scene([o]) for o, _, _ in cases]
    cams = [C.look_at([0.0, -D, zc], [0.0, 0.0, zc]) for _, zc, _ in cases]
    out, _ = render_np(scenes, cams, dtype=dtype)
    c = SIZE // 2
    for f, (o, _, expect) in enumerate(cases):
        assert out["ids"][f, c, c] == 0, o.shape
        assert abs(out["depth"][f, c, c] - expect) / expect < 1e-4, (o.shape, out["depth"][f, c, c], expect)


def test_analytic_cube_face_and_ground():
    # frontal cube face: every pixel of the face has the same z-depth D - half side
    o = Obj("cube", "blue", "large", 0.0, 0.0, 0.0)
    D = 3.0
    out, K = render_np([Scene([o])], [C.look_at([0.0, -D, o.radius], [0.0, 0.0, o.radius])])
    face = out["ids"][0] == 0
    assert face.sum() > 50
    assert np.allclose(out["depth"][0][face], D - o.radius, rtol=1e-6)
    # ground seen from straight above at height 2: z-depth 2 everywhere in the square
    top = C.look_at([0.0, 0.0, 2.0], [0.0, 0.0, 0.0], up=[0.0, 1.0, 0.0])
    out, _ = render_np([Scene([])], [top])
    assert (out["ids"][0] == ID_GROUND).all()
    assert np.allclose(out["depth"][0], 2.0, rtol=1e-9)
    # a camera looking at the sky: nothing valid, far depth, sky id
    up = C.look_at([0.0, 0.0, 2.0], [0.0, 5.0, 10.0])
    out, _ = render_np([Scene([o])], [up])
    assert not out["valid"].any() and (out["ids"] == ID_SKY).all() and (out["depth"] == DEPTH_FAR).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_pixel_is_the_nearest_surface(dtype):
    """Each valid pixel's depth unprojects onto the surface of the object its id names (or the
    ground), and no object contains any point of the ray in front of that hit."""
    rng = np.random.default_rng(3)
    opts = SceneOptions()
    scenes = [sample_scene(rng, opts) for _ in range(12)]
    cams = [C.orbit_camera(rng.uniform(0, 360), rng.uniform(20, 50), rng.uniform(4.5, 6.0), (0, 0, 0.35))
            for _ in scenes]
    out, K = render_np(scenes, cams, size=48, dtype=dtype)
    tol = 1e-9 if dtype == torch.float64 else 5e-4  # metres; depths are ~5 m
    for f, (sc, w2c) in enumerate(zip(scenes, cams, strict=True)):
        pts = C.unproject(out["depth"][f].astype(np.float64), K, w2c)
        ids = out["ids"][f]
        ground = ids == ID_GROUND
        assert np.abs(pts[ground][:, 2]).max() < tol
        assert (np.abs(pts[ground][:, :2]) <= GROUND_HALF + 1e-3).all()
        for k, o in enumerate(sc.objects):
            m = ids == k
            if m.any():
                assert surface_residual(o, pts[m]).max() < tol, o.shape
        cam = C.camera_center(w2c)
        valid = out["valid"][f]
        for frac in (0.25, 0.5, 0.75, 0.97):
            front = cam + (pts[valid] - cam) * frac
            for o in sc.objects:
                assert not o.inside(front).any()


def test_batched_equals_single_and_chunking():
    rng = np.random.default_rng(4)
    scenes = [sample_scene(rng) for _ in range(7)]
    cams = [C.orbit_camera(rng.uniform(0, 360), 35, 5.0, (0, 0, 0.35)) for _ in scenes]
    K = C.intrinsics(50.0, 24)
    full = render(scenes, np.stack(cams), K, 24, chunk=3, amodal=True).numpy()
    for f in range(7):
        one = render([scenes[f]], cams[f][None], K, 24, amodal=True).numpy()
        for key in ("rgb", "depth", "ids", "valid"):
            assert np.array_equal(full[key][f], one[key][0]), key
        n = len(scenes[f].objects)
        assert np.array_equal(full["amodal"][f, :n], one["amodal"][0, :n])
        assert not full["amodal"][f, n:].any()
    # shared scene via scene_index
    again = render(scenes[:1], np.stack(cams[:2]), K, 24, scene_index=[0, 0]).numpy()
    assert np.array_equal(again["ids"][0], full["ids"][0])


def test_outputs_and_amodal_and_shading():
    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng) for _ in range(16)]
    cams = [C.orbit_camera(rng.uniform(0, 360), 35, 5.0, (0, 0, 0.35)) for _ in scenes]
    r = render(scenes, np.stack(cams), C.intrinsics(50.0, 32), 32, amodal=True)
    assert r.rgb.shape == (16, 32, 32, 3) and r.depth.shape == (16, 32, 32) and r.ids.dtype == torch.int16
    assert r.rgb.min() >= 0 and r.rgb.max() <= 1 and torch.isfinite(r.depth).all()
    assert torch.equal(r.valid, r.ids != ID_SKY)
    for f, sc in enumerate(scenes):
        for k in range(len(sc.objects)):
            assert not ((r.ids[f] == k) & ~r.amodal[f, k]).any()  # visible => amodal
    sh = render(scenes, np.stack(cams), C.intrinsics(50.0, 32), 32, shadows=True)
    assert torch.equal(sh.depth, r.depth)
    darker = (sh.rgb.sum(-1) < r.rgb.sum(-1) - 1e-4)
    assert darker.any() and not (sh.rgb.sum(-1) > r.rgb.sum(-1) + 1e-6).any()


def test_multiview_consistency():
    """Depth from view A unprojected and reprojected into B matches B's depth on co-visible pixels."""
    rng = np.random.default_rng(6)
    ok = total = 0
    size = 96
    K = C.intrinsics(50.0, size)
    for _ in range(6):
        sc = sample_scene(rng)
        a = C.orbit_camera(rng.uniform(0, 360), 35, 5.0, (0, 0, 0.35))
        b = C.rotate_view(C.move_view(a, [0.15, 0.0, 0.1]), "left", 4.0)
        out = render([sc], np.stack([a, b]), K, size, scene_index=[0, 0], dtype=torch.float64).numpy()
        pts = C.unproject(out["depth"][0], K, a)
        uv, z = C.project(pts, K, b)
        src = out["valid"][0]
        j, i = np.floor(uv[..., 0]).astype(int), np.floor(uv[..., 1]).astype(int)
        inside = src & (j >= 0) & (j < size) & (i >= 0) & (i < size)
        jj, ii = np.clip(j, 0, size - 1), np.clip(i, 0, size - 1)
        same = inside & (out["ids"][1][ii, jj] == out["ids"][0])
        # B's depth at the reprojected location, bilinear over pixel centres
        fu, fv = uv[..., 0] - 0.5, uv[..., 1] - 0.5
        j0, i0 = np.clip(np.floor(fu).astype(int), 0, size - 2), np.clip(np.floor(fv).astype(int), 0, size - 2)
        wu, wv = np.clip(fu - j0, 0, 1), np.clip(fv - i0, 0, 1)
        d = out["depth"][1]
        db = ((1 - wu) * (1 - wv) * d[i0, j0] + wu * (1 - wv) * d[i0, j0 + 1]
              + (1 - wu) * wv * d[i0 + 1, j0] + wu * wv * d[i0 + 1, j0 + 1])
        err = np.abs(z - db) / db
        ok += int((err[same] < 0.02).sum())
        total += int(same.sum())
    assert total > 10000
    assert ok / total >= 0.95, ok / total


def test_bad_input():
    sc = Scene([])
    K = C.intrinsics(50, 8)
    with pytest.raises(ValueError):
        render([sc, sc], np.eye(4)[None], K, 8)  # 2 scenes, 1 camera, no scene_index
    with pytest.raises(ValueError):
        render([sc], np.eye(4)[None], K, 8, scene_index=[3])
    with pytest.raises(ValueError):
        render([sc], np.eye(4)[None], K, 0)
    with pytest.raises(ValueError):
        render([sc], np.zeros((1, 2, 2)), K, 8)


def test_bad_cameras_and_batching_raise_not_mislead():
    """Each of these once crashed deep inside (IndexError, LinAlgError, ZeroDivisionError) or, worse,
    returned a wrong render: chunk < 1 left the outputs uninitialised, tile < 1 dropped pixels, a NaN
    camera gave plain sky."""
    sc = Scene([Obj("cube", "red", "large", 0.0, 0.0, 0.3)])
    w2c, K = C.orbit_camera(20.0, 30.0, 5.0), C.intrinsics(50.0, 16)
    with pytest.raises(ValueError, match=r"w2c must be \(1, 3, 4\) matrices, got shape \(1, 3, 3\)"):
        render([sc], np.eye(3)[None], K, 16)  # a rotation alone: no translation column
    with pytest.raises(ValueError, match="K must be invertible"):
        render([sc], w2c, np.diag([0.0, 0.0, 1.0]), 16)
    with pytest.raises(ValueError, match="w2c must be finite"):
        render([sc], np.full((4, 4), np.nan), K, 16)
    for kw in ({"chunk": 0}, {"chunk": -1}, {"tile": 0}, {"tile": -8}):
        with pytest.raises(ValueError, match="chunk and tile must be positive"):
            render([sc], w2c, K, 16, **kw)
    ref = render([sc], w2c, K, 16).numpy()  # tiles are only a speed-up: any positive size, same bits
    for tile in (1, 3, 17):
        got = render([sc], w2c, K, 16, tile=tile).numpy()
        assert all(np.array_equal(ref[k], got[k]) for k in ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(7)
    scenes = [sample_scene(rng) for _ in range(8)]
    cams = np.stack([C.orbit_camera(rng.uniform(0, 360), 35, 5.0, (0, 0, 0.35)) for _ in scenes])
    K = C.intrinsics(50.0, 32)
    a = render(scenes, cams, K, 32).numpy()
    b = render(scenes, cams, K, 32, device="cuda").numpy()
    assert (a["ids"] == b["ids"]).mean() > 0.999
    assert np.allclose(a["depth"], b["depth"], rtol=1e-4, atol=1e-4)
