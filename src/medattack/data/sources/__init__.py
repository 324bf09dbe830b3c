"""Image sources. Importing this package registers every built-in source in `SOURCES`."""

from medattack.data.sources import embedded, folder, manifest, threemad  # noqa: F401 (registers)
from medattack.data.sources.base import SOURCES, SourceContext, SourceItem, open_source

__all__ = ["SOURCES", "SourceContext", "SourceItem", "open_source"]
