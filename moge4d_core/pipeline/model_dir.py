"""Find and load every model of the pipeline from one folder (the CLI's ``--models DIR``).

Accepted layouts (first match per component wins; ``*`` = any file name the loader accepts):

=================  =======================================================================================
component          where
=================  =======================================================================================
4D-STraG           ``strag.gguf`` (``python -m moge4d_core quantize``), ``4D-STraG/`` (release:
                   ``diffusion_pytorch_model.safetensors``) or ``strag.safetensors``
STraG base         ``Wan2.1-Fun-V1.1-14B-Control/`` (optional: fills keys the STraG file lacks)
motion VAE         ``VAE/`` (release: ``encoder_prompt/ decoder_prompt/ vae/``) or ``motion_vae.safetensors``
4D-ViSM base       ``vism.gguf``, ``vism.safetensors``, ``Wan2.1-Fun-V1.1-14B-InP/`` (transformer files +
                   ``config.json``) or the nano model's ``diffusion_models/moge4d_nano_vism.safetensors``
4D-ViSM LoRA       ``4D-ViSM/lora_diffusion_pytorch_model.safetensors`` (optional for ``vism.safetensors``)
Wan VAE            ``Wan2.1_VAE.pth`` in the InP / Control folder or at the top, ``vae.safetensors`` or the nano
                   model's ``vae/moge4d_nano_vae.safetensors``
umT5               ``models_t5_umt5-xxl-enc-bf16.pth`` (InP / Control folder or top) + ``google/umt5-xxl/``
CLIP ViT-H/14      ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` (InP / Control folder or top)
UniDepthV2         ``unidepth-v2-vitl14/``, ``unidepth-v2-vitb14/``, ``unidepth-v2-vits14/`` (``model.safetensors`` +
                   ``config.json``; ViT-S runs on a CPU) or ``unidepth/``
OmniMAE            ``omnimae/vitb_pretrain.torch`` (optional; the STraG file's own extractor is preferred)
defaults           ``demo.json`` with a ``settings`` object (optional; the nano model has one): ``generate``'s
                   defaults for this model (:func:`folder_defaults`); without it the release's apply
=================  =======================================================================================

The nano model shipped in ``moge4d_core/nano_model/`` uses the short names (our safetensors with metadata) for
its STraG and motion VAE, and ComfyUI's folder names for its ViSM and pixel VAE (:data:`~.nano.NANO_FILES`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import MoGe4DInputError
from ..models.conditioning import ImageContext, TextContext
from .conditioning import gray_image
from .image_vae import WanImageVAE
from .memory import MemoryMode, parse_memory_mode
from .residency import Residency
from ..models.wan_dit.text_path import reads_text
from .nano import NANO_FILES

__all__ = ["ModelFiles", "LoadedModels", "find_model_files", "load_models", "encode_prompts", "strag_clip_context",
           "folder_defaults", "DEFAULTS_FILE", "DEFAULT_KEYS"]

INP = "Wan2.1-Fun-V1.1-14B-InP"
CONTROL = "Wan2.1-Fun-V1.1-14B-Control"
UMT5 = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
DEFAULTS_FILE = "demo.json"
DEFAULT_KEYS = ("frames", "width", "height", "steps", "cfg", "shift", "keep_rendered", "render")
"""The ``settings`` keys a model folder may set as ``generate``'s defaults (its window is its ``frames``)."""


def folder_defaults(root) -> dict:
    """``generate``'s defaults that a model folder carries: the :data:`DEFAULT_KEYS` of the ``settings`` object in
    ``<root>/demo.json`` (the nano model: 96x64, 17 frames, 20 steps, CFG 1, splats, keep_rendered 2); ``{}`` when the
    folder has no such file (release folders: the release's defaults apply).

    Raises:
        MoGe4DInputError: the file is not JSON or its ``settings`` is not an object.
    """
    import json

    path = Path(root) / DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MoGe4DInputError(f"{path}: not readable JSON ({exc}); fix or remove it (it only holds defaults)") from None
    settings = spec.get("settings", {}) if isinstance(spec, dict) else None
    if not isinstance(settings, dict):
        raise MoGe4DInputError(f"{path}: 'settings' must be an object of default options, e.g. "
                               f'{{"width": 96, "height": 64}}; fix or remove it')
    return {k: settings[k] for k in DEFAULT_KEYS if k in settings}


