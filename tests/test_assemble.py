"""``llava-edge init --vision ... --llm ...``: a LLaVA checkpoint from a pretrained tower and
a pretrained LLM. The parts are built here, tiny and random (no downloads); the checks are
that the assembled checkpoint loads, keeps both parts bit for bit, has a fresh seeded
projector, and that train and export take it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llava_edge.cli import run
from llava_edge.errors import LlavaEdgeError
from llava_edge.presets import TokenizerSpec
from llava_edge.trainer import assemble
from llava_edge.trainer.init_from_parts import PartsSpec, assemble_checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
              image_size=32, patch_size=8)  # 16 patches
N_PATCHES = (32 // 8) ** 2


# --------------------------------------------------------------------------------------
# The parts


def _sentencepiece_tokenizer(out: Path):
    """A Llama-style tokenizer without <image> or <pad> (the project's, those removed)."""
    from transformers import LlamaTokenizer

    from llava_edge.trainer.tokenizer_build import build_tokenizer

    build = out.parent / f"{out.name}-tokenizer"
    build_tokenizer(TokenizerSpec("sentencepiece", 500, "vicuna_v1"), build)
    out.mkdir(parents=True)
    shutil.copy(build / "tokenizer.model", out / "tokenizer.model")
    return LlamaTokenizer.from_pretrained(out, add_bos_token=True, add_eos_token=False,
                                          legacy=False)


def _qwen2_tokenizer(out: Path):
    """A byte-level BPE with ChatML tokens and <|endoftext|> as pad, without <image>."""
    from transformers import PreTrainedTokenizerFast

    from llava_edge.trainer.tokenizer_build import build_tokenizer

    build = out.parent / f"{out.name}-tokenizer"
    build_tokenizer(TokenizerSpec("bpe", 500, "chatml"), build)
    data = json.loads((build / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<image>"]
    out.mkdir(parents=True)
    (out / "tokenizer.json").write_text(json.dumps(data))
    return PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"),
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _llm(kind: str, out: Path) -> Path:
    from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    tokenizer = _qwen2_tokenizer(out) if kind == "qwen2" else _sentencepiece_tokenizer(out)
    model_cls, config_cls = {"llama": (LlamaForCausalLM, LlamaConfig),
                             "mistral": (MistralForCausalLM, MistralConfig),
                             "qwen2": (Qwen2ForCausalLM, Qwen2Config)}[kind]
    torch.manual_seed(1)
    config = config_cls(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id,
                        tie_word_embeddings=kind == "qwen2", **TEXT)
    model_cls(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _clip(out: Path, full: bool) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(2)
    if full:  # the two-tower CLIPModel, as openai/clip-vit-* ship
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, vocab_size=100, bos_token_id=0, eos_token_id=1,
                    pad_token_id=1)
        CLIPModel(CLIPConfig(vision_config=VISION, text_config=text,
                             projection_dim=16)).save_pretrained(out)
    else:
        CLIPVisionModel(CLIPVisionConfig(**VISION)).save_pretrained(out)
    return out


def _siglip(out: Path) -> Path:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(3)
    SiglipVisionModel(SiglipVisionConfig(**VISION)).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parts")
    return {"llama": _llm("llama", root / "llama"), "mistral": _llm("mistral", root / "mistral"),
            "qwen2": _llm("qwen2", root / "qwen2"), "clip": _clip(root / "clip", full=True),
            "clip_vision": _clip(root / "clip-vision", full=False),
            "siglip": _siglip(root / "siglip")}


@pytest.fixture(scope="module")
def assembled(parts, tmp_path_factory) -> dict[str, Path]:
    """clip + llama (mlp2x_gelu), clip-vision + mistral, siglip + qwen2 (linear)."""
    root = tmp_path_factory.mktemp("assembled")
    specs = {"clip+llama": PartsSpec(str(parts["clip"]), str(parts["llama"])),
             "clip_vision+mistral": PartsSpec(str(parts["clip_vision"]), str(parts["mistral"]),
                                              select_feature="cls_patch"),
             "siglip+qwen2": PartsSpec(str(parts["siglip"]), str(parts["qwen2"]),
                                       projector="linear")}
    return {name: assemble_checkpoint(spec, root / name).path for name, spec in specs.items()}


def _load(path: Path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    return model, AutoProcessor.from_pretrained(path)


def _feature_rows(features):
    """get_image_features' result (a tensor, a list per image, or an output object in
    newer transformers) as one [rows, hidden] tensor."""
    features = getattr(features, "pooler_output", features)
    if isinstance(features, (list, tuple)):
        features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
    return features.reshape(-1, features.shape[-1])


# --------------------------------------------------------------------------------------
# What the assembled checkpoint holds

CASES = [("clip+llama", "clip", "llama"), ("clip_vision+mistral", "clip_vision", "mistral"),
         ("siglip+qwen2", "siglip", "qwen2")]


@pytest.mark.parametrize("name, vision, llm", CASES)
def test_language_model_keeps_its_logits(assembled, parts, name, vision, llm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, processor = _load(assembled[name])
    source = AutoModelForCausalLM.from_pretrained(parts[llm]).eval()
    ids = AutoTokenizer.from_pretrained(parts[llm])("A red square above a blue circle.",
                                                   return_tensors="pt").input_ids
    # The source tokenizer's ids are the same in the grown tokenizer (tokens are appended).
    assert processor.tokenizer(["A red square above a blue circle."],
                               return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        theirs = source(input_ids=ids).logits
    old = theirs.shape[-1]
    # The same weights through the same ops: bit for bit, not merely close.
    assert torch.equal(ours[..., :old], theirs)
    assert ours.shape[-1] == model.config.text_config.vocab_size


@pytest.mark.parametrize("name, vision, llm", CASES)
def test_vision_tower_keeps_its_hidden_states(assembled, parts, name, vision, llm):
    from transformers import CLIPVisionModel, SiglipVisionModel

    model, _ = _load(assembled[name])
    cls = SiglipVisionModel if vision == "siglip" else CLIPVisionModel
    source = cls.from_pretrained(parts[vision]).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        theirs = source(pixels, output_hidden_states=True).hidden_states
    assert len(ours) == len(theirs) == VISION["num_hidden_layers"] + 1
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    # Only the tower: no text tower, no SigLIP pooling head.
    keys = model.model.vision_tower.state_dict().keys()
    assert not any("text_model" in k or k.startswith("head.") for k in keys)


@pytest.mark.parametrize("name, n_tokens", [("clip+llama", N_PATCHES),
                                            ("clip_vision+mistral", N_PATCHES + 1),
                                            ("siglip+qwen2", N_PATCHES)])
def test_image_features_have_image_seq_length_rows(assembled, name, n_tokens):
    from PIL import Image

    model, processor = _load(assembled[name])
    assert model.config.image_seq_length == n_tokens
    messages = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": "What is this?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.new("RGB", (40, 30), "red"), text=prompt,
                       return_tensors="pt")
    image_id = model.config.image_token_index
    assert int((inputs.input_ids == image_id).sum()) == n_tokens  # the processor agrees
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs.pixel_values)
        assert _feature_rows(features).shape == (n_tokens, TEXT["hidden_size"])
        out = model(**inputs)  # and the whole model runs on it
    assert out.logits.shape[1] == inputs.input_ids.shape[1]


@pytest.mark.parametrize("name, llm, pad", [("clip+llama", "llama", "<pad>"),
                                            ("siglip+qwen2", "qwen2", "<|endoftext|>")])
def test_tokens_and_embedding_rows(assembled, parts, name, llm, pad):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model, processor = _load(assembled[name])
    tok = processor.tokenizer
    config = json.loads((assembled[name] / "config.json").read_text())
    source = AutoModelForCausalLM.from_pretrained(parts[llm])
    old = source.get_input_embeddings().weight
    assert tok.convert_tokens_to_ids("<image>") == config["image_token_index"] == len(tok) - (
        2 if llm == "llama" else 1)
    assert tok.pad_token == pad and config["text_config"]["pad_token_id"] == tok.pad_token_id
    added = tok.added_tokens_decoder[config["image_token_index"]]
    assert (added.content, added.special, added.normalized) == ("<image>", True, False)
    assert tok.tokenize("a<image>b").count("<image>") == 1  # never split
    vocab = config["text_config"]["vocab_size"]
    assert vocab % 64 == 0 and vocab >= len(tok) and vocab - len(tok) < 64
    new = model.get_input_embeddings().weight
    assert torch.equal(new[: old.shape[0]], old)
    assert torch.allclose(new[old.shape[0]:], old.mean(0).expand(vocab - old.shape[0], -1))
    head = model.get_output_embeddings().weight
    assert torch.allclose(head[old.shape[0]:],
                          source.get_output_embeddings().weight.mean(0).expand_as(
                              head[old.shape[0]:]))
    # A tied LLM stays tied (one matrix on disk).
    weights = load_file(str(assembled[name] / "model.safetensors"))
    assert any("lm_head" in k for k in weights) == (llm != "qwen2")
    ours = config["llava_edge"]
    assert ours["random_init"] is False and ours["projector"] == "fresh"
    assert ours["sources"]["llm"] == str(parts[llm]) and ours["created_by"].startswith("llava")
    assert ours["template"] == ("chatml" if llm == "qwen2" else "vicuna_v1")
    assert (assembled[name] / "chat_template.jinja").is_file()


def test_projector_is_fresh_and_seeded(parts, tmp_path):
    def projector(seed, out):
        assemble_checkpoint(PartsSpec(str(parts["clip_vision"]), str(parts["llama"]),
                                      seed=seed), tmp_path / out)
        from safetensors.torch import load_file

        return {k: v for k, v in load_file(str(tmp_path / out / "model.safetensors")).items()
                if "multi_modal_projector" in k}

    a, b, c = projector(0, "a"), projector(0, "b"), projector(1, "c")
    assert len(a) == 4 and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))
    # transformers' own initialisation for LLaVA: normal weights, zero biases.
    weight = next(v for k, v in a.items() if k.endswith("linear_1.weight"))
    assert abs(float(weight.std()) - 0.02) < 0.005
    assert all(float(v.abs().max()) == 0 for k, v in a.items() if k.endswith("bias"))


def test_linear_projector_is_the_single_linear_exactly(assembled):
    from transformers.activations import ACT2FN

    model, _ = _load(assembled["siglip+qwen2"])
    assert model.config.projector_hidden_act == "linear"
    x = torch.randn(3, 5, VISION["hidden_size"], generator=torch.Generator().manual_seed(1))
    assert torch.equal(ACT2FN["linear"](x), x)  # transformers' "linear" is the identity
    proj = model.model.multi_modal_projector
    with torch.no_grad():
        assert torch.equal(proj(x), torch.nn.functional.linear(x, proj.linear_1.weight,
                                                               proj.linear_1.bias))


def test_linear_projector_as_two_layers():
    from transformers import LlavaConfig
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(16, 8, generator=gen), torch.randn(16, generator=gen)
    config = LlavaConfig(vision_config=dict(model_type="clip_vision_model", hidden_size=8,
                                            num_attention_heads=2),
                         text_config=dict(model_type="llama", hidden_size=16,
                                          num_attention_heads=2),
                         projector_hidden_act="linear", multimodal_projector_bias=True)
    projector = LlavaMultiModalProjector(config)
    for bias_in in (bias, None):
        projector.load_state_dict(assemble.linear_projector_as_two_layers(weight, bias_in))
        x = torch.randn(4, 8, generator=gen)
        with torch.no_grad():
            assert torch.equal(projector(x), torch.nn.functional.linear(x, weight, bias_in))


def test_building_blocks(parts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(parts["llama"])
    n = len(tok)
    image_id, pad_id = assemble.add_llava_tokens(tok)
    assert (image_id, pad_id) == (n, n + 1)
    assert assemble.add_llava_tokens(tok) == (image_id, pad_id) and len(tok) == n + 2
    llm = AutoModelForCausalLM.from_pretrained(parts["llama"])
    assert assemble.grow_embeddings(llm, len(tok)) == 512
    assert assemble.grow_embeddings(llm, 100) == 512  # never shrinks
    assert llm.config.vocab_size == 512

    config, state, processor = assemble.load_vision_tower(str(parts["clip"]))
    assert config.model_type == "clip_vision_model" and config.image_size == 32
    assert state and all(k.startswith("vision_model.") for k in state)
    assert type(processor).__name__.startswith("CLIPImageProcessor")
    assert processor.crop_size == {"height": 32, "width": 32}
    config, state, processor = assemble.load_vision_tower(str(parts["siglip"]))
    assert config.vision_use_head is False and not any(".head." in k for k in state)
    assert type(processor).__name__.startswith("SiglipImageProcessor")


def test_vision_directory_with_its_own_preprocessor_config(parts, tmp_path):
    from transformers import CLIPImageProcessor

    vision = tmp_path / "clip"
    shutil.copytree(parts["clip_vision"], vision)
    own = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                             image_mean=[0.1, 0.2, 0.3], image_std=[0.5, 0.5, 0.5])
    own.save_pretrained(vision)
    _, _, processor = assemble.load_vision_tower(str(vision))
    assert list(processor.image_mean) == [0.1, 0.2, 0.3]


# --------------------------------------------------------------------------------------
# Errors name what is at fault


def _spec(parts, **over):
    values = dict(vision=str(parts["clip"]), llm=str(parts["llama"]))
    values.update(over)
    return PartsSpec(**values)


@pytest.mark.parametrize("over, message", [
    (dict(vision="/no/such/tower"), "--vision /no/such/tower: no such directory"),
    (dict(llm="nowhere-llm"), "--llm nowhere-llm: no such directory"),
    (dict(vision="LLAMA"), r"model_type 'llama' is not a supported vision tower \(supported: "
                           r"clip, clip_vision_model, siglip, siglip_vision_model\)"),
    (dict(llm="CLIP"), r"--llm .*clip: model_type 'clip' is not a supported language model "
                       r"\(supported: llama, mistral, qwen2\)"),
    (dict(projector="mlp3x_gelu"), "unknown projector 'mlp3x_gelu': llava-hf's projector "
                                   r"\(LlavaMultiModalProjector\) has two linear layers"),
    (dict(projector="identity"),
     "unknown projector 'identity': choose one of: mlp2x_gelu, linear"),
    (dict(template="alpaca"), "unknown template 'alpaca'; choose one of: .*vicuna_v1"),
    (dict(vision="SIGLIP", select_feature="cls_patch"), "SigLIP tower has no CLS token"),
    (dict(select_layer=-9), "--select-layer -9: the vision tower has 3 layers"),
])
def test_errors_name_the_part(parts, tmp_path, over, message):
    over = {k: str(parts[v.lower()]) if isinstance(v, str) and v.isupper() else v
            for k, v in over.items()}
    with pytest.raises(LlavaEdgeError, match=message):
        assemble_checkpoint(_spec(parts, **over), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.iterdir())  # no temporary folder left either


def test_a_llava_checkpoint_as_llm_is_named(tiny_checkpoint, parts, tmp_path):
    with pytest.raises(LlavaEdgeError, match="it is a LLaVA checkpoint already"):
        assemble_checkpoint(_spec(parts, llm=str(tiny_checkpoint)), tmp_path / "out")


def test_refuses_to_overwrite_without_force(parts, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LlavaEdgeError, match="exists and is not empty .*--force"):
        assemble_checkpoint(_spec(parts), out)
    assert (out / "keep.txt").read_text() == "mine"
    assemble_checkpoint(_spec(parts), out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


# --------------------------------------------------------------------------------------
# The command line, and what takes the result


def test_init_command(parts, tmp_path, capsys):
    out = tmp_path / "ckpt"
    args = ["init", "--vision", str(parts["siglip"]), "--llm", str(parts["qwen2"]), str(out),
            "--select-layer", "-1", "--template", "vicuna_v1", "--seed", "3",
            "--projector", "linear"]
    assert run([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["vision"] == "siglip" and result["llm"] == "qwen2"
    assert result["n_image_tokens"] == N_PATCHES and result["template"] == "vicuna_v1"
    config = json.loads((out / "config.json").read_text())
    assert config["vision_feature_layer"] == -1
    assert config["vision_feature_select_strategy"] == "full"
    assert config["llava_edge"]["seed"] == 3
    assert run(args) == 1
    assert "exists and is not empty" in capsys.readouterr().err
    assert run([*args, "--force"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: siglip + qwen2")
    assert run(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["random_init"] is False and info["image_tokens_per_image"] == N_PATCHES
    assert info["projector"]["type"] == "linear"


@pytest.mark.parametrize("args, message", [
    (["--preset", "tiny", "--vision", "v"], "give either --preset or --vision/--llm, not both"),
    (["--preset", "tiny", "--projector", "linear"], "(--projector only apply to --vision/--llm)"),
    (["--vision", "v"], "--vision needs --llm too"),
    (["--llm", "l"], "--llm needs --vision too"),
    ([], "give --preset NAME, or --vision DIR_OR_ID and --llm DIR_OR_ID"),
    (["--vision", "v", "--llm", "l", "--projector", "mlp3x_gelu"], "has two linear layers"),
])
def test_init_command_errors_are_one_line(args, message, tmp_path, capsys):
    assert run(["init", *args, str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_init_from_hub_ids(parts, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    def fake_download(repo_id, revision=None, local_files_only=False, **_):
        calls.append((repo_id, revision))
        return str({"openai/clip-tiny": parts["clip"], "meta/llama-tiny": parts["llama"]}[repo_id])

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    out = tmp_path / "ckpt"
    assert run(["init", "--vision", "openai/clip-tiny@v2", "--llm", "meta/llama-tiny",
                str(out)]) == 0
    assert calls == [("openai/clip-tiny", "v2"), ("meta/llama-tiny", None)]
    sources = json.loads((out / "config.json").read_text())["llava_edge"]["sources"]
    assert sources == {"vision": "openai/clip-tiny@v2", "llm": "meta/llama-tiny"}


@pytest.mark.parametrize("name, template", [("clip+llama", "vicuna_v1"),
                                            ("siglip+qwen2", "chatml")])  # linear projector
def test_export_takes_the_assembled_checkpoint(assembled, tmp_path, capsys, name, template):
    bundle = tmp_path / "bundle"
    assert run(["export", str(assembled[name]), "-o", str(bundle), "--no-parity",
                "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["image"]["n_tokens"] == N_PATCHES
    assert manifest["source"]["random_init"] is False
    assert manifest["prompt"]["template"] == template


def test_stage1_training_starts_from_the_assembled_checkpoint(assembled, tmp_path, capsys):
    from llava_edge.data.shapes import ShapesConfig, generate_shapes

    shapes = generate_shapes(tmp_path / "shapes", ShapesConfig(n_train=8, n_eval=2))
    out = tmp_path / "stage1"
    assert run(["train", "--stage", "1", "--model", str(assembled["clip+llama"]), "--data",
                str(shapes.stage1), "--image-folder", str(shapes.image_folder),
                "--output-dir", str(out), "--global-batch-size", "4", "--micro-batch-size",
                "2", "--max-steps", "2", "--save-steps", "0", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["final_loss"] == summary["final_loss"]  # not NaN
    model, _ = _load(out)
    source, _ = _load(assembled["clip+llama"])
    # Stage 1 trains the projector only.
    changed = {n.split(".")[1] for (n, a), (_, b) in zip(model.named_parameters(),
                                                         source.named_parameters())
               if not torch.equal(a, b)}
    assert changed == {"multi_modal_projector"}
    assert json.loads((out / "config.json").read_text())["llava_edge"]["projector"] == "trained"


@pytest.mark.parametrize("vision, strategy, n_tokens", [
    ("clip", "default", N_PATCHES), ("clip", "full", N_PATCHES + 1),
    ("siglip", "full", N_PATCHES),
    ("siglip", "default", N_PATCHES - 1),  # the first patch dropped (original LLaVA "patch")
])
def test_llava_config_image_seq_length(parts, vision, strategy, n_tokens):
    from transformers import AutoConfig, LlavaForConditionalGeneration

    vision_config = assemble.load_vision_tower(str(parts[vision]))[0]
    text_config = AutoConfig.from_pretrained(parts["llama"])
    config = assemble.llava_config(vision_config, text_config, 7,
                                   vision_feature_select_strategy=strategy,
                                   llava_edge={"x": 1})
    assert config.image_seq_length == n_tokens and config.image_token_index == 7
    assert config.llava_edge == {"x": 1}
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        features = model.get_image_features(pixel_values=torch.zeros(1, 3, 32, 32))
    assert _feature_rows(features).shape[0] == n_tokens  # what transformers computes agrees
