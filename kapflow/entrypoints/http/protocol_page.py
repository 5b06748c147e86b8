"""`GET /protocol`: the protocol document (workflow/protocol.py) as printable HTML.

The same structure `kapflow protocol` prints as Markdown, rendered here for a browser and
for paper: no script, one inline style sheet, the diagram as Graphviz SVG when Graphviz is
installed (Mermaid text otherwise). It holds no client data, so it needs no key.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache
from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from workflow.protocol import ProtocolDocument, protocol_document, transition_rows

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


def _code(text: str) -> str:
    return f"<code>{escape(text)}</code>"


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


def render_protocol(document: ProtocolDocument) -> str:
    out: list[str] = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>KAP care pathway protocol {escape(document.version)}</title>",
        f"<style>{_STYLE}</style></head><body><main>",
        f"<h1>KAP care pathway — protocol</h1><p class='meta'>Pathway version "
        f"{_code(document.version)}. Generated from kapflow's code: every transition, rule, "
        "task and default below is what the engine runs. A change to the code changes this "
        "document.</p>",
        "<nav aria-label='contents'><ol><li><a href='#states'>States</a></li>"
        "<li><a href='#diagram'>Diagram</a></li><li><a href='#events'>Events and "
        "transitions</a></li><li><a href='#rules'>Rules</a></li><li><a href='#tasks'>"
        "Follow-up tasks</a></li><li><a href='#policy'>Policy defaults</a></li></ol></nav>",
        "<h2 id='states'>States</h2><table><thead><tr><th scope='col'>State</th>"
        "<th scope='col'>Main line</th><th scope='col'>Meaning</th></tr></thead><tbody>",
    ]
    for state in document.states:
        out.append(
            f"<tr><td>{_code(state.id)}</td><td>{'yes' if state.on_main_line else ''}</td>"
            f"<td>{escape(state.meaning)}</td></tr>"
        )
    out.append("</tbody></table>")
    out.append(f"<h2 id='diagram'>Diagram</h2>{_diagram(document)}")
    out.append(
        "<h2 id='events'>Events and transitions</h2><p>Each event type triggers one machine "
        "event. From each state it may move the client (or leave the state as it is), when "
        "its guards hold, after its checks. A check that fails names its rule: a fact of care "
        "that breaks a protocol rule is recorded as a deviation; a contradiction of settled "
        "facts is rejected.</p>"
    )
    for event_type, machine_event, says in document.event_types:
        out.append(f"<h3 id='{escape(event_type)}'>{_code(event_type)}</h3>")
        if says:
            out.append(f"<p>{escape(says)}</p>")
        rows = transition_rows(document, machine_event)
        if not rows:
            out.append("<p>No transition: not recorded by the pathway.</p>")
            continue
        out.append(
            "<table><thead><tr><th scope='col'>From</th><th scope='col'>To</th>"
            "<th scope='col'>When</th><th scope='col'>Checks (rule)</th></tr></thead><tbody>"
        )
        for source, target, when, checks in rows:
            to = "stays" if target == "stays" else _code(target)
            out.append(
                f"<tr><td>{escape(source)}</td><td>{to}</td><td>{escape(when) or '—'}</td>"
                f"<td>{escape(checks) or '—'}</td></tr>"
            )
        out.append("</tbody></table>")
    out.append("<h2 id='rules'>Rules</h2>")
    for rule in document.rules:
        out.append(f"<h3 id='{rule.id}'>{rule.id}</h3>")
        out += [f"<blockquote>Seed: {escape(sentence)}</blockquote>" for sentence in rule.seed]
        if rule.checks:
            out.append("<p>Checked by:</p><ul>")
            out += [f"<li>{_code(c.name)}: {escape(c.says) or '—'}</li>" for c in rule.checks]
            out.append("</ul>")
        if rule.transitions:
            out.append("<p>Applied on:</p><ul>")
            out += [f"<li>{escape(where)}</li>" for where in rule.transitions]
            out.append("</ul>")
        if rule.also:
            out.append("<p>Also in:</p><ul>")
            out += [f"<li>{_code(m.where)}: {escape(m.text)}</li>" for m in rule.also]
            out.append("</ul>")
    out.append(
        "<h2 id='tasks'>Follow-up tasks</h2><table><thead><tr><th scope='col'>Code</th>"
        "<th scope='col'>What</th><th scope='col'>Opened by</th><th scope='col'>Owner</th>"
        "<th scope='col'>Priority</th><th scope='col'>Due</th></tr></thead><tbody>"
    )
    for task in document.tasks:
        openings = task.openings or ()
        if not openings:
            out.append(
                f"<tr><td>{_code(task.code)}</td><td>{escape(task.description)}</td>"
                "<td>—</td><td>—</td><td>—</td><td>—</td></tr>"
            )
        for opening in openings:
            by = ", ".join(opening.event_types) or opening.where
            out.append(
                f"<tr><td>{_code(task.code)}</td><td>{escape(task.description)}</td>"
                f"<td>{escape(by)}</td><td>{escape(opening.owner)}</td>"
                f"<td>{escape(opening.priority)}</td><td>{escape(opening.due)}</td></tr>"
            )
    out.append("</tbody></table>")
    out.append(
        "<h2 id='policy'>Policy defaults</h2><table><thead><tr><th scope='col'>Setting</th>"
        "<th scope='col'>Default</th><th scope='col'>Why</th></tr></thead><tbody>"
    )
    for setting in document.policy:
        out.append(
            f"<tr><td>{_code(setting.name)}</td><td>{escape(setting.default)}</td>"
            f"<td>{escape(setting.why) or '—'}</td></tr>"
        )
    out.append("</tbody></table></main></body></html>")
    return "\n".join(out)


@lru_cache(maxsize=1)
def _page() -> str:
    # The document depends only on the code: build it once per process.
    return render_protocol(protocol_document())


@router.get(
    "/protocol",
    tags=["operations"],
    summary="The protocol as a printable, clinician-readable document (`kapflow protocol`)",
    response_class=HTMLResponse,
)
def protocol() -> HTMLResponse:
    return HTMLResponse(
        _page(), headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"}
    )
