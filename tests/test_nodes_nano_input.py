"""The nano demo inside a graph: MoGe4D Nano Demo Input (the CLI demo's image + geometry), MoGe4D Load Wan VAE
(the nano pixel VAE as a ComfyUI-convention VAE for MoGe4D Inpaint) and MoGe4D Render's 'gaussians (spacing)'
mode (the CLI's --render splats), through the ComfyUI stand-in."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_nodes
from moge4d_core.demo_scene import make_demo_scene
from moge4d_core.camera.scene import camera_path_for_scene
from moge4d_core.geometry.intrinsics import K_from_fov
from moge4d_core.interop.native_wan import ChannelLastVAE
from moge4d_core.loading.motion_vae import load_wan_vae
from moge4d_core.pipeline.image_vae import WanImageVAE
from moge4d_core.pipeline.nano import NANO_DIR
from moge4d_core.pipeline.run import SPLAT_RENDER
from moge4d_core.render import render_trajectories

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    nodes = load_nodes(tmp_path_factory.mktemp("nodes_nano_input"))
    return lambda nid: next(x for x in nodes.NODE_LIST if x.define_schema().node_id == nid)


def test_demo_input_is_the_shipped_image_depth_and_fov(node):
    image, geometry = node("MoGe4DNanoDemoInput").execute().args
    spec = json.loads((NANO_DIR / "demo.json").read_text())
    png = torch.from_numpy(np.array(Image.open(NANO_DIR / spec["image"]).convert("RGB"))).float() / 255
    depth = torch.from_numpy(np.load(NANO_DIR / spec["depth"])).float()
    assert image.shape == (1, 64, 96, 3) and torch.equal(image[0], png)
    assert torch.equal(geometry.image, png) and torch.equal(geometry.depth, depth) and geometry.metric
    assert torch.allclose(geometry.K, K_from_fov(spec["fov_deg"], 96, 64).float())
    # back-projection through that camera: x = (u + 0.5 - cx) z / fx at pixel centres
    fx, cx = float(geometry.K[0, 0]), float(geometry.K[0, 2])
    assert torch.allclose(geometry.points[..., 0], (torch.arange(96) + 0.5 - cx) / fx * depth, atol=1e-5)


def test_load_wan_vae_nano_is_the_demo_pixel_vae(node):
    schema = node("MoGe4DLoadWanVAE").define_schema()
    assert [i.id for i in schema.inputs] == ["file"] and schema.inputs[0].options == ["nano (built-in)"]
    assert schema.outputs[0].io_type == "VAE"                        # what MoGe4D Inpaint's vae input takes
    vae = ChannelLastVAE(node("MoGe4DLoadWanVAE").execute(file="nano (built-in)").args[0])
    ref = WanImageVAE(load_wan_vae(str(NANO_DIR / "vae.safetensors")))
    video = torch.rand(1, 3, 5, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z, z_ref = vae.encode(video), ref.encode(video)
    assert z.shape == (1, 16, 2, 4, 6) and torch.allclose(z, z_ref, atol=1e-5)
    assert torch.allclose(vae.decode(z_ref), ref.decode(z_ref), atol=1e-5)
    with pytest.raises(Exception, match="nano \\(built-in\\)"):
        node("MoGe4DLoadWanVAE").execute(file="../vae.safetensors")


def test_render_spacing_mode_is_the_cli_splat_render(node):
    traj = make_demo_scene(height=32, width=48, num_frames=5)
    cam = camera_path_for_scene("dolly_in", traj)
    frames, holes, _ = node("MoGe4DRender").execute(trajectories=traj, camera_path=cam,
                                                    mode="gaussians (spacing)").args
    want = render_trajectories(traj, cam, **SPLAT_RENDER)
    assert torch.allclose(frames, want.rgb.float(), atol=1e-5) and torch.equal(holes, want.holes.float())
    fixed, fixed_holes, _ = node("MoGe4DRender").execute(trajectories=traj, camera_path=cam, mode="gaussians").args
    assert float(holes[-1].mean()) < float(fixed_holes[-1].mean())   # splats sized to the spacing fill the gaps
