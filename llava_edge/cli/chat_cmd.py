"""``llava-edge chat``: talk with a bundle about images, in the terminal."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Callable

import click

from llava_edge.cli.common import json_option, sampling_options
from llava_edge.cli.interrupt import cancel_on_sigint
from llava_edge.cli.run_cmd import (bundle_vision_backend_option, max_tiles_option,
                                    runtime_options, tune_option)
from llava_edge.errors import Cancelled, LlavaEdgeError
from llava_edge.runtimes.cancel import Cancel

HELP = ("commands: /image PATH (attach an image to your next message), /reset (forget the "
        "conversation), /exit (or Ctrl-D); Ctrl-C stops an answer")


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--image", "images", multiple=True, type=click.Path(),
              help="Image for the first message (repeat for several).")
@click.option("--system", default=None, help="Replace the template's system prompt.")
@click.option("--max-new-tokens", default=256, show_default=True, help="Per answer.")
@sampling_options
@click.option("--vision-precision", default=None, help="Which vision graph of the bundle.")
@click.option("--llm-quant", default=None, help="Which GGUF of the bundle.")
@click.option("--n-ctx", type=int, default=None, help="Context length (default: bundle's).")
@click.option("--threads", "n_threads", type=int, default=None,
              help="CPU threads (default: all cores).")
@click.option("--stats", is_flag=True, help="After each answer, print its timings to stderr.")
@max_tiles_option
@tune_option
@runtime_options
@bundle_vision_backend_option
@json_option
def chat(bundle, images, system, max_new_tokens, temperature, top_k, top_p, repeat_penalty,
         seed, vision_precision, llm_quant, n_ctx, n_threads, stats, max_tiles, use_tune,
         as_json, **runtime):
    """Chat with BUNDLE: type a message, get a streamed answer; the conversation is kept.

    \b
    Commands:
      /image PATH   attach an image to your next message
      /reset        forget the conversation (and attached images)
      /exit         quit (Ctrl-D too)
    Ctrl-C stops the current answer; the conversation goes on.

    With --json, each answer is one JSON line on stdout (text, tokens, timings) instead
    of streamed text.
    """
    from llava_edge.runtimes.pipeline import LlavaEdge

    with LlavaEdge.load(bundle, vision_precision=vision_precision, llm_quant=llm_quant,
                        n_ctx=n_ctx, n_threads=n_threads, max_tiles=max_tiles,
                        tune=use_tune, **runtime) as model:
        session = model.chat(system=system, max_new_tokens=max_new_tokens,
                             temperature=temperature, top_k=top_k, top_p=top_p,
                             repeat_penalty=repeat_penalty, seed=seed)
        for image in images:
            session.add_image(image)
        interactive = sys.stdin.isatty() and not as_json
        if interactive:
            click.echo(HELP, err=True)
        repl(session, _reader(interactive), lambda s: click.echo(s, nl=False),
             lambda s: click.echo(s, err=True), as_json=as_json, stats=stats)


def _reader(interactive: bool) -> Callable[[], str | None]:
    def read() -> str | None:
        if interactive:
            try:
                return input("> ")
            except EOFError:
                return None
        line = sys.stdin.readline()
        return line if line else None

    return read


def repl(session, read: Callable[[], str | None], out: Callable[[str], None],
         err: Callable[[str], None], as_json: bool = False, stats: bool = False) -> None:
    """Read lines until ``/exit`` or the end of input; answer messages, run commands.

    ``read`` returns a line or None at the end of input; ``out`` writes answer text;
    ``err`` writes a status line. Ctrl-C while reading only asks for ``/exit``; while
    answering it stops the answer.
    """
    while True:
        try:
            line = read()
        except KeyboardInterrupt:
            err("\n(type /exit or press Ctrl-D to quit)")
            continue
        if line is None:
            return
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not _command(session, line, err):
                return
            continue
        _answer(session, line, out, err, as_json, stats)


def _command(session, line: str, err: Callable[[str], None]) -> bool:
    """Run a ``/command``; False means quit."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        session.reset()
        err("(conversation cleared)")
    elif name == "/image":
        if not arg:
            err("Error: /image needs a path")
            return True
        try:
            session.add_image(arg)
        except LlavaEdgeError as e:
            err(f"Error: {e}")
        else:
            err(f"(image attached to your next message: {arg})")
    elif name == "/help":
        err(HELP)
    else:
        err(f"Error: unknown command {name} ({HELP})")
    return True


def _answer(session, message: str, out, err, as_json: bool, stats: bool) -> None:
    # Ctrl-C sets the answer's signal, which stops it within one llama.cpp ubatch even
    # mid-prefill (a KeyboardInterrupt would wait for llama_decode to return).
    cancel = Cancel()
    try:
        stream = session.stream(message, cancel=cancel)
    except LlavaEdgeError as e:
        err(f"Error: {e}")
        return
    except KeyboardInterrupt:
        err("(stopped)")
        return
    pieces = iter(stream)
    stopped = False
    try:
        with cancel_on_sigint(cancel):
            for piece in pieces:
                if not as_json:
                    out(piece)
    except (KeyboardInterrupt, Cancelled):
        stopped = True
    except LlavaEdgeError as e:
        err(f"Error: {e}")
        return
    finally:
        pieces.close()  # ends decoding now; records the turn
    answer = stream.answer
    if as_json:
        out(json.dumps({"text": answer.text, "n_tokens": answer.n_tokens,
                        "n_prompt_tokens": answer.n_prompt_tokens,
                        "stop_reason": "interrupted" if stopped else answer.stop_reason,
                        "timings_ms": asdict(answer.timings)}) + "\n")
    else:
        out("\n")
        if stopped:
            err("(stopped)")
    if stats:
        t = answer.timings
        err(f"({answer.n_tokens} tokens; prefill {t.prefill_tokens} evaluated, "
            f"{t.reused_tokens} reused; images {t.images_encoded} encoded, "
            f"{t.embedding_cache_hits} from cache; first token {t.first_token_ms:.0f} ms, "
            f"total {t.total_ms:.0f} ms)")
