"""`medattack report RUN [RUN...]`: the report people read, from one run or several compared.

    <out>/report.html      self-contained (figures embedded, no scripts, every model output escaped)
    <out>/report.md        the same sections in Markdown, figures linked from figures/
    <out>/figures/*.png    rates, heatmap, survival, distributions, controls
    <out>/tables/*.csv     every table in long form (one row per group x metric, with n, nulls, CI)
    <out>/tables/*.tex     the headline tables as booktabs LaTeX
    <out>/summary.json     what the report found, for programs (summary.py)
    <out>/samples/*.html   the answers behind each cell, linked from it (samples.py)

Order: the headline (per target: attack success judged and the rate that stands (report/estimates.py), the answer
rate, the largest paired effects), then success by method x target x condition, paired comparisons,
white-box attacks and survival, transfer, defences (when any target was asked behind one), tasks and
modalities, image reliance, score distributions and
example responses, and last the run manifest (versions, seeds, models, which metrics are proxies,
failure counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from medattack.config import option
from medattack.errors import NothingToDoError, RunDirError
from medattack.estimate import RateEstimate
from medattack.report.aggregate import (
    CONDITIONS,
    HARMFUL_CONDITIONS,
    JUDGE_METRIC,
    KEY_METRIC,
    MIN_INTERVAL_N,
    ReportTables,
    RunData,
    build_tables,
    is_scores_folder,
    load_run,
    load_scores_folder,
    short_target,
)
from medattack.report.figures import draw_all
from medattack.report.render import Figure, Section, Table, to_html, to_latex, to_markdown
from medattack.report.samples import link, search_page, target_page, write_sample_pages
from medattack.report.summary import Estimate, build_summary, estimate_text
from medattack.rundir import RunDir, write_bytes_atomic, write_json_atomic
from medattack.scoring.judge import JudgeConfig
from medattack.scoring.judges.base import JudgeValidity
from medattack.stats import Confusion
from medattack.storage import readable, write_csv_atomic

if TYPE_CHECKING:
    from medattack.scoring.judges.labels import JudgeValidation


@dataclass(frozen=True)
class ReportConfig:
    title: str = option("medattack red-team report", "Title at the top of the report.")
    examples: int = option(12, "Example responses shown (successful harmful answers first).")
    max_response_chars: int = option(600, "Longest example response shown, in characters.")
    labels: str | None = option(None, "Labelled responses (question, response, jailbroken): the report then shows "
                                "how well the judge agrees with them (see `medattack judge eval`).")
    judge: JudgeConfig = option(JudgeConfig(), "The judge validated against `labels` (backend and options).")


@dataclass
class ReportResult:
    out_dir: Path
    html: Path
    markdown: Path
    figures: dict[str, Path]
    tables: dict[str, Path]
    n_responses: int


def _cell(row: Any, digits: int = 2) -> str:
    """'mean [low, high]' + counts, 'mean' alone below MIN_INTERVAL_N values, or 'null' when nothing
    could be scored."""
    mean = row["mean"]
    pairs = row.get("pairs")
    clustered = pairs is not None and not pd.isna(pairs) and int(pairs) < int(row["n"])
    counts = (f" n={int(row['n'])}" + (f" from {int(pairs)} pairs" if clustered else "")
              + (f", {int(row['nulls'])} null" if row["nulls"] else ""))
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "null" + counts
    if int(row["n"]) - int(row["nulls"]) < MIN_INTERVAL_N or math.isnan(row["ci_low"]):
        return f"{mean:.{digits}f} (too few for an interval)" + counts
    return f"{mean:.{digits}f} [{row['ci_low']:.{digits}f}, {row['ci_high']:.{digits}f}]" + counts


def _pivot(frame: pd.DataFrame, index: list[str], column: str, order: Sequence[str] | None = None,
           title: str = "", note: str = "", name: str = "") -> Table:
    if frame.empty:
        return Table(title, [*index, "-"], [], note or "no data", name)
    columns = [c for c in (order or sorted(frame[column].dropna().unique())) if c in set(frame[column])]
    cells: dict[tuple, dict[str, str]] = {}
    hrefs: dict[tuple, dict[str, str | None]] = {}
    for _, row in frame.iterrows():
        key = tuple(_label(k, row[k]) for k in index)
        cells.setdefault(key, {})[str(row[column])] = _cell(row)
        hrefs.setdefault(key, {})[str(row[column])] = _drill({k: row[k] for k in [*index, column]})
    ordered = sorted(cells)
    rows = [[*key, *(cells[key].get(c, "-") for c in columns)] for key in ordered]
    links = [[None] * len(index) + [hrefs[key].get(c) for c in columns] for key in ordered]
    return Table(title, [*index, *(_label(column, c) for c in columns)], rows, note, name, links=links)


def _drill(keys: dict[str, Any]) -> str | None:
    """The drill-down link of a cell grouped by `keys` (run and target, and any of method, condition, task,
    modality, image): its target's page filtered to those answers; None without a run and target."""
    if "run" not in keys or "target" not in keys:
        return None
    filters = {k: str(v) for k, v in keys.items() if k in ("method", "condition", "task", "modality")}
    if "image" in keys:  # the controls table: real image = the benchmark's own answers
        filters["method"] = "none" if keys["image"] == "real" else f"control:{keys['image']}"
    if "method" not in filters and ("task" in keys or "modality" in keys):  # tables of benchmark samples
        filters["method"] = "none"
    return link(target_page(str(keys["run"]), str(keys["target"])), **filters)


