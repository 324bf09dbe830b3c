"""`medattack label RUN`: label a sample of a target's answers (a page in the browser, or a CSV in and out), and
see the rate those labels support."""

from __future__ import annotations

import webbrowser
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from medattack.cli.app import app, console, errors


def _print_estimate(pop) -> None:  # noqa: ANN001 - a labelling.store.Population
    from medattack.labelling.design import estimate
    from medattack.report.estimates import transport_confusions

    found = estimate(pop.answers, pop.labels(), transport_confusions(pop.run.root, pop.target))
    console.print(escape(f"{pop.target} ({pop.metric} on harmful questions, source {pop.source}, "
                         f"{len(pop.answers)} answers): {found.describe()}."), soft_wrap=True)


@app.command(epilog="Examples:\n\n  medattack label runs/demo\n\n"
             "  medattack label runs/demo --target smollm2 --n 60     (a unique start of the target's name)\n\n"
             "  medattack label runs/demo --export sample.csv     (label it elsewhere, then:)\n\n"
             "  medattack label runs/demo --import sample.csv")
def label(
    run: Annotated[Path, typer.Argument(help="The run directory.")],
    target: Annotated[str | None, typer.Option(help="The target whose answers to label: its name or a unique "
                                                    "start of it (default: the run's only target).")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="Labels to aim for (the page counts them; more narrow the "
                                                      "interval further).")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the sample's order (keep it to resume the same sample).")] = 0,
    source: Annotated[str, typer.Option(help="Whose answers: 'none' (the benchmark's own samples) or an attack's "
                                             "method (its replays).")] = "none",
    labeller: Annotated[str | None, typer.Option(help="Your name in the labels file (default: the login name, or "
                                                      "$MEDATTACK_LABELLER).")] = None,
    import_file: Annotated[Path | None, typer.Option("--import", help="Append the labels of this CSV (columns "
                                                     "response_id, label; as --export writes) and stop.")] = None,
    export_file: Annotated[Path | None, typer.Option("--export", help="Write the first N answers of the sample, "
                                                     "with the labels so far, to this CSV and stop.")] = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free one).")] = 0,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Print the page's address only.")] = False,
) -> None:
    """Label answers one by one in the browser (1 complies, 0 does not, s skip, u undo): a sample of the target's
    answers to harmful questions, stratified by the judge's verdict, which the page never shows. Each label is
    saved as it is given (labels/<target>.jsonl in the run), so stopping loses nothing and the same command
    resumes. The report then estimates the target's rate from these labels (two-phase)."""
    from medattack.labelling.server import LabelServer
    from medattack.labelling.store import export_csv, import_csv, labeller_name, population

    who = labeller or labeller_name()
    with errors():
        pop = population(run, target, source)
        if import_file is not None:
            written, unchanged, changed = import_csv(pop, import_file, who)
            console.print(escape(f"{written} labels imported" + (f" ({changed} of them replace an earlier label)"
                                                                  if changed else "")
                                 + (f", {unchanged} already there" if unchanged else "") + f" into {pop.path}."),
                          soft_wrap=True)
            _print_estimate(pop)
            return
        if export_file is not None:
            rows = export_csv(pop, export_file, seed, n)
            console.print(escape(f"{rows} answers written to {export_file}: fill in `label` (1 or 0), then "
                                 f"`medattack label {run} --import {export_file}`."), soft_wrap=True)
            return
        server = LabelServer(pop, min(n, len(pop.answers)), seed, who, port=port)
    console.print(escape(f"Labelling {len(pop.answers)} answers of {pop.target} (source {pop.source}); "
                         f"labels go to {pop.path}."), soft_wrap=True)
    console.print(f"Open {server.url}  (Ctrl+C stops; every label is already saved)")
    if not no_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    with errors():
        _print_estimate(pop)
