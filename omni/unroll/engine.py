"""Context Unrolling: C_0 = x; C_{t+1} = C_t (+) phi_t(x, C_t); y = psi(x | C_T).

A `Workspace` is the ordered, typed record of the context — the input, then each primitive's result
— and owns the model's KV cache for it: appending a result extends the cache, nothing already in
context is encoded again, and `fork()` copies the encoded prefix (CFG branches, ablation rows).
A primitive is a named function (engine, workspace) -> Item that makes the model produce a piece of
context and appends it; the registry is open (`register`). A plan is a list of primitive names
(or a string "think_long,rollout_visual"); the decoder of the task then produces the output.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from omni.model import KVCache, OmniModel, Segment, extend
from omni.model.batch import MIN_SHIFT
from omni.model.cache import RecomputingCache
from omni.model.config import TEXT
from omni.model.sampling import check_cfg_interval, generate_tokens, sample_latents
from omni.model.transformer import decode_step
from omni.tokens.image import as_unit_rgb, unpatchify
from omni.world.camera import numbers_to_text, text_to_pose

from .format import BLOCKS, SOURCE_VIEW, VIEW_TAGS, Format

POSE_TEXT_LIMIT = 999.999  # the largest number the pose head writes (Workspace.write_pose)
TASK_TAGS = {t: f"<{t}>" for t in ("vqa", "t2i", "spatial", "depth", "pose", "nvs", "video", "edit")}
# the images each task takes (names as in omni.eval.run.inputs_of) and what its text is (None: it has none)
TASK_INPUTS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "vqa": (("image",), "question"), "t2i": ((), "prompt"), "spatial": (("view1", "view2"), "question"),
    "depth": (("image",), None), "pose": (("view1", "view2"), None), "nvs": (("source",), "instruction"),
    "video": (("frame0",), "caption"), "edit": (("before",), "instruction"),
}


@dataclass
class Item:
    """One entry of the workspace: what was added, by which step, at what cost."""

    step: str  # "input", a primitive name, or "output"
    kind: str  # "text", "image", "visual", "pose", "depth"
    text: str | None = None
    image: np.ndarray | None = None  # (H, W, 3) in [0, 1]
    tokens: int = 0  # tokens this step added to the context
    seconds: float = 0.0
    data: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """JSON-ready record; arrays (images, depth maps) are left out (they are files in a trace)."""
        data = {k: v for k, v in self.data.items() if not isinstance(v, np.ndarray)}
        return {"step": self.step, "kind": self.kind, "text": self.text, "tokens": self.tokens,
                "seconds": round(self.seconds, 4), **({"data": data} if data else {})}


@dataclass
class Inputs:
    """What a task starts from: images (named), a prompt / question / instruction, and for oracle
    rows the world's ground truth."""

    task: str
    images: dict[str, np.ndarray] = field(default_factory=dict)
    text: str = ""
    oracle: str | None = None


