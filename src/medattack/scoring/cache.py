"""The score cache: (metric identity, the inputs it reads) -> Score, shared by every target of a run."""

from __future__ import annotations

import hashlib
from pathlib import Path

from medattack.scoring.base import MetricSpec, Score, ScoreInput
from medattack.storage import JsonlCache


class ScoreCache:
    """Scores by content hash on a JsonlCache. Each image file is read and hashed once per stage,
    however many metrics and responses use it."""

    def __init__(self, path: Path | None) -> None:
        self.store = JsonlCache(path)
        self._image_digests: dict[str, str] = {}

    @property
    def hits(self) -> int:
        return self.store.hits

    def _image_digest(self, image_path: str | None) -> str:
        if not image_path:
            return ""
        if image_path not in self._image_digests:
            path = Path(image_path)
            self._image_digests[image_path] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        return self._image_digests[image_path]

    def key(self, spec: MetricSpec, item: ScoreInput) -> str:
        return JsonlCache.key(spec.name, spec.description, item.question, item.response, item.true_attribute,
                              item.description, self._image_digest(item.image_path))

    def get(self, key: str) -> Score | None:
        entry = self.store.get(key)
        return None if entry is None else Score(entry["value"], entry["null_reason"], entry.get("detail", {}))

    def put_many(self, items: list[tuple[str, Score]]) -> None:
        self.store.put_many([(k, {"value": s.value, "null_reason": s.null_reason, "detail": s.detail})
                             for k, s in items])
