"""Scenes of the procedural world: objects resting on a finite ground square.

World frame: z up, ground plane z = 0, ground square |x|, |y| <= GROUND_HALF (metres).
Every shape stands on the ground with its own vertical axis through (x, y); cubes are rotated
about that axis by `yaw`. Objects never interpenetrate: their footprint circles (which contain
each shape's horizontal cross-section at every height) are disjoint, with a gap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

GROUND_HALF = 4.0  # half side of the ground square, metres
PLACE_HALF = 1.5  # object centres are drawn from [-PLACE_HALF, PLACE_HALF]^2
GAP = 0.12  # minimum horizontal gap between footprints, metres

SHAPES = ("cube", "sphere", "cylinder", "cone")
SIZES = ("small", "large")
SIZE_HALF = {"small": 0.40, "large": 0.60}  # characteristic half extent per size, metres

# Named palette: saturated, well separated in chromaticity so a checker can segment by colour.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "orange": (0.96, 0.50, 0.05),
    "yellow": (0.95, 0.86, 0.10),
    "green": (0.12, 0.68, 0.18),
    "cyan": (0.08, 0.78, 0.84),
    "blue": (0.14, 0.28, 0.92),
    "purple": (0.56, 0.18, 0.78),
    "gray": (0.32, 0.32, 0.32),
}
COLORS = tuple(PALETTE)
GROUND_RGB = (0.80, 0.78, 0.72)
SKY_RGB = (0.93, 0.95, 0.98)


def shape_dims(shape: str, size: str) -> tuple[float, float]:
    """(radius, height) of a shape: radius is the half width (cube: half side), height its top."""
    h = SIZE_HALF[size]
    if shape == "cube":
        return h, 2.0 * h
    if shape == "sphere":
        return h, 2.0 * h
    if shape == "cylinder":
        return 0.8 * h, 2.5 * h
    if shape == "cone":
        return h, 2.5 * h
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


@dataclass
class Obj:
    shape: str
    color: str
    size: str
    x: float
    y: float
    yaw: float = 0.0  # radians, about the vertical axis (cubes only)

    def __post_init__(self):
        # an unknown name (a hand-edited scene's, say) once surfaced as a bare KeyError in the renderer
        for kind, value, known in (("shape", self.shape, SHAPES), ("color", self.color, COLORS),
                                   ("size", self.size, SIZES)):
            if value not in known:
                raise ValueError(f"unknown {kind} {value!r}; known: {', '.join(known)}")

    @property
    def radius(self) -> float:
        return shape_dims(self.shape, self.size)[0]

    @property
    def height(self) -> float:
        return shape_dims(self.shape, self.size)[1]

    @property
    def footprint(self) -> float:
        """Radius of a circle containing the horizontal cross-section at every height."""
        r = self.radius
        return r * math.sqrt(2.0) if self.shape == "cube" else r

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def center(self) -> tuple[float, float, float]:
        return (self.x, self.y, self.height / 2.0)

    def inside(self, pts: np.ndarray) -> np.ndarray:
        """Boolean mask of points (N, 3) strictly inside the solid (world frame)."""
        p = np.asarray(pts, dtype=np.float64)
        dx, dy, z = p[:, 0] - self.x, p[:, 1] - self.y, p[:, 2]
        r, hgt = self.radius, self.height
        if self.shape == "sphere":
            return dx**2 + dy**2 + (z - r) ** 2 < r**2
        if self.shape == "cube":
            c, s = math.cos(self.yaw), math.sin(self.yaw)
            lx, ly = c * dx + s * dy, -s * dx + c * dy
            return (np.abs(lx) < r) & (np.abs(ly) < r) & (z > 0) & (z < hgt)
        rho2 = dx**2 + dy**2
        if self.shape == "cylinder":
            return (rho2 < r**2) & (z > 0) & (z < hgt)
        # cone: radius shrinks linearly from r at z=0 to 0 at z=hgt
        return (z > 0) & (z < hgt) & (np.sqrt(rho2) < r * (hgt - z) / hgt)

    def sample_inside(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n points drawn uniformly from the solid (rejection from its bounding box)."""
        out = np.zeros((0, 3))
        r, hgt = self.footprint, self.height
        while len(out) < n:
            cand = rng.uniform([-r, -r, 0.0], [r, r, hgt], size=(4 * n, 3)) + [self.x, self.y, 0.0]
            out = np.concatenate([out, cand[self.inside(cand)]])
        return out[:n]