class Workspace:
    """The context of one run: its items, the segments encoded so far (the record) and the KV cache
    holding them. Every change of the context goes through `append` / `record`, so the same context
    can be re-encoded from its record (`rebuild`) — the baseline the cache is measured against."""

    def __init__(self, engine: Engine, inputs: Inputs):
        self.engine, self.inputs = engine, inputs
        self.cache = engine.new_cache()
        self.items: list[Item] = []
        self.record: list[Segment | str] = []  # segments, or "advance" for a generated image's position
        self.decoded = False  # the output's tokens are in the context: fork before decoding again

    def append(self, segments: Sequence[Segment]) -> int:
        """Encode segments into the cache (stored); returns the number of tokens added."""
        before = self.cache.length
        extend(self.engine.model, self.cache, list(segments))
        self.record += list(segments)
        return self.cache.length - before

    def advance(self) -> None:
        """A generated image took a position without entering the context."""
        self.cache.advance()
        self.record.append("advance")

    def rebuild(self) -> None:
        """Re-encode the whole context from its record into a fresh cache (the per-primitive baseline)."""
        cache = self.engine.new_cache()
        cache.replay(self.engine.model, [[[r]] if isinstance(r, Segment) else None for r in self.record])
        self.cache = cache

    def fork(self) -> Workspace:
        """A workspace with this one's context (its cache's filled prefix copied, its items and record), to
        run another plan on without touching this one. What forks share is the engine, and with it the
        engine's random generator: a sampled step in one fork advances it for the next, so a fork's samples
        depend on what ran before it (`omni ablate` runs its rows in one order, so its tables reproduce;
        a row run alone draws other noise than in the whole table)."""
        ws = Workspace.__new__(Workspace)
        ws.engine, ws.inputs = self.engine, self.inputs
        ws.cache = self.cache.fork()
        ws.items = list(self.items)
        ws.record = list(self.record)
        ws.decoded = self.decoded
        return ws

    def generate_block(self, name: str, max_new: int) -> tuple[str, int]:
        """Open block `name` and let the model write it until its closing tag (or max_new)."""
        fmt = self.engine.fmt
        open_tag, close_tag = BLOCKS[name]
        before = self.cache.length
        self.append([fmt.tags(open_tag)])
        close = fmt.tok.id(close_tag)
        stop = [close, fmt.tok.eos]
        ids = generate_tokens(self.engine.model, self.cache, max_new, "text", stop=stop,
                              **self.engine.sampling("text"))[0]
        # generated tokens are in the cache except a final stop token; the closing tag always goes
        # in, as in training (also when the block was cut at max_new or ended with <eos>)
        decode_step(self.engine.model, self.cache, torch.tensor([close]), TEXT)
        body = [i for i in ids if i not in stop]
        self.record.append(Segment("text", body + [close]))
        return fmt.tok.decode(body).strip(), self.cache.length - before

    def write_pose(self) -> tuple[str, int]:
        """<campose> tx ty tz rx ry rz </campose>: the text the model decodes, by default; where the
        model has a pose head and the engine's pose_decoder is "head", the head's numbers, read off
        the opening tag's hidden state and written as the world writes pose texts (the same tokens
        as in training). Returns the pose text and the tokens added."""
        engine, fmt = self.engine, self.engine.fmt
        if not (engine.model.cfg.pose_head and engine.pose_decoder == "head"):
            return self.generate_block("campose", 60)
        before = self.cache.length
        self.append([fmt.tags("<campose>")])
        with torch.no_grad():
            vals = engine.model.pose(self.cache.last_hidden[:1]).float()[0].cpu().numpy()
        # within ±999.999 (metres, radians: the world's lie within ±10) a pose text keeps to the 62 tokens
        # context_bound allows it; a diverged head's 1e9 wrote 90 (NaN stays NaN: the text does not parse)
        text = numbers_to_text(np.clip(vals, -POSE_TEXT_LIMIT, POSE_TEXT_LIMIT))
        self.append([Segment("text", fmt.tok.encode(" " + text) + fmt.ids("</campose>"))])
        return text, self.cache.length - before

    def generate_visual(self, n: int) -> list[int]:
        """n visual tokens written by the model (all enter the context)."""
        codes = generate_tokens(self.engine.model, self.cache, n, "visual", **self.engine.sampling("visual"))[0]
        self.record.append(Segment("visual", codes))
        return codes

    def trace(self) -> list[dict]:
        return [it.to_json() for it in self.items]


Primitive = Callable[["Engine", Workspace], Item]
PRIMITIVES: dict[str, Primitive] = {}
NEEDS: dict[str, Callable[[Inputs], str | None]] = {}  # primitive -> check of its inputs (error text)


def register(name: str, needs: Callable[[Inputs], str | None] | None = None):
    """Decorator adding a primitive to the registry (`needs` says what inputs it requires)."""

    if not isinstance(name, str) or not name or not all(c.isalnum() or c == "_" for c in name):
        raise ValueError(f"a primitive's name is letters, digits and _ (it names trace files and plan steps), "
                         f"got {name!r}" + (" (write @register(\"name\"), with the name)" if callable(name) else ""))

    def deco(fn: Primitive) -> Primitive:
        if not callable(fn):
            raise TypeError(f"register({name!r}) decorates a function (engine, workspace) -> Item, got {fn!r}")
        PRIMITIVES[name] = fn
        NEEDS[name] = needs or (lambda _inputs: None)
        return fn

    return deco


