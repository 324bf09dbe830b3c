"""The tables and lines each command prints. Data (file names, labels, model output) is escaped so
that Rich never reads it as markup."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.markup import escape
from rich.table import Table

from medattack.cli.app import console
from medattack.records import CONDITIONS


def print_build(result: Any) -> None:
    summary = result.summary
    table = Table(title=escape(f"Benchmark in {result.run_dir / 'benchmark'}"), show_lines=False)
    for column in ("category", "samples", *CONDITIONS):
        table.add_column(column, justify="left" if column == "category" else "right")
    by_cat: dict[str, Counter[str]] = {}
    for sample in result.samples:
        by_cat.setdefault(sample.category, Counter())[sample.condition] += 1
    for category, counts in sorted(by_cat.items()):
        table.add_row(escape(category), str(sum(counts.values())), *(str(counts.get(c, 0)) for c in CONDITIONS))
    console.print(table)
    console.print(
        f"{summary['samples']} samples = {summary['pairs']} image x prompt pairs x 4 conditions; "
        f"{summary['images']} images, {len(summary['by_modality'])} modalities, "
        f"{len(summary['by_task'])} tasks." + (" (already built: reused)" if result.reused else "")
    )
    if result.skipped_tasks:
        from medattack.data.prompt_bank import skipped_message

        source = summary.get("prompt_bank", {}).get("source", "the prompt bank")
        console.print(f"[yellow]{escape(skipped_message(result.skipped_tasks, source))}[/yellow]")
    if result.failures:
        console.print(f"[yellow]{len(result.failures)} input(s) skipped[/yellow] "
                      f"(details in {escape(str(result.run_dir / 'benchmark' / 'failures.jsonl'))}):")
        for failure in result.failures[:10]:
            console.print(escape(f"  - {failure['item']}: {failure['problem']} {failure['fix']}".rstrip()))
        if len(result.failures) > 10:
            console.print(f"  ... and {len(result.failures) - 10} more")


def print_attack(result: Any, method: str) -> None:
    table = Table("samples", "teacher-forced success", "keyword success", "failed", "mean seconds",
                  title=escape(f"{method} -> {result.folder}"))
    rows = result.results
    if rows:
        table.add_row(str(len(rows)), f"{sum(r.success for r in rows)}/{len(rows)}",
                      f"{sum(r.keyword_success for r in rows)}/{len(rows)}", str(len(result.failures)),
                      f"{sum(r.seconds for r in rows) / len(rows):.1f}")
    console.print(table)
    console.print(f"{result.attempted} sample(s) attacked now; results in {escape(str(result.folder))}/results.jsonl")


def _tokens(tokens: dict[str, int]) -> str:
    return ", ".join(f"{role} {n:,}" for role, n in tokens.items() if n) or "0"


def _dollars(cost: float | None) -> str:
    return "unknown (set prices.<role> in USD per million tokens)" if cost is None else f"${cost:,.4f}"


def print_blackbox_budget(budget: dict[str, Any]) -> None:
    """What a black-box call can use, before it starts: the most (from the search's shape and caps) and the
    target answers expected."""
    basis = (f"the per-attempt success and on-topic rates of this folder's {budget['expected_from']} earlier "
             "attempts" if budget["expected_from"] else "no attempt succeeding (a robust target)")
    console.print(f"At most {budget['target_queries']:,} target answers ({budget['attempts_per_sample']} attempts "
                  f"per sample by the search's shape, capped at max_queries {budget['max_queries']}) and "
                  f"{budget['attacker_calls']:,} attacker calls for {budget['samples']} sample(s); about "
                  f"{_tokens(budget['tokens'])} tokens (estimated), cost at most {_dollars(budget['cost_usd'])}. "
                  f"Expected: about {budget['expected_queries']:,.0f} target answers, assuming {basis}; a search "
                  "stops at its first jailbreak.")


def print_blackbox(result: Any, method: str) -> None:
    rows = result.results
    table = Table("samples", "jailbroken", "undecided", "queries (mean)", "queries to success (median)",
                  "attacker-written", "failed", title=escape(f"{method} -> {result.folder}"))
    if rows:
        to_success = sorted(r.queries_to_success for r in rows if r.queries_to_success is not None)
        attempts = sum(r.nodes for r in rows)
        decided = [r for r in rows if r.success is not None]
        table.add_row(str(len(rows)), f"{sum(bool(r.success) for r in decided)}/{len(decided)}",
                      str(len(rows) - len(decided)),
                      f"{sum(r.queries for r in rows) / len(rows):.1f}",
                      str(to_success[len(to_success) // 2]) if to_success else "-",
                      f"{sum(r.proposals_parsed for r in rows)}/{attempts}", str(len(result.failures)))
    console.print(table)
    tokens = {role: sum(r.tokens.get(role, 0) for r in rows) for role in ("attacker", "target", "judge")}
    costs = [r.cost_usd for r in rows]
    console.print(f"{result.attempted} sample(s) searched now; used {_tokens(tokens)} tokens (estimated), cost "
                  f"{_dollars(None if None in costs else sum(costs))}; results in "
                  f"{escape(str(result.folder))}/results.jsonl")
    for role, stats in result.api_usage.items():
        _print_api_usage(f"{role} API this call", stats)


def _print_api_usage(what: str, stats: dict[str, int]) -> None:
    console.print(f"  {what}: {stats['requests']} requests ({stats['retries']} retries), {stats['cache_hits']} "
                  f"cache hits, {stats['prompt_tokens']:,} prompt + {stats['completion_tokens']:,} completion "
                  "tokens reported")


def print_query(result: Any) -> None:
    kinds = Counter(row.source for row in result.responses)
    table = Table("source", "responses", title=escape(f"{result.target} -> {result.folder}"))
    for source, count in sorted(kinds.items()):
        table.add_row(escape(source), str(count))
    console.print(table)
    console.print(f"{result.asked} asked now; {len(result.failures)} failed" + (
        f" (see {escape(str(result.folder / 'failures.jsonl'))}; a re-run retries them)" if result.failures else ".")
        + (f" {result.stale} stale answer(s) (their input changed) moved to stale.jsonl and asked again."
           if result.stale else ""))
    if result.api_usage:
        _print_api_usage("API this call", result.api_usage)


def print_scores(results: dict[str, Any]) -> None:
    for target, result in results.items():
        table = Table("metric", "condition", "n", "nulls", "mean", title=escape(f"{target} -> {result.out_dir}"))
        for row in result.summary["table"]:
            mean = "-" if row["mean"] is None else f"{row['mean']:.3f}"
            table.add_row(escape(row["metric"] + (" (proxy)" if row["is_proxy"] else "")), escape(row["condition"]),
                          str(row["n"]), str(row["nulls"]), mean)
        console.print(table)
        console.print(f"{result.computed} value(s) computed now, {result.cache_hits} from the cache"
                      + (f"; {result.stale} stale value(s) (changed response, inputs or settings) replaced."
                         if result.stale else "."))


def print_run(result: Any) -> None:
    if result.build is not None:
        print_build(result.build)
    for attack in result.attacks:
        rows = attack.results
        console.print(escape(f"attack {attack.folder.parent.name} on {attack.folder.name}: {len(rows)} sample(s), "
                             f"{sum(bool(r.success) for r in rows)} forced the target, {len(attack.failures)} failed "
                             f"({attack.attempted} attacked now)."))
    for asked in result.queries:
        console.print(escape(f"query {asked.target}: {len(asked.responses)} response(s) ({asked.asked} asked now), "
                             f"{len(asked.failures)} failed -> {asked.folder / 'responses.jsonl'}"))
    for target, scored in result.scores.items():
        console.print(escape(f"scores {target}: {scored.count} row(s), {scored.computed} computed now, "
                             f"{scored.cache_hits} from the cache, {scored.stale} stale replaced."))
    if result.report is not None:
        console.print(f"Report: [bold]{escape(str(result.report.html.resolve()))}[/bold]")
