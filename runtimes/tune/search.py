"""The search behind ``llava-edge tune``: coordinate descent over the runtime settings.

Start from the defaults (the manifest's graph and GGUF, every core, repacking on, flash
attention off, ``n_ubatch`` 512) and measure them. Then, one setting at a time, in an
order that puts the largest effects first (the vision graph, the GGUF, then threads,
repacking, flash attention, ``n_ubatch``, the KV cache type), try each other value with
the others at the best so far, and keep a value only when it beats the best by more
than ``tolerance`` and by more than two runs of its stage at the same settings were seen
to differ during the search (:func:`replicate_gap`): measurement noise must not pick
settings. A setting is compared on the stage of the request it moves
(:func:`.stages.on_its_stage`): the vision graph's settings on the vision stage, the
others on the LLM's, the best's own figures standing in for the other stage, whose
run-to-run noise would otherwise decide. Each candidate runs in a fresh process
(:mod:`.measure`): a warm-up request, then ``repeats`` rounds of two cold requests; one
whose first timed request, on its stage too, is already more than ``give_up`` behind the
best so far stops there (it cannot be taken, and its rounds would spend the budget that
the settings after it need). When a setting changes the best, the runtime settings
searched before it are searched again under the new best before the search goes on, as
their best value may have moved with it (coordinate descent until nothing changes, the
largest effects first).

Fidelity is part of the choice. A vision graph or GGUF is eligible only if its export
gate passed (vision ``passed``, the GGUF's logit parity ``ok`` where it was measured);
the first candidate with a new (graph, GGUF) pair gives that pair's reference tokens
(the graphs and GGUFs are searched before the runtime settings, so it runs at the
defaults). Any other setting is eligible if it gives exactly the reference tokens of its
pair, or if it stays within the pair's tolerance (:func:`tolerance_for`): fed the
reference answers token by token, its top-1 choices differ from the reference's on no
more positions than the GGUF's measured parity left to spare above its gate, not
counting positions where the reference's choice led by no more than llama.cpp's batch
split alone moves such a lead (the reference's own answers evaluated in one batch), and
its KL divergence from the reference is no larger than the GGUF's own from PyTorch.
F16 / F32 (gate 1.0) and GGUFs without parity figures keep the exact rule, as does
``fidelity="exact"``.

Objectives (smaller is better): ``first-token`` (median ms to the first token),
``decode`` (ms per generated token), ``answer`` (first token + ``answer_tokens`` tokens),
``memory`` (peak RSS, among candidates whose first token is within
``max_first_token_ms``). Settings that cannot move an objective are not searched for it
(decode threads for the first token; vision and prefill threads for decode).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from llava_edge.bundle import open_bundle
from llava_edge.cpu_features import this_cpu
from llava_edge.errors import LlavaEdgeError
from llava_edge.runtimes.llama_cpp_lm import gpu_layers
from llava_edge.runtimes.tune.measure import objective_score
from llava_edge.runtimes.tune.profile import (DEFAULTS, RuntimeSettings, TuneProfile,
                                              bundle_key, machine_description)
from llava_edge.runtimes.tune.stages import STAGES, on_its_stage, stage_of

OBJECTIVES = ("first-token", "decode", "answer", "memory")
# Settings searched per objective, in order: the files first (the runtime settings are
# then compared against their pair's reference tokens), then by the size of the effects
# measured on CPUs so far (repacking and flash attention moved tinyllava-1.1b's first
# token by 20-40%, threads and n_ubatch by less), so that a budget cuts the small ones.
_DIMS = {
    "first-token": ("vision_precision", "llm_quant", "n_gpu_layers", "providers", "repack",
                    "flash_attn", "n_threads_batch", "vision_threads", "n_ubatch", "kv_type"),
    "decode": ("llm_quant", "n_gpu_layers", "repack", "flash_attn", "n_threads", "kv_type"),
    "answer": ("vision_precision", "llm_quant", "n_gpu_layers", "providers", "repack",
               "flash_attn", "n_threads_batch", "n_threads", "vision_threads", "n_ubatch",
               "kv_type"),
    "memory": ("vision_precision", "llm_quant", "n_gpu_layers", "repack", "n_ubatch",
               "n_threads_batch", "vision_threads", "n_threads", "flash_attn", "kv_type"),
}
_FILES = ("vision_precision", "llm_quant")


class TuneError(LlavaEdgeError):
    """Tuning could not measure the defaults (so there is nothing to compare with)."""


@dataclass
class TuneOptions:
    """What ``llava-edge tune`` runs."""

    bundle: Path
    objective: str = "first-token"
    budget_s: float = 600.0
    repeats: int = 2
    max_new_tokens: int = 16
    answer_tokens: int = 64            # objective "answer"
    max_first_token_ms: float | None = None  # objective "memory": the latency bound
    threads: tuple[int, ...] | None = None   # values tried per thread setting (1..cores)
    ubatch: tuple[int, ...] = (128, 256, 512)
    dims: tuple[str, ...] | None = None      # only these settings (default: per objective)
    tolerance: float = 0.03
    give_up: float = 0.15   # stop a candidate whose first timed request is this far behind
    candidate_timeout_s: float = 900.0
    fidelity: str = "tolerance"              # or "exact": the greedy tokens, token for token
    background_load: int = 0                 # busy-loop processes kept running meanwhile
    command: str = "llava-edge tune"


@dataclass
class Candidate:
    settings: RuntimeSettings
    changed: str                 # the setting this candidate tried ("defaults" first)
    figures: dict | None = None
    error: str | None = None
    eligible: bool = False
    why: str = ""                # the fidelity verdict, or why it was not measured
    score: float | None = None
    # the figures ``score`` was computed from: its own, or one stage's with the rest the
    # best's (:func:`.stages.on_its_stage`); None where it was not compared
    compared: dict | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["settings"] = self.settings.chosen()
        if self.figures:
            d["figures"] = {k: v for k, v in self.figures.items() if k != "tokens"}
        return d


# (bundle, settings, options, reference, give_up) -> figures; ``reference`` is
# {"write": path} for a pair's reference candidate, {"against": path} for the others;
# ``give_up`` {"above": score, "best": figures, "stage": "vision" | "llm"}: the score, on
# the stage the candidate's setting moves with the best's figures for the rest, past which
# the first timed request ends it (see :mod:`.measure`); None: no bound.
Measure = Callable[..., dict]


@dataclass(frozen=True)
class Tolerance:
    """How far a runtime setting may move a (graph, GGUF) pair's answers."""

    disagreement: float      # share of reference positions whose decided top-1 may change
    kl_mean: float           # the largest mean KL(reference || candidate) allowed
    source: str              # where the numbers come from, for the verdicts
    noise: float = 0.0       # a lead (in logits) the runtime's own batch split overturns

    def decided_flips(self, fidelity: dict) -> int:
        """Top-1 changes at positions where the reference's choice led the candidate's
        by more than ``noise`` (``measure.compare``'s ``flip_leads``)."""
        return sum(1 for lead in fidelity["flip_leads"] if lead > self.noise)

    def allowed_flips(self, positions: int) -> int:
        return int(self.disagreement * positions + 1e-9)

    def admits(self, fidelity: dict) -> bool:
        return (self.decided_flips(fidelity) <= self.allowed_flips(fidelity["positions"])
                and fidelity["kl_mean"] <= self.kl_mean)


