"""Exact analytic ray casting of the world's shapes, batched over frames, in torch (CPU or CUDA).

Each pixel's ray is d = R_c2w K^-1 [u, v, 1]; its camera-frame z component is 1, so the ray
parameter of a hit *is* its z-depth. Every object is intersected in closed form (sphere and
cylinder and cone: quadratics solved in the cancellation-free form; cube: slabs in its yawed
frame; ground: a plane clipped to the square). The work is grouped by shape type over all the
objects of all frames at once, so one call renders thousands of frames with a few dozen array ops.

Outputs per frame: RGB in [0, 1] (Lambert + ambient, optional cast shadows), z-depth (background
gets DEPTH_FAR), a valid mask (a surface was hit), instance ids (ID_SKY, ID_GROUND, or the object's
index in its scene) and, on request, every object's amodal mask (where it would be seen alone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .scene import GROUND_HALF, GROUND_RGB, PALETTE, SHAPES, SKY_RGB, Scene

DEPTH_FAR = 20.0  # depth written where no surface is hit (valid = False), metres
ID_SKY, ID_GROUND = -2, -1
AMBIENT = 0.35
SHADOW_KEEP = 0.35  # fraction of the direct light that still reaches a shadowed point
LIGHT_DIR = (0.35, -0.55, 1.0)  # towards the light, world frame (normalised on use)
EPS = 1e-4
_SHAPE_CODE = {s: i for i, s in enumerate(SHAPES)}
_COLOR = {name: rgb for name, rgb in PALETTE.items()}


@dataclass
class Render:
    rgb: torch.Tensor  # (B, H, W, 3) float in [0, 1]
    depth: torch.Tensor  # (B, H, W) z-depth, DEPTH_FAR where not valid
    valid: torch.Tensor  # (B, H, W) bool
    ids: torch.Tensor  # (B, H, W) int16: ID_SKY, ID_GROUND, or object index in its scene
    amodal: torch.Tensor | None = None  # (B, K, H, W) bool, K = most objects in any frame

    def numpy(self) -> dict[str, np.ndarray]:
        out = {k: getattr(self, k) for k in ("rgb", "depth", "valid", "ids", "amodal")}
        return {k: v.cpu().numpy() for k, v in out.items() if v is not None}


def _as_batch(a, n: int, rows: int, name: str, cols: tuple[int, ...] = (3, 4)) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        a = np.broadcast_to(a, (n, *a.shape))
    if a.ndim != 3 or a.shape[0] != n or a.shape[1] < rows or a.shape[2] not in cols:
        raise ValueError(f"{name} must be ({n}, {rows}, {' or '.join(map(str, cols))}) matrices, "
                         f"got shape {a.shape}")
    if not np.isfinite(a).all():  # a NaN camera renders as plain sky, silently
        raise ValueError(f"{name} must be finite, got non-finite entries")
    return a


def _pack(scenes: Sequence[Scene], scene_index: np.ndarray):
    """Flatten the objects of every frame: per-object frame, slot and shape parameters."""
    per_scene = []
    for sc in scenes:
        rows = [(_SHAPE_CODE[o.shape], o.x, o.y, o.radius, o.height, math.cos(o.yaw), math.sin(o.yaw),
                 *_COLOR[o.color]) for o in sc.objects]
        per_scene.append(np.array(rows, dtype=np.float64).reshape(len(rows), 10))
    counts = np.array([len(per_scene[s]) for s in scene_index], dtype=np.int64)
    frame = np.repeat(np.arange(len(scene_index)), counts)
    slot = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    params = (np.concatenate([per_scene[s] for s in scene_index]) if counts.sum()
              else np.zeros((0, 10)))
    return frame, slot, params, int(counts.max(initial=0))


# Intersections in each object's local frame: origin at its base centre, cube axes along x / y.
# Arguments are (n, 1) or (n, P) tensors; the result is the ray parameter (inf: miss).


def _sphere(ox, oy, oz, dx, dy, dz, r, h):
    oz = oz - r
    a = dx * dx + dy * dy + dz * dz
    bh = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - r * r
    disc = bh * bh - a * c
    t = c / (torch.sqrt(disc.clamp_min(0)) - bh)
    return torch.where((disc >= 0) & (bh < 0) & (t > EPS), t, math.inf)


def _cube(ox, oy, oz, dx, dy, dz, r, h):
    tiny = 1e-12
    tn = tf = None
    for o, d, lo, hi in ((ox, dx, -r, r), (oy, dy, -r, r), (oz, dz, 0.0, h)):
        inv = 1.0 / torch.where(d.abs() < tiny, tiny, d)
        t1, t2 = (lo - o) * inv, (hi - o) * inv
        near, far = torch.minimum(t1, t2), torch.maximum(t1, t2)
        tn = near if tn is None else torch.maximum(tn, near)
        tf = far if tf is None else torch.minimum(tf, far)
    return torch.where((tn <= tf) & (tn > EPS), tn, math.inf)


def _cylinder(ox, oy, oz, dx, dy, dz, r, h):
    a = dx * dx + dy * dy
    bh = ox * dx + oy * dy
    c = ox * ox + oy * oy - r * r
    disc = bh * bh - a * c
    ts = c / (torch.sqrt(disc.clamp_min(0)) - bh)
    zs = oz + ts * dz
    ts = torch.where((disc >= 0) & (ts > EPS) & (zs >= 0) & (zs <= h), ts, math.inf)
    tc = (h - oz) / torch.where(dz.abs() < 1e-12, -1e-12, dz)
    xc, yc = ox + tc * dx, oy + tc * dy
    tc = torch.where((tc > EPS) & (xc * xc + yc * yc <= r * r), tc, math.inf)
    return torch.minimum(ts, tc)


def _cone(ox, oy, oz, dx, dy, dz, r, h):
    k2 = (r / h) ** 2
    hz = h - oz
    a = dx * dx + dy * dy - k2 * dz * dz
    bh = ox * dx + oy * dy + k2 * hz * dz
    c = ox * ox + oy * oy - k2 * hz * hz
    disc = bh * bh - a * c
    q = -(bh + torch.where(bh >= 0, 1.0, -1.0) * torch.sqrt(disc.clamp_min(0)))
    best = None
    for t in (q / a, c / q):  # the two roots, cancellation-free
        z = oz + t * dz
        t = torch.where((disc >= 0) & (t > EPS) & (z >= 0) & (z <= h), t, math.inf)
        best = t if best is None else torch.minimum(best, t)
    return best


_INTERSECT = (_cube, _sphere, _cylinder, _cone)  # in SHAPES order
assert [f.__name__[1:] for f in _INTERSECT] == list(SHAPES)


def _hit_objects(frame, slot, params, rays, shape_rows, out):
    """Write every object's ray parameter against the rays of its own frame into out[frame, slot, :].

    rays(rows, fo, p) -> (origin, direction) 3-tuples of (n, 1) or (n, P) tensors, in the local
    frames of objects `rows` (parameters p) of frames `fo`. Only elementwise arithmetic is used,
    so a frame renders to the same bits whatever else is in the batch."""
    for code, rows in shape_rows:
        fo, p = frame[rows], params[rows]
        o, d = rays(rows, fo, p)
        t = _INTERSECT[code](*o, *d, p[:, 3:4], p[:, 4:5])
        out[fo, slot[rows]] = t.expand(len(rows), out.shape[-1])
    return out


def _local(x, y, z, p):
    """World vectors (x, y, z) -> the local axes of objects p (yaw rotation R_z(-yaw))."""
    cs, sn = p[:, 5:6], p[:, 6:7]
    return cs * x + sn * y, cs * y - sn * x, z


def _tile_side(n: int, tile: int) -> int:
    return tile if n % tile == 0 else n


def _tiles(frame, params, w2c, K, H, W, tile):
    """Screen tiles each object can touch: (pair object rows, (pairs, th * tw) flat pixel indices).

    An object's world bounding box (footprint square x its height) is projected with its frame's
    camera; the box of the projected corners contains the object's image (all corners in front),
    otherwise every tile is taken. Tiles are tile x tile pixels (the whole side if it does not divide)."""
    th, tw = _tile_side(H, tile), _tile_side(W, tile)
    ny, nx = H // th, W // tw
    n = len(params)
    fp = np.where(params[:, 0] == _SHAPE_CODE["cube"], np.sqrt(2.0), 1.0) * params[:, 3]
    sx, sy, sz = np.meshgrid([-1.0, 1.0], [-1.0, 1.0], [0.0, 1.0], indexing="ij")
    corners = np.stack([params[:, 1, None] + fp[:, None] * sx.reshape(1, -1),
                        params[:, 2, None] + fp[:, None] * sy.reshape(1, -1),
                        params[:, 4, None] * sz.reshape(1, -1)], -1)  # (n, 8, 3)
    cam = np.einsum("nij,nkj->nki", w2c[frame, :3, :3], corners) + w2c[frame, None, :3, 3]
    z = cam[..., 2]
    proj = np.einsum("nij,nkj->nki", K[frame, :3, :3], cam)
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = proj[..., 0] / z, proj[..., 1] / z
    front = (z > 1e-6).all(axis=1)
    x0 = np.where(front, np.floor(np.nan_to_num(u.min(1), nan=0.0) - 1) // tw, 0).clip(0, nx - 1)
    x1 = np.where(front, np.floor(np.nan_to_num(u.max(1), nan=0.0) + 1) // tw, nx - 1).clip(0, nx - 1)
    y0 = np.where(front, np.floor(np.nan_to_num(v.min(1), nan=0.0) - 1) // th, 0).clip(0, ny - 1)
    y1 = np.where(front, np.floor(np.nan_to_num(v.max(1), nan=0.0) + 1) // th, ny - 1).clip(0, ny - 1)
    # an object entirely off screen on one side still gets its clipped edge tiles: harmless
    x0, x1, y0, y1 = (a.astype(np.int64) for a in (x0, x1, y0, y1))
    wide = x1 - x0 + 1
    counts = wide * (y1 - y0 + 1)
    obj = np.repeat(np.arange(n), counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    tx, ty = x0[obj] + k % wide[obj], y0[obj] + k // wide[obj]
    ii, jj = np.meshgrid(np.arange(th), np.arange(tw), indexing="ij")
    local = (ii * W + jj).reshape(-1)
    pix = (ty * th * W + tx * tw)[:, None] + local[None, :]
    return obj, pix


def _normal_cube(qx, qy, qz, r, h, cs, sn):
    # the face whose slab coordinate is largest relative to its half extent
    lx, ly, lz = cs * qx + sn * qy, cs * qy - sn * qx, qz - r
    ax, ay, az = lx.abs(), ly.abs(), lz.abs()
    fx = (ax >= ay) & (ax >= az)
    fy = ~fx & (ay >= az)
    nlx, nly = torch.where(fx, lx.sign(), 0.0), torch.where(fy, ly.sign(), 0.0)
    return cs * nlx - sn * nly, sn * nlx + cs * nly, torch.where(~fx & ~fy, lz.sign(), 0.0)


def _normal_sphere(qx, qy, qz, r, h, cs, sn):
    return qx, qy, qz - r


def _normal_cylinder(qx, qy, qz, r, h, cs, sn):
    # cap or side, whichever surface the point is nearer to
    rho = torch.sqrt(qx * qx + qy * qy)
    cap = (qz - h).abs() < (rho - r).abs()
    return torch.where(cap, 0.0, qx), torch.where(cap, 0.0, qy), cap.to(qx.dtype)


def _normal_cone(qx, qy, qz, r, h, cs, sn):
    # gradient of x^2 + y^2 - k^2 (h - z)^2 on the side surface
    return qx, qy, (r / h) * torch.sqrt(qx * qx + qy * qy)


_NORMAL = (_normal_cube, _normal_sphere, _normal_cylinder, _normal_cone)  # in SHAPES order


def _lambert(code, q, p, light):
    """max(0, n . light) at object hit points q (M, 3), relative to each object's base centre."""
    out = q.new_empty(len(q))
    for c, fn in enumerate(_NORMAL):
        sel = code == c
        if sel.any():
            qs, ps = q[sel], p[sel]
            nx, ny, nz = fn(qs[:, 0], qs[:, 1], qs[:, 2], ps[:, 3], ps[:, 4], ps[:, 5], ps[:, 6])
            norm = torch.sqrt(nx * nx + ny * ny + nz * nz).clamp_min(1e-12)
            out[sel] = (nx * light[0] + ny * light[1] + nz * light[2]) / norm
    return out.clamp_min(0.0)


