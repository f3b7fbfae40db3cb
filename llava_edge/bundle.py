"""The bundle: one directory with the exported model parts and a manifest describing them.

``manifest.json`` (versioned schema) names every file with its size and sha256, the vision
graphs and their precisions, the GGUF language models and their quant types, the image
preprocessing recipe, the prompt template, special token ids, the parity figures
measured at export and the versions of the tools that wrote it. Export writes it
(:func:`write_manifest`); the runtime reads it (:func:`open_bundle`), which checks that
every file is there, has its recorded size and (by default) its recorded hash, and that
the parts fit together (the vision output width is the LLM's embedding width).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llava_edge.errors import BundleError

MANIFEST_NAME = "manifest.json"
BUNDLE_FORMAT = "llava-edge-bundle"
SCHEMA_VERSION = 1

Verify = Literal["hash", "size", "none"]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(bundle_dir: str | Path, manifest: dict) -> dict:
    """Add the ``files`` table (size and sha256 of every file in ``bundle_dir``) and the
    format fields to ``manifest``, write it atomically as ``manifest.json``, return it."""
    bundle_dir = Path(bundle_dir)
    files = {}
    for path in sorted(bundle_dir.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME and not path.name.startswith("."):
            rel = path.relative_to(bundle_dir).as_posix()
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    full = {"format": BUNDLE_FORMAT, "schema_version": SCHEMA_VERSION, **manifest, "files": files}
    for rel in _referenced_files(full):
        if rel not in files:
            raise BundleError(f"{bundle_dir}: manifest names {rel}, which is not in the bundle")
    fd, tmp = tempfile.mkstemp(dir=bundle_dir, prefix=".manifest-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(full, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the bundle's other files are not
    os.replace(tmp, bundle_dir / MANIFEST_NAME)
    return full


def _referenced_files(manifest: dict) -> list[str]:
    refs = []
    for entry in manifest.get("vision", []) + manifest.get("llm", []):
        refs += [entry["file"]] + ([entry["data_file"]] if entry.get("data_file") else [])
    if manifest.get("mmproj"):
        refs.append(manifest["mmproj"]["file"])
    return refs


@dataclass
class Bundle:
    """An opened, checked bundle."""

    path: Path
    manifest: dict

    def file(self, rel: str) -> Path:
        return self.path / rel

    @property
    def vision_precisions(self) -> list[str]:
        return [v["precision"] for v in self.manifest["vision"]]

    @property
    def llm_quants(self) -> list[str]:
        return [m["quant"] for m in self.manifest["llm"]]

    def vision_entry(self, precision: str | None = None) -> dict:
        """The vision graph of ``precision`` (default: the bundle's default)."""
        precision = precision or self.manifest.get("defaults", {}).get("vision")
        return _pick(self.manifest["vision"], "precision", precision, self.path, "vision graph")

    def llm_entry(self, quant: str | None = None) -> dict:
        """The GGUF language model of ``quant`` (default: the bundle's default)."""
        quant = quant or self.manifest.get("defaults", {}).get("llm")
        return _pick(self.manifest["llm"], "quant", quant, self.path, "language model")


def _pick(entries: list[dict], key: str, value: str | None, path: Path, what: str) -> dict:
    if not entries:
        raise BundleError(f"{path}: the bundle has no {what}")
    if value is None:
        return entries[0]
    for entry in entries:
        if entry[key].lower() == value.lower():
            return entry
    have = ", ".join(e[key] for e in entries)
    raise BundleError(f"{path}: no {what} with {key} {value!r} in the bundle (it has: {have})")


def open_bundle(path: str | Path, verify: Verify = "hash") -> Bundle:
    """Open the bundle at ``path`` and check it; raise :class:`BundleError` naming what is
    missing, altered or inconsistent. ``verify``: "hash" (default), "size" or "none"."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle directory")
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a llava-edge bundle ({MANIFEST_NAME} is missing)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{manifest_path}: not a llava-edge bundle manifest")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{manifest_path}: schema version {version!r} is not supported by "
                          f"this llava-edge (it reads version {SCHEMA_VERSION})")
    for key in ("preprocess", "image", "prompt", "vision", "llm", "files"):
        if key not in manifest:
            raise BundleError(f"{manifest_path}: required field {key!r} is missing")
    _check_files(path, manifest, verify)
    _check_consistent(path, manifest)
    return Bundle(path=path, manifest=manifest)


def _check_files(path: Path, manifest: dict, verify: Verify) -> None:
    files = manifest["files"]
    for rel in _referenced_files(manifest):
        if rel not in files:
            raise BundleError(f"{path}: {rel} is used by the manifest but not listed in its files")
    for rel, meta in files.items():
        file = path / rel
        if not file.is_file():
            raise BundleError(f"{path}: {rel} is missing")
        if verify == "none":
            continue
        size = file.stat().st_size
        if size != meta["size"]:
            raise BundleError(f"{path}: {rel} has {size} bytes, the manifest says "
                              f"{meta['size']} (altered or truncated)")
        if verify == "hash" and sha256_file(file) != meta["sha256"]:
            raise BundleError(f"{path}: {rel} does not match its sha256 in the manifest (altered)")


def _check_consistent(path: Path, manifest: dict) -> None:
    n_embd = manifest["image"]["n_embd"]
    for entry in manifest["vision"]:
        if entry.get("n_embd", n_embd) != n_embd:
            raise BundleError(f"{path}: vision graph {entry['file']} outputs width "
                              f"{entry['n_embd']}, but the language model's embedding width "
                              f"is {n_embd}")
    for entry in manifest["llm"]:
        if entry.get("n_embd", n_embd) != n_embd:
            raise BundleError(f"{path}: language model {entry['file']} has embedding width "
                              f"{entry['n_embd']}, but the image embeddings are {n_embd} wide")
