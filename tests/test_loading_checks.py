"""Damaged weight files are refused at load with a message naming the file (and the tensor), through the
loaders users call: NaN / inf in a weight or a LoRA alpha, random bytes or an empty file as ``.pth``."""
import os

import pytest
import torch
from safetensors.torch import save_file

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.loading.common import check_finite, load_file_state_dict
from moge4d_core.loading.lora import load_kohya_lora, parse_kohya_lora
from moge4d_core.loading.wan_dit import load_strag

from test_loading_wan_dit import heads, original_sd, tiny

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def strag_sd():
    return original_sd(tiny())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_non_finite_weight_is_refused_naming_the_tensor(tmp_path, strag_sd, bad, suffix):
    sd = dict(strag_sd)
    w = sd["blocks.1.ffn.0.weight"].clone()
    w[3, 5] = bad
    sd["blocks.1.ffn.0.weight"] = w
    f = tmp_path / f"strag{suffix}"
    save_file(sd, str(f)) if suffix == ".safetensors" else torch.save(sd, f)
    with pytest.raises(MoGe4DInputError, match=r"strag\.\w+: tensor 'blocks\.1\.ffn\.0\.weight' holds 1 NaN/inf"):
        load_strag(f, config=heads())


def test_finite_file_still_loads(tmp_path, strag_sd):
    f = tmp_path / "ok.safetensors"
    save_file(strag_sd, str(f))
    model = load_strag(f, config=heads(), dtype=torch.float32)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16, torch.float16])
def test_low_precision_nan_is_found(dtype):
    t = torch.zeros(4, 4).to(dtype)
    check_finite({"w": t}, "f")                              # all finite: passes
    t = t.clone()
    t.view(torch.uint8 if t.element_size() == 1 else torch.int16)[1, 2] = 0x7F if t.element_size() == 1 else 0x7FC0
    if dtype == torch.float16:
        t[1, 2] = float("nan")
    with pytest.raises(MoGe4DInputError, match="tensor 'w' holds 1 NaN/inf"):
        check_finite({"w": t}, "f")


def test_integer_tensors_are_not_checked():
    check_finite({"step": torch.tensor([2 ** 31 - 1]), "flags": torch.ones(3, dtype=torch.bool)}, "f")


def _kohya(alpha):
    return {"lora_unet__blocks_0_self_attn_q.lora_down.weight": torch.randn(4, 24),
            "lora_unet__blocks_0_self_attn_q.lora_up.weight": torch.randn(24, 4),
            "lora_unet__blocks_0_self_attn_q.alpha": torch.tensor(alpha)}


def test_non_finite_lora_alpha_is_refused_from_a_file_and_from_a_dict(tmp_path):
    f = tmp_path / "lora_diffusion_pytorch_model.safetensors"
    save_file(_kohya(float("inf")), str(f))
    with pytest.raises(MoGe4DInputError, match=r"lora_diffusion_pytorch_model\.safetensors: tensor "
                                               r"'lora_unet__blocks_0_self_attn_q\.alpha'"):
        load_kohya_lora(f)
    with pytest.raises(MoGe4DInputError, match=r"my lora: tensor 'lora_unet__blocks_0_self_attn_q\.alpha'"):
        parse_kohya_lora(_kohya(float("nan")), source="my lora")
    assert parse_kohya_lora(_kohya(2.0))["blocks.0.self_attn.q"].alpha == 2.0


def test_random_bytes_as_pth_say_it_is_not_a_checkpoint(tmp_path):
    f = tmp_path / "vitb_pretrain.torch"
    f.write_bytes(os.urandom(4096).replace(b"PK", b"pk").lstrip(b"\x80") or b"x")
    with pytest.raises(MoGe4DInputError, match=r"vitb_pretrain\.torch: this is not a PyTorch checkpoint") as exc:
        load_file_state_dict(f)
    assert "mmap" not in str(exc.value)
    html = tmp_path / "model.pth"
    html.write_bytes(b"<!DOCTYPE html><html>Rate limit exceeded</html>")
    with pytest.raises(MoGe4DInputError, match=r"model\.pth: this is not a PyTorch checkpoint .*download it again"):
        load_file_state_dict(html)


def test_empty_and_truncated_pth(tmp_path, strag_sd):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(MoGe4DInputError, match=r"empty\.pth: the file is empty"):
        load_file_state_dict(empty)
    full = tmp_path / "full.pth"
    torch.save(strag_sd, full)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(MoGe4DInputError, match=r"trunc\.pth: could not be read .*truncated"):
        load_file_state_dict(trunc)


def test_legacy_pickle_container_still_loads(tmp_path):
    f = tmp_path / "legacy.pth"
    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(sd, f, _use_new_zipfile_serialization=False)
    assert torch.equal(load_file_state_dict(f)["w"], sd["w"])
