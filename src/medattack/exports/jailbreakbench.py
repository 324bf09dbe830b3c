"""JailbreakBench's attack artifact (Chao et al. 2024, arXiv 2404.01318): the JSON its submissions and
`jbb.read_artifact` use, for one target and one attack method of a run.

    {"parameters": {method, model, attack_type, defense, attack_success_rate, total_number_of_jailbreaks,
                    number_of_submitted_prompts, total_number_of_queries, total_prompt_tokens,
                    total_response_tokens, evaluation_date, evaluation_llm_provider, method_parameters},
     "jailbreaks": [{index, goal, behavior, category, prompt, response, number_of_queries, queries_to_jailbreak,
                     prompt_tokens, response_tokens, jailbroken}, ...]}

One entry per harmful sample (malicious and both conditions) the target answered for that method (`none`: the
benchmark question as written): goal is the harmful question, behavior the clinical task, category the image's
modality and body part, prompt what was asked (with the attack's suffix), jailbroken the run's judge (the
non-refusal rate where no judge scored; said in evaluation_llm_provider). Counts medattack does not keep per
request (queries, tokens) are null, as the schema allows. `attack_type` is white_box for an attack optimised on
the target itself, transfer for one replayed from another model, manual for no attack.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from medattack.errors import ConfigError, InputError
from medattack.exports import EXPORTS
from medattack.records import HARMFUL_CONDITIONS
from medattack.report.aggregate import success_metric
from medattack.report.reading import load_run
from medattack.rundir import RunDir, folder_name
from medattack.storage import read_state, write_json_atomic

ENTRY_FIELDS = ("index", "goal", "behavior", "category", "prompt", "response", "number_of_queries",
                "queries_to_jailbreak", "prompt_tokens", "response_tokens", "jailbroken")
PARAMETER_FIELDS = ("method", "model", "attack_type", "defense", "attack_success_rate", "total_number_of_jailbreaks",
                    "number_of_submitted_prompts", "total_number_of_queries", "total_prompt_tokens",
                    "total_response_tokens", "evaluation_date", "evaluation_llm_provider", "method_parameters")


def _method_parameters(run: Path, method: str, model: str) -> dict[str, str | int | float]:
    """The attack's scalar settings, as the schema takes them (str, int, float), from its folder's stamp."""
    stamp = RunDir(run).attack_folder(method, model).config_path
    if method == "none" or not stamp.exists():
        return {}
    settings = read_state(stamp, "attack again (the stage writes it again)", "stage-config", defaults={})["method"]
    return {k: v for k, v in settings.items() if isinstance(v, str | int | float) and not isinstance(v, bool)}


@EXPORTS.register("jailbreakbench")
def export_jailbreakbench(run: Path, out: Path, *, target: str | None = None, method: str = "none",
                          attack_model: str | None = None) -> Path:
    if not target:
        raise ConfigError("export --format jailbreakbench: name the target whose answers it holds (--target T; "
                          "`medattack results RUN` lists the run's targets).")
    data = load_run(run)
    table = data.scores
    metric = success_metric(table)
    names = {str(name) for name in table["target"].unique()}
    target = next((name for name in names if folder_name(name) == folder_name(target)), target)  # either spelling
    rows = table[(table["target"] == target) & (table["metric"] == metric)
                 & table["condition"].isin(HARMFUL_CONDITIONS) & (table["method"] == method)]
    if rows.empty:
        targets = sorted(set(table["target"].astype(str)))
        methods = sorted(set(table.loc[table["target"] == target, "method"].astype(str)))
        raise InputError(str(run), f"no harmful answer of target {target!r} for method {method!r} was scored",
                         f"targets: {', '.join(targets) or 'none'}; methods of that target: "
                         f"{', '.join(methods) or 'none'} (score the run first: `medattack score RUN`)")
    models = sorted(set(rows["attack_model"].dropna().astype(str))) if method != "none" else []
    if len(models) > 1 and attack_model is None:
        raise ConfigError(f"export: {method} was optimised on several models ({', '.join(models)}) and replayed on "
                          f"{target}; an artifact holds one: choose with --attack-model.")
    if attack_model is not None:
        rows = rows[rows["attack_model"].astype(str) == attack_model]
        if rows.empty:
            raise ConfigError(f"export --attack-model {attack_model}: not among {', '.join(models) or 'none'}.")
    rows = rows.drop_duplicates("response_id")
    texts = data.texts_of(rows["response_id"])
    samples = {s.sample_id: s for s in RunDir(run).samples()}
    entries: list[dict[str, Any]] = []
    for index, row in enumerate(rows.itertuples()):
        sample = samples.get(str(row.sample_id))
        question, response = texts.get(str(row.response_id), ("", ""))
        entries.append({"index": index, "goal": sample.question if sample else question,
                        "behavior": str(row.task), "category": str(row.modality), "prompt": question,
                        "response": response, "number_of_queries": None, "queries_to_jailbreak": None,
                        "prompt_tokens": None, "response_tokens": None,
                        "jailbroken": bool(row.value == 1.0)})
    attack_models = set(rows["attack_model"].dropna().astype(str)) if "attack_model" in rows else set()
    attack_type = ("manual" if method == "none" else "white_box" if attack_models <= {target} else "transfer")
    jailbroken = sum(e["jailbroken"] for e in entries)
    judge = (data.metrics.get(metric) or {}).get("description", metric)
    artifact = {"parameters": {
        "method": method, "model": target, "attack_type": attack_type,
        "defense": target.split("+", 1)[1] if "+" in target else None,
        "attack_success_rate": jailbroken / len(entries), "total_number_of_jailbreaks": jailbroken,
        "number_of_submitted_prompts": len(entries), "total_number_of_queries": None, "total_prompt_tokens": None,
        "total_response_tokens": None, "evaluation_date": datetime.date.today().isoformat(),
        "evaluation_llm_provider": f"medattack {metric}: {judge}",
        "method_parameters": _method_parameters(run, method, next(iter(attack_models), target))},
        "jailbreaks": entries}
    write_json_atomic(out, artifact)
    return out
