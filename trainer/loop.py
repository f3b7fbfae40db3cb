"""The training loop: one LLaVA stage, from a checkpoint directory to a checkpoint directory.

LLaVA-1.5 (``LlavaForConditionalGeneration``) and LLaVA-NeXT
(``LlavaNextForConditionalGeneration``, tiled images with ``image_sizes``) checkpoints;
see :mod:`llava_edge.trainer.architectures`.

The engine is Hugging Face accelerate: device placement, mixed precision (bf16/fp16
autocast on GPU, fp32 on CPU), and multi-process training with DDP, FSDP or DeepSpeed
when started by ``accelerate launch`` or ``torchrun``. The loop itself is written out
here so that each piece is visible:

* data order from :class:`~llava_edge.trainer.step_plan.StepPlan` (seeded, resumable);
* per optimizer step, the process's micro-batches (gradient accumulation, gradient sync
  only on the last); the loss is the sum of token losses over the *global* number of
  label tokens, so any split over micro-batches and processes gives the same gradient;
* gradient clipping, AdamW, warmup + cosine (or linear/constant) schedule;
* a NaN/inf loss or gradient stops the run before the optimizer step, naming the last
  good checkpoint;
* a checkpoint every ``save_steps`` steps; ``resume`` restores model, optimizer,
  scheduler, RNG and data position;
* ``metrics.jsonl``, ``loss_curve.png`` and ``train_config.json`` in the output directory,
  and the trained model written there as a Hugging Face checkpoint at the end.

A little over 400 lines, to be read in one sitting (as nanoGPT's ``train.py``): the data,
model set-up, checkpointing and metrics it calls live in their own modules.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llava_edge import __version__
from llava_edge.atomic_dir import write_json
from llava_edge.checkpoint_info import read_json
from llava_edge.errors import LlavaEdgeError
from llava_edge.hub import resolve_model
from llava_edge.templates import IMAGE_TOKEN

from llava_edge.trainer.resume import (checkpoint_root, install_trainable_only_hooks,
                                            latest_checkpoint, load_checkpoint,
                                            resume_values, save_checkpoint)
from llava_edge.trainer.architectures import (check_model_type, is_anyres, model_class,
                                              resolve_aspect_ratio)
from llava_edge.trainer.collate import Collator
from llava_edge.trainer.conversation import (ConversationEncoder, auto_template_name,
                                             make_chat_format)
from llava_edge.trainer.dataset import BadSampleError, LlavaDataset, image_tokens_per_image
from llava_edge.trainer.freezing import (check_freeze_newline, configure_trainable,
                                         param_groups, summarize)
from llava_edge.trainer.metrics import MetricsLog, StepRecord, plot_loss_curve, read_metrics
from llava_edge.trainer.output import save_trained_model
from llava_edge.trainer.progress import TrainProgress
from llava_edge.trainer.step_plan import PlanSampler, StepPlan
from llava_edge.trainer.train_config import TrainConfig

CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


class TrainingDivergedError(LlavaEdgeError):
    """The loss or the gradient became NaN or infinite."""


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    stage: int
    steps: int
    samples: int
    skipped_samples: int
    final_loss: float
    seconds: float
    resumed_from_step: int | None
    main_process: bool = True  # False on the other processes of a multi-process run


def train(config: TrainConfig, provenance: dict | None = None, *, resume: bool = False,
          force: bool = False, show_progress: bool = True,
          on_step: Callable[[StepRecord], None] | None = None) -> TrainResult:
    """Run one training stage as ``config`` says and write the model to its output dir.

    ``resume`` continues from the newest checkpoint in the output directory (or starts
    afresh when there is none); ``force`` starts over in an output directory that holds an
    earlier run. ``on_step`` is called on the main process after every optimizer step.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from transformers import AutoProcessor, get_scheduler
    from transformers.utils import logging as hf_logging

    config.validate()
    hf_logging.disable_progress_bar()
    started = time.perf_counter()
    run_dir = Path(config.output_dir)
    accelerator = Accelerator(
        # Without a GPU, say so: accelerate then runs torchrun's processes on CPU (gloo).
        cpu=not torch.cuda.is_available(),
        mixed_precision=_mixed_precision(config.precision, torch),
        # A micro-batch of text-only samples leaves the projector without gradient.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        step_scheduler_with_optimizer=False,
    )
    main = accelerator.is_main_process
    checkpoint = _prepare_run_dir(run_dir, resume, force, accelerator)
    set_seed(config.seed)

    # A Hub id is downloaded once (by the main process; the others then find it cached).
    with accelerator.main_process_first():
        model_dir = resolve_model(config.model, "--model")
    # Data first (its errors are quick to find), then the weights.
    source_config = _read_llava_config(model_dir)
    model_type = source_config["model_type"]
    aspect = resolve_aspect_ratio(config.image_aspect_ratio, model_type)
    check_freeze_newline(config, is_anyres(model_type))  # before loading any weights
    processor = AutoProcessor.from_pretrained(model_dir)
    tokenizer = processor.tokenizer
    chat_format = make_chat_format(config.template, tokenizer, source_config)
    # LLaVA-NeXT: the count depends on each image; the dataset asks the processor per image.
    encoder = ConversationEncoder(chat_format, tokenizer,
                                  tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                                  None if is_anyres(model_type)
                                  else image_tokens_per_image(processor),
                                  config.model_max_length)
    dataset = LlavaDataset(config.data, config.image_folder, processor, encoder, aspect)
    plan = StepPlan(len(dataset), config.global_batch_size, config.micro_batch_size,
                    accelerator.num_processes, accelerator.process_index, config.seed)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * plan.steps_per_epoch))
    model = model_class(model_type).from_pretrained(model_dir, dtype=torch.float32)
    # The output folder only now: a run that fails on its data or model leaves none behind.
    if main:
        checkpoint_root(run_dir).parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    # What learns, and how.
    model = configure_trainable(model, config)
    summary = summarize(model)
    on_gpu = accelerator.device.type == "cuda"
    if config.gradient_checkpointing or (config.gradient_checkpointing is None and on_gpu):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    groups = param_groups(model, config)
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate,
                                  betas=(config.adam_beta1, config.adam_beta2),
                                  eps=config.adam_epsilon)
    scheduler = get_scheduler(_SCHEDULERS[config.lr_scheduler], optimizer,
                              num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    _set_deepspeed_batch_sizes(accelerator, config, plan)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    install_trainable_only_hooks(accelerator)
    model.train()

    # Where to start.
    totals = {"samples": 0, "tokens": 0, "skipped": 0, "elapsed_s": 0.0}
    first_step = 0
    metrics = MetricsLog(run_dir / METRICS_FILE)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint, config.to_dict())
        first_step = state["step"]
        totals.update(state["totals"])
        if main:
            metrics.truncate_after(first_step)
    elif main:
        metrics.reset()
    if main:
        write_json(run_dir / CONFIG_FILE, {"config": config.to_dict(),
                                           "provenance": provenance or {},
                                           "llava_edge_version": __version__}, default=str)

    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=PlanSampler(plan, first_step, total_steps),
        collate_fn=Collator(_pad_id(tokenizer, model)), pin_memory=on_gpu,
        num_workers=config.num_workers if config.num_workers is not None else (4 if on_gpu else 0),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    # DeepSpeed divides each loss by its own accumulation count; undo that.
    engine_gas = plan.accumulation_steps if _uses_deepspeed(accelerator) else 1
    lr_index = next((i for i, g in enumerate(groups) if g["name"].startswith("llm")), 0)
    last_good = latest_checkpoint(run_dir)
    loss = float("nan")
    progress = TrainProgress(total_steps, first_step, enabled=show_progress and main,
                             logging_steps=config.logging_steps, label=f"stage {config.stage}")
    with progress:
        progress.message(
            f"stage {config.stage} ({model_type}, {chat_format.name} template, images "
            f"{aspect}, recipe {config.recipe}): "
            f"{len(dataset)} samples, {total_steps} steps of {config.global_batch_size} on "
            f"{accelerator.num_processes} process(es), {accelerator.device}, "
            f"{accelerator.mixed_precision}; {summary.describe()}"
            + (f"; resuming at step {first_step}" if checkpoint else ""))
        batches = iter(loader)
        for step in range(first_step, total_steps):
            step_start = time.perf_counter()
            micro = [next(batches) for _ in range(plan.micro_count(step))]
            n_tokens, n_samples, n_bad = _reduce_counts(accelerator, micro, config, torch)
            loss_sum = _accumulate(model, micro, n_tokens, accelerator, torch, engine_gas)
            loss = (accelerator.reduce(loss_sum, "sum") / max(n_tokens, 1)).item()
            if not math.isfinite(loss):
                _diverged("loss", loss, step + 1, last_good)
            grad_norm = _clip(accelerator, trainable, config.max_grad_norm)
            if not math.isfinite(grad_norm) and accelerator.mixed_precision != "fp16":
                # (fp16's loss scaler skips such steps by itself.)
                _diverged("gradient norm", grad_norm, step + 1, last_good)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            # Bookkeeping: totals, metrics, progress, checkpoint.
            seconds = time.perf_counter() - step_start
            totals["samples"] += n_samples
            totals["tokens"] += n_tokens
            totals["skipped"] += n_bad
            totals["elapsed_s"] += seconds
            record = StepRecord(
                step=step + 1, epoch=round((step + 1) / plan.steps_per_epoch, 4), loss=loss,
                lr=scheduler.get_last_lr()[lr_index], grad_norm=grad_norm,
                samples=totals["samples"], tokens=totals["tokens"], skipped=totals["skipped"],
                samples_per_s=n_samples / seconds, elapsed_s=round(totals["elapsed_s"], 3))
            if main:
                metrics.append(record)
            progress.update(record)
            if config.save_steps and (step + 1) % config.save_steps == 0 \
                    and step + 1 < total_steps:
                last_good = save_checkpoint(
                    accelerator, run_dir, step + 1,
                    {"step": step + 1, "totals": totals, "num_processes": accelerator.num_processes,
                     "config": resume_values(config.to_dict())},
                    keep=config.save_total_limit)
            if on_step is not None and main:
                on_step(record)

    # The model.
    accelerator.wait_for_everyone()
    if main:
        training = {
            "stage": config.stage, "recipe": config.recipe, "data": config.data,
            "image_folder": config.image_folder, "template": chat_format.name,
            "image_aspect_ratio": aspect, "steps": total_steps,
            "samples": totals["samples"], "skipped_samples": totals["skipped"],
            "epochs": round(total_steps / plan.steps_per_epoch, 4),
            "trained": {p: n for p, n in summary.trained.items() if n},
            "freeze_newline": config.freeze_newline,
            "lora": {"r": config.lora_r, "alpha": config.lora_alpha, "merged": True}
            if config.lora_r else None,
            "started_from": config.model, "final_loss": loss,
            "config_file": CONFIG_FILE, "created_by": f"llava-edge {__version__}",
        }
        _write_model(accelerator.unwrap_model(model), processor, run_dir, config, training,
                     source_config, torch)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(run_dir, config.stage, total_steps, totals["samples"], totals["skipped"],
                       loss, time.perf_counter() - started,
                       first_step if checkpoint is not None else None, main)


