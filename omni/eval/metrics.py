"""Metrics computed from exact world knowledge, each with the protocol it follows.

depth_metrics   Marigold's protocol: per image over its valid mask, optional least-squares alignment
                (scale+shift in depth, or in disparity), clipping, then the mean over images.
pose_auc        VGGT / PoseDiffusion: relative poses of camera pairs, RRE and RTE, AUC@tau.
psnr, ssim      data range 1; SSIM as scikit-image computes it with gaussian_weights=True
                (sigma 1.5, truncate 3.5: an 11x11 window), population covariances
                (use_sample_covariance=False, Wang et al. 2004), mean over channels.
edit_regions    an edit's PSNR over the pixels it changes and over the rest, and the share of the
                change's error it removes against copying the input.
qa_accuracy     exact match after normalisation; four-option answers compare the answer letter.
bootstrap_ci    percentile bootstrap of the mean, 95 %.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import numpy as np
from scipy import ndimage, stats

from omni.tokens.image import as_unit_rgb
from omni.world.render import DEPTH_FAR

ALIGNMENTS = ("none", "scale_shift", "scale_shift_disparity")


# ------------------------------------------------------------------------------------------------
# depth


def _batched(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be (H, W) or (B, H, W), got shape {a.shape}")
    return a


def _lstsq_affine(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Scale and shift minimising |s x + t - y|^2."""
    A = np.stack([x, np.ones_like(x)], 1)
    (s, t), *_ = np.linalg.lstsq(A, y, rcond=None)
    return float(s), float(t)


def depth_metrics(pred, gt, mask=None, align: str = "none", min_depth: float = 1e-3,
                  max_depth: float = DEPTH_FAR) -> dict:
    """AbsRel and delta1..3 of predicted depth maps, following Marigold's evaluation.

    pred, gt: (H, W) or (B, H, W) metric z-depth; mask: valid pixels (default: gt > 0 and gt <
    max_depth). align: "none" (metric depth), "scale_shift" (least squares s * pred + t ~ gt on the
    valid pixels of each image) or "scale_shift_disparity" (s * pred + t ~ 1 / gt, then inverted;
    pred is then a disparity-like map). Aligned depth is clipped to [min_depth, max_depth] as
    Marigold does. Per image: AbsRel = mean |d - d*| / d*, delta_k = mean[max(d / d*, d* / d) <
    1.25^k]; the result is the mean over images, with the per-image values under "per_image"."""
    if align not in ALIGNMENTS:
        raise ValueError(f"unknown alignment {align!r}; known: {', '.join(ALIGNMENTS)}")
    if not 0 < min_depth < max_depth:  # 0 divides by zero (disparity); min > max clips every pixel to max
        raise ValueError(f"need 0 < min_depth < max_depth, got min_depth {min_depth} and max_depth {max_depth}")
    p, g = _batched("pred", pred), _batched("gt", gt)
    if p.shape != g.shape:
        raise ValueError(f"shape mismatch: pred {p.shape} vs gt {g.shape}")
    if not len(g):  # the mean over no images is NaN
        raise ValueError(f"no images to score: pred and gt have shape {g.shape}")
    if not np.isfinite(p).all():
        raise ValueError("pred holds NaN or infinite depth")
    if not np.isfinite(g).all():
        raise ValueError("gt holds NaN or infinite depth")
    if (g < 0).any():
        raise ValueError("gt holds negative depth")
    if align == "none" and (p < 0).any():
        raise ValueError("pred holds negative depth (metric depth is compared without alignment)")
    m = (g > 0) & (g < max_depth) if mask is None else _batched("mask", mask).astype(bool)
    if m.shape != g.shape:
        raise ValueError(f"shape mismatch: mask {m.shape} vs gt {g.shape}")
    if (m & (g <= 0)).any():
        raise ValueError("mask selects pixels with zero ground-truth depth")
    per = {"abs_rel": [], "delta1": [], "delta2": [], "delta3": []}
    for i in range(len(g)):
        mi = m[i]
        if not mi.any():
            raise ValueError(f"empty mask for image {i}")
        d, t = p[i][mi], g[i][mi]
        if align == "scale_shift":
            s, sh = _lstsq_affine(d, t)
            d = np.clip(s * d + sh, min_depth, max_depth)
        elif align == "scale_shift_disparity":
            s, sh = _lstsq_affine(d, 1.0 / t)
            d = 1.0 / np.clip(s * d + sh, 1.0 / max_depth, 1.0 / min_depth)
        else:
            d = np.clip(d, min_depth, max_depth)
        ratio = np.maximum(d / t, t / d)
        per["abs_rel"].append(float(np.mean(np.abs(d - t) / t)))
        for k in (1, 2, 3):
            per[f"delta{k}"].append(float(np.mean(ratio < 1.25**k)))
    out = {k: float(np.mean(v)) for k, v in per.items()}
    out["per_image"] = per
    out["align"] = align
    return out


