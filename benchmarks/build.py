"""A preset's checkpoint and bundle for the benchmarks, built once under a work folder.

Every benchmark that starts from a preset (``llava-edge bench``, ``bench-vision``,
``bench-reuse``, ``bench-serve-load``) goes through here: the checkpoint (random weights)
is written to ``WORK/<preset>/checkpoint`` and the bundle to ``WORK/<preset>/bundle``,
and both are reused by later runs as long as they are complete and hold what is asked.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable

Say = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_checkpoint(preset: str, work_dir: str | Path, say: Say = _stderr) -> Path:
    """``WORK/<preset>/checkpoint``, built from the preset (random weights) unless a
    complete one is there already. An unknown preset is refused before anything is built."""
    from llava_edge.presets import get_preset

    spec = get_preset(preset)
    ckpt = Path(work_dir) / preset / "checkpoint"
    if not (ckpt / "config.json").is_file():
        from llava_edge.trainer.init_checkpoint import build_checkpoint

        say(f"building preset {preset} (random weights) in {ckpt} ...")
        build_checkpoint(spec, ckpt, overwrite=True)
    return ckpt


def ensure_bundle(preset: str, work_dir: str | Path, vision: Iterable[str] = ("fp32",),
                  llm: Iterable[str] = ("F16",), mmproj: bool = False, parity: bool = False,
                  say: Say = _stderr, purpose: str = "building a preset's bundle",
                  ) -> tuple[Path, Path]:
    """The preset's checkpoint and a bundle exported from it, under ``work_dir``:
    ``(checkpoint_path, bundle_path)``. The bundle holds the ``vision`` precisions and
    ``llm`` quants (the first of each is its default) and, with ``mmproj``, llama.cpp's
    projector. A bundle made before is reused when it is complete (every file of its
    manifest, at its size) and holds all of that with the same defaults; otherwise it is
    exported again (variants under their parity gate are written too: the benchmarks
    measure latency)."""
    from llava_edge.errors import require_extra
    from llava_edge.presets import get_preset

    get_preset(preset)  # an unknown preset: refused before anything is built
    vision, llm = tuple(dict.fromkeys(vision)), tuple(dict.fromkeys(llm))
    root = Path(work_dir) / preset
    ckpt, bundle = root / "checkpoint", root / "bundle"
    if (ckpt / "config.json").is_file() and bundle_has(bundle, vision, llm, mmproj):
        return ckpt, bundle
    require_extra("export", purpose, "torch", "transformers", "onnx", "gguf")
    from llava_edge.export.bundle_export import ExportOptions, export_bundle

    ensure_checkpoint(preset, work_dir, say)
    say(f"exporting the bundle to {bundle} ...")
    options = ExportOptions(vision_precisions=vision, llm_quants=llm, mmproj=mmproj,
                            allow_degraded=True, parity=parity)
    export_bundle(ckpt, bundle, options, overwrite=True)
    return ckpt, bundle


def bundle_has(bundle: Path, vision: tuple[str, ...], llm: tuple[str, ...],
               mmproj: bool) -> bool:
    """Whether a bundle built before holds every graph, GGUF (and mmproj) asked for, with
    ``vision[0]`` and ``llm[0]`` as its defaults (an incomplete or altered one is not)."""
    from llava_edge.bundle import open_bundle
    from llava_edge.errors import BundleError

    try:
        m = open_bundle(bundle, verify="size").manifest
    except BundleError:
        return False
    return (set(vision) <= set(m.vision_precisions) and set(llm) <= set(m.llm_quants)
            and (m.mmproj is not None or not mmproj)
            and m.defaults.get("vision") == vision[0] and m.defaults.get("llm") == llm[0])


def mmproj_possible(preset: str) -> bool:
    """llama.cpp's LLaVA graph has no equivalent for SigLIP + ``default`` or CLIP +
    ``full`` (see export/mmproj.py); such presets run without that peer."""
    from llava_edge.presets import get_preset

    spec = get_preset(preset)
    return (spec.vision.kind, spec.vision_feature_select_strategy) in (
        ("clip", "default"), ("siglip", "full"))
