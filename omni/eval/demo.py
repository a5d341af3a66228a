"""`omni demo`: every task once on a held-out example with its default plan, one contact sheet of the
inputs, the unrolled context (texts, visual-token previews, synthesized views), the output and the
ground truth, and the traces as JSON."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from omni.io import atomic_write_bytes
from omni.unroll.engine import DEFAULT_PLAN, Engine
from omni.unroll.trace import json_safe
from omni.world import SPLITS, sample
from omni.world.export import colorize_depth, ensure_writable_dir, to_uint8

from .run import EVAL_TASKS, eval_world, inputs_of, score

TILE = 96


def _tile(img: np.ndarray, label: str, font) -> Image.Image:
    im = Image.fromarray(to_uint8(img))
    w = TILE * im.width // max(im.height, 1)
    im = im.resize((w, TILE), Image.NEAREST)
    out = Image.new("RGB", (w, TILE + 12), "white")
    out.paste(im, (0, 0))
    ImageDraw.Draw(out).text((1, TILE), label[: w // 6], fill="black", font=font)
    return out


def demo(engine: Engine, out: str | Path, seed: int = SPLITS["test"][0], tasks=EVAL_TASKS,
         revision: int = 1) -> dict:
    """Each of `tasks` once on the example of `seed` in the world's `revision`, at the model's image size:
    the contact sheet at `out`, the traces (each with its score, and `world_revision` where it is not 1)
    beside it as JSON; returns the traces."""
    out = Path(out)
    eval_world(tasks[0], revision=revision)  # an unknown revision before any run
    ensure_writable_dir(out.parent)  # before the runs: an unwritable place fails first, not after all eight
    font = ImageFont.load_default()
    rows, traces = [], {}
    for task in tasks:
        ex = sample(task, [seed], eval_world(task, size=engine.model.cfg.image_size, revision=revision))[0]
        res = engine.run(inputs_of(ex), DEFAULT_PLAN[task])
        tiles = [_tile(v, k, font) for k, v in inputs_of(ex).images.items()]
        rev = f"  (world revision {revision})" if revision != 1 else ""
        lines = [f"{task}  plan: {', '.join(res.plan) or 'direct'}{rev}", f"input: {inputs_of(ex).text}"]
        for it in res.items[1:]:
            if it.image is not None:
                tiles.append(_tile(it.image, it.step, font))
            if it.text:
                lines.append(f"{it.step}: {it.text}")
        o = res.output
        if o.image is not None:
            tiles.append(_tile(o.image, "output", font))
        if o.kind == "depth":
            d = o.data["depth"]
            tiles.append(_tile(colorize_depth(d, np.ones_like(d, dtype=bool)), "depth out", font))
            gt = ex.views["image"]
            tiles.append(_tile(colorize_depth(gt.depth, gt.valid), "depth gt", font))
        if o.text:
            lines.append(f"output: {o.text}")
        for name in ("target", "after", "frame1"):
            if name in ex.views and o.image is not None:
                tiles.append(_tile(ex.views[name].rgb, f"gt {name}", font))
        if ex.answer is not None:
            lines.append(f"ground truth: {ex.answer}")
        scores = score(ex, res)
        lines.append("score: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        traces[task] = {**res.trace(), "seed": seed, **({"world_revision": revision} if revision != 1 else {}),
                        "score": scores}
        wrapped = [w for line in lines for w in textwrap.wrap(line, 90)]
        width = sum(t.width + 4 for t in tiles) + 560
        row = Image.new("RGB", (width, max(TILE + 16, 12 * len(wrapped) + 8)), "white")
        x = 0
        for t in tiles:
            row.paste(t, (x, 2))
            x += t.width + 4
        d = ImageDraw.Draw(row)
        for i, line in enumerate(wrapped):
            d.text((x + 6, 4 + 12 * i), line, fill="black", font=font)
        rows.append(row)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 6 for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 6
    sheet.save(out)
    atomic_write_bytes(out.with_suffix(".json"), json.dumps(json_safe(traces), indent=2, allow_nan=False).encode())
    return traces
