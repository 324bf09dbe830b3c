"""summary.json: what a report found, as data a program reads in one call (`medattack results RUN --json`).

Schema `medattack.summary`, version 1 (SCHEMA_VERSION; a change that renames or removes a field raises it,
a new field does not). Every rate is an *estimate* {rate, ci_low, ci_high, n, nulls}: `rate` is the mean of
the non-null values (null when none), the interval is the 95% Wilson interval for 0/1 metrics and a
bootstrap one otherwise (null below 5 values), `n` counts responses and `nulls` those a metric could not
score (never dropped silently).

    {
      "schema": "medattack.summary", "schema_version": 1, "medattack": "0.1.0", "generated": ISO time,
      "runs": [run names], "success_metric": "judge" | "keyword_asr",
      "judge_validity": null | {judge, source, kappa, n, confusion: {tp, fp, tn, fn}},
      "headline": [{run, target, attack_success: estimate, corrected: null | {rate, ci_low, ci_high, note},
                    answer_rate_benign: estimate, largest_effects: [effect, ...up to 3]}],
      "rates": [{run, target, source, condition, metric, is_proxy, rate, ci_low, ci_high, n, nulls,
                 corrected: null | {rate, ci_low, ci_high, note}}],
      "effects": [{run, target, comparison, metric, n, mean_a, mean_b, difference, ci_low, ci_high, p_value,
                   test}],
      "defences": [{run, target, defences, measure, n, mean_a, mean_b, difference, ci_low, ci_high, p_value}],
      "defence_flags": [{run, target, defences, inputs, n, flagged, rate, ci_low, ci_high}]
    }

`source` is "none" for the benchmark's own samples, the attack's method for a replayed attack and
"control:blank" / "control:noise" for the image controls; `corrected` is the judged attack success rate
corrected for the judge's errors (harmful conditions, when the judge's validity is known); `effects` are the
paired comparisons on the same image and prompt (exact McNemar for rates, paired bootstrap otherwise);
`defences` each defended target against the undefended one on the same inputs (measure "attack success
(transfer)", "attack success (adaptive)" or "answer rate (benign)", a = undefended, b = defended) and
`defence_flags` the share of inputs each detector flagged (report/defences.py).
With pandas: `pd.DataFrame(json.load(open("runs/demo/report/summary.json"))["rates"])`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

import medattack
from medattack.report.aggregate import HARMFUL_CONDITIONS, JUDGE_METRIC, KEY_METRIC, MIN_INTERVAL_N, ReportTables
from medattack.scoring.judges.base import JudgeValidity
from medattack.stats import corrected_rate, wilson_ci

SCHEMA = "medattack.summary"
SCHEMA_VERSION = 1
RATE_FIELDS = ("run", "target", "source", "condition", "metric", "is_proxy", "rate", "ci_low", "ci_high", "n",
               "nulls", "corrected")
EFFECT_FIELDS = ("run", "target", "comparison", "metric", "n", "mean_a", "mean_b", "difference", "ci_low", "ci_high",
                 "p_value", "test")


def _number(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or pd.isna(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Estimate:
    """A rate over responses: mean of the non-null values with its 95% interval, n responses, nulls."""

    rate: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    nulls: int

    @classmethod
    def of(cls, values: pd.Series) -> Estimate:
        """Of 0/1 values (nulls counted, not dropped); Wilson interval from MIN_INTERVAL_N decided values."""
        decided = values.dropna()
        if decided.empty:
            return cls(None, None, None, len(values), len(values))
        low, high = wilson_ci(int(decided.sum()), len(decided)) if len(decided) >= MIN_INTERVAL_N else (None, None)
        return cls(float(decided.mean()), low, high, len(values), len(values) - len(decided))

    def text(self) -> str:
        """'0.12 [0.05, 0.25] n=48, 2 null' (no interval below MIN_INTERVAL_N values; 'null' when none)."""
        nulls = f", {self.nulls} null" if self.nulls and self.rate is not None else ""
        if self.rate is None:
            return f"null n={self.n}"
        interval = "" if self.ci_low is None else f" [{self.ci_low:.2f}, {self.ci_high:.2f}]"
        return f"{self.rate:.2f}{interval} n={self.n - self.nulls}{nulls}"

    def to_json(self) -> dict[str, Any]:
        return {"rate": _number(self.rate), "ci_low": _number(self.ci_low), "ci_high": _number(self.ci_high),
                "n": self.n, "nulls": self.nulls}


def interval_text(rate: Any, low: Any, high: Any) -> str:
    """'0.12 [0.05, 0.25]', or '-' when there is no rate (None or NaN): how a corrected rate is shown."""
    return "-" if _number(rate) is None else f"{rate:.2f} [{low:.2f}, {high:.2f}]"


def corrected(positives: int, decided: int, validity: JudgeValidity | None) -> dict[str, Any] | None:
    """The judged rate `positives / decided` corrected for the judge's errors, or None without a validity."""
    if validity is None or decided == 0:
        return None
    result = corrected_rate(positives, decided, validity.confusion)
    return {"rate": _number(result.corrected), "ci_low": _number(result.ci_low), "ci_high": _number(result.ci_high),
            "note": result.note}


