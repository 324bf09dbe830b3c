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
    max_new_tokens: Annotated[int, typer.Option(
        help="Answer length in tokens for a request that gives no max_tokens.")] = 256,
    max_tokens_cap: Annotated[int, typer.Option(
        help="Largest max_tokens a request may ask for; a larger ask is cut to it (said in the "
             "X-Medattack-Max-Tokens-Capped header).")] = 4096,
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
                                                api_key_env=api_key_env, max_tokens=max_tokens_cap))
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


JsonOption = Annotated[bool, typer.Option("--json", help="Print the list as JSON (one object per entry).")]


def _print_json(entries: list[dict[str, Any]]) -> None:
    """Entries as JSON on stdout (settings' defaults as JSON values; anything else as its text)."""
    import json

    def plain(value: Any) -> Any:
        is_record = dataclasses.is_dataclass(value) and not isinstance(value, type)
        return dataclasses.asdict(value) if is_record else str(value)

    typer.echo(json.dumps(entries, indent=2, ensure_ascii=False, default=plain))


def plugin_entries(registry: Any, with_settings: bool = True,
                    settings_of: Callable[[Any], Any] = lambda cls: getattr(cls, "config_class", None),
                    ) -> list[dict[str, Any]]:
    """Each plugin of a registry: name, the first paragraph of its docstring and, with `with_settings`, the
    settings of the dataclass `settings_of(entry)` gives (name, default, help)."""
    from medattack.config import config_help

    entries = []
    for name, cls in registry.items():
        info = registry.info(name)
        entry: dict[str, Any] = {"name": name, "description": first_paragraph(cls.__doc__), "summary": info.summary,
                                 "citation": info.citation, "modality": info.modality, "access": info.access,
                                 "needs": list(info.needs), "from": info.origin}
        config_class = settings_of(cls)
        if with_settings and config_class is not None:
            entry["settings"] = [
                {"name": f.name, "default": f.default_factory() if f.default_factory is not dataclasses.MISSING
                 else f.default, "help": config_help(config_class)[f.name]} for f in dataclasses.fields(config_class)]
        entries.append(entry)
    return entries


