"""The package as a user gets it: build the wheel, install it (not editable) into a fresh
virtualenv with the base dependencies only (the runtime, never torch) and the lock, then run
`llava-edge --version`, `doctor`, `run` and `serve` from that virtualenv.

Only the package registries (for the base dependencies) and loopback are used. The
llama-cpp-python wheel is the one `make setup` built (scripts/build_llama_wheel.sh's cache),
so nothing is compiled here.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from scene_images import scene

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "constraints.txt"
RUN_TIMEOUT = 180  # seconds for one command of the installed CLI
PIP_TIMEOUT = 900  # seconds for one pip install (downloads on a cold cache)
NOT_IN_BASE = ("torch", "transformers", "fastapi", "uvicorn")


def _env() -> dict:
    """The environment for the fresh venv's commands: nothing of the dev venv leaks in."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    return env


def _run(args, cwd, timeout=RUN_TIMEOUT, check=True):
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def _source_files() -> list[Path]:
    """The files a fresh clone has (tracked, plus new files git does not ignore)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=ROOT, capture_output=True,
                             check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is None:  # not a git checkout: everything but the usual generated folders
        skip = {".git", ".venv", "__pycache__", "build", "dist", "demo_out", ".pytest_cache"}
        return [p.relative_to(ROOT) for p in ROOT.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
                and ".egg-info" not in str(p)]
    return [Path(p) for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("wheel-install")


@pytest.fixture(scope="module")
def project_wheel(work) -> Path:
    """`pip wheel .` of a copy of the tree (an in-tree build would leave build/ behind, and a
    stale build/lib could hide a file missing from the package list)."""
    src = work / "src"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", dist, src], cwd=work, timeout=300)
    wheels = list(dist.glob("llava_edge-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _llama_cpp_wheel() -> Path:
    """The llama-cpp-python wheel `make setup` built and installed into the dev venv."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        direct = json.loads(distribution("llama_cpp_python").read_text("direct_url.json") or "{}")
    except PackageNotFoundError:
        direct = {}
    url = urlparse(direct.get("url", ""))
    if url.scheme == "file" and url.path.endswith(".whl") and Path(unquote(url.path)).is_file():
        return Path(unquote(url.path))
    # Not installed from a wheel file: ask the build script (prints the cached wheel's path;
    # builds it first only when this CPU's flags have no wheel yet).
    version = next(line.split("==")[1] for line in LOCK.read_text().splitlines()
                   if line.startswith("llama-cpp-python=="))
    out = subprocess.run([str(ROOT / "scripts" / "build_llama_wheel.sh"), sys.executable,
                          version], capture_output=True, text=True, check=True, timeout=3600)
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def venv(work, project_wheel) -> Iterator[Path]:
    """A fresh venv with the project wheel and its base dependencies, under the lock."""
    path = work / "venv"
    _run([sys.executable, "-m", "venv", path], cwd=work, timeout=300)
    python = path / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "-c", LOCK, _llama_cpp_wheel(), project_wheel],
         cwd=work, timeout=PIP_TIMEOUT)
    yield path
    shutil.rmtree(path, ignore_errors=True)  # ~300 MB; pytest keeps the last runs' tmp dirs


