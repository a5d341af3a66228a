"""Every text and answer a sampler writes is checked against its render, recomputed here
independently from instance masks, depth maps and cameras."""

import ast
import contextlib
import dataclasses
import hashlib
import json
import math
import operator
import re
import signal

import numpy as np
import pytest
import torch

from omni.world import camera as C
from omni.world import sample
from omni.world.language import relative_position
from omni.world.render import ID_GROUND, render
from omni.world.scene import Scene
from omni.world.tasks import (
    SPLITS,
    T2I_CATEGORIES,
    TASKS,
    VQA_STEP_PARTS,
    WorldConfig,
    conclusion_pieces,
    split_of,
    stated_answer,
    stated_option,
    vqa_conclusion_cut,
    vqa_thought_pieces,
)

N = 120
SEEDS = range(SPLITS["test"][0], SPLITS["test"][0] + N)


@pytest.fixture(scope="module")
def data():
    return {t: sample(t, SEEDS) for t in TASKS}


def masks(ex, view):
    v = ex.views[view]
    return {k: v.ids == k for k in range(len(ex.scenes[v.scene].objects)) if (v.ids == k).any()}


def centroid(m):
    r, c = np.nonzero(m)
    return c.mean() + 0.5, r.mean() + 0.5


def box(m):
    r, c = np.nonzero(m)
    return c.min(), r.min(), c.max() + 1, r.max() + 1


def by_name(scene):
    out = {}
    for k, o in enumerate(scene.objects):
        out.setdefault(f"{o.color} {o.shape}", []).append(k)
    return out


def alone_mask(ex, view, k):
    """Where object k is seen when it is alone in the scene (independent of the amodal output)."""
    v = ex.views[view]
    o = ex.scenes[v.scene].objects[k]
    r = render([Scene([o])], v.w2c[None], v.K, v.depth.shape[0]).numpy()
    return r["ids"][0] == 0


# ---------------------------------------------------------------------------------------------


def test_splits_disjoint():
    ranges = sorted(SPLITS.values())
    for (a0, a1), (b0, b1) in zip(ranges, ranges[1:], strict=False):
        assert a0 < a1 <= b0 < b1
    assert split_of(0) == "train" and split_of(SPLITS["test"][0]) == "test"
    with pytest.raises(ValueError):
        split_of(-1)


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_bytes(task):
    a = sample(task, [5, 6, 7])
    b = sample(task, [7, 99, 6])  # other seeds in the batch, other order
    for x, y in ((a[2], b[0]), (a[1], b[2])):
        assert json.dumps(x.to_json()) == json.dumps(y.to_json())
        for name in x.views:
            for key in ("rgb", "depth", "ids", "valid"):
                assert getattr(x.views[name], key).tobytes() == getattr(y.views[name], key).tobytes()
    assert json.dumps(a[0].to_json()) != json.dumps(a[1].to_json())


def check_short_caption(ex, view, text):
    m = re.fullmatch(r"(\d+) objects?: (.*)\.", text)
    assert m, text
    items = re.split(r", | and ", m.group(2))
    names = sorted(re.fullmatch(r"an? (\w+ \w+)", it).group(1) for it in items)
    scene = ex.scenes[ex.views[view].scene]
    seen = sorted(f"{scene.objects[k].color} {scene.objects[k].shape}" for k in masks(ex, view))
    assert names == seen and int(m.group(1)) == len(seen), (text, seen)


def check_detailed(ex, view, text):
    H, W = ex.views[view].depth.shape
    sents = re.findall(r"an? (small|large) (\w+) (\w+) (on the left|in the center|on the right), "
                       r"(near the top|in the middle|near the bottom)\.", text)
    mk = masks(ex, view)
    assert len(sents) == len(mk), text
    scene = ex.scenes[ex.views[view].scene]
    names = by_name(scene)
    for size, color, shape, hw, vw in sents:
        (k,) = names[f"{color} {shape}"]
        assert scene.objects[k].size == size
        u, v = centroid(mk[k])
        assert hw == ("on the left" if u < W / 3 else "on the right" if u > 2 * W / 3 else "in the center")
        assert vw == ("near the top" if v < H / 3 else "near the bottom" if v > 2 * H / 3 else "in the middle")


def check_layout(ex, view, text, grid=8):
    H, W = ex.views[view].depth.shape
    items = re.findall(r"(small|large) (\w+) (\w+) at \((\d),(\d)\)", text)
    mk = masks(ex, view)
    assert len(items) == len(mk), text
    scene = ex.scenes[ex.views[view].scene]
    cells = {}
    for k, m in mk.items():
        u, v = centroid(m)
        o = scene.objects[k]
        cells.setdefault((o.size, o.color, o.shape), []).append((int(u * grid / W), int(v * grid / H)))
    for size, color, shape, c, r in items:
        assert (int(c), int(r)) in cells[(size, color, shape)], (text, cells)