def _print_plugins(entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        console.print(f"[bold]{escape(entry['name'])}[/bold]: {escape(entry['description'])}")
        facts = [entry["citation"], *(f"needs {n}" for n in entry["needs"]),
                 *([f"from {entry['from']}"] if entry["from"] != "medattack" else [])]
        if any(facts):
            console.print(escape("    (" + "; ".join(f for f in facts if f) + ")"))
        for setting in entry.get("settings", []):
            console.print(escape(f"    {setting['name']} = {setting['default']!r}  {setting['help']}"))


@list_app.command("attacks", epilog="Example:\n\n  medattack list attacks\n\n  medattack list attacks --json")
def list_attacks(as_json: JsonOption = False) -> None:
    """Attack methods and their settings (change with --set options.KEY=VALUE): white-box (`attack`),
    then black-box (`blackbox`)."""
    from medattack.attacks import ATTACKS
    from medattack.blackbox.base import BLACKBOX_ATTACKS

    whitebox, blackbox = plugin_entries(ATTACKS), plugin_entries(BLACKBOX_ATTACKS, settings_of=lambda cls: cls)
    if as_json:
        _print_json([{**e, "kind": "white-box"} for e in whitebox] + [{**e, "kind": "black-box"} for e in blackbox])
        return
    console.print("[bold]White-box[/bold] (medattack attack RUN --method NAME --model MODEL)")
    _print_plugins(whitebox)
    console.print("\n[bold]Black-box[/bold] (medattack blackbox RUN --method NAME --target KIND:MODEL)")
    _print_plugins(blackbox)


@list_app.command("defences", epilog="Example:\n\n  medattack list defences\n\n  medattack list defences --json")
def list_defences(as_json: JsonOption = False) -> None:
    """Defences put in front of a target (`query --defence NAME`, settings under defence_options.NAME)."""
    from medattack.defences.base import DEFENCES

    entries = [{**e, "detects": DEFENCES[e["name"]].detects, "adaptive": DEFENCES[e["name"]].adaptive or None}
               for e in plugin_entries(DEFENCES)]
    _print_json(entries) if as_json else _print_plugins(entries)


@list_app.command("metrics", epilog="Example:\n\n  medattack list metrics")
def list_metrics(as_json: JsonOption = False) -> None:
    """Metrics of the score stage and their settings (score config: metrics: {name: {key: value}})."""
    from medattack.scoring.base import DERIVED, SCORERS

    entries = plugin_entries(SCORERS) + plugin_entries(DERIVED)
    _print_json(entries) if as_json else _print_plugins(entries)


@list_app.command("targets", epilog="Example:\n\n  medattack list targets")
def list_targets(as_json: JsonOption = False) -> None:
    """Target kinds for query and serve (--target KIND:MODEL)."""
    from medattack.models.targets import TARGETS

    entries = plugin_entries(TARGETS, with_settings=False)
    _print_json(entries) if as_json else _print_plugins(entries)


@list_app.command("embedders", epilog="Example:\n\n  medattack list embedders")
def list_embedders(as_json: JsonOption = False) -> None:
    """Text embedders (TTO) and image-text backends (TIO, TII) of the score stage."""
    from medattack.scoring.backends.image_text import IMAGE_TEXT_BACKENDS
    from medattack.scoring.backends.text_embedders import TEXT_EMBEDDERS

    entries = plugin_entries(TEXT_EMBEDDERS) + plugin_entries(IMAGE_TEXT_BACKENDS, with_settings=False)
    _print_json(entries) if as_json else _print_plugins(entries)


def _print_rows(entries: list[dict[str, Any]], as_json: bool) -> None:
    """Flat entries as JSON, or as a table with one column per key (lists joined by commas)."""
    if as_json:
        _print_json(entries)
        return
    table = Table(*(entries[0] if entries else ()))
    for entry in entries:
        table.add_row(*(escape(", ".join(v) if isinstance(v, list) else str(v)) for v in entry.values()))
    console.print(table)


@list_app.command("tasks", epilog="Example:\n\n  medattack list tasks")
def list_tasks(as_json: JsonOption = False) -> None:
    """The 18 clinical tasks in their 4 groups."""
    from medattack.data.taxonomy import load_taxonomy

    _print_rows([{"group": t.group, "task": t.name, "description": t.description} for t in load_taxonomy().tasks],
                as_json)


@list_app.command("modalities", epilog="Example:\n\n  medattack list modalities")
def list_modalities(as_json: JsonOption = False) -> None:
    """Imaging modalities and their body parts (attributes are '<Modality> and <BodyPart>')."""
    from medattack.data.taxonomy import load_taxonomy

    _print_rows([{"modality": modality, "body parts": list(parts)}
                 for modality, parts in load_taxonomy().modalities.items()], as_json)


@list_app.command("sources", epilog="Example:\n\n  medattack list sources")
def list_sources(as_json: JsonOption = False) -> None:
    """Image sources and how to name them in --source."""
    from medattack.data.sources import SOURCES

    _print_rows([{"source": name, "how to use it": first_paragraph(cls.__doc__)} for name, cls in SOURCES.items()],
                as_json)


@list_app.command("presets", epilog="Example:\n\n  medattack list presets")
def list_presets(as_json: JsonOption = False) -> None:
    """Named settings (`--preset NAME`): every setting each one changes, and why."""
    from medattack.presets import PRESETS

    if as_json:
        _print_json([{"name": name, "description": preset.description, "settings": [
            {"stage": s.stage, "key": s.key, "value": s.value, "why": s.why} for s in preset.settings]}
            for name, preset in PRESETS.items()])
        return
    for name, preset in PRESETS.items():
        table = Table("stage", "setting", "value", "why", title=escape(f"{name}: {preset.description}"))
        for s in preset.settings:
            value = s.value if not isinstance(s.value, dict) else ", ".join(s.value)
            table.add_row(escape(s.stage), escape(s.key), escape(repr(value) if isinstance(value, str) else
                                                                str(value)), escape(s.why))
        console.print(table)


@list_app.command("mismatch", epilog="Example:\n\n  medattack list mismatch")
def list_mismatch(as_json: JsonOption = False) -> None:
    """Strategies for choosing the claimed (false) attribute."""
    from medattack.data.mismatch import MISMATCH_STRATEGIES

    _print_rows([{"strategy": name, "what it claims": first_paragraph(fn.__doc__) or fn.__name__.replace("_", " ")}
                 for name, fn in MISMATCH_STRATEGIES.items()], as_json)


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
