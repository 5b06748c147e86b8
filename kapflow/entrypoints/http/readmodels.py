"""Read models the store has no query for: the pathway funnel and the stats object.

The funnel counts, for each main-line stage (inquiry → … → integrating), the clients who
EVER reached it, which current counts cannot tell (a withdrawn client once was assessed).
A client reached a stage when one of its accepted history entries moved it there
(`to_state`). The store offers no aggregate for that, so:

1. at startup, one pass over every history entry (`store.iter_history`) records, per client,
   the set of stages reached (a bitmask);
2. from then on, the outbox feed's state changes update the same bitmasks.

The feed starts before the pass, so nothing committed in between is lost; OR-ing a bit is
idempotent, so an entry seen by both is not counted twice. Cost: one int per client in
memory and one full history read per process start. A store-side `funnel()` aggregate
would remove both (noted for the core team).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from kapflow.store.base import EventStore
from workflow.client import NEW
from workflow.states.pathway import CLIENT_STATES, MAIN_LINE, PATHWAY_VERSION
from workflow.tasks import iso

STAGES: tuple[str, ...] = tuple(state for state in MAIN_LINE if state != NEW)
_BIT = {stage: 1 << i for i, stage in enumerate(STAGES)}


class PathwayFunnel:
    def __init__(self) -> None:
        self._reached: dict[str, int] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()

    def mark(self, changes: Iterable[tuple[str, str]]) -> None:
        bits = [(client_id, _BIT.get(state, 0)) for client_id, state in changes]
        with self._lock:
            reached = self._reached
            for client_id, bit in bits:
                if bit:
                    reached[client_id] = reached.get(client_id, 0) | bit

    def load(self, store: EventStore, chunk: int = 5000) -> None:
        """The startup pass over all history (run off the event loop)."""
        batch: list[tuple[str, str]] = []
        for entry in store.iter_history():
            batch.append((entry.client_id, entry.to_state))
            if len(batch) >= chunk:
                self.mark(batch)
                batch = []
        self.mark(batch)
        self.ready.set()

    def reached(self) -> dict[str, int]:
        with self._lock:
            masks = list(self._reached.values())
        return {stage: sum(1 for mask in masks if mask & bit) for stage, bit in _BIT.items()}


def compute_stats(
    store: EventStore, funnel: PathwayFunnel, now: datetime, wait_for_funnel: float = 60.0
) -> dict[str, Any]:
    """The `/v1/stats` object: counts per state, the funnel, open/overdue tasks by owner."""
    counts = store.count_by_state()
    by_state = {state: int(counts.get(state, 0)) for state in CLIENT_STATES}
    now_text = iso(now)
    # Counted in the open-task index: no task is loaded, whatever the store's size.
    counts_by_owner = store.open_task_counts(now_text)
    open_by_owner = {owner: total for owner, (total, _) in counts_by_owner.items() if total}
    overdue_by_owner = {owner: late for owner, (_, late) in counts_by_owner.items() if late}
    funnel.ready.wait(wait_for_funnel)
    reached = funnel.reached()
    totals = store.stats()
    return {
        "now": now_text,
        "pathway_version": PATHWAY_VERSION,
        "clients_total": sum(by_state.values()),
        "clients_by_state": by_state,
        "clients_awaiting_first_event": int(counts.get(NEW, 0)),
        "funnel": [
            {"stage": stage, "reached": reached[stage], "current": by_state[stage]}
            for stage in STAGES
        ],
        "funnel_complete": funnel.ready.is_set(),
        "open_tasks": sum(open_by_owner.values()),
        "overdue_tasks": sum(overdue_by_owner.values()),
        "open_tasks_by_owner": dict(sorted(open_by_owner.items())),
        "overdue_tasks_by_owner": dict(sorted(overdue_by_owner.items())),
        "totals": {
            "history_entries": totals.get("history", 0),
            "rejections": totals.get("rejections", 0),
            "parked": totals.get("parked", 0),
            "tasks": totals.get("tasks", 0),
        },
    }
