"""A run's benchmark and answers in the formats other tools read (one format per file, registered in `EXPORTS`):

    jailbreakbench  JailbreakBench's attack artifact JSON (parameters + one entry per request: prompt, response,
                    jailbroken), for one target and one attack method
    inspect         an inspect_ai task folder: the benchmark's samples with their images as a dataset, and the
                    run's judge as the scorer (`inspect eval FOLDER/task.py --model ...`)

`medattack export RUN --format F --target T [--method M] --out PATH` writes one; the exporters read records only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medattack.registry import Registry

Exporter = Callable[..., Path]  # (run root, out, *, target, method) -> the path written
EXPORTS: Registry[Exporter] = Registry("export format", plugins="medattack.exports")

__all__ = ["EXPORTS"]
