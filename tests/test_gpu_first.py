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
