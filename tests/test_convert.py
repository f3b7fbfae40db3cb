"""``llava-edge convert``: original LLaVA checkpoints (github.com/haotian-liu/LLaVA) become
llava-hf checkpoints that compute what the original computes.

The original checkpoints are built here from tiny random weights, in the original's own
file layouts and key names. The original computation is written here from the original
code's description (not imported from LLaVA): CLIP ``hidden_states[select_layer]``, CLS
dropped for ``patch``, the projector (``Sequential(Linear, GELU, Linear)`` or one
``Linear``), then the LLM on ``inputs_embeds`` where the -200 placeholder is replaced by
the image features. Everything runs in float32 with the same operations on both sides.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from llava_edge.errors import LlavaEdgeError

IMAGE_TOKEN_INDEX = -200
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
              image_size=32, patch_size=8)
LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
           tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's "
                 "questions.")
# Same operations in float32 on both sides: at most summation-order noise of a few ulp on
# logits of magnitude ~1 (measured: exactly 0, the same kernels run in the same order);
# 1e-5 leaves room for another BLAS and still catches any wrong weight, which moves the
# logits by ~1e-2 or more.
ATOL = 1e-5


# --- the parts: a CLIP tower, a tokenizer, base LLMs ---------------------------------


def _clip_processor():
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    side = VISION["image_size"]
    return cls(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
               resample=3, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    """A tiny CLIPVisionModel directory with its CLIP image processor."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("tower")
    CLIPVisionModel(CLIPVisionConfig(**VISION)).save_pretrained(out)
    _clip_processor().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_checkpoint, tmp_path_factory):
    """The project's locally trained SentencePiece tokenizer without <image> and <pad>:
    a plain Llama tokenizer, as an original LLaVA checkpoint's."""
    from transformers import LlamaTokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    shutil.copy(tiny_checkpoint / "tokenizer.model", out / "tokenizer.model")
    tokenizer = LlamaTokenizer.from_pretrained(out, add_bos_token=True, add_eos_token=False,
                                               legacy=False)
    assert "<image>" not in tokenizer.get_vocab() and tokenizer.pad_token is None
    tokenizer.save_pretrained(out)
    return out


def _tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _llm_config(family: str, vocab_size: int):
    from transformers import LlamaConfig, MistralConfig

    if family == "llama":
        return LlamaConfig(**LLM, vocab_size=vocab_size, rope_theta=10000.0)
    return MistralConfig(**LLM, vocab_size=vocab_size, rope_theta=1e6, sliding_window=None)


def _original_config_keys(family: str, vocab_size: int) -> dict:
    """The LLM's part of an original config.json, as transformers 4.3x wrote it."""
    keys = {**LLM, "vocab_size": vocab_size, "hidden_act": "silu", "torch_dtype": "float32",
            "pad_token_id": 0, "rope_scaling": None, "use_cache": True,
            "transformers_version": "4.31.0", "max_length": 4096,
            "_name_or_path": "./checkpoints/vicuna-7b-v1.5"}
    if family == "llama":
        keys.update(rope_theta=10000.0, pretraining_tp=1)
    else:
        keys.update(rope_theta=1e6, sliding_window=None)
    return keys


