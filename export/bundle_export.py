"""``llava-edge export``: both halves of the split, written as one checked bundle.

The vision tower + projector go to ONNX (:mod:`llava_edge.export.vision`), the language
model to GGUF (:mod:`llava_edge.export.gguf`), and the manifest records everything the
runtime needs (preprocessing recipe, prompt template, special tokens, image token,
widths) plus the parity figures each export measured. The bundle directory appears only
when complete: it is built in a temporary sibling and renamed into place.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

from llava_edge.atomic_dir import write_dir
from llava_edge.bundle import write_manifest
from llava_edge.heap import release_freed_memory
from llava_edge.manifest import (AnyresSpec, ImageSpec, LanguageModel, Manifest, Mmproj,
                                 PromptSpec, Source, TensorrtEngine, VisionGraph)
from llava_edge.progress import StageProgress
from llava_edge.runtimes.preprocess import PreprocessRecipe
from llava_edge.checkpoint_info import read_json
from llava_edge.errors import LlavaEdgeError
from llava_edge.hub import resolve_model
from llava_edge.templates import IMAGE_TOKEN, TEMPLATES

from llava_edge.export.open_checkpoint import check_supported

# What --fp16 / --int8 / --int4 mean: (vision precision, LLM quant).
QUALITY_PRESETS = {"fp32": ("fp32", "F16"), "fp16": ("fp16", "F16"), "int8": ("int8", "Q8_0"),
                   "int4": ("int4", "Q4_K_M")}



@dataclass
class ExportOptions:
    """What to export. The first vision precision and LLM quant are the bundle's defaults."""

    vision_precisions: tuple[str, ...] = ("fp32",)
    llm_quants: tuple[str, ...] = ("F16",)
    mmproj: bool = False
    tensorrt: tuple[str, ...] = ()
    calib_dir: Path | None = None
    gates: dict[str, float] = field(default_factory=dict)
    allow_degraded: bool = False
    int4_fallback: bool = True  # int4 vision under its gate -> int8, said in the manifest
    parity: bool = True
    n_ctx: int | None = None  # default context for the runtime (None: from the model)

    @classmethod
    def from_quality(cls, quality: str, extra_vision=(), extra_llm=(), **kwargs) -> "ExportOptions":
        """Options for a quality preset (fp32, fp16, int8, int4) plus extra variants."""
        vision, llm = QUALITY_PRESETS[quality]
        return cls(vision_precisions=_unique((vision, *extra_vision)),
                   llm_quants=_unique((llm, *extra_llm)), **kwargs)


def _unique(items) -> tuple:
    return tuple(dict.fromkeys(items))


def export_bundle(checkpoint: str | Path, out_dir: str | Path, options: ExportOptions,
                  progress: StageProgress | None = None, overwrite: bool = False) -> Manifest:
    """Export ``checkpoint`` (a directory or a Hub id, see :func:`~llava_edge.hub.resolve_model`)
    into the bundle directory ``out_dir``; return its manifest."""
    from llava_edge.export.gguf import export_gguf
    from llava_edge.export.vision import export_vision

    checkpoint, out_dir = resolve_model(checkpoint, "MODEL"), Path(out_dir)
    config = check_supported(checkpoint)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise LlavaEdgeError(f"{out_dir} exists and is not empty (use --force to replace it)")

    def fill(staging: Path) -> Manifest:
        vision = export_vision(
            checkpoint, staging, precisions=options.vision_precisions,
            calib_dir=options.calib_dir, gates=options.gates or None,
            allow_degraded=options.allow_degraded, int4_fallback=options.int4_fallback,
            tensorrt=options.tensorrt, progress=progress)
        # The vision export frees GBs of graph copies that glibc keeps (tinyllava-1.1b: RSS
        # 6.1 GB after it, 1.7 GB after a trim); the GGUF parity then loads the PyTorch
        # model and a GGUF on top of whatever is resident.
        release_freed_memory()
        llm = export_gguf(checkpoint, staging, quants=options.llm_quants,
                          mmproj=options.mmproj, parity=options.parity, progress=progress)
        return write_manifest(staging, _manifest(checkpoint, config, options, vision, llm))

    return write_dir(out_dir, fill)  # the bundle appears complete or not at all


