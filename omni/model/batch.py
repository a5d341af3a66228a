"""Segments and packed batches: the CPU-side index builders of the model's sequence contract.

A sequence is a list of segments. Each segment is one kind:

    text         token ids (causal)
    visual       visual-tokenizer code ids (causal; the model's own discrete visual tokens)
    image_in     an input image as p x p pixel patches (full attention within the image)
    image_gen    an image being generated: noisy latents x_t (full within, invisible to every later
                 segment; during training x_t = (1 - t) x0 + t noise and the target is noise - x0)
    image_clean  a generated image written back as context: clean latents (full within)

Positions (rotary, 1D): every text or visual token takes the next position; an image takes one
position for all its tokens (2D placement inside an image comes from learned cell embeddings, and
with OmniConfig.rope_2d from the cell's row and column in the rotary angles; a visual token's cell,
code i of its block in cell i, is used when OmniConfig.visual_cells is on).

`pack` lays sequences into rows of a fixed length (first fit, never split), producing per-token
index tensors and the flat inputs of each kind; `attention_mask` turns them into the boolean mask
SDPA takes. The same builders continue a KV cache (`start_pos`, `start_seg`).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from omni.tokens.image import RANGE_TOLERANCE
from omni.tokens.image import patchify as image_patches

from .config import FULL_ATTENTION_KINDS, IMAGE_GEN, IMAGE_IN, PAD, SEGMENT_KINDS, TEXT, VISUAL, OmniConfig

IGNORE = -100


@dataclass
class Segment:
    kind: str
    tokens: Sequence[int] | None = None  # text ids, or visual code ids in [0, codebook_size)
    pixels: torch.Tensor | None = None  # image_in: (H, W, 3) in [0, 1]
    latents: torch.Tensor | None = None  # image_gen (training: clean x0; sampling: x_t) / image_clean
    t: float = 0.0  # image_gen: noise level (1 = pure noise)
    loss: bool = False  # text / visual: predict these tokens; image_gen: flow loss
    depth: torch.Tensor | None = None  # image_in: (H, W) target z-depth in metres
    depth_valid: torch.Tensor | None = None  # image_in: (H, W) bool
    uncond: bool = False  # image_gen: sees no earlier segment (classifier-free guidance)
    noise: torch.Tensor | None = None  # image_gen training: the noise (drawn by the caller, for determinism)
    cell0: int = 0  # visual: the grid cell of the first code (code i sits in cell (cell0 + i) mod g*g)
    source: torch.Tensor | None = None  # image_gen: the source image's latents, one per cell (source_cond)
    pair: torch.Tensor | None = None  # image_in: (H, W, 3) pixels of the view it is compared with (pair_cond)
    pose: torch.Tensor | None = None  # text: (6,) the pose numbers its first token predicts (pose_head)

    def __post_init__(self):
        if self.kind not in SEGMENT_KINDS:
            raise ValueError(f"unknown segment kind {self.kind!r}; known: {', '.join(SEGMENT_KINDS)}")

    @property
    def kind_id(self) -> int:
        return SEGMENT_KINDS.index(self.kind)

    def length(self, cfg: OmniConfig) -> int:
        k = self.kind_id
        if k in (TEXT, VISUAL):
            return 0 if self.tokens is None else len(self.tokens)  # not `or`: ids may be a tensor or array
        if k == IMAGE_IN:
            return cfg.patch_grid ** 2
        return cfg.latent_grid ** 2

    def check(self, cfg: OmniConfig) -> None:
        k = self.kind_id
        if self.pose is not None and (k != TEXT or tuple(self.pose.shape) != (6,)):
            raise ValueError(f"a pose target is given to text segments only, as 6 numbers; got "
                             f"{tuple(self.pose.shape)} on {self.kind}")
        if k in (TEXT, VISUAL):
            # len, not truth: a tensor of ids has no truth value, and tensor([0]) is false (read as "no tokens")
            if self.tokens is None or len(self.tokens) == 0:
                raise ValueError(f"{self.kind} segment has no tokens")
            ids = np.asarray(self.tokens)
            if ids.ndim != 1:  # min() over rows of a 2-D array failed in numpy ("ambiguous")
                raise ValueError(f"{self.kind} token ids must be one flat sequence, got shape {ids.shape}")
            if ids.dtype.kind not in "iu":  # pack casts to int64: 1.7 would become id 1
                raise ValueError(f"{self.kind} token ids must be integers, got {ids.dtype}")
            hi = cfg.text_vocab if k == TEXT else cfg.codebook_size
            if min(self.tokens) < 0 or max(self.tokens) >= hi:
                raise ValueError(f"{self.kind} token ids must lie in [0, {hi})")
            if k == VISUAL and (isinstance(self.cell0, bool) or not isinstance(self.cell0, numbers.Integral)):
                # pack's cell indices took 0.5 as a float and truncated it: codes placed in the wrong cells
                raise ValueError(f"visual cell0 must be an integer grid cell, got {self.cell0!r}")
        elif k == IMAGE_IN:
            s = cfg.image_size
            if self.pixels is None or tuple(self.pixels.shape) != (s, s, 3):
                got = None if self.pixels is None else tuple(self.pixels.shape)
                raise ValueError(f"image_in segment needs pixels of shape ({s}, {s}, 3), got {got}")
            _check_unit("image_in pixels", self.pixels)
            if self.pair is not None:
                _check_unit("image_in pair", self.pair)
            if self.depth is not None and tuple(self.depth.shape) != (s, s):
                raise ValueError(f"image_in depth must be ({s}, {s}), got {tuple(self.depth.shape)}")
            if self.depth_valid is not None and tuple(self.depth_valid.shape) != (s, s):
                raise ValueError(f"image_in depth_valid must be ({s}, {s}), got {tuple(self.depth_valid.shape)}")
            if self.pair is not None and tuple(self.pair.shape) != (s, s, 3):
                raise ValueError(f"image_in pair must be pixels of shape ({s}, {s}, 3), got {tuple(self.pair.shape)}")
        else:
            if self.pair is not None:
                raise ValueError(f"a pair is given to image_in segments only, not {self.kind}")
            n = cfg.latent_grid ** 2
            if self.latents is None or tuple(self.latents.shape) != (n, cfg.latent_dim):
                got = None if self.latents is None else tuple(self.latents.shape)
                raise ValueError(f"{self.kind} segment needs latents of shape ({n}, {cfg.latent_dim}), got {got}")
            _check_finite(f"{self.kind} latents", self.latents)
            if k == IMAGE_GEN and (isinstance(self.t, bool) or not isinstance(self.t, numbers.Real)
                                   or not 0.0 <= self.t <= 1.0):  # "0.5" was a TypeError from the comparison
                raise ValueError(f"image_gen noise level t must be a number in [0, 1], got {self.t!r}")
            if k == IMAGE_GEN and self.noise is not None and tuple(self.noise.shape) != (n, cfg.latent_dim):
                # it would broadcast against the latents: a wrong x_t and flow target, no error
                raise ValueError(f"image_gen noise must be latents of shape ({n}, {cfg.latent_dim}), got "
                                 f"{tuple(self.noise.shape)}")
            if k == IMAGE_GEN and self.noise is not None:
                _check_finite("image_gen noise", self.noise)
            if self.source is not None and (k != IMAGE_GEN or tuple(self.source.shape) != (n, cfg.latent_dim)):
                raise ValueError(f"a source is given to image_gen segments only, as latents of shape "
                                 f"({n}, {cfg.latent_dim}); got {tuple(self.source.shape)} on {self.kind}")
            if self.source is not None:
                _check_finite("image_gen source", self.source)


def _check_finite(name: str, x) -> None:
    """ValueError unless x is a tensor of finite values: NaN latents made every later token's hidden
    state NaN (read by argmax as token 0) without a word; a numpy array failed inside pack."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} hold NaN or infinite values")


