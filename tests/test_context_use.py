import json

import numpy as np
import pytest
import torch

from omni.eval.context_use import flow_context_use, row_names
from omni.model import OmniModel, preset
from omni.tokens.text import TextTokenizer
from omni.tokens.visual import VisualTokenizer
from omni.train.loop import DEFAULT_VISUAL
from omni.world import sample

SMALL = dict(d_model=64, n_layers=2, n_heads=4)


def tiny(seed=0) -> OmniModel:
    torch.manual_seed(seed)
    m = OmniModel(preset("tiny", **SMALL)).eval()
    m.tokenizer = TextTokenizer.default()
    object.__setattr__(m, "visual", VisualTokenizer.load(DEFAULT_VISUAL))
    return m


def test_rows_are_paired_and_the_condition_reaches_the_loss():
    """Rows share target, t and noise: a model that predicts zero velocity (a fresh flow head) scores
    every row alike; once the head and the generation expert's modulation are live, the rows differ
    (what precedes <gen> reaches the prediction), and the unconditional row differs from the prompt."""
    m = tiny()
    tabs = flow_context_use(m, 2, 1_000_000_000, ts=(0.5, 0.9))
    assert list(tabs) == ["t=0.5", "t=0.9"]
    for tab in tabs.values():
        assert [r.name for r in tab.rows] == row_names() and tab.n == 2 and not tab.higher_is_better
        means = [r.mean for r in tab.rows]
        assert max(means) - min(means) < 1e-6 and means[0] > 0.5
    with torch.no_grad():
        for layer in m.layers:
            torch.nn.init.normal_(layer.experts[1].ada.weight, std=0.05)
        torch.nn.init.normal_(m.final_ada.weight, std=0.05)
        torch.nn.init.normal_(m.flow_head.weight, std=0.05)
    rows = {r.name: r.mean for r in flow_context_use(m, 2, 1_000_000_000, ts=(0.9,))["t=0.9"].rows}
    assert abs(rows["none"] - rows["prompt"]) > 1e-5 and abs(rows["+visual"] - rows["prompt"]) > 1e-5


def test_bad_arguments():
    m = tiny()
    with pytest.raises(ValueError, match="n must be"):
        flow_context_use(m, 0, 0)
    with pytest.raises(ValueError, match="noise levels"):
        flow_context_use(m, 1, 0, ts=(0.0,))
    bare = OmniModel(preset("tiny", **SMALL))
    with pytest.raises(ValueError, match="tokenizers"):
        flow_context_use(bare, 1, 0)


