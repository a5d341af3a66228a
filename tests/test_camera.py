import math

import numpy as np
import pytest

from omni.world import camera as C


def random_rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def test_intrinsics_from_fov():
    K = C.intrinsics(90.0, 32)
    assert K[0, 0] == pytest.approx(16.0) and K[1, 1] == pytest.approx(16.0)
    assert K[0, 2] == 16.0 and K[1, 2] == 16.0
    K = C.intrinsics(60.0, 64, 48)
    assert K[0, 0] == pytest.approx(32.0 / math.tan(math.radians(30)))
    assert K[1, 2] == 24.0
    with pytest.raises(ValueError):
        C.intrinsics(180.0, 32)


def test_look_at_is_opencv():
    w2c = C.look_at([0.0, -5.0, 2.0], [0.0, 0.0, 0.0])
    R = w2c[:3, :3]
    assert np.allclose(R @ R.T, np.eye(3)) and np.linalg.det(R) == pytest.approx(1.0)
    K = C.intrinsics(50.0, 32)
    uv, z = C.project(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), K, w2c)
    assert np.allclose(uv[0], [16.0, 16.0]) and z[0] == pytest.approx(math.hypot(5.0, 2.0))
    assert uv[1, 0] > 16.0  # world +x is to the right for a camera on the -y side
    assert uv[2, 1] < 16.0  # world up is image up (smaller v)
    assert np.allclose(C.camera_center(w2c), [0.0, -5.0, 2.0])


def test_unproject_project_roundtrip():
    rng = np.random.default_rng(0)
    K = C.intrinsics(50.0, 16, 12)
    w2c = C.orbit_camera(30.0, 35.0, 5.0, (0.1, 0.2, 0.3))
    depth = rng.uniform(1.0, 9.0, size=(12, 16))
    pts = C.unproject(depth, K, w2c)
    uv, z = C.project(pts, K, w2c)
    j, i = np.meshgrid(np.arange(16) + 0.5, np.arange(12) + 0.5)
    assert np.allclose(z, depth) and np.allclose(uv[..., 0], j) and np.allclose(uv[..., 1], i)


def test_rotate_view_directions():
    K = C.intrinsics(50.0, 32)
    w2c = C.look_at([0.0, -5.0, 1.0], [0.0, 0.0, 1.0])
    center = np.array([[0.0, 0.0, 1.0]])
    u0 = C.project(center, K, w2c)[0][0]
    u_left = C.project(center, K, C.rotate_view(w2c, "left", 10))[0][0]
    u_right = C.project(center, K, C.rotate_view(w2c, "right", 10))[0][0]
    u_up = C.project(center, K, C.rotate_view(w2c, "up", 10))[0][0]
    u_down = C.project(center, K, C.rotate_view(w2c, "down", 10))[0][0]
    assert u_left[0] > u0[0] and u_right[0] < u0[0]  # looking left moves the world right in the image
    assert u_up[1] > u0[1] and u_down[1] < u0[1]
    for d in ("left", "up"):
        T = C.relative_pose(w2c, C.rotate_view(w2c, d, 30))
        assert np.allclose(T[:3, 3], 0.0, atol=1e-12)
        assert np.linalg.norm(C.matrix_to_axis_angle(T[:3, :3])) == pytest.approx(math.radians(30))
    with pytest.raises(ValueError):
        C.rotate_view(w2c, "sideways", 10)


def test_relative_pose_translation_is_b_centre_in_a():
    a = C.look_at([0.0, -5.0, 1.0], [0.0, 0.0, 1.0])
    b = C.move_view(a, [0.7, 0.0, 0.2])
    T = C.relative_pose(a, b)
    assert np.allclose(T[:3, 3], [0.7, 0.0, 0.2])
    # orbiting to a larger azimuth moves the camera to its right
    T = C.relative_pose(C.orbit_camera(10, 30, 5), C.orbit_camera(20, 30, 5))
    assert T[0, 3] > 0.5


def test_axis_angle_roundtrip_including_near_pi():
    rng = np.random.default_rng(1)
    for _ in range(200):
        R = random_rotation(rng)
        assert np.allclose(C.axis_angle_to_matrix(C.matrix_to_axis_angle(R)), R, atol=1e-9)
    for ang in (0.0, 1e-8, math.pi - 1e-6, math.pi):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        R = C.axis_angle_to_matrix(axis * ang)
        assert np.allclose(C.axis_angle_to_matrix(C.matrix_to_axis_angle(R)), R, atol=1e-6)