def _check_unit(name: str, x) -> None:
    """ValueError unless x is a float tensor of pixels in [0, 1] (RANGE_TOLERANCE): uint8 or 0..255
    pixels were cast to floats far brighter than white, NaN ones passed, a numpy array failed in pack."""
    _check_finite(name, x)
    if not x.is_floating_point():
        raise ValueError(f"{name} must be float in [0, 1], got dtype {x.dtype} (uint8? divide by 255)")
    if x.numel():
        lo, hi = (float(v) for v in x.detach().aminmax())
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            hint = " (0..255? divide by 255)" if hi > 1.5 else ""
            raise ValueError(f"{name} must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]{hint}")


@dataclass
class Batch:
    """Packed rows. Per token (B, L): kind, token id (visual codes offset by the text vocabulary),
    segment id, example id, rotary position, image (or visual-token) cell, unconditional flag, next-token target.
    Flat per kind, in row-major token order: patches and depth targets of image_in tokens; latents,
    noise levels and flow targets of image_gen / image_clean tokens."""

    kind: torch.Tensor
    token: torch.Tensor
    seg: torch.Tensor
    example: torch.Tensor
    pos: torch.Tensor
    cell: torch.Tensor
    uncond: torch.Tensor
    target: torch.Tensor
    patches: torch.Tensor
    latents: torch.Tensor
    t: torch.Tensor
    flow_target: torch.Tensor  # (n_latent, latent_dim); rows without a flow loss are ignored
    flow_mask: torch.Tensor  # (n_latent,) bool
    source: torch.Tensor  # (n_latent, latent_dim): an image_gen token's source latent (zero: none)
    pair: torch.Tensor  # (n_in, p*p*3): an image_in token's paired view's patch of its cell (zero: none)
    depth_target: torch.Tensor  # (n_in, p*p) metres
    depth_mask: torch.Tensor  # (n_in, p*p) bool
    pose_rows: torch.Tensor  # (n_pose,) flat token index (row * L + offset) of each pose target's token
    pose_target: torch.Tensor  # (n_pose, 6) tx ty tz rx ry rz
    where: list[tuple[int, int, int]] = field(default_factory=list)  # per sequence: row, start, length
    end_pos: list[int] = field(default_factory=list)  # per sequence: the next free rotary position
    end_seg: list[int] = field(default_factory=list)  # per sequence: the next segment id

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.kind.shape)

    def to(self, device) -> Batch:
        out = {}
        for k, v in vars(self).items():
            out[k] = v.to(device) if isinstance(v, torch.Tensor) else v
        return Batch(**out)