def tolerance_for(manifest, quant: str, batched: dict | None = None) -> Tolerance | None:
    """How far a runtime setting may move the answers of a pair with this GGUF.

    Two measured allowances for the top-1 choices along the reference answers. What the
    GGUF's logit parity at export left above its gate: if it agreed with PyTorch on a
    share ``a`` of the parity positions against a gate ``g``, a setting that changes at
    most ``a - g`` of them keeps, by a union bound, at least ``g``. And ``batched``, the
    pair's reference against itself with its answers evaluated in one batch: llama.cpp's
    own batch split (which prompt lengths, ``n_batch`` and prefix reuse change all the
    time) moved the lead of the reference's top-1 over other tokens by up to
    ``lead_change_max`` logits, so where the reference led by no more, its choice is one
    the order of float additions makes, not the model; a top-1 change there is not
    counted (random weights' near-flat distributions have many such positions, a trained
    model's few). Either way the setting's KL divergence from the reference may not
    exceed the quantization's own from PyTorch. None (the exact rule) where no parity was
    recorded, for F16 / F32 (gate 1.0), and where neither allowance leaves anything."""
    figures = manifest.llm_parity(quant)
    agree, gate, kl = (figures.get("top1_agreement"), figures.get("top1_threshold"),
                       figures.get("kl_mean"))
    if agree is None or kl is None or (gate is not None and gate >= 1.0):
        return None
    slack = agree - gate if gate is not None and agree > gate else 0.0
    noise = batched["lead_change_max"] if batched else 0.0
    if slack <= 0 and noise <= 0:
        return None
    gate_text = ("no gate" if gate is None else
                 f"top-1 {agree:.3f} against its gate {gate:.2f}" if slack > 0 else
                 f"top-1 {agree:.3f} under its gate {gate:.2f}, nothing to spare")
    source = f"{quant}'s parity at export: {gate_text}, KL {kl:.3g}"
    if batched:
        source += (f"; the reference evaluated in one batch moved its top-1's lead by up to "
                   f"{noise:.3g} logits (top-1 {batched['top1_agreement']:.3f}, KL "
                   f"{batched['kl_mean']:.3g}): changes where it led by no more are not "
                   "counted")
    return Tolerance(slack, kl, source, noise)


