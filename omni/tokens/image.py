"""Images <-> patch tokens: (B, H, W, C) <-> (B, H/p * W/p, p * p * C), rows of patches in raster order."""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, N, p*p*C); each token holds a p x p patch, row-major, channels last."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {tuple(images.shape)}")
    B, H, W, C = images.shape
    if H % patch or W % patch:
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size {patch}")
    x = images.reshape(B, H // patch, patch, W // patch, patch, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // patch) * (W // patch), patch * patch * C)


def unpatchify(tokens: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, H, W, C), the inverse of patchify."""
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, N, D), got shape {tuple(tokens.shape)}")
    B, N, D = tokens.shape
    if height % patch or width % patch:
        raise ValueError(f"image size {height}x{width} is not divisible by the patch size {patch}")
    gh, gw = height // patch, width // patch
    if N != gh * gw or D % (patch * patch):
        raise ValueError(f"{N} tokens of size {D} do not make a {height}x{width} image of {patch}px patches")
    C = D // (patch * patch)
    x = tokens.reshape(B, gh, gw, patch, patch, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, height, width, C)
