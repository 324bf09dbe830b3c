"""Reading tabular inputs (CSV, JSONL, Parquet) into row dicts, with errors that name the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from medattack.errors import SourceError

TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV, JSONL or Parquet file as dicts (row 1 is the first data row)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as handle:
                return [dict(row) for row in csv.DictReader(handle)]
        if suffix in (".jsonl", ".json"):
            rows = []
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SourceError(f"{path}:{number}", f"invalid JSON ({exc.msg}).",
                                      "write one JSON object per line.") from None
                if not isinstance(value, dict):
                    raise SourceError(f"{path}:{number}", "each line must be a JSON object.")
                rows.append(value)
            return rows
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except FileNotFoundError:
        raise SourceError(str(path), "file not found.", "check the path.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(str(path), f"cannot read the table ({exc}).") from None
    except Exception as exc:  # pyarrow raises its own error types on damaged files
        if type(exc).__module__.startswith("pyarrow"):
            raise SourceError(str(path), f"cannot read the Parquet file ({exc}).") from None
        raise
    raise SourceError(str(path), f"unsupported table format {suffix!r}.",
                      f"use one of {', '.join(TABLE_SUFFIXES)}.")


def cell(row: dict[str, Any], key: str) -> str:
    """A row's value as stripped text; '' when the column is absent or empty."""
    value = row.get(key)
    return "" if value is None else str(value).strip()


def require_columns(path: Path, rows: list[dict[str, Any]], groups: list[tuple[str, ...]]) -> None:
    """Each group is a set of alternatives; at least one column of every group must exist."""
    columns = set(rows[0]) if rows else set()
    for group in groups:
        if not columns & set(group):
            wanted = " or ".join(repr(c) for c in group)
            raise SourceError(
                str(path), f"missing column {wanted}; found columns: {', '.join(sorted(columns)) or 'none'}.",
                f"add a {group[0]!r} column.",
            )