def _base(family: str, tokenizer_dir, out):
    from transformers import LlamaForCausalLM, MistralForCausalLM

    tokenizer = _tokenizer(tokenizer_dir)
    torch.manual_seed(2 if family == "llama" else 3)
    cls = LlamaForCausalLM if family == "llama" else MistralForCausalLM
    model = cls(_llm_config(family, len(tokenizer))).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def llama_base(tokenizer_dir, tmp_path_factory):
    return _base("llama", tokenizer_dir, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def mistral_base(tokenizer_dir, tmp_path_factory):
    return _base("mistral", tokenizer_dir, tmp_path_factory.mktemp("mistral"))


def _load_llm(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


# --- original checkpoints, in the original's files and key names -----------------------


def _projector(kind: str, seed: int) -> dict:
    """Original projector weights: mlp2x_gelu is Sequential(Linear, GELU, Linear)."""
    g = torch.Generator().manual_seed(seed)
    d_in, d = VISION["hidden_size"], LLM["hidden_size"]
    if kind == "linear":
        return {"model.mm_projector.weight": torch.randn(d, d_in, generator=g) * 0.2,
                "model.mm_projector.bias": torch.randn(d, generator=g) * 0.1}
    return {"model.mm_projector.0.weight": torch.randn(d, d_in, generator=g) * 0.2,
            "model.mm_projector.0.bias": torch.randn(d, generator=g) * 0.1,
            "model.mm_projector.2.weight": torch.randn(d, d, generator=g) * 0.2,
            "model.mm_projector.2.bias": torch.randn(d, generator=g) * 0.1}


def _trained_tower_state(seed: int) -> dict:
    """A tower "trained with the LLM": other weights, under the original's names
    (LlavaMetaModel.vision_tower = CLIPVisionTower, whose .vision_tower is the
    CLIPVisionModel of transformers 4, with its vision_model submodule)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    state = CLIPVisionModel(CLIPVisionConfig(**VISION)).state_dict()
    return {"model.vision_tower.vision_tower.vision_model." + k.removeprefix("vision_model."): v
            for k, v in state.items()}


def _write_config(out, family, vocab_size, **llava):
    arch = {"llama": "LlavaLlamaForCausalLM", "mistral": "LlavaMistralForCausalLM"}[family]
    config = {"architectures": [arch], **_original_config_keys(family, vocab_size),
              "mm_hidden_size": VISION["hidden_size"], "mm_projector_type": "mlp2x_gelu",
              "mm_use_im_patch_token": False, "mm_use_im_start_end": False,
              "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
              "image_aspect_ratio": "pad", "mm_patch_merge_type": "flat",
              "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right",
              "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False,
              "use_mm_proj": True, "unfreeze_mm_vision_tower": False, **llava}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return config


def _write_shards(out, state: dict, n_shards: int) -> None:
    """pytorch_model-0000N-of-0000M.bin shards and their index, as the original's Trainer
    saved them (with the rotary inv_freq buffers transformers 4.31 kept in state dicts)."""
    keys = sorted(state)
    weight_map = {}
    for i in range(n_shards):
        name = f"pytorch_model-{i + 1:05d}-of-{n_shards:05d}.bin"
        part = {k: state[k] for k in keys[i::n_shards]}
        torch.save(part, out / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (out / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def _full_checkpoint(out, family, base, tokenizer_dir, tower, *, projector="mlp2x_gelu",
                     storage="bin", trained_tower=False, **llava):
    """A full original checkpoint: the LLM, the projector (and a trained tower)."""
    llm = _load_llm(base)
    state = {k: v.clone() for k, v in llm.state_dict().items()}
    for layer in range(LLM["num_hidden_layers"]):
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    state.update(_projector(projector, seed=4))
    if trained_tower:
        state.update(_trained_tower_state(seed=5))
    tokenizer = _tokenizer(tokenizer_dir)
    config = _write_config(out, family, len(tokenizer), mm_projector_type=projector,
                           mm_vision_tower=str(tower), **llava)
    if storage == "bin":
        _write_shards(out, state, n_shards=2)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, out / "model.safetensors")
    tokenizer.pad_token = tokenizer.unk_token  # what the original's v1 training sets
    tokenizer.save_pretrained(out)
    return config, state


def _embed(llm, ids: list[int]) -> torch.Tensor:
    return llm.get_input_embeddings()(torch.tensor(ids))


def original_forward(llm, tower_model, projector: dict, config: dict, pixel_values, ids):
    """The original LLaVA's computation, from its description: image features from CLIP
    ``hidden_states[mm_vision_select_layer]`` (CLS dropped for ``patch``) through the
    projector, spliced into the LLM's input embeddings where -200 stands."""
    with torch.no_grad():
        hidden = tower_model(pixel_values, output_hidden_states=True).hidden_states
        feats = hidden[config["mm_vision_select_layer"]]
        if config["mm_vision_select_feature"] == "patch":
            feats = feats[:, 1:]
        if config["mm_projector_type"] == "linear":
            proj = torch.nn.Linear(feats.shape[-1], LLM["hidden_size"])
            proj.load_state_dict({k.removeprefix("model.mm_projector."): v
                                  for k, v in projector.items()})
        else:
            proj = torch.nn.Sequential(torch.nn.Linear(feats.shape[-1], LLM["hidden_size"]),
                                       torch.nn.GELU(),
                                       torch.nn.Linear(LLM["hidden_size"], LLM["hidden_size"]))
            proj.load_state_dict({k.removeprefix("model.mm_projector."): v
                                  for k, v in projector.items()})
        image_features = proj(feats)[0]
        at = ids.index(IMAGE_TOKEN_INDEX)
        embeds = torch.cat([_embed(llm, ids[:at]), image_features, _embed(llm, ids[at + 1:])])
        logits = llm(inputs_embeds=embeds[None]).logits[0]
    return image_features, logits


def expand2square(image: Image.Image, background) -> Image.Image:
    """llava/mm_utils.py's expand2square, from its description: the image centred on a
    square of the background colour."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def original_pixels(tower, image: Image.Image, aspect: str) -> torch.Tensor:
    """mm_utils.process_images: expand2square in int(mean * 255) for ``pad``, then the
    tower's CLIP image processor."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tower)
    if aspect == "pad":
        image = expand2square(image, tuple(int(x * 255) for x in processor.image_mean))
    return processor(images=image, return_tensors="pt")["pixel_values"]


def _image(width=48, height=29, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    arr[: height // 2] = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    return Image.fromarray(arr)


def _prompt_ids(tokenizer) -> list[int]:
    """A vicuna_v1 prompt with the image as the original's tokenizer_image_token makes
    it: BOS + text, -200, text."""
    before = tokenizer(f"{VICUNA_SYSTEM} USER: ").input_ids
    after = tokenizer("\nWhat is in the picture? ASSISTANT:", add_special_tokens=False).input_ids
    return before + [IMAGE_TOKEN_INDEX] + after


def converted_forward(out, pixel_values, ids):
    """The converted checkpoint through transformers: image features and logits for the
    same ids, each -200 as ``image_seq_length`` copies of the image token."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    config = model.config
    at = ids.index(IMAGE_TOKEN_INDEX)
    hf_ids = ids[:at] + [config.image_token_index] * config.image_seq_length + ids[at + 1:]
    with torch.no_grad():
        feats = model.get_image_features(
            pixel_values=pixel_values, vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy)
        feats = getattr(feats, "pooler_output", feats)
        feats = feats[0] if isinstance(feats, (list, tuple)) else feats[0]
        logits = model(input_ids=torch.tensor([hf_ids]), pixel_values=pixel_values).logits[0]
    return model, feats, logits


def _convert(src, out, **spec):
    from llava_edge.trainer.convert import ConvertSpec, convert_checkpoint

    return convert_checkpoint(ConvertSpec(src=str(src), **spec), out)


def _compare(out, llm, tower_model, projector, config, tower, figures: dict, name: str):
    """Converted vs original on a non-square image: pixels, features, logits."""
    tokenizer = _tokenizer(out)
    ids = _prompt_ids(tokenizer)
    image = _image()
    pixels = original_pixels(tower, image, config["image_aspect_ratio"])
    hf_pixels = torch.as_tensor(
        __import__("transformers").AutoProcessor.from_pretrained(out).image_processor(
            images=image, return_tensors="np")["pixel_values"])
    assert torch.equal(hf_pixels, pixels)  # the same Pillow resize and float32 arithmetic
    want_feats, want_logits = original_forward(llm, tower_model, projector, config, pixels, ids)
    model, feats, logits = converted_forward(out, pixels, ids)
    vocab = want_logits.shape[-1]
    feat_diff = (feats - want_feats).abs().max().item()
    logit_diff = (logits[:, :vocab] - want_logits).abs().max().item()
    figures[name] = (feat_diff, logit_diff)
    print(f"{name}: max |features diff| {feat_diff:.2e}, max |logits diff| {logit_diff:.2e}")
    assert feats.shape == want_feats.shape
    assert feat_diff <= ATOL and logit_diff <= ATOL
    # the rows added for <image> / <pad> / padding: the mean of the old rows
    head = model.lm_head.weight.detach()
    assert head.shape[0] % 64 == 0 and head.shape[0] >= len(tokenizer)
    assert torch.allclose(head[vocab:], head[:vocab].mean(0).expand_as(head[vocab:]))
    return model


def _tower_model(tower, trained_state: dict | None = None):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if trained_state is None:
        return CLIPVisionModel.from_pretrained(tower, dtype=torch.float32).eval()
    model = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
    prefix = "model.vision_tower.vision_tower."
    state = {k[len(prefix):]: v for k, v in trained_state.items()}
    module_keys = set(model.state_dict())
    state = {(k if k in module_keys else k.removeprefix("vision_model.")): v
             for k, v in state.items()}
    model.load_state_dict(state)
    return model


FIGURES: dict = {}


# --- conversions compute what the original computes -------------------------------------


def test_full_llama_bin_shards_mlp2x_pad(tmp_path, llama_base, tokenizer_dir, tower):
    src = tmp_path / "llava-v1.5-tiny"
    config, state = _full_checkpoint(src, "llama", llama_base, tokenizer_dir, tower,
                                     model_type="llava")  # LLaVA-1.5's configs say "llava"
    out = tmp_path / "hf"
    done = _convert(src, out)
    assert (done.kind, done.llm_type, done.projector, done.template) == \
        ("full", "llama", "mlp2x_gelu", "vicuna_v1")
    assert done.template_guessed and done.vision_weights == "tower"
    assert done.image_aspect_ratio == "pad" and done.n_image_tokens == 16
    projector = {k: v for k, v in state.items() if "mm_projector" in k}
    _compare(out, _load_llm(llama_base), _tower_model(tower), projector, config, tower,
             FIGURES, "llama full (.bin shards, mlp2x_gelu, patch, -2, pad)")

    written = json.loads((out / "config.json").read_text())
    ours = written["llava_edge"]
    assert ours["random_init"] is False and ours["template"] == "vicuna_v1"
    assert ours["image_aspect_ratio"] == "pad"
    origin = ours["converted_from"]
    assert origin["kind"] == "full" and origin["architecture"] == "LlavaLlamaForCausalLM"
    assert origin["config"]["mm_projector_type"] == "mlp2x_gelu"
    assert origin["config"]["mm_vision_tower"] == str(tower)
    assert written["vision_feature_layer"] == -2
    assert written["vision_feature_select_strategy"] == "default"
    assert "mm_vision_tower" not in written["text_config"]
    assert written["text_config"]["pad_token_id"] == 0  # the tokenizer's pad is <unk>
    tokenizer = _tokenizer(out)
    assert tokenizer.convert_ids_to_tokens(written["image_token_index"]) == "<image>"
    processor = json.loads((out / "processor_config.json").read_text())["image_processor"]
    assert processor["do_pad"] is True
    assert processor["image_processor_type"].startswith("LlavaImageProcessor")
    from llava_edge.checkpoint_info import image_aspect_ratio

    assert image_aspect_ratio(written) == "pad"


def test_full_mistral_safetensors_linear_cls_patch_trained_tower(tmp_path, mistral_base,
                                                                 tokenizer_dir, tower):
    src = tmp_path / "llava-mistral-tiny"
    config, state = _full_checkpoint(
        src, "mistral", mistral_base, tokenizer_dir, tower, projector="linear",
        storage="safetensors", trained_tower=True, mm_vision_select_feature="cls_patch",
        mm_vision_select_layer=-1, image_aspect_ratio="square", model_type="llava_mistral")
    out = tmp_path / "hf"
    done = _convert(src, out)
    assert (done.llm_type, done.projector, done.template) == ("mistral", "linear",
                                                              "mistral_instruct")
    assert done.vision_weights == "checkpoint" and done.n_image_tokens == 17  # CLS kept
    projector = {k: v for k, v in state.items() if "mm_projector" in k}
    trained = {k: v for k, v in state.items() if k.startswith("model.vision_tower.")}
    model = _compare(out, _load_llm(mistral_base), _tower_model(tower, trained), projector,
                     config, tower, FIGURES,
                     "mistral full (safetensors, linear, cls_patch, -1, trained tower)")
    assert model.config.projector_hidden_act == "linear"
    assert model.config.vision_feature_select_strategy == "full"
    written = json.loads((out / "config.json").read_text())
    assert written["llava_edge"]["image_aspect_ratio"] == "square"
    assert written["llava_edge"]["converted_from"]["vision_weights"] == "checkpoint"
    assert json.loads((out / "processor_config.json").read_text())[
        "image_processor"]["do_pad"] is False


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_run_is_merged_as_peft_merges_it(tmp_path, llama_base, tower, rslora):
    """A LoRA run: adapter + non_lora_trainables.bin over --base. The reference LLM is
    peft's own merge_and_unload of the same adapter."""
    from peft import LoraConfig, PeftModel, get_peft_model

    src = tmp_path / "llava-lora"
    torch.manual_seed(6)
    peft_model = get_peft_model(_load_llm(llama_base), LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False, use_rslora=rslora, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(src)  # adapter_config.json + adapter_model.safetensors
    projector = _projector("mlp2x_gelu", seed=7)
    torch.save({"base_model.model." + k: v for k, v in projector.items()},
               src / "non_lora_trainables.bin")
    # mm_use_im_patch_token true: the original loader adds <im_patch> (with a row) first.
    config = _write_config(src, "llama", len(_tokenizer(llama_base)),
                           mm_vision_tower=str(tower), mm_use_im_patch_token=True)
    adapter_keys = list(json.loads((src / "adapter_config.json").read_text()))
    assert "r" in adapter_keys

    out = tmp_path / "hf"
    from llava_edge.trainer.convert import ConvertError

    with pytest.raises(ConvertError, match="pass --base"):
        _convert(src, out)
    assert not out.exists()
    done = _convert(src, out, base=str(llama_base))
    assert done.kind == "lora"
    tokenizer = _tokenizer(out)
    assert tokenizer.convert_ids_to_tokens(done.image_token_id - 1) == "<im_patch>"
    merged = PeftModel.from_pretrained(_load_llm(llama_base), src).merge_and_unload().eval()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[name], _load_llm(llama_base).state_dict()[name])
    _compare(out, merged, _tower_model(tower), projector, config, tower, FIGURES,
             f"llama LoRA (r=4, alpha=16{', rsLoRA' if rslora else ''}) + non_lora_trainables")

    adapter = json.loads((src / "adapter_config.json").read_text())
    (src / "adapter_config.json").write_text(json.dumps({**adapter, "use_dora": True}))
    with pytest.raises(ConvertError, match="DoRA adapters are not supported"):
        _convert(src, tmp_path / "dora", base=str(llama_base))


def test_stage1_projector_over_base(tmp_path, llama_base, tower):
    src = tmp_path / "llava-pretrain"
    config = _write_config(src, "llama", len(_tokenizer(llama_base)),
                           mm_vision_tower=str(tower), tune_mm_mlp_adapter=True)
    projector = _projector("mlp2x_gelu", seed=8)
    torch.save(projector, src / "mm_projector.bin")
    out = tmp_path / "hf"
    from llava_edge.trainer.convert import ConvertError

    with pytest.raises(ConvertError, match="stage-1 .* pass --base"):
        _convert(src, out)
    done = _convert(src, out, base=str(llama_base))
    assert done.kind == "stage1"
    _compare(out, _load_llm(llama_base), _tower_model(tower), projector, config, tower,
             FIGURES, "llama stage 1 (mm_projector.bin over --base)")


# --- pad to square: the runtime, the converted processor and the original agree ---------


def test_pad_to_square_runtime_equals_hf_and_original(tmp_path, llama_base, tokenizer_dir,
                                                      tower):
    from transformers import AutoProcessor

    from llava_edge.checkpoint_info import image_aspect_ratio
    from llava_edge.export.vision import preprocess_recipe
    from llava_edge.runtimes.preprocess import PreprocessRecipe, preprocess

    src = tmp_path / "src"
    _full_checkpoint(src, "llama", llama_base, tokenizer_dir, tower)
    out = tmp_path / "hf"
    _convert(src, out)
    config = json.loads((out / "config.json").read_text())
    image_processor = json.loads((out / "processor_config.json").read_text())["image_processor"]
    # What export puts in the bundle (export/vision.py), and the recipe from the processor
    # alone: a LlavaImageProcessor with do_pad pads by itself.
    bundle_recipe = PreprocessRecipe.from_dict(
        preprocess_recipe(AutoProcessor.from_pretrained(out), out))
    assert bundle_recipe.pad_to_square and image_aspect_ratio(config) == "pad"
    assert PreprocessRecipe.from_hf(image_processor).pad_to_square
    hf = AutoProcessor.from_pretrained(out).image_processor
    for i, (w, h) in enumerate([(48, 29), (29, 48), (101, 40), (33, 33), (7, 90)]):
        image = _image(w, h, seed=i)
        ours = preprocess(image, bundle_recipe)
        theirs = hf(images=image, return_tensors="np")["pixel_values"][0]
        original = original_pixels(tower, image, "pad")[0].numpy()
        assert np.array_equal(theirs, original), (w, h)
        # numpy vs transformers' normalisation, both float32: the runtime's own tests
        # hold it to 1e-5 (test_runtime_preprocess); measured here: exactly 0.
        assert np.abs(ours - theirs).max() <= 1e-5, (w, h)
    # The fill is int(mean * 255) per channel, centred: (122, 116, 104) for CLIP.
    square = expand2square(_image(40, 20), tuple(int(x * 255) for x in CLIP_MEAN))
    assert square.getpixel((0, 0)) == (122, 116, 104)


# --- templates render what the original's Conversation.get_prompt renders ---------------


def get_prompt(style: str, system: str, roles, sep: str, sep2, messages) -> str:
    """llava/conversation.py's Conversation.get_prompt for the separator styles the
    templates cover, from its description. ``messages``: (role, text or None) pairs, the
    first user text already "<image>\\n" + text."""
    if style == "TWO":
        seps = [sep, sep2]
        ret = system + seps[0]
        for i, (role, message) in enumerate(messages):
            ret += role + ": " + message + seps[i % 2] if message else role + ":"
        return ret
    if style == "LLAMA_2":
        def wrap_sys(msg):
            return f"<<SYS>>\n{msg}\n<</SYS>>\n\n" if len(msg) > 0 else msg

        ret = ""
        for i, (_role, message) in enumerate(messages):
            if message:
                if i == 0:
                    message = wrap_sys(system) + message
                if i % 2 == 0:
                    ret += sep + f"[INST] {message} [/INST]"
                else:
                    ret += " " + message + " " + sep2
        return ret.lstrip(sep)
    if style == "MPT":
        ret = system + sep
        for role, message in messages:
            ret += role + message + sep if message else role
        return ret
    raise ValueError(style)


LLAVA_LLAMA_2_SYSTEM = ("You are a helpful language and vision assistant. You are able to "
                        "understand the visual content that the user provides, and assist the "
                        "user with a variety of tasks using natural language.")
CONVERSATIONS = {  # name -> (style, system, roles, sep, sep2), as conversation.py defines them
    "vicuna_v1": ("TWO", VICUNA_SYSTEM, ("USER", "ASSISTANT"), " ", "</s>"),
    "llava_llama_2": ("LLAMA_2", LLAVA_LLAMA_2_SYSTEM, ("USER", "ASSISTANT"), "<s>", "</s>"),
    "mistral_instruct": ("LLAMA_2", "", ("USER", "ASSISTANT"), "", "</s>"),
    "chatml_direct": ("MPT", "<|im_start|>system\nAnswer the questions.",
                      ("<|im_start|>user\n", "<|im_start|>assistant\n"), "<|im_end|>", None),
}


@pytest.mark.parametrize("name", list(CONVERSATIONS))
@pytest.mark.parametrize("turns", [1, 2])
def test_template_renders_the_original_get_prompt(name, turns, tokenizer_dir):
    from llava_edge.templates import TEMPLATES

    style, system, roles, sep, sep2 = CONVERSATIONS[name]
    q1, a1, q2 = "What is in the picture?", "A red circle.", "And its size?"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q1}]}]
    original = [(roles[0], "<image>\n" + q1)]
    if turns == 2:
        messages += [{"role": "assistant", "content": a1}, {"role": "user", "content": q2}]
        original += [(roles[1], a1), (roles[0], q2)]
    original.append((roles[1], None))
    tokenizer = _tokenizer(tokenizer_dir)  # bos "<s>", eos "</s>", as Llama's
    rendered = tokenizer.apply_chat_template(messages, chat_template=TEMPLATES[name].jinja,
                                             tokenize=False, add_generation_prompt=True)
    assert rendered == get_prompt(style, system, roles, sep, sep2, original)


