"""umT5 text encoder: Wan / ComfyUI (fp32, scaled-fp8) layouts, tokenizers, Wan's length + padding convention.

A tiny umT5 (vocab 64, d_model 32, 4 heads of 8, d_ff 48, 2 layers, 32 buckets, per-layer relative
bias) with random weights is written in Wan's original names; the ComfyUI layouts are produced here by
a hand-written name map. Outputs are compared with a float64 re-implementation of Wan's T5Encoder
(relative-position buckets, RMSNorm, unscaled attention, gated-GELU(tanh) FFN) that reads the Wan dict.
"""
from __future__ import annotations

import io
import math

import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.loading.text import load_text_encoder, load_umt5_tokenizer
from moge4d_core.models.conditioning import TEXT_LEN, TextContext
from moge4d_core.models.text import SentencePieceT5Tokenizer, encode_text

torch.set_num_threads(1)

VOCAB, DIM, HEADS, DKV, FF, LAYERS, BUCKETS, MAXDIST, EPS = 64, 32, 4, 8, 48, 2, 32, 128, 1e-6
WORDS = "a photo of cat dog the camera moves left right around statue quick brown fox jumps over lazy".split()
PROMPTS = ["a photo of a cat", "the camera moves left around the statue and the quick brown fox jumps over a lazy dog"]


# ----------------------------------------------------------------------------------------- fixtures
def _wan_state() -> dict:
    g = torch.Generator().manual_seed(0)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).contiguous()   # noqa: E731
    sd = {"token_embedding.weight": r(VOCAB, DIM), "norm.weight": 1 + r(DIM, scale=0.2)}
    inner = HEADS * DKV
    for i in range(LAYERS):
        b = f"blocks.{i}."
        sd.update({
            b + "norm1.weight": 1 + r(DIM, scale=0.2), b + "norm2.weight": 1 + r(DIM, scale=0.2),
            b + "attn.q.weight": r(inner, DIM, scale=DIM ** -0.5), b + "attn.k.weight": r(inner, DIM, scale=DIM ** -0.5),
            b + "attn.v.weight": r(inner, DIM, scale=DIM ** -0.5), b + "attn.o.weight": r(DIM, inner, scale=inner ** -0.5),
            b + "pos_embedding.embedding.weight": r(BUCKETS, HEADS, scale=0.5),
            b + "ffn.gate.0.weight": r(FF, DIM, scale=DIM ** -0.5), b + "ffn.fc1.weight": r(FF, DIM, scale=DIM ** -0.5),
            b + "ffn.fc2.weight": r(DIM, FF, scale=FF ** -0.5),
        })
    return sd


_TO_COMFY = {
    "norm1.weight": "layer.0.layer_norm.weight", "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight", "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight", "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight", "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_LINEARS = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")


def _comfy_state(wan: dict) -> dict:
    out = {"shared.weight": wan["token_embedding.weight"], "encoder.final_layer_norm.weight": wan["norm.weight"]}
    for k, v in wan.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            out[f"encoder.block.{i}.{_TO_COMFY[rest]}"] = v
    return out


