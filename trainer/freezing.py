"""Which parameters learn in each stage, LoRA on the LLM, and the optimizer's groups.

The three parts of ``LlavaForConditionalGeneration`` are told apart by parameter name
(``vision_tower``, ``multi_modal_projector``, ``language_model`` / ``lm_head``), which
holds with and without a PEFT wrapper around the model. ``LlavaNextForConditionalGeneration``
has the same parts (under ``model.``) plus ``image_newline``, the embedding appended after
each row of tile features; it is counted with the projector: it learns whenever the
projector does, at the projector's learning rate.

On ``image_newline`` the original code differs: LLaVA's ``llava_arch.py`` creates it
(``randn * 1/sqrt(hidden)``) with the projector when ``mm_patch_merge_type`` has
``unpad``; LLaVA-NeXT's ``train.py`` unfreezes in pretraining only ``mm_projector``
(``tune_mm_mlp_adapter`` / ``mm_tunable_parts=mm_mlp_adapter``), so the newline stays at
its random init there, and trains it in fine-tuning as part of ``mm_language_model``
(every parameter not in the vision tower, projector or resampler) at the LLM's learning
rate. Here the tiny presets tile from stage 1 on, so the newline is in every stage-1
input and by default is trained with the projector, in both stages. ``freeze_newline``
(``--freeze-newline``) keeps it at its starting value while the projector learns: in
stage 1 this reproduces LLaVA-NeXT's pretraining, where the newline stays at its init.
It needs a checkpoint that has the newline (LLaVA-NeXT); asked of a LLaVA-1.5 one it is
an error, not a silent no-op.

* stage 1 (LLaVA): projector only;
* stage 2 (LLaVA): projector + LLM, the LLM fully or through LoRA adapters on its linear
  layers (q, k, v, o, gate, up, down: LLaVA's ``find_all_linear_names`` minus the
  projector, vision tower and head);
* ``tune_vision`` adds the vision tower to either.
"""

from __future__ import annotations

from dataclasses import dataclass

from llava_edge.trainer.train_config import TrainConfig, TrainConfigError

PARTS = ("vision", "projector", "llm")
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def is_newline(name: str) -> bool:
    """Whether parameter ``name`` is LLaVA-NeXT's ``image_newline``."""
    return name.split(".")[-1] == "image_newline"


def check_freeze_newline(config: TrainConfig, has_newline: bool) -> None:
    """Refuse ``freeze_newline`` for a checkpoint without ``image_newline`` (LLaVA-1.5)."""
    if config.freeze_newline and not has_newline:
        raise TrainConfigError(
            f"freeze_newline (--freeze-newline) needs a LLaVA-NeXT checkpoint (llava_next): "
            f"{config.model} has no image_newline to freeze")


def part_of(name: str) -> str:
    """``vision``, ``projector`` or ``llm`` for a parameter name of a LLaVA model."""
    if "vision_tower" in name:
        return "vision"
    if "multi_modal_projector" in name or "image_newline" in name:
        return "projector"
    if "language_model" in name or "lm_head" in name:
        return "llm"
    raise ValueError(f"parameter {name!r} is in no known part of a LLaVA model")


@dataclass(frozen=True)
class TrainableSummary:
    """Parameter counts: trained and total, per part."""

    trained: dict[str, int]
    total: dict[str, int]
    lora: bool

    def describe(self) -> str:
        parts = []
        for part in PARTS:
            n = self.trained.get(part, 0)
            state = "frozen" if n == 0 else f"{n:,} trained"
            if part == "llm" and self.lora and n:
                state += " (LoRA)"
            parts.append(f"{part}: {state}")
        return "; ".join(parts)


def configure_trainable(model, config: TrainConfig):
    """Freeze and unfreeze ``model``'s parts for ``config``; wrap the LLM in LoRA if asked.

    Returns the model to train (a ``PeftModel`` with LoRA, else ``model`` itself).
    """
    check_freeze_newline(config, any(is_newline(n) for n, _ in model.named_parameters()))
    model.requires_grad_(False)
    if config.tune_llm and config.lora_r:
        model = _add_lora(model, config)  # PEFT leaves only the adapters trainable
    wanted = {"vision": config.tune_vision, "projector": config.tune_projector,
              "llm": config.tune_llm and not config.lora_r}
    for name, param in model.named_parameters():
        if "lora_" in name or (config.freeze_newline and is_newline(name)):
            continue
        if wanted[part_of(name)]:
            param.requires_grad_(True)
    return model


def _add_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=LORA_TARGETS,
                      bias="none")
    return get_peft_model(model, lora)


def is_lora(model) -> bool:
    return hasattr(model, "merge_and_unload")


def merge_lora(model):
    """The plain ``LlavaForConditionalGeneration`` with the LoRA updates folded in."""
    return model.merge_and_unload() if is_lora(model) else model


def summarize(model) -> TrainableSummary:
    trained = {p: 0 for p in PARTS}
    total = {p: 0 for p in PARTS}
    for name, param in model.named_parameters():
        part = part_of(name)
        total[part] += param.numel()
        if param.requires_grad:
            trained[part] += param.numel()
    return TrainableSummary(trained, total, is_lora(model))


def param_groups(model, config: TrainConfig) -> list[dict]:
    """AdamW groups: a learning rate per part, weight decay only on matrices.

    Biases and norm weights take no decay (Hugging Face Trainer's rule). With LoRA the
    adapters learn at ``learning_rate`` and the projector at ``projector_lr``, as in
    LLaVA's ``finetune_lora.sh``.
    """
    lr = {"llm": config.learning_rate,
          "projector": config.projector_lr or config.learning_rate,
          "vision": config.vision_lr or config.learning_rate}
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2 and config.weight_decay > 0
        groups.setdefault((part_of(name), decay), []).append(param)
    return [
        {"params": params, "lr": lr[part], "weight_decay": config.weight_decay if decay else 0.0,
         "name": f"{part}{'' if decay else '/no_decay'}"}
        for (part, decay), params in sorted(groups.items())
    ]
