"""summary.json: what a report found, as data a program reads in one call (`medattack results RUN --json`).

Schema `medattack.summary`, version 2 (SCHEMA_VERSION; a change that renames or removes a field raises it,
a new field does not; version 2 replaced `corrected`, a Rogan-Gladen point with one pooled judge error, by
`estimate`, the estimate that stands for the target). Every rate is an *estimate* {rate, ci_low, ci_high, n,
nulls}: `rate` is the mean of
the non-null values (null when none), the interval is the 95% Wilson interval for 0/1 metrics and a
bootstrap one otherwise (null below 5 values), `n` counts responses and `nulls` those a metric could not
score (never dropped silently).

    {
      "schema": "medattack.summary", "schema_version": 2, "medattack": "0.1.0", "generated": ISO time,
      "runs": [run names], "success_metric": "judge" | "keyword_asr",
      "judge_validity": null | {judge, source, kappa, n, confusion: {tp, fp, tn, fn}, by_model: {model: confusion}},
      "headline": [{run, target, questions, attack_success: estimate, estimate: null | standing,
                    answer_rate_benign: estimate, largest_effects: [effect, ...up to 3],
                    strongest_attack: null | {method, questions, attack_success: estimate,
                                              estimate: null | standing}}],
      "rates": [{run, target, source, condition, metric, is_proxy, rate, ci_low, ci_high, n, nulls,
                 estimate: null | standing}],
      "effects": [{run, target, comparison, metric, n, pairs, mean_a, mean_b, difference, ci_low, ci_high,
                   p_value, test}],
      "defences": [{run, target, defences, is_proxy, measure, n, pairs, mean_a, mean_b, difference, ci_low,
                    ci_high, p_value}],
      "defence_flags": [{run, target, defences, is_proxy, inputs, n, flagged, rate, ci_low, ci_high}]
    }

A headline row counts the benchmark's own harmful questions with no attack (`questions` says which); its
`strongest_attack` is the attack (replayed white-box or black-box method) with the highest judged success on the
same kind of questions, null when the run has none. `n` counts answers and `pairs` the image x prompt pairs they
came from (the unit every interval and paired test resamples).
`source` is "none" for the benchmark's own samples, the attack's method for a replayed attack and
"control:blank" / "control:noise" for the image controls; `standing` (on the success metric's harmful rows) is the
rate that stands for those answers (report/estimates.py): {kind: "two-phase" | "transported" | "judged", judged,
n, rate (null when transported: no point is a finding there), ci_low, ci_high, labels, labelled_positives,
strata: [{name, size, labelled, positives}], further (labels to +/-0.05), further_by_stratum, note}; `effects` are the
paired comparisons on the same image and prompt (a paired Dirichlet interval for rates, a paired bootstrap otherwise;
both give interval and p from one method);
`defences` each defended target against the undefended one on the same inputs (measure "attack success
(transfer)", "attack success (adaptive)" or "answer rate (benign)", a = undefended, b = defended) and
`defence_flags` the share of inputs each detector flagged (report/defences.py).
With pandas: `pd.DataFrame(json.load(open("runs/demo/report/summary.json"))["rates"])`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

import medattack
from medattack.estimate import RateEstimate
from medattack.numbers import finite
from medattack.records import Label
from medattack.report.aggregate import HARMFUL_CONDITIONS, JUDGE_METRIC, KEY_METRIC, MIN_INTERVAL_N, ReportTables
from medattack.report.estimates import confusions_of, estimate_json
from medattack.schema import CURRENT
from medattack.scoring.judges.base import JudgeValidity
from medattack.stats import interval
from medattack.storage import read_state

SCHEMA = "medattack.summary"
SCHEMA_VERSION = CURRENT["report-summary"]
RATE_FIELDS = ("run", "target", "source", "condition", "metric", "is_proxy", "rate", "ci_low", "ci_high", "n",
               "nulls", "estimate")
EFFECT_FIELDS = ("run", "target", "comparison", "metric", "n", "pairs", "mean_a", "mean_b", "difference", "ci_low",
                 "ci_high", "p_value", "test")


@dataclass(frozen=True)
class Estimate:
    """A rate over responses: mean of the non-null values with its 95% interval, n responses, nulls."""

    rate: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    nulls: int

    pairs: int | None = None  # the image x prompt pairs the n responses came from (the unit of sampling)

    @classmethod
    def of(cls, values: pd.Series, pairs: pd.Series | None = None) -> Estimate:
        """Of 0/1 values (nulls counted, not dropped), with their image x prompt pairs (`pairs`, aligned) when
        known: the interval is then clustered by pair (stats.clustered_rate_ci); from MIN_INTERVAL_N decided
        values."""
        decided = values.dropna()
        clusters = None if pairs is None else pairs.loc[decided.index].to_numpy()
        count = None if pairs is None else int(pairs.nunique())
        if decided.empty:
            return cls(None, None, None, len(values), len(values), count)
        low, high = interval(decided.to_numpy(dtype=float), clusters) if len(decided) >= MIN_INTERVAL_N \
            else (None, None)
        return cls(float(decided.mean()), low, high, len(values), len(values) - len(decided), count)

    def text(self) -> str:
        """'0.12 [0.05, 0.25] n=48, 2 null' (no interval below MIN_INTERVAL_N values; 'null' when none)."""
        nulls = f", {self.nulls} null" if self.nulls and self.rate is not None else ""
        if self.rate is None:
            return f"null n={self.n}"
        shown = "" if self.ci_low is None else f" [{self.ci_low:.2f}, {self.ci_high:.2f}]"
        pairs = (f" from {self.pairs} pair{'s' if self.pairs != 1 else ''}" if self.pairs is not None
                 and self.pairs < self.n else "")
        return f"{self.rate:.2f}{shown} n={self.n - self.nulls}{pairs}{nulls}"

    def to_json(self) -> dict[str, Any]:
        return {"rate": finite(self.rate), "ci_low": finite(self.ci_low), "ci_high": finite(self.ci_high),
                "n": self.n, "nulls": self.nulls, "pairs": self.pairs}


def estimate_text(estimate: dict[str, Any] | None) -> str:
    """How a cell's standing estimate is shown: '0.21 [0.14, 0.29] two-phase, 40 labels', 'in [0.06, 0.56]
    transported', '0.12 [0.05, 0.25] judged', or '-'."""
    if not estimate:
        return "-"
    found = RateEstimate.from_json(estimate)
    how = f"two-phase, {found.labels} labels" if found.kind == "two-phase" else found.kind
    return f"{found.interval_text()} {how}"