# --------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------


def token_loss_sum(logits, labels):
    """Sum of next-token cross-entropies over the label tokens (``-100`` ignored)."""
    import torch.nn.functional as F

    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(),
                           labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")


def _reduce_counts(accelerator, micro: list[dict], config: TrainConfig, torch):
    """Global label tokens, samples and bad samples of the step; raise on a bad sample."""
    bad = [b for m in micro for b in m["bad_samples"]]
    if bad and not config.skip_bad_samples:
        raise BadSampleError(f"{bad[0].message} (--skip-bad-samples skips such samples)")
    if accelerator.num_processes > 1 and any(m["n_samples"] == 0 for m in micro):
        raise BadSampleError("every sample of a micro-batch was bad, which multi-process "
                             "training cannot skip; clean the data (llava-edge data check)")
    local = torch.tensor([sum(m.get("n_label_tokens", 0) for m in micro),
                          sum(m["n_samples"] for m in micro), len(bad)],
                         device=accelerator.device)
    n_tokens, n_samples, n_bad = accelerator.reduce(local, "sum").tolist()
    return int(n_tokens), int(n_samples), int(n_bad)


def _accumulate(model, micro: list[dict], n_tokens: int, accelerator, torch,
                engine_gas: int = 1):
    """Forward and backward every micro-batch of the step; return the local loss sum.

    Each micro-batch's loss is divided by the step's global label-token count and
    multiplied by the process count (DDP averages gradients over processes), so the
    gradient is that of the mean token loss of the whole global batch.
    """
    scale = accelerator.num_processes * engine_gas / max(n_tokens, 1)
    runnable = [m for m in micro if m["n_samples"]]
    loss_sum = torch.zeros((), device=accelerator.device)
    for k, batch in enumerate(runnable):
        sync = k == len(runnable) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            pixel_values = batch["pixel_values"]
            images = {}
            if pixel_values is not None:
                images["pixel_values"] = pixel_values.to(accelerator.device)
                if "image_sizes" in batch:  # LLaVA-NeXT: which views of each image are real
                    images["image_sizes"] = batch["image_sizes"].to(accelerator.device)
            logits = model(
                input_ids=batch["input_ids"].to(accelerator.device),
                attention_mask=batch["attention_mask"].to(accelerator.device),
                **images,
            ).logits
            loss = token_loss_sum(logits, batch["labels"].to(accelerator.device))
            accelerator.backward(loss * scale)
        loss_sum += loss.detach()
    return loss_sum


