"""Build a Hugging Face ``LlavaForConditionalGeneration`` checkpoint from a preset, offline.

The result is an ordinary llava-hf style directory: ``config.json``, safetensors weights
(sharded with an index when large), tokenizer files, ``preprocessor_config.json``,
``processor_config.json`` and the chat template. transformers loads it with
``from_pretrained`` and ``HF_HUB_OFFLINE=1``.

Weights are random (transformers' own initialisation, seeded) and the config says so
under ``llava_edge.random_init``. They are written module by module from a model that
lives on the ``meta`` device, so a 7B checkpoint never needs its full size in RAM:
only one decoder layer in fp32 and one output shard are held at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from llava_edge import __version__
from llava_edge.presets import PresetSpec
from llava_edge.templates import IMAGE_TOKEN, TEMPLATES

from llava_edge.trainer.tokenizer_build import build_tokenizer

# Tensor-name prefixes of llava-hf checkpoints on disk (what save_pretrained writes and
# the Hub holds), keyed by the module path in transformers' LlavaForConditionalGeneration.
_ON_DISK_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
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
    progress: Callable[[int, int], None] | None = None,
) -> BuiltCheckpoint:
    """Write the checkpoint for ``spec`` to ``out_dir`` and describe what was written.

    The directory appears only when complete: everything is written to a temporary
    sibling and renamed into place, so an interrupted build leaves nothing behind.
    ``progress(done_params, total_params)`` is called as weights are written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (use --force to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        built = _write_checkpoint(spec, tmp, seed, progress)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuiltCheckpoint(out_dir, built.preset, built.n_params, built.n_image_tokens,
                           built.vocab_size, built.files)


def _write_checkpoint(spec: PresetSpec, out: Path, seed: int,
                      progress: Callable[[int, int], None] | None) -> BuiltCheckpoint:
    import torch
    from transformers import GenerationConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = build_tokenizer(spec.tokenizer, out, seed)
    tokenizer.model_max_length = spec.text.max_position_embeddings
    config = make_config(spec, tokenizer, seed)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    total = _save_weights(model, out, seed, getattr(torch, spec.dtype), progress)
    config.save_pretrained(out)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out)
    processor = LlavaProcessor(
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
    """The ``LlavaConfig`` for ``spec`` with ``tokenizer``'s special token ids."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, Qwen2Config,
                              SiglipVisionConfig)

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
    text_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[t.arch]
    text_config = text_cls(
        hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads,
        num_key_value_heads=t.num_kv_heads, max_position_embeddings=t.max_position_embeddings,
        rms_norm_eps=t.rms_norm_eps, vocab_size=vocab_size,
        tie_word_embeddings=t.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta},
    )
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=spec.n_image_tokens,
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
    """The image processor the source model family uses, at the preset's resolution."""
    import transformers

    # transformers 5 has a torchvision and a Pillow backend; use the Pillow one by name
    # when torchvision is absent (it is on CPU set-ups) so that it does not warn.
    CLIPImageProcessor = (getattr(transformers, "CLIPImageProcessorPil", None)
                          or transformers.CLIPImageProcessor)
    SiglipImageProcessor = (getattr(transformers, "SiglipImageProcessorPil", None)
                            or transformers.SiglipImageProcessor)
    size = spec.vision.image_size
    if spec.vision.kind == "clip":
        return CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size},
            do_resize=True, do_center_crop=True, resample=3, do_rescale=True,
            rescale_factor=1 / 255, do_normalize=True, image_mean=OPENAI_CLIP_MEAN,
            image_std=OPENAI_CLIP_STD, do_convert_rgb=True,
        )
    return SiglipImageProcessor(
        size={"height": size, "width": size}, do_resize=True, resample=3, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5], do_convert_rgb=True,
    )


