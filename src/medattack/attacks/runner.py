"""The attack stage: run one attack method with one white-box model over a run's samples.

    runs/<name>/attacks/<method>/<model>/
      config.json              method + stage config (a different config in the same folder is refused)
      results.jsonl            one row per finished sample: suffix, success, response, paths, seconds
      steps/<sample>.jsonl     per-step log: step, loss, winning modality, success, seconds
      images/<sample>.png      adversarial image for people (model input resolution)
      tensors/<sample>.safetensors   exact adversarial pixels (1, 3, H, W) in [0, 1] and suffix ids
      checkpoints/<sample>.pt  state of a sample in progress (deleted when it finishes)
      failures.jsonl           samples that could not be attacked, with the reason

A finished sample is never redone; an interrupted one restarts from its last step's checkpoint.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medattack.attacks.base import ATTACKS, AttackResult, AttackTask
from medattack.config import from_mapping, option, to_dict
from medattack.data.builder import load_samples
from medattack.data.image_io import encode_png, load_image
from medattack.data.typography import render_text_band
from medattack.errors import ConfigError, MedattackError
from medattack.executor import ExecutorConfig, open_pool
from medattack.models.base import WhiteBoxTarget, load_whitebox
from medattack.rundir import (
    Progress,
    RunDir,
    append_jsonl,
    claim_folder,
    folder_name,
    read_jsonl,
    write_bytes_atomic,
    write_jsonl_atomic,
)
from medattack.scoring.keyword import keyword_success

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class AttackStageConfig:
    method: str = option("mcm", "Attack method (see `medattack list attacks`).")
    model: str = option("embedded", "White-box model: embedded, tiny, or a hub id / local path of a LLaVA model.")
    conditions: tuple[str, ...] = option(("malicious", "both"), "Sample conditions to attack.")
    tasks: tuple[str, ...] | None = option(None, "Only samples of these clinical tasks.")
    limit: int | None = option(None, "Attack at most this many samples (in table order).")
    seed: int = option(0, "Seed of every random choice of the attack.")
    device: str | None = option(None, "torch device (default: cuda when available, else cpu).")
    max_batch: int = option(512, "GCG candidates per forward pass at most (halved on out-of-memory).")
    options: dict[str, Any] | None = option(None, "Method settings, e.g. {rounds: 5} (see `medattack list attacks`).")


def attack_folder(run_root: Path, method: str, model_name: str) -> Path:
    return run_root / "attacks" / method / folder_name(model_name)


class FileCheckpoint:
    """torch.save'd dict, replaced atomically after every step."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged checkpoint only costs the sample a restart
            log.warning("ignoring unreadable checkpoint %s (%s)", self.path, exc)
            return None

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def select_samples(samples: list[dict[str, Any]], config: AttackStageConfig) -> list[dict[str, Any]]:
    chosen = [s for s in samples if s["condition"] in config.conditions
              and (config.tasks is None or s["task"] in config.tasks)]
    return chosen[: config.limit] if config.limit is not None else chosen


def _mask(model: WhiteBoxTarget, benchmark: Path, sample: dict[str, Any]) -> torch.Tensor | None:
    if not sample.get("mask_file"):
        return None
    mask = load_image(benchmark / sample["mask_file"]).pixels
    return (model.preprocess(mask)[:, :1] > 0.5).float()  # (1, 1, H, W)


def build_task(model: WhiteBoxTarget, benchmark: Path, sample: dict[str, Any], seed: int,
               typographic: bool) -> AttackTask:
    image = load_image(benchmark / sample["image_file"]).pixels
    typo = None
    if typographic:
        typo_image = (load_image(benchmark / sample["typographic_image_file"]).pixels
                      if sample.get("typographic_image_file") else render_text_band(image, sample["key_phrase"]))
        typo = model.preprocess(typo_image)
    return AttackTask(sample_id=sample["sample_id"], question=sample["question"], target=sample["target"],
                      pixels=model.preprocess(image), seed=seed, mask=_mask(model, benchmark, sample),
                      typographic_pixels=typo)


