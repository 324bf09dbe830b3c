"""Render the report's sections as self-contained HTML, Markdown and LaTeX tables.

Sections are format-neutral (`Section`: title, text, tables, figures); each renderer escapes every
string it did not write itself - model outputs, questions, file and model names - so a response
holding `<script>` or `onerror=` shows as text. The HTML is a Jinja2 template with autoescape
(templates/report.html.j2); it has no JavaScript and embeds its figures as data URLs, so it opens
anywhere, offline, as one file; its cells link to the drill-down pages beside it (samples.py).
"""

from __future__ import annotations

import base64
import functools
import html
import re
from dataclasses import dataclass, field

import jinja2


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    name: str = ""  # file stem for the .tex / .csv copies
    wide_text: tuple[int, ...] = ()  # columns holding long model text
    links: list[list[str | None]] = field(default_factory=list)  # per cell (as rows): a drill-down page, or None


@dataclass
class Figure:
    name: str
    caption: str
    png: bytes


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs (plain text)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


# --- HTML -----------------------------------------------------------------------------------------


@functools.cache
def template(name: str) -> jinja2.Template:
    """A page template of templates/ (autoescaped, undefined names an error; `base64` filter for figures)."""
    environment = jinja2.Environment(loader=jinja2.PackageLoader("medattack.report", "templates"),
                                     autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True)
    environment.filters["base64"] = lambda data: base64.b64encode(data).decode("ascii")
    return environment.get_template(name)


def to_html(title: str, sections: list[Section]) -> str:
    """The report as one HTML page (templates/report.html.j2, autoescaped)."""
    return template("report.html.j2").render(title=title, sections=sections)


# --- Markdown -------------------------------------------------------------------------------------


_MD_SPECIAL = re.compile(r"([\\`\[\]|])")  # escapes, code, link/image brackets, table cells


def _md_cell(value: str) -> str:
    """Text from anywhere as inert Markdown: HTML escaped (a viewer that renders inline HTML shows it as
    text), and the characters of links, images, code and tables backslash-escaped, so model output
    such as `![x](http://...)` or `[x](javascript:...)` is shown, never fetched or linked."""
    text = html.escape(" ".join(value.split()), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", text)


def to_markdown(title: str, sections: list[Section], figure_dir: str = "figures") -> str:
    lines = [f"# {_md_cell(title)}", ""]
    for section in sections:
        lines += [f"## {_md_cell(section.title)}", ""]
        for paragraph in section.text:
            lines += [_md_cell(paragraph), ""]
        for table in section.tables:
            lines += [f"### {_md_cell(table.title)}", ""]
            if table.note:
                lines += [f"_{_md_cell(table.note)}_", ""]
            lines.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
            lines.append("|" + "---|" * len(table.columns))
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in table.rows]
            lines.append("")
        for figure in section.figures:
            lines += [f"![{_md_cell(figure.caption)}]({figure_dir}/{figure.name}.png)", ""]
    return "\n".join(lines)


# --- LaTeX ----------------------------------------------------------------------------------------

_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}
_LATEX_PATTERN = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def latex_escape(text: str) -> str:
    return _LATEX_PATTERN.sub(lambda m: _LATEX_SPECIAL[m.group()], text)


def to_latex(table: Table) -> str:
    """A booktabs tabular with a caption (needs \\usepackage{booktabs})."""
    spec = "".join("p{6cm}" if k in table.wide_text else "l" for k in range(len(table.columns)))
    lines = [r"\begin{table}[t]", r"\centering\small", rf"\caption{{{latex_escape(table.title)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(" ".join(v.split())) for v in row) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)