# ------------------------------------------------------------------------------------------------
# pose


def _as_w2c(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim < 3 or a.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"{name} must hold 3x4 or 4x4 world-to-camera matrices, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    out = np.zeros((*a.shape[:-2], 4, 4))
    out[..., :3, :] = a[..., :3, :]
    out[..., 3, 3] = 1.0
    return out


def _inv(T: np.ndarray) -> np.ndarray:
    R, t = T[..., :3, :3], T[..., :3, 3:]
    out = np.zeros_like(T)
    out[..., :3, :3] = np.swapaxes(R, -1, -2)
    out[..., :3, 3:] = -np.swapaxes(R, -1, -2) @ t
    out[..., 3, 3] = 1.0
    return out


def rotation_angle_deg(Ra: np.ndarray, Rb: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotations (degrees): arccos((tr(Ra^T Rb) - 1) / 2)."""
    tr = np.einsum("...ij,...ij->...", Ra, Rb)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def translation_angle_deg(ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """Angle between translation directions (degrees), sign ignored (VGGT's ambiguity rule)."""
    na = ta / np.maximum(np.linalg.norm(ta, axis=-1, keepdims=True), 1e-12)
    nb = tb / np.maximum(np.linalg.norm(tb, axis=-1, keepdims=True), 1e-12)
    return np.degrees(np.arccos(np.clip(np.abs((na * nb).sum(-1)), 0.0, 1.0)))


def pose_errors(pred_w2c, gt_w2c) -> tuple[np.ndarray, np.ndarray]:
    """(RRE, RTE) in degrees for every pair i < j of a set of N cameras (N, 3|4, 4), or for each
    independent two-view pair of a batch (P, 2, 3|4, 4). The relative pose of a pair is
    T_i @ inv(T_j) of the world-to-camera matrices (camera j's pose in camera i's frame, as
    omni.world.camera.relative_pose), for prediction and ground truth alike: unchanged by any
    similarity transform of the world, up to the scale of its translation."""
    p, g = _as_w2c("pred_w2c", pred_w2c), _as_w2c("gt_w2c", gt_w2c)
    if p.shape != g.shape:
        raise ValueError(f"shape mismatch: pred {p.shape} vs gt {g.shape}")
    if p.ndim > 4:  # more batch axes would be paired along the first one only
        raise ValueError(f"poses must be (N, 3|4, 4) cameras or (P, 2, 3|4, 4) pairs, got shape "
                         f"{np.shape(pred_w2c)}")
    if p.ndim == 4:  # independent pairs
        if p.shape[1] != 2:
            raise ValueError(f"a batch of pairs must be (P, 2, 4, 4), got {p.shape}")
        if len(p) < 1:
            raise ValueError("no pairs to score")
        pi, pj, gi, gj = p[:, 0], p[:, 1], g[:, 0], g[:, 1]
    else:
        if len(p) < 2:
            raise ValueError(f"pose AUC needs at least 2 cameras, got {len(p)}")
        i, j = np.array(list(itertools.combinations(range(len(p)), 2))).T
        pi, pj, gi, gj = p[i], p[j], g[i], g[j]
    rel_p, rel_g = pi @ _inv(pj), gi @ _inv(gj)
    rre = rotation_angle_deg(rel_g[:, :3, :3], rel_p[:, :3, :3])
    rte = translation_angle_deg(rel_g[:, :3, 3], rel_p[:, :3, 3])
    return rre, rte


def auc_from_errors(rre: np.ndarray, rte: np.ndarray, tau: float) -> float:
    """VGGT's AUC: mean(cumsum(histogram(max(RRE, RTE), bins 0..tau step 1) / N))."""
    if not (float(tau) >= 1 and float(tau).is_integer()):
        # the histogram has 1-degree bins from 0 to tau: 2.5 would silently score as 2, 0 as NaN
        raise ValueError(f"tau must be a whole number of degrees >= 1, got {tau!r}")
    err = np.maximum(rre, rte)
    hist, _ = np.histogram(err, bins=np.arange(int(tau) + 1))
    return float(np.mean(np.cumsum(hist / len(err))))


def pair_auc(pos, neg) -> float | None:
    """The probability that a score drawn from `pos` exceeds one drawn from `neg` (ties count half):
    the ROC AUC of the scores as a test of pos against neg (Mann-Whitney U / (|pos| |neg|)). None when
    either side is empty."""
    x, y = np.asarray(pos, np.float64).ravel(), np.asarray(neg, np.float64).ravel()
    if len(x) == 0 or len(y) == 0:
        return None
    if np.isnan(x).any() or np.isnan(y).any():  # rankdata would make every rank, and the AUC, NaN
        raise ValueError(f"{'pos' if np.isnan(x).any() else 'neg'} holds NaN scores")
    ranks = stats.rankdata(np.concatenate([x, y]))  # ties share their mean rank
    return float((ranks[:len(x)].sum() - len(x) * (len(x) + 1) / 2) / (len(x) * len(y)))


def pose_auc(pred_w2c, gt_w2c, thresholds: Sequence[float] = (5, 15, 30)) -> dict:
    """Pose accuracy of predicted extrinsics (VGGT / PoseDiffusion protocol).

    For every pair i < j of a set of N world-to-camera extrinsics (N x 3 x 4 or N x 4 x 4), or for
    each pair of a batch of independent two-view pairs (P x 2 x 3|4 x 4): RRE = geodesic angle
    between the relative rotations, RTE = angle between the relative translation directions with
    the sign ignored; auc@tau = mean(cumsum(histogram(max(RRE, RTE), bins 0..tau step 1) / N));
    rra@tau, rta@tau = fraction of pairs with RRE, RTE below tau."""
    rre, rte = pose_errors(pred_w2c, gt_w2c)
    out = {"pairs": int(len(rre))}
    for tau in thresholds:
        out[f"auc@{tau}"] = auc_from_errors(rre, rte, tau)
        out[f"rra@{tau}"] = float(np.mean(rre < tau))
        out[f"rta@{tau}"] = float(np.mean(rte < tau))
    return out


# ------------------------------------------------------------------------------------------------
# images


def _image_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Two images as float64 in [0, 1] (uint8 divided by 255; see omni.tokens.image.as_unit_rgb)."""
    x, y = (as_unit_rgb(z, name, np.float64) for z, name in ((a, "first image"), (b, "second image")))
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: {x.shape} vs {y.shape}")
    if x.ndim not in (2, 3):
        raise ValueError(f"images must be (H, W) or (H, W, C), got shape {x.shape}")
    if not x.size:  # the mean squared error of no pixels is NaN
        raise ValueError(f"images hold no pixels, shape {x.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("images hold NaN or infinite values")
    return x, y


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio for data range 1: 10 log10(1 / MSE) (inf for identical images)."""
    x, y = _image_pair(a, b)
    return _db(float(np.mean((x - y) ** 2)))


def _db(mse: float) -> float:
    """PSNR of a mean squared error, for data range 1 (inf for 0)."""
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def edit_regions(pred, before, after) -> dict:
    """An edit's scores split by where it changes the image: the changed region is every pixel
    where `before` and `after` differ (any channel), the rest is everything else.
      psnr_changed, psnr_unchanged   PSNR of `pred` against `after` over each region
      copy_psnr_changed              PSNR of copying `before` over the changed region
      change_drawn                   1 - MSE(pred, after) / MSE(before, after) over the changed
                                     region: the share of the change's squared error the prediction
                                     removes (1 = the change drawn exactly, 0 = no better than copying
                                     the input there, below 0 = worse)
    A ValueError when the three images' shapes differ, or when no pixel (or every pixel) changes."""
    x, a = _image_pair(pred, after)
    b, _ = _image_pair(before, after)
    if x.ndim == 3:
        changed = np.abs(b - a).max(-1) > 0
        err, copy = ((x - a) ** 2).mean(-1), ((b - a) ** 2).mean(-1)
    else:
        changed, err, copy = np.abs(b - a) > 0, (x - a) ** 2, (b - a) ** 2
    if not changed.any() or changed.all():
        raise ValueError(f"before and after must differ in some pixels and agree in others; "
                         f"{int(changed.sum())} of {changed.size} differ")
    mse_c, mse_r, mse_copy = float(err[changed].mean()), float(err[~changed].mean()), float(copy[changed].mean())
    return {"psnr_changed": _db(mse_c), "psnr_unchanged": _db(mse_r), "copy_psnr_changed": _db(mse_copy),
            "change_drawn": 1.0 - mse_c / mse_copy}


def ssim(a, b, use_sample_covariance: bool = False) -> float:
    """Structural similarity as skimage.metrics.structural_similarity(a, b, data_range=1,
    gaussian_weights=True, channel_axis=-1 for colour) computes it: Gaussian-weighted local
    statistics (sigma 1.5, truncated at 3.5 sigma: an 11x11 window), K1 = 0.01, K2 = 0.03, the
    mean of the SSIM map after cropping the 5-pixel border, then the mean over channels."""
    x, y = _image_pair(a, b)
    if x.ndim == 3:
        return float(np.mean([ssim(x[..., c], y[..., c], use_sample_covariance) for c in range(x.shape[-1])]))
    sigma, truncate = 1.5, 3.5
    win = 2 * int(truncate * sigma + 0.5) + 1
    if min(x.shape) < win:
        raise ValueError(f"SSIM needs images of at least {win}x{win} pixels, got {x.shape}")
    cov_norm = win * win / (win * win - 1) if use_sample_covariance else 1.0

    def f(z):
        return ndimage.gaussian_filter(z, sigma, truncate=truncate, mode="reflect")

    ux, uy = f(x), f(y)
    vx = cov_norm * (f(x * x) - ux * ux)
    vy = cov_norm * (f(y * y) - uy * uy)
    vxy = cov_norm * (f(x * y) - ux * uy)
    c1, c2 = (0.01 * 1.0) ** 2, (0.03 * 1.0) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


# ------------------------------------------------------------------------------------------------
# question answering


_LETTER = re.compile(r"(?<![A-Za-z])([ABCD])(?![A-Za-z])")
# "answer is" in any case, the letter a capital: with the whole pattern case-blind, "the answer is a red
# cube" read as option A
_ANSWER_IS = re.compile(r"(?i:answer\s+is)\s*:?\s*\(?([ABCD])(?![A-Za-z])")


def extract_letter(text: str) -> str | None:
    """The option letter a free-form answer gives: after 'answer is' if present, else the first
    standalone capital A-D ('B', 'B.', '(B)', 'B. moved left')."""
    m = _ANSWER_IS.search(text) or _LETTER.search(text)
    return m.group(1).upper() if m else None


def normalize_answer(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".").strip()


def qa_accuracy(preds: Sequence[str], answers: Sequence[str]) -> dict:
    """Exact-match accuracy: four-option questions (answer a letter A-D) compare the letter
    extracted from the prediction; other answers compare normalised text (case, spaces, final
    period). Returns the accuracy, n and the per-example 0/1 scores."""
    if len(preds) != len(answers):
        raise ValueError(f"{len(preds)} predictions for {len(answers)} answers")
    if not len(answers):
        raise ValueError("no answers to score")
    scores = []
    for p, a in zip(preds, answers, strict=True):
        if a.strip() in ("A", "B", "C", "D"):
            scores.append(float(extract_letter(p or "") == a.strip()))
        else:
            scores.append(float(normalize_answer(p or "") == normalize_answer(a)))
    return {"accuracy": float(np.mean(scores)), "n": len(scores), "scores": scores}


# ------------------------------------------------------------------------------------------------
# uncertainty


def bootstrap_ci(values, n: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of `values` and its percentile-bootstrap interval (`level`, default 95 %):
    `n` resamples with replacement, deterministic in `seed`."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not len(v):
        raise ValueError("no values to bootstrap")
    if not np.isfinite(v).all():
        raise ValueError("values hold NaN or infinite entries")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (bootstrap resamples) must be a positive integer, got {n!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    step = max(1, 2_000_000 // len(v))  # resamples per chunk, to bound memory
    means = np.concatenate([v[rng.integers(0, len(v), size=(min(step, n - k), len(v)))].mean(1)
                            for k in range(0, n, step)])
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(v))}
