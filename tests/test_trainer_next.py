"""Both training stages on a LLaVA-NeXT checkpoint (`tiny-next`): tiled images of several
aspect ratios in one batch, per-image image-token counts and their label mask, what each
stage and the `llava-next` recipe train, and the output's export and eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from llava_edge.errors import LlavaEdgeError
from llava_edge.trainer.collate import Collator
from llava_edge.trainer.conversation import IGNORE_INDEX, ConversationEncoder, make_chat_format
from llava_edge.trainer.dataset import Example, LlavaDataset, image_tokens_per_image
from llava_edge.trainer.loop import train
from llava_edge.trainer.train_config import resolve_config

#: (width, height): 1x2, 1x1, 3x1, 2x2 ... grids, so each image has its own view count.
SIZES = [(96, 64), (64, 64), (40, 200), (300, 300), (64, 150), (128, 128), (200, 64),
         (80, 80)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Shapes data, plus its first samples again with images of several aspect ratios
    (``stage1_aspect.json``, ``stage2_aspect.json``, images under ``aspect/``)."""
    from llava_edge.data.shapes import ShapesConfig, generate_shapes

    data = generate_shapes(tmp_path_factory.mktemp("data") / "shapes",
                           ShapesConfig(n_train=8, n_eval=2))
    folder = Path(data.image_folder)
    (folder / "aspect").mkdir()
    for stage, source in ((1, data.stage1), (2, data.stage2)):
        samples = [s for s in json.loads(Path(source).read_text()) if "image" in s]
        out = []
        for k, (sample, size) in enumerate(zip(samples, SIZES)):
            name = f"aspect/{stage}_{k}.png"
            with Image.open(folder / sample["image"]) as image:
                image.convert("RGB").resize(size).save(folder / name)
            out.append({**sample, "id": f"aspect-{stage}-{k}", "image": name})
        (folder.parent / f"stage{stage}_aspect.json").write_text(json.dumps(out))
    return data


def aspect_data(shapes, stage: int) -> Path:
    return Path(shapes.image_folder).parent / f"stage{stage}_aspect.json"


def settings(stage, model, data, out, shapes, **over) -> dict:
    """2 steps of 4 samples in micro-batches of 2, no checkpoints."""
    values = dict(stage=stage, model=str(model), data=[str(d) for d in data],
                  image_folder=str(shapes.image_folder), output_dir=str(out),
                  global_batch_size=4, micro_batch_size=2, max_steps=2, save_steps=0,
                  model_max_length=512)
    values.update(over)
    return values


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def changed(a: dict, b: dict) -> set[str]:
    import torch

    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


@pytest.fixture(scope="module")
def processor(tiny_next_checkpoint):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_next_checkpoint)


def dataset(processor, checkpoint, files, folder, template="auto", max_length=512):
    config = json.loads((checkpoint / "config.json").read_text())
    tok = processor.tokenizer
    encoder = ConversationEncoder(make_chat_format(template, tok, config), tok,
                                  tok.convert_tokens_to_ids("<image>"), None, max_length)
    return LlavaDataset(files, folder, processor, encoder, "anyres")


