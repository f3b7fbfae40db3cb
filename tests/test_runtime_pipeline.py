"""The runtime end to end: bundle -> preprocess -> ONNX vision -> llama.cpp -> answer,
checked against PyTorch, without torch on the path, and robust to bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from llava_edge.errors import ImageError, PromptError
from llava_edge.runtimes.pipeline import LlavaEdge
from scene_images import scene


@pytest.fixture(scope="module")
def tiny_model(tiny_bundle):
    with LlavaEdge.load(tiny_bundle, vision_precision="fp32", llm_quant="F16",
                        n_threads=1) as model:
        yield model


def _hf_inputs(checkpoint, image, prompt):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=image, text=text, return_tensors="pt")


@pytest.mark.parametrize("ckpt, bundle", [("tiny_checkpoint", "tiny_bundle"),
                                          ("tiny_qwen2_checkpoint", "tiny_qwen2_bundle")])
def test_prompt_ids_equal_hf_processor_with_image_run_collapsed(ckpt, bundle, request):
    checkpoint, bundle_dir = request.getfixturevalue(ckpt), request.getfixturevalue(bundle)
    prompt = "What colour is the square?  Answer in one word: red, green 123 ok."
    hf_ids = _hf_inputs(checkpoint, scene(), prompt)["input_ids"][0].tolist()
    with LlavaEdge.load(bundle_dir, n_threads=1) as model:
        ids = model.prompt_ids(prompt, n_images=1)
        image_id = model.image_token_id
    collapsed = [t for i, t in enumerate(hf_ids)
                 if not (t == image_id and i > 0 and hf_ids[i - 1] == image_id)]
    assert ids == collapsed
    assert hf_ids.count(image_id) == 16 and ids.count(image_id) == 1


def test_greedy_answer_equals_pytorch_generate(tiny_checkpoint, tiny_model):
    import torch
    from transformers import LlavaForConditionalGeneration

    image, prompt, n = scene(3), "Describe the image.", 24
    hf = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint)
    inputs = _hf_inputs(tiny_checkpoint, image, prompt)
    with torch.no_grad():
        out = hf.generate(**inputs, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    torch_tokens = out[0, inputs["input_ids"].shape[1]:].tolist()

    answer = tiny_model.ask(image, prompt, max_new_tokens=n)
    assert answer.tokens == torch_tokens[: len(answer.tokens)]
    assert len(answer.tokens) == n or answer.stop_reason == "eos"
    t = answer.timings
    assert t.total_ms >= t.prefill_ms > 0 and t.vision_ms > 0 and t.first_token_ms > 0


def test_image_embeddings_match_pytorch(tiny_checkpoint, tiny_model):
    import torch
    from transformers import LlavaForConditionalGeneration

    image = scene(5)
    hf = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint)
    pixels = _hf_inputs(tiny_checkpoint, image, "x")["pixel_values"]
    with torch.no_grad():
        ref = hf.get_image_features(pixel_values=pixels)
    ref = getattr(ref, "pooler_output", ref)
    ref = (torch.cat(list(ref)) if isinstance(ref, (list, tuple)) else ref).reshape(16, -1).numpy()
    ours = tiny_model.embed(image)
    cos = (ours * ref).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.99999 and np.abs(ours - ref).max() < 1e-4


def test_inputs_of_every_kind_and_sampling(tiny_model, tmp_path):
    img = scene(7)
    path = tmp_path / "x.png"
    img.save(path)
    answers = {tiny_model.ask(x, "What is it?", max_new_tokens=6).text
               for x in (img, path, str(path), path.read_bytes(), np.asarray(img))}
    assert len(answers) == 1
    a = tiny_model.ask(img, "What is it?", max_new_tokens=12, temperature=1.0, seed=1)
    b = tiny_model.ask(img, "What is it?", max_new_tokens=12, temperature=1.0, seed=1)
    assert a.tokens == b.tokens


def test_text_only_and_two_images(tiny_model):
    assert tiny_model.ask(None, "How many sides has a square?", max_new_tokens=4).n_tokens >= 1
    two = tiny_model.ask([scene(1), scene(2)], "<image> or <image>?", max_new_tokens=4)
    assert two.n_prompt_tokens > 32


def test_bad_requests_fail_clearly_and_the_next_one_works(tiny_model, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="corrupt.jpg: not a readable image"):
        tiny_model.ask(corrupt, "What is it?")
    with pytest.raises(PromptError, match="prompt is empty"):
        tiny_model.ask(scene(), "   ")
    with pytest.raises(PromptError, match="2 <image> marker.*1 image"):
        tiny_model.ask(scene(), "<image> and <image>")
    with pytest.raises(PromptError, match="more than the context"):
        tiny_model.ask(scene(), "word " * 2000)
    tiny_model.max_pixels = 1000
    with pytest.raises(ImageError, match="over the limit"):
        tiny_model.ask(scene(), "What is it?")
    tiny_model.max_pixels = 64_000_000
    assert tiny_model.ask(scene(), "What is it?", max_new_tokens=3).n_tokens >= 1


def test_ask_does_not_import_torch(tiny_bundle, tmp_path):
    scene().save(tmp_path / "img.png")
    script = textwrap.dedent(f"""
        import json, sys
        from llava_edge import LlavaEdge
        model = LlavaEdge.load({str(tiny_bundle)!r}, n_threads=1)
        answer = model.ask({str(tmp_path / 'img.png')!r}, "What is it?", max_new_tokens=4)
        print(json.dumps({{"torch": "torch" in sys.modules,
                           "transformers": "transformers" in sys.modules,
                           "n": answer.n_tokens}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "transformers": False, "n": result["n"]}
    assert result["n"] >= 1


def test_cli_run_and_embed(tiny_bundle, tmp_path):
    scene().save(tmp_path / "img.png")

    def llava_edge(*args):
        return subprocess.run([sys.executable, "-m", "llava_edge", *args],
                              capture_output=True, text=True)

    run = llava_edge("run", str(tiny_bundle), "--image", str(tmp_path / "img.png"),
                     "--prompt", "What is it?", "--max-new-tokens", "4", "--threads", "1",
                     "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["n_tokens"] >= 1 and result["timings_ms"]["vision_ms"] > 0

    emb = llava_edge("embed", str(tiny_bundle), "--image", str(tmp_path / "img.png"),
                     "--out", str(tmp_path / "e.npy"), "--vision-precision", "fp32")
    assert emb.returncode == 0, emb.stderr
    assert np.load(tmp_path / "e.npy").shape == (16, 256)

    bad = llava_edge("run", str(tiny_bundle), "--image", str(tmp_path / "nope.png"),
                     "--prompt", "hi")
    assert bad.returncode == 1 and "nope.png: no such image file" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_embed_writes_out_exactly_and_whole(tiny_bundle, tmp_path, monkeypatch):
    """`embed --out` names the file (np.save would add ".npy" to a bare name), and a save
    that dies half-way leaves the earlier file as it was, with no temporary beside it."""
    from click.testing import CliRunner

    from llava_edge.cli import cli

    scene().save(tmp_path / "img.png")
    out = tmp_path / "rows.bin"
    args = ["embed", str(tiny_bundle), "--image", str(tmp_path / "img.png"),
            "--out", str(out), "--vision-precision", "fp32"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png", "rows.bin"]
    before = out.read_bytes()
    assert np.load(out).shape == (16, 256)

    def dies_half_way(f, arr, *a, **k):
        f.write(b"\x93NUMPY")  # the start of a file, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", dies_half_way)
    CliRunner().invoke(cli, args)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png", "rows.bin"]


def test_altered_bundle_is_refused(tiny_bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    with open(copy / "llm-F16.gguf", "r+b") as f:
        f.seek(5000)
        f.write(b"\x00\x01\x02")
    from llava_edge.errors import BundleError

    with pytest.raises(BundleError, match="llm-F16.gguf does not match its sha256"):
        LlavaEdge.load(copy)


def test_stream_pieces_join_to_the_answer_and_break_leaves_model_usable(tiny_model):
    image, prompt = scene(9), "Describe the image in detail."
    full = tiny_model.ask(image, prompt, max_new_tokens=20)
    stream = tiny_model.stream(image, prompt, max_new_tokens=20)
    pieces = list(stream)
    assert "".join(pieces).strip() == full.text
    assert stream.answer.tokens == full.tokens and len(pieces) >= 2

    partial = tiny_model.stream(image, prompt, max_new_tokens=20)
    for _ in partial:
        break  # the client stops listening after the first piece
    assert tiny_model.ask(image, prompt, max_new_tokens=20).tokens == full.tokens


def test_eval_runs_on_a_bundle_without_torch(tiny_bundle, tmp_path):
    from llava_edge.data.shapes import ShapesConfig, generate_shapes

    ds = generate_shapes(tmp_path / "shapes", ShapesConfig(n_train=1, n_eval=6, seed=3))
    script = textwrap.dedent(f"""
        import json, sys
        from llava_edge.cli import run
        code = run(["eval", {str(tiny_bundle)!r}, "--data", {str(ds.eval)!r},
                    "--image-folder", {str(ds.image_folder)!r}, "--threads", "1", "--json"])
        print(json.dumps({{"code": code, "torch": "torch" in sys.modules}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    status = json.loads(lines[-1])
    report = json.loads("\n".join(lines[:-1]))
    assert status == {"code": 0, "torch": False}, out.stderr
    assert report["multiple_choice"]["n"] == 6
    assert 0 <= report["multiple_choice"]["accuracy"] <= 1
