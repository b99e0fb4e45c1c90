"""MoGe4D core library: single image -> 4D point trajectories -> novel-view video.

This package never imports ComfyUI. Sub-packages:

- ``geometry``  intrinsics, back-projection, depth-guided motion (de)normalisation, camera paths
- ``render``    point / Gaussian rasterisers with hole masks
- ``ops``       fused kernels (Triton) beside their PyTorch references
- ``io``        TrajScene / DELTA pkl, npz, PLY, splat PLY, MP4
- ``models``, ``loading``, ``sampling``  the learned components and their checkpoint loaders

Conventions everywhere: OpenCV camera axes (x right, y down, z forward); world = first-frame camera;
camera paths are camera-to-world; images are float in [0, 1], channel-last.
"""
from .errors import MoGe4DInputError

__version__ = "0.1.0"
__all__ = ["MoGe4DInputError", "__version__"]
