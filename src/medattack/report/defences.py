"""The report's Defences table: each defended target against the undefended one, on the same inputs.

For every target asked with defences in front of it (`query --defence`, target "<target>+<defence>") beside the
same target undefended, per run:

    attack success   harmful questions (benchmark malicious and both, and the attack replays on them), the success
                     metric undefended -> defended, paired on the same inputs (stats.paired_test: the
                     95% interval of the difference and its p from one method): "transfer" for the benchmark
                     and the attacks optimised without the defence, "adaptive" for those optimised against the
                     defended model (attack --defence, whose model is named like the defended target)
    answer rate      benign benchmark questions (normal, mismatch), the non-refusal rate undefended -> defended:
                     the defence's cost in normal use
    flagged          share of inputs a detector flagged (refused, or whose claim it stripped or rewrote), with
                     intervals clustered by image x prompt pair: on attack replays and on mismatched claims
                     (detections), and on normal questions (false alarms); only for targets behind at least one
                     detector

What each defence is (whether it detects, whether it decides by a proxy such as the offline attribute check,
which compares the claim with the folder's labels and never sees the pixels) comes from the responses folder's
stamp (`about.defences`, written by the query stage), not from defence code: the report reads records only. A
row of a proxy defence is marked `is_proxy`.

"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medattack.records import HARMFUL_CONDITIONS, MISMATCHED_CONDITIONS, undefended_name
from medattack.report.aggregate import KEY_METRIC, first_answers
from medattack.stats import interval, paired_test

DEFENCE_COLUMNS = ["run", "target", "defences", "defended_target", "is_proxy", "measure", "n", "pairs", "mean_a",
                   "mean_b", "difference", "ci_low", "ci_high", "p_value"]
FLAG_COLUMNS = ["run", "target", "defences", "is_proxy", "inputs", "n", "flagged", "rate", "ci_low", "ci_high"]


def _names(value: object) -> tuple[str, ...]:
    """A `defences` or `flagged_by` cell as a tuple of names (a cell of a row without defences: empty)."""
    return tuple(value) if isinstance(value, list | tuple | np.ndarray) else ()


def _paired(base: pd.DataFrame, defended: pd.DataFrame, metric: str, keep: pd.Series, measure: str) -> dict | None:
    """The paired test of one measure on the inputs both answered (first sampled answers only)."""
    a = base[(base["metric"] == metric) & keep.reindex(base.index, fill_value=False)]
    b = defended[defended["metric"] == metric]
    pairs = a[["response_id", "pair_id", "value"]].merge(b[["response_id", "value"]], on="response_id",
                                                         suffixes=("_a", "_b"))
    pairs = pairs.dropna(subset=["value_a", "value_b"])
    if pairs.empty:
        return None
    result = paired_test(pairs["value_a"].to_numpy(float), pairs["value_b"].to_numpy(float),
                         pairs["pair_id"].fillna(pairs["response_id"]).to_numpy())
    return {"measure": measure, "n": result.n, "pairs": result.clusters, "mean_a": result.mean_a,
            "mean_b": result.mean_b,
            "difference": result.difference, "ci_low": result.ci_low, "ci_high": result.ci_high,
            "p_value": result.p_value}


def _traits(group: pd.DataFrame) -> list[dict]:
    """What the folder's stamp says of each defence of a defended target ([] when it says nothing: an older run)."""
    if "defence_traits" not in group or group.empty:
        return []
    traits = group["defence_traits"].iloc[0]
    return list(traits) if isinstance(traits, list | tuple) else []


def defence_tables(table: pd.DataFrame, success_metric: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(paired effects, flag rates) of every defended target in the scores table (aggregate.py's long table)."""
    effects, flags = [], []
    if table.empty or "defences" not in table:
        return pd.DataFrame(columns=DEFENCE_COLUMNS), pd.DataFrame(columns=FLAG_COLUMNS)
    table = first_answers(table)
    defended = table["defences"].map(_names).map(bool)
    for (run, defended_target), group in table[defended].groupby(["run", "target"], sort=True):
        defences = _names(group["defences"].iloc[0])
        base_name = undefended_name(str(defended_target), defences)
        base = table[(table["run"] == run) & (table["target"] == base_name) & ~defended]
        traits = _traits(group)
        key = {"run": run, "target": base_name, "defences": "+".join(defences), "defended_target": defended_target,
               "is_proxy": any(t.get("is_proxy", False) for t in traits)}
        harmful = base["condition"].isin(HARMFUL_CONDITIONS)
        adaptive = (base["kind"] == "attack") & (base["attack_model"] == defended_target) if "attack_model" in base \
            else pd.Series(False, index=base.index)
        benign = ~harmful & (base["kind"] == "benchmark")
        for measure, metric, keep in (
                ("attack success (transfer)", success_metric, harmful & base["kind"].isin(["benchmark", "attack"])
                 & ~adaptive),
                ("attack success (adaptive)", success_metric, harmful & adaptive),
                ("answer rate (benign)", KEY_METRIC, benign)):
            row = _paired(base, group, metric, keep, measure) if not base.empty else None
            if row:
                effects.append({**key, **row})
        answers = group[group["metric"] == KEY_METRIC].drop_duplicates("response_id")
        flagged = answers["flagged_by"].map(lambda cell: bool(_names(cell)))
        if not (any(t.get("detects", False) for t in traits) if traits else flagged.any()):
            continue  # no detector among them: nothing is ever flagged, and a row of zeros would say otherwise
        for inputs, keep in (("attack replays", answers["kind"] == "attack"),
                             ("mismatched claims", (answers["kind"] == "benchmark")
                              & answers["condition"].isin(MISMATCHED_CONDITIONS)),
                             ("normal questions (false alarms)", (answers["kind"] == "benchmark")
                              & (answers["condition"] == "normal"))):
            n, hits = int(keep.sum()), int((flagged & keep).sum())
            if n:
                low, high = interval(flagged[keep].to_numpy(float), answers.loc[keep, "pair_id"].to_numpy())
                flags.append({"run": run, "target": base_name, "defences": key["defences"],
                              "is_proxy": key["is_proxy"], "inputs": inputs, "n": n, "flagged": hits, "rate": hits / n,
                              "ci_low": low, "ci_high": high})
    return pd.DataFrame(effects, columns=DEFENCE_COLUMNS), pd.DataFrame(flags, columns=FLAG_COLUMNS)
