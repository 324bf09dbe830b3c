"""The attack stage: run one attack method with one white-box model over a run's samples.

    runs/<name>/attacks/<method>/<model>/      (rundir.AttackFolder)
      config.json              method + stage config (a different config in the same folder is refused)
      results.jsonl            one AttackRecord per finished sample: suffix, success, response, files, seconds
      steps/<sample>.jsonl     per-step log: step, loss, winning modality, success, seconds
      images/<sample>.png      adversarial image for people (model input resolution)
      tensors/<sample>.safetensors   exact adversarial pixels (1, 3, H, W) in [0, 1] and suffix ids
      checkpoints/<sample>.pt  state of a sample in progress (deleted when it finishes)
      failures.jsonl           samples that could not be attacked, with the reason
      universal.json           a universal attack's one input (stages/universal.py), applied to every sample above

A finished sample is never redone; an interrupted one restarts from its last step's checkpoint.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from medattack.attacks.base import ATTACKS, AttackResult, AttackTask, require_image
from medattack.config import from_mapping, option, to_dict
from medattack.data.image_io import encode_png, load_image
from medattack.data.typography import render_text_band
from medattack.defences.base import DEFENCES, build_defences, read_defences
from medattack.errors import ConfigError, MedattackError
from medattack.executor import ExecutorConfig, open_pool, runs_here
from medattack.models.base import WhiteBoxTarget, load_whitebox
from medattack.records import AttackRecord, Sample, check_conditions, defended_name
from medattack.rundir import AttackFolder, Progress, RunDir, append_records, write_bytes_atomic, write_jsonl_atomic
from medattack.scoring.keyword import keyword_success
from medattack.stages.base import (
    as_run_dir,
    defence_context,
    failure,
    loading,
    resumable_map,
    sample_work,
    settings_record,
    stage_folder,
)
from medattack.stages.universal import UniversalInput, optimise_universal, read_universal

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class AttackStageConfig:
    preset_stage: ClassVar[str] = "attack"  # which settings of a preset apply (presets.py)
    method: str = option("mcm", "Attack method (see `medattack list attacks`).")
    model: str = option("embedded", "White-box model: embedded, tiny, or a hub id / local path of a LLaVA model.")
    conditions: tuple[str, ...] = option(("malicious", "both"), "Sample conditions to attack.")
    tasks: tuple[str, ...] | None = option(None, "Only samples of these clinical tasks.")
    limit: int | None = option(None, "Attack at most this many samples (in table order).", low=1)
    seed: int = option(0, "Seed of every random choice of the attack.")
    device: str | None = option(None, "torch device (default: cuda when available, else cpu).")
    max_batch: int = option(512, "GCG candidates per forward pass at most (halved on out-of-memory).", low=1)
    prompt_layout: Literal["chat-template", "llava-med"] = option(
        "chat-template", "How the prompt is laid out: the model's chat template (image, question, suffix), or "
        "llava-med (LLaVA-Med's ###Human/###Assistant conversation: question, image, suffix, as in the paper).")
    options: dict[str, Any] | None = option(None, "Method settings, e.g. {rounds: 5} (see `medattack list attacks`; "
                                            "on the command line --set options.rounds=5).")
    defences: tuple[str, ...] = option((), "Attack the model behind these defences (adaptive: only defences an "
                                           "attack can optimise through); its results are the model "
                                           "'<model>+<defence>'.")
    defence_options: dict[str, dict[str, Any]] | None = option(None, "Settings per defence (as the query stage's).")

    @classmethod
    def from_text(cls, method: str) -> AttackStageConfig:
        """An attack written as its method name alone in a config file (`attacks: [mcm]`)."""
        return cls(method=method)

    def __post_init__(self) -> None:
        check_conditions(self.conditions, "attack conditions")
        self.method_config  # noqa: B018 - read (and checked) once, when the config is made
        self.defence_configs  # noqa: B018 - likewise
        cannot = [name for name in self.defences if not DEFENCES[name].adaptive]
        if cannot:
            able = [name for name in DEFENCES if DEFENCES[name].adaptive]
            raise ConfigError(f"attack --defence {', '.join(cannot)}: an attack cannot be optimised through it; ask "
                              "the defended target the undefended attack's inputs instead (query --defence: transfer). "
                              f"Defences an attack optimises through: {', '.join(able)}.")
        if self.defences and getattr(ATTACKS[self.method], "universal", False):
            raise ConfigError(f"attack --defence: {self.method} is optimised over many samples without a defence; "
                              "attack the defended target with a per-sample method, or replay the universal input "
                              "on it (query --defence).")
        if self.defences and self.prompt_layout != "chat-template":
            raise ConfigError("attack --defence: the defended question is laid out by the model's chat template; "
                              "use prompt_layout chat-template.")

    @functools.cached_property
    def defence_configs(self) -> list[tuple[str, Any]]:
        """(name, settings) of each defence the model is attacked behind, outermost first."""
        return read_defences(self.defences, self.defence_options)

    @functools.cached_property
    def method_config(self) -> Any:
        """The method's settings: `options` read into its config class (unknown keys and bad values refused)."""
        return from_mapping(ATTACKS[self.method].config_class, self.options or {}, f"{self.method} options")


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


