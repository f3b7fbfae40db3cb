"""The data path of training: lazy dataset, image padding, collation, the step plan."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from llava_edge.trainer.collate import Collator
from llava_edge.trainer.conversation import IGNORE_INDEX, ConversationEncoder, make_chat_format
from llava_edge.runtimes.preprocess import expand_to_square
from llava_edge.trainer.dataset import BadSample, Example, LlavaDataset, image_tokens_per_image
from llava_edge.trainer.step_plan import StepPlan


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_checkpoint)


def _dataset(processor, tiny_checkpoint, files, folder, **kwargs):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    tok = processor.tokenizer
    encoder = ConversationEncoder(make_chat_format("auto", tok, config), tok,
                                  tok.convert_tokens_to_ids("<image>"),
                                  image_tokens_per_image(processor), 512)
    return LlavaDataset(files, folder, processor, encoder, **kwargs)


def test_image_tokens_come_from_the_processor(processor):
    assert image_tokens_per_image(processor) == 16  # 64 px / patch 16, CLS dropped


def test_pad_to_square_centres_on_the_mean_colour(processor):
    """Training pads as the runtime does (one function): LLaVA-1.5's expand2square fills
    with int(mean * 255), truncated, not rounded."""
    mean = processor.image_processor.image_mean
    fill = (122, 116, 104)  # OpenAI CLIP mean x 255, truncated
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    square = expand_to_square(wide, mean)
    assert square.size == (40, 40)
    assert square.getpixel((0, 0)) == fill and square.getpixel((20, 20)) == (255, 0, 0)
    assert square.getpixel((20, 9)) == fill and square.getpixel((20, 10)) == (255, 0, 0)
    assert expand_to_square(square, mean) is square


def test_aspect_ratio_pad_versus_square(processor, tiny_checkpoint, tmp_path):
    """pad keeps the whole wide image (mean-colour bands); square lets the processor crop."""
    image = Image.new("RGB", (128, 64), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 16, 64))  # a black bar at the far left
    image.save(tmp_path / "wide.png")
    sample = {"id": "w", "image": "wide.png",
              "conversations": [{"from": "human", "value": "<image>\nQ"},
                                {"from": "gpt", "value": "A"}]}
    (tmp_path / "d.json").write_text(json.dumps([sample]))
    padded = _dataset(processor, tiny_checkpoint, [tmp_path / "d.json"], tmp_path)[0]
    cropped = _dataset(processor, tiny_checkpoint, [tmp_path / "d.json"], tmp_path,
                       image_aspect_ratio="square")[0]
    assert padded.pixel_values.shape == cropped.pixel_values.shape == (3, 64, 64)
    # The centre crop of "square" cuts the black bar off; "pad" keeps it.
    assert padded.pixel_values[:, 32, 0:4].mean() < -1.0
    assert cropped.pixel_values[:, 32, 0:4].mean() > 1.0


def test_dataset_encodes_on_access_and_reports_bad_samples(processor, tiny_checkpoint, tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    good = {"id": "ok", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"}]}
    text = {"id": "txt", "conversations": [
        {"from": "human", "value": "Two plus one?"}, {"from": "gpt", "value": "3"}]}
    missing = {**good, "id": "gone", "image": "b.png"}
    (tmp_path / "d.json").write_text(json.dumps([good, text, missing]))
    ds = _dataset(processor, tiny_checkpoint, [tmp_path / "d.json"], tmp_path)
    assert len(ds) == 3
    first, second, third = ds[0], ds[1], ds[2]
    assert isinstance(first, Example) and first.pixel_values.shape == (3, 64, 64)
    assert isinstance(second, Example) and second.pixel_values is None
    assert isinstance(third, BadSample)
    assert "sample 2 (id 'gone')" in third.message and "'b.png' not found" in third.message


def test_dataset_needs_an_image_folder_for_images(processor, tiny_checkpoint, tmp_path):
    good = {"id": "ok", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}
    (tmp_path / "d.json").write_text(json.dumps([good]))
    bad = _dataset(processor, tiny_checkpoint, [tmp_path / "d.json"], None)[0]
    assert isinstance(bad, BadSample) and "--image-folder" in bad.message


def test_collator_pads_right_and_stacks_only_real_images():
    import torch

    pixels = torch.ones(3, 4, 4)
    items = [Example("a", [1, 5, 6], [IGNORE_INDEX, 5, 6], pixels),
             Example("b", [1, 7], [IGNORE_INDEX, 7], None),
             BadSample("c", "c: broken")]
    batch = Collator(pad_token_id=0)(items)
    assert batch["input_ids"].tolist() == [[1, 5, 6], [1, 7, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["pixel_values"].shape == (1, 3, 4, 4)
    assert batch["n_label_tokens"] == 3 and batch["n_samples"] == 2
    assert [b.sample_id for b in batch["bad_samples"]] == ["c"]
    assert Collator(0)([BadSample("x", "m")])["n_samples"] == 0


def test_step_plan_covers_each_epoch_once_in_a_seeded_order():
    plan = StepPlan(n_samples=10, global_batch_size=4, micro_batch_size=2, seed=3)
    assert plan.steps_per_epoch == 3 and plan.accumulation_steps == 2
    epoch0 = [i for s in range(3) for m in plan.micro_batches(s) for i in m]
    assert sorted(epoch0) == list(range(10))
    # The last, partial step (2 samples) still runs 2 micro-batches, of one sample each.
    assert plan.micro_batches(2) == [[epoch0[8]], [epoch0[9]]]
    epoch1 = [i for s in range(3, 6) for m in plan.micro_batches(s) for i in m]
    assert sorted(epoch1) == list(range(10)) and epoch1 != epoch0
    assert StepPlan(10, 4, 2, seed=3).micro_batches(4) == plan.micro_batches(4)  # resumable
    assert StepPlan(10, 4, 2, seed=4).epoch_order(0) != plan.epoch_order(0)


def test_step_plan_splits_global_batches_over_processes():
    one = StepPlan(n_samples=11, global_batch_size=4, micro_batch_size=2)
    ranks = [StepPlan(11, 4, 2, num_processes=2, process_index=r) for r in range(2)]
    for step in range(one.steps_per_epoch):
        together = sorted(i for m in one.micro_batches(step) for i in m)
        split = [[i for m in r.micro_batches(step) for i in m] for r in ranks]
        assert len({r.micro_count(step) for r in ranks}) == 1  # same count on every rank
        if step < 2:
            assert sorted(split[0] + split[1]) == together
    # The last step has 3 samples: 2 processes take 1 each, one sample sits the epoch out.
    assert [len(r.micro_batches(2)) for r in ranks] == [1, 1]


def test_step_plan_refuses_batches_that_do_not_divide():
    from llava_edge.errors import LlavaEdgeError

    with pytest.raises(LlavaEdgeError, match="not a multiple of micro batch 3 x 2"):
        StepPlan(100, 8, 3, num_processes=2)
