"""Evaluation from exact world knowledge: metrics, the generation checker, ablation tables."""

from .checker import Checker, CheckResult, Detection, check, degrade, summarize, validate_on_world
from .metrics import bootstrap_ci, depth_metrics, pose_auc, psnr, qa_accuracy, ssim
from .report import AblationTable, ablation_table

__all__ = [
    "AblationTable", "CheckResult", "Checker", "Detection", "ablation_table", "bootstrap_ci", "check", "degrade",
    "depth_metrics", "pose_auc", "psnr", "qa_accuracy", "ssim", "summarize", "validate_on_world",
]
