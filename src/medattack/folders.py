"""The folder types of a run directory (rundir.py's layout): each stage folder's paths and its records.

    StageFolder      config.json (the stamp: stamps.py) and failures.jsonl
    AttackFolder     attacks/<method>/<model>/: results, steps, images, tensors, checkpoints
    SearchFolder     blackbox/<method>/<target>/: results, the search tree's nodes and images, caches
    ResponsesFolder  responses/<target>/: a target's answers
    ScoresFolder     scores/<target>/: the scores of those answers and their summary
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medattack.records import AttackRecord, BlackBoxRecord, Response, ScoreRecord, SearchNode
from medattack.stamps import ABOUT_KEY
from medattack.storage import each_record, read_records, read_state


@dataclass(frozen=True)
class StageFolder:
    """A stage's output folder: its config.json (the settings it holds) and failures.jsonl."""

    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    def about(self) -> dict[str, Any]:
        """What the folder's stamp records about it for readers (its `about`, never compared: e.g. the defences'
        traits); {} when it records nothing or has no stamp yet."""
        if not self.config_path.exists():
            return {}
        about = read_state(self.config_path, "query the target again (the stage writes it again)", "stage-config",
                           defaults={}).get(ABOUT_KEY)
        return about if isinstance(about, dict) else {}

    @property
    def failures_path(self) -> Path:
        return self.path / "failures.jsonl"


@dataclass(frozen=True)
class MethodFolder(StageFolder):
    """<kind>/<method>/<model or target>/: one attack method's results.jsonl, one row per sample."""

    @property
    def method(self) -> str:
        return self.path.parent.name

    @property
    def results_path(self) -> Path:
        return self.path / "results.jsonl"

    @property
    def source(self) -> str:
        """How answers to its inputs replayed on a target are labelled: "attack:<method>/<model or target>"."""
        return f"attack:{self.method}/{self.path.name}"


@dataclass(frozen=True)
class AttackFolder(MethodFolder):
    """attacks/<method>/<model>/: one attack method run on one white-box model."""

    run_root: Path

    @property
    def model(self) -> str:
        return self.path.name


    @property
    def target_name(self) -> str:
        """The name its own responses are scored under: "attack__<method>__<model>"."""
        return f"attack__{self.method}__{self.model}"

    def steps_path(self, sample_id: str) -> Path:
        return self.path / "steps" / f"{sample_id}.jsonl"

    def checkpoint_path(self, sample_id: str) -> Path:
        return self.path / "checkpoints" / f"{sample_id}.pt"

    @staticmethod
    def image_name(sample_id: str) -> str:
        """The adversarial PNG, relative to the folder (as AttackRecord.image_file holds it)."""
        return f"images/{sample_id}.png"

    @staticmethod
    def tensor_name(sample_id: str) -> str:
        """The exact adversarial pixels, relative to the folder (AttackRecord.tensor_file)."""
        return f"tensors/{sample_id}.safetensors"

    @property
    def universal_path(self) -> Path:
        """A universal attack's one input (stages/universal.py), applied to every sample of the folder."""
        return self.path / "universal.json"

    def relative(self, name: str) -> str:
        """A file of this folder as a path relative to the run root."""
        return str((self.path / name).relative_to(self.run_root))

    def results(self) -> list[AttackRecord]:
        return read_records(self.results_path, AttackRecord)


@dataclass(frozen=True)
class SearchFolder(MethodFolder):
    """blackbox/<method>/<target>/: one black-box attack method run against one target."""

    @property
    def target(self) -> str:
        return self.path.name

    def nodes_path(self, sample_id: str) -> Path:
        return self.path / "nodes" / f"{sample_id}.jsonl"

    @staticmethod
    def image_name(sample_id: str, node_id: str) -> str:
        """An attempt's moved image, relative to the folder (as SearchNode.image_file holds it)."""
        return f"images/{sample_id}/{node_id}.png"

    def cache_path(self, role: str) -> Path:
        """The content-hash cache of the attacker's or the judge's calls."""
        return self.path / f"{role}.sqlite"

    def nodes(self, sample_id: str) -> list[SearchNode]:
        return read_records(self.nodes_path(sample_id), SearchNode)

    def all_nodes(self) -> list[SearchNode]:
        """Every attempt of every searched sample, finished or not, by sample in name order."""
        return [node for path in sorted((self.path / "nodes").glob("*.jsonl"))
                for node in read_records(path, SearchNode)]

    def results(self) -> list[BlackBoxRecord]:
        return read_records(self.results_path, BlackBoxRecord)


@dataclass(frozen=True)
class ResponsesFolder(StageFolder):
    """responses/<target>/: every answer of one target."""

    @property
    def target(self) -> str:
        return self.path.name

    @property
    def responses_path(self) -> Path:
        return self.path / "responses.jsonl"

    def responses(self) -> list[Response]:
        return read_records(self.responses_path, Response)

    def each_response(self) -> Iterator[Response]:
        return each_record(self.responses_path, Response)


@dataclass(frozen=True)
class ScoresFolder:
    """scores/<target>/ (or any folder for a responses file): one row per response x metric."""

    path: Path

    @property
    def scores_path(self) -> Path:
        return self.path / "scores.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def failures_path(self) -> Path:
        """Answers that could not be scored at all (not text), with file and line; rewritten by each call."""
        return self.path / "failures.jsonl"

    def scores(self) -> list[ScoreRecord]:
        return read_records(self.scores_path, ScoreRecord)

    def each_score(self) -> Iterator[ScoreRecord]:
        return each_record(self.scores_path, ScoreRecord)
