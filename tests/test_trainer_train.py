"""Training runs on the tiny presets, a few steps each: what each stage changes, the output
checkpoint, LoRA merging, resume, the NaN guard, bad data, and the command line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from llava_edge.cli import run
from llava_edge.errors import LlavaEdgeError
from llava_edge.trainer import loop
from llava_edge.trainer.resume import list_checkpoints
from llava_edge.trainer.dataset import BadSampleError
from llava_edge.trainer.loop import TrainingDivergedError, train
from llava_edge.trainer.metrics import read_metrics
from llava_edge.trainer.train_config import resolve_config


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from llava_edge.data.shapes import ShapesConfig, generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes",
                           ShapesConfig(n_train=12, n_eval=4))


def settings(stage, model, data, out, shapes, **over) -> dict:
    """Small runs: 2 steps of 4 samples in micro-batches of 2, no checkpoints."""
    values = dict(stage=stage, model=str(model), data=[str(d) for d in data],
                  image_folder=str(shapes.image_folder), output_dir=str(out),
                  global_batch_size=4, micro_batch_size=2, max_steps=2, save_steps=0,
                  model_max_length=384)
    values.update(over)
    return values


def config(*args, **over):
    return resolve_config(settings(*args, **over))[0]


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def changed(a: dict, b: dict) -> set[str]:
    import torch

    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


@pytest.fixture(scope="module")
def stage1(tiny_checkpoint, shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "stage1"
    cfg, provenance = resolve_config(settings(1, tiny_checkpoint, [shapes.stage1], out, shapes))
    return train(cfg, provenance, show_progress=False)


def test_stage1_trains_only_the_projector(stage1, tiny_checkpoint):
    diff = changed(weights(tiny_checkpoint), weights(stage1.output_dir))
    assert diff, "the projector did not change"
    assert all(k.startswith("multi_modal_projector.") for k in diff), sorted(diff)[:5]
    assert len(diff) == 4  # linear_1 and linear_2, weight and bias


def test_stage1_output_is_a_hf_checkpoint_with_its_record(stage1, tiny_checkpoint, shapes):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    out = stage1.output_dir
    LlavaForConditionalGeneration.from_pretrained(out)
    AutoProcessor.from_pretrained(out)
    block = json.loads((out / "config.json").read_text())["llava_edge"]
    assert block["random_init"] is False
    assert block["template"] == "vicuna_v1" and block["preset"] == "tiny"  # kept
    record = block["training"]
    assert (record["stage"], record["steps"], record["samples"], record["template"]) == (
        1, 2, 8, "plain")
    assert record["data"] == [str(shapes.stage1)]
    assert record["started_from"] == str(tiny_checkpoint)
    assert block["training_history"] == []
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["config"]["learning_rate"] == 1e-3 and saved["config"]["stage"] == 1
    assert "max_steps" in saved["provenance"]["from_flags"]
    metrics = read_metrics(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) and m["samples_per_s"] > 0 for m in metrics)
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".model-tmp-*"))


def test_stage2_trains_projector_and_llm_not_vision(stage1, shapes, tmp_path):
    result = train(config(2, stage1.output_dir, [shapes.stage2], tmp_path / "s2", shapes),
                   show_progress=False)
    diff = changed(weights(stage1.output_dir), weights(result.output_dir))
    assert not any(k.startswith("vision_tower.") for k in diff)
    assert any(k.startswith("multi_modal_projector.") for k in diff)
    assert any(k.startswith("language_model.model.layers.") for k in diff)
    block = json.loads((result.output_dir / "config.json").read_text())["llava_edge"]
    assert block["training"]["stage"] == 2 and block["training"]["template"] == "vicuna_v1"
    assert [h["stage"] for h in block["training_history"]] == [1]


def test_tune_vision_trains_the_vision_tower(tiny_qwen2_checkpoint, shapes, tmp_path):
    """Also covers Qwen2 + SigLIP with ChatML and tied embeddings."""
    result = train(config(2, tiny_qwen2_checkpoint, [shapes.stage2], tmp_path / "v", shapes,
                          tune_vision=True, learning_rate=1e-3), show_progress=False)
    diff = changed(weights(tiny_qwen2_checkpoint), weights(result.output_dir))
    assert any(k.startswith("vision_tower.") for k in diff)
    record = json.loads((result.output_dir / "config.json").read_text())["llava_edge"]["training"]
    assert record["template"] == "chatml" and set(record["trained"]) == {"vision", "projector", "llm"}


# --------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------


def _inputs(checkpoint):
    import torch
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(checkpoint)
    text = "USER: <image>\nWhat color is the circle? ASSISTANT: red"
    return processor(text=text, images=Image.new("RGB", (64, 64), (200, 30, 30)),
                     return_tensors="pt"), torch


def test_lora_merge_keeps_the_logits(tiny_checkpoint):
    from transformers import LlavaForConditionalGeneration

    from llava_edge.trainer.freezing import configure_trainable, merge_lora

    cfg = resolve_config({"stage": 2, "model": "m", "data": ["d"], "output_dir": "o",
                          "lora_r": 4, "lora_alpha": 8})[0]
    model = configure_trainable(LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint),
                                cfg).eval()
    inputs, torch = _inputs(tiny_checkpoint)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # LoRA starts at B = 0: give it something to merge
        before = model(**inputs).logits
        merged = merge_lora(model)
        after = merged(**inputs).logits
    assert not hasattr(merged, "peft_config")
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()


def test_lora_stage2_saves_merged_model_and_adapter(tiny_checkpoint, shapes, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    result = train(config(2, tiny_checkpoint, [shapes.stage2], tmp_path / "lora", shapes,
                          lora_r=4, lora_alpha=8, learning_rate=1e-2, projector_lr=1e-2,
                          save_adapter=True, max_steps=3), show_progress=False)
    out = result.output_dir
    diff = changed(weights(tiny_checkpoint), weights(out))
    assert not any(k.startswith("vision_tower.") or "embed_tokens" in k or "lm_head" in k
                   for k in diff)
    assert any("self_attn.q_proj" in k for k in diff)  # merged LoRA update
    assert any(k.startswith("multi_modal_projector.") for k in diff)
    adapter = out / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors",
            "non_lora_trainables.safetensors"} <= {p.name for p in adapter.iterdir()}
    record = json.loads((out / "config.json").read_text())["llava_edge"]["training"]
    assert record["lora"] == {"r": 4, "alpha": 8, "merged": True}

    # The saved merged model answers exactly like base + adapter, unmerged.
    inputs, torch = _inputs(tiny_checkpoint)
    base = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint)
    missing, unexpected = base.load_state_dict(
        load_file(str(adapter / "non_lora_trainables.safetensors")), strict=False)
    assert not unexpected
    unmerged = PeftModel.from_pretrained(base, adapter).eval()
    merged = LlavaForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        a, b = unmerged(**inputs).logits, merged(**inputs).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


# --------------------------------------------------------------------------------------
# Checkpoints, resume, NaN guard
# --------------------------------------------------------------------------------------


def test_resume_reproduces_the_uninterrupted_run(tiny_checkpoint, shapes, tmp_path):
    import torch

    def run_config(out):
        return config(2, tiny_checkpoint, [shapes.stage2], out, shapes, max_steps=6,
                      save_steps=2, learning_rate=1e-3, lora_r=0)

    straight = train(run_config(tmp_path / "straight"), show_progress=False)

    class Crash(Exception):
        pass

    def crash_at_3(record):
        if record.step == 3:
            raise Crash

    interrupted = tmp_path / "interrupted"
    with pytest.raises(Crash):
        train(run_config(interrupted), show_progress=False, on_step=crash_at_3)
    assert [s for s, _ in list_checkpoints(interrupted)] == [2]
    assert not (interrupted / "config.json").exists()  # no model yet
    with pytest.raises(LlavaEdgeError, match="--resume to continue"):
        train(run_config(interrupted), show_progress=False)
    resumed = train(run_config(interrupted), show_progress=False, resume=True)
    assert resumed.resumed_from_step == 2

    want = read_metrics(straight.output_dir / "metrics.jsonl")
    got = read_metrics(interrupted / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(want, got):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), (a, b)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9) and a["samples"] == b["samples"]
    w, g = weights(straight.output_dir), weights(interrupted)
    assert all(torch.allclose(w[k], g[k], atol=1e-6) for k in w)
    # save_total_limit (2) kept the newest checkpoints of the resumed run.
    assert [s for s, _ in list_checkpoints(interrupted)] == [2, 4]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_checkpoint, shapes, tmp_path,
                                                           monkeypatch):
    real = loop.token_loss_sum
    calls = {"n": 0}

    def poisoned(logits, labels):
        calls["n"] += 1
        loss = real(logits, labels)
        return loss * float("nan") if calls["n"] > 4 else loss  # 2 micro-batches a step

    monkeypatch.setattr(loop, "token_loss_sum", poisoned)
    out = tmp_path / "nan"
    cfg = config(2, tiny_checkpoint, [shapes.stage2], out, shapes, max_steps=5, save_steps=2)
    with pytest.raises(TrainingDivergedError) as info:
        train(cfg, show_progress=False)
    message = str(info.value)
    assert "loss is nan at step 3" in message
    assert str(out / "checkpoints" / "step-000002") in message
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    assert [s for s, _ in list_checkpoints(out)] == [2]
    # The good checkpoint resumes once the cause is gone.
    monkeypatch.setattr(loop, "token_loss_sum", real)
    assert train(cfg, show_progress=False, resume=True).resumed_from_step == 2


# --------------------------------------------------------------------------------------
# Bad data
# --------------------------------------------------------------------------------------


def _data_with(tmp_path, shapes, bad: dict, name="data.json") -> Path:
    good = json.loads(shapes.stage2.read_text())[:3]
    path = tmp_path / name
    path.write_text(json.dumps([*good, bad]))
    return path


BAD_SAMPLES = {
    "missing image file": ({"id": "bad-img", "image": "train/nope.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}]},
        "id 'bad-img'.*image 'train/nope.png' not found"),
    "image without marker": ({"id": "bad-marker", "image": "train/000000.png", "conversations": [
        {"from": "human", "value": "What color is the circle?"}, {"from": "gpt", "value": "red"}]},
        "id 'bad-marker'.*has an 'image' but no <image> marker"),
    "malformed sample": ({"id": "bad-turns", "conversations": [{"from": "gpt", "value": "hi"}]},
                         "id 'bad-turns'.*turn 0 is from 'gpt'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAMPLES))
def test_bad_samples_are_named(case, tiny_checkpoint, shapes, tmp_path):
    bad, message = BAD_SAMPLES[case]
    data = _data_with(tmp_path, shapes, bad)
    cfg = config(2, tiny_checkpoint, [data], tmp_path / "out", shapes, max_steps=1)
    with pytest.raises(BadSampleError, match=message) as info:
        train(cfg, show_progress=False)
    assert f"{data}: sample 3" in str(info.value) and "--skip-bad-samples" in str(info.value)
    assert not (tmp_path / "out" / "config.json").exists()


def test_skip_bad_samples_counts_them(tiny_checkpoint, shapes, tmp_path):
    good = json.loads(shapes.stage2.read_text())[:6]
    bads = [BAD_SAMPLES[k][0] for k in sorted(BAD_SAMPLES)]
    data = tmp_path / "mixed.json"
    data.write_text(json.dumps(good[:2] + bads[:1] + good[2:4] + bads[1:] + good[4:]))
    cfg = config(2, tiny_checkpoint, [data], tmp_path / "out", shapes, max_steps=None,
                 epochs=2.0, skip_bad_samples=True)
    result = train(cfg, show_progress=False)
    assert result.skipped_samples == 2 * 3  # every bad sample, once per epoch
    assert result.samples == 2 * 6
    assert read_metrics(result.output_dir / "metrics.jsonl")[-1]["skipped"] == 6


def test_malformed_json_file_is_named(tiny_checkpoint, shapes, tmp_path):
    data = tmp_path / "broken.json"
    data.write_text('[{"id": "a", "conversations": [}]')
    cfg = config(1, tiny_checkpoint, [data], tmp_path / "out", shapes)
    with pytest.raises(LlavaEdgeError, match=r"broken.json: not valid JSON: .*line 1 column"):
        train(cfg, show_progress=False)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def test_train_command(tiny_checkpoint, shapes, tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"micro_batch_size: 2\nglobal_batch_size: 4\nimage_folder: "
                   f"{shapes.image_folder}\n")
    args = ["train", "--stage", "1", "--model", str(tiny_checkpoint), "--data",
            str(shapes.stage1), "--output-dir", str(tmp_path / "cli"), "--config", str(cfg),
            "--max-steps", "1", "--save-steps", "0"]
    assert run([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stage"] == 1 and summary["steps"] == 1 and summary["samples"] == 4
    assert run(args) == 1  # the output holds a finished model now
    assert "already holds a model" in capsys.readouterr().err
    assert run([*args, "--force"]) == 0
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--stage", "1", "--output-dir", "x"], "missing model, data"),
    (["--stage", "2", "--model", "m", "--data", "d.json", "--output-dir", "x",
      "--save-adapter"], "save_adapter needs LoRA"),
])
def test_train_command_errors_are_one_line(extra, message, capsys):
    assert run(["train", *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_list_recipes(capsys):
    assert run(["train", "--list-recipes"]) == 0
    out = capsys.readouterr().out
    assert "llava-1.5" in out and "tiny-demo" in out and "stage 2:" in out


def test_output_dir_that_is_not_ours_is_never_deleted(tiny_checkpoint, shapes, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    cfg = config(1, tiny_checkpoint, [shapes.stage1], out, shapes)
    for kwargs in ({}, {"force": True}):
        with pytest.raises(LlavaEdgeError, match="not empty"):
            train(cfg, show_progress=False, **kwargs)
    assert (out / "thesis.txt").exists()
    shutil.rmtree(out)


# --------------------------------------------------------------------------------------
# Two processes (DDP over gloo, started by torchrun) against one
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch(tiny_checkpoint, shapes, tmp_path):
    import os
    import subprocess
    import sys

    import torch

    args = ["train", "--stage", "2", "--model", str(tiny_checkpoint), "--data",
            str(shapes.stage2), "--image-folder", str(shapes.image_folder),
            "--global-batch-size", "4", "--micro-batch-size", "2", "--max-steps", "3",
            "--save-steps", "0", "--model-max-length", "384", "--learning-rate", "1e-3",
            "--json"]
    one = train(config(2, tiny_checkpoint, [shapes.stage2], tmp_path / "one", shapes,
                       max_steps=3, learning_rate=1e-3), show_progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "llava_edge", *args, "--output-dir", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads(two.stdout)  # printed once, by the main process
    assert summary["samples"] == one.samples == 12
    config_two = json.loads((tmp_path / "two" / "train_config.json").read_text())
    assert config_two["config"]["micro_batch_size"] == 2  # 2 processes x 2, no accumulation

    want = read_metrics(one.output_dir / "metrics.jsonl")
    got = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert len(got) == len(want) == 3
    for a, b in zip(want, got):
        assert a["tokens"] == b["tokens"] and a["samples"] == b["samples"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), (a, b)
    w1, w2 = weights(one.output_dir), weights(tmp_path / "two")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