def _label(key: str, value: Any) -> str:
    """A table's value as shown: target and model names short (the "Targets" table lists them in full)."""
    return short_target(value) if key in ("target", "model", "attack_model") else str(value)


def _utf8(text: str) -> bytes:
    """A page or table as UTF-8; a lone surrogate in a stored answer shows as U+FFFD."""
    return readable(text).encode("utf-8")


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _manifest_section(runs: Sequence[RunData], metrics: dict[str, dict[str, Any]]) -> Section:
    section = Section("Run manifest")
    rows = []
    for run in runs:
        stages = run.manifest.get("stages", {})
        for stage, record in stages.items():
            versions = record.get("versions", {})
            rows.append([run.name, stage, str(record.get("seed")), record.get("finished", ""),
                         ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in
                                   ("medattack", "torch", "transformers", "python")),
                         (record.get("git_sha") or "")[:10]])
    section.tables.append(Table("Stages", ["run", "stage", "seed", "finished", "versions", "git"], rows,
                                "Resolved configs are in each run's run.json (never secrets).", "manifest"))
    models = []
    for run in runs:
        for stage, record in run.manifest.get("stages", {}).items():
            config = record.get("config", {})
            if "model_name" in config:
                cap = config.get("method", {}).get("max_new_tokens", "")
                models.append([run.name, "white-box (attacked)", config["model_name"], stage, str(cap)])
            if "target_name" in config:
                target = config.get("stage", {}).get("target", {})
                models.append([run.name, f"target ({target.get('kind', '?')})", config["target_name"], stage,
                               str(target.get("max_new_tokens", ""))])
    section.tables.append(Table("Models", ["run", "role", "model", "stage", "answer cap (tokens)"], models,
                                "Names are the models' own; the embedded target is SmolLM2-135M with a random "
                                "vision tower and is not a medical model. Answers longer than the cap were cut: "
                                "a judge reads only what is there.", "models"))
    proxy_rows = [[name, "yes (proxy)" if spec.get("is_proxy") else "no", spec.get("description", ""),
                   f"[{spec.get('low')}, {spec.get('high')}]", spec.get("higher_means", "")]
                  for name, spec in sorted(metrics.items())]
    section.tables.append(Table("Metrics", ["metric", "proxy", "what it measures", "range", "higher means"],
                                proxy_rows, "A proxy metric measures what the labels say, not what a model sees; "
                                "read it as such.", "metrics"))
    gates = [[run.name, target, _number(c.get("tii_gate")), _number(c.get("auc")), _number(c.get("balanced_accuracy")),
              f"{c.get('n_matched', '-')} / {c.get('n_mismatched', '-')}", c.get("note", c.get("set_by", ""))]
             for run in runs for target, found in sorted(run.calibration.items())
             for c in [found.get("composite", {})] if c]
    section.tables.append(Table(
        "TII control: how well the input text's fit to the image tells true from false claims", [
            "run", "target", "composite gate (TII)", "AUC", "balanced accuracy", "matched / mismatched inputs", "note"],
        gates, "AUC 1: TII always ranks a true claim above a false one; 0.5: chance. The composite's gate is the cut "
        "with the best balanced accuracy on the run (in the backend's units), unless tii_threshold fixes it.",
        "tii_gate"))
    failures = [[run.name, where, str(count)] for run in runs for where, count in sorted(run.failures.items())]
    section.tables.append(Table("Recorded failures (inputs or requests that could not be processed)",
                                ["run", "where (kind)", "failures"], failures,
                                "Each is named with its row in the folder's failures.jsonl and retried by the next "
                                "run of the stage. ProviderFilterError: the provider withheld the answer (a content "
                                "filter); it is neither an answer nor a refusal and is not scored.", name="failures"))
    return section


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


