"""Helpers shared by the CLI commands: JSON output, progress bars, tables."""

from __future__ import annotations

import functools
import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import click

from llava_edge.progress import Progress

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout."
)

_SAMPLING_OPTIONS = (  # in the order --help lists them
    click.option("--temperature", default=0.0, show_default=True, help="0 = greedy."),
    click.option("--top-k", default=0, show_default=True),
    click.option("--top-p", default=1.0, show_default=True),
    click.option("--repeat-penalty", default=1.0, show_default=True),
    click.option("--seed", type=int, default=None),
)


def sampling_options(command: Callable) -> Callable:
    """Add --temperature, --top-k, --top-p, --repeat-penalty and --seed to ``command``
    (keyword arguments ``temperature``, ``top_k``, ``top_p``, ``repeat_penalty``,
    ``seed``), and check them before it runs, so that a bad value exits 1 naming the
    option (``--top-p must be in (0, 1], got 2.0``) before any model is loaded."""

    @functools.wraps(command)
    def checked(**kwargs):
        from llava_edge.errors import SamplingError
        from llava_edge.runtimes.sampling import SamplingParams

        try:
            SamplingParams(temperature=kwargs["temperature"], top_k=kwargs["top_k"],
                           top_p=kwargs["top_p"], repeat_penalty=kwargs["repeat_penalty"],
                           seed=kwargs["seed"])
        except SamplingError as e:
            raise SamplingError("--" + e.option.replace("_", "-"), e.value,
                                e.requirement) from None
        return command(**kwargs)

    for option in reversed(_SAMPLING_OPTIONS):
        checked = option(checked)
    return checked


def emit_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout (paths and other objects as strings)."""
    click.echo(json.dumps(obj, indent=2, default=str))


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Progress]:
    """Yield an ``update(done, total)`` callback that drives a progress bar on stderr.

    The bar is drawn only on an interactive terminal; elsewhere (CI logs, pipes) the
    callback does nothing, so logs stay clean.
    """
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), TaskProgressColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


def command_line(ctx: click.Context) -> str:
    """The command as typed (``llava-edge bench --preset tiny``), with only the options
    that were given on the command line (defaults left out), for a report to record."""
    import shlex

    from click.core import ParameterSource

    parts = ctx.command_path.split()
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        if isinstance(param, click.Argument):
            parts += [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
            continue
        flag = param.opts[0]
        if isinstance(param, click.Option) and param.is_flag:
            if param.secondary_opts and not value:
                flag = param.secondary_opts[0]
            parts.append(flag)
        elif getattr(param, "multiple", False):
            for v in value:
                parts += [flag, str(v)]
        elif isinstance(value, (tuple, list)):  # a parsed list (``--settings a,b``)
            parts += [flag, ",".join(str(v) for v in value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def structured_options(command: Callable) -> Callable:
    """Add --json-schema FILE and --choice LABEL (repeatable) to ``command``, passed on as
    the keyword argument ``structured``: ``{}``, ``{"json_schema": dict}`` or
    ``{"choices": [...]}``, ready for ``LlavaEdge.ask(**structured)``. A schema file that
    is not JSON, or both options, exit 1 naming the option before any model is loaded."""

    @functools.wraps(command)
    def checked(**kwargs):
        from llava_edge.errors import StructuredOutputError

        schema_file, choices = kwargs.pop("json_schema_file"), kwargs.pop("choices")
        if schema_file and choices:
            raise StructuredOutputError("--json-schema and --choice cannot be used together")
        structured: dict = {}
        if schema_file:
            try:
                with open(schema_file, encoding="utf-8") as f:
                    structured["json_schema"] = json.load(f)
            except (OSError, UnicodeDecodeError, ValueError) as e:
                raise StructuredOutputError(f"--json-schema {schema_file}: not a JSON file "
                                            f"({e})") from None
        if choices:
            structured["choices"] = list(choices)
        return command(structured=structured, **kwargs)

    checked = click.option(
        "--choice", "choices", multiple=True,
        help="Constrain the answer to exactly one of these labels (repeat for each).")(checked)
    return click.option(
        "--json-schema", "json_schema_file", type=click.Path(exists=True, dir_okay=False),
        default=None, help="Constrain the answer to JSON that this schema file allows "
                           "(llama.cpp's grammar).")(checked)
