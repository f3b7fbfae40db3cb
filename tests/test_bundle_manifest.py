"""The manifest names every file; a missing, altered or mismatched file, or a missing or
wrong manifest field, is named at load."""

from __future__ import annotations

import dataclasses
import json

import pytest

from llava_edge.bundle import MANIFEST_NAME, open_bundle, write_manifest
from llava_edge.errors import BundleError
from llava_edge.manifest import (DEFAULT_N_CTX, LanguageModel, Manifest, ManifestError,
                                 VisionGraph)
from manifests import make_manifest


def _bundle(tmp_path, **over) -> Manifest:
    (tmp_path / "vision_fp32.onnx").write_bytes(b"onnx" * 100)
    (tmp_path / "llm-F16.gguf").write_bytes(b"GGUF" * 100)
    return write_manifest(tmp_path, make_manifest(**over))


def test_round_trip(tmp_path):
    written = _bundle(tmp_path)
    assert set(written.files) == {"vision_fp32.onnx", "llm-F16.gguf"}
    bundle = open_bundle(tmp_path)
    assert bundle.manifest == written
    assert bundle.vision_entry().file == "vision_fp32.onnx"
    assert bundle.llm_entry("f16").quant == "F16"
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert Manifest.from_dict(data).to_dict() == data  # the JSON survives a round trip
    with pytest.raises(BundleError, match="no language model with quant 'Q4_K_M'.*F16"):
        bundle.llm_entry("Q4_K_M")


def test_missing_file_named(tmp_path):
    _bundle(tmp_path)
    (tmp_path / "llm-F16.gguf").unlink()
    with pytest.raises(BundleError, match="llm-F16.gguf is missing"):
        open_bundle(tmp_path)


def test_altered_file_named(tmp_path):
    _bundle(tmp_path)
    (tmp_path / "vision_fp32.onnx").write_bytes(b"ONNX" * 100)  # same size, other bytes
    with pytest.raises(BundleError, match="vision_fp32.onnx does not match its sha256"):
        open_bundle(tmp_path)
    open_bundle(tmp_path, verify="size")  # a size check alone does not see it


def test_truncated_file_named(tmp_path):
    _bundle(tmp_path)
    (tmp_path / "llm-F16.gguf").write_bytes(b"GGUF")
    with pytest.raises(BundleError, match="llm-F16.gguf has 4 bytes, the manifest says 400"):
        open_bundle(tmp_path, verify="size")


def test_width_mismatch_named(tmp_path):
    _bundle(tmp_path)
    _edit(tmp_path, lambda d: d["vision"][0].update(n_embd=128))
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
    with pytest.raises(BundleError, match="names mmproj-F16.gguf, which is not in the bundle"):
        _bundle(tmp_path, mmproj=True)


def _edit(tmp_path, change) -> None:
    """Change the written manifest.json behind the writer's back."""
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    change(data)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))


# Every field the runtime reads, removed or given the wrong kind: a BundleError naming it
# (exit 1), never a KeyError (exit 2).
RUNTIME_FIELDS = [
    ("preprocess", None), ("preprocess.crop_height", "x"), ("preprocess.resample", None),
    ("preprocess.rescale_factor", "1/255"), ("preprocess.image_mean", [0.5, 0.5]),
    ("preprocess.image_std", None), ("preprocess.pad_to_square", "no"),
    ("image", None), ("image.n_tokens", None), ("image.n_tokens", 0), ("image.n_embd", "256"),
    ("image.token_id", None), ("image.token_id", -1), ("image.token_id", True),
    ("prompt", None), ("prompt.template", None), ("prompt.chat_template", None),
    ("prompt.chat_template", 3), ("prompt.special_tokens", ["<s>"]), ("prompt.stop", "</s>"),
    ("prompt.n_ctx", 0), ("prompt.n_ctx", "2048"),
    ("vision", None), ("vision", []), ("vision.0.file", None), ("vision.0.precision", 32),
    ("vision.0.method", "dynamic"), ("llm", None), ("llm", []), ("llm.0.file", None),
    ("llm.0.quant", None), ("defaults.vision", "int8"), ("defaults.llm", "Q4_K_M"),
    ("files", None), ("files.llm-F16.gguf.sha256", "abc"), ("files.llm-F16.gguf.size", None),
]


@pytest.mark.parametrize("field, value", RUNTIME_FIELDS)
def test_every_runtime_field_is_checked_and_named(tmp_path, field, value):
    _bundle(tmp_path)

    def change(data):
        *parents, last = field.split(".")
        if field.startswith("files."):  # file names hold dots
            parents, last = ["files", field[6:].rsplit(".", 1)[0]], field.rsplit(".", 1)[1]
        node = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        key = int(last) if last.isdigit() else last
        if value is None:
            del node[key]
        else:
            node[key] = value

    _edit(tmp_path, change)
    with pytest.raises(BundleError) as raised:
        open_bundle(tmp_path)
    message = str(raised.value)
    assert MANIFEST_NAME in message
    if field.startswith("defaults."):
        assert f"{value!r} in the bundle" in message  # "no vision graph with precision 'int8'"
    elif value == []:
        assert f"{field} lists no" in message
    elif field.startswith("files."):
        assert "files['llm-F16.gguf']" in message
    else:
        shown = field.replace(".0.", "[0].")
        assert shown in message, message


def test_the_defaults_live_in_one_place(tmp_path):
    _bundle(tmp_path)
    _edit(tmp_path, lambda d: d["prompt"].pop("n_ctx"))
    assert open_bundle(tmp_path).manifest.prompt.n_ctx == DEFAULT_N_CTX


