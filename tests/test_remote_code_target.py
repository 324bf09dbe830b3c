"""A remote-code model that maps only AutoModelForCausalLM (CheXagent's published usage) loads and answers
through the `hf` target with `auto_class: causal-lm`, offline, from a tiny model folder with its own code."""

import json
import shutil

import pytest

from medattack.errors import TargetError
from medattack.models.targets import Query, TargetConfig, load_target

MODELING = '''
from transformers import LlavaConfig, LlavaForConditionalGeneration


class TinyCausalVLMConfig(LlavaConfig):
    model_type = "tiny_causal_vlm"


class TinyCausalVLM(LlavaForConditionalGeneration):
    config_class = TinyCausalVLMConfig
'''


@pytest.fixture(scope="module")
def remote_code_model(tmp_path_factory, saved_tiny_vlm):
    folder = tmp_path_factory.mktemp("remote") / "tiny-causal-vlm"
    shutil.copytree(saved_tiny_vlm, folder)
    (folder / "modeling_tiny_causal_vlm.py").write_text(MODELING)
    config = json.loads((folder / "config.json").read_text())
    config.update({"model_type": "tiny_causal_vlm", "architectures": ["TinyCausalVLM"],
                   "auto_map": {"AutoConfig": "modeling_tiny_causal_vlm.TinyCausalVLMConfig",
                                "AutoModelForCausalLM": "modeling_tiny_causal_vlm.TinyCausalVLM"}})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _query(k: int) -> Query:
    import numpy as np

    return Query(f"q{k}", f"What does image {k} show?", np.full((32, 32, 3), 40 * k, dtype=np.uint8))


def test_a_causal_lm_only_model_loads_with_the_opt_in_and_answers(remote_code_model):
    config = TargetConfig(kind="hf", model=str(remote_code_model), auto_class="causal-lm", trust_remote_code=True,
                          max_new_tokens=4, batch_size=2, prompt_template="USER: <image>\n{question} ASSISTANT:")
    target = load_target(config)
    assert type(target.model).__name__ == "TinyCausalVLM"
    queries = [_query(k) for k in range(3)]
    answers = target.answer(queries)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert answers == [target.answer([q])[0] for q in queries]  # batched with left padding = one at a time
    assert target._prompt("Why?", True) == "USER: <image>\nWhy? ASSISTANT:"


def test_without_the_opt_in_the_error_says_what_to_set(remote_code_model):
    with pytest.raises(TargetError, match="auto_class=causal-lm"):
        load_target(TargetConfig(kind="hf", model=str(remote_code_model), trust_remote_code=True))