PLANS: dict[str, dict[str, list[str]]] = {
    "vqa": {"direct": [], "+thinking": ["think"]},
    "t2i": {"baseline": [], "+short": ["think"], "+long": ["think_long"], "+visual": ["rollout_visual"],
            "+short+visual": ["think", "rollout_visual"], "+long+visual": ["think_long", "rollout_visual"],
            "+oracle": ["oracle_text"], "+oracle+visual": ["oracle_text", "rollout_visual"]},
    "spatial": {"baseline": [], "+thinking": ["think"], "+pose text": ["estimate_pose"],
                "+novel views": ["estimate_pose", "synthesize_views", "think"]},
    "depth": {"baseline": [], "+detailed caption": ["describe"], "+depth caption": ["depth_caption"],
              "+depth caption+visual": ["depth_caption", "rollout_visual"]},
    "pose": {"direct": []}, "nvs": {"direct": []}, "video": {"direct": []}, "edit": {"direct": []},
}
# the paper's schedule of each task (the last row of its table, oracle rows aside)
DEFAULT_PLAN = {"vqa": ["think"], "t2i": ["think_long", "rollout_visual"],
                "spatial": ["estimate_pose", "synthesize_views", "think"], "depth": ["depth_caption", "rollout_visual"],
                "pose": [], "nvs": [], "video": [], "edit": []}


ROW_NAMES = {name for rows in PLANS.values() for name in rows}


def parse_plan(task: str, plan: str | Sequence[str] | None, inputs: Inputs | None = None) -> list[str]:
    """A plan as a list of primitive names: a preset row name of the task, "direct"/"" (no context),
    "default" (the paper's schedule), or names separated by commas. Unknown primitives and
    primitives whose inputs are missing are errors, raised before any compute."""
    if task not in PLANS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(PLANS)}")
    if plan is None:
        plan = ""
    if isinstance(plan, str):
        name = plan.strip()
        if name in ("", "direct", "baseline"):
            steps: list[str] = []
        elif name in PLANS[task]:
            steps = list(PLANS[task][name])
        elif name == "default":
            steps = list(DEFAULT_PLAN[task])
        else:
            steps = [p.strip() for p in name.split(",")]
            if not all(steps):
                raise ValueError(f"plan {plan!r} has an empty step (a comma with no primitive name beside it)")
    elif isinstance(plan, Sequence) and all(isinstance(p, str) for p in plan):
        steps = [p.strip() for p in plan]
        if not all(steps):  # it was "unknown primitive ''"
            raise ValueError(f"plan {list(plan)!r} has an empty step (a name that is empty or only spaces)")
    else:
        raise TypeError(f"a plan is a string or a list of primitive names, got {plan!r}")
    for s in steps:
        if s not in PRIMITIVES:
            rows = f"; {task}'s rows: {', '.join(PLANS[task])}" if s.startswith("+") or s in ROW_NAMES else ""
            raise ValueError(f"unknown primitive {s!r}; known: {', '.join(sorted(PRIMITIVES))}{rows}")
        if inputs is not None:
            why = NEEDS[s](inputs)
            if why:
                raise ValueError(f"primitive {s!r} cannot run on this input: {why}")
    if len(steps) > 8:
        raise ValueError(f"a plan has at most 8 steps, got {len(steps)}")
    return steps


@dataclass
class Result:
    task: str
    plan: list[str]
    output: Item
    items: list[Item]

    def trace(self) -> dict:
        return {"task": self.task, "plan": self.plan, "steps": [it.to_json() for it in self.items],
                "output": self.output.to_json()}


# visual tokens are sampled unless asked otherwise: a greedy rollout of the shipped checkpoint
# collapses onto its most frequent code (one image whatever the prompt; see the README's t2i notes).
# Temperature 1, top-k 16: decoded rollouts pass the t2i checker on 14.5 % of 200 validation prompts
# (top-k 4 / 8 / 32: 11.5 / 13.5 / 10.0 %; temperature 0.7, top-k 8: 10.0 %).
VISUAL_SAMPLING = (1.0, 16)
# the engine's defaults, which the server's settings and the command line's options take
FLOW_STEPS, CFG_SCALE = 20, 3.0  # Euler steps of the image flow sampler; classifier-free guidance
THINK_TOKENS = 240  # the longest world thought is 210 tokens (a measured vqa one: 6 objects, 5 copied)
LAYOUT_TOKENS = 200
# how a pose text is written where the model has a pose head: its decoded digits (the default: on
# every held-out measurement so far they beat the head's numbers, a regression that shrinks an
# unsure orbit side toward 0), or the head's six numbers
POSE_DECODERS = ("text", "head")