@dataclass
class ModelFiles:
    """Paths of the pipeline's model files in one folder (:func:`find_model_files`; the table in the module docstring).

    root: the folder. strag, motion_vae, wan_vae: the required STraG checkpoint (file or folder), motion VAE and
    pixel Wan VAE. strag_base: the Wan2.1-Fun-Control folder that fills keys the STraG file lacks, or None.
    vism_base, vism_lora: the 4D-ViSM base (file or folder) and its LoRA, or None. umt5, tokenizer: the umT5
    weights and its ``google/umt5-xxl`` tokenizer folder, or None. clip: CLIP ViT-H/14 weights, or None.
    unidepth: a UniDepthV2 folder, or None. omnimae: OmniMAE weights, or None.
    """

    root: Path
    strag: Path
    motion_vae: Path
    wan_vae: Path
    strag_base: Optional[Path] = None
    vism_base: Optional[Path] = None
    vism_lora: Optional[Path] = None
    umt5: Optional[Path] = None
    tokenizer: Optional[Path] = None
    clip: Optional[Path] = None
    unidepth: Optional[Path] = None
    omnimae: Optional[Path] = None


def _first(root: Path, *candidates: str) -> Optional[Path]:
    for c in candidates:
        p = root / c
        if p.exists():
            return p
    return None


def _need(p: Optional[Path], what: str, where: str, root: Path) -> Path:
    if p is None:
        raise MoGe4DInputError(f"{root}: {what} not found; put it at {root}/{where} (see `python -m moge4d_core "
                               f"generate --help` for the folder layout)")
    return p


def find_model_files(root) -> ModelFiles:
    """Find every component of the pipeline in ``root`` (layouts: the module docstring's table).

    Args:
        root: the model folder (str or path).

    Returns:
        :class:`ModelFiles`; optional components not found are None.

    Raises:
        MoGe4DInputError: ``root`` is not a folder; the STraG, the motion VAE or the Wan VAE is missing; a
            Wan2.1-Fun-InP folder without the 4D-ViSM LoRA.
    """
    root = Path(root)
    if not root.is_dir():
        raise MoGe4DInputError(f"--models {root}: not a folder (expected the folder holding 4D-STraG/, VAE/, ...)")
    bases = [INP, CONTROL, "."]
    files = ModelFiles(
        root=root,
        strag=_need(_first(root, "strag.gguf", "4D-STraG", "strag.safetensors"), "the 4D-STraG checkpoint", "4D-STraG/", root),
        motion_vae=_need(_first(root, "VAE", "motion_vae.safetensors"), "the MoGe4D motion VAE", "VAE/", root),
        wan_vae=_need(_first(root, "vae.safetensors", NANO_FILES["vae"], *[f"{b}/Wan2.1_VAE.pth" for b in bases]),
                      "the Wan2.1 VAE", f"{INP}/Wan2.1_VAE.pth", root),
        strag_base=_first(root, CONTROL),
        vism_base=_first(root, "vism.gguf", "vism.safetensors", INP, NANO_FILES["vism"]),
        vism_lora=_first(root, "4D-ViSM/lora_diffusion_pytorch_model.safetensors", "4D-ViSM"),
        umt5=_first(root, *[f"{b}/{UMT5}" for b in bases]),
        tokenizer=_first(root, *[f"{b}/google/umt5-xxl" for b in bases]),
        clip=_first(root, *[f"{b}/{CLIP}" for b in bases]),
        unidepth=_first(root, "unidepth-v2-vitl14", "unidepth-v2-vitb14", "unidepth-v2-vits14", "unidepth"),
        omnimae=_first(root, "omnimae/vitb_pretrain.torch"),
    )
    if files.vism_base is not None and files.vism_base.is_dir() and files.vism_lora is None:
        raise MoGe4DInputError(f"{root}: found the Wan2.1-Fun-InP base but not the 4D-ViSM LoRA; put it at "
                               f"{root}/4D-ViSM/lora_diffusion_pytorch_model.safetensors")
    return files


