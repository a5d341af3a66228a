"""Sampling with the KV cache: text and visual tokens autoregressively, images by flow matching.

Text: greedy (temperature 0), temperature and top-k sampling from the next-token logits, each new
token appended to the cache. Visual tokens: the same, restricted to the visual codes. Images: an
Euler integration of the flow head's velocity from pure noise (t = 1) to data (t = 0) in the
visual tokenizer's latent space, with classifier-free guidance (the unconditional branch is the
image alone, which is what condition dropout trains): v = v_u + s (v_c - v_u) for t inside the
guidance interval, v_c elsewhere. The Euler grid is uniform in t, or shifted toward pure noise
(`flow_shift` s > 1: t' = s t / (1 + (s - 1) t)), spending more of the steps where the layout forms.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

from omni.io import check_int

from .batch import MIN_SHIFT, Segment, shift_t
from .cache import KVCache
from .config import EXPERT_OF_KIND, TEXT, VISUAL
from .transformer import OmniModel, decode_step, decode_weights, extend


def check_sampling(temperature, top_k) -> None:
    """ValueError unless temperature is a number >= 0 (0: argmax) and top_k an integer >= 0 (0: no top-k)."""
    try:
        t = None if isinstance(temperature, (str, bytes, bool)) else float(temperature)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several numbers
        t = None
    # NaN: neither argmax nor sampling (multinomial fails on NaN probabilities); a negative one was read
    # as 0 (argmax) without a word, where a sampler was asked for
    if t is None or not t >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0: argmax), got {temperature!r}")
    # torch's topk would say only "selected index k out of range", or reject a float k deep inside
    check_int("top_k", top_k, 0)


def choose(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Token ids (rows,) from logits (rows, V): argmax at temperature 0, else sampled."""
    check_sampling(temperature, top_k)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] == 0:
        # 1-D logits gave a 0-d id at temperature 0 and an IndexError otherwise
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a tensor (rows, V) with V >= 1, got {got}")
    if torch.isnan(logits).any():  # argmax and multinomial both read NaN as a choice (token 0, say), silently
        raise ValueError("logits hold NaN (NaN weights or inputs upstream?)")
    if not torch.isfinite(logits.amax(-1)).all():  # argmax read an all -inf row as token 0; softmax made it NaN
        raise ValueError("every row of logits needs a finite best token: a row all -inf (every token masked) "
                         "or holding +inf (an overflow upstream) has no choice")
    if temperature <= 0:
        return logits.argmax(-1)
    lg = logits / temperature
    if not torch.isfinite(lg.amax(-1)).all():  # a tiny temperature overflows (or is 0 in float32): the gaps to
        gap = logits - logits.amax(-1, keepdim=True)  # the best token, divided, are -inf, and the best's 0
        lg = torch.where(gap < 0, gap / temperature, torch.zeros_like(gap))
    if top_k:
        kth = lg.topk(min(top_k, lg.shape[-1]), dim=-1).values[:, -1:]
        lg = lg.masked_fill(lg < kth, float("-inf"))
    probs = lg.softmax(-1)
    if generator is not None and generator.device != probs.device:  # the engine's generator lives on the CPU
        return torch.multinomial(probs.float().cpu(), 1, generator=generator).squeeze(1).to(logits.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate_tokens(model: OmniModel, cache: KVCache, max_new: int, kind: str = "text", temperature: float = 0.0,
                    top_k: int = 0, stop: Sequence[int] = (),
                    generator: torch.Generator | None = None, cell0: int = 0) -> list[list[int]]:
    """Continue every cache row with up to max_new tokens of `kind` ("text" ids or "visual" code
    ids), stopping a row at a stop token (kept, the row then pads with it). Rows run in step.
    The j-th visual code generated goes to grid cell cell0 + j (see Segment.cell0): cell0 0 starts a
    <vis> block, cell0 k continues one whose first k codes are in the cache already."""
    if cache.last_hidden is None:
        raise ValueError("the cache is empty: encode a prompt first")
    cfg = model.cfg
    if kind not in ("text", "visual"):
        raise ValueError(f"can only generate text or visual tokens, not {kind!r}")
    check_int("max_new", max_new, 0)
    check_int("cell0", cell0, 0)
    if kind == "text" and cell0:
        raise ValueError(f"cell0 places visual codes in their grid; text has none, got cell0={cell0}")
    check_sampling(temperature, top_k)  # before any step, not at the first token's choice
    try:  # a single id (stop=eos) failed after the first step ("argument of type 'int' is not iterable")
        if isinstance(stop, (str, bytes)):
            raise TypeError
        stop = {operator.index(i) for i in stop}
    except TypeError:
        raise ValueError(f"stop must be a collection of integer token ids (e.g. [eos]), got {stop!r}") from None
    room = cache.max_len - cache.length
    if max_new > room:  # each token joins the cache: a full cache midway stopped the run and lost what it made
        raise ValueError(f"KV cache full: max_new {max_new} tokens may not fit ({cache.length} of {cache.max_len} "
                         f"positions used, room for {room})")
    lo, hi = (0, cfg.text_vocab) if kind == "text" else (cfg.text_vocab, cfg.vocab_size)
    out: list[list[int]] = [[] for _ in range(cache.rows)]
    done = [False] * cache.rows
    code = TEXT if kind == "text" else VISUAL
    weights = decode_weights(model, EXPERT_OF_KIND[code])
    for j in range(max_new):
        logits = model.logits(cache.last_hidden, slice(lo, hi))
        ids = choose(logits, temperature, top_k, generator).tolist()
        for r, i in enumerate(ids):
            if done[r]:
                ids[r] = out[r][-1]
            else:
                out[r].append(i)
                done[r] = i in stop
        if all(done):
            break
        decode_step(model, cache, torch.tensor(ids), code, weights, cell=cell0 + j)
    return out


def check_cfg_interval(cfg_interval) -> tuple[float, float]:
    """(lo, hi): the noise levels t in [lo, hi] at which guidance applies, 0 <= lo <= hi <= 1 (an
    interval with lo > hi, or NaN, would turn guidance off without a word)."""
    try:
        lo, hi = (float(x) for x in cfg_interval)
    except (TypeError, ValueError):
        raise ValueError(f"cfg_interval must be two numbers (lo, hi), got {cfg_interval!r}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"cfg_interval must satisfy 0 <= lo <= hi <= 1, got {cfg_interval!r}")
    return lo, hi


@torch.no_grad()
def sample_latents(model: OmniModel, cache: KVCache | None, steps: int = 20, cfg_scale: float = 1.0,
                   cfg_interval: tuple[float, float] = (0.0, 1.0), generator: torch.Generator | None = None,
                   noise: torch.Tensor | None = None, advance: bool = True, flow_shift: float = 1.0,
                   source: torch.Tensor | None = None, start: float = 1.0) -> torch.Tensor:
    """Generate one image per cache row: latents (rows, g*g, latent_dim) by Euler steps of the flow
    from t = 1 to 0. The image_gen segment is never stored; with advance=True the cache then moves
    one position past it, as in training. cache=None: unconditional, one image. `source` (rows, g*g,
    latent_dim): each row's source image latents, an input of every step (both guidance branches)
    for a model with source_cond. `start` < 1 (needs `source`; SDEdit, Meng et al. 2022): the flow
    starts from the source noised as training noises a target, x = (1 - t0) source + t0 noise at
    t0 = the first level of the grid from `start` down to 0 (shifted by flow_shift), so what the image
    keeps of its source need not be redrawn from pure noise; the same noise is drawn either way."""
    cfg = model.cfg
    rows = cache.rows if cache is not None else 1
    n = cfg.latent_grid ** 2
    device = cache.k.device if cache is not None else next(model.parameters()).device
    # steps < 1 ran no Euler step and returned the starting noise as the image; a NaN guidance scale
    # made every latent NaN; noise of another row count was integrated as extra (or too few) images
    check_int("steps", steps, 1)
    if not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale}")
    if noise is not None and tuple(noise.shape) != (rows, n, cfg.latent_dim):
        raise ValueError(f"noise must be ({rows}, {n}, {cfg.latent_dim}), got {tuple(noise.shape)}")
    for name, v in (("noise", noise), ("source", source)):  # NaN in either made every latent NaN, silently
        if v is not None and not torch.isfinite(v).all():
            raise ValueError(f"{name} latents hold NaN or infinite values")
    x = (torch.randn((rows, n, cfg.latent_dim), generator=generator) if noise is None else noise.clone()).to(device)
    if not flow_shift >= MIN_SHIFT:
        raise ValueError(f"flow_shift must be >= {MIN_SHIFT:g}, got {flow_shift}")
    if not 0.0 < start <= 1.0:
        raise ValueError(f"start must be in (0, 1], got {start}")
    if start < 1.0 and source is None:
        raise ValueError("start < 1 starts the flow from the source image's latents: it needs source")
    ts = shift_t(torch.linspace(start, 0.0, steps + 1), flow_shift)
    lo, hi = check_cfg_interval(cfg_interval)
    if source is not None and tuple(source.shape) != (rows, n, cfg.latent_dim):
        raise ValueError(f"source latents must be ({rows}, {n}, {cfg.latent_dim}), got {tuple(source.shape)}")
    if start < 1.0:
        t0 = float(ts[0])
        x = (1.0 - t0) * source.to(device=device, dtype=x.dtype) + t0 * x
    srcs = [None] * rows if source is None else list(source.cpu())
    for i in range(steps):
        t, t_next = float(ts[i]), float(ts[i + 1])
        segs = [[Segment("image_gen", latents=x[r], t=t, source=srcs[r])] for r in range(rows)]
        if cache is not None:
            v = model.velocity(extend(model, cache, segs, store=False)[0])
        else:
            v = _velocity_alone(model, segs)
        if cache is not None and cfg_scale != 1.0 and lo <= t <= hi:
            v_u = _velocity_alone(model, [[Segment("image_gen", latents=x[r], t=t, uncond=True, source=srcs[r])]
                                          for r in range(rows)])
            v = v_u + cfg_scale * (v - v_u)
        x = x + (t_next - t) * v
    if cache is not None and advance:
        cache.advance()
    return x


def _velocity_alone(model: OmniModel, segs) -> torch.Tensor:
    empty = KVCache(model.cfg, rows=len(segs), max_len=model.cfg.latent_grid ** 2,
                    device=next(model.parameters()).device)
    return model.velocity(extend(model, empty, segs, store=False)[0])
