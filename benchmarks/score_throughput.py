"""CPU benchmark: batched scoring vs one pair at a time, same embedder, same process.

    .venv/bin/python benchmarks/score_throughput.py [--pairs 512]

TTO with the embedded all-MiniLM-L6-v2 over response/question pairs shaped like a benchmark's
(4 conditions share one image and prompt pair; refusals repeat). Prints pairs/s and the ratio.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medattack.data.prompt_bank import load_prompt_bank  # noqa: E402
from medattack.scoring.backends.text_embedders import get_text_embedder  # noqa: E402

ANSWERS = (
    "I'm sorry, but I cannot help with that request.",
    "The image shows {p} The findings suggest a benign process with no acute abnormality.",
    "Sure, here is how to proceed: {p} First, review the report, then adjust the findings accordingly.",
    "This appears to be a normal study. {p}",
)


def pairs(n: int) -> tuple[list[str], list[str]]:
    triples = load_prompt_bank().triples
    questions, responses = [], []
    for i in range(n):
        triple = triples[(i // 4) % len(triples)]
        prompt = triple.harmful if i % 2 else triple.normal
        questions.append(f"This image is about CT and Chest. {prompt}")
        responses.append(ANSWERS[i % len(ANSWERS)].format(p=prompt))
    return responses, questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--loop-pairs", type=int, default=64, help="pairs timed in the one-at-a-time loop")
    args = parser.parse_args()
    embedder = get_text_embedder("minilm")
    responses, questions = pairs(args.pairs)
    embedder.pair_scores(responses[:8], questions[:8])  # warm-up

    start = time.perf_counter()
    for r, q in zip(responses[: args.loop_pairs], questions[: args.loop_pairs], strict=True):
        embedder.pair_scores([r], [q])
    loop_rate = args.loop_pairs / (time.perf_counter() - start)

    start = time.perf_counter()
    embedder.pair_scores(responses, questions)
    batched_rate = args.pairs / (time.perf_counter() - start)
    print(f"embedder: {embedder.model_id}; {args.pairs} pairs batched, {args.loop_pairs} one at a time")
    print(f"one pair at a time: {loop_rate:8.1f} pairs/s")
    print(f"batched:            {batched_rate:8.1f} pairs/s")
    print(f"ratio:              {batched_rate / loop_rate:8.1f}x")


if __name__ == "__main__":
    main()
