"""``llava-edge init --vision ... --llm ...``: a LLaVA checkpoint from a pretrained vision
tower and a pretrained language model, with a fresh projector: what LLaVA's stage 1
(feature alignment) starts from.

The tower (CLIP or SigLIP) and the LLM (Llama, Mistral, Qwen2) keep their weights bit for
bit; the tokenizer gains ``<image>`` (and ``<pad>`` when it has none) with embedding rows
for them; the projector is initialised as transformers initialises it, from ``seed``.
The result is an ordinary llava-hf ``LlavaForConditionalGeneration`` directory, in the
LLM's dtype (its config's ``dtype``; the tower is cast to it, as llava-hf ships one dtype).
Memory: the LLM and the tower are loaded once each; nothing else is allocated (the
LLaVA shell is built on the meta device and the loaded parts are put into it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llava_edge import __version__
from llava_edge.hub import resolve_model
from llava_edge.trainer.assemble import (AssembleError, add_llava_tokens, check_llm_dir,
                                         check_out_dir, check_vision_dir, grow_embeddings,
                                         linear_projector_as_two_layers, llava_config,
                                         open_language_model, open_vision_tower, save_llava)

# The projectors llava-hf's LlavaMultiModalProjector can express: name -> activation.
PROJECTORS = {"mlp2x_gelu": "gelu", "linear": "linear"}
SELECT_FEATURES = ("patch", "cls_patch")
# The chat template a language model family gets when --template is not given.
DEFAULT_TEMPLATES = {"llama": "vicuna_v1", "mistral": "vicuna_v1", "qwen2": "chatml"}


@dataclass(frozen=True)
class PartsSpec:
    """What to assemble. ``vision`` and ``llm``: directories or Hub ids."""

    vision: str
    llm: str
    projector: str = "mlp2x_gelu"
    template: str | None = None  # None: the LLM family's default
    select_layer: int = -2  # vision hidden state the projector reads
    select_feature: str = "patch"  # patch: patch tokens only; cls_patch: CLIP's CLS too
    seed: int = 0


@dataclass(frozen=True)
class AssembledCheckpoint:
    path: Path
    vision_type: str  # clip, siglip
    llm_type: str  # llama, mistral, qwen2
    projector: str
    template: str
    n_params: int
    n_image_tokens: int
    vocab_size: int
    image_token_id: int
    pad_token_id: int
    files: list[str]


def check_projector(name: str) -> str:
    """The activation for projector ``name``, or an :class:`AssembleError` saying why not."""
    if name in PROJECTORS:
        return PROJECTORS[name]
    deeper = re.fullmatch(r"mlp(\d+)x_gelu", name)
    why = (f"llava-hf's projector (LlavaMultiModalProjector) has two linear layers, so "
           f"{name} cannot be expressed; " if deeper else "")
    raise AssembleError(f"unknown projector {name!r}: {why}choose one of: "
                        f"{', '.join(PROJECTORS)}")


def check_template(name: str):
    """The :class:`~llava_edge.templates.Template` called ``name`` (read now: the table
    may have grown since import)."""
    from llava_edge import templates

    try:
        return templates.TEMPLATES[name]
    except KeyError:
        raise AssembleError(f"unknown template {name!r}; choose one of: "
                            f"{', '.join(templates.TEMPLATES)}") from None


def select_strategy(family: str, select_feature: str) -> str:
    """transformers' ``vision_feature_select_strategy`` for LLaVA's ``mm_vision_select_feature``:
    ``default`` drops the first token, which only CLIP's CLS is."""
    if select_feature not in SELECT_FEATURES:
        raise AssembleError(f"unknown select feature {select_feature!r}; choose one of: "
                            f"{', '.join(SELECT_FEATURES)}")
    if family == "siglip":
        if select_feature == "cls_patch":
            raise AssembleError("--select-feature cls_patch: a SigLIP tower has no CLS token "
                                "(use patch)")
        return "full"
    return "default" if select_feature == "patch" else "full"


