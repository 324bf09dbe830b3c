"""Labelled responses: reading them, training the embedded head on them, and measuring a judge against them.

A labels file (CSV, JSONL or Parquet) has one response per row: `question`, `response`, `jailbroken`
(0/1), and optionally `model` (cross-validation holds out one model at a time) and `kind`. Several files
read together are one set of labels that remembers which file each row came from.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from medattack.data.sources.tables import cell, read_table, require_columns
from medattack.errors import ConfigError, SourceError
from medattack.scoring.backends.text_embedders import TextEmbedder, get_text_embedder
from medattack.scoring.judges.base import Verdict
from medattack.scoring.judges.features import ENCODERS, FEATURE_SET, features, rubric_rule
from medattack.scoring.judges.head import (
    L2,
    OPEN,
    Head,
    fit_logistic,
    grouped_out_of_fold,
    held_out_threshold,
    rate_threshold,
)
from medattack.stats import Confusion


@dataclass(frozen=True)
class Labels:
    questions: list[str]
    responses: list[str]
    jailbroken: np.ndarray  # (N,) int 0/1
    models: list[str]
    kinds: list[str]
    files: list[str]  # the name of the file each row came from
    sha256: dict[str, str]  # file name -> sha256 of its bytes

    def subset(self, rows: list[int]) -> Labels:
        """These rows only (e.g. those a judge could decide)."""
        return Labels([self.questions[k] for k in rows], [self.responses[k] for k in rows], self.jailbroken[rows],
                      [self.models[k] for k in rows], [self.kinds[k] for k in rows], [self.files[k] for k in rows],
                      self.sha256)

    def describe(self) -> str:
        """'a.csv (sha256 0123456789ab), b.csv (...)': which labels these are."""
        return ", ".join(f"{name} (sha256 {digest[:12]})" for name, digest in self.sha256.items())


def read_labels(paths: Path | Sequence[Path]) -> Labels:
    """One or more labels files read as one set (rows in file order)."""
    paths = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not paths:
        raise SourceError("labels", "no labels file given.")
    names = [p.name for p in paths]
    if len(set(names)) != len(names):  # two files of one name: tell them apart by their folders
        names = [str(p) for p in paths]
    questions, responses, jailbroken, models, kinds, files, digests = [], [], [], [], [], [], {}
    for path, name in zip(paths, names, strict=True):
        rows = read_table(path)
        if not rows:
            raise SourceError(str(path), "the labels file holds no rows.")
        require_columns(path, rows, [("question",), ("response",), ("jailbroken",)])
        for number, row in enumerate(rows, start=1):
            value = cell(row, "jailbroken")
            if value not in ("0", "1", "0.0", "1.0", "True", "False"):
                raise SourceError(f"{path}:row {number}", f"jailbroken must be 0 or 1, got {value!r}.")
            jailbroken.append(int(value in ("1", "1.0", "True")))
        questions += [cell(r, "question") for r in rows]
        responses += [cell(r, "response") for r in rows]
        models += [cell(r, "model") or "all" for r in rows]
        kinds += [cell(r, "kind") or "-" for r in rows]
        files += [name] * len(rows)
        digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return Labels(questions, responses, np.array(jailbroken), models, kinds, files, digests)


def judge_encoders() -> list[TextEmbedder]:
    """The shipped text encoders the embedded judge's features read (features.ENCODERS)."""
    return [get_text_embedder(name) for name in ENCODERS]


def labels_features(labels: Labels, encoders: Sequence[TextEmbedder] | None = None) -> np.ndarray:
    """(N, F) judge features of every labelled (question, response)."""
    return features(labels.questions, labels.responses, encoders or judge_encoders())


def rule_verdicts(labels: Labels) -> np.ndarray:
    """(N,) int: the verdict of the judge's rubric rules (features.rubric_rule), OPEN where the head decides."""
    return np.array([OPEN if (rule := rubric_rule(q, r)) is None else rule[0]
                     for q, r in zip(labels.questions, labels.responses, strict=True)], dtype=int)


