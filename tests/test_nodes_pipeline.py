"""Trajectory and inpainting nodes against the ComfyUI stand-in, on tiny models in the official file layouts
(tests/pipeline_models.py) loaded through the loader nodes: the whole chain sampler -> denormalize -> render ->
inpaint, bad input, Cancel, native SAMPLER / SIGMAS, the native Fun-InP conditioning and the ViSM LoRA patch."""
import math

import pytest
import torch
import torch.nn as nn

from conftest import load_nodes, pack_module
from moge4d_core.errors import MoGe4DInputError
from moge4d_core.geometry.sources import geometry_from_depth
from pipeline_models import write_tiny_models

torch.set_num_threads(1)

STRAG = "4D-STraG/diffusion_pytorch_model.safetensors"
INP = "Wan2.1-Fun-V1.1-14B-InP/diffusion_pytorch_model.safetensors"
LORA = "4D-ViSM/lora_diffusion_pytorch_model.safetensors"
# ComfyUI v0.21 comfy/latent_formats.py Wan21.latents_mean / latents_std (independent copy of the constants)
COMFY_WAN_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                  0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
COMFY_WAN_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


class ComfyLikeVAE:
    """The tiny diffusers Wan VAE behind ComfyUI's ``VAE`` calling convention (comfy/sd.py, v0.21):
    encode((T,H,W,3) [0,1]) -> raw posterior mean (1,16,F,h,w); decode(raw) -> (1,T,H,W,3) [0,1]."""

    def __init__(self, vae):
        self.vae = vae
        self.encoded = []

    @torch.no_grad()
    def encode(self, pixels):
        self.encoded.append(pixels.clone())
        x = (pixels * 2 - 1).permute(3, 0, 1, 2)[None]
        return self.vae.encode(x).latent_dist.mode()

    @torch.no_grad()
    def decode(self, raw):
        x = self.vae.decode(raw).sample.clamp(-1, 1)
        return ((x + 1) / 2).permute(0, 2, 3, 4, 1)


def _node(nodes, node_id):
    return next(n for n in nodes.NODE_LIST if n.define_schema().node_id == node_id)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nodes_pipeline")
    nodes = load_nodes(tmp)
    import folder_paths

    models = pack_module("nodes.models")

    folder_paths.models_dir = str(tmp / "models")
    folder_paths.folder_names_and_paths.pop("moge4d", None)
    models.register_model_folder()
    paths = write_tiny_models(tmp / "models" / "moge4d")
    from moge4d_core.loading.motion_vae import load_wan_vae

    wan_vae = load_wan_vae(paths["wan_vae"])
    n = lambda nid: _node(nodes, nid)  # noqa: E731
    strag = n("MoGe4DLoadSTraG").execute(file=STRAG, precision="fp32").args[0]
    mvae = n("MoGe4DLoadMotionVAE").execute(vae="VAE/", precision="fp32").args[0]
    vism = n("MoGe4DLoadViSM").execute(file=INP, lora=LORA, strength=0.55, precision="fp32").args[0]
    yield dict(nodes=nodes, n=n, paths=paths, strag=strag, mvae=mvae, vism=vism, vae=ComfyLikeVAE(wan_vae),
               root=tmp / "models" / "moge4d")
    folder_paths.folder_names_and_paths.pop("moge4d", None)


@pytest.fixture(autouse=True)
def _reset_cancel():
    import comfy.model_management as mm

    mm.reset_interrupt()
    yield
    mm.reset_interrupt()


IMAGE = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(5))


def _geometry():
    depth = 2.0 + torch.linspace(0, 1, 16)[None, :].expand(16, 16)
    return geometry_from_depth(IMAGE, depth[..., None].expand(16, 16, 3).contiguous(), 60.0, depth_kind="metric")


def _cond(seed=0, width=16, tokens=7):
    return [[torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(seed)), {"pooled_output": None}]]


def _sample(env, **kw):
    args = dict(strag_model=env["strag"], motion_vae=env["mvae"], geometry=_geometry(), positive=_cond(0),
                negative=_cond(1), frames=5, steps=2, cfg=2.0, shift=5.0, seed=3)
    args.update(kw)
    return env["n"]("MoGe4DTrajectorySampler").execute(**args).args