def _save_weights(model, out: Path, seed: int, dtype, progress) -> int:
    """Materialise, initialise and save ``model``'s weights unit by unit; return the count."""
    import torch

    total = sum(p.numel() for p in model.parameters())  # tied weights count once
    torch.manual_seed(seed)
    writer = ShardWriter(out, SHARD_BYTES)
    done = 0
    for tensors in _initialised_units(model):
        for name, tensor in tensors.items():
            writer.add(on_disk_name(name), tensor.to(dtype).contiguous())
            done += tensor.numel()
        if progress:
            progress(done, total)
    writer.close()
    return total


class ShardWriter:
    """Write tensors into safetensors shards of at most ``max_bytes`` as they arrive.

    Shards are named like ``save_pretrained`` names them: ``model.safetensors`` when one
    is enough, else ``model-0000K-of-0000N.safetensors`` plus
    ``model.safetensors.index.json``. Only the shard being filled is held in memory.
    """

    def __init__(self, out: Path, max_bytes: int):
        self.out = out
        self.max_bytes = max_bytes
        self.current: dict = {}
        self.current_bytes = 0
        self.written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor) -> None:
        if self.current and self.current_bytes + tensor.nbytes > self.max_bytes:
            self._flush()
        self.current[name] = tensor
        self.current_bytes += tensor.nbytes
        self.total_bytes += tensor.nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        path = self.out / f"model-part-{len(self.written) + 1:05d}.safetensors"
        save_file(self.current, str(path), metadata={"format": "pt"})
        self.written.append((path, list(self.current)))
        self.current, self.current_bytes = {}, 0

    def close(self) -> None:
        if self.current or not self.written:
            self._flush()
        n = len(self.written)
        if n == 1:
            self.written[0][0].rename(self.out / "model.safetensors")
            return
        weight_map = {}
        for k, (path, names) in enumerate(self.written, start=1):
            final = f"model-{k:05d}-of-{n:05d}.safetensors"
            path.rename(self.out / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _initialised_units(model) -> Iterator[dict]:
    """Yield ``{parameter path: tensor}`` for the model, one unit at a time.

    A unit is one element of a ``ModuleList`` (a transformer layer), or, at the end, all
    remaining parameters (embeddings, norms, projector, head). Each unit is moved off the
    meta device, initialised by the ``_init_weights`` of the transformers model that owns
    it (children before parents, as ``Module.apply`` does, so CLIP's attention-specific
    scales win over the generic Linear rule), copied out, and dropped back to meta.
    """
    import torch
    from transformers import PreTrainedModel

    owners = {name: m for name, m in model.named_modules() if isinstance(m, PreTrainedModel)}

    def owner_of(path: str):
        best = max((p for p in owners if p == "" or path == p or path.startswith(p + ".")), key=len)
        return owners[best]

    layer_units = [
        (f"{name}.{idx}" if name else str(idx), child)
        for name, mod in model.named_modules() if isinstance(mod, torch.nn.ModuleList)
        for idx, child in enumerate(mod)
    ]
    inside_layer = {id(m) for _, unit in layer_units for m in unit.modules()}
    # named_parameters() lists a tied weight once, under its first name: save only those.
    canonical = {name for name, _ in model.named_parameters()}

    def take(prefix: str, modules: list[tuple[str, torch.nn.Module]]) -> dict:
        for _, m in modules:
            m.to_empty(device="cpu", recurse=False)
        for path, m in reversed(modules):  # children before parents
            owner_of(path)._init_weights(m)
        out = {}
        for path, m in modules:
            for pname, p in m.named_parameters(recurse=False):
                name = f"{path}.{pname}" if path else pname
                if name in canonical:
                    out[name] = p.detach().clone()
        for _, m in modules:
            m.to("meta")
        return out

    for prefix, unit in layer_units:
        yield take(prefix, [(f"{prefix}.{n}" if n else prefix, m) for n, m in unit.named_modules()])
    rest = [(n, m) for n, m in model.named_modules()
            if id(m) not in inside_layer and any(True for _ in m.parameters(recurse=False))]
    yield take("", rest)
