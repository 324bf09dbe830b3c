"""Plugins are registered one way and reachable from every entry point.

This file imports only `medattack.cli` at the top: whatever the CLI can reach, every registry must hold,
without any test importing a plugin module for its side effect.
"""

import dataclasses
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from medattack.cli import app

runner = CliRunner()

# what the README and `medattack list` name, by registry (module, attribute)
EXPECTED = {
    ("medattack.attacks.base", "ATTACKS"): {"gcg", "pgd", "mcm", "region", "region-mcm", "direct", "typo",
                                            "occlusion"},
    ("medattack.scoring.base", "SCORERS"): {"keyword_asr", "tto", "tio", "tii", "judge", "moderation"},
    ("medattack.scoring.base", "DERIVED"): {"composite"},
    ("medattack.scoring.judges.base", "JUDGES"): {"embedded", "api"},
    ("medattack.scoring.backends.text_embedders", "TEXT_EMBEDDERS"): {"minilm", "bge-m3"},
    ("medattack.scoring.backends.image_text", "IMAGE_TEXT_BACKENDS"): {"proxy", "biomedclip", "clip"},
    ("medattack.models.targets", "TARGETS"): {"llava", "hf", "api"},
    ("medattack.defences.base", "DEFENCES"): {"attribute", "perplexity", "purify", "reminder", "smoothllm"},
    ("medattack.models.base", "WHITEBOX_MODELS"): {"embedded", "tiny", "hf"},
    ("medattack.data.sources.base", "SOURCES"): {"embedded", "folder", "manifest", "3mad"},
    ("medattack.data.mismatch", "MISMATCH_STRATEGIES"): {"both", "modality", "body_part", "any"},
    ("medattack.prompts.attributes", "ATTRIBUTE_READERS"): {"metadata", "whitebox", "hf", "api"},
    ("medattack.prompts.textgen", "TEXT_GENERATORS"): {"local", "api"},
}


def _registry(module: str, attribute: str):
    return getattr(sys.modules[module] if module in sys.modules else __import__(module, fromlist=[attribute]),
                   attribute)


@pytest.mark.parametrize(("where", "names"), EXPECTED.items(), ids=[a for _, a in EXPECTED])
def test_every_registry_holds_every_documented_plugin(where, names):
    registry = _registry(*where)
    assert names <= set(registry), f"missing: {sorted(names - set(registry))}"


