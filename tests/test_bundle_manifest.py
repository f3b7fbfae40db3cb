"""The manifest names every file; a missing, altered or mismatched file is named at load."""

from __future__ import annotations

import json

import pytest

from llava_edge.bundle import MANIFEST_NAME, open_bundle, write_manifest
from llava_edge.errors import BundleError


def _bundle(tmp_path, **over):
    (tmp_path / "vision_fp32.onnx").write_bytes(b"onnx" * 100)
    (tmp_path / "llm_f16.gguf").write_bytes(b"GGUF" * 100)
    manifest = {
        "preprocess": {"resize_shortest_edge": 64},
        "image": {"n_tokens": 16, "n_embd": 256, "token": "<image>", "token_id": 1402},
        "prompt": {"template": "vicuna_v1"},
        "vision": [{"precision": "fp32", "file": "vision_fp32.onnx", "n_embd": 256}],
        "llm": [{"quant": "F16", "file": "llm_f16.gguf", "n_embd": 256}],
        "defaults": {"vision": "fp32", "llm": "F16"},
        **over,
    }
    return write_manifest(tmp_path, manifest)


def test_round_trip(tmp_path):
    written = _bundle(tmp_path)
    assert set(written["files"]) == {"vision_fp32.onnx", "llm_f16.gguf"}
    bundle = open_bundle(tmp_path)
    assert bundle.vision_entry()["file"] == "vision_fp32.onnx"
    assert bundle.llm_entry("f16")["quant"] == "F16"
    with pytest.raises(BundleError, match="no language model with quant 'Q4_K_M'.*F16"):
        bundle.llm_entry("Q4_K_M")


def test_missing_file_named(tmp_path):
    _bundle(tmp_path)
    (tmp_path / "llm_f16.gguf").unlink()
    with pytest.raises(BundleError, match="llm_f16.gguf is missing"):
        open_bundle(tmp_path)


def test_altered_file_named(tmp_path):
    _bundle(tmp_path)
    (tmp_path / "vision_fp32.onnx").write_bytes(b"ONNX" * 100)  # same size, other bytes
    with pytest.raises(BundleError, match="vision_fp32.onnx does not match its sha256"):
        open_bundle(tmp_path)
    open_bundle(tmp_path, verify="size")  # a size check alone does not see it


def test_truncated_file_named(tmp_path):
    _bundle(tmp_path)
    (tmp_path / "llm_f16.gguf").write_bytes(b"GGUF")
    with pytest.raises(BundleError, match="llm_f16.gguf has 4 bytes, the manifest says 400"):
        open_bundle(tmp_path, verify="size")


def test_width_mismatch_named(tmp_path):
    _bundle(tmp_path, vision=[{"precision": "fp32", "file": "vision_fp32.onnx", "n_embd": 128}])
    with pytest.raises(BundleError, match="vision_fp32.onnx outputs width 128.*256"):
        open_bundle(tmp_path)


def test_manifest_problems(tmp_path):
    with pytest.raises(BundleError, match="manifest.json is missing"):
        open_bundle(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{oops")
    with pytest.raises(BundleError, match="not valid JSON"):
        open_bundle(tmp_path)
    _bundle(tmp_path)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    data["schema_version"] = 99
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="schema version 99 is not supported"):
        open_bundle(tmp_path)


def test_manifest_must_name_existing_files(tmp_path):
    with pytest.raises(BundleError, match="names mmproj.gguf, which is not in the bundle"):
        _bundle(tmp_path, mmproj={"file": "mmproj.gguf"})
