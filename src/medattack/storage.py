"""Durable files: atomic writes, append-only JSONL records, content hashes and the SQLite cache.

Every file medattack writes goes through these helpers, so a reader sees either the old or the whole new
content, and a crash mid-append leaves at most a torn last line, which readers skip and the next append cuts.
A bad line anywhere else is damage, not a crash: reading it fails with the file and line.

JSON text is written with non-ASCII characters as they are, except those some readers take for line breaks
(U+0085, U+2028, U+2029) and lone surrogates (which UTF-8 cannot hold): these are written as \\uXXXX
escapes, so every stored line is one record whoever splits it, and a surrogate an API or a model returned
is kept as it was. JSONL files are split on "\\n" only (`str.splitlines` also breaks on those characters).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from medattack.errors import CorruptFileError, RecordError
from medattack.records import Record
from medattack.schema import upgraded, versioned

log = logging.getLogger(__name__)

UNSAFE_IN_TEXT = re.compile("[\x85\u2028\u2029\ud800-\udfff]")  # line breaks to some readers; lone surrogates
SURROGATE = re.compile("[\ud800-\udfff]")  # code units that are not characters: UTF-8 cannot hold them


def json_text(value: Any, **options: Any) -> str:
    """json.dumps with non-ASCII text readable, and the characters of UNSAFE_IN_TEXT as \\uXXXX escapes
    (lossless: json.loads gives them back)."""
    return UNSAFE_IN_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False, **options))


def readable(text: str) -> str:
    """`text` with lone surrogates (code units that are not characters, which encoders and tokenizers refuse)
    replaced by U+FFFD: what metrics and reports read; the stored answer keeps them."""
    return SURROGATE.sub("\ufffd", text)


def canonical_json(value: Any) -> str:
    """The canonical JSON of a value (sorted keys, no spaces): what content hashes are taken of."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def content_hash(value: Any) -> str:
    """sha256 of a JSON-serialisable value in canonical form."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def _umask() -> int:
    """The process's umask (read once at import, when nothing else runs yet)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file: colleagues and workers can read results


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content (with the mode a new
    file gets under the user's umask, not the private 0600 of a temporary file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, value: Any, kind: str | None = None) -> None:
    """A JSON file, atomically; with `kind` (schema.py) a state file stamped with that kind's version."""
    value = versioned(kind, value) if kind else value
    write_bytes_atomic(path, (json_text(value, indent=2) + "\n").encode("utf-8"))


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]], kind: str | None = None) -> None:
    """JSONL rows, atomically; with `kind` (schema.py) each row stamped with that kind's version."""
    text = "".join(json_text(versioned(kind, row) if kind else row, sort_keys=True) + "\n" for row in rows)
    write_bytes_atomic(path, text.encode("utf-8"))


def append_jsonl(path: Path, *rows: dict[str, Any]) -> None:
    """Append records durably, in one write and one fsync. A torn last line left by a crash is cut
    off first, so the file always holds whole records (readers skip a torn line too)."""
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json_text(row, sort_keys=True) + "\n" for row in rows).encode("utf-8")
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


