"""`watch`: the newest frame asked about round after round, stale frames dropped (counted),
JSON lines out; the Python loop and the `llava-edge watch` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from llava_edge.cli import cli, run
from llava_edge.runtimes.frame_source import FrameSource
from llava_edge.runtimes.pipeline import LlavaEdge
from llava_edge.runtimes.watch import WatchSummary, watch

cv2 = pytest.importorskip("cv2")


def _picture(i: int) -> np.ndarray:
    """Frame i: a different block pattern per i (RGB uint8, 96 x 128)."""
    rng = np.random.default_rng(i)
    return np.kron(rng.integers(0, 256, (6, 8, 3)), np.ones((16, 16, 1))).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    for i in range(6):
        Image.fromarray(_picture(i)).save(root / f"f{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A 3-second MJPG clip at 30 fps, written with OpenCV."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (128, 96))
    assert writer.isOpened()
    for i in range(90):
        writer.write(_picture(i % 7)[:, :, ::-1])
    writer.release()
    return path


@pytest.fixture(scope="module")
def model(tiny_bundle):
    with LlavaEdge.load(tiny_bundle, vision_precision="fp32", llm_quant="F16",
                        n_threads=1) as m:
        yield m


def test_lockstep_folder_asks_every_frame_in_order_and_answers_as_ask_does(model, folder):
    summary = WatchSummary()
    with FrameSource(folder) as source:
        records = list(watch(model, [source], ["What is it?", "Which colour?"],
                             summary=summary, max_new_tokens=6))
    assert len(records) == 12 and summary.rounds == 6 and summary.ended_by == "source ended"
    assert [r.frames[0].name for r in records[::2]] == [f"f{i:02d}.png" for i in range(6)]
    assert [r.question for r in records[:2]] == ["What is it?", "Which colour?"]
    assert summary.sources[0]["dropped"] == 0 and summary.sources[0]["taken"] == 6
    for r in records:
        f = r.frames[0]
        assert f.captured_at <= r.started_at <= r.first_token_at <= r.done_at
        assert r.age_s == pytest.approx(r.done_at - f.captured_at)
    # the same answer as a plain ask (greedy), and the second question reused the frame
    expected = model.ask(_picture(3), "Which colour?", max_new_tokens=6)
    assert records[7].answer == expected.text and records[7].frames[0].index == 3
    assert records[7].timings_ms["reused_tokens"] > 0  # KV kept up to the question
    json.dumps(records[0].to_json())  # one JSON line per record


def test_realtime_video_drops_stale_frames_and_counts_them(model, video):
    # Played at 1,000 fps (a frame due every millisecond) so that frames are always due
    # while a round runs: the next round must take the newest frame, not the next. At
    # 120 fps a round on this tiny model (~7 ms with cached embeddings and prefix reuse on
    # an AVX-512 CPU) could end before the next frame was due, and nothing was dropped.
    model.clear_cache()  # the folder test cached these pictures' embeddings
    summary = WatchSummary()
    with FrameSource(video, fps=1000.0) as source:
        records = list(watch(model, [source], ["What is it?"], summary=summary,
                             max_new_tokens=12))
    counts = summary.sources[0]
    indices = [r.frames[0].index for r in records]
    assert indices == sorted(set(indices))  # always newer
    assert counts["dropped"] > 0 and counts["read"] == 90 and len(records) >= 1
    assert counts["read"] == counts["taken"] + counts["dropped"]
    assert counts["taken"] == len(records) == summary.rounds


def test_two_frames_per_question_reuse_the_older_frames_embeddings(model, folder):
    model.clear_cache()
    with FrameSource(folder) as source:
        records = list(watch(model, [source], ["What changed?"], frames=2, max_rounds=3,
                             max_new_tokens=4))
    assert [[f.index for f in r.frames] for r in records] == [[0, 1], [1, 2], [2, 3]]
    assert records[0].timings_ms["images_encoded"] == 2
    for r in records[1:]:  # only the newest frame runs through the vision graph
        assert r.timings_ms["embedding_cache_hits"] == 1
        assert r.timings_ms["images_encoded"] == 1


def test_two_sources_are_asked_about_together(model, folder, tmp_path):
    right = tmp_path / "right"
    right.mkdir()
    for i in range(3):
        Image.fromarray(_picture(10 + i)).save(right / f"r{i}.png")
    with FrameSource(folder) as left, FrameSource(right) as r:
        records = list(watch(model, [left, r], ["Left or right?"], max_new_tokens=3))
    assert len(records) == 3  # the shorter source ends the watch
    assert [f.name for f in records[1].frames] == ["f01.png", "r1.png"]


def test_watch_refuses_what_it_cannot_do(model, folder):
    from llava_edge.errors import LlavaEdgeError, PromptError

    with FrameSource(folder) as source:
        with pytest.raises(PromptError, match="at least one question"):
            next(watch(model, [source], ["  "]))
        with pytest.raises(PromptError, match="frames"):
            next(watch(model, [source], ["Q?"], frames=0))
    with pytest.raises(LlavaEdgeError, match="frame source"):
        next(watch(model, [], ["Q?"]))


def test_model_watch_opens_and_closes_its_sources(model, folder):
    records = list(model.watch(str(folder), "What is it?", max_rounds=2, max_new_tokens=2))
    assert [r.frames[0].index for r in records] == [0, 1]


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_cli_writes_json_lines_and_a_summary(tiny_bundle, folder, tmp_path):
    out = tmp_path / "answers.jsonl"
    result = CliRunner().invoke(cli, [
        "watch", str(tiny_bundle), "--source", str(folder), "--question", "What is it?",
        "--max-rounds", "3", "--max-new-tokens", "4", "--threads", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = _lines(out.read_text())
    assert [line["type"] for line in lines] == ["answer"] * 3 + ["summary"]
    assert lines[-1]["ended_by"] == "rounds" and lines[-1]["answers"] == 3
    assert lines[-1]["sources"][0]["taken"] == 3
    assert {"question", "answer", "frames", "started_at", "first_token_at", "done_at",
            "age_s", "timings_ms"} <= set(lines[0])
    assert "3 answer(s) in 3 round(s)" in result.output  # the summary on stderr


@pytest.mark.parametrize("args, message", [
    (["--source", "/no/such/place", "--question", "Q?"], "/no/such/place"),
    (["--source", "{folder}"], "--question"),
    (["--source", "{folder}", "--question", "Q?", "--json-schema", "{bad}"], "bad.json"),
])
def test_cli_errors_name_the_thing_at_fault(tiny_bundle, folder, tmp_path, args, message,
                                             capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    args = [a.format(folder=folder, bad=bad) for a in args]
    assert run(["watch", str(tiny_bundle), *args]) == 1
    assert message in capsys.readouterr().err


def test_ctrl_c_ends_the_watch_cleanly(tiny_bundle, video, tmp_path):
    """SIGINT to a looping watch: exit 0, every line whole, the summary last."""
    out = tmp_path / "answers.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "llava_edge", "watch", str(tiny_bundle), "--source", str(video),
         "--loop", "--question", "What is it?", "--max-new-tokens", "4", "--threads", "1",
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    lines = _lines(out.read_text())
    assert lines[-1]["type"] == "summary" and lines[-1]["ended_by"] == "interrupted"
    assert all(line["type"] == "answer" for line in lines[:-1]) and len(lines) >= 4
    assert "ended by interrupted" in stderr


def test_cli_structured_answers_parse(tiny_bundle, folder, tmp_path):
    """--json-schema / --choice: every record carries the parsed value (or says it was cut)."""
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({
        "type": "object", "required": ["clear", "objects"],
        "properties": {"clear": {"type": "boolean"},
                       "objects": {"type": "integer"}}}))
    out = tmp_path / "schema.jsonl"
    assert run(["watch", str(tiny_bundle), "--source", str(folder), "--question", "Clear?",
                "--json-schema", str(schema), "--max-rounds", "3", "--max-new-tokens", "48",
                "--temperature", "1.0", "--seed", "3", "--threads", "1",
                "--out", str(out)]) == 0
    answers = _lines(out.read_text())[:-1]
    assert len(answers) == 3
    for line in answers:
        if line["error"] is None:
            assert set(line["value"]) == {"clear", "objects"}
            assert json.loads(line["answer"]) == line["value"]
        else:
            assert "max_new_tokens=48" in line["error"] and line["stop_reason"] == "length"
    out = tmp_path / "choice.jsonl"
    assert run(["watch", str(tiny_bundle), "--source", str(folder), "--question", "Clear?",
                "--choice", "yes", "--choice", "no", "--max-rounds", "4",
                "--temperature", "1.0", "--seed", "1", "--threads", "1",
                "--out", str(out)]) == 0
    answers = _lines(out.read_text())[:-1]
    assert [line["value"] in ("yes", "no") and line["answer"] == line["value"]
            for line in answers] == [True] * 4


def test_run_takes_the_same_structured_options(tiny_bundle, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.fromarray(_picture(1)).save(image)
    assert run(["run", str(tiny_bundle), "--image", str(image), "--prompt", "Clear?",
                "--choice", "yes", "--choice", "no", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["value"] in ("yes", "no") and result["text"] == result["value"]
    assert run(["run", str(tiny_bundle), "--image", str(image), "--prompt", "Clear?",
                "--choice", "yes", "--json-schema", str(image)]) == 1
    assert "--json-schema" in capsys.readouterr().err


def test_bench_loop_runs_every_scenario(tiny_bundle, tmp_path):
    """bench-loop on a given bundle, one second per run: every scenario with reuse on and
    off, counts that add up, the grammar's cost measured on the choices scenario."""
    from llava_edge.benchmarks.loop_bench import SCENARIOS, run_loop_bench

    folder = run_loop_bench(bundle=tiny_bundle, work_dir=tmp_path / "work", out=tmp_path,
                            duration_s=1.0, max_new_tokens=4, threads=1)
    res = json.loads((folder / "results.json").read_text())
    assert [(r["scenario"], r["reuse"]) for r in res["runs"]] == [
        (s.name, reuse) for s in SCENARIOS for reuse in (True, False)]
    for r, questions in zip(res["runs"], [len(s.questions) for s in SCENARIOS
                                          for _ in (True, False)]):
        assert r["answers"] == r["rounds"] * questions > 0
        assert r["frames_taken"] >= r["rounds"] and r["frames_read"] >= r["frames_taken"]
        assert r["age_p50_s"] > 0 and r["answers_per_min"] > 0
    assert res["runs"][-1]["constrain_ms_per_token"] > 0
    assert "| yes/no (choices) | on |" in (folder / "results.md").read_text()


