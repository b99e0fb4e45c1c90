"""Memory modes on a tiny 4D-STraG (CPU): fp8 weight storage (diffusers layerwise casting and our scaled
variant), block-level group offloading and gradient checkpointing."""
import pytest
import torch
import torch.nn as nn

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.models import fp8
from moge4d_core.pipeline import memory
from moge4d_core.models.wan_dit import STraGDiT, dit_config

torch.set_num_threads(1)
FP8 = torch.float8_e4m3fn


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = dit_config(arch="moge4d_strag", dim=48, ffn_dim=96, num_heads=4, num_layers=2, in_dim=64, text_dim=32,
                       freq_dim=16, image_dim=16, ref_conv_in_dim=16, mpm_feature_dim=8)
    m = STraGDiT(**cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.normal_(0, 0.1 if p.ndim > 1 else 0.3)
    return m


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(hidden_states=r(1, 16, 2, 8, 8), timestep=torch.tensor([500.0]),
                encoder_hidden_states=r(1, 5, 32), encoder_hidden_states_image=r(1, 257, 16),
                control=r(1, 16, 2, 8, 8), depth=r(1, 16, 2, 8, 8), ref_latent=r(1, 16, 8, 8),
                motion_features=r(1, 196, 8))


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def fwd(m, inp):
    with torch.no_grad():
        return m(**inp)


@pytest.mark.parametrize("scaled", [False, True])
def test_fp8_storage_keeps_outputs_close(scaled):
    m, inp = tiny(), inputs()
    y0 = fwd(m, inp)
    names = fp8.enable_fp8_storage(m, compute_dtype=torch.float32, scaled=scaled)
    mods = dict(m.named_modules())
    assert "blocks.0.attn1.to_q" in names and "blocks.1.ffn.net.2" in names
    assert "blocks.0.spatial_guidance_self.spatial_guide.1" in names
    assert all(mods[n].weight.dtype == FP8 for n in names)
    assert not any(n.startswith("condition_embedder") or n == "proj_out" for n in names)  # skipped, as in diffusers
    assert m.patch_embedding.weight.dtype == torch.float32 and m.ref_conv.weight.dtype == torch.float32
    y = fwd(m, inp)
    assert y.dtype == torch.float32
    err = rel(y, y0)
    assert 1e-4 < err < 0.08  # fp8 really changed the weights, and the output stays close


def test_scaled_fp8_beats_plain_cast_for_small_weights():
    """Wan's Linear weights are ~1e-2 or smaller: plain e4m3fn flushes many to subnormals, the scale does not."""
    torch.manual_seed(0)
    x = torch.randn(64, 256)
    lins = []
    for scaled in (False, True):
        lin = nn.Linear(256, 256)
        with torch.no_grad():
            lin.weight.normal_(0, 2e-3)
        lins.append(lin)
    lins[1].load_state_dict(lins[0].state_dict())
    ref = lins[0](x).detach()
    w_plain = lins[0].weight.detach().to(FP8).float()
    plain_err = rel(nn.functional.linear(x, w_plain, lins[0].bias), ref)
    w8, s = fp8.quantize_fp8(lins[1].weight.detach())
    scaled_err = rel(nn.functional.linear(x, w8.float() * s, lins[1].bias), ref)
    assert scaled_err < 0.05 < plain_err
    assert plain_err > 3 * scaled_err


def test_already_fp8_weights_keep_their_scale():
    lin = nn.Linear(8, 4)
    w = torch.randn(4, 8) * 1e-3
    w8, s = fp8.quantize_fp8(w)
    lin.weight = nn.Parameter(w8, requires_grad=False)

    class Wrap(nn.Module):
        _skip_layerwise_casting_patterns = None

        def __init__(self):
            super().__init__()
            self.lin = lin

    wrap = Wrap()
    fp8.enable_fp8_storage(wrap, compute_dtype=torch.float32, scales={"lin": s})
    x = torch.randn(3, 8)
    assert torch.equal(wrap.lin.weight.view(torch.uint8), w8.view(torch.uint8))  # not re-quantised
    assert torch.allclose(wrap.lin(x), nn.functional.linear(x, w8.float() * s, lin.bias), atol=0, rtol=0)
    with pytest.raises(MoGe4DInputError, match="storage_dtype"):
        fp8.enable_fp8_storage(wrap, storage_dtype=torch.float16)


def test_block_offload_cpu_to_cpu_is_exact():
    m, inp = tiny(), inputs()
    y0 = fwd(m, inp)
    memory.enable_block_offload(m, onload_device="cpu", offload_device="cpu", num_blocks_per_group=1)
    from diffusers.hooks.hooks import HookRegistry

    assert HookRegistry.check_if_exists_or_initialize(m.blocks[0]).hooks  # offload hooks are installed
    assert torch.equal(fwd(m, inp), y0)


def test_gradient_checkpointing_same_gradients():
    inp = inputs()
    grads = []
    for on in (False, True):
        m = tiny()
        m.train()
        memory.set_gradient_checkpointing(m, on)
        assert m.gradient_checkpointing is on
        loss = m(**inp).square().mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert "blocks.1.spatial_guidance_ffn.gate" in grads[0] and "feature_adapter.0.weight" in grads[0]
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5), n