def render(scenes: Sequence[Scene], w2c, K, height: int, width: int | None = None,
           scene_index: Sequence[int] | None = None, shadows: bool = False, amodal: bool = False,
           device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
           chunk: int = 64, tile: int = 8) -> Render:
    """Render frame b = scene `scenes[scene_index[b]]` seen by camera (K[b], w2c[b]).

    w2c: (B, 4, 4) or (B, 3, 4) world-to-camera; K: (3, 3) shared or (B, 3, 3).
    scene_index defaults to one scene per frame."""
    width = height if width is None else width
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if chunk < 1 or tile < 1:  # chunk < 1 left the output unwritten; tile < 1 dropped tiles
        raise ValueError(f"chunk and tile must be positive, got chunk={chunk}, tile={tile}")
    w2c = np.asarray(w2c, dtype=np.float64)
    w2c = w2c[None] if w2c.ndim == 2 else w2c
    B = w2c.shape[0]
    w2c = _as_batch(w2c, B, 3, "w2c", cols=(4,))  # the translation is column 3
    K = _as_batch(K, B, 3, "K")
    if scene_index is None:
        if len(scenes) != B:
            raise ValueError(f"{len(scenes)} scenes for {B} cameras: pass scene_index")
        scene_index = np.arange(B)
    scene_index = np.asarray(scene_index, dtype=np.int64)
    if scene_index.shape != (B,) or (B and (scene_index.min() < 0 or scene_index.max() >= len(scenes))):
        raise ValueError("scene_index must hold one valid scene index per camera")
    frame, slot, params, kmax = _pack(scenes, scene_index)

    # per frame: camera centre and M = R_c2w K^-1 (pixel (u, v, 1) -> world ray, camera-z = 1)
    R_c2w = np.transpose(w2c[:, :3, :3], (0, 2, 1))
    centers = np.einsum("bij,bj->bi", -R_c2w, w2c[:, :3, 3])
    try:
        M = R_c2w @ np.linalg.inv(K[:, :3, :3])
    except np.linalg.LinAlgError:
        bad = int(np.argmin(np.abs(np.linalg.det(K[:, :3, :3]))))
        raise ValueError(f"K must be invertible (non-zero focal lengths), got {K[bad, :3, :3].tolist()} "
                         f"for frame {bad}") from None
    tt = dict(device=device, dtype=dtype)
    out = Render(rgb=torch.empty((B, height, width, 3), **tt), depth=torch.empty((B, height, width), **tt),
                 valid=torch.empty((B, height, width), dtype=torch.bool, device=device),
                 ids=torch.empty((B, height, width), dtype=torch.int16, device=device),
                 amodal=torch.empty((B, kmax, height, width), dtype=torch.bool, device=device) if amodal else None)
    j, i = torch.meshgrid(torch.arange(width, **tt) + 0.5, torch.arange(height, **tt) + 0.5, indexing="xy")
    uv = (j.reshape(-1), i.reshape(-1))
    bounds = np.searchsorted(frame, np.arange(0, B + chunk, chunk))
    for c, s in enumerate(range(0, B, chunk)):
        e = min(B, s + chunk)
        lo, hi = bounds[c], bounds[c + 1]
        tiles = _tiles(frame[lo:hi], params[lo:hi], w2c, K, height, width, tile)
        got = _render_chunk(frame[lo:hi] - s, slot[lo:hi], params[lo:hi], kmax, centers[s:e], M[s:e], uv,
                            tiles, width, shadows, amodal, tt)
        for key, val in got.items():
            getattr(out, key)[s:e] = val.reshape(getattr(out, key)[s:e].shape)
    return out


