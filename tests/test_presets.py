"""Each preset is a real LlavaForConditionalGeneration checkpoint that transformers loads
offline and runs with an image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from disk import require_free_disk
from PIL import Image
from safetensors import safe_open
from transformers import AutoProcessor, LlavaForConditionalGeneration

from llava_edge.checkpoint_info import describe_checkpoint, safetensors_header
from llava_edge.presets import get_preset
from llava_edge.trainer.init_checkpoint import build_checkpoint, on_disk_name


def _image(w=97, h=71, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def check_loads_and_runs(path, preset_name: str, dtype=torch.float32) -> None:
    """Load with transformers, run one forward pass with an image, check every count."""
    spec = get_preset(preset_name)
    model, info = LlavaForConditionalGeneration.from_pretrained(
        path, output_loading_info=True, dtype=dtype)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    processor = AutoProcessor.from_pretrained(path)
    config = model.config

    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "What is in the image?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=_image(), text=prompt, return_tensors="pt")
    n_image = int((inputs["input_ids"] == config.image_token_index).sum())
    assert n_image == spec.n_image_tokens == config.image_seq_length
    assert inputs["pixel_values"].shape[-2:] == (spec.vision.image_size,) * 2

    with torch.no_grad():
        feats = model.get_image_features(pixel_values=inputs["pixel_values"].to(dtype))
        out = model(**{**inputs, "pixel_values": inputs["pixel_values"].to(dtype)})
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
    assert feats.reshape(-1, feats.shape[-1]).shape == (spec.n_image_tokens, spec.text.hidden_size)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all()
    assert config.llava_edge["random_init"] is True and config.llava_edge["preset"] == preset_name


@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "tiny_qwen2_checkpoint"])
def test_small_presets_load_and_run(fixture, request):
    path = request.getfixturevalue(fixture)
    check_loads_and_runs(path, "tiny" if fixture == "tiny_checkpoint" else "tiny-qwen2")


def test_tiny_is_llama_sentencepiece_with_llava_hf_tokens(tiny_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint)
    assert (tiny_checkpoint / "tokenizer.model").exists()
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    # <image> then <pad> are appended after the SentencePiece vocabulary, as llava-hf does.
    n_sp = len(tok) - 2
    assert tok.convert_tokens_to_ids("<image>") == n_sp == config["image_token_index"]
    assert tok.pad_token == "<pad>" and tok.pad_token_id == n_sp + 1
    assert config["text_config"]["vocab_size"] % 64 == 0
    ids = tok("hello 😀").input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "hello 😀"  # byte fallback round trip


def test_tiny_qwen2_is_byte_level_bpe_chatml(tiny_qwen2_checkpoint):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen2_checkpoint)
    data = json.loads((tiny_qwen2_checkpoint / "tokenizer.json").read_text())
    assert data["model"]["type"] == "BPE" and data["model"]["merges"]
    assert tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    s = "Ünïcödé  spaces\t\n123 <image> 😀"
    assert tok.decode(tok(s).input_ids) == s


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    spec = get_preset("tiny")
    paths = [build_checkpoint(spec, tmp_path / f"s{i}", seed=s).path
             for i, s in enumerate([3, 3, 4])]
    tensors = []
    for p in paths:
        with safe_open(p / "model.safetensors", "pt") as f:
            tensors.append({k: f.get_tensor(k) for k in f.keys()})
    name = on_disk_name("model.language_model.layers.0.self_attn.q_proj.weight")
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])
    assert not torch.equal(tensors[0][name], tensors[2][name])


def test_build_refuses_non_empty_dir_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "ck"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="ck"):
        build_checkpoint(get_preset("tiny"), target)
    assert (target / "keep.txt").read_text() == "mine"

    def boom(done, total):
        raise KeyboardInterrupt  # an interrupted build
    with pytest.raises(KeyboardInterrupt):
        build_checkpoint(get_preset("tiny"), tmp_path / "new", progress=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_clip_init_matches_transformers(tiny_checkpoint):
    """The module-by-module initialisation follows transformers' own rules (scale per
    module type), not a generic N(0, 0.02) everywhere."""
    from transformers import LlavaConfig

    config = LlavaConfig.from_pretrained(tiny_checkpoint)
    torch.manual_seed(0)
    reference = LlavaForConditionalGeneration(config).state_dict()
    with safe_open(tiny_checkpoint / "model.safetensors", "pt") as f:
        for path in ["model.vision_tower.encoder.layers.1.self_attn.q_proj.weight",
                     "model.vision_tower.encoder.layers.1.mlp.fc1.weight",
                     "model.language_model.layers.1.mlp.down_proj.weight",
                     "model.vision_tower.embeddings.class_embedding"]:
            ours = f.get_tensor(on_disk_name(path))
            assert ours.std().item() == pytest.approx(reference[path].std().item(), rel=0.15), path


# --- large presets: real dimensions, random weights -------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["tinyllava-1.1b", "qwen2-0.5b-siglip"])
def test_benchmark_presets_load_and_run(name, tmp_path):
    path = build_checkpoint(get_preset(name), tmp_path / name).path
    described = describe_checkpoint(path)
    assert described.random_init
    assert described.image_tokens_per_image == get_preset(name).n_image_tokens
    check_loads_and_runs(path, name, dtype=torch.float32)


# The peak is read from VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across
# execve, so a child of a large pytest process would report its parent's peak.
_PEAK_RSS_SCRIPT = """
import json, re, sys
from llava_edge.presets import get_preset
from llava_edge.trainer.init_checkpoint import build_checkpoint
build_checkpoint(get_preset(sys.argv[1]), sys.argv[2])
status = open("/proc/self/status").read()
print(json.dumps({"peak_rss_kb": int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))}))
"""


@pytest.mark.slow
def test_llava_7b_is_written_in_shards_without_the_whole_model_in_ram(tmp_path):
    """llava-1.5-7b: ~13.5 GB of fp16 weights written with a small fraction of that in RAM;
    every tensor's name, shape and dtype matches the model transformers would build."""
    from transformers import LlavaConfig

    require_free_disk(tmp_path, 15, "llava-1.5-7b's fp16 checkpoint (13.5 GB)")
    path = tmp_path / "llava-7b"
    try:
        out = subprocess.run([sys.executable, "-c", _PEAK_RSS_SCRIPT, "llava-1.5-7b", str(path)],
                             check=True, capture_output=True, text=True)
        peak_gb = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_kb"] / 1024**2
        index = json.loads((path / "model.safetensors.index.json").read_text())
        fp16_gb = index["metadata"]["total_size"] / 1024**3
        assert fp16_gb > 12
        assert peak_gb < fp16_gb / 4, f"peak RSS {peak_gb:.1f} GB for {fp16_gb:.1f} GB of weights"

        config = LlavaConfig.from_pretrained(path)
        with torch.device("meta"):
            model = LlavaForConditionalGeneration(config)
        expected = {on_disk_name(n): tuple(p.shape) for n, p in model.named_parameters()}
        found = {}
        for shard in sorted(set(index["weight_map"].values())):
            for name, meta in safetensors_header(path / shard).items():
                assert meta["dtype"] == "F16"
                found[name] = tuple(meta["shape"])
        assert found == expected
        AutoProcessor.from_pretrained(path)  # the processor and tokenizer load too
        assert describe_checkpoint(path).n_params == sum(
            int(np.prod(s)) for s in expected.values())
    finally:
        shutil.rmtree(path, ignore_errors=True)  # 13.5 GB: not left for the tests after it
