"""Text about a rendered scene, computed from the scene *and its render* (masks, depth).

Everything said is true of the image: an object is mentioned only where its instance mask has
pixels, positions come from mask centroids and boxes, distances from the depth map, occlusion
from amodal masks (object k hides object j where k's visible pixels cover j's amodal mask).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .render import ID_GROUND
from .scene import Obj, Scene

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
LAYOUT_GRID = 8  # layout coordinates are cells of this grid (the visual-token grid at 32 px / 4)
POSITION_THRESHOLD = 0.1  # GenEval's margin for relative positions


@dataclass
class ObjectStats:
    """What the render shows of one object (pixel units; box is x0, y0, x1, y1, exclusive ends)."""

    index: int
    obj: Obj
    pixels: int
    amodal_pixels: int
    box: tuple[int, int, int, int]
    centroid: tuple[float, float]  # (u, v): column, row of the pixel centres' mean, +0.5
    median_depth: float
    min_depth: float

    @property
    def visible_fraction(self) -> float:
        return self.pixels / max(self.amodal_pixels, 1)


def object_stats(scene: Scene, ids: np.ndarray, depth: np.ndarray,
                 amodal: np.ndarray | None = None) -> list[ObjectStats]:
    """Stats for every object with at least one visible pixel, in scene order.

    All objects in one pass (the data loader computes these for every view it renders): the pixels
    sorted by (object, depth) once, then per object its count, box, centroid (the mean of its
    integer pixel coordinates: exact sums, so the same floats as np.mean), median depth (the middle
    of its sorted depths, or the float mean of the middle two, as np.median) and nearest depth."""
    K = len(scene.objects)
    ids, depth = np.asarray(ids), np.asarray(depth)
    # a depth map of another shape was read at the wrong pixels (or past its end), silently where its first
    # pixels covered the objects; amodal masks of another shape gave wrong visible fractions
    if ids.ndim != 2 or depth.shape != ids.shape:
        raise ValueError(f"ids and depth must be (H, W) maps of one shape, got {ids.shape} and {depth.shape}")
    if amodal is not None and np.shape(amodal) != (K, *ids.shape):
        raise ValueError(f"amodal masks must be (objects, H, W) = {(K, *ids.shape)}, got {np.shape(amodal)}")
    flat_ids = ids.reshape(-1).astype(np.int64)
    d_flat = depth.reshape(-1)
    on = np.flatnonzero((flat_ids >= 0) & (flat_ids < K))  # raster order, as np.nonzero gives
    if not len(on):
        return []
    k_of = flat_ids[on]
    counts = np.bincount(k_of, minlength=K)
    W = ids.shape[1]
    rows, cols = on // W, on % W
    by_k = np.argsort(k_of, kind="stable")  # per object, its pixels in raster order
    ends = np.cumsum(counts)
    starts = ends - counts
    nz = counts > 0
    seg = starts[nz]  # reduceat offsets of the objects seen
    r_s, c_s = rows[by_k], cols[by_k]
    c_min, c_max = np.minimum.reduceat(c_s, seg), np.maximum.reduceat(c_s, seg)
    r_min, r_max = np.minimum.reduceat(r_s, seg), np.maximum.reduceat(r_s, seg)
    c_sum, r_sum = np.add.reduceat(c_s, seg), np.add.reduceat(r_s, seg)
    d_on = d_flat[on]
    d_sorted = d_on[np.lexsort((d_on, k_of))]  # per object, its depths ascending
    amodal_n = (np.asarray(amodal).reshape(len(amodal), -1).sum(1) if amodal is not None else None)
    out = []
    for j, k in enumerate(np.flatnonzero(nz)):
        k = int(k)
        n, a = int(counts[k]), int(starts[k])
        mid = a + n // 2
        med = d_sorted[mid] if n % 2 else np.mean(d_sorted[mid - 1:mid + 1])
        out.append(ObjectStats(
            index=k, obj=scene.objects[k], pixels=n,
            amodal_pixels=int(amodal_n[k]) if amodal_n is not None else n,
            box=(int(c_min[j]), int(r_min[j]), int(c_max[j]) + 1, int(r_max[j]) + 1),
            centroid=(float(c_sum[j] / n) + 0.5, float(r_sum[j] / n) + 0.5),
            median_depth=float(med), min_depth=float(d_sorted[a])))
    return out


def relative_position(box_a, box_b) -> set[str]:
    """GenEval's rule: relations of A to B from boxes (x0, y0, x1, y1), image axes (y down).

    offset = centre_a - centre_b, shrunk by 0.1 x (dim_a + dim_b) per axis; a relation holds where
    the shrunk offset, divided by |offset|, exceeds 0.5 along that axis."""
    a, b = np.asarray(box_a, dtype=np.float64), np.asarray(box_b, dtype=np.float64)
    if a.shape != (4,) or b.shape != (4,):  # three numbers broadcast into a silent answer
        raise ValueError(f"boxes must be 4 numbers (x0, y0, x1, y1), got {box_a!r} and {box_b!r}")
    ca, cb = (a[:2] + a[2:]) / 2, (b[:2] + b[2:]) / 2
    dim_a, dim_b = a[2:] - a[:2], b[2:] - b[:2]
    offset = ca - cb
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rel = set()
    if dx < -0.5:
        rel.add("left of")
    if dx > 0.5:
        rel.add("right of")
    if dy < -0.5:
        rel.add("above")
    if dy > 0.5:
        rel.add("below")
    return rel


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def full_name(o: Obj) -> str:
    return f"{o.size} {o.color} {o.shape}"


def join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def by_position(stats: list[ObjectStats]) -> list[ObjectStats]:
    """Left to right, then top to bottom (by centroid)."""
    return sorted(stats, key=lambda s: (s.centroid[0], s.centroid[1]))


def horizontal_word(s: ObjectStats, width: int) -> str:
    u = s.centroid[0] / width
    return "on the left" if u < 1 / 3 else "on the right" if u > 2 / 3 else "in the center"


def vertical_word(s: ObjectStats, height: int) -> str:
    v = s.centroid[1] / height
    return "near the top" if v < 1 / 3 else "near the bottom" if v > 2 / 3 else "in the middle"


def count_phrase(n: int, noun: str) -> str:
    return f"{n} {plural(noun, n)}"


def short_caption(stats: list[ObjectStats]) -> str:
    """e.g. '3 objects: a red cube, a blue sphere and a green cone.' (left to right)."""
    names = [f"{article(s.obj.color)} {s.obj.name}" for s in by_position(stats)]
    return f"{count_phrase(len(stats), 'object')}: {join(names)}." if stats else "no objects."


def detailed_caption(stats: list[ObjectStats], height: int, width: int) -> str:
    """Every visible object with its size, colour, shape and where it is in the image."""
    if not stats:
        return "an empty ground plane."
    parts = [f"{count_phrase(len(stats), 'object')} on the ground."]
    for s in by_position(stats):
        o = s.obj
        parts.append(f"{article(o.size)} {full_name(o)} {horizontal_word(s, width)}, "
                     f"{vertical_word(s, height)}.")
    return " ".join(parts)


def grid_cell(s: ObjectStats, height: int, width: int, grid: int = LAYOUT_GRID) -> tuple[int, int]:
    """(column, row) of the layout grid cell holding the object's centroid."""
    _check_grid(grid)
    u, v = s.centroid
    return min(grid - 1, int(u * grid / width)), min(grid - 1, int(v * grid / height))


