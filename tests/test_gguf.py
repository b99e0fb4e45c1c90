"""GGUF: a tiny 4D-STraG quantised by ``python -m moge4d_core quantize --gguf TYPE`` and loaded back by load_strag.

The reference is built here from the written file with the ``gguf`` package's own ``quants.dequantize`` (not
our code, not diffusers'), put into a float32 STraG; the loaded GGUF model (diffusers' GGUFLinear) must match it:
unquantised tensors exactly, quantised ones to diffusers' float16 dequantisation (relative 2e-3 of the tensor's
largest value; diffusers' CPU path multiplies the block scales in float16).
"""
import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from moge4d_core.cli import main  # noqa: E402
from moge4d_core.errors import MoGe4DInputError  # noqa: E402
from moge4d_core.loading import wan_keys  # noqa: E402
from moge4d_core.loading.wan_dit import load_strag, load_vism_base, save_wan_dit  # noqa: E402
from moge4d_core.models.wan_dit.config import dit_config  # noqa: E402
from moge4d_core.models.wan_dit.model import STraGDiT  # noqa: E402

torch.set_num_threads(1)
# widths that are multiples of 256, so the K types apply (as in the 14B models)
CFG = dict(arch="moge4d_strag", in_dim=64, image_dim=16, ref_conv_in_dim=16, mpm_feature_dim=256, dim=256,
           ffn_dim=512, num_heads=2, num_layers=2, text_dim=32, freq_dim=16)
# relative RMS error of the quantised block weights, per type (a sanity bound on our quantisers)
MAX_ERROR = {"Q8_0": 0.01, "Q6_K": 0.03, "Q5_K_M": 0.05, "Q4_K_M": 0.1}


@pytest.fixture(scope="module")
def strag_file(tmp_path_factory):
    torch.manual_seed(0)
    m = STraGDiT(**dit_config(**CFG)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("gguf") / "strag.safetensors"
    save_wan_dit(m, path)
    return path, m


def reference_from_file(path, like: STraGDiT) -> tuple[STraGDiT, dict]:
    """float32 STraG holding gguf's own dequantisation of every tensor in ``path``; and {diffusers name: type}."""
    reader = gguf.GGUFReader(str(path))
    shapes = {k: v.shape for k, v in like.state_dict().items()}
    state, types = {}, {}
    for t in reader.tensors:
        name = wan_keys.original_to_diffusers(t.name)
        arr = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        state[name] = torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(shapes[name])
        types[name] = t.tensor_type.name
    ref = STraGDiT(**like.config).eval()
    ref.load_state_dict(state)
    return ref, types


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, 2, 4, 4, generator=g), torch.tensor([400.0]), torch.randn(1, 5, 32, generator=g),
            torch.randn(1, 257, 16, generator=g), torch.randn(1, 16, 2, 4, 4, generator=g), None,
            torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 16, 4, 4, generator=g),
            torch.randn(1, 196, 256, generator=g))


def velocity(m):
    with torch.no_grad():
        out = m(*inputs())
    return out if isinstance(out, torch.Tensor) else (out.sample if hasattr(out, "sample") else out[0])