def check_depth_caption(ex, view, text):
    v = ex.views[view]
    scene = ex.scenes[v.scene]
    names = by_name(scene)
    mk = masks(ex, view)
    m = re.match(r"front to back: (.*?)\. ", text)
    items = re.findall(r"(\w+ \w+) (\d+\.\d) m", m.group(1))
    assert len(items) == len(mk)
    med = []
    for name, d in items:
        (k,) = names[name]
        med.append(np.median(v.depth[mk[k]]))
        assert abs(med[-1] - float(d)) <= 0.05 + 1e-6
    assert med == sorted(med)
    claimed = set(re.findall(r"the (\w+ \w+) hides part of the (\w+ \w+)\.", text))
    for a in mk:
        for b in mk:
            if a == b:
                continue
            na, nb = (f"{scene.objects[i].color} {scene.objects[i].shape}" for i in (a, b))
            truth = bool((alone_mask(ex, view, b) & mk[a]).any())
            assert ((na, nb) in claimed) == truth, (text, na, nb)
    if not claimed:
        assert "no object hides another." in text
    g = v.depth[v.ids == ID_GROUND]
    lo, hi = map(float, re.search(r"the ground spans (\d+\.\d) m to (\d+\.\d) m\.", text).groups())
    assert abs(lo - g.min()) <= 0.05 + 1e-6 and abs(hi - g.max()) <= 0.05 + 1e-6


def test_depth_texts_true(data):
    for ex in data["depth"]:
        check_short_caption(ex, "image", ex.texts["caption"])
        check_detailed(ex, "image", ex.texts["detailed"])
        check_depth_caption(ex, "image", ex.texts["depth_caption"])
        v = ex.views["image"]
        assert v.depth.dtype == np.float32 and np.isfinite(v.depth).all()
        assert np.array_equal(v.valid, v.ids != -2)
    assert sum("hides part" in ex.texts["depth_caption"] for ex in data["depth"]) > 5


def count_visible(ex, view, **attrs):
    scene = ex.scenes[ex.views[view].scene]
    return sum(all(getattr(scene.objects[k], a) == x for a, x in attrs.items()) for k in masks(ex, view))


def vqa_truth(ex):
    q = ex.texts["question"]
    scene = ex.scenes["main"]
    mk = masks(ex, "image")
    names = by_name(scene)
    visible_objs = [scene.objects[k] for k in mk]
    if q == "how many objects are there?":
        return str(len(mk))
    if m := re.fullmatch(r"how many (\w+)s and (\w+)s are there in total\?", q):
        return str(count_visible(ex, "image", shape=m[1]) + count_visible(ex, "image", shape=m[2]))
    if m := re.fullmatch(r"how many more (\w+)s than (\w+)s are there\?", q):
        return str(count_visible(ex, "image", shape=m[1]) - count_visible(ex, "image", shape=m[2]))
    if m := re.fullmatch(r"if every (\w+) object were removed, how many objects would remain\?", q):
        return str(len(mk) - count_visible(ex, "image", color=m[1]))
    if m := re.fullmatch(r"how many (\w+) objects are there\?", q):
        attr = "size" if m[1] in ("small", "large") else "color"
        return str(count_visible(ex, "image", **{attr: m[1]}))
    if m := re.fullmatch(r"how many (\w+)s are there\?", q):
        return str(count_visible(ex, "image", shape=m[1]))
    if m := re.fullmatch(r"what color is the (\w+)\?", q):
        (o,) = [o for o in visible_objs if o.shape == m[1]]
        return o.color
    if m := re.fullmatch(r"what shape is the (\w+) object\?", q):
        (o,) = [o for o in visible_objs if o.color == m[1]]
        return o.shape
    if m := re.fullmatch(r"what size is the (\w+ \w+)\?", q):
        (k,) = names[m[1]]
        return scene.objects[k].size
    if m := re.fullmatch(r"is the (\w+ \w+) (left of|right of) the (\w+ \w+)\?", q):
        (a,), (b,) = names[m[1]], names[m[3]]
        return "yes" if m[2] in relative_position(box(mk[a]), box(mk[b])) else "no"
    if m := re.fullmatch(r"which is closer to the camera, the (\w+ \w+) or the (\w+ \w+)\?", q):
        (a,), (b,) = names[m[1]], names[m[2]]
        da, db = (np.median(ex.views["image"].depth[mk[k]]) for k in (a, b))
        assert abs(da - db) >= 0.3
        return m[1] if da < db else m[2]
    raise AssertionError(f"unparsed question {q!r}")


