"""What the report reads, computed once: the runs loaded, their tables, the judge's validity, summary.json and the
rate that stands per cell (`analyse` -> Analysis), and the report's settings (ReportConfig)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from medattack.config import option
from medattack.errors import NothingToDoError, RunDirError
from medattack.numbers import shown
from medattack.report.aggregate import (
    HARMFUL_CONDITIONS,
    JUDGE_METRIC,
    ReportTables,
    build_tables,
)
from medattack.report.figures import draw_all
from medattack.report.reading import RunData, is_scores_folder, load_run, load_scores_folder
from medattack.report.render import Section, Table
from medattack.report.summary import build_summary
from medattack.rundir import RunDir
from medattack.scoring.judge import JudgeConfig
from medattack.scoring.judges.base import JudgeValidity
from medattack.stats import Confusion

if TYPE_CHECKING:
    from medattack.scoring.judges.labels import JudgeValidation


@dataclass(frozen=True)
class ReportConfig:
    title: str = option("medattack red-team report", "Title at the top of the report.")
    examples: int = option(12, "Example responses shown (successful harmful answers first).", low=0)
    max_response_chars: int = option(600, "Longest example response shown, in characters.", low=1)
    labels: str | None = option(None, "Labelled responses (question, response, jailbroken): the report then shows "
                                "how well the judge agrees with them (see `medattack judge eval`).")
    judge: JudgeConfig = option(JudgeConfig(), "The judge validated against `labels` (backend and options).")


NO_VALIDITY = ("The judge's agreement with labelled data is not known here, so its rates are what it counted, not "
               "corrected for its errors: label a sample of each target's answers (`medattack label RUN`), or "
               "measure the judge with `medattack report RUN --set labels=LABELS.csv` (or `medattack judge eval`).")


ESTIMATES = ("Which rate stands, per target: with labels of that target's answers (`medattack label RUN`) a "
             "two-phase estimate (the judge's verdicts split the answers into strata; the labelled share that "
             "complies in each stratum, weighted by the stratum's size; 95% interval from each stratum's posterior "
             "with the unlabelled answers drawn); without them, only an interval that carries how the judge's "
             "error differs between the labelled models (transported: no point estimate is a finding for a model "
             "the judge was not measured on); with neither, what the judge counted. 'label N more' is how many "
             "further labels, allocated across strata, would narrow the interval to +/-0.05.")


def judge_validity(config: ReportConfig, metrics: dict[str, dict[str, Any]], validation: JudgeValidation | None,
              ) -> JudgeValidity | None:
    """The user's labels when the report was given them (--set labels=FILE), else what the scoring judge carries
    (the embedded head's cross-validation), else None."""
    if validation is not None:
        overall = validation.agreement["overall"]
        by_model = {model: Confusion(**scores["confusion"])
                    for model, scores in validation.agreement["by_model"].items()}
        return JudgeValidity(validation.judge, f"your labels, {Path(str(config.labels)).name}",
                             Confusion(**overall["confusion"]), overall["kappa"], overall["n"], by_model)
    spec = metrics.get(JUDGE_METRIC, {})
    if not spec.get("validity"):
        return None
    return JudgeValidity.from_json(spec["validity"], str(spec.get("description", JUDGE_METRIC)).removeprefix(
        "compliance judge "))


def judge_validation(config: ReportConfig) -> tuple[Section, JudgeValidation]:
    """The judge measured against the labels file: agreement overall, per file and per model, beside the
    non-refusal rate."""
    from medattack.scoring.judges.labels import read_labels, validate_judge

    labels = read_labels(Path(str(config.labels)))
    result = validate_judge(labels, config.judge.build())

    rows = [[who, group, str(s["n"]), f"{s['kappa']:.3f}", shown(s["sensitivity"]), shown(s["specificity"]),
             f"{s['f1']:.3f}", f"{s['predicted_rate']:.3f}", f"{s['labelled_rate']:.3f}"]
            for who, report in ((result.judge, result.agreement), ("non-refusal rate", result.keyword_agreement))
            for group, s in [("all", report["overall"]), *report["by_model"].items()]]
    section = Section("Judge validation", [
        f"The judge ({result.judge}) and the non-refusal rate against {len(labels.responses)} labelled responses "
        f"({labels.describe()}). Kappa is Cohen's: agreement beyond chance (1 perfect, 0 chance); sensitivity is "
        "the share of labelled jailbreaks judged so, specificity the share of the other answers judged safe. "
        f"Responses the judge could not decide: {result.undecided} (left out, not 0). Without labels of a target, its "
        "interval carries this judge's error as it differs between these labels' models."],
        tables=[Table("Agreement with the labels", ["judge", "group", "n", "kappa", "sensitivity", "specificity", "F1",
                                                    "judged rate", "labelled rate"], rows, name="judge_validation")])
    return section, result


def success_rates(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """summary.json's rates of the success metric on harmful questions: the rows that carry an estimate."""
    return [r for r in summary["rates"]
            if r["metric"] == summary["success_metric"] and r["condition"] in HARMFUL_CONDITIONS]


def standing_table_rows(summary: dict[str, Any]) -> pd.DataFrame:
    """Per success-metric rate on harmful questions: the judged rate and the estimate that stands (its kind,
    interval, labels and the labels still needed for +/-0.05), from summary.json's rates."""
    rows = []
    for r in success_rates(summary):
        found = r["estimate"] or {}
        rows.append({"run": r["run"], "method": r["source"], "target": r["target"], "condition": r["condition"],
                     "n": r["n"], "nulls": r["nulls"], "judged": r["rate"], "judged_ci_low": r["ci_low"],
                     "judged_ci_high": r["ci_high"], "kind": found.get("kind"), "estimate": found.get("rate"),
                     "ci_low": found.get("ci_low"), "ci_high": found.get("ci_high"), "labels": found.get("labels", 0),
                     "further_labels": found.get("further"), "note": found.get("note", "no decided answers")})
    return pd.DataFrame(rows, columns=["run", "method", "target", "condition", "n", "nulls", "judged", "judged_ci_low",
                                       "judged_ci_high", "kind", "estimate", "ci_low", "ci_high", "labels",
                                       "further_labels", "note"])


def run_names(roots: Sequence[Path]) -> list[str]:
    """A name per run, unique among them: the shortest ending of each resolved path that tells them apart (the
    folder name when that suffices; `p/a/x` and `q/c/a/x` become `p/a/x` and `c/a/x`). The same folder twice has
    no such name: `load_runs` refuses it first."""
    parts = [root.resolve().parts for root in roots]
    names = []
    for own in parts:
        others = [other for other in parts if other is not own]
        depth = 1
        while depth < len(own) and any(other[-depth:] == own[-depth:] for other in others):
            depth += 1
        names.append("/".join(own[-depth:]))
    return names


def load_runs(run_dirs: Sequence[str | Path]) -> list[RunData]:
    """Each run directory (or scored responses file's folder) read once and named uniquely (`run_names`); refuses a
    folder that is neither, the same folder twice, and runs with nothing scored."""
    roots = [Path(r) for r in run_dirs]
    for root in roots:
        if not RunDir(root).has_samples() and not RunDir(root).manifest_path.exists() and not is_scores_folder(root):
            raise RunDirError(f"{root} is not a run directory (no run.json) nor a scored responses file's folder (no "
                              "scores.jsonl); pass the folder `medattack build` or `medattack score --responses` made.")
    seen: dict[Path, Path] = {}
    for root in roots:
        if root.resolve() in seen:
            raise RunDirError(f"{seen[root.resolve()]} and {root} are the same run ({root.resolve()}); pass each run "
                              "once (its answers would be counted twice).")
        seen[root.resolve()] = root
    names = run_names(roots)
    runs = [load_scores_folder(root, name) if is_scores_folder(root) else load_run(root, name)
            for root, name in zip(roots, names, strict=True)]
    if all(run.scores.empty for run in runs):
        raise NothingToDoError(f"no scored responses in {', '.join(map(str, roots))}: score them first "
                               f"(`medattack score {roots[0]}`).")
    return runs


def analysed(run_dirs: Sequence[str | Path]) -> tuple[list[RunData], ReportTables, pd.DataFrame,
                                                       dict[str, dict[str, Any]]]:
    """The runs read, their tables, all their scores in one frame, and every metric's spec."""
    runs = load_runs(run_dirs)
    return runs, build_tables(runs), pd.concat([r.scores for r in runs], ignore_index=True), metric_specs(runs)


def metric_specs(runs: Sequence[RunData]) -> dict[str, dict[str, Any]]:
    """Every metric's spec the runs recorded (a later run's spec of a metric wins)."""
    metrics: dict[str, dict[str, Any]] = {}
    for run in runs:
        metrics.update(run.metrics)
    return metrics


def run_validity(runs: Sequence[RunData]) -> JudgeValidity | None:
    """The scoring judge's measured error as the runs' metric specs record it (None: none known)."""
    return judge_validity(ReportConfig(), metric_specs(runs), None)


def summarise(run_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """summary.json's record of one or more runs, computed now (`medattack results`; report/summary.py)."""
    runs, tables, scores, metrics = analysed(run_dirs)
    validity = judge_validity(ReportConfig(), metrics, None) if tables.success_metric == JUDGE_METRIC else None
    return build_summary([r.name for r in runs], tables, scores, metrics, validity, {r.name: r.labels for r in runs})


@dataclass
class Analysis:
    """Everything the report's sections read, computed once (`analyse`)."""

    config: ReportConfig
    runs: list[RunData]
    tables: ReportTables
    scores: pd.DataFrame  # one row per response x metric (aggregate.py)
    metrics: dict[str, dict[str, Any]]  # metric name -> its spec (description, is_proxy, validity)
    figures: dict[str, bytes]  # figure name -> PNG
    validation: JudgeValidation | None  # the judge against the labels given with --labels
    validation_section: Section | None  # and its section
    validity: JudgeValidity | None  # the judge's measured errors (None: no judge, or not measured)
    summary: dict[str, Any]  # summary.json
    standing: pd.DataFrame  # attack success as judged and the estimate that stands (report/estimates.py)

    @property
    def success_metric(self) -> str:
        return self.tables.success_metric

    @property
    def judged(self) -> bool:
        """Whether the compliance judge measured attack success (else the non-refusal rate stands in)."""
        return self.success_metric == JUDGE_METRIC

    @property
    def validity_text(self) -> str:
        """The sentence on the judge's validity that every judged table carries ("" without a judge)."""
        return (self.validity.sentence() if self.validity else NO_VALIDITY) if self.judged else ""

    @property
    def proxies(self) -> list[str]:
        return sorted(name for name, spec in self.metrics.items() if spec.get("is_proxy"))


def analyse(run_dirs: Sequence[str | Path], config: ReportConfig) -> Analysis:
    """Read the runs and compute what the report shows."""
    runs, tables, scores, metrics = analysed(run_dirs)
    section, validation = judge_validation(config) if config.labels else (None, None)
    judged = tables.success_metric == JUDGE_METRIC
    validity = judge_validity(config, metrics, validation) if judged else None
    summary = build_summary([r.name for r in runs], tables, scores, metrics, validity, {r.name: r.labels for r in runs})
    return Analysis(config, runs, tables, scores, metrics, draw_all(tables, scores), validation, section,
                    validity, summary, standing_table_rows(summary))