def _check_grid(grid) -> None:
    if isinstance(grid, (bool, np.bool_)) or not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ValueError(f"the layout grid must be a whole number of cells >= 1, got {grid!r}")  # 0 wrote cell (-1,-1)


def layout_text(stats: list[ObjectStats], height: int, width: int, grid: int = LAYOUT_GRID) -> str:
    """'layout: large red cube at (2,5); small blue sphere at (6,3).' in raster order of cells."""
    _check_grid(grid)
    if not stats:
        return "layout: empty."
    cells = [(grid_cell(s, height, width, grid), s) for s in stats]
    cells.sort(key=lambda cs: (cs[0][1], cs[0][0], cs[1].centroid))
    items = [f"{full_name(s.obj)} at ({c},{r})" for (c, r), s in cells]
    return "layout: " + "; ".join(items) + "."


def occlusions(stats: list[ObjectStats], ids: np.ndarray, amodal: np.ndarray) -> list[tuple[int, int]]:
    """(k, j) pairs: object k's visible pixels cover part of where object j would be seen alone."""
    pairs = []
    for a in stats:
        m = ids == a.index
        for b in stats:
            if a.index != b.index and bool((amodal[b.index] & m).any()):
                pairs.append((a.index, b.index))
    return pairs


_FRONT_TO_BACK = re.compile(r"front to back: ([^.]*(?:\.\d[^.]*)*)\.(?: |$)")
_DEPTH_ITEM = re.compile(r"([a-z]+) ([a-z]+) (\d+(?:\.\d+)?) m")


def depth_caption_objects(caption: str) -> list[tuple[str, str, float]]:
    """The objects a depth caption lists front to back, as (colour, shape, metres), read from its
    "front to back: <colour> <shape> <d> m, ..." sentence; [] where it has none. Tolerant of captions
    not written by `depth_caption` (a model's): what does not parse is left out."""
    m = _FRONT_TO_BACK.search(caption)
    return [(c, sh, float(d)) for c, sh, d in _DEPTH_ITEM.findall(m.group(1))] if m else []


def depth_caption(scene: Scene, stats: list[ObjectStats], ids: np.ndarray, depth: np.ndarray,
                  amodal: np.ndarray) -> str:
    """Depth-specific description: front-to-back order with distances (median depth of each
    object's visible pixels, metres), who hides whom, support, and the ground's depth range."""
    parts = []
    if stats:
        order = sorted(stats, key=lambda s: s.median_depth)
        parts.append("front to back: " + ", ".join(f"{s.obj.name} {s.median_depth:.1f} m" for s in order) + ".")
        occ = occlusions(stats, ids, amodal)
        if occ:
            parts += [f"the {scene.objects[k].name} hides part of the {scene.objects[j].name}." for k, j in occ]
        else:
            parts.append("no object hides another.")
        parts.append("every object stands on the ground.")
    else:
        parts.append("no objects.")
    g = depth[ids == ID_GROUND]
    if g.size:
        parts.append(f"the ground spans {g.min():.1f} m to {g.max():.1f} m.")
    else:
        parts.append("the ground is not visible.")
    return " ".join(parts)
