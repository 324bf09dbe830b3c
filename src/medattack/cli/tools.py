"""The commands around the stages: serve, list, prompts (bank generation) and analyze."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from medattack.cli.app import (
    ConfigOption,
    SetOption,
    analyze_app,
    app,
    console,
    errors,
    list_app,
    progress_bar,
    prompts_app,
    stage_config,
)


@app.command(epilog="Examples:\n\n  medattack serve embedded --port 8000\n\n"
             "  medattack serve llava-hf/llava-1.5-7b-hf --host 0.0.0.0 --device cuda --max-batch 16\n\n"
             "  medattack serve hf:google/medgemma-4b-it --api-key-env MEDATTACK_SERVE_KEY")
def serve(
    model: Annotated[str, typer.Argument(help="embedded | tiny | LLAVA_ID_OR_PATH | hf:ID_OR_PATH.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: other machines too).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Requests answered in one batch at most.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 256,
    device: Annotated[str | None, typer.Option(help="torch device.")] = None,
    trust_remote_code: Annotated[bool, typer.Option(help="Let an hf model run its own code.")] = False,
    api_key_env: Annotated[str | None, typer.Option(help="Require the key in this variable (Bearer).")] = None,
    fail_first: Annotated[int, typer.Option(help="Answer the first N requests with 503 (client tests).")] = 0,
) -> None:
    """Serve a local model behind the OpenAI chat-completions API (images as data URLs)."""
    from medattack.models.targets import load_target, parse_target
    from medattack.serve import ChatServer, ServeConfig

    with errors():
        target_config = dataclasses.replace(parse_target(model), max_new_tokens=max_new_tokens, batch_size=max_batch,
                                            device=device, trust_remote_code=trust_remote_code)
        target = load_target(target_config)
        server = ChatServer(target, ServeConfig(host=host, port=port, max_batch=max_batch, fail_first=fail_first,
                                                api_key_env=api_key_env))
    console.print(f"Serving {escape(target.name)} at [bold]{server.base_url}[/bold] (POST /chat/completions); "
                  "Ctrl-C stops.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.close()


# --- list -----------------------------------------------------------------------------------------


def first_paragraph(doc: str | None) -> str:
    """A docstring's first paragraph as one line (its first line alone may stop mid-sentence)."""
    lines = []
    for line in (doc or "").strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines)


def _print_plugins(registry: Any, with_settings: bool = True,
                   settings_of: Callable[[Any], Any] = lambda cls: getattr(cls, "config_class", None)) -> None:
    """Each plugin of a registry: its first docstring line and, with `with_settings`, its settings
    (the dataclass `settings_of(entry)` gives)."""
    from medattack.config import config_help

    for name, cls in registry.items():
        console.print(f"[bold]{escape(name)}[/bold]: {escape(first_paragraph(cls.__doc__))}")
        config_class = settings_of(cls)
        if with_settings and config_class is not None:
            for f in dataclasses.fields(config_class):
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                console.print(escape(f"    {f.name} = {default!r}  {config_help(config_class)[f.name]}"))


@list_app.command("attacks", epilog="Example:\n\n  medattack list attacks")
def list_attacks() -> None:
    """Attack methods and their settings (change with --set options.KEY=VALUE): white-box (`attack`),
    then black-box (`blackbox`)."""
    from medattack.attacks import ATTACKS
    from medattack.blackbox.base import BLACKBOX_ATTACKS

    console.print("[bold]White-box[/bold] (medattack attack RUN --method NAME --model MODEL)")
    _print_plugins(ATTACKS)
    console.print("\n[bold]Black-box[/bold] (medattack blackbox RUN --method NAME --target KIND:MODEL)")
    _print_plugins(BLACKBOX_ATTACKS, settings_of=lambda cls: cls)


@list_app.command("metrics", epilog="Example:\n\n  medattack list metrics")
def list_metrics() -> None:
    """Metrics of the score stage and their settings (score config: metrics: {name: {key: value}})."""
    from medattack.scoring.base import DERIVED, SCORERS

    _print_plugins(SCORERS)
    _print_plugins(DERIVED)


@list_app.command("targets", epilog="Example:\n\n  medattack list targets")
def list_targets() -> None:
    """Target kinds for query and serve (--target KIND:MODEL)."""
    from medattack.models.targets import TARGETS

    _print_plugins(TARGETS, with_settings=False)