@dataclass
class Scene:
    objects: list[Obj] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls([Obj(**o) for o in d["objects"]])

    def valid(self, gap: float = 0.0) -> bool:
        """No two footprints closer than `gap`, every footprint inside the ground square."""
        for i, a in enumerate(self.objects):
            if abs(a.x) + a.footprint > GROUND_HALF or abs(a.y) + a.footprint > GROUND_HALF:
                return False
            for b in self.objects[i + 1 :]:
                if math.hypot(a.x - b.x, a.y - b.y) < a.footprint + b.footprint + gap:
                    return False
        return True


def check_choice(kind: str, values, known) -> tuple[str, ...]:
    """Validate a user's subset of shapes/colours/sizes; raise ValueError naming the bad one."""
    values = tuple(values)
    if not values:
        raise ValueError(f"empty list of {kind}s")
    for v in values:
        if v not in known:
            raise ValueError(f"unknown {kind} {v!r}; known: {', '.join(known)}")
    return values


@dataclass(frozen=True)
class SceneOptions:
    """Which shapes, colours, sizes and how many objects a scene may hold."""

    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = COLORS
    sizes: tuple[str, ...] = SIZES
    min_objects: int = 1
    max_objects: int = 6
    place_half: float = PLACE_HALF

    def __post_init__(self):
        object.__setattr__(self, "shapes", check_choice("shape", self.shapes, SHAPES))
        object.__setattr__(self, "colors", check_choice("color", self.colors, COLORS))
        object.__setattr__(self, "sizes", check_choice("size", self.sizes, SIZES))
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(
                f"object count range {self.min_objects}..{self.max_objects} must lie within 1..6"
            )
        if not 0.0 <= self.place_half < math.inf:  # numpy's own error named neither (nor NaN)
            raise ValueError(f"place_half must be a finite half side >= 0 metres, got {self.place_half}")


# How many spots `place` draws in its first passes: half of the data loader's placements take the
# first spot drawn, so it is tried alone; then a small vectorized block, then all that are left.
_PLACE_BLOCKS = (1, 15)


def place(rng: np.random.Generator, scene: Scene, obj: Obj, opts: SceneOptions, tries: int = 200,
          region: tuple[float, float, float, float] | None = None) -> bool:
    """Put `obj` at a random free spot (inside `region` = x0, x1, y0, y1 if given); False if none.

    Rejection sampling: up to `tries` spots drawn uniformly, the first where the scene with `obj`
    stays `valid(GAP)` taken. The spots are drawn and checked in a few passes (one spot, then
    vectorized blocks: this is the hot path of the data loader), and the generator is left exactly
    where drawing them one at a time would leave it (two draws per spot tried): every decision is
    `Scene.valid`'s, so scenes are the same."""
    x0, x1, y0, y1 = region or (-opts.place_half, opts.place_half, -opts.place_half, opts.place_half)
    lo, hi = (x0, y0), (x1, y1)
    if tries <= 0:
        return False
    if not Scene(list(scene.objects)).valid(GAP):  # no spot can help: every one drawn and rejected
        spots = rng.uniform(lo, hi, size=(tries, 2))
        obj.x, obj.y = float(spots[-1, 0]), float(spots[-1, 1])
        return False
    test, drawn, k = None, 0, -1
    for block in (*_PLACE_BLOCKS, tries):  # the last pass draws whatever is left
        n = min(block, tries - drawn)
        if n <= 0:
            break
        state = rng.bit_generator.state if n > 1 else None
        spots = rng.uniform(lo, hi, size=(n, 2))  # the same numbers as 2 x n scalar draws
        drawn += n
        if n == 1:
            k = 0 if _free_one(scene, obj, float(spots[0, 0]), float(spots[0, 1])) else -1
        else:
            test = test or _spot_test(scene, obj)
            free = test(spots)
            k = int(np.argmax(free)) if free.any() else -1
            if 0 <= k < n - 1:  # rewind: only the spots up to the first free one were drawn
                rng.bit_generator.state = state
                rng.uniform(lo, hi, size=(k + 1, 2))
        if k >= 0:
            break
    obj.x, obj.y = float(spots[k, 0]), float(spots[k, 1])  # k = -1: left at the last, as one at a time leaves it
    if k < 0:
        return False
    scene.objects.append(obj)
    return True


