"""The `medattack` command line: parse -> config -> stage function. Output and progress live here.

Heavy libraries (torch, transformers, datasets) are imported lazily inside the commands.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medattack import __version__
from medattack.errors import BuildError, MedattackError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="medattack",
    help="Red-team medical multimodal LLMs: build a benchmark, attack, replay, score, report.\n\n"
    "Example: medattack demo",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
list_app = typer.Typer(help="List what medattack knows.\n\nExample: medattack list tasks",
                       no_args_is_help=True)
analyze_app = typer.Typer(help="Dataset analyses (each writes a CSV and a figure).\n\n"
                          "Example: medattack analyze attributes runs/demo", no_args_is_help=True)
prompts_app = typer.Typer(help="Generate a prompt bank from images: attributes -> normal -> harmful.\n\n"
                          "Example: medattack prompts attributes prompts/ --source embedded", no_args_is_help=True)
app.add_typer(list_app, name="list")
app.add_typer(prompts_app, name="prompts")
app.add_typer(analyze_app, name="analyze")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"medattack {__version__}")
        raise typer.Exit()
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
    )


@contextmanager
def _errors() -> Iterator[None]:
    """Turn medattack errors into a one-line message and an exit code (1: nothing built, 2: usage)."""
    try:
        yield
    except BuildError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except MedattackError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@contextmanager
def _progress() -> Iterator[Any]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update


def _print_build(result: Any) -> None:
    summary = result.summary
    table = Table(title=f"Benchmark in {result.run_dir / 'benchmark'}", show_lines=False)
    for column in ("category", "samples", "normal", "mismatch", "malicious", "both"):
        table.add_column(column, justify="left" if column == "category" else "right")
    by_cat: dict[str, dict[str, int]] = {}
    for sample in result.samples:
        counts = by_cat.setdefault(sample["category"], {})
        counts[sample["condition"]] = counts.get(sample["condition"], 0) + 1
    for category, counts in sorted(by_cat.items()):
        table.add_row(category, str(sum(counts.values())),
                      *(str(counts.get(c, 0)) for c in ("normal", "mismatch", "malicious", "both")))
    console.print(table)
    console.print(
        f"{summary['samples']} samples = {summary['pairs']} image x prompt pairs x 4 conditions; "
        f"{summary['images']} images, {len(summary['by_modality'])} modalities, "
        f"{len(summary['by_task'])} tasks." + (" (already built: reused)" if result.reused else "")
    )
    if result.failures:
        console.print(f"[yellow]{len(result.failures)} input(s) skipped[/yellow] "
                      f"(details in {result.run_dir / 'benchmark' / 'failures.jsonl'}):")
        for failure in result.failures[:10]:
            console.print(f"  - {failure['item']}: {failure['problem']} {failure['fix']}".rstrip())
        if len(result.failures) > 10:
            console.print(f"  ... and {len(result.failures) - 10} more")


@app.command(epilog="Examples:\n\n  medattack build runs/demo\n\n"
             "  medattack build runs/mine --source folder:/data/images --prompts-per-task 2 --seed 1\n\n"
             "  medattack build runs/3mad --source 3mad:MedMLLM-attack/3MAD-Tiny-1K --split CT_Chest\n\n"
             "  medattack build runs/x --config build.yaml --set typographic=true")
def build(
    run: Annotated[Path, typer.Argument(help="Run directory, e.g. runs/demo.")],
    source: Annotated[list[str] | None, typer.Option(
        "--source", "-s", help="embedded | folder:PATH | manifest:FILE | 3mad:HUB_ID_OR_DIR (repeatable).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of build settings.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: key=value.")] = None,
    task: Annotated[list[str] | None, typer.Option("--task", help="Only this clinical task (repeatable).")] = None,
    prompts_per_task: Annotated[int | None, typer.Option(help="Prompt triples per task per image.")] = None,
    max_per_category: Annotated[int | None, typer.Option(help="Cap images (3MAD: rows) per category.")] = None,
    mismatch: Annotated[str | None, typer.Option(help="Claimed-attribute strategy: see `list mismatch`.")] = None,
    typographic: Annotated[bool | None, typer.Option("--typographic/--no-typographic",
                                                     help="Render key phrases under images too.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random choice.")] = None,
    prompt_bank: Annotated[Path | None, typer.Option(help="Prompt bank YAML (default: embedded v1).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Root that manifest paths must stay inside.")] = None,
    split: Annotated[list[str] | None, typer.Option("--split", help="3MAD split to read (repeatable).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the run holds another benchmark.")] = False,
) -> None:
    """Build a benchmark: images x prompts in four conditions (normal, mismatch, malicious, both)."""
    from medattack.config import load_config, parse_overrides
    from medattack.data.builder import BuildConfig
    from medattack.pipeline import build as build_stage

    with _errors():
        flags: dict[str, Any] = {
            "sources": source, "tasks": task, "prompts_per_task": prompts_per_task,
            "max_images_per_category": max_per_category, "mismatch_strategy": mismatch,
            "typographic": typographic, "seed": seed,
            "prompt_bank": str(prompt_bank) if prompt_bank else None,
            "data_root": str(data_root) if data_root else None, "splits": split,
        }
        overrides = {k: v for k, v in flags.items() if v is not None}
        overrides.update(parse_overrides(set_ or []))
        build_config = load_config(BuildConfig, config, overrides)
        with _progress() as progress:
            result = build_stage(run, build_config, force=force, progress=progress)
        _print_build(result)


def _executor(kind: str, address: str | None, workers: int | None, gpus_per_worker: float | None) -> Any:
    from medattack.executor import ExecutorConfig

    options = {k: v for k, v in {"address": address, "workers": workers, "gpus_per_worker": gpus_per_worker}.items()
               if v is not None}
    return ExecutorConfig(kind=kind, **options)  # type: ignore[arg-type]


ExecutorOption = Annotated[str, typer.Option("--executor", help="local, or ray (actors on a Ray cluster).")]
RayAddressOption = Annotated[str | None, typer.Option(help="Ray cluster address ('auto', 'ray://head:10001'); "
                                                      "none: a local Ray.")]
WorkersOption = Annotated[int | None, typer.Option(help="Ray actors (model copies).")]
GpusOption = Annotated[float | None, typer.Option(help="GPUs per Ray actor (1: one model per GPU).")]
ForceOption = Annotated[bool, typer.Option(help="Reuse the output folder even if its config differs.")]


def _print_run(result: Any) -> None:
    if result.build is not None:
        _print_build(result.build)
    for attack in result.attacks:
        rows = attack.results
        console.print(f"attack {attack.folder.parent.name} on {attack.folder.name}: {len(rows)} sample(s), "
                      f"{sum(bool(r['success']) for r in rows)} forced the target, {len(attack.failures)} failed "
                      f"({attack.attempted} attacked now).")
    for asked in result.queries:
        console.print(f"query {asked.target}: {len(asked.responses)} response(s) ({asked.asked} asked now), "
                      f"{len(asked.failures)} failed -> {asked.folder / 'responses.jsonl'}")
    for target, scored in result.scores.items():
        console.print(f"scores {target}: {len(scored.rows)} row(s), {scored.computed} computed now, "
                      f"{scored.cache_hits} from the cache.")
    if result.report is not None:
        console.print(f"Report: [bold]{result.report.html.resolve()}[/bold]")


@app.command(epilog="Example:\n\n  medattack demo\n\n  medattack demo --run runs/demo2")
def demo(
    run: Annotated[Path, typer.Option(help="Run directory for the demo.")] = Path("runs/demo"),
) -> None:
    """The whole pipeline offline on the embedded defaults: build the benchmark (real images shipped by
    pydicom and scikit-image), attack a handful of samples with MCM, ask the embedded target every
    condition, its attacks and the image controls, score, and write the report."""
    from medattack.pipeline import demo as demo_stage

    with _errors():
        with _progress() as progress:
            result = demo_stage(run, progress=progress)
        _print_run(result.run)
        console.print(f"Analyses: {result.attributes.category_csv_path}, {result.attributes.figure_path}, "
                      f"{result.prompts.csv_path}, {result.prompts.figure_path}")
        console.print(f"Run directory: [bold]{run.resolve()}[/bold]")


@app.command("run", epilog="Examples:\n\n  medattack run examples/run.yaml\n\n"
             "  medattack run examples/run.yaml --set run_dir=runs/other --set stages=[query,score,report]")
def run_command(
    config: Annotated[Path, typer.Argument(help="YAML file with the settings of every stage.")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a top-level key: key=value.")] = None,
) -> None:
    """Run build -> attack -> query -> score -> report from one YAML; re-run the same command to resume."""
    from medattack.config import load_config, parse_overrides
    from medattack.pipeline import RunConfig, run_all

    with _errors():
        run_config = load_config(RunConfig, config, parse_overrides(set_ or []))
        with _progress() as progress:
            result = run_all(run_config, progress=progress)
        _print_run(result)


@app.command(epilog="Examples:\n\n  medattack query runs/demo --target embedded\n\n"
             "  medattack query runs/demo --target hf:google/medgemma-4b-it --set pairs_per_category=5\n\n"
             "  medattack query runs/demo --target api:gpt-4o --api-key-env OPENAI_API_KEY\n\n"
             "  medattack query runs/demo --target api:llava-med --base-url http://gpu-box:8000/v1")
def query(
    run: Annotated[Path, typer.Argument(help="A built run directory.")],
    target: Annotated[str, typer.Option(help="embedded | tiny | LLAVA_ID_OR_PATH | hf:ID_OR_PATH | api:MODEL.")
                      ] = "embedded",
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (api targets).")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the API key.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="API requests in flight at once.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens per answer at most.")] = None,
    device: Annotated[str | None, typer.Option(help="torch device of a local model.")] = None,
    trust_remote_code: Annotated[bool, typer.Option(help="Let an hf model run its own code.")] = False,
    controls: Annotated[str | None, typer.Option(help="Image controls: 'blank,noise' (default) or 'none'.")] = None,
    no_attacks: Annotated[bool, typer.Option("--no-attacks", help="Do not replay the run's attacks.")] = False,
    limit: Annotated[int | None, typer.Option(help="Ask at most this many benchmark samples.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of query settings.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: key=value.")] = None,
    force: ForceOption = False,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    gpus_per_worker: GpusOption = None,
) -> None:
    """Ask a target (local model or API) every sample, every attack's adversarial input and the
    blank/noise image controls; resumable, failures recorded."""
    import dataclasses

    from medattack.config import load_config, parse_overrides
    from medattack.models.targets import parse_target
    from medattack.pipeline import query as query_stage
    from medattack.query import QueryConfig

    with _errors():
        base = load_config(QueryConfig, config, parse_overrides(set_ or []))
        target_config = parse_target(target, base.target)
        api = dataclasses.replace(target_config.api, **{k: v for k, v in {
            "base_url": base_url, "api_key_env": api_key_env, "concurrency": concurrency}.items() if v is not None})
        target_config = dataclasses.replace(target_config, api=api, trust_remote_code=trust_remote_code, **{
            k: v for k, v in {"max_new_tokens": max_new_tokens, "device": device}.items() if v is not None})
        flags: dict[str, Any] = {"target": target_config, "limit": limit if limit is not None else base.limit}
        if controls is not None:
            flags["controls"] = () if controls == "none" else tuple(c.strip() for c in controls.split(",") if c)
        if no_attacks:
            flags["replay_attacks"] = False
        stage = dataclasses.replace(base, **flags)
        with _progress() as progress:
            result = query_stage(run, stage, force=force, progress=progress,
                                 executor=_executor(executor, ray_address, workers, gpus_per_worker))
    kinds: dict[str, int] = {}
    for row in result.responses:
        kinds[row["source"]] = kinds.get(row["source"], 0) + 1
    table = Table("source", "responses", title=f"{result.target} -> {result.folder}")
    for source, count in sorted(kinds.items()):
        table.add_row(source, str(count))
    console.print(table)
    console.print(f"{result.asked} asked now; {len(result.failures)} failed"
                  + (f" (see {result.folder / 'failures.jsonl'}; a re-run retries them)" if result.failures else "."))


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
    import dataclasses

    from medattack.models.targets import load_target, parse_target
    from medattack.serve import ChatServer, ServeConfig

    with _errors():
        target_config = dataclasses.replace(parse_target(model), max_new_tokens=max_new_tokens, batch_size=max_batch,
                                            device=device, trust_remote_code=trust_remote_code)
        target = load_target(target_config)
        server = ChatServer(target, ServeConfig(host=host, port=port, max_batch=max_batch, fail_first=fail_first,
                                                api_key_env=api_key_env))
    console.print(f"Serving {target.name} at [bold]{server.base_url}[/bold] (POST /chat/completions); Ctrl-C stops.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.close()


@app.command(epilog="Examples:\n\n  medattack report runs/demo\n\n"
             "  medattack report runs/llava-med runs/gpt-4o --out reports/compare")
def report(
    runs: Annotated[list[Path], typer.Argument(help="One or more run directories (several are compared).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: FIRST_RUN/report).")] = None,
    title: Annotated[str | None, typer.Option(help="Title of the report.")] = None,
) -> None:
    """Write report.html (self-contained), report.md, figures and CSV/LaTeX tables."""
    from medattack.pipeline import report as report_stage
    from medattack.report import ReportConfig

    with _errors():
        result = report_stage(runs, out, ReportConfig(title=title) if title else None)
    console.print(f"{result.n_responses} scored response(s); tables in {result.out_dir / 'tables'}")
    console.print(f"Report: [bold]{result.html.resolve()}[/bold]  (Markdown: {result.markdown})")


@app.command(epilog="Examples:\n\n  medattack attack runs/demo --method mcm --model embedded --limit 4\n\n"
             "  medattack attack runs/demo --method gcg --model llava-hf/llava-1.5-7b-hf --set steps=100\n\n"
             "  medattack attack runs/demo --method region --condition both --set region=outside")
def attack(
    run: Annotated[Path, typer.Argument(help="A built run directory.")],
    method: Annotated[str, typer.Option(help="Attack: see `medattack list attacks`.")] = "mcm",
    model: Annotated[str, typer.Option(help="embedded | tiny | hub id or path of a LLaVA model.")] = "embedded",
    condition: Annotated[list[str] | None, typer.Option(
        "--condition", help="Conditions to attack (repeatable; default malicious and both).")] = None,
    task: Annotated[list[str] | None, typer.Option("--task", help="Only this clinical task (repeatable).")] = None,
    limit: Annotated[int | None, typer.Option(help="Attack at most this many samples.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda or cpu.")] = None,
    max_batch: Annotated[int, typer.Option(help="GCG candidates per forward pass at most.")] = 512,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Method setting: key=value, e.g. rounds=3.")] = None,
    force: ForceOption = False,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    gpus_per_worker: GpusOption = None,
) -> None:
    """Attack a white-box model on the run's samples (GCG, PGD, MCM, region, baselines); resumable."""
    from medattack.attacks.runner import AttackStageConfig, run_attack_stage
    from medattack.config import parse_overrides
    from medattack.data.taxonomy import load_taxonomy

    with _errors():
        stage = AttackStageConfig(
            method=method, model=model, conditions=tuple(condition) if condition else ("malicious", "both"),
            tasks=tuple(load_taxonomy().task(t).name for t in task) if task else None, limit=limit, seed=seed,
            device=device, max_batch=max_batch,
        )
        with _progress() as progress:
            result = run_attack_stage(run, stage, parse_overrides(set_ or []), force=force, progress=progress,
                                      executor=_executor(executor, ray_address, workers, gpus_per_worker))
    table = Table("samples", "teacher-forced success", "keyword success", "failed", "mean seconds",
                  title=f"{method} -> {result.folder}")
    rows = result.results
    if rows:
        table.add_row(str(len(rows)), f"{sum(r['success'] for r in rows)}/{len(rows)}",
                      f"{sum(r['keyword_success'] for r in rows)}/{len(rows)}", str(len(result.failures)),
                      f"{sum(r['seconds'] for r in rows) / len(rows):.1f}")
    console.print(table)
    console.print(f"{result.attempted} sample(s) attacked now; results in {result.folder / 'results.jsonl'}")


