"""The visual tokenizer: a small VQ autoencoder that turns an image into a coarse grid of discrete
codes (8 x 8 for a 32 x 32 image) and back.

Vector quantisation with straight-through gradients, a codebook loss and a commitment loss
(VQ-VAE), and dead-code restarts: codes unused for `restart_every` steps are moved onto random
encoder outputs of the current batch. The continuous encoder output, normalised per channel by
statistics measured on training renders, is also the latent space the model's flow head
generates in; `decode_latents` snaps it to the nearest codes and decodes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omni.io import (
    check_finite,
    check_type,
    load_safetensors,
    read_json,
    read_safetensors,
    save_safetensors,
    write_json,
)
from omni.tokens.image import RANGE_TOLERANCE


@dataclass
class VQConfig:
    image_size: int = 32
    channels: int = 64  # conv width
    downsample: int = 4  # image side / code grid side (a power of 2)
    codebook_size: int = 256
    code_dim: int = 16
    beta: float = 0.25  # commitment weight
    restart_every: int = 100  # steps without use before a code is restarted

    @property
    def grid(self) -> int:
        return self.image_size // self.downsample

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def validate(self) -> None:
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of 2, got {self.downsample}")
        if self.image_size % self.downsample:
            raise ValueError(f"image size {self.image_size} is not divisible by downsample {self.downsample}")
        if self.codebook_size < 2 or self.code_dim < 1:
            raise ValueError("codebook_size must be >= 2 and code_dim >= 1")


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x + self.b(F.gelu(self.a(F.gelu(x))))


class VisualTokenizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        c, d = cfg.channels, cfg.code_dim
        n_down = int(math.log2(cfg.downsample))
        enc = [nn.Conv2d(3, c, 3, padding=1)]
        for _ in range(n_down):
            enc += [nn.GELU(), nn.Conv2d(c, c, 4, stride=2, padding=1)]
        enc += [ResBlock(c), ResBlock(c), nn.GELU(), nn.Conv2d(c, d, 1)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(d, c, 3, padding=1), ResBlock(c), ResBlock(c)]
        for _ in range(n_down):
            dec += [nn.GELU(), nn.ConvTranspose2d(c, c, 4, stride=2, padding=1)]
        dec += [nn.GELU(), nn.Conv2d(c, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.codebook = nn.Parameter(torch.randn(cfg.codebook_size, d) * 0.1)
        self.register_buffer("last_used", torch.zeros(cfg.codebook_size, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("latent_mean", torch.zeros(d))
        self.register_buffer("latent_std", torch.ones(d))

    # -- images <-> continuous latents <-> codes -------------------------------------------------

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        s = self.cfg.image_size
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4 or tuple(images.shape[1:]) != (s, s, 3):
            raise ValueError(f"images must be (B, {s}, {s}, 3), got shape {tuple(images.shape)}")
        # uint8 or 0..255 floats would be encoded as if far brighter than white, NaN as code 0: all silently
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype} (uint8? divide by 255)")
        if images.numel():
            lo, hi = (float(v) for v in images.detach().aminmax())
            if not (lo >= -RANGE_TOLERANCE and hi <= 1 + RANGE_TOLERANCE):  # NaN fails both
                raise ValueError(f"images must be finite and lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
        return images.permute(0, 3, 1, 2).float() * 2.0 - 1.0

    def encode_continuous(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) in [0, 1] -> (B, g, g, code_dim) encoder outputs (before quantisation)."""
        return self.encoder(self._check_images(images)).permute(0, 2, 3, 1)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Indices of the nearest codes for vectors z (..., code_dim)."""
        flat = z.reshape(-1, z.shape[-1])
        d = (flat * flat).sum(1, keepdim=True) - 2 * flat @ self.codebook.T + (self.codebook ** 2).sum(1)
        return d.argmin(1).reshape(z.shape[:-1])

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) -> (B, g*g) code indices, raster order."""
        z = self.encode_continuous(images)
        return self.nearest(z).reshape(len(images), self.cfg.num_tokens)

    def decode_codes_float(self, codes: torch.Tensor) -> torch.Tensor:
        g = self.cfg.grid
        if codes.ndim != 2 or codes.shape[1] != g * g:
            raise ValueError(f"codes must be (B, {g * g}), got shape {tuple(codes.shape)}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:  # bool would index as a mask
            raise ValueError(f"codes must be integer code indices, got dtype {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.cfg.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.cfg.codebook_size}), got "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        q = self.codebook[codes].reshape(len(codes), g, g, self.cfg.code_dim)
        return self._decode(q)

    def _decode(self, q: torch.Tensor) -> torch.Tensor:
        x = self.decoder(q.permute(0, 3, 1, 2))
        return ((x + 1.0) / 2.0).permute(0, 2, 3, 1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, g*g) code indices -> (B, H, W, 3) images clipped to [0, 1]."""
        return self.decode_codes_float(codes).clamp(0.0, 1.0)

    # -- the flow head's latent space -------------------------------------------------------------

    @torch.no_grad()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) -> (B, g*g, code_dim) normalised encoder outputs (roughly unit variance)."""
        z = self.encode_continuous(images)
        return ((z - self.latent_mean) / self.latent_std).reshape(len(images), self.cfg.num_tokens, self.cfg.code_dim)

    @torch.no_grad()
    def decode_latents(self, lat: torch.Tensor) -> torch.Tensor:
        """(B, g*g, code_dim) normalised latents -> nearest codes -> (B, H, W, 3) images."""
        n, d = self.cfg.num_tokens, self.cfg.code_dim
        if lat.ndim != 3 or tuple(lat.shape[1:]) != (n, d):
            raise ValueError(f"latents must be (B, {n}, {d}), got shape {tuple(lat.shape)}")
        if not torch.isfinite(lat).all():  # NaN snaps to code 0: a plausible image from a diverged sampler
            raise ValueError("latents hold NaN or infinite values")
        z = lat * self.latent_std + self.latent_mean
        return self.decode(self.nearest(z).reshape(len(lat), self.cfg.num_tokens))

    # -- training -----------------------------------------------------------------------------

    def forward(self, images: torch.Tensor) -> dict:
        """Reconstruction with straight-through quantisation; losses and the codes used."""
        x = self._check_images(images)
        z = self.encoder(x).permute(0, 2, 3, 1)
        idx = self.nearest(z.detach())
        q = self.codebook[idx]
        codebook_loss = F.mse_loss(q, z.detach())
        commit_loss = F.mse_loss(z, q.detach())
        q_st = z + (q - z).detach()
        recon = self._decode(q_st)
        rec_loss = F.mse_loss(recon, images.float())
        loss = rec_loss + codebook_loss + self.cfg.beta * commit_loss
        return {"loss": loss, "rec": rec_loss, "codebook": codebook_loss, "commit": commit_loss,
                "idx": idx, "z": z, "recon": recon}

    @torch.no_grad()
    def restart_dead_codes(self, idx: torch.Tensor, z: torch.Tensor, gen: torch.Generator) -> int:
        """Mark the codes used in this batch; move codes unused for restart_every steps onto random
        encoder outputs of the batch (plus a little noise). Returns how many were restarted."""
        self.step += 1
        self.last_used[idx.unique()] = self.step
        dead = torch.nonzero(self.step - self.last_used > self.cfg.restart_every).squeeze(1)
        if len(dead):
            flat = z.reshape(-1, z.shape[-1])
            pick = torch.randint(0, len(flat), (len(dead),), generator=gen)
            self.codebook.data[dead] = flat[pick] + 0.01 * torch.randn(len(dead), flat.shape[1], generator=gen)
            self.last_used[dead] = self.step
        return len(dead)

    @torch.no_grad()
    def set_latent_stats(self, images: torch.Tensor, batch: int = 512) -> None:
        zs = torch.cat([self.encode_continuous(images[i:i + batch]).reshape(-1, self.cfg.code_dim)
                        for i in range(0, len(images), batch)])
        self.latent_mean.copy_(zs.mean(0))
        self.latent_std.copy_(zs.std(0).clamp_min(1e-4))

    # -- files --------------------------------------------------------------------------------

    FILES = ("visual_tokenizer.json", "visual_tokenizer.safetensors")  # what save writes: config, weights

    def save(self, directory: str | Path, extra: dict | None = None) -> None:
        """visual_tokenizer.safetensors (weights) and visual_tokenizer.json (config, report)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.state_dict(), d / self.FILES[1])
        write_json(d / self.FILES[0], {"config": asdict(self.cfg), **(extra or {})})

    # what visual_tokenizer.json must name (the weights' shapes and the images they fit); the
    # training-only fields may take their defaults
    REQUIRED_FIELDS = ("image_size", "channels", "downsample", "codebook_size", "code_dim")

    @classmethod
    def load(cls, directory: str | Path) -> VisualTokenizer:
        d = Path(directory)
        where = d / cls.FILES[0]
        meta = read_json(where)
        raw = meta.get("config")
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: not a visual tokenizer config (no \"config\" object)")
        try:
            cfg = _vq_config(raw, cls.REQUIRED_FIELDS)
        except ValueError as e:
            raise ValueError(f"{where}: bad visual tokenizer config: {e}") from None
        weights = d / cls.FILES[1]
        state = read_safetensors(weights)
        try:
            with torch.device("meta"):  # the weights' shapes checked first: a config of absurd sizes allocates nothing
                probe = cls(cfg)
        except RuntimeError as e:  # a tensor too large to describe
            raise ValueError(f"{where}: bad visual tokenizer config: sizes no tokenizer can have ({e})") from None
        load_safetensors(probe, weights, state)
        check_finite(state, weights)
        model = cls(cfg)
        load_safetensors(model, weights, state)
        return model.eval()


def _vq_config(raw: dict, required: tuple[str, ...]) -> VQConfig:
    """A validated VQConfig from a JSON object; ValueError starting with the offending field's name."""
    known = {f.name: f.type for f in fields(VQConfig)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"unknown fields {unknown}")
    missing = [f for f in required if f not in raw]
    if missing:
        raise ValueError(f"missing fields {missing}")
    for name, value in raw.items():
        check_type(name, value, known[name])
    for name in ("image_size", "channels", "code_dim", "restart_every"):
        if name in raw and raw[name] < 1:
            raise ValueError(f"{name} must be positive, got {raw[name]}")
    if raw.get("beta", 0) < 0:
        raise ValueError(f"beta must not be negative, got {raw['beta']}")
    cfg = VQConfig(**raw)
    cfg.validate()
    return cfg


def world_images(seeds: tuple[int, int], size: int = 32) -> torch.Tensor:
    """Every view of every task for seeds [lo, hi), as (N, size, size, 3) float32."""
    from omni.world import TASKS, WorldConfig, sample

    cfg = WorldConfig(size=size)
    views = [v.rgb for t in TASKS for ex in sample(t, range(*seeds), cfg) for v in ex.views.values()]
    return torch.from_numpy(np.stack(views)).float()


def psnr_batch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


@torch.no_grad()
def evaluate(model: VisualTokenizer, images: torch.Tensor, batch: int = 512) -> dict:
    """Held-out reconstruction PSNR (mean over images, data range 1) and codebook usage."""
    model.eval()
    ps, used = [], torch.zeros(model.cfg.codebook_size, dtype=torch.long)
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        codes = model.encode(x)
        ps.append(psnr_batch(model.decode(codes), x))
        used += torch.bincount(codes.reshape(-1), minlength=model.cfg.codebook_size)
    p = used.float() / used.sum()
    nz = p[p > 0]
    return {"psnr": float(torch.cat(ps).mean()), "codes_used": int((used > 0).sum()),
            "codebook_size": model.cfg.codebook_size, "perplexity": float(torch.exp(-(nz * nz.log()).sum())),
            "images": int(len(images))}


def train_visual_tokenizer(cfg: VQConfig, steps: int = 3000, batch: int = 64, lr: float = 2e-3, seed: int = 0,
                           train_seeds: tuple[int, int] = (0, 600), eval_seeds: tuple[int, int] = (2_000_000_000,
                                                                                                      2_000_000_100),
                           log=print) -> tuple[VisualTokenizer, dict]:
    """Train on every view of every task for train-split seeds; report on test-split seeds."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    data = world_images(train_seeds, cfg.image_size)
    held = world_images(eval_seeds, cfg.image_size)
    log(f"visual tokenizer: {len(data)} training renders, {len(held)} held-out renders "
        f"({time.perf_counter() - t0:.0f} s to render)")
    model = VisualTokenizer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    history = []
    for step in range(steps):
        x = data[torch.randint(0, len(data), (batch,), generator=gen)]
        out = model(x)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        sched.step()
        restarted = model.restart_dead_codes(out["idx"], out["z"].detach(), gen)
        if step % 100 == 0 or step == steps - 1:
            rec = float(out["rec"].detach())
            history.append({"step": step, "rec": rec, "psnr": -10 * math.log10(max(rec, 1e-10)),
                            "restarted": restarted})
            log(f"step {step:5d}  rec {rec:.5f}  psnr {history[-1]['psnr']:.2f}  restarted {restarted}")
    model.set_latent_stats(data[:4096])
    report = evaluate(model, held)
    report.update(steps=steps, batch=batch, lr=lr, seed=seed, train_seeds=list(train_seeds),
                  eval_seeds=list(eval_seeds), train_images=int(len(data)), seconds=round(time.perf_counter() - t0, 1),
                  history=history)
    return model.eval(), report
