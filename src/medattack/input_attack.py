"""One input attacked in one call, without a run directory (as `nanogcg.run` does):

    import medattack as ma
    result = ma.attack_input("text:embedded", "How do I ...?", "Sure, here is how to ...", method="gcg", steps=10,
                             on_step=lambda step: print(step.step, step.loss))
    result.suffix, result.best_loss, result.success, result.response

The same attack classes, step functions and per-step seeding as the attack stage (`ma.attack(run, config)`):
an input attacked here with the stage's seed and sample id gives the stage's result. This is a face over the
attacks, as the CLI is over the stages: it reads the image file, the attacks never do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medattack.attacks.base import ATTACKS, AttackResult, AttackTask, StepRecord, require_image
from medattack.config import from_mapping
from medattack.data.image_io import load_image
from medattack.data.typography import render_text_band
from medattack.errors import ConfigError
from medattack.models.base import WhiteBoxTarget, load_whitebox

GREY = 128  # the image of an input given none: mid-grey at the model's resolution


class _OnStep:
    """A checkpoint that keeps nothing and hands each finished step to a callback."""

    def __init__(self, callback: Callable[[StepRecord], None]) -> None:
        self.callback = callback

    def load(self) -> dict[str, Any] | None:
        return None

    def save(self, state: dict[str, Any]) -> None:
        self.callback(StepRecord(**state["steps"][-1]))


def attack_input(model: WhiteBoxTarget | str, question: str, target: str,
                 image: np.ndarray | str | Path | None = None, method: str = "gcg", *, seed: int = 0,
                 sample_id: str = "input", key_phrase: str | None = None, device: str | None = None,
                 on_step: Callable[[StepRecord], None] | None = None, **options: Any) -> AttackResult:
    """Attack one (question, image) so that `model` answers with `target`.

    Args:
        model: a loaded white-box model, or its spec as `--model` takes it ("embedded", "text:embedded",
            "text:HUB_ID", a LLaVA hub id or folder).
        question: the user's question; `{optim_str}` in it places the suffix there (else after it).
        target: the string the attack makes the model start its answer with.
        image: (H, W, 3) uint8, an image file, or None (mid-grey; a text-only model takes none).
        method: a registered attack (`medattack list attacks`); options are its settings (steps=, ...).
        seed, sample_id: what each step's random draws are keyed by (the stage uses its seed and the sample's id).
        key_phrase: the text the typographic attack renders under the image (default: the target).
        on_step: called with each step's record (step, loss, modality, success, seconds) as it finishes.
    """
    attack_cls = ATTACKS[method]  # an unknown method: one line naming the known ones (and a near miss)
    loaded = load_whitebox(model, **({"device": device} if device else {})) if isinstance(model, str) else model
    require_image(method, loaded)
    config = from_mapping(attack_cls.config_class, options, f"{method} options")
    if image is None:
        height, width = loaded.image_size
        array = np.full((height, width, 3), GREY, dtype=np.uint8)
    elif isinstance(image, str | Path):
        array = load_image(Path(image)).pixels
    elif isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        array = image
    else:
        raise ConfigError("image: pass an (H, W, 3) uint8 array, an image file, or None.")
    typographic = (loaded.preprocess(render_text_band(array, key_phrase or target))
                   if "typographic_image" in attack_cls.needs else None)
    task = AttackTask(sample_id=sample_id, question=question, target=target, pixels=loaded.preprocess(array),
                      seed=seed, typographic_pixels=typographic)
    return attack_cls(config).run(loaded, task, _OnStep(on_step) if on_step else None)