@pytest.mark.parametrize("name", ["llava_llama_2", "mistral_instruct", "chatml_direct"])
def test_new_templates_let_the_trainer_mask_replies(name, tokenizer_dir):
    from llava_edge.templates import TEMPLATES
    from llava_edge.trainer.conversation import make_chat_format

    tokenizer = _tokenizer(tokenizer_dir)
    chat = make_chat_format(name, tokenizer, {})
    messages = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A one."},
                {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A two."}]
    text, spans = chat.reply_spans(messages)
    stop = TEMPLATES[name].stop[0]
    replies = [text[a:b].strip() for a, b in spans]
    assert replies == [f"A one.{' ' if name != 'chatml_direct' else ''}{stop}",
                       f"A two.{' ' if name != 'chatml_direct' else ''}{stop}"]
    # The {% generation %} blocks mark the same replies for transformers' assistant mask.
    out = tokenizer.apply_chat_template(messages, chat_template=TEMPLATES[name].jinja,
                                        tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    marked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert "A one." in tokenizer.decode(marked) and "A two." in tokenizer.decode(marked)
    assert "Q1" not in tokenizer.decode(marked)


# --- refusals: named, immediate, nothing written ----------------------------------------


def _config_only(tmp_path, family="llama", marker="pytorch_model.bin", **llava):
    src = tmp_path / "src"
    llava.setdefault("mm_vision_tower", "/nowhere/clip")
    config = _write_config(src, family, 1430, **llava)
    if marker:
        (src / marker).write_bytes(b"")  # never read: every refusal comes first
    return src, config


@pytest.mark.parametrize("llava, message", [
    (dict(mm_projector_type="mlp3x_gelu"),
     r"'mlp3x_gelu'.*two linear layers.*cannot be expressed"),
    (dict(mm_projector_type="identity"), r"unknown projector 'identity'"),
    (dict(mm_use_im_start_end=True), r"mm_use_im_start_end True wraps each image in "
                                     r"<im_start>/<im_end>.*LLaVA-1.5 checkpoints use false"),
    (dict(image_aspect_ratio="anyres"), r"image_aspect_ratio 'anyres' is LLaVA-NeXT"),
    (dict(mm_patch_merge_type="spatial_unpad"), r"mm_patch_merge_type 'spatial_unpad' is "
                                                r"LLaVA-NeXT"),
    (dict(s2=True), r"s2 True is a multi-scale \(S2\) vision tower"),
    (dict(architectures=["LlavaMptForCausalLM"], model_type="llava_mpt"),
     r"LlavaMptForCausalLM: MPT language models are not supported by llava-edge "
     r"\(supported: Llama, Mistral, Qwen2\)"),
    (dict(architectures=["LlavaGemmaForCausalLM"]),
     r"unknown architecture LlavaGemmaForCausalLM.*LlavaLlamaForCausalLM"),
    (dict(text_config={}, architectures=["LlavaForConditionalGeneration"]),
     r"already a llava-hf checkpoint"),
])
def test_refusals_name_the_key_and_the_reason(tmp_path, llava, message):
    from llava_edge.trainer.convert import ConvertError

    src, _ = _config_only(tmp_path, **llava)
    with pytest.raises(ConvertError, match=message):
        _convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case, message", [
    ("no config", r"no config.json"),
    ("no weights", r"no weights; expected one of: .*adapter_config.json.*mm_projector.bin"),
    ("lora without base", r"is a LoRA run .* pass --base"),
    ("stage1 without base", r"is a stage-1 .* pass --base"),
    ("unknown template", r"unknown template 'alpaca'; choose one of: vicuna_v1, .*chatml_direct"),
])
def test_missing_parts_are_named(tmp_path, case, message):
    marker = {"no weights": None, "lora without base": "adapter_config.json",
              "stage1 without base": "mm_projector.bin"}.get(case, "pytorch_model.bin")
    src, _ = _config_only(tmp_path, marker=marker)
    if case == "no config":
        (src / "config.json").unlink()
    spec = {"template": "alpaca"} if case == "unknown template" else {}
    with pytest.raises(LlavaEdgeError, match=message):
        _convert(src, tmp_path / "out", **spec)
    assert not (tmp_path / "out").exists()