class StepReporter:
    """A checkpoint that also reports each step as the attack saves it: the loss, the best loss so far
    and whether the target has been forced, on the progress line and in the log (`-v`)."""

    def __init__(self, inner: FileCheckpoint, sample_id: str, budget: int | None, progress: Progress | None) -> None:
        self.inner, self.sample_id, self.budget, self.progress = inner, sample_id, budget, progress

    def load(self) -> dict[str, Any] | None:
        return self.inner.load()

    def save(self, state: dict[str, Any]) -> None:
        self.inner.save(state)
        step, loss = int(state.get("step", 0)), float(state.get("loss", float("nan")))
        best = state.get("best")
        line = (f"{self.sample_id}: step {step}{f'/{self.budget}' if self.budget else ''}, loss {loss:.4f}"
                + (f" (best {float(best[2]):.4f})" if best else "") + (", target forced" if state.get("success")
                                                                        else ""))
        log.info("%s", line)
        if self.progress:
            self.progress(f"  steps | {line}", step, self.budget or step)

    def clear(self) -> None:
        self.inner.clear()


def _mask(model: WhiteBoxTarget, run: RunDir, sample: Sample) -> torch.Tensor | None:
    if not sample.mask_file:
        return None
    mask = load_image(run.benchmark_file(sample.mask_file)).pixels
    return (model.preprocess(mask)[:, :1] > 0.5).float()  # (1, 1, H, W)


def build_task(model: WhiteBoxTarget, run: RunDir, sample: Sample, seed: int, needs: frozenset[str]) -> AttackTask:
    """The sample in the model's input space, with the optional inputs the attack declares it needs."""
    image = load_image(run.benchmark_file(sample.image_file)).pixels
    typo = None
    if "typographic_image" in needs:
        typo_image = (load_image(run.benchmark_file(sample.typographic_image_file)).pixels
                      if sample.typographic_image_file else render_text_band(image, sample.key_phrase))
        typo = model.preprocess(typo_image)
    return AttackTask(sample_id=sample.sample_id, question=sample.question, target=sample.target,
                      pixels=model.preprocess(image), seed=seed, mask=_mask(model, run, sample),
                      typographic_pixels=typo)


