"""The human document as one standalone HTML page (inline styles, no scripts, no external files)."""

from __future__ import annotations

from html import escape

from tether.netreq.model import Manifest
from tether.netreq.render.document import Table, build_document

__all__ = ["render"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 80rem; color: #1b1f24;
       padding: 0 1rem; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; }
.subtitle { color: #57606a; margin-top: 0; }
table { border-collapse: collapse; width: 100%; margin: 0.5rem 0 1.5rem; font-size: 0.92rem; }
th, td { border: 1px solid #d0d7de; padding: 0.35rem 0.5rem; text-align: left;
         vertical-align: top; }
th { background: #f6f8fa; }
td:first-child { font-family: ui-monospace, monospace; white-space: nowrap; }
caption { text-align: left; font-weight: 600; padding: 0.3rem 0; }
@media print { body { margin: 0; max-width: none; } }
""".strip()


def render(m: Manifest) -> str:
    doc = build_document(m)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(doc.title)}</title>",
        f"<style>\n{_STYLE}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(doc.title)}</h1>",
        f'<p class="subtitle">{escape(doc.subtitle)}</p>',
    ]
    for section in doc.sections:
        out.append("<section>")
        out.append(f"<h2>{escape(section.title)}</h2>")
        out += [f"<p>{escape(' '.join(p.split()))}</p>" for p in section.paragraphs]
        for caption, table in section.tables:
            out += _table(caption, table)
        if section.bullets:
            out.append("<ul>")
            out += [f"<li>{escape(b)}</li>" for b in section.bullets]
            out.append("</ul>")
        out.append("</section>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def _table(caption: str, table: Table) -> list[str]:
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{escape(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in table.headers) + "</tr>")
    out.append("</thead>")
    out.append("<tbody>")
    for row in table.rows:
        out.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody>")
    out.append("</table>")
    return out