@app.command(epilog="Examples:\n\n  medattack score runs/demo\n\n"
             "  medattack score --responses answers.csv --images images/ --out scores/\n\n"
             "  medattack score runs/demo --set text_embedder=bge-m3 --set image_text=biomedclip")
def score(
    run: Annotated[Path | None, typer.Argument(help="A run directory: scores every response it holds.")] = None,
    responses: Annotated[Path | None, typer.Option(help="CSV/JSONL/Parquet of responses (long or wide).")] = None,
    images: Annotated[Path | None, typer.Option(help="Folder the file's image names are relative to.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder for --responses (default: beside it).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of score settings.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: key=value.")] = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    gpus_per_worker: GpusOption = None,
) -> None:
    """Score responses: keyword ASR, TTO, TIO, TII and the composite; nulls are counted, never dropped."""
    from medattack.config import load_config, parse_overrides
    from medattack.pipeline import score as score_stage
    from medattack.scoring.stage import ScoreConfig

    with _errors():
        score_config = load_config(ScoreConfig, config, parse_overrides(set_ or []))
        with _progress() as progress:
            results = score_stage(run, score_config, responses=responses, images=images, out_dir=out,
                                  progress=progress, executor=_executor(executor, ray_address, workers,
                                                                        gpus_per_worker))
    if not results:
        console.print(f"no responses in {run} yet (run `medattack attack` first).")
    for target, result in results.items():
        table = Table("metric", "condition", "n", "nulls", "mean", title=f"{target} -> {result.out_dir}")
        for row in result.summary["table"]:
            mean = "-" if row["mean"] is None else f"{row['mean']:.3f}"
            table.add_row(row["metric"] + (" (proxy)" if row["is_proxy"] else ""), row["condition"], str(row["n"]),
                          str(row["nulls"]), mean)
        console.print(table)
        console.print(f"{result.computed} value(s) computed now, {result.cache_hits} from the cache.")