def test_loader_choices(env):
    motion_vae_choices = pack_module("nodes.strag_nodes").motion_vae_choices

    n = env["n"]
    assert motion_vae_choices()[0] == "VAE/"
    assert not any(c.startswith("VAE/") and c != "VAE/" for c in motion_vae_choices())
    opts = {i.id: i for i in n("MoGe4DLoadSTraG").define_schema().inputs}
    assert opts["file"].options[:2] == ["nano (built-in)", STRAG] and opts["base_control"].options[0] == "none"
    vopts = {i.id: i for i in n("MoGe4DLoadViSM").define_schema().inputs}
    assert vopts["lora"].options[:2] == ["none", LORA] and vopts["strength"].default == 0.55
    assert n("MoGe4DLoadMotionVAE").validate_inputs(vae="VAE/") is True
    assert n("MoGe4DLoadMotionVAE").validate_inputs(vae="nothing/") is not True
    assert n("MoGe4DLoadSTraG").validate_inputs(file="missing.safetensors") is not True


def test_vism_loader_merges_the_lora_at_the_given_strength(env):
    from safetensors.torch import load_file

    base = load_file(str(env["paths"]["vism_base"]))
    lora = load_file(str(env["paths"]["vism_lora"]))
    model = env["vism"].model.inner
    w = dict(model.named_parameters())["blocks.1.attn1.to_q.weight"].detach().double()   # original blocks.1.self_attn.q
    stem = "lora_unet__blocks_1_self_attn_q"
    up, down = lora[stem + ".lora_up.weight"].double(), lora[stem + ".lora_down.weight"].double()
    alpha, rank = float(lora[stem + ".alpha"]), down.shape[0]
    want = base["blocks.1.self_attn.q.weight"].double() + 0.55 * (alpha / rank) * up @ down
    assert torch.allclose(w, want, atol=1e-6)
    assert not torch.allclose(w, base["blocks.1.self_attn.q.weight"].double(), atol=1e-4)


def test_sampler_denormalize_render_inpaint_chain(env):
    import comfy.utils

    n = env["n"]
    comfy.utils.updates.clear()
    motion, preview = _sample(env)
    assert motion.delta.shape == (5, 16, 16, 3) and bool(torch.isfinite(motion.delta).all())
    assert bool((motion.delta[0] == 0).all()) and float(motion.delta[1:].abs().max()) > 0
    assert preview.shape == (5, 16, 16, 3) and float(preview.min()) >= 0 and float(preview.max()) <= 1
    assert comfy.utils.updates[-2:] == [(1, 2), (2, 2)]                     # one progress update per step

    (traj,) = n("MoGe4DDenormalize").execute(motion=motion, fps=8.0).args
    g = _geometry()
    assert traj.points.shape == (5, 256, 3) and traj.fps == 8.0
    assert torch.equal(traj.points[0], g.points.reshape(-1, 3))
    # hand formula for one point: dX = dx_hat*z0/fx, dY = dy_hat*z0/fy, dZ = dz_hat*z0 (the motion's own spec)
    i, j, t = 4, 9, 3
    z0 = float(g.points[i, j, 2])
    d = motion.delta[t, i, j].double()
    want = g.points[i, j].double() + torch.tensor([d[0] * z0 / motion.norm.fx, d[1] * z0 / motion.norm.fy, d[2] * z0],
                                                  dtype=torch.float64)
    assert torch.allclose(traj.points[t, i * 16 + j].double(), want, atol=1e-5)

    path, _ = n("MoGe4DCameraPath").execute(preset="orbit_left", trajectories=traj).args
    frames, holes, _ = n("MoGe4DRender").execute(trajectories=traj, camera_path=path).args
    assert frames.shape == (5, 16, 16, 3) and holes.shape == (5, 16, 16)

    comfy.utils.updates.clear()
    (out,) = n("MoGe4DInpaint").execute(vism_model=env["vism"], vae=env["vae"], render=frames, holes=holes,
                                        positive=_cond(2), negative=_cond(3), steps=2, cfg=2.0, seed=4).args
    assert out.shape == (5, 16, 16, 3) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1 and float(out.std()) > 0
    assert comfy.utils.updates[-1] == (2, 2)
    # the masked video handed to ComfyUI's VAE: holes mid-gray (0 in [-1,1]), the rest the render
    px = env["vae"].encoded[-1]
    h = holes >= 0.5
    if bool(h.any()):
        assert torch.allclose(px[h], torch.full_like(px[h], 0.5), atol=1e-6)
    assert torch.allclose(px[~h], frames[~h], atol=1e-6)


