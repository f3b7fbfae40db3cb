"""The README and docs/ cannot drift from the CLI: every `llava-edge` command in their bash
blocks names a real command and real options, and the Quick start runs as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from PIL import Image

from llava_edge.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Quick-start lines left out of the real run, with the reason.
NOT_RUN = {"source .venv/bin/activate": "the test already runs in the venv",
           "llava-edge train": "trains for minutes; training is tested in test_trainer_train.py"}


def _bash_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def _commands(block: str) -> list[str]:
    """The block's command lines: continuations and multi-line quotes joined, comments
    dropped."""
    out, pending = [], ""
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        pending = f"{pending}\n{line}" if pending else line.strip()
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        if words:
            out.append(pending)
        pending = ""
    return out


def _llava_edge_commands() -> list[tuple[str, list[str]]]:
    """Every `llava-edge` command line in a bash block or an inline code span."""
    found = {}
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        lines = [line for block in _bash_blocks(path) for line in _commands(block)]
        lines += [" ".join(span.split()) for span in re.findall(r"`(llava-edge [^`]+)`", text)]
        for line in lines:
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            if words and words[0] == "llava-edge":
                found[f"{path.name}: {' '.join(line.split())}"] = words[1:]
    return list(found.items())


def _resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The (sub)command the words name, and the words left for it."""
    command: click.Command = cli
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        sub = command.get_command(click.Context(command), words[0])
        assert sub is not None, f"no command {words[0]!r} under {command.name}"
        command, words = sub, words[1:]
    return command, words


def test_the_docs_have_commands_to_check():
    assert len(_llava_edge_commands()) >= 30


@pytest.mark.parametrize("where, words", _llava_edge_commands(),
                         ids=lambda x: x if isinstance(x, str) else None)
def test_every_documented_command_and_option_exists(where, words):
    command, rest = _resolve(words)
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    known |= {"--help", "-h"}
    for word in rest:
        if word.startswith("-") and word != "-":
            flag = word.split("=", 1)[0]
            assert flag in known, f"{where}: {command.name} has no option {flag}"


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path):
    """Every line of the Quick start's bash block (but those in NOT_RUN), in a fresh folder,
    with a photo.jpg there; then its first Python block."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", quick, re.S).group(1)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)) \
        .save(tmp_path / "photo.jpg")
    bindir = Path(sys.executable).parent
    env = os.environ | {"PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
                        "HF_HUB_OFFLINE": "1"}
    ran = []
    for line in _commands(block):
        if any(line.startswith(skip) for skip in NOT_RUN):
            continue
        done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        ran.append(line.split()[1])
    assert ran == ["init", "init", "info", "data", "export", "run", "verify"]
    python = re.search(r"```python\n(.*?)```", quick, re.S).group(1)
    done = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
