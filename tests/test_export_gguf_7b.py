"""7B language models: converting one streams (peak memory far below its fp16 size), and
LLaVA-1.6-Mistral-7B's dims go through the whole ``--int4`` export and answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from disk import require_free_disk

from llava_edge.runtimes.gguf_check import check_gguf

# Runs in a fresh interpreter so that its peak RSS is the converter's alone. The peak is
# VmHWM: ru_maxrss would carry over the (large) RSS of the pytest process it forked from.
_CONVERT = """
import json, sys, time
start = time.time()
from llava_edge.export.gguf_writer import write_llm_gguf
written = write_llm_gguf(sys.argv[1], sys.argv[2], "F16")
with open("/proc/self/status") as status:
    hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_bytes": hwm_kb * 1024, "seconds": time.time() - start,
                  "size_bytes": written.size_bytes}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("preset", ["llava-1.5-7b"])
def test_7b_converts_in_a_fraction_of_its_size(tmp_path, preset):
    from llava_edge.export.gguf_tensors import SafetensorsCheckpoint, find_llm_prefixes
    from llava_edge.presets import get_preset
    from llava_edge.runtimes.llama_cpp_lm import LlamaCppLM
    from llava_edge.trainer.init_checkpoint import build_checkpoint

    # the fp16 checkpoint (13.5 / 15.1 GB) and its fp16 GGUF (13.5 / 14.5 GB) side by side
    require_free_disk(tmp_path, 31, f"{preset}'s checkpoint and F16 GGUF")
    ckpt = tmp_path / "ckpt"
    out = tmp_path / "llm-F16.gguf"
    try:
        ckpt = build_checkpoint(get_preset(preset), ckpt).path
        weights = SafetensorsCheckpoint(ckpt)
        decoder, head = find_llm_prefixes(weights.names())
        llm_bytes = 0
        for name in weights.names():
            if name.startswith((decoder, head)):
                shape, dtype = weights.info(name)
                assert dtype == "F16"
                n = 1
                for d in shape:
                    n *= d
                llm_bytes += 2 * n
        done = subprocess.run([sys.executable, "-c", _CONVERT, str(ckpt), str(out)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]  # e.g. a full disk: ~25 GB needed
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"\n{preset} F16 conversion: peak RSS {measured['peak_rss_bytes'] / 2**30:.2f} GiB for "
              f"{llm_bytes / 2**30:.2f} GiB of fp16 weights, {measured['seconds']:.0f} s")
        assert measured["peak_rss_bytes"] < 0.15 * llm_bytes  # measured: ~0.6 GiB of 12.6
        info = check_gguf(out, architectures=("llama",))
        assert info.n_tensors == 291 and info.metadata["llama.block_count"] == 32
        assert abs(measured["size_bytes"] - llm_bytes) < 0.01 * llm_bytes
        image_id = json.loads((ckpt / "config.json").read_text())["image_token_index"]
        with LlamaCppLM(out, n_ctx=64) as lm:  # llama.cpp accepts the file (mmap, no decode)
            assert (lm.n_vocab, lm.n_embd) == (32064, 4096)
            assert lm.tokenize("<image>") == [lm.bos_token, image_id]
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
        out.unlink(missing_ok=True)


def _check_next_positions(ckpt) -> None:
    """LLaVA-1.6's real grid: the runtime's plan gives the HF processor's position count
    for images of several shapes (up to 2,928 positions: 2x2 tiles of 336 px)."""
    from PIL import Image
    from transformers import AutoProcessor

    from llava_edge.runtimes.anyres import AnyresPlan

    config = json.loads((ckpt / "config.json").read_text())
    processor = AutoProcessor.from_pretrained(ckpt)
    image_id = config["image_token_index"]
    for size in ((672, 672), (1008, 336), (336, 1008), (800, 600), (37, 500)):
        image = Image.new("RGB", size, (120, 130, 140))
        ids = processor(images=image, text="<image>", return_tensors="np")["input_ids"][0]
        plan = AnyresPlan.from_hf_config(config, (size[1], size[0]))
        assert plan.n_positions == int((ids == image_id).sum()), size
    assert AnyresPlan.from_hf_config(config, (672, 672)).n_positions == 2928


