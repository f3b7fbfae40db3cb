"""Write the vision tower + projector of a LLaVA checkpoint as llama.cpp's ``mmproj`` GGUF.

The file (architecture ``clip``, keys ``clip.vision.*``, ``clip.projector_type = "mlp"``,
tensors ``v.*`` and ``mm.0`` / ``mm.2``) is what llama.cpp's multimodal library (mtmd)
loads next to the language model GGUF: ``llama-mtmd-cli --mmproj``, Ollama, and
llama-cpp-python's ``Llava15ChatHandler(clip_model_path=...)``. llava-edge's own runtime
does not need it (it computes image embeddings with an exact ONNX graph and injects
them); it is there so that a bundle also runs in stock llama.cpp.

How LLaVA's choices map onto llama.cpp's LLaVA graph (tools/mtmd/models/llava.cpp):

* ``vision_feature_layer``: Hugging Face takes ``hidden_states[k]`` (-2: the output of the
  second-to-last encoder layer, before ``post_layernorm``). The graph runs the encoder
  up to the deepest ``clip.vision.feature_layer`` (non-negative, counted like
  ``hidden_states``) and returns that layer's output, so that key is written and only the
  layers it needs are stored; without the key llama.cpp would stop one layer short.
  ``post_layernorm`` (and SigLIP's pooling head) are left out: LLaVA never uses them.
* CLS: CLIP with the ``default`` strategy drops CLS, and so does llama.cpp, but its graph
  appends the class embedding after the patches instead of before, shifting position
  embeddings and the rows it keeps by one (a known llama.cpp issue), so its image
  embeddings differ from transformers'. :mod:`gguf_parity` measures the difference.
  CLIP with ``full`` (keep CLS) and SigLIP with ``default`` have no llama.cpp equivalent
  and are refused.
* Activations: CLIP's ``quick_gelu`` is the graph's default; SigLIP's tanh GELU is
  ``clip.use_gelu``. The projector's GELU is ggml's tanh approximation of transformers'
  exact ``gelu`` (a small, measured difference); other projector activations are refused.

LLaVA-NeXT (``llava_next``) checkpoints get llama.cpp's LLaVA-1.6 keys on top:
``clip.vision.image_grid_pinpoints`` (flattened as ``width, height`` pairs, the order
clip.cpp reads; transformers' config lists ``[height, width]``),
``clip.vision.mm_patch_merge_type = "spatial_unpad"``, ``clip.vision.image_crop_resolution``
and the ``v.image_newline`` tensor. The vendored mtmd loads it and tiles images with the
pinpoints, but (measured, :func:`gguf_parity.next_mmproj_parity`) emits the tiles before
the overview, each view whole (no unpadding, no newline rows), and no tiles for an image
of one tile's size, so its image positions never match transformers' packing.
"""

from __future__ import annotations

import re
from pathlib import Path

from llava_edge.errors import LlavaEdgeError
from llava_edge.export.open_checkpoint import UnsupportedModelError, check_supported
from llava_edge.export.gguf_tensors import SafetensorsCheckpoint, TensorPlan, find_prefix
from llava_edge.export.gguf_writer import (FILE_TYPES, WrittenGGUF, gguf_file,
                                           write_planned_tensors)
from llava_edge.progress import Progress

# llava-hf files name the tower `vision_tower.vision_model.*`; transformers 5 saves the
# bare vision transformer (`vision_tower.*`). Longer prefixes first.
VISION_PREFIXES = ("vision_tower.vision_model.", "model.vision_tower.vision_model.",
                   "vision_tower.", "model.vision_tower.")
PROJECTOR_PREFIXES = ("multi_modal_projector.", "model.multi_modal_projector.")
FEATURE_LAYER_KEY = "clip.vision.feature_layer"  # not among gguf-py's key constants
PINPOINTS_KEY = "clip.vision.image_grid_pinpoints"
MERGE_TYPE_KEY = "clip.vision.mm_patch_merge_type"
CROP_RESOLUTION_KEY = "clip.vision.image_crop_resolution"