@pytest.fixture(scope="module")
def stage1(tiny_next_checkpoint, shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "next-stage1"
    cfg, provenance = resolve_config(settings(1, tiny_next_checkpoint, [aspect_data(shapes, 1)],
                                              out, shapes))
    return train(cfg, provenance, show_progress=False)


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def test_image_token_count_varies_per_image_and_is_the_processors(processor, shapes,
                                                                  tiny_next_checkpoint):
    with pytest.raises(LlavaEdgeError, match="depends on the image's size"):
        image_tokens_per_image(processor)
    data = dataset(processor, tiny_next_checkpoint, [aspect_data(shapes, 1)],
                   shapes.image_folder, template="plain")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    counts = set()
    for i in range(len(data)):
        example = data[i]
        assert isinstance(example, Example), example
        sample = data.entries[i][2]
        with Image.open(Path(shapes.image_folder) / sample["image"]) as opened:
            image = opened.convert("RGB")
        # The processor's own expansion of the same text: identical ids.
        text = "<image>" + sample["conversations"][1]["value"] + "\n"
        expected = processor(text=text, images=image, return_tensors="pt")
        assert example.input_ids == expected["input_ids"][0].tolist()
        assert example.pixel_values.shape == expected["pixel_values"][0].shape
        assert example.image_sizes.tolist() == [image.height, image.width]
        positions = [k for k, t in enumerate(example.input_ids) if t == image_id]
        counts.add(len(positions))
        # Labels: -100 exactly on the image positions (and BOS), the caption elsewhere.
        assert all(example.labels[k] == IGNORE_INDEX for k in positions)
        rest = [k for k in range(1, len(example.input_ids)) if k not in positions]
        assert all(example.labels[k] == example.input_ids[k] for k in rest)
        assert positions == list(range(positions[0], positions[0] + len(positions)))
    assert len(counts) >= 3, counts  # the count follows each image's size


def test_stage2_labels_mask_the_image_and_the_prompt(processor, shapes, tiny_next_checkpoint):
    data = dataset(processor, tiny_next_checkpoint, [aspect_data(shapes, 2)],
                   shapes.image_folder)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    for i in range(3):
        example = data[i]
        sample = data.entries[i][2]
        with Image.open(Path(shapes.image_folder) / sample["image"]) as opened:
            image = opened.convert("RGB")
        n_expected = int((processor(text="<image>", images=image, return_tensors="pt")
                          ["input_ids"] == image_id).sum())
        positions = [k for k, t in enumerate(example.input_ids) if t == image_id]
        assert len(positions) == n_expected
        assert all(example.labels[k] == IGNORE_INDEX for k in positions)
        assert any(label != IGNORE_INDEX for label in example.labels)  # the reply


def test_batch_of_aspect_ratios_pads_views_like_the_processor(processor, shapes,
                                                              tiny_next_checkpoint):
    import torch
    from transformers import LlavaNextForConditionalGeneration

    data = dataset(processor, tiny_next_checkpoint, [aspect_data(shapes, 1)],
                   shapes.image_folder, template="plain")
    items = [data[i] for i in range(4)]
    assert len({x.pixel_values.shape[0] for x in items}) > 1  # different view counts
    batch = Collator(pad_token_id=processor.tokenizer.pad_token_id)(items)
    images = []
    for i in range(4):
        with Image.open(Path(shapes.image_folder) / data.entries[i][2]["image"]) as opened:
            images.append(opened.convert("RGB"))
    expected = processor.image_processor(images=images, return_tensors="pt")
    assert batch["pixel_values"].shape == expected["pixel_values"].shape
    assert torch.allclose(batch["pixel_values"], expected["pixel_values"], atol=1e-6)
    assert torch.equal(batch["image_sizes"], expected["image_sizes"])
    # The model takes the batch: every image's features fill exactly its token run.
    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_next_checkpoint)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"],
                       image_sizes=batch["image_sizes"]).logits
    assert logits.shape[:2] == batch["input_ids"].shape


def test_aspect_ratio_defaults_per_model_type():
    from llava_edge.trainer.architectures import resolve_aspect_ratio

    assert resolve_aspect_ratio("auto", "llava") == "pad"
    assert resolve_aspect_ratio("auto", "llava_next") == "anyres"
    with pytest.raises(LlavaEdgeError, match="tiles each image"):
        resolve_aspect_ratio("pad", "llava_next")
    with pytest.raises(LlavaEdgeError, match="needs a LLaVA-NeXT"):
        resolve_aspect_ratio("anyres", "llava")


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def test_stage1_trains_only_projector_and_image_newline(stage1, tiny_next_checkpoint):
    from transformers import LlavaNextForConditionalGeneration

    diff = changed(weights(tiny_next_checkpoint), weights(stage1.output_dir))
    # (Saved under the checkpoint's names, without the ``model.`` of the module tree.)
    assert diff == {"image_newline", "multi_modal_projector.linear_1.weight",
                    "multi_modal_projector.linear_1.bias",
                    "multi_modal_projector.linear_2.weight",
                    "multi_modal_projector.linear_2.bias"}, sorted(diff)
    LlavaNextForConditionalGeneration.from_pretrained(stage1.output_dir)
    config = json.loads((stage1.output_dir / "config.json").read_text())
    assert config["model_type"] == "llava_next"
    assert config["llava_edge"]["training"]["image_aspect_ratio"] == "anyres"


def test_stage2_trains_the_llm_too(stage1, shapes, tmp_path):
    result = train(resolve_config(settings(2, stage1.output_dir, [aspect_data(shapes, 2)],
                                           tmp_path / "s2", shapes, max_steps=1,
                                           warmup_ratio=0.0))[0], show_progress=False)
    diff = changed(weights(stage1.output_dir), weights(result.output_dir))
    assert any("language_model" in k for k in diff)
    assert any(k.endswith("lm_head.weight") for k in diff) and "image_newline" in diff
    assert any("multi_modal_projector" in k for k in diff)
    assert not any("vision_tower" in k for k in diff)