def _number(name: str, v, lo: float, integer: bool = False, open_below: bool = False) -> None:
    """A ValueError unless v is a finite number >= lo (> lo if open_below), an int where integer."""
    ok_type = isinstance(v, numbers.Integral) if integer else isinstance(v, numbers.Real)  # numpy scalars too
    if isinstance(v, bool) or not ok_type:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {v!r}")
    if not (math.isfinite(v) and (v > lo if open_below else v >= lo)):
        raise ValueError(f"{name} must be {'>' if open_below else '>='} {lo:g}, got {v}")


class Engine:
    """Runs plans with one model. Text tokens follow `temperature` / `top_k` (greedy by default);
    visual tokens follow `visual_temperature` / `visual_top_k` (sampled, temperature 1 among the 16
    likeliest codes, by default; None: the text setting)."""

    def __init__(self, model: OmniModel, temperature: float = 0.0, top_k: int = 0, seed: int = 0,
                 flow_steps: int = FLOW_STEPS, cfg_scale: float = CFG_SCALE,
                 cfg_interval: tuple[float, float] = (0.0, 1.0), flow_shift: float = 1.0, flow_start: float = 1.0,
                 think_tokens: int = THINK_TOKENS, layout_tokens: int = LAYOUT_TOKENS, reencode: bool | str = False,
                 visual_temperature: float | None = VISUAL_SAMPLING[0], visual_top_k: int | None = VISUAL_SAMPLING[1],
                 pose_decoder: str = "text"):
        if not isinstance(model, OmniModel):
            raise TypeError(f"Engine needs an OmniModel (OmniModel.from_pretrained(dir) loads one), "
                            f"got {type(model).__name__}")
        if model.tokenizer is None or model.visual is None:
            raise ValueError("the model has no tokenizers attached (load it with OmniModel.from_pretrained)")
        _number("seed", seed, 0, integer=True)
        if seed >= 2**64:  # torch's generator takes 64 bits ("Overflow when unpacking long long" beyond)
            raise ValueError(f"seed must be < 2**64, got {seed}")
        _number("temperature", temperature, 0)
        _number("top_k", top_k, 0, integer=True)
        for name, v in (("visual_temperature", visual_temperature), ("visual_top_k", visual_top_k)):
            if v is not None:
                _number(name, v, 0, integer=name.endswith("top_k"))
        _number("flow_steps", flow_steps, 1, integer=True)
        _number("cfg_scale", cfg_scale, 0)
        _number("flow_shift", flow_shift, MIN_SHIFT)
        _number("flow_start", flow_start, 0, open_below=True)
        if flow_start > 1:
            raise ValueError(f"flow_start must be <= 1, got {flow_start}")
        _number("think_tokens", think_tokens, 1, integer=True)
        _number("layout_tokens", layout_tokens, 1, integer=True)
        lo, hi = check_cfg_interval(cfg_interval)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.fmt = Format(model.tokenizer, model.visual, model.cfg)
        self._source: tuple[np.ndarray, torch.Tensor | None] | None = None  # the last source image, its latents
        visual_temperature = temperature if visual_temperature is None else visual_temperature
        visual_top_k = top_k if visual_top_k is None else visual_top_k
        self.temperature, self.top_k, self.seed = temperature, top_k, int(seed)
        self.visual_temperature, self.visual_top_k = visual_temperature, visual_top_k
        self.flow_steps, self.cfg_scale, self.cfg_interval = flow_steps, cfg_scale, (lo, hi)
        self.flow_shift = flow_shift
        # image-to-image generations (nvs, video, edit on a source_cond model) start their flow at this
        # noise level from the source image (sample_latents' `start`); 1: from pure noise, as trained
        self.flow_start = flow_start
        self.think_tokens, self.layout_tokens = think_tokens, layout_tokens
        if pose_decoder not in POSE_DECODERS:
            raise ValueError(f"pose_decoder must be one of {', '.join(POSE_DECODERS)}, not {pose_decoder!r}")
        # a pose text is the digits the model decodes token by token ("text"), or, where the model
        # has a pose head and pose_decoder is "head", the head's six numbers
        self.pose_decoder = pose_decoder
        if reencode not in (False, True, "primitive", "step"):
            raise ValueError(f"reencode must be False, 'primitive' or 'step', not {reencode!r}")
        # the baselines the workspace's cache is measured against: re-encode the whole context
        # before every primitive ("primitive", or True), or before every decoded token and every
        # flow step ("step": a RecomputingCache, i.e. no KV cache at all)
        self.reencode = "primitive" if reencode is True else reencode
        self.generator = torch.Generator().manual_seed(int(seed))  # numpy integers too

    def new_cache(self, rows: int = 1) -> KVCache:
        cls = RecomputingCache if self.reencode == "step" else KVCache
        return cls(self.model.cfg, rows=rows, device=self.device)

    def sampling(self, kind: str = "text") -> dict:
        """The sampling arguments of `generate_tokens` for text or visual tokens."""
        if kind == "visual":
            return {"temperature": self.visual_temperature, "top_k": self.visual_top_k, "generator": self.generator}
        return {"temperature": self.temperature, "top_k": self.top_k, "generator": self.generator}

    # -- inputs ---------------------------------------------------------------------------------

    def check_inputs(self, inputs: Inputs) -> Inputs:
        """The inputs as the engine uses them, or a ValueError that says what is wrong: a known task,
        exactly its images, each (S, S, 3) at the model's image size, float in [0, 1] or uint8 (divided
        by 255); its text, a string (none for a task without one) free of the format's tags."""
        if not isinstance(inputs, Inputs):
            raise TypeError(f"expected Inputs(task, images, text), got {type(inputs).__name__}")
        if inputs.task not in TASK_INPUTS:
            raise ValueError(f"unknown task {inputs.task!r}; known: {', '.join(TASK_INPUTS)}")
        slots, role = TASK_INPUTS[inputs.task]
        task, images = inputs.task, inputs.images if inputs.images is not None else {}
        if not isinstance(images, dict):
            raise TypeError(f"Inputs.images must be a dict of named images, got {type(images).__name__}")
        missing = [k for k in slots if k not in images]
        extra = sorted(map(str, set(images) - set(slots)))  # a key that is no string is named too
        if missing or extra:
            takes = ", ".join(slots) or "no images"
            raise ValueError(f"task {task} takes image(s) {takes}; "
                             + (f"missing {', '.join(missing)}" if missing else f"got also {', '.join(extra)}"))
        size = self.model.cfg.image_size
        checked = {}
        for k in slots:
            a = as_unit_rgb(images[k], f"image {k!r}")
            if a.shape != (size, size, 3):
                raise ValueError(f"image {k!r} must be ({size}, {size}, 3) for this model, got {a.shape}")
            checked[k] = a
        text = inputs.text if inputs.text is not None else ""
        if not isinstance(text, str):
            raise TypeError(f"Inputs.text must be a string, got {type(text).__name__}")
        if role is None and text.strip():
            raise ValueError(f"task {task} takes no text")
        if role is not None and not text.strip():
            raise ValueError(f"task {task} needs text: the {role}")
        if inputs.oracle is not None and not isinstance(inputs.oracle, str):
            raise TypeError(f"Inputs.oracle must be a string (the layout text) or None, got "
                            f"{type(inputs.oracle).__name__}")
        for what, t in (("text", text), ("oracle", inputs.oracle or "")):
            tags = self.fmt.tok.specials_in(t)
            if tags:
                raise ValueError(f"the {what} holds the format's tag(s) {', '.join(tags)}, which only the model "
                                 f"and the format may write")
        return dataclasses.replace(inputs, images=checked, text=text)

    @torch.no_grad()
    def start(self, inputs: Inputs) -> Workspace:
        inputs = self.check_inputs(inputs)
        ws = Workspace(self, inputs)
        t = time.perf_counter()
        n = ws.append(self.input_segments(inputs))
        ws.items.append(Item("input", "text", text=inputs.text, tokens=n, seconds=time.perf_counter() - t))
        return ws

    def input_segments(self, inputs: Inputs) -> list[Segment]:
        """The segments that open a workspace for `inputs` (the task tag, images, text)."""
        fmt, segs, im = self.fmt, [self.fmt.tags(TASK_TAGS[inputs.task])], inputs.images
        task = inputs.task
        if task in ("vqa", "depth"):
            segs += fmt.image(im["image"])
        elif task in ("spatial", "pose"):
            segs += fmt.view_pair(im["view1"], im["view2"])
        elif task in ("nvs", "edit"):
            segs += self.source_segments(inputs)
        if task in ("vqa", "spatial"):
            segs.append(fmt.block("question", inputs.text))
        elif task == "t2i":
            segs.append(fmt.text(" " + inputs.text))
        elif task in ("nvs", "edit"):
            segs.append(fmt.block("instruction", inputs.text))
        elif task == "video":
            segs += [fmt.block("caption", inputs.text)] + self.source_segments(inputs)
        return segs

    # -- running ----------------------------------------------------------------------------------

    @torch.no_grad()
    def run(self, inputs: Inputs, plan: str | Sequence[str] | None = None,
            on_step: Callable[[Item], None] | None = None) -> Result:
        """Unroll `plan` on `inputs`. `on_step`, if given, is called with each item as it joins the
        workspace (the input first), then with the output: a way to stream a run (an exception it
        raises stops the run)."""
        inputs = self.check_inputs(inputs)
        steps = parse_plan(inputs.task, plan, inputs)
        self.check_fits(inputs, steps)
        ws = self.start(inputs)
        if on_step is not None:
            on_step(ws.items[-1])
        return self.continue_plan(ws, steps, on_step)

    @torch.no_grad()
    def continue_plan(self, ws: Workspace, steps: str | Sequence[str] | None,
                      on_step: Callable[[Item], None] | None = None) -> Result:
        """Run `steps` (a plan, as `run` takes it) on a workspace this engine started, then decode its
        output into it. A decoded workspace holds its output in its context: fork it before (as
        `omni ablate` does for each row) to run another plan on the same context."""
        if not isinstance(ws, Workspace) or ws.engine is not self:
            raise ValueError("continue_plan takes a workspace this engine started (engine.start(inputs)): another "
                             "engine's would run with that engine's model, generator and settings")
        if ws.decoded:
            raise ValueError("this workspace was decoded already and holds its output in its context: fork it "
                             "before decoding (ws.fork()) to run another plan on the same context")
        steps = parse_plan(ws.inputs.task, steps, ws.inputs)
        need = self.context_bound(ws.inputs, steps, held=ws.cache.length)
        if need > self.model.cfg.max_seq:
            raise ValueError(f"this workspace ({ws.cache.length} tokens) and plan may need up to {need} context "
                             f"tokens; the model holds {self.model.cfg.max_seq}: use fewer steps")
        ws.decoded = True  # from here on the workspace is this run's, whatever happens
        for s in steps:
            t = time.perf_counter()
            if self.reencode == "primitive":
                ws.rebuild()
            item = PRIMITIVES[s](self, ws)
            if not isinstance(item, Item):
                raise TypeError(f"primitive {s!r} returned {type(item).__name__}, not an Item")
            item.seconds = time.perf_counter() - t
            ws.items.append(item)
            if on_step is not None:
                on_step(item)
        t = time.perf_counter()
        if self.reencode == "primitive":
            ws.rebuild()
        out = DECODERS[ws.inputs.task](self, ws)
        out.seconds = time.perf_counter() - t
        if on_step is not None:
            on_step(out)
        return Result(ws.inputs.task, list(steps), out, list(ws.items))

    def check_fits(self, inputs: Inputs, steps: Sequence[str]) -> None:
        """A ValueError if this input and plan could outgrow the model's context (`context_bound`)."""
        need, have = self.context_bound(inputs, steps), self.model.cfg.max_seq
        if need > have:
            raise ValueError(f"this input and plan may need up to {need} context tokens; the model holds {have}: "
                             "use fewer steps or a shorter text")

    def context_bound(self, inputs: Inputs, steps: Sequence[str], held: int | None = None) -> int:
        """The most tokens the workspace's KV cache can hold at once for this input and plan (each text
        block at its full token budget), starting from `held` tokens already in it (None: the input's).
        Primitives registered by users count 0 here (a run that still overflows the cache stops with a
        "KV cache full" error)."""
        cfg = self.model.cfg
        g2 = cfg.latent_grid ** 2
        n = sum(s.length(cfg) for s in self.input_segments(inputs)) if held is None else held
        oracle = len(self.fmt.block("layout", inputs.oracle).tokens) if inputs.oracle else 0
        per_step = {"think": self.think_tokens + 2, "think_long": self.layout_tokens + 2,
                    "describe": self.layout_tokens + 2, "depth_caption": self.layout_tokens + 2,
                    "estimate_pose": 62, "rollout_visual": g2 + 2, "synthesize_views": 4 * (g2 + 3),
                    "oracle_text": oracle}
        n += sum(per_step.get(s, 0) for s in steps)
        task = inputs.task
        if task in ("vqa", "spatial"):
            n += 26  # <answer> up to 24 tokens </answer>
        elif task == "pose":
            n += 62
        elif task == "depth":
            n += 3 + cfg.patch_grid ** 2  # <view><img> patches </img>
        else:
            n += 1 + g2  # <gen>, then the image being generated sits after the context
        return n

    # -- shared generation pieces -------------------------------------------------------------------

    def gen_image(self, ws: Workspace) -> tuple[np.ndarray, torch.Tensor, int]:
        """<gen> then an image by flow sampling (CFG) against the workspace: pixels, latents and the
        tokens that entered the context (the <gen> tag; the generated image takes a position only)."""
        n = ws.append([self.fmt.tags("<gen>")])
        lat = self.sample_flow(ws.cache, [ws.inputs])
        ws.advance()
        img = self.model.visual.decode_latents(lat.cpu())[0].numpy()
        return img, lat[0], n

    def sample_flow(self, cache, inputs: Sequence[Inputs]) -> torch.Tensor:
        """Latents of one image per cache row (`inputs[r]` is row r's), by the engine's flow sampler
        settings; image-to-image rows start from their source where flow_start < 1. The cache does
        not advance."""
        source = self.gen_sources(inputs)
        return sample_latents(self.model, cache, steps=self.flow_steps, cfg_scale=self.cfg_scale,
                              cfg_interval=self.cfg_interval, generator=self.generator, advance=False,
                              flow_shift=self.flow_shift, source=source,
                              start=1.0 if source is None else self.flow_start)

    def gen_sources(self, inputs: Sequence[Inputs]) -> torch.Tensor | None:
        """Each input's source latents for the generated image (rows, g*g, latent_dim): an
        image-to-image task's input image where the model has source_cond; None otherwise."""
        if not (self.model.cfg.source_cond and all(x.task in SOURCE_VIEW for x in inputs)):
            return None
        return torch.stack([self.fmt.gen_source(rgb, self.source_latents(rgb))
                            for rgb in (x.images[SOURCE_VIEW[x.task]] for x in inputs)])

    def source_segments(self, inputs: Inputs) -> list[Segment]:
        """An image-to-image task's input image as the context writes it (`Format.source_image`),
        with the latents `source_latents` keeps for it."""
        rgb = inputs.images[SOURCE_VIEW[inputs.task]]
        return self.fmt.source_image(rgb, self.source_latents(rgb))

    def source_latents(self, rgb: np.ndarray) -> torch.Tensor | None:
        """An image-to-image input's source latents (`Format.source_latents`), kept for the last
        source image seen: a run asks for them when it sizes its context, opens it and samples, and
        one encode serves all three (matched by the pixels, not the array object, which checking
        the inputs copies)."""
        src = self._source  # one read: another thread's run may replace it meanwhile
        if src is None or not np.array_equal(src[0], rgb):
            src = self._source = (np.array(rgb, copy=True), self.fmt.source_latents(rgb))
        return src[1]

    def gen_images(self, inputs: Sequence[Inputs]) -> list[tuple[np.ndarray, torch.Tensor]]:
        """One image per input, each in its own fresh context (`<gen>` after the input), as
        `gen_image` makes them one by one: pixels and latents. Inputs of equal token counts are
        sampled together, one cache row each (their noise drawn in one call, in order: the same
        draws as one by one), which takes one forward pass per flow step instead of one per image."""
        cfg = self.model.cfg
        rows = [self.input_segments(x) + [self.fmt.tags("<gen>")] for x in inputs]
        if len({sum(s.length(cfg) for s in r) for r in rows}) > 1:  # ragged: one at a time
            out = []
            for x in inputs:
                img, lat, _ = self.gen_image(self.start(x))
                out.append((img, lat))
            return out
        cache = self.new_cache(rows=len(rows))
        extend(self.model, cache, rows)
        lat = self.sample_flow(cache, inputs)
        imgs = self.model.visual.decode_latents(lat.cpu()).numpy()
        return [(imgs[r], lat[r]) for r in range(len(rows))]


