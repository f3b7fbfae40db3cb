"""Parity of the GGUF export with PyTorch: tokenization, logits with injected image
embeddings, greedy decoding, quantized types, and the mmproj in stock llama.cpp."""

from __future__ import annotations

import base64
import io
import json
import shutil

import pytest

from llava_edge.export.open_checkpoint import UnsupportedModelError, load_llava
from llava_edge.export.gguf import export_gguf
from llava_edge.export.gguf_parity import (logits_parity, mmproj_parity, parity_prompts,
                                           reference_image, tokenizer_parity, torch_reference)
from llava_edge.export.mmproj import write_mmproj
from llava_edge.export.parity_corpus import corpus_conversations, corpus_strings

MODELS = [("tiny_checkpoint", "tiny_gguf"), ("tiny_qwen2_checkpoint", "tiny_qwen2_gguf")]


# These models are tiny: one thread each for torch and llama.cpp avoids paying for thread
# synchronisation (and for the other jobs on a shared CI machine).
THREADS = 1


@pytest.fixture(scope="module")
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=MODELS, ids=["llama-spm", "qwen2-bpe"])
def model(request, one_torch_thread):
    checkpoint = request.getfixturevalue(request.param[0])
    exported = request.getfixturevalue(request.param[1])
    loaded = load_llava(checkpoint)
    image = reference_image(loaded.config.vision_config.image_size)
    references = [torch_reference(loaded, p, image) for p in parity_prompts(loaded.processor)]
    return loaded, exported, references


def test_corpus_is_fixed_and_varied():
    specials = ["<image>", "</s>"]
    corpus = corpus_strings(specials)
    assert corpus == corpus_strings(specials) and len(corpus) >= 500
    joined = "\n".join(corpus)
    for needle in ("👩‍💻", "🇫🇷", "e\u0301", "日本語", "\t\t", "\r\n", "    ", "6.022e23",
                   "def f(x):", "https://", "it's", "<image>\n", "</s>"):
        assert needle in joined, needle
    assert len(set(corpus)) > 450
    conversations = corpus_conversations()
    assert any(m["role"] == "system" for c in conversations for m in c)
    assert any(isinstance(m["content"], list) for c in conversations for m in c)


def test_tokenization_matches_hugging_face(model):
    loaded, exported, _ = model
    figures = tokenizer_parity(loaded.processor.tokenizer, exported.llm_file("F16"))
    assert figures["n_strings"] >= 500
    assert figures["agreement"] == 1.0, figures["mismatch_examples"]
    assert figures["detokenize_identical"] == figures["n_strings"]


def test_f16_logits_and_greedy_match_pytorch(model):
    """Text before the image, the projected image injected as embeddings, text after."""
    _, exported, references = model
    assert all(r.image_embeds.shape == (16, 256) for r in references)
    figures = logits_parity(references, exported.llm_file("F16"), "F16", THREADS)
    assert figures["n_positions"] > 100
    assert figures["top1_agreement"] == 1.0 and figures["ok"]
    assert figures["kl_mean"] < 1e-6
    assert figures["greedy_identical"] == len(references)  # 3 x 32 tokens
    assert figures["batched_prefill_top1"] == 1.0
    assert figures["batched_vs_incremental_max_diff"] < 1e-2
    json.dumps(figures)


def test_quantized_types_run_and_stay_close(model):
    """On random weights the next-token distribution is nearly flat, so top-1 of
    quantized types is fragile (see the slow test on a trained model for the targets);
    the distributions themselves must still be close."""
    _, exported, references = model
    q8 = logits_parity(references, exported.llm_file("Q8_0"), "Q8_0", THREADS)
    q4 = logits_parity(references, exported.llm_file("Q4_K_M"), "Q4_K_M", THREADS)
    assert q8["kl_mean"] < 1e-4 and q4["kl_mean"] < 1e-2
    assert q8["kl_mean"] < q4["kl_mean"]
    assert q4["top1_agreement"] > 0.5  # chance would be ~0.001
    assert q4["greedy_tokens"] == 32


def _data_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_clip_mmproj_in_llama_cpp(tiny_checkpoint, tiny_gguf):
    import gguf

    reader = gguf.GGUFReader(tiny_gguf.mmproj_file)
    meta = {k: f.contents() for k, f in reader.fields.items()}
    names = {t.name for t in reader.tensors}
    assert meta["general.architecture"] == "clip" and meta["clip.projector_type"] == "mlp"
    # vision_feature_layer -2 of 4 layers: hidden_states[3], three layers stored and run
    assert meta["clip.vision.block_count"] == 3 and meta["clip.vision.feature_layer"] == [3]
    assert meta["clip.vision.projection_dim"] == 256 and "clip.use_gelu" in meta
    assert meta["clip.use_gelu"] is False  # quick_gelu, llama.cpp's default
    assert {"v.class_embd", "v.pre_ln.weight", "mm.0.weight", "mm.2.bias"} <= names
    assert not any(n.startswith(("v.post_ln", "v.blk.3.")) for n in names)

    figures = mmproj_parity(load_llava(tiny_checkpoint), tiny_gguf.mmproj_file,
                            tiny_gguf.llm_file("F16"), n_threads=THREADS)
    assert figures["n_tokens_llama_cpp"] == figures["n_tokens_torch"] == 16
    # llama.cpp's LLaVA graph appends CLS after the patches (known upstream issue): its
    # token j is PyTorch's token j + 1. Measured, not hidden: if upstream fixes it, the
    # unshifted cosine goes to ~1 and this test asks for the README note to change.
    assert figures["cosine_mean_shifted_by_one"] > 0.99
    assert figures["cosine_mean"] < 0.95


