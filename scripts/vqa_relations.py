"""What a model's own VQA thoughts read for the relation questions, counted from an ablation's texts
(docs/experiments.md, "VQA's relation answers"): is the thought's reading of the image (the x centres of
"is X left of Y", the distances of "which is closer") right, is its step from those numbers right, and does
the answer follow it?

    python scripts/vqa_relations.py DIR_OR_vqa_scores.json [...] [--row +thinking] [--json]

Each argument is an `omni ablate vqa --out DIR` folder or its vqa_scores.json; the examples are drawn
again from the seeds, world revision and vqa thought it records, and the row's thoughts (default
+thinking) are read with the world's own sentences:

- left_right ("is the purple cone left of the blue cylinder?"; the thought "the purple cone is centred at
  x 9 and the blue cylinder at x 30, so the purple cone is left of the blue cylinder."):
  `named` the step names the question's two objects (in either order); `relation` the relation it
  concludes, of the question's first object to its second, is the world's; `order` its two x centres
  order the objects as the world's do (`ties`: it gives both the same x, which orders nothing); `step` its
  relation follows from its own two x centres;
  `follows` the answer is the yes / no its relation implies for the relation asked; `x_error` the mean
  absolute error of its x centres in pixels where it names both objects, beside `x_error_centre`, that of
  guessing the image's centre column for both on the same examples;
- left_right in the world's revision 3, whose step reads the relation off the thought's own inventory ("after
  the purple cone the list has: a large blue cylinder on the right; so the purple cone is left of the blue
  cylinder."): `named` and `relation` as above, and `listed` the thought's inventory lists both objects;
  `copied` its list after the object is the tail of its own inventory after that object, word for word
  (`none` after the last); `step` its relation follows from its own list (the other object in it: left
  of); `follows` as above;
- closer in a measured thought (`vqa_thought` "measured", whose inventory gives each object's distance, "... on
  the left at 4.6 m"): as below, and `copied` its step's two distances are those its own inventory gives the
  two objects it names;
- closer ("which is closer to the camera, the X or the Y?"; "the X is about 4.6 m away and the Y about
  6.1 m."): `named`, `order` (its two distances put the world's nearer object nearer; `ties`: the same
  distance for both), `follows` (the
  answer names the object its own distances put nearer), `m_error` and `m_error_mean` (guessing, on
  the same examples, the mean of the true distances of every closer question's objects).

Counts are of the examples of that kind; a thought that does not state the step in the world's words counts
as wrong for every item but `named` when it names the objects elsewhere.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import partial
from pathlib import Path

import numpy as np

from omni.world import WorldConfig, sample
from omni.world import language as L
from omni.world.tasks import LEFT_RIGHT_LISTED, LEFT_RIGHT_X, lists_left_right

MEASURED_ITEM = re.compile(r"an? [a-z]+ ([a-z]+ [a-z]+) (?:on the left|in the center|on the right) at (\d+\.\d) m")
INVENTORY = re.compile(r"i see \d+ objects?: (.+?)\. ")
LR_Q = re.compile(r"is the (.+?) (left|right) of the (.+?)\?")
LR_STEP = re.compile(LEFT_RIGHT_X.pattern + r" so the ([a-z ]+?) is (left|right) of the ([a-z ]+?)\.")
CL_Q = re.compile(r"which is closer to the camera, the (.+?) or the (.+?)\?")
CL_STEP = re.compile(r"the ([a-z ]+?) is about (\d+(?:\.\d+)?) m away and the ([a-z ]+?) about (\d+(?:\.\d+)?) m\.")
OTHER = {"left": "right", "right": "left"}


def scores_file(p: str, script: str = "vqa_relations.py") -> Path:
    """An `omni ablate vqa --out` folder's vqa_scores.json (or the file itself); none is one line naming `script`."""
    path = Path(p)
    path = path / "vqa_scores.json" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"{script}: no vqa_scores.json at {p}")
    return path


def read_ablation(path: str | Path, row: str, script: str = "vqa_relations.py") -> tuple[WorldConfig, list, list]:
    """A vqa ablation's world (its revision and vqa thought), its examples drawn again from its seeds, and
    `row`'s texts, one per example; another task's file or one without the row is one line naming `script`."""
    d = json.loads(Path(path).read_text())
    if d.get("task") != "vqa":
        raise SystemExit(f"{script}: {path} is not a vqa ablation (task {d.get('task')!r})")
    texts = d.get("texts", {}).get(row)
    if texts is None:
        rows = ", ".join(d.get("texts", {}))
        raise SystemExit(f"{script}: {path} has no texts for row {row!r}; rows: {rows}")
    world = WorldConfig(revision=d.get("world_revision", 1), vqa_thought=d.get("vqa_thought", "inventory"))
    return world, sample("vqa", range(d["seed_start"], d["seed_start"] + d["n"]), world), texts


