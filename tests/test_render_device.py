"""The pipeline renders on the compute device: :func:`render_on_device` gives the same frames whichever backend
runs (Triton under ``TRITON_INTERPRET=1`` on the CPU here, as on CUDA), and a CUDA run without triton says once
that it falls back to PyTorch."""
import logging

import pytest
import torch

from moge4d_core.demo_scene import make_demo_scene
from moge4d_core.camera.scene import camera_path_for_scene
from moge4d_core.ops import zbuffer as zb
from moge4d_core.pipeline.run import render_on_device
from moge4d_core.render import points as render_points_module


@pytest.fixture()
def scene():
    return make_demo_scene(height=24, width=32, num_frames=5)


def test_render_on_device_returns_cpu_tensors_and_matches_the_torch_render(scene):
    path = camera_path_for_scene("orbit_left", scene)
    res = render_on_device(scene, path, "cpu", backend="torch")
    ref = render_on_device(scene, path, torch.device("cpu"), backend="torch", point_size=1)
    assert res.rgb.device.type == "cpu" and res.extras["point_index"].device.type == "cpu"
    assert torch.equal(res.rgb, ref.rgb) and 0 < float(res.holes.mean()) < 1


def test_triton_zbuffer_through_the_pipeline_render_equals_torch(scene, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if not zb.triton_usable_on(torch.device("cpu")):
        pytest.skip("triton is not installed")
    path = camera_path_for_scene("dolly_in", scene)
    tri = render_on_device(scene, path, "cpu", backend="triton")
    ref = render_on_device(scene, path, "cpu", backend="torch")
    assert tri.extras["backend"] == "triton" and ref.extras["backend"] == "torch"
    assert torch.equal(tri.holes, ref.holes) and torch.equal(tri.rgb, ref.rgb) and torch.equal(tri.depth, ref.depth)


def test_cuda_without_triton_falls_back_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setattr(zb, "triton_available", lambda: False)
    monkeypatch.setattr(render_points_module, "_SAID", set())
    cuda = torch.device("cuda")                  # only the device's type is read: no GPU needed
    with caplog.at_level(logging.WARNING, logger=render_points_module.log.name):
        assert render_points_module.choose_backend("auto", cuda) == "torch"
        assert render_points_module.choose_backend("auto", cuda) == "torch"
        assert render_points_module.choose_backend("auto", torch.device("cpu")) == "torch"
    notes = [r for r in caplog.records if "triton is not installed" in r.getMessage()]
    assert len(notes) == 1
    monkeypatch.setattr(zb, "triton_available", lambda: True)
    assert render_points_module.choose_backend("auto", cuda) == "triton"
