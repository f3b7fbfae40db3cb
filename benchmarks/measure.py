"""Measure one configuration in a fresh subprocess: load, warm up, repeat, peak RSS.

The parent calls :func:`measure_config`; it starts
``python -m llava_edge.benchmarks.measure JOB.json RESULT.json``. The child loads the
configuration's runner (llava-edge's pipeline here, the peers in :mod:`.peers`), answers
the same image + prompt ``warmup + repeats`` times, and writes its samples, its load time
and its peak resident memory. A fresh process per configuration is what makes peak RSS
(``VmHWM`` from ``/proc/self/status``) belong to one configuration; ``ru_maxrss`` would
not do, since it is carried over from the parent across ``exec``. Progress reaches the
parent as ``@@progress DONE TOTAL`` lines on the child's stdout.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Protocol

from llava_edge.atomic_dir import atomic_path
from llava_edge.progress import Progress

PROGRESS_TAG = "@@progress"
# Figures each sample carries; None where a runner cannot separate a stage.
STAGES = ("preprocess_ms", "vision_ms", "prefill_ms", "first_token_ms", "decode_ms",
          "total_ms", "decode_tok_s")


@dataclass
class Job:
    """Everything a child needs to measure one configuration."""

    config: dict  # Config.to_dict()
    bundle: str
    checkpoint: str | None
    image: str
    prompt: str
    max_new_tokens: int
    warmup: int
    repeats: int
    threads: int
    n_ctx: int | None = None
    n_batch: int = 512
    n_ubatch: int | None = None
    flash_attn: bool = False
    repack: bool = True  # llama.cpp weight repacking at load (llava-edge rows only)
    n_gpu_layers: int | str = "auto"  # every llama.cpp row; "auto" as LlavaEdge.load
    providers: str = "auto"  # ONNX Runtime provider, llava-edge's ONNX vision rows
    context_tokens: int | None = None  # llama.cpp-raw: prompt positions to match
    reuse: bool = False  # llava-edge: keep its KV prefix / embedding cache between requests
    tuned_settings: dict | None = None  # the tuned row: RuntimeSettings.chosen() of a profile

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class Sample:
    """One answered request, in milliseconds."""

    first_token_ms: float
    total_ms: float
    n_tokens: int
    decode_ms: float | None = None  # first new token to the last
    preprocess_ms: float | None = None
    vision_ms: float | None = None
    prefill_ms: float | None = None
    n_prompt_tokens: int | None = None

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens per second after the first: ``n_tokens - 1`` evaluations in ``decode_ms``."""
        if self.decode_ms is None or self.n_tokens < 2 or self.decode_ms <= 0:
            return None
        return 1000.0 * (self.n_tokens - 1) / self.decode_ms

    def to_dict(self) -> dict:
        return asdict(self) | {"decode_tok_s": self.decode_tok_s}


class Runner(Protocol):
    """A loaded configuration that answers the job's request once per call."""

    files: dict[str, int]  # what it loaded from disk: name -> bytes
    notes: list[str]

    def once(self) -> Sample: ...
    def close(self) -> None: ...


@dataclass
class _TorchVision:
    """The PyTorch eager fp32 vision tower + projector as a llava-edge vision backend."""

    encoder: object
    torch: object = field(repr=False)

    def encode(self, pixel_values):
        with self.torch.inference_mode():
            return self.encoder(self.torch.from_numpy(pixel_values)).numpy()


