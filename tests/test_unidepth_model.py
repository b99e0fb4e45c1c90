"""UniDepthV2 / V2old numerics against formulas written here (float64), and the reference's input rules."""
import math

import pytest
import torch
import torch.nn.functional as F

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.loading.unidepth import load_unidepth, to_published_keys
from moge4d_core.models.unidepth import UniDepthConfig, build_unidepth, prepare_rgb, to_geometry
from moge4d_core.models.unidepth.camera import unit_rays
from moge4d_core.models.unidepth.decoder_v2 import CameraHeadV2, DepthHeadV2
from moge4d_core.models.unidepth.layers import AttentionBlock, fourier_features, sine_position_embedding
from moge4d_core.models.unidepth.shapes import (v2_network_shape, v2_pixel_bounds, v2old_network_shape,
                                                v2old_token_budget)
from moge4d_core.types import DepthPrediction, Geometry
from test_unidepth_loading import tiny as _tiny

torch.set_num_threads(1)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def tiny(version, embed_dim=64, heads=2, scale=0.2, seed=0):
    return _tiny(version, embed_dim=embed_dim, heads=heads, seed=seed, scale=scale)


# ------------------------------------------------------------------------------------------------ encoder

def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def reference_dinov2(pub, x, heads, depth):
    """Float64 DINOv2 forward from the *published* UniDepth key names (fused qkv, ls*.gamma)."""
    p = {k[len("pixel_encoder."):]: v.double() for k, v in pub.items() if k.startswith("pixel_encoder.")}
    x = x.double()
    b, _, H, W = x.shape
    h, w = H // 14, W // 14
    c = p["cls_token"].shape[-1]
    tok = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=14).flatten(2).transpose(1, 2)
    grid = p["pos_embed"][:, 1:].reshape(1, 37, 37, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)  # antialias off, as UniDepth
    grid = grid.permute(0, 2, 3, 1).reshape(1, h * w, c)
    t = torch.cat([p["cls_token"].expand(b, -1, -1) + p["pos_embed"][:, :1], tok + grid], dim=1)
    outs = []
    d = c // heads
    for n in range(depth):
        q = f"blocks.{n}."
        y = _ln(t, p[q + "norm1.weight"], p[q + "norm1.bias"], 1e-6)
        qkv = y @ p[q + "attn.qkv.weight"].T + p[q + "attn.qkv.bias"]
        qq, kk, vv = qkv.reshape(b, -1, 3, heads, d).permute(2, 0, 3, 1, 4)
        a = torch.softmax(qq @ kk.transpose(-1, -2) / math.sqrt(d), dim=-1) @ vv
        a = a.transpose(1, 2).reshape(b, -1, c) @ p[q + "attn.proj.weight"].T + p[q + "attn.proj.bias"]
        t = t + p[q + "ls1.gamma"] * a
        y = _ln(t, p[q + "norm2.weight"], p[q + "norm2.bias"], 1e-6)
        m = _gelu(y @ p[q + "mlp.fc1.weight"].T + p[q + "mlp.fc1.bias"]) @ p[q + "mlp.fc2.weight"].T + p[q + "mlp.fc2.bias"]
        t = t + p[q + "ls2.gamma"] * m
        outs.append(_ln(t, p["norm.weight"], p["norm.bias"], 1e-5))  # final norm: eps 1e-5, on every tap
    return outs, (h, w)


