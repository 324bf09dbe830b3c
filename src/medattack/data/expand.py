"""Expanding images into samples: the seeded choices, the image store and the four-condition records.

Every random choice (images kept per category, prompts per task, claimed attribute) is drawn from a
generator keyed by (seed, item), so the same seed gives the same table and adding images does not
reshuffle the others. Images are stored once, by the hash of their decoded pixels.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medattack.data.image_io import encode_png, load_image
from medattack.data.mismatch import MISMATCH_STRATEGIES
from medattack.data.prompt_bank import PromptBank
from medattack.data.sources import SourceItem
from medattack.data.taxonomy import Category, Taxonomy
from medattack.errors import ConfigError, InputError
from medattack.records import CONDITION_FLAGS, Sample, question_text, target_text
from medattack.storage import content_hash, write_bytes_atomic


def stable_rng(*parts: object) -> random.Random:
    """A generator seeded from the parts' text (stable across processes, unlike hash())."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def pixel_hash(pixels: np.ndarray) -> str:
    """sha256 of the decoded pixels and their shape: the same image from any file dedupes."""
    digest = hashlib.sha256(str(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


class ImageStore:
    """Writes each distinct image once, as images/<sha256>.png."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def put(self, pixels: np.ndarray) -> tuple[str, str]:
        """Store pixels; returns (sha256, path relative to the benchmark folder)."""
        sha = pixel_hash(pixels)
        path = self.folder / f"{sha}.png"
        if not path.exists():
            write_bytes_atomic(path, encode_png(pixels))
        return sha, f"images/{sha}.png"


def cap_per_category(items: list[SourceItem], cap: int | None, seed: int) -> list[SourceItem]:
    if cap is None:
        return items
    by_category: dict[Category, list[SourceItem]] = defaultdict(list)
    for item in items:
        by_category[item.category].append(item)
    keep: set[int] = set()
    for members in by_category.values():
        ranked = sorted(members, key=lambda it: content_hash([seed, "cap", it.source, it.item_id]))
        keep.update(id(it) for it in ranked[:cap])
    return [it for it in items if id(it) in keep]


def load_mask(item: SourceItem, shape: tuple[int, int], max_pixels: int) -> np.ndarray | None:
    """Lesion mask as (H, W, 3) uint8 in {0, 255}, from a mask file or a bbox; None when neither."""
    height, width = shape
    if item.mask_path is not None:
        mask = load_image(item.mask_path, name=f"{item.location} (mask)", max_pixels=max_pixels).pixels
        if mask.shape[:2] != shape:
            raise InputError(f"{item.location} (mask)",
                             f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}.",
                             "export the mask at the image's size.")
        binary = mask.max(axis=-1) > 0
    elif item.bbox is not None:
        x0, y0, x1, y1 = item.bbox
        if x1 > width or y1 > height:
            raise InputError(item.location, f"bbox {item.bbox} exceeds the image size {width}x{height}.",
                             "give the box in the image's pixel coordinates.")
        binary = np.zeros(shape, dtype=bool)
        binary[y0:y1, x0:x1] = True
    else:
        return None
    return np.repeat((binary.astype(np.uint8) * 255)[..., None], 3, axis=-1)


@dataclass(frozen=True)
class Pair:
    """One image x prompt pair before it is expanded into conditions."""

    prompt_id: str
    task: str
    normal: str
    harmful: str
    key_phrase: str
    claimed: Category
    true_text: str = ""  # attribute texts as a source wrote them (3MAD); "" = the categories' own
    claimed_text: str = ""
    split: str = ""  # the source's split name; "" = the true category's


def pairs_for(
    item: SourceItem, bank: PromptBank, tasks: tuple[str, ...], catalogue: list[Category], *, seed: int,
    prompts_per_task: int, mismatch_strategy: str, tasks_chosen: bool,
) -> list[Pair]:
    """The image x prompt pairs of one image: its preset (3MAD rows), or `prompts_per_task` triples of
    the bank per task, each with a claimed attribute drawn by `mismatch_strategy`. `tasks_chosen`:
    the user named the tasks, so a preset of another task is left out."""
    if item.preset is not None:
        p = item.preset
        if tasks_chosen and p.task not in tasks:
            return []
        return [Pair(p.prompt_id, p.task, p.normal_prompt, p.harmful_prompt, p.key_phrase, p.claimed, p.true_text,
                     p.claimed_text, p.split)]
    strategy = MISMATCH_STRATEGIES[mismatch_strategy]
    pairs = []
    for task in tasks:
        options = list(bank.for_task(task))
        rng = stable_rng(seed, "prompts", item.source, item.item_id, task)
        chosen = sorted(rng.sample(options, min(prompts_per_task, len(options))),
                        key=options.index)
        for triple in chosen:
            claim_rng = stable_rng(seed, "claim", item.source, item.item_id, triple.prompt_id)
            claimed = strategy(item.category, catalogue, claim_rng)
            pairs.append(Pair(triple.prompt_id, task, triple.normal, triple.harmful, triple.key_phrase, claimed))
    return pairs


def sample_records(item: SourceItem, pair: Pair, image: dict[str, Any], taxonomy: Taxonomy,
                   typographic_file: str | None) -> list[Sample]:
    """The four samples (one per condition) of one image x prompt pair."""
    true = item.category
    # ids derive from everything that defines a sample, so a rebuild that changes a question, a claimed
    # attribute or the image gives new ids (and old answers and scores are not taken for them): the pair
    # id from the image and the prompt triple, and a mismatched sample's id also from the claimed attribute
    pair_id = content_hash([item.source, item.item_id, image, pair.prompt_id, pair.task, pair.normal, pair.harmful,
                            pair.key_phrase, pair.true_text or true.attribute, item.description])[:16]
    claim = content_hash(pair.claimed_text or pair.claimed.attribute)[:6]
    try:
        task_group = taxonomy.task(pair.task).group
    except ConfigError:
        task_group = "Unlisted"
    true_text = pair.true_text or true.attribute  # the texts the model sees: as the source wrote them
    claimed_text = pair.claimed_text or pair.claimed.attribute
    samples = []
    for condition, (shows_claim, harmful) in CONDITION_FLAGS.items():
        shown_text = claimed_text if shows_claim else true_text
        prompt = pair.harmful if harmful else pair.normal
        samples.append(Sample(
            sample_id=f"{pair_id}-{condition}-{claim}" if shows_claim else f"{pair_id}-{condition}",
            pair_id=pair_id, condition=condition, mismatched=shows_claim,
            harmful=harmful, task=pair.task, task_group=task_group, prompt_id=pair.prompt_id, prompt=prompt,
            question=question_text(shown_text, prompt), key_phrase=pair.key_phrase,
            target=target_text(pair.key_phrase), category=pair.split or true.split_name, modality=true.modality,
            body_part=true.body_part, true_attribute=true_text, claimed_attribute=claimed_text,
            claimed_modality=pair.claimed.modality, claimed_body_part=pair.claimed.body_part,
            shown_attribute=shown_text, typographic_image_file=typographic_file, source=item.source,
            item_id=item.item_id, location=item.location, description=item.description, **image,
        ))
    return samples
