"""The human document as Markdown (GitHub-flavoured tables)."""

from __future__ import annotations

from tether.netreq.model import Manifest
from tether.netreq.render.document import Table, build_document

__all__ = ["render"]


def render(m: Manifest) -> str:
    doc = build_document(m)
    out = [f"# {doc.title}", "", f"_{doc.subtitle}_", ""]
    for section in doc.sections:
        out += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            out += [_cell(paragraph), ""]
        for caption, table in section.tables:
            if caption:
                out += [f"### {caption}", ""]
            out += [*_table(table), ""]
        if section.bullets:
            out += [f"- {_cell(b)}" for b in section.bullets] + [""]
    return "\n".join(out).rstrip("\n") + "\n"


def _table(table: Table) -> list[str]:
    lines = ["| " + " | ".join(table.headers) + " |"]
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    return lines


def _cell(text: str) -> str:
    """One line of inline text: raw HTML from a manifest is escaped, Markdown markers too."""
    text = " ".join(text.split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")
