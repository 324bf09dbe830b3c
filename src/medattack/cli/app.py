"""The Typer app and what every command shares: options, error handling, progress, config loading."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typer.core import TyperGroup

from medattack import __version__
from medattack.errors import BuildError, MedattackError, NothingToDoError

C = TypeVar("C")

console = Console()
err_console = Console(stderr=True)

class GlobalOptionsAnywhere(TyperGroup):
    """`-q` and `-v` may come after the subcommand too (`medattack demo -q`): they are read as if given first."""

    GLOBAL = ("-q", "--quiet", "-v", "--verbose")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        head, tail = args[:end], args[end:]
        hoisted = [a for a in head if a in self.GLOBAL]
        return super().parse_args(ctx, hoisted + [a for a in head if a not in self.GLOBAL] + tail)


app = typer.Typer(
    cls=GlobalOptionsAnywhere,
    name="medattack",
    help="Red-team medical multimodal LLMs: build a benchmark, attack, replay, score, report.\n\n"
    "Example: medattack demo",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
list_app = typer.Typer(help="List what medattack knows.\n\nExample: medattack list tasks", no_args_is_help=True)
analyze_app = typer.Typer(help="Dataset analyses (each writes a CSV and a figure).\n\n"
                          "Example: medattack analyze attributes runs/demo", no_args_is_help=True)
prompts_app = typer.Typer(help="Generate a prompt bank from images: attributes -> normal -> harmful.\n\n"
                          "Example: medattack prompts attributes prompts/ --source embedded", no_args_is_help=True)
app.add_typer(list_app, name="list")
app.add_typer(prompts_app, name="prompts")
app.add_typer(analyze_app, name="analyze")

ConfigOption = Annotated[Path | None, typer.Option(help="YAML file of the stage's settings.")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a setting of the stage's config: key=value (dotted for nested keys: options.rounds=5).")]
PresetOption = Annotated[str | None, typer.Option(
    help="Named settings under the file and flags: paper = the original code's choices (`medattack list presets`).")]
ForceOption = Annotated[bool, typer.Option(help="Replace the output folder's results when it holds another config "
                                                 "(the old ones move to its stale/ folder).")]
ExecutorOption = Annotated[str, typer.Option("--executor", help="local, or ray (actors on a Ray cluster).")]
RayAddressOption = Annotated[str | None, typer.Option(help="Ray cluster address ('auto', 'ray://head:10001'); "
                                                      "none: a local Ray.")]
WorkersOption = Annotated[int | None, typer.Option(help="Ray actors (model copies).")]
GpusOption = Annotated[float | None, typer.Option(help="GPUs per Ray actor (1: one model per GPU).")]


def _version(value: bool) -> None:
    if value:
        console.print(f"medattack {__version__}")
        raise typer.Exit()


QUIET = {"on": False}  # -q: no progress bars (set by the callback before any command runs)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars (results and errors still print).")
                     ] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    QUIET["on"] = quiet
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )


@contextmanager
def errors() -> Iterator[None]:
    """Turn medattack errors into a one-line message and an exit code (1: nothing built or nothing to
    work on, 2: usage)."""
    try:
        yield
    except (BuildError, NothingToDoError) as exc:
        err_console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    except MedattackError as exc:
        err_console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None


@contextmanager
def progress_bar() -> Iterator[Any]:
    """A progress callback `(phase, done, total)` drawing one bar per phase with elapsed time and ETA (a
    no-op with -q)."""
    if QUIET["on"]:
        yield lambda phase, done, total: None
        return
    if not err_console.is_terminal:  # a log file or a pipe: plain lines a reader of the log can follow
        yield plain_progress(err_console.print)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            """One bar per phase; a phase written "KEY | detail" keeps its bar and shows the new detail."""
            key = phase.partition(" | ")[0]
            if key not in tasks:
                tasks[key] = bar.add_task(phase, total=total)
            bar.update(tasks[key], completed=done, total=total, description=phase)

        yield update


def plain_progress(write: Callable[[str], Any], every: float = 30.0,
                   clock: Callable[[], float] = time.monotonic) -> Callable[[str, int, int], None]:
    """A progress callback for a log: one timestamped line when a phase starts or ends, and at most every
    `every` seconds in between (never silent for longer while work goes on)."""
    last: dict[str, float] = {}

    def update(phase: str, done: int, total: int) -> None:
        key = phase.partition(" | ")[0]
        now = clock()
        if key in last and done < total and now - last[key] < every:
            return
        last[key] = now
        write(f"{time.strftime('%H:%M:%S')} {phase}: {done}/{total}")

    return update


def drop_unset(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The flags the user typed (None = not given), nested mappings kept only when something is set
    (as Partial: merged into the file's settings, not replacing them)."""
    from medattack.config import Partial

    out = Partial()
    for key, value in flags.items():
        if isinstance(value, Mapping):
            value = drop_unset(value)
            if not value:
                continue
        if value is not None:
            out[key] = value
    return out


def stage_config(cls: type[C], config: Path | None, set_: list[str] | None, flags: Mapping[str, Any],
                 preset: str | None = None) -> C:
    """The stage's config: its defaults, a preset, the YAML file, the flags the user typed, --set (later wins)."""
    from medattack.config import load_config, merge, parse_overrides

    return load_config(cls, config, merge(drop_unset(flags), parse_overrides(set_ or [])), preset)


def executor_config(kind: str, address: str | None, workers: int | None, gpus_per_worker: float | None) -> Any:
    from medattack.executor import ExecutorConfig

    options = drop_unset({"address": address, "workers": workers, "gpus_per_worker": gpus_per_worker})
    return ExecutorConfig(kind=kind, **options)  # type: ignore[arg-type]