_EMBEDDINGS = {
    "embeddings.class_embedding": "v.class_embd",
    "embeddings.patch_embedding.weight": "v.patch_embd.weight",
    "embeddings.patch_embedding.bias": "v.patch_embd.bias",
    "embeddings.position_embedding.weight": "v.position_embd.weight",
    "pre_layrnorm.weight": "v.pre_ln.weight",
    "pre_layrnorm.bias": "v.pre_ln.bias",
}
_LAYER_PARTS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_out", "layer_norm1": "ln1", "layer_norm2": "ln2",
    "mlp.fc1": "ffn_up", "mlp.fc2": "ffn_down",
}
_PROJECTOR = {"linear_1": "mm.0", "linear_2": "mm.2"}
# LLaVA-NeXT's learned row separator; the vendored clip.cpp's TN_IMAGE_NEWLINE
NEWLINE_SOURCES = ("image_newline", "model.image_newline")
NEWLINE_TENSOR = "v.image_newline"
_SKIPPED = re.compile(r"^(post_layernorm\.|head\.|embeddings\.position_ids$)")
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
# Kept in float32 even in an F16 file: vectors, and the embeddings llama.cpp adds to
# (llama.cpp's converters do the same).
_ALWAYS_F32 = ("v.position_embd.weight", "v.class_embd", NEWLINE_TENSOR)


def feature_layer_index(feature_layer, n_layers: int) -> int:
    """``vision_feature_layer`` as a non-negative ``hidden_states`` index."""
    if isinstance(feature_layer, (list, tuple)):
        if len(feature_layer) != 1:
            raise UnsupportedModelError(f"vision_feature_layer {feature_layer} (several "
                                        "layers) is not supported in an mmproj export")
        feature_layer = feature_layer[0]
    index = feature_layer if feature_layer >= 0 else n_layers + 1 + feature_layer
    if not 1 <= index <= n_layers:
        raise UnsupportedModelError(f"vision_feature_layer {feature_layer} is out of range "
                                    f"for {n_layers} encoder layers")
    return index


def llama_cpp_pinpoints(hf_pinpoints) -> list[int]:
    """transformers' ``image_grid_pinpoints`` (``[[height, width], ...]``, as its
    ``select_best_resolution`` reads them) flattened in llama.cpp's order: clip.cpp reads
    ``clip.vision.image_grid_pinpoints`` pair by pair as ``{width, height}``."""
    flat = []
    for height, width in hf_pinpoints:
        flat += [int(width), int(height)]
    return flat


def mmproj_tensor_plan(ckpt: SafetensorsCheckpoint, n_layers_kept: int,
                       out_type: str) -> list[TensorPlan]:
    """The GGUF tensors of the vision tower (first ``n_layers_kept`` layers) + projector."""
    names = ckpt.names()
    vision = find_prefix(names, VISION_PREFIXES, "vision tower", ckpt.path)
    projector = find_prefix(names, PROJECTOR_PREFIXES, "projector", ckpt.path)
    plans = []

    def add(source: str, name: str) -> None:
        dims, _ = ckpt.info(source)
        f16 = out_type == "F16" and len(dims) >= 2 and name not in _ALWAYS_F32
        plans.append(TensorPlan(source, name, dims, "F16" if f16 else "F32"))

    for source in names:
        if source.startswith(vision):
            key = source[len(vision):]
            if _SKIPPED.search(key):
                continue
            if key in _EMBEDDINGS:
                add(source, _EMBEDDINGS[key])
            elif (m := _LAYER.match(key)) and m.group(2) in _LAYER_PARTS:
                layer = int(m.group(1))
                if layer < n_layers_kept:
                    add(source, f"v.blk.{layer}.{_LAYER_PARTS[m.group(2)]}.{m.group(3)}")
            else:
                raise UnsupportedModelError(f"{ckpt.path}: vision tensor {source!r} is not "
                                            "supported by the mmproj exporter")
        elif source.startswith(projector):
            part, _, kind = source[len(projector):].partition(".")
            if part not in _PROJECTOR:
                raise UnsupportedModelError(f"{ckpt.path}: projector tensor {source!r} is not "
                                            "supported (expected a 2-layer MLP projector)")
            add(source, f"{_PROJECTOR[part]}.{kind}")
        elif source in NEWLINE_SOURCES:
            add(source, NEWLINE_TENSOR)
    got = {p.name for p in plans}
    for required in ("v.patch_embd.weight", "v.position_embd.weight", "mm.0.weight", "mm.2.weight"):
        if required not in got:
            raise LlavaEdgeError(f"{ckpt.path}: tensor for {required!r} is missing")
    return plans


