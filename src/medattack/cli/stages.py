"""The stage commands: build, attack, query, score, report, and run / demo over all of them.

Each one builds its stage's config with `stage_config` (YAML file < typed flags < --set) and calls
the stage function; nothing here knows how a stage works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from medattack.cli.app import (
    ConfigOption,
    ExecutorOption,
    ForceOption,
    GpusOption,
    PresetOption,
    RayAddressOption,
    SetOption,
    WorkersOption,
    app,
    console,
    continuing,
    err_console,
    errors,
    executor_config,
    progress_bar,
    stage_config,
    typed_keys,
)
from medattack.cli.output import print_attack, print_build, print_query, print_run, print_scores


@app.command(epilog="Examples:\n\n  medattack build runs/demo\n\n"
             "  medattack build runs/mine --source folder:/data/images --prompts-per-task 2 --seed 1\n\n"
             "  medattack build runs/3mad --source 3mad:MedMLLM-attack/3MAD-Tiny-1K --split CT_Chest\n\n"
             "  medattack build runs/x --config build.yaml --set typographic=true")
def build(
    run: Annotated[Path, typer.Argument(help="Run directory, e.g. runs/demo.")],
    source: Annotated[list[str] | None, typer.Option(
        "--source", "-s", help="embedded | folder:PATH | manifest:FILE | 3mad:HUB_ID_OR_DIR (repeatable).")] = None,
    task: Annotated[list[str] | None, typer.Option("--task", help="Only this clinical task (repeatable).")] = None,
    prompts_per_task: Annotated[int | None, typer.Option(help="Prompt triples per task per image.")] = None,
    max_per_category: Annotated[int | None, typer.Option(help="Cap images (3MAD: rows) per category.")] = None,
    mismatch: Annotated[str | None, typer.Option(help="Claimed-attribute strategy: see `list mismatch`.")] = None,
    typographic: Annotated[bool | None, typer.Option("--typographic/--no-typographic",
                                                     help="Render key phrases under images too.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random choice.")] = None,
    prompt_bank: Annotated[Path | None, typer.Option(help="Prompt bank: YAML or a CSV/JSONL/Parquet table "
                                                          "(default: embedded v1).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Root that manifest paths must stay inside.")] = None,
    split: Annotated[list[str] | None, typer.Option("--split", help="3MAD split to read (repeatable).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    preset: PresetOption = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the run holds another benchmark.")] = False,
) -> None:
    """Build a benchmark: images x prompts in four conditions (normal, mismatch, malicious, both)."""
    from medattack.stages import build as stage
    from medattack.stages.build import BuildConfig

    with errors():
        build_config = stage_config(BuildConfig, config, set_, preset=preset, flags={
            "sources": source, "tasks": task, "prompts_per_task": prompts_per_task,
            "max_images_per_category": max_per_category, "mismatch_strategy": mismatch,
            "typographic": typographic, "seed": seed, "prompt_bank": str(prompt_bank) if prompt_bank else None,
            "data_root": str(data_root) if data_root else None, "splits": split})
        with progress_bar() as progress:
            result = stage.run(run, build_config, force=force, progress=progress)
        print_build(result)


@app.command(epilog="Examples:\n\n  medattack attack runs/demo --method mcm --model embedded --limit 4\n\n"
             "  medattack attack runs/demo --method gcg --model llava-hf/llava-1.5-7b-hf --set options.steps=100\n\n"
             "  medattack attack runs/demo --method region --condition both --set options.region=outside\n\n"
             "  medattack attack runs/demo --method gcg --defence reminder --limit 2")
def attack(
    run: Annotated[Path, typer.Argument(help="A built run directory.")],
    method: Annotated[str | None, typer.Option(help="Attack: see `medattack list attacks` (default mcm).")] = None,
    model: Annotated[str | None, typer.Option(help="embedded | tiny | hub id or path of a LLaVA model.")] = None,
    condition: Annotated[list[str] | None, typer.Option(
        "--condition", help="Conditions to attack (repeatable; default malicious and both).")] = None,
    task: Annotated[list[str] | None, typer.Option("--task", help="Only this clinical task (repeatable).")] = None,
    limit: Annotated[int | None, typer.Option(help="Attack at most this many samples.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random choice.")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda or cpu.")] = None,
    max_batch: Annotated[int | None, typer.Option(help="GCG candidates per forward pass at most.")] = None,
    defence: Annotated[list[str] | None, typer.Option(
        "--defence", help="Attack the model behind this defence (repeatable; adaptive: only defences an attack can "
                          "optimise through, e.g. reminder).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    preset: PresetOption = None,
    force: ForceOption = False,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    gpus_per_worker: GpusOption = None,
) -> None:
    """Attack a white-box model on the run's samples (GCG, PGD, MCM, region, baselines); resumable.
    Method settings are `--set options.KEY=VALUE` (see `medattack list attacks`)."""
    from medattack.stages import attack as stage
    from medattack.stages.attack import AttackStageConfig

    with errors():
        flags = {"method": method, "model": model, "conditions": condition, "tasks": task, "limit": limit,
                 "seed": seed, "device": device, "max_batch": max_batch, "defences": defence}
        attack_config = stage_config(AttackStageConfig, config, set_, preset=preset, flags=flags)
        pool = executor_config(executor, ray_address, workers, gpus_per_worker)
        with progress_bar() as progress:
            result = continuing(lambda c: stage.run(run, c, force=force, progress=progress, executor=pool),
                                AttackStageConfig, attack_config, typed_keys(config, set_, flags, preset))
    print_attack(result, attack_config.method)


@app.command(epilog="Examples:\n\n  medattack blackbox runs/demo --method pair --target api:llava-med "
             "--base-url http://localhost:8000/v1 --limit 2 --set options.streams=2\n\n"
             "  medattack blackbox runs/demo --method tap --target api:gpt-4o --attacker api --attacker-model gpt-4o "
             "--judge api --judge-model gpt-4o-mini --set prices.target=10 --set prices.attacker=10\n\n"
             "  medattack blackbox runs/demo --method pair --target hf:google/medgemma-4b-it --generations 5")
def blackbox(
    run: Annotated[Path, typer.Argument(help="A built run directory.")],
    method: Annotated[str | None, typer.Option(help="pair or tap (default pair; see `list attacks`).")] = None,
    target: Annotated[str | None, typer.Option(
        help="The model attacked: embedded | tiny | LLAVA_ID_OR_PATH | hf:ID | api:MODEL | python:FILE:FUNC.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL of an api target.")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Environment variable of the target's API key.")] = None,
    attacker: Annotated[str | None, typer.Option(help="local (default: the embedded SmolLM2) or api.")] = None,
    attacker_model: Annotated[str | None, typer.Option(help="The attacker's model: a hub id or folder (local), a "
                                                            "model name (api).")] = None,
    attacker_base_url: Annotated[str | None, typer.Option(help="Base URL of an api attacker.")] = None,
    judge: Annotated[str | None, typer.Option(help="embedded (default), api or hf.")] = None,
    judge_model: Annotated[str | None, typer.Option(help="The judge's model (api name or hf id/folder).")] = None,
    judge_base_url: Annotated[str | None, typer.Option(help="Base URL of an api judge.")] = None,
    generations: Annotated[int | None, typer.Option(help="Answers per attempt, sampled (a distribution).")] = None,
    max_queries: Annotated[int | None, typer.Option(help="Target answers at most per sample.")] = None,
    limit: Annotated[int | None, typer.Option(help="Search at most this many samples.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens per target answer at most.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    force: ForceOption = False,
) -> None:
    """Black-box attack of any target: an attacker model rewrites the question and moves the image, a judge
    scores each answer, the search keeps what works (PAIR, TAP); resumable, every attempt logged."""
    from medattack.cli.output import print_blackbox, print_blackbox_budget
    from medattack.models.targets import split_target
    from medattack.stages import blackbox as stage
    from medattack.stages.blackbox import BlackBoxConfig

    with errors():
        kind, model = split_target(target) if target is not None else (None, None)
        attacker_options = {"model": attacker_model, **({"api": {"base_url": attacker_base_url}}
                                                         if attacker_base_url else {})}
        judge_options = {"model": judge_model, **({"api": {"base_url": judge_base_url}} if judge_base_url else {})}
        flags = {"method": method, "limit": limit, "generations": generations,
                 "target": {"kind": kind, "model": model, "max_new_tokens": max_new_tokens,
                            "api": {"base_url": base_url, "api_key_env": api_key_env}},
                 "attacker": {"generator": attacker, "options": attacker_options},
                 "judge": {"backend": judge, "options": judge_options},
                 "options": {"max_queries": max_queries}}
        blackbox_config = stage_config(BlackBoxConfig, config, set_, flags=flags)
        with progress_bar() as progress:
            result = continuing(lambda c: stage.run(run, c, force=force, progress=progress,
                                                    announce=print_blackbox_budget),
                                BlackBoxConfig, blackbox_config, typed_keys(config, set_, flags))
    print_blackbox(result, blackbox_config.method)


@app.command(epilog="Examples:\n\n  medattack query runs/demo --target embedded\n\n"
             "  medattack query runs/demo --target hf:google/medgemma-4b-it --set pairs_per_category=5\n\n"
             "  medattack query runs/demo --target api:gpt-4o --api-key-env OPENAI_API_KEY\n\n"
             "  medattack query runs/demo --target api:llava-med --base-url http://gpu-box:8000/v1\n\n"
             "  medattack query runs/demo --defence perplexity --defence purify")
def query(
    run: Annotated[Path, typer.Argument(help="A built run directory.")],
    target: Annotated[str | None, typer.Option(
        help="embedded (default) | tiny | LLAVA_ID_OR_PATH | hf:ID_OR_PATH | api:MODEL.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (api targets).")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Environment variable holding the API key.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="API requests in flight at once.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens per answer at most.")] = None,
    device: Annotated[str | None, typer.Option(help="torch device of a local model.")] = None,
    trust_remote_code: Annotated[bool | None, typer.Option("--trust-remote-code/--no-trust-remote-code",
                                                           help="Let an hf model run its own code.")] = None,
    controls: Annotated[list[str] | None, typer.Option(
        "--controls", help="An image control to ask too (repeatable): blank, noise (default: both); none for no "
                           "controls.")] = None,
    attacks: Annotated[bool | None, typer.Option("--attacks/--no-attacks",
                                                 help="Replay the run's attacks (default: yes).")] = None,
    limit: Annotated[int | None, typer.Option(help="Ask at most this many benchmark samples.")] = None,
    generations: Annotated[int | None, typer.Option(
        help="Answers per query, sampled (temperature 0.7, seeds seed..seed+N-1): a distribution.")] = None,
    defence: Annotated[list[str] | None, typer.Option(
        "--defence", help="A defence in front of the target (repeatable, outermost first; `medattack list "
                          "defences`): the answers go to '<target>+<defence>'.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    preset: PresetOption = None,
    force: ForceOption = False,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    gpus_per_worker: GpusOption = None,
) -> None:
    """Ask a target (local model or API) every sample, every attack's adversarial input and the
    blank/noise image controls; resumable, failures recorded."""
    from medattack.models.targets import split_target
    from medattack.stages import query as stage
    from medattack.stages.query import QueryConfig

    with errors():
        kind, model = split_target(target) if target is not None else (None, None)
        flags = {"target": {"kind": kind, "model": model, "max_new_tokens": max_new_tokens, "device": device,
                            "trust_remote_code": trust_remote_code,
                            "api": {"base_url": base_url, "api_key_env": api_key_env, "concurrency": concurrency}},
                 "controls": _controls(controls), "replay_attacks": attacks, "limit": limit,
                 "generations": generations, "defences": defence}
        query_config = stage_config(QueryConfig, config, set_, preset=preset, flags=flags)
        pool = executor_config(executor, ray_address, workers, gpus_per_worker)
        with progress_bar() as progress:
            result = continuing(lambda c: stage.run(run, c, force=force, progress=progress, executor=pool),
                                QueryConfig, query_config, typed_keys(config, set_, flags, preset))
    print_query(result)
    if result.failures and not result.asked:
        err_console.print(f"[red]error:[/red] every query of this call failed; the first: "
                          f"{escape(str(result.failures[0].get('problem', result.failures[0])))}")
        raise typer.Exit(1)


def _controls(values: list[str] | None) -> list[str] | None:
    """--controls as typed: repeated (--controls blank --controls noise), or comma-separated; none = no controls."""
    if values is None:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return [] if names == ["none"] else names


@app.command(epilog="Examples:\n\n  medattack score runs/demo\n\n"
             "  medattack score --responses answers.csv --images images/ --out scores/\n\n"
             "  medattack score runs/demo --set text_embedder=bge-m3 --set image_text=biomedclip\n\n"
             "  medattack score runs/demo --set metrics.keyword_asr.mode=anywhere\n\n"
             "  medattack score --responses chexagent.csv --preset paper")
def score(
    run: Annotated[Path | None, typer.Argument(help="A run directory: scores every response it holds.")] = None,
    responses: Annotated[Path | None, typer.Option(help="CSV/JSONL/Parquet of responses (long or wide).")] = None,
    images: Annotated[Path | None, typer.Option(help="Folder the file's image names are relative to.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder for --responses (default: beside it).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    preset: PresetOption = None,
    executor: ExecutorOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    gpus_per_worker: GpusOption = None,
) -> None:
    """Score responses: non-refusal rate, compliance judge, TTO, TIO, TII and the composite; nulls are counted,
    never dropped."""
    from medattack.errors import ConfigError, NothingToDoError
    from medattack.stages import score as stage
    from medattack.stages.score import ScoreConfig

    with errors():
        if (run is None) == (responses is None):
            raise ConfigError("score needs a run directory or --responses FILE (one of them).")
        score_config = stage_config(ScoreConfig, config, set_, {}, preset)
        pool = executor_config(executor, ray_address, workers, gpus_per_worker)
        with progress_bar() as progress:
            if responses is not None:
                results = stage.score_file(responses, score_config, images=images, out_dir=out, executor=pool,
                                           progress=progress)
            else:
                results = stage.run(run, score_config, executor=pool, progress=progress)  # type: ignore[arg-type]
        if not results:
            raise NothingToDoError(f"no responses in {run} yet: ask a target first (`medattack query {run}`), or "
                                   f"attack (`medattack attack {run}`).")
    print_scores(results)


@app.command(epilog="Examples:\n\n  medattack report runs/demo\n\n"
             "  medattack report runs/llava-med runs/gpt-4o --out reports/compare\n\n"
             "  medattack report chexagent.scores radfm.scores --out reports/paper\n\n"
             "  medattack report runs/demo --set labels=labels.csv")
def report(
    runs: Annotated[list[Path], typer.Argument(help="One or more run directories, or folders `score --responses` "
                                                    "wrote (several are compared).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: FIRST_RUN/report).")] = None,
    title: Annotated[str | None, typer.Option(help="Title of the report.")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Write report.html (self-contained), report.md, figures and CSV/LaTeX tables."""
    from medattack.report.analysis import ReportConfig
    from medattack.stages import report as stage

    with errors():
        report_config = stage_config(ReportConfig, config, set_, {"title": title})
        result = stage.run(runs[0], report_config, compare=runs[1:], out_dir=out)
    console.print(f"{result.n_responses} scored response(s); tables in {escape(str(result.out_dir / 'tables'))}")
    console.print(f"Report: [bold]{escape(str(result.html.resolve()))}[/bold]  "
                  f"(Markdown: {escape(str(result.markdown))})")


