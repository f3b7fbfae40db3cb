"""``llava-edge convert``: an original LLaVA checkpoint (github.com/haotian-liu/LLaVA) as a
llava-hf ``LlavaForConditionalGeneration`` directory.

The original model is a Llama or Mistral ``*ForCausalLM`` that splices image features
into its input embeddings where the id -200 stands; llava-hf's model does the same where
its ``<image>`` token stands. The conversion therefore moves weights without changing
any arithmetic: the LLM's tensors keep their values, the ``mlp2x_gelu`` projector becomes
``linear_1``/``linear_2`` (``linear``: an exact identity second layer), the vision tower is
the CLIP checkpoint ``mm_vision_tower`` names (or the checkpoint's own copy when it was
trained), and ``<image>`` / ``<pad>`` are added to the tokenizer with embedding rows, as
transformers' own ``convert_llava_weights_to_hf.py`` does. A LoRA run is merged into its
base LLM (W += B @ A * alpha / r); a stage-1 run's projector joins its base LLM.

``image_aspect_ratio: pad`` (LLaVA-1.5's ``expand2square``) is kept twice: as a
``LlavaImageProcessor`` with ``do_pad`` (transformers pads as the original does) and as
``llava_edge.image_aspect_ratio`` in config.json (what llava-edge's export, trainer and
evaluation read). The format's details are tables in
:mod:`llava_edge.trainer.original_llava`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from llava_edge import __version__
from llava_edge.checkpoint_info import read_json
from llava_edge.errors import LlavaEdgeError
from llava_edge.hub import resolve_model
from llava_edge.trainer import original_llava as fmt
from llava_edge.trainer.assemble import (add_llava_tokens, check_out_dir, grow_embeddings,
                                         linear_projector_as_two_layers, llava_config,
                                         load_vision_tower, quiet_transformers, save_llava,
                                         vision_family)
from llava_edge.trainer.init_from_parts import check_projector, check_template, select_strategy

Progress = Callable[[int, int], None]


class ConvertError(LlavaEdgeError):
    """An original checkpoint that cannot be converted (the message names the file or key)."""


@dataclass(frozen=True)
class ConvertSpec:
    """What to convert. Paths or Hub ids; None: from the checkpoint (or not needed)."""

    src: str
    base: str | None = None  # the base LLM of a LoRA or stage-1 run
    vision_tower: str | None = None  # overrides config.json's mm_vision_tower
    template: str | None = None  # None: guessed from the LLM family


@dataclass(frozen=True)
class OriginalCheckpoint:
    """An original LLaVA checkpoint as its config.json and file names describe it (no
    weights read)."""

    path: Path
    kind: str  # full, lora, stage1 (original_llava.LAYOUTS)
    architecture: str
    llm_type: str  # llama, mistral
    llava: dict  # LLaVA's keys, as config.json has them
    text: dict  # the rest: the LLM's own config

    def get(self, key: str):
        """A LLaVA key's value, or the original code's default when it is absent."""
        return self.llava.get(key, fmt.LLAVA_CONFIG_KEYS.get(key))

    @property
    def needs_base(self) -> bool:
        return next(layout.needs_base for layout in fmt.LAYOUTS if layout.kind == self.kind)


@dataclass(frozen=True)
class ConvertedCheckpoint:
    path: Path
    kind: str
    llm_type: str
    projector: str
    template: str
    template_guessed: bool  # not given: chosen from the LLM family
    vision_tower: str  # the tower's directory or Hub id
    vision_weights: str  # "checkpoint" (trained with the LLM) or "tower"
    image_aspect_ratio: str  # pad, square
    n_params: int
    n_image_tokens: int
    vocab_size: int
    image_token_id: int
    pad_token_id: int
    files: list[str] = field(default_factory=list)


def read_original(src: str | Path) -> OriginalCheckpoint:
    """Describe the original checkpoint at ``src`` (a directory or a Hub id) and refuse
    what cannot be converted, before any weights are read."""
    path = resolve_model(src, "SRC")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConvertError(f"{path}: no config.json (an original LLaVA checkpoint has one "
                           "beside its weights)")
    config = read_json(config_file, "config.json")
    architecture, llm_type = _architecture(config, config_file)
    llava = {k: v for k, v in config.items() if fmt.is_llava_key(k)}
    text = {k: v for k, v in config.items()
            if not fmt.is_llava_key(k) and k not in fmt.FILE_KEYS}
    missing = [k for k in fmt.REQUIRED_KEYS if llava.get(k) is None]
    if missing:
        raise ConvertError(f"{config_file}: no {', '.join(missing)} (not a LLaVA checkpoint's "
                           "config)")
    for refusal in fmt.REFUSALS:
        value = llava.get(refusal.key, fmt.LLAVA_CONFIG_KEYS.get(refusal.key))
        if refusal.refuses(value):
            raise ConvertError(f"{config_file}: {refusal.key} {value!r} {refusal.why}")
    layout = next((layout for layout in fmt.LAYOUTS
                   if any((path / m).is_file() for m in layout.marker)), None)
    if layout is None:
        raise ConvertError(
            f"{path}: no weights; expected one of: "
            + "; ".join(f"{' or '.join(lay.marker)} ({lay.description})" for lay in fmt.LAYOUTS))
    return OriginalCheckpoint(path, layout.kind, architecture, llm_type, llava, text)


def _architecture(config: dict, config_file: Path) -> tuple[str, str]:
    """``(architecture, llm_type)`` from config.json's architectures or model_type."""
    names = list(config.get("architectures") or []) + [config.get("model_type") or ""]
    for name in names:
        if name.lower() in fmt.REFUSED_MODELS:
            raise ConvertError(f"{config_file}: {name}: {fmt.REFUSED_MODELS[name.lower()]}")
    if "text_config" in config:
        raise ConvertError(f"{config_file}: already a llava-hf checkpoint (it has a "
                           "text_config): use it as it is")
    for name in config.get("architectures") or []:
        if name in fmt.ARCHITECTURES:
            return name, fmt.ARCHITECTURES[name]
    model_type = config.get("model_type")
    if not config.get("architectures") and model_type in fmt.MODEL_TYPES:
        return model_type, fmt.MODEL_TYPES[model_type]
    known = ", ".join([*fmt.ARCHITECTURES, *fmt.MODEL_TYPES])
    raise ConvertError(f"{config_file}: unknown architecture "
                       f"{', '.join(n for n in names if n) or '(none)'}; an original LLaVA "
                       f"checkpoint is one of: {known}")


