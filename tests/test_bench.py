"""``llava-edge bench``: the matrix, the report's schema and targets, and a smoke run on
the tiny preset (real ONNX Runtime, llama.cpp and transformers, every configuration in
its own process). Speeds are never asserted here: they belong to the results."""

from __future__ import annotations

import json

import pytest

from llava_edge.benchmarks import analysis, configs, report
from llava_edge.benchmarks.measure import Sample, memory_status, summarize
from llava_edge.benchmarks.run import bf16_available as _bf16_available
from llava_edge.errors import LlavaEdgeError
from manifests import make_manifest


def _manifest(vision=("int4", "fp32", "fp16", "int8"), llm=("Q4_K_M", "F16", "Q8_0", "Q4_0"),
              mmproj=True):
    return make_manifest(vision, llm, mmproj)


def _names(cs) -> list[str]:
    return [c.name for c in cs]


def test_axes_matrix_varies_one_half_at_a_time_around_the_default():
    chosen, skipped = configs.select(_manifest(), None, None, peers=True)
    assert chosen[0].name == "llava-edge int4+Q4_K_M" and chosen[0].default
    assert sum(c.default for c in chosen) == 1
    # Default, then the peers (a stopped run has the ratios that matter), then the axes.
    assert _names(chosen) == [
        "llava-edge int4+Q4_K_M", "transformers torch+torch", "llama.cpp-llava mtmd+Q4_K_M",
        "llama.cpp-raw -+Q4_K_M", "llava-edge torch+Q4_K_M", "llava-edge fp32+Q4_K_M",
        "llava-edge fp16+Q4_K_M", "llava-edge int8+Q4_K_M", "llava-edge int4+F16",
        "llava-edge int4+Q8_0", "llava-edge int4+Q4_0"]
    assert [(s.config.name, s.reason.split(" (")[0]) for s in skipped] == [
        ("llava-edge trt+Q4_K_M", "TensorRT not available here"),
        ("transformers torch-bf16+torch-bf16", "no native bf16 here")]


def test_full_matrix_and_what_cannot_run():
    manifest = _manifest(vision=("int8", "fp32"), llm=("Q4_K_M", "F16"), mmproj=False)
    chosen, skipped = configs.select(manifest, ("fp32", "int4", "torch"), ("F16", "torch"),
                                     peers=True, mode="full", has_checkpoint=False)
    assert _names(chosen) == ["llama.cpp-raw -+Q4_K_M", "llava-edge fp32+F16"]
    reasons = {s.config.name: s.reason for s in skipped}
    assert reasons["llava-edge int4+F16"] == "the bundle has no int4 vision graph"
    assert reasons["llava-edge torch+F16"] == "no checkpoint to run in PyTorch"
    assert "runs only end to end" in reasons["llava-edge fp32+torch"]
    assert reasons["llama.cpp-llava mtmd+Q4_K_M"].startswith("the bundle has no mmproj")
    assert reasons["transformers torch+torch"] == "no checkpoint to run in PyTorch"


def test_bf16_row_runs_only_where_the_machine_has_native_bf16():
    manifest = _manifest()
    chosen, skipped = configs.select(manifest, ("int4",), ("Q4_K_M", "torch", "torch-bf16"),
                                     peers=False, bf16=True)
    assert _names(chosen) == ["llava-edge int4+Q4_K_M", "transformers torch+torch",
                              "transformers torch-bf16+torch-bf16"]
    assert skipped == []
    chosen, skipped = configs.select(manifest, ("int4",), ("Q4_K_M", "torch-bf16"),
                                     peers=False, bf16=False)
    assert _names(chosen) == ["llava-edge int4+Q4_K_M"]
    assert skipped[0].config.name == "transformers torch-bf16+torch-bf16"
    assert skipped[0].reason.startswith("no native bf16 here")
    _, skipped = configs.select(manifest, ("int4",), ("torch-bf16",), peers=False,
                                has_checkpoint=False, bf16=True)
    assert skipped[0].reason == "no checkpoint to run in PyTorch"


