import pytest

from medattack.config import config_help, load_config, parse_overrides
from medattack.errors import ConfigError, UnknownNameError
from medattack.registry import Registry
from medattack.stages.build import BuildConfig


def test_yaml_with_overrides(tmp_path):
    path = tmp_path / "build.yaml"
    path.write_text("sources: [embedded, 'folder:/x']\nseed: 3\ntasks: [Matching]\n")
    config = load_config(BuildConfig, path, parse_overrides(["seed=5", "typographic=true"]))
    assert config.sources == ("embedded", "folder:/x") and config.seed == 5 and config.typographic
    assert config.tasks == ("Matching",)


def test_unknown_key_is_rejected_with_a_suggestion(tmp_path):
    path = tmp_path / "build.yaml"
    path.write_text("sed: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'sed'. Did you mean 'seed'"):
        load_config(BuildConfig, path)


def test_wrong_types_are_rejected():
    with pytest.raises(ConfigError, match="'seed' expects an integer"):
        load_config(BuildConfig, overrides={"seed": "three"})
    with pytest.raises(ConfigError, match="'typographic' expects true or false"):
        load_config(BuildConfig, overrides={"typographic": "yes please"})


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["seed"])


def test_every_field_has_help():
    assert all(config_help(BuildConfig).values())


def test_registry_suggests_close_names():
    registry: Registry[int] = Registry("widget")
    registry.add("alpha", 1)
    with pytest.raises(UnknownNameError, match="did you mean 'alpha'"):
        registry["alpah"]
    with pytest.raises(ConfigError, match="registered twice"):
        registry.add("alpha", 2)
