"""From a request to the engine's `Inputs`: world seeds, uploaded images, texts, plans, and the
context budget. Every problem is an `InputError` carrying the HTTP status and a clear message."""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from omni.unroll.engine import TASK_INPUTS, Engine, Inputs, parse_plan

from .schemas import MAX_IMAGE_SIDE, UnrollRequest

PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
CONVERTIBLE_MODES = ("RGB", "L", "P", "RGBA", "LA")


class InputError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Prepared:
    """A validated request: the engine's inputs, the plan's steps and, for a world seed, the example."""

    inputs: Inputs
    steps: list[str]
    seed: int | None
    example: object | None = None


def decode_image(name: str, b64: str, size: int) -> np.ndarray:
    """A base64 PNG/JPEG -> (size, size, 3) float32 in [0, 1] (center square crop, then resize)."""
    s = b64.strip()
    if s.startswith("data:"):
        head, _, s = s.partition(",")
        if not head.endswith(";base64"):
            raise InputError(400, "bad_image", f"image {name!r}: a data URL must be base64 (data:image/png;base64,...)")
    s = "".join(s.split())  # line breaks (`base64` wraps at 76 columns, as MIME does) and spaces carry nothing
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(400, "bad_image", f"image {name!r} is not valid base64") from None
    if not (raw.startswith(PNG_MAGIC) or raw.startswith(JPEG_MAGIC)):
        raise InputError(400, "bad_image", f"image {name!r} must be a PNG or JPEG file")
    try:
        im = Image.open(io.BytesIO(raw), formats=["PNG", "JPEG"])
        w, h = im.size
        if w > MAX_IMAGE_SIDE or h > MAX_IMAGE_SIDE or w < 1 or h < 1:
            raise InputError(400, "bad_image", f"image {name!r} is {w} x {h}; at most {MAX_IMAGE_SIDE} x "
                                               f"{MAX_IMAGE_SIDE} pixels")
        if im.mode not in CONVERTIBLE_MODES:
            raise InputError(400, "bad_image", f"image {name!r} has mode {im.mode}; send RGB (or grayscale, "
                                               "palette, or opaque RGBA)")
        im.load()
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(400, "bad_image", f"image {name!r} cannot be decoded: {e}") from None
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min() < 255:
            raise InputError(400, "bad_image", f"image {name!r} has transparent pixels; send an opaque RGB image")
    im = im.convert("RGB")
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(im, dtype=np.float32) / 255.0


def prepare(req: UnrollRequest, engine: Engine, world_size: int) -> Prepared:
    """Validate a request against the task and the model; nothing is run yet."""
    task = req.task
    slots, text_role = TASK_INPUTS[task]
    given = {k: v for k, v in (req.images.model_dump() if req.images else {}).items() if v is not None}
    example = None
    if req.seed is None and req.world_revision != 1:
        raise InputError(400, "bad_input", "`world_revision` chooses the world a `seed` draws from; uploaded "
                                           "images and text have none")
    if req.seed is not None:
        if given or req.text is not None:
            raise InputError(400, "bad_input", "give either `seed` (a world example) or `images` / `text`, not both")
        from omni.eval.run import inputs_of
        from omni.world import WorldConfig, sample
        from omni.world.tasks import split_of

        try:
            split_of(req.seed)
        except ValueError as e:
            raise InputError(400, "bad_input", str(e)) from None

        example = sample(task, [req.seed], WorldConfig(size=world_size, revision=req.world_revision))[0]
        inputs = inputs_of(example)
    else:
        extra = sorted(set(given) - set(slots))
        if extra:
            raise InputError(400, "bad_input", f"task {task} takes no image {', '.join(map(repr, extra))}; it takes "
                                               f"{', '.join(slots) or 'no images'}")
        missing = [s for s in slots if s not in given]
        if missing:
            raise InputError(400, "bad_input", f"task {task} needs image(s) {', '.join(missing)} (or a world `seed`)")
        text = (req.text or "").strip()
        if text_role is None and text:
            raise InputError(400, "bad_input", f"task {task} takes no text")
        if text_role is not None and not text:
            raise InputError(400, "bad_input", f"task {task} needs `text`: the {text_role} (or a world `seed`)")
        images = {k: decode_image(k, given[k], engine.model.cfg.image_size) for k in slots}
        inputs = Inputs(task, images, text)
    try:
        inputs = engine.check_inputs(inputs)
    except (TypeError, ValueError) as e:
        raise InputError(400, "bad_input", str(e)) from None
    try:
        steps = parse_plan(task, "default" if req.plan is None else req.plan, inputs)
    except ValueError as e:
        raise InputError(400, "bad_plan", str(e)) from None
    try:
        engine.check_fits(inputs, steps)
    except ValueError as e:
        raise InputError(400, "context_too_long", str(e)) from None
    return Prepared(inputs, steps, req.seed, example)