def test_next_recipe_trains_the_vision_tower_at_2e6(stage1, shapes, tmp_path, monkeypatch):
    import torch

    made = []

    class Recording(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    cfg = resolve_config(settings(2, stage1.output_dir, [aspect_data(shapes, 2)],
                                  tmp_path / "r", shapes, recipe="llava-next",
                                  max_steps=1, global_batch_size=2, warmup_ratio=0.0))[0]
    assert cfg.tune_vision and cfg.vision_lr == 2e-6 and cfg.learning_rate == 2e-5
    result = train(cfg, show_progress=False)
    (optimizer,) = made
    rates = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    assert {n for n, lr in rates.items() if lr == 2e-6} == {n for n in rates
                                                            if n.startswith("vision")}
    assert any(n.startswith("vision") for n in rates)
    assert all(lr == 2e-5 for n, lr in rates.items() if not n.startswith("vision"))
    diff = changed(weights(stage1.output_dir), weights(result.output_dir))
    assert any("vision_tower" in k for k in diff)


def test_resume_reproduces_the_uninterrupted_run(tiny_next_checkpoint, shapes, tmp_path):
    """As LLaVA-1.5's resume test, on tiled images: 6 steps of 4 over 8 samples (the
    second and third epochs reshuffled), interrupted after step 3 and resumed from the
    step-2 checkpoint. Every batch mixes view counts (1x1 to 3x3 grids plus the base
    view), so a resume that lost a sample's place, its image_sizes or the padding of its
    views would change the losses."""
    import torch

    from llava_edge.trainer.metrics import read_metrics
    from llava_edge.trainer.resume import list_checkpoints

    def run_config(out):
        return resolve_config(settings(2, tiny_next_checkpoint, [aspect_data(shapes, 2)], out,
                                       shapes, max_steps=6, save_steps=2,
                                       learning_rate=1e-3))[0]

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
    assert not (interrupted / "config.json").exists()
    # The checkpoint holds the trained tensors, the newline among them.
    from safetensors import safe_open

    with safe_open(str(interrupted / "checkpoints" / "step-000002" / "model.safetensors"),
                   "pt") as f:
        assert "model.image_newline" in set(f.keys())
    resumed = train(run_config(interrupted), show_progress=False, resume=True)
    assert resumed.resumed_from_step == 2

    want = read_metrics(straight.output_dir / "metrics.jsonl")
    got = read_metrics(interrupted / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    # The LLaVA-1.5 test's tolerances. On CPU the two runs are bit-identical (losses,
    # gradient norms and weights: max difference 0.0, measured); the margin is for a GPU
    # run, whose kernels need not be deterministic.
    for a, b in zip(want, got):
        assert a["tokens"] == b["tokens"] and a["samples"] == b["samples"], (a, b)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), (a, b)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    w, g = weights(straight.output_dir), weights(interrupted)
    assert w.keys() == g.keys()
    assert all(torch.allclose(w[k], g[k], atol=1e-6) for k in w)
    assert changed(weights(tiny_next_checkpoint), g) >= {"image_newline"}
    assert [s for s, _ in list_checkpoints(interrupted)] == [2, 4]


def test_lora_targets_only_the_llm_and_keeps_the_newline_trainable(tiny_next_checkpoint):
    from transformers import LlavaNextForConditionalGeneration

    from llava_edge.trainer.freezing import configure_trainable, summarize
    from llava_edge.trainer.train_config import TrainConfig

    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_next_checkpoint)
    cfg = TrainConfig(stage=2, model="m", data=["d"], output_dir="o", tune_llm=True,
                      lora_r=4, lora_alpha=8)
    model = configure_trainable(model, cfg)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("image_newline" in n for n in trained)
    lora = {n for n in trained if "lora_" in n}
    assert lora and all("language_model" in n for n in lora)
    assert summarize(model).trained["vision"] == 0


