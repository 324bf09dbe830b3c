"""What several test modules ask targets with: random image queries, and a python-kind target that answers with
the token cap it was given (to see which max_new_tokens reached the model)."""

from __future__ import annotations

import numpy as np

from medattack.models.targets import Query

# a python-kind target file: each answer says the cap it was asked with, and the question
CAPS_TARGET = '''
class Caps:
    def generate(self, images, questions, max_new_tokens):
        return [f"cap={max_new_tokens} q={q}" for q in questions]


def load(device="cpu", dtype="auto"):
    return Caps()
'''


def random_queries(n: int, seed: int = 0, prefix: str = "q") -> list[Query]:
    """`n` queries with random images of growing height and four questions in turn."""
    rng = np.random.default_rng(seed)
    texts = ["What does this image show?", "Describe the findings in this chest CT image, please.",
             "Is there a fracture?", "Summarise this scan in one sentence for a referring clinician."]
    return [Query(f"{prefix}{i}", texts[i % len(texts)], rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8))
            for i in range(n)]
