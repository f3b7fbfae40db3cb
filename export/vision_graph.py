"""The vision half of LLaVA as one torch module: ``pixel_values`` -> ``image_embeds``.

:class:`VisionEncoder` runs the vision tower only as far as the deepest hidden state the
projector reads (LLaVA-1.5 reads layer -2, so the last encoder layer is never computed),
selects and concatenates those hidden states exactly as transformers'
``LlavaModel.get_image_features`` does, and applies the projector. It is what the ONNX
exporter traces and what every exported variant is compared against.

:func:`load_vision` opens a checkpoint without reading the language model's weights: the
LLaVA model is built on the ``meta`` device and only the vision tower and projector are
made real, so a 7B checkpoint costs its vision tower's RAM, not 28 GB.

LLaVA-NeXT checkpoints use the same graph: each of an image's views (base view and grid
tiles) is one item of the batch, and the packing of the views' features into the
prompt's rows (unpadding, ``image_newline``) happens outside it
(:mod:`llava_edge.runtimes.anyres`); :func:`load_vision` also reads ``image_newline``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llava_edge.errors import LlavaEdgeError
from llava_edge.export.open_checkpoint import (SUPPORTED_VISION, UnsupportedModelError,
                                              check_supported, model_class)

SELECT_STRATEGIES = ("default", "full")
# Projector kinds LLaVA checkpoints name in their config (original-repo keys); llava-hf's
# LlavaMultiModalProjector is the two-layer MLP, i.e. "mlp2x_gelu" with any activation.
SUPPORTED_PROJECTOR_TYPES = ("mlp2x_gelu", "mlp")
_PROJECTOR_TYPE_KEYS = ("mm_projector_type", "projector_type")


@dataclass(frozen=True)
class VisionGraphSpec:
    """What the vision graph computes, read from the LLaVA config."""

    kind: str  # "clip" | "siglip"
    image_size: int
    patch_size: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_layers: int  # layers in the tower
    feature_layers: tuple[int, ...]  # as configured (may be negative)
    hidden_state_indices: tuple[int, ...]  # into hidden_states[0..num_layers]
    select_strategy: str
    n_image_tokens: int
    n_embd: int  # projector output width (the LLM's hidden size)

    @property
    def n_layers_run(self) -> int:
        """Encoder layers the graph computes: up to the deepest selected hidden state."""
        return max(self.hidden_state_indices)

    @property
    def n_positions(self) -> int:
        """Tokens inside the tower: patches plus CLIP's CLS token."""
        return (self.image_size // self.patch_size) ** 2 + (1 if self.kind == "clip" else 0)

    def to_dict(self) -> dict:
        return asdict(self) | {"n_layers_run": self.n_layers_run}


def graph_spec(config) -> VisionGraphSpec:
    """The :class:`VisionGraphSpec` of a ``LlavaConfig``; :class:`UnsupportedModelError`
    names a feature layer, select strategy or projector type the graph cannot build."""
    vc = config.vision_config
    kind = SUPPORTED_VISION.get(vc.model_type)
    if kind is None:
        raise UnsupportedModelError(
            f"vision tower {vc.model_type!r} is not supported (supported: "
            f"{', '.join(sorted(SUPPORTED_VISION))})")
    for key in _PROJECTOR_TYPE_KEYS:
        value = getattr(config, key, None)
        if value is not None and value not in SUPPORTED_PROJECTOR_TYPES:
            raise UnsupportedModelError(
                f"projector type {value!r} ({key}) is not supported (supported: "
                f"{', '.join(SUPPORTED_PROJECTOR_TYPES)})")
    strategy = config.vision_feature_select_strategy
    if strategy not in SELECT_STRATEGIES:
        raise UnsupportedModelError(
            f"vision_feature_select_strategy {strategy!r} is not supported (supported: "
            f"{', '.join(SELECT_STRATEGIES)})")
    layers = config.vision_feature_layer
    layers = (layers,) if isinstance(layers, int) else tuple(layers)
    n_layers = vc.num_hidden_layers
    indices = []
    for layer in layers:
        # hidden_states holds num_layers + 1 entries: the embeddings, then each layer's output.
        if not -(n_layers + 1) <= layer <= n_layers:
            raise UnsupportedModelError(
                f"vision_feature_layer {layer} is out of range for a {n_layers}-layer tower")
        indices.append(layer % (n_layers + 1))
    if not indices:
        raise UnsupportedModelError("vision_feature_layer is an empty list")
    n_positions = (vc.image_size // vc.patch_size) ** 2 + (1 if kind == "clip" else 0)
    # 'default' drops the first token whatever the tower (for SigLIP that is a patch, which
    # is what transformers does too).
    n_tokens = n_positions - 1 if strategy == "default" else n_positions
    return VisionGraphSpec(
        kind=kind, image_size=vc.image_size, patch_size=vc.patch_size,
        hidden_size=vc.hidden_size, intermediate_size=vc.intermediate_size,
        num_heads=vc.num_attention_heads, num_layers=n_layers,
        feature_layers=layers, hidden_state_indices=tuple(indices), select_strategy=strategy,
        n_image_tokens=n_tokens, n_embd=config.text_config.hidden_size,
    )


class VisionEncoder(nn.Module):
    """Vision tower truncated after the deepest used layer, feature selection, projector.

    ``forward(pixel_values [B, 3, H, W] float32) -> image_embeds [B, n_image_tokens, n_embd]``
    """

    def __init__(self, vision_tower: nn.Module, projector: nn.Module, spec: VisionGraphSpec):
        super().__init__()
        self.spec = spec
        self.embeddings = vision_tower.embeddings
        # CLIP normalises the embeddings before the encoder ("pre_layrnorm", sic); SigLIP not.
        pre_layernorm = getattr(vision_tower, "pre_layrnorm", None)
        self.pre_layernorm = pre_layernorm if pre_layernorm is not None else nn.Identity()
        # Only the layers whose output is used: later ones are not part of the graph at all.
        self.layers = nn.ModuleList(vision_tower.encoder.layers[: spec.n_layers_run])
        self.projector = projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.pre_layernorm(self.embeddings(pixel_values))
        wanted = set(self.spec.hidden_state_indices)
        kept = {0: hidden} if 0 in wanted else {}
        for i, layer in enumerate(self.layers, start=1):
            hidden = layer(hidden, None)
            if i in wanted:
                kept[i] = hidden
        selected = [kept[i] for i in self.spec.hidden_state_indices]
        if self.spec.select_strategy == "default":
            selected = [h[:, 1:] for h in selected]
        features = selected[0] if len(selected) == 1 else torch.cat(selected, dim=-1)
        return self.projector(features)


@dataclass
class LoadedVision:
    """A checkpoint's vision half in PyTorch (fp32, eval mode).

    ``model`` is the full ``LlavaForConditionalGeneration`` (``LlavaNext...``) whose
    language model lives on the ``meta`` device (no weights):
    ``model.model.get_image_features`` works, text does not. ``image_newline``: LLaVA-NeXT's
    learned row separator (float32 [n_embd]), ``None`` for LLaVA-1.5.
    """

    path: Path
    model: object
    processor: object
    config: object
    spec: VisionGraphSpec
    image_newline: np.ndarray | None = None

    @property
    def is_next(self) -> bool:
        return self.config.model_type == "llava_next"

    def encoder(self) -> VisionEncoder:
        """A :class:`VisionEncoder` sharing this model's weights."""
        inner = self.model.model
        return VisionEncoder(inner.vision_tower, inner.multi_modal_projector, self.spec).eval()


def load_vision(path: str | Path, attn_implementation: str = "eager") -> LoadedVision:
    """Load the vision tower and projector of the checkpoint at ``path`` in fp32.

    Raises :class:`UnsupportedModelError` for a model the graph cannot build and
    :class:`LlavaEdgeError` for missing or mis-shaped weights, naming them.
    """
    from transformers import AutoConfig, AutoModel, AutoProcessor

    path = Path(path)
    raw = check_supported(path)
    strategy = raw.get("vision_feature_select_strategy", "default")
    if strategy not in SELECT_STRATEGIES:
        # Checked on the raw JSON: transformers' own config validation would refuse it
        # with a less helpful error.
        raise UnsupportedModelError(
            f"{path}: vision_feature_select_strategy {strategy!r} is not supported "
            f"(supported: {', '.join(SELECT_STRATEGIES)})")
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, TypeError) as exc:
        raise UnsupportedModelError(
            f"{path}: config.json is not a valid LLaVA config: {exc}") from None
    try:
        spec = graph_spec(config)
    except UnsupportedModelError as exc:
        raise UnsupportedModelError(f"{path}: {exc}") from None
    config.vision_config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = model_class(raw["model_type"])(config)
    inner = model.model
    inner.vision_tower = AutoModel.from_config(config.vision_config,
                                               attn_implementation=attn_implementation)
    # the model family's own projector class, made real (LLaVA-NeXT's is a copy of 1.5's)
    inner.multi_modal_projector = type(inner.multi_modal_projector)(config)
    tower_sd, projector_sd, newline = _read_vision_weights(path)
    _load_into(inner.vision_tower, tower_sd, "vision tower", path)
    _load_into(inner.multi_modal_projector, projector_sd, "projector", path)
    inner.vision_tower.float().eval()
    inner.multi_modal_projector.float().eval()
    if hasattr(inner, "image_newline"):
        if newline is None:
            raise LlavaEdgeError(f"{path}: the LLaVA-NeXT weight image_newline is missing")
        if tuple(newline.shape) != tuple(inner.image_newline.shape):
            raise LlavaEdgeError(f"{path}: image_newline has shape {tuple(newline.shape)}, "
                                 f"the config says {tuple(inner.image_newline.shape)}")
        inner.image_newline = nn.Parameter(newline, requires_grad=False)
    model.eval()
    processor = AutoProcessor.from_pretrained(path)
    return LoadedVision(path=path, model=model, processor=processor, config=config, spec=spec,
                        image_newline=None if newline is None else newline.numpy())


def reference_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Image features from transformers' own ``get_image_features`` (the ground truth;
    LLaVA-1.5: per image. LLaVA-NeXT's packs views per image and needs their sizes: see
    :func:`llava_edge.export.anyres_export.hf_packed_features`)."""
    with torch.inference_mode():
        out = model.model.get_image_features(pixel_values=pixel_values)
    return torch.stack(list(out.pooler_output))


# Checkpoint key -> module key. llava-hf checkpoints on disk say "vision_tower.vision_model.*"
# (older) or "vision_tower.*" (written by transformers 5); a "model." prefix appears when a
# checkpoint was saved with transformers' in-memory names.
_TOWER_KEY = re.compile(r"^(?:model\.)?vision_tower\.(?:vision_model\.)?(.+)$")
_PROJECTOR_KEY = re.compile(r"^(?:model\.)?multi_modal_projector\.(.+)$")
_NEWLINE_KEY = re.compile(r"^(?:model\.)?image_newline$")  # LLaVA-NeXT


def _is_vision_key(key: str) -> bool:
    return bool(_TOWER_KEY.match(key) or _PROJECTOR_KEY.match(key) or _NEWLINE_KEY.match(key))


def _weight_files(path: Path) -> dict[Path, list[str] | None]:
    """Safetensors files holding the checkpoint, each with its keys (None: read them)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as exc:
            raise LlavaEdgeError(f"{index}: not a safetensors index ({exc})") from None
        files: dict[Path, list[str]] = {}
        for key, name in weight_map.items():
            if _is_vision_key(key):
                files.setdefault(path / name, []).append(key)
        return files
    single = path / "model.safetensors"
    if single.is_file():
        return {single: None}
    raise LlavaEdgeError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _read_vision_weights(path: Path) -> tuple[dict, dict, torch.Tensor | None]:
    """The vision tower's and projector's tensors (fp32), keyed as their modules name them,
    and LLaVA-NeXT's ``image_newline`` (``None`` when the checkpoint has none)."""
    from safetensors import safe_open

    tower, projector, newline = {}, {}, None
    for file, keys in _weight_files(path).items():
        if not file.is_file():
            raise LlavaEdgeError(f"{file}: weight shard named in the index is missing")
        with safe_open(str(file), framework="pt") as f:
            for key in keys if keys is not None else f.keys():
                if m := _TOWER_KEY.match(key):
                    tower[m.group(1)] = f.get_tensor(key).float()
                elif m := _PROJECTOR_KEY.match(key):
                    projector[m.group(1)] = f.get_tensor(key).float()
                elif _NEWLINE_KEY.match(key):
                    newline = f.get_tensor(key).float()
    return tower, projector, newline