def measure_in_subprocess(bundle: Path, settings: dict, opts: TuneOptions,
                          reference: dict | None = None,
                          give_up: dict | None = None) -> dict:
    """Run :mod:`.measure` in a fresh Python; its JSON result, or {"error": ...}."""
    spec = json.dumps({"bundle": str(bundle), "settings": settings, "repeats": opts.repeats,
                       "max_new_tokens": opts.max_new_tokens, "reference": reference,
                       "give_up": give_up and {**_objective(opts), **give_up}})
    try:
        proc = subprocess.run([sys.executable, "-m", "llava_edge.runtimes.tune.measure", spec],
                              capture_output=True, text=True, timeout=opts.candidate_timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {opts.candidate_timeout_s:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the measurement exited with {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


@contextlib.contextmanager
def busy_processes(n: int):
    """``n`` processes spinning on a core each while the block runs: the settings of a
    model that shares its machine (a robot's other nodes) are not those of a quiet one;
    on a busy 2-core board one llama.cpp thread beat two (the loop benchmark, #23)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(n)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def score(figures: dict, opts: TuneOptions) -> float:
    """The objective's value (smaller is better); inf when it cannot be computed."""
    return objective_score(figures, **_objective(opts))


def replicate_gap(figures: dict, best: dict, stage: str, opts: TuneOptions) -> float | None:
    """How far a candidate's run of ``stage`` is from the best's own run of it, in the
    objective's units, where the candidate's setting moved the other stage and so ran
    ``stage`` at the best's settings: two runs of the same work in two processes. None
    where there is nothing to compare (the memory objective, figures without stages).

    Why: this is the noise a setting of ``stage`` has to beat. On an AVX2-only EPYC
    (2026-12-07) the same Q4_K_M prefill at the same settings ran 9.1 s in one process
    and 10.1 s in another, minutes apart, so the F16 GGUF's 9.6 s won against the 3%
    tolerance by chance (and cost 2.5x the decode time). The search sees such pairs for
    free: every candidate is one of them."""
    if opts.objective == "memory":
        return None
    mixed = on_its_stage(figures, best, stage, opts.objective)
    if "stage" not in mixed:
        return None
    return abs(score(mixed, opts) - score(best, opts))


def _objective(opts: TuneOptions) -> dict:
    return {"objective": opts.objective, "answer_tokens": opts.answer_tokens,
            "max_first_token_ms": opts.max_first_token_ms}


def gpu_choices() -> dict[str, tuple]:
    """The GPU settings this machine can try: every layer offloaded when llama.cpp was
    built with a GPU backend and sees a device; ONNX Runtime's CUDA / TensorRT providers
    when installed. Empty values (nothing tried) on a CPU-only machine."""
    import llama_cpp
    import onnxruntime as ort

    layers = (0, 999) if llama_cpp.llama_supports_gpu_offload() else (0,)
    have = ort.get_available_providers()
    providers = ("auto", "cpu") + tuple(
        short for short, name in (("cuda", "CUDAExecutionProvider"),
                                  ("tensorrt", "TensorrtExecutionProvider")) if name in have)
    return {"n_gpu_layers": layers, "providers": providers if len(providers) > 2 else ("auto",)}


def file_choices(manifest) -> dict[str, dict[str, str]]:
    """Per file setting, the bundle's values (default first), each with why it may not be
    used ("" when its export gate passed or none was recorded)."""
    vision = {v.precision: "" if v.passed is not False else
              f"vision {v.precision} missed its parity gate" for v in manifest.vision}
    llm = {lm.quant: (f"{lm.quant} missed its logit parity"
                      if manifest.llm_parity(lm.quant).get("ok") is False else "")
           for lm in manifest.llm}

    def default_first(d, default):
        return {default: d[default], **{k: v for k, v in d.items() if k != default}}
    return {"vision_precision": default_first(vision, manifest.vision_entry().precision),
            "llm_quant": default_first(llm, manifest.llm_entry().quant)}


def tune(opts: TuneOptions, measure: Measure = measure_in_subprocess,
         progress: Callable[[int, int], None] | None = None,
         log: Callable[[str], None] | None = None) -> TuneProfile:
    """Measure, search, and return the profile (not saved: see ``save_profile``)."""
    if opts.objective not in OBJECTIVES:
        raise TuneError(f"unknown objective {opts.objective!r} (choose from {OBJECTIVES})")
    if opts.fidelity not in ("tolerance", "exact"):
        raise TuneError(f"unknown fidelity rule {opts.fidelity!r} (tolerance or exact)")
    if opts.background_load < 0:
        raise TuneError("background_load must be 0 or more")
    if opts.objective == "memory" and opts.max_first_token_ms is None:
        raise TuneError("objective 'memory' needs a first-token bound (--max-first-token-ms)")
    bundle = open_bundle(opts.bundle, verify="size")
    m = bundle.manifest
    cores = this_cpu().cores
    threads = opts.threads or tuple(range(1, cores + 1))
    dims = opts.dims or _DIMS[opts.objective]
    files = file_choices(m)
    values = {"vision_precision": tuple(files["vision_precision"]),
              "llm_quant": tuple(files["llm_quant"]),
              "n_threads_batch": threads, "n_threads": threads, "vision_threads": threads,
              "repack": (True, False), "flash_attn": (False, True), "n_ubatch": opts.ubatch,
              "kv_type": ("f16", "q8_0"), **gpu_choices()}
    base = replace(DEFAULTS, vision_precision=values["vision_precision"][0],
                   llm_quant=values["llm_quant"][0], vision_threads=cores, n_threads=cores,
                   n_threads_batch=cores, n_gpu_layers=gpu_layers(DEFAULTS.n_gpu_layers))
    # Settings with nothing to try here (a GPU setting without a GPU) are left out.
    dims = tuple(d for d in dims if set(values[d]) - {getattr(base, d)})
    # the defaults, then each value but the current one of every setting
    planned = 1 + sum(len(set(values[d]) - {getattr(base, d)}) for d in dims)
    started = time.monotonic()
    history: list[Candidate] = []
    # per stage, the most two runs of it at the same settings differed (replicate_gap)
    noise = dict.fromkeys(STAGES, 0.0)
    refs: dict[tuple[str, str], dict] = {}  # pair -> its reference's figures (tokens, ...)
    say = log or (lambda _line: None)
    scratch = Path(tempfile.mkdtemp(prefix="llava-edge-tune-"))  # the references' logits

    def ref_file(pair: tuple[str, str]) -> Path:
        return scratch / f"{pair[0]}-{pair[1]}.npz"

    def run(settings: RuntimeSettings, changed: str, reference: bool,
            refused: str = "", best: Candidate | None = None, stage: str = "llm") -> Candidate:
        c = Candidate(settings, changed)
        history.append(c)
        elapsed = time.monotonic() - started
        last = max((h.seconds for h in history), default=0.0)
        pair = (settings.vision_precision, settings.llm_quant)
        if refused:
            c.why = f"not measured: {refused}"
        elif len(history) > 1 and elapsed + last > opts.budget_s:
            c.why = f"not measured: the budget ({opts.budget_s:.0f} s) would be spent"
        else:
            t0 = time.monotonic()
            against = {"write": str(ref_file(pair))} if reference else (
                {"against": str(ref_file(pair))} if ref_file(pair).is_file() else None)
            bound = None if best is None or not opts.give_up or not math.isfinite(
                best.score) else best.score * (1 + opts.give_up)
            result = measure(Path(opts.bundle), settings.chosen(), opts, against,
                             bound and {"above": bound, "best": best.compared,
                                        "stage": stage})
            c.seconds = time.monotonic() - t0
            if "error" in result:
                c.error = c.why = result["error"]
            elif result.get("gave_up") is not None:
                # slower than the best by more than give_up on one warm request: no rounds
                # and no fidelity pass spent on it (and no reference from it: its pair
                # cannot be the best either)
                c.figures, c.score = result, result["gave_up"]
                c.compared = on_its_stage(result, best.compared, stage, opts.objective)
                on = f" on its {c.compared['stage']} stage" if "stage" in c.compared else ""
                c.why = (f"gave up after its first timed request: {opts.objective} "
                         f"{c.score:.1f}{on}, over {bound:.1f} (the best so far, "
                         f"{best.score:.1f}, + {opts.give_up:.0%})")
            else:
                c.figures = result
                c.compared = on_its_stage(result, best and best.compared, stage,
                                          opts.objective)
                c.score = score(c.compared, opts)
                other = next(s for s in STAGES if s != stage)
                gap = best and replicate_gap(result, best.figures, other, opts)
                if gap is not None:
                    noise[other] = max(noise[other], gap)
                if reference:
                    refs[pair] = result
                    c.eligible, c.why = True, f"reference tokens of its pair ({gates(pair)})"
                else:
                    c.eligible, c.why = verdict(result, refs[pair], pair)
        if progress:
            progress(len(history), planned)
        say(_line(c, opts))
        return c

    def gates(pair: tuple[str, str]) -> str:
        # A file without a verdict (a type the export has no gate for, or --no-parity)
        # is eligible too, but the profile says so rather than that it passed.
        # Only the bundle's default pair can have missed one: the defaults are measured
        # whatever the export found, as they are what the user runs without a profile.
        vision = next(v for v in m.vision if v.precision == pair[0]).passed
        llm = m.llm_parity(pair[1]).get("ok")
        if vision and llm:
            return "export gates passed"
        said = {True: "gate passed", None: "no gate recorded at export",
                False: "missed its gate at export (the bundle's default all the same)"}
        return "; ".join(f"{what}: {said[ok]}" for what, ok in (
            (f"vision {pair[0]}", vision), (pair[1], llm)))

    def verdict(result: dict, ref: dict, pair: tuple[str, str]) -> tuple[bool, str]:
        if result["tokens"] == ref["tokens"]:
            return True, "same greedy tokens as its pair's reference"
        fid, quant = result.get("fidelity"), pair[1]
        batched = (ref.get("fidelity") or {}).get("batched")  # the runtime's own noise
        tol = tolerance_for(m, quant, batched) if opts.fidelity == "tolerance" else None
        figures = "" if fid is None else (
            f"top-1 {fid['top1_agreement']:.3f} of {fid['positions']} reference "
            f"positions, KL {fid['kl_mean']:.3g}")
        if fid is not None and tol is not None:
            figures += (f"; {tol.decided_flips(fid)} of its {len(fid['flip_leads'])} "
                        f"top-1 changes where the reference led by more than "
                        f"{tol.noise:.3g} logits")
        if fid is None or tol is None:
            rule = ("the exact rule" if opts.fidelity == "exact" else
                    f"no tolerance stated for {quant}: exact tokens required")
            # the figures still say how far it moved, for a user weighing --fidelity
            measured = f": {figures}" if figures else ""
            return False, (f"greedy tokens differ from its pair's reference{measured} "
                           f"({rule}): not eligible")
        allowed = (f"allowed: {tol.allowed_flips(fid['positions'])} top-1 "
                   f"changes where the reference led by more than {tol.noise:.3g} logits "
                   f"(a share of {tol.disagreement:.3f}), KL {tol.kl_mean:.3g} "
                   f"({tol.source})")
        if tol.admits(fid):
            return True, f"greedy tokens differ, within the tolerance: {figures}; {allowed}"
        return False, f"greedy tokens differ beyond the tolerance: {figures}; {allowed}: " \
                      "not eligible"

    busy = contextlib.ExitStack()  # the background load, stopped whatever happens
    try:
        busy.enter_context(busy_processes(opts.background_load))
        best = run(base, "defaults", reference=True)
        if best.figures is None:
            raise TuneError(f"{opts.bundle}: the default settings could not be measured "
                            f"({best.error or best.why})")
        defaults = best
        pending, searched = list(dims), []   # settings still to search; those searched
        while pending:
            dim = pending.pop(0)
            again = dim in searched
            before = best
            stage = stage_of(dim)
            for value in values[dim]:
                settings = replace(best.settings, **{dim: value})
                if any(h.settings == settings for h in history):
                    continue  # measured already (the best so far, or a value tried before)
                pair = (settings.vision_precision, settings.llm_quant)
                refused = files[dim][value] if dim in _FILES else ""
                if settings.kv_type != "f16" and not settings.flash_attn:
                    refused = "a quantized KV cache needs flash attention, which did not win"
                if again:
                    planned += 1
                c = run(settings, f"{dim}={value}" + (" (again)" if again else ""),
                        reference=pair not in refs, refused=refused, best=best, stage=stage)
                if not (c.eligible and c.score is not None):
                    continue
                margin = max(best.score * opts.tolerance, noise[stage])
                if c.score < best.score - margin:
                    best = c
                elif c.score < best.score * (1 - opts.tolerance):
                    note = (f"not taken: {best.score - c.score:.1f} better, within the "
                            f"{margin:.1f} two runs of its {stage} stage at the same "
                            "settings differed by in this search")
                    c.why += f"; {note}"
                    say(f"{'':<28} {note}")
            if dim not in searched:
                searched.append(dim)
            if best is not before:
                # The runtime settings interact (on the AVX2 kernels, repacking off won by
                # 4% before flash attention, and with flash attention on and off were even):
                # the runtime settings chosen earlier are searched again, at once, under
                # the new best. The files are not (a pair's reference runs at the
                # defaults). Each change beats the best by `tolerance`, so this ends.
                redo = [d for d in searched if d != dim and d not in _FILES
                        and d not in pending]
                pending[:0] = redo
    finally:
        busy.close()
        shutil.rmtree(scratch, ignore_errors=True)
    figures = {"defaults": _summary(defaults), "tuned": _summary(best),
               "objective_defaults": defaults.score, "objective_tuned": best.score,
               "ratio": (best.score / defaults.score) if defaults.score else None,
               "fidelity": opts.fidelity, "background_load": opts.background_load,
               "noise": noise, "search_s": time.monotonic() - started, "measured": sum(
                   1 for h in history if h.figures is not None), "planned": planned,
               "gave_up": sum(1 for h in history
                              if (h.figures or {}).get("gave_up") is not None)}
    return TuneProfile(
        machine=machine_description(), bundle=bundle_key(opts.bundle),
        bundle_path=str(Path(opts.bundle).resolve()), settings=best.settings,
        objective=opts.objective, figures=figures,
        candidates=[h.to_dict() for h in history],
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        command=opts.command)


def _summary(c: Candidate) -> dict:
    f = c.figures or {}
    return {"settings": c.settings.chosen(), **{k: f.get(k) for k in (
        "first_token_ms", "vision_ms", "prefill_ms", "ms_per_token", "decode_tokens_per_s",
        "peak_rss_mb", "load_s")}, "compared": c.compared}


def _line(c: Candidate, opts: TuneOptions) -> str:
    if c.figures is None:
        return f"{c.changed:<28} {c.why}"
    f = c.figures
    per = f"{f['ms_per_token']:.1f}" if f.get("ms_per_token") else "n/a"
    mark = "" if c.eligible else "  (" + c.why + ")"
    stage = (c.compared or {}).get("stage")
    on = f" on its {stage} stage" if stage else ""
    return (f"{c.changed:<28} first token {f['first_token_ms']:8.1f} ms  "
            f"{per:>6} ms/token  peak {f['peak_rss_mb']:7.1f} MB  "
            f"[{opts.objective} {c.score:.1f}{on}]{mark}")