def test_vqa_answers_true(data):
    kinds = set()
    for ex in data["vqa"]:
        assert ex.answer == ex.texts["answer"] == vqa_truth(ex), ex.texts
        assert ex.texts["thinking"].endswith(f"so the answer is {ex.answer}.")
        check_short_caption(ex, "image", ex.texts["caption"])
        kinds.add(ex.spec["family"])
    assert kinds == {"counting", "attribute", "relation", "arithmetic"}


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(expr: str) -> float:
    def ev(node):
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Constant):
            return node.value
        raise ValueError(expr)

    return ev(ast.parse(expr, mode="eval").body)


def test_t2i_targets_satisfy_specs(data):
    cats = set()
    for ex in data["t2i"]:
        spec, scene = ex.spec, ex.scenes["main"]
        cats.add(spec["category"])
        mk = masks(ex, "target")
        assert len(mk) == len(scene.objects)

        def n_match(req, scene=scene, mk=mk):
            return sum((req["shape"] in (None, scene.objects[k].shape))
                       and (req["color"] in (None, scene.objects[k].color)) for k in mk)

        for req in spec["include"]:
            assert n_match(req) >= req["count"], ex.texts["prompt"]
        for req in spec["exclude"]:
            assert n_match(req) < req["count"], ex.texts["prompt"]
        for req in spec["include"]:
            if "position" in req:
                rel, j = req["position"]
                ka = [k for k in mk if scene.objects[k].shape == req["shape"]]
                kb = [k for k in mk if scene.objects[k].shape == spec["include"][j]["shape"]]
                assert rel in relative_position(box(mk[ka[0]]), box(mk[kb[0]]))
        prompt = ex.texts["prompt"]
        if m := re.fullmatch(r"a photo of as many (\w+)s as (.*)\.", prompt):
            assert evaluate(m[2]) == spec["include"][0]["count"]
        if spec["category"] == "mapping":
            rules = dict(re.findall(r"the (?:number|letter) (\w) means (?:the number )?(\w+)\.", prompt))
            key = re.search(r"that the (?:number|letter) (\w) means\.", prompt)[1]
            while key in rules:
                key = rules[key]
            assert key == spec["include"][0]["shape"]
        check_layout(ex, "target", ex.texts["oracle"])
        assert ex.texts["long"].startswith(ex.texts["short"]) and ex.texts["long"].endswith(ex.texts["oracle"])
        check_short_caption(ex, "target", ex.texts["caption"])
    assert cats == set(T2I_CATEGORIES)


def test_spatial_answers_true(data):
    qtypes = set()
    for ex in data["spatial"]:
        a, b = ex.views["view1"].w2c, ex.views["view2"].w2c
        T = a @ C.invert(b)
        assert np.abs(C.text_to_pose(ex.texts["pose"])[:3] - T[:3]).max() < 1e-3
        opts = ex.spec["options"]
        got = opts["ABCD".index(ex.answer)]
        assert len(opts) == 4 and len(set(opts)) == 4
        q = ex.texts["question"]
        qt = ex.spec["qtype"]
        qtypes.add(qt)
        scene = ex.scenes["main"]
        if qt == "camera_motion":
            fwd = T[:3, 2]
            truth = (f"moved {'right' if T[0, 3] > 0 else 'left'} and turned "
                     f"{'right' if fwd[0] > 0 else 'left'}")
        elif qt == "camera_object":
            name = re.search(r"where is the (\w+ \w+)\?", q)[1]
            (k,) = by_name(scene)[name]
            x, _, z = b[:3, :3] @ np.array(scene.objects[k].center) + b[:3, 3]
            truth = f"{'in front' if z > 0 else 'behind'} and to the {'left' if x < 0 else 'right'}"
        else:
            present = {n: ks[0] for n, ks in by_name(scene).items()}
            angle = {}
            for o in opts:
                if o in present:
                    x, _, z = b[:3, :3] @ np.array(scene.objects[present[o]].center) + b[:3, 3]
                    angle[o] = math.atan2(x, z)
            truth = min(angle, key=angle.get)
        assert got == truth, (q, got, truth)
        assert f"{ex.answer}. {got}" in q
        # the thought's last steps: the option, the options copied in order with verdicts up to it, its letter
        k = "ABCD".index(ex.answer)
        items = [f"{'ABCD'[i]}. {opts[i]}: {'yes' if i == k else 'no'}" for i in range(k + 1)]
        assert ex.texts["thinking"].endswith(f"that is: {got}. {'. '.join(items)}, so the answer is {ex.answer}.")
        assert all(f"{'ABCD'[i]}. {opts[i]}" in q for i in range(4)) and opts[k] == got
        # ... and the world's own readers of it give back what it wrote
        thought = ex.texts["thinking"]
        assert stated_option(thought) == got and stated_answer(thought) == ex.answer
        pieces = conclusion_pieces(thought)
        assert "".join(p for p, _ in pieces) == " " + thought.strip()
        named = [(p.strip(), what) for p, what in pieces if what]
        assert named == [(got, "option"), *[x for i in range(k + 1) for x in (
            (opts[i], "copy"), ("yes" if i == k else "no", "verdict"))], (ex.answer, "letter")]
        for d in ("up", "down", "left", "right"):
            R = (a @ C.invert(ex.views[f"look_{d}"].w2c))[:3, :3]
            assert math.degrees(np.linalg.norm(C.matrix_to_axis_angle(R))) == pytest.approx(30.0)
        check_short_caption(ex, "view1", ex.texts["caption"])
    assert qtypes == {"camera_motion", "camera_object", "object_object"}


