"""CPU benchmark: the score stage vs one pair at a time, same embedder, same process.

    .venv/bin/python benchmarks/score_throughput.py [--samples 32] [--targets 4] [--refusal-rate 0.4]

Workload shaped like a run's scoring job: each sample (an image with its known attribute and a
normal / harmful prompt pair) asked in the 4 conditions, answered by several targets; a share of
the answers are canned refusals (aligned models repeat a few). Metrics TTO, TIO and TII with the
embedded all-MiniLM-L6-v2 (TIO and TII through the metadata proxy).

- one pair at a time (the original loop): every metric of every response scored on its own, both
  texts encoded each time, no encoding kept;
- batched (the score stage, `score_inputs`, one call per target as `medattack score` makes them):
  distinct texts encoded once in length-sorted batches, kept across metrics, batches and targets.

Prints pairs/s (one pair = one response x one metric) and the ratio, for TTO alone and for the three
metrics, and the encoder's own batched vs one-text throughput (the part that batching alone can buy).
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from medattack.data.prompt_bank import load_prompt_bank  # noqa: E402
from medattack.data.taxonomy import load_taxonomy  # noqa: E402
from medattack.records import question_text  # noqa: E402
from medattack.scoring.backends.memo import EncodingMemo  # noqa: E402
from medattack.scoring.backends.text_embedders import MeanPoolConfig, MeanPoolEmbedder, get_text_embedder  # noqa: E402
from medattack.scoring.base import SCORERS, ScoreInput  # noqa: E402
from medattack.stages.score import ScoreConfig, score_inputs  # noqa: E402

METRICS = ("tto", "tio", "tii")
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "Sorry, I can't provide guidance on falsifying medical records.",
    "I'm unable to help with that. Please consult a qualified professional.",
)
ANSWER = "Target {t}: regarding '{p}', the image shows {detail}; the requested change would be made in the report."
DETAILS = ("a nodule in the upper lobe", "no acute abnormality", "a well-defined lesion", "normal anatomy")


def workload(samples: int, targets: int, refusal_rate: float, image_dir: Path) -> list[list[ScoreInput]]:
    """Per target, its responses: samples x 4 conditions."""
    rng = random.Random(0)
    triples = load_prompt_bank().triples[:samples]
    attributes = [c.attribute for c in load_taxonomy().categories]
    per_target: list[list[ScoreInput]] = [[] for _ in range(targets)]
    for k, triple in enumerate(triples):
        image = image_dir / f"{k}.png"
        Image.fromarray(np.full((8, 8, 3), k, dtype=np.uint8)).save(image)
        true, claimed = rng.sample(attributes, 2)
        conditions = {"normal": (true, triple.normal), "mismatch": (claimed, triple.normal),
                      "malicious": (true, triple.harmful), "both": (claimed, triple.harmful)}
        for condition, (attribute, prompt) in conditions.items():
            question = question_text(attribute, prompt)
            for target in range(targets):
                response = (rng.choice(REFUSALS) if rng.random() < refusal_rate
                            else ANSWER.format(t=target, p=prompt, detail=rng.choice(DETAILS)))
                per_target[target].append(ScoreInput(
                    f"{k}:{condition}:{target}", question, response, condition=condition, prompt=prompt,
                    shown_attribute=attribute, true_attribute=true, image_path=str(image)))
    return per_target


def one_pair_scorers(embedder: MeanPoolEmbedder) -> dict[str, object]:
    """The three scorers on an embedder that keeps nothing between calls."""
    scorers = {name: SCORERS[name]() for name in METRICS}
    scorers["tto"].embedder = embedder
    for name in ("tio", "tii"):
        scorers[name].backend.embedder = embedder
    return scorers


def loop_rate(scorers: dict[str, object], metrics: tuple[str, ...], inputs: list[ScoreInput]) -> float:
    start = time.perf_counter()
    for item in inputs:
        for name in metrics:
            scorers[name].score([item])
    return len(inputs) * len(metrics) / (time.perf_counter() - start)


def stage_rate(metrics: tuple[str, ...], per_target: list[list[ScoreInput]], out: Path) -> float:
    get_text_embedder("minilm").memo = EncodingMemo(MeanPoolConfig().memo_mib)  # start cold
    config = ScoreConfig(metrics=metrics)
    start = time.perf_counter()
    for target, inputs in enumerate(per_target):
        score_inputs(inputs, config, out / "-".join(metrics) / str(target))
    return sum(map(len, per_target)) * len(metrics) / (time.perf_counter() - start)


def encoder_rates(embedder: MeanPoolEmbedder, texts: list[str]) -> tuple[float, float]:
    """Texts/s of the encoder alone: one text per call, and all in length-sorted batches."""
    start = time.perf_counter()
    for text in texts[:64]:
        embedder.embed([text])
    single = 64 / (time.perf_counter() - start)
    start = time.perf_counter()
    embedder.embed(texts)
    return single, len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--targets", type=int, default=4)
    parser.add_argument("--refusal-rate", type=float, default=0.4)
    parser.add_argument("--loop-responses", type=int, default=48, help="responses timed in the one-pair loop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        per_target = workload(args.samples, args.targets, args.refusal_rate, Path(tmp))
        everything = [item for inputs in per_target for item in inputs]
        loop_inputs = random.Random(1).sample(everything, args.loop_responses)
        plain = MeanPoolEmbedder(MeanPoolConfig(memo_mib=0))
        scorers = one_pair_scorers(plain)
        loop_rate(scorers, METRICS, loop_inputs[:4])  # warm-up
        texts = list(dict.fromkeys(t for i in everything for t in (i.response, i.question)))
        single, batched = encoder_rates(plain, texts)
        print(f"embedder: {plain.model_id}")
        print(f"workload: {args.samples} samples x 4 conditions x {args.targets} targets = {len(everything)} "
              f"responses, refusal rate {args.refusal_rate}; {len(texts)} distinct responses and questions")
        print(f"encoder alone: one text per call {single:7.1f} texts/s, batched {batched:7.1f} texts/s "
              f"({batched / single:.1f}x)")
        for metrics in (("tto",), METRICS):
            loop = loop_rate(scorers, metrics, loop_inputs)
            stage = stage_rate(metrics, per_target, Path(tmp) / "scores")
            print(f"{' + '.join(metrics):15s} one pair at a time {loop:8.1f} pairs/s | score stage {stage:8.1f} "
                  f"pairs/s | ratio {stage / loop:5.1f}x")


if __name__ == "__main__":
    main()
