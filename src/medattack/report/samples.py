"""Drill-down pages: the answers behind every number of the report, as static files (no server).

    <out>/samples/<run>--<target>.html            every answer of one target: image thumbnail, question, answer,
                                                  the judge's verdict and reason, every metric's value
    <out>/samples/<run>--<method>--<target>.html  a black-box search's attempt tree per sample

A report cell links to its target's page with a filter in the fragment (`#method=none&condition=malicious`);
the page shows the rows matching it and a text box narrows them further. The filter is the page's only
script, allowed by its hash in the page's Content-Security-Policy: anything else that looks like a script
(a model's answer holding `<script>`) is escaped text and would be refused to run anyway. Thumbnails are
embedded once per image (CSS classes), so a page opens anywhere on its own.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from medattack.numbers import shown
from medattack.report.aggregate import HARMFUL_CONDITIONS, JUDGE_METRIC
from medattack.report.reading import RunData
from medattack.report.render import template
from medattack.rundir import RunDir, folder_name, write_bytes_atomic
from medattack.storage import readable

THUMBNAIL_PIXELS = 96  # longest side of a thumbnail
FILTER_KEYS = ("id", "method", "condition", "questions", "task", "modality")  # what a link's fragment may filter on

FILTER_SCRIPT = """(function () {
  var box = document.getElementById('filter');
  var rows = Array.prototype.slice.call(document.querySelectorAll('[data-id]'));
  var said = document.getElementById('shown');
  function wanted() {
    var keys = {};
    location.hash.slice(1).split('&').forEach(function (part) {
      var at = part.indexOf('=');
      if (at > 0) { keys[decodeURIComponent(part.slice(0, at))] = decodeURIComponent(part.slice(at + 1)); }
    });
    return keys;
  }
  function apply() {
    var keys = wanted(), names = Object.keys(keys), text = box.value.toLowerCase(), shown = 0;
    rows.forEach(function (row) {
      var match = names.every(function (k) { return row.dataset[k] === keys[k]; }) &&
        (!text || row.textContent.toLowerCase().indexOf(text) >= 0);
      row.hidden = !match;
      if (match) { shown += 1; }
    });
    said.textContent = shown + ' of ' + rows.length + ' shown' +
      (names.length ? ' (' + names.map(function (k) { return k + ' = ' + keys[k]; }).join(', ') + ')' : '');
  }
  box.addEventListener('input', apply);
  window.addEventListener('hashchange', apply);
  apply();
})();"""
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(FILTER_SCRIPT.encode()).digest()).decode()


def target_page(run: str, target: str) -> str:
    return folder_name(f"{run}--{target}") + ".html"


def search_page(run: str, method: str, target: str) -> str:
    return folder_name(f"{run}--{method}--{target}") + ".html"


def link(page: str, **filters: Any) -> str:
    """A report cell's link (relative to the report folder) to `page` showing the rows matching `filters`."""
    fragment = "&".join(f"{quote(key, safe='')}={quote(str(value), safe='')}" for key, value in filters.items()
                        if key in FILTER_KEYS and value is not None)
    return f"samples/{page}" + (f"#{fragment}" if fragment else "")


class _Thumbnails:
    """Each image once, as a small JPEG data URL behind a CSS class."""

    def __init__(self) -> None:
        self.classes: dict[str, str] = {}  # CSS class -> data URL

    def css_class(self, path: Path) -> str:
        key = "t" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
        if key not in self.classes:
            from PIL import Image

            try:
                with Image.open(path) as image:
                    image = image.convert("RGB")
                    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
                    buffer = io.BytesIO()
                    image.save(buffer, "JPEG", quality=75)
                self.classes[key] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
            except (OSError, ValueError):  # a missing or unreadable image: no thumbnail, the row stays
                self.classes[key] = ""
        return key if self.classes[key] else ""


def _text(value: Any) -> str:
    """A text cell of the scores table ("" for a missing one, which pandas holds as None or NaN)."""
    return value if isinstance(value, str) else ""


ANSWER_COLUMNS = ("response_id", "method", "condition", "task", "modality", "image_file", "metric", "value",
                  "null_reason", "reason")