def test_pose_nvs_video_true(data):
    for ex in data["pose"]:
        T = ex.views["view1"].w2c @ C.invert(ex.views["view2"].w2c)
        assert np.abs(C.text_to_pose(ex.answer)[:3] - T[:3]).max() < 1e-3
    kinds = set()
    for ex in data["nvs"]:
        mo = ex.spec["motion"]
        kinds.add(mo["kind"])
        T = ex.views["source"].w2c @ C.invert(ex.views["target"].w2c)
        ang = math.degrees(np.linalg.norm(C.matrix_to_axis_angle(T[:3, :3])))
        if mo["kind"] == "look":
            assert np.allclose(T[:3, 3], 0, atol=1e-9) and ang == pytest.approx(mo["degrees"])
        elif mo["kind"] == "move":
            assert ang < 1e-6 and np.linalg.norm(T[:3, 3]) == pytest.approx(mo["metres"])
            axis = {"left": (0, -1), "right": (0, 1), "forward": (2, 1), "backward": (2, -1)}[mo["direction"]]
            assert np.sign(T[axis[0], 3]) == axis[1]
        else:
            assert ang == pytest.approx(mo["degrees"], abs=1e-6)
            assert (T[0, 3] > 0) == (mo["direction"] == "right")
        assert f"{mo['direction']}" in ex.texts["instruction"]
    assert kinds == {"look", "move", "orbit"}
    for ex in data["video"]:
        frames = [ex.views[f"frame{t}"] for t in range(8)]
        T = frames[0].w2c @ C.invert(frames[1].w2c)
        assert (T[0, 3] > 0) == (ex.spec["direction"] == "right")
        seen = set()
        for t in range(8):
            seen |= set(masks(ex, f"frame{t}"))
        assert seen == set(range(len(ex.scenes["main"].objects)))
        assert f"orbits {ex.spec['direction']}" in ex.texts["caption"]


def test_edit_true(data):
    ops = set()
    for ex in data["edit"]:
        op, k = ex.spec["op"], ex.spec["target"]
        ops.add(op)
        before, after = ex.scenes["before"], ex.scenes["after"]
        assert np.array_equal(ex.views["before"].w2c, ex.views["after"].w2c)
        check_short_caption(ex, "before", ex.texts["caption_before"])
        check_short_caption(ex, "after", ex.texts["caption_after"])
        instr = ex.texts["instruction"]
        tname = f"{before.objects[k].color} {before.objects[k].shape}"
        if op == "recolor":
            assert after.objects[k].color == ex.spec["color"] != before.objects[k].color
            assert instr == f"make the {tname} {ex.spec['color']}."
            assert k in masks(ex, "after")
        elif op == "remove":
            assert len(after.objects) == len(before.objects) - 1
            assert tname not in ex.texts["caption_after"] and instr == f"remove the {tname}."
        elif op == "add":
            new = len(after.objects) - 1
            ma = masks(ex, "after")
            rel = re.search(r"(left of|right of) the (\w+ \w+)\.", instr)
            (ref,) = by_name(after)[rel[2]]
            assert rel[1] in relative_position(box(ma[new]), box(ma[ref]))
        else:
            ub, ua = centroid(masks(ex, "before")[k])[0], centroid(masks(ex, "after")[k])[0]
            assert (ua > ub) == (ex.spec["side"] == "right") and instr.endswith(f"to the {ex.spec['side']}.")
    assert ops == {"recolor", "remove", "add", "move"}


def test_options_respected():
    cfg = WorldConfig(size=16, scene=__import__("omni.world", fromlist=["SceneOptions"]).SceneOptions(
        shapes=("cube", "sphere"), colors=("red", "blue", "green"), min_objects=2, max_objects=3))
    for task in TASKS:
        for ex in sample(task, range(10), cfg):
            for sc in ex.scenes.values():
                assert {o.shape for o in sc.objects} <= {"cube", "sphere"}
                assert {o.color for o in sc.objects} <= {"red", "blue", "green"}
            assert all(v.rgb.shape == (16, 16, 3) for v in ex.views.values())
    with pytest.raises(ValueError):
        sample("nope", [0])
    with pytest.raises(ValueError):
        WorldConfig(size=4)


