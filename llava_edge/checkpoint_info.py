"""Describe a LLaVA checkpoint directory without loading it (no torch, no transformers).

Reads ``config.json``, the safetensors headers (for parameter counts and dtypes) and the
tokenizer files. Hugging Face configs leave out values equal to the model class's
defaults (llava-hf's own ``llava-1.5-7b-hf`` omits the LLM's hidden size), so the few
defaults we need are listed here.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llava_edge.errors import LlavaEdgeError
from llava_edge.presets import image_tokens

# transformers' config defaults for the keys we read, per model_type.
_DEFAULTS: dict[str, dict] = {
    "clip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, image_size=224, patch_size=32),
    "siglip_vision_model": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, image_size=224, patch_size=16),
    "llama": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, vocab_size=32000, max_position_embeddings=2048),
    "mistral": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                    max_position_embeddings=131072),
    "qwen2": dict(hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, vocab_size=151936,
                  max_position_embeddings=32768),
}
_LLAVA_DEFAULTS = dict(vision_feature_layer=-2, vision_feature_select_strategy="default",
                       image_token_index=32000, projector_hidden_act="gelu")
#: ``LlavaNextConfig``'s grid pinpoints when a config leaves them out (LLaVA-1.6's).
NEXT_DEFAULT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
#: config.json ``model_type`` -> the architecture it names.
MODEL_TYPES = {"llava": "LlavaForConditionalGeneration",
               "llava_next": "LlavaNextForConditionalGeneration"}


@dataclass
class CheckpointInfo:
    """What a checkpoint is; ``to_dict()`` is the ``info --json`` output."""

    kind: str
    path: str
    architecture: str
    vision: dict
    text: dict
    projector: dict
    image_token_index: int
    image_tokens_per_image: int
    n_params: int
    params_by_part: dict
    weight_dtypes: list[str]
    tokenizer: dict
    random_init: bool
    preset: str | None
    files: dict[str, int] = field(default_factory=dict)
    # LLaVA-NeXT only (None for LLaVA-1.5): the tiling, and the bounds it puts on an
    # image's positions (``image_tokens_per_image`` is then per view).
    anyres: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _sub(config: dict, key: str) -> dict:
    sub = dict(config.get(key) or {})
    model_type = sub.get("model_type", "")
    return {**_DEFAULTS.get(model_type, {}), **sub}


def vision_defaults(config: dict) -> dict:
    """A ``config.json`` dict's ``vision_config`` with transformers' defaults for the keys
    it leaves out."""
    return _sub(config, "vision_config")


def image_aspect_ratio(config: dict) -> str:
    """How a checkpoint's images are fitted, from its ``config.json`` dict: ``"pad"`` (to a
    square in the processor's mean colour, LLaVA-1.5's training recipe) when llava-edge
    trained it so, else ``"square"`` (the HF processor's own resize and crop, which is
    what a foreign or untrained checkpoint's processor does)."""
    ours = config.get("llava_edge") or {}
    training = ours.get("training") or {}
    return training.get("image_aspect_ratio") or ours.get("image_aspect_ratio") or "square"


def read_json(path: Path, what: str) -> dict:
    """Parse a JSON file, raising a :class:`LlavaEdgeError` that names it on failure."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LlavaEdgeError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LlavaEdgeError(f"{path}: {what} is not valid JSON ({e})") from None


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file: tensor name -> {dtype, shape, data_offsets}."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 * 1024 * 1024:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
        raise LlavaEdgeError(f"{path}: not a readable safetensors file ({e})") from None
    header.pop("__metadata__", None)
    return header


def _part_of(name: str) -> str:
    if "vision_tower" in name:
        return "vision_tower"
    if "multi_modal_projector" in name or "image_newline" in name:
        return "projector"  # LLaVA-NeXT's learned row separator belongs with it
    return "language_model"


def _tokenizer_summary(path: Path) -> dict:
    out: dict = {"kind": "none"}
    tok_json = path / "tokenizer.json"
    if tok_json.exists():
        data = read_json(tok_json, "tokenizer.json")
        model = data.get("model", {})
        vocab = model.get("vocab", {})
        added = data.get("added_tokens", [])
        n = len(vocab) + sum(1 for t in added if t["content"] not in vocab)
        pre = json.dumps(data.get("pre_tokenizer") or {})
        if model.get("type") == "BPE" and "ByteLevel" in pre:
            kind = "byte-level BPE"
        elif model.get("type") == "BPE" and model.get("byte_fallback"):
            kind = "SentencePiece BPE (byte fallback)"
        else:
            kind = str(model.get("type", "unknown"))
        out = {"kind": kind, "n_tokens": n, "added_tokens": [t["content"] for t in added]}
    if (path / "tokenizer.model").exists():
        out["sentencepiece_model"] = "tokenizer.model"
    return out


def describe_checkpoint(path: str | Path) -> CheckpointInfo:
    """Describe the LLaVA checkpoint at ``path`` (a :class:`LlavaEdgeError` if it is not one)."""
    path = Path(path)
    if not path.is_dir():
        raise LlavaEdgeError(f"{path}: not a directory")
    config = read_json(path / "config.json", "config.json")
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise LlavaEdgeError(
            f"{path}: model_type is {model_type!r}, not "
            f"{' or '.join(repr(t) for t in MODEL_TYPES)} (llava-edge reads "
            f"{' and '.join(MODEL_TYPES.values())} checkpoints)"
        )
    top = {**_LLAVA_DEFAULTS, **config}
    vision, text = _sub(config, "vision_config"), _sub(config, "text_config")
    vision_kind = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}.get(
        vision.get("model_type", ""), vision.get("model_type", "unknown"))

    files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
    n_params, by_part, dtypes = 0, {"vision_tower": 0, "projector": 0, "language_model": 0}, set()
    for name in files:
        if name.endswith(".safetensors"):
            for tensor, meta in safetensors_header(path / name).items():
                count = 1
                for d in meta["shape"]:
                    count *= d
                n_params += count
                by_part[_part_of(tensor)] += count
                dtypes.add(meta["dtype"])
    if n_params == 0:
        raise LlavaEdgeError(f"{path}: no safetensors weights found")

    ours = config.get("llava_edge") or {}
    per_view = image_tokens(vision_kind, vision["image_size"], vision["patch_size"],
                            top["vision_feature_select_strategy"])
    return CheckpointInfo(
        kind="checkpoint",
        path=str(path),
        architecture=(config.get("architectures") or [MODEL_TYPES[model_type]])[0],
        vision={
            "type": vision_kind,
            **{k: vision.get(k) for k in ("image_size", "patch_size", "hidden_size",
                                         "intermediate_size", "num_hidden_layers",
                                         "num_attention_heads")},
        },
        text={
            "type": text.get("model_type", "unknown"),
            **{k: text.get(k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "vocab_size",
                                       "max_position_embeddings")},
            "num_key_value_heads": text.get("num_key_value_heads",
                                            text.get("num_attention_heads")),
        },
        projector={
            # "linear" is the original LLaVA linear projector (trainer/assemble.py).
            "type": ("linear" if top["projector_hidden_act"] == "linear"
                     else "mlp2x_" + str(top["projector_hidden_act"])),
            "vision_feature_layer": top["vision_feature_layer"],
            "vision_feature_select_strategy": top["vision_feature_select_strategy"],
        },
        image_token_index=top["image_token_index"],
        image_tokens_per_image=per_view,
        n_params=n_params,
        params_by_part=by_part,
        weight_dtypes=sorted(dtypes),
        tokenizer=_tokenizer_summary(path),
        random_init=bool(ours.get("random_init", False)),
        preset=ours.get("preset"),
        files=files,
        anyres=(_anyres_summary(config.get("image_grid_pinpoints") or NEXT_DEFAULT_PINPOINTS,
                                vision["image_size"], vision["patch_size"], per_view)
                if model_type == "llava_next" else None),
    )


def _anyres_summary(pinpoints: list, tile: int, patch: int, per_view: int) -> dict:
    """LLaVA-NeXT's tiling bounds: the most views (base + grid tiles) and positions an
    image can take. The most positions come from an image of exactly a pinpoint's aspect
    (nothing unpadded): the base view, then every feature row of the grid plus its
    newline."""
    side = tile // patch
    grids = [(h // tile, w // tile) for h, w in pinpoints]
    return {
        "image_grid_pinpoints": [list(p) for p in pinpoints],
        "tokens_per_view": per_view,
        "max_views": 1 + max(r * c for r, c in grids),
        "max_positions": per_view + max(r * side * (c * side + 1) for r, c in grids),
    }