def thought_of(entry: dict | None) -> str:
    """The think step's text of one example's entry in an ablation's texts ("" where it has none)."""
    if not entry:
        return ""
    return next((t for s, t in entry.get("steps", []) if s == "think"), "") or ""


def _left_right(q: str, truth: str, own: str, answer: str) -> dict:
    a, asked, b = LR_Q.fullmatch(q).groups()
    t = LR_STEP.search(truth)
    tx = {t[1]: int(t[2]), t[3]: int(t[4])}
    true_rel = t[6] if (t[5], t[7]) == (a, b) else OTHER[t[6]]
    m = LR_STEP.search(own)
    out = {"named": float(bool(m) and {m[1], m[3]} == {a, b}) if m else float(a in own and b in own),
           "relation": 0.0, "order": 0.0, "step": 0.0, "follows": 0.0, "ties": 0.0}
    if not m:
        return out
    ox = {m[1]: int(m[2]), m[3]: int(m[4])}
    if {m[5], m[7]} == {a, b} and m[5] != m[7]:
        rel = m[6] if (m[5], m[7]) == (a, b) else OTHER[m[6]]
        out["relation"] = float(rel == true_rel)
        out["follows"] = float(answer.strip() == ("yes" if rel == asked else "no"))
    out["ties"] = float(set(ox) == {a, b} and ox[a] == ox[b])
    if set(ox) == {a, b}:
        out["x_error"] = float(np.mean([abs(ox[k] - tx[k]) for k in (a, b)]))
        out["order"] = float(ox[a] != ox[b] and (ox[a] < ox[b]) == (tx[a] < tx[b]))
    if m[1] != m[3] and m[2] != m[4] and {m[5], m[7]} == {m[1], m[3]} and m[5] != m[7]:
        left_first = int(m[2]) < int(m[4])  # the first named object lies left of the second by its own numbers
        says = m[6] if m[5] == m[1] else OTHER[m[6]]
        out["step"] = float(says == ("left" if left_first else "right"))
    out["true_x"] = [tx[a], tx[b]]
    return out


def _inventory_tail(own: str, name: str) -> str | None:
    """The own thought's inventory after the item naming `name` ("none" after the last), as the world's
    revision-3 step copies it; None where the inventory is missing or no item of it names `name`."""
    m = INVENTORY.match(own.strip() + " ")
    if not m:
        return None
    items = re.split(r", | and ", m[1])
    at = next((i for i, it in enumerate(items) if f" {name} " in f" {it} "), None)
    if at is None:
        return None
    return L.join(items[at + 1:]) or "none"


def _left_right_listed(q: str, truth: str, own: str, answer: str) -> dict:
    """`_left_right` for the world's revision 3, whose step cites the thought's own inventory."""
    a, asked, b = LR_Q.fullmatch(q).groups()
    t = LEFT_RIGHT_LISTED.search(truth)
    true_rel = t[4] if (t[3], t[5]) == (a, b) else OTHER[t[4]]
    m = LEFT_RIGHT_LISTED.search(own)
    inventory = INVENTORY.match(own.strip() + " ")
    out = {"named": float(bool(m) and {m[3], m[5]} == {a, b}) if m else float(a in own and b in own),
           "listed": float(bool(inventory) and all(f" {n} " in f" {inventory[1]} " for n in (a, b))),
           "relation": 0.0, "copied": 0.0, "step": 0.0, "follows": 0.0}
    if not m:
        return out
    if {m[3], m[5]} == {a, b} and m[3] != m[5]:
        rel = m[4] if (m[3], m[5]) == (a, b) else OTHER[m[4]]
        out["relation"] = float(rel == true_rel)
        out["follows"] = float(answer.strip() == ("yes" if rel == asked else "no"))
    tail = _inventory_tail(own, m[1])
    out["copied"] = float(tail is not None and m[2] == tail)
    if m[1] == m[3] and m[3] != m[5]:  # "after the X the list has: ...; so the X is left of the Y": Y listed
        out["step"] = float(m[4] == ("left" if f" {m[5]} " in f" {m[2]} " else "right"))
    return out


