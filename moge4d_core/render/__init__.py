"""Point and Gaussian renderers with hole masks.

``render_points(points, colors, camera, mode="points"|"gaussians", ...) -> RenderResult`` and
``render_trajectories(traj, camera, ...)``; see :mod:`moge4d_core.render.api` for the full contract.
"""
from .api import BACKENDS, MODES, render_points, render_trajectories, spacing_scale

__all__ = ["render_points", "render_trajectories", "spacing_scale", "MODES", "BACKENDS"]
