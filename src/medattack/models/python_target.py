"""The `python` target kind: any model, through a small factory of your own.

    --target python:PATH_OR_MODULE:FACTORY      e.g. python:examples/targets/radfm.py:load

`PATH_OR_MODULE` is a Python file (imported under a name of its own) or an importable module; `FACTORY`
a function in it, called once as `FACTORY(device=..., dtype=...)`, that loads the model and returns an
object with

    generate(images, questions, max_new_tokens) -> list[str]

(and, to give sampled answers - `--generations N`, a temperature - keyword parameters `temperature`,
`top_p` and `seed`, passed only when a query is sampled). `images` are PIL images (RGB; None for a
text-only query) and `questions` strings, one per query of a batch of at most `batch_size`; the answer is
one string per question. The object is checked when it is
loaded, the answers on every batch; a factory that fails, an object without `generate`, or answers of the
wrong type or number are one-line `TargetError`s naming the file and the fix (a file may declare
`NEEDS = "..."`, its packages and environment variables, named when its factory fails), and a failed batch is
retried one query at a time so only the bad query fails. The kind works wherever a target does: `query`,
attack replay, controls, `serve`, the Ray executor (each worker imports the file) and the answer cache.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medattack.errors import TargetError
from medattack.models.targets import (
    TARGETS,
    Query,
    Sampling,
    TargetConfig,
    answer_in_batches,
    by_sampling,
    target_device,
)


def split_spec(spec: str) -> tuple[str, str]:
    """'PATH_OR_MODULE:FACTORY' -> (path or module, factory name)."""
    source, sep, factory = spec.rpartition(":")
    if not sep or not source or not factory.isidentifier():
        raise TargetError(f"python target {spec!r}: write it as python:PATH_OR_MODULE:FACTORY, e.g. "
                          "python:examples/targets/radfm.py:load.")
    return source, factory


def import_source(source: str) -> Any:
    """The module of a file path (imported under a name derived from its absolute path) or a module name."""
    path = Path(source).expanduser()
    if source.endswith(".py") or path.is_file():
        if not path.is_file():
            raise TargetError(f"python target: no file {source}; give the path of the .py file that holds the factory.")
        name = f"medattack_target_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise TargetError(f"python target: cannot import {source} as a Python file.")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as error:
                del sys.modules[name]
                raise TargetError(f"python target: importing {source} failed: {type(error).__name__}: {error}"
                                  ) from error
        return sys.modules[name]
    try:
        return importlib.import_module(source)
    except ImportError as error:
        raise TargetError(f"python target: no module {source!r} ({error}); give a .py path or an importable "
                          "module.") from error


def check_model(model: Any, where: str) -> None:
    """The object a factory returned has generate(images, questions, max_new_tokens)."""
    generate = getattr(model, "generate", None)
    if not callable(generate):
        raise TargetError(f"{where} returned {type(model).__name__}, which has no generate(images, questions, "
                          "max_new_tokens) method; return an object that has one.")
    try:
        inspect.signature(generate).bind([], [], 1)
    except TypeError as error:
        raise TargetError(f"{where}: generate must take (images, questions, max_new_tokens): {error}.") from None
    except ValueError:  # a builtin without a signature: trusted
        pass


def _pil(query: Query) -> Any:
    from PIL import Image

    return None if query.image is None else Image.fromarray(query.image).convert("RGB")


@TARGETS.register("python")
class PythonTarget:
    """A model loaded by a factory of your own (module docstring)."""

    takes_whitebox = False

    def __init__(self, config: TargetConfig, **_: Any) -> None:
        source, factory_name = split_spec(config.model)
        self.config = config
        self.where = f"{source}:{factory_name}"
        module = import_source(source)
        factory = getattr(module, factory_name, None)
        if not callable(factory):
            raise TargetError(f"python target: {source} has no function {factory_name!r}; name the factory that "
                              "loads the model.")
        try:
            self.model = factory(device=target_device(config), dtype=config.dtype)
        except TargetError:
            raise
        except Exception as error:
            needs = getattr(module, "NEEDS", "")  # a recipe says what it needs (packages, environment variables)
            raise TargetError(f"python target {self.where}: the factory failed: {type(error).__name__}: {error}"
                              + (f". This recipe needs: {needs}." if needs else "")) from error
        check_model(self.model, f"python target {self.where}")
        self.name = config.name
        self.needs_image = bool(getattr(self.model, "needs_image", False))
        parameters = inspect.signature(self.model.generate).parameters
        self._samples = {"temperature", "top_p", "seed"} <= set(parameters) or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())

    def _generate(self, batch: Sequence[Query]) -> list[str]:
        """generate takes one max_new_tokens per call: one call per distinct answer cap (and sampling) of the
        batch, so no query gets another's cap; the answers go back in the batch's order."""
        answers: list[str] = [""] * len(batch)
        caps: dict[int, list[int]] = {}
        for k, query in enumerate(batch):
            caps.setdefault(query.limit(self.config.max_new_tokens), []).append(k)
        for rows in caps.values():
            for k, answer in zip(rows, by_sampling([batch[k] for k in rows], self.config, self._generate_with),
                                 strict=True):
                answers[k] = answer
        return answers

    def _generate_with(self, batch: Sequence[Query], sampling: Sampling) -> list[str]:
        limit = batch[0].limit(self.config.max_new_tokens)  # one cap per call (_generate)
        temperature, top_p, seed = sampling
        options = {}
        if temperature > 0:  # sampled answers (--generations, a temperature): the object must take the settings
            if not self._samples:
                raise TargetError(f"python target {self.where}: its generate takes no temperature/top_p/seed, so it "
                                  "cannot give sampled answers; add those keyword parameters to generate, or ask "
                                  "greedily (temperature 0, one generation).")
            options = {"temperature": temperature, "top_p": top_p, "seed": seed}
        answers = self.model.generate([_pil(q) for q in batch], [q.text for q in batch], limit, **options)
        if not isinstance(answers, list | tuple) or len(answers) != len(batch) or not all(
                isinstance(a, str) for a in answers):
            raise TargetError(f"python target {self.where}: generate returned {type(answers).__name__}"
                              f"{f' of {len(answers)}' if isinstance(answers, list | tuple) else ''}; it must "
                              f"return a list of {len(batch)} strings, one per question.")
        return list(answers)

    def answer(self, queries: Sequence[Query]) -> list[str | TargetError]:
        # the user's code: any failure is its batch's
        return answer_in_batches(queries, self.config.batch_size, self._generate, (Exception,), self.answer)
