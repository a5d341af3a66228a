"""What the world's default examples give away, counted (docs/world_audit.md): the answers and prompts
a model can learn without the images, and the grammar slips it is trained to write.

    python scripts/world_skews.py [--n 1000] [--seed-start 2000000000] [--revision 1] [--json]

Counted over n consecutive seeds of one split at size 32, in the world's revision 1 (the shipped
model's world) or 2 (which mends these; WorldConfig.revision):
- spatial: each question type's answers (in revision 1 camera_object's are never behind the camera), and
  the object_object questions whose answer is not the leftmost object of the scene (5-6 objects, 4 offered);
- t2i: prompt categories, the counting prompts' numbers, the position prompts' relations, and the
  number of objects the math prompts ask for (in revision 1 redrafts skew them toward 1);
- grammar: "a" before a vowel sound in t2i texts, "1 of them are" and "there are 1 " in vqa thoughts,
  "-0.0" in spatial thoughts.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter

from omni.world import WorldConfig, sample
from omni.world.tasks import _in_frame, split_of_range

NUMBERS = ("one", "two", "three", "four", "five", "six")


def skews(n: int, seed_start: int, revision: int = 1) -> dict:
    split_of_range(seed_start, n)  # the seeds must lie in one split
    seeds = range(seed_start, seed_start + n)
    world = WorldConfig(size=32, revision=revision)
    out: dict = {"n": n, "seed_start": seed_start, "revision": revision}

    answers: dict[str, Counter] = {}
    not_leftmost = minus_zero = 0
    for ex in sample("spatial", seeds, world):
        q = ex.spec["qtype"]
        minus_zero += bool(re.search(r"-0\.0(?!\d)", ex.texts["thinking"]))
        if q != "object_object":
            answers.setdefault(q, Counter())[ex.spec["answer_text"]] += 1
            continue
        w2c = ex.views["view2"].w2c
        lean = {o.name: math.atan2(*_in_frame(w2c, o.center)) for o in ex.scenes["main"].objects}
        not_leftmost += min(lean, key=lean.get) != ex.spec["answer_text"]
    out["spatial"] = {"answers": {q: dict(c.most_common()) for q, c in sorted(answers.items())},
                      "object_object_answer_not_leftmost_of_scene": not_leftmost,
                      "thoughts_with_minus_zero": minus_zero}

    cats, counting, position, math_objects = Counter(), Counter(), Counter(), Counter()
    vowel = 0
    for ex in sample("t2i", seeds, world):
        cat, prompt = ex.spec["category"], ex.texts["prompt"]
        cats[cat] += 1
        if cat == "counting":
            counting[re.match(r"a photo of (\w+)", prompt)[1]] += 1
        elif cat == "position":
            position[re.search(r"left of|right of|above|below", prompt)[0]] += 1
        elif cat == "math":
            math_objects[len(ex.scenes["main"].objects)] += 1
        vowel += any(re.search(r"\ba [aeiou]", ex.texts[k]) for k in ("short", "long"))
    out["t2i"] = {"categories": dict(sorted(cats.items())), "counting_numbers": dict(sorted(
        counting.items(), key=lambda kv: NUMBERS.index(kv[0]) if kv[0] in NUMBERS else 99)),
        "position_relations": dict(sorted(position.items())),
        "math_objects_drawn": dict(sorted(math_objects.items())),
        "texts_with_a_before_a_vowel": vowel}

    of_them = there_are_1 = 0
    for ex in sample("vqa", seeds, world):
        t = ex.texts["thinking"]
        of_them += bool(re.search(r"\b1 of them are\b", t))
        there_are_1 += bool(re.search(r"\bthere are 1 ", t))
    out["vqa"] = {"thoughts_with_1_of_them_are": of_them, "thoughts_with_there_are_1": there_are_1}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed-start", type=int, default=2_000_000_000)
    ap.add_argument("--revision", type=int, default=1, help="the world's revision (1: the shipped model's)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the indented report")
    a = ap.parse_args(argv)
    if a.n <= 0:
        ap.error(f"--n must be positive, got {a.n}")
    try:
        r = skews(a.n, a.seed_start, a.revision)
    except ValueError as e:
        ap.error(str(e))
    print(json.dumps(r) if a.json else json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
