"""4D-STraG / 4D-ViSM DiT modules: key inventory vs reference §E, independent float64 block formula,
MAdaNorm identity, reference-token RoPE shift, MPM alignment, channel layout, parity with diffusers."""
import math

import pytest
import torch
import torch.nn.functional as F

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.loading import wan_keys
from moge4d_core.models.wan_dit import (MAdaNorm, STraGDiT, ViSMDiT, config_to_json, dit_config, list_shipped_configs,
                                        shipped_config)

torch.set_num_threads(1)

TINY = dict(dim=24, ffn_dim=48, num_heads=2, num_layers=2, text_dim=32, freq_dim=16)


def tiny_strag(mpm=8, alignment="official", seed=0):
    torch.manual_seed(seed)
    cfg = dit_config(arch="moge4d_strag", in_dim=64, image_dim=16, ref_conv_in_dim=16, mpm_feature_dim=mpm,
                       mpm_alignment=alignment, **TINY)
    m = STraGDiT(**cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def inputs(b=1, f=3, h=8, w=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(hidden_states=r(b, 16, f, h, w), timestep=torch.full((b,), 700.0),
                encoder_hidden_states=r(b, 7, 32), encoder_hidden_states_image=r(b, 257, 16),
                control=r(b, 16, f, h, w), depth=r(b, 16, f, h, w), ref_latent=r(b, 16, h, w),
                motion_features=r(b, 196, 8))


# ----------------------------------------------------------------------------------------- 14B inventory (§E)
def reference_E_strag_inventory(mpm=True):
    """Written from moge4d_official.md §E (14B shapes), independently of the code under test."""
    D, FF = 5120, 13824
    E = {"patch_embedding.weight": (D, 64, 1, 2, 2), "patch_embedding.bias": (D,),
         "text_embedding.0.weight": (D, 4096), "text_embedding.0.bias": (D,),
         "text_embedding.2.weight": (D, D), "text_embedding.2.bias": (D,),
         "time_embedding.0.weight": (D, 256), "time_embedding.0.bias": (D,),
         "time_embedding.2.weight": (D, D), "time_embedding.2.bias": (D,),
         "time_projection.1.weight": (6 * D, D), "time_projection.1.bias": (6 * D,),
         "head.modulation": (1, 2, D), "head.head.weight": (64, D), "head.head.bias": (64,),
         "img_emb.proj.0.weight": (1280,), "img_emb.proj.0.bias": (1280,),
         "img_emb.proj.1.weight": (1280, 1280), "img_emb.proj.1.bias": (1280,),
         "img_emb.proj.3.weight": (D, 1280), "img_emb.proj.3.bias": (D,),
         "img_emb.proj.4.weight": (D,), "img_emb.proj.4.bias": (D,),
         "ref_conv.weight": (D, 16, 2, 2), "ref_conv.bias": (D,)}
    if mpm:
        for i in (0, 2):
            E[f"feature_adapter.{i}.weight"] = (768, 768, 3, 3)
            E[f"feature_adapter.{i}.bias"] = (768,)
    for n in range(40):
        b = f"blocks.{n}."
        E[b + "modulation"] = (1, 6, D)
        for a in ("self_attn", "cross_attn"):
            for p in "qkvo":
                E[f"{b}{a}.{p}.weight"] = (D, D)
                E[f"{b}{a}.{p}.bias"] = (D,)
            E[f"{b}{a}.norm_q.weight"] = (D,)
            E[f"{b}{a}.norm_k.weight"] = (D,)
        for p in ("k_img", "v_img"):
            E[f"{b}cross_attn.{p}.weight"] = (D, D)
            E[f"{b}cross_attn.{p}.bias"] = (D,)
        E[b + "cross_attn.norm_k_img.weight"] = (D,)
        E[b + "norm3.weight"] = (D,)
        E[b + "norm3.bias"] = (D,)
        E[b + "ffn.0.weight"] = (FF, D)
        E[b + "ffn.0.bias"] = (FF,)
        E[b + "ffn.2.weight"] = (D, FF)
        E[b + "ffn.2.bias"] = (D,)
        if mpm:
            for g in ("spatial_guidance_self", "spatial_guidance_ffn"):
                E[f"{b}{g}.gate"] = (D,)
                E[f"{b}{g}.spatial_guide.1.weight"] = (2 * D, 768)
                E[f"{b}{g}.spatial_guide.1.bias"] = (2 * D,)
    return E


def meta_inventory(model):
    return {wan_keys.diffusers_to_original(k): tuple(v.shape) for k, v in model.state_dict().items()}


def test_14b_strag_inventory_matches_reference_E():
    with torch.device("meta"):
        m = STraGDiT(**shipped_config("wan2.1_14b_moge4d_strag"))
    got = meta_inventory(m)
    want = reference_E_strag_inventory(mpm=True)
    assert set(got) - set(want) == set() and set(want) - set(got) == set()
    bad = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not bad
    assert got["patch_embedding.weight"] == (5120, 64, 1, 2, 2)
    assert got["ref_conv.weight"] == (5120, 16, 2, 2)
    # MPM: 7.88 M parameters per MAdaNorm (§A6)
    assert abs((10240 * 768 + 10240 + 5120) / 1e6 - 7.88) < 0.01


def test_14b_vism_inventory_and_param_count():
    with torch.device("meta"):
        m = ViSMDiT(**shipped_config("wan2.1_14b_fun_inp"))
    got = meta_inventory(m)
    want = {k: v for k, v in reference_E_strag_inventory(mpm=False).items() if not k.startswith("ref_conv")}
    want["patch_embedding.weight"] = (5120, 36, 1, 2, 2)
    want["head.head.weight"] = (64, 5120)
    assert got == want
    n = sum(p.numel() for p in m.parameters())
    assert abs(n / 1e9 - 16.40) < 0.01  # performance_anchors §1.1: I2V / Fun-InP 14B = 16.40 B


def test_shipped_configs_build_on_meta():
    names = list_shipped_configs()
    assert {"wan2.1_14b_moge4d_strag", "wan2.1_14b_fun_inp", "wan2.1_14b_fun_control_v1.1", "wan2.1_14b_t2v"} <= set(names)
    for n in names:
        c = shipped_config(n)
        assert (c.num_attention_heads, c.attention_head_dim, c.ffn_dim, c.num_layers, c.text_len, c.freq_dim, c.eps) == \
            (40, 128, 13824, 40, 512, 256, 1e-6)
        assert c.cross_attn_norm and c.qk_norm == "rms_norm_across_heads" and c.patch_size == (1, 2, 2)
        assert c.arch == n.replace("14b_", "").replace("wan2.1_moge4d", "moge4d")
    with pytest.raises(MoGe4DInputError, match="no shipped config"):
        shipped_config("nope")


def test_the_constructor_arguments_are_the_one_config():
    """model.config holds every constructor argument (diffusers' @register_to_config), arch included; a config in
    the original Wan names converts to the same arguments."""
    with torch.device("meta"):
        m = STraGDiT(**shipped_config("wan2.1_14b_moge4d_strag"))
        plain = ViSMDiT(num_attention_heads=2, attention_head_dim=12, in_channels=36, image_dim=16, num_layers=1,
                        text_dim=32, freq_dim=16, ffn_dim=48)
    assert dict(m.config) == dict(shipped_config("wan2.1_14b_moge4d_strag"))
    assert m.config.arch == "moge4d_strag" and m.config.added_kv_proj_dim == 5120
    assert not hasattr(m, "wan_config") and not hasattr(m, "from_config_obj")
    # what the constructor fills itself: the architecture from the channel layout, the I2V key/value width
    assert plain.config.arch == "wan2.1_fun_inp" and plain.config.added_kv_proj_dim == 24
    wan = dit_config(dim=24, num_heads=2, num_layers=1, in_dim=36, out_dim=16, image_dim=16, text_dim=32,
                     freq_dim=16, ffn_dim=48, qk_norm=True)
    ours = config_to_json(plain.config)                    # diffusers' private _use_default_values left out
    assert config_to_json(wan) == ours
    assert config_to_json(dit_config(plain.config, num_heads=4)) == dict(ours, num_attention_heads=4)


@pytest.mark.parametrize("bad, match", [
    (dict(dim=25, num_heads=2), "dim 25 is not divisible by num_heads 2"),
    (dict(qk_norm=False), "qk_norm=False is not supported"),
    (dict(mpm_alignment="sideways"), "mpm_alignment must be one of"),
    (dict(image_dim=16, text_len=256), "I2V models need text_len 512"),
])
def test_configs_no_wan_checkpoint_has_are_refused(bad, match):
    with pytest.raises(MoGe4DInputError, match=match):
        dit_config(bad)


@pytest.mark.parametrize("bad, match", [
    (dict(qk_norm=None), "qk_norm must be 'rms_norm_across_heads'"),
    (dict(mpm_alignment="sideways"), "mpm_alignment must be one of"),
    (dict(image_dim=16, text_len=256), "I2V models need text_len 512"),
])
def test_the_constructor_refuses_them_too(bad, match):
    with pytest.raises(MoGe4DInputError, match=match), torch.device("meta"):
        STraGDiT(num_attention_heads=2, attention_head_dim=12, num_layers=1, in_channels=64, **bad)


# ----------------------------------------------------------------------------------------- float64 block formula
def _ln(x, eps, w=None, b=None):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps)
    return y if w is None else y * w + b


def _rms(x, w, eps):
    return x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + eps) * w


