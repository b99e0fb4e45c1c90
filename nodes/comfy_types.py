"""ComfyUI socket types of the pack (``io.Custom``), one per core dataclass in ``moge4d_core.types``.

| socket type            | Python value                                  |
|------------------------|-----------------------------------------------|
| MOGE4D_GEOMETRY        | :class:`moge4d_core.types.Geometry`           |
| MOGE4D_MOTION_FEATURES | :class:`moge4d_core.types.MotionFeatures`     |
| MOGE4D_MOTION          | :class:`moge4d_core.types.Motion`             |
| MOGE4D_TRAJECTORIES    | :class:`moge4d_core.types.Trajectories`       |
| MOGE4D_CAMERA_PATH     | :class:`moge4d_core.types.CameraPath`         |
| MOGE4D_UNIDEPTH        | ModelPatcher holding a UniDepthV2 / V2old     |
| MOGE4D_OMNIMAE         | ModelPatcher holding an OmniMAEEncoder        |
| MOGE4D_STRAG_MODEL     | ModelPatcher holding a 4D-STraG ``STraGDiT``  |
| MOGE4D_MOTION_VAE      | ModelPatcher holding a ``MotionVAE``          |
| MOGE4D_VISM_MODEL      | ModelPatcher holding a 4D-ViSM ``ViSMDiT`` (LoRA merged) |
| MOGE_GEOMETRY          | ComfyUI's MoGe output dict (native in newer ComfyUI) |
"""
from comfy_api.latest import io

Geometry = io.Custom("MOGE4D_GEOMETRY")
MotionFeatures = io.Custom("MOGE4D_MOTION_FEATURES")
Motion = io.Custom("MOGE4D_MOTION")
Trajectories = io.Custom("MOGE4D_TRAJECTORIES")
CameraPath = io.Custom("MOGE4D_CAMERA_PATH")
UniDepth = io.Custom("MOGE4D_UNIDEPTH")
OmniMAE = io.Custom("MOGE4D_OMNIMAE")
StragModel = io.Custom("MOGE4D_STRAG_MODEL")
MotionVAE = io.Custom("MOGE4D_MOTION_VAE")
ViSMModel = io.Custom("MOGE4D_VISM_MODEL")
MoGeGeometry = io.Custom("MOGE_GEOMETRY")  # a type name is just a string: works on any ComfyUI

# Types that only newer ComfyUI releases define: None when the running ComfyUI lacks them.
Splat = getattr(io, "Splat", None)
Tracks = getattr(io, "Tracks", None)
File3DAny = getattr(io, "File3DAny", None)
Load3DCamera = getattr(io, "Load3DCamera", None)
