"""Images for people, not for models: depth and confidence previews, motion and feature previews, camera-path
frustum plots. Nothing here feeds a model."""
from .camera_plot import frustum_plot
from .depth import confidence_mask, depth_preview
from .features import token_norm_preview
from .motion import motion_preview

__all__ = ["frustum_plot", "confidence_mask", "depth_preview", "token_norm_preview", "motion_preview"]
