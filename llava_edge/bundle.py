"""The bundle: one directory with the exported model parts and a manifest describing them.

``manifest.json`` (versioned schema) names every file with its size and sha256, the vision
graphs and their precisions, the GGUF language models and their quant types, the image
preprocessing recipe, the prompt template, special token ids, the parity figures
measured at export and the versions of the tools that wrote it; its typed form, with
the field checks, is :class:`llava_edge.manifest.Manifest`. Export writes it
(:func:`write_manifest`); the runtime reads it (:func:`open_bundle`), which checks every
field it reads, that every file is there, has its recorded size and (by default) its
recorded hash, and that the parts fit together (the vision output width is the LLM's
embedding width).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llava_edge.atomic_dir import write_json
from llava_edge.errors import BundleError
from llava_edge.manifest import (BUNDLE_FORMAT, SCHEMA_VERSION, FileEntry, LanguageModel,
                                 Manifest, ManifestError, VisionGraph)

__all__ = ["BUNDLE_FORMAT", "MANIFEST_NAME", "SCHEMA_VERSION", "Bundle", "Manifest",
           "open_bundle", "sha256_file", "write_manifest"]

MANIFEST_NAME = "manifest.json"

Verify = Literal["hash", "size", "none"]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Manifest:
    """Fill ``manifest``'s ``files`` table (size and sha256 of every file in
    ``bundle_dir``), check it, write it atomically as ``manifest.json``, return it."""
    bundle_dir = Path(bundle_dir)
    files = {}
    for path in sorted(bundle_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME and not path.name.startswith("."):
            rel = path.relative_to(bundle_dir).as_posix()
            files[rel] = FileEntry(size=path.stat().st_size, sha256=sha256_file(path))
    full = dataclasses.replace(manifest, files=files)
    for rel in full.referenced_files():
        if rel not in files:
            raise BundleError(f"{bundle_dir}: manifest names {rel}, which is not in the bundle")
    data = full.to_dict()  # plain JSON already: what readers will see
    try:
        full.check_consistent()
        Manifest.from_dict(data)
    except ManifestError as e:
        raise BundleError(f"{bundle_dir}: the manifest being written is invalid: {e}") from None
    write_json(bundle_dir / MANIFEST_NAME, data)
    return full


@dataclass
class Bundle:
    """An opened, checked bundle."""

    path: Path
    manifest: Manifest

    def file(self, rel: str) -> Path:
        return self.path / rel

    @property
    def vision_precisions(self) -> list[str]:
        return self.manifest.vision_precisions

    @property
    def llm_quants(self) -> list[str]:
        return self.manifest.llm_quants

    def vision_entry(self, precision: str | None = None) -> VisionGraph:
        """The vision graph of ``precision`` (default: the bundle's default)."""
        return self._named(self.manifest.vision_entry, precision)

    def llm_entry(self, quant: str | None = None) -> LanguageModel:
        """The GGUF language model of ``quant`` (default: the bundle's default)."""
        return self._named(self.manifest.llm_entry, quant)

    def _named(self, pick, value):
        try:
            return pick(value)
        except BundleError as e:
            raise BundleError(f"{self.path}: {e}") from None


def open_bundle(path: str | Path, verify: Verify = "hash") -> Bundle:
    """Open the bundle at ``path`` and check it; raise :class:`BundleError` naming what is
    missing, altered or inconsistent (a manifest field, a file). ``verify``: "hash"
    (default), "size" or "none"."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle directory")
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a llava-edge bundle ({MANIFEST_NAME} is missing)")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
    try:
        manifest = Manifest.from_dict(data)
        manifest.check_consistent()
    except BundleError as e:
        raise BundleError(f"{manifest_path}: {e}") from None
    _check_files(path, manifest, verify)
    return Bundle(path=path, manifest=manifest)


def _check_files(path: Path, manifest: Manifest, verify: Verify) -> None:
    files = manifest.files
    for rel in manifest.referenced_files():
        if rel not in files:
            raise BundleError(f"{path}: {rel} is used by the manifest but not listed in its files")
    for rel, meta in files.items():
        file = path / rel
        if not file.is_file():
            raise BundleError(f"{path}: {rel} is missing")
        if verify == "none":
            continue
        size = file.stat().st_size
        if size != meta.size:
            raise BundleError(f"{path}: {rel} has {size} bytes, the manifest says "
                              f"{meta.size} (altered or truncated)")
        if verify == "hash" and sha256_file(file) != meta.sha256:
            raise BundleError(f"{path}: {rel} does not match its sha256 in the manifest (altered)")
