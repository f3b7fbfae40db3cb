"""The main job, end to end on a CPU: ``llava-edge demo`` (and ``make demo``).

    tiny checkpoint (random init) -> stage 0: vision tower pretrained (cached per machine)
    -> synthetic shapes data -> stage 1 -> stage 2 -> eval (PyTorch) -> export --int4
    (+ the exact fp32 / F16 pair) -> eval (bundle) -> answers.png -> one answered image
    -> a short latency table

Two held-out evals: short answers (a word or phrase, LLaVA-1.5's VQA style, exact match)
and multiple choice (ScienceQA style, the option letter). Each phase is timed;
:func:`run_demo` returns a :class:`DemoSummary` whose JSON form has the accuracies
(PyTorch, each bundle pair, chance), the tower's probe figures, the fidelity of the bundle
against PyTorch (greedy answers equal on both evals), seconds per phase and the latency
figures. The bars the demo is held to (issues #3, #6 and #25) are listed in :data:`BARS`
and checked by :func:`check_bars`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llava_edge.atomic_dir import write_json
from llava_edge.errors import LlavaEdgeError

#: What the demo is held to: PyTorch accuracy on the held-out short-answer eval, the exact
#: bundle pair's greedy answers against PyTorch's (both evals), the default (int4) pair's
#: accuracy against PyTorch's (either way, both evals), the training time of stages 1 + 2
#: and of stage 0 when it is built (not cached) on a 2-core CPU. Multiple choice is
#: reported, not held to a bar.
BARS = {
    "short_answer_accuracy_min": 0.90,
    "exact_pair_agreement_min": 1.0,
    "int4_accuracy_drop_max": 0.02,
    "training_seconds_max": 360.0,
    "stage0_seconds_max": 1200.0,
}

#: The default pair that ``export --int4`` writes, and the exact pair kept beside it.
DEFAULT_PAIR = ("int4", "Q4_K_M")
EXACT_PAIR = ("fp32", "F16")


@dataclass
class DemoConfig:
    """Where the demo works and how big it is (defaults: the documented demo)."""

    workdir: Path
    n_train: int = 2000
    n_eval: int = 200
    seed: int = 0
    recipe: str = "tiny-demo"
    threads: int = 1  # llama.cpp / ONNX Runtime threads at inference (tiny models: 1)
    #: Training processes (data parallel over gloo, one thread each); 0: one per core, up
    #: to 2. The tiny model's small matrices do not speed up with a second torch thread,
    #: a second process on the other core nearly halves each stage (measured).
    train_processes: int = 0
    latency_repeats: int = 5
    max_new_tokens: int = 8  # the evals' answers are a letter, a word or a short phrase
    #: Stage 0 steps (batches of 64 scenes); 0 keeps the random tower (the demo before #25).
    stage0_steps: int = 2000
    short_per_image: int = 5  # short-answer training questions per train image
    #: Inference on the GPU: llama.cpp layers offloaded ("auto": all where llama.cpp has a
    #: GPU, else none) and the vision graph's ONNX Runtime provider, for every bundle pair.
    n_gpu_layers: int | str = "auto"
    providers: str = "auto"
    force: bool = False


@dataclass
class DemoSummary:
    """Everything the demo measured; ``to_dict()`` is its ``--json`` output."""

    workdir: str
    random_init: str
    chance: float  # of the multiple choice
    torch_accuracy: float  # multiple choice
    bundle_accuracy: float  # multiple choice, the default (--int4) pair
    bundle_accuracies: dict[str, float]
    short_answer_accuracy: float  # PyTorch
    bundle_short_answer_accuracy: float  # the default (--int4) pair
    bundle_short_answer_accuracies: dict[str, float]
    exact_pair_agreement: float  # greedy answers of fp32+F16 equal to PyTorch's (both evals)
    by_kind: dict[str, float]  # multiple choice, PyTorch
    short_by_kind: dict[str, float]  # short answers, PyTorch
    vision_probe: dict  # stage 0: linear-probe figures before / after, cached or not
    stage0_seconds: float  # 0 when the tower came from the cache (or stage 0 is off)
    seconds: dict[str, float]
    training_seconds: float  # stages 1 + 2
    answers_image: str | None
    examples: list[dict]
    answer: dict
    latency: list[dict]
    bars: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _pair_name(pair: tuple[str, str]) -> str:
    return f"{pair[0]}+{pair[1]}"


def chance_accuracy(samples: list[dict]) -> float:
    """Expected accuracy of guessing a letter uniformly: the mean of 1 / options."""
    n = [len(s["choices"]) for s in samples if s.get("choices")]
    return sum(1 / k for k in n) / len(n) if n else 0.0


def check_bars(summary: DemoSummary) -> dict[str, bool]:
    """Which of :data:`BARS` the run met."""
    drop = BARS["int4_accuracy_drop_max"] + 1e-9
    return {
        "short_answer_accuracy": (summary.short_answer_accuracy
                                  >= BARS["short_answer_accuracy_min"]),
        "exact_pair_agreement": summary.exact_pair_agreement >= BARS["exact_pair_agreement_min"],
        "int4_within_2_points": (
            abs(summary.torch_accuracy - summary.bundle_accuracy) <= drop
            and abs(summary.short_answer_accuracy - summary.bundle_short_answer_accuracy)
            <= drop),
        "training_time": summary.training_seconds <= BARS["training_seconds_max"],
        "stage0_time": summary.stage0_seconds <= BARS["stage0_seconds_max"],
    }


def run_demo(config: DemoConfig, say: Callable[[str], None] = lambda line: None) -> DemoSummary:
    """Run every phase in ``config.workdir``; ``say`` gets one line per phase."""
    from llava_edge.data.shapes import ShapesConfig, generate_shapes
    from llava_edge.export.bundle_export import ExportOptions, export_bundle
    from llava_edge.presets import get_preset
    from llava_edge.trainer.evaluate import TorchAnswerer
    from llava_edge.trainer.init_checkpoint import build_checkpoint
    from llava_edge.trainer.shapes_mc import write_shapes_mc
    from llava_edge.trainer.shapes_short import write_shapes_short

    work = Path(config.workdir)
    if work.exists() and any(work.iterdir()) and not config.force:
        raise LlavaEdgeError(f"{work} exists and is not empty (use --force to start over)")
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def phase(name: str, what: str):
        say(f"== {name}: {what}")
        return _Timer(seconds, name)

    with phase("init", "tiny LLaVA checkpoint, random weights"):
        init = build_checkpoint(get_preset("tiny"), work / "tiny-init", seed=config.seed,
                                overwrite=True).path
    probe, stage0_seconds = {}, 0.0
    if config.stage0_steps:
        with phase("stage0", "vision tower pretrained on shapes scenes (cached per machine)"):
            init, probe = _stage0(init, work / "stage0", config)
        stage0_seconds = 0.0 if probe["cached"] else seconds["stage0"]
        say("   linear probe of the tower's patch features, before -> after: "
            + ", ".join(f"{k} {probe['before'][k]:.0%} -> {v:.0%}"
                        for k, v in probe["after"].items())
            + (" (from the cache)" if probe["cached"] else ""))
    with phase("data", f"synthetic shapes, {config.n_train} train / {config.n_eval} eval"):
        data = generate_shapes(work / "shapes", ShapesConfig(
            n_train=config.n_train, n_eval=config.n_eval, seed=config.seed), overwrite=True)
        mc = write_shapes_mc(data.root)
        short, short_eval = write_shapes_short(data.root, config.short_per_image)
    common = {"recipe": config.recipe, "image_folder": str(data.image_folder),
              "seed": config.seed}
    processes = config.train_processes or min(2, os.cpu_count() or 1)
    with phase("train_stage1", f"projector + LLM on the captions (recipe {config.recipe}, "
                               f"{processes} process(es))"):
        stage1 = train_stage({**common, "stage": 1, "model": str(init),
                              "data": [str(data.stage1)], "output_dir": str(work / "stage1")},
                             processes)
    # Stage 2 on the questions only, not stage2_instruct.json's conversations and
    # descriptions as well: those took stage 2 from ~155 s to ~300 s for no better answers
    # (measured, docs/demo-recipe.md); stage 1's captions still teach describing.
    with phase("train_stage2", "projector + LLM on short answers and multiple choice"):
        stage2 = train_stage({**common, "stage": 2, "model": str(stage1),
                              "data": [str(mc), str(short)],
                              "output_dir": str(work / "stage2")}, processes)
    evals = {"mc": json.loads(data.eval.read_text()),
             "short": json.loads(short_eval.read_text())}
    with phase("eval_torch", "PyTorch (transformers) on the held-out evals"):
        torch_reports = _eval_all(TorchAnswerer(stage2, max_new_tokens=config.max_new_tokens),
                                  evals, data.image_folder)
    say(f"   PyTorch: short answers {torch_reports['short'].accuracy:.1%}, "
        f"multiple choice {torch_reports['mc'].accuracy:.1%}")
    bundle = work / "bundle"
    with phase("export", "--int4 bundle (int4 vision + Q4_K_M) with the fp32 + F16 pair"):
        export_bundle(stage2, bundle,
                      ExportOptions.from_quality("int4", extra_vision=(EXACT_PAIR[0],),
                                                 extra_llm=(EXACT_PAIR[1],)),
                      overwrite=True)
    bundle_reports = {}
    with phase("eval_bundle", "the bundle's pairs through the runtime (no torch)"):
        for pair in (DEFAULT_PAIR, EXACT_PAIR):
            bundle_reports[pair] = _eval_bundle(bundle, pair, evals, data.image_folder, config)
            say(f"   bundle {_pair_name(pair)}: short answers "
                f"{bundle_reports[pair]['short'].accuracy:.1%}, multiple choice "
                f"{bundle_reports[pair]['mc'].accuracy:.1%}")
    same = total = 0
    for name in evals:
        pairs = zip(bundle_reports[EXACT_PAIR][name].predictions,
                    torch_reports[name].predictions, strict=True)
        same += sum(a.output == b.output for a, b in pairs)
        total += len(evals[name])
    with phase("answers", "a picture of PyTorch's answers (answers.png)"):
        answers_image, examples = _answers_image(torch_reports["short"], evals["short"],
                                                 data.image_folder, work / "answers.png")
    for e in some_examples(examples):
        say(f"   {e['question']!r} -> {e['answer']!r} ({'right' if e['correct'] else 'wrong'}, "
            f"truth {e['truth']!r})")
    with phase("answer", "one eval image, the default pair"):
        answer = _answer_one(bundle, evals["short"][0], data.image_folder, config)
    say(f"   Q: {answer['question'].removeprefix('<image>').strip()!r} -> {answer['answer']!r} "
        f"(expected {answer['expected']!r})")
    with phase("latency", "every pair of the bundle, one image"):
        latency = _latency(bundle, evals["short"][0], data.image_folder, config)

    def accuracy(name: str, pair) -> float:
        return bundle_reports[pair][name].accuracy

    summary = DemoSummary(
        workdir=str(work),
        random_init=("the tiny model starts from random weights and is trained here"
                     + ("; its vision tower first in stage 0" if config.stage0_steps else "")),
        chance=round(chance_accuracy(evals["mc"]), 4),
        torch_accuracy=torch_reports["mc"].accuracy,
        bundle_accuracy=accuracy("mc", DEFAULT_PAIR),
        bundle_accuracies={_pair_name(p): accuracy("mc", p) for p in bundle_reports},
        short_answer_accuracy=torch_reports["short"].accuracy,
        bundle_short_answer_accuracy=accuracy("short", DEFAULT_PAIR),
        bundle_short_answer_accuracies={_pair_name(p): accuracy("short", p)
                                        for p in bundle_reports},
        exact_pair_agreement=same / total if total else 1.0,
        by_kind={k: v["accuracy"] for k, v in torch_reports["mc"].by_kind.items()},
        short_by_kind={k: v["accuracy"] for k, v in torch_reports["short"].by_kind.items()},
        vision_probe=probe,
        stage0_seconds=round(stage0_seconds, 1),
        seconds={k: round(v, 1) for k, v in seconds.items()},
        training_seconds=round(seconds["train_stage1"] + seconds["train_stage2"], 1),
        answers_image=answers_image,
        examples=examples,
        answer=answer,
        latency=latency,
    )
    summary.bars = check_bars(summary)
    write_json(work / "demo_summary.json", summary.to_dict())
    return summary


def some_examples(examples: list[dict], n: int = 4) -> list[dict]:
    """``n`` of the picture's examples to print, right and wrong ones in turn."""
    right = [e for e in examples if e["correct"]]
    wrong = [e for e in examples if not e["correct"]]
    out = []
    while len(out) < n and (right or wrong):
        for group in (right, wrong):
            if group and len(out) < n:
                out.append(group.pop(0))
    return out


