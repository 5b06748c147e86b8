"""The pathway diagram, exported from the machine itself (Mermaid; SVG via Graphviz)."""

from __future__ import annotations

import shutil
import subprocess

from workflow.states.pathway import PATHWAY_VERSION, CarePathway


def mermaid() -> str:
    text = f"{CarePathway():mermaid}"
    # Drop the "active state" highlight: a diagram of the protocol has no current client.
    lines = [
        line
        for line in text.splitlines()
        if "classDef active" not in line and ":::active" not in line
    ]
    return f"%% kapflow care pathway {PATHWAY_VERSION}\n" + "\n".join(lines).rstrip() + "\n"


def dot() -> str:
    return f"{CarePathway():dot}"


def graphviz_svg() -> str:
    if shutil.which("dot") is None:
        raise RuntimeError("Graphviz `dot` is not installed; use --format mermaid")
    result = subprocess.run(
        ["dot", "-Tsvg"], input=dot(), capture_output=True, text=True, check=False, timeout=30
    )
    if result.returncode != 0:
        raise RuntimeError("Graphviz could not render the diagram")
    return result.stdout
