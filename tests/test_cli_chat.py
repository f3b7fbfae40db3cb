"""``llava-edge chat``: commands, streamed answers, Ctrl-C that stops only the answer."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from llava_edge.cli.chat_cmd import repl
from llava_edge.runtimes.pipeline import LlavaEdge


def _scene(seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.full((64, 80, 3), 235, np.uint8)
    arr[10:30, 20:40] = rng.integers(0, 256, 3)
    return Image.fromarray(arr)


def _chat(bundle, stdin: str, *args):
    return subprocess.run([sys.executable, "-m", "llava_edge", "chat", str(bundle),
                           "--threads", "1", "--max-new-tokens", "6", *args],
                          input=stdin, capture_output=True, text=True)


def test_chat_commands_and_json_answers(tiny_bundle, tmp_path):
    _scene(1).save(tmp_path / "a.png")
    _scene(2).save(tmp_path / "b.png")
    lines = ["What is it?", "/image nope.png", f"/image {tmp_path / 'b.png'}",
             "Compare the two images.", "/reset", "What is it?", "/bogus", "/exit",
             "never read"]
    out = _chat(tiny_bundle, "\n".join(lines) + "\n", "--image", str(tmp_path / "a.png"),
                "--json")
    assert out.returncode == 0, out.stderr
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(answers) == 3  # "never read" comes after /exit
    first, second, after_reset = (a["timings_ms"] for a in answers)
    assert first["images_encoded"] == 1
    assert second["images_encoded"] == 1 and second["reused_tokens"] > first["prefill_tokens"] // 2
    assert answers[1]["n_prompt_tokens"] > answers[0]["n_prompt_tokens"] + 16
    assert answers[2]["n_prompt_tokens"] < answers[0]["n_prompt_tokens"]  # no image, no history
    assert "nope.png: no such image file" in out.stderr
    assert "conversation cleared" in out.stderr and "unknown command /bogus" in out.stderr
    assert "Traceback" not in out.stderr


def test_chat_streams_text_and_ends_at_end_of_input(tiny_bundle):
    out = _chat(tiny_bundle, "Count to three.\n", "--stats")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and "prefill" in out.stderr
    bad = _chat(tiny_bundle, "", "--image", "missing.png")
    assert bad.returncode == 1 and "missing.png: no such image file" in bad.stderr


def test_ctrl_c_stops_the_answer_not_the_session(tiny_bundle):
    with LlavaEdge.load(tiny_bundle, n_threads=1) as model:
        session = model.chat(max_new_tokens=12)
        lines = iter(["Describe the image in detail.", "Go on.", None])
        written, status = [], []
        interrupts = [True]

        def out(text):
            if interrupts and interrupts.pop():
                raise KeyboardInterrupt  # the user presses Ctrl-C at the first piece
            written.append(text)

        repl(session, lambda: next(lines), out, status.append)
        assert "(stopped)" in status
        assert len(session.messages) == 4  # both turns recorded, the first one cut short
        first, second = session.messages[1]["content"], session.messages[3]["content"]
        assert "".join(written).strip() == second
        with LlavaEdge.load(tiny_bundle, n_threads=1, reuse_prefix=False) as ref:
            expected = ref.ask_messages(session.history()[:-1], max_new_tokens=12)
            uncut = ref.ask_messages(session.history()[:1], max_new_tokens=12)
        assert expected.text == second  # the session went on as a stateless call would
        assert len(first) < len(uncut.text) and uncut.text.startswith(first)


@pytest.mark.parametrize("line", ["/exit", "/quit"])
def test_exit_commands(tiny_bundle, line):
    out = _chat(tiny_bundle, f"{line}\nWhat is it?\n", "--json")
    assert out.returncode == 0 and out.stdout == ""


@pytest.mark.slow
def test_sigint_stops_each_answer_and_the_session_goes_on(tiny_bundle):
    import os
    import re
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "llava_edge", "chat", str(tiny_bundle),
                             "--threads", "1", "--max-new-tokens", "1500", "--n-ctx", "2048",
                             "--stats"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=0)
    out_fd = proc.stdout.fileno()  # read raw bytes: a text wrapper would buffer ahead

    def drain_stdout():
        os.set_blocking(out_fd, False)
        try:
            while os.read(out_fd, 65536):
                pass
        except BlockingIOError:
            pass
        finally:
            os.set_blocking(out_fd, True)

    try:
        proc.stdin.write("Write a very long story.\n")
        os.read(out_fd, 1)  # the answer is streaming (1500 tokens take a while)
        os.kill(proc.pid, signal.SIGINT)
        assert proc.stderr.readline().strip() == "(stopped)"
        first = proc.stderr.readline()
        # The first answer's text (and its closing newline) came before "(stopped)";
        # drop it so the next byte read belongs to the second answer.
        drain_stdout()
        proc.stdin.write("Write another one.\n")
        os.read(out_fd, 1)  # the second answer is streaming: stop it now, not after a sleep
        os.kill(proc.pid, signal.SIGINT)
        proc.stdin.write("/exit\n")
        proc.stdin.close()
        # Read stderr through its own text wrapper to the end: communicate() would read
        # the pipe underneath and miss lines the wrapper had already buffered.
        err = proc.stderr.read()
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    stats = [first] + [line for line in err.splitlines() if "tokens; prefill" in line]
    assert err.startswith("(stopped)") and len(stats) == 2, err
    n_tokens = [int(re.match(r"\((\d+) tokens", line).group(1)) for line in stats]
    assert all(n < 1500 for n in n_tokens), n_tokens
    assert int(re.search(r"(\d+) reused", stats[1]).group(1)) > 0  # turn 1 stayed cached