def test_dinov2_encoder_equals_float64_vit_on_published_weights():
    src = tiny("v2", embed_dim=64, heads=2, scale=0.3)
    pub = to_published_keys(src.state_dict())
    model = load_unidepth(pub, config={"num_heads": 2}, dtype=torch.float64)
    enc = model.pixel_encoder.model
    assert enc.layernorm.eps == 1e-5 and all(l.norm1.eps == 1e-6 for l in enc.encoder.layer)
    torch.manual_seed(3)
    x = torch.randn(2, 3, 42, 70)  # 3x5 grid: the 37x37 pos-embed is resampled
    ref, (h, w) = reference_dinov2(pub, x, heads=2, depth=4)
    with torch.no_grad():
        feats, cls = model.pixel_encoder(x.double(), (1, 2, 3, 4))
    for f, c, r in zip(feats, cls, ref):
        assert f.shape == (2, h, w, 64) and c.shape == (2, 1, 64)
        # HF resamples the position table in float32, hence 1e-5 rather than 1e-12
        torch.testing.assert_close(c, r[:, :1], atol=2e-5, rtol=0)
        torch.testing.assert_close(f, r[:, 1:].reshape(2, h, w, 64), atol=2e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ layers

def test_token_attention_matches_formula_with_query_only_position():
    torch.manual_seed(0)
    blk = AttentionBlock(8, num_heads=2, expansion=2, use_bias=False, context_dim=6).double()
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(torch.randn_like(p))
    x, ctx, pos = torch.randn(2, 3, 8).double(), torch.randn(2, 5, 6).double(), torch.randn(2, 3, 8).double()
    got = blk.attn(x, ctx, pos_embed=pos)
    xn = _ln(x, blk.norm_attnx.weight, blk.norm_attnx.bias, 1e-5)
    cn = _ln(ctx, blk.norm_attnctx.weight, blk.norm_attnctx.bias, 1e-5)
    q = (xn @ blk.q.weight.T + pos).reshape(2, 3, 2, 4).transpose(1, 2)
    kv = cn @ blk.kv.weight.T
    k = kv[..., :8].reshape(2, 5, 2, 4).transpose(1, 2)   # [k | v] rows, heads contiguous
    v = kv[..., 8:].reshape(2, 5, 2, 4).transpose(1, 2)
    a = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v
    want = a.transpose(1, 2).reshape(2, 3, 8) @ blk.out.weight.T
    torch.testing.assert_close(got, want)


def test_v2old_nystrom_block_attends_across_heads_of_each_token():
    torch.manual_seed(1)
    heads, d, n = 4, 3, 5
    blk = AttentionBlock(heads * d, num_heads=heads, expansion=1, attend_over="heads").double()
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(torch.randn_like(p))
    x, pos = torch.randn(2, n, heads * d).double(), torch.randn(2, n, heads * d).double()
    got = blk.attn(x, x, pos_embed=pos)
    xn = _ln(x, blk.norm_attnx.weight, blk.norm_attnx.bias, 1e-5)
    cn = _ln(x, blk.norm_attnctx.weight, blk.norm_attnctx.bias, 1e-5)
    q = (xn @ blk.q.weight.T + blk.q.bias + pos).reshape(2, n, heads, d)
    kv = cn @ blk.kv.weight.T + blk.kv.bias
    k, v = kv[..., : heads * d].reshape(2, n, heads, d), kv[..., heads * d:].reshape(2, n, heads, d)
    want = torch.zeros(2, n, heads, d, dtype=torch.float64)
    for bi in range(2):
        for t in range(n):        # per token: a heads x heads score matrix, as xformers' fallback computes
            s = torch.softmax(q[bi, t] @ k[bi, t].T / math.sqrt(d), dim=-1)
            want[bi, t] = s @ v[bi, t]
    want = want.reshape(2, n, heads * d) @ blk.out.weight.T + blk.out.bias
    torch.testing.assert_close(got, want)
    # tokens do not mix: changing token 0 leaves the attention output of the others unchanged
    x2 = x.clone()
    x2[:, 0] += 1.0
    torch.testing.assert_close(blk.attn(x2, x2, pos_embed=pos)[:, 1:], got[:, 1:])


def test_fourier_and_sine_embeddings_match_formulas():
    x = torch.rand(7, 2, dtype=torch.float64) * 3
    got = fourier_features(x, dim=12, max_freq=5, cat_orig=False)
    nb = 6
    scales = [2.0 ** (math.log2(5) * j / (nb - 1)) for j in range(nb)]
    want = torch.tensor([[math.sin(float(x[i, c]) * s * math.pi) for c in range(2) for s in scales] for i in range(7)],
                        dtype=torch.float64)
    torch.testing.assert_close(got, want)
    got99 = fourier_features(torch.rand(4, 3, dtype=torch.float64), dim=96, max_freq=8, cat_orig=True)
    assert got99.shape == (4, 99)

    h, w, nf = 3, 4, 6
    pos = sine_position_embedding(1, h, w, nf)[0].double()   # (2nf, h, w)
    for c in range(nf):
        for i in range(h):
            for j in range(w):
                yv = (i + 1) / (h + 1e-6) * 2 * math.pi
                xv = (j + 1) / (w + 1e-6) * 2 * math.pi
                dim_t = 10000 ** (2 * (c // 2) / nf)
                fn = math.sin if c % 2 == 0 else math.cos
                assert abs(pos[c, i, j] - fn(yv / dim_t)) < 1e-5
                assert abs(pos[nf + c, i, j] - fn(xv / dim_t)) < 1e-5


def test_v2_ray_embedding_polar_azimuth_formula():
    head = DepthHeadV2(UniDepthConfig(version="v2", embed_dim=64, depth=4, num_heads=1, hidden_dim=16,
                                      output_idx=(1, 2, 3, 4)))
    K = torch.tensor([[[5.0, 0, 2.0], [0, 6.0, 1.5], [0, 0, 1]]])
    rays = unit_rays(K, 3, 4).reshape(1, 12, 3)
    got = head.embed_rays(rays, (3, 4), (3, 4))[0].double()
    nb = 8
    scales = [2.0 ** (math.log2(2) * j / (nb - 1)) for j in range(nb)]  # max_freq = max(3,4)//2 = 2
    for t in range(12):
        i, j = divmod(t, 4)
        r = torch.tensor([(j + 0.5 - 2.0) / 5.0, (i + 0.5 - 1.5) / 6.0, 1.0], dtype=torch.float64)
        r = r / r.norm()
        polar = math.acos(r[2])
        xs = max(abs(float(r[0])), 1e-3) * (1 if r[0] >= 0 else -1)
        az = math.atan2(float(r[1]), xs)
        want = [math.sin(a * s * math.pi) for a in (polar, az) for s in scales]
        torch.testing.assert_close(got[t], torch.tensor(want, dtype=torch.float64), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ camera heads

def test_v2_camera_intrinsics_formula():
    x = torch.tensor([[0.3, -0.2, 0.4, -1.1]])
    K = CameraHeadV2.intrinsics(x, 28, 70)[0].double()
    diag = math.sqrt(28 ** 2 + 70 ** 2)
    assert abs(K[0, 0] - math.exp(0.3) * 0.7 * diag) < 1e-4
    assert abs(K[1, 1] - math.exp(-0.2) * 0.7 * diag) < 1e-4
    assert abs(K[0, 2] - 70 / (1 + math.exp(-0.4))) < 1e-4
    assert abs(K[1, 2] - 28 / (1 + math.exp(1.1))) < 1e-4
    assert K[2, 2] == 1 and K[0, 1] == 0


def test_v2_infer_intrinsics_undo_resize_and_padding():
    model = tiny("v2")
    b = 0.25
    with torch.no_grad():
        model.pixel_decoder.camera_layer.out_pinhole.proj2.weight.zero_()
        model.pixel_decoder.camera_layer.out_pinhole.proj2.bias.fill_(b)
    # 20x80 is wider than 2.5: padded to 32x80 (6 rows top, 6 bottom); budget 1568 px -> factor sqrt(1568/2560),
    # network input int(25.04)->28 x int(62.6)->70.
    out = model.infer(torch.rand(1, 3, 20, 80), pixel_budget=1568)
    f = math.sqrt(1568 / 2560)
    sig = 1 / (1 + math.exp(-b))
    want = torch.tensor([[math.exp(b) * 0.7 * math.hypot(28, 70) / f, 0, sig * 70 / f],
                         [0, math.exp(b) * 0.7 * math.hypot(28, 70) / f, sig * 28 / f - 6], [0, 0, 1]])
    torch.testing.assert_close(out.K[0], want, rtol=1e-5, atol=1e-4)
    assert out.depth.shape == (1, 20, 80) and out.points.shape == (1, 20, 80, 3)
    assert out.confidence.shape == (1, 20, 80) and bool((out.confidence > 0).all())


def test_v2old_infer_intrinsics_and_points_at_pixel_centres():
    model = tiny("v2old")
    b = -0.3
    with torch.no_grad():
        model.pixel_decoder.camera_layer.out.proj2.weight.zero_()
        model.pixel_decoder.camera_layer.out.proj2.bias.fill_(b)
    # 30x40 with 12 tokens: h = ceil(sqrt(12/(4/3)) - .5) = 3, w = ceil(4 - .5) = 4 -> 42x56, ratio 42/30
    out = model.infer(torch.rand(1, 3, 30, 40), pixel_budget=12 * 196)
    ratio = 42 / 30
    sig = 1 / (1 + math.exp(-b))
    fx = math.exp(b) * 56 / 2 / ratio
    want = torch.tensor([[fx, 0, sig * 56 / ratio], [0, fx, sig * 42 / ratio], [0, 0, 1]])
    torch.testing.assert_close(out.K[0], want, rtol=1e-5, atol=1e-4)
    z = out.depth[0].double()
    u = torch.arange(40, dtype=torch.float64) + 0.5
    v = torch.arange(30, dtype=torch.float64) + 0.5
    K = want.double()
    X = (u[None, :] - K[0, 2]) / K[0, 0] * z
    Y = (v[:, None] - K[1, 2]) / K[1, 1] * z
    pts = out.points[0].double()
    torch.testing.assert_close(pts, torch.stack([X, Y, z], -1), rtol=1e-5, atol=1e-5)
    assert bool((z > 0).all())          # softplus output


def test_v2old_depth_formula_from_logdepth_scale_shift():
    model = tiny("v2old")
    seen = {}
    model.pixel_decoder.depth_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("d", o))
    model.pixel_decoder.global_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("g", o))
    torch.manual_seed(5)
    with torch.no_grad():
        out = model.forward_network(torch.randn(1, 3, 42, 56))
    ld = seen["d"][0].double()
    scale, shift = (t.double() for t in seen["g"])
    mu = ld.mean(dim=(-2, -1), keepdim=True)
    var = ((ld - mu) ** 2).mean(dim=(-2, -1), keepdim=True)
    y = (torch.exp((ld - mu) / torch.sqrt(var + 1e-5)) + shift) * scale
    want = torch.log1p(torch.exp(10 * y)) / 10
    torch.testing.assert_close(out["depth"].double(), want, rtol=1e-5, atol=1e-6)
    assert out["depth"].shape == (1, 1, 42, 56)


def test_v2_radius_confidence_formula_and_rays_from_predicted_K():
    model = tiny("v2")
    seen = {}
    model.pixel_decoder.depth_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("d", o))
    torch.manual_seed(6)
    with torch.no_grad():
        out = model.forward_network(torch.randn(1, 3, 28, 42))
    ld, lc = seen["d"][0].double(), seen["d"][1].double()
    torch.testing.assert_close(out["radius"].double(), torch.exp(ld.clamp(-8, 8) + 2), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["confidence"].double(), torch.exp(lc.clamp(-8, 8)), rtol=1e-6, atol=1e-6)
    K = out["K"][0].double()
    u = torch.arange(42, dtype=torch.float64) + 0.5
    v = torch.arange(28, dtype=torch.float64) + 0.5
    r = torch.stack(torch.broadcast_tensors(((u[None, :] - K[0, 2]) / K[0, 0]), ((v[:, None] - K[1, 2]) / K[1, 1]),
                                            torch.ones(28, 42, dtype=torch.float64)), -1)
    r = r / r.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out["rays"][0].double(), r.reshape(-1, 3), atol=1e-6, rtol=0)