def test_thought_readers_on_a_models_malformed_or_older_thoughts():
    """The readers read a model's thoughts too: an older world's form still names its option, a
    thought that states nothing gives None, and one not of today's shape cannot be cut into steps."""
    old = "view 2 turned left, that is: moved left and turned left, so the answer is B."
    assert stated_option(old) == "moved left and turned left" and stated_answer(old) == "B"
    assert stated_option("the cube is red.") is None and stated_answer("the cube is red.") is None
    for bad in (old, "that is: x. A. x: no, so the answer is A.", "that is: x. A. x: yes. so the answer is A."):
        with pytest.raises(ValueError, match="not a spatial thought of the world's shape"):
            conclusion_pieces(bad)


def test_vqa_thought_pieces_name_what_the_thought_states():
    """The cut gives back the whole thought, and its named pieces are what it states: the number of
    objects, each one's size, colour, shape and position word (the objects the short caption names, in
    its order), the step and the answer."""
    from omni.world.scene import COLORS, SHAPES, SIZES

    for ex in sample("vqa", SEEDS[:60]):
        thought = ex.texts["thinking"]
        pieces = vqa_thought_pieces(thought)
        assert "".join(p for p, _ in pieces) == " " + thought.strip()
        assert all(p.startswith(" ") for p, what in pieces if what)
        named = [(what, p.strip()) for p, what in pieces if what]
        n = int(named[0][1])
        step = named[1 + 4 * n:-1]
        assert [w for w, _ in named[:1 + 4 * n]] == ["count", *["size", "colour", "shape", "position"] * n]
        assert named[-1][0] == "answer" and step and {w for w, _ in step} <= set(VQA_STEP_PARTS)
        # the step word by word, its colour and shape words named as such
        assert all((w == "step colour") == (v.rstrip(".,;:") in COLORS) for w, v in step)
        assert all((w == "step shape") == (v.rstrip(".,;:") in SHAPES) for w, v in step)
        # left_right's relation word: the one the two x centres it states imply, once; no other step has one
        rel = [v for w, v in step if w == "step relation"]
        if ex.spec["kind"] == "left_right":
            xa, xb = (int(x) for x in re.findall(r"at x (\d+)", thought))
            assert rel == ["left" if xa < xb else "right"]
        else:
            assert rel == []
        listed = [tuple(v for _, v in named[1 + 4 * i:5 + 4 * i]) for i in range(n)]
        assert all(s in SIZES and c in COLORS and sh in SHAPES for s, c, sh, _ in listed)
        assert ex.texts["caption"].startswith(f"{n} object")
        assert ex.texts["caption"].endswith(f"{listed[-1][1]} {listed[-1][2]}.")
        assert all(f"{c} {sh}" in ex.texts["caption"] for _, c, sh, _ in listed)
        assert named[-1][1] == ex.answer
        assert thought.endswith(f"{' '.join(v for _, v in step)} so the answer is {ex.answer}.")
    for bad in ("so the answer is red.", "the cube is red.", "the cube is red. so the answer is red. more",
                "i see 1 object: a huge red cube on the left. x. so the answer is 1.",
                "i see 1 object: a large red cube on the left. so the answer is 1. more",
                "i see 1 object: a large red cube on the left. so the answer is 1."):  # no step
        with pytest.raises(ValueError, match="not a vqa thought of the world's shape"):
            vqa_thought_pieces(bad)


def test_vqa_conclusion_cut_leaves_the_numbers_read_as_context():
    """The cut falls at a piece's start after the step's last number: the numbers stated (x centres,
    distances, counts) lie before it, what they imply after it (left_right's relation, closer's answer);
    a step without a number is cut at its first word; the focused thought is cut the same way, and both on
    revision 2, whose left_right step ends on its verdict (the relation asked and whether it holds)."""
    kinds = set()
    for cfg in (WorldConfig(), WorldConfig(vqa_thought="focused"), WorldConfig(revision=2),
                WorldConfig(vqa_thought="focused", revision=2)):
        for ex in sample("vqa", SEEDS[:60], cfg):
            thought = ex.texts["thinking"]
            text, cut = " " + thought.strip(), vqa_conclusion_cut(thought)
            starts, pos = [], 0
            for p, what in vqa_thought_pieces(thought):
                starts.append((pos, what))
                pos += len(p)
            assert (cut, next(w for c, w in starts if c == cut)) in starts and text[cut] == " "
            step_at = next(c for c, w in starts if w in VQA_STEP_PARTS)
            closing = text.rindex(" so the answer is")
            assert step_at <= cut <= closing and not any(ch.isdigit() for ch in text[cut:closing])
            assert (cut == step_at) == (not any(ch.isdigit() for ch in text[step_at:closing]))
            kind = ex.spec["kind"]
            kinds.add(kind)
            if kind == "left_right":
                if cfg.revision == 1:
                    assert re.fullmatch(r" so the .+ is (left|right) of the .+\. so the answer is (yes|no)\.",
                                        text[cut:])
                else:
                    m = re.fullmatch(r" so the .+ is (left|right) of the .+\. the question asks (left|right) of: "
                                     r"(yes|no)\. so the answer is (yes|no)\.", text[cut:])
                    assert m and m[3] == m[4] == ex.answer and (m[1] == m[2]) == (ex.answer == "yes")
            if kind == "closer":
                assert text[cut:] == f" m. so the answer is {ex.answer}."
    assert {"left_right", "closer", "sum", "color_of_shape"} <= kinds
    with pytest.raises(ValueError, match="not a vqa thought of the world's shape"):
        vqa_conclusion_cut("the cube is red.")