def test_offline_hub_ids_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src, _ = _config_only(tmp_path, mm_vision_tower="llava-edge-tests/clip-nowhere-336")
    with pytest.raises(LlavaEdgeError, match=r"mm_vision_tower .*--vision-tower.* "
                       r"llava-edge-tests/clip-nowhere-336: .*offline.*huggingface-cli download"):
        _convert(src, tmp_path / "out")
    with pytest.raises(LlavaEdgeError, match=r"^SRC llava-edge-tests/llava-nowhere: .*offline"):
        _convert("llava-edge-tests/llava-nowhere", tmp_path / "out")
    with pytest.raises(LlavaEdgeError, match=r"^SRC .*/not-here: no such directory"):
        _convert(tmp_path / "not-here", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_broken_weights_are_named_and_nothing_is_written(tmp_path, llama_base, tokenizer_dir,
                                                         tower):
    from llava_edge.trainer.convert import ConvertError

    src = tmp_path / "src"
    _full_checkpoint(src, "llama", llama_base, tokenizer_dir, tower)
    out = tmp_path / "out"
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())

    shard = src / "pytorch_model-00002-of-00002.bin"
    shard.rename(src / "moved.bin")
    with pytest.raises(ConvertError, match=r"shard\(s\) missing .*pytorch_model-00002-of-00002"):
        _convert(src, out)
    (src / "moved.bin").rename(shard)

    state = torch.load(shard, weights_only=True)
    torch.save({**state, "model.mm_projector.5.weight": torch.zeros(1)}, shard)
    index["weight_map"]["model.mm_projector.5.weight"] = shard.name
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(ConvertError, match=r"pytorch_model-00002-of-00002.bin: unexpected key "
                                           r"model.mm_projector.5.weight"):
        _convert(src, out)

    del index["weight_map"]["model.mm_projector.5.weight"]
    torch.save(state, shard)
    holder = src / index["weight_map"].pop("model.norm.weight")
    torch.save({k: v for k, v in torch.load(holder, weights_only=True).items()
                if k != "model.norm.weight"}, holder)
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(ConvertError, match=r"no model.norm.weight"):
        _convert(src, out)

    config = json.loads((src / "config.json").read_text())
    config["mm_hidden_size"] = 48
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConvertError, match=r"mm_hidden_size 48: not the tower"):
        _convert(src, out)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_existing_output_needs_force(tmp_path):
    src, _ = _config_only(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LlavaEdgeError, match="exists and is not empty"):
        _convert(src, out)
    assert (out / "keep.txt").read_text() == "mine"