def test_v2_known_camera_rays_and_points():
    model = tiny("v2")
    K = torch.tensor([[30.0, 0, 20.0], [0, 32.0, 15.0], [0, 0, 1]])
    # 28x42 with a 1176 px budget: factor 1, no padding -> the output grid is the network grid
    out = model.infer(torch.rand(1, 3, 28, 42), camera_K=K, pixel_budget=28 * 42)
    torch.testing.assert_close(out.K[0], K)
    assert not torch.allclose(out.K_predicted[0], K)
    pts = out.points[0].double()
    u = torch.arange(42, dtype=torch.float64) + 0.5
    v = torch.arange(28, dtype=torch.float64) + 0.5
    r = torch.stack(torch.broadcast_tensors((u[None, :] - 20) / 30, (v[:, None] - 15) / 32,
                                            torch.ones(28, 42, dtype=torch.float64)), -1)
    r = r / r.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(pts / pts.norm(dim=-1, keepdim=True), r, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.depth[0], out.points[0, ..., 2])


# ------------------------------------------------------------------------------------------------ input rules

@pytest.mark.parametrize("hw,net", [((368, 512), (392, 532)), ((1080, 1920), (588, 1036)), ((336, 596), (336, 602))])
def test_v2_resize_worked_examples(hw, net):
    pads, padded, factor, got = v2_network_shape(*hw)
    assert got == net and pads == (0, 0, 0, 0) and padded == hw


