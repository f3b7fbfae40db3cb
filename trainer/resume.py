"""Resumable training checkpoints: ``OUTPUT/checkpoints/step-NNNNNN/``.

Each holds what :meth:`accelerate.Accelerator.save_state` writes (the trainable weights,
optimizer, learning-rate scheduler, gradient scaler, and every process's RNG states) plus
``trainer_state.json`` (the step, and so the data position; running totals; the settings
a resume must agree with). With one process or DDP, only the parameters being trained are
stored: stage 1 of a 7B model writes megabytes, not 14 GB. FSDP and DeepSpeed write
their own sharded format through accelerate.

A checkpoint is written under a temporary name and renamed when complete, so an
interrupted save never looks like a checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from llava_edge.atomic_dir import write_json
from llava_edge.errors import LlavaEdgeError

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d+)$")

#: Settings a resumed run must share with the run that wrote the checkpoint: they decide
#: the data order, the schedule and the set of trained parameters.
RESUME_KEYS = ("stage", "model", "data", "image_folder", "template", "image_aspect_ratio",
               "model_max_length", "global_batch_size", "seed", "epochs", "max_steps",
               "learning_rate", "projector_lr", "vision_lr", "lr_scheduler", "warmup_ratio",
               "weight_decay", "tune_projector", "tune_llm", "tune_vision", "freeze_newline",
               "lora_r", "lora_alpha")


def checkpoint_root(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as ``(step, path)``, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def install_trainable_only_hooks(accelerator) -> None:
    """Make ``save_state`` store only trainable tensors, and ``load_state`` check them.

    Frozen weights are the starting checkpoint's, which the resumed run loads anyway.
    Applies where accelerate hands the state dicts to hooks (one process, DDP).
    """

    def keep_trainable(models, weights, _output_dir):
        for model, state in zip(models, weights):
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            for key in list(state):
                if key not in trainable:
                    del state[key]

    def check_trainable(models, input_dir):
        from safetensors import safe_open

        for i, model in enumerate(models):
            path = Path(input_dir) / ("model.safetensors" if i == 0 else f"model_{i}.safetensors")
            if not path.is_file():
                raise LlavaEdgeError(f"checkpoint {input_dir} has no {path.name}")
            with safe_open(str(path), "pt") as f:
                stored = set(f.keys())
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            missing = sorted(trainable - stored)
            if missing:
                raise LlavaEdgeError(
                    f"checkpoint {input_dir} lacks {len(missing)} trained tensor(s) "
                    f"(e.g. {missing[0]}); it was written by a run with other settings")

    accelerator.register_save_state_pre_hook(keep_trainable)
    accelerator.register_load_state_pre_hook(check_trainable)


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write checkpoint ``step`` (all processes call this); keep the newest ``keep``."""
    root = checkpoint_root(run_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, config_values: dict) -> dict:
    """Restore the state saved at ``path`` and return its ``trainer_state.json``.

    Refuses, naming the settings, when the run's settings differ from the checkpoint's.
    """
    state = json.loads((path / STATE_FILE).read_text())
    saved = state.get("config", {})
    changed = [k for k in RESUME_KEYS if k in saved and saved[k] != config_values.get(k)]
    if changed:
        details = ", ".join(f"{k}: {saved[k]!r} -> {config_values.get(k)!r}" for k in changed)
        raise LlavaEdgeError(f"cannot resume from {path}: settings changed ({details}); "
                             "use the same settings, or --force to start over")
    if state.get("num_processes") != accelerator.num_processes:
        raise LlavaEdgeError(
            f"cannot resume from {path}: it was written by {state.get('num_processes')} "
            f"process(es) and this run has {accelerator.num_processes}")
    accelerator.load_state(str(path), strict=False)  # the hooks check the trained tensors
    return state


def resume_values(config_values: dict) -> dict:
    """The subset of settings stored with a checkpoint for :func:`load_checkpoint`."""
    return {k: config_values[k] for k in RESUME_KEYS}
