"""GGUF export of the language model: file contents (read back with gguf.GGUFReader),
tensor layouts, checkpoint layouts, quantization, the export API and its errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from llava_edge.errors import LlavaEdgeError
from llava_edge.export.open_checkpoint import UnsupportedModelError
from llava_edge.export.gguf import export_gguf
from llava_edge.export.gguf_quantize import INT4_QUANT, normalize_quants, quantize_gguf
from llava_edge.export.gguf_tensors import permute_rotary
from llava_edge.runtimes.gguf_check import GGUFFormatError

NORMAL, CONTROL, UNUSED, BYTE = 1, 3, 5, 6


def _read(path):
    import gguf

    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return meta, {t.name: t for t in reader.tensors}


def _torch_weights(checkpoint):
    from safetensors.numpy import load_file

    return load_file(checkpoint / "model.safetensors")


def test_llama_gguf_round_trip(tiny_checkpoint, tiny_gguf):
    meta, tensors = _read(tiny_gguf.llm_file("F16"))
    config = json.loads((tiny_checkpoint / "config.json").read_text())["text_config"]
    assert meta["general.architecture"] == "llama" and meta["general.file_type"] == 1
    assert meta["llama.context_length"] == config["max_position_embeddings"] == 1024
    assert (meta["llama.embedding_length"], meta["llama.feed_forward_length"]) == (256, 512)
    assert (meta["llama.block_count"], meta["llama.attention.head_count"],
            meta["llama.attention.head_count_kv"]) == (4, 4, 2)
    assert meta["llama.rope.freq_base"] == 10000.0 and meta["llama.rope.dimension_count"] == 64
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert meta["llama.vocab_size"] == config["vocab_size"] == 1472

    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert meta["tokenizer.ggml.model"] == "llama"
    assert len(tokens) == len(types) == len(meta["tokenizer.ggml.scores"]) == 1472
    assert sum(t == BYTE for t in types) == 256 and tokens[3] == "<0x00>"
    assert (tokens[1430], types[1430]) == ("<image>", CONTROL)
    assert (tokens[1431], types[1431]) == ("<pad>", CONTROL)
    assert [(tokens[i], types[i]) for i in range(1432, 1472)] == [
        (f"[PAD{i}]", UNUSED) for i in range(1432, 1472)]
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"],
            meta["tokenizer.ggml.unknown_token_id"],
            meta["tokenizer.ggml.padding_token_id"]) == (1, 2, 0, 1431)
    assert meta["tokenizer.ggml.add_bos_token"] and not meta["tokenizer.ggml.add_eos_token"]
    # Hugging Face adds the SentencePiece space only at the start of the text: stock
    # llama.cpp prefixes the start too (and after special tokens), llava-edge the start only
    assert meta["tokenizer.ggml.add_space_prefix"] is True
    assert meta["llava_edge.tokenizer.space_prefix"] == "first"
    template = meta["tokenizer.chat_template"]
    assert "ASSISTANT:" in template and "{% generation %}" not in template

    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(4) for n in (
            "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
            "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == expected
    assert tensors["output_norm.weight"].tensor_type.name == "F32"
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == "F16"

    hf = _torch_weights(tiny_checkpoint)
    prefix = "language_model.model.layers.1.self_attn."
    q, k = hf[prefix + "q_proj.weight"], hf[prefix + "k_proj.weight"]
    np.testing.assert_array_equal(tensors["blk.1.attn_q.weight"].data,
                                  permute_rotary(q, 4).astype(np.float16))
    np.testing.assert_array_equal(tensors["blk.1.attn_k.weight"].data,
                                  permute_rotary(k, 2).astype(np.float16))
    assert not np.array_equal(tensors["blk.1.attn_q.weight"].data, q.astype(np.float16))
    np.testing.assert_array_equal(tensors["token_embd.weight"].data,
                                  hf["language_model.model.embed_tokens.weight"].astype(np.float16))


def test_qwen2_gguf_round_trip(tiny_qwen2_checkpoint, tiny_qwen2_gguf):
    meta, tensors = _read(tiny_qwen2_gguf.llm_file("F16"))
    tokenizer = json.loads((tiny_qwen2_checkpoint / "tokenizer.json").read_text())
    assert meta["general.architecture"] == "qwen2"
    assert meta["qwen2.rope.freq_base"] == 1_000_000.0
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "qwen2"
    assert len(meta["tokenizer.ggml.merges"]) == len(tokenizer["model"]["merges"])
    assert meta["tokenizer.ggml.merges"][0] == " ".join(tokenizer["model"]["merges"][0])
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    # The vocabulary, then <|im_end|>, <|endoftext|>, <|im_start|>, <image>, then padding
    # up to the config's vocab_size (a multiple of 64).
    image = tokens.index("<image>")
    assert len(tokens) % 64 == 0 and types[image] == CONTROL
    assert tokens[image + 1:] == [f"[PAD{i}]" for i in range(image + 1, len(tokens))]
    assert "tokenizer.ggml.scores" not in meta
    assert tokens[meta["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    # no BOS: <|endoftext|> stands in
    assert tokens[meta["tokenizer.ggml.bos_token_id"]] == "<|endoftext|>"
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["llava_edge.tokenizer.normalizer"] == "NFC"
    assert "output.weight" not in tensors  # tied embeddings: llama.cpp reads token_embd
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= set(tensors)
    hf = _torch_weights(tiny_qwen2_checkpoint)
    q = hf["language_model.model.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight"].data, q.astype(np.float16))


def test_rotary_permutation_turns_half_split_rope_into_interleaved_rope():
    """Hugging Face rotates the halves of each head, llama.cpp's `llama` rope rotates
    adjacent pairs: rope_hf(W x) permuted == rope_llama(permuted W x)."""
    rng = np.random.default_rng(0)
    n_heads, head_dim, pos = 2, 8, 5
    w = rng.normal(size=(n_heads * head_dim, 6))
    x = rng.normal(size=6)
    theta = pos * 10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)
    cos, sin = np.cos(theta), np.sin(theta)

    def rope_halves(v):
        a, b = v[:head_dim // 2], v[head_dim // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin])

    def rope_pairs(v):
        out = v.copy()
        out[0::2] = v[0::2] * cos - v[1::2] * sin
        out[1::2] = v[1::2] * cos + v[0::2] * sin
        return out

    hf = np.concatenate([rope_halves(h) for h in (w @ x).reshape(n_heads, head_dim)])
    llama = np.concatenate([rope_pairs(h) for h in
                            (permute_rotary(w, n_heads) @ x).reshape(n_heads, head_dim)])
    np.testing.assert_allclose(permute_rotary(hf[:, None], n_heads)[:, 0], llama, atol=1e-12)


def _copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sharded_checkpoint_with_current_key_names(tiny_checkpoint, tiny_gguf, tmp_path):
    """transformers >= 4.52 module names (model.language_model.*, lm_head.*) in shards."""
    from safetensors.numpy import load_file, save_file

    ckpt = _copy_checkpoint(tiny_checkpoint, tmp_path / "sharded")
    weights = load_file(ckpt / "model.safetensors")
    (ckpt / "model.safetensors").unlink()
    renames = (("language_model.model.", "model.language_model."),
               ("language_model.lm_head.", "lm_head."),
               ("vision_tower.", "model.vision_tower."),
               ("multi_modal_projector.", "model.multi_modal_projector."))
    renamed = {}
    for key, value in weights.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    names = sorted(renamed)
    shards = [names[i::3] for i in range(3)]
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-00003.safetensors"
        save_file({n: renamed[n] for n in shard}, ckpt / file)
        weight_map.update({n: file for n in shard})
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    result = export_gguf(ckpt, tmp_path / "out", quants=("F16",), mmproj=True, parity=False)
    _, got = _read(result.llm_file("F16"))
    _, want = _read(tiny_gguf.llm_file("F16"))
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name].data, want[name].data, err_msg=name)
    _, got_v = _read(result.mmproj_file)
    _, want_v = _read(tiny_gguf.mmproj_file)
    assert set(got_v) == set(want_v)


def test_unsupported_language_model_is_named(tiny_checkpoint, tmp_path):
    ckpt = _copy_checkpoint(tiny_checkpoint, tmp_path / "gemma")
    config = json.loads((ckpt / "config.json").read_text())
    config["text_config"]["model_type"] = "gemma2"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="language model 'gemma2' is not supported"):
        export_gguf(ckpt, tmp_path / "out", parity=False)
    assert not (tmp_path / "out").exists()


def test_unknown_language_model_tensor_is_named(tiny_checkpoint, tmp_path):
    from safetensors.numpy import load_file, save_file

    ckpt = _copy_checkpoint(tiny_checkpoint, tmp_path / "qk-norm")
    weights = load_file(ckpt / "model.safetensors")
    weights["language_model.model.layers.0.self_attn.q_norm.weight"] = np.ones(64, np.float32)
    save_file(weights, ckpt / "model.safetensors")
    with pytest.raises(UnsupportedModelError, match="self_attn.q_norm.weight' is not supported"):
        export_gguf(ckpt, tmp_path / "out", parity=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_missing_weights_are_reported(tiny_checkpoint, tmp_path):
    ckpt = _copy_checkpoint(tiny_checkpoint, tmp_path / "noweights")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(LlavaEdgeError, match="no model.safetensors"):
        export_gguf(ckpt, tmp_path / "out", parity=False)


def test_quant_names():
    assert normalize_quants("q8_0,Q4_K_M|q8_0") == ["Q8_0", "Q4_K_M"]
    assert normalize_quants(["f16", INT4_QUANT]) == ["F16", "Q4_K_M"]
    with pytest.raises(LlavaEdgeError, match="unknown GGUF quant type 'Q3_XL'.*Q4_K_M"):
        normalize_quants(["Q8_0", "Q3_XL"])
    with pytest.raises(LlavaEdgeError, match="no GGUF quant type"):
        normalize_quants("")


def test_quantize_reports_progress(tiny_gguf, tmp_path):
    calls = []
    out = quantize_gguf(tiny_gguf.llm_file("F16"), tmp_path / "q6.gguf", "q6_k",
                        progress=lambda done, total: calls.append((done, total)))
    _, tensors = _read(out)
    assert calls[0] == (1, 39) and calls[-1] == (39, 39) and len(calls) == 39
    assert {t.tensor_type.name for t in tensors.values()} == {"Q6_K", "F32"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q6.gguf"]


def test_quantize_refuses_a_corrupt_source(tiny_gguf, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(tiny_gguf.llm_file("F16").read_bytes()[:5000])
    with pytest.raises(GGUFFormatError, match="truncated"):
        quantize_gguf(bad, tmp_path / "q.gguf", "Q4_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_export_result(tiny_gguf):
    result = tiny_gguf
    assert result.quants == ["F16", "Q8_0", "Q4_K_M"] and result.base_type == "F32"
    assert sorted(p.name for p in result.out_dir.iterdir()) == [
        "llm-F16.gguf", "llm-Q4_K_M.gguf", "llm-Q8_0.gguf", "mmproj-F16.gguf"]
    sizes = {f.quant: f.size_bytes for f in result.files if f.role == "llm"}
    assert sizes["Q4_K_M"] < sizes["Q8_0"] < sizes["F16"]
    data = json.loads(json.dumps(result.to_dict()))
    assert data["arch"] == "llama" and data["n_vocab"] == 1472 and data["parity"] is None
    assert any("random weights" in n for n in data["notes"])
    assert any("CLS" in n for n in data["notes"])
    assert {f["name"] for f in data["files"]} >= {"mmproj-F16.gguf"}


def test_export_refuses_to_overwrite_and_cleans_up_after_failure(tiny_checkpoint, tmp_path,
                                                                 monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "llm-Q8_0.gguf").write_text("mine")
    with pytest.raises(LlavaEdgeError, match="llm-Q8_0.gguf exists"):
        export_gguf(tiny_checkpoint, out, quants=("F16", "Q8_0"), parity=False)
    assert (out / "llm-Q8_0.gguf").read_text() == "mine"

    import llava_edge.export.gguf as gguf_export

    real = gguf_export.quantize_gguf

    def fail_on_q4(src, dst, quant, *args):
        if quant == "Q4_K_M":
            raise LlavaEdgeError("quantizer exploded")
        return real(src, dst, quant, *args)

    monkeypatch.setattr(gguf_export, "quantize_gguf", fail_on_q4)
    with pytest.raises(LlavaEdgeError, match="exploded"):
        export_gguf(tiny_checkpoint, out, quants=("F16", "Q4_K_M"), mmproj=True, parity=False)
    assert sorted(p.name for p in out.iterdir()) == ["llm-Q8_0.gguf"]  # only the user's file


@pytest.mark.parametrize("kind", ["llm", "mmproj"])
def test_an_interrupted_gguf_write_leaves_nothing_behind(tiny_checkpoint, tmp_path, kind):
    """Stopped after its first tensor, the writer leaves neither the file nor its hidden
    temporary (write, then rename)."""
    from llava_edge.export.gguf_writer import write_llm_gguf
    from llava_edge.export.mmproj import write_mmproj

    def stop(done, total):
        assert done < total
        raise KeyboardInterrupt

    out_dir = tmp_path / "out"
    write = write_llm_gguf if kind == "llm" else write_mmproj
    with pytest.raises(KeyboardInterrupt):
        write(tiny_checkpoint, out_dir / f"{kind}.gguf", "F16", progress=stop)
    assert list(out_dir.iterdir()) == []
