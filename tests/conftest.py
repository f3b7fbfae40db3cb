"""Shared fixtures. Tests run offline: any connection off this machine fails loudly."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# `llava-edge tune` profiles: a folder of the session's own, so that a profile made on
# this machine by hand never changes what a test measures (tests/test_tune.py sets its own).
# Stage 0 towers (`pretrain-vision`, the demo): likewise, so that the demo's test builds
# its tower as a first run on a new machine does.
for _variable, _prefix in (("LLAVA_EDGE_TUNE_DIR", "llava-edge-tune-"),
                           ("LLAVA_EDGE_TOWER_CACHE", "llava-edge-towers-")):
    if _variable not in os.environ:
        import tempfile

        os.environ[_variable] = tempfile.mkdtemp(prefix=_prefix)


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Refuse connections to anything but loopback for the whole test session."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        if not _is_local(address):
            raise RuntimeError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    socket.socket.connect = guarded
    yield
    socket.socket.connect = real_connect


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The `tiny` preset (Llama + CLIP), built once per test session."""
    from llava_edge.presets import get_preset
    from llava_edge.trainer.init_checkpoint import build_checkpoint

    return build_checkpoint(get_preset("tiny"), tmp_path_factory.mktemp("ckpt") / "tiny").path


@pytest.fixture(scope="session")
def tiny_qwen2_checkpoint(tmp_path_factory):
    """The `tiny-qwen2` preset (Qwen2 + SigLIP), built once per test session."""
    from llava_edge.presets import get_preset
    from llava_edge.trainer.init_checkpoint import build_checkpoint

    return build_checkpoint(get_preset("tiny-qwen2"),
                            tmp_path_factory.mktemp("ckpt") / "tiny-qwen2").path


@pytest.fixture(scope="session")
def tiny_next_checkpoint(tmp_path_factory):
    """The `tiny-next` preset (LLaVA-NeXT: `tiny`'s Llama + CLIP, 64-pixel tiles in 1x2,
    2x1, 2x2, 1x3 and 3x1 grids), built once per test session."""
    from llava_edge.presets import get_preset
    from llava_edge.trainer.init_checkpoint import build_checkpoint

    return build_checkpoint(get_preset("tiny-next"),
                            tmp_path_factory.mktemp("ckpt") / "tiny-next").path


@pytest.fixture(scope="session")
def tiny_gguf(tiny_checkpoint, tmp_path_factory):
    """`tiny` exported to GGUF (F16, Q8_0, Q4_K_M + mmproj), without parity figures."""
    from llava_edge.export.gguf import export_gguf

    return export_gguf(tiny_checkpoint, tmp_path_factory.mktemp("gguf") / "tiny",
                       quants=("F16", "Q8_0", "Q4_K_M"), mmproj=True, parity=False)


@pytest.fixture(scope="session")
def tiny_qwen2_gguf(tiny_qwen2_checkpoint, tmp_path_factory):
    """`tiny-qwen2` exported to GGUF (F16, Q8_0, Q4_K_M + mmproj), without parity figures."""
    from llava_edge.export.gguf import export_gguf

    return export_gguf(tiny_qwen2_checkpoint, tmp_path_factory.mktemp("gguf") / "tiny-qwen2",
                       quants=("F16", "Q8_0", "Q4_K_M"), mmproj=True, parity=False)


def _bundle(checkpoint, out, parity: bool = False, **options):
    from llava_edge.export.bundle_export import ExportOptions, export_bundle

    options = {"vision_precisions": ("fp32", "int8"), "llm_quants": ("F16", "Q4_K_M"),
               **options}
    export_bundle(checkpoint, out, ExportOptions(parity=parity, **options))
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory):
    """`tiny` as a bundle: fp32 + int8 vision graphs, F16 + Q4_K_M GGUFs (no LLM parity)."""
    return _bundle(tiny_checkpoint, tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def tiny_qwen2_bundle(tiny_qwen2_checkpoint, tmp_path_factory):
    """`tiny-qwen2` as a bundle, like ``tiny_bundle``."""
    return _bundle(tiny_qwen2_checkpoint, tmp_path_factory.mktemp("bundle") / "tiny-qwen2")


@pytest.fixture(scope="session")
def siglip_mmproj_bundle(tiny_qwen2_checkpoint, tmp_path_factory):
    """`tiny-qwen2` (a SigLIP tower) with an mmproj whose parity with PyTorch was measured
    at export: fp32 vision, F16 GGUF."""
    return _bundle(tiny_qwen2_checkpoint, tmp_path_factory.mktemp("mtmd") / "siglip",
                   parity=True, vision_precisions=("fp32",), llm_quants=("F16",), mmproj=True)


@pytest.fixture(scope="session")
def clip_mmproj_bundle(tiny_checkpoint, tmp_path_factory):
    """`tiny` (a CLIP tower) like ``siglip_mmproj_bundle``."""
    return _bundle(tiny_checkpoint, tmp_path_factory.mktemp("mtmd") / "clip",
                   parity=True, vision_precisions=("fp32",), llm_quants=("F16",), mmproj=True)


@pytest.fixture(scope="session")
def tiny_next_bundle(tiny_next_checkpoint, tmp_path_factory):
    """`tiny-next` as a bundle: fp32 + int8 per-view vision graphs, F16 + Q4_K_M GGUFs,
    ``image_newline.npy`` and the manifest's ``anyres`` section, with the LLM's parity
    figures (measured on a 96x64 image: a 1x2 grid, one padded feature column cut on
    each side, 44 image positions)."""
    return _bundle(tiny_next_checkpoint, tmp_path_factory.mktemp("bundle") / "tiny-next",
                   parity=True)


@pytest.fixture
def old_int8_bundle(tiny_bundle, tmp_path):
    """A copy of ``tiny_bundle`` as llava-edge wrote it before 7-bit int8 weights: its int8
    graph's manifest entry has no ``reduce_range`` (the graph itself is unchanged)."""
    import json
    import shutil

    bundle = tmp_path / "old-bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    next(v for v in manifest["vision"] if v["precision"] == "int8")["method"].pop("reduce_range")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle
