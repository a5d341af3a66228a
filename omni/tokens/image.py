"""Images <-> patch tokens: (B, H, W, C) <-> (B, H/p * W/p, p * p * C), rows of patches in raster order."""

from __future__ import annotations

import numbers

import numpy as np
import torch

RANGE_TOLERANCE = 1e-3  # float images may stray this far outside [0, 1] (resampling, rounding)


def as_unit_rgb(image, name: str = "image", dtype=np.float32) -> np.ndarray:
    """An image's values as `dtype` (float32) in [0, 1], the one convention of this package: uint8 is divided
    by 255; float images must be finite and lie in [0, 1] (a float image in 0..255 is an error, not a
    silently wrong input); other dtypes are errors. The shape is left to the caller to check."""
    try:
        a = np.asarray(image)
    except (ValueError, TypeError) as e:  # ragged nested lists, say
        raise ValueError(f"{name}: not an array of pixels ({e})") from None
    if a.dtype == np.uint8:
        return a.astype(dtype) / 255.0
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name}: pixels must be float in [0, 1] or uint8, got dtype {a.dtype}")
    a = a.astype(dtype)
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name}: pixels hold NaN or infinite values")
    if a.size and (a.min() < -RANGE_TOLERANCE or a.max() > 1 + RANGE_TOLERANCE):
        hint = " (0..255? divide by 255, or pass uint8)" if a.max() > 1.5 else ""
        raise ValueError(f"{name}: float pixels must lie in [0, 1], got [{a.min():.4g}, {a.max():.4g}]{hint}")
    return a


def _check_patch(patch) -> None:
    """ValueError unless the patch size is a positive integer: 0 failed with "integer modulo by zero", a
    negative one inside reshape, 2.0 in reshape's argument parsing."""
    if isinstance(patch, bool) or not isinstance(patch, numbers.Integral) or patch < 1:
        raise ValueError(f"patch must be a positive integer, got {patch!r}")


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, N, p*p*C); each token holds a p x p patch, row-major, channels last."""
    _check_patch(patch)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {tuple(images.shape)}")
    B, H, W, C = images.shape
    if H % patch or W % patch:
        raise ValueError(f"image size {H}x{W} is not divisible by the patch size {patch}")
    x = images.reshape(B, H // patch, patch, W // patch, patch, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // patch) * (W // patch), patch * patch * C)


def unpatchify(tokens: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, H, W, C), the inverse of patchify."""
    _check_patch(patch)
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
