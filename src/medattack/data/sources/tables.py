"""Reading tabular inputs (CSV, JSONL, Parquet) into row dicts, with errors that name the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from medattack.errors import SourceError
from medattack.storage import jsonl_lines

TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


MAX_CSV_FIELD = 64 << 20  # characters in one CSV cell (Python's default is 128 KiB: a long answer would not load)


def read_table(path: Path, keep_bad_lines: bool = False) -> list[dict[str, Any]]:
    """Rows of a CSV, JSONL or Parquet file as dicts (row 1 is the first data row). With
    `keep_bad_lines`, a JSONL line that is not a JSON object is returned as its SourceError (the caller
    records it and goes on) instead of failing the file."""
    suffix = path.suffix.lower()
    if path.exists() and not path.is_file():
        raise SourceError(str(path), "not a regular file (a folder, a pipe or a device).", "name a table file.")
    try:
        if suffix == ".csv":
            csv.field_size_limit(MAX_CSV_FIELD)
            with path.open(newline="", encoding="utf-8-sig") as handle:
                return [dict(row) for row in csv.DictReader(handle, strict=True)]
        if suffix in (".jsonl", ".json"):
            rows = []
            # split on "\n" only, never on U+2028; bytes that are not UTF-8: one error for the file, below
            for number, line, _ in jsonl_lines(path.read_bytes(), errors="strict"):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                    if not isinstance(value, dict):
                        raise SourceError(f"{path}:{number}", "each line must be a JSON object.",
                                          "write one JSON object per line.")
                except (json.JSONDecodeError, RecursionError, SourceError) as exc:
                    error = exc if isinstance(exc, SourceError) else SourceError(
                        f"{path}:{number}", f"invalid JSON ({getattr(exc, 'msg', 'nested too deeply')}).",
                        "write one JSON object per line.")
                    if not keep_bad_lines:
                        raise error from None
                    value = error
                rows.append(value)
            return rows
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except FileNotFoundError:
        raise SourceError(str(path), "file not found.", "check the path.") from None
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise SourceError(str(path), f"a cell is longer than {MAX_CSV_FIELD >> 20} MiB, the most a CSV cell may "
                              "hold here.", "store such answers in JSONL or Parquet, or shorten them.") from None
        raise SourceError(str(path), f"malformed CSV ({exc}): a quote is probably never closed.",
                          "close every quoted field, or save the file again from a spreadsheet.") from None
    except (OSError, UnicodeDecodeError) as exc:
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


def require_text(row: dict[str, Any], columns: tuple[str, ...], location: str) -> None:
    """Refuse a row whose label or prompt column holds a number, a boolean or an object instead of text
    (JSONL and Parquet can), so that `5` or `{"x": 1}` never becomes part of a question."""
    for column in columns:
        value = row.get(column)
        if value is not None and not isinstance(value, str):
            raise SourceError(location, f"column {column!r} must be text, got {type(value).__name__} "
                              f"{str(value)[:40]!r}.", f"write {column} as a string.")