def test_7b_presets_skip_fp32_transformers_but_keep_a_bf16_row():
    from llava_edge.benchmarks.run import QUANTIZED_ONLY, drop_fp32_torch

    assert {"llava-1.5-7b", "llava-1.6-mistral-7b"} <= set(QUANTIZED_ONLY)
    chosen, _ = configs.select(_manifest(), ("int4",), ("Q4_K_M", "torch", "torch-bf16"),
                               peers=True, bf16=True)
    kept, skipped = drop_fp32_torch(chosen)
    assert "transformers torch-bf16+torch-bf16" in _names(kept)
    assert "transformers torch+torch" not in _names(kept)
    assert [(s.config.name, s.reason) for s in skipped] == [
        ("transformers torch+torch", "quantized only: the fp32 PyTorch model does not fit")]


def test_vision_flops_count_every_view_of_a_tiled_image(tiny_checkpoint, tiny_next_checkpoint):
    from llava_edge.benchmarks.run import vision_flops

    # the same tower; the 480 px request image becomes a base view + a 2x2 grid on tiny-next
    assert vision_flops(tiny_next_checkpoint) == 5 * vision_flops(tiny_checkpoint) > 0


def test_transformers_peer_answers_on_a_next_checkpoint(tiny_next_checkpoint, tmp_path):
    """The transformers row on a LLaVA-NeXT checkpoint: the tiled image's features (which
    need its size) and the prompt of the processor's length."""
    from llava_edge.benchmarks.measure import Job
    from llava_edge.benchmarks.peers import TransformersRunner
    from llava_edge.benchmarks.run import request_image

    job = Job(config={"kind": "transformers", "vision": "torch", "llm": "torch"}, bundle="",
              checkpoint=str(tiny_next_checkpoint), image=str(request_image(tmp_path)),
              prompt="Describe the image.", max_new_tokens=3, warmup=0, repeats=1,
              threads=1)
    runner = TransformersRunner(job)
    try:
        sample = runner.once()
    finally:
        runner.close()
    # 480 px -> a base view + a 2x2 grid of 64 px tiles: 88 image positions
    assert sample.n_prompt_tokens > 88 and sample.n_tokens == 3
    assert sample.vision_ms > 0 and sample.first_token_ms > sample.vision_ms


def test_parse_list_is_case_insensitive_and_rejects_unknown_names():
    assert configs.parse_list("q4_k_m, F16,f16", configs.LLM_CHOICES, "llm") == ("Q4_K_M", "F16")
    assert configs.parse_list("all", configs.VISION_CHOICES, "vision") is None
    with pytest.raises(LlavaEdgeError, match="unknown vision backend 'int3'"):
        configs.parse_list("int3", configs.VISION_CHOICES, "vision backend")


def test_samples_summarize_to_median_and_p90():
    samples = [Sample(first_token_ms=float(ms), total_ms=100.0 + ms, n_tokens=11,
                      decode_ms=50.0).to_dict() for ms in (10, 20, 30, 40, 50)]
    assert samples[0]["decode_tok_s"] == pytest.approx(200.0)  # 10 steps in 50 ms
    s = summarize(samples)
    assert s["first_token_ms"]["median"] == 30 and s["first_token_ms"]["p90"] == 46
    assert s["vision_ms"] is None and s["n_tokens"]["n"] == 5
    assert Sample(first_token_ms=1, total_ms=1, n_tokens=1, decode_ms=0).decode_tok_s is None


def test_peak_rss_is_read_from_proc():
    mem = memory_status()
    assert mem["peak_rss_mb"] >= mem["rss_mb"] > 10


def _result(kind, first_ms, tok_s, rss=None, disk=None, default=False):
    samples = [{"first_token_ms": first_ms, "decode_tok_s": tok_s, "total_ms": 2 * first_ms}]
    llm = "torch" if kind == "transformers" else "y"
    return {"config": {"kind": kind, "vision": "x", "llm": llm, "name": kind,
                       "default": default}, "samples": samples,
            "summary": summarize(samples), "peak_rss_mb": rss, "disk_mb": disk}


