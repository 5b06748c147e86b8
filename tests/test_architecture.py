"""STYLE.md: the folders are the architecture; `events` and `workflow` never import the
runtime, a database, Kafka or HTTP library; a store adapter is chosen in one place; the
HTTP service and the worker never import the command line (import-linter contracts in
pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_domain_and_contracts_import_nothing_of_the_runtime() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout
