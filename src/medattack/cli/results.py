"""Reading results: `medattack results RUN` (the headline, or summary.json with --json) and
`medattack compare A B` (what changed between two runs, with intervals)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from medattack.cli.app import app, console, errors


@app.command(epilog="Examples:\n\n  medattack results runs/demo\n\n  medattack results runs/demo --json > summary.json"
             "\n\n  medattack results runs/a runs/b --json")
def results(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (or folders `score --responses` wrote).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json (schema medattack.summary v2).")] = False,
) -> None:
    """What the runs found, per target: attack success as judged and the rate that stands (two-phase from your
    labels, else an interval carrying the judge's error across labelled models), the answer rate on benign
    questions, the largest paired effects; --json prints every rate and effect."""
    from medattack.estimate import RateEstimate
    from medattack.report.aggregate import short_target
    from medattack.report.analysis import summarise
    from medattack.report.summary import Estimate, estimate_text

    with errors():
        summary = summarise(runs)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"Attack success ({summary['success_metric']}) on the benchmark's harmful questions")
    for column in ("run", "target", "attack", "attack success, judged [95%]", "the rate that stands [95%]",
                   "answer rate, benign [95%]"):
        table.add_column(column)
    for row in summary["headline"]:
        table.add_row(escape(row["run"]), escape(short_target(row["target"])), "none",
                      Estimate(**row["attack_success"]).text(), escape(estimate_text(row["estimate"])),
                      Estimate(**row["answer_rate_benign"]).text())
        strongest = row.get("strongest_attack")
        if strongest:
            table.add_row("", "", escape(f"strongest: {strongest['method']}"),
                          Estimate(**strongest["attack_success"]).text(), escape(estimate_text(strongest["estimate"])),
                          "-")
    console.print(table)
    for row in summary["headline"]:
        if row["estimate"]:
            console.print(escape(f"{row['target']}: {RateEstimate.from_json(row['estimate']).describe()}."))
    for row in summary["headline"]:
        for effect in row["largest_effects"]:
            console.print(escape(f"{row['target']}: {effect['comparison']} ({effect['metric']}) "
                                 f"{effect['difference']:+.2f} [{effect['ci_low']:+.2f}, {effect['ci_high']:+.2f}], "
                                 f"p={effect['p_value']:.3g}, n={effect['n']} from {effect.get('pairs', '?')} pairs"))
    validity = summary["judge_validity"]
    if validity:
        console.print(escape(f"Judge: {validity['judge']}, kappa {validity['kappa']:.2f} on {validity['n']} "
                             f"labelled responses ({validity['source']})."))
    console.print("Every rate: `medattack results RUN --json` (or report/summary.json after `medattack report`).")


@app.command(epilog="Examples:\n\n  medattack compare runs/before runs/after\n\n"
             "  medattack compare runs/llava-med runs/gpt-4o --json")
def compare(
    run_a: Annotated[Path, typer.Argument(help="The first run (A).")],
    run_b: Annotated[Path, typer.Argument(help="The second run (B): differences are B - A.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print every difference as JSON.")] = False,
) -> None:
    """What changed from run A to run B, per target x source x condition: the difference of the rates with a
    95% interval and a p-value from one method, paired where the same samples were asked, unpaired otherwise."""
    from medattack.report.aggregate import short_target
    from medattack.report.analysis import load_runs, run_validity
    from medattack.report.compare import compare_runs, standing_changes
    from medattack.report.estimates import confusions_of

    with errors():
        a, b = load_runs([run_a, run_b])
        changes = compare_runs(a, b)
        standing = standing_changes(a, b, confusions_of(run_validity([a, b])))
    if as_json:
        typer.echo(json.dumps({"a": a.name, "b": b.name, "changes": [c.to_json() for c in changes],
                               "standing": [s.to_json() for s in standing]}, indent=2, ensure_ascii=False))
        return
    for s in standing:
        point = "" if s.difference is None else f"{s.difference:+.2f} "
        gap = "" if s.ci_low is None else f"; B - A {point}[{s.ci_low:+.2f}, {s.ci_high:+.2f}]"
        console.print(escape(f"{s.target}, the rate that stands (harmful questions): A {s.a.interval_text()} "
                             f"{s.a.kind}, B {s.b.interval_text()} {s.b.kind}{gap}"))
    table = Table(title=escape(f"{b.name} - {a.name}"))
    for column in ("target", "source", "condition", "metric", "A -> B", "B - A [95%]", "n", "p"):
        table.add_column(column)
    for c in changes:
        table.add_row(escape(short_target(c.target)), escape(c.source), c.condition, c.metric,
                      f"{c.rate_a:.2f} -> {c.rate_b:.2f}", f"{c.difference:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}]",
                      f"{c.n_a} from {c.pairs} pairs" if c.pairs else f"{c.n_a} / {c.n_b}", f"{c.p_value:.3g}")
    console.print(table)
    if not changes:
        console.print("The runs share no group (target, source and condition) to compare.")
    else:
        console.print("n from k pairs: the same samples in both runs, from k image x prompt pairs, the unit of "
                      "the test (a paired Dirichlet posterior at the pairs' effective size for rates, a paired "
                      "bootstrap of whole pairs for scores); n A / B: unpaired (a Beta posterior per run for rates, "
                      "a bootstrap "
                      "per run for scores). Each interval and its p come from one method; p is not corrected "
                      "for the number of rows.")


@app.command(epilog="Examples:\n\n  medattack export runs/demo --format jailbreakbench --target embedded --method gcg "
             "--out gcg.json\n\n  medattack export runs/demo --format inspect --out inspect_task/")
def export(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    format_name: Annotated[str, typer.Option("--format", help="jailbreakbench (an attack artifact JSON) or inspect "
                                                             "(an inspect_ai task folder).")],
    out: Annotated[Path, typer.Option(help="File (jailbreakbench) or folder (inspect) to write.")],
    target: Annotated[str | None, typer.Option(help="Target whose answers are exported (jailbreakbench).")] = None,
    method: Annotated[str, typer.Option(help="Attack method whose replays are exported; none: the benchmark "
                                             "questions as written (jailbreakbench).")] = "none",
    attack_model: Annotated[str | None, typer.Option(help="The model the method was optimised on, when it was "
                                                          "optimised on several (jailbreakbench).")] = None,
) -> None:
    """Write the run in another tool's format: JailbreakBench's artifact, or an inspect_ai task."""
    from medattack.exports import EXPORTS

    with errors():
        written = EXPORTS[format_name](run, out, target=target, method=method, attack_model=attack_model)
    console.print(escape(f"written {written}"), soft_wrap=True)