def _answers(run: RunData, target: str, thumbnails: _Thumbnails) -> list[dict[str, Any]]:
    """One row per answer of `target`: what it was asked, what it said, and every metric's value. One pass over
    the target's score rows in (answer, metric) order: no per-answer table operations, so 100,000 answers take
    seconds."""
    frame = run.scores[run.scores["target"] == target]
    frame = frame[[c for c in ANSWER_COLUMNS if c in frame]].sort_values(["response_id", "metric"], kind="stable")
    texts = run.texts_of(frame["response_id"].unique())
    rows = []
    for response_id, group in itertools.groupby(frame.to_dict("records"), key=lambda r: r["response_id"]):
        metrics = list(group)
        first = metrics[0]
        judged = next((r for r in metrics if r["metric"] == JUDGE_METRIC), None)
        verdict = "-" if judged is None else shown(judged["value"], "g", "null")
        reason = "" if judged is None else _text(judged.get("reason")) or _text(judged.get("null_reason"))
        image_file = str(first.get("image_file") or "")
        question, answer = texts.get(str(response_id), ("", ""))
        rows.append({
            "id": str(response_id), "method": str(first["method"]), "condition": str(first["condition"]),
            "questions": "harmful" if first["condition"] in HARMFUL_CONDITIONS else "benign",
            "task": str(first["task"]), "modality": str(first["modality"]),
            "thumbnail": thumbnails.css_class(run.root / image_file) if image_file else "",
            "image_file": image_file, "question": readable(question), "answer": readable(answer),
            "verdict": verdict, "reason": readable(reason),
            "metrics": [(str(r["metric"]), shown(r["value"], "g", "null")
                         + (f" ({r['null_reason']})" if _text(r.get("null_reason")) else "")) for r in metrics]})
    return rows


def _search_trees(run: RunData, method: str, target: str) -> list[dict[str, Any]]:
    """Per searched sample: its result and its attempts as a tree (children under their parent)."""
    samples = []
    for folder in RunDir(run.root).search_folders():
        if folder.method != method:
            continue
        for record in folder.results():
            if record.target != target:
                continue
            nodes = folder.nodes(record.sample_id)
            children: dict[str | None, list[Any]] = {}
            for node in nodes:
                children.setdefault(node.parent, []).append(node)

            def tree(parent: str | None, children: dict[str | None, list[Any]] = children) -> list[dict[str, Any]]:
                return [{"node": node, "move": str(node.move.get("name", "none")),
                         "answer": readable(node.responses[0]) if node.responses else "",
                         "children": tree(node.node_id)} for node in children.get(parent, [])]

            samples.append({"id": record.sample_id, "record": record, "tree": tree(None)})
    return samples


def write_sample_pages(runs: Sequence[RunData], out: Path, title: str) -> list[Path]:
    """Every target's and every black-box search's page under out/samples (module docstring)."""
    written = []
    for run in runs:
        for target in sorted(run.scores["target"].dropna().astype(str).unique()):
            thumbnails = _Thumbnails()
            rows = _answers(run, target, thumbnails)
            page = template("samples.html.j2").render(
                title=f"{title}: {run.name}, {target}", rows=rows, thumbnails=thumbnails.classes,
                script=FILTER_SCRIPT, script_hash=SCRIPT_HASH, kind="answers")
            path = out / "samples" / target_page(run.name, target)
            write_bytes_atomic(path, readable(page).encode("utf-8"))
            written.append(path)
        if run.searches.empty:
            continue
        for (method, target), _ in run.searches.groupby(["method", "target"], sort=True):
            samples = _search_trees(run, str(method), str(target))
            page = template("samples.html.j2").render(
                title=f"{title}: {run.name}, {method} on {target}", rows=samples, thumbnails={},
                script=FILTER_SCRIPT, script_hash=SCRIPT_HASH, kind="searches")
            path = out / "samples" / search_page(run.name, str(method), str(target))
            write_bytes_atomic(path, readable(page).encode("utf-8"))
            written.append(path)
    return written
