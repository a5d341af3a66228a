"""The procedural 3D world: scenes, cameras, the renderer, language and task samplers."""

from .camera import (
                     intrinsics,
                     look_at,
                     orbit_camera,
                     pose_to_text,
                     project,
                     relative_pose,
                     rotate_view,
                     text_to_pose,
                     unproject,
)
from .render import DEPTH_FAR, ID_GROUND, ID_SKY, Render, render
from .scene import COLORS, PALETTE, SHAPES, SIZES, Obj, Scene, SceneOptions, sample_scene
from .tasks import SPLITS, T2I_CATEGORIES, TASKS, Example, View, WorldConfig, sample, sample_one, split_of

__all__ = [
    "COLORS", "DEPTH_FAR", "ID_GROUND", "ID_SKY", "PALETTE", "SHAPES", "SIZES", "SPLITS", "T2I_CATEGORIES",
    "TASKS", "Example", "Obj", "Render", "Scene", "SceneOptions", "View", "WorldConfig", "intrinsics",
    "look_at", "orbit_camera", "pose_to_text", "project", "relative_pose", "render", "rotate_view",
    "sample", "sample_one", "sample_scene", "split_of", "text_to_pose", "unproject",
]