def test_focused_vqa_thought_names_only_what_the_question_asks():
    """WorldConfig(vqa_thought="focused"): the same question, image and answer as the inventory's, the
    same step's reasoning without the inventory; each object it lists is found by its place (the
    words of the inventory's listing), and as many are listed as the count it states."""
    from omni.world.scene import COLORS

    inv, foc = sample("vqa", SEEDS[:80]), sample("vqa", SEEDS[:80], WorldConfig(vqa_thought="focused"))
    kinds = set()
    for a, b in zip(inv, foc, strict=True):
        assert (a.texts["question"], a.answer, a.spec) == (b.texts["question"], b.answer, b.spec)
        assert np.array_equal(a.views["image"].rgb, b.views["image"].rgb)
        thought = b.texts["thinking"]
        assert not thought.startswith("i see") and thought.endswith(f" so the answer is {b.answer}.")
        pieces = vqa_thought_pieces(thought)
        assert "".join(p for p, _ in pieces) == " " + thought
        assert {w for _, w in pieces} <= {None, *VQA_STEP_PARTS, "answer"}
        listing = a.texts["thinking"].split(". ")[0]  # "i see N objects: a large red cube on the left, ..."
        found = re.findall(r"an? (\w+) (\w+) (on the left|in the center|on the right)", thought)
        for colour, shape, place in found:
            assert colour in COLORS and re.search(f" {colour} {shape} {place}", listing)
        kind = b.spec["kind"]
        kinds.add(kind)
        if kind in ("color", "shape", "size", "all", "remove") and b.answer != "0":
            assert len(found) == int(b.answer)
            assert thought.endswith(f"that makes {b.answer}. so the answer is {b.answer}.")
        if kind == "color_of_shape":
            place = "(on the left|in the center|on the right)"
            assert re.fullmatch(rf"the \w+ is {place}; it is (\w+)\. so the answer is \2\.", thought)
        if kind in ("left_right", "closer"):  # already focused: the inventory's step alone
            assert a.texts["thinking"].endswith(thought)
    assert {"color_of_shape", "left_right", "sum", "remove", "all"} <= kinds
    with pytest.raises(ValueError, match="vqa thought must be one of inventory, focused, measured"):
        WorldConfig(vqa_thought="short")


def test_pose_centre_and_spread_are_the_pose_tasks():
    """POSE_CENTRE / POSE_SPREAD, by which a pose head standardises its numbers, are the pose task's
    own: on 1,000 training seeds each mean lies within 0.1 spread of the centre and each standard
    deviation within 10 % of the spread."""
    from omni.world.camera import text_to_numbers
    from omni.world.tasks import POSE_CENTRE, POSE_SPREAD

    v = np.array([text_to_numbers(e.texts["pose"]) for e in sample("pose", range(1000))])
    spread = np.array(POSE_SPREAD)
    assert np.all(np.abs(v.mean(0) - np.array(POSE_CENTRE)) <= 0.1 * spread), v.mean(0)
    assert np.all(np.abs(v.std(0) / spread - 1) <= 0.1), v.std(0)


def test_pose_motions_default_stream_unchanged_and_move_turn_like_spatial():
    """WorldConfig.pose_motions: orbit alone (the default) draws the pose examples it always drew;
    with move_turn too, each example records its motion, and the move_turn pairs move like the spatial
    task's second view (same height, no tilt or roll; step and turn independent), unlike orbits, whose
    sideways move and turn are one motion."""
    seeds = range(SPLITS["test"][0], SPLITS["test"][0] + 60)
    default, explicit = sample("pose", seeds), sample("pose", seeds, WorldConfig(pose_motions=("orbit",)))
    assert [e.texts["pose"] for e in default] == [e.texts["pose"] for e in explicit]
    assert all(e.spec["motion"] == "orbit" for e in default)
    mixed = sample("pose", seeds, WorldConfig(pose_motions=("orbit", "move_turn")))
    kinds = [e.spec["motion"] for e in mixed]
    assert 10 < kinds.count("move_turn") < 50
    nums = {k: np.array([C.text_to_numbers(e.texts["pose"]) for e in mixed if e.spec["motion"] == k])
            for k in ("orbit", "move_turn")}
    mt, orb = nums["move_turn"], nums["orbit"]
    assert np.abs(mt[:, [1, 3, 5]]).max() < 0.01 and np.abs(orb[:, 1]).max() > 0.1  # ty, rx, rz
    assert abs(np.corrcoef(mt[:, 0], mt[:, 4])[0, 1]) < 0.5 < abs(np.corrcoef(orb[:, 0], orb[:, 4])[0, 1])
    assert sample("pose", seeds[:5], WorldConfig(pose_motions="move_turn"))[0].spec["motion"] == "move_turn"
    with pytest.raises(ValueError, match="pose motions must be distinct names among orbit, move_turn"):
        WorldConfig(pose_motions=("zoom",))


