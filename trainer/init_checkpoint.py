"""Build a Hugging Face ``LlavaForConditionalGeneration`` checkpoint from a preset, offline
(``LlavaNextForConditionalGeneration`` for the LLaVA-NeXT presets, those with grid
pinpoints).

The result is an ordinary llava-hf style directory: ``config.json``, safetensors weights
(sharded with an index when large), tokenizer files, ``preprocessor_config.json``,
``processor_config.json`` and the chat template. transformers loads it with
``from_pretrained`` and ``HF_HUB_OFFLINE=1``.

Weights are random (transformers' own initialisation, seeded) and the config says so
under ``llava_edge.random_init``. They are written module by module from a model that
lives on the ``meta`` device, straight into the safetensors files, so a 7B checkpoint
never needs its full size in RAM: one decoder layer (or the embeddings and head) at a
time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from llava_edge import __version__
from llava_edge.atomic_dir import write_dir
from llava_edge.heap import release_freed_memory
from llava_edge.presets import PresetSpec
from llava_edge.progress import Progress
from llava_edge.templates import IMAGE_TOKEN, TEMPLATES

from llava_edge.trainer.safetensors_stream import PlannedTensor, StreamingShardWriter
from llava_edge.trainer.tokenizer_build import build_tokenizer

# Tensor-name prefixes of llava-hf checkpoints on disk (what save_pretrained writes and
# the Hub holds), keyed by the module path in transformers' LlavaForConditionalGeneration
# (and LlavaNextForConditionalGeneration, which adds the learned ``image_newline``).
_ON_DISK_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
)
SHARD_BYTES = 2 * 1024**3

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class BuiltCheckpoint:
    path: Path
    preset: str
    n_params: int
    n_image_tokens: int
    vocab_size: int
    files: list[str]


def on_disk_name(module_path: str) -> str:
    """The safetensors key for a parameter of ``LlavaForConditionalGeneration``."""
    for new, old in _ON_DISK_PREFIXES:
        if module_path.startswith(new):
            return old + module_path[len(new):]
    return module_path


def build_checkpoint(
    spec: PresetSpec,
    out_dir: str | Path,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> BuiltCheckpoint:
    """Write the checkpoint for ``spec`` to ``out_dir`` and describe what was written.

    The directory appears only when complete: everything is written to a temporary
    sibling and renamed into place, so an interrupted build leaves nothing behind.
    ``progress(done_params, total_params)`` is called as weights are written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (use --force to replace it)")
    built = write_dir(out_dir, lambda tmp: _write_checkpoint(spec, tmp, seed, progress))
    return BuiltCheckpoint(out_dir, built.preset, built.n_params, built.n_image_tokens,
                           built.vocab_size, built.files)


def _write_checkpoint(spec: PresetSpec, out: Path, seed: int,
                      progress: Progress | None) -> BuiltCheckpoint:
    import torch
    from transformers import (GenerationConfig, LlavaForConditionalGeneration,
                              LlavaNextForConditionalGeneration, LlavaNextProcessor,
                              LlavaProcessor)

    tokenizer = build_tokenizer(spec.tokenizer, out, seed)
    tokenizer.model_max_length = spec.text.max_position_embeddings
    config = make_config(spec, tokenizer, seed)
    model_cls = LlavaNextForConditionalGeneration if spec.is_next else LlavaForConditionalGeneration
    with torch.device("meta"):
        model = model_cls(config)
    total = _save_weights(model, out, seed, spec.dtype, progress)
    config.save_pretrained(out)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out)
    processor_cls = LlavaNextProcessor if spec.is_next else LlavaProcessor
    processor = processor_cls(
        image_processor=make_image_processor(spec),
        tokenizer=tokenizer,
        patch_size=spec.vision.patch_size,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        num_additional_image_tokens=1 if spec.vision.kind == "clip" else 0,
        chat_template=TEMPLATES[spec.tokenizer.template].jinja,
        image_token=IMAGE_TOKEN,
    )
    processor.save_pretrained(out)
    files = sorted(p.name for p in out.iterdir())
    return BuiltCheckpoint(out, spec.name, total, spec.n_image_tokens,
                           config.text_config.vocab_size, files)


