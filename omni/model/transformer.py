"""The omni transformer: a BAGEL-style mixture of transformer experts.

Every layer holds two experts with their own norms, QKV, output projection and MLP — the
understanding expert (text, input images) and the generation expert (images being generated or
written back, visual tokens) — and one self-attention shared over the whole packed sequence.
The generation expert's norms are modulated by the noise level (adaLN-zero), so it knows how noisy
the latents it reads are. Rotary positions are 1D (an image takes one position; learned cell
embeddings place its tokens in 2D; with rope_2d its tokens' rotary angles also carry their row and
column). Optional: each expert's MLP a mixture of MLPs (top-k routing,
load-balancing loss), as the paper's model is MoE.

Heads: a language-model head tied to the token embedding over text + visual codes; a flow head
(velocity of image_gen latents); a depth head (log-depth of every pixel of image_in patches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from omni.world.tasks import POSE_CENTRE, POSE_SPREAD

from .batch import IGNORE, Batch, Segment, attention_mask
from .config import EXPERT_OF_KIND, GEN, IMAGE_CLEAN, IMAGE_GEN, IMAGE_IN, TEXT, UND, VISUAL, OmniConfig


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):  # written out: F.rms_norm is a slow composite on the CPU (it copies)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(pos: torch.Tensor, dim: int, theta: float,
                offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (*pos.shape, dim / 2) for rotary embeddings at integer positions. `offset`
    (*pos.shape, 2), an image token's row and column offset from its image's centre (rope_2d): the
    frequencies i with i % 3 == 1 turn with pos + row offset, those with i % 3 == 2 with pos + column
    offset, the rest with pos (a zero offset is 1D rotary)."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=pos.device, dtype=torch.float32) / dim))
    p = pos.float()[..., None]
    if offset is not None:
        axis = torch.arange(dim // 2, device=pos.device) % 3
        p = p + torch.where(axis == 1, offset[..., :1], torch.where(axis == 2, offset[..., 1:], 0.0))
    ang = p * inv
    return ang.cos(), ang.sin()


def cell_offsets(b: Batch, cfg: OmniConfig) -> torch.Tensor:
    """(B, L, 2) float: each image token's row and column offset from its image's centre (input
    images on the patch grid, latents on the latent grid); zero for text, visual tokens, padding."""
    off = torch.zeros(*b.kind.shape, 2, device=b.kind.device)
    for kinds, g in (((IMAGE_IN,), cfg.patch_grid), ((IMAGE_GEN, IMAGE_CLEAN), cfg.latent_grid)):
        m = torch.isin(b.kind, torch.tensor(kinds, device=b.kind.device))
        rc = torch.stack([b.cell // g, b.cell % g], dim=-1).float() - (g - 1) / 2
        off = torch.where(m[..., None], rc, off)
    return off


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, D) rotated pairwise (first half, second half) by angles (B, L, D/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[:, None], sin[:, None]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


class SwiGLU(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w13 = nn.Linear(d, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


class MoE(nn.Module):
    """Top-k mixture of SwiGLU MLPs with a Switch-style load-balancing loss."""

    def __init__(self, d: int, hidden: int, n: int, k: int):
        super().__init__()
        self.router = nn.Linear(d, n, bias=False)
        self.experts = nn.ModuleList(SwiGLU(d, hidden) for _ in range(n))
        self.k = k
        self.aux = torch.zeros(())
        self.full_graph = False  # see OmniModel.full_graph

    def forward(self, x):
        probs = self.router(x).softmax(-1)  # (N, E)
        w, idx = probs.topk(self.k, dim=-1)
        w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        n = len(self.experts)
        for e, mlp in enumerate(self.experts):
            rows, slot = torch.nonzero(idx == e, as_tuple=True)
            if len(rows) or self.full_graph:
                out.index_add_(0, rows, (mlp(x[rows]) * w[rows, slot, None]).to(out.dtype))  # bf16 under autocast
        frac = torch.bincount(idx[:, 0], minlength=n).float() / max(len(x), 1)
        self.aux = n * (frac * probs.mean(0)).sum()
        return out


class Expert(nn.Module):
    """One expert's weights in one layer."""

    def __init__(self, cfg: OmniConfig, adaptive: bool):
        super().__init__()
        d, eps = cfg.d_model, cfg.norm_eps
        self.norm1, self.norm2 = RMSNorm(d, eps), RMSNorm(d, eps)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.q_norm, self.k_norm = RMSNorm(cfg.head_dim, eps), RMSNorm(cfg.head_dim, eps)
        self.proj = nn.Linear(d, d, bias=False)
        self.mlp = (MoE(d, cfg.mlp_hidden, cfg.moe_experts, cfg.moe_top_k) if cfg.moe_experts
                    else SwiGLU(d, cfg.mlp_hidden))
        self.ada = nn.Linear(d, 6 * d) if adaptive else None  # shift, scale, gate (attention, MLP)
        if self.ada is not None:
            nn.init.zeros_(self.ada.weight)
            nn.init.zeros_(self.ada.bias)


