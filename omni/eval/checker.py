"""The generation checker: does an image satisfy a t2i spec? Decided from the image alone, GenEval-style.

1. Pixels are classified by colour. Each palette colour is a ray of shaded albedos s * a (s from
   the ambient floor to full light); the lit ground and the sky are fixed colours. A pixel takes
   the nearest model within a tolerance. On edges between colour and background a pixel may be a
   blend of the two (what blur makes); it keeps the colour where the blend is at least half colour.
2. Objects are the connected components (4-neighbourhood) of each colour; specks are dropped.
3. Shape by analysis by synthesis: every shape and size (cubes at several yaws), rendered alone by
   the world's own renderer at a grid of ground positions seen by the canonical t2i camera and
   blurred at a few levels, makes a silhouette library. A component is compared with the library
   silhouettes of about its box size and place (IoU of silhouettes centred on their boxes, minus
   a shading mismatch term); the image's blur level is the one that explains all its components
   best, and each component takes its best shape at that level — or none if even that is poor.
4. The spec is GenEval's: `include` requirements (shape / colour / count, optional position
   relative to another requirement by GenEval's rule on box centres, 0.1 margin, 0.5 threshold)
   and `exclude` requirements (fewer than `count` such objects).

The result carries every constraint, the overall pass (all met) and the soft score (fraction met,
for GenEval-2-style reporting). Categories and the overall score aggregate as GenEval does
(`summarize`: overall = mean of the category pass rates).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from omni.tokens.image import as_unit_rgb
from omni.world.camera import DEFAULT_FOV, intrinsics, orbit_camera
from omni.world.language import relative_position
from omni.world.render import AMBIENT, LIGHT_DIR, render
from omni.world.scene import COLORS, GROUND_RGB, PALETTE, SHAPES, SIZES, SKY_RGB, Obj, Scene
from omni.world.tasks import T2I_CAMERA, T2I_CATEGORIES

COLOR_TOLERANCE = 0.16  # max distance (RGB, 0..1) from a colour model for a pixel to be that colour
MIN_IOU = 0.45  # a component whose best match scores below this has an unknown shape
SHADE_WEIGHT = 1.0  # how much a silhouette's shading mismatch (RMS of s - s') lowers its match score
CENTRE_TOL = 1.0  # box centres within max(3 px, 0.1 x size) x this are compared
_LZ = LIGHT_DIR[2] / math.sqrt(sum(c * c for c in LIGHT_DIR))
_GROUND_LIT = tuple(c * (AMBIENT + (1 - AMBIENT) * _LZ) for c in GROUND_RGB)


@dataclass
class Detection:
    color: str
    shape: str | None
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive ends), pixels
    area: int
    iou: float  # overlap with the best silhouette of `shape`

    def matches(self, req: dict) -> bool:
        return req.get("shape") in (None, self.shape) and req.get("color") in (None, self.color)


@dataclass
class CheckResult:
    category: str
    constraints: list[tuple[str, bool]]
    detections: list[Detection] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok in self.constraints)

    @property
    def score(self) -> float:
        return sum(ok for _, ok in self.constraints) / max(len(self.constraints), 1)


def _as_float_image(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {img.shape}")
    return as_unit_rgb(img)


_ALBEDO = np.array([PALETTE[c] for c in COLORS])  # (colours, 3)
_BACKGROUND = np.array([_GROUND_LIT, SKY_RGB])
# colours nearly parallel to a background colour (gray): blending with it barely changes the hue
_ILL_CONDITIONED = {c for c in COLORS if max(np.linalg.cond(np.stack([np.asarray(PALETTE[c]), -b], 1))
                                              for b in _BACKGROUND) > 20}


def _pure_residuals(x: np.ndarray) -> np.ndarray:
    """(len(COLORS) + 1, N) squared distances of pixels x (N, 3) to each shaded palette colour
    (s * a, s in the shading range) and, last, to the nearest background colour (ground or sky)."""
    aa = (_ALBEDO * _ALBEDO).sum(1)
    xa = x @ _ALBEDO.T  # (N, colours)
    s = np.clip(xa / aa, AMBIENT * 0.85, 1.05)
    xx = (x * x).sum(1, keepdims=True)
    colour = xx - 2 * s * xa + s * s * aa  # |x - s a|^2
    bg = ((x[:, None, :] - _BACKGROUND) ** 2).sum(-1).min(1)
    return np.concatenate([colour.T, bg[None]])


def _blend_residuals(x: np.ndarray, a: np.ndarray, s_known: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Best blend x = alpha * s * a + (1 - alpha) * g over the two backgrounds g: (squared residual,
    alpha). With s unknown it is linear in (alpha * s, alpha): least squares, then clamped to the
    valid ranges; with s known (per pixel) alpha is a one-dimensional projection."""
    best_r, best_a = np.full(len(x), np.inf), np.zeros(len(x))
    for g in (np.asarray(_GROUND_LIT), np.asarray(SKY_RGB)):
        y = x - g
        if s_known is None:
            A = np.stack([a, -g], 1)  # (3, 2): y = beta * a - alpha * g with beta = alpha * s
            beta, alpha = (y @ A @ np.linalg.inv(A.T @ A)).T
            alpha = np.clip(alpha, 1e-6, 1.0)
            s = np.clip(beta / alpha, AMBIENT * 0.85, 1.05)
        else:
            s = s_known
            v = s[:, None] * a - g
            alpha = np.clip((y * v).sum(1) / np.maximum((v * v).sum(1), 1e-9), 0.0, 1.0)
        r = y - (alpha * s)[:, None] * a + alpha[:, None] * g
        r2 = (r * r).sum(1)
        better = r2 < best_r
        best_r, best_a = np.where(better, r2, best_r), np.where(better, alpha, best_a)
    return best_r, best_a


