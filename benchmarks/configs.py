"""The benchmark matrix: which (vision, LLM) configurations and peers one run measures.

A configuration is one process's worth of work (:mod:`.measure` runs each in a fresh
subprocess). Kinds:

* ``llava-edge``: :class:`~llava_edge.runtimes.pipeline.LlavaEdge` with a vision backend
  (an ONNX graph of the bundle, a TensorRT-provider session, or the PyTorch eager fp32
  tower + projector) and a GGUF of the bundle in llama.cpp.
* ``transformers``: ``LlavaForConditionalGeneration.generate`` in PyTorch eager on the
  checkpoint: fp32 (LLM choice ``torch``) is both the matrix's (PyTorch vision, PyTorch
  LLM) cell and the peer a user would otherwise run; ``torch-bf16`` runs the whole model
  in bfloat16 where the machine has native bf16 (a GPU, or a CPU with AVX512-BF16 / AMX).
* ``llama.cpp-llava``: stock llama.cpp's LLaVA path, the bundle's mmproj through
  llama-cpp-python's ``Llava15ChatHandler`` (mtmd).
* ``llama.cpp-raw``: llama-cpp-python ``Llama.generate`` from text tokens on the same
  GGUF: the decode speed llava-edge is held to. Where the run has a tuned row, a second
  one runs on the tuned GGUF with the tuned llama.cpp settings, its yardstick.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from llava_edge.errors import LlavaEdgeError
from llava_edge.manifest import Manifest

VISION_CHOICES = ("torch", "fp32", "fp16", "int8", "int4", "trt")
TORCH_LLMS = ("torch", "torch-bf16")  # transformers end to end, fp32 / bf16
GGUF_QUANTS = ("F16", "Q8_0", "Q4_K_M", "Q4_0")
LLM_CHOICES = (*TORCH_LLMS, *GGUF_QUANTS)
ONNX_PRECISIONS = ("fp32", "fp16", "int8", "int4")
# llava-edge's default configuration, what every ratio is taken against (`export --int4`).
DEFAULT_VISION, DEFAULT_LLM = "int4", "Q4_K_M"

Kind = Literal["llava-edge", "transformers", "llama.cpp-llava", "llama.cpp-raw"]
MatrixMode = Literal["axes", "full"]


@dataclass(frozen=True)
class Config:
    """One measured configuration. ``vision`` / ``llm`` name what runs each half
    (``torch``, an ONNX precision, ``trt``, ``mtmd`` for llama.cpp's own vision, ``-``
    when there is none; a GGUF quant or ``torch``)."""

    kind: Kind
    vision: str
    llm: str
    # The bundle's default pair (its `export --int4` choice): every ratio is taken
    # against it. Not part of equality: the same cell is the same configuration.
    default: bool = field(default=False, compare=False)
    # The settings of this machine's `llava-edge tune` profile for the bundle (its pair,
    # threads, repacking, flash attention, n_ubatch) rather than the bench's options;
    # llava-edge's row, or llama.cpp-raw's on the tuned GGUF (llama.cpp's settings only).
    tuned: bool = False

    @property
    def name(self) -> str:
        return f"{self.kind} {'tuned ' if self.tuned else ''}{self.vision}+{self.llm}"

    def to_dict(self) -> dict:
        return asdict(self) | {"name": self.name}


@dataclass(frozen=True)
class Skipped:
    """A configuration that was asked for (or is part of the matrix) but cannot run here."""

    config: Config
    reason: str

    def to_dict(self) -> dict:
        return self.config.to_dict() | {"reason": self.reason}


def parse_list(value: str | None, choices: tuple[str, ...], what: str) -> tuple[str, ...] | None:
    """``"fp32,int4"`` -> ``("fp32", "int4")`` checked against ``choices``
    (case-insensitive); ``None`` or ``"all"`` -> ``None`` (everything available)."""
    if value is None or value.strip().lower() == "all":
        return None
    by_lower = {c.lower(): c for c in choices}
    out = []
    for item in value.replace("|", ",").split(","):
        item = item.strip()
        if not item:
            continue
        if item.lower() not in by_lower:
            raise LlavaEdgeError(f"unknown {what} {item!r} (choose from: {', '.join(choices)})")
        out.append(by_lower[item.lower()])
    if not out:
        raise LlavaEdgeError(f"no {what} given")
    return tuple(dict.fromkeys(out))


def available(manifest: Manifest, has_checkpoint: bool, trt_provider: bool,
              bf16: bool = False) -> dict[str, str]:
    """Why each vision / LLM choice cannot run with this bundle, keyed ``vision:X`` /
    ``llm:X``; a choice that can run is absent. ``bf16``: the machine computes bfloat16
    natively."""
    missing = {}
    onnx = set(manifest.vision_precisions)
    for p in ONNX_PRECISIONS:
        if p not in onnx:
            missing[f"vision:{p}"] = f"the bundle has no {p} vision graph"
    if not has_checkpoint:
        missing["vision:torch"] = missing["llm:torch"] = missing["llm:torch-bf16"] = \
            "no checkpoint to run in PyTorch"
    elif not bf16:
        missing["llm:torch-bf16"] = ("no native bf16 here (needs a GPU, or a CPU with "
                                     "AVX512-BF16 / AMX): bf16 would be emulated, slower "
                                     "than fp32")
    if not trt_provider:
        missing["vision:trt"] = ("TensorRT not available here (no GPU / "
                                 "TensorrtExecutionProvider in ONNX Runtime)")
    quants = set(manifest.llm_quants)
    for q in GGUF_QUANTS:
        if q not in quants:
            missing[f"llm:{q}"] = f"the bundle has no {q} GGUF"
    return missing


def select(manifest: Manifest, vision: tuple[str, ...] | None, llm: tuple[str, ...] | None,
           peers: bool, mode: MatrixMode = "axes", has_checkpoint: bool = True,
           trt_provider: bool = False, bf16: bool = False
           ) -> tuple[list[Config], list[Skipped]]:
    """The configurations to measure (default first, then the peers, then the rest of the
    matrix) and those that cannot run.

    ``vision`` / ``llm``: the choices asked for (``None``: all). ``mode="full"`` measures
    every (vision, LLM) pair; ``"axes"`` (default) varies one half at a time around the
    default pair: each vision choice with the default LLM, each LLM with the default
    vision, which answers "what does this choice cost" in far fewer runs. PyTorch's LLM
    (fp32 or bf16) runs only with PyTorch's vision (transformers end to end).
    """
    missing = available(manifest, has_checkpoint, trt_provider, bf16)
    vision = vision or VISION_CHOICES
    llm = llm or LLM_CHOICES
    default_v = manifest.defaults.get("vision") or DEFAULT_VISION
    default_l = manifest.defaults.get("llm") or DEFAULT_LLM
    if mode == "full":
        pairs = [(v, m) for v in vision for m in llm]
    else:
        anchor_v = default_v if default_v in vision else vision[0]
        anchor_l = default_l if default_l in llm else llm[0]
        pairs = [(anchor_v, anchor_l)] + [(v, anchor_l) for v in vision] + \
            [(anchor_v, m) for m in llm]
    configs: list[Config] = []
    skipped: list[Skipped] = []
    for v, m in dict.fromkeys(pairs):
        if m in TORCH_LLMS:
            if v != "torch" and mode == "full":
                skipped.append(Skipped(Config("llava-edge", v, m), "the PyTorch LLM runs only "
                                       "end to end in transformers (vision torch)"))
                continue
            # transformers runs vision and LLM in one dtype: the cell is named by it.
            c = Config("transformers", m, m)
        else:
            c = Config("llava-edge", v, m, default=(v, m) == (default_v, default_l))
        reason = missing.get(f"vision:{c.vision}") or missing.get(f"llm:{c.llm}")
        if reason:
            skipped.append(Skipped(c, reason))
        elif c not in configs:
            configs.append(c)
    if peers:
        for c, reason in peer_configs(manifest, default_l, has_checkpoint):
            if reason:
                skipped.append(Skipped(c, reason))
            elif c not in configs:
                configs.append(c)
    # Default first, then the peers: the ratios that matter most come early, and a run
    # stopped before its end still has them.
    configs.sort(key=lambda c: (not c.default, c.kind == "llava-edge"))
    return configs, skipped


def peer_configs(manifest: Manifest, quant: str, has_checkpoint: bool
                 ) -> list[tuple[Config, str | None]]:
    """The three peers on the default GGUF, each with the reason it cannot run (or None)."""
    quants = set(manifest.llm_quants)
    no_gguf = None if quant in quants else f"the bundle has no {quant} GGUF"
    no_mmproj = None if manifest.mmproj else \
        "the bundle has no mmproj (export with --mmproj)"
    return [
        (Config("transformers", "torch", "torch"),
         None if has_checkpoint else "no checkpoint to run in PyTorch"),
        (Config("llama.cpp-llava", "mtmd", quant), no_gguf or no_mmproj),
        (Config("llama.cpp-raw", "-", quant), no_gguf),
    ]