@dataclass
class Routing:
    """What every layer of one forward pass shares: which flattened rows each expert owns, the
    generation expert's conditioning, rotary tables, the attention mask and the cache."""

    rows: list[torch.Tensor]  # [UND rows (padding included), GEN rows] of the (B * L) tokens
    present: list[int]  # the experts that own at least one token
    c_gen: torch.Tensor | None  # the GEN rows' conditioning (timestep embedding)
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor
    cache: object = None
    store: bool = False
    moe_aux: list = field(default_factory=list)
    full_graph: bool = False  # run both experts even on no tokens (see OmniModel.full_graph)

    def per_expert(self, xf: torch.Tensor, fn) -> torch.Tensor:
        """fn(expert, its tokens' rows of xf) for each expert present, reassembled in token order."""
        if len(self.present) == 1 and not self.full_graph:  # one expert owns every token: no gathering
            return fn(self.present[0], xf)
        out = None
        for e in ((UND, GEN) if self.full_graph else self.present):
            y = fn(e, xf.index_select(0, self.rows[e]))
            if out is None:
                out = xf.new_empty(xf.shape[0], *y.shape[1:])
            out.index_copy_(0, self.rows[e], y.to(out.dtype))  # under autocast y is bf16, xf fp32
        return out


class Layer(nn.Module):
    """One layer: both experts and the attention they share. A module call of its own, so that a
    sharding wrapper (FSDP) gathers one layer's weights at a time."""

    def __init__(self, cfg: OmniConfig):
        super().__init__()
        self.cfg = cfg
        self.experts = nn.ModuleList([Expert(cfg, adaptive=False), Expert(cfg, adaptive=True)])

    def forward(self, x: torch.Tensor, r: Routing, li: int) -> torch.Tensor:
        cfg, ex = self.cfg, self.experts
        B, L, d = x.shape
        H, dh = cfg.n_heads, cfg.head_dim
        mods = ex[GEN].ada(r.c_gen).chunk(6, dim=-1) if r.c_gen is not None else None

        def qkv_of(e, h):
            h = ex[e].norm1(h)
            if e == GEN:
                h = h * (1 + mods[1]) + mods[0]
            q, k, v = ex[e].qkv(h).reshape(-1, 3, H, dh).unbind(1)
            return torch.stack([ex[e].q_norm(q), ex[e].k_norm(k), v], 1)

        def proj_of(e, a):
            o = ex[e].proj(a)
            return o * mods[2] if e == GEN else o

        def mlp_of(e, h):
            h = ex[e].norm2(h)
            if e == GEN:
                h = h * (1 + mods[4]) + mods[3]
            o = ex[e].mlp(h)
            if cfg.moe_experts:
                r.moe_aux.append(ex[e].mlp.aux)
            return o * mods[5] if e == GEN else o

        xf = x.reshape(B * L, d)
        q, k, v = r.per_expert(xf, qkv_of).reshape(B, L, 3, H, dh).permute(2, 0, 3, 1, 4)  # (B, H, L, dh)
        q, k = apply_rope(q, r.cos, r.sin), apply_rope(k, r.cos, r.sin)
        k_all, v_all = r.cache.keys_values(li, k, v, r.store) if r.cache is not None else (k, v)
        att = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=r.mask)
        xf = xf + r.per_expert(att.transpose(1, 2).reshape(B * L, d), proj_of)
        return (xf + r.per_expert(xf, mlp_of)).reshape(B, L, d)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = (t.float() * 1000.0)[:, None] * freqs
    return torch.cat([ang.cos(), ang.sin()], dim=-1)


