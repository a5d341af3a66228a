"""The world's revision 2 (WorldConfig.revision; docs/world_audit.md): what it mends, that revision 1
still draws what the shipped model was trained and scored on, and that training and evaluation carry
the revision through."""

import json
import math
import re
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from omni.cli import app
from omni.world import TASKS, SceneOptions, WorldConfig, sample
from omni.world.tasks import (
    _QUADRANTS,
    _in_frame,
    _level_frame,
    conclusion_pieces,
    stated_option,
    vqa_conclusion_cut,
    vqa_thought_pieces,
)

TEST = 2_000_000_000
R2 = WorldConfig(revision=2)


def _same(a, b) -> bool:
    return a.texts == b.texts and a.answer == b.answer and all(
        np.array_equal(a.views[k].rgb, b.views[k].rgb) for k in a.views)


def test_revision_is_checked_and_defaults_to_the_shipped_world():
    assert WorldConfig().revision == 1
    with pytest.raises(ValueError, match="world revision must be one of 1, 2, 3"):
        WorldConfig(revision=4)
    for bad in (True, 2.0, "2"):
        with pytest.raises(TypeError, match="WorldConfig.revision must be an integer"):
            WorldConfig(revision=bad)


def test_revision_2_leaves_the_other_tasks_alone():
    """Only vqa, t2i and spatial change; depth, pose, nvs, video and edit draw the same examples."""
    for task in ("depth", "pose", "nvs", "video", "edit"):
        for a, b in zip(sample(task, range(TEST, TEST + 6)), sample(task, range(TEST, TEST + 6), R2), strict=True):
            assert _same(a, b), task


def test_camera_object_answers_lie_in_all_four_quadrants_and_are_true():
    """Revision 1's answers were never behind the camera (view 2 only stepped aside); revision 2's view 2
    stands among the objects, shows two of them or more (one alone, seen close, leaves where the camera
    stands undetermined), and the answer's quadrant is drawn evenly, true in the camera's frame and for
    a level head alike, by 0.3 m."""
    exs = [e for e in sample("spatial", range(TEST, TEST + 240), R2) if e.spec["qtype"] == "camera_object"]
    got = Counter(e.spec["answer_text"] for e in exs)
    assert set(got) == set(_QUADRANTS) and min(got.values()) >= 0.15 * len(exs), got
    for e in exs:
        assert sum(s.pixels >= R2.min_pixels for s in e.stats("view2")) >= 2
        name = re.search(r"where is the (.+)\?", e.texts["question"])[1]
        (obj,) = [o for o in e.scenes["main"].objects if o.name == name]
        w2c = e.views["view2"].w2c
        for x, z in (_in_frame(w2c, obj.center), _level_frame(w2c, obj.center)):
            assert min(abs(x), abs(z)) >= 0.3
            assert _QUADRANTS[(0 if z > 0 else 2) + (0 if x < 0 else 1)] == e.spec["answer_text"]
        assert stated_option(e.texts["thinking"]) == e.spec["answer_text"]
        conclusion_pieces(e.texts["thinking"])  # the thought keeps the shape the drills read
        assert not re.search(r"-0\.0(?!\d)", e.texts["thinking"])
    old = [e for e in sample("spatial", range(TEST, TEST + 120)) if e.spec["qtype"] == "camera_object"]
    assert not any(e.spec["answer_text"].startswith("behind") for e in old)  # what revision 1 keeps


def test_object_object_answer_is_the_leftmost_of_the_scene():
    for e in sample("spatial", range(TEST, TEST + 200), R2):
        if e.spec["qtype"] != "object_object":
            continue
        w2c = e.views["view2"].w2c
        lean = {o.name: math.atan2(*_in_frame(w2c, o.center)) for o in e.scenes["main"].objects}
        assert min(lean, key=lean.get) == e.spec["answer_text"]