def make_config(spec: PresetSpec, tokenizer, seed: int = 0):
    """The ``LlavaConfig`` (``LlavaNextConfig`` with grid pinpoints) for ``spec`` with
    ``tokenizer``'s special token ids."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaNextConfig,
                              MistralConfig, Qwen2Config, SiglipVisionConfig)

    v, t = spec.vision, spec.text
    vision_kwargs = dict(
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads,
        image_size=v.image_size, patch_size=v.patch_size,
    )
    if v.kind == "clip":
        vision_config = CLIPVisionConfig(projection_dim=min(768, v.hidden_size),
                                         hidden_act="quick_gelu", **vision_kwargs)
    else:
        # LLaVA reads hidden states, never SigLIP's pooling head: leave it out.
        vision_config = SiglipVisionConfig(vision_use_head=False, **vision_kwargs)

    n_tokens = len(tokenizer)
    vocab_size = t.vocab_size or -(-n_tokens // 64) * 64
    if vocab_size < n_tokens:
        raise ValueError(f"preset {spec.name}: vocab_size {vocab_size} < tokenizer size {n_tokens}")
    text_cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[t.arch]
    # Mistral without a sliding window: llama.cpp's llama architecture has none either
    extra = {"sliding_window": None} if t.arch == "mistral" else {}
    text_config = text_cls(
        **extra,
        hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads, max_position_embeddings=t.max_position_embeddings,
        rms_norm_eps=t.rms_norm_eps, vocab_size=vocab_size,
        tie_word_embeddings=t.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
    )
    # LLaVA-NeXT: transformers reads the pinpoints as (height, width) lists. Its
    # image_seq_length is unused (the count depends on each image's size): we keep the
    # tokens of one view there.
    next_kwargs = ({"image_grid_pinpoints": [list(p) for p in spec.image_grid_pinpoints]}
                   if spec.is_next else {})
    config_cls = LlavaNextConfig if spec.is_next else LlavaConfig
    return config_cls(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=spec.n_image_tokens,
        **next_kwargs,
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        projector_hidden_act="gelu",
        tie_word_embeddings=t.tie_word_embeddings,
        dtype=spec.dtype,
        # Our own block: transformers keeps unknown config keys as they are.
        llava_edge={
            "preset": spec.name,
            "random_init": True,
            "seed": seed,
            "template": spec.tokenizer.template,
            "created_by": f"llava-edge {__version__}",
            "preset_spec": asdict(spec),
        },
    )


def make_image_processor(spec: PresetSpec):
    """The image processor the source model family uses, at the preset's resolution
    (LLaVA-NeXT's, cutting grid tiles of that size, for a preset with grid pinpoints)."""
    if spec.is_next:
        return next_image_processor(spec.vision.kind, spec.vision.image_size,
                                    spec.image_grid_pinpoints)
    return family_image_processor(spec.vision.kind, spec.vision.image_size)


def _pil_backend(name: str):
    """transformers' image processor class ``name``: its Pillow backend by name when there
    is one. transformers 5 has a torchvision and a Pillow backend; the Pillow one is used
    when torchvision is absent (it is on CPU set-ups), and naming it avoids the warning."""
    import transformers

    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def _family_settings(kind: str, size: int) -> dict:
    """The image processor settings of a vision family (``"clip"``: OpenAI CLIP's resize,
    crop and statistics; ``"siglip"``: a plain resize, mean/std 0.5) at ``size`` pixels."""
    common = dict(do_resize=True, resample=3, do_rescale=True, rescale_factor=1 / 255,
                  do_normalize=True, do_convert_rgb=True)
    if kind == "clip":
        return common | dict(size={"shortest_edge": size},
                             crop_size={"height": size, "width": size}, do_center_crop=True,
                             image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD)
    return common | dict(size={"height": size, "width": size}, image_mean=[0.5, 0.5, 0.5],
                         image_std=[0.5, 0.5, 0.5])


def family_image_processor(kind: str, size: int):
    """The image processor of a vision family (see :func:`_family_settings`) at ``size``
    pixels."""
    cls = _pil_backend("CLIPImageProcessor" if kind == "clip" else "SiglipImageProcessor")
    return cls(**_family_settings(kind, size))


def next_image_processor(kind: str, size: int, pinpoints):
    """LLaVA-NeXT's image processor with a vision family's settings at ``size`` pixels.

    transformers cuts the grid at ``crop_size`` whenever one is set, even without a centre
    crop (and its default is 224): the crop size is always the tile size here, else the
    tiles would not fit the tower (``runtimes.anyres.recipe_from_hf`` refuses that)."""
    settings = _family_settings(kind, size) | {
        "crop_size": {"height": size, "width": size},
        "image_grid_pinpoints": [list(p) for p in pinpoints]}
    settings.setdefault("do_center_crop", False)
    return _pil_backend("LlavaNextImageProcessor")(**settings)


def _save_weights(model, out: Path, seed: int, dtype: str, progress) -> int:
    """Materialise, initialise and save ``model``'s weights unit by unit; return the count."""
    import torch

    owners, units, canonical = _units(model)
    plan = [PlannedTensor(on_disk_name(name), tuple(p.shape), dtype)
            for unit in units for name, p in _unit_params(unit, canonical)]
    total = sum(p.numel() for p in model.parameters())  # tied weights count once
    torch.manual_seed(seed)
    writer = StreamingShardWriter(out, plan, SHARD_BYTES)
    done = 0
    for unit in units:
        for name, tensor in _initialise(unit, owners, canonical):
            writer.write(on_disk_name(name), tensor)
            done += tensor.numel()
        # Each layer's freed tensors stay in glibc's arenas otherwise: 10 GB resident
        # instead of 1 GB for the 7B preset.
        release_freed_memory()
        if progress:
            progress(done, total)
    writer.close()
    return total


def _units(model):
    """Split ``model`` (on the meta device) into units initialised and saved one at a time.

    A unit is one element of a ``ModuleList`` (a transformer layer), or, at the end, all
    remaining modules (embeddings, norms, projector, head): a list of (path, module).
    Returns the transformers models that own submodules (by path), the units, and the
    canonical parameter names (``named_parameters()`` lists a tied weight once, under its
    first name: only those are saved).
    """
    import torch
    from transformers import PreTrainedModel

    owners = {name: m for name, m in model.named_modules() if isinstance(m, PreTrainedModel)}
    layer_units = [
        (f"{name}.{idx}" if name else str(idx), child)
        for name, mod in model.named_modules() if isinstance(mod, torch.nn.ModuleList)
        for idx, child in enumerate(mod)
    ]
    units = [[(f"{prefix}.{n}" if n else prefix, m) for n, m in unit.named_modules()]
             for prefix, unit in layer_units]
    inside_layer = {id(m) for _, unit in layer_units for m in unit.modules()}
    units.append([(n, m) for n, m in model.named_modules()
                  if id(m) not in inside_layer and any(True for _ in m.parameters(recurse=False))])
    canonical = {name for name, _ in model.named_parameters()}
    return owners, units, canonical


def _unit_params(unit, canonical):
    for path, m in unit:
        for pname, p in m.named_parameters(recurse=False):
            name = f"{path}.{pname}" if path else pname
            if name in canonical:
                yield name, p


def _initialise(unit, owners, canonical):
    """Move ``unit`` off the meta device, initialise it with the ``_init_weights`` of the
    transformers model that owns each module (children before parents, as
    ``Module.apply`` does, so CLIP's attention-specific scales win over the generic
    Linear rule), yield its parameters, and drop it back to meta."""

    def owner_of(path: str):
        best = max((p for p in owners if p == "" or path == p or path.startswith(p + ".")),
                   key=len)
        return owners[best]

    for _, m in unit:
        m.to_empty(device="cpu", recurse=False)
    for path, m in reversed(unit):  # children before parents
        owner_of(path)._init_weights(m)
    yield from ((name, p.detach()) for name, p in _unit_params(unit, canonical))
    for _, m in unit:
        m.to("meta")
