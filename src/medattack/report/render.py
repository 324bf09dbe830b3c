"""Render the report's sections as self-contained HTML, Markdown and LaTeX tables.

Sections are format-neutral (`Section`: title, text, tables, figures); each renderer escapes every
string it did not write itself - model outputs, questions, file and model names - so a response
holding `<script>` or `onerror=` shows as text. The HTML has no JavaScript and embeds its figures as
data URLs, so it opens anywhere, offline, as one file.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #1d1d1f; line-height: 1.45; padding: 0 1em; }
h1 { border-bottom: 2px solid #8b0000; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: .86em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: left; vertical-align: top; }
th { background: #f2f2f4; }
td.response { max-width: 38em; white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: .9em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; }
.note { color: #555; font-size: .9em; }
.proxy { background: #fff4d6; padding: .1em .3em; border-radius: 3px; }
"""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    name: str = ""  # file stem for the .tex / .csv copies
    wide_text: tuple[int, ...] = ()  # columns holding long model text


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


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = "".join(f'<td class="response">{html.escape(v)}</td>' if k in table.wide_text
                        else f"<td>{html.escape(v)}</td>" for k, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return (f"<h3>{html.escape(table.title)}</h3>{note}<table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def to_html(title: str, sections: list[Section]) -> str:
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(paragraph)}</p>" for paragraph in section.text]
        parts += [_html_table(t) for t in section.tables]
        for figure in section.figures:
            data = base64.b64encode(figure.png).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(figure.caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


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