@dataclass
class LoadedModels:
    """The pipeline's models, in host memory or on the device as ``residency`` says (see :mod:`.residency`).

    ``text`` is (umT5 model, tokenizer); the others are modules. ``residency`` moves them per stage.
    """

    strag: torch.nn.Module
    motion_vae: torch.nn.Module
    image_vae: WanImageVAE
    residency: Residency
    vism: Optional[torch.nn.Module] = None
    text: Optional[tuple] = None
    clip: Optional[torch.nn.Module] = None
    unidepth: Optional[torch.nn.Module] = None
    omnimae: Optional[torch.nn.Module] = None


def load_models(files: ModelFiles, *, device="cpu", dtype: torch.dtype = torch.float32,
                memory: Union[MemoryMode, str] = "model_offload", inpaint: bool = True, depth: bool = True,
                lora_strength: float = 0.55, loras: Sequence[tuple[Union[str, Path], float]] = ()) -> LoadedModels:
    """Load what ``files`` names (ViSM only when ``inpaint``, UniDepth only when ``depth``).

    Args:
        files: from :func:`find_model_files`.
        device: the compute device.
        dtype: compute dtype of the DiTs, umT5 and CLIP (the VAEs, UniDepth and OmniMAE keep float32).
        memory: the memory mode (not ``auto``; see :func:`moge4d_core.pipeline.plan.choose_memory_mode`). Models are
            read straight into host memory in their storage dtype (created on the meta device by the loaders, so
            a 14B DiT never exists in float32) and come to ``device`` per stage through the returned
            ``residency``; ``full`` loads them onto ``device`` at once. ``fp8``: the DiTs' big Linear weights are
            stored as float8 e4m3 (the ViSM's after its LoRA is merged) and computed in ``dtype``.
        inpaint, depth, lora_strength: see the CLI.
        loras: further LoRAs for the 4D-ViSM DiT, ``[(file, strength), ...]`` (e.g. a step-distilled Wan2.1 I2V
            LoRA), stacked after the folder's ViSM LoRA (at ``lora_strength``); all are checked before any merges.

    Returns:
        :class:`LoadedModels` with its :class:`~.residency.Residency`.

    Raises:
        MoGe4DInputError: ``inpaint`` without a 4D-ViSM base in the folder; an ``fp8`` memory mode with GGUF ViSM
            weights; an unknown memory mode or ``auto``; files the loaders refuse.
    """
    from ..loading.lora import merge_loras
    from ..loading.motion_vae import load_motion_vae, load_wan_vae
    from ..loading.wan_dit import load_strag, load_vism_base
    from ..models.fp8 import enable_fp8_storage

    mode = parse_memory_mode(memory, allow_auto=False)
    residency = Residency(device, mode)
    host = torch.device(device) if mode.residency == "full" else residency.offload_device
    dit_dtype = torch.float8_e4m3fn if mode.fp8 else dtype
    strag = load_strag(files.strag, dtype=dit_dtype, compute_dtype=dtype, device=host, base=files.strag_base)
    omnimae_state = strag.load_info.extras.pop("omnimae_state_dict", None)   # used below, then freed
    mvae = load_motion_vae(files.motion_vae, device=host)
    vae = load_wan_vae(files.wan_vae, device=host)
    out = LoadedModels(strag=strag.eval(), motion_vae=mvae.eval(), image_vae=WanImageVAE(vae.eval()),
                       residency=residency)
    if inpaint:
        base = files.vism_base
        if base is None:
            raise MoGe4DInputError(f"{files.root}: no 4D-ViSM base ({INP}/ or vism.safetensors); add it or run "
                                   f"with --no-inpaint")
        vism = load_vism_base(base, dtype=dtype, compute_dtype=dtype, device=host)
        stack = ([(files.vism_lora, lora_strength)] if files.vism_lora is not None else []) + list(loras)
        if stack:
            merge_loras(vism, stack)
        if mode.fp8 and any(hasattr(p, "quant_type") for p in vism.parameters()):
            raise MoGe4DInputError(f"{base}: GGUF weights are already quantised; use a memory mode without fp8")
        if mode.fp8:                                   # after the merge: the LoRA delta lands in full precision
            enable_fp8_storage(vism, compute_dtype=dtype)
        out.vism = vism.eval()
    if files.umt5 is not None:
        from ..loading.text import load_text_encoder
        out.text = load_text_encoder(files.umt5, files.tokenizer, dtype=dtype, device=host)
    if files.clip is not None:
        from ..loading.clip import load_clip_vision
        out.clip = load_clip_vision(files.clip, dtype=dtype, device=host)
    if depth and files.unidepth is not None:
        from ..loading.unidepth import load_unidepth
        out.unidepth = load_unidepth(files.unidepth, device=host)
    if omnimae_state:
        from ..loading.omnimae import load_omnimae
        out.omnimae = load_omnimae(omnimae_state, device=host)
    elif files.omnimae is not None and getattr(strag, "feature_adapter", None) is not None:
        from ..loading.omnimae import load_omnimae
        out.omnimae = load_omnimae(files.omnimae, device=host)
    for name in ("strag", "vism", "clip", "unidepth", "omnimae"):
        if getattr(out, name) is not None:
            residency.prepare(getattr(out, name), name=name)
    residency.prepare(out.motion_vae, name="motion_vae")
    residency.prepare(out.image_vae.vae, name="image_vae")
    if out.text is not None:
        residency.prepare(out.text[0], name="text")
    return out


