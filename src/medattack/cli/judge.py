"""`medattack judge train|eval`: fit the embedded judge's head on labelled responses, and measure any
judge against labels (accuracy, Cohen's kappa, F1, predicted vs labelled rate, per model and kind)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from medattack.cli.app import app, console, errors

judge_app = typer.Typer(help="Train and validate compliance judges on labelled responses.\n\n"
                        "Example: medattack judge eval labels.csv --cross-validate", no_args_is_help=True)
app.add_typer(judge_app, name="judge")


def _print_agreement(title: str, report: dict[str, Any]) -> None:
    table = Table("group", "n", "accuracy", "kappa", "F1", "judged rate", "labelled rate", title=escape(title))
    for name, scores in [("all", report["overall"]), *report["by_model"].items()]:
        table.add_row(escape(name), str(scores["n"]), f"{scores['accuracy']:.3f}", f"{scores['kappa']:.3f}",
                      f"{scores['f1']:.3f}", f"{scores['predicted_rate']:.3f}", f"{scores['labelled_rate']:.3f}")
    console.print(table)
    kinds = ", ".join(f"{escape(k)} {v['predicted_rate']:.2f} (n={v['n']})" for k, v in report["by_kind"].items())
    console.print(f"judged rate by labelled kind: {kinds}")
    console.print("confusion: " + ", ".join(f"{k}: {v}" for k, v in report["confusion"].items()))


@judge_app.command("train", epilog="Example:\n\n  medattack judge train labels.csv --out my_head.json")
def train(
    labels: Annotated[Path, typer.Argument(help="CSV/JSONL/Parquet: question, response, jailbroken (0/1), "
                                               "optional model and kind.")],
    out: Annotated[Path, typer.Option(help="Head file to write (JSON, about 50 KB).")],
) -> None:
    """Fit the embedded judge's head (deterministic: the same labels give the same file)."""
    from medattack.scoring.backends.text_embedders import get_text_embedder
    from medattack.scoring.judges.labels import read_labels, train_head

    with errors():
        data = read_labels(labels)
        head, _ = train_head(data, get_text_embedder("minilm"))
        head.save(out)
    console.print(f"head trained on {len(data.responses)} labelled responses "
                  f"({int(data.jailbroken.sum())} jailbroken), threshold {head.threshold:.3f} -> {escape(str(out))}")
    if "cross_validation" in head.trained:
        cv = head.trained["cross_validation"]
        console.print(f"held out one model at a time: kappa {cv['kappa']:.3f}, accuracy {cv['accuracy']:.3f}, "
                      f"judged rate {cv['predicted_rate']:.3f} vs labelled {cv['labelled_rate']:.3f}")
    console.print(f"use it: --set 'metrics={{judge: {{options: {{head: {escape(str(out))}}}}}}}'")


@judge_app.command("eval", epilog="Examples:\n\n  medattack judge eval labels.csv\n\n"
                   "  medattack judge eval labels.csv --cross-validate\n\n"
                   "  medattack judge eval labels.csv --judge api --set model=gpt-4o-mini\n\n"
                   "  medattack judge eval labels.csv --judge hf --set model=meta-llama/Llama-Guard-3-1B "
                   "--set device=cuda")
def evaluate(
    labels: Annotated[Path, typer.Argument(help="CSV/JSONL/Parquet: question, response, jailbroken (0/1), "
                                               "optional model and kind.")],
    judge: Annotated[str, typer.Option(help="Judge backend: embedded, api or hf.")] = "embedded",
    cross_validate: Annotated[bool, typer.Option(
        "--cross-validate", help="Embedded only: train on the other models, judge each held-out model.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="A setting of the judge backend: key=value.")
                    ] = None,
) -> None:
    """Agreement of a judge with labelled responses; the non-refusal rate (keyword_asr) beside it."""
    from medattack.config import parse_overrides
    from medattack.errors import ConfigError
    from medattack.scoring.backends.text_embedders import get_text_embedder
    from medattack.scoring.judge import JudgeConfig
    from medattack.scoring.judges.features import features
    from medattack.scoring.judges.head import grouped_out_of_fold
    from medattack.scoring.judges.labels import agreement, keyword_agreement, read_labels, validate_judge

    with errors():
        data = read_labels(labels)
        if cross_validate:
            if judge != "embedded" or len(set(data.models)) < 2:
                raise ConfigError("--cross-validate needs the embedded judge and labels of two or more models.")
            x = features(data.questions, data.responses, get_text_embedder("minilm"))
            _, predicted = grouped_out_of_fold(x, data.jailbroken, data.models)
            title = f"embedded judge, cross-validated (one model held out at a time) on {labels.name}"
            _print_agreement(title, agreement(data.jailbroken, predicted, data))
            _print_agreement(f"non-refusal rate (keyword_asr) on {labels.name}", keyword_agreement(data))
            return
        result = validate_judge(data, JudgeConfig(judge, parse_overrides(set_ or [])).build())
    if result.undecided:
        console.print(f"[yellow]{result.undecided} of {result.n} response(s) the judge could not decide are left "
                      "out below (not counted as 0)[/yellow]")
    _print_agreement(f"{result.judge} on {labels.name}", result.agreement)
    _print_agreement(f"non-refusal rate (keyword_asr) on {labels.name}", result.keyword_agreement)
