"""The score cache: (metric identity, the inputs it reads) -> Score, shared by every target of a run."""

from __future__ import annotations

from pathlib import Path

from medattack.scoring.base import Score, ScoreInput
from medattack.storage import FileDigests, SqliteCache


class ScoreCache:
    """Scores by content hash on a SqliteCache. Each image file is read and hashed once per stage,
    however many metrics and responses use it."""

    def __init__(self, path: Path | None) -> None:
        self.store = SqliteCache(path)
        self._image_digest = FileDigests()

    @property
    def hits(self) -> int:
        return self.store.hits

    def key(self, metric_identity: str, item: ScoreInput, reads: tuple[str, ...] = ()) -> str:
        """Hash of a metric (its spec and settings) and the inputs of one response it reads: the ones every metric
        may read, and the optional fields it declares (`reads`, e.g. ("injected",))."""
        return SqliteCache.key(metric_identity, item.question, item.response, item.true_attribute, item.description,
                              self._image_digest(item.image_path), *(getattr(item, field) for field in reads))

    def get(self, key: str) -> Score | None:
        entry = self.store.get(key)
        return None if entry is None else Score(entry["value"], entry["null_reason"], entry.get("detail", {}))

    def put_many(self, items: list[tuple[str, Score]]) -> None:
        self.store.put_many([(k, {"value": s.value, "null_reason": s.null_reason, "detail": s.detail})
                             for k, s in items])