def cross_validate(labels: Labels, x: np.ndarray, l2: float = L2) -> tuple[np.ndarray, np.ndarray]:
    """Held-out (scores, 0/1 judgements) of the judge as it judges (rules, then the head), one model held out
    at a time (grouped_out_of_fold); a score is the head's probability, the rule's verdict where one decided."""
    if len(set(labels.models)) < 2:
        raise ConfigError("cross-validation holds out one model at a time: the labels name only "
                          f"{sorted(set(labels.models))}; add a `model` column with two or more models.")
    ruled = rule_verdicts(labels)
    probability, judged = grouped_out_of_fold(x, labels.jailbroken, labels.models, l2, ruled)
    return np.where(ruled == OPEN, probability, ruled), judged  # the judge's score: a rule's verdict where it decided


def train_head(labels: Labels, encoders: Sequence[TextEmbedder] | None = None, l2: float = L2,
               ) -> tuple[Head, np.ndarray | None]:
    """Fit the head on every label. The threshold makes the held-out predicted rate (one model held out
    at a time, when the labels name two or more) equal the labelled rate; the held-out agreement, overall,
    per file and per model with confusion counts, is kept in the head's `trained` block (the report corrects
    judged rates with it). Returns (head, held-out 0/1 judgements or None)."""
    x = labels_features(labels, encoders)
    y = labels.jailbroken
    ruled = rule_verdicts(labels)
    judged = None
    if len(set(labels.models)) > 1:  # the held-out probabilities set the threshold too (held_out_threshold)
        held_out, judged = grouped_out_of_fold(x, y, labels.models, l2, ruled)
        threshold = rate_threshold(held_out, float(y.mean()), ruled)
    else:
        threshold = held_out_threshold(x, y, np.asarray(labels.models), l2, ruled)
    mean, scale, w, b = fit_logistic(x, y, l2)
    files = np.asarray(labels.files)
    trained: dict[str, Any] = {
        "files": {name: {"sha256": digest, "n": int((files == name).sum()),
                         "positives": int(y[files == name].sum())} for name, digest in labels.sha256.items()},
        "n": len(y), "positives": int(y.sum()), "l2": l2, "models": dict(sorted(Counter(labels.models).items())),
        "encoders": [getattr(e, "model_id", "") for e in (encoders or judge_encoders())]}
    if judged is not None:
        report = agreement(y, judged, labels)
        trained["cross_validation"] = {"method": "one model held out at a time; threshold set without it",
                                       **{k: report[k] for k in ("overall", "by_file", "by_model")}}
    head = Head(mean.tolist(), scale.tolist(), w.tolist(), b, threshold, features=FEATURE_SET, trained=trained)
    return head, judged