def test_freeze_newline_keeps_it_at_its_init_while_the_projector_learns(
        stage1, tiny_next_checkpoint, shapes, tmp_path):
    """LLaVA-NeXT's pretraining: the projector learns, image_newline stays bit-identical.
    The ``stage1`` fixture is the same run without the switch, where the newline moves."""
    out = tmp_path / "frozen"
    cfg, provenance = resolve_config(settings(1, tiny_next_checkpoint, [aspect_data(shapes, 1)],
                                              out, shapes, freeze_newline=True))
    train(cfg, provenance, show_progress=False)
    start, frozen, free = (weights(tiny_next_checkpoint), weights(out),
                           weights(stage1.output_dir))
    assert changed(start, frozen) == {"multi_modal_projector.linear_1.weight",
                                      "multi_modal_projector.linear_1.bias",
                                      "multi_modal_projector.linear_2.weight",
                                      "multi_modal_projector.linear_2.bias"}
    assert "image_newline" in changed(start, free)  # without the switch it learns
    # Recorded with the model and in its resolved settings.
    record = json.loads((out / "config.json").read_text())["llava_edge"]["training"]
    assert record["freeze_newline"] is True
    assert record["trained"]["projector"] == sum(
        v.numel() for k, v in start.items() if k.startswith("multi_modal_projector."))
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["config"]["freeze_newline"] is True
    assert json.loads((stage1.output_dir / "config.json").read_text()
                      )["llava_edge"]["training"]["freeze_newline"] is False


def test_freeze_newline_with_lora_and_the_resume_check(tiny_next_checkpoint):
    from transformers import LlavaNextForConditionalGeneration

    from llava_edge.trainer.freezing import configure_trainable, summarize
    from llava_edge.trainer.resume import RESUME_KEYS
    from llava_edge.trainer.train_config import TrainConfig

    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_next_checkpoint)
    cfg = TrainConfig(stage=2, model="m", data=["d"], output_dir="o", tune_llm=True,
                      lora_r=4, lora_alpha=8, freeze_newline=True)
    model = configure_trainable(model, cfg)
    params = dict(model.named_parameters())
    (newline,) = [p for n, p in params.items() if n.endswith("image_newline")]
    assert not newline.requires_grad
    assert all(p.requires_grad for n, p in params.items() if "multi_modal_projector" in n)
    summary = summarize(model)
    assert summary.trained["projector"] == summary.total["projector"] - newline.numel()
    # A resumed run must agree on it: it decides which tensors the checkpoint holds.
    assert "freeze_newline" in RESUME_KEYS


def test_freeze_newline_flag_reaches_the_config(tiny_next_checkpoint, shapes, tmp_path,
                                                capsys):
    from llava_edge.cli import run

    out = tmp_path / "cli"
    args = ["train", "--stage", "1", "--model", str(tiny_next_checkpoint),
            "--data", str(aspect_data(shapes, 1)), "--image-folder", str(shapes.image_folder),
            "--output-dir", str(out), "--max-steps", "1", "--global-batch-size", "2",
            "--micro-batch-size", "2", "--save-steps", "0", "--freeze-newline", "--json"]
    assert run(args) == 0, capsys.readouterr().err
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["config"]["freeze_newline"] is True
    assert "freeze_newline" in saved["provenance"]["from_flags"]
    assert "image_newline" not in changed(weights(tiny_next_checkpoint), weights(out))


def test_freeze_newline_on_a_llava_1_5_checkpoint_is_an_error(tiny_checkpoint, shapes,
                                                              tmp_path, capsys):
    from transformers import LlavaForConditionalGeneration

    from llava_edge.cli import run
    from llava_edge.trainer.freezing import configure_trainable
    from llava_edge.trainer.train_config import TrainConfig, TrainConfigError

    out = tmp_path / "no"
    assert run(["train", "--stage", "1", "--model", str(tiny_checkpoint),
                "--data", str(shapes.stage1), "--image-folder", str(shapes.image_folder),
                "--output-dir", str(out), "--max-steps", "1", "--freeze-newline"]) == 1
    err = capsys.readouterr().err
    assert "needs a LLaVA-NeXT checkpoint" in err and "has no image_newline" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    # The same refusal where a model is configured directly.
    cfg = TrainConfig(stage=1, model=str(tiny_checkpoint), data=["d"], output_dir="o",
                      freeze_newline=True)
    with pytest.raises(TrainConfigError, match="has no image_newline"):
        configure_trainable(LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint), cfg)


def test_recipe_is_listed(capsys):
    from llava_edge.cli import run

    assert run(["train", "--list-recipes"]) == 0
    out = capsys.readouterr().out
    assert "llava-next:" in out and "vision_lr=2e-06" in out


