"""STYLE.md: ruff clean everywhere; mypy on the domain, engine, service layer and stores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout


def test_mypy_is_clean_on_the_domain_and_engine() -> None:
    targets = [
        "workflow",
        "events",
        "kapflow/service",
        "kapflow/store",
    ]
    result = subprocess.run(
        [
            str(
                BIN / "mypy",
            ),
            *targets,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout
