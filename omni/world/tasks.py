"""Task samplers: deterministic in (task, seed), rendered in batches.

Every sampler proposes a draft (scenes + cameras) from its own random stream, all drafts of a call
are rendered in one batched call, and each draft's `finish` reads its render to write the texts and
answers (or rejects the draft: then the same stream proposes again). What an example fixes in its
first draft (a t2i category, a question type, an edit) it keeps in a memo across redrafts, so
rejection does not skew the mix towards easy kinds. An example's random stream depends only on
(task, seed), so the same seed gives the same example whatever else is sampled.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from omni.io import check_device

from . import language as L
from .camera import (
    DEFAULT_FOV,
    camera_center,
    intrinsics,
    look_at,
    move_view,
    orbit_camera,
    pose_to_text,
    relative_pose,
    rotate_view,
)
from .render import render
from .scene import COLORS, SHAPES, SIZES, Obj, Scene, SceneOptions, place, random_object, sample_scene

TASKS = ("vqa", "t2i", "spatial", "depth", "pose", "nvs", "video", "edit")
SPLITS = {"train": (0, 1_000_000_000), "val": (1_000_000_000, 1_001_000_000),
          "test": (2_000_000_000, 2_001_000_000)}
T2I_CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr",
                  "math", "mapping")
# how many objects each t2i category's prompt asks for (least, most): a scene's object range
# (SceneOptions.min_objects / max_objects) keeps the categories and counts that lie within it
T2I_OBJECTS = {"single_object": (1, 1), "two_object": (2, 2), "counting": (2, 4), "colors": (1, 1),
               "position": (2, 2), "color_attr": (2, 2), "math": (1, 6), "mapping": (1, 1)}
LETTERS = "ABCD"
MAX_SIZE = 1024  # the renderer holds a few float arrays of size^2 per view: beyond this, memory runs out
VIEW_DIRECTIONS = ("up", "down", "left", "right")
POSE_MOTIONS = ("orbit", "move_turn")
VQA_THOUGHTS = ("inventory", "focused", "measured")
# the world's revisions (WorldConfig.revision). 1 draws exactly the examples omni-tiny was trained and
# scored on; 2 mends what docs/world_audit.md found: spatial camera_object answers in all four quadrants
# (view 2 stands among the objects), object_object's true answer always among the options, a t2i
# prompt kept across redrafts (math answers 1..4, as counting), and the grammar of a few texts; 3 is 2
# with vqa's left_right step read off the thought's own inventory (which lists the objects left to right)
# rather than off the image by the objects' names (docs/world_audit.md, "Revision 3").
WORLD_REVISIONS = (1, 2, 3)


def _real(x) -> bool:
    """A real number (Python's or numpy's int or float, not a bool); NaN and infinities included."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _integer(x, what: str) -> int:
    """x as a Python int: an int or numpy integer, not a bool; else a TypeError naming `what`."""
    try:
        if isinstance(x, (bool, np.bool_)):  # True is no 1
            raise TypeError
        return operator.index(x)  # a float (1.5, or 2e9) would be truncated, or lie in a split by accident
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {type(x).__name__} {x!r}") from None


def split_of(seed: int) -> str:
    """The split holding `seed`: a ValueError where none does, a TypeError for a non-integer (1.5 lay in
    "train", True too)."""
    seed = _integer(seed, "a seed")
    for name, (lo, hi) in SPLITS.items():
        if lo <= seed < hi:
            return name
    raise ValueError(f"seed {seed} lies in no split: {splits_text()}")


def splits_text() -> str:
    """'train 0..999999999, val 1000000000..1000999999, test 2000000000..2000999999'."""
    return ", ".join(f"{name} {lo}..{hi - 1}" for name, (lo, hi) in SPLITS.items())


def split_of_range(start: int, n: int) -> str:
    """The one split holding every seed of start .. start + n - 1; a ValueError if some seed lies in
    no split (the splits are disjoint ranges with gaps between them, so a range in two splits always
    crosses a gap). A negative n is a ValueError (it was the split of start), a non-integer a TypeError."""
    n = _integer(n, "the number of seeds n")
    if n < 0:
        raise ValueError(f"the number of seeds n must be >= 0, got {n}")
    first = split_of(start)
    lo, hi = SPLITS[first]
    if start + n > hi:
        raise ValueError(f"seeds {start}..{start + n - 1} run past the {first} split ({lo}..{hi - 1})")
    return first


def task_rng(task: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(task.encode()), int(seed)])


@dataclass(frozen=True)
class WorldConfig:
    size: int = 32
    fov: float = DEFAULT_FOV
    scene: SceneOptions = field(default_factory=SceneOptions)
    shadows: bool = False
    novel_view_deg: float = 30.0  # look up / down / left / right angle of synthesized views
    video_frames: int = 8
    max_attempts: int = 200
    # how the pose task's second camera moves: "orbit" (around the scene: its sideways move and its
    # turn are one motion) and/or "move_turn" (the spatial task's: a sideways step and a turn drawn
    # independently, at the same height). The default, orbit alone, draws exactly the pose examples it
    # always drew; with both, each example picks one at random.
    pose_motions: tuple[str, ...] = ("orbit",)
    # the vqa thought's shape: "inventory" (every object's size, colour, shape and place, then the
    # question's step), "focused" (only the objects the question names, each found by its place,
    # then the step) or "measured" (the inventory with each object's distance, "a small purple cone on
    # the left at 4.6 m", which closer's step then copies). The question, image and answer of every seed
    # are the same for all three.
    vqa_thought: str = "inventory"
    # which revision of the world's tasks (WORLD_REVISIONS): 1, the default, draws what it always drew
    revision: int = 1

    def __post_init__(self):
        # each option's type and range checked here, where it is given: a float size or frame count failed deep
        # in torch or range(), a dict for scene in the first sampler, a NaN angle in the renderer; "no" turned
        # shadows on; a non-integer novel view angle was written rounded ("look up 30 degrees." for 30.4)
        for name in ("size", "video_frames", "max_attempts", "revision"):
            _integer(getattr(self, name), f"WorldConfig.{name}")
        if self.revision not in WORLD_REVISIONS:
            raise ValueError(f"world revision must be one of {', '.join(map(str, WORLD_REVISIONS))} "
                             f"(docs/world_audit.md), got {self.revision}")
        if not 8 <= self.size <= MAX_SIZE:
            raise ValueError(f"image size must lie in 8..{MAX_SIZE} px, got {self.size}")
        if self.video_frames < 2:
            raise ValueError("a video needs at least 2 frames")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts (drafts per example) must be at least 1, got {self.max_attempts}")
        if not _real(self.fov) or not 0.0 < self.fov < 180.0:
            raise ValueError(f"field of view must lie in (0, 180) degrees, got {self.fov!r}")
        if not _real(self.novel_view_deg) or not 0.0 < self.novel_view_deg < 180.0 \
                or self.novel_view_deg != round(self.novel_view_deg):
            raise ValueError(f"novel_view_deg must be a whole number of degrees in 1..179 (the nvs task writes it "
                             f"so: 'look up 30 degrees.'), got {self.novel_view_deg!r}")
        if not isinstance(self.scene, SceneOptions):
            raise TypeError(f"WorldConfig.scene must be a SceneOptions, got {type(self.scene).__name__} {self.scene!r}")
        if not isinstance(self.shadows, (bool, np.bool_)):
            raise TypeError(f"WorldConfig.shadows must be True or False, got {type(self.shadows).__name__} "
                            f"{self.shadows!r}")
        motions = (self.pose_motions,) if isinstance(self.pose_motions, str) else tuple(self.pose_motions)
        bad = [m for m in motions if m not in POSE_MOTIONS]
        if not motions or bad or len(set(motions)) != len(motions):
            raise ValueError(f"pose motions must be distinct names among {', '.join(POSE_MOTIONS)}, "
                             f"got {self.pose_motions!r}")
        object.__setattr__(self, "pose_motions", motions)
        if self.vqa_thought not in VQA_THOUGHTS:
            raise ValueError(f"vqa thought must be one of {', '.join(VQA_THOUGHTS)}, got {self.vqa_thought!r}")

    def to_dict(self) -> dict:
        """The config as JSON-ready fields (the scene options a dict of their own)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WorldConfig:
        """The config `to_dict` wrote (fields left out take their defaults); an unknown field is a
        ValueError naming it, a bad value the field's own error."""
        if not isinstance(d, dict) or not isinstance(d.get("scene", {}), dict):
            raise TypeError(f"a world config is a JSON object (its scene one too), got {d!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        scene_known = {f.name for f in dataclasses.fields(SceneOptions)}
        unknown = sorted(set(d) - known) + sorted(f"scene.{k}" for k in set(d.get("scene", {})) - scene_known)
        if unknown:
            raise ValueError(f"unknown world config field(s): {', '.join(unknown)}")
        scene = {k: tuple(v) if isinstance(v, list) else v for k, v in d.get("scene", {}).items()}
        return cls(**{**d, "scene": SceneOptions(**scene)})

    @property
    def K(self) -> np.ndarray:
        return intrinsics(self.fov, self.size)

    @property
    def min_pixels(self) -> int:
        return max(2, round(0.002 * self.size * self.size))


@dataclass
class View:
    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]
    depth: np.ndarray  # (H, W) float32 z-depth in metres
    valid: np.ndarray  # (H, W) bool
    ids: np.ndarray  # (H, W) int16
    amodal: np.ndarray  # (K, H, W) bool
    K: np.ndarray
    w2c: np.ndarray
    scene: str  # key into Example.scenes

    @property
    def size(self) -> tuple[int, int]:
        return self.depth.shape


