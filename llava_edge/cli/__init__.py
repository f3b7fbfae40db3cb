"""The ``llava-edge`` command line.

Exit codes: 0 success; 1 bad input or usage (a one-line message, no traceback);
2 an internal error (a bug: set ``LLAVA_EDGE_DEBUG=1`` to see the traceback);
130 interrupted. Commands that produce results take ``--json``. Heavy libraries
(torch, transformers) are imported inside the commands that need them, so ``--help``
and the runtime commands stay fast and torch-free.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from llava_edge import __version__
from llava_edge.errors import LlavaEdgeError

EXIT_OK, EXIT_USER, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 130


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="llava-edge")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details (INFO) to stderr.")
def cli(verbose: bool) -> None:
    """Train LLaVA, export it to ONNX + GGUF, and run it fast on small machines.

    \b
    Typical flow:
      llava-edge init --preset tiny ckpt/        # a checkpoint to start from
      llava-edge data shapes data/               # synthetic LLaVA data
      llava-edge info ckpt/                      # what a checkpoint (or bundle) is
    """
    # Configure the root logger before any library does: some (onnxruntime's quantizer)
    # call logging.basicConfig(level=INFO) on import, which is a no-op once we have.
    import logging

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)


def _register_commands() -> None:
    from llava_edge.cli import (convert_cmd, data_cmd, eval_cmd, export_cmd, info_cmd, init_cmd,
                                run_cmd, train_cmd, verify_cmd)

    cli.add_command(init_cmd.init)
    cli.add_command(convert_cmd.convert)
    cli.add_command(data_cmd.data)
    cli.add_command(info_cmd.info)
    cli.add_command(train_cmd.train)
    cli.add_command(eval_cmd.eval_)
    cli.add_command(export_cmd.export)
    cli.add_command(run_cmd.run)
    cli.add_command(run_cmd.embed)
    cli.add_command(verify_cmd.verify)
    from llava_edge.cli import chat_cmd

    cli.add_command(chat_cmd.chat)
    from llava_edge.cli import serve_cmd

    cli.add_command(serve_cmd.serve)
    from llava_edge.cli import watch_cmd

    cli.add_command(watch_cmd.watch)
    from llava_edge.cli import bench_cmd

    cli.add_command(bench_cmd.bench)
    from llava_edge.cli import bench_suite_cmd

    for command in (bench_suite_cmd.bench_vision, bench_suite_cmd.bench_reuse,
                    bench_suite_cmd.bench_serve_load, bench_suite_cmd.bench_soak,
                    bench_suite_cmd.bench_quick,
                    bench_suite_cmd.bench_int8_schemes, bench_suite_cmd.bench_tiling,
                    bench_suite_cmd.bench_loop):
        cli.add_command(command)
    from llava_edge.cli import demo_cmd

    cli.add_command(demo_cmd.demo)
    from llava_edge.cli import doctor_cmd

    cli.add_command(doctor_cmd.doctor)
    from llava_edge.cli import pretrain_vision_cmd

    cli.add_command(pretrain_vision_cmd.pretrain_vision)
    from llava_edge.cli import tune_cmd

    cli.add_command(tune_cmd.tune)


_register_commands()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llava-edge`` script; returns (and exits with) the exit code."""
    code = run(argv)
    sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` and return the exit code instead of exiting."""
    try:
        result = cli.main(args=argv, prog_name="llava-edge", standalone_mode=False)
        return result if isinstance(result, int) else EXIT_OK
    except click.exceptions.Exit as e:  # --help, --version
        return e.exit_code
    except click.ClickException as e:  # usage errors, bad parameters, unreadable files
        e.show()
        return EXIT_USER
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("Interrupted.", err=True)
        return EXIT_INTERRUPTED
    except LlavaEdgeError as e:
        click.echo(f"Error: {e}", err=True)
        return EXIT_USER
    except BrokenPipeError:
        return EXIT_OK  # e.g. `llava-edge info x | head`
    except Exception as e:  # noqa: BLE001 - the last line of defence
        if os.environ.get("LLAVA_EDGE_DEBUG"):
            traceback.print_exc()
        click.echo(
            f"Internal error: {type(e).__name__}: {e}\n"
            "This is a bug in llava-edge. Rerun with LLAVA_EDGE_DEBUG=1 for the traceback.",
            err=True,
        )
        return EXIT_INTERNAL