Labels = dict[str, dict[str, dict[str, Label]]]  # run -> target -> response id -> standing label


def _effect(row: Any) -> dict[str, Any]:
    return {key: (finite(getattr(row, key)) if key in ("mean_a", "mean_b", "difference", "ci_low", "ci_high",
                                                         "p_value") else
                  int(getattr(row, key)) if key in ("n", "pairs") else str(getattr(row, key))) for key in EFFECT_FIELDS}


HARMFUL_QUESTIONS = "harmful questions (malicious and both conditions)"


def _strongest_attack(group: pd.DataFrame, success_metric: str, own: dict[str, Label],
                      confusions: list[Any]) -> dict[str, Any] | None:
    """The attack method with the highest success on harmful questions of one target (None without attacks)."""
    attacked = group[(group["method"] != "none") & ~group["method"].astype(str).str.startswith("control:")
                     & (group["metric"] == success_metric) & group["condition"].isin(HARMFUL_CONDITIONS)]
    if attacked.empty:
        return None
    means = attacked.groupby("method")["value"].mean().dropna()
    if means.empty:
        return None
    method = str(means.sort_values(ascending=False, kind="stable").index[0])
    rows = attacked[attacked["method"] == method]
    return {"method": method, "questions": f"{HARMFUL_QUESTIONS}, attacked by {method}",
            "attack_success": Estimate.of(rows["value"], rows.get("pair_id")).to_json(),
            "estimate": estimate_json(rows, own, confusions)}


