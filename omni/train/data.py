"""The data mixture: world examples written as model sequences, in every form the plans need.

Every task has a direct form and context forms (the context each unrolling primitive writes), and
the context is trained with a loss too, so the model learns both to produce context and to use it:

    vqa      <vqa> <img>image</img> <question>q</question> [<think>trace</think>] <answer>a</answer><eos>
    t2i      <t2i> prompt [<think>short</think>] [<layout>layout</layout>] [<vis>codes</vis>] <gen>latents</gen>
    spatial  <spatial> <img>view 1</img> <img>view 2</img> <question>q + options</question>
             [<campose>pose</campose>] [<look_up><img>novel view</img> ... x4] [<think>trace</think>]
             <answer>letter</answer><eos>
    depth    <depth> <img>image</img> [<caption>detailed</caption>] [<depthcap>caption</depthcap>]
             [<vis>codes</vis>] <view><img>image again: its depth is predicted here</img>
    pose     <pose> <img>view 1</img> <img>view 2</img> <campose>pose</campose><eos>
    nvs      <nvs> <img>source</img> <instruction>motion</instruction> <gen>target latents</gen>
    video    <video> <caption>orbit caption</caption> <img>frame 0</img> <gen>frame 1 latents</gen>
    edit     <edit> <img>before</img> <instruction>edit</instruction> <gen>after latents</gen>

Input images are pixel patches (image_in). Novel views in the spatial context are image_clean
latents — what the engine writes back after synthesising them. Generated images are the visual
tokenizer's latents of the target render, noised at a logit-normal level (optionally shifted toward
pure noise, `t_shift`, where the image's layout is decided); an edit's, with `edit_start` < 1, on
the path that starts from its source image noised at that level (below, Writer.gen); a tenth of them lose
their condition (classifier-free guidance). Everything an example draws comes from a generator
seeded by (data seed, step, slot), so a batch is a pure function of (data seed, step).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from omni.io import check_int
from omni.model.batch import MIN_SHIFT, Batch, Segment, pack, shift_t
from omni.unroll.format import BLOCKS, VIEW_TAGS, Format
from omni.world import SPLITS, Example, WorldConfig, sample
from omni.world.tasks import conclusion_pieces, vqa_conclusion_cut

# the context forms of each task; each is a set of context blocks (the first form is the direct one)
FORMS: dict[str, dict[str, tuple[str, ...]]] = {
    "vqa": {"direct": (), "think": ("think",), "deduced": ("deduced",)},
    "t2i": {"direct": (), "short": ("short",), "long": ("long",), "visual": ("visual",),
            "short+visual": ("short", "visual"), "long+visual": ("long", "visual")},
    "spatial": {"direct": (), "think": ("think",), "pose": ("pose",), "views": ("pose", "views", "think"),
                "conclusion": ("conclusion",), "reasoned": ("conclusion", "reasoning"),
                "reasoned+views": ("pose", "views", "conclusion", "reasoning"),
                "deduced": ("conclusion", "reasoning", "option")},
    "depth": {"direct": (), "detailed": ("detailed",), "depthcap": ("depthcap",),
              "depthcap+visual": ("depthcap", "visual")},
    "pose": {"direct": ()},
    "nvs": {"direct": ()},
    "video": {"direct": ()},
    "edit": {"direct": ()},
}
# drills: forms no plan writes at inference, exercises of one step of a context on text alone; off (weight
# 0) unless --form-weights names them, so a mixture that does not name them draws what it always drew.
#   spatial "conclusion": <spatial> <question>q + options</question> <think>that is: <option>. A. <option A>:
#   no. B. ...: yes, so the answer is B.</think> <answer>B</answer>, the thought's last steps alone (copy each
#   option from the question, compare it with the one stated, state its letter; docs/experiments.md, "Where the spatial
#   thought breaks"), the loss from the first option copied on, with no images to read or reason from
#   spatial "reasoned": the same with the whole thought before its option as context (no loss), so the
#   copies are made as far from the question as in the think form
#   spatial "reasoned+views": the reasoned drill written where the +novel views plan thinks, after the two
#   images, the question, the true pose text and the four true views (the views form's context), so the
#   copies are made with ~300 tokens of images between them and the question
#   spatial "deduced": the reasoned drill with its loss from the option on (the option too): the step from the
#   thought's view-2 coordinates or stated motion to the option (docs/world_audit.md: on revision 2 the shipped
#   model states camera_object's option 18.9 % right given the true thought, having never seen a point behind
#   the camera), on text alone, at a fraction of the think form's tokens
#   vqa "deduced": <vqa> <question>q</question> <think>the thought</think> <answer>a</answer> on text alone,
#   the thought up to its step's last number as context and the loss from there on (`vqa_conclusion_cut`):
#   the step from the numbers a thought read off the image to what they imply ("x 19 ... x 28, so the
#   cone is left of the cube", "4.6 m ... 6.1 m. so the answer is the sphere") and from a stated
#   relation to yes or no, which the shipped model, given the true thought, gets at chance
#   (docs/eval/context_use_vqa.json: closer 36.7 %, left_right 54.5 %)
DRILLS: dict[str, tuple[str, ...]] = {"vqa": ("deduced",),
                                      "spatial": ("conclusion", "reasoned", "reasoned+views", "deduced")}


def conclusion_cut(option: bool) -> int:
    """Where a conclusion drill's loss starts among its thought's `conclusion_pieces` (the text up to
    "that is:", the option, then the steps): at the option (`option`, the "deduced" drill) or after it."""
    return 1 if option else 2


def conclusion_text(thought: str, reasoning: bool) -> str:
    """What of a spatial thought a conclusion drill writes: from "that is: <option>" on, or (reasoning,
    the "reasoned" drill) all of it."""
    return thought if reasoning else thought[thought.rindex("that is:"):]
DEFAULT_TASK_WEIGHTS = {"vqa": 1.0, "t2i": 1.5, "spatial": 1.0, "depth": 1.0, "pose": 0.75, "nvs": 0.75,
                        "video": 0.5, "edit": 0.5}
COND_DROPOUT = 0.1
PROBE_EXAMPLES = 8  # examples per task whose sequence lengths check --row-len (Mixture.form_lengths)
_LENGTHS: dict[tuple, dict[str, tuple[int, int]]] = {}  # form lengths by (task, probe, sizes), per process


@dataclass(frozen=True)
class MixtureConfig:
    data_seed: int = 0
    rows: int = 4  # rows per batch
    row_len: int = 1024  # tokens per row
    task_weights: dict = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    form_weights: dict = field(default_factory=dict)  # task -> {form: weight}; default uniform
    image_size: int = 32
    # image_gen noise levels: shift_t(u, s) of a logit-normal u (omni.model.batch); s > 1 puts more of them
    # near pure noise (s = 3: 14 % above t = 0.9 instead of 1.4 %)
    t_shift: float = 1.0
    # the pose task's camera motions (omni.world.WorldConfig.pose_motions): "orbit" alone is the world's
    # default; "orbit", "move_turn" adds pairs moved like the spatial task's
    pose_motions: tuple[str, ...] = ("orbit",)
    # the vqa thought's shape (omni.world.WorldConfig.vqa_thought): "inventory", the world's default, or
    # "focused" (only the objects the question names)
    vqa_thought: str = "inventory"
    # the noise level an edit's flow starts from (1: pure noise, as every other image). Below 1 an edit is
    # trained on the straight path from its source image noised at that level, x = (1 - s) source + s noise,
    # to its target (Writer.gen), the start the sampler takes with `flow_start` s (SDEdit, Meng et al. 2022)
    edit_start: float = 1.0
    # the world's revision the examples are drawn from (omni.world.WorldConfig.revision): 1, what every
    # shipped model was trained on, or 2, with docs/world_audit.md's mends
    world_revision: int = 1

    def __post_init__(self):
        for name, lo in (("data_seed", 0), ("rows", 1), ("row_len", 1), ("image_size", 1)):
            check_int(f"--{name.replace('_', '-')}", getattr(self, name), lo)
        if self.row_len > MAX_ROW_LEN:
            raise ValueError(f"--row-len must be at most {MAX_ROW_LEN}, got {self.row_len}")
        if not MIN_SHIFT <= self.t_shift < float("inf"):
            raise ValueError(f"--t-shift must be a finite number >= {MIN_SHIFT:g}, got {self.t_shift}")
        if isinstance(self.edit_start, bool) or not isinstance(self.edit_start, numbers.Real) \
                or not 0.0 < self.edit_start <= 1.0:
            raise ValueError(f"--edit-start must be in (0, 1], got {self.edit_start!r}")
        # the world's options are checked where the world defines them (WorldConfig), each error under its flag
        for flag, kw in (("--pose-motions", {"pose_motions": self.pose_motions}),
                         ("--vqa-thought", {"vqa_thought": self.vqa_thought}),
                         ("--world-revision", {"revision": self.world_revision})):
            try:
                world = WorldConfig(**kw)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{flag}: {e}") from None
            if flag == "--pose-motions":
                object.__setattr__(self, "pose_motions", world.pose_motions)  # a tuple, also when read back from JSON
        _check_weights("task weights", self.task_weights, FORMS)
        if not any(self.task_weights.get(t, 0) > 0 for t in FORMS):
            raise ValueError("task weights: at least one task needs a positive weight")
        if not isinstance(self.form_weights, dict):
            raise ValueError(f"form weights must map a task to {{form: weight}}, got {self.form_weights!r}")
        for task, w in self.form_weights.items():
            if task not in FORMS:
                raise ValueError(f"form weights: unknown task {task!r}; known: {', '.join(FORMS)}")
            _check_weights(f"form weights of {task}", w, FORMS[task])
            if not any(w.get(f, default_form_weight(task, f)) > 0 for f in FORMS[task]):
                raise ValueError(f"form weights of {task}: at least one form needs a positive weight")

    @staticmethod
    def weights(task_weights: str = "", form_weights: str = "") -> dict:
        """MixtureConfig keyword arguments from the command line's JSON: task weights merged onto
        DEFAULT_TASK_WEIGHTS ('{"spatial": 2}'), form weights per task ('{"spatial": {"pose": 3}}',
        forms not named keep weight 1, drills 0). Checked when the MixtureConfig is made."""
        import json

        out = {}
        for key, text in (("task_weights", task_weights), ("form_weights", form_weights)):
            if not text:
                continue
            try:
                out[key] = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"--{key.replace('_', '-')} is not JSON ({e.msg}): {text!r}") from None
            if not isinstance(out[key], dict):
                raise ValueError(f"--{key.replace('_', '-')} must be a JSON object, got {text!r}")
        if "task_weights" in out:
            out["task_weights"] = {**DEFAULT_TASK_WEIGHTS, **out["task_weights"]}
        return out

    def forms(self, task: str) -> tuple[list[str], np.ndarray]:
        names = list(FORMS[task])
        w = np.array([self.form_weights.get(task, {}).get(f, default_form_weight(task, f)) for f in names],
                     dtype=np.float64)
        return names, w / w.sum()


def default_form_weight(task: str, form: str) -> float:
    """A form's weight where --form-weights does not name it: 1, and 0 for drills (DRILLS)."""
    return 0.0 if form in DRILLS.get(task, ()) else 1.0


