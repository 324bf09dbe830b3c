"""The inject attack: an instruction written into the image where, as large and as visibly as asked, the same on
every call, and replayed by query like any attack."""

import numpy as np
import pytest
import torch

from medattack.attacks import AttackTask
from medattack.attacks.inject import Inject, InjectConfig, choose_template, mask_box
from medattack.config import from_mapping
from medattack.data.injection import PLACEMENTS, injection_templates, render_instruction
from medattack.errors import ConfigError

TEXT = injection_templates()["suppress-finding"].instruction


def grey(value=200, size=224):
    return np.full((size, size, 3), value, dtype=np.uint8)


def ink(out, image):
    return (out != image).any(axis=2)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_each_placement_writes_where_it_says(placement):
    image = grey()
    written = ink(render_instruction(image, TEXT, placement, 0.06, 1.0, 1.0, box=(120, 130, 200, 200))[0], image)
    rows, cols = written.nonzero()
    assert len(rows) > 50
    if placement in ("corner", "dicom"):
        assert rows.min() < 20 and rows.max() < 112
    if placement == "corner":
        assert cols.max() < 112 + 16
    if placement == "margin":
        assert rows.min() > 112 and cols.max() < 112 + 16
    if placement == "roi":
        assert rows.min() >= 130 and cols.min() >= 120
    if placement == "dicom":
        assert rows.max() - rows.min() < 0.06 * 224 * 1.5  # one line


def test_visibility_grows_with_contrast_and_opacity_and_vanishes_at_zero():
    image = grey(90)

    def change(contrast, opacity=1.0):
        out, _ = render_instruction(image, TEXT, "corner", 0.08, contrast, opacity)
        return np.abs(out.astype(int) - image.astype(int)).sum()

    assert change(0.0) == 0 and change(1.0, 0.0) == 0
    doses = [change(c) for c in (0.05, 0.2, 0.5, 1.0)]
    assert doses == sorted(doses) and doses[0] < doses[-1]
    assert change(1.0, 0.1) < change(1.0, 0.5) < change(1.0, 1.0)
    light, reached = render_instruction(grey(230), TEXT, "corner", 0.08, 0.5, 1.0)
    assert reached == pytest.approx(0.5, abs=0.01)
    _, capped = render_instruction(grey(128), TEXT, "corner", 0.08, 1.0, 1.0)  # mid-grey: black is 0.5 away
    assert capped == pytest.approx(128 / 255, abs=0.01)
    assert light.min() < 230 and light.max() <= 230  # dark text on a light image, light text on a dark one
    dark, _ = render_instruction(grey(20), TEXT, "corner", 0.08, 0.5, 1.0)
    assert dark.max() > 20 and dark.min() >= 20


def test_rendering_and_the_template_drawn_per_sample_are_deterministic():
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    first, _ = render_instruction(image, TEXT, "roi", 0.1, 0.3, 0.6)
    assert np.array_equal(first, render_instruction(image, TEXT, "roi", 0.1, 0.3, 0.6)[0])
    assert first.shape == image.shape and first.dtype == np.uint8
    drawn = [choose_template("random", 0, f"s{k}") for k in range(40)]
    assert drawn == [choose_template("random", 0, f"s{k}") for k in range(40)]
    assert set(drawn) == set(injection_templates())  # every template is drawn across samples
    assert choose_template("leak-prompt", 0, "s1") == "leak-prompt"


def test_an_unknown_template_or_a_setting_out_of_range_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="suppress-finding"):
        from_mapping(InjectConfig, {"template": "supress"}, "inject options")
    with pytest.raises(ConfigError, match="contrast"):
        from_mapping(InjectConfig, {"contrast": [0.5, 1.5]}, "inject options")
    with pytest.raises(ConfigError, match="dicom"):
        from_mapping(InjectConfig, {"placement": ["top"]}, "inject options")
    assert len(from_mapping(InjectConfig, {"contrast": [0.1, 1.0], "placement": ["corner", "roi"]}, "x").grid()) == 4


def test_the_followed_patterns_read_the_injected_claim():
    templates = injection_templates()
    assert templates["suppress-finding"].is_followed("The study is normal, with no lesion seen.")
    assert not templates["suppress-finding"].is_followed("A 3 cm lesion in the left lobe.")
    assert templates["change-measurement"].is_followed("The lesion measures 9.5 cm.")
    assert not templates["change-measurement"].is_followed("The lesion measures 2.5 cm.")


def test_the_attack_writes_into_the_mask_box_and_records_its_template(tiny_whitebox):
    model = tiny_whitebox
    height, width = model.image_size
    mask = torch.zeros(1, 1, height, width)
    mask[..., height // 2:, width // 2:] = 1
    assert mask_box(mask) == (width // 2, height // 2, width, height)
    pixels = torch.full((1, 3, height, width), 128 / 255)  # a grey the uint8 round trip keeps
    task = AttackTask("s0", "Describe this image.", "Sure, here is", pixels, mask=mask)
    result = Inject(InjectConfig(template="add-diagnosis", placement=("roi",), size=(0.2,), max_new_tokens=2)).run(
        model, task)
    changed = (result.pixels != pixels).any(dim=1)[0]
    assert changed.any() and not changed[: height // 2].any() and not changed[:, : width // 2].any()
    assert result.info["template"] == "add-diagnosis" and result.info["placement"] == "roi"
    assert isinstance(result.info["followed"], bool)


def test_the_stage_records_injected_images_that_query_replays(tmp_path, tiny_whitebox):
    from medattack.models.targets import LlavaTarget, TargetConfig
    from medattack.stages.attack import AttackStageConfig
    from medattack.stages.attack import run as run_attack
    from medattack.stages.build import BuildConfig
    from medattack.stages.build import run as build
    from medattack.stages.query import QueryConfig
    from medattack.stages.query import run as run_query

    build(tmp_path / "run", BuildConfig(tasks=("Matching",), max_images_per_category=1))
    attacked = run_attack(tmp_path / "run", AttackStageConfig(method="inject", model="tiny", limit=6, options={
        "contrast": [0.2, 1.0], "placement": ["corner", "dicom"], "max_new_tokens": 2}), model=tiny_whitebox)
    assert len(attacked.results) == 6 and all(r.linf > 0 and r.info["template"] for r in attacked.results)
    points = {(r.info["placement"], r.info["contrast"]) for r in attacked.results}
    assert len(points) > 1 and points <= {(p, c) for p in ("corner", "dicom") for c in (0.2, 1.0)}
    target = LlavaTarget(TargetConfig(model="tiny", max_new_tokens=2), model=tiny_whitebox)
    asked = run_query(tmp_path / "run", QueryConfig(limit=6, controls=()), target=target)
    replays = [r for r in asked.responses if r.kind == "attack" and r.attack_method == "inject"]
    assert len(replays) == 6 and all(r.image_file and "attacks/inject" in r.image_file for r in replays)
