"""One-line errors for the ways loading a model from the hub or a folder fails, each with its fix.

    with hub_errors(model_id):
        model = AutoModel.from_pretrained(model_id)

turns transformers' and huggingface_hub's exceptions (a gated model without a token, an id that is not
on the hub or on disk, a model not in the cache while the hub is offline, a malformed id) into a
`ModelNotFoundError` that says what to do; anything else passes through unchanged (tracebacks with -v).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from medattack.errors import ModelNotFoundError

# (words in the error or its class name, what went wrong, the fix); the first match wins
CAUSES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("gated", "401 client error", "403 client error", "access to model", "restricted"),
     "is gated: the hub wants a token with access",
     "accept its licence on the hub, then export HF_TOKEN=<token> (or `huggingface-cli login`)."),
    (("offline", "couldn't connect", "cannot find the requested files in the local cache",
      "couldn't find them in the cached files", "localentrynotfound"),
     "is not in the local cache and the hub cannot be reached",
     "download it where there is a network (`huggingface-cli download {model}`) and copy the cache, or pass the "
     "model's local folder."),
    (("repo id must", "hfvalidationerror", "is not a valid model identifier", "repository not found",
      "repositorynotfound", "does not appear to have a file", "404 client error"),
     "is neither a folder on this machine nor a model on the hub",
     "check the id or the path (a folder must hold the model's config.json and weights)."),
)


def explain(model: str, error: BaseException) -> ModelNotFoundError | None:
    """The one-line error for a failed load of `model`, or None when the cause is not a known one."""
    text = f"{type(error).__name__} {error}".lower()
    for words, problem, fix in CAUSES:
        if any(word in text for word in words):
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") in ("1", "true") else ""
            return ModelNotFoundError(f"model {model!r} {problem}{offline}: {fix.format(model=model)}")
    return None


@contextmanager
def hub_errors(model: str) -> Iterator[None]:
    """Re-raise a known failure to load `model` as a one-line ModelNotFoundError with its fix."""
    try:
        yield
    except (OSError, ValueError) as error:
        found = explain(model, error)
        if found is None:
            raise
        raise found from error


def local_device(device: str | None) -> str:
    """The torch device of a local model: the one asked for, else cuda when available, else cpu."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def torch_dtype(dtype: str, device: str) -> Any:
    """The torch dtype named by a setting (auto | bfloat16 | float16 | float32); auto: bfloat16 on a GPU, float32
    on a CPU."""
    import torch

    return {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16, "float32": torch.float32}[dtype]