def encode_prompts(models: LoadedModels, prompt: str, negative: str = "") -> tuple[TextContext, TextContext]:
    """umT5 contexts of the prompt and the negative prompt; empty (all-zero) contexts of the model's text width when
    the STraG does not read text (trained without it, e.g. the nano model: :func:`reads_text`), and only then.

    Args:
        models: from :func:`load_models`; umT5 comes to the device for the encoding (``residency``).
        prompt, negative: the texts (the negative may be empty).

    Returns:
        (positive, negative) :class:`TextContext`, each embeddings (1, 512, D) float32 (D = 4096 for umT5-XXL),
        zero past each prompt's token count.

    Raises:
        MoGe4DInputError: the STraG reads text but the folder has no umT5 encoder.
    """
    width = int(models.strag.config.text_dim)
    if models.text is None:
        if reads_text(models.strag):
            raise MoGe4DInputError(f"no umT5 text encoder found: put {UMT5} and google/umt5-xxl/ in the {INP} folder")
        empty = TextContext.from_embeddings(torch.zeros(1, 1, width))
        return empty, empty
    from ..models.text import encode_text
    model, tok = models.text
    with models.residency.stage("text (umT5)", text=model):
        ctx = encode_text(model, tok, [prompt, negative])
    return (TextContext(ctx.embeddings[:1], ctx.lengths[:1]), TextContext(ctx.embeddings[1:], ctx.lengths[1:]))


def strag_clip_context(models: LoadedModels, height: int, width: int) -> Optional[ImageContext]:
    """CLIP features of the gray-127 image (the release's STraG CLIP input); None (= zeros) without CLIP.

    Args:
        models: from :func:`load_models`; CLIP comes to the device for the encoding (``residency``).
        height, width: the size in pixels of the gray image (resized to CLIP's 224 x 224 inside).

    Returns:
        :class:`ImageContext` with tokens (1, 257, 1280) float32 on CLIP's device, or None.
    """
    if models.clip is None:
        return None
    from ..models.clip import encode_image
    with models.residency.stage("CLIP", clip=models.clip):
        return encode_image(models.clip, gray_image(height, width)[None])
