"""The `medattack` command line: parse -> config -> stage function. Output and progress live here.

    app.py      the Typer app, shared options, errors -> exit codes, progress bars, stage_config()
    stages.py   build, attack, query, score, report, run, demo
    tools.py    serve, list, prompts, analyze
    results.py  results, compare (reading what runs found)
    label.py    label (a sample of answers labelled by a person: the page, CSV in and out)
    output.py   the tables printed after each command

Every stage command takes `--config FILE` (YAML of the stage's config), `--set key=value` (any key of
that config, dotted for nested ones) and its own flags; precedence: file < flags < --set. Heavy
libraries (torch, transformers, datasets) are imported lazily inside the commands.
"""

from medattack.cli import judge, label, results, stages, tools  # noqa: F401 (registers the commands)
from medattack.cli.app import app

__all__ = ["app"]
