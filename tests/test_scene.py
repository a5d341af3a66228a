import json

import numpy as np
import pytest

from omni.world.scene import COLORS, GROUND_HALF, PALETTE, SHAPES, Obj, Scene, SceneOptions, sample_scene


def scenes(count, opts=None, **kw):
    return [sample_scene(np.random.default_rng([7, s]), opts or SceneOptions(), **kw) for s in range(count)]


def test_10000_scenes_valid():
    """No interpenetration (points drawn inside one solid are never inside another) and every
    object inside the ground square, on 10,000 sampled scenes."""
    rng = np.random.default_rng(0)
    counts = np.zeros(7, dtype=int)
    for sc in scenes(10_000):
        counts[len(sc.objects)] += 1
        for a in sc.objects:
            assert abs(a.x) + a.footprint <= GROUND_HALF and abs(a.y) + a.footprint <= GROUND_HALF
            assert a.shape in SHAPES and a.color in PALETTE and a.size in ("small", "large")
            if a.shape != "cube":
                assert a.yaw == 0.0
        for i, a in enumerate(sc.objects):
            if i + 1 == len(sc.objects):
                break
            pts = a.sample_inside(rng, 24)
            for b in sc.objects[i + 1:]:
                assert not b.inside(pts).any()
    assert counts[0] == 0 and (counts[1:] > 1000).all()  # 1..6 objects, all reached


def test_inside_matches_geometry():
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        o = Obj(shape, "red", "large", 0.3, -0.2, 0.4 if shape == "cube" else 0.0)
        pts = o.sample_inside(rng, 2000)
        assert o.inside(pts).all() and (pts[:, 2] > 0).all() and (pts[:, 2] < o.height).all()
        assert (np.hypot(pts[:, 0] - o.x, pts[:, 1] - o.y) <= o.footprint + 1e-9).all()
    # the cone's apex region is narrow, its base wide
    cone = Obj("cone", "red", "large", 0.0, 0.0)
    assert cone.inside(np.array([[0.9 * cone.radius, 0, 0.01]])).all()
    assert not cone.inside(np.array([[0.5 * cone.radius, 0, 0.9 * cone.height]])).any()
    # a rotated cube covers its rotated corner
    cube = Obj("cube", "red", "large", 0.0, 0.0, np.pi / 4)
    r = cube.radius
    assert cube.inside(np.array([[0.0, 1.3 * r, r]])).all() and not cube.inside(np.array([[1.3 * r, 1.3 * r, r]])).any()


def test_same_seed_same_scene():
    a = [json.dumps(s.to_dict()) for s in scenes(200)]
    b = [json.dumps(s.to_dict()) for s in scenes(200)]
    assert a == b
    assert len(set(a)) == 200
    assert Scene.from_dict(json.loads(a[3])).to_dict() == json.loads(a[3])


def test_options_restrict_scene():
    opts = SceneOptions(shapes=("cube", "cone"), colors=("red", "blue"), sizes=("small",),
                        min_objects=2, max_objects=3)
    for sc in scenes(300, opts):
        assert 2 <= len(sc.objects) <= 3
        assert {o.shape for o in sc.objects} <= {"cube", "cone"}
        assert {o.color for o in sc.objects} <= {"red", "blue"}
        assert {o.size for o in sc.objects} == {"small"}
    for sc in scenes(300, unique=True):
        pairs = [(o.color, o.shape) for o in sc.objects]
        assert len(pairs) == len(set(pairs))
    assert all(len(sc.objects) == 4 for sc in scenes(20, n=4))


def test_bad_options():
    assert len(COLORS) >= 8
    with pytest.raises(ValueError, match="torus"):
        SceneOptions(shapes=("cube", "torus"))
    with pytest.raises(ValueError, match="pink"):
        SceneOptions(colors=("pink",))
    with pytest.raises(ValueError):
        SceneOptions(min_objects=0)
    with pytest.raises(ValueError):
        SceneOptions(min_objects=4, max_objects=3)
    with pytest.raises(ValueError):
        SceneOptions(max_objects=7)
    with pytest.raises(ValueError):
        sample_scene(np.random.default_rng(0), SceneOptions(shapes=("cube",), colors=("red",)), n=2,
                     unique=True)


def _place_one_at_a_time(rng, scene, obj, opts, tries=200, region=None):
    """`place` as it was first written: one spot drawn and the whole scene checked at a time (the
    reference the vectorized `place` must agree with, draw for draw)."""
    from omni.world.scene import GAP

    x0, x1, y0, y1 = region or (-opts.place_half, opts.place_half, -opts.place_half, opts.place_half)
    for _ in range(tries):
        obj.x, obj.y = float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))
        if Scene(scene.objects + [obj]).valid(GAP):
            scene.objects.append(obj)
            return True
    return False