def convert_checkpoint(spec: ConvertSpec, out_dir: str | Path, *, overwrite: bool = False,
                       progress: Progress | None = None) -> ConvertedCheckpoint:
    """Convert ``spec.src`` into ``out_dir`` (complete or not at all) and describe it.

    The config, the options and the output directory are checked before any weights are
    read, so a refusal is immediate.
    """
    update = progress or (lambda done, total: None)
    out_dir = Path(out_dir)
    orig = read_original(spec.src)
    if orig.needs_base and spec.base is None:
        layout = next(lay for lay in fmt.LAYOUTS if lay.kind == orig.kind)
        raise ConvertError(f"{orig.path} is {layout.description}: its base language model "
                           "is not in it; pass --base DIR_OR_ID (the LLM it was trained from)")
    template_name = spec.template or fmt.DEFAULT_TEMPLATES[orig.llm_type]
    template = check_template(template_name)
    try:
        act = check_projector(orig.get("mm_projector_type"))
    except LlavaEdgeError as e:
        raise ConvertError(f"{orig.path / 'config.json'}: mm_projector_type: {e}") from None
    lora_scale = _lora_scale(orig.path) if orig.kind == "lora" else None
    check_out_dir(out_dir, overwrite)
    base = _base_dir(spec.base, orig) if spec.base is not None else None
    steps = 6
    update(0, steps)

    tower_id = spec.vision_tower or orig.get("mm_vision_tower")
    what = "--vision-tower" if spec.vision_tower else \
        "mm_vision_tower (config.json; --vision-tower overrides it)"
    vision_config, vision_state, clip_processor = load_vision_tower(tower_id, what=what)
    strategy = _check_tower(orig, vision_config, tower_id)
    update(1, steps)

    tokenizer = _tokenizer(orig, base)
    if orig.get("mm_use_im_patch_token"):  # as load_pretrained_model does, for its row
        tokenizer.add_tokens([fmt.IM_PATCH_TOKEN], special_tokens=True)
    image_token_id, pad_token_id = add_llava_tokens(tokenizer)
    update(2, steps)

    weights = _original_weights(orig, base, lora_scale)
    update(3, steps)

    embed = weights.tensors.get("model.embed_tokens.weight")
    if embed is None:
        raise ConvertError(f"{_where(orig)}: no model.embed_tokens.weight")
    dtype = embed.dtype
    vision_weights = ("checkpoint" if any(fmt.part_of(k)[0] == "vision" for k in weights.tensors)
                      else "tower")
    text_config = _text_config(orig, dtype)
    vision_config.dtype = dtype
    aspect = fmt.aspect_ratio(orig.get("image_aspect_ratio"))
    config = llava_config(
        vision_config, text_config, image_token_id, projector_hidden_act=act,
        vision_feature_layer=orig.get("mm_vision_select_layer"),
        vision_feature_select_strategy=strategy,
        llava_edge={
            "random_init": False,
            "template": template_name,
            "image_aspect_ratio": aspect,
            "converted_from": {
                "format": "haotian-liu/LLaVA", "kind": orig.kind, "path": str(orig.path),
                "architecture": orig.architecture, "base": spec.base,
                "vision_tower": tower_id, "vision_weights": vision_weights,
                "config": orig.llava,
            },
            "created_by": f"llava-edge {__version__}",
        })
    state = _llava_hf_state(weights, vision_state, orig, config, dtype)
    del weights, vision_state
    model = _instantiate(config, state, dtype)
    del state
    update(4, steps)

    vocab_size = grow_embeddings(model, len(tokenizer))
    model.config.text_config.pad_token_id = pad_token_id
    model.generation_config = _generation_config(orig, base, model)
    model.generation_config.pad_token_id = pad_token_id
    model.eval()
    image_processor = _llava_image_processor(clip_processor, pad=aspect == "pad")
    update(5, steps)

    files = save_llava(model, tokenizer, image_processor, template.jinja, out_dir,
                       overwrite=overwrite)
    update(steps, steps)
    n_params = sum(p.numel() for p in model.parameters())
    return ConvertedCheckpoint(
        path=out_dir, kind=orig.kind, llm_type=orig.llm_type,
        projector=orig.get("mm_projector_type"), template=template_name,
        template_guessed=spec.template is None, vision_tower=str(tower_id),
        vision_weights=vision_weights, image_aspect_ratio=aspect, n_params=n_params,
        n_image_tokens=config.image_seq_length, vocab_size=vocab_size,
        image_token_id=image_token_id, pad_token_id=pad_token_id, files=files)