def _effect(row: Any) -> dict[str, Any]:
    return {key: (_number(getattr(row, key)) if key in ("mean_a", "mean_b", "difference", "ci_low", "ci_high",
                                                         "p_value") else
                  int(getattr(row, key)) if key == "n" else str(getattr(row, key))) for key in EFFECT_FIELDS}


def headline(scores: pd.DataFrame, comparisons: pd.DataFrame, success_metric: str,
             validity: JudgeValidity | None) -> list[dict[str, Any]]:
    """Per run and target, on the benchmark's own samples: attack success on harmful questions (and corrected
    when judged with a known validity), the answer rate on benign ones, the three largest paired effects."""
    rows = []
    judged = success_metric == JUDGE_METRIC
    for (run, target), group in scores.groupby(["run", "target"], sort=True):
        bench = group[group["method"] == "none"]
        harmful = bench[(bench["metric"] == success_metric) & bench["condition"].isin(HARMFUL_CONDITIONS)]["value"]
        benign = bench[(bench["metric"] == KEY_METRIC) & ~bench["condition"].isin(HARMFUL_CONDITIONS)]["value"]
        decided = harmful.dropna()
        effects = comparisons[(comparisons["run"] == run) & (comparisons["target"] == target)
                              & (comparisons["n"] >= MIN_INTERVAL_N)] if not comparisons.empty else comparisons
        largest = effects.reindex(effects["difference"].abs().sort_values(ascending=False).index).head(3) \
            if not effects.empty else effects
        rows.append({"run": str(run), "target": str(target), "attack_success": Estimate.of(harmful).to_json(),
                     "corrected": corrected(int(decided.sum()), len(decided), validity if judged else None),
                     "answer_rate_benign": Estimate.of(benign).to_json(),
                     "largest_effects": [_effect(r) for r in largest.itertuples()]})
    return rows


def rates(tables: ReportTables, metrics: dict[str, dict[str, Any]], validity: JudgeValidity | None,
          ) -> list[dict[str, Any]]:
    """One row per run x target x source x condition x metric (the report's by-condition table)."""
    rows = []
    judged = tables.success_metric == JUDGE_METRIC
    for r in tables.by_condition.itertuples():
        decided = int(r.n) - int(r.nulls)
        fixed = None
        if judged and r.metric == JUDGE_METRIC and r.condition in HARMFUL_CONDITIONS and decided:
            fixed = corrected(int(round(float(r.mean) * decided)), decided, validity)
        rows.append({"run": str(r.run), "target": str(r.target), "source": str(r.method),
                     "condition": str(r.condition), "metric": str(r.metric),
                     "is_proxy": bool(metrics.get(str(r.metric), {}).get("is_proxy", False)),
                     "rate": _number(r.mean), "ci_low": _number(r.ci_low), "ci_high": _number(r.ci_high),
                     "n": int(r.n), "nulls": int(r.nulls), "corrected": fixed})
    return rows


def build_summary(run_names: list[str], tables: ReportTables, scores: pd.DataFrame,
                  metrics: dict[str, dict[str, Any]], validity: JudgeValidity | None) -> dict[str, Any]:
    """The whole summary.json record (module docstring)."""
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "medattack": medattack.__version__,
            "generated": datetime.now(UTC).isoformat(timespec="seconds"), "runs": run_names,
            "success_metric": tables.success_metric,
            "judge_validity": validity.to_json() if validity else None,
            "headline": headline(scores, tables.comparisons, tables.success_metric, validity),
            "rates": rates(tables, metrics, validity),
            "effects": [_effect(r) for r in tables.comparisons.itertuples()],
            "defences": _records(tables.defence_effects.drop(columns=["defended_target"], errors="ignore")),
            "defence_flags": _records(tables.defence_flags)}


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A table's rows as JSON records (NaN as null)."""
    return [{key: _number(value) if isinstance(value, float) else value for key, value in row.items()}
            for row in frame.to_dict("records")]