def _object_stats_one_at_a_time(scene, ids, depth, amodal=None):
    """object_stats as first written, one object at a time: the reference its one-pass form must equal."""
    from omni.world.language import ObjectStats

    out = []
    for k, obj in enumerate(scene.objects):
        m = ids == k
        n = int(m.sum())
        if n == 0:
            continue
        rows, cols = np.nonzero(m)
        d = depth[m]
        out.append(ObjectStats(
            index=k, obj=obj, pixels=n, amodal_pixels=int(amodal[k].sum()) if amodal is not None else n,
            box=(int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1),
            centroid=(float(cols.mean()) + 0.5, float(rows.mean()) + 0.5),
            median_depth=float(np.median(d)), min_depth=float(d.min())))
    return out


def test_object_stats_in_one_pass_equal_one_object_at_a_time():
    """Every field the same, to the bit, on the views of every task (occluded, cut and unseen objects,
    odd and even pixel counts), with and without amodal masks, at two image sizes."""
    from omni.world.language import object_stats

    checked = even = 0
    for size in (32, 64):
        for task in TASKS:
            for ex in sample(task, range(300, 306), WorldConfig(size=size)):
                for v in ex.views.values():
                    scene = ex.scenes[v.scene]
                    for am in (None, v.amodal):
                        got = object_stats(scene, v.ids, v.depth, am)
                        assert got == _object_stats_one_at_a_time(scene, v.ids, v.depth, am)
                        checked += len(got)
                        even += sum(s.pixels % 2 == 0 for s in got)
    assert checked > 500 and even > 100


# ---------------------------------------------------------------------------------------------
# bad arguments to `sample`: refused up front, with a message naming what is wrong


@contextlib.contextmanager
def _deadline(seconds: float):
    """A TimeoutError if the block runs longer (a sampler that loops forever on narrow options)."""

    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


BAD_SEEDS = [
    ("12", TypeError, "seeds must be a sequence of integers, got the string '12'"),  # not seeds 1 and 2
    (b"12", TypeError, "got the string"),
    (7, TypeError, "got the single integer 7 (pass [7], or use sample_one)"),
    (np.int64(7), TypeError, "pass [7]"),
    (None, TypeError, "seeds must be a sequence of integers, got NoneType"),
    ([2_000_000_000.7], TypeError, "seeds must be integers, got 2000000000.7 (float) at position 0"),  # not truncated
    ([5, 6.0], TypeError, "got 6.0 (float) at position 1"),
    (np.array([5.0]), TypeError, "seeds must be integers"),
    ([True], TypeError, "got True (bool)"),  # `True` is not seed 1
    ([np.bool_(False)], TypeError, "(bool)"),
    ([1_500_000_000], ValueError, "seed 1500000000 (position 0) lies in no split"),  # between val and test
    ([0, 2**64], ValueError, f"seed {2**64} (position 1) lies in no split"),
    ([SPLITS["test"][1]], ValueError, f"seed {SPLITS['test'][1]} (position 0) lies in no split"),
    ([-1], ValueError, "seed -1 (position 0) lies in no split"),  # not numpy's "expected non-negative integer"
]


@pytest.mark.parametrize("seeds,error,needle", BAD_SEEDS)
def test_bad_seeds_are_refused(seeds, error, needle):
    with pytest.raises(error, match=re.escape(needle)) as e:
        sample("vqa", seeds, WorldConfig(size=8))
    assert "test 2000000000..2000999999" in str(e.value) or error is TypeError  # the splits, spelled out


def test_bad_config_and_device_are_refused():
    with pytest.raises(TypeError, match=re.escape("cfg must be a WorldConfig (or None for the defaults), got dict")):
        sample("vqa", [0], {"size": 8})
    for device, needle in (("bogus", "unknown device 'bogus'"), (None, "unknown device None"),
                           ("meta", "unknown device 'meta'")):
        with pytest.raises(ValueError, match=re.escape(needle)):
            sample("vqa", [0], WorldConfig(size=8), device=device)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda': CUDA is not available"):
            sample("vqa", [0], WorldConfig(size=8), device="cuda")
    with pytest.raises(ValueError, match="unknown task"):
        sample(["vqa"], [0])


