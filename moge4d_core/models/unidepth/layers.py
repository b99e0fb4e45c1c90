"""Building blocks of the UniDepthV2 / V2old decoders, named so that the published state dicts load as is.

Module and parameter names (``norm``, ``proj1``, ``kv``, ``q``, ``out``, ``ls1.gamma``, ``convs.0.conv1`` ...)
follow the published UniDepth checkpoints (reference ``encoders.md`` §1.3, §1.5, §1.6). These are small
decoder parts with UniDepth-specific quirks (fused ``kv`` with ``[k | v]`` rows, a position embedding added
to the query only, attention over the heads axis in V2old); no maintained library ships them, so they are
written here. Attention itself uses :func:`torch.nn.functional.scaled_dot_product_attention`.

Tensor layout: token tensors are ``(B, N, C)``; feature maps are ``(B, C, H, W)``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerScale(nn.Module):
    """Per-channel scale ``x * gamma`` (key ``gamma``, shape ``(C,)``)."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class MLP(nn.Module):
    """``LayerNorm -> Linear(C, C*expansion) -> GELU -> Linear(-, out)`` (keys ``norm``, ``proj1``, ``proj2``)."""

    def __init__(self, input_dim: int, expansion: int = 4, output_dim: Optional[int] = None) -> None:
        super().__init__()
        hidden = int(input_dim * expansion)
        self.norm = nn.LayerNorm(input_dim)
        self.proj1 = nn.Linear(input_dim, hidden)
        self.proj2 = nn.Linear(hidden, output_dim if output_dim is not None else input_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj2(F.gelu(self.proj1(self.norm(x))))


class AttentionBlock(nn.Module):
    """Pre-norm (cross-)attention block with a fused ``kv`` projection, as in UniDepth.

    ``x (B, N, C)`` attends to ``context (B, M, Cc)`` (``x`` itself when None):
    ``q = Wq LN(x) (+ pos_embed)``, ``[k | v] = Wkv LN(context)`` (``k += pos_embed_context``), heads contiguous
    in the channel axis. Then ``x = x + ls1(Wout attn)`` and ``x = x + ls2(MLP(x))``; ``ls*`` are LayerScale when
    ``layer_scale > 0`` else identity (no keys).

    ``attend_over``:
      * ``"tokens"``: standard attention, softmax over the M context tokens of each head.
      * ``"heads"``: the V2old ``NystromBlock`` behaviour. UniDepth passes q/k/v laid out ``(B, N, heads, d)`` to
        xformers' ``NystromAttention(num_landmarks=128)``, which treats ``heads`` as the sequence axis; because
        128 >= heads it falls back to exact softmax attention over the *last two* axes, i.e. for each token the
        ``heads`` query vectors attend over that same token's ``heads`` key vectors (``softmax(q kᵀ / sqrt(d)) v``
        with an ``(heads x heads)`` score matrix per token). No information moves between tokens in that
        attention. The released V2old weights were trained this way, so it is reproduced exactly here.
    """

    def __init__(self, dim: int, num_heads: int = 4, expansion: int = 4, layer_scale: float = 1.0,
                 context_dim: Optional[int] = None, use_bias: bool = True, attend_over: str = "tokens") -> None:
        super().__init__()
        if attend_over not in ("tokens", "heads"):
            raise ValueError(f"attend_over must be 'tokens' or 'heads', got {attend_over!r}")
        context_dim = context_dim or dim
        self.num_heads = num_heads
        self.attend_over = attend_over
        self.mlp = MLP(dim, expansion=expansion)
        self.kv = nn.Linear(context_dim, dim * 2, bias=use_bias)
        self.q = nn.Linear(dim, dim, bias=use_bias)
        self.norm_attnx = nn.LayerNorm(dim)
        self.norm_attnctx = nn.LayerNorm(context_dim)
        self.out = nn.Linear(dim, dim, bias=use_bias)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale > 0.0 else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale > 0.0 else nn.Identity()

    def attn(self, x: torch.Tensor, context: torch.Tensor, pos_embed: Optional[torch.Tensor] = None,
             pos_embed_context: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, c = x.shape
        m = context.shape[1]
        h = self.num_heads
        x = self.norm_attnx(x)
        context = self.norm_attnctx(context)
        kv = self.kv(context).view(b, m, 2, h, c // h)
        k, v = kv[:, :, 0], kv[:, :, 1]                      # (B, M, h, d)
        q = self.q(x).view(b, n, h, c // h)                  # (B, N, h, d)
        if pos_embed is not None:
            q = q + pos_embed.view(pos_embed.shape[0], n, h, c // h)
        if pos_embed_context is not None:
            k = k + pos_embed_context.view(pos_embed_context.shape[0], m, h, c // h)
        if self.attend_over == "tokens":
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            y = y.transpose(1, 2)                            # (B, N, h, d)
        else:
            # (B, N, h, d): sequence axis = heads, batch axes = (B, N); requires M == N (self-attention).
            y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.reshape(b, n, c))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                pos_embed: Optional[torch.Tensor] = None,
                pos_embed_context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        x = x + self.ls1(self.attn(x, context, pos_embed=pos_embed, pos_embed_context=pos_embed_context))
        x = x + self.ls2(self.mlp(x))
        return x


class AttentionLayer(nn.Module):
    """A stack of :class:`AttentionBlock` (key ``layers.{i}``) sharing the same context."""

    def __init__(self, num_blocks: int, dim: int, **kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList([AttentionBlock(dim, **kwargs) for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, context=context)
        return x


class ResidualConvUnit(nn.Module):
    """``x + gamma * conv2(lrelu(conv1(lrelu(x))))`` with ``gamma (1, C, 1, 1)`` (V2 decoder)."""

    def __init__(self, dim: int, kernel_size: int = 3, layer_scale: float = 1.0) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.conv1 = nn.Conv2d(dim, dim, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size, padding=pad)
        if layer_scale > 0.0:
            self.gamma = nn.Parameter(torch.full((1, dim, 1, 1), float(layer_scale)))
        else:
            self.gamma = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(x))))
        return (out if self.gamma is None else self.gamma * out) + x


class ResUpsampleBil(nn.Module):
    """``num_layers`` residual conv units, then 1x1 conv to ``output_dim`` and bilinear x2
    (``align_corners=False``). Keys ``convs.{i}.*``, ``up.0``."""

    def __init__(self, dim: int, output_dim: int, num_layers: int = 2, kernel_size: int = 3,
                 layer_scale: float = 1.0) -> None:
        super().__init__()
        self.convs = nn.ModuleList([ResidualConvUnit(dim, kernel_size, layer_scale) for _ in range(num_layers)])
        self.up = nn.Sequential(nn.Conv2d(dim, output_dim, kernel_size=1),
                                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
        return self.up(x)


class CvnxtBlock(nn.Module):
    """ConvNeXt block: depthwise kxk conv, LayerNorm over channels, MLP x4 with GELU, ``gamma (C,)``, residual."""

    def __init__(self, dim: int, kernel_size: int = 7, expansion: int = 4, layer_scale: float = 1.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, expansion * dim)
        self.pwconv2 = nn.Linear(expansion * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale))) if layer_scale > 0.0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = self.gamma * y
        return x + y.permute(0, 3, 1, 2)


class ConvUpsampleShuffleResidual(nn.Module):
    """V2old upsampler ``(B, C, h, w) -> (B, 4hw, C/2)`` (flattened row-major at 2h x 2w).

    Two ConvNeXt blocks, then ``PixelShuffle(2) -> depthwise 7x7 -> ReLU -> 3x3 conv to C/2`` plus a residual
    ``1x1 conv to C/2 -> bilinear x2 with align_corners=True`` (``nn.UpsamplingBilinear2d``). Keys ``convs.{0,1}``,
    ``up.1``, ``up.3``, ``residual.0``.
    """

    def __init__(self, dim: int, num_layers: int = 2, expansion: int = 4, kernel_size: int = 7,
                 layer_scale: float = 1.0) -> None:
        super().__init__()
        self.convs = nn.ModuleList([CvnxtBlock(dim, kernel_size, expansion, layer_scale) for _ in range(num_layers)])
        self.up = nn.Sequential(
            nn.PixelShuffle(2),
            nn.Conv2d(dim // 4, dim // 4, kernel_size=7, padding=3, groups=dim // 4),
            nn.ReLU(),
            nn.Conv2d(dim // 4, dim // 2, kernel_size=3, padding=1),
        )
        self.residual = nn.Sequential(nn.Conv2d(dim, dim // 2, kernel_size=1),
                                      nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
        y = self.up(x) + self.residual(x)
        return y.flatten(2).transpose(1, 2)


class ListAdapter(nn.Module):
    """One adapter per encoder level (key ``input_adapters.{i}``): ``Linear`` (V2) or ``LN -> Linear -> GELU``
    (V2old, keys ``.0`` and ``.1``). ``forward`` maps a list of tensors ``(..., C_i)`` to a list ``(..., D)``."""

    def __init__(self, input_dims: Sequence[int], hidden_dim: int, with_norm_act: bool) -> None:
        super().__init__()
        if with_norm_act:
            self.input_adapters = nn.ModuleList(
                [nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden_dim), nn.GELU()) for d in input_dims])
        else:
            self.input_adapters = nn.ModuleList([nn.Linear(d, hidden_dim) for d in input_dims])

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [adapter(x) for adapter, x in zip(self.input_adapters, xs)]


# ---------------------------------------------------------------------------------------------------------------
# functional helpers (float32 geometry)

def flat_interpolate(flat: torch.Tensor, old: tuple[int, int], new: tuple[int, int],
                     antialias: bool = True) -> torch.Tensor:
    """Resample row-major tokens ``(B, old_h*old_w, C) -> (B, new_h*new_w, C)`` (bilinear,
    ``align_corners=False``); returned unchanged when the sizes match."""
    if tuple(old) == tuple(new):
        return flat
    b, _, c = flat.shape
    grid = flat.transpose(1, 2).reshape(b, c, old[0], old[1])
    grid = F.interpolate(grid, size=tuple(new), mode="bilinear", align_corners=False, antialias=antialias)
    return grid.reshape(b, c, new[0] * new[1]).transpose(1, 2).contiguous()


def fourier_features(x: torch.Tensor, dim: int, max_freq: int, cat_orig: bool) -> torch.Tensor:
    """UniDepth's log-spaced sine features of ``x (..., K)``.

    ``num_bands = dim // K``, ``scales = 2 ** linspace(0, log2(max_freq), num_bands)``, output
    ``sin(x_k * scale_j * pi)`` flattened as ``[x_0 bands..., x_1 bands..., ...]`` (``(..., K*num_bands)``),
    with ``x`` appended when ``cat_orig``.
    """
    k = x.shape[-1]
    num_bands = dim // k
    if max_freq < 1:
        raise ValueError(f"fourier_features: max_freq must be >= 1, got {max_freq}")
    scales = 2.0 ** torch.linspace(0.0, math.log2(max_freq), num_bands, device=x.device, dtype=x.dtype)
    feats = torch.sin(x.unsqueeze(-1) * scales * math.pi).flatten(-2)
    return torch.cat([feats, x], dim=-1) if cat_orig else feats


def sine_position_embedding(batch: int, h: int, w: int, num_feats: int, device=None,
                            temperature: float = 10000.0) -> torch.Tensor:
    """DETR-style normalised sine embedding ``(B, 2*num_feats, h, w)``, channels ``[y feats, x feats]``.

    Positions are ``1..h`` / ``1..w`` scaled by ``2*pi / (size + 1e-6)``; channel ``2i`` is
    ``sin(p / T^(2i/num_feats))`` and ``2i+1`` is ``cos(p / T^(2i/num_feats))``.
    """
    scale = 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + 1e-6) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + 1e-6) * scale
    i = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / num_feats)

    def enc(p: torch.Tensor) -> torch.Tensor:
        a = p[:, None] / dim_t                               # (L, F)
        return torch.stack((a[:, 0::2].sin(), a[:, 1::2].cos()), dim=-1).flatten(1)

    ey, ex = enc(y), enc(x)                                  # (h, F), (w, F)
    pos = torch.cat([ey[:, None, :].expand(h, w, -1), ex[None, :, :].expand(h, w, -1)], dim=-1)
    return pos.permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1)
