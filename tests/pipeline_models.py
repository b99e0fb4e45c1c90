"""Tiny MoGe4D model files in the *official* layouts, for the pipeline / node / CLI tests.

Every model is built from :mod:`moge4d_core.models.nano` (TINY sizes), given seeded random weights, and
written the way the real files are published, so the tests load them through the user-facing loaders:

* ``4D-STraG/diffusion_pytorch_model.safetensors``: original Wan key names, no metadata, MPM + OmniMAE keys;
* ``VAE/{encoder_prompt,decoder_prompt,vae}/pytorch_model.bin``: the MoGe4D release motion-VAE layout;
* ``Wan2.1_VAE.pth``: the Wan original VAE key names;
* ``Wan2.1-Fun-V1.1-14B-InP/diffusion_pytorch_model.safetensors`` + ``4D-ViSM/lora_diffusion_pytorch_model.safetensors``
  (kohya ``lora_unet__`` keys, bf16, rank 4 alpha 2);
* ``unidepth/model.safetensors`` (published UniDepthV2 names); OmniMAE weights inside the STraG file.

No umT5 file is written, so the two DiTs are models trained without text, as the nano model is: their text-input
weights are zero (:func:`~moge4d_core.models.wan_dit.drop_text_input_`) and every entry point runs them on the zero
context.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from moge4d_core.loading.lora import LoraWeights, export_kohya_lora
from moge4d_core.loading.motion_vae import save_official_layout, wan_vae_diffusers_to_original
from moge4d_core.loading.unidepth import to_published_keys
from moge4d_core.loading.wan_keys import convert_state_dict, original_linear_module_names
from moge4d_core.models.nano import TINY, build_motion_vae, build_strag, build_vism, build_wan_vae, randomize_
from moge4d_core.models.omnimae import OmniMAEEncoder
from moge4d_core.models.unidepth import UniDepthConfig, build_unidepth
from moge4d_core.models.wan_dit import drop_text_input_, hidden_width

HEADS = {"num_heads": TINY.num_heads}   # also written to config.json beside the DiT files (as the Fun releases ship)


def _original(model) -> dict:
    return {k: v.detach().contiguous() for k, v in convert_state_dict(model.state_dict(), to="original").items()}


def _tiny_unidepth(seed: int = 3):
    cfg = UniDepthConfig(version="v2", embed_dim=64, depth=4, num_heads=1, hidden_dim=32, out_dim=8,
                         output_idx=(1, 2, 3, 4), decoder_depths=(2, 2, 2))
    torch.manual_seed(seed)
    return randomize_(build_unidepth(cfg).eval(), seed, 0.05)


def _config_json(weights: Path, model) -> None:
    c = model.config
    # a VideoX-Fun / Wan config.json, in the original Wan names
    d = {"dim": hidden_width(c), "ffn_dim": c.ffn_dim, "num_heads": c.num_attention_heads, "num_layers": c.num_layers,
         "in_dim": c.in_channels, "out_dim": c.out_channels, "text_len": c.text_len, "freq_dim": c.freq_dim, "eps": c.eps}
    (weights.parent / "config.json").write_text(json.dumps(d))


def omnimae_published(model: OmniMAEEncoder) -> dict:
    """Our OmniMAE module -> the published ``trunk.*`` names (fused qkv), written out from the published tree."""
    inv = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.o_proj": "attn.proj",
           "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    sd = model.state_dict()
    out = {"trunk.pos_embed": sd["pos_embed"], "trunk.norm.weight": sd["norm.weight"], "trunk.norm.bias": sd["norm.bias"],
           "trunk.patch_embed.proj.1.weight": sd["patch_embed.weight"], "trunk.patch_embed.proj.1.bias": sd["patch_embed.bias"]}
    for n in range(len(model.blocks)):
        b = f"blocks.{n}."
        for leaf in ("weight", "bias"):
            out[f"trunk.{b}attn.qkv.{leaf}"] = torch.cat([sd[f"{b}attention.{x}_proj.{leaf}"] for x in "qkv"])
            for ours, theirs in inv.items():
                out[f"trunk.{b}{theirs}.{leaf}"] = sd[f"{b}{ours}.{leaf}"]
    return {k: v.contiguous() for k, v in out.items()}


def write_tiny_models(root: Path, seed: int = 0) -> dict:
    """Write every tiny model file under ``root``; returns {name: path}."""
    root = Path(root)
    paths = {}
    strag = drop_text_input_(build_strag(TINY, seed))
    omni = randomize_(OmniMAEEncoder(embed_dim=TINY.mpm_dim, depth=1, num_heads=1), seed + 1)
    sd = _original(strag)
    sd.update({"omnimae_extractor." + k: v for k, v in omnimae_published(omni).items()})
    (root / "4D-STraG").mkdir(parents=True, exist_ok=True)
    paths["strag"] = root / "4D-STraG" / "diffusion_pytorch_model.safetensors"
    save_file(sd, str(paths["strag"]))
    _config_json(paths["strag"], strag)

    mvae = build_motion_vae(TINY, seed + 2)
    randomize_(mvae.decoder_adapter, seed + 2, 0.02)
    paths["motion_vae"] = save_official_layout(mvae, root / "VAE")

    vae = build_wan_vae(TINY, seed + 2)
    vae.load_state_dict(mvae.vae.state_dict())          # the motion VAE's encoder is the base one
    paths["wan_vae"] = root / "Wan2.1_VAE.pth"
    torch.save(wan_vae_diffusers_to_original(vae.state_dict(), dict(vae.config)), paths["wan_vae"])

    vism = drop_text_input_(build_vism(TINY, seed + 4))
    (root / "Wan2.1-Fun-V1.1-14B-InP").mkdir(parents=True, exist_ok=True)
    paths["vism_base"] = root / "Wan2.1-Fun-V1.1-14B-InP" / "diffusion_pytorch_model.safetensors"
    save_file(_original(vism), str(paths["vism_base"]))
    _config_json(paths["vism_base"], vism)
    g = torch.Generator().manual_seed(seed + 5)
    shapes = {k[: -len(".weight")]: v.shape for k, v in _original(vism).items() if k.endswith(".weight") and v.ndim == 2}
    lora = {}
    for name in original_linear_module_names(TINY.num_layers, image=True):
        out_f, in_f = shapes[name]
        lora[name] = LoraWeights(torch.randn(4, in_f, generator=g) * 0.1, torch.randn(out_f, 4, generator=g) * 0.1, 2.0)
    (root / "4D-ViSM").mkdir(parents=True, exist_ok=True)
    paths["vism_lora"] = export_kohya_lora(lora, root / "4D-ViSM" / "lora_diffusion_pytorch_model.safetensors")

    ud = _tiny_unidepth(seed + 6)
    (root / "unidepth").mkdir(parents=True, exist_ok=True)
    paths["unidepth"] = root / "unidepth" / "model.safetensors"
    save_file({k: v.contiguous() for k, v in to_published_keys(ud.state_dict()).items()}, str(paths["unidepth"]))
    return paths
