"""Model arguments: local directories as they are, Hub ids downloaded (a fake download
here: tests never reach the network), offline and failed downloads named with the way
to fetch the model by hand."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from llava_edge.cli import run
from llava_edge.errors import LlavaEdgeError
from llava_edge.hub import ModelNotFoundError, parse_repo_id, resolve_model

huggingface_hub = pytest.importorskip("huggingface_hub")
from huggingface_hub import errors as hub_errors  # noqa: E402


@pytest.fixture
def online(monkeypatch):
    """HF_HUB_OFFLINE unset (conftest sets it for the whole session), and a fake
    snapshot_download that records its calls and returns a folder per repo."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls: list[dict] = []

    def fake(repo_id, *, revision=None, local_files_only=False, **kwargs):
        calls.append(dict(repo_id=repo_id, revision=revision,
                          local_files_only=local_files_only, **kwargs))
        if isinstance(fake.result, BaseException):
            raise fake.result
        return fake.result

    fake.result = "/cache/models--org--name/snapshots/abc"
    fake.calls = calls
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


def _response():
    return SimpleNamespace(headers={}, request=None, status_code=404)


@pytest.mark.parametrize("text, parsed", [
    ("llava-hf/llava-1.5-7b-hf", ("llava-hf/llava-1.5-7b-hf", None)),
    ("openai/clip-vit-large-patch14-336@main", ("openai/clip-vit-large-patch14-336", "main")),
    ("Qwen/Qwen2-0.5B@refs/pr/1", ("Qwen/Qwen2-0.5B", "refs/pr/1")),
    ("ckpt", None), ("./org/name", None), ("/abs/org/name", None), ("a/b/c", None),
    ("org--x/name", None), ("org/name/", None), ("~/models", None),
])
def test_what_looks_like_a_hub_id(text, parsed):
    assert parse_repo_id(text) == parsed


def test_a_local_directory_is_used_as_it_is(tmp_path, online, monkeypatch):
    model = tmp_path / "org" / "name"
    model.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    # Even when it reads like a Hub id: what is on disk wins, and nothing is downloaded.
    assert resolve_model("org/name", "MODEL") == Path("org/name")
    assert resolve_model(model, "MODEL") == model
    assert online.calls == []


def test_missing_paths_and_files(tmp_path, online):
    with pytest.raises(ModelNotFoundError, match=r"^--llm /no/such/dir: no such directory$"):
        resolve_model("/no/such/dir", "--llm")
    with pytest.raises(ModelNotFoundError, match="^MODEL ckpt: no such directory$"):
        resolve_model("ckpt", "MODEL")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelNotFoundError, match="file: not a directory"):
        resolve_model(str(tmp_path / "file"), "MODEL")
    assert online.calls == []
    assert issubclass(ModelNotFoundError, LlavaEdgeError)


def test_a_hub_id_is_downloaded_with_its_revision(online):
    assert resolve_model("org/name@v1.0", "--vision") == Path(online.result)
    assert resolve_model("org/name", "--vision") == Path(online.result)
    assert [(c["repo_id"], c["revision"], c["local_files_only"]) for c in online.calls] == [
        ("org/name", "v1.0", False), ("org/name", None, False)]


def test_offline_reads_the_cache_only(online, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("org/name", "MODEL") == Path(online.result)  # a cached snapshot
    assert online.calls[-1]["local_files_only"] is True


def test_offline_and_not_cached_says_how_to_get_it(monkeypatch):
    # The real snapshot_download: offline, it looks in the cache and nowhere else.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("llava-edge-tests/not-a-model@v2", "--llm")
    message = str(e.value)
    assert message.startswith("--llm llava-edge-tests/not-a-model@v2: no such directory")
    assert "offline (HF_HUB_OFFLINE is set)" in message
    assert ("`huggingface-cli download llava-edge-tests/not-a-model --revision v2`"
            in message) and "pass a local directory" in message


@pytest.mark.parametrize("error, message", [
    (hub_errors.LocalEntryNotFoundError("no connection"),
     "as a Hub id it is the Hub could not be reached and it is not in the cache; download it "
     "with `huggingface-cli download org/name`"),
    (type("ConnectError", (Exception,), {})("[Errno 111] Connection refused"),
     "downloading it from the Hub failed (ConnectError: [Errno 111] Connection refused); "
     "download it with"),
    (TimeoutError("timed out"), "downloading it from the Hub failed (TimeoutError"),
    (hub_errors.RepositoryNotFoundError("404", response=_response()),
     "no Hub repository org/name (or it is private"),
    (hub_errors.GatedRepoError("403", response=_response()), "org/name is gated"),
    (hub_errors.RevisionNotFoundError("404", response=_response()), "has no revision None"),
])
def test_download_failures_are_named(online, error, message):
    online.result = error
    with pytest.raises(ModelNotFoundError, match="^MODEL org/name: ") as e:
        resolve_model("org/name", "MODEL")
    assert message in str(e.value)


def test_a_bug_is_not_reported_as_a_missing_model(online):
    online.result = ZeroDivisionError("bug")
    with pytest.raises(ZeroDivisionError):
        resolve_model("org/name", "MODEL")


# The commands that take a model resolve it the same way (the offline error, one line).


@pytest.mark.parametrize("args, what", [
    (["export", "org/llava-tiny", "-o", "{tmp}/bundle"], "MODEL"),
    (["train", "--stage", "1", "--model", "org/llava-tiny", "--data", "{tmp}/d.json",
      "--output-dir", "{tmp}/run"], "--model"),
    (["init", "--vision", "org/llava-tiny", "--llm", "org/llm", "{tmp}/ckpt"], "--vision"),
])
def test_commands_take_hub_ids(args, what, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "d.json").write_text("[]")
    assert run([a.format(tmp=tmp_path) for a in args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"Error: {what} org/llava-tiny: no such directory; as a Hub id it "
                          "is offline") and len(err.splitlines()) == 1
    assert "huggingface-cli download org/llava-tiny" in err


def test_export_downloads_a_hub_id(tiny_checkpoint, tmp_path, monkeypatch, online):
    import llava_edge.export.bundle_export as bundle_export

    seen = []
    online.result = str(tiny_checkpoint)
    monkeypatch.setattr(bundle_export, "check_supported",
                        lambda path: seen.append(path) or (_ for _ in ()).throw(
                            LlavaEdgeError("stop here")))
    assert run(["export", "org/llava-tiny@main", "-o", str(tmp_path / "b")]) == 1
    assert seen == [Path(tiny_checkpoint)]
    assert online.calls[0]["repo_id"] == "org/llava-tiny"
    assert online.calls[0]["revision"] == "main"