def _quantise_comfy(comfy: dict, spiece: bytes) -> tuple[dict, dict]:
    """ComfyUI scaled-fp8 file: fp8 linears (W / s) + float32 scale_weight s, marker, scale_input, spiece_model.

    Returns the file dict and the dequantised weights (fp8 value * s) in Wan names for the reference.
    """
    out, deq = {}, {}
    for k, v in comfy.items():
        if k.endswith(".weight") and k.rsplit(".", 2)[-2] in _LINEARS:
            s = v.abs().max() / 448.0
            q = (v / s).to(torch.float8_e4m3fn)
            out[k] = q
            out[k[: -len(".weight")] + ".scale_weight"] = s.float().reshape(())
            out[k[: -len(".weight")] + ".scale_input"] = torch.ones(())
            deq[k] = q.float() * s
        elif k == "shared.weight":
            out[k] = v.half()                       # unscaled tensors: dtype as stored (here fp16)
            deq[k] = v.half().float()
        else:
            out[k] = v
            deq[k] = v
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    out["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    inv = {v: k for k, v in _TO_COMFY.items()}
    wan = {"token_embedding.weight": deq["shared.weight"], "norm.weight": deq["encoder.final_layer_norm.weight"]}
    for k, v in deq.items():
        if k.startswith("encoder.block."):
            _, _, i, rest = k.split(".", 3)
            wan[f"blocks.{i}.{inv[rest]}"] = v
    return out, wan


def _hf_tokenizer_dir(path):
    """A tiny umT5-like tokenizer (Unigram, Metaspace, '</s>' appended, pad 0 / eos 1) saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -2.0 - 0.01 * i) for i, w in enumerate(WORDS)]
    vocab += [("\u2581", -5.0)] + [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tk = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tk.normalizer = normalizers.NFKC()
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(str(path))
    return path


def _spiece_model(vocab_size=40, pad=0, eos=1, unk=2) -> bytes:
    import sentencepiece as spm

    text = ["a photo of a cat sitting on a mat", "the quick brown fox jumps over the lazy dog",
            "camera moves left around the statue"] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=pad, eos_id=eos, unk_id=unk, bos_id=-1,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("t5")
    wan = _wan_state()
    spiece = _spiece_model()
    fp8, wan_deq = _quantise_comfy(_comfy_state(wan), spiece)
    paths = {"wan": d / "models_t5_umt5-xxl-enc-bf16.pth", "comfy": d / "umt5_xxl_fp16.safetensors",
             "fp8": d / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"}
    torch.save(wan, str(paths["wan"]))
    save_file(_comfy_state(wan), str(paths["comfy"]))
    save_file(fp8, str(paths["fp8"]))
    tok_dir = _hf_tokenizer_dir(d / "umt5-xxl")
    return dict(wan=wan, wan_deq=wan_deq, paths=paths, tok_dir=tok_dir, spiece=spiece, dir=d)


# ----------------------------------------------------------------------------------------- float64 reference
def _bucket(rel: torch.Tensor) -> torch.Tensor:
    """T5 bidirectional relative-position bucket (half the buckets per direction, log-spaced beyond 8)."""
    n = BUCKETS // 2
    out = (rel > 0).long() * n
    rel = rel.abs()
    exact = n // 2
    # float32, exactly like Wan / T5 compute it, so boundary distances fall into the same bucket
    large = exact + (torch.log(rel.float() / exact) / math.log(MAXDIST / exact) * (n - exact)).long()
    large = torch.clamp(large, max=n - 1)
    return out + torch.where(rel < exact, rel, large)


def _rms(x, w):
    return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + EPS)


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def t5_reference(sd: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Wan T5Encoder forward in float64 from Wan-named weights: ids/mask (B, L) -> (B, L, DIM)."""
    g = {k: v.double() for k, v in sd.items()}
    b, l = ids.shape
    x = g["token_embedding.weight"][ids]
    pos = torch.arange(l)
    buckets = _bucket(pos.view(1, -1) - pos.view(-1, 1))          # key - query
    neg = torch.where(mask.bool(), 0.0, float("-inf")).double().view(b, 1, 1, l)
    for i in range(LAYERS):
        w = lambda n: g[f"blocks.{i}.{n}"]                          # noqa: E731
        h = _rms(x, w("norm1.weight"))
        q, k, v = ((h @ w(f"attn.{n}.weight").t()).view(b, l, HEADS, DKV).transpose(1, 2) for n in "qkv")
        bias = w("pos_embedding.embedding.weight")[buckets].permute(2, 0, 1).unsqueeze(0)   # (1, H, L, L)
        att = torch.softmax(q @ k.transpose(-1, -2) + bias + neg, dim=-1)                   # no 1/sqrt(d)
        x = x + (att @ v).transpose(1, 2).reshape(b, l, HEADS * DKV) @ w("attn.o.weight").t()
        h = _rms(x, w("norm2.weight"))
        x = x + ((h @ w("ffn.fc1.weight").t()) * _gelu_tanh(h @ w("ffn.gate.0.weight").t())) @ w("ffn.fc2.weight").t()
    return _rms(x, g["norm.weight"])


def _reference_context(sd, tokenizer, prompts):
    out = tokenizer(prompts, padding="longest", return_tensors="pt", return_attention_mask=True) \
        if not isinstance(tokenizer, SentencePieceT5Tokenizer) else tokenizer(prompts, max_length=TEXT_LEN)
    ids, mask = out["input_ids"], out["attention_mask"]
    return t5_reference(sd, ids, mask), mask.sum(1)


def _assert_matches_reference(ctx: TextContext, ref: torch.Tensor, lengths: torch.Tensor, tol: float):
    assert ctx.embeddings.shape == (len(lengths), TEXT_LEN, DIM)
    assert torch.equal(ctx.lengths, lengths.long())
    for b, n in enumerate(lengths.tolist()):
        got, want = ctx.embeddings[b, :n].double(), ref[b, :n]
        err = (got - want).abs().max() / want.abs().max()
        assert err < tol, (b, float(err))
        assert torch.count_nonzero(ctx.embeddings[b, n:]) == 0       # Wan: zero past the valid length


# ----------------------------------------------------------------------------------------- tests
def test_wan_and_comfy_layouts_match_float64_reference_and_each_other(files):
    outs = {}
    for fmt in ("wan", "comfy"):
        model, tok = load_text_encoder(files["paths"][fmt], files["tok_dir"], dtype=torch.float32, device="cpu")
        assert model.encoder.embed_tokens.weight is model.shared.weight
        outs[fmt] = encode_text(model, tok, PROMPTS)
    ref, lengths = _reference_context(files["wan"], tok, PROMPTS)
    assert lengths.tolist()[0] == 6                 # 'a photo of a cat' = 5 pieces + </s>
    _assert_matches_reference(outs["wan"], ref, lengths, 1e-5)
    assert torch.equal(outs["wan"].embeddings, outs["comfy"].embeddings)    # bit-exact across layouts
    assert torch.equal(outs["wan"].lengths, outs["comfy"].lengths)


def test_dynamic_padding_equals_running_at_512(files):
    model, tok = load_text_encoder(files["paths"]["wan"], files["tok_dir"], dtype=torch.float32)
    ctx = encode_text(model, tok, PROMPTS)
    enc = tok(PROMPTS, padding="max_length", max_length=TEXT_LEN, truncation=True, return_tensors="pt")
    with torch.no_grad():
        full = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    for b, n in enumerate(ctx.lengths.tolist()):
        torch.testing.assert_close(ctx.embeddings[b, :n], full[b, :n], rtol=1e-5, atol=1e-6)


def test_scaled_fp8_file_dequantises_and_uses_embedded_tokenizer(files):
    model, tok = load_text_encoder(files["paths"]["fp8"], dtype=torch.float32)    # no tokenizer folder given
    assert isinstance(tok, SentencePieceT5Tokenizer)
    assert "scaled_fp8" in model.load_info.format and "embedded spiece_model" in model.load_info.files["tokenizer"]
    sd = model.state_dict()
    # weights are exactly fp8 * scale
    w = sd["encoder.block.1.layer.1.DenseReluDense.wi_0.weight"]
    assert torch.equal(w, files["wan_deq"]["blocks.1.ffn.gate.0.weight"].float())
    ctx = encode_text(model, tok, PROMPTS)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=files["spiece"])
    assert ctx.lengths.tolist() == [len(sp.encode(p)) + 1 for p in PROMPTS]
    ref_deq, lengths = _reference_context(files["wan_deq"], tok, PROMPTS)
    _assert_matches_reference(ctx, ref_deq, lengths, 1e-5)
    # against the unquantised weights: within the quantisation effect computed in float64 here
    ref_full, _ = _reference_context(files["wan"], tok, PROMPTS)
    quant_effect = max(float((ref_deq[b, :n] - ref_full[b, :n]).abs().max()) for b, n in enumerate(lengths.tolist()))
    assert quant_effect > 1e-4                      # fp8 really changed something, so the test can fail
    for b, n in enumerate(lengths.tolist()):
        diff = float((ctx.embeddings[b, :n].double() - ref_full[b, :n]).abs().max())
        assert diff <= quant_effect * 1.001 + 1e-5