def test_t2i_prompts_keep_their_difficulty_across_redrafts():
    """Revision 1 redrew the whole prompt when a draft failed, so four objects, above / below and math
    answers above 2 were rare (counting 94 / 22 / 14 of 130 on these seeds); revision 2 keeps the count, the
    relation and the math answer (at most 4) and redraws only shapes and colours."""
    counting, relation, math_n = Counter(), Counter(), Counter()
    for e in sample("t2i", range(TEST, TEST + 400), R2):
        cat, prompt = e.spec["category"], e.texts["prompt"]
        if cat == "counting":
            counting[re.match(r"a photo of (\w+)", prompt)[1]] += 1
        elif cat == "position":
            relation[re.search(r"left of|right of|above|below", prompt)[0]] += 1
        elif cat == "math":
            math_n[len(e.scenes["main"].objects)] += 1
        assert not any(re.search(r"\ba [aeiou]", e.texts[k]) for k in ("short", "long")), e.texts["short"]
    assert set(counting) == {"two", "three", "four"} and min(counting.values()) >= 0.2 * sum(counting.values())
    assert relation["above"] + relation["below"] >= 0.3 * sum(relation.values()), relation
    assert set(math_n) == {1, 2, 3, 4} and min(math_n.values()) >= 0.1 * sum(math_n.values()), math_n
    # scene options of 5-6 objects leave only math, which then asks for 5 (the cap gives way, no endless draw)
    few = WorldConfig(revision=2, scene=SceneOptions(min_objects=5, max_objects=6), max_attempts=400)
    assert {len(e.scenes["main"].objects) for e in sample("t2i", range(6), few)} == {5}


def test_vqa_thoughts_agree_in_number():
    thoughts = [e.texts["thinking"] for e in sample("vqa", range(TEST, TEST + 300), R2)]
    assert not any(re.search(r"\b1 of them are\b|\bthere are 1 |\b1 objects\b", t) for t in thoughts)
    assert any("there is 1 " in t for t in thoughts) and any("1 of them is" in t for t in thoughts)
    for t in thoughts:
        vqa_thought_pieces(t)  # the inventory's pieces still read


def test_vqa_left_right_thought_states_its_verdict():
    """Revision 2's left_right thought copies the relation asked beside the one its x centres imply and
    says whether they agree ("the question asks right of: no."), the answer then read from that verdict;
    revision 1 draws the same question, image and answer with the thought it always had."""
    seen = Counter()
    r1 = sample("vqa", range(TEST, TEST + 200))
    for e1, e2 in zip(r1, sample("vqa", range(TEST, TEST + 200), R2), strict=True):
        assert (e1.texts["question"], e1.answer, e1.spec) == (e2.texts["question"], e2.answer, e2.spec)
        if e2.spec["kind"] != "left_right":
            assert "the question asks" not in e2.texts["thinking"]
            continue
        asked = re.fullmatch(r"is the .+ (left of|right of) the .+\?", e2.texts["question"]).group(1)
        found = re.search(r", so the .+ is (left of|right of) the ", e2.texts["thinking"]).group(1)
        assert e2.answer == ("yes" if asked == found else "no")
        assert e2.texts["thinking"] == e1.texts["thinking"].replace(
            " so the answer is", f" the question asks {asked}: {e2.answer}. so the answer is")
        named = [(what, p.strip()) for p, what in vqa_thought_pieces(e2.texts["thinking"]) if what]
        assert [v for w, v in named if w == "step verdict"] == [e2.answer + "."]
        assert [v for w, v in named if w == "step relation"] == [found.split()[0]]
        seen[e2.answer] += 1
    assert seen["yes"] >= 3 and seen["no"] >= 3