MAX_WEIGHT = 1e6  # weights are relative; beyond this their sums overflow long before they mean anything
MAX_ROW_LEN = 1 << 16  # tokens; a row's attention mask is row_len² booleans


def _check_weights(what: str, w, known) -> None:
    if not isinstance(w, dict):
        raise ValueError(f"{what} must be a mapping of names to weights, got {w!r}")
    for k, v in w.items():
        if k not in known:
            raise ValueError(f"{what}: unknown name {k!r}; known: {', '.join(known)}")
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= MAX_WEIGHT:  # NaN, inf fail
            raise ValueError(f"{what}: the weight of {k!r} must be a number in [0, {MAX_WEIGHT:g}], got {v!r}")


class Writer(Format):
    """Turns world examples into training sequences, in the shared format (omni.unroll.format)."""

    def __init__(self, tok, vq, cfg, t_shift: float = 1.0, edit_start: float = 1.0):
        super().__init__(tok, vq, cfg)
        self.t_shift, self.edit_start = t_shift, edit_start

    @classmethod
    def for_mixture(cls, tok, vq, cfg, mix: MixtureConfig) -> Writer:
        return cls(tok, vq, cfg, t_shift=mix.t_shift, edit_start=mix.edit_start)

    def gen(self, x0: torch.Tensor, rng: np.random.Generator, source: torch.Tensor | None = None,
            start: float = 1.0, start_from: torch.Tensor | None = None) -> list[Segment]:
        """<gen> x0 noised </gen>: the flow's level t and noise. `start` < 1 with `start_from` (latents like
        x0's): the straight path from x_s = (1 - s) start_from + s noise at s = start to x0, i.e. the
        noise moved by (1 - s) / s (start_from - x0) and t drawn in (0, s] (the same draws either way)."""
        u = 1.0 / (1.0 + math.exp(-rng.normal()))  # logit-normal noise level
        t = float(shift_t(u, self.t_shift))
        noise = torch.from_numpy(rng.standard_normal(tuple(x0.shape)).astype(np.float32))
        if start < 1.0:
            if start_from is None:
                raise ValueError("a flow that starts below pure noise needs the latents it starts from")
            t *= start
            noise = noise + (1.0 - start) / start * (start_from - x0)
        uncond = bool(rng.random() < COND_DROPOUT)
        return [self.tags("<gen>"), Segment("image_gen", latents=x0, t=t, loss=True, noise=noise, uncond=uncond,
                                            source=source), self.tags("</gen>")]

    def write(self, ex: Example, form: str, rng: np.random.Generator) -> list[Segment]:
        blocks = FORMS[ex.task][form]
        return getattr(self, f"_{ex.task}")(ex, blocks, rng)

    def _vqa(self, ex, blocks, rng):
        if "deduced" in blocks:  # the drill on text alone (DRILLS)
            thought = ex.texts["thinking"]
            return [self.tags("<vqa>"), self.block("question", ex.texts["question"]),
                    *self.cut_block("think", thought, vqa_conclusion_cut(thought)),
                    self.block("answer", ex.answer, loss=True, eos=True)]
        segs = [self.tags("<vqa>"), *self.image(ex.views["image"].rgb), self.block("question", ex.texts["question"])]
        if "think" in blocks:
            segs.append(self.block("think", ex.texts["thinking"], loss=True))
        return segs + [self.block("answer", ex.answer, loss=True, eos=True)]

    def _t2i(self, ex, blocks, rng):
        rgb = ex.views["target"].rgb
        segs = [self.tags("<t2i>"), self.text(" " + ex.texts["prompt"])]
        if "short" in blocks:
            segs.append(self.block("think", ex.texts["short"], loss=True))
        if "long" in blocks:
            segs.append(self.block("layout", ex.texts["oracle"], loss=True))
        if "visual" in blocks:
            segs += self.visual_block(self.codes([rgb])[0].tolist(), loss=True)
        return segs + self.gen(self.latents([rgb])[0], rng)

    def _spatial(self, ex, blocks, rng):
        if "conclusion" in blocks and "views" not in blocks:  # the drills on text alone (DRILLS)
            return [self.tags("<spatial>"), self.block("question", ex.texts["question"]),
                    *self.conclusion(ex.texts["thinking"], "reasoning" in blocks, "option" in blocks),
                    self.block("answer", ex.answer, loss=True, eos=True)]
        segs = [self.tags("<spatial>"), *self.view_pair(ex.views["view1"].rgb, ex.views["view2"].rgb),
                self.block("question", ex.texts["question"])]
        if "pose" in blocks:
            segs.append(self.pose_block(ex.texts["pose"]))
        if "views" in blocks:
            dirs = tuple(VIEW_TAGS)
            lat = self.latents([ex.views[f"look_{d}"].rgb for d in dirs])
            for d, x in zip(dirs, lat, strict=True):
                segs += self.clean_image(x, tag=VIEW_TAGS[d])
        if "think" in blocks:
            segs.append(self.block("think", ex.texts["thinking"], loss=True))
        if "conclusion" in blocks:  # the drill after the views
            segs += self.conclusion(ex.texts["thinking"], "reasoning" in blocks)
        return segs + [self.block("answer", ex.answer, loss=True, eos=True)]

    def conclusion(self, thought: str, reasoning: bool = False, option: bool = False) -> list[Segment]:
        """<think> that is: <option> + the rest of a spatial thought's conclusion </think>: the option it
        reasons to as context (with `reasoning`, the whole thought up to it), a loss on what follows
        (the copies, verdicts, letter and closing tag); with `option`, the loss from the option on."""
        c = conclusion_text(thought, reasoning)
        pieces = conclusion_pieces(c)
        return self.cut_block("think", c, sum(len(p) for p, _ in pieces[:conclusion_cut(option)]))

    def cut_block(self, name: str, body: str, cut: int) -> list[Segment]:
        """<name> body </name> as `block` writes it, in two segments: the text up to character `cut` of
        " " + body.strip() as context, a loss on the rest and the closing tag. Their tokens are the
        block's own; a cut that splits a token is a ValueError."""
        open_tag, close_tag = BLOCKS[name]
        text = " " + body.strip()
        head, rest = self.tok.encode(text[:cut]), self.tok.encode(text[cut:])
        if head + rest != self.tok.encode(text):
            raise ValueError(f"a cut at character {cut} tokenizes differently from the whole: {text!r}")
        return [Segment("text", self.ids(open_tag) + head), Segment("text", rest + self.ids(close_tag), loss=True)]

    def _depth(self, ex, blocks, rng):
        v = ex.views["image"]
        segs = [self.tags("<depth>"), *self.image(v.rgb)]
        if "detailed" in blocks:
            segs.append(self.block("caption", ex.texts["detailed"], loss=True))
        if "depthcap" in blocks:
            segs.append(self.block("depthcap", ex.texts["depth_caption"], loss=True))
        if "visual" in blocks:
            segs += self.visual_block(self.codes([v.rgb])[0].tolist(), loss=True)
        return segs + self.image(v.rgb, v.depth, v.valid, tag="<view>")

    def _pose(self, ex, blocks, rng):
        return [self.tags("<pose>"), *self.view_pair(ex.views["view1"].rgb, ex.views["view2"].rgb),
                self.pose_block(ex.texts["pose"], eos=True)]

    def _image_to_image(self, ex, tag, src, text_block, text_key, tgt, rng, start: float = 1.0):
        """<tag> <img>src</img> [<img>src latents</img>] <text_block>text</text_block> <gen>target</gen> (nvs,
        edit; the latents where the config has source_latents); `start` < 1: the target's flow starts from
        the source noised at that level (Writer.gen)."""
        rgb = ex.views[src].rgb
        lat = self.source_latents(rgb)
        start_from = None
        if start < 1.0:
            start_from = self.latents([rgb])[0] if lat is None else lat
        return [self.tags(tag), *self.source_image(rgb, lat), self.block(text_block, ex.texts[text_key]),
                *self.gen(self.latents([ex.views[tgt].rgb])[0], rng, source=self.gen_source(rgb, lat),
                          start=start, start_from=start_from)]

    def _nvs(self, ex, blocks, rng):
        return self._image_to_image(ex, "<nvs>", "source", "instruction", "instruction", "target", rng)

    def _edit(self, ex, blocks, rng):
        return self._image_to_image(ex, "<edit>", "before", "instruction", "instruction", "after", rng,
                                    start=self.edit_start)

    def _video(self, ex, blocks, rng):  # the caption comes before the first frame
        rgb = ex.views["frame0"].rgb
        lat = self.source_latents(rgb)
        return [self.tags("<video>"), self.block("caption", ex.texts["caption"]), *self.source_image(rgb, lat),
                *self.gen(self.latents([ex.views["frame1"].rgb])[0], rng, source=self.gen_source(rgb, lat))]