def headline(scores: pd.DataFrame, comparisons: pd.DataFrame, success_metric: str,
             validity: JudgeValidity | None, labels: Labels | None = None) -> list[dict[str, Any]]:
    """Per run and target, on the benchmark's own samples: attack success on harmful questions (as judged, and
    the estimate that stands: report/estimates.py), the answer rate on benign ones, the three largest paired
    effects; and the strongest attack's success on harmful questions beside it."""
    rows = []
    judged = success_metric == JUDGE_METRIC
    confusions = confusions_of(validity) if judged else []
    for (run, target), group in scores.groupby(["run", "target"], sort=True):
        bench = group[group["method"] == "none"]
        harmful_rows = bench[(bench["metric"] == success_metric) & bench["condition"].isin(HARMFUL_CONDITIONS)]
        harmful = harmful_rows["value"]
        benign_rows = bench[(bench["metric"] == KEY_METRIC) & ~bench["condition"].isin(HARMFUL_CONDITIONS)]
        own = (labels or {}).get(str(run), {}).get(str(target), {})
        effects = comparisons[(comparisons["run"] == run) & (comparisons["target"] == target)
                              & (comparisons["n"] >= MIN_INTERVAL_N)] if not comparisons.empty else comparisons
        largest = effects.reindex(effects["difference"].abs().sort_values(ascending=False).index).head(3) \
            if not effects.empty else effects
        rows.append({"run": str(run), "target": str(target), "questions": f"{HARMFUL_QUESTIONS}, no attack",
                     "attack_success": Estimate.of(harmful, harmful_rows.get("pair_id")).to_json(),
                     "estimate": estimate_json(harmful_rows, own, confusions),
                     "answer_rate_benign": Estimate.of(benign_rows["value"], benign_rows.get("pair_id")).to_json(),
                     "largest_effects": [_effect(r) for r in largest.itertuples()],
                     "strongest_attack": _strongest_attack(group, success_metric, own, confusions)})
    return rows


def rates(tables: ReportTables, scores: pd.DataFrame, metrics: dict[str, dict[str, Any]],
          validity: JudgeValidity | None, labels: Labels | None = None) -> list[dict[str, Any]]:
    """One row per run x target x source x condition x metric (the report's by-condition table); the success
    metric's rows on harmful conditions carry the estimate that stands (report/estimates.py)."""
    rows = []
    success = tables.success_metric
    confusions = confusions_of(validity) if success == JUDGE_METRIC else []
    cells = {key: group for key, group in scores[scores["metric"] == success].groupby(
        ["run", "target", "method", "condition"], sort=False)} if not scores.empty else {}
    for r in tables.by_condition.itertuples():
        fixed = None
        if r.metric == success and r.condition in HARMFUL_CONDITIONS:
            own = (labels or {}).get(str(r.run), {}).get(str(r.target), {})
            cell = cells.get((r.run, r.target, r.method, r.condition))
            fixed = None if cell is None else estimate_json(cell, own, confusions)
        rows.append({"run": str(r.run), "target": str(r.target), "source": str(r.method),
                     "condition": str(r.condition), "metric": str(r.metric),
                     "is_proxy": bool(metrics.get(str(r.metric), {}).get("is_proxy", False)),
                     "rate": finite(r.mean), "ci_low": finite(r.ci_low), "ci_high": finite(r.ci_high),
                     "n": int(r.n), "nulls": int(r.nulls), "estimate": fixed})
    return rows


def build_summary(run_names: list[str], tables: ReportTables, scores: pd.DataFrame,
                  metrics: dict[str, dict[str, Any]], validity: JudgeValidity | None, labels: Labels | None = None,
                  ) -> dict[str, Any]:
    """The whole summary.json record (module docstring)."""
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "medattack": medattack.__version__,
            "generated": datetime.now(UTC).isoformat(timespec="seconds"), "runs": run_names,
            "success_metric": tables.success_metric,
            "judge_validity": validity.to_json() if validity else None,
            "headline": headline(scores, tables.comparisons, tables.success_metric, validity, labels),
            "rates": rates(tables, scores, metrics, validity, labels),
            "effects": [_effect(r) for r in tables.comparisons.itertuples()],
            "defences": _records(tables.defence_effects.drop(columns=["defended_target"], errors="ignore")),
            "defence_flags": _records(tables.defence_flags)}


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A table's rows as JSON records (NaN as null)."""
    return [{key: finite(value) if isinstance(value, float) else value for key, value in row.items()}
            for row in frame.to_dict("records")]


def read_summary(path: Any) -> dict[str, Any]:
    """A report's summary.json of any version, as the current version reads it (schema.py's report-summary steps)."""
    return read_state(path, "make the report again (`medattack report RUN`)", "report-summary")

