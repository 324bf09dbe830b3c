"""The Typer app and what every command shares: options, error handling, progress, config loading."""

from __future__ import annotations

import logging
import os
import sys
import threading
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

PIPE_COLUMNS = 160  # the width of tables written to a file or a pipe (a terminal's own width otherwise)


def _console(stderr: bool) -> Console:
    """Output that is never broken mid-line: text is not wrapped (soft wrap), and a table written to a log or a
    pipe is laid out PIPE_COLUMNS wide (or $COLUMNS) instead of rich's 80. The stream is looked up at each write
    (a test's captured stdout too)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS") or PIPE_COLUMNS)
    return Console(stderr=stderr, soft_wrap=True, width=width)


console = _console(stderr=False)
err_console = _console(stderr=True)

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
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[log_handler()])


def log_handler() -> logging.Handler:
    """The console's log handler: every record, the HTTP library's included, with its URLs redacted first."""
    from medattack.redaction import RedactingFilter

    handler = RichHandler(console=err_console, show_path=False)
    handler.addFilter(RedactingFilter())
    return handler


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
        with plain_progress(lambda line: err_console.print(line, markup=False, highlight=False)) as plain:
            yield plain
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


class PlainProgress:
    """A progress callback for a log: one timestamped line when a phase starts or ends, and at most every `every`
    seconds in between; used as a context, a heartbeat thread also writes a line when a phase has said nothing for
    `every` seconds (a model loading, one long batch), so the log is never silent longer while work goes on."""

    def __init__(self, write: Callable[[str], Any], every: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write, self.every, self.clock = write, every, clock
        self.last: dict[str, float] = {}  # phase key -> when its last line was written
        self.open: dict[str, tuple[str, int, int, float]] = {}  # unfinished phase key -> (phase, done, total, since)
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        key = phase.partition(" | ")[0]
        with self.lock:
            now = self.clock()
            if done < total:
                moved = key not in self.open or self.open[key][1] != done
                self.open[key] = (phase, done, total, now if moved else self.open[key][3])
            else:
                self.open.pop(key, None)
            if key in self.last and done < total and now - self.last[key] < self.every:
                return
            self.last[key] = now
            self.write(f"{time.strftime('%H:%M:%S')} {phase}: {done}/{total}")

    def beat(self) -> None:
        """A line for each unfinished phase silent for `every` seconds: where it is and how long since it moved."""
        with self.lock:
            now = self.clock()
            for key, (phase, done, total, since) in self.open.items():
                if now - self.last.get(key, since) >= self.every:
                    self.last[key] = now
                    self.write(f"{time.strftime('%H:%M:%S')} {phase}: {done}/{total} (still working, "
                               f"{now - since:.0f} s on this step)")

    def __enter__(self) -> PlainProgress:
        def loop() -> None:
            while not self.stopped.wait(min(self.every / 3, 5.0)):
                self.beat()

        self.thread = threading.Thread(target=loop, name="medattack-progress", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()


def plain_progress(write: Callable[[str], Any], every: float = 30.0,
                   clock: Callable[[], float] = time.monotonic) -> PlainProgress:
    """A PlainProgress writing to `write` (enter it for the heartbeat)."""
    return PlainProgress(write, every, clock)


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


def typed_keys(config: Path | None, set_: list[str] | None, flags: Mapping[str, Any],
               preset: str | None = None) -> frozenset[str]:
    """The dotted settings the user typed for a stage: in the file, the flags given, --set, and all settings when a
    preset is named (what `continuing` may not take from a folder)."""
    from medattack.config import load_yaml, parse_overrides

    if preset:
        return frozenset({""})  # a preset sets many settings: every one counts as typed
    typed = dict(load_yaml(config.read_text(encoding="utf-8"), str(config)) or {}) if config else {}

    def dotted(mapping: Mapping[str, Any], prefix: str = "") -> set[str]:
        out = set()
        for key, value in mapping.items():
            if isinstance(value, Mapping) and value:
                out |= dotted(value, f"{prefix}{key}.")
            else:
                out.add(f"{prefix}{key}")
        return out

    return frozenset(dotted(typed) | dotted(drop_unset(flags)) | dotted(parse_overrides(set_ or [])))


def continuing(run: Callable[[C], Any], cls: type[C], config: C, typed: frozenset[str]) -> Any:
    """`run(config)`; when the stage's folder holds results of other settings the user did not type (a folder the
    demo made with 24 new tokens, continued by a bare `medattack query runs/demo --target embedded`), the folder's
    settings are taken for those, said on stderr, and the stage runs once more. A typed setting that differs is
    refused as before (the error names it and the fixes)."""
    from medattack.config import from_mapping, to_dict
    from medattack.errors import OtherConfigurationError

    try:
        return run(config)
    except OtherConfigurationError as exc:
        kept = exc.previous.get("stage")
        if isinstance(kept, dict) and isinstance(exc.previous.get("method"), dict):  # a method's settings, resolved
            kept = {**kept, "options": exc.previous["method"]}
        settings = [setting for key in exc.changed if (setting := _setting_of(key))]
        if not isinstance(kept, dict) or len(settings) != len(exc.changed) or any(
                _is_typed(key, typed) for key in settings):
            raise
        try:
            adopted = from_mapping(cls, {**to_dict(config), **_settings_at(kept, settings)}, "the folder's settings")
        except MedattackError:
            raise exc from None
        said = ", ".join(f"{key}={_value_at(kept, key)!r}" for key in settings)
        err_console.print(f"continuing with the settings the folder holds: {said} (type them to change them)",
                          markup=False, highlight=False)
        return run(adopted)


def _setting_of(stamp_key: str) -> str | None:
    """The stage setting a stamp's dotted key records ("stage.limit" -> "limit", "method.rounds" ->
    "options.rounds"); None for what is not a setting (the target's name)."""
    head, _, rest = stamp_key.partition(".")
    return rest if head == "stage" and rest else f"options.{rest}" if head == "method" and rest else None


def _is_typed(key: str, typed: frozenset[str]) -> bool:
    """Whether the dotted setting `key` was typed (itself, a mapping above it, or a setting inside it)."""
    return any(t == "" or key == t or key.startswith(t + ".") or t.startswith(key + ".") for t in typed)


def _value_at(mapping: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        mapping = mapping.get(part) if isinstance(mapping, Mapping) else None  # type: ignore[assignment]
    return mapping


def _settings_at(kept: Mapping[str, Any], keys: list[str]) -> dict[str, Any]:
    """The top-level settings of `kept` that hold one of the dotted `keys` (whole: a nested config is replaced)."""
    return {key.split(".")[0]: kept.get(key.split(".")[0]) for key in keys}


def executor_config(kind: str, address: str | None, workers: int | None, gpus_per_worker: float | None) -> Any:
    from medattack.executor import ExecutorConfig

    options = drop_unset({"address": address, "workers": workers, "gpus_per_worker": gpus_per_worker})
    return ExecutorConfig(kind=kind, **options)  # type: ignore[arg-type]