def test_pose_text_roundtrip_within_1e3():
    rng = np.random.default_rng(2)
    for _ in range(200):
        a = C.orbit_camera(rng.uniform(0, 360), rng.uniform(20, 50), rng.uniform(4, 7),
                           rng.uniform(-0.5, 0.5, 3))
        b = C.orbit_camera(rng.uniform(0, 360), rng.uniform(20, 50), rng.uniform(4, 7),
                           rng.uniform(-0.5, 0.5, 3))
        T = C.relative_pose(a, b)
        text = C.pose_to_text(T)
        assert len(text.split()) == 6 and all(len(x.split(".")[1]) == 3 for x in text.split())
        back = C.text_to_pose(f"<campose>{text}</campose>")
        assert np.abs(back[:3, :4] - T[:3, :4]).max() < 1e-3
        # view B's absolute extrinsics from A's and the parsed pose (4 decimals: metres-scale lever arm)
        b_back = C.invert(C.text_to_pose(C.pose_to_text(T, decimals=4))) @ a
        assert np.abs(b_back[:3, :4] - b[:3, :4]).max() < 1e-3


def test_pose_numbers_round_trip_and_bad_numbers():
    """pose_to_numbers / numbers_to_pose are the pose text's six numbers (the pose head's targets and
    outputs), numbers_to_text writes them as the world does."""
    rng = np.random.default_rng(3)
    T = C.relative_pose(C.orbit_camera(30, 30, 5, np.zeros(3)), C.orbit_camera(80, 40, 6, rng.uniform(-0.5, 0.5, 3)))
    v = C.pose_to_numbers(T)
    assert v.shape == (6,) and np.allclose(C.numbers_to_pose(v), T, atol=1e-9)
    assert C.numbers_to_text(v) == C.pose_to_text(T) and C.numbers_to_text([-1e-5] * 6).split()[0] == "0.000"
    for bad in ([1, 2, 3], [0, 0, 0, 0, 0, float("nan")]):
        with pytest.raises(ValueError, match="six finite numbers"):
            C.numbers_to_pose(bad)


def test_pose_text_rejects_garbage():
    for bad in ("", "1 2 3", "1 2 3 4 5 6 7", "a b c d e f", "<campose>1 2 3 4 5</campose>"):
        with pytest.raises(ValueError):
            C.text_to_pose(bad)
    T = np.eye(4)
    T[0, 3] = -1e-5
    assert C.pose_to_text(T).split()[0] == "0.000"  # no negative zero


def test_cross_is_numpys_to_the_bit():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        a, b = rng.normal(size=3) * rng.uniform(0, 10), rng.normal(size=3)
        assert np.array_equal(C._cross(a, b), np.cross(a, b))


def test_axis_angle_accurate_just_inside_the_near_pi_branch():
    """Within 1e-4 of pi the axis came from R + I, antisymmetric part included: a 1e-4 error (the
    pose text's third decimal) where the rest of the range is exact to 1e-9."""
    rng = np.random.default_rng(4)
    for eps in (9.9e-5, 5e-5, 1e-5):
        for _ in range(50):
            axis = rng.normal(size=3)
            axis /= np.linalg.norm(axis)
            v = axis * (math.pi - eps)
            assert np.abs(C.matrix_to_axis_angle(C.axis_angle_to_matrix(v)) - v).max() < 1e-8


def test_degenerate_cameras_raise_instead_of_nan():
    for eye, target in (([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), ([0.0, 0.0, float("nan")], [0.0, 0.0, 0.0])):
        with pytest.raises(ValueError, match="no viewing direction"):
            C.look_at(eye, target)
    with pytest.raises(ValueError, match="no viewing direction"):
        C.orbit_camera(30.0, 30.0, 0.0)  # distance 0: the camera sits on its target
    with pytest.raises(ValueError, match="parallel"):
        C.orbit_camera(0.0, 90.0, 5.0)
    with pytest.raises(ValueError, match="image size must be positive, got 0x0"):
        C.intrinsics(50.0, 0)