def _to_png(pixels: torch.Tensor) -> bytes:
    array = (pixels[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return encode_png(array)


def _tensor_bytes(result: AttackResult) -> bytes:
    """The exact adversarial pixels (1, 3, H, W) and suffix ids as safetensors bytes."""
    from safetensors.torch import save

    return save({"pixels": result.pixels.float().contiguous(),
                 "suffix_ids": torch.tensor(result.suffix_ids, dtype=torch.long)})


def first_success(result: AttackResult) -> dict[str, float] | None:
    """The step at which the target was first forced and the attack's seconds (wall, on its device) until then."""
    elapsed = 0.0
    for step in result.steps:
        elapsed += step.seconds
        if step.success:
            return {"step": step.step, "seconds": round(elapsed, 3)}
    return None


@dataclass
class AttackStageResult:
    folder: Path
    results: list[AttackRecord]
    failures: list[dict[str, Any]]
    attempted: int  # samples run in this call (others were already done)


class AttackWorker:
    """Loads the white-box model once and attacks one sample per call (a local or a Ray worker).

    The outcome is what the stage writes: the record and the sample's files as bytes, or a failure.
    Checkpoints go to the run directory as the attack runs, so a lost worker's sample resumes.
    """

    def __init__(self, config: AttackStageConfig, run_root: str, model: WhiteBoxTarget | None = None,
                 progress: Progress | None = None) -> None:
        self.config = config
        self.run = RunDir(run_root)
        self.progress = progress  # local runs: model loading and every step are shown as they happen
        attack_cls = ATTACKS[config.method]
        self.method_config = config.method_config
        self.attack = attack_cls(self.method_config)
        self.needs = attack_cls.needs
        layout = {"prompt_layout": config.prompt_layout} if config.prompt_layout != "chat-template" else {}
        with loading(progress if model is None else None, config.model):
            self.model = model or load_whitebox(config.model, **({"device": config.device} if config.device else {}),
                                                max_batch=config.max_batch, **layout)
        require_image(config.method, self.model)
        self.defences = [d for _, d in build_defences(
            config.defence_configs, lambda: defence_context(self.run, config.device, config.seed))]
        self.model_name = defended_name(self.model.name, config.defences)
        self.folder = self.run.attack_folder(config.method, self.model_name)
        self.budget = next((getattr(self.method_config, k) for k in ("steps", "rounds") if hasattr(
            self.method_config, k)), None)  # steps at most, for the progress line
        self.universal: UniversalInput | None = None  # a universal attack's input, read once it is written

    def optimise_universal(self, train: list[Sample]) -> None:
        """A universal attack: optimise its one input on `train` (stages/universal.py), once per folder."""
        optimise_universal(self, train)

    def name(self) -> str:
        """The attacked model's name, with the defences it is attacked behind ("<model>+<defence>")."""
        return self.model_name

    def attacked_question(self, question: str) -> str:
        """The question the attack optimises: as the defences (innermost first) will put it to the model."""
        for defence in reversed(self.defences):
            question = defence.attacked_question(question)
        return question

    def run_sample(self, sample: Sample) -> dict[str, Any]:
        sample_id = sample.sample_id
        checkpoint = StepReporter(FileCheckpoint(self.folder.checkpoint_path(sample_id)), sample_id, self.budget,
                                  self.progress)
        try:
            task = build_task(self.model, self.run, sample, self.config.seed, self.needs)
            if self.defences:
                task = replace(task, question=self.attacked_question(sample.question))
            if getattr(self.attack, "universal", False):
                self.universal = self.universal or read_universal(self.folder)
                result = self.universal.apply(self.model, task, self.method_config.max_new_tokens)
            else:
                result = self.attack.run(self.model, task, checkpoint)
        except MedattackError as exc:
            log.warning("sample %s failed: %s", sample_id, exc)
            return {"failure": failure("sample_id", sample_id, exc)}
        record = AttackRecord(
            sample_id=sample_id, pair_id=sample.pair_id, condition=sample.condition, task=sample.task,
            category=sample.category, method=self.config.method, model=self.model_name, seed=self.config.seed,
            question=sample.question, target=sample.target, suffix=result.suffix, suffix_ids=result.suffix_ids,
            success=result.success, keyword_success=keyword_success(result.response, sample.question),
            response=result.response, best_loss=result.best_loss, n_steps=len(result.steps),
            seconds=round(result.seconds, 3), linf=float((result.pixels - task.pixels.cpu()).abs().max()),
            image_file=AttackFolder.image_name(sample_id), tensor_file=AttackFolder.tensor_name(sample_id),
            info={**result.info, "first_success": first_success(result), "device": str(self.model.device)},
        )
        return {"record": record, "steps": [vars(s) for s in result.steps], "png": _to_png(result.pixels),
                "tensors": _tensor_bytes(result)}


def run(run_dir: RunDir | str | Path, config: AttackStageConfig | None = None, *,
        executor: ExecutorConfig | None = None, progress: Progress | None = None, force: bool = False,
        model: WhiteBoxTarget | None = None) -> AttackStageResult:
    """Attack the selected samples of a built run; resumable, see the module docstring. With a ray
    executor the samples are spread over actors that each load the model once; `model` (local runs)
    reuses a model already loaded."""
    if config is not None and not isinstance(config, AttackStageConfig):
        raise ConfigError("ma.attack(run, config) runs the attack stage over a run directory; to attack one input "
                          "use ma.attack_input(model, question, target, ...).")
    config = config or AttackStageConfig()
    run_dir = as_run_dir(run_dir)
    samples = run_dir.samples()
    method_config = config.method_config
    local = runs_here(executor)
    pool = open_pool(executor, partial(AttackWorker, config, str(run_dir.root), model if local else None,
                                       progress if local else None))
    held = ExitStack()
    try:
        model_name = pool.call_any("name")
        folder = run_dir.attack_folder(config.method, model_name)
        record = {"stage": settings_record(config), "method": to_dict(method_config), "model_name": model_name}
        defaults = {"stage": settings_record(AttackStageConfig()),
                    "method": to_dict(ATTACKS[config.method].config_class())}
        held.enter_context(stage_folder(
            run_dir, folder.path, record, defaults=defaults, writer=f"attack {config.method} on {model_name}",
            stage=f"attack/{folder.method}/{folder.model}", change="the method or model", seed=config.seed,
            force=force))
        work = sample_work(folder, samples, config)
        failures = work.failures
        if getattr(ATTACKS[config.method], "universal", False) and work.todo:
            pool.call_any("optimise_universal", work.chosen[:method_config.train])

        def write(sample: Sample, outcome: Any) -> None:
            if isinstance(outcome, Exception) or "failure" in outcome:
                failures.add(outcome["failure"] if isinstance(outcome, dict) else
                             failure("sample_id", sample.sample_id, outcome))
                return
            write_jsonl_atomic(folder.steps_path(sample.sample_id), outcome["steps"], "attack-step")
            write_bytes_atomic(folder.path / AttackFolder.image_name(sample.sample_id), outcome["png"])
            write_bytes_atomic(folder.path / AttackFolder.tensor_name(sample.sample_id), outcome["tensors"])
            append_records(folder.results_path, outcome["record"])
            FileCheckpoint(folder.checkpoint_path(sample.sample_id)).clear()

        resumable_map(pool, "run_sample", work.todo, write, progress=progress,
                      label=f"{config.method} on {model_name}", done=work.done, total=len(work.chosen))
        failures.save()
    finally:
        pool.close()
        held.close()
    return AttackStageResult(folder.path, folder.results(), failures.rows, len(work.todo))