def test_targets_say_by_how_much_they_are_missed():
    results = [_result("llava-edge", 100, 50, rss=1000, disk=600, default=True),
               _result("llama.cpp-llava", 150, 52), _result("llama.cpp-raw", 10, 50),
               _result("transformers", 400, 10)]
    by = {t["target"]: t for t in analysis.targets(results)}
    llava = by["time to first token vs llama.cpp's LLaVA path"]
    assert llava["value"] == pytest.approx(2 / 3) and llava["met"] is False
    assert llava["missed_by"] == "1.333x the bound"
    assert by["time to first token vs transformers"]["met"] is True  # 0.25 <= 0.6
    assert by["decode tokens/s vs raw llama.cpp (same GGUF)"]["met"] is True
    assert by["decode tokens/s vs transformers fp32"]["met"] is True  # 5x
    rss = by["peak RSS <= 1.2x loaded files + 300 MB (MB)"]
    assert rss["met"] is True and rss["bound"] == "<= 1020.0"


def test_each_row_is_held_to_raw_llama_cpp_on_its_own_gguf():
    tuned = _result("llava-edge", 80, 40, rss=900, disk=600)
    tuned_raw = _result("llama.cpp-raw", 10, 60)
    tuned["config"]["tuned"] = tuned_raw["config"]["tuned"] = True
    results = [_result("llava-edge", 100, 50, rss=1000, disk=600, default=True), tuned,
               _result("llama.cpp-raw", 10, 50), tuned_raw]
    by = {t["target"]: t for t in analysis.targets(results)}
    assert by["decode tokens/s vs raw llama.cpp (same GGUF)"]["value"] == 1.0
    assert by["tuned: decode tokens/s vs raw llama.cpp (same GGUF)"]["value"] == \
        pytest.approx(40 / 60)
    # a run without the tuned raw row leaves the tuned ratio unmeasured, not compared
    # with the default GGUF's
    by = {t["target"]: t for t in analysis.targets(results[:3])}
    assert by["tuned: decode tokens/s vs raw llama.cpp (same GGUF)"]["value"] is None


def test_targets_compare_with_the_fp32_transformers_peer_not_its_bf16_row():
    bf16 = _result("transformers", 100, 40)
    bf16["config"]["llm"] = "torch-bf16"
    fp32 = _result("transformers", 400, 10)
    fp32["config"]["llm"] = "torch"
    results = [_result("llava-edge", 100, 50, rss=1000, disk=600, default=True), bf16, fp32]
    by = {t["target"]: t for t in analysis.targets(results)}
    assert by["time to first token vs transformers"]["value"] == pytest.approx(0.25)
    assert by["decode tokens/s vs transformers fp32"]["value"] == pytest.approx(5.0)


def test_targets_without_peers_are_not_measured():
    out = analysis.targets([_result("llava-edge", 100, 50, rss=10, disk=5, default=True)])
    assert [t["met"] for t in out] == [None, None, None, None, True]


def test_check_report_names_what_is_missing():
    with pytest.raises(report.ReportError, match="missing 'limits'.*no configuration"):
        report.check_report({"schema": report.SCHEMA, "results": []})
    failed = {k: {} for k in report.TOP_KEYS} | {
        "schema": report.SCHEMA, "settings": {"repeats": 1},
        "results": [{"config": {"name": "a"}, "error": "exit code 1: boom"}]}
    with pytest.raises(report.ReportError, match="a: failed \\(exit code 1: boom\\)"):
        report.check_report(failed)