def _base_dir(base: str, orig: OriginalCheckpoint) -> Path:
    path = resolve_model(base, "--base")
    model_type = read_json(path / "config.json", "config.json").get("model_type") \
        if (path / "config.json").is_file() else None
    if model_type != orig.llm_type:
        raise ConvertError(f"--base {base}: model_type {model_type!r}, but {orig.path} is a "
                           f"LLaVA on {orig.llm_type} ({orig.architecture}): --base must be "
                           "the language model it was trained from")
    return path


def _check_tower(orig: OriginalCheckpoint, vision_config, tower_id: str) -> str:
    """The select strategy, after checking the tower fits the checkpoint."""
    family = vision_family(vision_config)
    if family != "clip":  # multimodal_encoder/builder.py builds CLIPVisionTower only
        raise ConvertError(f"vision tower {tower_id} is {family}: the original LLaVA uses CLIP "
                           "towers only")
    if vision_config.hidden_size != orig.get("mm_hidden_size"):
        raise ConvertError(f"vision tower {tower_id} has hidden_size "
                           f"{vision_config.hidden_size}, but {orig.path}/config.json says "
                           f"mm_hidden_size {orig.get('mm_hidden_size')}: not the tower it "
                           "was trained with (--vision-tower)")
    layer, n_layers = orig.get("mm_vision_select_layer"), vision_config.num_hidden_layers
    if not -(n_layers + 1) <= layer <= n_layers:
        raise ConvertError(f"{orig.path}/config.json: mm_vision_select_layer {layer}, but the "
                           f"vision tower {tower_id} has {n_layers} layers")
    try:
        return select_strategy(family, orig.get("mm_vision_select_feature"))
    except LlavaEdgeError as e:
        raise ConvertError(f"{orig.path}/config.json: mm_vision_select_feature: {e}") from None