def test_a_cancel_stops_the_answer_in_progress_and_the_watch(model, folder):
    from llava_edge.errors import Cancelled
    from llava_edge.runtimes.cancel import Cancel

    cancel, summary = Cancel(), WatchSummary()
    with FrameSource(folder) as source:
        records = watch(model, [source], ["What is it?"], summary=summary, cancel=cancel,
                        max_new_tokens=4)
        assert next(records).round == 0
        cancel.cancel("interrupted")  # between rounds: no new round starts
        assert list(records) == [] and summary.ended_by == "cancelled"
        assert summary.rounds == 1
    # a signal set before the first round: no answer at all
    summary = WatchSummary()
    with FrameSource(folder) as source:
        records = watch(model, [source], ["What is it?"], summary=summary, max_new_tokens=4,
                        cancel=cancel)
        assert list(records) == [] and summary.ended_by == "cancelled"
    # a signal during an answer: the ask stops and the watch raises Cancelled
    armed = Cancel()
    with FrameSource(folder) as source:
        records = watch(model, [source], ["What is it?"], summary=summary, max_new_tokens=64,
                        cancel=armed)
        next(records)
        real_ask = model.ask

        def ask_then_cancel(*args, **kwargs):
            armed.cancel("interrupted")  # as a Ctrl-C arriving during the prefill
            return real_ask(*args, **kwargs)

        model.ask = ask_then_cancel
        try:
            with pytest.raises(Cancelled):
                next(records)
        finally:
            del model.ask
    assert summary.ended_by == "cancelled"
