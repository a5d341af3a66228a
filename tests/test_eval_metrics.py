import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from omni.eval.metrics import (
    auc_from_errors,
    bootstrap_ci,
    depth_metrics,
    edit_regions,
    extract_letter,
    pair_auc,
    pose_auc,
    pose_errors,
    psnr,
    qa_accuracy,
    ssim,
)
from omni.world import camera as C


def gt_depth(rng, b=4, h=24, w=24):
    return rng.uniform(2.0, 9.0, size=(b, h, w))  # x2 stays below the 20 m clip


def test_depth_perfect_and_scaled():
    rng = np.random.default_rng(0)
    gt = gt_depth(rng)
    m = depth_metrics(gt, gt)
    assert m["delta1"] == 1.0 and m["abs_rel"] == 0.0 and m["delta3"] == 1.0
    m = depth_metrics(2 * gt, gt, align="scale_shift")
    assert m["delta1"] == 1.0 and m["abs_rel"] < 1e-9
    m = depth_metrics(2 * gt, gt)
    assert m["delta1"] == 0.0 and m["abs_rel"] == pytest.approx(1.0)
    m = depth_metrics(0.5 * gt + 3.0, gt, align="scale_shift")
    assert m["abs_rel"] < 1e-9


def test_depth_disparity_alignment_recovers_affine_disparity():
    rng = np.random.default_rng(1)
    gt = gt_depth(rng)
    pred = 3.0 / gt + 0.2  # affine in disparity, not in depth
    assert depth_metrics(pred, gt, align="scale_shift_disparity")["abs_rel"] < 1e-9
    assert depth_metrics(pred, gt, align="scale_shift")["abs_rel"] > 0.01


def test_depth_per_image_then_mean_and_mask():
    rng = np.random.default_rng(2)
    gt = gt_depth(rng, b=2)
    pred = gt.copy()
    pred[1] *= 1.5  # image 1 entirely off by 50 %
    m = depth_metrics(pred, gt)
    assert m["abs_rel"] == pytest.approx(0.25) and m["delta1"] == pytest.approx(0.5)
    mask = np.ones_like(gt, dtype=bool)
    mask[1, :, 12:] = False
    pred[1, :, 12:] = gt[1, :, 12:]  # masked-out pixels do not count
    assert depth_metrics(pred, gt, mask=mask)["abs_rel"] == pytest.approx(0.25)
    # clipping as Marigold: predictions beyond the range are clipped before comparison
    assert depth_metrics(gt + 100.0, gt, max_depth=20.0)["abs_rel"] == pytest.approx(
        float(np.mean(np.abs(20.0 - gt) / gt)), rel=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(pred=np.ones((4, 4)), gt=np.ones((4, 5))), "shape mismatch"),
    (dict(pred=np.full((4, 4), np.nan), gt=np.ones((4, 4))), "NaN"),
    (dict(pred=np.ones((4, 4)), gt=-np.ones((4, 4))), "negative"),
    (dict(pred=-np.ones((4, 4)), gt=np.ones((4, 4))), "negative"),
    (dict(pred=np.ones((4, 4)), gt=np.ones((4, 4)), mask=np.zeros((4, 4), bool)), "empty mask"),
    (dict(pred=np.ones((4, 4)), gt=np.ones((4, 4)), align="median"), "alignment"),
    (dict(pred=np.ones(4), gt=np.ones(4)), "must be"),
])
def test_depth_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        depth_metrics(**kwargs)


def random_cameras(rng, n):
    return np.stack([C.orbit_camera(rng.uniform(0, 360), rng.uniform(10, 60), rng.uniform(3, 8),
                                    rng.uniform(-1, 1, 3)) for _ in range(n)])


def random_rotation(rng):
    q = rng.normal(size=4)
    return C.axis_angle_to_matrix(q[1:] / np.linalg.norm(q[1:]) * 2 * math.acos(abs(q[0]) / np.linalg.norm(q)))


def test_pose_similarity_invariance():
    rng = np.random.default_rng(3)
    gt = random_cameras(rng, 8)
    # a global similarity: world points x -> s R x + t changes w2c = [R_c | t_c] to
    # [R_c R^T | s t_c - R_c R^T t] (a camera centre moves with the world, orientation composes)
    R, t, s = random_rotation(rng), rng.normal(size=3), 2.7
    pred = gt.copy()
    pred[:, :3, :3] = gt[:, :3, :3] @ R.T
    pred[:, :3, 3] = s * gt[:, :3, 3] - np.einsum("nij,j->ni", pred[:, :3, :3], t)
    out = pose_auc(pred, gt)
    assert out["auc@30"] == pytest.approx(1.0) and out["auc@5"] == pytest.approx(1.0)
    assert out["pairs"] == 28 and out["rra@5"] == 1.0 and out["rta@5"] == 1.0
    assert pose_auc(pred[:, :3], gt[:, :3])["auc@30"] == pytest.approx(1.0)  # 3x4 input


