"""What a person at a terminal sees while a long command runs: a progress line on standard
error (rich), never on standard output, which stays the command's data."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

OUTCOMES = ("accepted", "deviation", "duplicate", "parked", "rejected")


@contextmanager
def ingest_progress(enabled: bool = True) -> Iterator[Callable[[], None]]:
    """Yields `advance()`, to call once per event; shows a live count and rate on standard
    error when it is a terminal (and `enabled`), and does nothing otherwise."""
    console = Console(stderr=True)
    if not (enabled and console.is_terminal):
        yield lambda: None
        return
    columns = (SpinnerColumn(), TextColumn("{task.completed:,.0f} events"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("ingest", total=None)
        yield lambda: progress.advance(task)


def ingest_summary(counts: Counter[str], seconds: float) -> str:
    total = sum(counts.values())
    rate = total / seconds if seconds > 0 else 0.0
    parts = [f"{outcome} {counts.get(outcome, 0):,}" for outcome in OUTCOMES]
    parts += [f"{name} {n:,}" for name, n in sorted(counts.items()) if name not in OUTCOMES]
    return f"ingested {total:,} events in {seconds:.1f} s ({rate:,.0f}/s): " + ", ".join(parts)


__all__ = ["ingest_progress", "ingest_summary"]
