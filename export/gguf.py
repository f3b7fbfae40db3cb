"""Export a LLaVA checkpoint's language model to GGUF: convert, quantize, (mmproj), verify.

:func:`export_gguf` is the API the ``llava-edge export`` command builds on::

    result = export_gguf("ckpt/tiny", "bundle/", quants=("F16", "Q4_K_M"), mmproj=True)
    result.llm_file("Q4_K_M")      # bundle/llm-Q4_K_M.gguf
    result.to_dict()               # files, sizes, quant types, parity figures (JSON)

Steps: the language model is written once at the checkpoint's precision (F32 for a
float32 checkpoint, else F16), every requested type is quantized from that file by
llama.cpp, the optional mmproj (vision tower + projector for stock llama.cpp) is written,
and the parity figures (:mod:`gguf_parity`) are measured against PyTorch; the export
fails when the GGUF's tokenization differs from the checkpoint's (:mod:`tokenizer_parity`). Each file
appears under its final name only when complete; if a step fails, the files this call
created are removed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

from llava_edge.errors import LlavaEdgeError
from llava_edge.export.open_checkpoint import check_supported
from llava_edge.export.gguf_quantize import INT4_QUANT, normalize_quants, quantize_gguf
from llava_edge.export.gguf_tensors import SafetensorsCheckpoint, find_llm_prefixes
from llava_edge.export.gguf_writer import write_llm_gguf
from llava_edge.heap import release_freed_memory
from llava_edge.progress import Progress, StageProgress

__all__ = ["export_gguf", "GGUFExportResult", "GGUFFile", "INT4_QUANT", "llm_file_name"]


def llm_file_name(quant: str) -> str:
    return f"llm-{quant}.gguf"


def mmproj_file_name(out_type: str) -> str:
    return f"mmproj-{out_type}.gguf"


@dataclass
class GGUFFile:
    """One file written by the export."""

    role: str  # "llm" or "mmproj"
    quant: str  # GGUF type: F16, Q4_K_M, ...
    name: str  # file name inside the output directory
    size_bytes: int


@dataclass
class GGUFExportResult:
    """What :func:`export_gguf` wrote and measured."""

    out_dir: Path
    files: list[GGUFFile]
    quants: list[str]
    base_type: str  # precision the language model was converted at
    arch: str
    n_vocab: int
    parity: dict | None = None
    notes: list[str] = field(default_factory=list)

    def llm_file(self, quant: str) -> Path:
        for f in self.files:
            if f.role == "llm" and f.quant == quant:
                return self.out_dir / f.name
        raise KeyError(f"no {quant} language model in this export")

    @property
    def mmproj_file(self) -> Path | None:
        return next((self.out_dir / f.name for f in self.files if f.role == "mmproj"), None)

    def to_dict(self) -> dict:
        """JSON-serialisable summary (for the bundle manifest)."""
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        return data


def _base_type(checkpoint_dir: Path) -> str:
    """F32 when the language model is stored in float32 (small or freshly trained
    models: quantizing from float32 loses nothing), else F16."""
    ckpt = SafetensorsCheckpoint(checkpoint_dir)
    decoder, head = find_llm_prefixes(ckpt.names())
    dtypes = {ckpt.info(n)[1] for n in ckpt.names() if n.startswith((decoder, head))}
    return "F32" if "F32" in dtypes else "F16"


def export_gguf(checkpoint_dir: str | Path, out_dir: str | Path,
                quants: str | Iterable[str] = ("F16",), mmproj: bool = False,
                parity: bool = True, progress: StageProgress | None = None,
                n_threads: int | None = None, mmproj_type: str = "F16",
                overwrite: bool = False, name: str | None = None) -> GGUFExportResult:
    """Write the checkpoint's language model as GGUF in each of ``quants`` (``F16``,
    ``BF16``, ``Q8_0``, ``Q6_K``, ``Q5_K_M``, ``Q4_K_M``, ``Q4_0``, ...), optionally the
    mmproj, and measure parity against PyTorch (``parity=False`` skips the PyTorch
    model, which needs the checkpoint's float32 size in memory).

    ``progress(stage, done, total)``; stages: ``"convert F16"`` (bytes), ``"quantize
    Q4_K_M"`` (tensors), ``"mmproj"`` (bytes), ``"parity"`` (GGUF files checked)."""
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    check_supported(checkpoint_dir)
    quants = normalize_quants(quants)
    planned = [out_dir / llm_file_name(q) for q in quants]
    if mmproj:
        planned.append(out_dir / mmproj_file_name(mmproj_type))
    existing = [p for p in planned if p.exists()]
    if existing and not overwrite:
        raise LlavaEdgeError(f"{existing[0]} exists (pass overwrite=True to replace it)")
    out_dir.mkdir(parents=True, exist_ok=True)

    def report(stage: str) -> Progress | None:
        return (lambda done, total: progress(stage, done, total)) if progress else None

    base_type = _base_type(checkpoint_dir)
    created: list[Path] = []
    base_path = (out_dir / llm_file_name(base_type) if base_type in quants
                 else out_dir / f".llm-base-{base_type}.gguf")
    try:
        written = write_llm_gguf(checkpoint_dir, base_path, base_type, name=name,
                                 progress=report(f"convert {base_type}"))
        created.append(base_path)
        llm_files: dict[str, Path] = {}
        for quant in quants:
            path = out_dir / llm_file_name(quant)
            if quant != base_type:
                quantize_gguf(base_path, path, quant, n_threads, report(f"quantize {quant}"))
                created.append(path)
            llm_files[quant] = path
        if base_type not in quants:
            base_path.unlink()
            created.remove(base_path)
        mmproj_path = None
        if mmproj:
            from llava_edge.export.mmproj import write_mmproj

            mmproj_path = out_dir / mmproj_file_name(mmproj_type)
            write_mmproj(checkpoint_dir, mmproj_path, mmproj_type, progress=report("mmproj"))
            created.append(mmproj_path)
        figures = None
        if parity:
            figures = _measure(checkpoint_dir, llm_files, mmproj_path, n_threads,
                               report("parity"))
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise

    files = [GGUFFile("llm", q, p.name, p.stat().st_size) for q, p in llm_files.items()]
    if mmproj_path is not None:
        files.append(GGUFFile("mmproj", mmproj_type, mmproj_path.name,
                              mmproj_path.stat().st_size))
    return GGUFExportResult(out_dir, files, quants, base_type, written.arch, written.n_vocab,
                            figures, _notes(checkpoint_dir, mmproj))


def _notes(checkpoint_dir: Path, mmproj: bool) -> list[str]:
    """Caveats worth keeping next to the figures."""
    from llava_edge.checkpoint_info import read_json

    config = read_json(checkpoint_dir / "config.json", "config.json")
    notes = []
    if (config.get("llava_edge") or {}).get("random_init"):
        notes.append("random weights: next-token distributions are nearly flat, so top-1 "
                     "agreement of quantized types says little; KL and the F16 figures do")
    if mmproj and (config.get("vision_config") or {}).get("model_type") == "clip_vision_model":
        notes.append("mmproj: llama.cpp's LLaVA graph puts CLS after the patches, so stock "
                     "llama.cpp's image embeddings differ from PyTorch's (see parity.mmproj); "
                     "llava-edge's runtime injects exact embeddings instead")
    if mmproj and config.get("model_type") == "llava_next":
        notes.append("mmproj (LLaVA-NeXT): stock llama.cpp emits the tiles before the "
                     "overview, each view whole (no unpadding, no newline rows), so its image "
                     "positions differ from transformers' packing (see parity.mmproj)")
    return notes


def _measure(checkpoint_dir: Path, llm_files: dict[str, Path], mmproj_path: Path | None,
             n_threads: int | None, progress: Progress | None) -> dict:
    from llava_edge.export.open_checkpoint import load_llava
    from llava_edge.export.gguf_parity import measure_parity
    from llava_edge.export.tokenizer_parity import check_tokenizer_parity

    # The conversion and quantization before this leave freed heap that glibc keeps; the
    # fp32 model is loaded on top of whatever is resident, so hand it back first.
    release_freed_memory()
    loaded = load_llava(checkpoint_dir, "float32")
    if progress:
        progress(0, 1)
    figures = measure_parity(loaded, llm_files, mmproj_path, n_threads=n_threads,
                             keep_language_model=False)
    # A GGUF that tokenizes differently from its checkpoint answers other prompts than
    # the ones the user wrote: not an export.
    check_tokenizer_parity(figures["tokenization"], next(iter(llm_files.values())))
    if progress:
        progress(1, 1)
    return figures