def test_low_precision_load_and_output_dtype(files):
    model, tok = load_text_encoder(files["paths"]["comfy"], files["tok_dir"], dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    ctx = encode_text(model, tok, PROMPTS)
    assert ctx.embeddings.dtype == torch.float32
    ref, lengths = _reference_context(files["wan"], tok, PROMPTS)
    _assert_matches_reference(ctx, ref, lengths, 0.1)


def test_truncation_at_512_keeps_eos(files):
    model, tok = load_text_encoder(files["paths"]["wan"], files["tok_dir"], dtype=torch.float32)
    long = " ".join(["cat"] * 700)
    ctx = encode_text(model, tok, [long, "a dog"])
    assert ctx.lengths.tolist() == [512, 3]
    enc = tok([long], padding="max_length", max_length=TEXT_LEN, truncation=True)
    assert enc["input_ids"][0][-1] == 1
    assert torch.count_nonzero(ctx.embeddings[0, 511]) > 0 and torch.count_nonzero(ctx.embeddings[1, 3:]) == 0


def test_tokenizer_folder_errors(files, tmp_path):
    with pytest.raises(MoGe4DInputError, match=r"tokenizer folder not found: .*no_such_tokenizer"):
        load_text_encoder(files["paths"]["wan"], tmp_path / "no_such_tokenizer", dtype=torch.float32)
    empty = tmp_path / "empty_tok"
    empty.mkdir()
    (empty / "README.md").write_text("x")
    with pytest.raises(MoGe4DInputError, match=r"empty_tok: no usable tokenizer.*README\.md"):
        load_umt5_tokenizer(empty)
    # a spiece.model-only folder works through the SentencePiece reader
    spm_dir = tmp_path / "spm_only"
    spm_dir.mkdir()
    (spm_dir / "spiece.model").write_bytes(files["spiece"])
    assert isinstance(load_umt5_tokenizer(spm_dir), SentencePieceT5Tokenizer)
    # an XLM-RoBERTa-like tokenizer (pad 1, </s> 2) is not umT5
    xlmr = tmp_path / "xlmr"
    xlmr.mkdir()
    (xlmr / "spiece.model").write_bytes(_spiece_model(pad=1, eos=2, unk=3))
    with pytest.raises(MoGe4DInputError, match="not a umT5 tokenizer"):
        load_umt5_tokenizer(xlmr)
    # no folder and no embedded tokenizer
    with pytest.raises(MoGe4DInputError, match=r"umt5_xxl_fp16\.safetensors: holds no tokenizer"):
        load_text_encoder(files["paths"]["comfy"], dtype=torch.float32)


def test_wrong_files_are_named(files, tmp_path):
    from safetensors.torch import save_file

    wan = files["wan"]
    # T5 v1.1 (e.g. Flux's t5xxl): relative bias only in block 0
    v11 = {k: v for k, v in _comfy_state(wan).items() if not k.startswith("encoder.block.1.layer.0.SelfAttention.rel")}
    save_file(v11, str(tmp_path / "t5xxl_fp16.safetensors"))
    with pytest.raises(MoGe4DInputError, match=r"t5xxl_fp16\.safetensors: this is a T5 v1\.1 encoder"):
        load_text_encoder(tmp_path / "t5xxl_fp16.safetensors", files["tok_dir"], dtype=torch.float32)
    # a CLIP vision file
    save_file({"vision_model.embeddings.class_embedding": torch.zeros(8)}, str(tmp_path / "clip_vision_h.safetensors"))
    with pytest.raises(MoGe4DInputError, match=r"clip_vision_h\.safetensors: does not look like a umT5"):
        load_text_encoder(tmp_path / "clip_vision_h.safetensors", files["tok_dir"], dtype=torch.float32)
    # a partial Wan file: names the file, the detected format and the missing key
    part = dict(wan)
    del part["blocks.1.ffn.fc2.weight"]
    torch.save(part, str(tmp_path / "partial.pth"))
    with pytest.raises(MoGe4DInputError, match=r"partial\.pth.*detected format wan.*encoder\.block\.1\.layer\.1\.DenseReluDense\.wo"):
        load_text_encoder(tmp_path / "partial.pth", files["tok_dir"], dtype=torch.float32)
    # an unknown key inside the encoder is reported as unexpected
    odd = dict(wan)
    odd["blocks.0.attn.q.bias"] = torch.zeros(HEADS * DKV)
    torch.save(odd, str(tmp_path / "odd.pth"))
    with pytest.raises(MoGe4DInputError, match=r"odd\.pth.*unexpected.*blocks\.0\.attn\.q\.bias"):
        load_text_encoder(tmp_path / "odd.pth", files["tok_dir"], dtype=torch.float32)
    # a tokenizer bigger than the embedding table
    small = {k: (v[:16] if k == "token_embedding.weight" else v) for k, v in wan.items()}
    torch.save(small, str(tmp_path / "small_vocab.pth"))
    with pytest.raises(MoGe4DInputError, match="do not belong together"):
        load_text_encoder(tmp_path / "small_vocab.pth", files["tok_dir"], dtype=torch.float32)


def test_bad_prompts(files):
    model, tok = load_text_encoder(files["paths"]["wan"], files["tok_dir"], dtype=torch.float32)
    with pytest.raises(MoGe4DInputError, match="prompts"):
        encode_text(model, tok, [])
    with pytest.raises(MoGe4DInputError, match="prompts"):
        encode_text(model, tok, ["ok", 3])


def test_new_comfy_quant_spelling_and_unsupported_quantisation(files, tmp_path):
    """``weight_scale`` + ``comfy_quant`` (newer ComfyUI) reads like ``scale_weight``; int8 + scale is refused."""
    import json

    from safetensors.torch import load_file, save_file

    from moge4d_core.loading.text import convert_text_state_dict

    legacy = load_file(str(files["paths"]["fp8"]))
    new = {}
    for k, v in legacy.items():
        if k == "scaled_fp8" or k.endswith(".scale_input"):
            continue
        if k.endswith(".scale_weight"):
            layer = k[: -len(".scale_weight")]
            new[layer + ".weight_scale"] = v
            new[layer + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                       dtype=torch.uint8)
        else:
            new[k] = v
    a, desc_a, _ = convert_text_state_dict(dict(legacy), "legacy")
    b, desc_b, _ = convert_text_state_dict(new, "new")
    assert desc_a == "hf+scaled_fp8+fp8" and desc_b == "hf+fp8"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # int8 weights with a scale (another quantisation scheme) get a clear refusal
    bad = dict(legacy)
    bad["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(HEADS * DKV, DIM, dtype=torch.int8)
    save_file(bad, str(tmp_path / "umt5_int8.safetensors"))
    with pytest.raises(MoGe4DInputError, match=r"umt5_int8\.safetensors: tensor 'encoder\.block\.0\.layer\.0\.SelfAttention\.q\.weight'.*not fp8"):
        load_text_encoder(tmp_path / "umt5_int8.safetensors", dtype=torch.float32)


def test_output_can_feed_a_trained_layer(files):
    """Training code puts the context through trainable layers: the output must not be an inference tensor."""
    model, tok = load_text_encoder(files["paths"]["wan"], files["tok_dir"], dtype=torch.float32)
    ctx = encode_text(model, tok, PROMPTS)
    assert not ctx.embeddings.requires_grad
    lin = torch.nn.Linear(DIM, 4)
    lin(ctx.embeddings).square().sum().backward()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()
