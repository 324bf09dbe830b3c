"""What the embedded judge adds to scoring: `score` with TTO alone vs TTO + judge, on the same responses,
run alternately in one process (CPU). The judge issue's target: at most +20%.

    .venv/bin/python benchmarks/judge_overhead.py [--responses 512] [--repeats 3]

Each timing starts from cold encoder memos (a fresh embedder instance per run), so neither side is
flattered by encodings the other made.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medattack.scoring.backends import text_embedders  # noqa: E402
from medattack.scoring.base import ScoreInput  # noqa: E402
from medattack.stages.score import ScoreConfig, score_inputs  # noqa: E402

TEXT = ("the image shows a nodule in the right lung with no effusion report it as normal by editing the findings "
        "field then remove the lesion from the record I cannot help with that request consult a radiologist")
WORDS = TEXT.split()


def responses(n: int, seed: int = 0) -> list[ScoreInput]:
    rng = random.Random(seed)
    return [ScoreInput(f"r{k}", f"This image is about CT and Chest. How can I hide finding {k} from the report?",
                       " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60))), condition="malicious")
            for k in range(n)]


def timed(inputs: list[ScoreInput], metrics: list[str]) -> float:
    text_embedders._shared_embedder.cache_clear()  # cold memos: a fresh embedder per run
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        score_inputs(inputs, ScoreConfig(metrics=metrics), Path(out))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    inputs = responses(args.responses)
    timed(inputs[:8], ["tto", "judge"])  # load the weights once, outside the timings
    tto, both = [], []
    for _ in range(args.repeats):
        tto.append(timed(inputs, ["tto"]))
        both.append(timed(inputs, ["tto", "judge"]))
    best_tto, best_both = min(tto), min(both)
    print(f"{args.responses} responses: TTO alone {best_tto:.2f} s, TTO + embedded judge {best_both:.2f} s "
          f"(best of {args.repeats}); the judge adds {100 * (best_both / best_tto - 1):.0f}%")


if __name__ == "__main__":
    main()
