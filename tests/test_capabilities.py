"""The white-box protocol: a new adapter needs only the core; the optional capabilities are speed-ups
that change no result."""

import numpy as np
import pytest
import torch

from medattack.attacks.mcm import MCM, MCMConfig
from medattack.attacks.pgd import PGD, PGDConfig
from medattack.models.base import BatchGeneration, JointGradient, PixelLoss, Probing
from medattack.models.capabilities import generate_batch
from medattack.models.targets import LlavaTarget, Query, TargetConfig
from test_attacks import make_task

CORE = ("name", "image_size", "device", "preprocess", "allowed_tokens", "encode", "decode", "retokenizes", "start",
        "loss", "token_grad", "pixel_grad", "generate")


class CoreOnly:
    """An adapter with the core protocol alone (what a new VLM family starts with)."""

    def __init__(self, inner):
        self._inner = inner
        for name in CORE:
            setattr(self, name, getattr(inner, name))

    def set_pixels(self, state, pixels):
        self._inner.set_pixels(state, pixels)


@pytest.fixture(scope="module")
def core(tiny_whitebox):
    return CoreOnly(tiny_whitebox)


def test_the_full_adapter_offers_every_capability_and_the_core_one_none(tiny_whitebox, core):
    for capability in (JointGradient, Probing, PixelLoss, BatchGeneration):
        assert isinstance(tiny_whitebox, capability) and not isinstance(core, capability)


@pytest.mark.parametrize("attack", [MCM(MCMConfig(rounds=3, pgd_steps=2, early_stop=False, max_new_tokens=3)),
                                    PGD(PGDConfig(steps=2, random_start=True, early_stop=False, max_new_tokens=3))],
                         ids=["mcm", "pgd"])
def test_attacks_on_the_core_alone_give_the_results_of_the_full_adapter(attack, tiny_whitebox, core):
    full = attack.run(tiny_whitebox, make_task(tiny_whitebox))
    fallback = attack.run(core, make_task(core))
    assert fallback.suffix_ids == full.suffix_ids
    assert [s.modality for s in fallback.steps] == [s.modality for s in full.steps]
    assert [s.loss for s in fallback.steps] == pytest.approx([s.loss for s in full.steps], abs=1e-4)
    assert torch.allclose(fallback.pixels, full.pixels, atol=1e-6)


def test_replay_generation_on_the_core_alone_answers_like_the_batched_one(tiny_whitebox, core):
    images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
    pixels = torch.cat([tiny_whitebox.preprocess(image) for image in images])
    texts = ["What does this image show?", "Is there a lesion?"]
    assert generate_batch(core, texts, pixels, 4) == generate_batch(tiny_whitebox, texts, pixels, 4)
    target = LlavaTarget(TargetConfig(model="tiny", max_new_tokens=4), model=core)
    queries = [Query(str(k), text, image) for k, (text, image) in enumerate(zip(texts, images, strict=True))]
    answers = target.answer(queries)
    assert all(isinstance(a, str) for a in answers)