def _to_png(pixels: torch.Tensor) -> bytes:
    array = (pixels[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return encode_png(array)


def _tensor_bytes(result: AttackResult) -> bytes:
    """The exact adversarial pixels (1, 3, H, W) and suffix ids as safetensors bytes."""
    from safetensors.torch import save

    return save({"pixels": result.pixels.float().contiguous(),
                 "suffix_ids": torch.tensor(result.suffix_ids, dtype=torch.long)})


@dataclass
class AttackStageResult:
    folder: Path
    results: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    attempted: int  # samples run in this call (others were already done)


class AttackWorker:
    """Loads the white-box model once and attacks one sample per call (a local or a Ray worker).

    The outcome is what the stage writes: the result row and the sample's files as bytes, or a failure.
    Checkpoints go to the run directory as the attack runs, so a lost worker's sample resumes.
    """

    def __init__(self, config: AttackStageConfig, method_options: dict[str, Any], run_root: str,
                 model: WhiteBoxTarget | None = None) -> None:
        self.config = config
        self.run = RunDir(run_root)
        attack_cls = ATTACKS[config.method]
        self.method_config = from_mapping(attack_cls.config_class, method_options, f"{config.method} options")
        self.attack = attack_cls(self.method_config)
        self.needs_typo = getattr(attack_cls, "needs_typographic", False)
        self.model = model or load_whitebox(config.model, **({"device": config.device} if config.device else {}),
                                            max_batch=config.max_batch)
        self.folder = attack_folder(self.run.root, config.method, self.model.name)

    def name(self) -> str:
        return self.model.name

    def run_sample(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample_id = sample["sample_id"]
        checkpoint = FileCheckpoint(self.folder / "checkpoints" / f"{sample_id}.pt")
        try:
            task = build_task(self.model, self.run.benchmark, sample, self.config.seed, self.needs_typo)
            result = self.attack.run(self.model, task, checkpoint)
        except MedattackError as exc:
            log.warning("sample %s failed: %s", sample_id, exc)
            return {"failure": {"sample_id": sample_id, "error": type(exc).__name__, "problem": str(exc)}}
        row = {
            "sample_id": sample_id, "pair_id": sample["pair_id"], "condition": sample["condition"],
            "task": sample["task"], "category": sample["category"], "method": self.config.method,
            "model": self.model.name, "seed": self.config.seed, "question": sample["question"],
            "target": sample["target"], "suffix": result.suffix, "suffix_ids": result.suffix_ids,
            "success": result.success, "keyword_success": keyword_success(result.response, sample["question"]),
            "response": result.response, "best_loss": result.best_loss, "n_steps": len(result.steps),
            "seconds": round(result.seconds, 3), "linf": float((result.pixels - task.pixels.cpu()).abs().max()),
            "image_file": f"images/{sample_id}.png", "tensor_file": f"tensors/{sample_id}.safetensors",
            "info": result.info,
        }
        return {"row": row, "steps": [vars(s) for s in result.steps], "png": _to_png(result.pixels),
                "tensors": _tensor_bytes(result)}


def run_attack_stage(
    run_dir: str | Path, config: AttackStageConfig, method_options: dict[str, Any] | None = None, *,
    model: WhiteBoxTarget | None = None, force: bool = False, progress: Progress | None = None,
    executor: ExecutorConfig | None = None,
) -> AttackStageResult:
    """Attack the selected samples of a built run; resumable, see the module docstring. With a ray
    executor the samples are spread over actors that each load the model once."""
    run = RunDir(run_dir)
    samples = load_samples(run.root)
    unknown = set(config.conditions) - {"normal", "mismatch", "malicious", "both"}
    if unknown:
        raise ConfigError(f"unknown condition(s) {sorted(unknown)}; use normal, mismatch, malicious, both.")
    options = method_options or config.options or {}
    method_config = from_mapping(ATTACKS[config.method].config_class, options, f"{config.method} options")
    local = executor is None or executor.kind == "local"
    pool = open_pool(executor, partial(AttackWorker, config, options, str(run.root), model if local else None))
    try:
        model_name = pool.call_any("name")
        folder = attack_folder(run.root, config.method, model_name)
        stage = {k: v for k, v in to_dict(config).items() if k != "options"}  # recorded resolved, under "method"
        record = {"stage": stage, "method": to_dict(method_config), "model_name": model_name}
        claim_folder(folder, record, force, "the method or model")
        run.record_stage(f"attack/{config.method}/{folder_name(model_name)}", record, config.seed)

        results_path, failures_path = folder / "results.jsonl", folder / "failures.jsonl"
        done = {r["sample_id"] for r in read_jsonl(results_path)}
        chosen = select_samples(samples, config)
        todo = [s for s in chosen if s["sample_id"] not in done]
        failures = [f for f in read_jsonl(failures_path) if f["sample_id"] not in {s["sample_id"] for s in todo}]
        label = f"{config.method} on {model_name}"
        for finished, (index, outcome) in enumerate(pool.map("run_sample", todo)):
            if progress:
                progress(label, len(chosen) - len(todo) + finished, len(chosen))
            sample_id = todo[index]["sample_id"]
            if isinstance(outcome, Exception) or "failure" in outcome:
                failures.append(outcome["failure"] if isinstance(outcome, dict) else {
                    "sample_id": sample_id, "error": type(outcome).__name__, "problem": str(outcome)})
                write_jsonl_atomic(failures_path, failures)
                continue
            write_jsonl_atomic(folder / "steps" / f"{sample_id}.jsonl", outcome["steps"])
            write_bytes_atomic(folder / "images" / f"{sample_id}.png", outcome["png"])
            write_bytes_atomic(folder / "tensors" / f"{sample_id}.safetensors", outcome["tensors"])
            append_jsonl(results_path, outcome["row"])
            FileCheckpoint(folder / "checkpoints" / f"{sample_id}.pt").clear()
        write_jsonl_atomic(failures_path, failures)
    finally:
        pool.close()
    if progress:
        progress(label, len(chosen), len(chosen))
    return AttackStageResult(folder, read_jsonl(results_path), failures, len(todo))