def _tokenizer(orig: OriginalCheckpoint, base: Path | None):
    """The checkpoint's own tokenizer, else the base LLM's (LoRA and stage-1 runs save
    none: the original loader reads the base's)."""
    from transformers import AutoTokenizer

    for directory in (orig.path, base):
        if directory is None or not any((directory / f).is_file() for f in fmt.TOKENIZER_FILES):
            continue
        try:
            # AutoTokenizer reads config.json too, where LLaVA-1.5's model_type "llava" is
            # parsed as llava-hf's config, with a FutureWarning about its LLM keys.
            with quiet_transformers(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return AutoTokenizer.from_pretrained(directory)
        except (OSError, ValueError) as e:
            raise ConvertError(f"{directory}: its tokenizer cannot be loaded ({e})") from None
    where = f"{orig.path} or --base {base}" if base is not None else str(orig.path)
    hint = "" if base is not None else "; pass --base with the LLM it was trained from"
    raise ConvertError(f"no tokenizer in {where} ({', '.join(fmt.TOKENIZER_FILES)}){hint}")


@dataclass
class Weights:
    """Tensors by original name, and the file each came from (for error messages)."""

    tensors: dict = field(default_factory=dict)
    origin: dict = field(default_factory=dict)

    def add(self, tensors: dict, origin: str) -> None:
        for key, tensor in tensors.items():
            self.tensors[key] = tensor
            self.origin[key] = origin


def _original_weights(orig: OriginalCheckpoint, base: Path | None,
                      lora_scale: float | None) -> Weights:
    """All weights under their original names: the checkpoint's, or the base LLM's with
    the run's projector (stage 1) or trainables and merged adapter (LoRA) over them."""
    if orig.kind == "full":
        return read_model_weights(orig.path)
    weights = read_model_weights(base)
    if orig.kind == "stage1":
        projector = load_tensors(orig.path / fmt.PROJECTOR_FILE)
        stray = [k for k in projector if fmt.part_of(k)[0] != "projector"]
        if stray:
            raise ConvertError(f"{orig.path / fmt.PROJECTOR_FILE}: unexpected key {stray[0]} "
                               "(it holds model.mm_projector.* alone)")
        weights.add(projector, str(orig.path / fmt.PROJECTOR_FILE))
        return weights
    _apply_lora(orig.path, weights, lora_scale)
    return weights


def read_model_weights(directory: Path) -> Weights:
    """The tensors of a Hugging Face model directory: sharded (an index and its shards)
    or one file, safetensors preferred over PyTorch .bin."""
    weights = Weights()
    for index_name, single in fmt.WEIGHT_FILES:
        index = directory / index_name
        if index.is_file():
            weight_map = read_json(index, index_name).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConvertError(f"{index}: no weight_map")
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise ConvertError(f"{index}: shard(s) missing from {directory}: "
                                   f"{', '.join(missing)}")
            for shard in shards:
                weights.add(load_tensors(directory / shard), str(directory / shard))
            absent = sorted(set(weight_map) - set(weights.tensors))
            if absent:
                raise ConvertError(f"{index} lists {absent[0]} in {weight_map[absent[0]]}, "
                                   f"which does not hold it ({len(absent)} such key(s))")
            return weights
        if (directory / single).is_file():
            weights.add(load_tensors(directory / single), str(directory / single))
            return weights
    expected = " or ".join(name for pair in fmt.WEIGHT_FILES for name in pair)
    raise ConvertError(f"{directory}: no weights ({expected})")


def load_tensors(path: Path) -> dict:
    """A safetensors or PyTorch file's tensors (``.bin``: memory-mapped where the file
    allows, with ``weights_only``: no code in a pickle runs)."""
    import torch

    if not path.is_file():
        raise ConvertError(f"{path}: not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(path)
        else:
            try:
                tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a pre-zipfile (legacy) file cannot be memory-mapped
                tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse is the file's fault
        raise ConvertError(f"{path}: not a readable weights file ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor)
                                                for t in tensors.values()):
        raise ConvertError(f"{path}: not a dictionary of tensors")
    return dict(tensors)


def _lora_scale(src: Path) -> float:
    """The merge's scale from adapter_config.json: lora_alpha / r (/ sqrt(r) under
    rsLoRA), after refusing the variants a plain merge would get wrong."""
    config_file = src / "adapter_config.json"
    config = read_json(config_file, "adapter_config.json")
    if config.get("peft_type", "LORA") != "LORA":
        raise ConvertError(f"{config_file}: peft_type {config.get('peft_type')!r} is not LORA")
    for key, why in fmt.LORA_REFUSED.items():
        if config.get(key):
            raise ConvertError(f"{config_file}: {why}")
    try:
        r, alpha = int(config["r"]), float(config["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise ConvertError(f"{config_file}: no valid r / lora_alpha") from None
    return alpha / (math.sqrt(r) if config.get("use_rslora") else r)


def _apply_lora(src: Path, weights: Weights, scale: float) -> None:
    """A LoRA run over the base weights, as load_pretrained_model applies it: the
    non-LoRA trainables replace (or join) base weights, then each adapted layer gets
    W += B @ A * scale."""
    import torch

    non_lora_file = src / fmt.NON_LORA_FILE
    if not non_lora_file.is_file():
        raise ConvertError(f"{src}: no {fmt.NON_LORA_FILE} (the projector and the other "
                           "weights the LoRA run trained in full)")
    non_lora = load_tensors(non_lora_file)
    renamed = fmt.non_lora_names(non_lora)
    _replace(weights, {renamed[k]: t for k, t in non_lora.items()}, str(non_lora_file))

    adapter_file = next((src / f for f in fmt.ADAPTER_FILES if (src / f).is_file()), None)
    if adapter_file is None:
        raise ConvertError(f"{src}: no {' or '.join(fmt.ADAPTER_FILES)} beside "
                           "adapter_config.json")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    others = {}
    for key, tensor in load_tensors(adapter_file).items():
        match = fmt.LORA_KEY.match(key)
        if match:
            pairs.setdefault(match["module"], {})[match["which"]] = tensor
        elif key.startswith(fmt.LORA_PREFIX):  # a trained bias (lora_bias all / lora_only)
            others[key[len(fmt.LORA_PREFIX):]] = tensor
        else:
            raise ConvertError(f"{adapter_file}: unexpected key {key}")
    _replace(weights, others, str(adapter_file))
    for module, ab in sorted(pairs.items()):
        target = f"{module}.weight"
        if set(ab) != {"A", "B"}:
            raise ConvertError(f"{adapter_file}: {module} has lora_{'A' if 'A' in ab else 'B'} "
                               "without its pair")
        w = weights.tensors.get(target)
        if w is None:
            raise ConvertError(f"{adapter_file}: adapts {module}, which the base model does "
                               f"not have (no {target})")
        a, b = ab["A"], ab["B"]
        if a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise ConvertError(f"{adapter_file}: {module}: lora_A {list(a.shape)} and lora_B "
                               f"{list(b.shape)} do not fit the weight {list(w.shape)}")
        # Sum in float32, round once: a half-precision product would round twice.
        merged = w.float() + (b.float() @ a.float()) * scale
        weights.add({target: merged.to(w.dtype)}, f"{weights.origin[target]} + {adapter_file.name}")


def _replace(weights: Weights, tensors: dict, origin: str) -> None:
    """Put ``tensors`` over ``weights``; a replaced tensor must keep its shape."""
    for key, tensor in tensors.items():
        old = weights.tensors.get(key)
        if old is not None and old.shape != tensor.shape:
            raise ConvertError(f"{origin}: {key} has shape {list(tensor.shape)}, the base "
                               f"model's {list(old.shape)}")
    weights.add(tensors, origin)


def _text_config(orig: OriginalCheckpoint, dtype):
    """The LLM's config: config.json without LLaVA's keys."""
    import transformers

    cls = getattr(transformers, fmt.LLM_CONFIG_CLASSES[orig.llm_type])
    text = dict(orig.text)
    if text.get("rope_scaling", 0) is None:  # transformers 4's "no scaling"; 5 warns on it
        del text["rope_scaling"]
    config = cls.from_dict(text)
    config.dtype = dtype
    return config


def _llava_hf_state(weights: Weights, vision_state: dict, orig: OriginalCheckpoint, config,
                    dtype) -> dict:
    """The llava-hf state dict (transformers' module names), checked key by key and
    shape by shape against the model ``config`` describes."""
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        shell = LlavaForConditionalGeneration(config)
    expected = {k: tuple(t.shape) for k, t in shell.state_dict().items()}
    del shell

    state, names = {}, {}  # names: llava-hf key -> (original key, file)
    projector, tower = {}, {}
    for key, tensor in weights.tensors.items():
        part, rest = fmt.part_of(key)
        where = weights.origin[key]
        if part == "dropped":
            continue
        if part == "unknown":
            raise ConvertError(f"{where}: unexpected key {key} (not part of a "
                               f"{orig.architecture})")
        if part == "vision":
            tower[rest] = (tensor, key, where)
        elif part == "projector":
            projector[rest] = (tensor, key, where)
        else:
            hf = ("model.language_model." if part == "language_model" else "lm_head.") + rest
            state[hf], names[hf] = tensor, (key, where)
    if "lm_head.weight" not in state and config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.language_model.embed_tokens.weight"]
        names["lm_head.weight"] = names["model.language_model.embed_tokens.weight"]
    _projector_state(projector, orig, state, names)

    unknown = sorted(set(tower) - set(vision_state))
    if unknown:
        _, key, where = tower[unknown[0]]
        raise ConvertError(f"{where}: unexpected key {key} (the vision tower has no "
                           f"{unknown[0]})")
    merged = {k: (t, f"vision tower {k}", "the vision tower") for k, t in vision_state.items()}
    merged.update(tower)  # a tower trained with the LLM wins over the tower's own weights
    for key, (tensor, name, where) in merged.items():
        hf = _vision_name(key, expected)
        state[hf], names[hf] = tensor, (name, where)

    missing = sorted(set(expected) - set(state))
    if missing:
        raise ConvertError(f"{_where(orig)}: no {_original_name(missing[0])} "
                           f"({len(missing)} weight(s) missing, e.g. {', '.join(missing[:3])})")
    extra = sorted(set(state) - set(expected))
    if extra:
        key, where = names[extra[0]]
        raise ConvertError(f"{where}: unexpected key {key} (a {orig.architecture} with this "
                           "config.json has no such weight)")
    for hf, shape in expected.items():
        if tuple(state[hf].shape) != shape:
            key, where = names[hf]
            raise ConvertError(f"{where}: {key} has shape {list(state[hf].shape)}, the model "
                               f"config.json describes wants {list(shape)}")
    return {k: t.to(dtype) for k, t in state.items()}


def _projector_state(projector: dict, orig: OriginalCheckpoint, state: dict,
                     names: dict) -> None:
    kind = orig.get("mm_projector_type")
    prefix = "model.multi_modal_projector."
    if not projector:
        raise ConvertError(f"{_where(orig)}: no projector weights (model.mm_projector.*)")
    if kind == "linear":
        if set(projector) - {"weight", "bias"} or "weight" not in projector:
            _, key, where = projector[sorted(projector)[0]]
            raise ConvertError(f"{where}: {key}: a linear projector is model.mm_projector."
                               "weight and .bias")
        weight, key, where = projector["weight"]
        bias = projector.get("bias", (None,))[0]
        for name, tensor in linear_projector_as_two_layers(weight, bias).items():
            state[prefix + name], names[prefix + name] = tensor, (key, where)
        return
    for rest, (tensor, key, where) in projector.items():
        index, _, tail = rest.partition(".")
        hf = fmt.MLP2X_PROJECTOR.get(index + ".")
        if hf is None:
            raise ConvertError(f"{where}: unexpected key {key} ({kind} has layers 0 and 2)")
        state[prefix + hf + tail], names[prefix + hf + tail] = tensor, (key, where)


def _vision_name(key: str, expected: dict) -> str:
    """The module name of a tower weight named as in a CLIPVisionModel file
    (``vision_model.…``): transformers 5 flattened the module, 4 did not."""
    nested = "model.vision_tower." + key
    return nested if nested in expected else "model.vision_tower." + key.removeprefix(
        "vision_model.")


def _original_name(hf_key: str) -> str:
    """The original name of a llava-hf weight, for a message about it being missing."""
    for hf, original in (("model.language_model.", "model."),
                         ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
                         ("model.multi_modal_projector.linear_2.", "model.mm_projector.2.")):
        if hf_key.startswith(hf):
            return original + hf_key[len(hf):]
    return hf_key


def _where(orig: OriginalCheckpoint) -> str:
    return str(orig.path) if orig.kind == "full" else f"{orig.path} with its --base"


def _instantiate(config, state: dict, dtype):
    """The model from its (checked) state dict; transformers initialises the
    non-persistent buffers (rotary tables, position ids) the state dict lacks."""
    from transformers import LlavaForConditionalGeneration

    with quiet_transformers(), _no_progress_bars():
        model, info = LlavaForConditionalGeneration.from_pretrained(
            None, config=config, state_dict=state, dtype=dtype, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    if problems:  # cannot happen after _llava_hf_state's checks: a transformers change
        raise RuntimeError(f"transformers did not load the converted weights as checked: "
                           f"{problems}")
    return model


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _generation_config(orig: OriginalCheckpoint, base: Path | None, model):
    """The checkpoint's generation_config.json, else the base LLM's, else the model's."""
    from transformers import GenerationConfig

    for directory in (orig.path, base):
        if directory is not None and (directory / "generation_config.json").is_file():
            try:
                return GenerationConfig.from_pretrained(directory)
            except (OSError, ValueError) as e:
                raise ConvertError(f"{directory}/generation_config.json: {e}") from None
    return model.generation_config


def _llava_image_processor(clip_processor, *, pad: bool):
    """The tower's CLIP processor as a ``LlavaImageProcessor``: the same resize, crop and
    statistics, with ``do_pad`` (pad to a square in the mean colour, int(mean * 255) per
    channel, centred: the original's expand2square) for ``image_aspect_ratio: pad``."""
    import transformers

    # transformers 5's Pillow backend by name: torchvision is often absent on CPU set-ups.
    cls = getattr(transformers, "LlavaImageProcessorPil", None) or transformers.LlavaImageProcessor
    settings = {k: v for k, v in clip_processor.to_dict().items()
                if k not in ("image_processor_type", "processor_class", "_processor_class")}
    return cls(**settings, do_pad=pad)
