"""The world audit's input checks: options of WorldConfig, seeds given to split_of / split_of_range, the
spatial options, and the shapes language.py's functions read, each refused where it is given with an error
that names it (before, each was accepted silently, or failed deep in torch, range() or the renderer). The
default examples stay byte-identical: the digest below was taken on the code before these checks."""

import hashlib
import json
import re

import numpy as np
import pytest

from omni.world import SceneOptions, sample
from omni.world import language as L
from omni.world.tasks import (
    SPLITS,
    TASKS,
    WorldConfig,
    options_text,
    spatial_conclusion,
    split_of,
    split_of_range,
)

BAD_CONFIGS = [
    # a float size once failed in torch.empty ("type must be tuple of ints, but got float")
    ({"size": 32.0}, TypeError, "WorldConfig.size must be an integer, got float 32.0"),
    ({"size": "32"}, TypeError, "WorldConfig.size must be an integer, got str '32'"),
    ({"video_frames": 3.0}, TypeError, "WorldConfig.video_frames must be an integer, got float 3.0"),
    ({"video_frames": True}, TypeError, "WorldConfig.video_frames must be an integer, got bool True"),
    ({"max_attempts": 2.5}, TypeError, "WorldConfig.max_attempts must be an integer"),
    # 0 drafts said "no valid example after 0 attempts ... (options too restrictive?)"
    ({"max_attempts": 0}, ValueError, "max_attempts (drafts per example) must be at least 1, got 0"),
    ({"max_attempts": -1}, ValueError, "must be at least 1, got -1"),
    # accepted at construction, failed (or not) only when sampled
    ({"fov": 0}, ValueError, "field of view must lie in (0, 180) degrees, got 0"),
    ({"fov": float("nan")}, ValueError, "field of view must lie in (0, 180) degrees, got nan"),
    ({"fov": "50"}, ValueError, "field of view must lie in (0, 180) degrees, got '50'"),
    # a NaN angle reached the renderer ("w2c must be finite"); -30 wrote "look left -30 degrees."; 30.4 was
    # written "look left 30 degrees." for a 30.4 degree turn
    ({"novel_view_deg": float("nan")}, ValueError, "novel_view_deg must be a whole number of degrees in 1..179"),
    ({"novel_view_deg": 30.4}, ValueError, "got 30.4"),
    ({"novel_view_deg": -30}, ValueError, "got -30"),
    ({"novel_view_deg": 0}, ValueError, "got 0"),
    ({"novel_view_deg": 200}, ValueError, "got 200"),
    ({"novel_view_deg": True}, ValueError, "got True"),
    # a dict for scene was an AttributeError in the first sampler; "no" turned shadows on
    ({"scene": {"shapes": ("cube",)}}, TypeError, "WorldConfig.scene must be a SceneOptions, got dict"),
    ({"shadows": "no"}, TypeError, "WorldConfig.shadows must be True or False, got str 'no'"),
    ({"shadows": 1}, TypeError, "WorldConfig.shadows must be True or False, got int 1"),
]


@pytest.mark.parametrize("kw,error,needle", BAD_CONFIGS)
def test_bad_world_options_are_refused_where_given(kw, error, needle):
    with pytest.raises(error, match=re.escape(needle)):
        WorldConfig(**kw)


def test_good_world_options_still_accepted():
    for kw in ({}, {"size": np.int64(16)}, {"fov": 60}, {"fov": np.float32(45.0)}, {"novel_view_deg": 45},
               {"novel_view_deg": 15.0}, {"shadows": True}, {"shadows": np.bool_(False)}, {"video_frames": 2},
               {"max_attempts": 1}, {"scene": SceneOptions(shapes=("cube",))}):
        WorldConfig(**kw)
    # a whole angle other than 30 is what the nvs instruction says
    looks = [e for e in sample("nvs", range(24), WorldConfig(size=8, novel_view_deg=45))
             if e.spec["motion"]["kind"] == "look"]
    assert looks and all(e.texts["instruction"] == f"look {e.spec['motion']['direction']} 45 degrees." for e in looks)


def test_seeds_of_split_of_and_split_of_range_are_integers():
    # a float seed lay in "train" (split_of(1.5)), and so did True; a negative count was the split of its start
    for seed in (1.5, 2.0e9, "5"):
        with pytest.raises(TypeError, match="a seed must be an integer"):
            split_of(seed)
    with pytest.raises(TypeError, match=re.escape("a seed must be an integer, got bool True")):
        split_of(True)
    with pytest.raises(ValueError, match=re.escape("the number of seeds n must be >= 0, got -3")):
        split_of_range(5, -3)
    with pytest.raises(TypeError, match="the number of seeds n must be an integer"):
        split_of_range(5, 2.0)
    with pytest.raises(TypeError, match="a seed must be an integer"):
        split_of_range(5.5, 2)
    assert split_of(np.int64(5)) == "train" and split_of(SPLITS["test"][0]) == "test"
    assert split_of_range(SPLITS["val"][0], 0) == "val" and split_of_range(np.int32(3), np.int64(4)) == "train"
    with pytest.raises(ValueError, match="lies in no split"):
        split_of(-1)