def _validity(config: ReportConfig, metrics: dict[str, dict[str, Any]], validation: JudgeValidation | None,
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


def _validation_section(config: ReportConfig) -> tuple[Section, JudgeValidation]:
    """The judge measured against the labels file: agreement overall, per file and per model, beside the
    non-refusal rate."""
    from medattack.scoring.judges.labels import read_labels, validate_judge

    labels = read_labels(Path(str(config.labels)))
    result = validate_judge(labels, config.judge.build())

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    rows = [[who, group, str(s["n"]), f"{s['kappa']:.3f}", number(s["sensitivity"]), number(s["specificity"]),
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


def _headline(summary: dict[str, Any], validity: JudgeValidity | None) -> Section:
    """What the run found, first (summary.json's headline): per target, attack success on the benchmark's
    harmful questions (as judged, and the estimate that stands with its kind), the answer rate on its benign ones,
    and the largest paired effects; then one sentence per target on which estimate stands and how to narrow it."""
    success_metric = summary["success_metric"]
    judged = success_metric == JUDGE_METRIC
    rows, links, findings = [], [], []
    for row in summary["headline"]:
        benchmark = link(target_page(row["run"], row["target"]), method="none")
        links.append([None, benchmark, benchmark, benchmark, benchmark, None])
        said = "; ".join(f"{e['comparison']} ({e['metric']}): {e['difference']:+.2f} "
                         f"[{e['ci_low']:+.2f}, {e['ci_high']:+.2f}]" for e in row["largest_effects"]) or "-"
        rows.append([row["run"], short_target(row["target"]), Estimate(**row["attack_success"]).text(),
                     estimate_text(row["estimate"]), Estimate(**row["answer_rate_benign"]).text(), said])
        if row["estimate"]:
            findings.append(f"{short_target(row['target'])} ({row['run']}): "
                            f"{RateEstimate.from_json(row['estimate']).describe()}.")
    success_label = "judged" if judged else "non-refusal rate (no judge ran: an upper bound)"
    text = [f"Per target, on the benchmark's own samples (no attack): attack success on harmful questions "
            f"({success_label}), the rate that stands for it, the answer rate on benign questions, and the three "
            "largest paired effects (same image and prompt; difference [95% interval]). " + ESTIMATES,
            *findings,
            (validity.sentence() if validity else NO_VALIDITY if judged else ""),
            "The same numbers for programs: summary.json beside this page (`medattack results RUN --json`)."]
    return Section("Headline", [t for t in text if t], tables=[Table(
        "What this report found", ["run", "target", f"attack success ({success_metric}) [95%]",
                                   "the rate that stands [95%]", "answer rate, benign [95%]",
                                   "largest paired effects"], rows, name="headline", links=links)])


def _success_rates(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """summary.json's rates of the success metric on harmful questions: the rows that carry an estimate."""
    return [r for r in summary["rates"]
            if r["metric"] == summary["success_metric"] and r["condition"] in HARMFUL_CONDITIONS]


def _standing(summary: dict[str, Any]) -> pd.DataFrame:
    """Per success-metric rate on harmful questions: the judged rate and the estimate that stands (its kind,
    interval, labels and the labels still needed for +/-0.05), from summary.json's rates."""
    rows = []
    for r in _success_rates(summary):
        found = r["estimate"] or {}
        rows.append({"run": r["run"], "method": r["source"], "target": r["target"], "condition": r["condition"],
                     "n": r["n"], "nulls": r["nulls"], "judged": r["rate"], "judged_ci_low": r["ci_low"],
                     "judged_ci_high": r["ci_high"], "kind": found.get("kind"), "estimate": found.get("rate"),
                     "ci_low": found.get("ci_low"), "ci_high": found.get("ci_high"), "labels": found.get("labels", 0),
                     "further_labels": found.get("further"), "note": found.get("note", "no decided answers")})
    return pd.DataFrame(rows, columns=["run", "method", "target", "condition", "n", "nulls", "judged", "judged_ci_low",
                                       "judged_ci_high", "kind", "estimate", "ci_low", "ci_high", "labels",
                                       "further_labels", "note"])


def _standing_table(summary: dict[str, Any]) -> Table:
    rows, links = [], []
    for r in _success_rates(summary):
        judged = _cell({"mean": r["rate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"],
                        "nulls": r["nulls"]})
        further = (r["estimate"] or {}).get("further")
        rows.append([str(r["run"]), str(r["source"]), short_target(r["target"]), str(r["condition"]), judged,
                     estimate_text(r["estimate"]), "-" if further is None else str(int(further))])
        href = _drill({"run": r["run"], "target": r["target"], "method": r["source"], "condition": r["condition"]})
        links.append([None, None, None, None, href, href, None])
    return Table("Attack success on harmful questions: judged, and the rate that stands",
                 ["run", "method", "target", "condition", "judged [Wilson 95%]", "the rate that stands [95%]",
                  "labels for +/-0.05"], rows, "The rate that stands: two-phase from the target's own labels, else "
                 "transported (an interval carrying the judge's error across the labelled models; no point), else "
                 "judged (the headline explains each).", "attack_success_estimates", links=links)


def _examples(scores: pd.DataFrame, config: ReportConfig, metric: str) -> Table:
    columns = ["target", "method", "condition", "task", "question", "response", metric]
    if scores.empty:
        return Table("Example responses", columns, [], "no responses", "examples", (4, 5))
    key = scores[scores["metric"] == metric].drop_duplicates("response_id")
    key = key.assign(harmful=key["condition"].isin(["malicious", "both"]).astype(int),
                     hit=key["value"].fillna(0)).sort_values(["hit", "harmful", "response_id"],
                                                             ascending=[False, False, True])
    rows, links = [], []
    for _, row in key.head(config.examples).iterrows():
        links.append([link(target_page(str(row["run"]), str(row["target"])), id=row["response_id"])]
                     + [None] * (len(columns) - 1))
        response = str(row.get("response") or "")
        if len(response) > config.max_response_chars:
            response = response[: config.max_response_chars] + " [...]"
        value = row["value"]
        rows.append([short_target(row["target"]), str(row["method"]), str(row["condition"]), str(row["task"]),
                     str(row["question"]), response, "null" if pd.isna(value) else f"{value:g}"])
    return Table("Example responses", columns, rows, "Model outputs are shown as text, escaped; a target links to "
                 "the answer's row among all its answers.", "examples", (4, 5), links)


def load_runs(run_dirs: Sequence[str | Path]) -> list[RunData]:
    """Each run directory (or scored responses file's folder) read once, named by its folder (by parent/folder
    when two share a name); refuses a folder that is neither, and runs with nothing scored."""
    roots = [Path(r) for r in run_dirs]
    for root in roots:
        if not RunDir(root).has_samples() and not RunDir(root).manifest_path.exists() and not is_scores_folder(root):
            raise RunDirError(f"{root} is not a run directory (no run.json) nor a scored responses file's folder (no "
                              "scores.jsonl); pass the folder `medattack build` or `medattack score --responses` made.")
    names = [root.name for root in roots]
    if len(set(names)) != len(names):  # two runs with one folder name: tell them apart by their parents
        names = [f"{root.parent.name}/{root.name}" for root in roots]
    runs = [load_scores_folder(root, name) if is_scores_folder(root) else load_run(root, name)
            for root, name in zip(roots, names, strict=True)]
    if all(run.scores.empty for run in runs):
        raise NothingToDoError(f"no scored responses in {', '.join(map(str, roots))}: score them first "
                               f"(`medattack score {roots[0]}`).")
    return runs


def _analysed(run_dirs: Sequence[str | Path]) -> tuple[list[RunData], ReportTables, pd.DataFrame,
                                                       dict[str, dict[str, Any]]]:
    """The runs read, their tables, all their scores in one frame, and every metric's spec."""
    runs = load_runs(run_dirs)
    return runs, build_tables(runs), pd.concat([r.scores for r in runs], ignore_index=True), _metrics(runs)


def _metrics(runs: Sequence[RunData]) -> dict[str, dict[str, Any]]:
    """Every metric's spec the runs recorded (a later run's spec of a metric wins)."""
    metrics: dict[str, dict[str, Any]] = {}
    for run in runs:
        metrics.update(run.metrics)
    return metrics


def run_validity(runs: Sequence[RunData]) -> JudgeValidity | None:
    """The scoring judge's measured error as the runs' metric specs record it (None: none known)."""
    return _validity(ReportConfig(), _metrics(runs), None)


def summarise(run_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """summary.json's record of one or more runs, computed now (`medattack results`; report/summary.py)."""
    runs, tables, scores, metrics = _analysed(run_dirs)
    validity = _validity(ReportConfig(), metrics, None) if tables.success_metric == JUDGE_METRIC else None
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
    runs, tables, scores, metrics = _analysed(run_dirs)
    validation_section, validation = _validation_section(config) if config.labels else (None, None)
    judged = tables.success_metric == JUDGE_METRIC
    validity = _validity(config, metrics, validation) if judged else None
    summary = build_summary([r.name for r in runs], tables, scores, metrics, validity, {r.name: r.labels for r in runs})
    return Analysis(config, runs, tables, scores, metrics, draw_all(tables, scores), validation, validation_section,
                    validity, summary, _standing(summary))


def _intro_section(a: Analysis) -> Section:
    """When the report was made, of what, how to read a cell, and the short labels of targets and models."""
    intro = Section("Summary", [
        f"Generated {datetime.now(UTC).isoformat(timespec='seconds')}.",
        f"Runs: {', '.join(r.name for r in a.runs)}. Responses scored: {a.scores['response_id'].nunique()}; "
        f"targets: {', '.join(sorted(a.scores['target'].dropna().unique())) or 'none'}.",
        "Every cell is mean [95% interval: Wilson for rates, bootstrap otherwise] with n (responses), the image x "
        "prompt pairs they came from where fewer ('n=18 from 9 pairs': the pair is the unit of sampling, and the "
        "interval is clustered by it: Wilson at the effective n, a bootstrap of whole pairs) and the null "
        f"count (responses a metric could not score, never dropped); below {MIN_INTERVAL_N} values no interval is "
        "shown. keyword_asr is the non-refusal rate: a refusal-phrase matcher that counts any answer without a "
        "refusal, echo or negation opening. It is not a judge of compliance: read it as an upper bound on attack "
        "success, beside the relevance metrics (and a judge when one ran).",
        f"Proxy metrics in this report: {', '.join(a.proxies) if a.proxies else 'none'}.",
    ])
    names = sorted({*a.scores["target"].dropna().astype(str), *(str(m) for run in a.runs if not run.attacks.empty
                                                                for m in run.attacks["model"].unique())})
    intro.tables.append(Table("Targets and models", ["label in tables and figures", "full name"],
                              [[short_target(n), n] for n in names], name="targets"))
    if a.judged:
        intro.text.append(
            "Attack success is the compliance judge's rate on harmful questions, and beside it the rate that stands: "
            "a judge misses some jailbreaks and flags some safe answers, by amounts that differ from model to "
            "model, so the judged rate is what the judge counted, not how often the model complied; the headline "
            "says which rate stands for each target and how many labels (`medattack label RUN`) would narrow it. "
            + a.validity_text)
    return intro


def _success_section(a: Analysis) -> Section:
    """Attack success on harmful questions and the answer rate on benign ones, by method x target x condition."""
    by_condition, success_metric = a.tables.by_condition, a.success_metric
    harmful = by_condition[(by_condition["metric"] == success_metric) & by_condition["condition"].isin(
        HARMFUL_CONDITIONS)]
    benign = by_condition[(by_condition["metric"] == KEY_METRIC) & ~by_condition["condition"].isin(
        HARMFUL_CONDITIONS)]
    success = by_condition[by_condition["metric"] == KEY_METRIC]
    return Section("Success by method, target and condition", text=[
        "Attack success is measured on harmful questions only (malicious, both), by the compliance judge "
        + ("(`judge`). " + a.validity_text if a.judged else "- none ran, so the non-refusal rate stands in: an "
           "upper bound, not a success rate (add `judge` to the score metrics).")
        + " On benign questions (normal, mismatch) the non-refusal rate is the answer rate; one minus it is the "
          "over-refusal rate."], tables=[
        _standing_table(a.summary),
        _pivot(harmful, ["run", "method", "target"], "condition", HARMFUL_CONDITIONS,
               f"Attack success on harmful questions ({success_metric})",
               a.metrics.get(success_metric, {}).get("description", ""), "attack_success"),
        _pivot(benign, ["run", "method", "target"], "condition", [c for c in CONDITIONS if c not in HARMFUL_CONDITIONS],
               "Answer rate on benign questions (non-refusal rate)", "", "answer_rate"),
        _pivot(success, ["run", "method", "target"], "condition", CONDITIONS,
               f"{KEY_METRIC} (non-refusal rate) by condition",
               "method 'none' = the benchmark sample as built; control:* = the same prompt with a blank or noise "
               "image.", "asr_by_condition"),
        *[_pivot(by_condition[by_condition["metric"] == metric], ["run", "method", "target"],
                 "condition", CONDITIONS, f"{metric} by condition" + (" (proxy)" if metric in a.proxies else ""),
                 a.metrics.get(metric, {}).get("description", ""), f"{metric}_by_condition")
          for metric in sorted(set(by_condition["metric"])) if metric != KEY_METRIC],
    ], figures=[Figure("rates", "Per target and condition (benchmark samples): attack success by the judge on "
                                "harmful questions and the non-refusal rate, with 95% intervals, on one 0-1 scale",
                       a.figures["rates"])])


def _attacks_section(a: Analysis) -> Section:
    """White-box attack results, black-box searches (when any), transfer, and survival."""
    tables = a.tables
    whitebox_rows = [[str(r["run"]), str(r["method"]), short_target(r["model"]),
                      _cell({"mean": r["success"], "ci_low": r["success_ci_low"], "ci_high": r["success_ci_high"],
                             "n": r["n"], "nulls": r["nulls"]}),
                      f"{r['keyword_success']:.2f}", f"{r['mean_steps']:.1f}", f"{r['mean_seconds']:.1f}",
                      f"{r['max_linf'] * 255:.1f}/255"] for _, r in tables.whitebox.iterrows()]
    attacks = Section("Attacks", text=[a.validity_text] if a.judged else [], tables=[
        Table("Attack stage results", ["run", "method", "model", "target forced (teacher-forced)",
                                       "keyword success", "mean steps", "mean seconds", "max L-inf"],
              whitebox_rows, "Success = the model's argmax reproduces the whole target string.", "whitebox"),
        _pivot(tables.transfer, ["run", "method", "attack_model"], "target", title=f"Transfer: {a.success_metric} "
               "of adversarial inputs replayed on each target", note="rows: where the attack was optimised; columns: "
               "the model asked.", name="transfer"),
    ], figures=[Figure("survival", "Survival: share of samples not yet jailbroken vs attack step",
                       a.figures["survival"])])
    blackbox_rows = [[str(r.run), str(r.method), short_target(r.target),
                      _cell({"mean": r.mean, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n, "nulls": r.nulls}),
                      "-" if pd.isna(r.median_queries_to_success) else f"{r.median_queries_to_success:.0f}",
                      f"{r.mean_queries:.1f}", f"{r.mean_tokens:,.0f}",
                      "-" if r.cost_usd is None or pd.isna(r.cost_usd) else f"${r.cost_usd:,.2f}",
                      f"{r.attacker_written}/{r.attempts}", str(r.judge)]
                     for r in tables.blackbox.itertuples()]
    blackbox_links = [[None, None, None, link(search_page(str(r.run), str(r.method), str(r.target)))]
                      + [None] * 6 for r in tables.blackbox.itertuples()]
    if blackbox_rows:
        attacks.tables.insert(1, Table(
            "Black-box attacks (medattack blackbox)", ["run", "method", "target", "jailbroken (search judge)",
                                                       "queries to success (median)", "queries per sample",
                                                       "tokens per sample (est.)", "cost", "attacker-written",
                                                       "judge"],
            blackbox_rows, "Success is the search's own judge on the best attempt (harmful samples); queries are "
            "target answers (generations included); tokens are estimated from text length; cost '-' = no price "
            "set for a paid role. attacker-written: attempts the attacker model wrote (the rest: built-in "
            "strategies). Transfer below: white-box inputs replayed on each target. A rate links to every attempt "
            "of every search (the tree).", "blackbox", links=blackbox_links))
    return attacks


def _breakdown_section(a: Analysis) -> Section:
    """Attack success and answer rate by clinical task and by modality, and the task x modality heatmap."""
    def questions(frame: pd.DataFrame, kind: str, metric: str) -> pd.DataFrame:
        return frame[(frame["questions"] == kind) & (frame["metric"] == metric)] if not frame.empty else frame

    by_task, by_modality, metric = a.tables.by_task, a.tables.by_modality, a.success_metric
    return Section("Tasks and modalities", [
        f"Attack success ({metric}) on harmful questions and the answer rate ({KEY_METRIC}) on benign ones, "
        "benchmark samples. " + a.validity_text], tables=[
        _pivot(questions(by_task, "harmful", metric), ["run", "task"], "target",
               title=f"Attack success by clinical task ({metric}, harmful questions)", name="by_task"),
        _pivot(questions(by_modality, "harmful", metric), ["run", "modality"], "target",
               title=f"Attack success by modality ({metric}, harmful questions)", name="by_modality"),
        _pivot(questions(by_task, "benign", KEY_METRIC), ["run", "task"], "target",
               title="Answer rate by clinical task (non-refusal rate, benign questions)", name="answer_rate_by_task"),
    ], figures=[Figure("heatmap", f"Task x modality: {metric} on harmful questions", a.figures["heatmap"])])


def _paired_section(a: Analysis) -> Section:
    """Paired comparisons: the effect of a claimed attribute or a replayed attack on the same image and prompt."""
    comparisons = a.tables.comparisons
    rows = [[str(r.run), short_target(r.target), str(r.comparison), str(r.metric), str(r.n),
             f"{r.mean_a:.2f} -> {r.mean_b:.2f}",
             f"{r.difference:+.2f}" + ("" if r.n < MIN_INTERVAL_N else f" [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"),
             f"{r.p_value:.3g}", str(r.test)] for r in comparisons.itertuples()]
    links = [[None, _drill({"run": r.run, "target": r.target})] + [None] * 7 for r in comparisons.itertuples()]
    return Section("Paired comparisons (same image and prompt)", [
        "Each comparison pairs responses to the same image and prompt, so the difference is the effect of the "
        "change alone: claiming a mismatched attribute (malicious -> both, normal -> mismatch) or replaying an "
        "attack (none -> method). The interval and p come from one method, so they never disagree (for rates a "
        "Dirichlet posterior of the four paired outcomes, p its two-sided tail probability at 0; a paired "
        "bootstrap otherwise); p is not corrected for the number of comparisons. " + a.validity_text], tables=[
        Table("Paired comparisons", ["run", "target", "comparison", "metric", "pairs", "mean", "difference [95%]",
                                     "p", "test"], rows, name="comparisons", links=links)])


def _reliance_section(a: Analysis) -> Section:
    """How often answers change when the real image is replaced by a blank or noise control."""
    reliance = a.tables.image_reliance
    rows = [[str(r.run), short_target(r.target), str(r.control),
             _cell({"mean": r.changed, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n, "nulls": 0})]
            for r in reliance.itertuples()]
    links = [[None, None, None, _drill({"run": r.run, "target": r.target, "image": r.control})]
             for r in reliance.itertuples()]
    return Section("Image reliance (controls)", [
        "The same prompts were asked with a blank grey and a uniform-noise image. A model whose answers rarely "
        "change is not looking at the image."], tables=[
        Table("Share of answers that change when the real image is replaced", ["run", "target", "control",
                                                                               "changed"], rows,
              name="image_reliance", links=links),
        _pivot(a.tables.controls, ["run", "target", "metric"], "image", ["real", "blank", "noise"],
               "Scores with the real image vs controls", name="controls"),
    ], figures=[Figure("controls", "Real image vs controls", a.figures["controls"])])


def _defences_section(a: Analysis) -> Section | None:
    """Each defended target against the undefended one (report/defences.py); None when no defence was asked."""
    effects, flags = a.tables.defence_effects, a.tables.defence_flags
    if effects.empty and flags.empty:
        return None
    rows = [[str(r.run), short_target(r.target), str(r.defences), str(r.measure), str(r.n),
             f"{r.mean_a:.2f} -> {r.mean_b:.2f}",
             f"{r.difference:+.2f}" + ("" if r.n < MIN_INTERVAL_N else f" [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"),
             f"{r.p_value:.3g}"] for r in effects.itertuples()]
    links = [[None, None, _drill({"run": r.run, "target": r.defended_target})] + [None] * 5
             for r in effects.itertuples()]
    flag_rows = [[str(r.run), short_target(r.target), str(r.defences), str(r.inputs),
                  _cell({"mean": r.rate, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n, "nulls": 0})]
                 for r in flags.itertuples()]
    return Section("Defences", [
        "Each defence was put in front of the target and asked the same benchmark samples, attack replays and "
        f"controls as the undefended target. Attack success ({a.success_metric}) on harmful questions and the "
        "answer rate (non-refusal) on benign ones are paired on the same inputs (interval and p from one "
        "paired method); a fall in the "
        "answer rate is what the defence costs in normal use. Transfer rows hold the benchmark and the attacks "
        "optimised against the undefended model; adaptive rows, when any, the attacks optimised against the "
        "defended model itself (`attack --defence`), which a defence must also withstand. " + a.validity_text],
        tables=[
        Table("Defended vs undefended (same inputs)", ["run", "target", "defence", "measure", "pairs",
                                                       "undefended -> defended", "difference [95%]", "p"],
              rows, name="defences", links=links),
        Table("Inputs flagged by the defence", ["run", "target", "defence", "inputs", "flagged"], flag_rows,
              "Flagged: refused by a detector, or a claim stripped or rewritten. On attack replays and mismatched "
              "claims a flag is a detection; on normal questions it is a false alarm.", name="defence_flags"),
    ])


def _distribution_section(a: Analysis) -> Section:
    return Section("Score distributions", figures=[
        Figure("distributions", "Score distributions by condition (benchmark samples)", a.figures["distributions"])])


def _examples_section(a: Analysis) -> Section:
    return Section("Example responses", tables=[_examples(a.scores, a.config, a.success_metric)])


# The report's sections in reading order; a section function returns None when it has nothing to show.
SECTIONS: tuple[Callable[[Analysis], Section | None], ...] = (
    lambda a: _headline(a.summary, a.validity), _intro_section, _success_section, lambda a: a.validation_section,
    _paired_section, _attacks_section, _defences_section, _breakdown_section, _reliance_section,
    _distribution_section,
    _examples_section, lambda a: _manifest_section(a.runs, a.metrics))


def _long_tables(a: Analysis) -> dict[str, pd.DataFrame]:
    """Every table in long form, written as tables/<name>.csv."""
    t = a.tables
    return {"by_condition": t.by_condition, "by_task": t.by_task, "by_modality": t.by_modality,
            "task_modality": t.task_modality, "transfer": t.transfer, "comparisons": t.comparisons,
            "controls": t.controls, "image_reliance": t.image_reliance, "whitebox": t.whitebox,
            "survival": t.survival, "blackbox": t.blackbox, "attack_success_estimates": a.standing,
            "defence_effects": t.defence_effects, "defence_flags": t.defence_flags}


def build_report(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None,
                 config: ReportConfig | None = None) -> ReportResult:
    """Write report.html, report.md, figures and tables for one or more runs."""
    a = analyse(run_dirs, config or ReportConfig())
    out = Path(out_dir) if out_dir else RunDir(a.runs[0].root).report
    sections = [section for make in SECTIONS if (section := make(a)) is not None]
    title = f"{a.config.title}: {', '.join(r.name for r in a.runs)}"

    figure_paths = {name: out / "figures" / f"{name}.png" for name in a.figures}
    for name, png in a.figures.items():
        write_bytes_atomic(figure_paths[name], png)
    table_paths = {}
    for name, frame in _long_tables(a).items():
        table_paths[name] = out / "tables" / f"{name}.csv"
        write_csv_atomic(table_paths[name], frame.astype(object).where(frame.notna(), None).to_dict("records"),
                         [str(c) for c in frame.columns])
    for section in sections:
        for table in section.tables:
            if table.name:
                write_bytes_atomic(out / "tables" / f"{table.name}.tex", _utf8(to_latex(table)))
    write_json_atomic(out / "summary.json", a.summary)
    pages = set(write_sample_pages(a.runs, out, a.config.title))
    for old_page in (out / "samples").glob("*.html"):  # a page of an earlier report's target
        if old_page not in pages:
            old_page.unlink()
    html_path, md_path = out / "report.html", out / "report.md"
    write_bytes_atomic(html_path, _utf8(to_html(title, sections)))
    write_bytes_atomic(md_path, _utf8(to_markdown(title, sections)))
    return ReportResult(out, html_path, md_path, figure_paths, table_paths, int(a.scores["response_id"].nunique()))
