"""End-to-end MoGe4D pipeline: typed stages shared by the ComfyUI nodes, the CLI and the trainers.

image + geometry → :mod:`.conditioning` → :mod:`.trajectory` (STraG sampling → motion VAE decode → ``Motion``)
→ de-normalisation (``Trajectories``) → render (:mod:`moge4d_core.render`) → :mod:`.inpaint` (ViSM) → frames.
"""
from .image_vae import ImageVAE, WanImageVAE
from .conditioning import (StragConditions, ViSMConditions, control_video, depth_video, encode_strag_conditions,
                           encode_vism_conditions, gray_image)

__all__ = ["ImageVAE", "WanImageVAE", "StragConditions", "ViSMConditions", "control_video", "depth_video",
           "encode_strag_conditions", "encode_vism_conditions", "gray_image"]