def test_revision_3_reads_left_right_off_the_inventory():
    """Revision 3 is revision 2 but for left_right's step, which copies the thought's own inventory after the
    question's first object ("after the purple cone the list has: a large blue cylinder on the right;")
    and concludes left of exactly when the second object is among what it copied; the question, image,
    answer and verdict are revision 2's. A focused thought, which has no inventory, keeps the x centres."""
    r3 = WorldConfig(revision=3)
    seen = Counter()
    for e2, e3 in zip(sample("vqa", range(TEST, TEST + 200), R2), sample("vqa", range(TEST, TEST + 200), r3),
                      strict=True):
        assert (e2.texts["question"], e2.answer, e2.spec) == (e3.texts["question"], e3.answer, e3.spec)
        if e3.spec["kind"] != "left_right":
            assert e3.texts == e2.texts
            continue
        t = e3.texts["thinking"]
        a, b = re.fullmatch(r"is the (.+) (?:left|right) of the (.+)\?", e3.texts["question"]).groups()
        inventory, step = t.split(". ", 1)
        items = re.split(r", | and ", inventory.split(": ", 1)[1])
        at = [i for i, it in enumerate(items) if f" {a} " in f" {it} "]
        assert len(at) == 1
        tail = items[at[0] + 1:]
        listed = ", ".join(tail[:-1]) + " and " + tail[-1] if len(tail) > 1 else (tail[0] if tail else "none")
        rel = "left of" if any(f" {b} " in f" {it} " for it in tail) else "right of"
        assert step.startswith(f"after the {a} the list has: {listed}; so the {a} is {rel} the {b}. ")
        assert "centred at x" not in t and t.endswith(e2.texts["thinking"][e2.texts["thinking"].index(
            " the question asks"):])
        assert re.search(rf"so the {a} is {rel} the {b}\.", e2.texts["thinking"])  # revision 2 found the same
        named = [(what, p.strip()) for p, what in vqa_thought_pieces(t) if what]
        assert [v for w, v in named if w == "step relation"] == [rel.split()[0]]
        assert vqa_conclusion_cut(t) == len(" " + inventory + ".")  # no number read: the whole step is concluded
        seen[rel, listed == "none"] += 1
    assert min(seen[k] for k in (("left of", False), ("right of", False), ("right of", True))) >= 2, seen
    focused = sample("vqa", range(TEST, TEST + 60), WorldConfig(revision=3, vqa_thought="focused"))
    assert any("centred at x" in e.texts["thinking"] for e in focused)


def test_the_measured_thought_lists_each_objects_distance_for_closer_to_copy():
    """vqa_thought "measured": the inventory gives each object's median distance ("... on the left at
    4.6 m"); closer's step states the same two numbers, so it copies them by name; left_right's revision-3
    list copies the items with their distances. Questions and answers are the inventory thought's; the
    pieces name the distances; the whole step is conclusion (the drill's loss covers the copies); the
    longest thought fits the think primitive's budget."""
    from omni.tokens.text import TextTokenizer
    from omni.unroll.engine import THINK_TOKENS

    tok = TextTokenizer.load()
    r3m = WorldConfig(revision=3, vqa_thought="measured")
    seen = Counter()
    for e3, em in zip(sample("vqa", range(TEST, TEST + 200), WorldConfig(revision=3)),
                      sample("vqa", range(TEST, TEST + 200), r3m), strict=True):
        assert (e3.texts["question"], e3.answer, e3.spec) == (em.texts["question"], em.answer, em.spec)
        t = em.texts["thinking"]
        inventory, step = t.split(". ", 1)
        items = re.split(r", | and ", inventory.split(": ", 1)[1])
        dist = {}
        for it, st in zip(items, sorted(em.stats("image"), key=lambda s: (s.centroid[0], s.centroid[1])), strict=True):
            assert it.endswith(f" at {st.median_depth:.1f} m") and f" {st.obj.name} " in it
            dist[st.obj.name] = f"{st.median_depth:.1f}"
        # the inventory thought with the distances taken out (the left_right list copies them too)
        assert re.sub(r" at \d+\.\d m", "", t) == e3.texts["thinking"]
        if em.spec["kind"] == "closer":
            m = re.fullmatch(r"the (.+) is about (\S+) m away and the (.+) about (\S+) m\. so the answer is .+\.", step)
            assert m and (dist[m[1]], dist[m[3]]) == (m[2], m[4])
        named = [w for _, w in vqa_thought_pieces(t)]
        assert named.count("distance") == len(items)
        cut = vqa_conclusion_cut(t)
        assert cut == len(" " + inventory + ".")  # every step starts the conclusion
        assert len(tok.encode(t)) <= THINK_TOKENS - 2
        seen[em.spec["kind"]] += 1
    assert seen["closer"] >= 5 and seen["left_right"] >= 5
    longest = max(len(tok.encode(e.texts["thinking"])) for e in sample("vqa", range(TEST, TEST + 1000), r3m))
    assert 150 < longest <= THINK_TOKENS - 2, longest


