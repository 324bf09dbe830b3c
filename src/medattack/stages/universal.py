"""The attack stage for a universal attack (attacks/universal.py): one input optimised over the first `train`
selected samples (on the stage's model and every model of the ensemble), then applied to every selected sample
and recorded per sample like any attack, so that `query` replays it on every target.

    attacks/<method>/<model>/
      universal.json                 the input found: suffix, trained_on, models, samples in, loss, steps, seconds
      tensors/_universal.safetensors the perturbation (1, 3, H, W) in pixel units and the suffix ids
      checkpoints/_universal.pt      the optimisation in progress (a killed run resumes it)
      results.jsonl, steps/, images/, tensors/<sample>   the input applied to each sample (AttackRecord.info:
                                     universal, role "train" or "held-out", trained_on: how many samples)

The optimisation runs once per folder; a rerun (or a resumed one) applies the input it wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from medattack.attacks.base import AttackResult, AttackTask, evaluate_fixed
from medattack.attacks.universal import members_of
from medattack.errors import ConfigError
from medattack.folders import AttackFolder
from medattack.models.base import WhiteBoxTarget, load_whitebox
from medattack.records import Sample
from medattack.storage import read_state, write_bytes_atomic, write_json_atomic

NAME = "_universal"  # the folder's files of the universal input (no sample id starts with "_")
KIND = "universal-input"


@dataclass
class UniversalInput:
    """The input found: applied to a sample, it is the suffix after the question and the image plus `delta`."""

    suffix: str
    suffix_ids: list[int]
    delta: torch.Tensor  # (1, 3, H, W) float32, pixel units
    trained_on: list[str]  # sample ids, in the order they joined the objective
    summary: dict[str, Any]

    def apply(self, model: WhiteBoxTarget, task: AttackTask, max_new_tokens: int) -> AttackResult:
        pixels = (task.pixels + self.delta.to(task.pixels.device)).clamp(0.0, 1.0)
        result = evaluate_fixed(model, task, pixels, self.suffix, max_new_tokens, self.suffix_ids)  # the stage's
        # model is the first of the optimisation: its ids are the suffix's exactly
        result.info = {"universal": True, "role": "train" if task.sample_id in self.trained_on else "held-out",
                       "trained_on": len(self.trained_on), "models": self.summary["models"]}
        return result


def read_universal(folder: AttackFolder) -> UniversalInput:
    from safetensors.torch import load_file

    summary = read_state(folder.universal_path, "delete it to optimise the universal input again", KIND)
    tensors = load_file(str(folder.path / AttackFolder.tensor_name(NAME)))
    return UniversalInput(summary["suffix"], tensors["suffix_ids"].tolist(), tensors["delta"],
                          list(summary["trained_on"]), summary)


def optimise_universal(worker: Any, train: list[Sample]) -> None:
    """Optimise the folder's universal input on `train` (resuming a checkpoint) unless it is written already.
    `worker` is the stage's AttackWorker: its model, attack, run, folder and config."""
    from safetensors.torch import save

    from medattack.stages.attack import FileCheckpoint, build_task

    folder, config = worker.folder, worker.method_config
    if folder.universal_path.exists():
        return
    if not train:
        raise ConfigError(f"{worker.config.method}: no selected sample to optimise on (check --conditions, --tasks).")
    extra = [load_whitebox(spec, **({"device": worker.config.device} if worker.config.device else {}))
             for spec in config.models]
    models = [worker.model, *extra]
    tasks = [[build_task(model, worker.run, sample, worker.config.seed, worker.needs) for sample in train]
             for model in models]
    checkpoint = FileCheckpoint(folder.checkpoint_path(NAME))
    result = worker.attack.run_many(members_of(models, tasks), len(models), checkpoint, worker.config.seed)
    summary = {"suffix": result.suffix, "trained_on": [s.sample_id for s in train[:result.active]],
               "offered": len(train), "active": result.active, "models": [m.name for m in models],
               "success": result.success, "loss": result.loss, "steps": len(result.steps),
               "seconds": round(result.seconds, 3), "losses": [s.loss for s in result.steps], **result.info}
    write_bytes_atomic(folder.path / AttackFolder.tensor_name(NAME), save({
        "delta": result.delta.float().contiguous(), "suffix_ids": torch.tensor(result.suffix_ids, dtype=torch.long)}))
    write_json_atomic(folder.universal_path, json.loads(json.dumps(summary)), KIND)
    checkpoint.clear()
