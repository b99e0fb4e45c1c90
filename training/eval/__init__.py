"""Evaluation metrics for MoGe4D training runs (trajectory error, masked PSNR)."""
from .metrics import masked_psnr, trajectory_error, zero_motion_baseline

__all__ = ["trajectory_error", "zero_motion_baseline", "masked_psnr"]
