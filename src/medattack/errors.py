"""One exception tree for medattack. Every message says what to change.

    MedattackError
    +-- ConfigError              bad config key or value (names the key)
    +-- UnknownNameError         a registry name that does not exist ("did you mean ...")
    +-- MissingDependencyError   an optional extra is not installed (names the extra)
    +-- ModelNotFoundError       model weights are not here and cannot be downloaded (names the setting)
    +-- PromptBankError          the prompt bank file is malformed (names the task / entry)
    +-- RunDirError              the run directory is missing, or holds another config
    |   +-- OtherConfigurationError  a stage folder holds results of other settings (which, and the stamp)
    |   +-- RecordError          a stored row is not the record it should be (names file and line)
    |   +-- CorruptFileError     a file medattack keeps is damaged, not just torn by a crash (names file:line)
    +-- BuildError               nothing could be built (every input failed)
    +-- NothingToDoError         a stage found no input (no responses to score, no scores to report)
    +-- InputError               one input item is bad; the stage records it and goes on
        +-- ImageError           an image file cannot be used (names the file)
        |   +-- CorruptImageError       truncated, empty or undecodable
        |   +-- UnsupportedImageError   not an image format medattack reads
        |   +-- ImageTooLargeError      over the pixel limit (decompression-bomb guard)
        |   +-- NoPixelDataError        a DICOM object with no image in it
        +-- SourceError          a source or manifest problem (names the file, row, column)
            +-- PathEscapeError  a path resolves outside the data root
    +-- TargetError              one query could not be answered (the rest of the batch goes on)
    |   +-- ProviderFilterError  the provider withheld the answer (content filter): counted apart, not scored
    +-- APIError                 an API request failed for good (after retries)
    +-- RequestError             `serve` got a request it cannot answer as sent (HTTP 400)
    +-- WorkerLostError          an executor's worker died every time an item was tried
"""

from __future__ import annotations

from typing import Any


class MedattackError(Exception):
    """Base class of every error medattack raises on purpose."""


class ConfigError(MedattackError):
    """A configuration key or value is invalid."""


class UnknownNameError(MedattackError, KeyError):
    """A name was looked up in a registry that does not contain it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(MedattackError, ImportError):
    """An optional dependency is not installed."""


class ModelNotFoundError(MedattackError):
    """Model weights could not be found locally nor downloaded; the message names the setting that
    points medattack at a local copy."""


class PromptBankError(MedattackError):
    """The prompt bank is malformed."""


class RunDirError(MedattackError):
    """The run directory cannot be used as asked."""


class OtherConfigurationError(RunDirError):
    """A stage folder holds results of another configuration: `previous` is its stamp (as recorded), `changed` the
    dotted keys that differ ("stage.target.max_new_tokens"). The CLI continues such a folder with its own settings
    when the user typed none of them."""

    def __init__(self, message: str, previous: dict[str, Any], changed: list[str]) -> None:
        super().__init__(message)
        self.previous, self.changed = previous, changed


class NothingToDoError(MedattackError):
    """A stage found nothing to work on; the message names the stage to run first."""


class RecordError(RunDirError):
    """A stored row is not the record its file should hold (a missing or unknown field)."""


class CorruptFileError(RunDirError):
    """A file medattack keeps is damaged: a bad line that is not a torn last append, a state file that is not
    JSON. Names the file (and line) and the fix."""

    def __init__(self, where: str, problem: str, fix: str) -> None:
        self.where = where
        super().__init__(f"{where}: {problem}. Fix: {fix}.")


class BuildError(MedattackError):
    """The benchmark build produced no sample at all."""


class InputError(MedattackError):
    """One input item (file, row) is unusable. Stages record it and continue with the rest.

    Attributes:
        item: the file path or "file:row" that failed.
        fix: what the user should do about it.
    """

    def __init__(self, item: str, problem: str, fix: str = "") -> None:
        self.item = item
        self.problem = problem
        self.fix = fix
        message = f"{item}: {problem}"
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)


class ImageError(InputError):
    """An image file cannot be used."""


class CorruptImageError(ImageError):
    """The file is empty, truncated or cannot be decoded."""


class UnsupportedImageError(ImageError):
    """The file is not in a format medattack reads."""


class ImageTooLargeError(ImageError):
    """The image exceeds the configured pixel limit."""


class NoPixelDataError(ImageError):
    """A DICOM object without pixel data (a report, a plan, a waveform...)."""


class SourceError(InputError):
    """A source, manifest or row is malformed."""


class PathEscapeError(SourceError):
    """A path resolves outside the data root."""


class TargetError(MedattackError):
    """One query could not be answered (the reason says why; the rest of the batch goes on)."""


class ProviderFilterError(TargetError):
    """The provider withheld the model's answer (finish_reason content_filter): a provider outcome, recorded
    and counted with its own kind, never scored as an empty answer or a refusal."""


class APIError(MedattackError):
    """An API request failed for good (after retries, or with a status that retrying cannot fix)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RequestError(MedattackError):
    """A request the server cannot answer as sent (HTTP 400); the message says what to change."""


class WorkerLostError(MedattackError):
    """The worker running an item died every time it was tried (e.g. killed, out of memory)."""
