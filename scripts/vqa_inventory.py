"""What a model's own VQA inventories get right and wrong, counted from an ablation's texts
(docs/experiments.md, "What the thought is worth where its inventory is right"): the thought's "i see N
objects: a small purple cone on the left, ..." against the world's, word by word.

    python scripts/vqa_inventory.py DIR_OR_vqa_scores.json [...] [--row +thinking] [--json]

Each argument is an `omni ablate vqa --out` folder or its vqa_scores.json; the examples are drawn again
from the seeds, world revision and vqa thought it records. Per ablation, over the examples whose true
thought has an inventory (n):

- `listing`: the inventory right, every object in order and every word (`think:listing` of `omni ablate
  vqa`), and `listing_by_objects`: the same per number of objects in the image (right, of);
- `count`: as many objects listed as the image has;
- `in_place`: where it lists as many, each object's `size`, `colour`, `shape` and `position` word against
  the world's object at the same place in the list, and `object` all four (shares of those objects);
- `recalled`: order aside, the share of the world's objects whose `colour`, `shape`, `colour+shape` and
  `size+colour+shape` the inventory lists (as bags of words);
- `by_pixels`: the shape and colour in place by the object's visible pixels ("10-20": at least 10 and
  fewer than 20);
- `confusion`: the world's shape -> the shape listed in its place, where the colour there is right;
- `colour_shape`: per image, the share of the colours exactly one object has whose object the inventory
  lists alone under that colour with the right shape (the colour must be read right too), and
  `colour_shape_all`: every such colour right; what `python -m omni.eval.probe --task shape` scores from
  the pixels.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from vqa_relations import read_ablation, scores_file, thought_of  # this folder's: the same ablation files

from omni.eval.run import close_text
from omni.world import language as L
from omni.world.scene import COLORS, SHAPES
from omni.world.tasks import vqa_inventory

SCRIPT = "vqa_inventory.py"

ITEM = re.compile(r"an? ([a-z]+) ([a-z]+) ([a-z]+) (on the left|in the center|on the right)")
WORDS = ("size", "colour", "shape", "position")
PIXEL_BINS = (0, 10, 20, 40, 80)


def _bin(pixels: int) -> str:
    lo = max(b for b in PIXEL_BINS if b <= pixels)
    i = PIXEL_BINS.index(lo)
    return f"{lo}-{PIXEL_BINS[i + 1]}" if i + 1 < len(PIXEL_BINS) else f"{lo}+"


def inventories(path: str | Path, row: str = "+thinking") -> dict:
    """The counts of the module's docstring for one ablation's vqa_scores.json."""
    world, exs, texts = read_ablation(path, row, SCRIPT)
    c: Counter = Counter()
    by_objects: dict[int, list[int]] = {}
    by_pixels: dict[str, Counter] = {}
    confusion = {s: dict.fromkeys(SHAPES, 0) for s in SHAPES}
    colour_shape, colour_shape_all = [], []
    for ex, entry in zip(exs, texts, strict=True):
        truth = vqa_inventory(ex.texts["thinking"])
        if not truth:  # a focused thought lists nothing
            continue
        own = vqa_inventory(thought_of(entry))
        stats = L.by_position(ex.stats("image"))
        world_items = [(s.obj.size, s.obj.color, s.obj.shape, L.horizontal_word(s, world.size)) for s in stats]
        said = ITEM.findall(own)
        right = close_text(own, truth, metres=math.inf)
        c["n"] += 1
        c["listing"] += right
        by_objects.setdefault(len(stats), [0, 0])
        by_objects[len(stats)][0] += right
        by_objects[len(stats)][1] += 1
        c["count"] += len(said) == len(stats)
        if len(said) == len(stats):
            for s, x, y in zip(stats, said, world_items, strict=True):
                c["placed"] += 1
                hits = [a == b for a, b in zip(x, y, strict=True)]
                for w, h in zip(WORDS, hits, strict=True):
                    c[f"in_place {w}"] += h
                c["in_place object"] += all(hits)
                b = by_pixels.setdefault(_bin(s.pixels), Counter())
                b["n"] += 1
                b["shape"] += hits[2]
                b["colour"] += hits[1]
                if hits[1] and y[2] in confusion and x[2] in confusion[y[2]]:
                    confusion[y[2]][x[2]] += 1
        for name, keys in (("colour", (1,)), ("shape", (2,)), ("colour+shape", (1, 2)),
                           ("size+colour+shape", (0, 1, 2))):
            a, b = (Counter(tuple(it[k] for k in keys) for it in items) for items in (said, world_items))
            c[f"recalled {name}"] += sum((a & b).values())
        c["objects"] += len(world_items)
        asked = [(col, [o.shape for o in ex.scenes["main"].objects if o.color == col]) for col in COLORS]
        asked = [(col, have[0]) for col, have in asked if len(have) == 1]
        if asked:
            listed = [[it[2] for it in said if it[1] == col] for col, _ in asked]
            hits = [len(got) == 1 and got[0] == shape for got, (_, shape) in zip(listed, asked, strict=True)]
            colour_shape.append(float(np.mean(hits)))
            colour_shape_all.append(float(all(hits)))
    n, placed, objects = c["n"], c["placed"], c["objects"]
    return {"file": str(path), "row": row, "world_revision": world.revision, "vqa_thought": world.vqa_thought,
            "n": n, "listing": c["listing"] / n if n else None,
            "listing_by_objects": {str(k): v for k, v in sorted(by_objects.items())},
            "count": c["count"] / n if n else None,
            "in_place": {w: c[f"in_place {w}"] / placed if placed else None for w in (*WORDS, "object")},
            "placed_objects": placed,
            "recalled": {k: c[f"recalled {k}"] / objects if objects else None
                         for k in ("colour", "shape", "colour+shape", "size+colour+shape")},
            "by_pixels": {k: {"n": v["n"], "shape": v["shape"] / v["n"], "colour": v["colour"] / v["n"]}
                          for k, v in sorted(by_pixels.items(), key=lambda kv: int(kv[0].split("-")[0].rstrip("+")))},
            "confusion": confusion,
            "colour_shape": float(np.mean(colour_shape)) if colour_shape else None,
            "colour_shape_all": float(np.mean(colour_shape_all)) if colour_shape_all else None,
            "colour_shape_images": len(colour_shape)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="omni ablate vqa --out folders, or their vqa_scores.json")
    ap.add_argument("--row", default="+thinking", help="the ablation row whose thoughts are read")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    results = [inventories(scores_file(p, SCRIPT), a.row) for p in a.paths]
    if a.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        if not r["n"]:
            print(f"{r['file']}: no inventories (a focused thought lists none)")
            continue
        pct = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
        print(f"{r['file']} ({r['row']}, world revision {r['world_revision']}, {r['vqa_thought']} thought, n {r['n']})")
        print(f"  inventory right {pct(r['listing'])} %; by objects in the image: " + ", ".join(
            f"{k}: {v[0]}/{v[1]}" for k, v in r["listing_by_objects"].items()))
        print(f"  count right {pct(r['count'])} %; in place (of {r['placed_objects']} objects): " + ", ".join(
            f"{k} {pct(v)}" for k, v in r["in_place"].items()) + " %")
        print("  recalled, order aside: " + ", ".join(f"{k} {pct(v)}" for k, v in r["recalled"].items()) + " %")
        print("  in place by visible pixels: " + "; ".join(
            f"{k} px (n {v['n']}): shape {pct(v['shape'])}, colour {pct(v['colour'])}"
            for k, v in r["by_pixels"].items()))
        print("  shape confusion (world -> listed, colour right): " + "; ".join(
            f"{s}: " + " ".join(str(v) for v in row.values()) for s, row in r["confusion"].items())
              + f" (columns {' '.join(SHAPES)})")
        print(f"  each colour's one object's shape: {pct(r['colour_shape'])} % (every one right "
              f"{pct(r['colour_shape_all'])} %, {r['colour_shape_images']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
