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