def test_inpaint_node_keep_rendered_keeps_the_render_where_points_landed(env):
    from moge4d_core.pipeline.inpaint import keep_weight

    n = env["n"]
    frames = torch.rand(5, 16, 16, 3, generator=torch.Generator().manual_seed(7))
    holes = torch.zeros(5, 16, 16)
    holes[:, 4:9, 6:12] = 1
    args = dict(vism_model=env["vism"], vae=env["vae"], render=frames, holes=holes, positive=_cond(2),
                negative=_cond(3), steps=1, cfg=2.0, seed=4)
    (off,) = n("MoGe4DInpaint").execute(**args).args
    (on,) = n("MoGe4DInpaint").execute(**args, keep_rendered=2).args
    kept, hole = keep_weight(holes, 2) == 1, holes > 0.5
    assert torch.equal(on[kept], frames[kept]) and not torch.equal(off[kept], frames[kept])
    assert torch.equal(on[hole], off[hole])


def test_channel_last_vae_matches_comfy_wan_normalisation(env):
    from moge4d_core.interop.native_wan import ChannelLastVAE

    vae = env["vae"]
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(9)) * 2 - 1
    z = ChannelLastVAE(vae).encode(video)
    raw = vae.encode(((video[0].permute(1, 2, 3, 0) + 1) / 2))
    mean = torch.tensor(COMFY_WAN_MEAN, dtype=torch.float64).view(1, 16, 1, 1, 1)
    std = torch.tensor(COMFY_WAN_STD, dtype=torch.float64).view(1, 16, 1, 1, 1)
    assert z.shape == (1, 16, 2, 2, 2)
    assert torch.allclose(z.double(), (raw.double() - mean) / std, atol=1e-5)    # ComfyUI's process_latent_in
    back = ChannelLastVAE(vae).decode(z)
    want = vae.decode(raw).permute(0, 4, 1, 2, 3) * 2 - 1
    assert back.shape == (1, 3, 5, 16, 16) and torch.allclose(back, want, atol=1e-4)


def test_conditioning_of_another_width_is_refused(env):
    weight = env["strag"].model.inner.condition_embedder.text_embedder.linear_1.weight
    saved = weight.detach().clone()
    try:                                                # give the tiny STraG a text path for this check
        torch.nn.init.normal_(weight, std=0.02)
        with pytest.raises(MoGe4DInputError, match="token width 768, expected 16"):
            _sample(env, positive=_cond(0, width=768))
        with pytest.raises(MoGe4DInputError, match="negative"):
            _sample(env, negative=_cond(0, width=32))
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    # trained without text (the tiny files): any conditioning is ignored, even of another width
    assert torch.equal(_sample(env, positive=_cond(0, width=768))[0].delta, _sample(env)[0].delta)


def test_image_must_match_the_geometry(env):
    with pytest.raises(MoGe4DInputError, match="differs from the geometry"):
        _sample(env, image=torch.rand(1, 16, 24, 3))
    same = _sample(env, steps=1)[0].delta
    other = _sample(env, steps=1, image=torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(2)))[0].delta
    assert not torch.equal(same, other)                                    # the image replaces the colours


def test_cancel_mid_sampling_then_rerun(env):
    import comfy.model_management as mm

    before = _sample(env)[0].delta
    mm.interrupt_after_calls = 2          # node-start check + first step pass, the second step cancels
    with pytest.raises(mm.InterruptProcessingException):
        _sample(env)
    mm.reset_interrupt()
    after = _sample(env)[0].delta
    assert torch.equal(before, after)


def test_native_sigmas_reproduce_the_builtin_euler(env):
    import comfy.samplers

    from moge4d_core.pipeline.settings import SamplerSettings

    ours = _sample(env)[0].delta
    sigmas = SamplerSettings(steps=2, shift=5.0).sigmas()
    comfy.samplers.sampled.clear()
    native = _sample(env, sigmas=sigmas)[0].delta                       # ComfyUI's euler (stand-in KSAMPLER)
    assert len(comfy.samplers.sampled) == 1 and torch.equal(comfy.samplers.sampled[0], sigmas)
    assert torch.allclose(native, ours, atol=1e-5)
    native2 = _sample(env, sampler=comfy.samplers.sampler_object("euler"), sigmas=sigmas)[0].delta
    assert torch.allclose(native2, ours, atol=1e-5)


def test_flow_scheduler_simple_is_the_shifted_grid(env):
    (s,) = env["n"]("MoGe4DFlowScheduler").execute(scheduler="simple", steps=4, shift=3.0, denoise=1.0).args
    t = torch.tensor([(1000 - int(i * 250)) / 1000 for i in range(4)], dtype=torch.float64)
    want = torch.cat([3 * t / (1 + 2 * t), torch.zeros(1, dtype=torch.float64)])
    assert torch.allclose(s.double(), want, atol=1e-6)
    # "normal" is the release's grid: diffusers' FlowMatchEulerDiscreteScheduler with the same shift
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    ref.set_timesteps(50)
    (normal,) = env["n"]("MoGe4DFlowScheduler").execute(scheduler="normal", steps=50, shift=5.0, denoise=1.0).args
    assert torch.allclose(normal, ref.sigmas.float(), atol=1e-6)
    (half,) = env["n"]("MoGe4DFlowScheduler").execute(scheduler="simple", steps=2, shift=3.0, denoise=0.5).args
    assert half.shape == (3,) and float(half[-1]) == 0.0 and float(half[0]) < 1.0