def test_v2_aspect_padding_and_levels():
    pads, padded, _, _ = v2_network_shape(20, 80)            # ratio 4 > 2.5: pad rows to int(80 / 2.5) = 32
    assert pads == (0, 0, 6, 6) and padded == (32, 80)
    pads, padded, _, _ = v2_network_shape(400, 100)          # ratio 0.25 < 0.5: pad columns to 200
    assert pads == (50, 50, 0, 0) and padded == (400, 200)
    assert v2_pixel_bounds(0) == (200000, 240000) and v2_pixel_bounds(9) == (560000, 600000)
    assert v2_pixel_bounds(None) == (200000, 600000)
    with pytest.raises(MoGe4DInputError, match="resolution_level"):
        v2_pixel_bounds(10)
    with pytest.raises(MoGe4DInputError, match="pixel_budget"):
        v2_pixel_bounds(None, pixel_budget=100)


@pytest.mark.parametrize("hw,net", [((368, 512), (588, 812)), ((336, 596), (518, 924)), ((480, 640), (588, 784))])
def test_v2old_resize_worked_examples(hw, net):
    got, ratio = v2old_network_shape(*hw, v2old_token_budget(None))
    assert got == net and abs(ratio - net[0] / hw[0]) < 1e-12


def test_v2old_levels():
    assert v2old_token_budget(None) == 2400 and v2old_token_budget(0) == 1400 and v2old_token_budget(5) == 1900
    with pytest.raises(MoGe4DInputError, match="resolution_level"):
        v2old_token_budget(11)