def assemble_checkpoint(spec: PartsSpec, out_dir: str | Path, *,
                        overwrite: bool = False) -> AssembledCheckpoint:
    """Assemble ``spec`` into ``out_dir`` (complete or not at all) and describe it.

    Options are checked before any weights are read, so a typo fails at once.
    """
    import torch
    from transformers import LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    out_dir = Path(out_dir)
    act = check_projector(spec.projector)
    if spec.template is not None:
        check_template(spec.template)
    check_out_dir(out_dir, overwrite)
    # Both parts found (downloaded) and of a supported kind before either is loaded.
    vision_dir = resolve_model(spec.vision, "--vision")
    llm_dir = resolve_model(spec.llm, "--llm")
    family = check_vision_dir(vision_dir, "--vision")
    llm_type = check_llm_dir(llm_dir, "--llm")
    strategy = select_strategy(family, spec.select_feature)
    template_name = spec.template or DEFAULT_TEMPLATES[llm_type]
    template = check_template(template_name)

    vision, image_processor = open_vision_tower(vision_dir, what="--vision")
    n_layers = vision.config.num_hidden_layers
    if not -(n_layers + 1) <= spec.select_layer <= n_layers:
        raise AssembleError(f"--select-layer {spec.select_layer}: the vision tower has "
                            f"{n_layers} layers (hidden states {-(n_layers + 1)}..{n_layers})")
    llm, tokenizer = open_language_model(llm_dir, what="--llm")
    dtype = llm.get_input_embeddings().weight.dtype
    vision.to(dtype)
    vision.config.dtype = dtype

    image_token_id, pad_token_id = add_llava_tokens(tokenizer)
    vocab_size = grow_embeddings(llm, len(tokenizer))
    text_config = llm.config
    text_config.pad_token_id = pad_token_id
    config = llava_config(
        vision.config, text_config, image_token_id, projector_hidden_act=act,
        vision_feature_layer=spec.select_layer, vision_feature_select_strategy=strategy,
        llava_edge={
            "random_init": False,  # the tower and the LLM are pretrained ...
            "projector": "fresh",  # ... the projector is not: train stage 1 first
            "projector_type": spec.projector,
            "seed": spec.seed,
            "sources": {"vision": spec.vision, "llm": spec.llm},
            "select_layer": spec.select_layer,
            "select_feature": spec.select_feature,
            "template": template_name,
            "created_by": f"llava-edge {__version__}",
        })

    # The shell on the meta device (no memory), then the real parts put in place.
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    model.model.multi_modal_projector = _fresh_projector(model, LlavaMultiModalProjector,
                                                         spec, dtype)
    model.generation_config = llm.generation_config
    model.generation_config.pad_token_id = pad_token_id
    if config.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:  # a part transformers lays out differently than this code expects
        raise RuntimeError(f"assembled model has tensors left on the meta device: {meta[:5]}")

    files = save_llava(model, tokenizer, image_processor, template.jinja, out_dir,
                       overwrite=overwrite)
    return AssembledCheckpoint(
        path=out_dir, vision_type=family, llm_type=llm_type, projector=spec.projector,
        template=template_name, n_params=sum(p.numel() for p in model.parameters()),
        n_image_tokens=config.image_seq_length, vocab_size=vocab_size,
        image_token_id=image_token_id, pad_token_id=pad_token_id, files=files)


def _fresh_projector(model, projector_cls, spec: PartsSpec, dtype):
    """A projector initialised by transformers' own rule for LLaVA, from ``spec.seed``
    alone (the caller's random state is left as it was)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        projector = projector_cls(model.config)
        for module in projector.modules():
            model._init_weights(module)
    if spec.projector == "linear":
        linear = projector.linear_1
        two = linear_projector_as_two_layers(linear.weight.detach(), linear.bias.detach())
        projector.load_state_dict(two)
    return projector.to(dtype)