@dataclass
class Example:
    task: str
    seed: int
    views: dict[str, View]
    scenes: dict[str, Scene]
    texts: dict[str, str]
    answer: str | None
    spec: dict

    def stats(self, view: str) -> list[L.ObjectStats]:
        v = self.views[view]
        return L.object_stats(self.scenes[v.scene], v.ids, v.depth, v.amodal)

    def to_json(self) -> dict:
        return {"task": self.task, "seed": self.seed, "split": split_of(self.seed),
                "texts": self.texts, "answer": self.answer, "spec": self.spec,
                "scenes": {k: s.to_dict() for k, s in self.scenes.items()},
                "views": {k: {"scene": v.scene, "K": v.K.tolist(), "w2c": v.w2c.tolist()}
                          for k, v in self.views.items()}}


Finish = Callable[[dict[str, View]], "tuple[dict, str | None, dict] | None"]


@dataclass
class Draft:
    scenes: dict[str, Scene]
    cams: dict[str, tuple[str, np.ndarray]]  # view name -> (scene key, w2c)
    finish: Finish


# ----------------------------------------------------------------------------------------------
# shared pieces


def random_camera(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A camera on a sphere around the scene centre, looking at it; returns w2c and its orbit."""
    orbit = {"azimuth": float(rng.uniform(0, 360)), "elevation": float(rng.uniform(28, 45)),
             "distance": float(rng.uniform(4.6, 5.6)),
             "target": [float(rng.uniform(-0.2, 0.2)), float(rng.uniform(-0.2, 0.2)), 0.35]}
    return orbit_camera(**orbit), orbit


def all_visible(view: View, scene: Scene, min_frac: float, min_px: int) -> list[L.ObjectStats] | None:
    """Stats of every object if each shows >= min_px pixels and >= min_frac of itself, else None."""
    st = L.object_stats(scene, view.ids, view.depth, view.amodal)
    if len(st) != len(scene.objects):
        return None
    if any(s.pixels < min_px or s.visible_fraction < min_frac for s in st):
        return None
    return st


def name_of(o: Obj) -> str:
    return f"the {o.name}"


def _inventory_item(s: L.ObjectStats, size: int, measured: bool = False) -> str:
    """One object as the vqa thought's inventory lists it: "a small purple cone on the left", with its
    median distance when `measured` ("... on the left at 4.6 m", as closer's step states it)."""
    at = f" at {s.median_depth:.1f} m" if measured else ""
    return f"{L.article(s.obj.size)} {L.full_name(s.obj)} {L.horizontal_word(s, size)}{at}"


def objects_sentence(stats: list[L.ObjectStats], size: int, measured: bool = False) -> str:
    items = [_inventory_item(s, size, measured) for s in L.by_position(stats)]
    return f"i see {L.count_phrase(len(stats), 'object')}: {L.join(items)}."


_WORDS = {"size": SIZES, "colour": COLORS, "shape": SHAPES}
_VQA_OPENING = re.compile(r"( i see)( \d+)( objects?:)")
_VQA_ITEM = re.compile(r"(,| and)?( an?)( {size})( {colour})( {shape})( on the left| in the center| on the right)"
                       r"( at \d+\.\d m)?".format(**{k: "(?:" + "|".join(v) + ")" for k, v in _WORDS.items()}))
_VQA_CLOSING = re.compile(r"( so the answer is)( [^.]+)(\.)")
# the step's words, by what they name (`vqa_thought_pieces`)
VQA_STEP_PARTS = ("step", "step colour", "step shape", "step relation", "step verdict")
VQA_PIECES = ("count", "size", "colour", "shape", "position", "distance", *VQA_STEP_PARTS, "answer")
# left_right's step as _vqa_relation writes it, up to its x centres: the two objects' names and x centres
# ("the purple cone is centred at x 9 and the blue cylinder at x 30,"), for whoever reads a thought's numbers
LEFT_RIGHT_X = re.compile(r"the ([a-z ]+?) is centred at x (\d+) and the ([a-z ]+?) at x (\d+),")
# revision 3's left_right step (an inventory thought's): the first object, the inventory after it as copied
# ("none" after the last), then the relation it concludes, of which object to which
LEFT_RIGHT_LISTED = re.compile(r"after the ([a-z ]+?) the list has: (.+?); so the ([a-z ]+?) is (left|right) of "
                               r"the ([a-z ]+?)\.")
_STEP_WORDS = {**{c: "step colour" for c in COLORS}, **{sh: "step shape" for sh in SHAPES}}


def _step_word(words: list[str], i: int) -> str:
    """What the i-th word of a vqa step names (`vqa_thought_pieces`)."""
    word = words[i]
    if word in ("left", "right") and words[i + 1:i + 2] == ["of"]:
        return "step relation"
    if word in ("yes.", "no.") and i and words[i - 1].endswith(":"):
        return "step verdict"
    return _STEP_WORDS.get(word.rstrip(".,;:"), "step")


def vqa_thought_pieces(thought: str) -> list[tuple[str, str | None]]:
    """The world's vqa thought (`objects_sentence` unless it is focused, then its family's step, then
    "so the answer is X.") cut into text pieces whose concatenation is " " + thought.strip(), each named
    by what it states or None: "count" (the objects seen), per object listed "size", "colour", "shape"
    and "position" (" on the left", ...) and, in a measured thought, "distance" (" at 4.6 m"), the
    question's step word by word ("step colour" and "step shape" for the colour and shape words in it,
    copied from the question or the listing or, in a focused thought, read from the image; "step
    relation" for the left or right of "left of" / "right of", the relation a left_right step concludes
    from the two x centres it states, or in revision 3 from the inventory it copies; "step verdict" for
    the yes or no after "the question asks left of:", revision 2's verdict on whether the relation asked
    is the one found; "step" for the others) and "answer". Each named piece starts with its space. A
    thought not of that shape is a ValueError."""
    text = " " + thought.strip()
    bad = ValueError(f"not a vqa thought of the world's shape: {thought[:80]!r}")
    pieces: list[tuple[str, str | None]] = []
    pos = 0
    if m := _VQA_OPENING.match(text):  # the inventory
        pieces += [(m.group(1), None), (m.group(2), "count"), (m.group(3), None)]
        pos = m.end()
        while it := _VQA_ITEM.match(text, pos):
            pieces += [(it.group(1) or "", None), (it.group(2), None), (it.group(3), "size"),
                       (it.group(4), "colour"), (it.group(5), "shape"), (it.group(6), "position"),
                       (it.group(7) or "", "distance")]
            pos = it.end()
        if pos == m.end() or not text.startswith(". ", pos):
            raise bad
        pieces.append((".", None))
        pos += 1
    end = _VQA_CLOSING.search(text, pos)
    if end is None or end.start() <= pos + 1 or end.end() != len(text) or text[pos] != " ":
        raise bad
    words = text[pos + 1:end.start()].split(" ")
    step = [(" " + word, _step_word(words, i)) for i, word in enumerate(words)]
    pieces += [*step, (end.group(1), None), (end.group(2), "answer"), (end.group(3), None)]
    return [(p, what) for p, what in pieces if p]


def vqa_conclusion_cut(thought: str) -> int:
    """Where a vqa thought's conclusion starts, as an index into " " + thought.strip(): after the
    question's step's last word holding a digit (what the thought read off the image or counted: the
    objects' x centres and distances, the counts), or at the step's first word when it holds none
    (revision 3's left_right step, copied from the inventory, is all conclusion; so is every step of a
    measured thought, whose inventory holds the distances the step copies and the objects it counts);
    what follows (the relation the numbers imply, "so the answer is X.") is what the thought concludes
    from the text before it. Always at a piece's start, which begins with its space (`vqa_thought_pieces`,
    whose ValueError a thought not of the world's shape raises)."""
    pos, start, cut, measured = 0, None, None, False
    for piece, what in vqa_thought_pieces(thought):
        measured |= what == "distance"
        if what in VQA_STEP_PARTS:
            start = pos if start is None else start
            if any(c.isdigit() for c in piece):
                cut = pos + len(piece)
        pos += len(piece)
    return cut if cut is not None and not measured else start


def _vqa_split(thought: str) -> tuple[str, str]:
    """A vqa thought as (its inventory "i see N objects: ... ." or "", the rest)."""
    text = thought.strip()
    if not _VQA_OPENING.match(" " + text):
        return "", text
    cut = text.find(". ")
    return (text[:cut + 1], text[cut + 2:]) if cut >= 0 else (text, "")


def vqa_inventory(thought: str) -> str:
    """The inventory of a vqa thought, as it is written: "i see N objects: ... ." up to its first ". ",
    or "" when the thought opens otherwise (a focused thought, or a model's that lists nothing).
    Tolerant of thoughts not of the world's shape, like `vqa_step`."""
    return _vqa_split(thought)[0]


def vqa_step(thought: str) -> str:
    """The question's step of a vqa thought, as it is written: what follows the inventory ("i see N
    objects: ... .", where there is one) up to the closing "so the answer is X." (or the end); "" when
    nothing is there. Tolerant of thoughts not of the world's shape (a model's), unlike
    `vqa_thought_pieces`."""
    text = _vqa_split(thought)[1]
    end = text.rfind("so the answer is")
    return (text[:end] if end >= 0 else text).strip()


def options_text(options: list[str]) -> str:
    """'A. <option> B. <option> ...': at most len(LETTERS) options (a fifth was an IndexError)."""
    _check_options(options)
    return " ".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def _check_options(options) -> None:
    if isinstance(options, str) or not 1 <= len(options) <= len(LETTERS):
        raise ValueError(f"options must be a list of 1..{len(LETTERS)} texts (letters {', '.join(LETTERS)}), "
                         f"got {options!r}")


def rel_pose_dict(T: np.ndarray) -> dict:
    return {"matrix": T.tolist(), "text": pose_to_text(T)}


def yaw_of(T: np.ndarray) -> float:
    """Heading change (degrees, + = turned right) of view B in view A's frame (T = T_AB)."""
    f = T[:3, 2]
    return math.degrees(math.atan2(f[0], f[2]))


# ----------------------------------------------------------------------------------------------
# vqa


def _vqa(rng: np.random.Generator, cfg: WorldConfig, memo: dict) -> Draft:
    scene = sample_scene(rng, cfg.scene, unique=True)
    w2c, _ = random_camera(rng)

    def finish(views):
        v = views["image"]
        st = all_visible(v, scene, 0.3, cfg.min_pixels)
        if st is None:
            return None
        families = ["counting", "attribute", "relation", "arithmetic"]
        rng.shuffle(families)
        for fam in families:
            got = _VQA_FAMILIES[fam](rng, scene, st, cfg)
            if got is not None:
                question, step, answer, kind = got
                seen = "" if cfg.vqa_thought == "focused" else \
                    objects_sentence(st, cfg.size, cfg.vqa_thought == "measured") + " "
                thinking = f"{seen}{step} so the answer is {answer}."
                texts = {"question": question, "thinking": thinking, "answer": answer,
                         "caption": L.short_caption(st)}
                return texts, answer, {"family": fam, "kind": kind}
        return None

    return Draft({"main": scene}, {"image": ("main", w2c)}, finish)


def _are(n: int, cfg: WorldConfig) -> str:
    """The verb for n things: "is" for one from revision 2 on (revision 1 wrote "there are 1 cone")."""
    return "is" if n == 1 and cfg.revision >= 2 else "are"


def _count(objs, **attrs) -> list[Obj]:
    return [o for o in objs if all(getattr(o, k) == val for k, val in attrs.items())]


def _found(objs: list[Obj], st, cfg) -> str:
    """The focused thought's list: each of objs by colour, shape and place, left to right ("none")."""
    items = [f"{L.article(s.obj.color)} {s.obj.name} {L.horizontal_word(s, cfg.size)}"
             for s in L.by_position([s for s in st if any(s.obj is o for o in objs)])]
    return L.join(items) or "none"


def _where(o: Obj, st, cfg) -> str:
    return next(L.horizontal_word(s, cfg.size) for s in st if s.obj is o)


def _vqa_counting(rng, scene, st, cfg):
    objs = scene.objects
    kind = str(rng.choice(["shape", "color", "all", "size"]))
    focused = cfg.vqa_thought == "focused"
    if kind == "all":
        step = f"the objects are: {_found(objs, st, cfg)}; that makes {len(objs)}." if focused else \
            f"that makes {len(objs)}."
        return "how many objects are there?", step, str(len(objs)), kind
    pool = {"shape": cfg.scene.shapes, "color": cfg.scene.colors, "size": cfg.scene.sizes}[kind]
    present = sorted({getattr(o, kind) for o in objs})
    val = str(rng.choice(present if rng.random() < 0.8 else list(pool)))
    hits = _count(objs, **{kind: val})
    q = {"shape": f"how many {val}s are there?", "color": f"how many {val} objects are there?",
         "size": f"how many {val} objects are there?"}[kind]
    noun = f"{val}s" if kind == "shape" else f"{val} objects"
    listed = _found(hits, st, cfg) if focused else L.join([o.name for o in hits])
    step = f"the {noun} are: {listed}; that makes {len(hits)}." if hits else f"there are no {noun}."
    return q, step, str(len(hits)), kind


def _vqa_attribute(rng, scene, st, cfg):
    objs = scene.objects

    def step(o: Obj, subject: str, attr: str) -> str:  # focused: the object's place, then what is asked
        return f"{subject} is {_where(o, st, cfg)}; it is {attr}." if cfg.vqa_thought == "focused" else \
            f"{subject} is {attr}."

    kinds = ["color_of_shape", "shape_of_color", "size_of_object"]
    rng.shuffle(kinds)
    for kind in kinds:
        if kind == "color_of_shape":
            cand = [o for o in objs if len(_count(objs, shape=o.shape)) == 1]
            if cand:
                o = cand[rng.integers(len(cand))]
                return f"what color is the {o.shape}?", step(o, f"the {o.shape}", o.color), o.color, kind
        elif kind == "shape_of_color":
            cand = [o for o in objs if len(_count(objs, color=o.color)) == 1]
            if cand:
                o = cand[rng.integers(len(cand))]
                return (f"what shape is the {o.color} object?", step(o, f"the {o.color} object", f"a {o.shape}"),
                        o.shape, kind)
        else:
            o = objs[rng.integers(len(objs))]
            return f"what size is the {o.name}?", step(o, f"the {o.name}", o.size), o.size, kind
    return None


def lists_left_right(cfg: WorldConfig) -> bool:
    """Whether left_right's step copies the thought's inventory (revision 3 on, a thought that has one)
    rather than stating two x centres."""
    return cfg.revision >= 3 and cfg.vqa_thought != "focused"


def _vqa_relation(rng, scene, st, cfg):
    if len(st) < 2:
        return None
    pairs = [(a, b) for a in st for b in st if a.index != b.index]
    order = rng.permutation(len(pairs))
    kind = str(rng.choice(["left_right", "closer"]))
    for i in order:
        a, b = pairs[i]
        if kind == "left_right":
            rel = L.relative_position(a.box, b.box) & {"left of", "right of"}
            if not rel:
                continue
            listed = lists_left_right(cfg)
            if listed:  # the inventory's objects after a, copied from it: b among them is b right of a
                inventory = L.by_position(st)
                after = inventory[[s.index for s in inventory].index(a.index) + 1:]
                if ("left of" in rel) != any(s.index == b.index for s in after):
                    continue  # the inventory's order (centroids) disagrees with the relation (boxes)
            asked = str(rng.choice(["left of", "right of"]))
            ans = "yes" if asked in rel else "no"
            if listed:
                items = L.join([_inventory_item(s, cfg.size, cfg.vqa_thought == "measured") for s in after]) or "none"
                step = (f"after the {a.obj.name} the list has: {items}; so the {a.obj.name} is {rel.pop()} "
                        f"the {b.obj.name}.")
            else:
                step = (f"the {a.obj.name} is centred at x {a.centroid[0]:.0f} and the {b.obj.name} at x "
                        f"{b.centroid[0]:.0f}, so the {a.obj.name} is {rel.pop()} the {b.obj.name}.")
            if cfg.revision >= 2:  # the relation asked, copied beside the one found, and whether they agree
                step += f" the question asks {asked}: {ans}."
            return f"is the {a.obj.name} {asked} the {b.obj.name}?", step, ans, kind
        if abs(a.median_depth - b.median_depth) < 0.3:
            continue
        near = a if a.median_depth < b.median_depth else b
        step = (f"the {a.obj.name} is about {a.median_depth:.1f} m away and the {b.obj.name} about "
                f"{b.median_depth:.1f} m.")
        return (f"which is closer to the camera, the {a.obj.name} or the {b.obj.name}?", step,
                near.obj.name, kind)
    return None


def _vqa_arithmetic(rng, scene, st, cfg):
    objs = scene.objects
    kind = str(rng.choice(["sum", "difference", "remove"]))
    focused = cfg.vqa_thought == "focused"
    shapes = list(cfg.scene.shapes)
    if kind in ("sum", "difference") and len(shapes) >= 2:
        s1, s2 = (str(x) for x in rng.choice(shapes, 2, replace=False))
        n1, n2 = len(_count(objs, shape=s1)), len(_count(objs, shape=s2))
        if kind == "difference" and n1 < n2:
            s1, s2, n1, n2 = s2, s1, n2, n1
        op, q, val = (("+", f"how many {s1}s and {s2}s are there in total?", n1 + n2) if kind == "sum" else
                      ("-", f"how many more {s1}s than {s2}s are there?", n1 - n2))
        if focused:  # each shape's objects found, then the sum
            counted = "; ".join(f"the {s}s are: {_found(_count(objs, shape=s), st, cfg)}, so {k}"
                                for s, k in ((s1, n1), (s2, n2)))
        else:
            counted = f"there {_are(n1, cfg)} {n1} {L.plural(s1, n1)} and {n2} {L.plural(s2, n2)}"
        return q, f"{counted}; {n1} {op} {n2} = {val}.", str(val), kind
    color = str(rng.choice(sorted({o.color for o in objs})))
    k = len(_count(objs, color=color))
    n = len(objs)
    if focused:  # what remains, found
        step = f"the objects that are not {color} are: {_found([o for o in objs if o.color != color], st, cfg)}; " \
               f"that makes {n - k}."
    else:
        step = (f"there {_are(n, cfg)} {n} {L.plural('object', n) if cfg.revision >= 2 else 'objects'} and "
                f"{k} of them {_are(k, cfg)} {color}; {n} - {k} = {n - k}.")
    return f"if every {color} object were removed, how many objects would remain?", step, str(n - k), "remove"


_VQA_FAMILIES = {"counting": _vqa_counting, "attribute": _vqa_attribute, "relation": _vqa_relation,
                 "arithmetic": _vqa_arithmetic}


# ----------------------------------------------------------------------------------------------
# t2i


T2I_CAMERA = {"azimuth": 0.0, "elevation": 40.0, "distance": 4.0, "target": [0.0, 0.15, 0.3]}
T2I_REGION = (-1.3, 1.3, -0.9, 1.3)  # x0, x1, y0, y1 of object centres for the canonical camera
_REL_REGIONS = {  # where A and B go for "A <rel> B" (then the render is checked with GenEval's rule)
    "left of": ((-1.3, -0.3, -0.9, 1.3), (0.3, 1.3, -0.9, 1.3)),
    "right of": ((0.3, 1.3, -0.9, 1.3), (-1.3, -0.3, -0.9, 1.3)),
    "above": ((-1.0, 1.0, 0.5, 1.3), (-1.0, 1.0, -0.9, 0.0)),
    "below": ((-1.0, 1.0, -0.9, 0.0), (-1.0, 1.0, 0.5, 1.3)),
}


def _math_expr(rng: np.random.Generator, level: int, lo: int = 1, hi: int = 6) -> tuple[str, int]:
    """An integer expression with `level` operations whose every step stays in 0..20 and whose
    result is in lo..hi, within 1..6 (seed 004's math prompts)."""
    while True:
        val = int(rng.integers(1, 10))
        expr = str(val)
        ok = True
        for _ in range(level):
            op = str(rng.choice(["+", "-", "*", "/"]))
            b = int(rng.integers(1, 10))
            if op == "+":
                val += b
            elif op == "-":
                val -= b
            elif op == "*":
                val *= b
            else:
                if val % b:
                    ok = False
                    break
                val //= b
            expr = f"({expr}) {op} {b}" if _ else f"{expr} {op} {b}"
            if not 0 <= val <= 20:
                ok = False
                break
        if ok and lo <= val <= hi:
            return expr, val


@dataclass
class T2IPlan:
    """A t2i prompt, its short rewrite, its GenEval-style spec and the objects a target shows."""

    prompt: str
    short: str
    include: list[dict]
    exclude: list[dict]
    draw: list[tuple[str, str]]  # (shape, colour) of each object of the target render
    relation: str | None = None  # "A <relation> B" for the position category (A = draw[0])
    level: int | None = None  # difficulty of math / mapping prompts


def _t2i_spec(rng: np.random.Generator, cfg: WorldConfig, category: str, memo: dict | None = None) -> T2IPlan:
    """A prompt of `category`. From revision 2 on, what decides its difficulty (counting's number,
    position's relation, math's level and answer) is drawn once and kept in `memo` across redrafts, and
    only its shapes and colours are drawn anew: revision 1 drew the whole prompt anew at every redraft,
    so hard prompts (four objects, above / below, math answers of 4-6) were replaced by easy ones. The
    whole prompt cannot be kept: some never render checkably at 32 px (four cylinders, 0 of 400 drafts)."""
    shapes, colors = list(cfg.scene.shapes), list(cfg.scene.colors)

    def kept(key, draw):
        if memo is None or cfg.revision < 2:
            return draw()
        if key not in memo:
            memo[key] = draw()
        return memo[key]

    if category in T2I_OBJECTS:  # the count range this category shares with the scene options'
        least, most = _t2i_objects(cfg.scene, category)

    def pick(pool, k=1):
        if len(pool) < k:  # the options are too narrow for this category's prompt
            what, option = ("shapes", "shapes") if pool is shapes else ("colours", "colors")
            raise ValueError(f"t2i prompts of category {category!r} name {k} different {what}, but the scene "
                             f"options allow only {len(pool)} ({', '.join(pool)}): allow at least {k} {what} "
                             f"(SceneOptions.{option}, --{option})")
        return [str(x) for x in rng.choice(pool, k, replace=False)]

    def col():
        return str(rng.choice(colors))

    def req(shape=None, color=None, count=1, position=None):
        r = {"shape": shape, "color": color, "count": count}
        if position:
            r["position"] = position
        return r

    if category == "single_object":
        (s,) = pick(shapes)
        return T2IPlan(f"a photo of {L.article(s)} {s}.", f"a single {s}, fully in view.", [req(s)], [], [(s, col())])
    if category == "two_object":
        s1, s2 = pick(shapes, 2)
        return T2IPlan(f"a photo of {L.article(s1)} {s1} and {L.article(s2)} {s2}.",
                f"one {s1} and one {s2}, side by side.", [req(s1), req(s2)], [], [(s1, col()), (s2, col())])
    if category == "counting":
        (s,) = pick(shapes)
        n = kept("n", lambda: int(rng.integers(least, most + 1)))
        return T2IPlan(f"a photo of {L.NUMBER_WORDS[n]} {s}s.", f"exactly {n} {s}s, spread apart.",
                [req(s, count=n)], [req(s, count=n + 1)], [(s, col()) for _ in range(n)])
    if category == "colors":
        (s,), c = pick(shapes), col()
        return T2IPlan(f"a photo of {L.article(c)} {c} {s}.", f"one {c} {s}.", [req(s, c)], [], [(s, c)])
    if category == "position":
        s1, s2 = pick(shapes, 2)
        rel = kept("relation", lambda: str(rng.choice(list(_REL_REGIONS))))
        hint = {"left of": f"the {s1} on the left and the {s2} on the right.",
                "right of": f"the {s1} on the right and the {s2} on the left.",
                "above": f"the {s1} further back, higher in the image, and the {s2} in front.",
                "below": f"the {s1} in front, lower in the image, and the {s2} further back."}[rel]
        return T2IPlan(f"a photo of {L.article(s1)} {s1} {rel} {L.article(s2)} {s2}.", hint,
                [req(s2), req(s1, position=[rel, 0])], [], [(s1, col()), (s2, col())], relation=rel)
    if category == "color_attr":
        s1, s2 = pick(shapes, 2)
        c1, c2 = pick(colors, 2)
        a1, a2 = (L.article(c1), L.article(c2)) if cfg.revision >= 2 else ("a", "a")  # 1: "a orange cone"
        return T2IPlan(f"a photo of {L.article(c1)} {c1} {s1} and {L.article(c2)} {c2} {s2}.",
                f"{a1} {c1} {s1} and {a2} {c2} {s2}.", [req(s1, c1), req(s2, c2)], [], [(s1, c1), (s2, c2)])
    if category == "math":
        (s,) = pick(shapes)
        level = kept("level", lambda: int(rng.integers(1, 4)))
        # revision 2 asks for at most 4 objects, as counting (5 and 6 were never rendered checkably), unless
        # the scene options ask for more
        if cfg.revision < 2:
            expr, n = _math_expr(rng, level, least, most)
        else:
            n = kept("n", lambda: _math_expr(rng, level, least, min(most, max(4, least)))[1])
            expr, n = _math_expr(rng, level, n, n)
        return T2IPlan(f"a photo of as many {s}s as {expr}.", f"{expr} = {n}, so exactly {n} {L.plural(s, n)}.",
                [req(s, count=n)], [req(s, count=n + 1)], [(s, col()) for _ in range(n)], level=level)
    if category == "mapping":
        s_a, s_b = pick(shapes, 2)
        level = int(rng.integers(1, 3))
        want = int(rng.integers(1, 3))
        target, other = (s_a, s_b) if want == 1 else (s_b, s_a)
        rules = [f"rule 1: the number 1 means {s_a}.", f"rule 2: the number 2 means {s_b}."]
        if level == 1:
            ask = f"draw the shape that the number {want} means."
            short = f"the number {want} means {target}, so one {target}."
        else:
            letters = ["A", "B"] if rng.random() < 0.5 else ["B", "A"]
            rules += [f"rule 3: the letter {letters[0]} means the number 1.",
                      f"rule 4: the letter {letters[1]} means the number 2."]
            letter = letters[want - 1]
            ask = f"draw the shape that the letter {letter} means."
            short = f"the letter {letter} means the number {want}, which means {target}, so one {target}."
        return T2IPlan(" ".join(rules + [ask]), short, [req(target)], [req(other)], [(target, col())], level=level)
    raise ValueError(f"unknown t2i category {category!r}; known: {', '.join(T2I_CATEGORIES)}")


def checkable(view: View, scene: Scene) -> list[L.ObjectStats] | None:
    """Stats if the render is unambiguous for a checker: every object large enough, inside the
    frame, and no two objects touching, even diagonally (so none hides part of another)."""
    H, W = view.depth.shape
    st = all_visible(view, scene, 0.99, max(4, round(0.008 * H * W)))
    if st is None:
        return None
    am = view.amodal
    if am[:, 0].any() or am[:, -1].any() or am[:, :, 0].any() or am[:, :, -1].any():
        return None
    ids = np.pad(view.ids, 1, constant_values=-1)
    core = ids[1:-1, 1:-1]
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            nb = ids[1 + di:H + 1 + di, 1 + dj:W + 1 + dj]
            if ((core >= 0) & (nb >= 0) & (core != nb)).any():
                return None
    return st


def _t2i_objects(opts: SceneOptions, category: str) -> tuple[int, int]:
    """The object counts a category's prompt may ask for within the scene options' range; a ValueError
    if none does."""
    lo, hi = T2I_OBJECTS[category]
    least, most = max(lo, opts.min_objects), min(hi, opts.max_objects)
    if least > most:
        raise ValueError(f"t2i prompts of category {category!r} ask for {lo}..{hi} objects, outside the scene "
                         f"options' {opts.min_objects}..{opts.max_objects} (SceneOptions.min_objects / max_objects)")
    return least, most


def _t2i(rng: np.random.Generator, cfg: WorldConfig, memo: dict) -> Draft:
    # only the categories whose prompts fit the scene options' object range (never none: math asks for
    # 1..6 objects); drawn at every draft, kept from the first (the examples' random streams hold the draw)
    fits = tuple(c for c in T2I_CATEGORIES
                 if T2I_OBJECTS[c][0] <= cfg.scene.max_objects and T2I_OBJECTS[c][1] >= cfg.scene.min_objects)
    category = memo.setdefault("category", str(rng.choice(fits)))
    plan = _t2i_spec(rng, cfg, category, memo)
    rel = plan.relation
    while True:
        scene = Scene()
        ok = True
        crowded = len(plan.draw) >= 4  # many objects: small ones, so they fit apart in view
        for i, (shape, color) in enumerate(plan.draw):
            size = "small" if crowded and "small" in cfg.scene.sizes else None
            obj = random_object(rng, cfg.scene, shape=shape, color=color, size=size)
            region = _REL_REGIONS[rel][i] if rel else T2I_REGION
            if not place(rng, scene, obj, cfg.scene, region=region):
                ok = False
                break
        if ok:
            break
    w2c = orbit_camera(**T2I_CAMERA)

    def finish(views):
        v = views["target"]
        st = checkable(v, scene)
        if st is None:
            return None
        if rel and rel not in L.relative_position(st[0].box, st[1].box):
            return None
        layout = L.layout_text(st, cfg.size, cfg.size)
        texts = {"prompt": plan.prompt, "short": plan.short, "long": f"{plan.short} {layout}",
                 "oracle": layout, "caption": L.short_caption(st)}
        spec = {"category": category, "include": plan.include, "exclude": plan.exclude}
        if plan.level is not None:
            spec["level"] = plan.level
        return texts, None, spec

    return Draft({"main": scene}, {"target": ("main", w2c)}, finish)


# ----------------------------------------------------------------------------------------------
# spatial (two views, MMSI-style four-option questions)


SPATIAL_QTYPES = ("camera_motion", "camera_object", "object_object")
_QUADRANTS = ("in front and to the left", "in front and to the right", "behind and to the left",
              "behind and to the right")


def _in_frame(w2c: np.ndarray, p) -> tuple[float, float]:
    """(x right, z forward) of world point p in a camera's frame."""
    c = w2c[:3, :3] @ np.asarray(p) + w2c[:3, 3]
    return float(c[0]), float(c[2])


def _quadrant(w2c: np.ndarray, p, level: bool = True) -> int | None:
    """The quadrant of world point p about a camera (0 front-left, 1 front-right, 2 behind-left, 3
    behind-right; `_QUADRANTS`'s order), or None within 0.3 m of either dividing line. `level`: the same
    quadrant by 0.3 m for someone standing at the camera facing its way with a level head, too (a pitched
    camera's "behind" and a person's differ for points near its feet), else None."""
    def of(x: float, z: float) -> int | None:
        return None if abs(x) < 0.3 or abs(z) < 0.3 else (0 if z > 0 else 2) + (0 if x < 0 else 1)

    q = of(*_in_frame(w2c, p))
    if q is None or (level and of(*_level_frame(w2c, p)) != q):
        return None
    return q


def spatial_conclusion(options: list[str], answer_text: str) -> str:
    """The spatial thought's last steps: the option it reasons to, then the question's options copied
    in order, each with a verdict, up to the matching one, whose letter it states:
    "that is: <option>. A. <option A>: no. B. <option B>: yes, so the answer is B." Every step is
    local (copy the next option, compare it with the one just stated, repeat the letter just
    written); a bare "that is: <option>, so the answer is B." asked the model to find the option
    among the shuffled ones and read its letter in one token, which omni-tiny never learned."""
    _check_options(options)
    if list(options).count(answer_text) != 1:  # list.index named neither the options nor a duplicate
        raise ValueError(f"the answer {answer_text!r} must be exactly one of the options {list(options)!r}")
    k = options.index(answer_text)
    items = ". ".join(f"{LETTERS[i]}. {o}: {'yes' if i == k else 'no'}" for i, o in enumerate(options[:k + 1]))
    return f"that is: {answer_text}. {items}, so the answer is {LETTERS[k]}."


# Readers of the thoughts the world writes: the one place, beside their writers, that knows their shape.
# They read a model's thoughts too, which may be malformed (None then) or follow an older world's form.
_STATED = re.compile(r"so the answer is (.+?)\.?\s*$")
_STATED_OPTION = re.compile(r"that is: ([^.,]+)[.,]")  # today's "that is: X. A. ..." and the old "that is: X, so"
_OPENING = re.compile(r"(.* that is:)( [^.]+)")
_ITEM = re.compile(rf"(\. [{LETTERS}]\.)( [^:.]+)(:)( yes| no)")
_CLOSING = re.compile(rf"(, so the answer is)( [{LETTERS}])(\.)")


def stated_answer(thought: str) -> str | None:
    """The answer a thought states in its closing "so the answer is X." (vqa's and spatial's thoughts
    both end so), or None when it states none."""
    m = _STATED.search(thought.strip())
    return m.group(1).strip() if m else None


def stated_option(thought: str) -> str | None:
    """The option a spatial thought reasons to ("that is: <option>. ..."; also the older form
    "that is: <option>, so the answer is B."), or None when it names none."""
    m = _STATED_OPTION.search(thought)
    return m.group(1).strip() if m else None


def conclusion_pieces(thought: str) -> list[tuple[str, str | None]]:
    """The world's spatial thought cut into its steps: text pieces whose concatenation is
    " " + thought.strip(), each named by the step it is or None: "option" (the option reasoned to), per
    listed option "copy" (its words, copied from the question) and "verdict" (" yes" / " no": is it the
    option just stated), and "letter" (the one stated). Each named piece starts with its space, so it
    tokenizes on its own as in the whole. A thought not of `spatial_conclusion`'s shape is a ValueError."""
    text = " " + thought.strip()
    m = _OPENING.match(text)
    if m is None:
        raise ValueError(f"not a spatial thought of the world's shape: {thought[-80:]!r}")
    pieces: list[tuple[str, str | None]] = [(m.group(1), None), (m.group(2), "option")]
    pos, said = m.end(), None
    while said != " yes" and (it := _ITEM.match(text, pos)):
        pieces += [(it.group(1), None), (it.group(2), "copy"), (it.group(3), None), (it.group(4), "verdict")]
        pos, said = it.end(), it.group(4)
    tail = _CLOSING.fullmatch(text, pos)
    if said != " yes" or tail is None:
        raise ValueError(f"not a spatial thought of the world's shape: {thought[-80:]!r}")
    return pieces + [(tail.group(1), None), (tail.group(2), "letter"), (tail.group(3), None)]


def move_and_turn(rng: np.random.Generator, w2c: np.ndarray) -> np.ndarray:
    """The spatial task's second camera: 0.4-1.2 m to either side and up to 0.6 m forward or back,
    then turned 15-40 degrees left or right, the step and the turn drawn independently."""
    offset = np.array([rng.choice([-1, 1]) * rng.uniform(0.4, 1.2), 0.0, rng.uniform(-0.6, 0.6)])
    turn = str(rng.choice(["left", "right"]))
    return rotate_view(move_view(w2c, offset), turn, float(rng.uniform(15, 40)))


def standing_camera(rng: np.random.Generator, scene: Scene, place_half: float) -> np.ndarray | None:
    """Revision 2's camera_object view 2: a camera standing among the objects (in the square they are
    placed in, 0.3 m or more from each, 0.7-1.1 m high), looking between two of them that are each 0.9 m
    or more away and at most 36 degrees apart as it sees them, turned up to 4 degrees: it shows both,
    which fixes where it stands (one object alone, seen close, would leave the camera anywhere around
    it), while the others can lie beside or behind it. None when the point drawn sees no such pair."""
    objs = scene.objects
    p = rng.uniform(-place_half, place_half, 2)
    if any(math.hypot(o.x - p[0], o.y - p[1]) < o.footprint + 0.3 for o in objs):
        return None
    v = np.array([[o.x, o.y] for o in objs]) - p
    dist = np.linalg.norm(v, axis=1)
    cos = (v @ v.T) / np.outer(dist, dist)
    ok = (dist[:, None] >= 0.9) & (dist[None, :] >= 0.9) & (cos >= math.cos(math.radians(36.0)))
    pairs = [(i, j) for i, j in zip(*np.nonzero(np.triu(ok, 1)), strict=True)]
    if not pairs:
        return None
    i, j = pairs[int(rng.integers(len(pairs)))]
    eye = (float(p[0]), float(p[1]), float(rng.uniform(0.7, 1.1)))
    w2c = look_at(eye, (np.asarray(objs[i].center) + np.asarray(objs[j].center)) / 2)
    return rotate_view(w2c, str(rng.choice(["left", "right"])), float(rng.uniform(0, 4)))


def _facing_quadrant(rng: np.random.Generator, scene: Scene, place_half: float, q: int,
                     tries: int = 150) -> np.ndarray | None:
    """A standing camera (`standing_camera`) with some object in quadrant q of it, by the camera's and a
    level head's frames both: up to `tries` cameras are drawn (no render needed; behind the camera is
    the rare case), None if none has. The render then checks that two objects or more show (the two it
    looks at may hide each other)."""
    for _ in range(tries):
        w2c = standing_camera(rng, scene, place_half)
        if w2c is not None and any(_quadrant(w2c, o.center) == q for o in scene.objects):
            return w2c
    return None


def _level_frame(w2c: np.ndarray, p) -> tuple[float, float]:
    """(x right, z forward) of world point p for someone standing at the camera facing its way, head
    level: the camera's heading without its pitch."""
    f = w2c[2, :3].copy()  # the camera's forward axis in world axes (z up), made level
    f[2] = 0.0
    f /= np.linalg.norm(f)
    r = np.array([f[1], -f[0], 0.0])  # its right, level
    d = np.asarray(p, dtype=np.float64) - camera_center(w2c)
    return float(d @ r), float(d @ f)


def _dm(x: float, cfg: WorldConfig) -> str:
    """x with one decimal; from revision 2 on never "-0.0"."""
    t = f"{x:.1f}"
    return t[1:] if t == "-0.0" and cfg.revision >= 2 else t


def _spatial(rng: np.random.Generator, cfg: WorldConfig, memo: dict) -> Draft:
    opts = cfg.scene
    if opts.max_objects < 2:
        raise ValueError("spatial questions need scenes of at least 2 objects")
    opts2 = SceneOptions(opts.shapes, opts.colors, opts.sizes, max(2, opts.min_objects), opts.max_objects,
                         opts.place_half)
    scene = sample_scene(rng, opts2, unique=True)
    w2c1, _ = random_camera(rng)
    if cfg.revision >= 2:  # the question type first: camera_object's view 2 stands among the objects
        qtype = memo.setdefault("qtype", str(rng.choice(SPATIAL_QTYPES)))
        # and its answer's quadrant is drawn once, so all four are equally often right
        quadrant = memo.setdefault("quadrant", int(rng.integers(4))) if qtype == "camera_object" else None
        w2c2 = _facing_quadrant(rng, scene, opts.place_half, quadrant) if qtype == "camera_object" else \
            move_and_turn(rng, w2c1)
        if w2c2 is None:
            w2c2 = move_and_turn(rng, w2c1)  # a draft that `finish` rejects, rendered like any other
            quadrant = -1
    else:
        w2c2, quadrant = move_and_turn(rng, w2c1), None
    cams = {"view1": ("main", w2c1), "view2": ("main", w2c2)}
    for d in VIEW_DIRECTIONS:
        cams[f"look_{d}"] = ("main", rotate_view(w2c1, d, cfg.novel_view_deg))
    if cfg.revision < 2:
        qtype = memo.setdefault("qtype", str(rng.choice(SPATIAL_QTYPES)))

    def finish(views):
        st1 = all_visible(views["view1"], scene, 0.3, cfg.min_pixels)
        st2 = L.object_stats(scene, views["view2"].ids, views["view2"].depth)
        if st1 is None or not any(s.pixels >= cfg.min_pixels for s in st2):
            return None
        # revision 2's standing view 2 shows two objects or more: one alone, seen close, leaves where the camera
        # stands around it (and so the answer) undetermined
        if quadrant is not None and sum(s.pixels >= cfg.min_pixels for s in st2) < 2:
            return None
        T = relative_pose(w2c1, w2c2)
        tx, tz, yaw = T[0, 3], T[2, 3], yaw_of(T)
        pose_step = (f"view 2's camera is {abs(tx):.1f} m to the {'right' if tx > 0 else 'left'} and "
                     f"{abs(tz):.1f} m {'forward' if tz > 0 else 'back'}, turned {abs(yaw):.0f} degrees "
                     f"to the {'right' if yaw > 0 else 'left'}.")
        if qtype == "camera_motion":
            options = [f"moved {m} and turned {t}" for m in ("left", "right") for t in ("left", "right")]
            answer_text = f"moved {'right' if tx > 0 else 'left'} and turned {'right' if yaw > 0 else 'left'}"
            question = "how did the camera move from view 1 to view 2?"
            reason = ""
        elif qtype == "camera_object":
            seen2 = {s.index for s in st2}
            cand = sorted(st1, key=lambda s: (s.index in seen2, rng.random()))
            pick = None
            for s in cand:
                q = _quadrant(w2c2, s.obj.center, level=cfg.revision >= 2)
                if q is not None and (cfg.revision < 2 or q == quadrant):
                    pick = (s, *_in_frame(w2c2, s.obj.center), q)
                    break
            if pick is None:
                return None
            s, x, z, q = pick
            x1, z1 = _in_frame(w2c1, s.obj.center)
            answer_text = _QUADRANTS[q]
            options = list(_QUADRANTS)
            question = (f"standing at the camera of view 2 and facing the same way, where is the "
                        f"{s.obj.name}?")
            reason = (f"the {s.obj.name} is at x {_dm(x1, cfg)}, z {_dm(z1, cfg)} in view 1's frame, which is "
                      f"x {_dm(x, cfg)}, z {_dm(z, cfg)} in view 2's frame.")
        else:
            objs = list(scene.objects)
            rng.shuffle(objs)
            if cfg.revision >= 2 and len(objs) > 4:  # the leftmost of all must be among the 4 offered
                lean = [math.atan2(*_in_frame(w2c2, o.center)) for o in objs]
                first = int(np.argmin(lean))
                if first >= 4:
                    objs[3], objs[first] = objs[first], objs[3]
            objs = objs[:4]
            pos = [_in_frame(w2c2, o.center) for o in objs]
            if any(z < 0.3 for _, z in pos):
                return None
            ang = [math.degrees(math.atan2(x, z)) for x, z in pos]
            order = np.argsort(ang)
            if len(objs) > 1 and ang[order[1]] - ang[order[0]] < 5.0:
                return None
            answer_text = objs[order[0]].name
            present = {o.name for o in scene.objects}
            fill = [f"{c} {s}" for c in opts.colors for s in opts.shapes if f"{c} {s}" not in present]
            rng.shuffle(fill)
            options = [o.name for o in objs] + fill[: 4 - len(objs)]
            question = "seen from the camera of view 2, which object is farthest to the left?"
            reason = " ".join(f"the {o.name} is at {a:.0f} degrees." for o, a in zip(objs, ang, strict=True))
        rng.shuffle(options)
        letter = LETTERS[options.index(answer_text)]
        pose = pose_to_text(T)
        thinking = " ".join(x for x in (f"the relative pose is {pose}.", pose_step, reason,
                                         spatial_conclusion(options, answer_text)) if x)
        texts = {"question": f"{question} {options_text(options)}", "thinking": thinking, "answer": letter,
                 "pose": pose, "caption": L.short_caption(st1)}
        spec = {"qtype": qtype, "options": options, "answer_text": answer_text,
                "relative_pose": rel_pose_dict(T), "novel_view_deg": cfg.novel_view_deg}
        return texts, letter, spec

    return Draft({"main": scene}, cams, finish)


# ----------------------------------------------------------------------------------------------
# depth, pose, nvs, video, edit


def _depth(rng: np.random.Generator, cfg: WorldConfig, memo: dict) -> Draft:
    scene = sample_scene(rng, cfg.scene, unique=True)
    w2c, _ = random_camera(rng)

    def finish(views):
        v = views["image"]
        st = all_visible(v, scene, 0.2, cfg.min_pixels)
        if st is None:
            return None
        texts = {"detailed": L.detailed_caption(st, cfg.size, cfg.size),
                 "depth_caption": L.depth_caption(scene, st, v.ids, v.depth, v.amodal),
                 "caption": L.short_caption(st)}
        return texts, None, {"depth_unit": "metre", "depth_kind": "z"}

    return Draft({"main": scene}, {"image": ("main", w2c)}, finish)


# the pose task's six numbers (tx ty tz rx ry rz) over training seeds, rounded: their centre and spread,
# by which a pose head (OmniConfig.pose_head) standardises what it predicts, as the probe standardises
# its targets (tests/test_tasks.py measures them on 1,000 training seeds: means 0.13 -0.48 0.70 0.00
# -0.03 -0.02, standard deviations 2.47 0.63 0.61 0.10 0.53 0.40)
POSE_CENTRE = (0.1, -0.5, 0.7, 0.0, 0.0, 0.0)
POSE_SPREAD = (2.5, 0.6, 0.6, 0.1, 0.5, 0.4)


def _pose(rng: np.random.Generator, cfg: WorldConfig, memo: dict) -> Draft:
    scene = sample_scene(rng, cfg.scene)
    w2c_a, orbit = random_camera(rng)
    motions = cfg.pose_motions  # one motion draws nothing: the default stream stays as it was
    motion = memo.setdefault("motion", motions[0] if len(motions) == 1 else str(rng.choice(motions)))
    if motion == "move_turn":
        w2c_b = move_and_turn(rng, w2c_a)
    else:
        orbit_b = {"azimuth": orbit["azimuth"] + float(rng.choice([-1, 1]) * rng.uniform(10, 60)),
                   "elevation": float(np.clip(orbit["elevation"] + rng.uniform(-10, 10), 15, 50)),
                   "distance": orbit["distance"] + float(rng.uniform(-0.7, 0.7)),
                   "target": [t + float(rng.uniform(-0.3, 0.3)) for t in orbit["target"][:2]] + [0.35]}
        w2c_b = orbit_camera(**orbit_b)

    def finish(views):
        for name in ("view1", "view2"):
            if not L.object_stats(scene, views[name].ids, views[name].depth):
                return None
        T = relative_pose(w2c_a, w2c_b)
        return {"pose": pose_to_text(T)}, pose_to_text(T), {"relative_pose": rel_pose_dict(T), "motion": motion}

    return Draft({"main": scene}, {"view1": ("main", w2c_a), "view2": ("main", w2c_b)}, finish)


NVS_MOTIONS = ("look", "move", "orbit")


def _nvs(rng: np.random.Generator, cfg: WorldConfig, memo: dict) -> Draft:
    scene = sample_scene(rng, cfg.scene)
    w2c, orbit = random_camera(rng)
    kind = memo.setdefault("kind", str(rng.choice(NVS_MOTIONS)))
    if kind == "look":
        d = str(rng.choice(VIEW_DIRECTIONS))
        deg = cfg.novel_view_deg
        tgt = rotate_view(w2c, d, deg)
        instruction, motion = f"look {d} {deg:.0f} degrees.", {"kind": kind, "direction": d, "degrees": deg}
    elif kind == "move":
        d = str(rng.choice(["left", "right", "forward", "backward"]))
        m = float(rng.choice([0.5, 1.0]))
        off = {"left": [-m, 0, 0], "right": [m, 0, 0], "forward": [0, 0, m], "backward": [0, 0, -m]}[d]
        tgt = move_view(w2c, off)
        instruction, motion = f"move {d} {m:.1f} m.", {"kind": kind, "direction": d, "metres": m}
    else:
        d = str(rng.choice(["left", "right"]))
        deg = float(rng.choice([15.0, 30.0]))
        tgt = orbit_camera(**{**orbit, "azimuth": orbit["azimuth"] + (deg if d == "right" else -deg)})
        instruction, motion = f"orbit {d} {deg:.0f} degrees.", {"kind": kind, "direction": d, "degrees": deg}

    def finish(views):
        if all_visible(views["source"], scene, 0.2, cfg.min_pixels) is None:
            return None
        T = relative_pose(w2c, tgt)
        return {"instruction": instruction}, None, {"motion": motion, "relative_pose": rel_pose_dict(T)}

    return Draft({"main": scene}, {"source": ("main", w2c), "target": ("main", tgt)}, finish)


def _video(rng: np.random.Generator, cfg: WorldConfig, memo: dict) -> Draft:
    scene = sample_scene(rng, cfg.scene, unique=True)
    _, orbit = random_camera(rng)
    direction = str(rng.choice(["left", "right"]))
    step = float(rng.uniform(4, 8))
    sign = 1.0 if direction == "right" else -1.0
    cams = {f"frame{t}": ("main", orbit_camera(**{**orbit, "azimuth": orbit["azimuth"] + sign * step * t}))
            for t in range(cfg.video_frames)}

    def finish(views):
        seen = set()
        for v in views.values():
            seen |= {s.index for s in L.object_stats(scene, v.ids, v.depth) if s.pixels >= cfg.min_pixels}
        if len(seen) != len(scene.objects):
            return None
        st0 = L.object_stats(scene, views["frame0"].ids, views["frame0"].depth)
        names = [f"{L.article(o.color)} {o.name}" for o in scene.objects]
        caption = f"the camera orbits {direction} around {L.join(names)}."
        spec = {"direction": direction, "degrees_per_frame": step, "orbit": orbit,
                "first_frame_objects": [s.index for s in st0]}
        return {"caption": caption}, None, spec

    return Draft({"main": scene}, cams, finish)


EDIT_OPS = ("recolor", "remove", "add", "move")


EDIT_TRIES = 1000  # drafts an edit may redraw (no free colour, no room to add, a move off the floor)


def _edit(rng: np.random.Generator, cfg: WorldConfig, memo: dict) -> Draft:
    """An edit's draft: redrawn (the same random stream as before, when this recursed) until its edit can
    be made; options where it almost never can are a ValueError, not a RecursionError."""
    for _ in range(EDIT_TRIES):
        draft = _edit_draft(rng, cfg, memo)
        if draft is not None:
            return draft
    raise ValueError(f"no {memo['made']!r} edit could be made in {EDIT_TRIES} drafts with these scene options "
                     f"({cfg.scene}): allow more room, colours or shapes, or fewer objects")


def _edit_draft(rng: np.random.Generator, cfg: WorldConfig, memo: dict) -> Draft | None:
    opts = cfg.scene
    op = memo.setdefault("op", str(rng.choice(EDIT_OPS)))
    lo = 2 if op == "remove" else 1
    hi = opts.max_objects - 1 if op == "add" else opts.max_objects
    if hi < lo or hi < opts.min_objects:
        op, lo, hi = "recolor", 1, opts.max_objects
    memo["made"] = op  # the edit drafted (the fallback's, when the drawn one cannot be)
    n = int(rng.integers(max(lo, opts.min_objects), hi + 1))
    before = sample_scene(rng, opts, n=n, unique=True)
    w2c, _ = random_camera(rng)
    after = Scene([Obj(**vars(o)) for o in before.objects])
    k = int(rng.integers(n))
    target = before.objects[k]
    spec: dict = {"op": op, "target": k}
    if op == "recolor":
        if len(opts.colors) < 2:  # no colour to recolour to, whatever is drawn: redrafting would never end
            raise ValueError(f"an edit that recolours an object needs at least 2 colours, but the scene options "
                             f"allow only {', '.join(opts.colors)} (SceneOptions.colors, --colors)")
        free = [c for c in opts.colors if not _count(before.objects, color=c, shape=target.shape)]
        if not free:
            return None
        new = str(rng.choice(free))
        after.objects[k].color = new
        instruction = f"make the {target.name} {new}."
        spec["color"] = new
    elif op == "remove":
        del after.objects[k]
        instruction = f"remove the {target.name}."
    elif op == "add":
        used = {(o.color, o.shape) for o in before.objects}
        if len(used) >= len(opts.colors) * len(opts.shapes):  # no new pair to add: the loop would never end
            raise ValueError(f"an edit that adds an object needs a colour-shape pair the scene does not hold, but "
                             f"its {n} objects use every pair the scene options allow ({', '.join(opts.colors)} x "
                             f"{', '.join(opts.shapes)}): allow more colours or shapes, or fewer objects")
        while True:
            obj = random_object(rng, opts)
            if (obj.color, obj.shape) not in used:
                break
        if not place(rng, after, obj, opts):
            return None
        spec["object"] = vars(obj).copy()
        instruction = None  # the render decides which side of which object it landed on
    else:
        side = str(rng.choice(["left", "right"]))
        right = w2c[0, :3].copy()  # camera x axis in world
        right[2] = 0.0
        right /= np.linalg.norm(right)
        shift = (1 if side == "right" else -1) * float(rng.uniform(0.6, 1.0))
        moved = after.objects[k]
        moved.x, moved.y = moved.x + shift * right[0], moved.y + shift * right[1]
        if not after.valid(0.12):
            return None
        instruction = f"move the {target.name} to the {side}."
        spec["side"] = side

    def finish(views):
        sb = all_visible(views["before"], before, 0.3, cfg.min_pixels)
        sa = all_visible(views["after"], after, 0.3, cfg.min_pixels)
        if sb is None or sa is None:
            return None
        text = instruction
        if op == "add":
            new_k = len(after.objects) - 1
            new = next(s for s in sa if s.index == new_k)
            refs = [s for s in sa if s.index != new_k]
            rels = [(s, L.relative_position(new.box, s.box) & {"left of", "right of"}) for s in refs]
            rels = [(s, r.pop()) for s, r in rels if r]
            if not rels:
                return None
            ref, r = rels[int(rng.integers(len(rels)))]
            o = after.objects[new_k]
            text = f"add {L.article(o.size)} {L.full_name(o)} {r} the {ref.obj.name}."
            spec.update(reference=ref.index, relation=r)
        if op == "move":
            cb = next(s for s in sb if s.index == k).centroid[0]
            ca = next(s for s in sa if s.index == k).centroid[0]
            if (ca - cb) * (1 if spec["side"] == "right" else -1) < 0.05 * cfg.size:
                return None
        return {"instruction": text, "caption_before": L.short_caption(sb),
                "caption_after": L.short_caption(sa)}, None, spec

    return Draft({"before": before, "after": after}, {"before": ("before", w2c), "after": ("after", w2c)},
                 finish)


_PROPOSERS: dict[str, Callable[[np.random.Generator, WorldConfig, dict], Draft]] = {
    "vqa": _vqa, "t2i": _t2i, "spatial": _spatial, "depth": _depth, "pose": _pose, "nvs": _nvs,
    "video": _video, "edit": _edit,
}
assert tuple(_PROPOSERS) == TASKS


# ----------------------------------------------------------------------------------------------
# the batched driver


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    """`seeds` as a list of Python ints: a sequence (or other iterable) of integers, Python's or numpy's (a
    range, a list, an integer array), each in some split. A string, a lone integer, a float or a bool is a
    TypeError, a seed in no split a ValueError naming it."""
    if isinstance(seeds, (str, bytes, bytearray)):
        raise TypeError(f"seeds must be a sequence of integers, got the string {seeds!r}")
    if isinstance(seeds, (bool, np.bool_)):
        raise TypeError(f"seeds must be a sequence of integers, got the bool {seeds!r}")
    if isinstance(seeds, (int, np.integer)):
        raise TypeError(f"seeds must be a sequence of integers, got the single integer {seeds!r} "
                        f"(pass [{int(seeds)}], or use sample_one)")
    try:
        items = list(seeds)
    except TypeError:
        raise TypeError(f"seeds must be a sequence of integers, got {type(seeds).__name__}") from None
    out = []
    for i, s in enumerate(items):
        try:
            if isinstance(s, (bool, np.bool_)):  # `True` is not seed 1
                raise TypeError
            seed = operator.index(s)  # int, numpy integers; not floats, which would be truncated
        except TypeError:
            raise TypeError(f"seeds must be integers, got {s!r} ({type(s).__name__}) at position {i}") from None
        if not any(lo <= seed < hi for lo, hi in SPLITS.values()):
            raise ValueError(f"seed {seed} (position {i}) lies in no split: {splits_text()}")
        out.append(seed)
    return out


def sample(task: str, seeds: Sequence[int], cfg: WorldConfig | None = None,
           device: str | torch.device = "cpu") -> list[Example]:
    """Examples for `seeds` (same order); all drafts of a round are rendered in one call.

    `seeds`: a sequence of integers (Python's or numpy's, e.g. a range), each in a split (`SPLITS`);
    `cfg`: a WorldConfig (None: the defaults); `device`: where to render (cpu, cuda). Bad arguments are a
    TypeError or ValueError before anything is drawn; options too narrow for what a seed draws (a t2i prompt
    naming two shapes when one is allowed) a ValueError naming them when it is drawn."""
    if not isinstance(task, str) or task not in _PROPOSERS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if cfg is None:
        cfg = WorldConfig()
    elif not isinstance(cfg, WorldConfig):
        raise TypeError(f"cfg must be a WorldConfig (or None for the defaults), got {type(cfg).__name__} {cfg!r}")
    check_device(device)
    seeds = _check_seeds(seeds)
    rngs = [task_rng(task, s) for s in seeds]
    memos: list[dict] = [{} for _ in seeds]  # what an example keeps across rejected drafts (its category)
    out: list[Example | None] = [None] * len(seeds)
    pending = list(range(len(seeds)))
    K = cfg.K
    for _ in range(cfg.max_attempts):
        if not pending:
            break
        drafts = [_PROPOSERS[task](rngs[i], cfg, memos[i]) for i in pending]
        scenes, index, w2cs, names = [], [], [], []
        for di, d in enumerate(drafts):
            keys = {}
            for key, sc in d.scenes.items():
                keys[key] = len(scenes)
                scenes.append(sc)
            for vname, (skey, w2c) in d.cams.items():
                index.append(keys[skey])
                w2cs.append(w2c)
                names.append((di, vname, skey))
        r = render(scenes, np.stack(w2cs), K, cfg.size, scene_index=index, shadows=cfg.shadows,
                   amodal=True, device=device).numpy()
        views: list[dict[str, View]] = [{} for _ in drafts]
        for f, (di, vname, skey) in enumerate(names):
            nobj = len(drafts[di].scenes[skey].objects)
            views[di][vname] = View(rgb=r["rgb"][f], depth=r["depth"][f], valid=r["valid"][f],
                                    ids=r["ids"][f], amodal=r["amodal"][f, :nobj], K=K.copy(),
                                    w2c=np.asarray(w2cs[f], dtype=np.float64), scene=skey)
        still = []
        for di, i in enumerate(pending):
            got = drafts[di].finish(views[di])
            if got is None:
                still.append(i)
                continue
            texts, answer, spec = got
            out[i] = Example(task, seeds[i], views[di], drafts[di].scenes, texts, answer, spec)
        pending = still
    if pending:
        raise RuntimeError(f"{task}: no valid example after {cfg.max_attempts} attempts for seeds "
                           f"{[seeds[i] for i in pending[:5]]} (options too restrictive?)")
    return out  # type: ignore[return-value]


def sample_one(task: str, seed: int, cfg: WorldConfig | None = None) -> Example:
    return sample(task, [seed], cfg)[0]

