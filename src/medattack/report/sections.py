"""The report's sections, one function each, in reading order (SECTIONS): the headline, success by method x target x
condition, the judge's validation, paired comparisons, white-box attacks, defences, breakdowns, image reliance,
distributions, examples and the run manifest. Each reads the Analysis and returns a Section (None: nothing to show)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd

from medattack.estimate import RateEstimate
from medattack.numbers import shown
from medattack.report.aggregate import (
    CONDITIONS,
    HARMFUL_CONDITIONS,
    JUDGE_METRIC,
    KEY_METRIC,
    MIN_INTERVAL_N,
    short_target,
)
from medattack.report.injection import injection_section
from medattack.report.reading import RunData
from medattack.report.render import Figure, Section, Table
from medattack.report.samples import link, search_page, target_page
from medattack.report.summary import Estimate, estimate_text
from medattack.scoring.judges.base import JudgeValidity

if TYPE_CHECKING:
    pass
from medattack.report.analysis import ESTIMATES, NO_VALIDITY, Analysis, ReportConfig, success_rates
from medattack.report.cells import answers_from, cell_text, drill, pivot, proxy_marked


def manifest_section(runs: Sequence[RunData], metrics: dict[str, dict[str, Any]]) -> Section:
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
    gates = [[run.name, target, shown(c.get("tii_gate")), shown(c.get("auc")), shown(c.get("balanced_accuracy")),
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


def headline_section(summary: dict[str, Any], validity: JudgeValidity | None) -> Section:
    """What the run found, first (summary.json's headline): per target, attack success on the benchmark's
    harmful questions with no attack (as judged, and the estimate that stands with its kind), the answer rate on
    its benign ones and the largest paired effects; beneath it the strongest attack's success on the same kind of
    questions; then one sentence per target on which estimate stands and how to narrow it. Each cell links to
    exactly the answers it counts."""
    success_metric = summary["success_metric"]
    judged = success_metric == JUDGE_METRIC
    rows, links, findings = [], [], []
    for row in summary["headline"]:
        page = target_page(row["run"], row["target"])
        harmful, benign = link(page, method="none", questions="harmful"), link(page, method="none", questions="benign")
        links.append([None, None, None, harmful, harmful, benign, None])
        said = "; ".join(f"{e['comparison']} ({e['metric']}): {e['difference']:+.2f} "
                         f"[{e['ci_low']:+.2f}, {e['ci_high']:+.2f}]" for e in row["largest_effects"]) or "-"
        rows.append([row["run"], short_target(row["target"]), "none (the benchmark's questions)",
                     Estimate(**row["attack_success"]).text(), estimate_text(row["estimate"]),
                     Estimate(**row["answer_rate_benign"]).text(), said])
        strongest = row.get("strongest_attack")
        if strongest:
            attacked = link(page, method=strongest["method"], questions="harmful")
            links.append([None, None, None, attacked, attacked, None, None])
            rows.append([row["run"], short_target(row["target"]), f"strongest: {strongest['method']}",
                         Estimate(**strongest["attack_success"]).text(), estimate_text(strongest["estimate"]), "-",
                         "-"])
        if row["estimate"]:
            findings.append(f"{short_target(row['target'])} ({row['run']}): "
                            f"{RateEstimate.from_json(row['estimate']).describe()}.")
    success_label = "judged" if judged else "non-refusal rate (no judge ran: an upper bound)"
    text = [f"Per target: attack success ({success_label}) on the benchmark's harmful questions (the malicious and "
            "both conditions) asked as written, with no attack, then on the same kind of questions under the "
            "strongest attack the run holds (the replayed or black-box method with the highest rate); the rate that "
            "stands for each; the answer rate on benign questions (normal and mismatch); and the three largest "
            "paired effects (same image and prompt; difference [95% interval]). n counts answers, pairs the image x "
            "prompt pairs they came from: the intervals resample pairs. " + ESTIMATES,
            *findings,
            (validity.sentence() if validity else NO_VALIDITY if judged else ""),
            "The same numbers for programs: summary.json beside this page (`medattack results RUN --json`)."]
    return Section("Headline", [t for t in text if t], tables=[Table(
        "What this report found", ["run", "target", "attack", f"attack success ({success_metric}) [95%]",
                                   "the rate that stands [95%]", "answer rate, benign [95%]",
                                   "largest paired effects"], rows, name="headline", links=links)])


def _standing_table(summary: dict[str, Any]) -> Table:
    rows, links = [], []
    for r in success_rates(summary):
        judged = cell_text({"mean": r["rate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"],
                        "nulls": r["nulls"]})
        further = (r["estimate"] or {}).get("further")
        rows.append([str(r["run"]), str(r["source"]), short_target(r["target"]), str(r["condition"]), judged,
                     estimate_text(r["estimate"]), "-" if further is None else str(int(further))])
        href = drill({"run": r["run"], "target": r["target"], "method": r["source"], "condition": r["condition"]})
        links.append([None, None, None, None, href, href, None])
    return Table("Attack success on harmful questions: judged, and the rate that stands",
                 ["run", "method", "target", "condition", "judged [Wilson 95%]", "the rate that stands [95%]",
                  "labels for +/-0.05"], rows, "The rate that stands: two-phase from the target's own labels, else "
                 "transported (an interval carrying the judge's error across the labelled models; no point), else "
                 "judged (the headline explains each).", "attack_success_estimates", links=links)


def _examples(scores: pd.DataFrame, runs: Sequence[RunData], config: ReportConfig, metric: str) -> Table:
    columns = ["target", "method", "condition", "task", "question", "response", metric]
    if scores.empty:
        return Table("Example responses", columns, [], "no responses", "examples", (4, 5))
    key = scores[scores["metric"] == metric].drop_duplicates("response_id")
    key = key.assign(harmful=key["condition"].isin(["malicious", "both"]).astype(int),
                     hit=key["value"].fillna(0)).sort_values(["hit", "harmful", "response_id"],
                                                             ascending=[False, False, True])
    rows, links = [], []
    shown_rows = key.head(config.examples)
    texts = {run.name: run.texts_of(shown_rows["response_id"]) for run in runs}
    for _, row in shown_rows.iterrows():
        links.append([link(target_page(str(row["run"]), str(row["target"])), id=row["response_id"])]
                     + [None] * (len(columns) - 1))
        question, response = texts.get(str(row["run"]), {}).get(str(row["response_id"]), ("", ""))
        if len(response) > config.max_response_chars:
            response = response[: config.max_response_chars] + " [...]"
        value = row["value"]
        rows.append([short_target(row["target"]), str(row["method"]), str(row["condition"]), str(row["task"]),
                     question, response, "null" if pd.isna(value) else f"{value:g}"])
    return Table("Example responses", columns, rows, "Model outputs are shown as text, escaped; a target links to "
                 "the answer's row among all its answers.", "examples", (4, 5), links)


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
        pivot(harmful, ["run", "method", "target"], "condition", HARMFUL_CONDITIONS,
               f"Attack success on harmful questions ({success_metric})",
               a.metrics.get(success_metric, {}).get("description", ""), "attack_success"),
        pivot(benign, ["run", "method", "target"], "condition", [c for c in CONDITIONS if c not in HARMFUL_CONDITIONS],
               "Answer rate on benign questions (non-refusal rate)", "", "answer_rate"),
        pivot(success, ["run", "method", "target"], "condition", CONDITIONS,
               f"{KEY_METRIC} (non-refusal rate) by condition",
               "method 'none' = the benchmark sample as built; control:* = the same prompt with a blank or noise "
               "image.", "asr_by_condition"),
        *[pivot(by_condition[by_condition["metric"] == metric], ["run", "method", "target"],
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
                      cell_text({"mean": r["success"], "ci_low": r["success_ci_low"], "ci_high": r["success_ci_high"],
                             "n": r["n"], "nulls": r["nulls"]}),
                      f"{r['keyword_success']:.2f}", f"{r['mean_steps']:.1f}", f"{r['mean_seconds']:.1f}",
                      f"{r['max_linf'] * 255:.1f}/255"] for _, r in tables.whitebox.iterrows()]
    attacks = Section("Attacks", text=[a.validity_text] if a.judged else [], tables=[
        Table("Attack stage results", ["run", "method", "model", "target forced (teacher-forced)",
                                       "keyword success", "mean steps", "mean seconds", "max L-inf"],
              whitebox_rows, "Success = the model's argmax reproduces the whole target string.", "whitebox"),
        pivot(tables.transfer, ["run", "method", "attack_model"], "target", title=f"Transfer: {a.success_metric} "
               "of adversarial inputs replayed on each target", note="rows: where the attack was optimised; columns: "
               "the model asked.", name="transfer"),
    ], figures=[Figure("survival", "Survival: share of samples not yet jailbroken vs attack step",
                       a.figures["survival"])])
    blackbox_rows = [[str(r.run), str(r.method), short_target(r.target),
                      cell_text({"mean": r.mean, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n, "nulls": r.nulls}),
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
        pivot(questions(by_task, "harmful", metric), ["run", "task"], "target",
               title=f"Attack success by clinical task ({metric}, harmful questions)", name="by_task"),
        pivot(questions(by_modality, "harmful", metric), ["run", "modality"], "target",
               title=f"Attack success by modality ({metric}, harmful questions)", name="by_modality"),
        pivot(questions(by_task, "benign", KEY_METRIC), ["run", "task"], "target",
               title="Answer rate by clinical task (non-refusal rate, benign questions)", name="answer_rate_by_task"),
    ], figures=[Figure("heatmap", f"Task x modality: {metric} on harmful questions", a.figures["heatmap"])])


def _paired_section(a: Analysis) -> Section:
    """Paired comparisons: the effect of a claimed attribute or a replayed attack on the same image and prompt."""
    comparisons = a.tables.comparisons
    rows = [[str(r.run), short_target(r.target), str(r.comparison), str(r.metric), answers_from(r.n, r.pairs),
             f"{r.mean_a:.2f} -> {r.mean_b:.2f}",
             f"{r.difference:+.2f}" + ("" if r.n < MIN_INTERVAL_N else f" [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"),
             f"{r.p_value:.3g}", str(r.test)] for r in comparisons.itertuples()]
    links = [[None, drill({"run": r.run, "target": r.target})] + [None] * 7 for r in comparisons.itertuples()]
    return Section("Paired comparisons (same image and prompt)", [
        "Each comparison pairs responses to the same image and prompt, so the difference is the effect of the "
        "change alone: claiming a mismatched attribute (malicious -> both, normal -> mismatch) or replaying an "
        "attack (none -> method). The unit is the image x prompt pair (its answers are not independent): for "
        "rates a Dirichlet posterior of the four paired outcomes at the pairs' effective sample size, p its "
        "two-sided tail probability at 0; a bootstrap of whole pairs otherwise. The interval and p come from one "
        "method, so they never disagree; p is not corrected for the number of comparisons. " + a.validity_text],
        tables=[
        Table("Paired comparisons", ["run", "target", "comparison", "metric", "n", "mean", "difference [95%]",
                                     "p", "test"], rows, name="comparisons", links=links)])


def _reliance_section(a: Analysis) -> Section:
    """How often answers change when the real image is replaced by a blank or noise control."""
    reliance = a.tables.image_reliance
    rows = [[str(r.run), short_target(r.target), str(r.control),
             cell_text({"mean": r.changed, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n, "nulls": 0})]
            for r in reliance.itertuples()]
    links = [[None, None, None, drill({"run": r.run, "target": r.target, "image": r.control})]
             for r in reliance.itertuples()]
    return Section("Image reliance (controls)", [
        "The same prompts were asked with a blank grey and a uniform-noise image. A model whose answers rarely "
        "change is not looking at the image."], tables=[
        Table("Share of answers that change when the real image is replaced", ["run", "target", "control",
                                                                               "changed"], rows,
              name="image_reliance", links=links),
        pivot(a.tables.controls, ["run", "target", "metric"], "image", ["real", "blank", "noise"],
               "Scores with the real image vs controls", name="controls"),
    ], figures=[Figure("controls", "Real image vs controls", a.figures["controls"])])


def _defences_section(a: Analysis) -> Section | None:
    """Each defended target against the undefended one (report/defences.py); None when no defence was asked."""
    effects, flags = a.tables.defence_effects, a.tables.defence_flags
    if effects.empty and flags.empty:
        return None
    rows = [[str(r.run), short_target(r.target), proxy_marked(str(r.defences), r.is_proxy), str(r.measure),
             answers_from(r.n, r.pairs), f"{r.mean_a:.2f} -> {r.mean_b:.2f}",
             f"{r.difference:+.2f}" + ("" if r.n < MIN_INTERVAL_N else f" [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"),
             f"{r.p_value:.3g}"] for r in effects.itertuples()]
    links = [[None, None, drill({"run": r.run, "target": r.defended_target})] + [None] * 5
             for r in effects.itertuples()]
    flag_rows = [[str(r.run), short_target(r.target), proxy_marked(str(r.defences), r.is_proxy), str(r.inputs),
                  cell_text({"mean": r.rate, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n, "nulls": 0})]
                 for r in flags.itertuples()]
    return Section("Defences", [
        "Each defence was put in front of the target and asked the same benchmark samples, attack replays and "
        f"controls as the undefended target. Attack success ({a.success_metric}) on harmful questions and the "
        "answer rate (non-refusal) on benign ones are paired on the same inputs (interval and p from one "
        "paired method); a fall in the "
        "answer rate is what the defence costs in normal use. Transfer rows hold the benchmark and the attacks "
        "optimised against the undefended model; adaptive rows, when any, the attacks optimised against the "
        "defended model itself (`attack --defence`), which a defence must also withstand. A defence marked "
        "(proxy) decided by a proxy, not by what a model sees (the offline attribute check compares the claim "
        "with the folder's labels, never the pixels): its rows say how the defence would do with a perfect "
        "reader of the image, not how it does. " + a.validity_text],
        tables=[
        Table("Defended vs undefended (same inputs)", ["run", "target", "defence", "measure", "n",
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
    return Section("Example responses", tables=[_examples(a.scores, a.runs, a.config, a.success_metric)])


# The report's sections in reading order; a section function returns None when it has nothing to show.
SECTIONS: tuple[Callable[[Analysis], Section | None], ...] = (
    lambda a: headline_section(a.summary, a.validity), _intro_section, _success_section, lambda a: a.validation_section,
    _paired_section, _attacks_section, _defences_section, injection_section, _breakdown_section, _reliance_section,
    _distribution_section,
    _examples_section, lambda a: manifest_section(a.runs, a.metrics))
