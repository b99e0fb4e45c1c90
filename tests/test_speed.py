"""Attention backend per model, regional compile, --lora specs and the few-step preset (pipeline.speed)."""
import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.models.wan_dit.config import dit_config
from moge4d_core.models.wan_dit.model import STraGDiT
from moge4d_core.pipeline.settings import SamplerSettings
from moge4d_core.pipeline.speed import (check_attention_backend, check_lora_specs, compile_blocks, parse_lora_spec,
                                        preset_settings, set_attention_backend)

torch.set_num_threads(1)


def tiny_strag(seed=0):
    torch.manual_seed(seed)
    cfg = dit_config(arch="moge4d_strag", in_dim=64, image_dim=16, ref_conv_in_dim=16, dim=24, ffn_dim=48,
                     num_heads=2, num_layers=2, text_dim=32, freq_dim=16)
    m = STraGDiT(**cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def run(m, seed=1):
    """Positional call (the forward's keyword names are diffusers'), velocity tensor back."""
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, 16, 2, 4, 4, generator=g)
    args = (lat, torch.tensor([500.0]), torch.randn(1, 5, 32, generator=g), torch.randn(1, 257, 16, generator=g),
            torch.randn(1, 16, 2, 4, 4, generator=g), None, torch.randn(1, 16, 2, 4, 4, generator=g))
    with torch.no_grad():
        out = m(*args)
    return out if isinstance(out, torch.Tensor) else (out.sample if hasattr(out, "sample") else out[0])


def processor_backends(m):
    return {getattr(mod.processor, "_attention_backend", "absent") for mod in m.modules()
            if hasattr(mod, "processor") and mod.processor is not None}


def test_backend_is_set_per_model_not_process_wide():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    a, b = tiny_strag(), tiny_strag()
    before = _AttentionBackendRegistry._active_backend
    ref = run(a)
    assert set_attention_backend(a, "_native_math") == "_native_math"
    assert {str(getattr(x, "value", x)) for x in processor_backends(a)} == {"_native_math"}
    assert processor_backends(b) == {None}                       # the other model is untouched
    assert _AttentionBackendRegistry._active_backend == before  # and so is the process-wide backend
    torch.testing.assert_close(run(a), ref, rtol=1e-5, atol=1e-5)


def test_missing_package_falls_back_to_native_with_one_message():
    import importlib.util

    if importlib.util.find_spec("sageattention") is not None:
        pytest.skip("sageattention is installed here; the fallback needs a missing package")
    m = tiny_strag()
    said = []
    assert set_attention_backend(m, "sage", label="4D-STraG", report=said.append) == "native"
    assert len(said) == 1 and "sage" in said[0] and "native" in said[0] and "4D-STraG" in said[0]
    assert {str(getattr(x, "value", x)) for x in processor_backends(m)} == {"native"}


def test_unknown_backend_is_refused():
    with pytest.raises(MoGe4DInputError, match="unknown attention backend.*native"):
        check_attention_backend("flsh")


def test_regional_compile_matches_eager():
    try:
        import torch._inductor.config  # noqa: F401
    except Exception as exc:                                          # pragma: no cover
        pytest.skip(f"torch.compile's inductor cannot be imported here: {exc}")
    m = tiny_strag()
    eager = run(m)
    compile_blocks(m, fullgraph=True)
    try:
        compiled = run(m)
    except Exception as exc:                                          # no C compiler etc.
        if "compiler" in str(exc).lower() or "InductorError" in type(exc).__name__:
            pytest.skip(f"torch.compile cannot run on this machine: {str(exc).splitlines()[0]}")
        raise
    assert all(getattr(b, "_compiled_call_impl", None) is not None for b in m.blocks)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)


def test_lora_spec_and_preset(tmp_path):
    assert parse_lora_spec("a/b.safetensors:0.8") == (tmp_path.__class__("a/b.safetensors"), 0.8)
    assert parse_lora_spec("C:\\l\\x.safetensors:1.5")[1] == 1.5
    assert parse_lora_spec("x.safetensors")[1] == 1.0
    with pytest.raises(MoGe4DInputError, match="no such file"):
        check_lora_specs([str(tmp_path / "none.safetensors:1")])
    from safetensors.torch import save_file

    bad = tmp_path / "sd.safetensors"
    save_file({"lora_te_x.lora_down.weight": torch.zeros(1, 2)}, str(bad))
    with pytest.raises(MoGe4DInputError, match="--lora .*sd.safetensors.*lora_te"):
        check_lora_specs([f"{bad}:1.0"])
    fast = preset_settings("fast", SamplerSettings())
    assert (fast.steps, fast.cfg, fast.shift, fast.solver) == (4, 1.0, 5.0, "euler")
    assert preset_settings(None, SamplerSettings()) == SamplerSettings()