def test_valid_seeds_of_every_kind_give_the_same_examples():
    """numpy integers, a range, an integer array, a tuple: the examples of the same Python ints (each
    Example.seed a Python int); every split's first and last seed is taken."""
    cfg = WorldConfig(size=16)
    ref = sample("vqa", [5, 6, 7], cfg)
    kinds = ([np.int64(5), np.int32(6), np.uint64(7)], range(5, 8), np.arange(5, 8), (5, 6, 7), iter([5, 6, 7]))
    for seeds in kinds:
        got = sample("vqa", seeds, cfg, device=torch.device("cpu"))
        assert [(type(e.seed), e.seed) for e in got] == [(int, 5), (int, 6), (int, 7)]
        assert [e.texts for e in got] == [e.texts for e in ref]
        assert all(np.array_equal(a.views["image"].rgb, b.views["image"].rgb) for a, b in zip(got, ref, strict=True))
    edges = [s for lo, hi in SPLITS.values() for s in (lo, hi - 1)]
    assert [e.seed for e in sample("pose", edges, WorldConfig(size=8))] == edges
    assert sample("pose", [], WorldConfig(size=8)) == []


def _narrow(**kw) -> WorldConfig:
    from omni.world import SceneOptions

    return WorldConfig(size=8, scene=SceneOptions(**kw))


def test_t2i_options_too_narrow_say_which():
    """A t2i prompt that names two shapes (or colours) with options that allow one: a ValueError naming
    the options, not numpy's "Cannot take a larger sample than population when replace is False"."""
    with pytest.raises(ValueError, match=re.escape("name 2 different shapes, but the scene options allow only 1 "
                                                   "(cube): allow at least 2 shapes")):
        sample("t2i", range(8), _narrow(shapes=("cube",), colors=("red",)))
    with pytest.raises(ValueError, match=re.escape("name 2 different colours, but the scene options allow only 1 "
                                                   "(red): allow at least 2 colours")):
        sample("t2i", range(8), _narrow(colors=("red",)))
    # two shapes and two colours are enough for every category
    two = dataclasses.replace(_narrow(shapes=("cube", "sphere"), colors=("red", "blue")), size=32)
    assert {e.spec["category"] for e in sample("t2i", range(40), two)} == set(T2I_CATEGORIES)


def test_t2i_prompts_keep_to_the_scene_options_object_range():
    """t2i ignored --min/--max-objects (its prompts asked for up to 6 objects whatever they said): now
    its categories and counts keep to the range; the defaults (1..6) draw the same examples as before."""
    from omni.world.tasks import T2I_OBJECTS

    def drawn(**kw):
        cfg = dataclasses.replace(_narrow(**kw), size=32)
        return [(e.spec["category"], len(e.scenes["main"].objects)) for e in sample("t2i", range(60), cfg)]

    at_most_2 = drawn(max_objects=2)
    assert all(n <= 2 for _, n in at_most_2) and {c for c, _ in at_most_2} >= {"two_object", "math", "colors"}
    assert max(n for c, n in drawn(max_objects=6) if c in ("counting", "math")) > 2  # the range is what bounds it
    one = drawn(max_objects=1)
    assert all(n == 1 for _, n in one) and {c for c, _ in one} <= {c for c, (lo, _) in T2I_OBJECTS.items() if lo == 1}
    at_least_3 = drawn(min_objects=3)
    assert all(n >= 3 for _, n in at_least_3) and {c for c, _ in at_least_3} == {"counting", "math"}
    assert {n for _, n in drawn(min_objects=3, max_objects=3)} == {3}
    # the defaults draw what they drew before the range was kept (digest taken on the code before it; a
    # retried draft draws its category again, which the random streams hold)
    got = [[e.spec["category"], e.texts["prompt"], e.texts["long"]]
           for e in sample("t2i", range(40), WorldConfig(size=32))]
    assert hashlib.sha256(json.dumps(got).encode()).hexdigest()[:16] == "4e3d44373007305b"


def test_edit_options_too_narrow_say_which():
    """An edit that adds a colour-shape pair the scene lacks when it holds every pair the options allow
    (it looped forever), or recolours with one colour (a RecursionError): a ValueError naming the options."""
    with _deadline(20), pytest.raises(ValueError, match="adds an object needs a colour-shape pair"):
        sample("edit", [1], _narrow(shapes=("cube",), colors=("red", "blue"), max_objects=3))
    with _deadline(20), pytest.raises(ValueError, match="recolours an object needs at least 2 colours"):
        sample("edit", range(12), _narrow(colors=("red",), max_objects=3))
    # two cubes, red and blue: no colour is free to recolour one to, so each draft was redrawn by recursion
    # until a RecursionError; now a loop of drafts that gives up with a ValueError
    with _deadline(20), pytest.raises(ValueError, match=r"no 'recolor' edit could be made in 1000 drafts"):
        sample("edit", range(12), _narrow(shapes=("cube",), colors=("red", "blue"), min_objects=2, max_objects=2))