def parse_pose(text: str) -> np.ndarray | None:
    """The 4x4 relative pose a pose text gives, or None if it is not one."""
    try:
        return text_to_pose(text)
    except ValueError:
        return None


def _needs_images(*names):
    def check(inputs: Inputs):
        missing = [n for n in names if n not in inputs.images]
        return f"needs image(s) {', '.join(missing)}" if missing else None

    return check


def _needs_task(*tasks):
    def check(inputs: Inputs):
        return None if inputs.task in tasks else f"only for tasks {', '.join(tasks)}"

    return check


def _text_primitive(name: str, block: str, budget: str):
    @register(name)
    def prim(engine: Engine, ws: Workspace) -> Item:
        text, n = ws.generate_block(block, getattr(engine, budget))
        return Item(name, "text", text=text, tokens=n)

    return prim


_text_primitive("think", "think", "think_tokens")
_text_primitive("think_long", "layout", "layout_tokens")
_text_primitive("describe", "caption", "layout_tokens")
_text_primitive("depth_caption", "depthcap", "layout_tokens")


@register("estimate_pose", needs=_needs_images("view1", "view2"))
def estimate_pose(engine: Engine, ws: Workspace) -> Item:
    text, n = ws.write_pose()
    return Item("estimate_pose", "pose", text=text, tokens=n, data={"valid": parse_pose(text) is not None})


