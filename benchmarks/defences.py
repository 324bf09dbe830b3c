"""Each defence on the demo's run: attack success and benign answer rate undefended -> defended, and what it flags.

    make demo && .venv/bin/python benchmarks/defences.py                 # every defence, on runs/demo
    .venv/bin/python benchmarks/defences.py --run runs/demo --defences perplexity purify

Asks the demo's target (embedded, 24 new tokens, one image x prompt pair per category: the demo's query settings)
behind each defence in turn (`medattack query RUN --defence NAME`: every benchmark condition, the demo's MCM
replays and the image controls), scores the run (`medattack score RUN`), writes the report and prints the
report's Defences rows from summary.json: per defence, the paired change of attack success on harmful questions
and of the answer rate on benign ones (95% intervals), and the flagged share of attack replays, mismatched claims
and normal questions. SmoothLLM asks `--smoothllm-copies` copies per question (3 by default here: 5 takes five
times the target's time). The demo's target is not a medical model (its vision tower is random): these numbers
show the measurement, not how well a defence protects a real medical model.
"""

from __future__ import annotations

import argparse
import json
import time

from medattack.models.targets import TargetConfig
from medattack.report import build_report
from medattack.stages import query, score
from medattack.stages.query import QueryConfig

ALL = ("attribute", "perplexity", "purify", "reminder", "smoothllm")


def interval(row: dict) -> str:
    low, high = row.get("ci_low"), row.get("ci_high")
    return "" if low is None else f" [{low:+.2f}, {high:+.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--defences", nargs="+", default=list(ALL))
    parser.add_argument("--smoothllm-copies", type=int, default=3)
    args = parser.parse_args()
    for name in args.defences:
        options = {"smoothllm": {"copies": args.smoothllm_copies}} if name == "smoothllm" else None
        start = time.time()
        result = query.run(args.run, QueryConfig(pairs_per_category=1, target=TargetConfig(max_new_tokens=24),
                                                 defences=(name,), defence_options=options))
        print(f"query {result.target}: {len(result.responses)} answers, {result.asked} asked now, "
              f"{time.time() - start:.0f} s", flush=True)
    score.run(args.run)
    summary = json.loads((build_report([args.run]).out_dir / "summary.json").read_text())
    print(f"\nsuccess metric: {summary['success_metric']}")
    print("| defence | measure | pairs | undefended -> defended | difference [95%] | p |\n|---|---|---|---|---|---|")
    for row in summary["defences"]:
        print(f"| {row['defences']} | {row['measure']} | {row['n']} | {row['mean_a']:.2f} -> {row['mean_b']:.2f} | "
              f"{row['difference']:+.2f}{interval(row)} | {row['p_value']:.3g} |")
    print("\n| defence | inputs | flagged |\n|---|---|---|")
    for row in summary["defence_flags"]:
        print(f"| {row['defences']} | {row['inputs']} | {row['flagged']}/{row['n']} = {row['rate']:.2f} "
              f"[{row['ci_low']:.2f}, {row['ci_high']:.2f}] |")


if __name__ == "__main__":
    main()
