"""LLaVA-NeXT from a clean start, through the commands a user runs: init tiny-next ->
data -> stage 1 -> stage 2 -> export --int4 with the exact pair -> run / chat / embed ->
bench-tiling; the trained model's exact pair answers as transformers.generate does."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from llava_edge.cli import run


@pytest.mark.slow
def test_tiny_next_from_init_to_bench(tmp_path, capsys):
    import torch
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    from llava_edge.runtimes.pipeline import LlavaEdge

    ckpt, data, bundle = tmp_path / "ckpt", tmp_path / "data", tmp_path / "bundle"
    assert run(["init", "--preset", "tiny-next", str(ckpt)]) == 0
    assert run(["data", "shapes", str(data), "--n-train", "16", "--n-eval", "4"]) == 0
    common = ["--image-folder", str(data / "images"), "--max-steps", "3",
              "--global-batch-size", "4", "--micro-batch-size", "2", "--save-steps", "0"]
    assert run(["train", "--stage", "1", "--model", str(ckpt), "--data",
                str(data / "stage1_captions.json"), "--output-dir", str(tmp_path / "s1"),
                *common]) == 0
    assert run(["train", "--stage", "2", "--model", str(tmp_path / "s1"), "--data",
                str(data / "stage2_instruct.json"), "--output-dir", str(tmp_path / "s2"),
                "--recipe", "llava-next", *common]) == 0
    capsys.readouterr()
    assert run(["export", str(tmp_path / "s2"), "-o", str(bundle), "--int4",
                "--vision-precision", "fp32", "--llm-quant", "F16", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["anyres"]["strategy"] == "default"
    assert {v["precision"] for v in manifest["vision"]} >= {"fp32"}
    assert {e["quant"] for e in manifest["llm"]} == {"F16", "Q4_K_M"}

    # the trained model's exact pair against transformers on a wide and a tall image
    hf = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "s2").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "s2")
    rng = np.random.default_rng(0)
    with LlavaEdge.load(bundle, vision_precision="fp32", llm_quant="F16", n_threads=1) as model:
        for size in ((150, 50), (40, 120)):
            image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), np.uint8))
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": "What is it?"}]}]
            text = processor.apply_chat_template(messages, add_generation_prompt=True)
            inputs = processor(images=image, text=text, return_tensors="pt")
            with torch.no_grad():
                out = hf.generate(**inputs, max_new_tokens=8, do_sample=False, min_new_tokens=8)
            expected = out[0, inputs["input_ids"].shape[1]:].tolist()
            answer = model.ask(image, "What is it?", max_new_tokens=8)
            assert answer.n_prompt_tokens == inputs["input_ids"].shape[1]
            assert answer.tokens == expected[: len(answer.tokens)]
        chat = model.chat(max_new_tokens=3)
        assert chat.ask("Describe it.", image=image).n_tokens >= 0
        assert chat.ask("And then?").n_prompt_tokens > answer.n_prompt_tokens

    image_file = tmp_path / "wide.png"
    Image.fromarray(rng.integers(0, 256, (50, 150, 3), np.uint8)).save(image_file)
    assert run(["run", str(bundle), "--image", str(image_file), "--prompt", "What is it?",
                "--max-new-tokens", "4", "--max-tiles", "3"]) == 0
    assert run(["embed", str(bundle), "--image", str(image_file), "--out",
                str(tmp_path / "e.npy")]) == 0
    assert run(["bench-tiling", str(bundle), "--max-tiles", "1,none", "--repeats", "1",
                "--threads", "1"]) == 0
    assert "base only" in capsys.readouterr().out
