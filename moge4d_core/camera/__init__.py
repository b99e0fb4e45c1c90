"""Camera paths: presets (the official paths, 90° orbits, dolly, pan, ...), keyframes, scene-adaptive cameras and
Load3D conversion. Camera-to-world poses in OpenCV axes (x right, y down, z forward), world = first-frame camera.
The maths they use (intrinsics, projection) is :mod:`moge4d_core.geometry`; camera files are
:mod:`moge4d_core.io.camera_json`; frustum plots :mod:`moge4d_core.preview.camera_plot`."""
