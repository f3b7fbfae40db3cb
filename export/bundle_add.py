"""Add GGUF types to a bundle that exists (``llava-edge tune --export CKPT``).

``llava-edge tune`` can only choose among the files a bundle holds; a type the export did
not write (Q4_0, Q8_0, ...) may be the fastest on this machine. With the checkpoint the
bundle was exported from at hand, :func:`add_llm_quants` writes those types as the export
would (converted from the checkpoint, quantized by llama.cpp, their logit parity against
PyTorch measured and held to the same gates), then rewrites the manifest with the new
files, their hashes and their parity. The bundle's hash changes with its manifest, so a
profile made before no longer applies (as for any other change of the bundle).

Nothing is half-written: the new files are made in a hidden folder inside the bundle and
moved in only when all of them are done; the manifest is written last, atomically. A
crash in between leaves the old manifest, which does not name the new files.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from llava_edge.bundle import open_bundle, write_manifest
from llava_edge.errors import LlavaEdgeError
from llava_edge.manifest import LanguageModel, Manifest


def add_llm_quants(bundle_dir: str | Path, checkpoint: str | Path, quants: Iterable[str],
                   parity: bool = True) -> tuple[Manifest, tuple[str, ...]]:
    """Write each of ``quants`` the bundle lacks from ``checkpoint`` (the one it was
    exported from) into ``bundle_dir``; return the new manifest and the types added."""
    from llava_edge.export.gguf import export_gguf
    from llava_edge.export.gguf_quantize import normalize_quants

    bundle_dir, checkpoint = Path(bundle_dir), Path(checkpoint)
    manifest = open_bundle(bundle_dir, verify="size").manifest
    new = tuple(q for q in normalize_quants(quants) if q not in manifest.llm_quants)
    if not new:
        return manifest, ()
    source = Path(manifest.source.checkpoint).resolve() if manifest.source.checkpoint else None
    if source is not None and checkpoint.resolve() != source:
        raise LlavaEdgeError(f"{checkpoint} is not the checkpoint {bundle_dir} was exported "
                             f"from ({source}): a GGUF of another model would not match the "
                             "bundle's vision graph")
    staging = Path(tempfile.mkdtemp(prefix=".add-", dir=bundle_dir))
    try:
        result = export_gguf(checkpoint, staging, quants=new, parity=parity)
        n_embd = manifest.llm_entry().n_embd
        entries = tuple(LanguageModel(quant=f.quant, file=f.name, n_embd=n_embd,
                                      size=f.size_bytes)
                        for f in result.files if f.role == "llm")
        clash = [e.file for e in entries if (bundle_dir / e.file).exists()]
        if clash:
            raise LlavaEdgeError(f"{bundle_dir / clash[0]} exists but the manifest does not "
                                 "name it: remove it first")
        for e in entries:
            (staging / e.file).rename(bundle_dir / e.file)
        shutil.rmtree(staging)  # before the manifest lists the bundle's files
        # the new types' logits beside the old ones; the rest (reference, tokenization,
        # mmproj) as measured at export, or now where the export measured nothing
        old, added = manifest.parity.get("llm") or {}, result.parity or {}
        llm_parity = {**added, **old, "logits": {**(old.get("logits") or {}),
                                                 **(added.get("logits") or {})}}
        notes = list(manifest.parity.get("llm_notes") or []) + list(result.notes)
        updated = dataclasses.replace(
            manifest, llm=manifest.llm + entries,
            parity={**manifest.parity, "llm": llm_parity, "llm_notes": notes})
        return write_manifest(bundle_dir, updated), tuple(e.quant for e in entries)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