def test_a_fresh_process_reaches_bge_m3_from_the_cli_alone():
    """The text embedder that used to be registered only when a test imported its module."""
    code = ("import medattack.cli\n"
            "from medattack.scoring.backends.text_embedders import TEXT_EMBEDDERS\n"
            "print(sorted(TEXT_EMBEDDERS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "bge-m3" in out


def test_score_with_bge_m3_offline_names_the_setting_for_a_local_copy(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"question": "What is shown?", "response": "A chest CT.", "condition": "normal"}\n')
    result = runner.invoke(app, ["score", "--responses", str(answers), "--set", "text_embedder=bge-m3",
                                 "--set", "metrics=[tto]"], terminal_width=300)
    text = result.output.replace("\n", " ")
    assert result.exit_code == 2 and "unknown text embedder" not in text
    assert "text_model" in text  # how to point it at a local copy of the weights


@pytest.mark.parametrize("name", sorted(_registry("medattack.attacks.base", "ATTACKS")))
def test_every_attack_declares_its_config_and_inputs(name):
    from medattack.attacks.base import ATTACKS, NEEDS

    cls = ATTACKS[name]
    assert dataclasses.is_dataclass(cls.config_class) and cls.config_class.__dataclass_params__.frozen
    assert cls.needs <= NEEDS
    assert isinstance(cls(cls.config_class()).config, cls.config_class)


@pytest.mark.parametrize("registry", ["SCORERS", "DERIVED"])
def test_every_metric_declares_a_frozen_config(registry):
    from medattack.scoring import base

    for name, cls in getattr(base, registry).items():
        assert dataclasses.is_dataclass(cls.config_class), name
        assert cls.config_class.__dataclass_params__.frozen, name


@pytest.mark.parametrize("what", ["attacks", "metrics", "targets", "embedders", "sources", "mismatch", "defences"])
def test_list_names_what_the_registries_hold(what):
    result = runner.invoke(app, ["list", what], terminal_width=300)
    assert result.exit_code == 0 and result.output.strip()
    expected = {"attacks": "ATTACKS", "metrics": "SCORERS", "targets": "TARGETS", "embedders": "TEXT_EMBEDDERS",
                "sources": "SOURCES", "mismatch": "MISMATCH_STRATEGIES", "defences": "DEFENCES"}[what]
    where = next(key for key in EXPECTED if key[1] == expected)
    for name in EXPECTED[where]:
        assert name in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "medattack" in result.output


REGISTRIES = [(module, attribute) for _, module, attribute, _ in __import__(
    "medattack.cli.docs", fromlist=["REGISTRIES"]).REGISTRIES]


@pytest.mark.parametrize(("module", "attribute"), REGISTRIES, ids=[a for _, a in REGISTRIES])
def test_every_plugin_of_every_registry_keeps_the_contract(module, attribute):
    """A summary, metadata of the declared kinds, a settings class that round-trips, and a place in the list
    and the generated reference."""
    from medattack.cli.docs import plugins_page
    from medattack.config import from_mapping, to_dict

    registry = _registry(module, attribute)
    page = plugins_page()
    assert len(registry) > 0
    for name, entry in registry.items():
        info = registry.info(name)
        described = info.summary or getattr(entry, "__name__", "")
        assert described, f"{attribute}[{name!r}] has no summary (docstring) or name"
        assert info.modality in ("text", "image", "text+image", "any")
        assert info.access in ("white-box", "black-box", "any") and isinstance(info.needs, tuple)
        assert f"### `{name}`" in page
        config_class = getattr(entry, "config_class", None) or (entry if dataclasses.is_dataclass(entry) else None)
        if config_class is not None:
            default = config_class()
            assert from_mapping(config_class, to_dict(default), name) == default  # settings round-trip


def test_a_plugin_from_another_installed_package_is_registered_listed_and_cited(tmp_path, monkeypatch):
    """A tiny distribution on the path with a `medattack.plugins` entry point: its attack registers and lists."""
    package = tmp_path / "medattack_extra_attack"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from dataclasses import dataclass\n"
        "from medattack.attacks.base import ATTACKS\n"
        "from medattack.attacks.direct import Direct\n\n"
        "@ATTACKS.register('extra-direct', citation='Example et al. 2026', modality='text', access='any',\n"
        "                  needs=('network',))\n"
        "class ExtraDirect(Direct):\n"
        "    \"\"\"The direct baseline, from another package.\"\"\"\n")
    info = tmp_path / "medattack_extra_attack-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medattack-extra-attack\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[medattack.plugins]\nextra = medattack_extra_attack\n")
    code = ("import sys, json; sys.path.insert(0, sys.argv[1])\n"
            "from typer.testing import CliRunner\n"
            "from medattack.cli import app\n"
            "out = CliRunner().invoke(app, ['list', 'attacks', '--json']).output\n"
            "print(json.dumps([e for e in json.loads(out) if e['name'] == 'extra-direct']))")
    found = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    [entry] = __import__("json").loads(found.stdout)
    assert entry["citation"] == "Example et al. 2026" and entry["needs"] == ["network"]
    assert entry["from"] == "medattack_extra_attack"
    assert entry["summary"] == entry["description"] == "The direct baseline, from another package."


def test_a_registry_whose_plugin_fails_to_import_is_not_left_partial(tmp_path, monkeypatch):
    from medattack.registry import Registry

    (tmp_path / "broken_plugins").mkdir()
    (tmp_path / "broken_plugins" / "__init__.py").write_text("")
    (tmp_path / "broken_plugins" / "good.py").write_text(
        "from medattack.registry import Registry\nimport builtins\nbuiltins._test_registry.add('good', 1)\n")
    (tmp_path / "broken_plugins" / "zbad.py").write_text("raise ImportError('a missing package')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("thing", plugins="broken_plugins")
    monkeypatch.setattr("builtins._test_registry", registry, raising=False)
    for _ in range(2):  # the failure is raised at every read, not once and then a partial registry
        with pytest.raises(ImportError, match="a missing package"):
            list(registry)