@register("rollout_visual", needs=_needs_task("t2i", "depth", "vqa", "spatial", "nvs", "edit", "video"))
def rollout_visual(engine: Engine, ws: Workspace) -> Item:
    fmt, model = engine.fmt, engine.model
    n = ws.append([fmt.tags("<vis>")])
    codes = ws.generate_visual(model.cfg.latent_grid ** 2)
    n += len(codes) + ws.append([fmt.tags("</vis>")])
    preview = model.visual.decode(torch.tensor([codes]))[0].numpy()
    return Item("rollout_visual", "visual", image=preview, tokens=n, data={"codes": codes})


@register("synthesize_views", needs=_needs_images("view1"))
def synthesize_views(engine: Engine, ws: Workspace) -> Item:
    """Look up / down / left / right from view 1: each view generated by the model's own novel-view
    synthesis (a separate <nvs> context), then written back into this workspace as clean images."""
    fmt, views, n = engine.fmt, {}, 0
    deg = 30
    sides = [Inputs("nvs", {"source": ws.inputs.images["view1"]}, f"look {d} {deg} degrees.") for d in VIEW_TAGS]
    for (d, tag), (img, lat) in zip(VIEW_TAGS.items(), engine.gen_images(sides), strict=True):
        views[d] = img
        n += ws.append(fmt.clean_image(lat, tag=tag))
    grid = np.concatenate([np.concatenate([views["up"], views["down"]], 1),
                           np.concatenate([views["left"], views["right"]], 1)], 0)
    return Item("synthesize_views", "image", image=grid, tokens=n, text="up, down / left, right")


