"""Relevance of each image to its true attribute vs its claimed (mismatched) attribute, per category.

A matched benchmark should show true > claimed in every category; this is the input-side control
that the paper reports before attacking (arXiv 2405.20775, Sec. 3). How well the backend tells a true
claim from a false one is its AUC (each image's relevance to its true attribute against its relevance
to the attributes it is falsely claimed to be; 1 = always, 0.5 = chance), overall and per category: the
same separation the composite's TII gate relies on. Writes
`analysis/attribute_relevance.csv` (one row per image x claimed attribute),
`analysis/attribute_relevance_by_category.csv` and `analysis/attribute_relevance.png`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medattack.records import Sample
from medattack.scoring.backends.image_text import ImageInfo, ImageTextRelevance
from medattack.stats import roc_auc
from medattack.storage import write_csv_atomic

ATTRIBUTE_TEXT = "This image is about {attribute}."


@dataclass
class AttributeRelevanceResult:
    rows: list[dict[str, Any]]
    by_category: list[dict[str, Any]]
    csv_path: Path
    category_csv_path: Path
    figure_path: Path
    auc: float  # true vs claimed relevance over every image (see the module docstring)


def attribute_relevance(
    samples: list[Sample], benchmark_dir: Path, backend: ImageTextRelevance, out_dir: Path
) -> AttributeRelevanceResult:
    """Score every distinct (image, claimed attribute) of a built benchmark."""
    seen: dict[tuple[str, str], Sample] = {}
    for s in samples:
        seen.setdefault((s.image_sha256, s.claimed_attribute), s)
    pairs = sorted(seen.values(), key=lambda s: (s.category, s.image_sha256, s.claimed_attribute))
    infos = [ImageInfo(str(benchmark_dir / s.image_file), s.modality, s.body_part,
                       s.description or "") for s in pairs]
    true_scores = backend.score(infos, [ATTRIBUTE_TEXT.format(attribute=s.true_attribute) for s in pairs])
    claimed_scores = backend.score(
        infos, [ATTRIBUTE_TEXT.format(attribute=s.claimed_attribute) for s in pairs]
    )
    rows = [
        {
            "category": s.category,
            "image_sha256": s.image_sha256,
            "true_attribute": s.true_attribute,
            "claimed_attribute": s.claimed_attribute,
            "true_relevance": round(float(t), 6),
            "claimed_relevance": round(float(c), 6),
            "backend": backend.label,
            "is_proxy": backend.is_proxy,
        }
        for s, t, c in zip(pairs, true_scores, claimed_scores, strict=True)
    ]
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[row["category"]].append(row)
    by_category = []

    def separation(members: list[dict[str, Any]]) -> float:
        true = {m["image_sha256"]: m["true_relevance"] for m in members}
        false = [m["claimed_relevance"] for m in members if m["claimed_attribute"] != m["true_attribute"]]
        return round(roc_auc(np.array(list(true.values())), np.array(false)), 4)

    for category, members in sorted(grouped.items()):
        true_mean = float(np.mean([m["true_relevance"] for m in members]))
        claimed_mean = float(np.mean([m["claimed_relevance"] for m in members]))
        by_category.append({
            "category": category,
            "n": len(members),
            "mean_true_relevance": round(true_mean, 6),
            "mean_claimed_relevance": round(claimed_mean, 6),
            "gap": round(true_mean - claimed_mean, 6),
            "auc": separation(members),
            "backend": backend.label,
            "is_proxy": backend.is_proxy,
        })
    csv_path = out_dir / "attribute_relevance.csv"
    category_csv = out_dir / "attribute_relevance_by_category.csv"
    write_csv_atomic(csv_path, rows)
    write_csv_atomic(category_csv, by_category)
    figure = out_dir / "attribute_relevance.png"
    _plot(by_category, backend, figure)
    return AttributeRelevanceResult(rows, by_category, csv_path, category_csv, figure, separation(rows))


def _plot(by_category: list[dict[str, Any]], backend: ImageTextRelevance, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["category"] for r in by_category]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(names) + 2), 4.2))
    ax.bar(x - 0.2, [r["mean_true_relevance"] for r in by_category], 0.4, label="true attribute")
    ax.bar(x + 0.2, [r["mean_claimed_relevance"] for r in by_category], 0.4, label="claimed attribute")
    ax.set_xticks(x, names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("relevance")
    title = "Image relevance to true vs claimed attribute"
    ax.set_title(f"{title}\n{backend.label}" + (" [PROXY]" if backend.is_proxy else ""), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