@app.command("run", epilog="Examples:\n\n  medattack run examples/run.yaml\n\n"
             "  medattack run examples/run.yaml --set run_dir=runs/other --set stages=[query,score,report]")
def run_command(
    config: Annotated[Path, typer.Argument(help="YAML file with the settings of every stage.")],
    set_: SetOption = None,
) -> None:
    """Run build -> attack -> query -> score -> report from one YAML; re-run the same command to resume."""
    from medattack.pipeline import RunConfig, run_all

    with errors():
        run_config = stage_config(RunConfig, config, set_, {})
        with progress_bar() as progress:
            result = run_all(run_config, progress=progress)
        print_run(result)


@app.command(epilog="Example:\n\n  medattack demo\n\n  medattack demo --run runs/demo2")
def demo(
    run: Annotated[Path, typer.Option(help="Run directory for the demo.")] = Path("runs/demo"),
) -> None:
    """The whole pipeline offline on the embedded defaults: build the benchmark (real images shipped by
    pydicom and scikit-image), attack a handful of samples with MCM, ask the embedded target every
    condition, its attacks and the image controls, score, and write the report."""
    from medattack.pipeline import demo as demo_stage

    with errors():
        with progress_bar() as progress:
            result = demo_stage(run, progress=progress)
        print_run(result.run)
        console.print(escape(f"Analyses: {result.attributes.category_csv_path}, {result.attributes.figure_path}, "
                             f"{result.prompts.csv_path}, {result.prompts.figure_path}"))
        console.print(f"Run directory: [bold]{escape(str(run.resolve()))}[/bold]")