def _free_one(scene: Scene, obj: Obj, x: float, y: float) -> bool:
    """Would the valid `scene` with `obj` at (x, y) stay `valid(GAP)`? Its tests of the new object,
    in its order and arithmetic."""
    f = obj.footprint
    if abs(x) + f > GROUND_HALF or abs(y) + f > GROUND_HALF:
        return False
    return not any(math.hypot(o.x - x, o.y - y) < o.footprint + f + GAP for o in scene.objects)


def _spot_test(scene: Scene, obj: Obj):
    """For a valid `scene`, its objects read once: a function of spots (N, 2) saying for each whether
    `Scene(scene.objects + [obj at the spot]).valid(GAP)` holds. The same floating-point tests as
    `Scene.valid`, vectorized; the few distances within 1e-9 of their
    threshold are recomputed with math.hypot, as `valid` computes them, so no decision differs."""
    f = obj.footprint
    ox = np.array([o.x for o in scene.objects])
    oy = np.array([o.y for o in scene.objects])
    thr = np.array([o.footprint for o in scene.objects]) + f + GAP  # (a.footprint + b.footprint) + gap

    def test(spots: np.ndarray) -> np.ndarray:
        x, y = spots[:, 0], spots[:, 1]
        free = ~((np.abs(x) + f > GROUND_HALF) | (np.abs(y) + f > GROUND_HALF))
        if not len(ox):
            return free
        dx, dy = ox[None, :] - x[:, None], oy[None, :] - y[:, None]
        d = np.hypot(dx, dy)
        near = np.abs(d - thr) <= 1e-9 * thr
        for i, j in zip(*np.nonzero(near), strict=True):
            d[i, j] = math.hypot(dx[i, j], dy[i, j])
        return free & ~(d < thr).any(1)

    return test


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    """`str(rng.choice(options))`, the same draw (one integer below len(options)), without the
    array conversion that makes `choice` five times slower in the loader's hot path."""
    return options[int(rng.integers(0, len(options)))]


def random_object(rng: np.random.Generator, opts: SceneOptions, shape: str | None = None,
                  color: str | None = None, size: str | None = None) -> Obj:
    shape = shape or _pick(rng, opts.shapes)
    yaw = float(rng.uniform(0.0, math.pi / 2)) if shape == "cube" else 0.0
    return Obj(shape=shape, color=color or _pick(rng, opts.colors),
               size=size or _pick(rng, opts.sizes), x=0.0, y=0.0, yaw=yaw)


# Whole scenes `sample_scene` starts before it gives up: objects that cannot all fit (six large cubes
# in the default square) once made it loop forever. Feasible options restart far fewer times (five
# large cubes there: about 75 on average, the most in 300 scenes under 600).
MAX_SCENE_RESTARTS = 20_000


def sample_scene(rng: np.random.Generator, opts: SceneOptions = SceneOptions(),
                 n: int | None = None, unique: bool = False) -> Scene:
    """A random scene of `n` objects (default: uniform in the options' range).

    `unique=True` makes every (colour, shape) pair distinct, so "the red cube" names one object.
    A ValueError if `MAX_SCENE_RESTARTS` scenes in a row could not place them all.
    """
    n = int(rng.integers(opts.min_objects, opts.max_objects + 1)) if n is None else n
    if n < 0:
        raise ValueError(f"a scene needs n >= 0 objects, got {n}")
    if unique and n > len(opts.colors) * len(opts.shapes):
        raise ValueError(f"cannot draw {n} distinct colour-shape pairs from the options")
    for _ in range(MAX_SCENE_RESTARTS):
        scene = Scene()
        used: set[tuple[str, str]] = set()
        for _ in range(n):
            while True:
                obj = random_object(rng, opts)
                if not unique or (obj.color, obj.shape) not in used:
                    break
            if not place(rng, scene, obj, opts):
                break
            used.add((obj.color, obj.shape))
        if len(scene.objects) == n:
            return scene
    raise ValueError(f"could not place {n} objects (sizes {', '.join(opts.sizes)}) within place_half="
                     f"{opts.place_half} m in {MAX_SCENE_RESTARTS} tries: ask for fewer or smaller objects, "
                     f"or a larger place_half")