# --- the command line, then export of the result -----------------------------------------


def test_cli_convert_json_then_refusal(tmp_path, llama_base, tokenizer_dir, tower):
    from click.testing import CliRunner

    from llava_edge.cli import cli, run

    src = tmp_path / "src"
    _full_checkpoint(src, "llama", llama_base, tokenizer_dir, tower)
    out = tmp_path / "hf"
    result = CliRunner().invoke(cli, ["convert", str(src), "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["template"] == "vicuna_v1" and summary["template_guessed"] is True
    assert summary["random_init"] is False and summary["image_aspect_ratio"] == "pad"
    assert "config.json" in summary["files"]

    plain = CliRunner().invoke(cli, ["convert", str(src), "-o", str(out), "--force",
                                     "--template", "llava_llama_2"])
    assert plain.exit_code == 0, plain.output
    assert "template llava_llama_2\n" in plain.output and "images padded to square" in plain.output
    assert json.loads((out / "config.json").read_text())["llava_edge"]["template"] == \
        "llava_llama_2"

    # Through the real entry point: a one-line error and exit code 1.
    assert run(["convert", str(src), "-o", str(out)]) == 1  # exists, no --force


@pytest.mark.slow
def test_cli_convert_then_export(tmp_path, llama_base, tokenizer_dir, tower):
    from click.testing import CliRunner

    from llava_edge.cli import cli

    src = tmp_path / "src"
    _full_checkpoint(src, "llama", llama_base, tokenizer_dir, tower)
    out = tmp_path / "hf"
    result = CliRunner().invoke(cli, ["convert", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "template vicuna_v1 (guessed from the llama LLM" in result.output
    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["export", str(out), "-o", str(bundle), "--vision-precision",
                                      "fp32", "--llm-quant", "F16", "--no-parity", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["preprocess"]["pad_to_square"] is True
    assert manifest["prompt"]["template"] == "vicuna_v1"
    assert manifest["source"]["random_init"] is False


@pytest.mark.slow
def test_converted_checkpoint_trains(tmp_path, llama_base, tokenizer_dir, tower):
    """One stage-2 step of llava-edge's trainer on a converted checkpoint."""
    from llava_edge.cli import run
    from llava_edge.data.shapes import ShapesConfig, generate_shapes

    src = tmp_path / "src"
    _full_checkpoint(src, "llama", llama_base, tokenizer_dir, tower)
    out = tmp_path / "hf"
    _convert(src, out)
    shapes = generate_shapes(tmp_path / "shapes", ShapesConfig(n_train=4, n_eval=2))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"micro_batch_size: 2\nglobal_batch_size: 2\nimage_folder: "
                   f"{shapes.image_folder}\nmodel_max_length: 256\n")
    assert run(["train", "--stage", "2", "--model", str(out), "--data", str(shapes.stage2),
                "--output-dir", str(tmp_path / "run"), "--config", str(cfg), "--max-steps", "1",
                "--save-steps", "0"]) == 0
    trained = json.loads((tmp_path / "run" / "config.json").read_text())["llava_edge"]
    assert trained["template"] == "vicuna_v1"
    assert trained["training"]["image_aspect_ratio"] == "pad"
