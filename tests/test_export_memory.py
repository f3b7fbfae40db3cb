"""benchmarks.export_memory: the sampler that located the export's peak RSS (ac64e74)."""

from benchmarks.export_memory import rss_mb, trace
from llava_edge.export.bundle_export import ExportOptions, export_bundle


def test_trace_samples_rss_and_names_the_export_stage(tiny_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    options = ExportOptions(vision_precisions=("fp32",), llm_quants=("F16",), parity=False)
    result, samples = trace(lambda: export_bundle(tiny_checkpoint, out, options),
                            interval_s=0.05)
    assert (out / "manifest.json").is_file() and result is not None
    assert len(samples) >= 2
    seconds = [s[0] for s in samples]
    assert seconds == sorted(seconds)
    assert all(rss > 0 for _, rss, _ in samples)
    # the frames are llava-edge's own ("module:function"), and name the export's stages
    staged = [frames for _, _, frames in samples if frames]
    assert staged, "no sample caught the export running"
    assert all(f.startswith("llava_edge.") and ":" in f for frames in staged for f in frames)
    assert any(f.startswith("llava_edge.export.") for frames in staged for f in frames)


def test_rss_is_this_process():
    import numpy as np

    before = rss_mb()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, touched
    assert rss_mb() - before >= 48
    del block
