"""The `hf` judge: a local transformers causal LM as judge, batched on a device (the recommended judge on
a GPU): Llama Guard 3 (1B/8B, `verdict_format: llamaguard`, the default), a HarmBench classifier
(`harmbench`, with its published prompt passed as `prompt_template`), or any instruct model with
medattack's medical-harm rubric (`json`).

The prompt is the model's own chat template applied to the judge's messages (judges/verdicts.py); a
model without one (the HarmBench classifiers) needs `prompt_template`, a text with `{request}` and
`{response}` (read from a file when the value names one). Greedy decoding; the answer is read by the
format's parser, and one that holds no verdict is undecided (null), never 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from medattack.config import option
from medattack.errors import ConfigError
from medattack.models.loading import hub_errors, torch_dtype
from medattack.scoring.judges.base import JUDGES, JudgeValidity, Verdict
from medattack.scoring.judges.verdicts import VerdictFormat, judge_messages, verdict


@dataclass(frozen=True)
class HFJudgeConfig:
    model: str = option("meta-llama/Llama-Guard-3-1B", "Hub id or local folder of the judge (a causal LM).")
    verdict_format: VerdictFormat = option(
        "llamaguard", "How the model answers: llamaguard (safe/unsafe), harmbench (Yes/No), json (the rubric).")
    prompt_template: str | None = option(
        None, "Prompt with {request} and {response} (text or a file), for models without a chat template.")
    device: str = option("cpu", "torch device (cuda, cuda:1, cpu).")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = option(
        "auto", "Weights dtype; auto = bfloat16 on a GPU, float32 on CPU.")
    batch_size: int = option(8, "Judgements per forward pass.", low=1)
    max_new_tokens: int = option(128, "Tokens the judge may answer (llamaguard and harmbench need few).", low=1)
    max_response_chars: int = option(8000, "Longest response given to the judge, in characters (the rest is cut).",
                                     low=1)
    trust_remote_code: bool = option(False, "Run the model repository's own code (only for models you trust).")


@JUDGES.register("hf", needs=("model weights", "gpu"))
class HFJudge:
    """A local causal LM judge (Llama Guard, HarmBench classifier, or an instruct model with the rubric)."""

    config_class = HFJudgeConfig
    validity: JudgeValidity | None = None  # unknown until measured: `report --set labels=FILE`

    def __init__(self, config: HFJudgeConfig | None = None, cache_path: Path | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config or HFJudgeConfig()
        c = self.config
        dtype = torch_dtype(c.dtype, c.device)
        with hub_errors(c.model):
            self.tokenizer = AutoTokenizer.from_pretrained(c.model, trust_remote_code=c.trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.template = _template(c.prompt_template)
        if self.template is None and not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"the judge model {c.model} has no chat template; pass its prompt as "
                              "prompt_template (a text or file with {request} and {response}).")
        with hub_errors(c.model):
            self.model = AutoModelForCausalLM.from_pretrained(
                c.model, dtype=dtype, trust_remote_code=c.trust_remote_code).to(c.device).eval()
        self.name = f"hf:{c.model} ({c.verdict_format})"

    def prompt(self, request: str, response: str) -> str:
        response = response[: self.config.max_response_chars]
        if self.template is not None:
            return self.template.replace("{request}", request).replace("{response}", response)
        return self.tokenizer.apply_chat_template(judge_messages(request, response, self.config.verdict_format),
                                                  add_generation_prompt=True, tokenize=False)

    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy answers to the prompts, one batch."""
        import torch

        inputs = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.config.device)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.config.max_new_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    def judge(self, requests: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        out = [Verdict.empty() for _ in responses]
        ready = [k for k, r in enumerate(responses) if r.strip()]
        size = self.config.batch_size
        for start in range(0, len(ready), size):
            batch = ready[start:start + size]
            answers = self.generate([self.prompt(requests[k], responses[k]) for k in batch])
            for k, answer in zip(batch, answers, strict=True):
                out[k] = verdict(answer, self.config.verdict_format)
        return out


def _template(value: str | None) -> str | None:
    """The prompt template: the text itself, or a file's text when the value names a file."""
    if not value:
        return None
    path = Path(value)
    text = path.read_text(encoding="utf-8") if "{" not in value and path.is_file() else value
    for field in ("{request}", "{response}"):
        if field not in text:
            raise ConfigError(f"the judge's prompt_template has no {field}: give it both {{request}} and "
                              "{response}.")
    return text