def _rope_ref(x, grid, head_dim, t_offset=0):
    """Original Wan rope_apply in complex float64: x (B, L, n, d), grid (f, hh, ww)."""
    c = head_dim // 2
    sizes = [c - 2 * (c // 3), c // 3, c // 3]
    f, hh, ww = grid
    pos = torch.stack(torch.meshgrid(torch.arange(f) + t_offset, torch.arange(hh), torch.arange(ww), indexing="ij"), -1).reshape(-1, 3)
    ang = []
    for axis, k in enumerate(sizes):
        dim_axis = 2 * k
        inv = 1.0 / (10000.0 ** (torch.arange(0, dim_axis, 2, dtype=torch.float64) / dim_axis))
        ang.append(pos[:, axis:axis + 1].double() * inv[None])
    ang = torch.cat(ang, -1)  # (L, c)
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], c, 2).contiguous())
    return torch.view_as_real(xc * torch.polar(torch.ones_like(ang), ang)[None, :, None]).flatten(-2)


def _attn(q, k, v):
    s = torch.einsum("blnd,bmnd->bnlm", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bnlm,bmnd->blnd", s.softmax(-1), v)


def _block_ref(blk, x, e, ctx, grid, heads, motion=None, frames=0, eps=1e-6):
    P = {k: v.detach().double() for k, v in blk.state_dict().items()}
    lin = lambda h, name: h @ P[name + ".weight"].T + P[name + ".bias"]  # noqa: E731
    B, L, D = x.shape
    d = D // heads
    e = (P["scale_shift_table"] + e).unbind(1)

    def madanorm(h, which):
        if motion is None:
            return h
        pre = f"spatial_guidance_{which}."
        p = F.silu(motion) @ P[pre + "spatial_guide.1.weight"].T + P[pre + "spatial_guide.1.bias"]
        scale, shift = p[..., :D], p[..., D:]
        g = P[pre + "gate"]
        S = motion.shape[1]
        out = h.clone()
        for i in range(frames * S):
            out[:, i] = h[:, i] * (1 + g * scale[:, i % S]) + g * shift[:, i % S]
        return out

    h = _ln(x, eps) * (1 + e[1][:, None]) + e[0][:, None]
    h = madanorm(h, "self")
    q = _rms(lin(h, "attn1.to_q"), P["attn1.norm_q.weight"], eps).view(B, L, heads, d)
    k = _rms(lin(h, "attn1.to_k"), P["attn1.norm_k.weight"], eps).view(B, L, heads, d)
    v = lin(h, "attn1.to_v").view(B, L, heads, d)
    q, k = _rope_ref(q, grid, d), _rope_ref(k, grid, d)
    y = lin(_attn(q, k, v).reshape(B, L, D), "attn1.to_out.0")
    x = x + y * e[2][:, None]
    # I2V cross-attention: first 257 context tokens are CLIP
    h = _ln(x, eps, P["norm2.weight"], P["norm2.bias"])
    ci, ct = ctx[:, :257], ctx[:, 257:]
    q = _rms(lin(h, "attn2.to_q"), P["attn2.norm_q.weight"], eps).view(B, L, heads, d)
    k = _rms(lin(ct, "attn2.to_k"), P["attn2.norm_k.weight"], eps).view(B, -1, heads, d)
    v = lin(ct, "attn2.to_v").view(B, -1, heads, d)
    ki = _rms(lin(ci, "attn2.add_k_proj"), P["attn2.norm_added_k.weight"], eps).view(B, -1, heads, d)
    vi = lin(ci, "attn2.add_v_proj").view(B, -1, heads, d)
    y = (_attn(q, k, v) + _attn(q, ki, vi)).reshape(B, L, D)
    x = x + lin(y, "attn2.to_out.0")
    h = _ln(x, eps) * (1 + e[4][:, None]) + e[3][:, None]
    h = madanorm(h, "ffn")
    y = lin(F.gelu(lin(h, "ffn.net.0.proj"), approximate="tanh"), "ffn.net.2")
    return x + y * e[5][:, None]


@pytest.mark.parametrize("with_motion,frames", [(False, 0), (True, 2), (True, 3)])
def test_block_matches_float64_wan_formula(with_motion, frames):
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    m = tiny_strag()
    blk = m.blocks[0]
    torch.manual_seed(3)
    f, hh, ww, D = 3, 2, 3, 24
    L = f * hh * ww
    x = torch.randn(2, L, D)
    e = torch.randn(2, 6, D) * 0.5
    ctx = torch.randn(2, 257 + 512, D)
    motion = torch.randn(2, hh * ww, 8) if with_motion else None
    rope = WanRotaryPosEmbed(12, (1, 2, 2), 1024)(torch.zeros(1, 1, f, 2 * hh, 2 * ww))
    with torch.no_grad():
        got = blk(x, ctx, e, rope, motion, 0, frames)
        ref = _block_ref(blk, x.double(), e.double(), ctx.double(), (f, hh, ww), 2,
                         None if motion is None else motion.double(), frames)
    assert (got.double() - ref).abs().max() < 2e-4 * ref.abs().max()
    if with_motion:  # the module really modulates (else the test could not fail on MAdaNorm)
        with torch.no_grad():
            plain = blk(x, ctx, e, rope)
        assert (plain - got).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------- MAdaNorm
def test_madanorm_zero_gate_is_identity_and_formula():
    torch.manual_seed(0)
    mod = MAdaNorm(6, 4)
    with torch.no_grad():
        mod.spatial_guide[1].weight.normal_()
        mod.spatial_guide[1].bias.normal_()
    x, feat = torch.randn(2, 3 * 5 + 2, 6), torch.randn(2, 5, 4)
    assert torch.equal(mod(x, feat, 1, 3), x)  # gate initialised to 0
    with torch.no_grad():
        mod.gate.normal_()
    y = mod(x, feat, 1, 3).double()
    p = F.silu(feat.double()) @ mod.spatial_guide[1].weight.double().T + mod.spatial_guide[1].bias.double()
    sc, sh, g = p[..., :6], p[..., 6:], mod.gate.double()
    for i in range(x.shape[1]):
        if 1 <= i < 16:
            want = x[:, i].double() * (1 + g * sc[:, (i - 1) % 5]) + g * sh[:, (i - 1) % 5]
        else:
            want = x[:, i].double()
        assert torch.allclose(y[:, i], want, atol=1e-5)


def test_model_with_zero_gates_ignores_motion_features():
    m = tiny_strag()
    with torch.no_grad():
        for blk in m.blocks:
            blk.spatial_guidance_self.gate.zero_()
            blk.spatial_guidance_ffn.gate.zero_()
    a = inputs()
    with torch.no_grad():
        y1 = m(**a)
        a["motion_features"] = None
        y0 = m(**a)
    assert torch.equal(y0, y1)


# ----------------------------------------------------------------------------------------- RoPE with ref tokens
def test_reference_tokens_take_frame_position_zero():
    m = tiny_strag()
    seen = {}
    def grab(mod, args):
        seen["rope"] = args[3]

    m.blocks[0].register_forward_pre_hook(grab)
    a = inputs(f=3, h=4, w=6)
    with torch.no_grad():
        m(**a)
    cos, sin = seen["rope"]
    f, hh, ww = 3, 2, 3
    assert cos.shape[1] == (f + 1) * hh * ww  # ref tokens prepended: one extra frame of the grid
    # independent expectation: token (t, i, j) rotated by t*w_t, i*w_h, j*w_w; ref tokens t=0, frame k -> t=k+1
    d = 12
    c = d // 2
    sizes = [c - 2 * (c // 3), c // 3, c // 3]
    pos = torch.stack(torch.meshgrid(torch.arange(f + 1), torch.arange(hh), torch.arange(ww), indexing="ij"), -1).reshape(-1, 3)
    ang = torch.cat([pos[:, a:a + 1].double() / (10000.0 ** (torch.arange(0, 2 * k, 2).double() / (2 * k)))
                     for a, k in enumerate(sizes)], -1)
    want_cos = ang.cos().repeat_interleave(2, -1)
    assert torch.allclose(cos[0, :, 0].double(), want_cos, atol=1e-6)
    # the first video frame (positions hh*ww .. 2*hh*ww) is at temporal position 1, not 0
    assert not torch.allclose(cos[0, hh * ww:2 * hh * ww, 0, :4].double(), torch.ones(hh * ww, 4, dtype=torch.float64))


def test_reference_tokens_are_stripped_and_matter():
    m = tiny_strag()
    a = inputs()
    with torch.no_grad():
        y1 = m(**a)
        a["ref_latent"] = None
        y0 = m(**a)
        a["ref_latent"] = torch.zeros(1, 16, 8, 8)
        y00 = m(**a)
    assert y1.shape == (1, 16, 3, 8, 8)
    assert torch.equal(y0, y00)  # None == zero latent (official training)
    assert (y1 - y0).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------- MPM alignment
@pytest.mark.parametrize("alignment", ["official", "corrected"])
def test_mpm_alignment_positions(alignment):
    m = tiny_strag(alignment=alignment)
    cap = {}

    def hook(mod, args, out):
        cap["in"], cap["out"] = args[0], out

    m.blocks[0].spatial_guidance_self.register_forward_hook(hook)
    a = inputs(f=3, h=4, w=4)
    with torch.no_grad():
        m(**a)
    S = 4  # 2x2 tokens per frame; sequence = ref (S) + 3 frames (3S)
    changed = ((cap["out"] - cap["in"]).abs().amax(-1) > 0)[0]
    if alignment == "official":  # ref tokens + frames 0..1 modulated, last frame not
        want = torch.tensor([True] * (3 * S) + [False] * S)
    else:  # every video frame modulated, ref tokens not
        want = torch.tensor([False] * S + [True] * (3 * S))
    assert torch.equal(changed, want)


def test_motion_feature_pipeline_matches_independent_recomputation():
    m = tiny_strag()
    feats = torch.randn(2, 196, 8)
    with torch.no_grad():
        got = m.motion_tokens(feats, 3, 5, 2)
    fa = m.feature_adapter
    g = feats.double().reshape(2, 14, 14, 8).permute(0, 3, 1, 2)
    g = F.conv2d(g, fa[0].weight.double(), fa[0].bias.double(), padding=1)
    g = F.conv2d(F.silu(g), fa[2].weight.double(), fa[2].bias.double(), padding=1)
    # bilinear, align_corners=False, written out: source coordinate (dst + 0.5) * in/out - 0.5, clamped at 0
    def axis(n_in, n_out):
        src = ((torch.arange(n_out).double() + 0.5) * n_in / n_out - 0.5).clamp(min=0)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        return i0, i1, src - i0
    y0, y1, wy = axis(14, 3)
    x0, x1, wx = axis(14, 5)
    top = g[:, :, y0][..., x0] * (1 - wx) + g[:, :, y0][..., x1] * wx
    bot = g[:, :, y1][..., x0] * (1 - wx) + g[:, :, y1][..., x1] * wx
    ref = top * (1 - wy)[:, None] + bot * wy[:, None]
    assert torch.allclose(got.double(), ref.flatten(2).transpose(1, 2), atol=1e-5)


def test_mpm_errors():
    m = tiny_strag(mpm=None)
    a = inputs()
    with pytest.raises(MoGe4DInputError, match="no Motion Perception Module"):
        m(**a)
    m.add_mpm(8)  # fresh MPM is the identity
    with torch.no_grad():
        y1 = m(**a)
        a["motion_features"] = None
        y0 = m(**a)
    assert torch.equal(y0, y1)


# ----------------------------------------------------------------------------------------- channel layout
def test_strag_channel_layout():
    m = tiny_strag(mpm=None)
    a = inputs()
    a["motion_features"] = None
    with torch.no_grad():
        m.patch_embedding.weight[:, :48] = 0  # only the depth slot (48..63) can reach the output
        y = m(**a)
        a2 = dict(a, control=torch.randn_like(a["control"]), start_image=torch.randn_like(a["control"]),
                  hidden_states=torch.randn_like(a["hidden_states"]))
        assert torch.equal(m(**a2), y)
        a3 = dict(a, depth=torch.randn_like(a["depth"]))
        assert (m(**a3) - y).abs().max() > 1e-3
        m.patch_embedding.weight[:, 48:] = 0
        m.patch_embedding.weight[:, 16:32].normal_()  # now only control matters
        y = m(**a)
        assert torch.equal(m(**dict(a, depth=torch.randn_like(a["depth"]))), y)
        assert (m(**dict(a, control=torch.randn_like(a["control"]))) - y).abs().max() > 1e-3
        # start_image None == zeros
        assert torch.equal(m(**dict(a, start_image=None)), m(**dict(a, start_image=torch.zeros_like(a["control"]))))


def test_text_is_zero_padded_to_512():
    m = tiny_strag()
    a = inputs()
    with torch.no_grad():
        y = m(**a)
        y_pad = m(**dict(a, encoder_hidden_states=F.pad(a["encoder_hidden_states"], (0, 0, 0, 512 - 7))))
    assert torch.equal(y, y_pad)
    with pytest.raises(MoGe4DInputError, match="at most 512"):
        m(**dict(a, encoder_hidden_states=torch.randn(1, 513, 32)))


def test_input_errors():
    m = tiny_strag()
    a = inputs()
    with pytest.raises(MoGe4DInputError, match="control"):
        m(**dict(a, control=torch.randn(1, 16, 2, 8, 8)))
    with pytest.raises(MoGe4DInputError, match="required"):
        m(**dict(a, depth=None))
    with pytest.raises(MoGe4DInputError, match="divisible"):
        m(**{**a, **{k: torch.randn(1, 16, 3, 7, 8) for k in ("hidden_states", "control", "depth")},
             "ref_latent": None})


# ----------------------------------------------------------------------------------------- parity with diffusers
def test_generic_forward_equals_stock_diffusers():
    """Without ref tokens / MPM our forward is diffusers' WanTransformer3DModel forward."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    cfg = dit_config(arch="wan2.1_fun_inp", in_dim=36, image_dim=16, **TINY)
    ours = ViSMDiT(**cfg).eval()
    stock = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36,
                                  out_channels=16, text_dim=32, freq_dim=16, ffn_dim=48, num_layers=2,
                                  image_dim=16, added_kv_proj_dim=24).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.3)
    stock.load_state_dict(ours.state_dict(), strict=True)
    a = inputs()
    mask, mv = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 16, 3, 8, 8)
    text = F.pad(a["encoder_hidden_states"], (0, 0, 0, 505))
    with torch.no_grad():
        lat, t, txt, img = (a[k] for k in ("hidden_states", "timestep", "encoder_hidden_states",
                                            "encoder_hidden_states_image"))
        y = ours(lat, t, txt, img, mask=mask, masked_video=mv)
        ys = stock(torch.cat([lat, mask, mv], 1), t, text, img, return_dict=False)[0]
        # clip=None means zero CLIP features
        assert torch.equal(ours(lat, t, txt, None, mask=mask, masked_video=mv),
                           ours(lat, t, txt, torch.zeros_like(img), mask=mask, masked_video=mv))
    assert torch.allclose(y, ys, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------- diffusers' forward names
def test_forward_keywords_and_return_dict_follow_diffusers():
    """hidden_states / encoder_hidden_states / encoder_hidden_states_image by name; return_dict None = tensor,
    True = Transformer2DModelOutput, False = 1-tuple; attention_kwargs with content is refused."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    m = tiny_strag()
    a = inputs()
    with torch.no_grad():
        y = m(**a)
        assert isinstance(y, torch.Tensor) and y.shape == a["hidden_states"].shape
        out = m(**a, return_dict=True)
        assert isinstance(out, Transformer2DModelOutput) and torch.equal(out.sample, y)
        tup = m(**a, return_dict=False)
        assert isinstance(tup, tuple) and len(tup) == 1 and torch.equal(tup[0], y)
        assert torch.equal(m(**a, attention_kwargs={}), y)
    with pytest.raises(MoGe4DInputError, match="attention_kwargs"):
        m(**a, attention_kwargs={"scale": 0.5})
    with pytest.raises(TypeError):
        m(**dict(a, latents=a.pop("hidden_states")))          # the old name is gone
