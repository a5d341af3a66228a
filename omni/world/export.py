"""Writing world examples to disk (PNG, .npy, JSONL) and contact sheets a person can look at."""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .tasks import Example, WorldConfig


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """An image as uint8 pixels: floats in [0, 1] rounded (clipped; NaN as 0), uint8 as it is. The one
    conversion of every image the project writes (world renders, traces, the server's artifacts)."""
    rgb = np.asarray(rgb)
    if rgb.dtype == np.uint8:
        return rgb
    return (np.clip(np.nan_to_num(rgb, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize_depth(depth: np.ndarray, valid: np.ndarray | None = None, cmap: str = "turbo") -> np.ndarray:
    """(H, W, 3) uint8: near = warm ... far = cool on the valid pixels (per-image range), black elsewhere."""
    from matplotlib import colormaps

    valid = np.isfinite(depth) if valid is None else valid
    out = np.zeros((*depth.shape, 3), dtype=np.uint8)
    if valid.any():
        d = depth[valid]
        lo, hi = float(d.min()), float(d.max())
        x = (hi - depth[valid]) / max(hi - lo, 1e-6)
        out[valid] = (colormaps[cmap](x)[:, :3] * 255.0 + 0.5).astype(np.uint8)
    return out


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and prove it can be written to; OSError with the path otherwise (an
    empty name too: it would have been the current directory)."""
    if not str(path).strip():
        raise OSError("an output directory is needed, got an empty name")
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        # a probe of its own: two processes writing into one directory (two ablations' rows, say)
        # once shared one name, and one's unlink made the other report the directory unwritable
        fd, probe = tempfile.mkstemp(prefix=".omni_write_test", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(f"cannot write to output directory {str(p)!r}: {e.strerror or e}") from None
    return p


def save_examples(examples: list[Example], out_dir: str | Path, world: WorldConfig | None = None) -> Path:
    """Per view: `<task>_<seed>_<view>.png`, `..._depth.png` (colorized), `..._depth.npy` (float32
    metres, background = DEPTH_FAR), `..._ids.npy` (int16 instance ids); and `examples.jsonl` with
    texts, answers, specs, scenes, intrinsics and extrinsics and the file names. With `world`, the
    config the examples were drawn from (its size, scene options, revision, ...) goes beside them as
    `world.json`, so they can be drawn again: `WorldConfig.from_dict(json.load(...))`."""
    seen = set()
    for ex in examples:  # files are named by (task, seed): a repeat would overwrite the first's images
        if (ex.task, ex.seed) in seen:
            raise ValueError(f"two examples share task {ex.task!r} and seed {ex.seed}: their files would collide")
        seen.add((ex.task, ex.seed))
    out = ensure_writable_dir(out_dir)
    with open(out / "examples.jsonl", "w") as f:
        for ex in examples:
            rec = ex.to_json()
            for name, v in ex.views.items():
                stem = f"{ex.task}_{ex.seed}_{name}"
                Image.fromarray(to_uint8(v.rgb)).save(out / f"{stem}.png")
                Image.fromarray(colorize_depth(v.depth, v.valid)).save(out / f"{stem}_depth.png")
                np.save(out / f"{stem}_depth.npy", v.depth.astype(np.float32))
                np.save(out / f"{stem}_ids.npy", v.ids.astype(np.int16))
                rec["views"][name]["files"] = {"rgb": f"{stem}.png", "depth": f"{stem}_depth.npy",
                                               "depth_png": f"{stem}_depth.png", "ids": f"{stem}_ids.npy"}
            f.write(json.dumps(rec) + "\n")
    if world is not None:
        (out / "world.json").write_text(json.dumps(world.to_dict(), indent=1) + "\n")
    return out


def contact_sheet(examples: list[Example], path: str | Path, tile: int = 128, max_views: int = 8,
                  text_width: int = 420) -> Path:
    """One row per example: its views (and the first view's depth), then its texts."""
    if not examples:
        raise ValueError("a contact sheet needs at least one example, got none")
    font = ImageFont.load_default()
    pad = 6
    rows = []
    for ex in examples:
        names = list(ex.views)[:max_views]
        first = ex.views[names[0]]
        tiles = [Image.fromarray(to_uint8(ex.views[n].rgb)).resize((tile, tile), Image.NEAREST) for n in names]
        tiles.append(Image.fromarray(colorize_depth(first.depth, first.valid)).resize((tile, tile), Image.NEAREST))
        labels = names + [f"{names[0]} depth"]
        lines = [f"{ex.task} seed {ex.seed}"]
        for k, v in ex.texts.items():
            lines += textwrap.wrap(f"{k}: {v}", width=text_width // 6)
        if ex.answer is not None and "answer" not in ex.texts:
            lines.append(f"answer: {ex.answer}")
        h = max(tile + 14, 12 * len(lines) + 2 * pad)
        row = Image.new("RGB", (len(tiles) * (tile + pad) + text_width, h), "white")
        d = ImageDraw.Draw(row)
        for i, (t, lab) in enumerate(zip(tiles, labels, strict=True)):
            row.paste(t, (i * (tile + pad), 0))
            d.text((i * (tile + pad), tile + 1), lab, fill="black", font=font)
        x0 = len(tiles) * (tile + pad)
        for i, line in enumerate(lines):
            d.text((x0, pad + 12 * i), line, fill="black", font=font)
        rows.append(row)
    W = max(r.width for r in rows)
    sheet = Image.new("RGB", (W, sum(r.height + pad for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + pad
    path = Path(path)
    ensure_writable_dir(path.parent if str(path.parent) else ".")
    sheet.save(path)
    return path