def test_bench_refuses_bad_input_with_one_line(tmp_path, capsys):
    from llava_edge.cli import run

    work = ["--work-dir", str(tmp_path)]
    assert run(["bench", *work]) == 1
    assert "give --preset or --bundle" in capsys.readouterr().err
    assert run(["bench", "--preset", "tiny", "--vision", "int3", *work]) == 1
    assert capsys.readouterr().err.strip() == (
        "Error: unknown vision backend 'int3' (choose from: torch, fp32, fp16, int8, int4, trt)")
    assert run(["bench", "--preset", "huge", *work]) == 1
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before building anything


@pytest.mark.slow
def test_bench_on_tiny_writes_every_configuration(tmp_path):
    """The CI smoke run: the whole tiny matrix with its peers, then the report's schema."""
    from llava_edge.cli import run

    out = tmp_path / "results"
    code = run(["bench", "--preset", "tiny", "--threads", "1", "--repeats", "5",
                "--warmup", "1", "--max-new-tokens", "8", "--work-dir", str(tmp_path / "work"),
                "--out", str(out), "--gemm-size", "128", "--bandwidth-mb", "16",
                "--note", "CI smoke run", "--json"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(report.FILES)
    data = json.loads((out / "results.json").read_text())
    report.check_report(data)
    assert data["preset"] == "tiny" and data["weights"].startswith("random")
    assert data["settings"]["threads"] == 1 and data["machine"]["threads_used"] == 1
    assert data["command"].startswith("llava-edge bench --preset tiny")
    assert "--threads 1" in data["command"]
    assert data["versions"]["llama_cpp_python"] and data["versions"]["onnxruntime"]
    assert data["limits"]["bandwidth"]["gb_s"] > 0 and data["limits"]["gemm"]["peak_gflops"] > 0
    assert data["limits"]["vision_flops_per_image"] > 0
    kinds = {r["config"]["kind"] for r in data["results"]}
    assert kinds == {"llava-edge", "transformers", "llama.cpp-llava", "llama.cpp-raw"}
    cells = {(r["config"]["vision"], r["config"]["llm"]) for r in data["results"]}
    assert {("int4", "Q4_K_M"), ("torch", "Q4_K_M"), ("fp32", "Q4_K_M"), ("fp16", "Q4_K_M"),
            ("int8", "Q4_K_M"), ("int4", "F16"), ("int4", "Q8_0"), ("int4", "Q4_0"),
            ("torch", "torch")} <= cells
    bf16 = ("torch-bf16", "torch-bf16")
    if _bf16_available():  # a bf16 transformers row where the CPU has native bf16
        assert bf16 in cells
    else:
        assert any(s["llm"] == "torch-bf16" and s["reason"].startswith("no native bf16")
                   for s in data["skipped"])
    for r in data["results"]:
        name, s = r["config"]["name"], r["summary"]
        assert len(r["samples"]) == 5 and len(r["warmup_samples"]) == 1, name
        assert r["load_ms"] > 0 and r["peak_rss_mb"] > 0 and r["disk_mb"] > 0, name
        assert s["first_token_ms"]["median"] > 0 and s["total_ms"]["p90"] > 0, name
        if r["config"]["kind"] in ("llava-edge", "transformers"):
            for stage in ("preprocess_ms", "vision_ms", "prefill_ms"):
                assert s[stage]["median"] > 0, (name, stage)
        if s["n_tokens"]["median"] >= 2:
            assert s["decode_tok_s"]["median"] > 0, name
        assert r["derived"]["decode_bytes_per_token"]["total"] > 0, name
    raw = next(r for r in data["results"] if r["config"]["kind"] == "llama.cpp-raw")
    assert raw["summary"]["n_tokens"]["median"] == 8  # raw decode never stops early
    default = data["results"][0]
    assert default["config"]["default"] and default["derived"]["first_token_ms_x_default"] == 1
    assert len(data["targets"]) == 5 and all(t["value"] is not None for t in data["targets"])
    table = (out / "results.md").read_text()
    assert "| llava-edge int4+Q4_K_M **(default)** |" in table and "random" in table
    assert "CI smoke run" in table
    for png in ("latency.png", "roofline.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
