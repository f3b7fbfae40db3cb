"""``llava-edge verify``: a bundle recomputed end to end against its checkpoint."""

from __future__ import annotations

import json

import pytest

from llava_edge.cli import run


def test_verify_recomputes_the_figures_and_passes_on_its_own_checkpoint(
        tiny_bundle, tiny_checkpoint, capsys):
    code = run(["verify", str(tiny_bundle), "--against", str(tiny_checkpoint), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"] is True
    for precision in ("fp32", "int8"):
        fig = report["vision"][precision]
        assert fig["measured"]["mean_cosine"] == pytest.approx(
            fig["manifest"]["mean_cosine"], abs=1e-4)
    assert report["vision"]["fp32"]["measured"]["mean_cosine"] > 0.9999
    logits = report["llm"]["measured"]["logits"]
    assert logits["F16"]["top1_agreement"] >= 0.99
    exact = report["greedy"]["fp32+F16"]
    assert exact["identical"] == exact["n"] == 4


def test_verify_against_another_checkpoint_fails_with_exit_1(tiny_bundle, tmp_path, capsys):
    from llava_edge.presets import get_preset
    from llava_edge.trainer.init_checkpoint import build_checkpoint

    other = build_checkpoint(get_preset("tiny"), tmp_path / "other", seed=1).path
    code = run(["verify", str(tiny_bundle), "--against", str(other)])
    captured = capsys.readouterr()
    assert code == 1
    assert "verification failed" in captured.err
    assert "vision fp32" in captured.out and "answers identical to PyTorch" in captured.out