def _clip(accelerator, params: list, max_norm: float) -> float:
    """Clip gradients to ``max_norm`` (0: no clipping) and return their norm before."""
    import torch

    if max_norm > 0:
        norm = accelerator.clip_grad_norm_(params, max_norm)
    else:
        grads = [p.grad.detach().norm() for p in params if p.grad is not None]
        norm = torch.stack(grads).norm() if grads else torch.zeros(())
    return float(norm)


def _diverged(what: str, value: float, step: int, last_good: Path | None):
    where = (f"the last good checkpoint is {last_good} (resume from it with --resume, e.g. "
             "after lowering --learning-rate)" if last_good else
             "no checkpoint was saved before it (set --save-steps to keep some)")
    raise TrainingDivergedError(f"training stopped: the {what} is {value} at step {step}; "
                                f"{where}. No model was written.")


# --------------------------------------------------------------------------------------
# Set-up helpers
# --------------------------------------------------------------------------------------


def _prepare_run_dir(run_dir: Path, resume: bool, force: bool, accelerator) -> Path | None:
    """Check the output directory; return the checkpoint to resume from, if any."""
    if resume and force:
        raise LlavaEdgeError("--resume and --force contradict each other: choose one")
    if run_dir.exists() and not run_dir.is_dir():
        raise LlavaEdgeError(f"output {run_dir} exists and is not a folder")
    finished = (run_dir / "config.json").is_file()
    ours = (run_dir / CONFIG_FILE).is_file()
    checkpoint = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if force:
        if run_dir.is_dir() and any(run_dir.iterdir()) and not ours:
            raise LlavaEdgeError(f"{run_dir} is not empty and is not a llava-edge training "
                                 "output; refusing to delete it (choose another --output-dir)")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process and run_dir.is_dir():
            shutil.rmtree(run_dir)
        accelerator.wait_for_everyone()
        checkpoint = None
    elif finished and ours:
        raise LlavaEdgeError(f"{run_dir} already holds a model trained by llava-edge; use "
                             "--force to train it again or choose another --output-dir")
    elif run_dir.is_dir() and any(run_dir.iterdir()) and not resume:
        if checkpoint is not None:
            raise LlavaEdgeError(f"{run_dir} holds checkpoints of an unfinished run; use "
                                 "--resume to continue it or --force to start over")
        if not ours:
            raise LlavaEdgeError(f"output folder {run_dir} exists and is not empty")
    return checkpoint if resume else None


