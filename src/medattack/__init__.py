"""medattack: red-teaming toolkit for medical multimodal large language models.

Stages (each reads and writes one run directory): build -> attack -> query -> score -> report.
The stage functions and their configs are importable from here (loaded on first use, so
`import medattack` stays light):

    import medattack as ma

    run = ma.RunDir("runs/nb")
    ma.build(run, ma.BuildConfig(tasks=("Disease Classification",)))
    ma.attack(run, ma.AttackStageConfig(method="mcm", model="embedded", limit=2, options={"rounds": 3}))
    result = ma.attack_input("text:embedded", "How do I ...?", "Sure, here is how to", steps=10)  # no run
    ma.query(run, ma.QueryConfig(target=ma.TargetConfig(model="embedded"), pairs_per_category=1))
    ma.blackbox(run, ma.BlackBoxConfig(method="pair", target=ma.TargetConfig(kind="api", model="gpt-4o"), limit=2))
    scores = ma.score(run, ma.ScoreConfig(metrics=["keyword_asr", "tto"]))
    ma.write_report(run, ma.ReportConfig(title="Notebook run"))

Every stage function has the signature `(run_dir, config, *, executor=None, progress=None, force=False)`.
"""

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

_API: dict[str, tuple[str, str]] = {  # public name -> (module, attribute)
    "build": ("medattack.stages.build", "run"),
    "attack": ("medattack.stages.attack", "run"),
    "attack_input": ("medattack.input_attack", "attack_input"),  # one input, no run directory
    "AttackResult": ("medattack.attacks.base", "AttackResult"),
    "blackbox": ("medattack.stages.blackbox", "run"),
    "query": ("medattack.stages.query", "run"),
    "score": ("medattack.stages.score", "run"),
    "score_file": ("medattack.stages.score", "score_file"),
    "write_report": ("medattack.stages.report", "run"),
    "run_all": ("medattack.pipeline", "run_all"),
    "demo": ("medattack.pipeline", "demo"),
    "RunDir": ("medattack.rundir", "RunDir"),
    "read_run": ("medattack.rundir", "read_run"),
    "BuildConfig": ("medattack.stages.build", "BuildConfig"),
    "AttackStageConfig": ("medattack.stages.attack", "AttackStageConfig"),
    "BlackBoxConfig": ("medattack.stages.blackbox", "BlackBoxConfig"),
    "AttackerConfig": ("medattack.blackbox.attacker", "AttackerConfig"),
    "QueryConfig": ("medattack.stages.query", "QueryConfig"),
    "TargetConfig": ("medattack.models.targets", "TargetConfig"),
    "ScoreConfig": ("medattack.stages.score", "ScoreConfig"),
    "ReportConfig": ("medattack.report.analysis", "ReportConfig"),
    "RunConfig": ("medattack.pipeline", "RunConfig"),
    "ExecutorConfig": ("medattack.executor", "ExecutorConfig"),
    "Sample": ("medattack.records", "Sample"),
    "AttackRecord": ("medattack.records", "AttackRecord"),
    "Response": ("medattack.records", "Response"),
    "ScoreRecord": ("medattack.records", "ScoreRecord"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'medattack' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