def test_every_training_form_writes_revision_2_examples():
    from omni.model import preset
    from omni.tokens.text import TextTokenizer
    from omni.tokens.visual import VisualTokenizer
    from omni.train import FORMS, Mixture, MixtureConfig, Writer
    from omni.train.loop import DEFAULT_VISUAL

    w = Writer(TextTokenizer.default(), VisualTokenizer.load(DEFAULT_VISUAL), preset("tiny"))
    for task in TASKS:
        for ex in sample(task, range(TEST, TEST + 4), R2):
            for form in FORMS[task]:
                assert w.write(ex, form, np.random.default_rng(0))
    mix = Mixture(MixtureConfig(rows=1, row_len=1024, world_revision=2), w)
    assert mix.world.revision == 2
    assert mix.batch(0)[0].token.shape == (1, 1024)
    with pytest.raises(ValueError, match="--world-revision: world revision must be one of 1, 2, 3"):
        MixtureConfig(world_revision=5)


def test_eval_and_compare_carry_the_revision():
    from omni.eval.report import compare_outputs
    from omni.eval.run import evaluate
    from omni.serve.testing import random_tiny_model
    from omni.unroll.engine import Engine

    engine = Engine(random_tiny_model(0), think_tokens=4)
    old = evaluate(engine, "spatial", 3, TEST)
    new = evaluate(engine, "spatial", 3, TEST, world_revision=2)
    assert "world_revision" not in old and new["world_revision"] == 2
    with pytest.raises(ValueError, match="world_revision 2 differs from the first output's 1"):
        compare_outputs({"old": old, "new": new})
    r = CliRunner().invoke(app, ["eval", "spatial", "--world-revision", "4", "--checkpoint", "/nonexistent"])
    assert r.exit_code == 2 and "world revision must be one of 1, 2, 3" in r.output


def test_ablate_progress_keeps_the_revision(tmp_path):
    from omni.eval.ablate import ablate
    from omni.serve.testing import random_tiny_model
    from omni.unroll.engine import Engine

    engine = Engine(random_tiny_model(0), think_tokens=4)
    rows = {"direct": []}
    p = tmp_path / "p.json"
    r = ablate(engine, "vqa", 1, TEST, rows=rows, partial=p, world_revision=2)
    assert r["world_revision"] == 2 and json.loads(p.read_text())["world_revision"] == 2
    with pytest.raises(ValueError, match="world_revision differ"):
        ablate(engine, "vqa", 1, TEST, rows=rows, partial=p, resume=True)


def test_world_cli_samples_revision_2(tmp_path):
    r = CliRunner().invoke(app, ["world", "sample", "--task", "spatial", "--n", "2", "--seed", str(TEST),
                                 "--revision", "2", "--out", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    # the examples' world goes beside them (examples.jsonl alone did not say which revision drew them),
    # and draws them again
    world = WorldConfig.from_dict(json.loads((tmp_path / "w" / "world.json").read_text()))
    assert world == R2
    lines = [json.loads(x) for x in (tmp_path / "w" / "examples.jsonl").read_text().splitlines()]
    assert [e.texts for e in sample("spatial", [TEST, TEST + 1], world)] == [x["texts"] for x in lines]
    assert [e.texts for e in sample("spatial", [TEST, TEST + 1])] != [x["texts"] for x in lines]
    r = CliRunner().invoke(app, ["world", "sample", "--task", "spatial", "--n", "2", "--revision", "0",
                                 "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "world revision must be one of" in r.output


def test_world_config_round_trips_through_json():
    w = WorldConfig(size=16, revision=2, scene=SceneOptions(shapes=("cube", "cone"), max_objects=4),
                    pose_motions=("orbit", "move_turn"), shadows=True)
    assert WorldConfig.from_dict(json.loads(json.dumps(w.to_dict()))) == w
    assert WorldConfig.from_dict({}) == WorldConfig()
    with pytest.raises(ValueError, match="unknown world config field.*sizee, scene.colours"):
        WorldConfig.from_dict({"sizee": 3, "scene": {"colours": ["red"]}})
    with pytest.raises(ValueError, match="world revision must be one of"):
        WorldConfig.from_dict({"revision": 7})
    with pytest.raises(TypeError, match="a world config is a JSON object"):
        WorldConfig.from_dict([1, 2])