def _present_modules(venv: Path, cwd: Path) -> list[str]:
    code = ("import importlib.util, json; "
            f"print(json.dumps([m for m in {NOT_IN_BASE!r} if importlib.util.find_spec(m)]))")
    return json.loads(_run([venv / "bin" / "python", "-c", code], cwd=cwd).stdout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png_data_url() -> str:
    buf = io.BytesIO()
    scene(10).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _request(port, method, path, body=None, timeout=120):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_the_wheel_holds_every_module_and_the_console_script(project_wheel):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    with zipfile.ZipFile(project_wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    expected = set()
    for package, folder in setuptools["package-dir"].items():
        base = ROOT / folder
        for py in base.rglob("*.py"):
            if "__pycache__" not in py.parts and (py.parent / "__init__.py").is_file():
                expected.add("/".join((*package.split("."), *py.relative_to(base).parts)))
    for package, globs in setuptools.get("package-data", {}).items():
        base = ROOT / setuptools["package-dir"].get(package, package.replace(".", "/"))
        for pattern in globs:
            for f in base.glob(pattern):
                if f.is_file():
                    expected.add("/".join((*package.split("."), *f.relative_to(base).parts)))
    assert not expected - names, f"left out of the wheel: {sorted(expected - names)}"
    assert "llava-edge = llava_edge.cli:main" in entry_points


def test_the_installed_wheel_runs_without_torch(venv, work, project_wheel, tiny_bundle):
    """--version, doctor, run and serve from the fresh venv (cwd outside the checkout)."""
    cli = venv / "bin" / "llava-edge"
    cwd = work / "cwd"
    cwd.mkdir(exist_ok=True)

    # the base install: the runtime, no torch, no server
    assert _present_modules(venv, cwd) == []
    where = _run([venv / "bin" / "python", "-c",
                  "import llava_edge.cli, llava_edge.runtimes.pipeline; print(llava_edge.__file__)"],
                 cwd=cwd).stdout.strip()
    assert Path(where).is_relative_to(venv), f"llava_edge imported from {where}, not the venv"

    assert "0.1.0" in _run([cli, "--version"], cwd=cwd).stdout

    if (ROOT / "llava_edge" / "cli" / "doctor_cmd.py").is_file():
        report = json.loads(_run([cli, "doctor", tiny_bundle, "--json"], cwd=cwd).stdout)
        assert report["torch"] is None  # not installed: the base install is torch-free
        assert not report["llama_cpp"]["error"] and not report["onnxruntime"]["error"]
        assert report["bundle"]["llm_quant"] and report["bundle"]["vision_precision"]
    else:
        print("llava_edge/cli/doctor_cmd.py is absent: `doctor` not checked")

    image = cwd / "scene.png"
    image.write_bytes(base64.b64decode(_png_data_url().split(",", 1)[1]))
    out = _run([cli, "run", tiny_bundle, "--image", image, "--prompt",
                "What colour is the square?", "--max-new-tokens", "4", "--threads", "1",
                "--json"], cwd=cwd).stdout
    answer = json.loads(out)
    assert isinstance(answer["text"], str) and 0 <= answer["n_tokens"] <= 4
    assert answer["llm_quant"] and answer["vision_precision"]

    # serve needs the [server] extra: without it, a one-line message and exit 1
    port = _free_port()
    refused = _run([cli, "serve", tiny_bundle, "--port", port], cwd=cwd, check=False)
    assert refused.returncode == 1 and "[server]" in refused.stderr, refused.stderr

    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "-c", LOCK,
          f"{project_wheel}[server]"], cwd=work, timeout=PIP_TIMEOUT)
    assert _present_modules(venv, cwd) == ["fastapi", "uvicorn"]  # still no torch

    log = (cwd / "serve.log").open("w")
    proc = subprocess.Popen([str(cli), "serve", str(tiny_bundle), "--host", "127.0.0.1",
                             "--port", str(port), "--threads", "1", "--model-name", "tiny"],
                            cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            assert proc.poll() is None, (cwd / "serve.log").read_text()
            try:
                if _request(port, "GET", "/health", timeout=5)[1]["status"] == "ok":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        status, body = _request(port, "POST", "/v1/chat/completions", {
            "model": "tiny", "max_tokens": 4,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": _png_data_url()}},
                {"type": "text", "text": "What colour is the square?"}]}]})
        assert status == 200, body
        assert isinstance(body["choices"][0]["message"]["content"], str)
        assert _request(port, "GET", "/health")[1]["completed"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
            raise AssertionError("serve did not stop within 30 s of SIGTERM")
        finally:
            log.close()
    assert proc.returncode in (0, -signal.SIGTERM), (cwd / "serve.log").read_text()