class LlavaEdgeRunner:
    """llava-edge's pipeline with one (vision, LLM) pair of the bundle."""

    def __init__(self, job: Job):
        from llava_edge.bundle import open_bundle
        from llava_edge.runtimes.pipeline import LlavaEdge

        self.job, self.notes, self.last_text = job, [], None
        vision, quant = job.config["vision"], job.config["llm"]
        bundle = open_bundle(job.bundle, verify="none")
        lm = bundle.llm_entry(quant)
        self.files = {lm.file: bundle.file(lm.file).stat().st_size}
        llm_kwargs = dict(n_threads=job.threads, n_batch=job.n_batch, n_ubatch=job.n_ubatch,
                          flash_attn=job.flash_attn, repack=job.repack,
                          n_gpu_layers=job.n_gpu_layers)
        if job.tuned_settings is not None:  # the profile's choices replace the bench's
            llm_kwargs = dict(n_batch=job.n_batch, **{
                k: v for k, v in job.tuned_settings.items()
                if k not in ("vision_precision", "llm_quant")})
            self.notes.append("tuned: " + ", ".join(f"{k}={v}" for k, v in
                                                    job.tuned_settings.items()))
        reuse = _reuse_kwargs(LlavaEdge, job.reuse)
        self.notes.append("cold requests: KV prefix reuse and the embedding cache off"
                          if not job.reuse else "KV prefix reuse and embedding cache on "
                          "(repeats of the same request reuse the previous one)")
        if vision in ("torch", "trt"):
            from llava_edge.runtimes.llama_cpp_lm import LlamaCppLM

            backend = (self._torch_vision(job) if vision == "torch"
                       else self._trt_vision(job, bundle))
            llm = LlamaCppLM(bundle.file(lm.file),
                             n_ctx=job.n_ctx or bundle.manifest.prompt.n_ctx,
                             **llm_kwargs)
            self.model = LlavaEdge(bundle, backend, llm, **reuse)
        else:
            entry = bundle.vision_entry(vision)
            for name in entry.files:
                self.files[name] = bundle.file(name).stat().st_size
            self.model = LlavaEdge.load(job.bundle, vision_precision=vision, llm_quant=quant,
                                        n_ctx=job.n_ctx, verify="none", tune=False,
                                        **{"providers": job.providers, **llm_kwargs},
                                        **reuse)

    def _torch_vision(self, job: Job) -> _TorchVision:
        import torch

        from llava_edge.export.vision_graph import load_vision

        torch.set_num_threads(job.threads)
        encoder = load_vision(job.checkpoint).encoder()
        n_bytes = sum(p.numel() * p.element_size() for p in encoder.parameters())
        self.files["vision tower + projector (PyTorch fp32, from the checkpoint)"] = n_bytes
        self.notes.append("vision: PyTorch eager fp32 tower + projector (load_vision); its "
                          "size is the fp32 parameters in memory")
        return _TorchVision(encoder, torch)

    def _trt_vision(self, job: Job, bundle):
        from llava_edge.runtimes.vision_onnx import OnnxVisionEncoder

        entry = bundle.vision_entry("fp16" if "fp16" in bundle.vision_precisions else None)
        self.files[entry.file] = bundle.file(entry.file).stat().st_size
        self.notes.append(f"vision: ONNX Runtime TensorRT provider on the {entry.precision} "
                          "graph")
        return OnnxVisionEncoder(bundle.file(entry.file), providers="tensorrt",
                                 n_threads=job.threads)

    def once(self) -> Sample:
        a = self.model.ask(self.job.image, self.job.prompt,
                           max_new_tokens=self.job.max_new_tokens)
        t, self.last_text = a.timings, a.text
        return Sample(first_token_ms=t.first_token_ms, total_ms=t.total_ms,
                      n_tokens=a.n_tokens, decode_ms=t.decode_ms,
                      preprocess_ms=t.preprocess_ms, vision_ms=t.vision_ms,
                      prefill_ms=t.prefill_ms, n_prompt_tokens=a.n_prompt_tokens)

    def close(self) -> None:
        self.model.close()


