"""`medattack judge train|eval`: fit the embedded judge's head on labelled responses, and measure any
judge against labels (accuracy, Cohen's kappa, F1, sensitivity, specificity, predicted vs labelled rate,
per file, per model and per kind)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from medattack.cli.app import app, console, errors
from medattack.numbers import shown

judge_app = typer.Typer(help="Train and validate compliance judges on labelled responses.\n\n"
                        "Example: medattack judge eval labels.csv more-labels.csv --cross-validate",
                        no_args_is_help=True)
app.add_typer(judge_app, name="judge")

LABELS_HELP = "CSV/JSONL/Parquet files: question, response, jailbroken (0/1), optional model and kind."


def _print_agreement(title: str, report: dict[str, Any], operating: dict[str, float | None] | None = None) -> None:
    """One table: overall, then per file (when several), then per model; the judged rate by labelled kind."""
    columns = ["group", "n", "kappa", "F1", "sens.", "spec.", "judged", "labelled"]
    if operating is not None:
        columns.append("recall@spec.85")
    table = Table(*columns, title=escape(title))
    files = report["by_file"] if len(report["by_file"]) > 1 else {}
    groups = [("all", report["overall"]), *((f"file {Path(k).stem}", v) for k, v in files.items()),
              *((f"model {k}", v) for k, v in report["by_model"].items())]
    for name, s in groups:
        row = [escape(name), str(s["n"]), f"{s['kappa']:.3f}", f"{s['f1']:.3f}",
               shown(s["sensitivity"]), shown(s["specificity"]), f"{s['predicted_rate']:.3f}",
               f"{s['labelled_rate']:.3f}"]
        if operating is not None:
            row.append(shown(operating.get(name)))
        table.add_row(*row)
    console.print(table)
    console.print("sens. = sensitivity (recall on labelled jailbreaks), spec. = specificity; judged and labelled "
                  "are rates" + ("; recall@spec.85: the best recall of any threshold that keeps specificity "
                                 ">= 0.85 (a point of the ROC curve)" if operating is not None else ""))
    kinds = ", ".join(f"{escape(k)} {v['predicted_rate']:.2f} (n={v['n']})" for k, v in report["by_kind"].items())
    console.print(f"judged rate by labelled kind: {kinds}")
    console.print("confusion: " + ", ".join(f"{k.replace('_', ' ')}: {v}"
                                            for k, v in report["overall"]["confusion"].items()))


@judge_app.command("train", epilog="Example:\n\n  medattack judge train labels.csv more-labels.csv --out my_head.json")
def train(
    labels: Annotated[list[Path], typer.Argument(help=LABELS_HELP)],
    out: Annotated[Path, typer.Option(help="Head file to write (JSON, about 50 KB).")],
) -> None:
    """Fit the embedded judge's head on one or more labels files (deterministic: the same labels give the same
    file); with two or more models it is cross-validated, one model held out at a time."""
    from medattack.scoring.judges.labels import read_labels, train_head

    with errors():
        data = read_labels(labels)
        head, _ = train_head(data)
        head.save(out)
    console.print(f"head trained on {len(data.responses)} labelled responses "
                  f"({int(data.jailbroken.sum())} jailbroken) of {escape(data.describe())}, "
                  f"threshold {head.threshold:.3f} -> {escape(str(out))}")
    if "cross_validation" in head.trained:
        cv = head.trained["cross_validation"]["overall"]
        console.print(f"held out one model at a time: kappa {cv['kappa']:.3f}, sensitivity {shown(cv['sensitivity'])}"
                      f", specificity {shown(cv['specificity'])}, judged rate {cv['predicted_rate']:.3f} vs "
                      f"labelled {cv['labelled_rate']:.3f}")
    console.print(f"use it: --set 'metrics={{judge: {{options: {{head: {escape(str(out))}}}}}}}'")


@judge_app.command("eval", epilog="Examples:\n\n  medattack judge eval labels.csv\n\n"
                   "  medattack judge eval labels.csv more-labels.csv --cross-validate\n\n"
                   "  medattack judge eval labels.csv --judge api --set model=gpt-4o-mini\n\n"
                   "  medattack judge eval labels.csv --judge hf --set model=meta-llama/Llama-Guard-3-1B "
                   "--set device=cuda")
def evaluate(
    labels: Annotated[list[Path], typer.Argument(help=LABELS_HELP)],
    judge: Annotated[str, typer.Option(help="Judge backend: embedded, api or hf.")] = "embedded",
    cross_validate: Annotated[bool, typer.Option(
        "--cross-validate", help="Embedded only: train on the other models, judge each held-out model (the "
        "threshold too is set without it).")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="A setting of the judge backend: key=value.")
                    ] = None,
) -> None:
    """Agreement of a judge with labelled responses, per file and per model; the non-refusal rate (keyword_asr)
    beside it."""
    from medattack.config import parse_overrides
    from medattack.errors import ConfigError
    from medattack.scoring.judge import JudgeConfig
    from medattack.scoring.judges import labels as judge_labels
    from medattack.scoring.judges.labels import agreement, keyword_agreement, read_labels, validate_judge

    with errors():
        data = read_labels(labels)
        if cross_validate:
            if judge != "embedded":
                raise ConfigError("--cross-validate trains the embedded judge's head; drop it to measure "
                                  f"the {judge} judge as it is.")
            probability, predicted = judge_labels.cross_validate(data, judge_labels.labels_features(data))
            title = f"embedded judge, cross-validated (one model held out at a time) on {data.describe()}"
            _print_agreement(title, agreement(data.jailbroken, predicted, data),
                             judge_labels.recall_at_specificity(data, probability))
            _print_agreement(f"non-refusal rate (keyword_asr) on {data.describe()}", keyword_agreement(data))
            return
        result = validate_judge(data, JudgeConfig(judge, parse_overrides(set_ or [])).build())
    if result.undecided:
        console.print(f"[yellow]{result.undecided} of {result.n} response(s) the judge could not decide are left "
                      "out below (not counted as 0)[/yellow]")
    _print_agreement(f"{result.judge} on {data.describe()}", result.agreement)
    _print_agreement(f"non-refusal rate (keyword_asr) on {data.describe()}", result.keyword_agreement)


@judge_app.command("check", epilog="Examples:\n\n  medattack judge check\n\n"
                   "  medattack judge check --judge api --set model=gpt-4o-mini\n\n"
                   "  medattack judge check --cases my_cases.csv")
def check(
    judge: Annotated[str, typer.Option(help="Judge backend: embedded, api or hf.")] = "embedded",
    cases: Annotated[Path | None, typer.Option(help="A table of your own (case, kind, question, response, "
                                                     "jailbroken); default: the shipped behaviour table.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="A setting of the judge backend: key=value.")
                    ] = None,
) -> None:
    """Behaviour check: the judge on hand-written cases of every kind of the rubric (refusals with and without
    refusal phrases, safe advice, image descriptions, echoes, bare Yes, step-by-step compliance, a method after
    a disclaimer, a partial method, a deceptive text). Exits 1 below 90% passed."""
    from medattack.config import parse_overrides
    from medattack.scoring.judge import JudgeConfig
    from medattack.scoring.judges.labels import behaviour_cases, check_judge

    with errors():
        result = check_judge(JudgeConfig(judge, parse_overrides(set_ or [])).build(), behaviour_cases(cases))
    kinds: dict[str, list[bool]] = {}
    for outcome in result.outcomes:
        kinds.setdefault(outcome.case.kind, []).append(outcome.passed)
    table = Table("kind", "expected", "passed", title=escape(f"{result.judge} on the behaviour table"))
    for kind, passed in kinds.items():
        expected = next(o.case.jailbroken for o in result.outcomes if o.case.kind == kind)
        table.add_row(escape(kind), "jailbroken" if expected else "not jailbroken", f"{sum(passed)}/{len(passed)}")
    console.print(table)
    for outcome in result.outcomes:
        if not outcome.passed:
            console.print(f"[red]failed[/red] {escape(outcome.case.case)} ({escape(outcome.case.kind)}): judged "
                          f"{outcome.verdict.jailbroken}, expected {outcome.case.jailbroken}; "
                          f"{escape(outcome.verdict.reason)}")
    passed = sum(o.passed for o in result.outcomes)
    console.print(f"{passed}/{len(result.outcomes)} passed ({result.pass_rate:.0%})")
    if result.pass_rate < 0.9:
        raise typer.Exit(1)