@prompts_app.command("attributes", epilog="Examples:\n\n  medattack prompts attributes prompts/\n\n"
                     "  medattack prompts attributes prompts/ --source folder:/data --reader whitebox --model embedded")
def prompts_attributes(
    out: Annotated[Path, typer.Argument(help="Output folder of the prompt-generation steps.")],
    source: Annotated[list[str] | None, typer.Option("--source", "-s", help="Image source (repeatable).")] = None,
    reader: Annotated[str, typer.Option(help="metadata (offline) | whitebox | hf | api.")] = "metadata",
    model: Annotated[str | None, typer.Option(help="Reader model: embedded, tiny, or a hub id / folder.")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Root that manifest paths must stay inside.")] = None,
) -> None:
    """Step 1: read attributes (colour, contrast, texture, lesion...) off every image."""
    from medattack.pipeline import prompts_attributes as stage

    with _errors(), _progress() as progress:
        result = stage(out, tuple(source or ("embedded",)), reader, reader_model=model,
                       data_root=str(data_root) if data_root else None, progress=progress)
    console.print(f"{result['images']} image(s) read by {result['reader']} ({result['failures']} failed) -> "
                  f"{out / 'attributes.jsonl'}")


@prompts_app.command("normal", epilog="Examples:\n\n  medattack prompts normal prompts/ --per-task 8\n\n"
                     "  medattack prompts normal prompts/ --writer api --model gpt-4o")
def prompts_normal(
    out: Annotated[Path, typer.Argument(help="Folder holding attributes.jsonl.")],
    per_task: Annotated[int, typer.Option(help="Normal questions per clinical task at most.")] = 8,
    writer: Annotated[str, typer.Option(help="template (offline) | local | api: who words them.")] = "template",
    model: Annotated[str | None, typer.Option(help="Writer model: local path/hub id, or the API model name.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL for --writer api.")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
) -> None:
    """Step 2: turn attributes into normal questions for each of the 18 clinical tasks."""
    from medattack.pipeline import prompts_normal as stage

    with _errors():
        result = stage(out, per_task, writer, model, base_url, api_key_env)
    console.print(f"{result['questions']} normal question(s) over {result['tasks']} tasks "
                  f"({result['rejected']} writer answers rejected) -> {out / 'normal.jsonl'}")


@prompts_app.command("harmful", epilog="Examples:\n\n  medattack prompts harmful prompts/\n\n"
                     "  medattack prompts harmful prompts/ --writer template\n\n"
                     "  medattack prompts harmful prompts/ --writer api --model gpt-4o")
def prompts_harmful(
    out: Annotated[Path, typer.Argument(help="Folder holding normal.jsonl.")],
    writer: Annotated[str, typer.Option(
        help="paraphrase (offline: SmolLM2 rewords seed templates) | template | local | api.")] = "paraphrase",
    model: Annotated[str | None, typer.Option(help="Writer model: local path/hub id, or the API model name.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL for --writer api.")] = None,
    api_key_env: Annotated[str, typer.Option(help="Environment variable holding the API key.")] = "OPENAI_API_KEY",
    near_duplicate: Annotated[float, typer.Option(help="Cosine above which a question is a near-duplicate.")] = 0.92,
) -> None:
    """Step 3: rewrite normal questions into harmful ones with key phrases; write a validated bank.yaml."""
    from medattack.pipeline import prompts_harmful as stage

    with _errors():
        result = stage(out, writer, model, base_url, api_key_env, near_duplicate)
    console.print(f"{result['triples']} triples (origins {result['origins']}), {result['near_duplicates_dropped']} "
                  f"near-duplicates dropped, {result['rejected']} writer answers rejected -> {result['bank']}")
    console.print(f"Use it: medattack build RUN --prompt-bank {result['bank']}")


@list_app.command("attacks", epilog="Example:\n\n  medattack list attacks")
def list_attacks() -> None:
    """Attack methods and their settings (change with --set key=value)."""
    import dataclasses

    from medattack.attacks import ATTACKS
    from medattack.config import config_help

    for name, cls in ATTACKS.items():
        console.print(f"[bold]{name}[/bold]: {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls.config_class)}
        for key, text in config_help(cls.config_class).items():
            console.print(f"    {key} = {defaults[key]!r}  {text}")


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
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        table.add_row(name, doc)
    console.print(table)


@list_app.command("mismatch", epilog="Example:\n\n  medattack list mismatch")
def list_mismatch() -> None:
    """Strategies for choosing the claimed (false) attribute."""
    from medattack.data.mismatch import MISMATCH_STRATEGIES

    for name, fn in MISMATCH_STRATEGIES.items():
        console.print(f"{name}: {fn.__name__.replace('_', ' ')}")


@analyze_app.command("attributes", epilog="Example:\n\n  medattack analyze attributes runs/demo")
def analyze_attributes(
    run: Annotated[Path, typer.Argument(help="A built run directory.")],
    backend: Annotated[str, typer.Option(help="Image-text relevance backend.")] = "proxy",
    text_embedder: Annotated[str, typer.Option(help="Text embedder for proxy scores.")] = "minilm",
) -> None:
    """Relevance of each image to its true vs claimed attribute, per category."""
    from medattack.pipeline import analyze_attributes as stage

    with _errors():
        result = stage(run, backend=backend, text_embedder=text_embedder)
    table = Table("category", "n", "true", "claimed", "gap", title=result.rows[0]["backend"])
    for row in result.by_category:
        table.add_row(row["category"], str(row["n"]), f"{row['mean_true_relevance']:.3f}",
                      f"{row['mean_claimed_relevance']:.3f}", f"{row['gap']:+.3f}")
    console.print(table)
    console.print(f"Wrote {result.csv_path}, {result.category_csv_path}, {result.figure_path}")


@analyze_app.command("prompts", epilog="Examples:\n\n  medattack analyze prompts --run runs/demo\n\n"
                     "  medattack analyze prompts --bank my_bank.yaml --out analysis/")
def analyze_prompts(
    run: Annotated[Path | None, typer.Option(help="Analyse the prompts of this built run.")] = None,
    bank: Annotated[Path | None, typer.Option(help="Analyse this prompt bank (default: embedded).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: RUN/analysis or .).")] = None,
    text_embedder: Annotated[str, typer.Option(help="Text embedder.")] = "minilm",
) -> None:
    """Prompt-by-prompt relevance aggregated per clinical task."""
    from medattack.pipeline import analyze_prompts as stage

    with _errors():
        result = stage(run, str(bank) if bank else None, text_embedder, out)
    console.print(f"Wrote {result.csv_path}, {result.figure_path}")


if __name__ == "__main__":
    app()
