"""Loading the MoGe4D motion VAE and the plain Wan2.1 VAE from every layout users have.

Accepted by :func:`load_motion_vae` (``path``):

1. **Official MoGe4D release folder** ``VAE/`` (reference §E), at top level or inside ``checkpoint-N/``
   (the highest N is used)::

       encoder_prompt/pytorch_model.bin   trajectory encoder adapter (keys conv_in, down.0.block.0.*, norm_out, conv_out)
       decoder_prompt/pytorch_model.bin   trajectory decoder adapter (keys conv_in, up.0.block.{0,1}.*, ...)
       vae/pytorch_model.bin              full Wan VAE with the fine-tuned decoder, original Wan key names with
                                          the prefix ``model.``

   ``model.safetensors`` / ``diffusion_pytorch_model.safetensors`` are accepted in place of ``pytorch_model.bin``.
   ``decoder_prompt/`` is required. Without ``encoder_prompt/`` the encoder adapter is built with its official
   zero-initialised ``conv_out`` (exactly ``sigmoid``, which is what the released training leaves it as,
   reference §A2). Without ``vae/`` pass ``base_vae=`` (the stock ``Wan2.1_VAE.pth``); the decoder is then the
   stock one, not the fine-tuned one, and ``config["notes"]`` says so. A folder written by
   :func:`save_official_layout` also holds ``moge4d_config.json`` (the full :class:`MotionVAEConfig`, GroupNorm
   groups included; the official scripts ignore it), which the loader reads back and checks against the weights;
   without it (the release itself) the release values are used (32 GroupNorm groups) and a note says so when the
   adapter width is not the release's 128 channels.
2. **Our own training output**: one safetensors file written by :func:`save_motion_vae` (metadata
   ``moge4d_arch = "moge4d_motion_vae"`` and its config), so nothing is guessed.
3. **A plain Wan2.1 VAE** (``Wan2.1_VAE.pth`` as published, ComfyUI's ``wan_2.1_vae.safetensors``, both in the
   original Wan key layout, or a diffusers ``AutoencoderKLWan`` folder/file) with ``fresh_adapters=True``: new
   adapters (encoder = sigmoid, decoder randomly initialised), the starting point for training. Without the flag
   the loader refuses, because such a file holds no trajectory decoder.

:func:`load_wan_vae` loads just the Wan VAE (any of the layouts above, including the release ``VAE/`` folder's
``vae/``) into diffusers' ``AutoencoderKLWan``, for encoding images, depth and masked videos.

The original-to-diffusers key mapping is written here, derived from the VAE config (``dim_mult``,
``num_res_blocks``), because diffusers' own ``convert_wan_vae_to_diffusers`` hard-codes the full-size decoder
layout (three res blocks per up stage) and so cannot read the reduced test models; on the full-size layout the
two agree key for key (checked in the tests).
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..errors import MoGe4DInputError
from ..models.motion_vae import AdapterConfig, MotionVAE, MotionVAEConfig
from .common import (LoadInfo, check_keys, find_weights, load_file_state_dict, read_arch_config, save_state_dict,
                     strip_prefix, with_load_info)

ARCH = "moge4d_motion_vae"
SUBFOLDER_FILES = ("pytorch_model.bin", "model.safetensors", "diffusion_pytorch_model.safetensors",
                   "pytorch_model.safetensors")
_OFFICIAL_SUBFOLDERS = ("encoder_prompt", "decoder_prompt", "vae")
_VAE_PREFIXES = ("model.", "vae.", "first_stage_model.")
RELEASE_CONFIG_FILE = "moge4d_config.json"

# ------------------------------------------------------------------------------------------------
# Wan VAE key layouts
# ------------------------------------------------------------------------------------------------

_RES_RENAMES = (("residual.0.", "norm1."), ("residual.2.", "conv1."), ("residual.3.", "norm2."),
                ("residual.6.", "conv2."), ("shortcut.", "conv_shortcut."))


def _prefix_table(cfg: Mapping) -> list[tuple[str, str, bool]]:
    """``(original_prefix, diffusers_prefix, is_residual_block)`` for a Wan2.1 VAE config.

    Original layout (Wan-Video ``wan/modules/vae.py``): encoder ``downsamples`` is one flat list (per stage
    ``num_res_blocks`` residual blocks, then a resample except after the last stage); decoder ``upsamples`` is
    flat too with ``num_res_blocks + 1`` residual blocks per stage. Diffusers keeps the encoder list flat
    (``down_blocks.i``) and groups the decoder (``up_blocks.s.resnets.j`` / ``up_blocks.s.upsamplers.0``).
    """
    n_stages = len(cfg["dim_mult"])
    nrb = int(cfg["num_res_blocks"])
    table: list[tuple[str, str, bool]] = [("conv1.", "quant_conv.", False), ("conv2.", "post_quant_conv.", False)]
    for part in ("encoder", "decoder"):
        table += [
            (f"{part}.conv1.", f"{part}.conv_in.", False),
            (f"{part}.middle.0.", f"{part}.mid_block.resnets.0.", True),
            (f"{part}.middle.1.", f"{part}.mid_block.attentions.0.", False),
            (f"{part}.middle.2.", f"{part}.mid_block.resnets.1.", True),
            (f"{part}.head.0.", f"{part}.norm_out.", False),
            (f"{part}.head.2.", f"{part}.conv_out.", False),
        ]
    idx = 0
    for stage in range(n_stages):
        for _ in range(nrb):
            table.append((f"encoder.downsamples.{idx}.", f"encoder.down_blocks.{idx}.", True))
            idx += 1
        if stage != n_stages - 1:
            table.append((f"encoder.downsamples.{idx}.", f"encoder.down_blocks.{idx}.", False))
            idx += 1
    idx = 0
    for stage in range(n_stages):
        for j in range(nrb + 1):
            table.append((f"decoder.upsamples.{idx}.", f"decoder.up_blocks.{stage}.resnets.{j}.", True))
            idx += 1
        if stage != n_stages - 1:
            table.append((f"decoder.upsamples.{idx}.", f"decoder.up_blocks.{stage}.upsamplers.0.", False))
            idx += 1
    return table


def _rename(state: Mapping[str, torch.Tensor], cfg: Mapping, to_diffusers: bool,
            source: str) -> dict[str, torch.Tensor]:
    table = _prefix_table(cfg)
    src_i, dst_i = (0, 1) if to_diffusers else (1, 0)
    # longest prefix first so "decoder.upsamples.1." never shadows "decoder.upsamples.10."
    table = sorted(table, key=lambda e: -len(e[src_i]))
    out: dict[str, torch.Tensor] = {}
    unmatched = []
    for key, value in state.items():
        for entry in table:
            src, dst, is_res = entry[src_i], entry[dst_i], entry[2]
            if key.startswith(src):
                rest = key[len(src):]
                if is_res:
                    for a, b in _RES_RENAMES:
                        a, b = (a, b) if to_diffusers else (b, a)
                        if rest.startswith(a):
                            rest = b + rest[len(a):]
                            break
                out[dst + rest] = value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise MoGe4DInputError(
            f"{source}: {len(unmatched)} keys do not belong to a Wan2.1 VAE of the detected shape "
            f"(dim_mult={list(cfg['dim_mult'])}, num_res_blocks={cfg['num_res_blocks']}), first: {unmatched[:5]}")
    return out


def wan_vae_original_to_diffusers(state: Mapping[str, torch.Tensor], config: Mapping,
                                  source: str = "state dict") -> dict[str, torch.Tensor]:
    """Original Wan2.1 VAE keys (``encoder.downsamples.0.residual.0.gamma`` ...) -> diffusers ``AutoencoderKLWan``."""
    return _rename(state, config, True, source)


def wan_vae_diffusers_to_original(state: Mapping[str, torch.Tensor], config: Mapping,
                                  source: str = "state dict") -> dict[str, torch.Tensor]:
    """Inverse of :func:`wan_vae_original_to_diffusers` (to write files for ComfyUI's VAELoader / the official code)."""
    return _rename(state, config, False, source)


def detect_wan_vae_layout(state: Mapping[str, torch.Tensor]) -> Optional[str]:
    """``"original"``, ``"diffusers"`` or ``None`` (not a Wan VAE), after prefix stripping."""
    if "decoder.middle.0.residual.0.gamma" in state and "encoder.conv1.weight" in state:
        return "original"
    if "decoder.mid_block.resnets.0.norm1.gamma" in state and "encoder.conv_in.weight" in state:
        return "diffusers"
    return None


def _strip_vae_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if detect_wan_vae_layout(state):
        return dict(state)
    for prefix in _VAE_PREFIXES:
        sub = strip_prefix(state, prefix)
        if sub and detect_wan_vae_layout(sub):
            return sub
    return dict(state)


def infer_wan_vae_config(state: Mapping[str, torch.Tensor], source: str = "state dict") -> dict:
    """``AutoencoderKLWan`` constructor kwargs read from the weights' shapes (either layout, prefix stripped)."""
    layout = detect_wan_vae_layout(state)
    if layout is None:
        raise MoGe4DInputError(
            f"{source}: not a Wan2.1 VAE (neither 'decoder.middle.0.residual.0.gamma' (original layout) nor "
            f"'decoder.mid_block.resnets.0.norm1.gamma' (diffusers layout) found). Expected Wan2.1_VAE.pth, "
            f"ComfyUI's wan_2.1_vae.safetensors or a diffusers AutoencoderKLWan.")
    orig = layout == "original"
    blocks = "encoder.downsamples." if orig else "encoder.down_blocks."
    res_w = "residual.2.weight" if orig else "conv1.weight"
    conv_in = state["encoder.conv1.weight" if orig else "encoder.conv_in.weight"]
    dec_out = state["decoder.head.2.weight" if orig else "decoder.conv_out.weight"]
    post_q = state["conv2.weight" if orig else "post_quant_conv.weight"]
    base_dim = int(conv_in.shape[0])
    indices = sorted({int(k[len(blocks):].split(".")[0]) for k in state if k.startswith(blocks)})
    stages: list[list[int]] = [[]]
    temporal: list[bool] = []
    for i in indices:
        p = f"{blocks}{i}."
        if p + res_w in state:
            stages[-1].append(int(state[p + res_w].shape[0]))
        elif p + "resample.1.weight" in state:
            temporal.append(p + "time_conv.weight" in state)
            stages.append([])
        else:
            raise MoGe4DInputError(
                f"{source}: encoder block {i} is neither a residual block nor a resample (attention blocks in "
                f"the down path are not part of the Wan2.1 VAE); unsupported VAE variant")
    counts = {len(s) for s in stages}
    if len(counts) != 1 or 0 in counts:
        raise MoGe4DInputError(f"{source}: uneven residual blocks per encoder stage {[len(s) for s in stages]}; "
                               f"not a Wan2.1 VAE layout")
    if base_dim <= 0 or any(s[-1] % base_dim for s in stages):
        raise MoGe4DInputError(f"{source}: stage widths {[s[-1] for s in stages]} are not multiples of base_dim {base_dim}")
    dim_mult = [s[-1] // base_dim for s in stages]
    z_dim = int(post_q.shape[0])
    dec_base = int(dec_out.shape[1]) // dim_mult[0]
    cfg = dict(base_dim=base_dim, z_dim=z_dim, dim_mult=dim_mult, num_res_blocks=counts.pop(),
               temperal_downsample=temporal, in_channels=int(conv_in.shape[1]), out_channels=int(dec_out.shape[0]))
    if dec_base != base_dim:
        cfg["decoder_base_dim"] = dec_base
    return cfg


def _read_wan_vae_state(path: Path, source: Optional[str] = None) -> tuple[dict[str, torch.Tensor], dict, str]:
    """Weights file/folder -> (diffusers-layout state, AutoencoderKLWan kwargs, layout name)."""
    source = source or str(path)
    raw = load_file_state_dict(path)
    state = _strip_vae_prefix(raw)
    cfg = infer_wan_vae_config(state, source)
    layout = detect_wan_vae_layout(state)
    if layout == "original":
        state = wan_vae_original_to_diffusers(state, cfg, source)
    return state, cfg, layout


def _load_vae_into(vae: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    expected = vae.state_dict()
    check_keys(source, "Wan2.1 VAE (AutoencoderKLWan)", expected.keys(), state.keys())
    bad = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items() if v.shape != expected[k].shape]
    if bad:
        k, got, want = bad[0]
        raise MoGe4DInputError(f"{source}: {len(bad)} tensors have the wrong shape, first '{k}': {got}, expected {want}")
    vae.load_state_dict(state, strict=True)


def load_wan_vae(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load a Wan2.1 VAE into diffusers' ``AutoencoderKLWan`` (eval mode).

    ``path``: ``Wan2.1_VAE.pth``, ``wan_2.1_vae.safetensors``, a diffusers ``vae/`` folder or file, or the
    official release ``VAE/`` folder (its ``vae/`` sub-folder). ``vae.config`` holds the constructor kwargs;
    ``vae.load_info`` the file and its layout (``format``: ``wan_vae_original`` / ``wan_vae_diffusers``).
    """
    from diffusers import AutoencoderKLWan

    p = Path(path)
    if p.is_dir():
        release = _find_release_root(p)
        if release is not None:
            if not (release / "vae").is_dir():
                raise MoGe4DInputError(
                    f"{release}: release folder has no vae/ sub-folder (the fine-tuned Wan VAE, "
                    f"vae/pytorch_model.bin with keys prefixed 'model.'); pass Wan2.1_VAE.pth instead")
            p = find_weights(release / "vae", SUBFOLDER_FILES)
    file = find_weights(p, SUBFOLDER_FILES + ("Wan2.1_VAE.pth",))
    state, cfg, layout = _read_wan_vae_state(file)
    vae = AutoencoderKLWan(**cfg)
    _load_vae_into(vae, state, str(file))
    vae = vae.to(device=device, dtype=dtype).eval()
    return with_load_info(vae, LoadInfo(file=str(file), format=f"wan_vae_{layout}", dtype=dtype))


# ------------------------------------------------------------------------------------------------
# adapters
# ------------------------------------------------------------------------------------------------

def _block_count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return len(idx)


def infer_adapter_config(encoder_state: Optional[Mapping[str, torch.Tensor]],
                         decoder_state: Mapping[str, torch.Tensor], source: str) -> AdapterConfig:
    """Adapter sizes from the weights (GroupNorm groups are not stored: the official value 32 is used)."""
    if "conv_in.weight" not in decoder_state:
        raise MoGe4DInputError(f"{source}: decoder adapter weights lack 'conv_in.weight'; expected the official "
                               f"decoder_prompt keys (conv_in, up.0.block.0.*, up.0.block.1.*, norm_out, conv_out)")
    ch, cin = (int(s) for s in decoder_state["conv_in.weight"].shape[:2])
    dec_blocks = _block_count(decoder_state, "up.0.block.")
    enc_blocks = 1
    if encoder_state is not None:
        if "conv_in.weight" not in encoder_state:
            raise MoGe4DInputError(f"{source}: encoder adapter weights lack 'conv_in.weight'; expected the official "
                                   f"encoder_prompt keys (conv_in, down.0.block.0.*, norm_out, conv_out)")
        ech, ecin = (int(s) for s in encoder_state["conv_in.weight"].shape[:2])
        if (ech, ecin) != (ch, cin):
            raise MoGe4DInputError(f"{source}: encoder adapter has {ech} channels / {ecin} inputs but the decoder "
                                   f"adapter has {ch} / {cin}; the two files do not belong together")
        enc_blocks = _block_count(encoder_state, "down.0.block.")
    return AdapterConfig(channels=ch, in_channels=cin, encoder_blocks=enc_blocks, decoder_blocks=dec_blocks)


def _load_module(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, arch: str) -> None:
    expected = module.state_dict()
    check_keys(source, arch, expected.keys(), state.keys())
    bad = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items() if v.shape != expected[k].shape]
    if bad:
        k, got, want = bad[0]
        raise MoGe4DInputError(f"{source}: '{k}' has shape {got}, expected {want} for {arch}")
    module.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------------
# release folder
# ------------------------------------------------------------------------------------------------

def _has_official_parts(folder: Path) -> bool:
    return any((folder / s).is_dir() for s in _OFFICIAL_SUBFOLDERS)


def _find_release_root(folder: Path) -> Optional[Path]:
    """The folder itself if it holds encoder_prompt/decoder_prompt/vae, else its highest ``checkpoint-N``."""
    if _has_official_parts(folder):
        return folder
    ckpts = []
    for sub in folder.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", sub.name)
        if m and sub.is_dir() and _has_official_parts(sub):
            ckpts.append((int(m.group(1)), sub))
    return max(ckpts)[1] if ckpts else None


def _sub_weights(root: Path, name: str, what: str) -> Path:
    sub = root / name
    if not sub.is_dir():
        raise MoGe4DInputError(f"{root}: missing sub-folder '{name}/' ({what}); expected "
                               f"{name}/pytorch_model.bin as written by the official train_vae.py")
    try:
        return find_weights(sub, SUBFOLDER_FILES)
    except MoGe4DInputError as exc:
        raise MoGe4DInputError(f"{sub}: no weights file for {what} (expected pytorch_model.bin): {exc}") from None


def read_release_config(root: str | os.PathLike) -> Optional[MotionVAEConfig]:
    """The :class:`MotionVAEConfig` recorded in ``<root>/moge4d_config.json`` by :func:`save_official_layout`.

    Args:
        root: a release-layout folder (``encoder_prompt/``, ``decoder_prompt/``, ``vae/``).

    Returns:
        The recorded config, or None when the folder has no such file (the official release has none).
        Raises :class:`MoGe4DInputError` naming the file when it is unreadable or not a motion VAE config.
    """
    path = Path(root) / RELEASE_CONFIG_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MoGe4DInputError(f"{path}: unreadable ({str(exc)[:120]}); it records the motion VAE's sizes (GroupNorm "
                               f"groups included): restore it from the export, or delete it to assume the "
                               f"release values") from None
    if not isinstance(doc, dict) or doc.get("moge4d_arch") != ARCH or not isinstance(doc.get("config"), dict):
        raise MoGe4DInputError(f"{path}: not a motion VAE config (expected {{\"moge4d_arch\": \"{ARCH}\", "
                               f"\"config\": {{...}}}} as written by save_official_layout)")
    try:
        cfg = MotionVAEConfig.from_dict(doc["config"])
    except TypeError as exc:
        raise MoGe4DInputError(f"{path}: unknown motion VAE config fields ({exc})") from None
    if not isinstance(cfg.vae, dict):
        raise MoGe4DInputError(f"{path}: 'config.vae' must be a mapping of AutoencoderKLWan settings")
    return cfg


def _checked_recorded_adapter(recorded: MotionVAEConfig, inferred: AdapterConfig, path: Path) -> AdapterConfig:
    rec = recorded.adapter
    diffs = [f"{k}: weights {getattr(inferred, k)} vs file {getattr(rec, k)}"
             for k in ("channels", "in_channels", "decoder_blocks") if getattr(inferred, k) != getattr(rec, k)]
    if diffs:
        raise MoGe4DInputError(f"{path}: does not describe the adapter weights beside it ({'; '.join(diffs)}); the "
                               f"folder mixes two exports, re-export it")
    if rec.groups < 1 or rec.channels % rec.groups:
        raise MoGe4DInputError(f"{path}: GroupNorm groups {rec.groups} do not divide the {rec.channels} channels")
    return rec


def _load_release(root: Path, base_vae: Optional[str | os.PathLike]) -> tuple[MotionVAE, LoadInfo]:
    notes = []
    dec_file = _sub_weights(root, "decoder_prompt", "the trajectory decoder adapter")
    dec_state = load_file_state_dict(dec_file)
    enc_file = None
    enc_state = None
    if (root / "encoder_prompt").is_dir():
        enc_file = _sub_weights(root, "encoder_prompt", "the trajectory encoder adapter")
        enc_state = load_file_state_dict(enc_file)
    else:
        notes.append("no encoder_prompt/: encoder adapter built with its zero-initialised conv_out, i.e. exactly "
                     "sigmoid(delta), as the released training leaves it")
    if (root / "vae").is_dir():
        vae_file = _sub_weights(root, "vae", "the fine-tuned Wan VAE (keys prefixed 'model.')")
    elif base_vae is not None:
        vae_file = find_weights(base_vae, SUBFOLDER_FILES + ("Wan2.1_VAE.pth",))
        notes.append(f"no vae/ in the release folder: using the stock Wan VAE {vae_file}; its decoder is not "
                     f"the fine-tuned MoGe4D decoder, so decoded motion will differ from the official results")
    else:
        raise MoGe4DInputError(
            f"{root}: missing sub-folder 'vae/' (the fine-tuned Wan2.1 VAE, vae/pytorch_model.bin, keys prefixed "
            f"'model.'). Put it there, or pass base_vae=<path to Wan2.1_VAE.pth> to use the stock decoder.")
    vae_state, vae_cfg, layout = _read_wan_vae_state(vae_file)
    adapter_cfg = infer_adapter_config(enc_state, dec_state, str(root))
    recorded = read_release_config(root)
    if recorded is not None:
        adapter_cfg = _checked_recorded_adapter(recorded, adapter_cfg, root / RELEASE_CONFIG_FILE)
        vae_cfg = {**vae_cfg, **recorded.vae}
    elif adapter_cfg.channels != AdapterConfig().channels:
        msg = (f"{root}: no {RELEASE_CONFIG_FILE} beside the release folder layout, and the adapters have "
               f"{adapter_cfg.channels} channels (the release has {AdapterConfig().channels}): GroupNorm groups "
               f"are not stored in these weights, so the release's {adapter_cfg.groups} is assumed. If this folder "
               f"was trained at another group count (the nano recipe uses 8), decoding is wrong: re-export it "
               f"with this version (which writes {RELEASE_CONFIG_FILE}) or load the motion_vae.safetensors export")
        warnings.warn(msg, stacklevel=3)
        notes.append(msg)
    model = MotionVAE(MotionVAEConfig(vae=vae_cfg, adapter=adapter_cfg))
    _load_vae_into(model.vae, vae_state, str(vae_file))
    _load_module(model.decoder_adapter, dec_state, str(dec_file), "MoGe4D trajectory decoder adapter (decoder_prompt)")
    if enc_state is not None:
        _load_module(model.encoder_adapter, enc_state, str(enc_file), "MoGe4D trajectory encoder adapter (encoder_prompt)")
        w = model.encoder_adapter.conv_out.weight
        b = model.encoder_adapter.conv_out.bias
        if bool((w == 0).all()) and bool((b == 0).all()):
            notes.append("encoder_prompt conv_out is all zeros: the encoder adapter is exactly sigmoid(delta)")
    filled = [] if enc_state is not None else ["encoder_adapter." + k for k in model.encoder_adapter.state_dict()]
    info = LoadInfo(file=str(root), format="official_release",
                    files={"encoder_prompt": str(enc_file) if enc_file else None, "decoder_prompt": str(dec_file),
                           "vae": str(vae_file),
                           "config": str(root / RELEASE_CONFIG_FILE) if recorded is not None else None},
                    filled_keys=filled, notes=notes, extras={"vae_layout": layout})
    return model, info


# ------------------------------------------------------------------------------------------------
# public entry points
# ------------------------------------------------------------------------------------------------

def load_motion_vae(path: str | os.PathLike, *, base_vae: Optional[str | os.PathLike] = None,
                    fresh_adapters: bool = False, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> MotionVAE:
    """Load a :class:`~moge4d_core.models.motion_vae.MotionVAE` (eval mode); its config is ``model.config``.

    ``model.load_info`` (:class:`~moge4d_core.loading.common.LoadInfo`) has ``format`` (``official_release`` /
    ``moge4d`` / ``wan_vae_original`` / ``wan_vae_diffusers``), the files read, ``filled_keys`` (adapter tensors
    not in the files: a zero-initialised encoder adapter, fresh adapters) and ``notes`` on anything substituted.
    """
    p = Path(path)
    if not p.exists():
        raise MoGe4DInputError(f"{p}: no such file or folder (expected the MoGe4D VAE/ folder, a motion VAE "
                               f"safetensors of ours, or a Wan2.1 VAE with fresh_adapters=True)")
    if p.is_dir():
        root = _find_release_root(p)
        if root is not None:
            model, info = _load_release(root, base_vae)
            return _finish(model, info, dtype, device)
    file = find_weights(p, SUBFOLDER_FILES)
    arch, cfg = read_arch_config(file)
    if arch is not None:
        if arch != ARCH:
            raise MoGe4DInputError(f"{file}: is a MoGe4D '{arch}' checkpoint, not a motion VAE ('{ARCH}')")
        model = MotionVAE(MotionVAEConfig.from_dict(cfg or {}))
        _load_module(model, load_file_state_dict(file), str(file), "MoGe4D motion VAE")
        return _finish(model, LoadInfo(file=str(file), format="moge4d"), dtype, device)
    state, vae_cfg, layout = _read_wan_vae_state(file)
    if not fresh_adapters:
        raise MoGe4DInputError(
            f"{file}: is a plain Wan2.1 VAE ({layout} layout) without the MoGe4D trajectory adapters. For "
            f"inference pass the MoGe4D release folder VAE/ (encoder_prompt/, decoder_prompt/, vae/); to start "
            f"training from this VAE pass fresh_adapters=True.")
    model = MotionVAE(MotionVAEConfig(vae=vae_cfg))
    _load_vae_into(model.vae, state, str(file))
    adapters = [k for k in model.state_dict() if not k.startswith("vae.")]
    info = LoadInfo(file=str(file), format=f"wan_vae_{layout}", filled_keys=adapters,
                    notes=["fresh trajectory adapters: encoder = sigmoid (zero conv_out), decoder randomly initialised"])
    return _finish(model, info, dtype, device)


def _finish(model: MotionVAE, info: LoadInfo, dtype: torch.dtype, device) -> MotionVAE:
    info.dtype = dtype
    return with_load_info(model.to(device=device, dtype=dtype).eval(), info)


def save_motion_vae(model: MotionVAE, path: str | os.PathLike,
                    extra_metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``model`` as one safetensors file with its config in the metadata (read back by :func:`load_motion_vae`)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_state_dict(state, path, ARCH, model.config.to_dict(), extra_metadata)


def save_official_layout(model: MotionVAE, folder: str | os.PathLike) -> Path:
    """Write ``model`` in the official release layout (``encoder_prompt/``, ``decoder_prompt/``, ``vae/`` with
    original Wan keys prefixed ``model.``, each ``pytorch_model.bin``), readable by the official scripts, plus
    ``moge4d_config.json`` (the full config: GroupNorm groups and VAE settings), read back by
    :func:`load_motion_vae`."""
    root = Path(folder)
    parts = {
        "encoder_prompt": model.encoder_adapter.state_dict(),
        "decoder_prompt": model.decoder_adapter.state_dict(),
        "vae": {"model." + k: v for k, v in wan_vae_diffusers_to_original(
            model.vae.state_dict(), dict(model.vae.config)).items()},
    }
    for name, state in parts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, root / name / "pytorch_model.bin")
    # every architectural number the weights do not carry (GroupNorm groups, VAE settings), for load_motion_vae
    doc = {"moge4d_arch": ARCH, "config": json.loads(json.dumps(model.config.to_dict(), default=list)),
           "note": "written by MoGe4D-for-ComfyUI save_official_layout; the official scripts ignore this file"}
    (root / RELEASE_CONFIG_FILE).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return root


__all__ = ["load_motion_vae", "load_wan_vae", "save_motion_vae", "save_official_layout",
           "wan_vae_original_to_diffusers", "wan_vae_diffusers_to_original", "infer_wan_vae_config",
           "infer_adapter_config", "detect_wan_vae_layout", "read_release_config", "RELEASE_CONFIG_FILE"]
