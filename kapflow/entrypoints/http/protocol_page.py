"""`GET /protocol[?release=V]`: the protocol document (workflow/protocol.py) as printable
HTML.

The Markdown `kapflow protocol` prints, rendered with markdown-it-py (one source for both)
for a browser and for paper: no script, one inline style sheet, the diagram as Graphviz SVG
when Graphviz is installed (Mermaid text otherwise). It holds no client data, so it needs no
key.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache
from html import escape

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from markdown_it import MarkdownIt
from markdown_it.token import Token

from kapflow.entrypoints.http.errors import ApiError
from workflow.protocol import ProtocolDocument, protocol_document, protocol_markdown
from workflow.releases import RELEASES

router = APIRouter()

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"

_STYLE = """
body { font: 15px/1.5 "DejaVu Serif", Georgia, serif; color: #111; background: #fff;
  max-width: 60rem; margin: 2rem auto; padding: 0 1.5rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; border-bottom: 2px solid #333; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
code { font: 13px "DejaVu Sans Mono", monospace; background: #f2f2f2; padding: 0 .2em; }
table { border-collapse: collapse; width: 100%; margin: .4rem 0 1rem; font-size: 13.5px; }
th, td { border: 1px solid #999; padding: .3rem .45rem; text-align: left; vertical-align: top; }
th { background: #e8e8e8; }
blockquote { margin: .3rem 0; padding: .2rem .8rem; border-left: 4px solid #555;
  background: #f6f6f6; }
.meta { color: #333; }
.diagram svg { max-width: 100%; height: auto; }
pre { font-size: 12px; background: #f6f6f6; padding: .6rem; overflow-x: auto; }
nav ol { columns: 2; }
@media print {
  body { margin: 0; max-width: none; font-size: 11pt; }
  h2 { page-break-before: always; }
  h2:first-of-type { page-break-before: avoid; }
  table, blockquote, .diagram { page-break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""


# CommonMark with tables; raw HTML in the source is escaped, never passed through.
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")
_MERMAID_BLOCK = re.compile(r'<pre><code class="language-mermaid">.*?</code></pre>', re.DOTALL)
_SLUG = re.compile(r"[^a-z0-9]+")
# The page is HTML; its refusals are the API's JSON errors, documented as such.
_ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    "required": ["error", "detail"],
}
_JSON_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"description": why, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    for code, why in ((404, "unknown pathway release"), (422, "invalid parameter"))
}


def _dot(document: ProtocolDocument) -> str:
    """The transitions that change the state, one edge per (from, to) with its events: a
    diagram that stays legible on paper (self-transitions are in the tables)."""
    edges: dict[tuple[str, str], list[str]] = {}
    for t in document.transitions:
        if not t.stays and t.source != "new":
            events = edges.setdefault((t.source, t.target), [])
            if t.machine_event not in events:
                events.append(t.machine_event)
    lines = [
        "digraph pathway {",
        '  rankdir=LR; node [shape=box, style=rounded, fontname="DejaVu Sans", fontsize=12];',
        '  edge [fontname="DejaVu Sans", fontsize=9, color="#555555"];',
    ]
    for state in document.states:
        style = ", penwidth=2" if state.on_main_line else ""
        lines.append(f'  {state.id} [label="{state.id.replace("_", " ")}"{style}];')
    for (source, target), events in edges.items():
        label = "\\n".join(e.replace("_", " ") for e in events)
        lines.append(f'  {source} -> {target} [label="{label}"];')
    lines.append("}")
    return "\n".join(lines)


def _diagram(document: ProtocolDocument) -> str:
    if shutil.which("dot") is None:
        return f"<pre>{escape(document.mermaid)}</pre>"
    result = subprocess.run(
        ["dot", "-Tsvg"], input=_dot(document), capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        return f"<pre>{escape(document.mermaid)}</pre>"
    svg = result.stdout
    start = svg.find("<svg")
    body = svg[start:] if start >= 0 else svg
    return (
        '<figure class="diagram" role="img" aria-label="state diagram of the care pathway">'
        f"{body}<figcaption>The care pathway (from the machine itself).</figcaption></figure>"
        f"<details><summary>Mermaid text</summary><pre>{escape(document.mermaid)}</pre></details>"
    )


def _name_headings(tokens: list[Token]) -> None:
    """Anchors for the sections (`#diagram`, `#rules`) and for each rule, event type and
    release (`#R12`, `#clinician.dosing_started`), so the document can be linked into."""
    for heading, inline in zip(tokens, tokens[1:], strict=False):
        if heading.type != "heading_open" or inline.type != "inline":
            continue
        text = inline.content.replace("`", "").strip()
        if heading.tag == "h2":
            text = _SLUG.sub("-", text.lower()).strip("-")
        heading.attrSet("id", text)


def render_protocol(document: ProtocolDocument) -> str:
    """The Markdown document (`kapflow protocol`) rendered as HTML: one source for both, and
    the diagram drawn as SVG in place of its Mermaid text."""
    tokens = _MARKDOWN.parse(protocol_markdown(document))
    _name_headings(tokens)
    body = _MARKDOWN.renderer.render(tokens, _MARKDOWN.options, {})
    body = _MERMAID_BLOCK.sub(lambda _: _diagram(document), body, count=1)
    body = body.replace("<th>", '<th scope="col">')
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>KAP care pathway protocol {escape(document.version)}</title>"
        f"<style>{_STYLE}</style></head><body><main>{body}</main></body></html>"
    )


@lru_cache(maxsize=8)
def _page(release: str | None) -> str:
    # The document depends only on the code and the release: built once per process.
    return render_protocol(protocol_document(release))


@router.get(
    "/protocol",
    tags=["operations"],
    summary="The protocol as a printable, clinician-readable document (`kapflow protocol`)",
    response_class=HTMLResponse,
    responses=_JSON_ERRORS,
)
def protocol(
    release: str | None = Query(
        None, description="a pathway release (e.g. 2026.11.5); default: the current one"
    ),
) -> HTMLResponse:
    if release is not None and release not in RELEASES:
        raise ApiError(404, "not_found", f"unknown pathway release; known: {', '.join(RELEASES)}")
    return HTMLResponse(
        _page(release), headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"}
    )