def test_spatial_options_are_checked():
    opts = ["moved left", "moved right", "stayed", "turned"]
    assert options_text(opts) == "A. moved left B. moved right C. stayed D. turned"
    assert spatial_conclusion(opts, "stayed").endswith("C. stayed: yes, so the answer is C.")
    with pytest.raises(ValueError, match=re.escape("options must be a list of 1..4 texts (letters A, B, C, D)")):
        options_text([*opts, "fifth"])  # an IndexError of LETTERS
    with pytest.raises(ValueError, match="options must be a list of 1..4 texts"):
        spatial_conclusion([*opts, "fifth"], "fifth")
    with pytest.raises(ValueError, match=re.escape("the answer 'jumped' must be exactly one of the options")):
        spatial_conclusion(opts, "jumped")  # list.index's "'jumped' is not in list"
    with pytest.raises(ValueError, match="must be exactly one of the options"):
        spatial_conclusion(["a", "a", "b", "c"], "a")  # two letters for one answer


def test_language_reads_maps_of_one_shape():
    ex = sample("depth", [SPLITS["test"][0] + 12], WorldConfig(size=16))[0]
    v, scene = ex.views["image"], ex.scenes["main"]
    st = L.object_stats(scene, v.ids, v.depth, v.amodal)
    assert len(st) == len(scene.objects) >= 2
    # a depth map of half the height was read at the wrong pixels (no error where the objects lay in its rows)
    with pytest.raises(ValueError, match=re.escape("ids and depth must be (H, W) maps of one shape, got (16, 16) "
                                                   "and (8, 16)")):
        L.object_stats(scene, v.ids, v.depth[:8])
    with pytest.raises(ValueError, match="ids and depth must be"):
        L.object_stats(scene, v.ids.reshape(-1), v.depth.reshape(-1))  # an IndexError of shape[1]
    with pytest.raises(ValueError, match=re.escape(f"amodal masks must be (objects, H, W) = ({len(scene.objects)}, "
                                                   "16, 16)")):
        L.object_stats(scene, v.ids, v.depth, v.amodal[:, :8])  # visible fractions from half the masks
    with pytest.raises(ValueError, match="amodal masks must be"):
        L.object_stats(scene, v.ids, v.depth, v.amodal[:1])
    # three numbers for a box broadcast into an answer
    with pytest.raises(ValueError, match=re.escape("boxes must be 4 numbers (x0, y0, x1, y1)")):
        L.relative_position((0, 0, 4), (0, 0, 4, 4))
    assert L.relative_position((0, 0, 4, 4), (20, 0, 24, 4)) == {"left of"}
    # a grid of 0 cells put every object at (-1,-1)
    for grid in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="the layout grid must be a whole number of cells >= 1"):
            L.layout_text(st, 16, 16, grid=grid)
        with pytest.raises(ValueError, match="the layout grid must be a whole number of cells >= 1"):
            L.grid_cell(st[0], 16, 16, grid=grid)
    assert L.layout_text(st, 16, 16, grid=1).count("at (0,0)") == len(st)


def _to_1e9(x):
    """x (JSON) with every float rounded to 9 decimal places (-0.0 written 0.0)."""
    if isinstance(x, float):
        return round(x, 9) + 0.0
    if isinstance(x, dict):
        return {k: _to_1e9(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_to_1e9(v) for v in x]
    return x


def test_default_examples_unchanged_to_nine_decimals():
    """Every task's texts, answers, specs, scenes and cameras at the defaults (size 32) for seeds of each split,
    the floats to 9 decimal places: their last bits depend on the CPU, through the BLAS kernel numpy picks for it
    (OPENBLAS_CORETYPE=Haswell, Zen, SkylakeX and Prescott write relative poses ~1e-16 apart, zeros as +-4e-16).
    The digest is that of the code before these checks (the shipped model's data, written with SkylakeX's
    kernels, whose full-precision digest was 8b2568bb49def698), the same with every kernel."""
    seeds = [*range(SPLITS["test"][0], SPLITS["test"][0] + 6), 0, 1, SPLITS["val"][0], SPLITS["val"][0] + 1]
    h = hashlib.sha256()
    for task in TASKS:
        for e in sample(task, seeds, WorldConfig(size=32)):
            h.update(json.dumps(_to_1e9(e.to_json()), sort_keys=True).encode())
    assert h.hexdigest()[:16] == "c8abc7a7a6ba0968"


def test_a_seed_in_no_split_names_the_splits_readably():
    """split_of printed the SPLITS dict itself; it says the ranges as sample does."""
    from omni.world.tasks import split_of

    with pytest.raises(ValueError, match=r"seed 1500000000 lies in no split: train 0\.\.999999999, "
                                         r"val 1000000000\.\.1000999999, test 2000000000\.\.2000999999$"):
        split_of(1_500_000_000)