def test_pose_auc_at_29_5_degrees():
    rre = np.full(100, 29.5)
    assert auc_from_errors(rre, np.zeros(100), 30) == pytest.approx(1 / 30)
    # the same through pose_auc: pairs whose relative rotation is off by exactly 29.5 degrees
    rng = np.random.default_rng(4)
    gt = random_cameras(rng, 40).reshape(20, 2, 4, 4)
    pred = gt.copy()
    for p in pred:
        axis = rng.normal(size=3)
        Rerr = C.axis_angle_to_matrix(axis / np.linalg.norm(axis) * math.radians(29.5))
        # turn camera 1 in place: the relative rotation changes by 29.5 degrees and the relative
        # translation (camera 1's centre in camera 0's frame) stays the same
        c1 = C.camera_center(p[1])
        p[1][:3, :3] = Rerr @ p[1][:3, :3]
        p[1][:3, 3] = -p[1][:3, :3] @ c1
    rre, rte = pose_errors(pred, gt)
    assert np.allclose(rre, 29.5) and np.allclose(rte, 0.0, atol=1e-5)
    assert pose_auc(pred, gt)["auc@30"] == pytest.approx(1 / 30)


def test_pose_random_rotations_low_auc():
    """Pairs whose predicted relative rotation is uniformly random (Haar), translation exact.
    The rotation angle of a Haar rotation has CDF F(x) = (x - sin x) / pi, so the expected
    AUC@30 = mean over k = 1..30 degrees of F(k) ~= 0.0021."""
    rng = np.random.default_rng(5)
    P = 20000
    gt = np.tile(np.eye(4), (P, 2, 1, 1))
    gt[:, 1, :3, 3] = rng.normal(size=(P, 3))
    pred = gt.copy()
    q = rng.normal(size=(P, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    pred[:, 1, :3, :3] = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1)
    # keep camera 1's centre: t = -R c with c = -R_gt^T t_gt (camera 0 is the identity)
    centre = -np.einsum("pji,pj->pi", gt[:, 1, :3, :3], gt[:, 1, :3, 3])
    pred[:, 1, :3, 3] = -np.einsum("pij,pj->pi", pred[:, 1, :3, :3], centre)
    k = np.radians(np.arange(1, 31))
    expected = float(np.mean((k - np.sin(k)) / np.pi))
    got = pose_auc(pred, gt)["auc@30"]
    assert expected == pytest.approx(0.0021, abs=2e-4)
    assert got == pytest.approx(expected, abs=1e-3)


def test_pair_auc_is_the_chance_a_positive_outranks_a_negative():
    """pair_auc against counting every pair (ties half), and its ends: separated 1, reversed 0,
    indistinguishable 0.5, an empty side None."""
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 6, 40).astype(float), rng.integers(2, 8, 55).astype(float)  # many ties
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert pair_auc(pos, neg) == pytest.approx(brute, abs=1e-12) and 0.1 < brute < 0.5
    assert pair_auc([3, 4], [1, 2]) == 1 and pair_auc([1, 2], [3, 4]) == 0
    assert pair_auc([1, 1, 1], [1, 1]) == 0.5
    assert pair_auc([], [1.0]) is None and pair_auc([1.0], []) is None