MIN_SHIFT = 1e-3  # below it s t / (1 + (s - 1) t) loses its float32 precision (and is 0 / 0 near s = 6e-8)


def shift_t(t, shift: float):
    """A noise level (float or tensor) moved toward pure noise: s t / (1 + (s - 1) t), t itself at s = 1.
    Training draws its image_gen levels through it (MixtureConfig.t_shift); the sampler its Euler grid."""
    if not MIN_SHIFT <= shift < float("inf"):
        raise ValueError(f"the noise levels' shift must be a finite number >= {MIN_SHIFT:g}, got {shift}")
    return shift * t / (1.0 + (shift - 1.0) * t)


def _rows(lengths: list[int], row_len: int) -> list[tuple[int, int]]:
    """First-fit placement of sequences into rows: (row, offset) per sequence."""
    free: list[int] = []
    out = []
    for n in lengths:
        if n > row_len:
            raise ValueError(f"a sequence of {n} tokens does not fit in rows of {row_len}")
        for r, used in enumerate(free):
            if used + n <= row_len:
                out.append((r, used))
                free[r] += n
                break
        else:
            out.append((len(free), 0))
            free.append(n)
    return out


def pack(sequences: Sequence[Sequence[Segment]], cfg: OmniConfig, row_len: int | None = None,
         start_pos: Sequence[int] | None = None, start_seg: Sequence[int] | None = None) -> Batch:
    """Pack sequences into rows of `row_len` tokens (default: one row per sequence, as long as
    the longest). start_pos / start_seg continue a KV cache row (one sequence per row then)."""
    for seq in sequences:
        for s in seq:
            s.check(cfg)
    lengths = [sum(s.length(cfg) for s in seq) for seq in sequences]
    if start_pos is not None:
        place = [(i, 0) for i in range(len(sequences))]
        row_len = max(lengths, default=0) if row_len is None else row_len
        if max(lengths, default=0) > row_len:  # one row per sequence, never split: numpy would say "broadcast"
            raise ValueError(f"a sequence of {max(lengths)} tokens does not fit in rows of {row_len}")
    elif row_len is None:
        row_len = max(lengths, default=0)
        place = [(i, 0) for i in range(len(sequences))]
    else:
        place = _rows(lengths, row_len)
    B = max((r for r, _ in place), default=-1) + 1
    L = row_len
    kind = np.full((B, L), PAD, dtype=np.int64)
    token = np.zeros((B, L), dtype=np.int64)
    seg = np.full((B, L), -1, dtype=np.int64)
    example = np.full((B, L), -1, dtype=np.int64)
    pos = np.zeros((B, L), dtype=np.int64)
    cell = np.zeros((B, L), dtype=np.int64)
    uncond = np.zeros((B, L), dtype=bool)
    target = np.full((B, L), IGNORE, dtype=np.int64)
    # flat inputs are gathered per (row, offset) then ordered row-major at the end
    patches, depth_t, depth_m, lat, tt, ft, fm, src, pair, poses = [], [], [], [], [], [], [], [], [], []

    def patchify(x: torch.Tensor) -> torch.Tensor:
        """(H, W) or (H, W, C) -> (cells, patch * patch * C), cells row-major, each patch row-major."""
        return image_patches(x.reshape(1, *x.shape[:2], -1), cfg.patch)[0]

    seg_counter = {}
    end_pos: list[int] = []
    end_seg: list[int] = []
    for si, (seq, (r, off)) in enumerate(zip(sequences, place, strict=True)):
        p = start_pos[si] if start_pos is not None else 0
        sid = start_seg[si] if start_seg is not None else seg_counter.get(r, 0)
        i = off
        for s in seq:
            k = s.kind_id
            n = s.length(cfg)
            sl = slice(i, i + n)
            kind[r, sl], seg[r, sl], example[r, sl] = k, sid, si
            if k in (TEXT, VISUAL):
                ids = np.asarray(s.tokens, dtype=np.int64) + (cfg.text_vocab if k == VISUAL else 0)
                token[r, sl] = ids
                pos[r, sl] = p + np.arange(n)
                if k == VISUAL:
                    cell[r, sl] = (s.cell0 + np.arange(n)) % cfg.latent_grid ** 2
                p += n
                if s.pose is not None:
                    poses.append((r, i, s.pose.float()[None]))
                if s.loss:
                    # position j predicts token j + 1; the first token is predicted by the token before
                    # the segment (when there is one in this sequence and it is not a generated image)
                    if i > off and kind[r, i - 1] != IMAGE_GEN:
                        target[r, i - 1] = ids[0]
                    target[r, i:i + n - 1] = ids[1:]
            else:
                pos[r, sl] = p
                p += 1
                cell[r, sl] = np.arange(n)
                if k == IMAGE_IN:
                    patches.append((r, i, patchify(s.pixels.float())))
                    pair.append((r, i, torch.zeros(n, cfg.patch_dim) if s.pair is None else
                                 patchify(s.pair.float())))
                    if s.depth is not None:
                        d = patchify(s.depth.float())
                        v = (torch.ones_like(d, dtype=torch.bool) if s.depth_valid is None else
                             patchify(s.depth_valid.bool()))
                        depth_t.append((r, i, d))
                        depth_m.append((r, i, v & (d > 0)))
                    else:
                        depth_t.append((r, i, torch.ones(n, cfg.patch * cfg.patch)))
                        depth_m.append((r, i, torch.zeros(n, cfg.patch * cfg.patch, dtype=torch.bool)))
                else:
                    x0 = s.latents.float()
                    if k == IMAGE_GEN and s.loss:
                        if s.noise is None:
                            raise ValueError("an image_gen segment with a flow loss needs its noise")
                        xt = (1 - s.t) * x0 + s.t * s.noise
                        lat.append((r, i, xt))
                        ft.append((r, i, s.noise - x0))
                        fm.append((r, i, torch.ones(n, dtype=torch.bool)))
                    else:
                        lat.append((r, i, x0))
                        ft.append((r, i, torch.zeros_like(x0)))
                        fm.append((r, i, torch.zeros(n, dtype=torch.bool)))
                    tt.append((r, i, torch.full((n,), s.t if k == IMAGE_GEN else 0.0)))
                    src.append((r, i, torch.zeros_like(x0) if s.source is None else s.source.float()))
                    uncond[r, sl] = s.uncond and k == IMAGE_GEN
            sid += 1
            i += n
        seg_counter[r] = sid
        end_pos.append(p)
        end_seg.append(sid)

    def flat(items, width, dtype=torch.float32):
        items = sorted(items, key=lambda x: (x[0], x[1]))
        if not items:
            return torch.zeros((0, *width), dtype=dtype)
        return torch.cat([x for _, _, x in items]).to(dtype)

    return Batch(
        kind=torch.from_numpy(kind), token=torch.from_numpy(token), seg=torch.from_numpy(seg),
        example=torch.from_numpy(example), pos=torch.from_numpy(pos), cell=torch.from_numpy(cell),
        uncond=torch.from_numpy(uncond), target=torch.from_numpy(target),
        patches=flat(patches, (cfg.patch_dim,)), latents=flat(lat, (cfg.latent_dim,)), t=flat(tt, ()),
        flow_target=flat(ft, (cfg.latent_dim,)), flow_mask=flat(fm, (), torch.bool),
        source=flat(src, (cfg.latent_dim,)), pair=flat(pair, (cfg.patch_dim,)),
        depth_target=flat(depth_t, (cfg.patch * cfg.patch,)), depth_mask=flat(depth_m, (cfg.patch * cfg.patch,),
                                                                            torch.bool),
        pose_rows=torch.tensor(sorted(r * row_len + i for r, i, _ in poses), dtype=torch.long),
        pose_target=flat(poses, (6,)),
        where=[(r, off, n) for (r, off), n in zip(place, lengths, strict=True)], end_pos=end_pos, end_seg=end_seg)