def classify_pixels(img: np.ndarray) -> np.ndarray:
    """(..., H, W) int: index into COLORS for palette pixels, -1 for background or no colour.

    Pass 1: every pixel takes the nearest pure model (a shaded palette colour, the lit ground, the
    sky), or none beyond COLOR_TOLERANCE. Pass 2, on edges between colour and background (where
    blur blends them): the pixel may be a blend x = alpha * s * a + (1 - alpha) * g of a colour
    next to it and a background; it joins the colour where the blend is at least half colour
    (alpha >= 0.5, where a blurred edge crosses the true silhouette) and is the best explanation,
    and leaves it where alpha < 0.5. Leading dimensions are independent images."""
    shape = img.shape[:-1]
    x = img.reshape(-1, 3).astype(np.float64)
    pure = _pure_residuals(x)
    lab = pure.argmin(0)
    score = pure.min(0)
    bg = len(COLORS)
    lab = np.where(score <= COLOR_TOLERANCE**2, lab, -1)  # -1: nothing fits (yet)
    out = np.where(lab == bg, -1, lab)
    ring = np.zeros((3, 3, 3), bool)
    ring[1] = True  # 8-neighbourhood within each image, never across images
    lab3 = lab.reshape(-1, *shape[-2:])
    colour = (lab3 >= 0) & (lab3 < bg)
    edge = (ndimage.binary_dilation(colour, ring) & ndimage.binary_dilation(~colour, ring)).reshape(-1)
    for ci, name in enumerate(COLORS):
        here = lab3 == ci
        if not here.any():
            continue
        # pixels on or next to a region of this colour, where a blurred edge can blend it
        near = ndimage.binary_dilation(here, ring).reshape(-1) & edge
        if not near.any():
            continue
        idx = np.nonzero(near)[0]
        a = np.asarray(PALETTE[name])
        s_known = None
        if name in _ILL_CONDITIONED:
            # a neutral colour blends with the (near-neutral) background along a line that hides
            # its shading: take the shading of the region's interior nearby instead
            inner = ndimage.binary_erosion(here, ring)
            src = np.where(inner.any(axis=(-2, -1), keepdims=True), inner, here)
            s_pix = np.where(src, x.reshape(here.shape + (3,)) @ a / (a @ a), 0.0)
            win = (1, 5, 5)
            s_loc = ndimage.uniform_filter(s_pix, win) / np.maximum(ndimage.uniform_filter(src * 1.0, win), 1e-9)
            s_known = np.clip(s_loc.reshape(-1)[idx], AMBIENT * 0.85, 1.05)
        r2, alpha = _blend_residuals(x[idx], a, s_known)
        better = (r2 < score[idx]) | (out[idx] == ci)
        take = idx[better]
        score[take] = np.minimum(r2[better], score[take])
        out[take] = np.where(alpha[better] >= 0.5, ci, -1)
    return np.where(score <= COLOR_TOLERANCE**2, out, -1).reshape(shape)


