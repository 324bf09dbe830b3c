"""Image sources, one per file; each registers itself in `SOURCES` (loaded on first use)."""

from medattack.data.sources.base import SOURCES, SourceContext, SourceItem, open_source

__all__ = ["SOURCES", "SourceContext", "SourceItem", "open_source"]
