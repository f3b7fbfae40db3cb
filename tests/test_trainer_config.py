"""Training settings: LLaVA-1.5 stage presets, recipes, config files, flags, errors."""

from __future__ import annotations

import json

import pytest

from llava_edge.trainer.train_config import (RECIPES, TrainConfigError, load_config_file,
                                             resolve_config)

BASE = {"model": "ckpt", "data": ["d.json"], "output_dir": "out"}


def test_stage_presets_are_llava_1_5():
    one, _ = resolve_config({**BASE, "stage": 1})
    assert (one.learning_rate, one.global_batch_size, one.warmup_ratio, one.lr_scheduler,
            one.weight_decay, one.epochs, one.model_max_length) == (
        1e-3, 256, 0.03, "cosine", 0.0, 1.0, 2048)
    assert one.template == "plain"
    assert (one.tune_projector, one.tune_llm, one.tune_vision) == (True, False, False)
    two, _ = resolve_config({**BASE, "stage": 2})
    assert (two.learning_rate, two.global_batch_size) == (2e-5, 128)
    assert (two.tune_projector, two.tune_llm, two.tune_vision) == (True, True, False)
    assert two.template == "auto" and two.image_aspect_ratio == "auto"  # pad for LLaVA


def test_lora_uses_the_finetune_lora_script_values():
    config, provenance = resolve_config({**BASE, "stage": 2, "lora_r": 16})
    assert (config.lora_r, config.lora_alpha, config.learning_rate, config.projector_lr) == (
        16, 256, 2e-4, 2e-5)
    assert "LoRA" in provenance["stage_preset"]


def test_layers_override_in_order(tmp_path):
    """stage preset < recipe < config file < flags."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("stage: 2\nrecipe: tiny-demo\nepochs: 5\nlearning_rate: 3e-4\n"
                   "model: m\ndata: a.json\noutput_dir: o\n")
    config, provenance = resolve_config({"learning_rate": 1e-4}, cfg)
    recipe = RECIPES["tiny-demo"].stages[2]
    assert config.global_batch_size == recipe["global_batch_size"]  # recipe over preset
    assert config.epochs == 5.0  # file over recipe
    assert config.learning_rate == 1e-4  # flag over file
    assert config.data == ["a.json"]  # one path becomes a list
    assert provenance["from_flags"] == ["learning_rate"]
    assert "epochs" in provenance["from_config_file"]


def test_json_config_file(tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"stage": 1, "micro_batch_size": 4, "tune_vision": True}))
    config, _ = resolve_config(BASE, cfg)
    assert config.micro_batch_size == 4 and config.tune_vision


@pytest.mark.parametrize("text, message", [
    ("stage: 1\nlearning_rat: 1e-3\n", "unknown setting\\(s\\) learning_rat"),
    ("stage: 1\nepochs: many\n", "epochs must be float"),
    ("stage: 1\ntune_vision: 1\n", "tune_vision must be bool"),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("stage: [1\n", "not valid YAML"),
])
def test_bad_config_files_are_named(tmp_path, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(TrainConfigError, match=message):
        resolve_config(BASE, cfg)


@pytest.mark.parametrize("overrides, message", [
    ({"stage": 3}, "stage must be 1 or 2"),
    ({}, "which stage"),
    ({"stage": 1, "recipe": "magic"}, "unknown recipe 'magic'"),
    ({"stage": 1, "lora_r": 8}, "LoRA adapts the LLM"),
    ({"stage": 2, "save_adapter": True}, "save_adapter needs LoRA"),
    ({"stage": 1, "tune_projector": False}, "nothing to train"),
    ({"stage": 1, "warmup_ratio": 1.5}, "warmup_ratio"),
    ({"stage": 1, "template": "alpaca"}, "template must be one of"),
    ({"stage": 1, "micro_batch_size": 0}, "micro_batch_size must be >= 1"),
])
def test_bad_values_are_named(overrides, message):
    with pytest.raises(TrainConfigError, match=message):
        resolve_config({**BASE, **overrides})


def test_missing_paths_are_named():
    with pytest.raises(TrainConfigError, match="missing model, data"):
        resolve_config({"stage": 1, "output_dir": "o"})


def test_config_file_errors(tmp_path):
    with pytest.raises(TrainConfigError, match="cannot read"):
        load_config_file(tmp_path / "none.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(TrainConfigError, match="not valid JSON"):
        load_config_file(bad)


def test_every_recipe_change_is_a_known_setting_and_documented():
    for recipe in RECIPES.values():
        for stage, changes in recipe.stages.items():
            config, _ = resolve_config({**BASE, "stage": stage, "recipe": recipe.name})
            for key, value in changes.items():
                assert getattr(config, key) == value
        if recipe.stages:
            assert recipe.notes, f"recipe {recipe.name} changes LLaVA's recipe without notes"