R = TypeVar("R", bound=Record)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell that starts so (OWASP, CSV injection)
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string that starts like a formula gets a leading quote
    (OWASP's rule; plain numbers such as "-0.5" are left as they are). Other values pass unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not NUMBER.fullmatch(value):
        return "'" + value
    return value


def write_csv_atomic(path: Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Rows (dicts) as a CSV file with a header (`columns`, default the first row's keys), every string cell
    made safe for spreadsheets (csv_cell); None is an empty cell."""
    import csv
    import io

    buffer = io.StringIO(newline="")
    columns = columns if columns is not None else list(rows[0]) if rows else []
    if columns:
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows({key: csv_cell(value) for key, value in row.items()} for row in rows)
    write_bytes_atomic(path, readable(buffer.getvalue()).encode("utf-8"))


def read_state(path: Path, fix: str, kind: str | None = None, **context: Any) -> Any:
    """A JSON state file medattack wrote (run.json, a stage's config.json, build.json, summary.json); one that
    is cut off or not JSON is a CorruptFileError naming it and `fix`, never a traceback or a silent {}. With
    `kind` (schema.py) it is read at that kind's current version (older versions upgraded with `context`)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptFileError(str(path), f"not a JSON state file ({getattr(exc, 'msg', exc)}): it was cut off "
                               "or changed by another program", fix) from None
    if kind is None:
        return value
    if not isinstance(value, dict):
        raise CorruptFileError(str(path), f"not a JSON object but {type(value).__name__}", fix)
    return upgraded(kind, value, str(path), **context)


def jsonl_lines(data: bytes, errors: str = "surrogateescape") -> Iterator[tuple[int, str, bool]]:
    """(line number, text, whole) of each line of JSONL bytes, split on b"\\n" only; `whole` is False for a last
    line without its newline (a torn append). `errors`: how bytes that are not UTF-8 decode ("strict" raises)."""
    lines = data.split(b"\n")
    last = len(lines) - 1
    for number, raw in enumerate(lines, start=1):
        if number - 1 == last and not raw:
            break  # the file ends with a newline
        yield number, raw.decode("utf-8", errors=errors), number - 1 < last


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each line of a JSONL file. A torn last line (a crash mid-append) is skipped;
    a bad line anywhere else is damage and fails with the file and line."""
    if not path.exists():
        return
    for number, line, whole in jsonl_lines(path.read_bytes()):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            if not whole:
                continue
            raise CorruptFileError(f"{path}:{number}", f"this line is not a JSON record ({getattr(exc, 'msg', exc)}): "
                                   "the file was changed by another program or by hand",
                                   "restore the file from a copy, or delete that line (the stage makes again what it "
                                   "lost on its next run)") from None


def read_jsonl(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (a crash mid-append) is ignored. With `kind` (schema.py) each row
    is read at that kind's current version (older ones upgraded, a newer one refused with the file and line)."""
    if kind is None:
        return [row for _, row in _jsonl_rows(path)]
    return [_upgraded_row(kind, row, f"{path}:{number}") for number, row in _jsonl_rows(path)]


def _upgraded_row(kind: str, row: Any, where: str) -> Any:
    """A row at its kind's current version (a row that is not an object is left for the reader to refuse)."""
    return upgraded(kind, row, where) if isinstance(row, dict) else row


def read_records(path: Path, record: type[R]) -> list[R]:
    """The rows of a JSONL file as records, each read at its record's current version (Record.from_json); a row
    that is not one fails with the file and line."""
    return list(each_record(path, record))


def each_record(path: Path, record: type[R]) -> Iterator[R]:
    """read_records one row at a time, for a reader that keeps less than every record (the report at scale)."""
    return (record.from_json(row, f"{path}:{number}") for number, row in _jsonl_rows(path))


def record_row(record: Record) -> dict[str, Any]:
    """A record as written to its file: its fields and its kind's schema version."""
    return versioned(type(record).__name__, record.to_json())


def append_records(path: Path, *records: Record) -> None:
    append_jsonl(path, *(record_row(r) for r in records))


def write_records_atomic(path: Path, records: Iterable[Record]) -> None:
    """A whole records file, atomically (each row with its schema version)."""
    write_jsonl_atomic(path, (record_row(r) for r in records))


CACHE_VERSION = 1  # SqliteCache's schema version (PRAGMA user_version)


class SqliteCache:
    """Content-hash cache: key -> JSON value, one row each in an SQLite file (WAL journal).

    Shared by the API client, the model-call caches of prompt generation and the score cache. Several
    threads and processes on one machine may read and write it at once (each process opens its own
    connection; a writer waits up to a minute for another's transaction). A lookup reads one row, so a
    large cache costs nothing to open. Network file systems do not give SQLite its locks: keep caches on
    local disk or on one node. A cache written by earlier versions as JSONL beside it (`NAME.jsonl`) is
    imported the first time the SQLite file is made. The file is made by the first write; with no path
    the cache lives in memory.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.hits = 0
        self._memory: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = 0

    @staticmethod
    def key(*parts: object) -> str:
        """sha256 of the parts in canonical JSON."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()

    def _open(self) -> sqlite3.Connection:
        """This process's connection (made anew after a fork or unpickling: one must not cross processes)."""
        assert self.path is not None
        if self._connection is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            try:
                connection = self._connect()
            except sqlite3.DatabaseError as exc:  # not a database, or damaged: keep it aside, start anew
                aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
                os.replace(self.path, aside)
                for suffix in ("-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                log.warning("the cache %s is damaged (%s): moved aside to %s (kept: paid answers can be recovered "
                            "from it) and a new one started; what it held is asked or computed again", self.path,
                            exc, aside)
                connection = self._connect()
            self._connection, self._pid = connection, os.getpid()
            self._upgrade(connection, new)
        return self._connection

    def _upgrade(self, connection: sqlite3.Connection, new: bool) -> None:
        """Take the file to CACHE_VERSION (kept in `PRAGMA user_version`; 0: written before versions), one step at
        a time; refuse a newer one. 0 -> 1: a file made now imports the JSONL cache that releases before SQLite
        wrote beside it (`NAME.jsonl`); one made by those releases had imported it already."""
        assert self.path is not None
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > CACHE_VERSION:
            raise RecordError(f"{self.path}: cache schema version {version}; this medattack reads versions 0 to "
                              f"{CACHE_VERSION}. It was written by a newer medattack: upgrade medattack, or give this "
                              "run another cache (move the file away; what it held is asked or computed again).")
        if version == 0:
            legacy = self.path.with_suffix(".jsonl")
            if new and legacy != self.path and legacy.is_file():
                self._write([(entry["key"], entry["value"]) for entry in read_jsonl(legacy)
                             if isinstance(entry, dict) and "key" in entry and "value" in entry])
            connection.execute(f"PRAGMA user_version = {CACHE_VERSION}")

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        connection = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; a crash keeps the file whole
            connection.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            connection.execute("SELECT value FROM cache LIMIT 1").fetchall()
        except sqlite3.DatabaseError:
            connection.close()
            raise
        return connection

    def get(self, key: str) -> Any | None:
        with self._lock:
            if self.path is None:
                value = self._memory.get(key)
            elif self._connection is None and not self.path.exists() and not self.path.with_suffix(".jsonl").is_file():
                value = None  # nothing cached yet: the file is made by the first write
            else:
                row = self._open().execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
                value = None if row is None else json.loads(row[0])
            if value is not None:
                self.hits += 1
            return value

    def put(self, key: str, value: Any) -> None:
        self.put_many([(key, value)])

    def put_many(self, items: list[tuple[str, Any]]) -> None:
        if items:
            with self._lock:
                self._write(items)

    def _write(self, items: list[tuple[str, Any]]) -> None:
        if self.path is None:
            self._memory.update(items)
            return
        connection = self._open()
        rows = [(k, json_text(v)) for k, v in items]
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany("INSERT OR REPLACE INTO cache (key, value) VALUES (?, ?)", rows)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def __len__(self) -> int:
        with self._lock:
            if self.path is None:
                return len(self._memory)
            if self._connection is None and not self.path.exists():
                return 0
            return self._open().execute("SELECT COUNT(*) FROM cache").fetchone()[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_connection": None, "_lock": None, "_pid": 0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class FileDigests:
    """sha256 of files' bytes, each file read once per instance (a stage keys its results by them)."""

    def __init__(self) -> None:
        self._digests: dict[str, str] = {}

    def __call__(self, path: Path | str | None) -> str:
        """The digest of the file, or "" when there is no such regular file."""
        if not path:
            return ""
        key = str(path)
        if key not in self._digests:
            file = Path(path)
            self._digests[key] = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else ""
        return self._digests[key]
