"""Workers for the Ray executor tests; Ray's worker processes import this module by name."""

from __future__ import annotations

import os


class PoisonWorker:
    """Doubles numbers; the item "poison" kills the process running it, every time."""

    def double(self, item):
        if item == "poison":
            os._exit(1)
        return 2 * item