@list_app.command("embedders", epilog="Example:\n\n  medattack list embedders")
def list_embedders() -> None:
    """Text embedders (TTO) and image-text backends (TIO, TII) of the score stage."""
    from medattack.scoring.backends.image_text import IMAGE_TEXT_BACKENDS
    from medattack.scoring.backends.text_embedders import TEXT_EMBEDDERS

    _print_plugins(TEXT_EMBEDDERS)
    _print_plugins(IMAGE_TEXT_BACKENDS, with_settings=False)


@list_app.command("tasks", epilog="Example:\n\n  medattack list tasks")
def list_tasks() -> None:
    """The 18 clinical tasks in their 4 groups."""
    from medattack.data.taxonomy import load_taxonomy

    table = Table("group", "task", "description")
    for t in load_taxonomy().tasks:
        table.add_row(t.group, t.name, t.description)
    console.print(table)


@list_app.command("modalities", epilog="Example:\n\n  medattack list modalities")
def list_modalities() -> None:
    """Imaging modalities and their body parts (attributes are '<Modality> and <BodyPart>')."""
    from medattack.data.taxonomy import load_taxonomy

    table = Table("modality", "body parts")
    for modality, parts in load_taxonomy().modalities.items():
        table.add_row(modality, ", ".join(parts))
    console.print(table)


@list_app.command("sources", epilog="Example:\n\n  medattack list sources")
def list_sources() -> None:
    """Image sources and how to name them in --source."""
    from medattack.data.sources import SOURCES

    table = Table("source", "how to use it")
    for name, cls in SOURCES.items():
        table.add_row(name, escape(first_paragraph(cls.__doc__)))
    console.print(table)


@list_app.command("presets", epilog="Example:\n\n  medattack list presets")
def list_presets() -> None:
    """Named settings (`--preset NAME`): every setting each one changes, and why."""
    from medattack.presets import PRESETS

    for name, preset in PRESETS.items():
        table = Table("stage", "setting", "value", "why", title=escape(f"{name}: {preset.description}"))
        for s in preset.settings:
            value = s.value if not isinstance(s.value, dict) else ", ".join(s.value)
            table.add_row(escape(s.stage), escape(s.key), escape(repr(value) if isinstance(value, str) else
                                                                str(value)), escape(s.why))
        console.print(table)


@list_app.command("mismatch", epilog="Example:\n\n  medattack list mismatch")
def list_mismatch() -> None:
    """Strategies for choosing the claimed (false) attribute."""
    from medattack.data.mismatch import MISMATCH_STRATEGIES

    for name, fn in MISMATCH_STRATEGIES.items():
        console.print(f"{name}: {fn.__name__.replace('_', ' ')}")


# --- prompts --------------------------------------------------------------------------------------

ModelOption = Annotated[str | None, typer.Option(help="Writer model: local path/hub id, or the API model name.")]
BaseUrlOption = Annotated[str | None, typer.Option(help="OpenAI-compatible base URL for --writer api.")]
KeyEnvOption = Annotated[str | None, typer.Option(help="Environment variable holding the API key.")]


def _writer_options(model: str | None, base_url: str | None, api_key_env: str | None) -> dict[str, Any]:
    return {"model": model, "api": {"base_url": base_url, "api_key_env": api_key_env}}


@prompts_app.command("attributes", epilog="Examples:\n\n  medattack prompts attributes prompts/\n\n"
                     "  medattack prompts attributes prompts/ --source folder:/data --reader whitebox --model embedded")