def test_siglip_mmproj_matches_pytorch(tiny_qwen2_checkpoint, tiny_qwen2_gguf):
    figures = mmproj_parity(load_llava(tiny_qwen2_checkpoint), tiny_qwen2_gguf.mmproj_file,
                            tiny_qwen2_gguf.llm_file("F16"), n_threads=THREADS)
    assert figures["cosine_min"] > 0.9999 and figures["relative_error"] < 1e-2


@pytest.mark.parametrize("exported", ["tiny_gguf", "tiny_qwen2_gguf"])
def test_stock_llama_cpp_answers_about_an_image(exported, request):
    """The bundle also runs in stock llama-cpp-python: LLM + mmproj via the LLaVA handler."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Llava15ChatHandler

    from llava_edge.runtimes.llama_log import set_llama_logging

    result = request.getfixturevalue(exported)
    handler = Llava15ChatHandler(clip_model_path=str(result.mmproj_file), verbose=False)
    llm = Llama(model_path=str(result.llm_file("Q4_K_M")), chat_handler=handler, n_ctx=256,
                verbose=False, seed=0)
    try:
        set_llama_logging(False)
        image = reference_image(64)
        answer = llm.create_chat_completion(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": _data_uri(image)}},
            {"type": "text", "text": "What shapes are in the image?"}]}],
            max_tokens=8, temperature=0.0)
    finally:
        llm.close()
    usage = answer["usage"]
    assert usage["completion_tokens"] > 0
    assert usage["prompt_tokens"] > 16  # the 16 image embeddings plus the text
    assert isinstance(answer["choices"][0]["message"]["content"], str)


@pytest.mark.parametrize("change, message", [
    ({"vision_feature_select_strategy": "full"}, "CLIP with vision_feature_select_strategy 'full'"),
    ({"projector_hidden_act": "relu"}, "projector activation 'relu'"),
    ({"vision_feature_layer": [-2, -5]}, "several layers"),
])
def test_mmproj_refuses_what_llama_cpp_cannot_run(tiny_checkpoint, tmp_path, change, message):
    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    config = json.loads((ckpt / "config.json").read_text())
    config.update(change)
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=message):
        write_mmproj(ckpt, tmp_path / "mmproj.gguf")
    assert not (tmp_path / "mmproj.gguf").exists()


# -- a model with decisive predictions ----------------------------------------------------

ANSWERS = (
    "There are two shapes in the picture: a large red circle on the left side and a small "
    "blue square in the bottom right corner, both on a white background.",
    "I can count exactly three shapes here, one yellow triangle at the top, one green star "
    "in the middle and one purple circle near the right edge of the image.",
    "The circle is red and it sits in the top left corner, next to a small orange square "
    "and a large blue triangle that fills the center of the picture.",
)


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_checkpoint, tmp_path_factory):
    """`tiny` trained for a few steps to answer the parity prompts (with the image), so
    its next-token distributions are peaked like a trained model's. Saved by
    transformers (tokenizer.json only, no tokenizer.model)."""
    import torch

    torch.manual_seed(0)
    loaded = load_llava(tiny_checkpoint)
    model, processor = loaded.model, loaded.processor
    image = reference_image(64)
    eos = processor.tokenizer.eos_token
    texts = [f"{p} {a}{eos}" for p, a in zip(parity_prompts(processor), ANSWERS)]
    batch = processor(text=texts, images=[image] * len(texts), return_tensors="pt",
                      padding=True)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    labels[labels == model.config.image_token_id] = -100
    model.model.vision_tower.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses time to thread sync
    try:
        # Until the answers are learnt, not a fixed step count: 60 steps reached loss < 0.2
        # on the CPUs of earlier sessions but ended at 0.26 on an AVX-512/AMX Xeon (other
        # float rounding in torch's kernels sends AdamW down another path).
        for _ in range(300):
            loss = model(**batch, labels=labels).loss
            if loss.item() < 0.1:
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.1
    model.eval()
    out = tmp_path_factory.mktemp("trained") / "tiny-trained"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_quantized_parity_targets_on_a_trained_model(trained_checkpoint, tmp_path,
                                                     one_torch_thread):
    assert not (trained_checkpoint / "tokenizer.model").exists()
    result = export_gguf(trained_checkpoint, tmp_path / "out", quants=("F16", "Q8_0", "Q4_K_M"),
                         mmproj=True, n_threads=THREADS)
    parity = result.parity
    print("\ntrained tiny:", {q: {k: f[k] for k in ("top1_agreement", "kl_mean",
                                                  "greedy_identical")}
                              for q, f in parity["logits"].items()}, parity["mmproj"])
    assert parity["tokenization"]["agreement"] == 1.0
    assert parity["tokenization"]["parity_prompts_identical"]
    logits = parity["logits"]
    assert logits["F16"]["top1_agreement"] == 1.0 and logits["F16"]["greedy_identical"] == 3
    assert logits["Q8_0"]["top1_agreement"] >= 0.98 and logits["Q8_0"]["ok"]
    assert logits["Q4_K_M"]["top1_agreement"] >= 0.90 and logits["Q4_K_M"]["ok"]
    assert parity["mmproj"]["n_tokens_llama_cpp"] == 16
    json.dumps(result.to_dict())


def test_mistral_language_model(tiny_checkpoint, tmp_path, one_torch_thread):
    """Mistral exports as llama.cpp's `llama` architecture (rotary permute included)."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, MistralConfig

    config = LlavaConfig.from_pretrained(tiny_checkpoint)
    text = config.text_config.to_dict()
    text.pop("model_type", None)
    config.text_config = MistralConfig(**{**text, "sliding_window": None})
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    ckpt = tmp_path / "mistral"
    model.save_pretrained(ckpt)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                 "processor_config.json", "chat_template.jinja"):
        shutil.copy(tiny_checkpoint / name, ckpt / name)
    assert json.loads((ckpt / "config.json").read_text())["text_config"]["model_type"] == "mistral"

    result = export_gguf(ckpt, tmp_path / "out", quants=("F16",), parity=False)
    loaded = load_llava(ckpt)
    image = reference_image(64)
    refs = [torch_reference(loaded, p, image, n_greedy=8)
            for p in parity_prompts(loaded.processor, 2)]
    figures = logits_parity(refs, result.llm_file("F16"), "F16", THREADS)
    assert figures["top1_agreement"] == 1.0 and figures["greedy_identical"] == 2