def shading(img: np.ndarray, color: str) -> np.ndarray:
    """(..., H, W) shading factor s of pixels read as the palette colour: projection onto its albedo."""
    a = np.asarray(PALETTE[color], dtype=img.dtype if img.dtype.kind == "f" else np.float64)
    return (img @ a) / (a @ a)


class Checker:
    """A checker for square images of one size seen by the canonical t2i camera.

    Its silhouette library is built once (a few seconds): every shape and size — cubes at
    `cube_yaws` yaws — at every point of a `grid_step` grid of ground positions, rendered alone,
    and blurred at each level of `blurs` (Gaussian sigma in pixels; a blurred silhouette is where
    the blurred coverage is >= 1/2)."""

    def __init__(self, size: int, fov: float = DEFAULT_FOV, camera: dict | None = None,
                 grid_step: float = 0.15, cube_yaws: int = 6, blurs: Sequence[float] = (0.0, 0.7, 1.0)):
        if size < 8:
            raise ValueError(f"image size must be at least 8 px, got {size}")
        self.size = size
        self.blurs = tuple(blurs)
        self.K = intrinsics(fov, size)
        self.w2c = orbit_camera(**(camera or T2I_CAMERA))
        self.min_area = max(3, round(0.003 * size * size))
        self._build_library(grid_step, cube_yaws)

    def _build_library(self, step: float, cube_yaws: int) -> None:
        objs = []
        for shape in SHAPES:
            yaws = [math.pi / 2 * i / cube_yaws for i in range(cube_yaws)] if shape == "cube" else [0.0]
            for size in SIZES:
                for yaw in yaws:
                    for x in np.arange(-1.8, 1.8 + 1e-9, step):
                        for y in np.arange(-1.4, 2.0 + 1e-9, step):
                            objs.append(Obj(shape, "blue", size, float(x), float(y), yaw))
        r = render([Scene([o]) for o in objs], np.broadcast_to(self.w2c, (len(objs), 4, 4)), self.K, self.size)
        rgb, sil = r.rgb.numpy(), (r.ids.numpy() == 0).astype(np.float32)
        code = np.array([SHAPES.index(o.shape) for o in objs])
        masks, shades, shape_of, level = [], [], [], []
        for li, sigma in enumerate(self.blurs):
            # a blurred silhouette is where the blurred coverage is at least one half: exactly what
            # the colour unmixing of classify_pixels recovers at an object's edge
            m = (ndimage.gaussian_filter(sil, (0, sigma, sigma), mode="nearest") >= 0.5) if sigma else sil > 0
            img = ndimage.gaussian_filter(rgb, (0, sigma, sigma, 0), mode="nearest") if sigma else rgb
            keep = m.reshape(len(m), -1).sum(1) >= self.min_area
            masks.append(m[keep])
            shades.append(shading(img[keep], "blue"))
            shape_of.append(code[keep])
            level.append(np.full(keep.sum(), li))
        masks, shades = np.concatenate(masks), np.concatenate(shades)
        boxes = np.array([_box(m) for m in masks])
        self.canvas = int(max((boxes[:, 2] - boxes[:, 0]).max(), (boxes[:, 3] - boxes[:, 1]).max())) + 2
        cm = np.stack([self._centre(m, b) for m, b in zip(masks, boxes, strict=True)])
        cs = np.stack([self._centre(np.where(m, sh, 0.0), b) for m, sh, b in zip(masks, shades, boxes, strict=True)])
        n = len(masks)
        self.lib_mask = cm.reshape(n, -1).astype(np.float32)  # silhouettes, flattened canvases
        self.lib_shade = cs.reshape(n, -1).astype(np.float32)  # shading inside them
        self.lib_area = self.lib_mask.sum(1)
        self.lib_boxes = boxes
        # index: (width, height, centre-x bin, centre-y bin) -> rows; centre sums binned by the tolerance
        self._tol = 2 * max(3.0, 0.1 * self.size) * CENTRE_TOL  # on sums of box edges (2 x centre)
        self._bin = int(math.ceil(self._tol))
        keys = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1],
                         (boxes[:, 0] + boxes[:, 2]) // self._bin, (boxes[:, 1] + boxes[:, 3]) // self._bin], 1)
        order = np.lexsort(keys.T[::-1])
        uniq, start = np.unique(keys[order], axis=0, return_index=True)
        self._index = {tuple(k): order[a:b] for k, a, b in zip(uniq.tolist(), start, [*start[1:], len(order)],
                                                                strict=True)}
        self.lib_shape = np.concatenate(shape_of)
        self.lib_blur = np.concatenate(level)

    def _centre(self, m: np.ndarray, b) -> np.ndarray:
        """The box content of `m` in a canvas with the box centred (one rule for all)."""
        x0, y0, x1, y1 = b
        D = self.canvas
        out = np.zeros((D, D), dtype=m.dtype)
        h, w = min(y1 - y0, D), min(x1 - x0, D)
        oy, ox = (D - h) // 2, (D - w) // 2
        out[oy:oy + h, ox:ox + w] = m[y0:y0 + h, x0:x0 + w]
        return out

    def match_scores(self, m: np.ndarray, box, shade: np.ndarray) -> np.ndarray:
        """m, shade: the component's mask and shading inside its box `box` (x0, y0, x1, y1).

        (len(blurs), len(SHAPES)) best match of a component against each shape's silhouettes of
        about its box size and place at each blur level: IoU of the silhouettes (centred on their
        boxes) minus SHADE_WEIGHT x the RMS shading difference where they overlap; -inf where none."""
        x0, y0, x1, y1 = box
        out = np.full((len(self.blurs), len(SHAPES)), -np.inf)
        w, h, bx, by = x1 - x0, y1 - y0, (x0 + x1) // self._bin, (y0 + y1) // self._bin
        near = [self._index.get((w + dw, h + dh, bx + i, by + j))
                for dw in (-1, 0, 1) for dh in (-1, 0, 1) for i in (-1, 0, 1) for j in (-1, 0, 1)]
        near = [n for n in near if n is not None]
        if not near:
            return out
        cand = np.concatenate(near)
        lb = self.lib_boxes[cand]
        cand = cand[(np.abs((lb[:, 0] + lb[:, 2]) - (x0 + x1)) <= self._tol)
                    & (np.abs((lb[:, 1] + lb[:, 3]) - (y0 + y1)) <= self._tol)]
        if not len(cand):
            return out
        # the component's pixels at their places in a canvas centred on its box (as in _centre)
        D = self.canvas
        rows, cols = np.nonzero(m)
        keep = (rows < D) & (cols < D)
        rows, cols = rows[keep], cols[keep]
        nz = ((D - min(h, D)) // 2 + rows) * D + (D - min(w, D)) // 2 + cols
        sc = shade[rows, cols].astype(np.float32)
        lm, ls = self.lib_mask[np.ix_(cand, nz)], self.lib_shade[np.ix_(cand, nz)]
        # over T & C: |T & C| and the sums of s_T^2, s_T s_C and s_C^2 (s_T is 0 outside T)
        inter = lm.sum(1)
        iou = inter / np.maximum(self.lib_area[cand] + len(nz) - inter, 1)
        sq = ((ls * ls).sum(1) - 2 * ls @ sc + lm @ (sc * sc)) / np.maximum(inter, 1)
        score = iou - SHADE_WEIGHT * np.sqrt(np.maximum(sq, 0))
        np.maximum.at(out, (self.lib_blur[cand], self.lib_shape[cand]), score)
        return out

    def detect(self, image) -> list[Detection]:
        """Objects in one image (H, W, 3), largest first (see detect_many)."""
        return self.detect_many(_as_float_image(image)[None])[0]

    def detect_many(self, images) -> list[list[Detection]]:
        """Objects in each of a batch of images (B, H, W, 3), largest first. Every component is
        matched at every blur level of the library; an image's blur is the level that explains
        all its components best, and each component takes its best shape at that level (unknown
        below MIN_IOU). Pixels of all images are classified in one vectorized pass."""
        imgs = np.asarray(images)
        if imgs.ndim != 4:
            raise ValueError(f"images must be (B, H, W, 3), got shape {imgs.shape}")
        imgs = np.stack([_as_float_image(im) for im in imgs]) if len(imgs) else imgs.astype(np.float32)
        if imgs.shape[1:3] != (self.size, self.size):
            raise ValueError(f"images are {imgs.shape[1]}x{imgs.shape[2]}, this checker is for "
                             f"{self.size}x{self.size}")
        labels = classify_pixels(imgs)
        return [self._objects(img, label) for img, label in zip(imgs, labels, strict=True)]

    def _objects(self, img: np.ndarray, label: np.ndarray) -> list[Detection]:
        found = []
        for ci in np.unique(label[label >= 0]):
            color = COLORS[ci]
            comp, n = ndimage.label(label == ci)
            shade = shading(img, color)
            for k, sl in enumerate(ndimage.find_objects(comp), start=1):
                m = comp[sl] == k
                area = int(m.sum())
                if area >= self.min_area:
                    box = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
                    found.append((color, box, area, self.match_scores(m, box, shade[sl])))
        if not found:
            return []
        best = np.stack([f[3].max(1) for f in found])  # (components, blur levels)
        level = int(np.where(np.isfinite(best), best, 0.0).sum(0).argmax())
        out = []
        for color, box, area, scores in found:
            k = int(scores[level].argmax())
            sc = float(scores[level, k])
            out.append(Detection(color, SHAPES[k] if sc >= MIN_IOU else None, box, area, max(sc, 0.0)))
        out.sort(key=lambda d: -d.area)
        return out

    def check_many(self, images, specs: Sequence[dict]) -> list[CheckResult]:
        if len(images) != len(specs):
            raise ValueError(f"{len(images)} images for {len(specs)} specs")
        return [evaluate_spec(d, s) for d, s in zip(self.detect_many(images), specs, strict=True)]

    def check(self, image, spec: dict) -> CheckResult:
        return evaluate_spec(self.detect(image), spec)


def _box(m: np.ndarray) -> tuple[int, int, int, int]:
    r = np.nonzero(m.any(1))[0]
    c = np.nonzero(m.any(0))[0]
    return int(c[0]), int(r[0]), int(c[-1]) + 1, int(r[-1]) + 1


def _describe(req: dict) -> str:
    what = " ".join(x for x in (req.get("color"), req.get("shape") or "object") if x)
    return f"{req['count']} x {what}"


def validate_spec(spec: dict) -> None:
    if not isinstance(spec, dict):
        raise ValueError(f"spec must be a dict, got {type(spec).__name__}")
    if spec.get("category") not in T2I_CATEGORIES:
        raise ValueError(f"spec has unknown category {spec.get('category')!r}; known: {', '.join(T2I_CATEGORIES)}")
    for key in ("include", "exclude"):
        for req in spec.get(key, []):
            if req.get("shape") not in (None, *SHAPES) or req.get("color") not in (None, *COLORS):
                raise ValueError(f"spec {key} requirement names an unknown shape or colour: {req}")
            if not isinstance(req.get("count"), int) or req["count"] < 1:
                raise ValueError(f"spec {key} requirement needs a positive integer count: {req}")
    if not spec.get("include"):
        raise ValueError("spec has no include requirements")


def evaluate_spec(dets: Sequence[Detection], spec: dict) -> CheckResult:
    """GenEval's decision on detections (largest first): every include requirement found at least
    `count` times (with its position relative to its reference requirement's objects), every
    exclude requirement found fewer than `count` times."""
    validate_spec(spec)
    constraints = []
    found: list[list[Detection]] = []
    for req in spec["include"]:
        hits = [d for d in dets if d.matches(req)]
        found.append(hits[: req["count"]])
        constraints.append((f"has {_describe(req)}", len(hits) >= req["count"]))
    for req in spec["include"]:
        if "position" in req:
            rel, j = req["position"]
            a = found[spec["include"].index(req)]
            b = found[j]
            ok = bool(a) and bool(b) and all(rel in relative_position(x.box, y.box) for x in a for y in b)
            constraints.append((f"{_describe(req)} {rel} {_describe(spec['include'][j])}", ok))
    for req in spec.get("exclude", []):
        n = sum(d.matches(req) for d in dets)
        constraints.append((f"fewer than {_describe(req)}", n < req["count"]))
    return CheckResult(spec["category"], constraints, list(dets))


@functools.lru_cache(maxsize=4)
def checker_for(size: int) -> Checker:
    return Checker(size)


def check(image, spec: dict) -> CheckResult:
    """Check one image (H, W, 3), float in [0, 1] or uint8, against a t2i spec."""
    validate_spec(spec)
    img = _as_float_image(image)
    if img.shape[0] != img.shape[1]:
        raise ValueError(f"the checker takes square images, got {img.shape[0]}x{img.shape[1]}")
    return checker_for(img.shape[0]).check(img, spec)


def summarize(results: Sequence[CheckResult]) -> dict:
    """Pass rate and mean soft score per category, and overall = mean over categories (GenEval); the
    overall rates are None without results (JSON has no NaN: `json.dumps` wrote one, an invalid file)."""
    cats: dict[str, list[CheckResult]] = {}
    for r in results:
        cats.setdefault(r.category, []).append(r)
    per = {c: {"n": len(rs), "pass": float(np.mean([r.passed for r in rs])),
               "score": float(np.mean([r.score for r in rs]))} for c, rs in sorted(cats.items())}
    overall = {"pass": float(np.mean([v["pass"] for v in per.values()])) if per else None,
               "score": float(np.mean([v["score"] for v in per.values()])) if per else None}
    return {"categories": per, "overall": overall}


def canonical_spec(spec: dict) -> tuple:
    """A spec's requirements as a hashable value (order of requirements ignored)."""

    def req(r):
        return (r.get("shape"), r.get("color"), r["count"], tuple(r.get("position") or ()))

    return (spec["category"], tuple(sorted(map(req, spec["include"]), key=repr)),
            tuple(sorted(map(req, spec.get("exclude", [])), key=repr)))


def mismatched_specs(specs: Sequence[dict]) -> list[dict | None]:
    """For each spec, the next spec of the same category (cyclically, in list order) whose include
    requirements differ (it asks for other objects); None when the list has no such spec."""
    out = []
    for i, s in enumerate(specs):
        key = canonical_spec(s)[1]
        pick = None
        for k in range(1, len(specs)):
            o = specs[(i + k) % len(specs)]
            if o["category"] == s["category"] and canonical_spec(o)[1] != key:
                pick = o
                break
        out.append(pick)
    return out


_BINOMIAL = {1: np.array([1.0, 2.0, 1.0]) / 4.0, 2: np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0}
BLUR_RADII = (0, *_BINOMIAL)  # degrade's binomial blurs (0: none)


def degrade(images: np.ndarray, noise: float = 0.0, blur: int = 0, blur_sigma: float = 0.0,
            seed: int = 0) -> np.ndarray:
    """Blur (binomial kernel of radius `blur` px: radius 1 = [1, 2, 1] / 4 per axis, sigma ~0.71 px;
    or a Gaussian of `blur_sigma` px), then add Gaussian noise of std `noise`, clip to [0, 1]."""
    x = np.asarray(images, dtype=np.float32)
    if blur:
        if blur not in _BINOMIAL:
            raise ValueError(f"blur radius must be one of {', '.join(map(str, BLUR_RADII))}, got {blur}")
        for axis in (-3, -2):
            x = ndimage.convolve1d(x, _BINOMIAL[blur], axis=axis, mode="nearest")
    if blur_sigma:
        x = ndimage.gaussian_filter(x, [0] * (x.ndim - 3) + [blur_sigma, blur_sigma, 0], mode="nearest")
    if noise:
        x = x + np.random.default_rng(seed).normal(0.0, noise, x.shape).astype(np.float32)
    return np.clip(x, 0.0, 1.0)


def validate_on_world(n: int, seed_start: int, size: int = 32, noise: float = 0.0, blur: int = 0,
                      blur_sigma: float = 0.0, seed: int = 0, revision: int = 1) -> dict:
    """The checker on ground-truth renders of n t2i examples (seeds seed_start ...) of the world's
    `revision`, optionally degraded, each checked against its own spec and against a mismatched spec of
    its category. Returns pass rates per category and overall (mean over categories), for both (and
    `world_revision` where it is not 1)."""
    from omni.world import WorldConfig, sample

    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    exs = sample("t2i", range(seed_start, seed_start + n), WorldConfig(size=size, revision=revision))
    return {"n": n, "seed_start": seed_start, "size": size, **({"world_revision": revision} if revision != 1 else {}),
            **validate_on_examples(exs, noise, blur, blur_sigma, seed)}


def validate_on_examples(exs: list, noise: float = 0.0, blur: int = 0, blur_sigma: float = 0.0,
                         seed: int = 0) -> dict:
    """validate_on_world on t2i examples already rendered (all of one size)."""
    imgs = degrade(np.stack([e.views["target"].rgb for e in exs]), noise, blur, blur_sigma, seed)
    specs = [e.spec for e in exs]
    ck = checker_for(imgs.shape[1])
    dets = ck.detect_many(imgs)
    matched = [evaluate_spec(d, s) for d, s in zip(dets, specs, strict=True)]
    wrong = [(d, m) for d, m in zip(dets, mismatched_specs(specs), strict=True) if m is not None]
    mismatched = [evaluate_spec(d, m) for d, m in wrong]
    return {"noise": noise, "blur": blur, "blur_sigma": blur_sigma,
            "matched": summarize(matched), "mismatched": summarize(mismatched)}