def prompts_attributes(
    out: Annotated[Path, typer.Argument(help="Output folder of the prompt-generation steps.")],
    source: Annotated[list[str] | None, typer.Option("--source", "-s", help="Image source (repeatable).")] = None,
    reader: Annotated[str | None, typer.Option(help="metadata (offline, default) | whitebox | hf | api.")] = None,
    model: Annotated[str | None, typer.Option(help="Reader model: embedded, tiny, or a hub id / folder.")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Root that manifest paths must stay inside.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Step 1: read attributes (colour, contrast, texture, lesion...) off every image."""
    from medattack.stages import prompts
    from medattack.stages.prompts import AttributesConfig

    with errors(), progress_bar() as progress:
        step = stage_config(AttributesConfig, config, set_, {
            "sources": source, "reader": reader, "reader_options": {"model": model},
            "data_root": str(data_root) if data_root else None})
        result = prompts.attributes(out, step, progress=progress)
    console.print(escape(f"{result['images']} image(s) read by {result['reader']} ({result['failures']} failed) -> "
                         f"{out / 'attributes.jsonl'}"))


@prompts_app.command("normal", epilog="Examples:\n\n  medattack prompts normal prompts/ --per-task 8\n\n"
                     "  medattack prompts normal prompts/ --writer api --model gpt-4o")
def prompts_normal(
    out: Annotated[Path, typer.Argument(help="Folder holding attributes.jsonl.")],
    per_task: Annotated[int | None, typer.Option(help="Normal questions per clinical task at most (8).")] = None,
    writer: Annotated[str | None, typer.Option(help="template (offline, default) | local | api: who words them.")
                      ] = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    api_key_env: KeyEnvOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Step 2: turn attributes into normal questions for each of the 18 clinical tasks."""
    from medattack.stages import prompts
    from medattack.stages.prompts import NormalConfig

    with errors():
        result = prompts.normal(out, stage_config(NormalConfig, config, set_, {
            "per_task": per_task, "writer": writer, "writer_options": _writer_options(model, base_url, api_key_env)}))
    console.print(escape(f"{result['questions']} normal question(s) over {result['tasks']} tasks "
                         f"({result['rejected']} writer answers rejected) -> {out / 'normal.jsonl'}"))


@prompts_app.command("harmful", epilog="Examples:\n\n  medattack prompts harmful prompts/\n\n"
                     "  medattack prompts harmful prompts/ --writer template\n\n"
                     "  medattack prompts harmful prompts/ --writer api --model gpt-4o")
def prompts_harmful(
    out: Annotated[Path, typer.Argument(help="Folder holding normal.jsonl.")],
    writer: Annotated[str | None, typer.Option(
        help="paraphrase (default, offline: SmolLM2 rewords seed templates) | template | local | api.")] = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    api_key_env: KeyEnvOption = None,
    near_duplicate: Annotated[float | None, typer.Option(
        help="Cosine above which a question is a near-duplicate (0.92).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Step 3: rewrite normal questions into harmful ones with key phrases; write a validated bank.yaml."""
    from medattack.stages import prompts
    from medattack.stages.prompts import HarmfulConfig

    with errors():
        result = prompts.harmful(out, stage_config(HarmfulConfig, config, set_, {
            "writer": writer, "near_duplicate": near_duplicate,
            "writer_options": _writer_options(model, base_url, api_key_env)}))
    console.print(escape(f"{result['triples']} triples (origins {result['origins']}), "
                         f"{result['near_duplicates_dropped']} near-duplicates dropped, {result['rejected']} writer "
                         f"answers rejected -> {result['bank']}"))
    console.print(escape(f"Use it: medattack build RUN --prompt-bank {result['bank']}"))


# --- analyze --------------------------------------------------------------------------------------


@analyze_app.command("attributes", epilog="Example:\n\n  medattack analyze attributes runs/demo")
def analyze_attributes(
    run: Annotated[Path, typer.Argument(help="A built run directory.")],
    backend: Annotated[str, typer.Option(help="Image-text relevance backend.")] = "proxy",
    text_embedder: Annotated[str, typer.Option(help="Text embedder for proxy scores.")] = "minilm",
) -> None:
    """Relevance of each image to its true vs claimed attribute, per category."""
    from medattack.stages import analyze

    with errors():
        result = analyze.attributes(run, backend=backend, text_embedder=text_embedder)
    table = Table("category", "n", "true", "claimed", "gap", "AUC", title=escape(result.rows[0]["backend"]))
    for row in result.by_category:
        table.add_row(escape(row["category"]), str(row["n"]), f"{row['mean_true_relevance']:.3f}",
                      f"{row['mean_claimed_relevance']:.3f}", f"{row['gap']:+.3f}", f"{row['auc']:.3f}")
    console.print(table)
    console.print(f"true vs false claims told apart with AUC {result.auc:.3f} (1 = always, 0.5 = chance)")
    console.print(escape(f"Wrote {result.csv_path}, {result.category_csv_path}, {result.figure_path}"))


@analyze_app.command("prompts", epilog="Examples:\n\n  medattack analyze prompts --run runs/demo\n\n"
                     "  medattack analyze prompts --bank my_bank.yaml --out analysis/")
def analyze_prompts(
    run: Annotated[Path | None, typer.Option(help="Analyse the prompts of this built run.")] = None,
    bank: Annotated[Path | None, typer.Option(help="Analyse this prompt bank (default: embedded).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: RUN/analysis or .).")] = None,
    text_embedder: Annotated[str, typer.Option(help="Text embedder.")] = "minilm",
) -> None:
    """Prompt-by-prompt relevance aggregated per clinical task."""
    from medattack.stages import analyze

    with errors():
        result = analyze.prompts(run, str(bank) if bank else None, text_embedder, out)
    console.print(escape(f"Wrote {result.csv_path}, {result.figure_path}"))