def _write_model(model, processor, run_dir: Path, config: TrainConfig, training: dict,
                 source_config: dict, torch) -> None:
    """The trained checkpoint (in the source's dtype and answer template), and the plot."""
    template = (source_config.get("llava_edge") or {}).get("template") \
        or auto_template_name(processor.tokenizer, source_config)
    save_trained_model(model, processor, run_dir, training,
                       dtype=_source_dtype(source_config, torch), template=template,
                       save_adapter=config.save_adapter)
    plot_loss_curve(read_metrics(run_dir / METRICS_FILE), run_dir / LOSS_CURVE_FILE,
                    title=f"stage {config.stage} loss ({config.recipe})")


def _read_llava_config(path: Path) -> dict:
    config = read_json(path / "config.json", "config.json")
    check_model_type(config, path)
    return config


def _mixed_precision(precision: str, torch) -> str:
    if precision == "auto":
        if not torch.cuda.is_available():
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision in ("bf16", "fp16") and not torch.cuda.is_available():
        raise LlavaEdgeError(f"--precision {precision} needs a GPU; CPU training runs in fp32")
    return {"fp32": "no"}.get(precision, precision)


def _source_dtype(source_config: dict, torch):
    name = source_config.get("dtype") or source_config.get("torch_dtype") or "float32"
    return getattr(torch, name, torch.float32)


def _pad_id(tokenizer, model) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return model.config.text_config.pad_token_id or tokenizer.eos_token_id or 0


def _uses_deepspeed(accelerator) -> bool:
    return getattr(accelerator.state, "deepspeed_plugin", None) is not None


def _set_deepspeed_batch_sizes(accelerator, config: TrainConfig, plan: StepPlan) -> None:
    """DeepSpeed wants the batch sizes in its config; accelerate cannot infer them here
    because the data loader is not passed through ``prepare`` (the loop owns the order)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = config.micro_batch_size
    ds["gradient_accumulation_steps"] = plan.accumulation_steps
    ds["train_batch_size"] = config.global_batch_size