def test_export_fails_when_stock_llama_cpp_would_misread_first_words(tiny_checkpoint, tmp_path,
                                                                     monkeypatch):
    """The tokenizer gate: a GGUF that stock llama.cpp tokenizes wrongly on text that
    starts with a word (here: the old add_space_prefix=false metadata) is not exported,
    and nothing is left behind."""
    from llava_edge.export import gguf_writer
    from llava_edge.export.tokenizer_parity import TokenizerParityError

    real = gguf_writer.read_vocab

    def old_metadata(path, n):
        vocab = real(path, n)
        vocab.add_space_prefix = False
        return vocab

    monkeypatch.setattr(gguf_writer, "read_vocab", old_metadata)
    out = tmp_path / "out"
    with pytest.raises(TokenizerParityError, match="llm-F16.gguf: stock llama.cpp would "
                                                   "tokenize .* texts that start with a word"):
        export_gguf(tiny_checkpoint, out, quants=("F16",), n_threads=THREADS)
    assert list(out.iterdir()) == []


def _parity_kept_and_dropped(checkpoint, files, mmproj):
    """measure_parity with the PyTorch language model kept, and with it freed after the
    references (what export does); the second run's LoadedLlava."""
    from llava_edge.export.gguf_parity import measure_parity

    kept = measure_parity(load_llava(checkpoint), files, mmproj, n_threads=THREADS)
    loaded = load_llava(checkpoint)
    dropped = measure_parity(loaded, files, mmproj, n_threads=THREADS,
                             keep_language_model=False)
    return kept, dropped, loaded


def test_export_frees_the_language_model_before_opening_the_ggufs(
        tiny_checkpoint, tiny_gguf, one_torch_thread):
    """The fp32 language model beside each GGUF was export's peak (11.6 GB for
    tinyllava-1.1b): it goes once PyTorch's references are computed, and every figure is
    the same as with it kept; the vision tower stays for the mmproj's check."""
    files = {q: tiny_gguf.llm_file(q) for q in ("F16", "Q4_K_M")}
    kept, dropped, loaded = _parity_kept_and_dropped(tiny_checkpoint, files,
                                                     tiny_gguf.mmproj_file)
    assert dropped == kept
    assert set(dropped["logits"]) == {"F16", "Q4_K_M"} and "cosine_mean" in dropped["mmproj"]
    assert loaded.model.model.language_model is None and loaded.model.lm_head is None
    assert loaded.model.model.vision_tower is not None
