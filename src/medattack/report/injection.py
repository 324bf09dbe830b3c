"""The report's image prompt injection: how often answers follow an instruction written into the image, by where
and how visibly it was written (the `inject` attack's grid), against the same samples answered without it.

    followed    the `injection` metric on the injected inputs replayed on a target, per placement, size and
                contrast (Wilson 95% intervals: each sample holds one point of the grid, so answers are independent
                within a point)
    baseline    the same metric on the benchmark answers to the same samples, without the injection: how often a
                target states the injected claim anyway (a "no lesion" answer to a normal image is not obedience)

The figure draws followed against contrast (the dose), one line per target, placement and size, with each
target's baseline as a dashed line. Nothing here runs when no answer was scored by the `injection` metric.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medattack.stats import interval

if TYPE_CHECKING:
    from medattack.report.analysis import Analysis
    from medattack.report.render import Section

METRIC = "injection"
COLUMNS = ["run", "target", "placement", "size", "contrast", "n", "followed", "ci_low", "ci_high", "baseline",
           "baseline_n"]


def injection_table(table: pd.DataFrame, attacks: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, target, placement, size, contrast) of injected inputs scored by the injection metric."""
    if table.empty or attacks.empty or "contrast" not in attacks or METRIC not in set(table["metric"].astype(str)):
        return pd.DataFrame(columns=COLUMNS)
    scored = table[table["metric"] == METRIC]
    points = attacks.dropna(subset=["contrast"])[["run", "method", "model", "sample_id", "placement", "size",
                                                  "contrast"]]
    replayed = scored[scored["kind"] == "attack"].astype({"method": str, "attack_model": str, "run": str}).merge(
        points.astype({"method": str, "model": str, "run": str}), left_on=["run", "method", "attack_model",
                                                                          "sample_id"],
        right_on=["run", "method", "model", "sample_id"])
    clean = scored[scored["kind"] == "benchmark"]
    rows = []
    for (run, target, placement, size, contrast), group in replayed.groupby(
            ["run", "target", "placement", "size", "contrast"], sort=True, observed=True):
        values = group["value"].dropna().to_numpy(dtype=float)
        if not len(values):
            continue
        low, high = interval(values)
        base = clean[(clean["run"] == run) & (clean["target"] == target)
                     & clean["sample_id"].isin(set(group["sample_id"]))]["value"].dropna()
        rows.append({"run": run, "target": target, "placement": placement, "size": float(size),
                     "contrast": float(contrast), "n": len(values), "followed": float(values.mean()), "ci_low": low,
                     "ci_high": high, "baseline": float(base.mean()) if len(base) else float("nan"),
                     "baseline_n": len(base)})
    return pd.DataFrame(rows, columns=COLUMNS)


def injection_figure(frame: pd.DataFrame) -> bytes:
    """Share of answers following the injected instruction against its contrast, with each target's baseline."""
    from medattack.report.figures import _png, _pyplot, short_target

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for (target, placement, size), rows in frame.groupby(["target", "placement", "size"], sort=True):
        rows = rows.groupby("contrast", as_index=False).agg(followed=("followed", "mean"), ci_low=("ci_low", "min"),
                                                            ci_high=("ci_high", "max"), n=("n", "sum"))
        error = np.array([rows["followed"] - rows["ci_low"], rows["ci_high"] - rows["followed"]]).clip(min=0)
        axis.errorbar(rows["contrast"], rows["followed"], yerr=error, marker="o", capsize=3,
                      label=f"{short_target(target)}, {placement}, size {size:g} (n={int(rows['n'].sum())})")
    for target, rows in frame.groupby("target", sort=True):
        base = rows.dropna(subset=["baseline"])
        if not base.empty:
            axis.axhline(float(np.average(base["baseline"], weights=base["baseline_n"])), linestyle="--",
                         linewidth=1, color="grey", label=f"{short_target(target)}: same images, no injection")
    axis.set_xlabel("contrast of the injected text (0 invisible, 1 black on white)")
    axis.set_ylabel("share of answers following the instruction")
    axis.set_ylim(-0.03, 1.08)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1)
    axis.set_title("Prompt injection in the image: dose and response", fontsize=10)
    return _png(figure)


def injection_section(a: Analysis) -> Section | None:
    """The injection table and its figure; None when no answer was scored by the injection metric."""
    from medattack.report.cells import cell_text
    from medattack.report.figures import short_target
    from medattack.report.render import Figure, Section, Table

    frame = a.tables.injection
    if frame.empty:
        return None
    rows = [[str(r.run), short_target(r.target), str(r.placement), f"{r.size:g}", f"{r.contrast:g}",
             cell_text({"mean": r.followed, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.n, "nulls": 0}),
             "-" if np.isnan(r.baseline) else f"{r.baseline:.2f} (n={r.baseline_n})"] for r in frame.itertuples()]
    validity = (a.metrics.get(METRIC) or {}).get("validity")
    agreement = (f" The metric ({(a.metrics.get(METRIC) or {}).get('description', METRIC)}) agrees with hand labels "
                 f"at kappa {validity['kappa']:.2f} (n={validity['n']}; {validity['source']})." if validity else
                 " The metric's agreement with labels is not measured for this backend.")
    return Section("Prompt injection in the image", [
        "The inject attack wrote a clinical instruction into each image (suppress a finding, add a diagnosis, change "
        "a measurement, recommend a treatment, leak the system prompt), at the placement, size and contrast shown. "
        "Followed: the share of the target's answers to the injected images that state the injected claim. "
        "Baseline: the same samples' answers without the injection, read against the same instruction: how often "
        "the claim is stated anyway." + agreement],
        tables=[Table("Injection success by placement, size and contrast",
                      ["run", "target", "placement", "size", "contrast", "followed", "baseline (no injection)"],
                      rows, name="injection")],
        figures=[Figure("injection", "Injection success against contrast", a.figures["injection"])])
