"""Prompt generation, in three steps over one folder (arXiv 2405.20775, Sec. 3):

    attributes(out, AttributesConfig)   images -> attributes.jsonl (+ attribute_failures.jsonl)
    normal(out, NormalConfig)           attributes -> normal.jsonl (+ normal_rejected.jsonl)
    harmful(out, HarmfulConfig)         normal questions -> bank.yaml (validated, builder-ready) + rejected.jsonl

Readers and writers are plugins (`ATTRIBUTE_READERS`, `TEXT_GENERATORS`), each built from its
`config_class` and the options the config names. Every model call is cached in OUT/calls.sqlite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medattack.config import from_mapping, option
from medattack.data.image_io import DEFAULT_MAX_PIXELS
from medattack.data.prompt_bank import load_prompt_bank, vocabulary_pattern
from medattack.data.sources import SourceContext, open_source
from medattack.data.taxonomy import load_taxonomy
from medattack.errors import ConfigError, InputError, UnknownNameError
from medattack.prompts.textgen import TEXT_GENERATORS, TextGenerator
from medattack.rundir import Progress, content_hash, read_jsonl, write_bytes_atomic, write_jsonl_atomic
from medattack.scoring.backends.text_embedders import get_text_embedder

# --writer NAME -> (text generator plugin, or None for the templates alone; how the harmful step uses it)
WRITERS: dict[str, tuple[str | None, str]] = {
    "template": (None, "rewrite"),
    "paraphrase": ("local", "paraphrase"),  # the embedded SmolLM2 rewords seed intents of the embedded bank
    "local": ("local", "rewrite"),
    "api": ("api", "rewrite"),
}


def _writer(name: str, options: dict[str, Any], out: Path, defaults: dict[str, Any]) -> TextGenerator | None:
    """The text generator a writer name stands for (None for templates); `defaults` are options of the
    step that the user's options override, for the generators that have them."""
    if name not in WRITERS:
        raise UnknownNameError(f"unknown writer {name!r}; use {', '.join(WRITERS)}.")
    plugin = WRITERS[name][0]
    if plugin is None:
        return None
    generator = TEXT_GENERATORS[plugin]
    known = {k: v for k, v in defaults.items() if k in generator.config_class.__dataclass_fields__}
    config = from_mapping(generator.config_class, {**known, **options}, f"{name} writer options")
    return generator(config, cache_path=out / "calls.sqlite")


def _previous_step(out: Path, name: str, step: str) -> list[dict[str, Any]]:
    """The rows a previous step wrote to OUT/name (ConfigError naming the step to run when there are none)."""
    rows = read_jsonl(out / name)
    if not rows:
        raise ConfigError(f"{out / name} is missing or empty; run `medattack prompts {step}` first.")
    return rows


@dataclass(frozen=True)
class AttributesConfig:
    sources: tuple[str, ...] = option(("embedded",), "Image sources (as for build).")
    reader: str = option("metadata", "Attribute reader: metadata (offline) | whitebox | hf | api.")
    reader_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "Settings of the reader, e.g. {model: embedded} (see its config)."})
    questions: tuple[str, ...] | None = option(None, "Attribute questions (default: the built-in ones).")
    data_root: str | None = option(None, "Root that manifest paths must stay inside.")


def attributes(out_dir: str | Path, config: AttributesConfig, *, progress: Progress | None = None) -> dict[str, Any]:
    """Step 1: attributes.jsonl (one record per image) and attribute_failures.jsonl."""
    from medattack.prompts.attributes import ATTRIBUTE_READERS, DEFAULT_QUESTIONS, read_attributes

    out = Path(out_dir)
    context = SourceContext(load_taxonomy(), Path(config.data_root) if config.data_root else None)
    items, failures = [], []
    for spec in config.sources:
        for entry in open_source(spec, context):
            (failures if isinstance(entry, InputError) else items).append(entry)
    reader_cls = ATTRIBUTE_READERS[config.reader]
    reader_config = from_mapping(reader_cls.config_class, config.reader_options, f"{config.reader} reader options")
    reader = reader_cls(config=reader_config, cache_path=out / "calls.sqlite")
    records = []
    for index, record in enumerate(read_attributes(items, reader, config.questions or DEFAULT_QUESTIONS,
                                                   DEFAULT_MAX_PIXELS)):
        if progress:
            progress("attributes", index, len(items))
        (failures if isinstance(record, InputError) else records).append(record)
    write_jsonl_atomic(out / "attributes.jsonl", records)
    write_jsonl_atomic(out / "attribute_failures.jsonl", [
        {"item": f.item, "error": type(f).__name__, "problem": f.problem, "fix": f.fix} for f in failures])
    return {"images": len(records), "failures": len(failures), "reader": reader.name}