def attention_mask(b: Batch) -> torch.Tensor:
    """(B, 1, L, L) bool, True where query i may attend to key j: the same example, and either the
    same segment (every token of an image; earlier-or-same tokens of text and visual segments) or
    an earlier segment that is not a generated image — unless i belongs to an unconditional
    image_gen segment, which sees only itself. Padding attends to itself."""
    kind, seg, ex = b.kind, b.seg, b.example
    L = kind.shape[1]
    same_ex = (ex[:, :, None] == ex[:, None, :]) & (ex[:, :, None] >= 0)
    same_seg = seg[:, :, None] == seg[:, None, :]
    full = torch.zeros_like(kind, dtype=torch.bool)
    for k in FULL_ATTENTION_KINDS:
        full |= kind == k
    idx = torch.arange(L, device=kind.device)
    causal = idx[None, :, None] >= idx[None, None, :]
    within = same_seg & (full[:, :, None] | causal)
    earlier = (seg[:, None, :] < seg[:, :, None]) & (kind[:, None, :] != IMAGE_GEN) & ~b.uncond[:, :, None]
    mask = same_ex & (within | earlier)
    pad = kind == PAD
    mask |= pad[:, :, None] & torch.eye(L, dtype=torch.bool, device=kind.device)[None]
    return mask[:, None]
