"""Writing an unrolled run to disk: the output, every intermediate image and trace.json."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image

from omni.world.export import to_uint8

from .engine import Result

# the files a trace writes beside trace.json; those an earlier trace in the same directory wrote and this
# one does not are removed, so that the directory holds one run
_TRACE_FILE = re.compile(r"(step_\d+_\w+|output)(_depth)?\.(png|npy)")


def _png(img: np.ndarray, path: Path) -> str:
    Image.fromarray(to_uint8(img)).save(path)  # as the server converts it (a uint8 image was clipped to 0/255)
    return path.name


def _depth(item, rec: dict, out: Path, stem: str) -> None:
    """An item's depth map (kind "depth", data["depth"] in metres), if it has one: stem.npy and stem.png,
    coloured over its finite pixels as the server colours them (one infinite pixel made every pixel NaN,
    black), named in its record as "depth" and "image" (a step's own image stays its "image" where it has
    one, the colours then under "depth_image")."""
    from omni.world.export import colorize_depth

    if item.kind != "depth" or "depth" not in item.data:
        return
    d = np.asarray(item.data["depth"], dtype=np.float32)
    np.save(out / f"{stem}.npy", d)
    Image.fromarray(colorize_depth(d, np.isfinite(d))).save(out / f"{stem}.png")
    rec["depth"] = f"{stem}.npy"
    rec["depth_image" if rec.get("image") and stem != "output" else "image"] = f"{stem}.png"


def json_safe(x):
    """x as strict JSON can hold it, recursively: NaN and infinities become null (json.dumps wrote NaN and
    Infinity, which JSON parsers refuse: an infinite PSNR in a trace's score), numpy scalars and arrays and
    tensors Python numbers and lists, keys strings."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, np.generic):  # arrays and tensors
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_trace(res: Result, out_dir: str | Path, extra: dict | None = None) -> Path:
    """out_dir/trace.json: the task, the plan, each step (primitive, text, tokens added, seconds,
    image file) and the output; images as step_<i>_<primitive>.png and output.png. A depth map, the
    output's or a step's (a user primitive may make one), is written in metres as output.npy
    (step_<i>_<primitive>_depth.npy) and colorized as output.png (step_<i>_<primitive>_depth.png, beside
    the step's own image if it has one), as the server writes them. Such files an earlier trace left in
    out_dir that this run does not write are removed (other files are left alone)."""
    from omni.io import atomic_write_bytes
    from omni.world.export import ensure_writable_dir

    out = ensure_writable_dir(out_dir)
    trace = res.trace()
    for i, (item, rec) in enumerate(zip(res.items, trace["steps"], strict=True)):
        if item.image is not None:
            rec["image"] = _png(item.image, out / f"step_{i}_{item.step}.png")
        _depth(item, rec, out, f"step_{i}_{item.step}_depth")
    o = res.output
    if o.image is not None:
        trace["output"]["image"] = _png(o.image, out / "output.png")
    _depth(o, trace["output"], out, "output")
    trace.update(extra or {})
    atomic_write_bytes(out / "trace.json", json.dumps(json_safe(trace), indent=2, allow_nan=False).encode())
    written = {rec[k] for rec in (*trace["steps"], trace["output"]) for k in ("image", "depth", "depth_image")
               if rec.get(k)}
    for f in out.iterdir():
        if f.is_file() and _TRACE_FILE.fullmatch(f.name) and f.name not in written:
            f.unlink()
    return out / "trace.json"