def test_input_scaling_rules():
    img = torch.rand(1, 3, 4, 5)
    torch.testing.assert_close(prepare_rgb(img, torch.device("cpu")), (img - MEAN) / STD)
    u8 = (img * 255).round().to(torch.uint8)
    torch.testing.assert_close(prepare_rgb(u8, torch.device("cpu")), (u8.float() / 255 - MEAN) / STD)
    torch.testing.assert_close(prepare_rgb(img * 255, torch.device("cpu")), (img - MEAN) / STD)
    signed = img * 2 - 1                                  # MoGe4D's [-1, 1]: used as already normalised
    torch.testing.assert_close(prepare_rgb(signed, torch.device("cpu")), signed)


@pytest.mark.parametrize("bad,match", [
    (torch.rand(1, 1, 20, 20), "grey"), (torch.rand(1, 4, 20, 20), "RGBA"), (torch.rand(1, 20, 20, 3), "channel-last"),
    (torch.rand(1, 3, 1, 1), "too small"), (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    (torch.ones(1, 3, 8, 8, dtype=torch.int32), "dtype")])
def test_bad_images_are_refused(bad, match):
    with pytest.raises(MoGe4DInputError, match=match):
        prepare_rgb(bad, torch.device("cpu"))


def test_small_image_and_batch_and_geometry():
    model = tiny("v2old")
    img = torch.rand(2, 3, 8, 10)                          # smaller than one 14-px patch: upsampled to the grid
    out = model.infer(img, pixel_budget=6 * 196)
    assert isinstance(out, DepthPrediction) and out.batch_size == 2
    assert out.depth.shape == (2, 8, 10) and out.K.shape == (2, 3, 3)
    g = to_geometry(out, img, index=1)
    assert isinstance(g, Geometry) and g.image.shape == (8, 10, 3) and bool(g.valid.all())
    with pytest.raises(MoGe4DInputError, match="camera_K"):
        model.infer(img, camera_K=torch.eye(4), pixel_budget=6 * 196)
    with pytest.warns(UserWarning, match="aspect ratio"):
        model.infer(torch.rand(1, 3, 10, 40), pixel_budget=6 * 196)


def test_depth_prediction_checks_shapes():
    """A DepthPrediction whose tensors disagree is refused at construction, naming the field."""
    z = torch.ones(2, 4, 5)
    good = dict(depth=z, points=torch.ones(2, 4, 5, 3), K=torch.eye(3).repeat(2, 1, 1),
                K_predicted=torch.eye(3).repeat(2, 1, 1), confidence=torch.ones(2, 4, 5))
    assert DepthPrediction(**good).batch_size == 2
    with pytest.raises(MoGe4DInputError, match=r"DepthPrediction\.points: expected shape \(2,4,5,3\)"):
        DepthPrediction(**{**good, "points": torch.ones(2, 5, 4, 3)})
    with pytest.raises(MoGe4DInputError, match=r"DepthPrediction\.K:"):
        DepthPrediction(**{**good, "K": torch.eye(3)})
    with pytest.raises(MoGe4DInputError, match=r"DepthPrediction\.confidence:"):
        DepthPrediction(**{**good, "confidence": torch.ones(1, 4, 5)})