def _closer(q: str, truth: str, own: str, answer: str, measured: bool = False) -> dict:
    a, b = CL_Q.fullmatch(q).groups()
    t = CL_STEP.search(truth)
    td = {t[1]: float(t[2]), t[3]: float(t[4])}
    m = CL_STEP.search(own)
    out = {"named": float(bool(m) and {m[1], m[3]} == {a, b}) if m else float(a in own and b in own),
           "order": 0.0, "follows": 0.0, "ties": 0.0, **({"copied": 0.0} if measured else {})}
    out["true_m"] = [td[a], td[b]]
    if not m:
        return out
    od = {m[1]: float(m[2]), m[3]: float(m[4])}
    if measured:  # both distances the step states are those its own inventory gives the same objects
        inventory = INVENTORY.match(own.strip() + " ")
        listed = dict(MEASURED_ITEM.findall(inventory[1])) if inventory else {}
        out["copied"] = float(m[1] != m[3] and all(listed.get(m[j]) == m[j + 1] for j in (1, 3)))
    out["ties"] = float(set(od) == {a, b} and od[a] == od[b])
    if set(od) == {a, b}:
        out["m_error"] = float(np.mean([abs(od[k] - td[k]) for k in (a, b)]))
        if od[a] != od[b]:
            near = a if od[a] < od[b] else b
            out["order"] = float((od[a] < od[b]) == (td[a] < td[b]))
            out["follows"] = float(answer.strip() == near)
    return out


def relations(path: str | Path, row: str = "+thinking") -> dict:
    """The counts of the module's docstring for one ablation's vqa_scores.json."""
    world, exs, texts = read_ablation(path, row)
    per: dict[str, list[dict]] = {"left_right": [], "closer": []}
    listed = lists_left_right(world)
    for ex, entry in zip(exs, texts, strict=True):
        kind = ex.spec["kind"]
        if kind in per:
            fn = (partial(_closer, measured=world.vqa_thought == "measured") if kind == "closer"
                  else _left_right_listed if listed else _left_right)
            per[kind].append(fn(ex.texts["question"], ex.texts["thinking"], thought_of(entry),
                                (entry or {}).get("output") or ""))
    out = {"file": str(path), "row": row, "world_revision": world.revision}
    for kind, rs in per.items():
        res = {"n": len(rs)}
        for k in ("named", "listed", "relation", "copied", "order", "ties", "step", "follows"):  # those it has
            if rs and k in rs[0]:
                res[k] = int(sum(r[k] for r in rs))
        out[kind] = res
        if kind == "left_right" and listed:  # no numbers read off the image
            continue
        err, truth_key, guess = (("x_error", "true_x", "x_error_centre") if kind == "left_right"
                                 else ("m_error", "true_m", "m_error_mean"))
        read = [r for r in rs if err in r]  # the guess is scored on the same examples as the thoughts' numbers
        res[f"{err}_n"] = len(read)
        res[err] = float(np.mean([r[err] for r in read])) if read else None
        every = np.array([r[truth_key] for r in rs], dtype=float).reshape(-1, 2)
        centre = (world.size - 1) / 2 if kind == "left_right" else float(every.mean()) if len(every) else 0.0
        res[guess] = float(np.abs(np.array([r[truth_key] for r in read]) - centre).mean()) if read else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="omni ablate vqa --out folders, or their vqa_scores.json")
    ap.add_argument("--row", default="+thinking", help="the ablation row whose thoughts are read")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    results = [relations(scores_file(p), a.row) for p in a.paths]
    if a.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        lr, cl = r["left_right"], r["closer"]
        print(f"{r['file']} ({r['row']}, world revision {r['world_revision']})")
        if "copied" in lr:
            print(f"  left_right (n {lr['n']}): named {lr['named']}, both in own inventory {lr['listed']}, relation "
                  f"right {lr['relation']}, list copied from own inventory {lr['copied']}, step from own list "
                  f"{lr['step']}, answer follows {lr['follows']}")
        else:
            print(f"  left_right (n {lr['n']}): named {lr['named']}, relation right {lr['relation']}, x order right "
                  f"{lr['order']} (the same x for both {lr['ties']}), step from own x {lr['step']}, answer follows "
                  f"{lr['follows']}; x error {_num(lr['x_error'])} px over {lr['x_error_n']} (the centre column: "
                  f"{_num(lr['x_error_centre'])})")
        copied = f", distances copied from own inventory {cl['copied']}" if "copied" in cl else ""
        print(f"  closer (n {cl['n']}): named {cl['named']}{copied}, distance order right {cl['order']} (the same "
              f"distance for both {cl['ties']}), answer follows {cl['follows']}; distance error {_num(cl['m_error'])} "
              f"m over {cl['m_error_n']} (the mean: {_num(cl['m_error_mean'])})")
    return 0


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    sys.exit(main())
