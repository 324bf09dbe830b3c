"""Export a built benchmark in the 3MAD layout, loadable with `datasets.load_dataset`.

One Parquet file per category split (`export/CT_Chest.parquet`), one row per image x prompt pair, the
image embedded (Hugging Face `Image` feature), columns as in 3MAD: `id, file_name, image,
original_attribute, unmatch_attribute, normal_prompt, harmful_prompt, policy, key_phrases`.

    datasets.load_dataset("parquet", data_files={"CT_Chest": "runs/demo/benchmark/export/CT_Chest.parquet"})

The export reads back through `--source 3mad:runs/<name>/benchmark/export`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from medattack.records import Sample
from medattack.rundir import folder_name

EXPORT_DIR = "export"


def _pairs(samples: list[Sample]) -> dict[str, list[dict[str, Any]]]:
    """Collapse the four condition rows of each pair into one 3MAD row, grouped by split."""
    by_pair: dict[str, dict[str, Sample]] = defaultdict(dict)
    for sample in samples:
        by_pair[sample.pair_id][sample.condition] = sample
    splits: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pair_id, rows in by_pair.items():
        normal, malicious = rows["normal"], rows["malicious"]
        splits[normal.category].append({
            "id": pair_id,
            "file_name": Path(normal.image_file).name,
            "image_file": normal.image_file,
            "original_attribute": normal.true_attribute,
            "unmatch_attribute": normal.claimed_attribute,
            "normal_prompt": normal.prompt,
            "harmful_prompt": malicious.prompt,
            "policy": normal.task,
            "key_phrases": normal.key_phrase,
            "image_sha256": normal.image_sha256,
        })
    return splits


def export_3mad_layout(benchmark_dir: Path, samples: list[Sample]) -> list[Path]:
    """Write export/<split>.parquet files; returns their paths."""
    import datasets

    datasets.disable_progress_bars()  # the library never prints; the CLI shows progress
    out_dir = benchmark_dir / EXPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for split, rows in sorted(_pairs(samples).items()):
        images = [
            {"bytes": (benchmark_dir / row.pop("image_file")).read_bytes(), "path": row["file_name"]}
            for row in rows
        ]
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        columns["image"] = images
        features = datasets.Features(
            {key: datasets.Value("string") for key in rows[0]} | {"image": datasets.Image()}
        )
        dataset = datasets.Dataset.from_dict(columns, features=features)
        path = out_dir / f"{folder_name(split)}.parquet"  # a split name comes from user data: made safe
        tmp = path.with_suffix(".parquet.tmp")
        dataset.to_parquet(str(tmp))
        tmp.replace(path)
        written.append(path)
    return written