@register("oracle_text", needs=lambda inputs: None if inputs.oracle else "needs the world's ground-truth layout")
def oracle_text(engine: Engine, ws: Workspace) -> Item:
    n = ws.append([engine.fmt.block("layout", ws.inputs.oracle)])
    return Item("oracle_text", "text", text=ws.inputs.oracle, tokens=n)


# -- decoders (psi): the task's output from the unrolled workspace ----------------------------------


def _answer(engine: Engine, ws: Workspace) -> Item:
    text, n = ws.generate_block("answer", 24)
    return Item("output", "text", text=text, tokens=n)


def _image(engine: Engine, ws: Workspace) -> Item:
    img, _, n = engine.gen_image(ws)
    return Item("output", "image", image=img, tokens=n)


def _depth(engine: Engine, ws: Workspace) -> Item:
    fmt, model = engine.fmt, engine.model
    segs = fmt.image(ws.inputs.images["image"], tag="<view>")
    before = ws.cache.length
    h, b = extend(model, ws.cache, segs)
    n = ws.cache.length - before
    rows = (b.kind[0] == 1).nonzero().squeeze(1)  # the image_in tokens of the query copy
    logd = model.log_depth(h[0, rows])  # (patches, p * p)
    p, s = model.cfg.patch, model.cfg.image_size
    depth = unpatchify(logd.exp()[None], p, s, s)[0, :, :, 0]
    return Item("output", "depth", tokens=n, data={"depth": depth.cpu().numpy()})


def _pose(engine: Engine, ws: Workspace) -> Item:
    text, n = ws.write_pose()
    return Item("output", "pose", text=text, tokens=n, data={"valid": parse_pose(text) is not None})


DECODERS: dict[str, Callable[[Engine, Workspace], Item]] = {
    "vqa": _answer, "spatial": _answer, "t2i": _image, "nvs": _image, "video": _image, "edit": _image,
    "depth": _depth, "pose": _pose,
}
