"""Pinhole cameras in the OpenCV convention: x right, y down, z forward.

Extrinsics are world-to-camera 4x4 matrices `w2c = [[R, t], [0, 1]]` (x_cam = R x_world + t).
Pixel (row i, column j) has its centre at (u, v) = (j + 0.5, i + 0.5).

The relative pose of view B in view A's frame is T_AB = w2c_A @ inv(w2c_B): it maps points in B's
camera frame to A's, so its translation is B's camera centre in A's frame (tx > 0: B is to A's right)
and its rotation is B's orientation in A's frame. Pose text is `tx ty tz rx ry rz`: that translation,
then the rotation as an axis-angle vector (radians), each with fixed decimals.
"""

from __future__ import annotations

import math
import re

import numpy as np

POSE_DECIMALS = 3
DEFAULT_FOV = 50.0  # horizontal field of view, degrees
WORLD_UP = np.array([0.0, 0.0, 1.0])


def intrinsics(fov_deg: float, width: int, height: int | None = None) -> np.ndarray:
    """3x3 K from a horizontal field of view (degrees) and the image size; square pixels."""
    height = width if height is None else height
    if not (width >= 1 and height >= 1):  # a zero size gives a singular K, focal length 0
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"field of view must lie in (0, 180) degrees, got {fov_deg}")
    f = (width / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def look_at(eye, target, up=WORLD_UP) -> np.ndarray:
    """World-to-camera 4x4 for a camera at `eye` looking at `target` (image up ~ world `up`)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    f = target - eye
    n = np.linalg.norm(f)
    if not n > 1e-12:  # coincident (or NaN) points have no viewing direction: not a NaN matrix
        raise ValueError(f"look_at: eye {eye.tolist()} and target {target.tolist()} give no viewing direction")
    f /= n
    r = _cross(f, up)
    if np.linalg.norm(r) < 1e-9:
        raise ValueError("look_at: viewing direction is parallel to the up vector")
    r /= np.linalg.norm(r)
    d = _cross(f, r)  # image down
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([r, d, f])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    return w2c


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.cross of two 3-vectors, the same products and differences (so the same bits), without its
    per-call overhead (ten times the arithmetic; cameras are built in the data loader's hot path)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def orbit_camera(azimuth: float, elevation: float, distance: float, target=(0.0, 0.0, 0.0)) -> np.ndarray:
    """w2c of a camera on a sphere around `target` (angles in degrees); azimuth 0 puts it on the -y
    side looking +y, and a growing azimuth moves it to its own right."""
    az, el = math.radians(azimuth), math.radians(elevation)
    target = np.asarray(target, dtype=np.float64)
    eye = target + distance * np.array([math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el),
                                        math.sin(el)])
    return look_at(eye, target)


def camera_center(w2c: np.ndarray) -> np.ndarray:
    return -w2c[:3, :3].T @ w2c[:3, 3]


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


def relative_pose(w2c_a: np.ndarray, w2c_b: np.ndarray) -> np.ndarray:
    """Pose of view B in view A's camera frame: T_AB = w2c_A @ inv(w2c_B) (B-camera -> A-camera)."""
    return w2c_a @ invert(w2c_b)


def rotation_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def rotation_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def rotate_view(w2c: np.ndarray, direction: str, degrees: float) -> np.ndarray:
    """The camera turned in place: look 'up' / 'down' / 'left' / 'right' by `degrees`.

    In OpenCV axes the new camera's orientation in the old frame is R_y(-a) for left (forward
    swings toward -x), R_y(+a) for right, R_x(+a) for up (toward -y), R_x(-a) for down.
    """
    a = math.radians(degrees)
    rot = {"left": rotation_y(-a), "right": rotation_y(a), "up": rotation_x(a), "down": rotation_x(-a)}
    if direction not in rot:
        raise ValueError(f"unknown view direction {direction!r}; known: up, down, left, right")
    T_old_new = np.eye(4)
    T_old_new[:3, :3] = rot[direction]
    return invert(T_old_new) @ w2c


def move_view(w2c: np.ndarray, offset_cam) -> np.ndarray:
    """The camera translated by `offset_cam` (metres, in its own x-right/y-down/z-forward axes)."""
    T_old_new = np.eye(4)
    T_old_new[:3, 3] = np.asarray(offset_cam, dtype=np.float64)
    return invert(T_old_new) @ w2c


def axis_angle_to_matrix(v) -> np.ndarray:
    """Rodrigues: rotation vector (axis * angle, radians) -> 3x3 matrix."""
    v = np.asarray(v, dtype=np.float64)
    theta = float(np.linalg.norm(v))
    K = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    if theta < 1e-12:
        return np.eye(3) + K
    K /= theta
    return np.eye(3) + math.sin(theta) * K + (1.0 - math.cos(theta)) * (K @ K)


def matrix_to_axis_angle(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> rotation vector (axis * angle), angle in [0, pi]; robust near 0 and pi."""
    R = np.asarray(R, dtype=np.float64)
    cos = min(1.0, max(-1.0, (np.trace(R) - 1.0) / 2.0))
    theta = math.acos(cos)
    w = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if theta < 1e-6:
        return w / 2.0
    if math.pi - theta > 1e-4:
        return w * (theta / (2.0 * math.sin(theta)))
    # near pi: axis from the symmetric part, (R + R^T) / 2 = cos I + (1 - cos) a a^T (R itself also
    # holds sin(theta) [a]x, up to 1e-4 here: taken as part of a a^T it put a 1e-4 error in the axis)
    S = ((R + R.T) / 2.0 - cos * np.eye(3)) / (1.0 - cos)
    k = int(np.argmax(np.diag(S)))
    a = S[:, k] / math.sqrt(max(S[k, k], 1e-12))
    if np.dot(a, w) < 0:
        a = -a
    return a * theta


def pose_to_numbers(T: np.ndarray) -> np.ndarray:
    """A 4x4 relative pose as the six numbers of its pose text: translation, then axis-angle."""
    T = np.asarray(T, dtype=np.float64)
    return np.concatenate([T[:3, 3], matrix_to_axis_angle(T[:3, :3])])


def numbers_to_pose(vals) -> np.ndarray:
    """The 4x4 pose of six numbers `tx ty tz rx ry rz`."""
    vals = np.asarray(vals, dtype=np.float64)
    if vals.shape != (6,) or not np.isfinite(vals).all():
        raise ValueError(f"a pose is six finite numbers tx ty tz rx ry rz, got {vals.tolist()}")
    T = np.eye(4)
    T[:3, :3] = axis_angle_to_matrix(vals[3:])
    T[:3, 3] = vals[:3]
    return T


def numbers_to_text(vals, decimals: int = POSE_DECIMALS) -> str:
    """`tx ty tz rx ry rz` with fixed decimals (no tags), as the world writes pose texts."""
    out = []
    for x in np.asarray(vals, dtype=np.float64).reshape(-1):
        s = f"{x:.{decimals}f}"
        out.append(s[1:] if s.startswith("-") and float(s) == 0.0 else s)  # no "-0.000"
    return " ".join(out)


def pose_to_text(T: np.ndarray, decimals: int = POSE_DECIMALS) -> str:
    """`tx ty tz rx ry rz` for a 4x4 relative pose, fixed decimals (no tags)."""
    return numbers_to_text(pose_to_numbers(T), decimals)


_NUM = r"[-+]?\d+(?:\.\d+)?"
_POSE_RE = re.compile(rf"^\s*(?:<campose>)?\s*({_NUM}(?:\s+{_NUM}){{5}})\s*(?:</campose>)?\s*$")


def text_to_numbers(text: str) -> np.ndarray:
    """The six numbers of a pose text `tx ty tz rx ry rz` (optionally inside <campose> tags)."""
    m = _POSE_RE.match(text)
    if not m:
        raise ValueError(f"not a pose text (want 6 numbers 'tx ty tz rx ry rz'): {text!r}")
    return np.array([float(x) for x in m.group(1).split()])


def text_to_pose(text: str) -> np.ndarray:
    """Parse `tx ty tz rx ry rz` (optionally inside <campose> tags) back into a 4x4 pose."""
    return numbers_to_pose(text_to_numbers(text))


def pixel_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) camera-frame ray directions K^-1 [u, v, 1] (z component 1: t along it = z-depth)."""
    j, i = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    uv1 = np.stack([j, i, np.ones_like(i)], axis=-1)
    return uv1 @ np.linalg.inv(K).T


def unproject(depth: np.ndarray, K: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    """World points (H, W, 3) of a z-depth map seen by a camera (K, w2c)."""
    cam = pixel_rays(K, *depth.shape) * depth[..., None]
    c2w = invert(w2c)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def project(points: np.ndarray, K: np.ndarray, w2c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (..., 2) as (u, v) and z-depths (...) of world points (..., 3)."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[..., 2]
    uv = (cam @ K.T)[..., :2] / z[..., None]
    return uv, z
