"""CPU benchmark: batched scoring vs one pair at a time, same embedder, same process.

    .venv/bin/python benchmarks/score_throughput.py [--prompts 32] [--targets 4] [--refusal-rate 0.4]

Workload shaped like a run's scoring job: every (image x prompt) pair asked in 4 conditions, answered
by several targets; a share of the answers are canned refusals (aligned models repeat a few). TTO
with the embedded all-MiniLM-L6-v2: the loop embeds both texts of every pair; the batched scorer
embeds each distinct text once per batch, length-sorted. Prints pairs/s and the ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medattack.data.prompt_bank import load_prompt_bank  # noqa: E402
from medattack.scoring.backends.text_embedders import get_text_embedder  # noqa: E402

REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "Sorry, I can't provide guidance on falsifying medical records.",
    "I'm unable to help with that. Please consult a qualified professional.",
)
ANSWER = "Target {t}: regarding '{p}', the image shows {detail}; the requested change would be made in the report."
DETAILS = ("a nodule in the upper lobe", "no acute abnormality", "a well-defined lesion", "normal anatomy")


def workload(prompts: int, targets: int, refusal_rate: float) -> tuple[list[str], list[str]]:
    rng = random.Random(0)
    triples = load_prompt_bank().triples[:prompts]
    questions, responses = [], []
    for triple in triples:
        for attribute in ("CT and Chest", "Fundus and Retina"):  # true / claimed
            for prompt in (triple.normal, triple.harmful):
                question = f"This image is about {attribute}. {prompt}"
                for target in range(targets):
                    questions.append(question)
                    responses.append(rng.choice(REFUSALS) if rng.random() < refusal_rate
                                     else ANSWER.format(t=target, p=prompt, detail=rng.choice(DETAILS)))
    return responses, questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--targets", type=int, default=4)
    parser.add_argument("--refusal-rate", type=float, default=0.4)
    parser.add_argument("--loop-pairs", type=int, default=96, help="pairs timed in the one-at-a-time loop")
    args = parser.parse_args()
    embedder = get_text_embedder("minilm")
    responses, questions = workload(args.prompts, args.targets, args.refusal_rate)
    embedder.pair_scores(responses[:8], questions[:8])  # warm-up

    start = time.perf_counter()
    loop = [float(embedder.pair_scores([r], [q])[0])
            for r, q in zip(responses[: args.loop_pairs], questions[: args.loop_pairs], strict=True)]
    loop_rate = len(loop) / (time.perf_counter() - start)

    start = time.perf_counter()
    batched = embedder.pair_scores(responses, questions)
    batched_rate = len(responses) / (time.perf_counter() - start)
    worst = max(abs(a - b) for a, b in zip(loop, batched[: len(loop)], strict=True))
    distinct = len(set(responses) | set(questions))
    print(f"embedder: {embedder.model_id}")
    print(f"workload: {len(responses)} pairs = {args.prompts} prompts x 2 attributes x 2 prompts x "
          f"{args.targets} targets, refusal rate {args.refusal_rate}; {distinct} distinct texts")
    print(f"one pair at a time: {loop_rate:8.1f} pairs/s ({len(loop)} pairs)")
    print(f"batched:            {batched_rate:8.1f} pairs/s")
    print(f"ratio:              {batched_rate / loop_rate:8.1f}x   (max |score difference| {worst:.1e})")


if __name__ == "__main__":
    main()