def write_mmproj(checkpoint_dir: str | Path, out_path: str | Path, out_type: str = "F16",
                 name: str | None = None,
                 progress: Progress | None = None) -> WrittenGGUF:
    """Write the checkpoint's vision tower and projector as an mmproj GGUF file."""
    import gguf
    from transformers import AutoConfig, AutoProcessor

    if out_type not in FILE_TYPES:
        raise LlavaEdgeError(f"mmproj type must be F32 or F16, not {out_type!r}")
    path, out_path = Path(checkpoint_dir), Path(out_path)
    check_supported(path)
    config = AutoConfig.from_pretrained(path)
    v = config.vision_config
    kind = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}[v.model_type]
    strategy = config.vision_feature_select_strategy
    if (kind, strategy) == ("clip", "full"):
        raise UnsupportedModelError(f"{path}: CLIP with vision_feature_select_strategy 'full' "
                                    "(CLS kept) has no llama.cpp mmproj equivalent")
    if (kind, strategy) == ("siglip", "default"):
        raise UnsupportedModelError(f"{path}: SigLIP with vision_feature_select_strategy "
                                    "'default' (first patch dropped) has no llama.cpp mmproj "
                                    "equivalent")
    if config.projector_hidden_act != "gelu":
        raise UnsupportedModelError(f"{path}: projector activation "
                                    f"{config.projector_hidden_act!r} is not supported by "
                                    "llama.cpp's mlp projector (gelu only)")
    n_keep = feature_layer_index(config.vision_feature_layer, v.num_hidden_layers)
    image_processor = AutoProcessor.from_pretrained(path).image_processor

    ckpt = SafetensorsCheckpoint(path)
    plans = mmproj_tensor_plan(ckpt, n_keep, out_type)
    n_mmproj_embd = next(p.shape[0] for p in plans if p.name == "mm.2.weight")
    if config.model_type == "llava_next" and not any(p.name == NEWLINE_TENSOR for p in plans):
        raise LlavaEdgeError(f"{path}: LLaVA-NeXT checkpoint without an image_newline tensor")

    with gguf_file(out_path, "clip") as writer:
        writer.add_name(name or f"{path.name} vision")
        writer.add_description(f"LLaVA {kind} vision tower + mlp projector (llava-edge)")
        writer.add_file_type(FILE_TYPES[out_type])
        writer.add_clip_has_vision_encoder(True)
        writer.add_bool(gguf.Keys.Clip.HAS_LLAVA_PROJECTOR, True)
        writer.add_clip_projector_type("mlp")
        writer.add_vision_image_size(v.image_size)
        writer.add_vision_patch_size(v.patch_size)
        writer.add_vision_embedding_length(v.hidden_size)
        writer.add_vision_feed_forward_length(v.intermediate_size)
        writer.add_vision_projection_dim(n_mmproj_embd)
        writer.add_vision_block_count(n_keep)
        writer.add_vision_head_count(v.num_attention_heads)
        writer.add_vision_attention_layernorm_eps(float(v.layer_norm_eps))
        writer.add_vision_image_mean([float(x) for x in image_processor.image_mean])
        writer.add_vision_image_std([float(x) for x in image_processor.image_std])
        writer.add_array(FEATURE_LAYER_KEY, [n_keep])
        # quick_gelu is the graph's default; anything tanh-GELU-like needs the flag
        writer.add_vision_use_gelu(v.hidden_act != "quick_gelu")
        if config.model_type == "llava_next":
            # llama.cpp's LLaVA-1.6 keys (clip.cpp: KEY_IMAGE_GRID_PINPOINTS,
            # KEY_MM_PATCH_MERGE_TYPE, KEY_IMAGE_CROP_RESOLUTION)
            writer.add_array(PINPOINTS_KEY, llama_cpp_pinpoints(config.image_grid_pinpoints))
            writer.add_string(MERGE_TYPE_KEY, "spatial_unpad")
            writer.add_uint32(CROP_RESOLUTION_KEY, int(v.image_size))
        write_planned_tensors(writer, ckpt, plans, progress)
    return WrittenGGUF(out_path, "clip", out_type, len(plans), out_path.stat().st_size, 0, 0)