def _manifest(checkpoint: Path, config: dict, options: ExportOptions, vision, llm) -> Manifest:
    ours = config.get("llava_edge") or {}
    text = config.get("text_config") or {}
    n_embd = vision.n_embd
    vision_entries = tuple(
        VisionGraph(precision=v.precision, file=v.files[0],
                    data_file=v.files[1] if len(v.files) > 1 else None, n_embd=n_embd,
                    gate=v.gate, passed=v.passed, parity=v.parity, method=v.method,
                    note=v.note, fallback=v.fallback)
        for v in vision.variants if v.written)
    engines = tuple(TensorrtEngine(precision=e.precision, file=e.files[0],
                                   sidecar=e.files[1] if len(e.files) > 1 else None,
                                   parity=e.parity, passed=e.passed)
                    for e in vision.engines if e.written)
    llm_entries = tuple(LanguageModel(quant=f.quant, file=f.name, n_embd=n_embd,
                                      size=f.size_bytes)
                        for f in llm.files if f.role == "llm")
    mmproj = next((Mmproj(file=f.name, type=f.quant) for f in llm.files if f.role == "mmproj"),
                  None)
    if not vision_entries:
        raise LlavaEdgeError("no vision graph passed its parity gate; nothing to bundle "
                             "(see the figures above, or pass --allow-degraded)")
    default_vision = _default_vision(vision, options.vision_precisions[0])
    template_name, chat_template, special_tokens = _prompt(checkpoint, ours)
    max_pos = text.get("max_position_embeddings", 4096)
    return Manifest(
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        source=Source(checkpoint=str(checkpoint.resolve()), preset=ours.get("preset"),
                      random_init=bool(ours.get("random_init", False)),
                      training=ours.get("training"), vision=vision.vision_kind,
                      text=text.get("model_type", "llama")),
        preprocess=PreprocessRecipe.from_dict(vision.preprocess),
        image=ImageSpec(n_tokens=vision.n_image_tokens, n_embd=n_embd, token=IMAGE_TOKEN,
                        token_id=config.get("image_token_index", 32000),
                        image_size=vision.image_size),
        prompt=PromptSpec(template=template_name, chat_template=chat_template,
                          special_tokens=special_tokens,
                          stop=tuple(TEMPLATES[template_name].stop)
                          if template_name in TEMPLATES else (),
                          image_placement="<image> markers in order; else images first, "
                                          "'<image>\\n' each",
                          n_ctx=options.n_ctx or min(max_pos, 4096)),
        vision=vision_entries,
        tensorrt=engines,
        llm=llm_entries,
        mmproj=mmproj,
        # LLaVA-NeXT: image.n_tokens above is per view; the runtime tiles and packs
        anyres=AnyresSpec(**vision.anyres) if vision.anyres else None,
        defaults={"vision": default_vision, "llm": options.llm_quants[0]},
        parity={"vision": {v.precision: v.parity for v in vision.variants},
                "vision_gates": {v.precision: {"gate": v.gate, "passed": v.passed,
                                               "written": v.written, "fallback": v.fallback}
                                 for v in vision.variants},
                "tensorrt_errors": {e.precision: e.error for e in vision.engines
                                    if not e.written},
                "llm": llm.parity or {}, "llm_notes": llm.notes,
                "parity_images": vision.parity_images,
                "measured_on": vision.measured_on},
        tools=vision.versions | {"gguf_base_type": llm.base_type},
    )


def _default_vision(vision, wanted: str) -> str:
    variant = vision.variant(wanted)
    if variant.written:
        return wanted
    if variant.fallback:
        return variant.fallback
    return next(v.precision for v in vision.variants if v.written)


def _prompt(checkpoint: Path, ours: dict) -> tuple[str, str, dict[str, str]]:
    """Template name, Jinja chat template and the special-token strings it uses."""
    tok_config = read_json(checkpoint / "tokenizer_config.json", "tokenizer_config.json")
    chat_template = tok_config.get("chat_template")
    for name in ("chat_template.jinja",):
        if chat_template is None and (checkpoint / name).is_file():
            chat_template = (checkpoint / name).read_text(encoding="utf-8")
    template_name = ours.get("template")
    if template_name is None:
        template_name = "chatml" if chat_template and "<|im_start|>" in chat_template \
            else "vicuna_v1"
    if chat_template is None:
        chat_template = TEMPLATES[template_name].jinja
    special = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = tok_config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if value:
            special[key] = value
    return template_name, chat_template, special