def test_train_command_takes_a_next_checkpoint(tiny_next_checkpoint, shapes, tmp_path, capsys):
    from llava_edge.cli import run

    args = ["train", "--stage", "1", "--model", str(tiny_next_checkpoint),
            "--data", str(aspect_data(shapes, 1)), "--image-folder", str(shapes.image_folder),
            "--output-dir", str(tmp_path / "cli"), "--max-steps", "1",
            "--global-batch-size", "2", "--micro-batch-size", "2", "--save-steps", "0",
            "--json"]
    assert run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 1 and summary["samples"] == 2
    assert run([*args[:-1], "--force", "--image-aspect-ratio", "pad"]) == 1
    assert "tiles each image" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_match_one_at_the_same_global_batch(tiny_next_checkpoint, shapes,
                                                          processor, tmp_path):
    """As LLaVA-1.5's test, on tiled images: DDP over gloo (torchrun, 2 processes of
    micro-batch 2) against one process accumulating 2 micro-batches of 2. The two ranks'
    batches hold different numbers of views (and so of image tokens), and the loss is
    normalised by the global label-token count, so the gradients must still agree."""
    import os
    import subprocess
    import sys

    import torch

    from llava_edge.trainer.metrics import read_metrics

    from llava_edge.trainer.step_plan import StepPlan

    data = aspect_data(shapes, 2)
    # The premise: at some step the two ranks' pixel_values differ in view count.
    views = [x.pixel_values.shape[0] for x in
             (dataset(processor, tiny_next_checkpoint, [data], shapes.image_folder)[i]
              for i in range(8))]
    ranks = [StepPlan(8, 4, 2, 2, rank, seed=42) for rank in (0, 1)]
    assert any(len({max(views[i] for i in plan.micro_batches(step)[0]) for plan in ranks}) > 1
               for step in range(3))
    args = ["train", "--stage", "2", "--model", str(tiny_next_checkpoint), "--data", str(data),
            "--image-folder", str(shapes.image_folder), "--global-batch-size", "4",
            "--micro-batch-size", "2", "--max-steps", "3", "--save-steps", "0",
            "--model-max-length", "512", "--learning-rate", "1e-3", "--json"]
    one = train(resolve_config(settings(2, tiny_next_checkpoint, [data], tmp_path / "one",
                                        shapes, max_steps=3, learning_rate=1e-3))[0],
                show_progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "llava_edge", *args, "--output-dir", str(tmp_path / "two")],
        capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads(two.stdout)  # printed once, by the main process
    assert summary["samples"] == one.samples == 12

    want = read_metrics(one.output_dir / "metrics.jsonl")
    got = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert len(got) == len(want) == 3
    # The LLaVA-1.5 test's tolerances; on CPU the two are equal (max weight difference
    # 0.0, measured): DDP's mean of the two ranks' gradients scaled by 2 adds the same
    # terms as the one process's accumulation.
    for a, b in zip(want, got):
        assert a["tokens"] == b["tokens"] and a["samples"] == b["samples"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), (a, b)
    w1, w2 = weights(one.output_dir), weights(tmp_path / "two")
    assert changed(weights(tiny_next_checkpoint), w2) >= {"image_newline"}
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)


# --------------------------------------------------------------------------------------
# The output: export and eval
# --------------------------------------------------------------------------------------


def test_eval_answers_with_a_next_checkpoint(stage1, shapes):
    from llava_edge.trainer.evaluate import TorchAnswerer

    answer = TorchAnswerer(stage1.output_dir, template="plain", max_new_tokens=2)
    assert answer.pad is False
    with Image.open(Path(shapes.image_folder) / "aspect" / "1_0.png") as image:
        reply = answer(image.convert("RGB"), "<image>\nWhat is this?")
    assert isinstance(reply, str)


def test_eval_command_on_a_next_checkpoint(stage1, shapes, capsys):
    from llava_edge.cli import run

    code = run(["eval", str(stage1.output_dir), "--data", str(shapes.eval),
                "--image-folder", str(shapes.image_folder), "--max-new-tokens", "2",
                "--limit", "2", "--json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["n"] == 2


@pytest.mark.slow
def test_stage1_output_exports(stage1, tmp_path):
    import numpy as np

    from llava_edge.export.bundle_export import ExportOptions, export_bundle

    manifest = export_bundle(stage1.output_dir, tmp_path / "bundle",
                             ExportOptions(vision_precisions=("fp32",), llm_quants=("F16",),
                                           parity=False))
    assert manifest.anyres is not None and not manifest.preprocess.pad_to_square
    # The trained image_newline, not the initial one, is what the bundle carries.
    newline = np.load(tmp_path / "bundle" / manifest.anyres.newline_file)
    assert np.allclose(newline, weights(stage1.output_dir)["image_newline"].numpy())
