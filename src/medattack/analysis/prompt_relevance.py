"""Prompt-by-prompt relevance, aggregated per clinical task (arXiv 2405.20775, Sec. 3).

Embeds every normal and harmful prompt of a bank (or a built benchmark), takes all pairwise cosine
similarities and averages them per (task, task) block, for normal-normal, harmful-harmful and
normal-harmful pairs. High within-task and low across-task similarity says prompts fit their task;
harmful prompts far apart from each other say the bank is diverse. Self-pairs are excluded.
Writes `prompt_relevance.csv` (long format) and `prompt_relevance.png` (three heatmaps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medattack.scoring.backends.text_embedders import TextEmbedder
from medattack.storage import write_csv_atomic

KINDS = (("normal", "normal"), ("harmful", "harmful"), ("normal", "harmful"))


@dataclass(frozen=True)
class PromptEntry:
    task: str
    normal: str
    harmful: str


@dataclass
class PromptRelevanceResult:
    tasks: tuple[str, ...]
    matrices: dict[str, np.ndarray]  # kind -> (T, T) mean cosine
    rows: list[dict[str, Any]]
    csv_path: Path
    figure_path: Path


def prompt_relevance(
    entries: list[PromptEntry], tasks: tuple[str, ...], embedder: TextEmbedder, out_dir: Path
) -> PromptRelevanceResult:
    task_index = np.array([tasks.index(e.task) for e in entries])  # (P,)
    vectors = {
        "normal": embedder.embed([e.normal for e in entries]),  # (P, D)
        "harmful": embedder.embed([e.harmful for e in entries]),
    }
    matrices: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    for left, right in KINDS:
        kind = f"{left}-{right}"
        cosine = vectors[left] @ vectors[right].T  # (P, P)
        valid = np.ones_like(cosine, dtype=bool)
        if left == right:
            np.fill_diagonal(valid, False)
        matrix = np.full((len(tasks), len(tasks)), np.nan)
        for a in range(len(tasks)):
            for b in range(len(tasks)):
                block = valid[np.ix_(task_index == a, task_index == b)]
                values = cosine[np.ix_(task_index == a, task_index == b)][block]
                if values.size:
                    matrix[a, b] = float(values.mean())
                rows.append({"kind": kind, "task_a": tasks[a], "task_b": tasks[b],
                             "mean_cosine": None if not values.size else round(float(values.mean()), 6),
                             "n_pairs": int(values.size), "embedder": embedder.name})
        matrices[kind] = matrix
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "prompt_relevance.csv"
    write_csv_atomic(csv_path, rows)
    figure = out_dir / "prompt_relevance.png"
    _plot(tasks, matrices, embedder.name, figure)
    return PromptRelevanceResult(tasks, matrices, rows, csv_path, figure)


def _plot(tasks: tuple[str, ...], matrices: dict[str, np.ndarray], embedder: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(6 * len(matrices), 5.8))
    for ax, (kind, matrix) in zip(np.atleast_1d(axes), matrices.items(), strict=True):
        image = ax.imshow(matrix, vmin=-0.1, vmax=1.0, cmap="viridis")
        ax.set_title(f"{kind} prompt relevance ({embedder} cosine)", fontsize=9)
        ax.set_xticks(range(len(tasks)), tasks, rotation=90, fontsize=6)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=6)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