def test_fp8_storage_and_block_offload(env):
    n = env["n"]
    ref = _sample(env, steps=1)[0].delta
    off = n("MoGe4DLoadSTraG").execute(file=STRAG, precision="fp32", block_offload=True).args[0]
    assert off.load_device == torch.device("cpu")
    assert torch.allclose(_sample(env, steps=1, strag_model=off)[0].delta, ref, atol=1e-5)
    fp8 = n("MoGe4DLoadSTraG").execute(file=STRAG, precision="fp32", fp8_storage=True).args[0]
    lin = fp8.model.inner.blocks[0].attn1.to_q
    assert lin.weight.dtype == torch.float8_e4m3fn
    d8 = _sample(env, steps=1, strag_model=fp8)[0].delta
    assert bool(torch.isfinite(d8).all()) and d8.shape == ref.shape
    # ViSM: the LoRA is merged in full precision, then the weights go to scaled fp8
    v8 = n("MoGe4DLoadViSM").execute(file=INP, lora=LORA, strength=0.55, precision="fp32", fp8_storage=True,
                                     block_offload=True).args[0]
    q = v8.model.inner.blocks[1].attn1.to_q
    merged = env["vism"].model.inner.blocks[1].attn1.to_q.weight.detach().double()
    deq = q.weight.detach().double() * q.weight_scale.double()
    assert q.weight.dtype == torch.float8_e4m3fn
    assert float((deq - merged).abs().max()) <= 0.07 * float(merged.abs().max())     # e4m3: 3 mantissa bits
    frames, holes = _render_case()
    (out,) = n("MoGe4DInpaint").execute(vism_model=v8, vae=env["vae"], render=frames, holes=holes, positive=_cond(2),
                                        negative=_cond(3), steps=1, cfg=1.0, seed=4).args
    assert out.shape == (5, 16, 16, 3) and bool(torch.isfinite(out).all())