def _render_chunk(frame, slot, params, kmax, centers, M, uv, tiles, W, shadows, want_amodal, tt):
    device = tt["device"]
    B, P = len(centers), len(uv[0])
    u, v = uv
    Mt = torch.as_tensor(M, **tt)[..., None]  # (B, 3, 3, 1)
    dx, dy, dz = (Mt[:, k, 0] * u + Mt[:, k, 1] * v + Mt[:, k, 2] for k in range(3))  # (B, P) each
    C = torch.as_tensor(centers, **tt)
    ox, oy, oz = C[:, 0:1], C[:, 1:2], C[:, 2:3]


    frame_t = torch.as_tensor(frame, device=device)
    slot_t = torch.as_tensor(slot, device=device)
    params_t = torch.as_tensor(params, **tt)
    codes = params[:, 0].astype(np.int64)
    shape_rows = [(c, torch.as_tensor(np.nonzero(codes == c)[0], device=device)) for c in range(4)]
    shape_rows = [(c, r) for c, r in shape_rows if len(r)]

    # camera rays: each object only against the pixels of the screen tiles it can touch
    T = dx.new_full((B, max(kmax, 1), P), math.inf)
    pair_obj, pix = tiles
    order = np.argsort(codes[pair_obj], kind="stable")
    pair_obj, pix = pair_obj[order], pix[order]
    bounds = np.searchsorted(codes[pair_obj], np.arange(5))
    for code in range(4):
        if bounds[code] == bounds[code + 1]:
            continue
        po = torch.as_tensor(pair_obj[bounds[code]:bounds[code + 1]], device=device)
        px = torch.as_tensor(pix[bounds[code]:bounds[code + 1]], device=device)
        fo, p = frame_t[po], params_t[po]
        pu, pv = (px % W).to(tt["dtype"]) + 0.5, (px // W).to(tt["dtype"]) + 0.5
        # rays are linear in (u, v): rotate the frame's matrix into the object's axes, then expand
        m = _local(Mt[fo, 0, :, 0], Mt[fo, 1, :, 0], Mt[fo, 2, :, 0], p)  # rows of the local M, (n, 3)
        d = tuple(mk[:, 0:1] * pu + mk[:, 1:2] * pv + mk[:, 2:3] for mk in m)
        o = _local(ox[fo] - p[:, 1:2], oy[fo] - p[:, 2:3], oz[fo], p)
        T[fo[:, None], slot_t[po][:, None], px] = _INTERSECT[code](*o, *d, p[:, 3:4], p[:, 4:5])
    t_min, k_min = T.min(dim=1)

    tg = -oz / torch.where(dz < -1e-12, dz, -1e-12)
    tg = torch.where(dz < 0, tg, math.inf)
    gx, gy = ox + tg * dx, oy + tg * dy
    tg = torch.where((gx.abs() <= GROUND_HALF) & (gy.abs() <= GROUND_HALF), tg, math.inf)

    hit_obj = t_min < tg
    t = torch.minimum(t_min, tg)
    valid = torch.isfinite(t)
    ids = torch.where(hit_obj, k_min, torch.where(valid, ID_GROUND, ID_SKY)).to(torch.int16)
    depth = torch.where(valid, t, DEPTH_FAR)

    # Shading: Lambert + ambient, colours gathered from one table (sky, ground, objects).
    light = torch.tensor(LIGHT_DIR, **tt)
    light = light / light.norm()
    starts = torch.zeros(B, dtype=torch.long, device=device)
    starts[1:] = torch.bincount(frame_t, minlength=B).cumsum(0)[:-1]
    row = starts[:, None] + k_min  # object row of every pixel (meaningful where hit_obj)
    lam = torch.full((B, P), float(light[2].clamp_min(0)), **tt)  # the ground's normal is +z
    if hit_obj.any():
        flat = torch.nonzero(hit_obj.reshape(-1)).squeeze(1)  # hit pixels, flat (frame, pixel) index

        def at_hits(x):
            return x.expand(B, P).reshape(-1).index_select(0, flat)

        p = params_t.index_select(0, at_hits(row))
        tp = at_hits(t)
        q = torch.stack([at_hits(ox) + tp * at_hits(dx) - p[:, 1], at_hits(oy) + tp * at_hits(dy) - p[:, 2],
                         at_hits(oz) + tp * at_hits(dz)], -1)
        lam.view(-1).index_copy_(0, flat, _lambert(p[:, 0], q, p, light))
    if shadows and len(params):
        # shadow rays from every surface point (lifted off it) towards the light
        # (ground points lifted up, object points moved back along the camera ray)
        tv = torch.where(valid, torch.where(hit_obj, t - 10 * EPS, t), 0.0)
        lift = torch.where(hit_obj, 0.0, 10 * EPS)
        px, py, pz = ox + tv * dx, oy + tv * dy, oz + tv * dz + lift

        def shadow_rays(rows, fo, p):
            lx, ly, lz = (light[k].reshape(1, 1) for k in range(3))
            return _local(px[fo] - p[:, 1:2], py[fo] - p[:, 2:3], pz[fo], p), _local(lx, ly, lz, p)

        T_sh = dx.new_full((B, max(kmax, 1), P), math.inf)
        _hit_objects(frame_t, slot_t, params_t, shadow_rays, shape_rows, T_sh)
        blocked = torch.isfinite(T_sh).any(dim=1) & valid
        lam = torch.where(blocked, lam * SHADOW_KEEP, lam)
    shade = torch.where(valid, AMBIENT + (1.0 - AMBIENT) * lam, 1.0)
    table = torch.cat([torch.tensor([SKY_RGB, GROUND_RGB], **tt), params_t[:, 7:10]])
    cidx = torch.where(hit_obj, 2 + row, valid.long())
    rgb = table.index_select(0, cidx.reshape(-1)).reshape(B, P, 3) * shade[..., None]  # <= 1 by construction

    out = {"rgb": rgb, "depth": depth, "valid": valid, "ids": ids}
    if want_amodal:
        # an object seen alone is hidden only by the ground in front of it
        out["amodal"] = T[:, :kmax] < tg[:, None]
    return out