def _reuse_kwargs(cls, reuse: bool) -> dict:
    """The pipeline's reuse switches, where this version has them: every request of a
    cold benchmark must encode its image and prefill its prompt, as the peers do."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    wanted = {"reuse_prefix": reuse, "embed_cache_size": 16 if reuse else 0}
    return {k: v for k, v in wanted.items() if k in params}


def make_runner(job: Job) -> Runner:
    """The runner for ``job``'s configuration kind."""
    from llava_edge.benchmarks import peers

    kind = job.config["kind"]
    if kind == "llava-edge":
        return LlavaEdgeRunner(job)
    return {"transformers": peers.TransformersRunner, "llama.cpp-llava": peers.LlamaCppLlavaRunner,
            "llama.cpp-raw": peers.LlamaCppRawRunner}[kind](job)


def memory_status() -> dict[str, float | None]:
    """This process's peak and current resident memory in MB (``VmHWM`` / ``VmRSS``)."""
    out: dict[str, float | None] = {"peak_rss_mb": None, "rss_mb": None}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                mb = int(value.split()[0]) / 1024  # reported in kB
                out["peak_rss_mb" if key == "VmHWM" else "rss_mb"] = round(mb, 1)
    except OSError:  # not Linux: no per-process high-water mark to read
        pass
    return out


def run_job(job: Job, progress: Progress = lambda d, t: None) -> dict:
    """Load ``job``'s configuration, run it ``warmup + repeats`` times; the raw result."""
    total = job.warmup + job.repeats
    start = time.perf_counter()
    runner = make_runner(job)
    load_ms = (time.perf_counter() - start) * 1000
    after_load = memory_status()
    samples, warmups, text = [], [], None
    try:
        for i in range(total):
            sample = runner.once()
            (warmups if i < job.warmup else samples).append(sample.to_dict())
            progress(i + 1, total)
        text = getattr(runner, "last_text", None)
    finally:
        runner.close()
    mem = memory_status()
    return {"config": job.config, "load_ms": load_ms, "samples": samples,
            "warmup_samples": warmups, "files": runner.files,
            "disk_mb": round(sum(runner.files.values()) / 1024**2, 1),
            "peak_rss_mb": mem["peak_rss_mb"], "rss_after_load_mb": after_load["rss_mb"],
            "notes": runner.notes, "sample_text": text}


def summarize(samples: list[dict]) -> dict[str, dict | None]:
    """Median, p90, min and max of each stage over ``samples`` (None if never measured)."""
    import numpy as np

    out = {}
    for key in STAGES + ("n_tokens",):
        values = [s[key] for s in samples if s.get(key) is not None]
        out[key] = None if not values else {
            "median": statistics.median(values), "p90": float(np.percentile(values, 90)),
            "min": min(values), "max": max(values), "n": len(values)}
    return out


def measure_config(job: Job, work: Path, on_progress: Progress) -> dict:
    """Run ``job`` in a fresh Python process; its result, or ``{"error": ...}``."""
    work.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in job.config["name"])
    job_path, result_path = work / f"{slug}.job.json", work / f"{slug}.result.json"
    log_path = work / f"{slug}.log"
    job_path.write_text(json.dumps(asdict(job)))
    result_path.unlink(missing_ok=True)
    threads = str(job.threads)
    env = os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                        "OPENBLAS_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llava_edge.benchmarks.measure", str(job_path),
             str(result_path)], stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        try:
            for line in proc.stdout:
                if line.startswith(PROGRESS_TAG):
                    done, total = map(int, line.split()[1:3])
                    on_progress(done, total)
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0 or not result_path.is_file():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        return {"config": job.config, "error": f"exit code {proc.returncode}: "
                                               + " | ".join(tail)}
    result = json.loads(result_path.read_text())
    result["summary"] = summarize(result["samples"])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    """Child entry point: ``JOB.json RESULT.json``."""
    job_path, result_path = (argv or sys.argv[1:])[:2]
    job = Job.from_dict(json.loads(Path(job_path).read_text()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def progress(done: int, total: int) -> None:
        print(f"{PROGRESS_TAG} {done} {total}", flush=True)

    result = run_job(job, progress)
    with atomic_path(Path(result_path)) as tmp:
        tmp.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