def kappa(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Cohen's kappa of two 0/1 vectors."""
    truth, predicted = np.asarray(truth, dtype=float), np.asarray(predicted, dtype=float)
    observed = float((truth == predicted).mean())
    chance = float(truth.mean() * predicted.mean() + (1 - truth.mean()) * (1 - predicted.mean()))
    return (observed - chance) / (1 - chance) if chance < 1 else 1.0


def _scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Agreement of 0/1 judgements with 0/1 labels: accuracy, kappa, F1, sensitivity (recall on the labelled
    jailbreaks), specificity, judged vs labelled rate and the confusion counts."""
    confusion = Confusion.of(truth, predicted)
    tp = confusion.true_positive
    precision = tp / max(int(predicted.sum()), 1)
    recall = tp / max(int(truth.sum()), 1)

    def rounded(value: float) -> float | None:
        return None if np.isnan(value) else round(value, 4)

    return {"n": len(truth), "accuracy": round(float((truth == predicted).mean()), 4),
            "kappa": round(kappa(truth, predicted), 4),
            "f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
            "sensitivity": rounded(confusion.sensitivity), "specificity": rounded(confusion.specificity),
            "predicted_rate": round(float(predicted.mean()), 4), "labelled_rate": round(float(truth.mean()), 4),
            "confusion": asdict(confusion)}


def agreement(truth: np.ndarray, predicted: np.ndarray, labels: Labels) -> dict[str, Any]:
    """Accuracy, kappa, F1, sensitivity, specificity and predicted vs labelled rate overall, per file, per
    model and per kind (rows a judge could not decide are counted apart, not as 0)."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    models, kinds, files = np.asarray(labels.models), np.asarray(labels.kinds), np.asarray(labels.files)
    return {
        "overall": _scores(truth, predicted),
        "by_file": {f: _scores(truth[files == f], predicted[files == f]) for f in dict.fromkeys(labels.files)},
        "by_model": {m: _scores(truth[models == m], predicted[models == m]) for m in sorted(set(labels.models))},
        "by_kind": {k: {"n": int((kinds == k).sum()), "predicted_rate": round(float(predicted[kinds == k].mean()), 4)}
                    for k in sorted(set(labels.kinds))},
    }


def recall_at(truth: np.ndarray, probability: np.ndarray, specificity: float = 0.85) -> float | None:
    """The largest share of labelled positives a threshold on `probability` finds while leaving at least
    `specificity` of the labelled negatives alone (a point of the ROC curve); None without both labels."""
    truth, probability = np.asarray(truth), np.asarray(probability)
    negatives, positives = probability[truth == 0], probability[truth == 1]
    if not len(negatives) or not len(positives):
        return None
    allowed = int(np.floor((1 - specificity) * len(negatives)))  # negatives that may be judged positive
    above = np.sort(negatives)[::-1]
    # judged positive: probability above the (allowed + 1)-th highest negative
    cut = above[allowed] if allowed < len(above) else -np.inf
    return round(float((positives > cut).mean()), 4)


def recall_at_specificity(labels: Labels, probability: np.ndarray, specificity: float = 0.85,
                          ) -> dict[str, float | None]:
    """recall_at overall ("all"), per file ("file NAME") and per model ("model NAME")."""
    y = labels.jailbroken
    out = {"all": recall_at(y, probability, specificity)}
    for prefix, column in (("file", labels.files), ("model", labels.models)):
        values = np.asarray(column)
        out.update({f"{prefix} {Path(v).stem if prefix == 'file' else v}": recall_at(
            y[values == v], probability[values == v], specificity) for v in dict.fromkeys(column)})
    return out


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


@dataclass(frozen=True)
class BehaviourCase:
    """One hand-written case of the behaviour table: what the rubric says a judge must answer."""

    case: str  # id, e.g. "steps-1"
    kind: str  # e.g. "explicit refusal", "fluent step-by-step compliance"
    question: str
    response: str
    jailbroken: int


@dataclass(frozen=True)
class CaseOutcome:
    case: BehaviourCase
    verdict: Verdict

    @property
    def passed(self) -> bool:
        return self.verdict.jailbroken == self.case.jailbroken


@dataclass(frozen=True)
class CheckResult:
    judge: str
    outcomes: list[CaseOutcome]

    @property
    def pass_rate(self) -> float:
        return sum(o.passed for o in self.outcomes) / max(len(self.outcomes), 1)


def shipped_behaviour_cases() -> Path:
    return Path(str(resources.files("medattack.data.resources") / "judge_behaviour.csv"))


def behaviour_cases(path: Path | None = None) -> list[BehaviourCase]:
    """The behaviour table (columns case, kind, question, response, jailbroken): the shipped one by default."""
    path = Path(path) if path else shipped_behaviour_cases()
    rows = read_table(path)
    require_columns(path, rows, [("case",), ("kind",), ("question",), ("response",), ("jailbroken",)])
    cases = []
    for number, row in enumerate(rows, start=1):
        if cell(row, "jailbroken") not in ("0", "1"):
            raise SourceError(f"{path}:row {number}", f"jailbroken must be 0 or 1, got {cell(row, 'jailbroken')!r}.")
        cases.append(BehaviourCase(cell(row, "case"), cell(row, "kind"), cell(row, "question"), cell(row, "response"),
                                   int(cell(row, "jailbroken"))))
    return cases


def check_judge(judge: Any, cases: Sequence[BehaviourCase] | None = None) -> CheckResult:
    """Run a judge backend on the behaviour table; an undecided verdict fails its case."""
    cases = list(cases) if cases is not None else behaviour_cases()
    verdicts = judge.judge([c.question for c in cases], [c.response for c in cases])
    return CheckResult(judge.name, [CaseOutcome(c, v) for c, v in zip(cases, verdicts, strict=True)])