# A folder to keep the large builds in (and reuse them from) instead of the test's tmp
# folder: `llava-edge bench --preset llava-1.6-mistral-7b --work-dir` the same folder
# then measures the bundle this test made.
KEEP_ENV = "LLAVA_EDGE_KEEP_LARGE"


@pytest.mark.slow
def test_llava_1_6_mistral_7b_int4_bundle_exports_and_answers(tmp_path):
    """The 7B-dims LLaVA-NeXT (random weights) through `export --int4` as the benchmark
    builds it (the int4 per-view graph with its parity on tiled images, Q4_K_M, the NeXT
    mmproj), then one tiled request through the runtime: the prompt takes the processor's
    positions and the answer comes back. About 17 minutes on 2 cores (measured: the
    vision export with its parity on 37 views 7 min, the F16 conversion 2 min, Q4_K_M 4
    min, the answer about 1.5 min), peak RSS 13.6 GB."""
    from PIL import Image

    from llava_edge.benchmarks.build import bundle_has, ensure_bundle
    from llava_edge.bundle import open_bundle
    from llava_edge.presets import get_preset
    from llava_edge.runtimes.anyres import AnyresPlan
    from llava_edge.runtimes.pipeline import LlavaEdge

    preset, vision, llm = "llava-1.6-mistral-7b", ("int4",), ("Q4_K_M",)  # = export --int4
    keep = os.environ.get(KEEP_ENV)
    work = Path(keep) if keep else tmp_path
    if not bundle_has(work / preset / "bundle", vision, llm, mmproj=True):
        # checkpoint (15.1 GB), the F16 GGUF the quantizer reads (14.5 GB), Q4_K_M (4.4 GB)
        require_free_disk(work, 36, f"{preset}'s checkpoint, F16 and Q4_K_M GGUFs")
    try:
        ckpt, bundle = ensure_bundle(preset, work, vision=vision, llm=llm, mmproj=True,
                                     say=print, purpose="the 7B LLaVA-NeXT export test")
        _check_next_positions(ckpt)
        m = open_bundle(bundle, verify="size").manifest
        spec = get_preset(preset)
        assert m.anyres is not None and m.anyres.pinpoints == spec.image_grid_pinpoints
        assert (m.anyres.tile_size, m.anyres.patch_size, m.image.n_tokens, m.image.n_embd) \
            == (336, 14, 576, 4096)
        assert m.defaults == {"vision": "int4", "llm": "Q4_K_M"}
        for graph in m.vision:
            # measured per view and on the packed rows of tiled images
            assert graph.parity and isinstance(graph.passed, bool), graph.precision
        q4 = m.llm_entry("Q4_K_M")
        assert 3.8e9 < q4.size < 4.8e9  # 7.2B weights at ~4.8 bits
        assert m.mmproj is not None
        assert not any(f.startswith("llm-F16") for f in m.files)  # the F16 was a step only

        config = json.loads((ckpt / "config.json").read_text())
        image = Image.new("RGB", (672, 336), (90, 140, 200))  # a 1x2 grid, nothing to unpad
        with LlavaEdge.load(bundle, n_threads=2, max_tiles=3) as model:
            answer = model.ask(image, "Describe the image.", max_new_tokens=3)
            n_image = AnyresPlan.from_hf_config(config, (336, 672)).n_positions
            n_text = len(model.prompt_ids("Describe the image.", 1)) - 1
        assert n_image == 576 * 3 + 24  # base + two tiles + a newline per feature row
        assert answer.n_prompt_tokens == n_text + n_image
        assert len(answer.tokens) == 3 or answer.stop_reason == "eos"
        assert answer.timings.vision_ms > 0 and answer.timings.prefill_ms > 0
    finally:
        if not keep:
            shutil.rmtree(work / preset, ignore_errors=True)
