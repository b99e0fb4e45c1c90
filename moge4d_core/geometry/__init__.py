"""Geometry: intrinsics, back-projection, depth-guided motion (de)normalisation, camera paths.

Pure, batched tensor functions; conventions are stated in each module docstring.
"""