def slot_rng(data_seed: int, step: int, slot: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(b"omni-mixture"), data_seed, step, slot])


class Mixture:
    """Batches of packed sequences, a pure function of (data seed, step)."""

    def __init__(self, mix: MixtureConfig, writer: Writer):
        if mix.image_size != writer.vq.cfg.image_size:  # it was "images must be (B, 32, 32, 3)" from the encoder
            raise ValueError(f"the mixture's image_size {mix.image_size} is not its visual tokenizer's, "
                             f"{writer.vq.cfg.image_size}: the world renders the images the tokenizer encodes")
        self.mix, self.w = mix, writer
        self.tasks = [t for t in FORMS if mix.task_weights.get(t, 0) > 0]
        p = np.array([mix.task_weights[t] for t in self.tasks], dtype=np.float64)
        self.task_p = p / p.sum()
        lo, hi = SPLITS["train"]
        self.seed_range = (lo, hi)
        self.world = WorldConfig(size=mix.image_size, pose_motions=mix.pose_motions, vqa_thought=mix.vqa_thought,
                                 revision=mix.world_revision)

    def form_lengths(self, n: int = PROBE_EXAMPLES) -> dict[tuple[str, str], tuple[int, int]]:
        """The shortest and longest sequence, in tokens, of every (task, form) this mixture draws, over n
        examples per task (fixed seeds of the train split): images have a fixed length, texts vary."""
        cfg, out = self.w.cfg, {}
        for task in self.tasks:
            # source_latents adds an image to nvs, edit and video (Format.source_image)
            key = (task, n, self.world, cfg.patch_grid, cfg.latent_grid, cfg.source_latents, self.w.tok.vocab_size,
                   self.w.vq.cfg.grid)
            if key not in _LENGTHS:
                exs = sample(task, list(range(n)), self.world)
                rng = np.random.default_rng(0)
                lengths = {f: [sum(s.length(cfg) for s in self.w.write(ex, f, rng)) for ex in exs] for f in FORMS[task]}
                _LENGTHS[key] = {f: (min(v), max(v)) for f, v in lengths.items()}
            names, p = self.mix.forms(task)
            out.update({(task, f): _LENGTHS[key][f] for f, pf in zip(names, p, strict=True) if pf > 0})
        return out

    def check_row_len(self) -> str | None:
        """A row must hold the sequences the mixture makes: a batch ends at the first drawn sequence that
        does not fit, so a longer one is never trained and cuts its batch short. An error if some task
        has no form that fits (--row-len 8 would train on nothing); a warning (returned) if some forms'
        sequences may not fit, with the --row-len that holds every form."""
        n, lengths = self.mix.row_len, self.form_lengths()
        longest = max(hi for _, hi in lengths.values())
        holds = (f"every form fits in --row-len {longest} or more (the longest sequence of {PROBE_EXAMPLES} "
                 "examples per task)")
        never = []
        for task in self.tasks:
            lo = min(lengths[(t, f)][0] for t, f in lengths if t == task)
            if lo > n:
                never.append(f"{task} (at least {lo} tokens)")
        if never:
            raise ValueError(f"--row-len {n} cannot hold a sequence of {', '.join(never)}; {holds}")
        # positions restart with each sequence, so rows longer than max_seq are fine; a sequence the
        # model trains on but could not hold in its KV cache to answer is not
        cap = self.w.cfg.max_seq
        beyond = [f"{t}/{f} (up to {min(hi, n)} tokens)" for (t, f), (_, hi) in lengths.items() if min(hi, n) > cap]
        if beyond:
            raise ValueError(f"the model's max_seq {cap} (the longest context its KV cache holds) is shorter than "
                             f"sequences it would train on: {', '.join(beyond)}; raise max_seq (--model) or "
                             f"lower --row-len to {cap}")
        over = [f"{t}/{f} ({lo}-{hi} tokens)" for (t, f), (lo, hi) in lengths.items() if hi > n]
        if not over:
            return None
        return (f"warning: --row-len {n} is shorter than sequences of {', '.join(over)}: a batch ends at the first "
                f"sequence that does not fit, so these are trained less or never and the mix is skewed; {holds}")

    def draw(self, step: int, slot: int) -> tuple[str, str, int, np.random.Generator]:
        rng = slot_rng(self.mix.data_seed, step, slot)
        task = str(rng.choice(self.tasks, p=self.task_p))
        forms, fp = self.mix.forms(task)
        form = str(rng.choice(forms, p=fp))
        seed = int(rng.integers(*self.seed_range))
        return task, form, seed, rng

    def slots(self) -> int:
        """Examples drawn per batch: 48, which fill about 9 rows of 1,024 tokens (~200 tokens an
        example), and 6 a row beyond 8 rows, so a wide GPU batch is filled too (--rows 32 with 48
        slots was two-thirds padding). Up to 8 rows the draws are what they always were."""
        return max(48, 6 * self.mix.rows)

    def sequences(self, step: int, slots: int | None = None) -> list[tuple[str, str, list[Segment]]]:
        """Sequences for one step: `slots` examples (default `self.slots()`) are drawn (rendered in one
        batched call per task) and placed first-fit into the rows, in slot order, until one does not fit."""
        slots = self.slots() if slots is None else slots
        cfg = self.w.cfg
        drawn = [self.draw(step, slot) for slot in range(slots)]
        by_task: dict[str, list[int]] = {}
        for i, (task, _, _, _) in enumerate(drawn):
            by_task.setdefault(task, []).append(i)
        examples: dict[int, Example] = {}
        for task, idx in by_task.items():
            for i, ex in zip(idx, sample(task, [drawn[i][2] for i in idx], self.world), strict=True):
                examples[i] = ex
        free = [self.mix.row_len] * self.mix.rows
        out = []
        for i, (task, form, _, rng) in enumerate(drawn):
            segs = self.w.write(examples[i], form, rng)
            n = sum(s.length(cfg) for s in segs)
            fit = next((r for r, f in enumerate(free) if f >= n), None)
            if fit is None:
                break
            free[fit] -= n
            out.append((task, form, segs))
        return out

    def batch(self, step: int) -> tuple[Batch, dict]:
        seqs = self.sequences(step)
        b = pack([s for _, _, s in seqs], self.w.cfg, row_len=self.mix.row_len)
        if b.kind.shape[0] < self.mix.rows:  # always the same shape: pad with empty rows
            extra = self.mix.rows - b.kind.shape[0]
            b = _pad_rows(b, extra)
        info = {"examples": len(seqs), "tokens": int((b.kind >= 0).sum()),
                "tasks": {t: sum(1 for x, _, _ in seqs if x == t) for t in self.tasks}}
        return b, info


def _pad_rows(b: Batch, extra: int) -> Batch:
    def pad(x, value):
        return torch.cat([x, torch.full((extra, x.shape[1]), value, dtype=x.dtype)])

    from omni.model.batch import IGNORE
    from omni.model.config import PAD

    # the per-token fields grow by the empty rows; the flat per-kind ones stay as they are
    return dataclasses.replace(b, kind=pad(b.kind, PAD), token=pad(b.token, 0), seg=pad(b.seg, -1),
                               example=pad(b.example, -1), pos=pad(b.pos, 0), cell=pad(b.cell, 0),
                               uncond=pad(b.uncond, False), target=pad(b.target, IGNORE))
