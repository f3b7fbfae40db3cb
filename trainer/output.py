"""Write a finished stage as a standard Hugging Face LLaVA checkpoint.

The output directory gets ``config.json``, safetensors weights, ``generation_config.json``
and the processor and tokenizer files, as ``LlavaForConditionalGeneration`` /
``AutoProcessor.from_pretrained`` expect. LoRA adapters are merged into the weights first
(``save_adapter`` also keeps them in ``adapter/``, with the other trained tensors, LLaVA's
``non_lora_trainables``). The ``llava_edge`` block of ``config.json`` is kept, with
``random_init: false`` and a ``training`` record (stage, data, steps, ...); earlier stages'
records move to ``training_history``.

Files are written to a temporary folder inside the output directory and moved into place
with ``config.json`` last, so a directory with a ``config.json`` is a complete model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from llava_edge.trainer.freezing import is_lora, merge_lora

ADAPTER_DIR = "adapter"


def save_trained_model(model, processor, out_dir: Path, training: dict, *, dtype,
                       template: str, save_adapter: bool = False) -> Path:
    """Save ``model`` (merged) with ``processor`` into ``out_dir``; return the directory.

    ``training`` is this stage's record; ``template`` names the chat template the model
    answers in (kept from the source checkpoint when it has one).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model-tmp-", dir=out_dir))
    try:
        if is_lora(model) and save_adapter:
            _save_adapter(model, tmp / ADAPTER_DIR)
        model = merge_lora(model)
        model.config.llava_edge = updated_block(getattr(model.config, "llava_edge", None),
                                                training, template)
        model.config.use_cache = True
        model.to(dtype)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        _move_into(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def updated_block(block: dict | None, training: dict, template: str) -> dict:
    """The ``llava_edge`` config block after a training stage."""
    block = dict(block or {})
    history = list(block.get("training_history", []))
    if "training" in block:
        history.append(block["training"])
    block.setdefault("template", template)
    block["random_init"] = False
    if block.get("projector") == "fresh" and (training.get("trained") or {}).get("projector"):
        block["projector"] = "trained"  # `init --vision/--llm` said "fresh" until now
    block["training"] = training
    block["training_history"] = history
    return block


def _save_adapter(model, out: Path) -> None:
    """The LoRA adapter, plus the non-LoRA tensors that were trained (the projector)."""
    from safetensors.torch import save_file

    model.save_pretrained(out)
    prefix = "base_model.model."  # PEFT's wrapper; stored under the plain model's names
    others = {name.removeprefix(prefix): p.detach().cpu().contiguous()
              for name, p in model.named_parameters()
              if p.requires_grad and "lora_" not in name}
    if others:
        save_file(others, str(out / "non_lora_trainables.safetensors"))


def _move_into(tmp: Path, out_dir: Path) -> None:
    """Move every file of ``tmp`` into ``out_dir``, ``config.json`` last."""
    names = sorted(p.name for p in tmp.iterdir())
    names.sort(key=lambda n: n == "config.json")
    # A model written before (resumed or --force run) must not keep stale shards.
    for stale in out_dir.glob("model*.safetensors*"):
        stale.unlink()
    for name in names:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp / name, target)