def _load_into(module: nn.Module, state: dict, what: str, path: Path) -> None:
    """Load ``state`` into ``module``, naming missing, unexpected or mis-shaped weights."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}"
                        + (" ..." if len(unexpected) > 5 else ""))
    if bad_shape:
        problems.append(f"wrong shape {'; '.join(bad_shape[:3])}")
    if problems:
        raise LlavaEdgeError(f"{path}: {what} weights do not match the config: "
                             + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def vision_flops(spec: VisionGraphSpec) -> dict[str, int]:
    """FLOPs of one image through the graph, counted from the config (a multiply-add is
    2 FLOPs; norms, softmax and activations are left out: they are well under 1%).

    Only the layers the graph computes count, since the tower is truncated.
    """
    d, inner, tokens = spec.hidden_size, spec.intermediate_size, spec.n_positions
    n_patches = (spec.image_size // spec.patch_size) ** 2
    patch_embed = 2 * n_patches * 3 * spec.patch_size**2 * d
    per_layer = 2 * tokens * (4 * d * d      # q, k, v and output projections
                              + 2 * tokens * d  # scores and the weighted sum of values
                              + 2 * d * inner)  # MLP up and down
    projector_in = d * len(spec.hidden_state_indices)
    projector = 2 * spec.n_image_tokens * (projector_in * spec.n_embd + spec.n_embd * spec.n_embd)
    layers = per_layer * spec.n_layers_run
    return {"patch_embed": patch_embed, "encoder_layers": layers, "projector": projector,
            "total": patch_embed + layers + projector}
