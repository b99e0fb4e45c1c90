"""Configuration of a Wan2.1 DiT (and its MoGe4D extensions), with the shipped 14B configs.

Field names follow the original Wan ``config.json`` (``dim``, ``ffn_dim``, ``num_heads`` ...), so a
VideoX-Fun / Wan ``config.json`` can be read directly; :meth:`WanDiTConfig.diffusers_kwargs` turns it
into the keyword arguments of diffusers' ``WanTransformer3DModel`` (plus our additions).

Architectures (``arch``) and their input channels (``in_dim``), see reference §A1, §A4, §C:

=============================  ======  ==============================================================
arch                           in_dim  latents concatenated along channels (in this order)
=============================  ======  ==============================================================
``moge4d_strag``               64      noise 16 | control 16 | start-image slot 16 | depth 16; + ref_conv
``wan2.1_fun_control_v1.1``    48      noise 16 | control 16 | start-image 16; + ref_conv
``wan2.1_fun_control``         48      noise 16 | control 16 | start-image 16 (no ref_conv)
``wan2.1_fun_inp``             36      noise 16 | mask 4 | masked-video latent 16 (= Wan2.1 I2V layout)
``wan2.1_t2v``                 16      noise 16
=============================  ======  ==============================================================

The shipped JSON files live in ``moge4d_core/models/configs/``; nothing is fetched at run time.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from ...errors import MoGe4DInputError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

ARCH_STRAG = "moge4d_strag"
ARCH_CONTROL_V11 = "wan2.1_fun_control_v1.1"
ARCH_CONTROL = "wan2.1_fun_control"
ARCH_INP = "wan2.1_fun_inp"
ARCH_T2V = "wan2.1_t2v"
ARCHS = (ARCH_STRAG, ARCH_CONTROL_V11, ARCH_CONTROL, ARCH_INP, ARCH_T2V)

MPM_ALIGNMENTS = ("official", "corrected")

#: Wan sizes by hidden width: (num_heads, num_layers, ffn_dim). Width 5120 = the 14B models.
KNOWN_WIDTHS = {5120: (40, 40, 13824), 1536: (12, 30, 8960)}


@dataclass(frozen=True)
class WanDiTConfig:
    """Hyper-parameters of one Wan2.1 DiT.

    ``image_dim``: width of the CLIP image features (1280) when the model has ``img_emb`` and I2V
    cross-attention (``k_img``/``v_img``), else None. ``ref_conv_in_dim``: input channels of ``ref_conv``
    (16) when the model has reference tokens, else None. ``mpm_feature_dim``: OmniMAE feature width (768)
    when the model carries the Motion Perception Module (``feature_adapter`` + two MAdaNorm per block),
    else None. ``mpm_alignment``: which tokens the MPM modulates (see :mod:`.model`).
    """

    arch: str
    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    eps: float = 1e-6
    patch_size: tuple[int, int, int] = (1, 2, 2)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    image_dim: Optional[int] = None
    ref_conv_in_dim: Optional[int] = None
    mpm_feature_dim: Optional[int] = None
    mpm_alignment: str = "official"
    rope_max_seq_len: int = 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if self.dim % self.num_heads:
            raise MoGe4DInputError(f"Wan config: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.mpm_alignment not in MPM_ALIGNMENTS:
            raise MoGe4DInputError(f"Wan config: mpm_alignment must be one of {MPM_ALIGNMENTS}, got {self.mpm_alignment!r}")
        if not self.qk_norm:
            raise MoGe4DInputError("Wan config: qk_norm=False is not supported (every Wan2.1 model has q/k RMSNorm)")
        if self.image_dim is not None and self.text_len != 512:
            raise MoGe4DInputError("Wan config: I2V models need text_len 512 (diffusers splits the context at 512 text tokens)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`moge4d_core.models.wan_dit.WanDiT`."""
        return dict(
            patch_size=self.patch_size,
            num_attention_heads=self.num_heads,
            attention_head_dim=self.head_dim,
            in_channels=self.in_dim,
            out_channels=self.out_dim,
            text_dim=self.text_dim,
            freq_dim=self.freq_dim,
            ffn_dim=self.ffn_dim,
            num_layers=self.num_layers,
            cross_attn_norm=self.cross_attn_norm,
            qk_norm="rms_norm_across_heads",
            eps=self.eps,
            image_dim=self.image_dim,
            added_kv_proj_dim=self.dim if self.image_dim is not None else None,
            rope_max_seq_len=self.rope_max_seq_len,
            text_len=self.text_len,
            ref_conv_in_dim=self.ref_conv_in_dim,
            mpm_feature_dim=self.mpm_feature_dim,
            mpm_alignment=self.mpm_alignment,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    def replace(self, **changes: Any) -> "WanDiTConfig":
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "WanDiTConfig":
        """From our own dict, or from a Wan / VideoX-Fun ``config.json`` (unknown fields ignored)."""
        names = {f.name for f in fields(cls)}
        src = dict(d)
        src.update(overrides)
        if "num_attention_heads" in src and "num_heads" not in src:
            src["num_heads"] = src["num_attention_heads"]
        if "arch" not in src:
            raise MoGe4DInputError(f"Wan config: no 'arch' field in {sorted(src)[:8]}...")
        return cls(**{k: v for k, v in src.items() if k in names})


def infer_arch(in_dim: int, ref_conv_in_dim: Optional[int], image_dim: Optional[int]) -> str:
    """Architecture name from the input channels and the presence of ``ref_conv`` / CLIP ``img_emb``."""
    if in_dim == 64 and ref_conv_in_dim:
        return ARCH_STRAG
    if in_dim == 48:
        return ARCH_CONTROL_V11 if ref_conv_in_dim else ARCH_CONTROL
    if in_dim == 36 and image_dim:
        return ARCH_INP
    if in_dim == 16 and not image_dim:
        return ARCH_T2V
    return f"unknown(in_dim={in_dim})"


def shipped_config(name: str) -> WanDiTConfig:
    """One of the JSON configs shipped in ``moge4d_core/models/configs`` (``name`` without ``.json``)."""
    p = CONFIG_DIR / f"{name}.json"
    if not p.is_file():
        avail = sorted(f.stem for f in CONFIG_DIR.glob("*.json"))
        raise MoGe4DInputError(f"no shipped config '{name}'; available: {avail}")
    d = json.loads(p.read_text())
    d.pop("description", None)
    return WanDiTConfig.from_dict(d)


def list_shipped_configs() -> list[str]:
    return sorted(f.stem for f in CONFIG_DIR.glob("*.json"))