class OmniModel(nn.Module):
    # parameters that exist only with an optional feature, each doing nothing at zero (a checkpoint
    # trained without the feature can start a run with it: omni train --init-from)
    FEATURE_PARAMS = ("cell_vis", "source_in.weight", "pair_in.weight", "pose_head.weight", "pose_head.bias",
                      "stem_in.weight")
    # ... and those that start at the new model's own (seeded) draw instead: the conv stem's convolution,
    # whose features reach nothing until stem_in (zero) grows (both at zero, neither would ever move)
    FEATURE_OWN_INIT = ("stem_conv.weight", "stem_conv.bias")
    # the names of the generation side's tensors: the generation expert of every layer and what only it
    # reads or writes (latents in, their cells and the visual tokens', the noise level, its final norm and
    # modulation, the flow head); the rest is the understanding side and what both share (the token
    # embedding, the attention between them is computed from each side's own projections)
    GENERATION_TENSORS = (r"^(layers\.\d+\.experts\.1\.|latent_in\.|cell_gen$|cell_vis$|source_in\.|time_mlp\.|"
                          r"norm_gen\.|final_ada\.|flow_head\.)")

    def __init__(self, cfg: OmniConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.patch_in = nn.Linear(cfg.patch_dim, d)
        self.cell_in = nn.Parameter(torch.zeros(cfg.patch_grid ** 2, d))
        self.latent_in = nn.Linear(cfg.latent_dim, d)
        self.cell_gen = nn.Parameter(torch.zeros(cfg.latent_grid ** 2, d))
        if cfg.visual_cells:
            self.cell_vis = nn.Parameter(torch.zeros(cfg.latent_grid ** 2, d))
        if cfg.source_cond:
            self.source_in = nn.Linear(cfg.latent_dim, d, bias=False)
        if cfg.pair_cond:
            self.pair_in = nn.Linear(cfg.patch_dim, d, bias=False)
        if cfg.conv_stem:
            self.stem_conv = nn.Conv2d(3, cfg.conv_stem, 3, padding=1)
            self.stem_in = nn.Linear(cfg.patch * cfg.patch * cfg.conv_stem, d, bias=False)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.norm_und = RMSNorm(d, cfg.norm_eps)
        self.norm_gen = RMSNorm(d, cfg.norm_eps)
        self.final_ada = nn.Linear(d, 2 * d)
        self.flow_head = nn.Linear(d, cfg.latent_dim)
        self.depth_head = nn.Linear(d, cfg.patch * cfg.patch)
        if cfg.pose_head:
            self.pose_head = nn.Linear(d, 6)
        self._init()
        # tokenizers travel with the model (set by from_pretrained / the training code); the visual
        # tokenizer is frozen and saved in its own file, so it is kept out of the module tree
        self.tokenizer = None
        object.__setattr__(self, "visual", None)
        # full_graph: every parameter takes part in every forward pass (on empty inputs where it owns
        # no tokens), so every rank of a sharded data-parallel run (FSDP) produces a gradient for
        # each and their reduce-scatters match; gradients of unused parameters are then zero, not None
        self.full_graph = False

    def set_full_graph(self, on: bool = True) -> None:
        self.full_graph = on
        for m in self.modules():
            if isinstance(m, MoE):
                m.full_graph = on

    def _init(self):
        std = 0.02
        for name, p in self.named_parameters():
            if p.ndim == 2 and "ada" not in name:
                nn.init.normal_(p, std=std)
        for layer in self.layers:
            for e in layer.experts:
                nn.init.normal_(e.proj.weight, std=std / math.sqrt(2 * self.cfg.n_layers))
        for p in (self.cell_in, self.cell_gen, *([self.cell_vis] if self.cfg.visual_cells else [])):
            nn.init.normal_(p, std=std)
        if self.cfg.source_cond:  # at zero the source changes nothing until training finds a use for it
            nn.init.zeros_(self.source_in.weight)
        if self.cfg.pair_cond:  # likewise: view 1's patches change nothing until training uses them
            nn.init.zeros_(self.pair_in.weight)
        if self.cfg.conv_stem:  # likewise the stem's features (its convolution keeps torch's own draw)
            nn.init.zeros_(self.stem_in.weight)
        nn.init.zeros_(self.final_ada.weight)
        nn.init.zeros_(self.final_ada.bias)
        nn.init.zeros_(self.flow_head.weight)
        nn.init.zeros_(self.flow_head.bias)
        nn.init.zeros_(self.depth_head.weight)
        nn.init.constant_(self.depth_head.bias, math.log(5.0))
        if self.cfg.pose_head:  # at zero it predicts the centre pose and its loss leaves the rest alone
            nn.init.zeros_(self.pose_head.weight)
            nn.init.zeros_(self.pose_head.bias)

    def save_pretrained(self, directory, **kw):
        """config.json, model.safetensors, tokenizer.json, visual_tokenizer.* (see checkpoint.py)."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, directory, **kw)

    @classmethod
    def from_pretrained(cls, directory, **kw) -> OmniModel:
        from .checkpoint import from_pretrained

        return from_pretrained(directory, **kw)

    def num_params(self, expert: int | None = None) -> int:
        if expert is None:
            return sum(p.numel() for p in self.parameters())
        return sum(p.numel() for layer in self.layers for p in layer.experts[expert].parameters())

    # -- embeddings ----------------------------------------------------------------------------

    def embed(self, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Input vectors (B, L, d) and the generation expert's conditioning (B, L, d)."""
        B, L = b.kind.shape
        d = self.cfg.d_model
        kind = b.kind.reshape(-1)
        x = self.tok_emb(b.token.reshape(-1).clamp_min(0))  # text and visual tokens (others overwritten)
        cell = b.cell.reshape(-1)
        if self.cfg.visual_cells:
            vis_rows = torch.nonzero(kind == VISUAL).squeeze(1)
            if len(vis_rows) or self.full_graph:
                x = x.index_add(0, vis_rows, self.cell_vis[cell[vis_rows]])
        in_rows = torch.nonzero(kind == IMAGE_IN).squeeze(1)
        if len(in_rows):
            h_in = self.patch_in(b.patches.to(x.dtype)) + self.cell_in[cell[in_rows]]
            if self.cfg.pair_cond:
                h_in = h_in + self.pair_in(b.pair.to(x.dtype))
            if self.cfg.conv_stem:
                h_in = h_in + self.stem_in(self._stem(b.patches.to(x.dtype), cell[in_rows]))
            x = x.index_copy(0, in_rows, h_in)
        elif self.cfg.conv_stem and self.full_graph:  # every parameter in every pass (FSDP), here at no cost
            x = x + 0.0 * (self.stem_in.weight.sum() + sum(p.sum() for p in self.stem_conv.parameters()))
        lat_rows = torch.nonzero((kind == IMAGE_GEN) | (kind == IMAGE_CLEAN)).squeeze(1)
        t_all = torch.zeros(B * L, device=x.device)
        if len(lat_rows):
            h_lat = self.latent_in(b.latents.to(x.dtype)) + self.cell_gen[cell[lat_rows]]
            if self.cfg.source_cond:
                h_lat = h_lat + self.source_in(b.source.to(x.dtype))
            x = x.index_copy(0, lat_rows, h_lat)
            t_all = t_all.index_copy(0, lat_rows, b.t.to(t_all.dtype))
        cond = self.time_mlp(timestep_embedding(t_all, d))
        return x.reshape(B, L, d), cond.reshape(B, L, d)

    def _stem(self, patches: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The conv stem's features of the input images whose patches (N, p * p * 3) these are, as the
        patches are laid out (each image's cells in order, cells and pixels row-major): (N, p * p * C)."""
        g, p, c = self.cfg.patch_grid, self.cfg.patch, self.cfg.conv_stem
        n = len(patches) // (g * g)
        if n * g * g != len(patches) or not torch.equal(
                cells, torch.arange(g * g, device=cells.device).repeat(n)):
            raise ValueError("the conv stem needs whole input images, each image's cells in order")
        img = patches.reshape(n, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(n, 3, g * p, g * p)
        f = nn.functional.gelu(self.stem_conv(img))
        return f.reshape(n, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(n * g * g, p * p * c)

    # -- the layers -----------------------------------------------------------------------------

    def run(self, b: Batch, mask: torch.Tensor, cache=None, store: bool = False) -> torch.Tensor:
        """Final hidden states (B, L, d) of the batch's tokens (normalised per expert). With a cache,
        the tokens continue it (attending to every cached token unless unconditional); with
        store=True their keys and values are appended."""
        cfg = self.cfg
        if self.tok_emb.weight.dtype != torch.float32:  # it failed deep inside (fp32 timestep features meet
            # bf16 weights), or later in the fp32 KV cache
            raise TypeError(f"OmniModel runs on float32 weights, these are {self.tok_emb.weight.dtype}: keep the "
                            "weights in float32 (from_pretrained casts a bf16 checkpoint) and compute in bf16 under "
                            "torch.autocast")
        B, L = b.kind.shape
        x, cond = self.embed(b)
        kind = b.kind.reshape(-1)
        gen = torch.zeros_like(kind, dtype=torch.bool)
        for k, e in EXPERT_OF_KIND.items():
            if e == GEN:
                gen |= kind == k
        rows = [torch.nonzero(~gen).squeeze(1), torch.nonzero(gen).squeeze(1)]  # UND (incl. padding), GEN
        present = [e for e in (UND, GEN) if len(rows[e])]
        c_gen = (cond.reshape(B * L, -1).index_select(0, rows[GEN]) if len(rows[GEN]) or self.full_graph
                 else None)
        cos, sin = rope_tables(b.pos, cfg.head_dim, cfg.rope_theta, cell_offsets(b, cfg) if cfg.rope_2d else None)
        r = Routing(rows, present, c_gen, cos, sin, mask, cache, store, full_graph=self.full_graph)
        for li, layer in enumerate(self.layers):
            x = layer(x, r, li)
        self._moe_aux = r.moe_aux
        if cache is not None and store:
            cache.commit(b, L)

        def final(e, h):
            if e == UND:
                return self.norm_und(h)
            shift, scale = self.final_ada(c_gen).chunk(2, dim=-1)
            return self.norm_gen(h) * (1 + scale) + shift

        return r.per_expert(x.reshape(B * L, -1), final).reshape(B, L, -1)

    def forward(self, b: Batch, losses: bool = False):
        """Final hidden states (B, L, d) of a packed batch, in one call; or, with losses=True, the
        loss dict (so that a DistributedDataParallel wrapper sees the whole training computation)."""
        return self.losses(b) if losses else self.run(b, attention_mask(b))

    # -- heads ----------------------------------------------------------------------------------

    def logits(self, h: torch.Tensor, cols: slice = slice(None)) -> torch.Tensor:
        """Next-token logits over the vocabulary, or over `cols` of it only (text or visual codes)."""
        return h @ self.tok_emb.weight[cols].T

    def velocity(self, h_lat: torch.Tensor) -> torch.Tensor:
        return self.flow_head(h_lat)

    def log_depth(self, h_in: torch.Tensor) -> torch.Tensor:
        return self.depth_head(h_in)

    def pose(self, h: torch.Tensor, standardised: bool = False) -> torch.Tensor:
        """The six pose numbers (tx ty tz rx ry rz) read off hidden states of <campose> tokens
        (pose_head): the head predicts them standardised by the world's pose spread (POSE_CENTRE,
        POSE_SPREAD), so that a tilt of 0.1 rad weighs as much as a shift of 2.5 m; returned in the
        pose text's units unless `standardised`."""
        if not self.cfg.pose_head:
            raise ValueError("this model has no pose head (OmniConfig.pose_head is off)")
        z = self.pose_head(h)
        return z if standardised else z * z.new_tensor(POSE_SPREAD) + z.new_tensor(POSE_CENTRE)

    def losses(self, b: Batch) -> dict[str, torch.Tensor]:
        """Weighted sum (`loss`) of: next-token CE on text and on visual tokens, flow-matching MSE on
        image_gen latents (velocity noise - x0), a depth loss on image_in pixels, the pose head's
        smooth-L1 loss on the pose texts' standardised numbers (pose_head), MoE balance."""
        cfg = self.cfg
        h = self.run(b, attention_mask(b)).reshape(-1, cfg.d_model)
        out: dict[str, torch.Tensor] = {}
        zero = h.sum() * 0.0
        tgt = b.target.reshape(-1)
        sel = torch.nonzero(tgt != IGNORE).squeeze(1)
        if len(sel):
            lg = self.logits(h.index_select(0, sel))
            t = tgt.index_select(0, sel)
            ce = F.cross_entropy(lg, t, reduction="none")
            is_vis = t >= cfg.text_vocab
            out["text_ce"] = ce[~is_vis].mean() if (~is_vis).any() else zero
            out["visual_ce"] = ce[is_vis].mean() if is_vis.any() else zero
        else:
            out["text_ce"] = out["visual_ce"] = zero
        kind = b.kind.reshape(-1)
        lat_rows = torch.nonzero((kind == IMAGE_GEN) | (kind == IMAGE_CLEAN)).squeeze(1)
        if len(lat_rows) and b.flow_mask.any():
            v = self.velocity(h.index_select(0, lat_rows))
            m = b.flow_mask
            out["flow_mse"] = F.mse_loss(v[m].float(), b.flow_target[m].float())  # fp32 targets under autocast
        else:
            out["flow_mse"] = zero
        in_rows = torch.nonzero(kind == IMAGE_IN).squeeze(1)
        if len(in_rows) and b.depth_mask.any():
            pred = self.log_depth(h.index_select(0, in_rows))
            out["depth"] = self._depth_loss(pred, b, in_rows)
        else:
            out["depth"] = zero
        if self.cfg.pose_head and len(b.pose_rows):
            z = self.pose(h.index_select(0, b.pose_rows), standardised=True).float()
            tgt = b.pose_target.float()
            out["pose"] = F.smooth_l1_loss(z, (tgt - tgt.new_tensor(POSE_CENTRE)) / tgt.new_tensor(POSE_SPREAD))
        else:
            out["pose"] = zero
        out["moe_balance"] = torch.stack(self._moe_aux).mean() if self._moe_aux else zero
        if self.full_graph:  # the heads and embeddings this batch left unused (the layers ran in full)
            out["moe_balance"] = out["moe_balance"] + sum(
                p.sum() for n, p in self.named_parameters() if not n.startswith("layers.")) * 0.0
        out["loss"] = (cfg.w_text * out["text_ce"] + cfg.w_visual * out["visual_ce"] + cfg.w_flow * out["flow_mse"]
                       + cfg.w_depth * out["depth"] + cfg.w_pose * out["pose"]
                       + cfg.w_moe_balance * out["moe_balance"])
        return out

    def _depth_loss(self, pred: torch.Tensor, b: Batch, in_rows: torch.Tensor) -> torch.Tensor:
        m = b.depth_mask
        d = (pred - b.depth_target.clamp_min(1e-3).log())[m]
        if self.cfg.depth_loss == "l1_log":
            return d.abs().mean()
        # scale-invariant log loss (Eigen et al., lambda = 0.85), per image, then the mean over images
        B, L = b.kind.shape
        img = (b.example.reshape(-1) * (B * L) + b.seg.reshape(-1)).index_select(0, in_rows)
        _, img = torch.unique(img, return_inverse=True)
        img = img[:, None].expand_as(m)[m]
        n = torch.bincount(img).clamp_min(1).to(d.dtype)
        s1 = torch.zeros_like(n).index_add_(0, img, d)
        s2 = torch.zeros_like(n).index_add_(0, img, d * d)
        per = s2 / n - 0.85 * (s1 / n) ** 2
        return torch.sqrt(per.clamp_min(1e-8)).mean()


def extend(model: OmniModel, cache, segments, store: bool = True) -> tuple[torch.Tensor, Batch]:
    """Run new segments (one list per cache row, or one list for a one-row cache) after the cached
    context; with store=True they join the cache. Returns their final hidden states and batch."""
    if segments and isinstance(segments[0], Segment):
        segments = [segments]
    if store and any(isinstance(s, Segment) and s.kind == "image_gen" for row in segments for s in row):
        # its keys would join the cache, where every later token sees them: one encoding of the same
        # context hides a generated image from every later segment (attention_mask)
        raise ValueError("an image_gen segment cannot be stored in the KV cache (later tokens would see its noisy "
                         "latents): run it with store=False, then cache.advance() past its position")
    if cache.recompute:  # the no-reuse baseline (RecomputingCache): encode the whole context first
        cache.refill(model)
    device = cache.check_device(model)
    b = cache.pack(segments).to(device)
    h = model.run(b, cache.mask(b), cache=cache, store=store)
    if store:
        cache.last_hidden = h[:, -1]
        if cache.recompute:
            cache.remember(segments)
    return h, b


def decode_weights(model: OmniModel, e: int) -> list[dict]:
    """Expert e's per-layer weights laid out for one-token steps: matrices transposed to (in, out)
    and contiguous (a 1-row GEMV reads them about 20% faster on the CPU than F.linear's (out, in));
    for the understanding expert (no adaLN between norm and matrix) the RMSNorm weights folded into
    the rows of the matrix after them, (x * g) @ W = x @ (diag(g) W), saving a call each; the q/k
    norm weights stacked. A copy of that expert's weights, kept on the model and rebuilt whenever
    any of them changed (storage or in-place version: an optimizer step, a load, .to())."""
    exs = [layer.experts[e] for layer in model.layers]
    params = [p for ex in exs for p in (ex.norm1.weight, ex.norm2.weight, ex.qkv.weight, ex.q_norm.weight,
                                        ex.k_norm.weight, ex.proj.weight, *ex.mlp.parameters())]
    key = tuple((p.data_ptr(), p._version) for p in params)
    packs = model.__dict__.setdefault("_decode_packs", {})
    if e in packs and packs[e][0] == key:
        return packs[e][1]
    fold = e == UND
    out = []
    with torch.no_grad():
        for ex in exs:
            g1, g2 = ex.norm1.weight.detach(), ex.norm2.weight.detach()
            qkv = ex.qkv.weight.detach().t()
            w = dict(norm1=None if fold else g1, norm2=None if fold else g2,
                     qk_norm=torch.stack([ex.q_norm.weight, ex.k_norm.weight]).detach()[:, None],
                     qkv=(qkv * g1[:, None] if fold else qkv).contiguous(),
                     proj=ex.proj.weight.detach().t().contiguous(), ada=ex.ada, mlp=ex.mlp)
            if not isinstance(ex.mlp, MoE):
                w13 = ex.mlp.w13.weight.detach().t()
                w["mlp"] = ((w13 * g2[:, None] if fold else w13).contiguous(),
                            ex.mlp.w2.weight.detach().t().contiguous())
            elif fold:
                w["norm2"] = g2
            out.append(w)
    packs[e] = (key, out, [p.detach() for p in params])  # holding the storages: their addresses stay unique
    return out


def _rope_rows(model: OmniModel, pos: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """[cos, cos] and [-sin, sin] (rows, 1, 1, head_dim) at the given positions, from a table of
    every position up to 2 x max_seq built once per device, grown if a position lies beyond it
    (rotary as x * c + roll(x, dh/2) * s)."""
    cfg = model.cfg
    tables = model.__dict__.setdefault("_rope_tables", {})
    need = max(pos) + 1
    if str(device) not in tables or len(tables[str(device)][0]) < need:
        cos, sin = rope_tables(torch.arange(max(2 * cfg.max_seq, 2 * need), device=device), cfg.head_dim,
                               cfg.rope_theta)
        tables[str(device)] = (torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1))
    c, s = tables[str(device)]
    idx = torch.tensor(pos, device=device)
    return c[idx][:, None, None], s[idx][:, None, None]


@torch.no_grad()
def decode_step(model: OmniModel, cache, ids: torch.Tensor, kind: int,
                weights: list[dict] | None = None, cell: int = 0) -> torch.Tensor:
    """Append one text (kind TEXT) or visual (kind VISUAL; code ids) token per cache row and return
    its final hidden state (rows, d): the same computation as `extend` with a one-token segment,
    written with few functional calls on weights laid out for it (`decode_weights`), a rotary
    table and no packed batch or mask (a new token sees the whole cache), since one token's step is
    dominated by per-call overhead and weight reads on the CPU. A caller that runs many steps passes
    `weights=decode_weights(model, expert)` once instead of having each step look them up. `cell`:
    a visual token's grid cell (its index in its <vis> block), as `Segment.cell0`."""
    if kind not in (TEXT, VISUAL):
        raise ValueError("decode_step takes text or visual tokens")
    cfg = model.cfg
    rows, d, H, dh, eps = cache.rows, cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.norm_eps
    e = EXPERT_OF_KIND[kind]
    # what pack checks of a segment's ids: another count failed in a reshape ("shape ... is invalid"), and a
    # text id past the text vocabulary silently embedded a visual code (and a visual one a text token)
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"decode_step takes its ids as a tensor of shape ({rows},), got {type(ids).__name__}")
    if tuple(ids.shape) != (rows,):
        raise ValueError(f"decode_step takes one id per cache row: ids of shape ({rows},), got {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:  # .long() made 5.7 id 5, True id 1
        raise ValueError(f"decode_step takes integer token ids, got dtype {ids.dtype}")
    hi = cfg.text_vocab if kind == TEXT else cfg.codebook_size
    if rows and not (int(ids.min()) >= 0 and int(ids.max()) < hi):
        raise ValueError(f"{'text' if kind == TEXT else 'visual'} token ids must lie in [0, {hi}), got {ids.tolist()}")
    if cache.recompute:  # the no-reuse baseline (RecomputingCache): encode the whole context first
        cache.refill(model)
        cache.remember([[Segment("text" if kind == TEXT else "visual", [int(i)], cell0=cell)] for i in ids.tolist()])
    n = cache.length
    if n + 1 > cache.max_len:
        raise ValueError(f"KV cache full: {n} + 1 tokens > {cache.max_len}")
    device = cache.check_device(model)
    tok = ids.to(device).long() + (cfg.text_vocab if kind == VISUAL else 0)
    x = F.embedding(tok, model.tok_emb.weight)  # (rows, d)
    if kind == VISUAL and cfg.visual_cells:
        x = x + model.cell_vis[cell % cfg.latent_grid ** 2]
    cos2, sin2 = _rope_rows(model, cache.next_pos, device)  # broadcast over q/k and heads
    cond = model.time_mlp(timestep_embedding(torch.zeros(rows, device=device), d)) if e == GEN else None

    def rms(v, w):  # the RMSNorm above in fewer, cheaper calls (mean() upcasts and divides apart)
        ss = torch.linalg.vector_norm(v, dim=-1, keepdim=True).square_()
        v = v * ss.mul_(1.0 / v.shape[-1]).add_(eps).rsqrt_()
        return v if w is None else v * w  # None: the weight is folded into the next matrix

    for li, w in enumerate(weights or decode_weights(model, e)):
        mods = F.linear(cond, w["ada"].weight, w["ada"].bias).chunk(6, dim=-1) if e == GEN else None
        h = rms(x, w["norm1"])
        if mods is not None:
            h = h * (1 + mods[1]) + mods[0]
        qkv = (h @ w["qkv"]).view(rows, 3, H, dh)
        qk = rms(qkv[:, :2], w["qk_norm"])
        qk = qk * cos2 + torch.roll(qk, dh // 2, dims=-1) * sin2
        cache.k[li, :, :, n] = qk[:, 1]
        cache.v[li, :, :, n] = qkv[:, 2]
        att = F.scaled_dot_product_attention(qk[:, 0, :, None], cache.k[li, :, :, :n + 1], cache.v[li, :, :, :n + 1])
        o = att.view(rows, d) @ w["proj"]
        x = x + (o * mods[2] if mods is not None else o)
        h = rms(x, w["norm2"])
        if mods is not None:
            h = h * (1 + mods[4]) + mods[3]
        if isinstance(w["mlp"], MoE):
            o = w["mlp"](h)
        else:
            a, b = (h @ w["mlp"][0]).chunk(2, dim=-1)
            o = (F.silu(a) * b) @ w["mlp"][1]
        x = x + (o * mods[5] if mods is not None else o)
    cache.length = n + 1
    cache.next_pos = [p + 1 for p in cache.next_pos]
    cache.next_seg = [s + 1 for s in cache.next_seg]
    if e == UND:
        h = rms(x, model.norm_und.weight)
    else:
        shift, scale = F.linear(cond, model.final_ada.weight, model.final_ada.bias).chunk(2, dim=-1)
        h = rms(x, model.norm_gen.weight) * (1 + scale) + shift
    cache.last_hidden = h
    return h