def _stage0(init: Path, out: Path, config: DemoConfig) -> tuple[Path, dict]:
    """Stage 0 into ``out``: the tower pretrained, or taken from the per-machine cache."""
    from llava_edge.trainer.pretrain_vision import VisionPretrainConfig, pretrain_vision

    result = pretrain_vision(init, out, VisionPretrainConfig(steps=config.stage0_steps,
                                                             seed=config.seed),
                             overwrite=True)
    return out, {"before": result.probe_before, "after": result.probe_after,
                 "cached": result.cached, "cache_file": result.cache_file,
                 "steps": result.steps}


def _eval_all(answerer, evals: dict[str, list[dict]], image_folder: Path) -> dict:
    from llava_edge.trainer.evaluate import evaluate

    return {name: evaluate(samples, answerer, image_folder) for name, samples in evals.items()}


def _answers_image(report, samples: list[dict], image_folder: Path,
                   path: Path) -> tuple[str, list[dict]]:
    """Draw a few eval answers (every kind, wrong ones included) into ``path``."""
    from llava_edge.answer_grid import pick_items, write_answer_grid

    items = pick_items(report.predictions, samples, image_folder, n=12)
    write_answer_grid(items, path)
    return str(path), [{"image": str(i.image), "question": i.question, "answer": i.answer,
                        "truth": i.truth, "correct": i.correct} for i in items]