def _render_case():
    frames = torch.rand(5, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    holes = torch.zeros(5, 16, 16)
    holes[2, :, :8] = 1            # frame 2, left half: latent frame 1, channel 4*1 + c - 3 = 2 -> c = 1, cell x = 0
    return frames, holes


def test_inpaint_conditioning_for_the_native_ksampler(env):
    n = env["n"]
    frames, holes = _render_case()
    pos, neg, latent = n("MoGe4DInpaintConditioning").execute(positive=_cond(0, 4096, 3), negative=_cond(1, 4096, 3),
                                                             vae=env["vae"], render=frames, holes=holes).args
    assert latent["samples"].shape == (1, 16, 2, 2, 2) and float(latent["samples"].abs().sum()) == 0
    for c in (pos, neg):
        assert len(c) == 1 and c[0][0].shape == (1, 3, 4096) and "pooled_output" in c[0][1]
        extras = c[0][1]
        want_mask = torch.zeros(1, 4, 2, 2, 2)
        want_mask[0, 1, 1, :, 0] = 1
        assert torch.equal(extras["concat_mask"], want_mask)
        # ComfyUI's WAN21.concat_cond feeds 1 - concat_mask: the release's "1 = known" mask latent
        assert extras["concat_latent_image"].shape == (1, 16, 2, 2, 2)
        tokens = extras["clip_vision_output"].penultimate_hidden_states
        assert tokens.shape == (1, 257, 1280) and float(tokens.abs().sum()) == 0
    px = env["vae"].encoded[-1]
    assert torch.allclose(px[2, :, :8], torch.full((16, 8, 3), 0.5)) and torch.equal(px[2, :, 8:], frames[2, :, 8:])
    assert torch.equal(px[[0, 1, 3, 4]], frames[[0, 1, 3, 4]])
    assert torch.allclose(pos[0][1]["concat_latent_image"], env["vae"].encode(px))

    # every pixel a hole: the release feeds zero latents -> the raw latent whose Wan normalisation is 0
    pos2, _, _ = n("MoGe4DInpaintConditioning").execute(positive=_cond(0, 4096, 3), negative=_cond(1, 4096, 3),
                                                       vae=env["vae"], render=frames, holes=torch.ones(5, 16, 16),
                                                       zero_clip_vision=False).args
    e = pos2[0][1]
    assert torch.equal(e["concat_mask"], torch.ones(1, 4, 2, 2, 2)) and "clip_vision_output" not in e
    mean = torch.tensor(COMFY_WAN_MEAN).view(1, 16, 1, 1, 1).expand(1, 16, 2, 2, 2)
    assert torch.allclose(e["concat_latent_image"], mean, atol=1e-6)
    with pytest.raises(MoGe4DInputError, match="does not match the render"):
        n("MoGe4DInpaintConditioning").execute(positive=_cond(0), negative=_cond(1), vae=env["vae"], render=frames,
                                               holes=torch.zeros(5, 16, 8))


# ------------------------------------------------------------------------------------------------ ViSM LoRA
def _tree(state: dict) -> nn.Module:
    """An nn.Module whose state_dict keys are exactly ``state``'s (nested modules from the dotted names)."""
    root = nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        mod = root
        for p in path:
            if p not in mod._modules:
                mod.add_module(p, nn.Module())
            mod = mod._modules[p]
        mod.register_parameter(leaf, nn.Parameter(value.float().clone(), requires_grad=False))
    return root


def _fake_model(env, drop=()):
    import comfy.model_patcher
    from safetensors.torch import load_file

    sd = {"diffusion_model." + k: v for k, v in load_file(str(env["paths"]["vism_base"])).items()
          if not any(d in k for d in drop)}
    return comfy.model_patcher.ModelPatcher(_tree(sd), torch.device("cpu"), torch.device("cpu"))


def test_apply_vism_lora_patches_every_module(env):
    from safetensors.torch import load_file

    node = env["n"]("MoGe4DApplyViSMLoRA")
    assert node.define_schema().inputs[1].options[0] == LORA
    model = _fake_model(env)
    out = node.execute(model=model, lora=LORA, strength=0.55)
    patched = out.args[0]
    lora = load_file(str(env["paths"]["vism_lora"]))
    stems = {k.split(".")[0] for k in lora}
    assert len(patched.patches) == len(stems) > 20 and model.patches == {}
    key = "diffusion_model.blocks.0.cross_attn.k_img.weight"
    strength, (kind, (up, down, alpha)), *_ = patched.patches[key][0]
    assert strength == 0.55 and kind == "lora"
    assert torch.equal(up, lora["lora_unet__blocks_0_cross_attn_k_img.lora_up.weight"]) and alpha == 2.0
    assert f"{len(stems)} of {len(stems)} modules" in out.ui.value


def test_apply_vism_lora_refuses_a_model_it_does_not_fit(env, tmp_path):
    from safetensors.torch import load_file, save_file

    node = env["n"]("MoGe4DApplyViSMLoRA")
    with pytest.raises(MoGe4DInputError, match=r"find no layer.*k_img"):
        node.execute(model=_fake_model(env, drop=("k_img", "norm_k_img")), lora=LORA, strength=0.55)
    other = {k.replace("lora_unet__", "lora_unet__xyz_"): v for k, v in load_file(str(env["paths"]["vism_lora"])).items()}
    save_file(other, str(env["root"] / "4D-ViSM" / "other.safetensors"))
    with pytest.raises(MoGe4DInputError, match="none of the"):
        node.execute(model=_fake_model(env), lora="4D-ViSM/other.safetensors", strength=1.0)


def test_keep_rendered_after_native_inpainting_is_the_inpaint_nodes_composite(env):
    """MoGe4D Keep Rendered on VAEDecode's frames = MoGe4D Inpaint's keep_rendered: render where points landed,
    the model's frames in the holes, blended across the feather width."""
    from moge4d_core.pipeline.inpaint import keep_weight

    n = env["n"]
    frames, holes = _render_case()
    decoded = torch.rand(frames.shape, generator=torch.Generator().manual_seed(9))
    (out,) = n("MoGe4DKeepRendered").execute(images=decoded, render=frames, holes=holes, width=2).args
    w = keep_weight(holes, 2)[..., None]
    assert torch.allclose(out, w * frames + (1 - w) * decoded, atol=1e-6)
    hole = holes > 0.5
    assert torch.equal(out[hole], decoded[hole]) and bool((w[..., 0] == 1).any())
    assert torch.equal(out[w[..., 0] == 1], frames[w[..., 0] == 1])
    with pytest.raises(MoGe4DInputError, match="same frame count and size"):
        n("MoGe4DKeepRendered").execute(images=decoded[:3], render=frames, holes=holes, width=2)