def _cli(*args):
    """`omni ARGS` in process (typer's runner): torch is imported once, not once per case."""
    from typer.testing import CliRunner

    from omni.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_json_and_errors(tmp_path):
    tiny().save_pretrained(tmp_path / "ck")
    r = _cli("eval", "context-use", "--checkpoint", str(tmp_path / "ck"), "--n", "1", "--t", "0.7", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert list(out["tables"]) == ["t=0.7", "codes nll", "codes accuracy"] and out["n"] == 1
    for args, needle in ((["--t", "high"], "--t must be numbers"), (["--t", "2"], "noise levels"),
                         (["--n", "0"], "--n must be positive")):
        bad = _cli("eval", "context-use", "--checkpoint", str(tmp_path / "ck"), *args)
        assert bad.exit_code == 2 and needle in bad.stderr, bad.stderr
    bad = _cli("eval", "context-use", "--checkpoint", str(tmp_path / "absent"), "--t", "0")
    assert bad.exit_code == 2 and "--t: noise levels must lie in (0, 1]" in bad.stderr, bad.stderr  # before loading


@pytest.mark.parametrize("task", ["vqa", "spatial", "depth"])
def test_answer_tasks_rows_and_scores(task):
    """Every true-context form of the task is a row, on the same examples; the scores are what the
    task reports (a random model answers nothing right, and its depth is far from the truth)."""
    from omni.eval.context_use import answer_context_use
    from omni.train.data import DRILLS, FORMS

    res = answer_context_use(tiny(), task, 3, 1_000_000_000, batch=2)
    tabs = res["tables"]
    keys = ["delta1", "abs_rel"] if task == "depth" else ["accuracy", "answer nll"]
    assert list(tabs) == keys
    for tab in tabs.values():
        assert [r.name for r in tab.rows] == row_names(task) and tab.n == 3
        assert len(tab.rows) == len(FORMS[task]) - len(DRILLS.get(task, ()))  # drills are no context
    if task == "depth":
        assert all(0 <= r.mean < 0.9 for r in tabs["delta1"].rows)
    else:
        assert all(r.mean == 0 for r in tabs["accuracy"].rows)
        assert all(r.mean > 1.0 for r in tabs["answer nll"].rows)  # about log(text vocab) per token
    if task == "depth":
        assert res["by_group"] == {}
    else:  # per question type: the examples' own types, counts adding up to n
        assert sum(rows["direct"]["n"] for rows in res["by_group"].values()) == 3
        assert all(set(rows) == set(row_names(task)) for rows in res["by_group"].values())


def test_thought_steps_score_the_true_thoughts_steps():
    """The sequence is the training think form up to </think>, token for token, with targets on
    exactly the thought's option, each copied option and its verdict, and the letter; a random model
    states some letter for each."""
    from omni.eval.context_use import _thought_sequence, thought_steps
    from omni.model import pack
    from omni.train.data import Writer
    from omni.world import sample

    m = tiny()
    w = Writer(m.tokenizer, m.visual, m.cfg)
    for ex in sample("spatial", range(1_000_000_000, 1_000_000_012)):
        seq, spans = _thought_sequence(w, ex)
        full = [t for sg in w.write(ex, "think", np.random.default_rng(0))
                if sg.kind == "text" for t in sg.tokens]
        mine = [t for sg in seq if sg.kind == "text" for t in sg.tokens]
        assert mine == full[:len(mine)] and m.tokenizer.decode(mine[-1:], skip_special=False) == "</think>"
        b = pack([seq], m.cfg)
        tgt = b.target[0][b.target[0] >= 0].tolist()
        opts, k = ex.spec["options"], "ABCD".index(ex.answer)
        assert [what for _, what in spans] == ["option"] + ["copy", "verdict"] * (k + 1) + ["letter"]
        assert spans[0][0] == len(m.tokenizer.encode(" " + ex.spec["answer_text"]))
        verdicts = [f"{o} {'yes' if i == k else 'no'}" for i, o in enumerate(opts[:k + 1])]
        assert m.tokenizer.decode(tgt).strip() == " ".join([ex.spec["answer_text"], *verdicts, ex.answer])
    r = thought_steps(m, 3, 1_000_000_000, batch=2)
    assert r["n"] == 3 and sum(r["letters"].values()) == 3
    assert 0 <= r["letter"]["mean"] <= 1 and r["option"]["mean"] == 0  # a random model names no option
    assert r["copy"]["mean"] == 0 and set(r["by_group"][next(iter(r["by_group"]))]) >= {"n", "verdict"}
    assert sum(g["n"] for g in r["by_group"].values()) == 3
    words = r["copy_words"]
    assert sum(len(v) > 0 for v in words.values()) >= 1 and all(0 <= x <= 1 for v in words.values() for x in v)
    v = r["verdicts"]  # one yes per thought, a no for each option listed before it
    n_verdicts = sum("ABCD".index(ex.answer) + 1 for ex in sample("spatial", range(1_000_000_000, 1_000_000_003)))
    assert v["all"]["n_match"] == 3 and v["all"]["n_match"] + v["all"]["n_mismatch"] == n_verdicts
    assert sum(g["n_match"] for q, g in v.items() if q != "all") == 3


def test_verdict_report_tells_comparison_from_the_places_prior():
    """Margins that follow only the verdict's place (later places are a yes more often) score a
    within-place auc of exactly 0.5 however well the pooled auc does; a margin that also rises with
    the match scores 1."""
    from omni.eval.context_use import verdict_report

    prior = {1: -1.1, 2: -0.7, 3: 0.0}  # the log-odds of a yes at each place when the thought stops there
    recs = [("camera_motion", p, t, prior[p]) for p in (1, 2, 3) for t in [True] + [False] * (4 - p)]
    r = verdict_report(recs)["camera_motion"]
    assert r["auc"] == 0.5 and r["pooled_auc"] > 0.6
    assert r["n_match"] == 3 and r["n_mismatch"] == 6 and r["said_yes_if_match"] == 0
    compared = verdict_report([(q, p, t, m + (2.0 if t else 0.0)) for q, p, t, m in recs])
    assert compared["camera_motion"]["auc"] == 1 and compared["all"]["said_yes_if_match"] == 1
    only_yes = verdict_report([("object_object", 4, True, 1.0)])["object_object"]
    assert only_yes["auc"] is None and only_yes["said_yes_if_mismatch"] is None


@pytest.mark.parametrize("drill", ["conclusion", "reasoned", "reasoned+views"])
def test_thought_steps_on_the_conclusion_drills(drill):
    """form=<drill> scores the drill's sequence up to </think> (text alone, or after the pose text and
    views), the targets exactly the copies, verdicts and letter (the option is context there, so its
    step always counts as right)."""
    from omni.eval.context_use import _thought_sequence, thought_steps
    from omni.model import pack
    from omni.train.data import Writer
    from omni.world import sample

    m = tiny()
    w = Writer(m.tokenizer, m.visual, m.cfg)
    for ex in sample("spatial", range(1_000_000_000, 1_000_000_008)):
        seq, spans = _thought_sequence(w, ex, form=drill)
        segs = w.write(ex, drill, np.random.default_rng(0))
        written = [t for sg in segs if sg.kind == "text" for t in sg.tokens]
        mine = [t for sg in seq if sg.kind == "text" for t in sg.tokens]
        assert mine == written[:len(mine)] and m.tokenizer.decode(mine[-1:], skip_special=False) == "</think>"
        images = sum(sg.kind != "text" for sg in seq)  # the two views, then the four novel views
        assert images == sum(sg.kind != "text" for sg in segs) == (6 if drill.endswith("+views") else 0)
        k, opts = "ABCD".index(ex.answer), ex.spec["options"]
        assert [what for _, what in spans] == ["copy", "verdict"] * (k + 1) + ["letter"]
        if drill.startswith("reasoned"):  # the whole thought, as the think form writes it
            at = mine.index(w.ids("<think>")[0])
            assert mine[at + 1:-1] == w.tok.encode(" " + ex.texts["thinking"].strip())
        if drill.endswith("+views"):
            assert ex.texts["pose"].strip() in m.tokenizer.decode(mine)
        tgt = pack([seq], m.cfg).target[0]
        verdicts = [f"{o} {'yes' if i == k else 'no'}" for i, o in enumerate(opts[:k + 1])]
        assert m.tokenizer.decode(tgt[tgt >= 0].tolist()).strip() == " ".join([*verdicts, ex.answer])
    r = thought_steps(m, 3, 1_000_000_000, batch=2, form=drill)
    assert r["option"]["mean"] == 1 and sum(r["letters"].values()) == 3 and r["copy_words"]


def test_thought_steps_on_the_deduced_drill():
    """form="deduced" scores the reasoned drill's sequence with the option among its targets: the option
    reasoned to from the thought before it, then the copies, verdicts and letter."""
    from omni.eval.context_use import _thought_sequence, thought_steps
    from omni.model import pack
    from omni.train.data import Writer
    from omni.world import sample

    m = tiny()
    w = Writer(m.tokenizer, m.visual, m.cfg)
    for ex in sample("spatial", range(1_000_000_000, 1_000_000_006)):
        seq, spans = _thought_sequence(w, ex, form="deduced")
        reasoned, _ = _thought_sequence(w, ex, form="reasoned")
        flat = [t for sg in seq if sg.kind == "text" for t in sg.tokens]
        assert flat == [t for sg in reasoned if sg.kind == "text" for t in sg.tokens]
        k = "ABCD".index(ex.answer)
        assert [what for _, what in spans] == ["option"] + ["copy", "verdict"] * (k + 1) + ["letter"]
        tgt = pack([seq], m.cfg).target[0]
        assert m.tokenizer.decode(tgt[tgt >= 0].tolist()).strip().startswith(ex.spec["answer_text"])
    r = thought_steps(m, 3, 1_000_000_000, batch=2, form="deduced")
    assert 0 <= r["option"]["mean"] <= 1 and sum(r["letters"].values()) == 3


def test_thought_steps_after_the_views():
    """form="views" is the views form up to </think>: the two images, question, true pose text and the
    four true views, then the same targets as the think form's; an unknown form is refused."""
    from omni.eval.context_use import _thought_sequence, thought_steps
    from omni.model import pack
    from omni.train.data import Writer
    from omni.world import sample

    m = tiny()
    w = Writer(m.tokenizer, m.visual, m.cfg)
    images = lambda segs: sum(sg.kind != "text" for sg in segs)  # noqa: E731
    for ex in sample("spatial", range(1_000_000_000, 1_000_000_004)):
        seq, spans = _thought_sequence(w, ex, form="views")
        think, think_spans = _thought_sequence(w, ex)
        written = w.write(ex, "views", np.random.default_rng(0))
        text = [t for sg in written if sg.kind == "text" for t in sg.tokens]
        mine = [t for sg in seq if sg.kind == "text" for t in sg.tokens]
        assert mine == text[:len(mine)] and m.tokenizer.decode(mine[-1:], skip_special=False) == "</think>"
        assert images(seq) == images(written) == images(think) + 4 and spans == think_spans
        assert ex.texts["pose"].strip() in m.tokenizer.decode(mine)  # the true pose text is in context
        ta, tb = pack([seq], m.cfg).target[0], pack([think], m.cfg).target[0]
        assert ta[ta >= 0].tolist() == tb[tb >= 0].tolist()
    r = thought_steps(m, 2, 1_000_000_000, batch=2, form="views")
    assert r["n"] == 2 and sum(r["letters"].values()) == 2
    with pytest.raises(ValueError, match="unknown spatial thought form"):
        thought_steps(m, 2, 1_000_000_000, form="direct")


def test_vqa_thought_steps_score_the_true_thoughts_pieces():
    """The sequence is the training think form up to the thought's last token, with targets on exactly
    its named pieces; "other image" changes the image and nothing else; a random model gets the answer
    wrong and every rate lies in [0, 1], for both images and per family."""
    from omni.eval.context_use import IMAGES, _vqa_thought_sequence, vqa_thought_steps
    from omni.model import pack
    from omni.train.data import Writer
    from omni.world import sample
    from omni.world.tasks import vqa_thought_pieces

    m = tiny()
    w = Writer(m.tokenizer, m.visual, m.cfg)
    exs = sample("vqa", range(1_000_000_000, 1_000_000_006))
    for ex, other in zip(exs, exs[1:], strict=False):
        seq, spans = _vqa_thought_sequence(w, ex)
        full = [t for sg in w.write(ex, "think", np.random.default_rng(0)) if sg.kind == "text" for t in sg.tokens]
        mine = [t for sg in seq if sg.kind == "text" for t in sg.tokens]
        assert mine == full[:len(mine)] and full[len(mine)] == w.ids("</think>")[0]
        named = [(p, what) for p, what in vqa_thought_pieces(ex.texts["thinking"]) if what]
        assert [what for _, what in spans] == [what for _, what in named]
        tgt = pack([seq], m.cfg).target[0]
        assert m.tokenizer.decode(tgt[tgt >= 0].tolist()) == "".join(p for p, _ in named)
        swapped, spans2 = _vqa_thought_sequence(w, ex, image_of=other)
        imgs = [i for i, sg in enumerate(seq) if sg.kind == "image_in"]
        assert spans2 == spans and [sg.kind for sg in swapped] == [sg.kind for sg in seq]
        assert all(torch.equal(swapped[i].pixels, w.pixels(other.views["image"].rgb)) for i in imgs)
        assert all(a.tokens == b.tokens for a, b in zip(swapped, seq, strict=True) if a.kind == "text")
    r = vqa_thought_steps(m, 5, 1_000_000_000, batch=2)
    five = sample("vqa", range(1_000_000_000, 1_000_000_005))
    relation = {"step relation"} if any(ex.spec["kind"] == "left_right" for ex in five) else set()
    assert r["n"] == 5 and set(IMAGES) <= set(r) and r["chance"]["colour"] == 1 / 8
    for im in IMAGES:
        assert set(r[im]) == {"count", "size", "colour", "shape", "position", "step", "step colour", "step shape",
                              "answer", "listing"} | relation
        assert all(0 <= v["mean"] <= 1 for v in r[im].values()) and r[im]["answer"]["mean"] == 0
    assert sum(g["own image"]["n"] for g in r["by_group"].values()) == 5
    assert sum(g["own image"]["n"] for g in r["by_kind"].values()) == 5
    assert set(r["by_kind"]) == {ex.spec["kind"] for ex in sample("vqa", range(1_000_000_000, 1_000_000_005))}
    assert set(vqa_thought_steps(m, 1, 1_000_000_000)) == {"n", "own image", "chance", "by_group", "by_kind", "yes_no"}
    # the yes / no questions: every one counted once per image, by its true answer and the stated one
    exs = sample("vqa", range(1_000_000_000, 1_000_000_040))
    r = vqa_thought_steps(m, 40, 1_000_000_000, batch=8)
    yn = [ex.answer for ex in exs if ex.answer in ("yes", "no")]
    lr = sum(ex.spec["kind"] == "left_right" for ex in exs)  # their relation word, scored on its own
    assert lr and r["own image"]["step relation"]["n"] == lr
    assert "step relation" in r["by_kind"]["left_right"]["own image"]
    assert yn and set(r["yes_no"]) == set(IMAGES)
    for im in IMAGES:
        assert {t: sum(c.values()) for t, c in r["yes_no"][im].items()} == {a: yn.count(a) for a in set(yn)}
        assert all(set(c) <= {"yes", "no"} for c in r["yes_no"][im].values())


def test_vqa_thought_steps_on_the_focused_thought():
    """vqa_thought="focused": the sequence holds the focused thought (no inventory), so there is no
    count, listed word or listing to score, only the step's words and the answer; the answer context
    use's true thought is the focused one; the option is refused for any task but vqa."""
    from omni.eval.context_use import IMAGES, answer_context_use, context_use, vqa_thought_steps

    m = tiny()
    r = vqa_thought_steps(m, 4, 1_000_000_000, batch=2, vqa_thought="focused")
    assert r["vqa_thought"] == "focused"
    for im in IMAGES:
        assert set(r[im]) <= {"step", "step colour", "step shape", "step relation", "answer"} \
            and {"step", "answer"} <= set(r[im])
    assert all("listing" not in g[im] for g in r["by_group"].values() for im in IMAGES)
    assert "vqa_thought" not in vqa_thought_steps(m, 1, 1_000_000_000)
    inv = answer_context_use(m, "vqa", 2, 1_000_000_000)["tables"]["answer nll"]
    foc = answer_context_use(m, "vqa", 2, 1_000_000_000, vqa_thought="focused")["tables"]["answer nll"]
    means = [{r.name: r.mean for r in t.rows} for t in (inv, foc)]
    assert means[0]["direct"] == means[1]["direct"]  # the same examples; only the thought rows read another text
    assert means[0] != means[1]
    with pytest.raises(ValueError, match="--vqa-thought applies to the vqa task only"):
        context_use(m, "spatial", 1, 1_000_000_000, vqa_thought="focused")
    with pytest.raises(ValueError, match="vqa thought must be one of"):
        context_use(m, "vqa", 1, 1_000_000_000, vqa_thought="long")
    # the measured thought's inventory gives each object's distance: a piece of its own, in every group
    r = vqa_thought_steps(m, 4, 1_000_000_000, batch=2, vqa_thought="measured", world_revision=3)
    assert r["vqa_thought"] == "measured"
    for im in IMAGES:
        assert {"distance", "listing", "colour", "step", "answer"} <= set(r[im]) and 0 <= r[im]["distance"]["mean"] <= 1
    assert all("distance" in g[im] for g in r["by_kind"].values() for im in IMAGES)
    assert "distance" not in r["chance"] and "distance" not in vqa_thought_steps(m, 2, 1_000_000_000)["own image"]


def test_context_use_on_the_worlds_revision_2(monkeypatch):
    """Every measure samples the revision it is given (the spatial thought's steps read revision 2's
    camera_object thoughts too), and says so; a revision the world lacks is refused first."""
    import omni.eval.context_use as cu
    from omni.serve.testing import random_tiny_model

    drawn = []

    def spy(task, seeds, cfg=None):
        drawn.append((task, cfg.revision))
        return sample(task, seeds, cfg)

    monkeypatch.setattr(cu, "sample", spy)
    m = random_tiny_model(0)
    r = cu.context_use(m, "spatial", 3, 2_000_000_000, world_revision=2)
    assert r["world_revision"] == 2 and r["thought_steps"]["n"] == 3
    assert drawn == [("spatial", 2)] * 3  # the answers' contexts, the thought's steps, after the views
    drawn.clear()
    cu.context_use(m, "t2i", 1, 2_000_000_000, ts=[0.5], world_revision=2)
    cu.context_use(m, "vqa", 2, 2_000_000_000, world_revision=2)
    assert drawn == [("t2i", 2), ("t2i", 2), ("vqa", 2), ("vqa", 2)]
    assert "world_revision" not in cu.context_use(m, "depth", 1, 2_000_000_000)
    with pytest.raises(ValueError, match="world revision must be one of 1, 2, 3"):
        cu.context_use(m, "t2i", 1, 2_000_000_000, world_revision=0)


def test_answer_context_use_errors():
    from omni.eval.context_use import answer_context_use

    with pytest.raises(ValueError, match="flow_context_use"):
        answer_context_use(tiny(), "t2i", 1, 0)
    with pytest.raises(ValueError, match="context use is measured"):
        answer_context_use(tiny(), "pose", 1, 0)
    with pytest.raises(ValueError, match="n must be"):
        answer_context_use(tiny(), "vqa", 0, 0)


def test_cli_answer_task(tmp_path):
    tiny().save_pretrained(tmp_path / "ck")
    r = _cli("eval", "context-use", "--checkpoint", str(tmp_path / "ck"), "--task", "spatial", "--n", "1", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["task"] == "spatial" and list(out["tables"]) == ["accuracy", "answer nll"] and out["by_group"]
    for st in (out["thought_steps"], out["thought_steps_views"]):  # after the question, after the views
        assert sum(st["letters"].values()) == 1 and st["verdicts"]["all"]["n_match"] == 1
    r = _cli("eval", "context-use", "--checkpoint", str(tmp_path / "ck"), "--task", "spatial", "--n", "1")
    assert r.exit_code == 0, r.stderr
    assert "verdicts, all: said yes to" in r.stdout and "(0.5: no comparison)" in r.stdout
    assert "verdicts after the true pose text and views, all: said yes to" in r.stdout
    r = _cli("eval", "context-use", "--checkpoint", str(tmp_path / "ck"), "--task", "vqa", "--n", "2")
    assert r.exit_code == 0, r.stderr
    assert "piece by piece, other image" in r.stdout and "chance: size 0.500" in r.stdout
    assert "yes / no answers stated after the true thought, own image" in r.stdout
    for args, needle in ((["--task", "pose"], "--task must be"), (["--task", "vqa", "--t", "0.5"], "--t (noise")):
        bad = _cli("eval", "context-use", "--checkpoint", str(tmp_path / "ck"), *args)
        assert bad.exit_code == 2 and needle in bad.stderr, bad.stderr


def test_context_use_one_shape_for_every_task():
    """`context_use` answers t2i and the answer tasks in the same shape, as the CLI prints them."""
    from omni.eval.context_use import context_use

    m = tiny()
    t2i = context_use(m, "t2i", 1, 1_000_000_000, ts=(0.9,))
    assert list(t2i["tables"]) == ["t=0.9", "codes nll", "codes accuracy"] and t2i["by_group"] == {}
    assert [r.name for r in t2i["tables"]["t=0.9"].rows] == row_names("t2i")
    sp = context_use(m, "spatial", 2, 1_000_000_000)
    assert list(sp["tables"]) == ["accuracy", "answer nll"] and sp["by_group"]
    with pytest.raises(ValueError, match="t2i's context use only"):
        context_use(m, "vqa", 1, 0, ts=(0.5,))
    with pytest.raises(ValueError, match="context use is measured"):
        context_use(m, "pose", 1, 0)


def test_rollout_rows_are_paired_and_read_the_text():
    """The rollout's codes are the same targets in every row: with one example its "other prompt" is
    its own, so that row equals the prompt row exactly; with three, the text before the codes reaches
    their logits (the layout and another prompt change each example's loss: the paired differences
    are not all zero), and the scores are in range."""
    from omni.eval.context_use import ROLLOUT_FORMS, rollout_context_use

    m = tiny()
    one = {k: {r.name: r.mean for r in t.rows} for k, t in rollout_context_use(m, 1, 1_000_000_000).items()}
    assert list(one) == ["codes nll", "codes accuracy"]
    for rows in one.values():
        assert list(rows) == list(ROLLOUT_FORMS) and rows["other prompt"] == rows["prompt"]
    tabs = rollout_context_use(m, 3, 1_000_000_000, batch=2)
    nll = {r.name: r for r in tabs["codes nll"].rows}
    acc = {r.name: r.mean for r in tabs["codes accuracy"].rows}
    assert tabs["codes nll"].n == 3 and not tabs["codes nll"].higher_is_better
    assert tabs["codes accuracy"].higher_is_better
    assert all(r.mean > 0 for r in nll.values()) and all(0 <= v <= 1 for v in acc.values())
    for name in ("+short", "+long", "other prompt"):
        assert nll[name].delta_hi - nll[name].delta_lo > 1e-6, name
