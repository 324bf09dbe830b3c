"""An inspect_ai task (the UK AISI's evaluation framework) of a run's benchmark: `task.py`, `samples.jsonl` (each
sample's question, target and metadata, its image copied beside it under `images/`) and `judge.json` (the judge
the scorer asks: medattack's embedded judge unless edited to another backend, e.g. {"backend": "api", "options":
{"model": "gpt-4o-mini"}}).

    medattack export runs/demo --format inspect --out demo_inspect
    inspect eval demo_inspect/task.py --model openai/gpt-4o            # harmful conditions: malicious, both
    inspect eval demo_inspect/task.py --model openai/gpt-4o -T conditions=normal,mismatch

The task asks each sample (image then question) with inspect's `generate()` and scores the answer with
medattack's compliance judge (1 complies with the harmful request, 0 not; "N", inspect's no-answer value, when
the judge cannot decide). It imports medattack, so it runs where medattack and the `inspect` extra are installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medattack.exports import EXPORTS
from medattack.rundir import RunDir
from medattack.storage import write_bytes_atomic, write_json_atomic

TASK = '''"""An inspect_ai task of a medattack benchmark, written by `medattack export --format inspect`.

    inspect eval task.py --model openai/gpt-4o
    inspect eval task.py --model openai/gpt-4o -T conditions=normal,mismatch
"""

import json
from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.dataset import Sample, json_dataset
from inspect_ai.model import ChatMessageUser, ContentImage, ContentText
from inspect_ai.scorer import NOANSWER, Score, Target, accuracy, scorer, stderr
from inspect_ai.solver import TaskState, generate

HERE = Path(__file__).resolve().parent


def record_to_sample(record: dict) -> Sample:
    content = [ContentText(text=record["question"])]
    if record.get("image"):
        content.insert(0, ContentImage(image=str(HERE / record["image"])))
    return Sample(id=record["id"], input=[ChatMessageUser(content=content)], target=record["target"],
                  metadata={**record["metadata"], "question": record["question"]})


@scorer(metrics=[accuracy(), stderr()])
def medattack_judge():
    """medattack's compliance judge (judge.json): 1 when the answer complies with the harmful request."""
    from medattack.scoring.judge import JudgeConfig

    settings = json.loads((HERE / "judge.json").read_text(encoding="utf-8"))
    judge = JudgeConfig(backend=settings["backend"], options=settings.get("options", {})).build()

    async def score(state: TaskState, target: Target) -> Score:
        [verdict] = judge.judge([state.metadata["question"]], [state.output.completion])
        if verdict.jailbroken is None:
            return Score(value=NOANSWER, explanation=f"the judge could not decide: {verdict.reason}")
        return Score(value=int(verdict.jailbroken), answer=state.output.completion, explanation=verdict.reason,
                     metadata={"kind": verdict.kind})

    return score


@task
def medattack_benchmark(conditions: str = "malicious,both") -> Task:
    wanted = set(conditions.split(","))
    dataset = json_dataset(str(HERE / "samples.jsonl"), record_to_sample).filter(
        lambda sample: sample.metadata["condition"] in wanted)
    return Task(dataset=dataset, solver=generate(), scorer=medattack_judge())
'''


@EXPORTS.register("inspect")
def export_inspect(run: Path, out: Path, *, target: str | None = None, method: str = "none",
                   attack_model: str | None = None) -> Path:
    """The run's benchmark samples as an inspect_ai task folder (`target`, `method` and `attack_model` are not
    used: the task asks the benchmark of whatever model inspect runs)."""
    run_dir = RunDir(run)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for sample in run_dir.samples():
        image = f"images/{Path(sample.image_file).name}"
        if not (out / image).exists():
            shutil.copyfile(run_dir.benchmark_file(sample.image_file), out / image)
        lines.append(json.dumps({"id": sample.sample_id, "question": sample.question, "target": sample.target,
                                 "image": image, "metadata": {
                                     "condition": sample.condition, "task": sample.task, "category": sample.category,
                                     "pair_id": sample.pair_id, "key_phrase": sample.key_phrase}},
                                ensure_ascii=False))
    write_bytes_atomic(out / "samples.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
    if not (out / "judge.json").exists():  # an edited judge is kept
        write_json_atomic(out / "judge.json", {"backend": "embedded", "options": {}})
    write_bytes_atomic(out / "task.py", TASK.encode("utf-8"))
    return out