def test_optional_fields_of_older_schema_1_bundles_may_be_absent(tmp_path):
    """Bundles written before a field was added (method, measured_on, tensorrt, source,
    special tokens, stop) still load."""
    _bundle(tmp_path)

    def strip(data):
        for key in ("source", "tensorrt", "mmproj", "tools", "created", "parity"):
            data.pop(key, None)
        for key in ("special_tokens", "stop", "image_placement"):
            data["prompt"].pop(key, None)
        for key in ("method", "parity", "gate", "passed", "note", "fallback", "data_file"):
            data["vision"][0].pop(key, None)

    _edit(tmp_path, strip)
    m = open_bundle(tmp_path).manifest
    assert m.vision[0].method == {} and m.prompt.stop == () and m.source.random_init is False


def test_other_schema_versions_are_refused_with_a_way_out(tmp_path):
    _bundle(tmp_path)
    _edit(tmp_path, lambda d: d.update(schema_version=2))
    with pytest.raises(BundleError, match="schema version 2 is not supported.*re-export"):
        open_bundle(tmp_path)


def test_the_writer_refuses_an_inconsistent_manifest(tmp_path):
    _bundle(tmp_path)
    with pytest.raises(BundleError, match="outputs width 128"):
        write_manifest(tmp_path, dataclasses.replace(
            make_manifest(), vision=(VisionGraph(precision="fp32", file="vision_fp32.onnx",
                                                 n_embd=128),)))
    with pytest.raises(BundleError, match="no language model with quant 'Q8_0'"):
        write_manifest(tmp_path, make_manifest(defaults={"vision": "fp32", "llm": "Q8_0"}))
    assert isinstance(ManifestError("x"), BundleError)
    assert LanguageModel(quant="F16", file="a.gguf").n_embd is None


def _leaves(node, path=()):
    """Every (path, value) of a JSON tree, objects and lists included."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, path + (i,))


def test_no_field_of_a_real_manifest_breaks_loading_unnamed(tiny_bundle, tmp_path):
    """Each field of an exported bundle's manifest, removed or replaced by a value of
    another kind, either still loads (an optional field) or raises a BundleError: never a
    KeyError or TypeError from deep inside the runtime (exit 2). "Loads" goes as far as
    the runtime's own reading: the pipeline's constructor and the entries it picks."""
    from llava_edge.runtimes.pipeline import LlavaEdge

    for f in tiny_bundle.iterdir():
        if f.name != MANIFEST_NAME:
            (tmp_path / f.name).symlink_to(f)
    original = json.loads((tiny_bundle / MANIFEST_NAME).read_text())
    cases = 0
    for path, _ in _leaves(original):
        if not path:
            continue
        for replacement in (None, "x", [], {"k": 1}):
            data = json.loads(json.dumps(original))
            *parents, last = path
            node = data
            for key in parents:
                node = node[key]
            if replacement is None:
                node.pop(last) if isinstance(node, dict) else node.__setitem__(last, None)
            else:
                node[last] = replacement
            (tmp_path / MANIFEST_NAME).write_text(json.dumps(data))
            cases += 1
            try:
                bundle = open_bundle(tmp_path, verify="none")
                LlavaEdge(bundle, vision=None, llm=None)
                bundle.vision_entry(), bundle.llm_entry()
                _ = bundle.manifest.prompt.n_ctx
            except BundleError:
                pass
    assert cases > 400


def _next_bundle(tmp_path) -> Manifest:
    import numpy as np

    from llava_edge.manifest import AnyresSpec

    np.save(tmp_path / "image_newline.npy", np.zeros(256, np.float32))
    spec = AnyresSpec(pinpoints=((64, 64), (64, 128), (128, 64)), tile_size=64, patch_size=16,
                      strategy="default", num_additional_image_tokens=1,
                      newline_file="image_newline.npy")
    return _bundle(tmp_path, anyres=spec)


def test_anyres_section_round_trips_and_names_its_file(tmp_path):
    written = _next_bundle(tmp_path)
    assert "image_newline.npy" in written.files
    bundle = open_bundle(tmp_path)
    assert bundle.manifest.anyres == written.anyres
    assert bundle.manifest.anyres.pinpoints[1] == (64, 128)
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert Manifest.from_dict(data).to_dict() == data
    (tmp_path / "image_newline.npy").unlink()
    with pytest.raises(BundleError, match="image_newline.npy is missing"):
        open_bundle(tmp_path)


@pytest.mark.parametrize("field, value, message", [
    ("pinpoints", [], "anyres.pinpoints must be a non-empty list"),
    ("pinpoints", [[64]], "anyres.pinpoints must be a non-empty list"),
    ("strategy", "cls", "anyres.strategy must be 'default' or 'full'"),
    ("merge", "flat", "anyres.merge 'flat' is not supported"),
    ("tile_size", None, "anyres.tile_size is missing"),
    ("newline_file", None, "anyres.newline_file is missing"),
    ("num_additional_image_tokens", -1, "must not be negative"),
])
def test_anyres_fields_are_checked_and_named(tmp_path, field, value, message):
    _next_bundle(tmp_path)

    def change(data):
        if value is None:
            del data["anyres"][field]
        else:
            data["anyres"][field] = value

    _edit(tmp_path, change)
    with pytest.raises(BundleError, match=message):
        open_bundle(tmp_path)
