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


# -- the benchmarks' commands ---------------------------------------------------------------

BENCH_COMMANDS = [("bench",), ("bench-vision",), ("bench-reuse",), ("bench-serve-load",),
                  ("bench-soak",),
                  ("bench-quick",), ("bench-int8-schemes", "prepare"),
                  ("bench-int8-schemes", "measure"), ("data", "shapes-mc")]


@pytest.mark.parametrize("path", BENCH_COMMANDS, ids=" ".join)
def test_every_entry_point_is_a_command_with_help(capsys, path):
    assert run([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: llava-edge {' '.join(path)}")
    assert "--help" in out


@pytest.mark.parametrize("args, message", [
    (["bench-vision"], "give one of --preset and --checkpoint"),
    (["bench-serve-load"], "give one of --preset and --bundle"),
    (["bench-soak"], "give one of --preset and --bundle"),
    (["bench-vision", "--preset", "tiny", "--batches", "1,x"], "--batches: give positive"),
    (["bench-vision", "--preset", "tiny", "--precisions", "int3"], "unknown precision 'int3'"),
    (["bench-vision", "--preset", "huge"], "unknown preset 'huge'"),
    (["bench-int8-schemes", "measure"], "Missing option '--work-dir'"),
])
def test_bench_commands_refuse_bad_input_before_any_work(tmp_path, capsys, args, message):
    assert run([*args, "--work-dir" if args[0] != "bench-int8-schemes" else "--label",
                str(tmp_path / "w")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_command_line_records_only_what_was_typed():
    from llava_edge.cli.common import command_line

    seen = {}

    @click.command("cmd")
    @click.argument("src")
    @click.option("--n", default=1)
    @click.option("--flag/--no-flag", default=True)
    @click.option("--name", default="x")
    @click.option("--list", "items", default="", callback=lambda c, p, v: tuple(v.split(",")))
    @click.option("--tag", multiple=True)
    def cmd(src, n, flag, name, items, tag):
        seen["line"] = command_line(click.get_current_context())

    cmd.main(["a b", "--no-flag", "--n", "3"], prog_name="tool", standalone_mode=False)
    assert seen["line"] == "tool 'a b' --n 3 --no-flag"  # defaults left out
    # a parsed list is written back as typed; a repeated option once per value
    cmd.main(["a", "--list", "x,y", "--tag", "p", "--tag", "q"], prog_name="tool",
             standalone_mode=False)
    assert seen["line"] == "tool a --list x,y --tag p --tag q"


def _tiny_int8_work(work):
    """What `bench-int8-schemes prepare` leaves, in miniature: two graphs (an exact one and
    a scaled one) and the reference they are scored against."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    work.mkdir()
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["b", 4, 8])
    y = helper.make_tensor_value_info("embeds", TensorProto.FLOAT, ["b", 4, 8])
    for name, scale in (("exact.onnx", 1.0), ("scaled.onnx", -1.0)):
        k = helper.make_tensor("k", TensorProto.FLOAT, [], [scale])
        graph = helper.make_graph([helper.make_node("Mul", ["pixel_values", "k"], ["embeds"])],
                                  "g", [x], [y], [k])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, work / name)
    pixels = np.random.default_rng(0).standard_normal((2, 4, 8)).astype(np.float32)
    np.savez(work / "reference.npz", pixels=pixels, embeds=pixels)
    (work / "graphs.json").write_text(json.dumps(
        {"preset": "mini", "graphs": {"exact": "exact.onnx", "scaled": "scaled.onnx"}}))


@pytest.mark.parametrize("entry", [["-m", "llava_edge", "bench-int8-schemes"],
                                   ["benchmarks/int8_schemes.py"]], ids=["cli", "script"])
def test_int8_schemes_measure_runs_without_torch(tmp_path, entry):
    """`measure` runs under qemu, where torch is not wanted: neither entry imports it."""
    from pathlib import Path

    work = tmp_path / "work"
    _tiny_int8_work(work)
    root = Path(__file__).resolve().parents[1]
    code = ("import runpy, sys; sys.argv = sys.argv[1:]; "
            "sys.modules['torch'] = None; "  # importing torch would now fail
            "runpy.run_module('llava_edge', run_name='__main__') if sys.argv[0] == '-m' else "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    argv = (["-m", *entry[2:]] if entry[0] == "-m" else entry)
    out = subprocess.run([sys.executable, "-c", code, *argv, "measure", "--work",
                          str(work), "--repeats", "1", "--warmup", "0", "--label", "test"],
                         capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["label"] == "test" and result["preset"] == "mini"
    assert result["schemes"]["exact"]["mean_cosine"] == pytest.approx(1.0)
    assert result["schemes"]["scaled"]["mean_cosine"] == pytest.approx(-1.0)
    assert len((work / "results.jsonl").read_text().splitlines()) == 1


def test_ensure_bundle_reuses_a_complete_bundle_and_exports_only_when_needed(tmp_path,
                                                                           monkeypatch):
    import llava_edge.bundle as bundle_module
    import llava_edge.export.bundle_export as bundle_export
    from llava_edge.benchmarks.build import ensure_bundle
    from llava_edge.errors import BundleError
    from manifests import make_manifest
    from types import SimpleNamespace

    made: dict = {}
    exports: list = []

    def fake_open(path, verify="size"):
        if str(path) not in made:
            raise BundleError(f"{path}: no bundle")
        return SimpleNamespace(manifest=made[str(path)])

    def fake_export(ckpt, out, options, overwrite=False):
        exports.append((options.vision_precisions, options.llm_quants, options.mmproj))
        made[str(out)] = make_manifest(options.vision_precisions, options.llm_quants,
                                       options.mmproj)

    monkeypatch.setattr(bundle_module, "open_bundle", fake_open)
    monkeypatch.setattr(bundle_export, "export_bundle", fake_export)
    ckpt = tmp_path / "tiny" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")  # built before: not built again
    said: list = []

    got = ensure_bundle("tiny", tmp_path, vision=("int4", "fp32"), llm=("Q4_K_M", "F16"),
                        mmproj=True, say=said.append)
    assert got == (ckpt, tmp_path / "tiny" / "bundle")
    assert exports == [(("int4", "fp32"), ("Q4_K_M", "F16"), True)]
    assert said == [f"exporting the bundle to {got[1]} ..."]
    # A subset with the same defaults: reused.
    assert ensure_bundle("tiny", tmp_path, vision=("int4",), llm=("Q4_K_M", "F16")) == got
    assert len(exports) == 1
    # Other defaults, a missing quant or a missing mmproj: exported again.
    ensure_bundle("tiny", tmp_path, vision=("fp32", "int4"), llm=("Q4_K_M",))
    ensure_bundle("tiny", tmp_path, vision=("fp32", "int4"), llm=("Q4_K_M", "Q8_0"))
    ensure_bundle("tiny", tmp_path, vision=("fp32", "int4"), llm=("Q4_K_M", "Q8_0"),
                  mmproj=True)
    assert [e[0][0] for e in exports] == ["int4", "fp32", "fp32", "fp32"]
    assert exports[2][1] == ("Q4_K_M", "Q8_0") and exports[3][2] is True


def test_info_shows_the_tokenizer_parity_of_a_bundle(tiny_bundle, tmp_path):
    """Both mismatch counts the export measured (llava-edge's runtime and stock
    llama.cpp against the checkpoint's tokenizer) are shown with the bundle."""
    import shutil

    from click.testing import CliRunner

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["parity"]["llm"] = {"tokenization": {
        "n_strings": 578, "runtime_mismatches": 0, "stock_llama_cpp_mismatches": 86,
        "stock_llama_cpp_word_start_mismatches": 0}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["info", str(bundle)])
    assert result.exit_code == 0, result.output
    assert ("578 test strings: llava-edge differs on 0, stock llama.cpp on 86 (0 starting "
            "with a word)") in result.output
