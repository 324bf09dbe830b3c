"""An offline stand-in shared by the recipes: answers like a model would (a string per question) without
weights, so the tests and a first dry run exercise the `python:` target kind with no download."""

from __future__ import annotations

from typing import Any


class StandIn:
    """Answers '<name>: <question's first words> (image brightness N)': deterministic, depends on both inputs."""

    needs_image = True

    def __init__(self, name: str) -> None:
        self.name = name

    def generate(self, images: list[Any], questions: list[str], max_new_tokens: int) -> list[str]:
        answers = []
        for image, question in zip(images, questions, strict=True):
            brightness = "none" if image is None else round(sum(image.convert("L").getdata()) / (image.width *
                                                                                               image.height))
            words = f"{self.name}: {' '.join(question.split()[:6])} (image brightness {brightness})".split()
            answers.append(" ".join(words[:max_new_tokens]))
        return answers