def test_vectorized_place_decides_and_draws_as_one_spot_at_a_time():
    """The same spot, the same answer and the generator left in the same state, on crowded scenes,
    tight regions (many spots rejected, some calls failing), scenes that are already invalid (every
    spot fails) and spots just at the gap's threshold."""
    import copy

    from omni.world.scene import GAP, place, random_object

    opts = SceneOptions()
    outcomes = set()
    for s in range(400):
        rng = np.random.default_rng([11, s])
        base = sample_scene(rng, opts, n=int(rng.integers(0, 6)) or None)
        if s % 50 == 0:  # two objects overlapping: no spot can make this scene valid
            base.objects = base.objects[:1] * 2
        half = float(rng.choice([0.3, 0.8, 1.5, 3.0]))
        cx, cy = rng.uniform(-1, 1, 2)
        region = None if s % 3 == 0 else (cx - half, cx + half, cy - half, cy + half)
        obj = random_object(rng, opts)
        tries = int(rng.choice([0, 1, 5, 200]))
        a, b = copy.deepcopy(base), copy.deepcopy(base)
        oa, ob = copy.deepcopy(obj), copy.deepcopy(obj)
        ra, rb = np.random.default_rng([12, s]), np.random.default_rng([12, s])
        got = place(ra, a, oa, opts, tries=tries, region=region)
        want = _place_one_at_a_time(rb, b, ob, opts, tries=tries, region=region)
        assert got == want and (oa.x, oa.y) == (ob.x, ob.y) and a == b, s
        assert ra.random() == rb.random(), s  # the generator where one-at-a-time leaves it
        outcomes.add((got, tries))
    assert {(True, 200), (False, 200), (False, 0), (True, 1)} <= outcomes
    # a spot exactly at the threshold: the distance equals footprint + footprint + gap
    scene = Scene([Obj("sphere", "red", "small", 0.0, 0.0)])
    new = Obj("sphere", "blue", "small", 0.0, 0.0)
    edge = 0.4 + 0.4 + GAP
    from omni.world.scene import _spot_test

    spots = np.array([[edge, 0.0], [np.nextafter(edge, 0), 0.0], [0.0, -edge]])
    want = [Scene([scene.objects[0], Obj("sphere", "blue", "small", x, y)]).valid(GAP) for x, y in spots]
    assert _spot_test(scene, new)(spots).tolist() == want == [True, False, True]


def test_pick_draws_as_rng_choice():
    """random_object's `_pick` takes the same value and leaves the generator where `rng.choice` does."""
    from omni.world.scene import _pick

    for n in (1, 2, 3, 4, 8):
        options = tuple(f"o{i}" for i in range(n))
        a, b = np.random.default_rng([3, n]), np.random.default_rng([3, n])
        assert [_pick(a, options) for _ in range(300)] == [str(b.choice(options)) for _ in range(300)]
        assert a.random() == b.random()


def test_objects_that_cannot_fit_raise_instead_of_hanging(monkeypatch):
    """Options SceneOptions accepts, but whose objects never all fit (six large cubes: no six spots in
    the 3 m square lie 1.82 m apart), and a negative count, once made sample_scene loop forever."""
    from omni.world import scene as S

    monkeypatch.setattr(S, "MAX_SCENE_RESTARTS", 50)  # the real cap takes seconds to reach
    cubes = SceneOptions(shapes=("cube",), sizes=("large",))
    with pytest.raises(ValueError, match=r"could not place 6 objects .* place_half=1.5 m in 50 tries"):
        sample_scene(np.random.default_rng(0), cubes, n=6)
    with pytest.raises(ValueError, match=r"could not place 2 objects"):
        sample_scene(np.random.default_rng(0), SceneOptions(min_objects=2, max_objects=2, place_half=0.0))
    with pytest.raises(ValueError, match="n >= 0 objects, got -1"):
        sample_scene(np.random.default_rng(0), n=-1)
    assert len(sample_scene(np.random.default_rng(0), cubes, n=4).objects) == 4  # what fits still fits
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="place_half must be a finite half side"):
            SceneOptions(place_half=bad)


def test_unknown_object_names_raise_value_error():
    for kw, word in (({"shape": "torus"}, "shape 'torus'"), ({"color": "pink"}, "color 'pink'"),
                     ({"size": "huge"}, "size 'huge'")):
        with pytest.raises(ValueError, match=f"unknown {word}"):
            Obj(**{"shape": "cube", "color": "red", "size": "small", "x": 0.0, "y": 0.0, **kw})
    with pytest.raises(ValueError, match="unknown color 'pink'"):
        Scene.from_dict({"objects": [{"shape": "cube", "color": "pink", "size": "small", "x": 0.0, "y": 0.0}]})
