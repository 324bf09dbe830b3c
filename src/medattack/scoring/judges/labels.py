"""Labelled responses: reading them, training the embedded head on them, and measuring a judge against them.

A labels file (CSV, JSONL or Parquet) has one response per row: `question`, `response`, `jailbroken`
(0/1), and optionally `model` (cross-validation holds out one model at a time) and `kind`.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medattack.data.sources.tables import cell, read_table, require_columns
from medattack.errors import SourceError
from medattack.scoring.backends.text_embedders import TextEmbedder
from medattack.scoring.judges.features import features
from medattack.scoring.judges.head import L2, Head, fit_logistic, grouped_out_of_fold, rate_threshold


@dataclass(frozen=True)
class Labels:
    questions: list[str]
    responses: list[str]
    jailbroken: np.ndarray  # (N,) int 0/1
    models: list[str]
    kinds: list[str]
    sha256: str  # of the file

    def subset(self, rows: list[int]) -> Labels:
        """These rows only (e.g. those a judge could decide)."""
        return Labels([self.questions[k] for k in rows], [self.responses[k] for k in rows], self.jailbroken[rows],
                      [self.models[k] for k in rows], [self.kinds[k] for k in rows], self.sha256)


def read_labels(path: Path) -> Labels:
    rows = read_table(Path(path))
    if not rows:
        raise SourceError(str(path), "the labels file holds no rows.")
    require_columns(Path(path), rows, [("question",), ("response",), ("jailbroken",)])
    labels = []
    for number, row in enumerate(rows, start=1):
        value = cell(row, "jailbroken")
        if value not in ("0", "1", "0.0", "1.0", "True", "False"):
            raise SourceError(f"{path}:row {number}", f"jailbroken must be 0 or 1, got {value!r}.")
        labels.append(int(value in ("1", "1.0", "True")))
    return Labels([cell(r, "question") for r in rows], [cell(r, "response") for r in rows], np.array(labels),
                  [cell(r, "model") or "all" for r in rows], [cell(r, "kind") or "-" for r in rows],
                  hashlib.sha256(Path(path).read_bytes()).hexdigest())


def train_head(labels: Labels, embedder: TextEmbedder, l2: float = L2) -> tuple[Head, np.ndarray | None]:
    """Fit the head on every label. The threshold makes the held-out predicted rate (one model held out
    at a time, when the file names two or more) equal the labelled rate; the held-out agreement is kept
    in the head's `trained` block. Returns (head, held-out 0/1 judgements or None)."""
    x = features(labels.questions, labels.responses, embedder)
    y = labels.jailbroken
    held_out, judged = grouped_out_of_fold(x, y, labels.models, l2) if len(set(labels.models)) > 1 else (None, None)
    mean, scale, w, b = fit_logistic(x, y, l2)
    head = Head(mean.tolist(), scale.tolist(), w.tolist(), b, 0.5)
    threshold = rate_threshold(held_out if held_out is not None else head.probability(x), float(y.mean()))
    trained: dict[str, Any] = {"labels_sha256": labels.sha256, "n": len(y), "positives": int(y.sum()), "l2": l2,
                               "models": dict(sorted(Counter(labels.models).items())),
                               "encoder": getattr(embedder, "model_id", "")}
    if judged is not None:
        trained["cross_validation"] = agreement(y, judged, labels)["overall"]
    return Head(head.mean, head.scale, head.weights, head.bias, threshold, trained=trained), judged


def kappa(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Cohen's kappa of two 0/1 vectors."""
    truth, predicted = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
    observed = float((truth == predicted).mean())
    chance = float(truth.mean() * predicted.mean() + (1 - truth.mean()) * (1 - predicted.mean()))
    return (observed - chance) / (1 - chance) if chance < 1 else 1.0


def _scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    tp = int(((truth == 1) & (predicted == 1)).sum())
    precision = tp / max(int(predicted.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)
    return {"n": len(truth), "accuracy": round(float((truth == predicted).mean()), 4),
            "kappa": round(kappa(truth, predicted), 4),
            "f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
            "predicted_rate": round(float(predicted.mean()), 4), "labelled_rate": round(float(truth.mean()), 4)}


def agreement(truth: np.ndarray, predicted: np.ndarray, labels: Labels) -> dict[str, Any]:
    """Accuracy, kappa, F1 and predicted vs labelled rate overall, per model and per kind (rows a judge
    could not decide are counted apart, not as 0), and the confusion table."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    models, kinds = np.asarray(labels.models), np.asarray(labels.kinds)
    return {
        "overall": _scores(truth, predicted),
        "by_model": {m: _scores(truth[models == m], predicted[models == m]) for m in sorted(set(labels.models))},
        "by_kind": {k: {"n": int((kinds == k).sum()), "predicted_rate": round(float(predicted[kinds == k].mean()), 4)}
                    for k in sorted(set(labels.kinds))},
        "confusion": {"labelled 1, judged 1": int(((truth == 1) & (predicted == 1)).sum()),
                      "labelled 1, judged 0": int(((truth == 1) & (predicted == 0)).sum()),
                      "labelled 0, judged 1": int(((truth == 0) & (predicted == 1)).sum()),
                      "labelled 0, judged 0": int(((truth == 0) & (predicted == 0)).sum())},
    }


@dataclass(frozen=True)
class JudgeValidation:
    """A judge measured against labels: its agreement (on the rows it decided), the non-refusal rate's
    agreement on the same rows, and how many rows it could not decide."""

    judge: str
    agreement: dict[str, Any]
    keyword_agreement: dict[str, Any]
    undecided: int
    n: int


def validate_judge(labels: Labels, judge: Any) -> JudgeValidation:
    """Run `judge` (a judge backend) on the labelled pairs and measure it; undecided rows are left out of
    the agreement and counted, never read as 0."""
    verdicts = judge.judge(labels.questions, labels.responses)
    decided = [k for k, v in enumerate(verdicts) if v.jailbroken is not None]
    if not decided:
        raise SourceError(judge.name, f"the judge decided none of the {len(verdicts)} labelled responses.",
                          "check its settings (model, endpoint, verdict_format).")
    rows = labels.subset(decided)
    predicted = np.array([verdicts[k].jailbroken for k in decided])
    return JudgeValidation(judge.name, agreement(rows.jailbroken, predicted, rows), keyword_agreement(rows),
                           len(verdicts) - len(decided), len(verdicts))


def keyword_agreement(labels: Labels) -> dict[str, Any]:
    """The agreement of the non-refusal rate (keyword_asr with its defaults) with the labels."""
    from medattack.scoring.keyword import keyword_success

    keyword = np.array([keyword_success(r, q) for q, r in zip(labels.questions, labels.responses, strict=True)])
    return agreement(labels.jailbroken, keyword.astype(int), labels)
