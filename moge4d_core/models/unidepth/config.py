"""Configuration of the two published UniDepthV2 generations (reference ``encoders.md`` §1.0, §1.1, §1.6).

* ``version="v2"``: the 2025 "V2" (HF ``lpiccinelli/unidepth-v2-{vits14,vitb14,vitl14}``), decoder ``decoder.py``.
* ``version="v2old"``: the 2024 model MoGe4D's ``infer.py`` imports as ``UniDepthV2old``
  (HF ``lpiccinelli/unidepth-v2old-{vits14,vitl14}``), decoder ``decoder_old.py``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

BACKBONES = {  # name: (embed_dim, depth, heads)
    "vits14": (384, 12, 6),
    "vitb14": (768, 12, 12),
    "vitl14": (1024, 24, 16),
}
PUBLISHED = {"v2": ("vits14", "vitb14", "vitl14"), "v2old": ("vits14", "vitl14")}
V2_DECODER = {"vits14": (256, 32), "vitb14": (384, 48), "vitl14": (512, 64)}  # hidden_dim, out_dim


def backbone_name(embed_dim: int) -> str:
    for name, (dim, _, _) in BACKBONES.items():
        if dim == embed_dim:
            return name
    return "custom"


def default_output_idx(version: str, depth: int) -> tuple[int, ...]:
    """1-based block counts tapped by the decoder: quarters for V2, the last four blocks for V2old."""
    if version == "v2":
        if depth % 4:
            raise ValueError(f"V2 encoder depth must be a multiple of 4, got {depth}")
        q = depth // 4
        return (q, 2 * q, 3 * q, 4 * q)
    if depth < 4:
        raise ValueError(f"V2old encoder needs at least 4 blocks, got {depth}")
    return (depth - 3, depth - 2, depth - 1, depth)


@dataclass
class UniDepthConfig:
    """Everything needed to build a UniDepthV2 / V2old model.

    Encoder: ``embed_dim``, ``depth``, ``num_heads`` of the DINOv2 ViT/14; ``output_idx`` the 1-based block
    counts whose (final-normed) outputs feed the decoder. Decoder: ``hidden_dim``; V2 adds ``out_dim``,
    ``decoder_depths`` (residual conv units per upsampling stage), ``kernel_size``, ``layer_scale``,
    ``num_prompt_blocks``; V2old uses ``decoder_depths`` as the number of attention blocks per stage and
    ``camera_dim`` (Fourier ray features, 96). Input rules: V2 ``ratio_bounds`` / ``pixels_bounds`` in pixels;
    V2old ``ratio_bounds`` (warning only) / ``pixels_bounds`` in 14x14 tokens.
    """

    version: str
    embed_dim: int
    depth: int
    num_heads: int
    hidden_dim: int
    output_idx: tuple[int, ...] = ()
    decoder_depths: tuple[int, ...] = ()
    out_dim: int = 32
    kernel_size: int = 3
    decoder_heads: int = 8
    expansion: int = 4
    layer_scale: float = 1.0
    num_prompt_blocks: int = 1
    camera_dim: int = 96
    ratio_bounds: tuple[float, float] = (0.5, 2.5)
    pixels_bounds: tuple[float, float] = (200000, 600000)
    backbone: str = field(default="")

    def __post_init__(self) -> None:
        if self.version not in ("v2", "v2old"):
            raise ValueError(f"version must be 'v2' or 'v2old', got {self.version!r}")
        if not self.output_idx:
            self.output_idx = default_output_idx(self.version, self.depth)
        if not self.decoder_depths:
            self.decoder_depths = (2, 2, 2) if self.version == "v2" else (6, 0, 0)
        self.output_idx = tuple(int(i) for i in self.output_idx)
        self.decoder_depths = tuple(int(i) for i in self.decoder_depths)
        self.ratio_bounds = tuple(float(r) for r in self.ratio_bounds)
        self.pixels_bounds = tuple(float(p) for p in self.pixels_bounds)
        if not self.backbone:
            self.backbone = backbone_name(self.embed_dim)
        if len(self.output_idx) != 4:
            raise ValueError(f"output_idx must have 4 entries, got {self.output_idx}")
        if self.embed_dim % self.num_heads or self.hidden_dim % self.decoder_heads:
            raise ValueError("embed_dim / hidden_dim must be divisible by the number of heads")

    @classmethod
    def preset(cls, version: str, backbone: str) -> "UniDepthConfig":
        """Config of a published checkpoint, e.g. ``preset("v2old", "vitl14")``."""
        if version not in PUBLISHED or backbone not in PUBLISHED[version]:
            raise ValueError(f"no published UniDepth {version}-{backbone}; known: {PUBLISHED}")
        dim, depth, heads = BACKBONES[backbone]
        if version == "v2":
            hidden, out_dim = V2_DECODER[backbone]
            return cls(version="v2", embed_dim=dim, depth=depth, num_heads=heads, hidden_dim=hidden,
                       out_dim=out_dim, backbone=backbone)
        return cls(version="v2old", embed_dim=dim, depth=depth, num_heads=heads, hidden_dim=512,
                   ratio_bounds=(0.66, 2.0), pixels_bounds=(1400, 2400), backbone=backbone)

    @property
    def name(self) -> str:
        return f"unidepth-{self.version}-{self.backbone}"

    def to_dict(self) -> dict:
        """Every field as a dict (for checkpoint metadata; :meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UniDepthConfig":
        """Inverse of :meth:`to_dict`; keys that are not fields are ignored."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def parse_hub_config(cfg: dict) -> dict:
    """Fields of a UniDepth ``config.json`` (the dict given to ``UniDepthV2(config)``) as config overrides.

    Reads ``model.name`` (-> version), ``model.num_heads``/``expansion``/``layer_scale``, ``model.pixel_encoder.
    {name, output_idx, num_heads*}``, ``model.pixel_decoder.{hidden_dim, depths, out_dim, kernel_size}`` and the
    shape constraints (``data.augmentations.shape_constraints`` for V2, ``data.shape_constraints`` for V2old).
    ``pixel_encoder.num_heads`` is our extension for non-standard widths (tests); published files use the name.
    """
    if "model" not in cfg and isinstance(cfg.get("config"), dict):
        cfg = cfg["config"]
    model = cfg.get("model", {}) or {}
    enc = model.get("pixel_encoder", {}) or {}
    dec = model.get("pixel_decoder", {}) or {}
    out: dict = {}
    name = str(model.get("name", ""))
    if name:
        out["version"] = {"UniDepthV2": "v2", "UniDepthV2old": "v2old"}.get(name, name)
    enc_name = str(enc.get("name", ""))
    for bb, (_, _, heads) in BACKBONES.items():
        if enc_name.endswith(bb):
            out["num_heads"] = heads
            out["backbone"] = bb
    if "num_heads" in enc:
        out["num_heads"] = int(enc["num_heads"])
    if "output_idx" in enc:
        out["output_idx"] = tuple(enc["output_idx"])
    if "num_heads" in model:
        out["decoder_heads"] = int(model["num_heads"])
    for src, dst in (("expansion", "expansion"), ("layer_scale", "layer_scale")):
        if src in model:
            out[dst] = model[src]
    for src, dst in (("hidden_dim", "hidden_dim"), ("depths", "decoder_depths"), ("out_dim", "out_dim"),
                     ("kernel_size", "kernel_size")):
        if src in dec:
            out[dst] = tuple(dec[src]) if isinstance(dec[src], list) else dec[src]
    data = cfg.get("data", {}) or {}
    sc = (data.get("augmentations", {}) or {}).get("shape_constraints") or data.get("shape_constraints") or {}
    if "ratio_bounds" in sc:
        out["ratio_bounds"] = tuple(sc["ratio_bounds"])
    if "pixels_min" in sc and "pixels_max" in sc:
        out["pixels_bounds"] = (sc["pixels_min"], sc["pixels_max"])
    elif "pixels_bounds" in sc:
        out["pixels_bounds"] = tuple(sc["pixels_bounds"])
    return out


def hub_config(config: UniDepthConfig) -> dict:
    """A UniDepth-style ``config.json`` dict for ``config`` (inverse of :func:`parse_hub_config`)."""
    enc = {"name": f"dinov2_{config.backbone}", "output_idx": list(config.output_idx), "use_norm": True,
           "stacking_fn": "last", "num_register_tokens": 0}
    if config.backbone == "custom":
        enc["num_heads"] = config.num_heads
    dec: dict = {"hidden_dim": config.hidden_dim, "depths": list(config.decoder_depths), "dropout": 0.0}
    model = {"name": "UniDepthV2" if config.version == "v2" else "UniDepthV2old",
             "num_heads": config.decoder_heads, "expansion": config.expansion, "pixel_encoder": enc,
             "pixel_decoder": dec}
    if config.version == "v2":
        model["layer_scale"] = config.layer_scale
        dec.update(out_dim=config.out_dim, kernel_size=config.kernel_size)
        data = {"augmentations": {"shape_constraints": {
            "ratio_bounds": list(config.ratio_bounds), "pixels_min": config.pixels_bounds[0],
            "pixels_max": config.pixels_bounds[1], "shape_mult": 14}}}
    else:
        data = {"shape_constraints": {"ratio_bounds": list(config.ratio_bounds),
                                      "pixels_bounds": list(config.pixels_bounds), "patch_size": 14}}
    return {"generic": {}, "training": {}, "data": data, "model": model}