@pytest.mark.parametrize("qtype", ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"])
def test_quantize_command_and_loader_match_gguf_dequantize(strag_file, tmp_path, qtype, capsys):
    from diffusers.quantizers.gguf.utils import GGUFLinear, dequantize_gguf_tensor

    src, original = strag_file
    out = tmp_path / f"strag-{qtype}.gguf"
    assert main(["quantize", "--gguf", qtype, str(src), str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out and not list(tmp_path.glob("*.partial"))
    ref, types = reference_from_file(out, original)
    from moge4d_core.loading.gguf import gguf_sizes

    assert 0 <= out.stat().st_size - gguf_sizes(original)[qtype] < 32 * 1024     # plan's size = the file's tensors

    base = {"Q5_K_M": "Q5_K", "Q4_K_M": "Q4_K"}.get(qtype, qtype)
    assert types["blocks.0.attn1.to_q.weight"] == base
    assert types["blocks.0.spatial_guidance_self.spatial_guide.1.weight"] == base
    if qtype.endswith("_M"):       # llama.cpp's mix: V and FFN-out of the last block (of 2) in Q6_K
        assert types["blocks.1.attn1.to_v.weight"] == types["blocks.1.ffn.net.2.weight"] == "Q6_K"
        assert types["blocks.0.attn1.to_v.weight"] == base
    assert types["blocks.0.norm2.weight"] == "F32" and types["patch_embedding.weight"] == "BF16"

    model = load_strag(out, dtype=torch.float32, compute_dtype=torch.float32)
    assert "GGUF" in model.load_info.format
    assert isinstance(model.blocks[1].ffn.net[2], GGUFLinear) and isinstance(model.blocks[0].attn2.to_k, GGUFLinear)
    assert model.blocks[0].attn1.to_q.weight.quant_type == gguf.GGMLQuantizationType[base]
    for name, w in model.state_dict().items():
        want = ref.state_dict()[name]
        got = dequantize_gguf_tensor(w).float().reshape(want.shape) if hasattr(w, "quant_type") else w
        if hasattr(w, "quant_type"):   # diffusers dequantises in float16 (d, d*scale, products): its rounding
            err = ((got - want).abs() / want.abs().max()).max().item()
            assert err < 2e-3, (name, err)
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    v, v_ref = velocity(model), velocity(ref)
    assert ((v - v_ref).abs().max() / v_ref.abs().max()).item() < 2e-3

    w0, wq = original.blocks[0].ffn.net[0].proj.weight, ref.blocks[0].ffn.net[0].proj.weight
    assert ((wq - w0).pow(2).mean().sqrt() / w0.pow(2).mean().sqrt()).item() < MAX_ERROR[qtype]


def test_quantize_refusals(strag_file, tmp_path, capsys):
    src, _ = strag_file
    assert main(["quantize", "--gguf", "Q8_0", str(src), str(tmp_path / "x.safetensors")]) == 2
    assert "must end in .gguf" in capsys.readouterr().err
    out = tmp_path / "s.gguf"
    assert main(["quantize", "--gguf", "Q8_0", str(src), str(out)]) == 0
    with pytest.raises(MoGe4DInputError, match="expected a Wan2.1-Fun-InP"):
        load_vism_base(out)
    with pytest.raises(MoGe4DInputError, match="already quantised"):
        load_strag(out, dtype=torch.float8_e4m3fn)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF not really")
    with pytest.raises(MoGe4DInputError, match="bad.gguf"):
        load_strag(bad)


def test_lora_on_gguf_weights_adds_the_same_delta(strag_file, tmp_path):
    """A LoRA merged into a GGUF model (packed weights: a low-rank branch) gives dequant(W) x + s (a/r) B A x."""
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    from moge4d_core.loading.lora import merge_loras

    src, _ = strag_file
    out = tmp_path / "s.gguf"
    assert main(["quantize", "--gguf", "Q4_K_M", str(src), str(out)]) == 0
    model = load_strag(out, dtype=torch.float32, compute_dtype=torch.float32)
    lin = model.blocks[0].attn1.to_q
    g = torch.Generator().manual_seed(5)
    a1, b1 = torch.randn(3, 256, generator=g), torch.randn(256, 3, generator=g)
    a2, b2 = torch.randn(2, 256, generator=g), torch.randn(256, 2, generator=g)
    first = {"lora_unet__blocks_0_self_attn_q.lora_down.weight": a1, "lora_unet__blocks_0_self_attn_q.lora_up.weight": b1,
             "lora_unet__blocks_0_self_attn_q.alpha": torch.tensor(1.5)}
    second = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": a2,
              "diffusion_model.blocks.0.self_attn.q.lora_B.weight": b2}
    merge_loras(model, [(first, 0.55), (second, 1.0)])
    x = torch.randn(4, 256, generator=g)
    w = dequantize_gguf_tensor(lin.weight).float()
    want = x @ (w + 0.55 * 0.5 * b1 @ a1 + b2 @ a2).T + lin.bias
    torch.testing.assert_close(lin(x), want, rtol=1e-4, atol=1e-4)
    assert not [k for k in model.state_dict() if "moge4d_lora" in k]       # the branch is not part of the weights
