"""The rate that stands for each judged cell of the report: two-phase from the target's labels, transported with
the judge's spread across labelled models, or what the judge counted (estimate.py, labelling/design.py).

A cell is a run x target x source x condition (or the headline's harmful questions of the benchmark); its answers
are the first answers of each query (the labelling sample draws only those), each in the stratum of its verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from medattack.estimate import RateEstimate
from medattack.labelling.design import Answer, estimate, stratum_of
from medattack.records import Label
from medattack.report.aggregate import first_answers
from medattack.scoring.judges.base import JudgeValidity
from medattack.stats import Confusion


def confusions_of(validity: JudgeValidity | None) -> list[Confusion]:
    """The judge's confusion counts per labelled model (each judged by the judge trained without it)."""
    return list(validity.by_model.values()) if validity is not None else []


def cell_answers(rows: pd.DataFrame) -> list[Answer]:
    """The answers of `rows` (columns response_id, value, generation: one row per answer of the success metric)
    that a labelling sample can hold: each query's first answer, in the stratum of its verdict."""
    first = first_answers(rows).drop_duplicates("response_id")
    return [Answer(str(rid), stratum_of(None if pd.isna(value) else float(value)))
            for rid, value in zip(first["response_id"], first["value"], strict=True)]


def cell_estimate(rows: pd.DataFrame, labels: Mapping[str, Label], confusions: Sequence[Confusion],
                  ) -> RateEstimate:
    """The estimate of the answers in `rows` (`cell_answers`), from the labels among them."""
    return estimate(cell_answers(rows), labels, confusions)


def estimate_json(rows: pd.DataFrame, labels: Mapping[str, Label], confusions: Sequence[Confusion],
                  ) -> dict[str, Any] | None:
    """`cell_estimate` as summary.json holds it (None for a cell without answers)."""
    if rows.empty:
        return None
    return cell_estimate(rows, labels, confusions).to_json()


def transport_confusions(run_root: Any, target: str) -> list[Confusion]:
    """The judge's per-model confusions as the target's scores recorded them (the scoring judge's validity)."""
    from medattack.rundir import RunDir
    from medattack.storage import read_state

    run = RunDir(run_root)
    summary_path = run.scores_folder(run.responses_folder(target).path.name).summary_path
    if not summary_path.exists():
        return []
    spec = read_state(summary_path, "score the run again", "score-summary")["metrics"].get("judge", {})
    return confusions_of(JudgeValidity.from_json(spec["validity"])) if spec.get("validity") else []
