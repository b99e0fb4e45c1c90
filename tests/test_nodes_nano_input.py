"""The nano demo inside a graph: MoGe4D Nano Demo Input (the CLI demo's image + geometry), MoGe4D Empty Text, the
nano ViSM / pixel VAE in ComfyUI's own model folders and shapes, and MoGe4D Render's 'gaussians (spacing)' mode
(the CLI's --render splats), through the ComfyUI stand-in."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_nodes
from moge4d_core.demo_scene import make_demo_scene
from moge4d_core.camera.scene import camera_path_for_scene
from moge4d_core.geometry.intrinsics import K_from_fov
from moge4d_core.pipeline.nano import NANO_DIR, NANO_FILES
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


def test_empty_text_is_one_zero_token_of_umt5_width(node):
    schema = node("MoGe4DEmptyText").define_schema()
    assert schema.inputs == [] and schema.outputs[0].io_type == "CONDITIONING"
    (cond,) = node("MoGe4DEmptyText").execute().args
    assert len(cond) == 1 and tuple(cond[0][0].shape) == (1, 1, 4096) and float(cond[0][0].abs().max()) == 0
    assert cond[0][1] == {"pooled_output": None}


def test_nano_vism_and_vae_are_listed_in_comfyuis_own_model_folders(node):
    import folder_paths

    assert "moge4d_nano_vism.safetensors" in folder_paths.get_filename_list("diffusion_models")
    assert "moge4d_nano_vae.safetensors" in folder_paths.get_filename_list("vae")
    assert folder_paths.get_full_path("vae", "moge4d_nano_vae.safetensors") == str(NANO_DIR / NANO_FILES["vae"])


def test_nano_vism_and_vae_have_the_shapes_comfyui_builds():
    """ComfyUI v0.21's rules (comfy/model_detection.py, comfy/sd.py), restated: Wan2.1 DiT heads = dim // 128,
    freq_dim 256, text 4096 wide, CLIP img_emb 1280 wide; Wan2.1 VAE dim from decoder.head.0.gamma with
    dim_mult [1,2,4,4] and 2 res blocks. Our loaders read the same files (the real ComfyUI run is
    tests/test_real_comfyui.py)."""
    from diffusers import AutoencoderKLWan
    from safetensors.torch import load_file

    from moge4d_core.loading.motion_vae import wan_vae_diffusers_to_original
    from moge4d_core.loading.wan_dit import load_vism_base

    dit = load_file(str(NANO_DIR / NANO_FILES["vism"]))
    dim = dit["head.modulation"].shape[-1]
    vism = load_vism_base(str(NANO_DIR / NANO_FILES["vism"]), dtype=torch.float32)
    cfg = vism.config
    assert cfg.num_attention_heads == dim // 128 and cfg.attention_head_dim * cfg.num_attention_heads == dim
    assert dit["time_embedding.0.weight"].shape[1] == 256 == cfg.freq_dim
    assert dit["text_embedding.0.weight"].shape[1] == 4096 and dit["img_emb.proj.0.weight"].shape == (1280,)
    assert dit["patch_embedding.weight"].shape[1] == 36                # Fun-InP: 16 noise + 4 mask + 16 video
    vae_sd = load_file(str(NANO_DIR / NANO_FILES["vae"]))
    base = vae_sd["decoder.head.0.gamma"].shape[0]
    comfy_built = AutoencoderKLWan(base_dim=base, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                   temperal_downsample=[False, True, True])
    want = wan_vae_diffusers_to_original(comfy_built.state_dict(), dict(comfy_built.config))
    assert {k: tuple(v.shape) for k, v in want.items()} == {k: tuple(v.shape) for k, v in vae_sd.items()}


def test_render_spacing_mode_is_the_cli_splat_render(node):
    traj = make_demo_scene(height=32, width=48, num_frames=5)
    cam = camera_path_for_scene("dolly_in", traj)
    frames, holes, _ = node("MoGe4DRender").execute(trajectories=traj, camera_path=cam,
                                                    mode="gaussians (spacing)").args
    want = render_trajectories(traj, cam, **SPLAT_RENDER)
    assert torch.allclose(frames, want.rgb.float(), atol=1e-5) and torch.equal(holes, want.holes.float())
    fixed, fixed_holes, _ = node("MoGe4DRender").execute(trajectories=traj, camera_path=cam, mode="gaussians").args
    assert float(holes[-1].mean()) < float(fixed_holes[-1].mean())   # splats sized to the spacing fill the gaps
