"""The run directory: layout, atomic writes, append-only records and the run manifest.

    runs/<name>/
      run.json        resolved config per stage, package versions, seed, git sha (never secrets)
      benchmark/      samples.jsonl, failures.jsonl, summary.json, images/, export/
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import medattack
from medattack.errors import RunDirError

Progress = Callable[[str, int, int], None]  # stage progress callback: (phase, done, total)

TRACKED_PACKAGES = ("torch", "transformers", "pydicom", "pillow", "numpy", "datasets", "scikit-image")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_hash(value: Any) -> str:
    """sha256 of a JSON-serialisable value in canonical form."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, value: Any) -> None:
    write_bytes_atomic(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    write_bytes_atomic(path, text.encode("utf-8"))


def append_jsonl(path: Path, *rows: dict[str, Any]) -> None:
    """Append records durably, in one write and one fsync. A torn last line left by a crash is cut
    off first, so the file always holds whole records (readers skip a torn line too)."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode("utf-8")
    with path.open("a+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size:
            handle.seek(size - 1)
            if handle.read(1) != b"\n":
                handle.seek(0)
                content = handle.read()
                handle.truncate(content.rfind(b"\n") + 1)
        handle.seek(0, os.SEEK_END)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (a crash mid-append) is ignored."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class JsonlCache:
    """Content-hash cache: key -> JSON value, one JSONL line per entry, reloaded on start.

    Shared by the API client, the model-call caches of prompt generation and the score cache.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, Any] = {e["key"]: e["value"] for e in read_jsonl(path)} if path else {}
        self.hits = 0

    @staticmethod
    def key(*parts: object) -> str:
        """sha256 of the parts in canonical JSON."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()

    def get(self, key: str) -> Any | None:
        if key not in self.entries:
            return None
        self.hits += 1
        return self.entries[key]

    def put(self, key: str, value: Any) -> None:
        self.put_many([(key, value)])

    def put_many(self, items: list[tuple[str, Any]]) -> None:
        self.entries.update(items)
        if self.path is not None and items:
            append_jsonl(self.path, *({"key": k, "value": v} for k, v in items))


def folder_name(name: str) -> str:
    """A model or target name as a folder name of the run directory (attacks/<method>/<model>,
    responses/<target>, scores/<target>)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:80]


def claim_folder(folder: Path, record: dict[str, Any], force: bool, change: str) -> None:
    """Write a stage folder's config.json, refusing a folder that holds results of another config
    (unless `force`); `change` says what to change instead, e.g. "the method or model"."""
    stamp = folder / "config.json"
    if stamp.exists() and not force:
        previous = json.loads(stamp.read_text(encoding="utf-8"))
        if content_hash(previous) != content_hash(record):
            raise RunDirError(f"{folder} holds results of another configuration; use --force to add to it "
                              f"anyway, or change {change}.")
    write_json_atomic(stamp, record)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(medattack.__file__).parent, capture_output=True,
            text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_manifest() -> dict[str, Any]:
    versions = {"medattack": medattack.__version__, "python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "git_sha": _git_sha(), "platform": platform.platform()}


class RunDir:
    """Paths of one run and the run.json manifest that every stage updates."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / "run.json"

    @property
    def benchmark(self) -> Path:
        return self.root / "benchmark"

    @property
    def samples_path(self) -> Path:
        return self.benchmark / "samples.jsonl"

    @property
    def failures_path(self) -> Path:
        return self.benchmark / "failures.jsonl"

    @property
    def images(self) -> Path:
        return self.benchmark / "images"

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {}
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def record_stage(self, stage: str, config: dict[str, Any], seed: int | None) -> None:
        """Store a stage's resolved config and the environment in run.json (no secrets)."""
        manifest = self.read_manifest()
        manifest.setdefault("name", self.root.name)
        manifest.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
        manifest.setdefault("stages", {})[stage] = {
            "config": config,
            "config_hash": content_hash(config),
            "seed": seed,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            **environment_manifest(),
        }
        write_json_atomic(self.manifest_path, manifest)
