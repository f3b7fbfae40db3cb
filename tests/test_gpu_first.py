"""GPU-first defaults, checked on a machine without a GPU: "auto" offload resolves to what
llama.cpp reports, the runtime options reach the model, and each answer says where its
stages ran. (The GPU paths themselves need a GPU; see issue #21.)"""

from __future__ import annotations

import json

import llama_cpp
import pytest

from llava_edge.cli import run
from llava_edge.errors import LlavaEdgeError
from llava_edge.runtimes.llama_cpp_lm import gpu_layers
from llava_edge.runtimes.pipeline import LlavaEdge
from scene_images import scene


def test_auto_offload_follows_what_llama_cpp_reports(monkeypatch):
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)
    assert gpu_layers("auto") == gpu_layers(None) == 0
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    assert gpu_layers("auto") == 999
    assert gpu_layers(12) == gpu_layers("12") == 12
    for bad in (-1, "many"):
        with pytest.raises(LlavaEdgeError, match="n_gpu_layers"):
            gpu_layers(bad)


def test_answers_say_where_each_stage_ran(tiny_bundle):
    with LlavaEdge.load(tiny_bundle, tune=False) as model:
        assert model.settings.n_gpu_layers == "auto" and model.llm.n_gpu_layers == 0
        t = model.ask(None, "Hello", max_new_tokens=2).timings
        assert (t.vision_on, t.llm_on) == ("CPU", "CPU")


def test_run_takes_the_runtime_options(tiny_bundle, tmp_path, capsys):
    image = tmp_path / "scene.png"
    scene(0).save(image)
    assert run(["run", str(tiny_bundle), "--image", str(image), "--prompt", "What is it?",
                "--max-new-tokens", "3", "--gpu-layers", "auto", "--providers", "cpu",
                "--flash-attn", "--kv-type", "q8_0", "--no-repack", "--no-tune",
                "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["timings_ms"]["vision_on"] == "CPU" and out["timings_ms"]["llm_on"] == "CPU"


@pytest.mark.parametrize("args, code, message", [
    (["--gpu-layers", "lots"], 1, "give a number of layers >= 0 or 'auto'"),
    (["--kv-type", "q8_0"], 1, "needs flash attention"),
    (["--providers", "cuda"], 1, "CUDAExecutionProvider not available here"),
])
def test_runtime_options_refuse_what_cannot_run_here(tiny_bundle, tmp_path, capsys, args,
                                                     code, message):
    image = tmp_path / "scene.png"
    scene(0).save(image)
    assert run(["run", str(tiny_bundle), "--image", str(image), "--prompt", "Hi",
                "--no-tune", *args]) == code
    assert message in capsys.readouterr().err


def test_bench_takes_the_offload_for_every_llama_cpp_row(tiny_bundle, tiny_checkpoint,
                                                         tmp_path):
    """`bench --gpu-layers/--providers` reach llava-edge's rows and the peers (llama.cpp
    with the same offload, transformers on CUDA only when llama.cpp offloads) and are
    recorded with the results; every row runs with them on this GPU-less machine."""
    out = tmp_path / "results"
    assert run(["bench", "--bundle", str(tiny_bundle), "--checkpoint", str(tiny_checkpoint),
                "--vision", "fp32", "--llm", "F16", "--no-tuned", "--threads", "1",
                "--repeats", "1", "--warmup", "0", "--max-new-tokens", "2",
                "--gpu-layers", "0", "--providers", "cpu",
                "--work-dir", str(tmp_path / "work"), "--out", str(out),
                "--gemm-size", "128", "--bandwidth-mb", "16", "--json"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["n_gpu_layers"] == 0 and data["settings"]["providers"] == "cpu"
    rows = {r["config"]["kind"]: r for r in data["results"]}
    # (llama.cpp's LLaVA path needs an mmproj, which the tiny bundle does not have)
    assert {"llava-edge", "transformers", "llama.cpp-raw"} <= set(rows)
    assert all("error" not in r for r in rows.values())
    assert any("on cpu" in n for n in rows["transformers"]["notes"])


def test_peers_ask_llama_cpp_for_the_same_offload(monkeypatch, tmp_path):
    from llava_edge.benchmarks import peers
    from llava_edge.benchmarks.measure import Job

    seen = {}
    monkeypatch.setattr(llama_cpp, "Llama", lambda **kw: seen.update(kw))
    job = Job(config={}, bundle="", checkpoint=None, image="", prompt="", max_new_tokens=2,
              warmup=0, repeats=1, threads=1, n_gpu_layers=7)
    peers._llama(job, tmp_path / "m.gguf")
    assert seen["n_gpu_layers"] == 7
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    peers._llama(Job.from_dict({**job.__dict__, "n_gpu_layers": "auto"}), tmp_path / "m.gguf")
    assert seen["n_gpu_layers"] == 999


def test_demo_loads_every_pair_with_its_offload(monkeypatch, tmp_path, capsys):
    from llava_edge import demo

    seen = []
    monkeypatch.setattr(LlavaEdge, "load", classmethod(lambda cls, *a, **kw: seen.append(kw)))
    config = demo.DemoConfig(workdir=tmp_path, n_gpu_layers=0, providers="cpu")
    demo._load(tmp_path, demo.DEFAULT_PAIR, config)
    assert seen[0]["n_gpu_layers"] == 0 and seen[0]["providers"] == "cpu"
    assert seen[0]["tune"] is False  # the demo measures the pairs as exported
    assert run(["demo", "--workdir", str(tmp_path / "d"), "--gpu-layers", "lots"]) == 1
    assert "give a number of layers >= 0 or 'auto'" in capsys.readouterr().err
