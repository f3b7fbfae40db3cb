"""The CLI's conventions: --help everywhere, --version, exit codes 0 / 1 / 2, --json."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from llava_edge import __version__
from llava_edge.cli import cli, run


def _all_commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, prefix + (name,))


def test_every_command_has_help(capsys):
    commands = list(_all_commands(cli))
    assert {("init",), ("data",), ("data", "shapes"), ("info",)} <= set(commands)
    for path in commands:
        assert run([*path, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"Usage: llava-edge {' '.join(path)}"), path


def test_version(capsys):
    assert run(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_entry_point_exit_codes_and_one_line_errors():
    def llava_edge(*args):
        return subprocess.run([sys.executable, "-m", "llava_edge", *args],
                              capture_output=True, text=True)

    ok = llava_edge("--help")
    assert ok.returncode == 0 and "init" in ok.stdout

    unknown = llava_edge("no-such-command")
    assert unknown.returncode == 1 and "No such command" in unknown.stderr

    bad_value = llava_edge("data", "shapes", "/tmp/x", "--n-train", "many")
    assert bad_value.returncode == 1
    assert "'many' is not a valid integer" in bad_value.stderr
    assert "Traceback" not in bad_value.stderr

    missing = llava_edge("info", "/definitely/not/here")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Error: /definitely/not/here: no such file or directory"


def test_unknown_preset_lists_choices(capsys, tmp_path):
    assert run(["init", "--preset", "gpt-5", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "unknown preset 'gpt-5'" in err and "tiny-qwen2" in err
    assert not (tmp_path / "x").exists()


def test_init_lists_presets(capsys):
    assert run(["init", "--list"]) == 0
    out = capsys.readouterr().out
    assert "tinyllava-1.1b" in out and "llava-1.5-7b" in out


def test_internal_errors_exit_2(monkeypatch, capsys, tmp_path):
    import llava_edge.cli.info_cmd as info_cmd

    def broken(path):
        raise RuntimeError("boom")

    monkeypatch.setattr(info_cmd, "describe_checkpoint", broken)
    (tmp_path / "config.json").write_text("{}")
    assert run(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Internal error: RuntimeError: boom" in err and "LLAVA_EDGE_DEBUG" in err


def test_init_then_info_json(tmp_path, capsys):
    out = tmp_path / "t"
    assert run(["init", "--preset", "tiny", str(out), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["random_init"] is True and built["n_image_tokens"] == 16

    assert run(["init", "--preset", "tiny", str(out)]) == 1  # exists, no --force
    assert "exists and is not empty" in capsys.readouterr().err

    assert run(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preset"] == "tiny" and info["random_init"] is True
    assert info["n_params"] == built["n_params"]
    assert info["image_tokens_per_image"] == 16

    assert run(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "RANDOM" in text and "16 per image" in text


def test_info_rejects_what_is_not_a_checkpoint(tmp_path, capsys):
    assert run(["info", str(tmp_path)]) == 1
    assert "neither a LLaVA checkpoint (no config.json) nor a bundle" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{not json")
    assert run(["info", str(tmp_path)]) == 1
    assert "config.json is not valid JSON" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert run(["info", str(tmp_path)]) == 1
    assert "model_type is 'bert', not 'llava'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["run", "--prompt", "hi"], ["chat"]])
@pytest.mark.parametrize("option, value, message", [
    ("--temperature", "-1", "--temperature must be >= 0, got -1.0"),
    ("--top-p", "2", "--top-p must be in (0, 1], got 2.0"),
    ("--top-p", "0", "--top-p must be in (0, 1], got 0.0"),
    ("--top-k", "-3", "--top-k must be >= 0, got -3"),
    ("--repeat-penalty", "0", "--repeat-penalty must be > 0, got 0.0"),
])
def test_bad_sampling_option_is_a_user_error_naming_it(tmp_path, capsys, command, option,
                                                        value, message):
    # Checked before the bundle is opened: tmp_path is no bundle, and the option is named.
    name, *rest = command
    assert run([name, str(tmp_path), "--image", "x.png", *rest, option, value]) == 1
    assert capsys.readouterr().err.strip() == f"Error: {message}"


def test_good_sampling_options_pass_the_check(tmp_path, capsys):
    args = ["run", str(tmp_path), "--prompt", "hi", "--temperature", "0.7", "--top-k", "40",
            "--top-p", "0.9", "--repeat-penalty", "1.1", "--seed", "3"]
    assert run(args) == 1  # on to opening the bundle, which tmp_path is not
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "must be" not in err


@pytest.mark.parametrize("args, message", [
    (["--n-train", "0"], "n_train"),
    (["--image-size", "8"], "image_size"),
])
def test_data_shapes_bad_config(tmp_path, capsys, args, message):
    assert run(["data", "shapes", str(tmp_path / "d"), *args]) == 1
    assert message in capsys.readouterr().err


def test_data_shapes_and_check(tmp_path, capsys):
    out = tmp_path / "d"
    assert run(["data", "shapes", str(out), "--n-train", "12", "--n-eval", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_images"] == 16
    assert run(["data", "check", summary["stage2"], "--image-folder", summary["image_folder"],
                "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x", "conversations": [{"from": "gpt", "value": "hi"}]}]))
    assert run(["data", "check", str(bad)]) == 1
    assert "bad.json" in capsys.readouterr().err
