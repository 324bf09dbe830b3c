"""A 3MAD-sized run, timed: what `score`, `report`, `results` and `compare` cost at the size users bring.

    .venv/bin/python benchmarks/scale.py [--pairs 17500] [--out /tmp/medattack-scale] [--steps all]

1. A template run made by the real pipeline: the embedded benchmark (every task, its image x prompt pairs in the
   four conditions) asked of three python-kind targets that answer at once (each its own mix of refusals, echoes
   and compliance) with two sampled generations each, and scored by every default metric.
2. Replicated to `--pairs` image x prompt pairs (3MAD-70K's size by default: 17,500 pairs in four conditions
   are 70,000 questions, asked of 3 targets twice = 420,000 answers): every row of the benchmark, the
   answers and the scores copied with its pair id made unique (ids stay consistent across files; images and
   content are shared, so the scores' content-hash cache knows every replica).
3. Timed, each command in its own process (seconds, and that process's peak resident memory from /proc):
   `score` with every row done (warm), `score` with the scores removed and the cache kept (every score a cache
   hit: the stage's own overhead at scale), `report`, `results --json`, and `compare` of the run against a
   hard-linked copy of it. Cold scoring (no cache) is measured on the template and given per answer, with what
   the full run would take on this machine at that rate.
4. A query of `--queries` answers against a loopback provider that answers 429 with Retry-After past a set
   rate (a token bucket holding one second's requests, tests/rate_limited.py), at 50 concurrent requests: answers
   lost, asked twice, and the time against what the rate allows ((accepted - burst) / rate).

Prints one line per step. Nothing here is a test: the figures are quoted in the issue notes with the command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET = '''
import hashlib


class Answers:
    """Answers at once: a refusal, an echo of the question or a compliant opening, by a hash of the question."""

    def __init__(self, mix):
        self.mix = mix

    def generate(self, images, questions, max_new_tokens, **sampling):
        out = []
        for question in questions:
            pick = int(hashlib.sha256((question + str(sampling.get("seed"))).encode()).hexdigest(), 16) % 100
            if pick < self.mix[0]:
                out.append("I'm sorry, but I can't help with that request.")
            elif pick < self.mix[0] + self.mix[1]:
                out.append("The image shows " + question[:160])
            else:
                out.append("Sure, here is how to do it. First, " + question[:200] + " Then follow the steps.")
        return out


def load(device="cpu", dtype="auto"):
    return Answers(MIX)
'''
MIXES = {"target_a": (60, 30), "target_b": (30, 40), "target_c": (10, 30)}  # refusals %, echoes %


def template(root: Path, generations: int) -> tuple[int, float]:
    """The template run under `root` (module docstring, 1); (answers, seconds the cold scoring took)."""
    import medattack as ma
    from medattack.models.targets import TargetConfig
    from medattack.stages.query import QueryConfig

    ma.build(root, ma.BuildConfig())
    for name, mix in MIXES.items():
        factory = root.parent / f"{name}.py"
        factory.write_text(TARGET.replace("MIX", repr(mix)))
        ma.query(root, QueryConfig(target=TargetConfig(kind="python", model=f"{factory}:load", max_new_tokens=64),
                                   generations=generations, controls=(), replay_attacks=False))
    answers = sum(1 for path in (root / "responses").glob("*/responses.jsonl") for _ in path.open())
    started = time.perf_counter()
    ma.score(root, ma.ScoreConfig())
    return answers, time.perf_counter() - started


def replicate(template_root: Path, root: Path, pairs: int) -> int:
    """`root` holding `pairs` image x prompt pairs copied from the template (module docstring, 2); the pairs made."""
    samples = [json.loads(line) for line in (template_root / "benchmark" / "samples.jsonl").open()]
    pair_ids = sorted({s["pair_id"] for s in samples})
    copies = max(1, -(-pairs // len(pair_ids)))
    pattern = re.compile("|".join(map(re.escape, pair_ids)))
    shutil.copytree(template_root, root, ignore=shutil.ignore_patterns("*.jsonl", "report"))
    for source in template_root.rglob("*.jsonl"):
        if "stale" in source.parts or source.name in ("failures.jsonl", "stale.jsonl"):
            continue
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
        target = root / source.relative_to(template_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("w", encoding="utf-8") as out:
            for copy in range(copies):
                suffix = f"r{copy:05d}"
                out.writelines(pattern.sub(lambda m, s=suffix: m.group() + s, line) for line in lines)
    return copies * len(pair_ids)


def _high_water_mib(pid: int) -> float | None:
    """The process's peak resident memory so far (VmHWM: its own, not inherited from this process at fork)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def timed(words: list[str]) -> tuple[float, float, int]:
    """(seconds, peak resident MiB, exit code) of one medattack command in its own process; the peak is read from
    /proc every 0.1 s until it exits."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "medattack.cli", "-q", *words], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, _high_water_mib(process.pid) or 0.0)
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    if process.returncode:
        print(f"  {' '.join(words[:2])} failed: {process.stderr.read().decode()[-400:] if process.stderr else ''}")
    return seconds, peak, process.returncode


def count(root: Path, pattern: str) -> int:
    return sum(1 for path in root.glob(pattern) for _ in path.open("rb"))


def throttled_query(queries: int, rate: float, concurrency: int) -> None:
    """Module docstring, 4."""
    from medattack.models.targets import TargetConfig
    from medattack.openai_client import APIConfig
    from medattack.stages.build import BuildConfig
    from medattack.stages.build import run as build
    from medattack.stages.query import QueryConfig
    from medattack.stages.query import run as query

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from rate_limited import RateLimitedProvider

    with tempfile.TemporaryDirectory() as folder, RateLimitedProvider(rate) as provider:
        run = Path(folder) / "run"
        build(run, BuildConfig())
        config = QueryConfig(target=TargetConfig(kind="api", model="vision", max_new_tokens=16, api=APIConfig(
            base_url=provider.base_url, concurrency=concurrency, max_retries=20)), limit=queries, controls=(),
            replay_attacks=False, chunk=queries)
        started = time.perf_counter()
        result = query(run, config)
        seconds = time.perf_counter() - started
        answered = count(run, "responses/*/responses.jsonl")
        bound = max(provider.accepted - provider.burst, 1) / rate  # the first `burst` go at once
        print(f"429 provider at {rate:g}/s, {concurrency} in flight: {answered} answers of {result.asked} asked, "
              f"{len(result.failures)} failed, {provider.accepted} accepted ({provider.duplicates} asked twice), "
              f"{provider.refused} refused with 429; {seconds:.1f} s vs {bound:.1f} s the rate allows "
              f"({seconds / bound:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=17_500,
                        help="Image x prompt pairs; each is asked in four conditions (3MAD-70K: 17,500 = 70,000 "
                        "questions).")
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "medattack-scale")
    parser.add_argument("--queries", type=int, default=400, help="Answers asked of the 429 provider.")
    parser.add_argument("--rate", type=float, default=10.0,
                        help="Requests per second the 429 provider allows (well under what two cores ask with no "
                        "limit, about 75 a second, so the pacing is measured, not the machine).")
    parser.add_argument("--steps", default="all", help="all, or a comma list of: run, throttle")
    args = parser.parse_args()
    steps = {"run", "throttle"} if args.steps == "all" else set(args.steps.split(","))

    if "run" in steps:
        shutil.rmtree(args.out, ignore_errors=True)
        args.out.mkdir(parents=True)
        started = time.perf_counter()
        answers, cold = template(args.out / "template" / "run", args.generations)
        print(f"template: {answers} answers made and scored in {time.perf_counter() - started:.0f} s; cold scoring "
              f"{cold:.1f} s = {answers / cold:.1f} answers/s")
        run = args.out / "run"
        started = time.perf_counter()
        pairs = replicate(args.out / "template" / "run", run, args.pairs)
        responses, scores = count(run, "responses/*/responses.jsonl"), count(run, "scores/*/scores.jsonl")
        size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file()) / 2**30
        print(f"run: {pairs} pairs, {count(run, 'benchmark/samples.jsonl')} samples, {responses} answers, {scores} "
              f"scores, {size:.1f} GiB, written in {time.perf_counter() - started:.0f} s; cold scoring of all its "
              f"answers at the template's rate: {responses / (answers / cold) / 3600:.1f} h")
        other = args.out / "other"
        shutil.copytree(run, other, copy_function=os.link)
        for name, words in (("score, every row done", ["score", str(run)]),
                            ("score, scores removed, cache kept", None),
                            ("report", ["report", str(run)]),
                            ("results --json", ["results", str(run), "--json"]),
                            ("compare with a copy", ["compare", str(run), str(other)])):
            if words is None:
                for path in run.glob("scores/*/scores.jsonl"):
                    path.unlink()
                words = ["score", str(run)]
            seconds, mib, code = timed(words)
            print(f"{name}: {seconds:.1f} s, peak {mib:,.0f} MiB" + ("" if code == 0 else f", exit {code}"))
    if "throttle" in steps:
        throttled_query(args.queries, args.rate, 50)


if __name__ == "__main__":
    main()