def test_pose_bad_input():
    with pytest.raises(ValueError, match="at least 2 cameras"):
        pose_auc(np.eye(4)[None], np.eye(4)[None])
    with pytest.raises(ValueError, match="shape mismatch"):
        pose_auc(np.tile(np.eye(4), (3, 1, 1)), np.tile(np.eye(4), (4, 1, 1)))
    with pytest.raises(ValueError, match="3x4 or 4x4"):
        pose_auc(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        pose_auc(np.full((3, 4, 4), np.nan), np.tile(np.eye(4), (3, 1, 1)))


def test_psnr_ssim_equal_skimage():
    rng = np.random.default_rng(6)
    for shape in ((32, 32, 3), (64, 48, 3), (16, 20)):
        a = rng.random(shape)
        b = np.clip(a + rng.normal(0, rng.uniform(0.02, 0.3), shape), 0, 1)
        kw = dict(data_range=1.0, gaussian_weights=True, channel_axis=-1 if len(shape) == 3 else None)
        assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-12)
        assert ssim(a, b) == pytest.approx(structural_similarity(a, b, use_sample_covariance=False, **kw), abs=1e-12)
        assert ssim(a, b, use_sample_covariance=True) == pytest.approx(structural_similarity(a, b, **kw), abs=1e-12)
    assert psnr(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_edit_regions_score_the_changed_pixels_apart_from_the_rest():
    rng = np.random.default_rng(7)
    before = rng.random((16, 16, 3))
    after = before.copy()
    after[4:8, 4:8] = [1.0, 1.0, 0.0]  # a 4x4 patch recoloured: 16 of 256 pixels change
    changed = np.zeros((16, 16), bool)
    changed[4:8, 4:8] = True
    copy = edit_regions(before, before, after)  # copying the input draws nothing of the change
    assert copy["change_drawn"] == pytest.approx(0.0) and copy["psnr_unchanged"] == float("inf")
    assert copy["psnr_changed"] == pytest.approx(copy["copy_psnr_changed"])
    assert copy["copy_psnr_changed"] == pytest.approx(psnr(before[changed], after[changed]))
    exact = edit_regions(after, before, after)
    assert exact["change_drawn"] == 1.0 and exact["psnr_changed"] == float("inf")
    half = before + 0.5 * (after - before)  # half way in colour: a quarter of the squared error left
    assert edit_regions(half, before, after)["change_drawn"] == pytest.approx(0.75)
    # the change drawn but the rest blurred: the changed region scores, the rest falls
    blurred = after.copy()
    blurred[~changed] = np.clip(blurred[~changed] + 0.1, 0, 1)
    r = edit_regions(blurred, before, after)
    assert r["change_drawn"] == 1.0 and r["psnr_unchanged"] < 25
    wrong = before.copy()
    wrong[4:8, 4:8] = 1.0 - after[4:8, 4:8]  # a different colour than asked: worse than copying
    assert edit_regions(wrong, before, after)["change_drawn"] < 0
    with pytest.raises(ValueError, match="must differ in some pixels"):
        edit_regions(before, before, before)
    with pytest.raises(ValueError, match="shape mismatch"):
        edit_regions(before[:8], before, after)


def test_qa_accuracy():
    assert extract_letter("B") == "B" and extract_letter("(C) turned left") == "C"
    assert extract_letter("so the answer is D.") == "D" and extract_letter("A. moved left") == "A"
    assert extract_letter("i see a cube") is None
    assert extract_letter("the answer is a red cube") is None  # was "A": the letter is a capital
    assert extract_letter("The Answer Is: (b) or C") == "C" and extract_letter("ANSWER IS B") == "B"
    r = qa_accuracy(["B", "the answer is C", "2", "Red cube.", "yes"], ["B", "D", "2", "red cube", "no"])
    assert r["scores"] == [1.0, 0.0, 1.0, 1.0, 0.0] and r["accuracy"] == pytest.approx(0.6)
    with pytest.raises(ValueError):
        qa_accuracy(["a"], ["a", "b"])


def test_bootstrap_coverage():
    """The 95 % interval covers the true mean in >= 90 % of 200 simulated draws."""
    rng = np.random.default_rng(7)
    hits = 0
    for i in range(200):
        x = rng.exponential(2.0, size=300)  # skewed, true mean 2
        ci = bootstrap_ci(x, n=1000, seed=i)
        hits += ci["lo"] <= 2.0 <= ci["hi"]
    assert hits >= 180, hits
    assert bootstrap_ci([1.0, 1.0]) == {"mean": 1.0, "lo": 1.0, "hi": 1.0, "n": 2}
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_image_metrics_read_uint8_and_refuse_other_scales():
    """uint8 images are divided by 255 (as the checker and the engine read them), never subtracted
    as bytes; a float image in 0..255 is an error, not a PSNR of -20 dB."""
    rng = np.random.default_rng(3)
    a = rng.random((16, 16, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    a8, b8 = (np.round(x * 255).astype(np.uint8) for x in (a, b))
    assert psnr(a8, b8) == pytest.approx(psnr(a8 / 255.0, b8 / 255.0), rel=1e-9)
    assert psnr(a8, b8 / 255.0) == pytest.approx(psnr(a8, b8), rel=1e-9) and 15 < psnr(a8, b8) < 30
    assert ssim(a8, b8) == pytest.approx(ssim(a8 / 255.0, b8 / 255.0), abs=1e-9)
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\].*divide by 255"):
        psnr(a * 255, b * 255)
    with pytest.raises(ValueError, match="dtype int64"):
        psnr(a8.astype(np.int64), b8)
    with pytest.raises(ValueError, match="NaN"):
        psnr(np.full_like(a, np.nan), b)


def test_pose_fit_tells_a_pose_estimate_from_a_constant_guess():
    """pose_fit correlates each predicted number with the truth: the true pose texts give 1 on all six, one
    pose guessed for every pair gives None (no spread) though it scores AUC@30 on the pairs it is near,
    and texts that do not parse are left out and counted."""
    import numpy as np

    from omni.eval.run import pair_pose_scores, pose_fit
    from omni.world import sample
    from omni.world.camera import text_to_pose

    exs = sample("pose", range(60))
    true = [ex.spec["relative_pose"]["text"] for ex in exs]
    f = pose_fit(exs, true)
    assert f["parsed"] == 60 and all(c > 0.999 for c in f["corr"]), f
    assert np.allclose(f["pred_mean"], f["true_mean"], atol=1e-3)
    const = pose_fit(exs, [true[0]] * 60)
    assert const["corr"] == [None] * 6 and max(const["pred_std"]) < 1e-12
    assert np.mean([pair_pose_scores(ex, text_to_pose(true[0]))["auc@30"] for ex in exs]) > 0
    noisy = pose_fit(exs, [true[(i + 1) % 60] if i % 2 else "nonsense" for i in range(60)])  # shuffled
    assert noisy["parsed"] == 30 and all(abs(c) < 0.6 for c in noisy["corr"]), noisy
    assert pose_fit(exs[:2], [None, "x"]) == {"numbers": ["tx", "ty", "tz", "rx", "ry", "rz"], "parsed": 0}
    sp = sample("spatial", range(40))  # the spatial task's pose texts too: y, rx and rz never vary there
    f = pose_fit(sp, [ex.texts["pose"] for ex in sp])
    assert [c is None for c in f["corr"]] == [False, True, False, True, False, True]
    assert all(f["corr"][i] > 0.999 for i in (0, 2, 4)), f


def test_metrics_refuse_inputs_that_would_score_nan_or_wrong():
    """Inputs that gave a NaN, a silently truncated threshold or a deep numpy error are ValueErrors
    naming what is wrong."""
    with pytest.raises(ValueError, match="no pixels"):  # was NaN (the mean of no squared errors)
        psnr(np.zeros((0, 4, 3)), np.zeros((0, 4, 3)))
    with pytest.raises(ValueError, match="no images"):  # was NaN for every depth metric
        depth_metrics(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))
    gt = np.full((4, 4), 2.0)
    with pytest.raises(ValueError, match="min_depth"):  # was a ZeroDivisionError
        depth_metrics(gt, gt, min_depth=0.0, align="scale_shift_disparity")
    with pytest.raises(ValueError, match="min_depth"):  # was every pixel clipped to max_depth
        depth_metrics(gt, gt, mask=np.ones((4, 4), bool), min_depth=5.0, max_depth=3.0)
    rre = np.array([1.0, 2.0, 6.0])
    for tau in (2.5, 0, -3):  # 2.5 scored as AUC@2, 0 and below as NaN
        with pytest.raises(ValueError, match="tau must be a whole number"):
            auc_from_errors(rre, np.zeros(3), tau)
    assert auc_from_errors(rre, np.zeros(3), 30.0) == auc_from_errors(rre, np.zeros(3), 30)
    with pytest.raises(ValueError, match="tau"):
        pose_auc(np.tile(np.eye(4), (3, 1, 1)), np.tile(np.eye(4), (3, 1, 1)), thresholds=(2.5,))
    x = np.tile(np.eye(4), (3, 4, 2, 1, 1))  # one batch axis too many: was an IndexError
    with pytest.raises(ValueError, match=r"\(P, 2, 3\|4, 4\) pairs, got shape \(3, 4, 2, 4, 4\)"):
        pose_errors(x, x)
    with pytest.raises(ValueError, match="pos holds NaN"):  # was NaN
        pair_auc([1.0, np.nan], [0.5])
    assert pair_auc([1.0, np.inf], [0.5]) == 1.0  # infinite scores still rank
    with pytest.raises(ValueError, match="n \\(bootstrap resamples\\)"):  # was "need at least one array"
        bootstrap_ci([1.0, 2.0], n=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], level=1.5)