@dataclass(frozen=True)
class NormalConfig:
    per_task: int = option(8, "Normal questions per clinical task at most.")
    writer: str = option("template", "Who words them: template (offline) | local | api.")
    writer_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "Settings of the writer's model, e.g. {model: gpt-4o, api: {base_url: ...}}."})


def normal(out_dir: str | Path, config: NormalConfig) -> dict[str, Any]:
    """Step 2: normal.jsonl from attributes.jsonl (templates; reworded by a chat model when one is named)."""
    from medattack.prompts.normal import normal_questions, write_with_model

    out = Path(out_dir)
    records = _previous_step(out, "attributes.jsonl", "attributes")
    taxonomy = load_taxonomy()
    questions = normal_questions(records, taxonomy, config.per_task)
    rejected: list[dict[str, Any]] = []
    generator = _writer(config.writer, config.writer_options, out, {"max_new_tokens": 48})
    if generator is not None:
        rejected = write_with_model(questions, records, generator, get_text_embedder("minilm"),
                                    vocabulary_pattern(taxonomy))
    write_jsonl_atomic(out / "normal.jsonl", questions)
    write_jsonl_atomic(out / "normal_rejected.jsonl", rejected)
    return {"questions": len(questions), "tasks": len({q["task"] for q in questions}), "rejected": len(rejected)}


@dataclass(frozen=True)
class HarmfulConfig:
    writer: str = option("paraphrase", "paraphrase (offline: SmolLM2 rewords seed templates) | template | local | api.")
    writer_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "Settings of the writer's model, e.g. {model: gpt-4o, api: {base_url: ...}}."})
    near_duplicate: float = option(0.92, "MiniLM cosine above which a question is a near-duplicate.")
    version: str | None = option(None, "Version of the bank (default: a hash of its content).")


def harmful(out_dir: str | Path, config: HarmfulConfig) -> dict[str, Any]:
    """Step 3: bank.yaml (validated, builder-ready) and rejected.jsonl from normal.jsonl."""
    import yaml

    from medattack.prompts.harmful import drop_near_duplicates, rewrite_all, to_bank

    out = Path(out_dir)
    normals = _previous_step(out, "normal.jsonl", "normal")
    taxonomy = load_taxonomy()
    mode = WRITERS[config.writer][1] if config.writer in WRITERS else "rewrite"
    generator = _writer(config.writer, config.writer_options, out,
                        {"max_new_tokens": 48 if mode == "paraphrase" else 96})
    embedder = get_text_embedder("minilm")
    rewrites, rejected = rewrite_all(normals, generator, load_prompt_bank(taxonomy=taxonomy),
                                     vocabulary_pattern(taxonomy), mode, embedder)
    kept = drop_near_duplicates(rewrites, embedder, config.near_duplicate)
    version = config.version or f"generated-{content_hash([vars(r) for r in kept])[:12]}"
    bank = to_bank(kept, taxonomy, version)
    write_bytes_atomic(out / "bank.yaml", yaml.safe_dump(bank, sort_keys=False, allow_unicode=True,
                                                          width=120).encode("utf-8"))
    write_jsonl_atomic(out / "rejected.jsonl", rejected)
    origins: dict[str, int] = {}
    for rewrite in kept:
        origins[rewrite.origin] = origins.get(rewrite.origin, 0) + 1
    return {"triples": len(kept), "near_duplicates_dropped": len(rewrites) - len(kept), "rejected": len(rejected),
            "origins": origins, "version": version, "bank": str(out / "bank.yaml")}