def train_stage(settings: dict, processes: int) -> Path:
    """Train one stage with ``settings`` (TrainConfig fields) and return its output folder.

    One process trains here; several are started by torchrun (DDP over gloo, one thread
    each) from the same settings, written as a config file. Either way the result is the
    same run at the same global batch (tests/test_trainer_train.py holds the two equal).
    """
    from llava_edge.trainer.train_config import resolve_config

    if processes <= 1:
        from llava_edge.trainer.loop import train

        return train(resolve_config(settings)[0], force=True, show_progress=False).output_dir
    # Split the recipe's micro batch over the processes: the global batch stays the same.
    resolved = resolve_config(settings)[0]
    micro = min(resolved.micro_batch_size, max(1, resolved.global_batch_size // processes))
    settings = {**settings, "micro_batch_size": micro}
    out = Path(settings["output_dir"])
    out.parent.mkdir(parents=True, exist_ok=True)
    config_file = out.parent / f"{out.name}_config.json"
    write_json(config_file, settings)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", str(processes), "-m", "llava_edge", "train",
           "--config", str(config_file), "--force", "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    if run.returncode != 0:
        # The trainer's own "Error: ..." line says what went wrong; torchrun's report
        # around it only says that a process failed.
        errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
        detail = errors[0].removeprefix("Error: ") if errors else run.stderr[-3000:]
        raise LlavaEdgeError(f"stage {settings['stage']} training ({processes} processes) "
                             f"failed: {detail}")
    return Path(json.loads(run.stdout)["output_dir"])


class _Timer:
    """Adds the wall time of a ``with`` block to ``seconds[name]``."""

    def __init__(self, seconds: dict[str, float], name: str):
        self.seconds, self.name = seconds, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.seconds[self.name] = time.perf_counter() - self.start


def _load(bundle: Path, pair: tuple[str, str], config: DemoConfig):
    from llava_edge.runtimes.pipeline import LlavaEdge

    return LlavaEdge.load(bundle, vision_precision=pair[0], llm_quant=pair[1],
                          n_threads=config.threads, n_gpu_layers=config.n_gpu_layers,
                          providers=config.providers, tune=False)


def _eval_bundle(bundle: Path, pair: tuple[str, str], evals: dict[str, list[dict]],
                 image_folder: Path, config: DemoConfig) -> dict:
    from llava_edge.export.verify import bundle_answerer

    with _load(bundle, pair, config) as model:
        return _eval_all(bundle_answerer(model, config.max_new_tokens), evals, image_folder)


def _answer_one(bundle: Path, sample: dict, image_folder: Path, config: DemoConfig) -> dict:
    question = sample["conversations"][0]["value"]
    with _load(bundle, DEFAULT_PAIR, config) as model:
        answer = model.ask(image_folder / sample["image"], question,
                           max_new_tokens=config.max_new_tokens)
    return {"image": sample["image"], "question": question, "answer": answer.text,
            "expected": sample["answer"], "timings_ms": asdict(answer.timings)}


def _latency(bundle: Path, sample: dict, image_folder: Path, config: DemoConfig) -> list[dict]:
    from llava_edge.benchmarks.quick_latency import measure

    return measure(str(bundle), str(image_folder / sample["image"]), "Describe the image.",
                   repeats=config.latency_repeats, n_threads=config.threads, max_new_tokens=16,
                   n_gpu_layers=config.n_gpu_layers, providers=config.providers)
