"""The client as a function of its facts in event-time order (SPEC §3: arrival order never
matters).

Three publishers cannot order their messages against one another, so kapflow never folds a
client in arrival order. The history stays append-only in arrival order (what kapflow knew
when; `--known-at` reads it), but the client (state, facts, open tasks, deviations and so
readiness) is the left fold of its recorded facts sorted by `fact_key` through the one pure
`engine.apply`:

- a fact at or after the client's latest fact is applied on the latest client (the fast
  path: one `apply`, as always);
- a late fact is applied at its own place, and every fact after it is applied again from
  there: the client is re-derived. Its history entry records the difference — the state
  before and after, the task changes as the difference of open tasks (task ids are a pure
  function of the facts), and the deviations revealed or resolved (`rejudged`) — and how
  many later facts were applied again (`rederived`).

A recorded later fact that a late one makes impossible at its own time (what it refers to
is no longer the case then) stays recorded with its effect pending (`pending`): it is
applied again at every re-derivation, so it takes effect when the facts allow it.

Equal times are ordered by the pathway's order of event types (`FACT_ORDER`), then source,
then id: by the facts themselves, never by their arrival.

Clients whose history began under a release before 2026.12.1 keep, as the start of the
fold (`base`), the client those releases derived in arrival order: their facts are folded
from there (see `Derivation.base`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from events.envelope import CloudEvent
from workflow.client import ClientSnapshot
from workflow.engine import EXPIRED, Outcome, apply
from workflow.handlers.effects import TaskEffect
from workflow.policy import DEFAULT_POLICY, CarePolicy
from workflow.releases import CURRENT_RELEASE, PathwayRelease
from workflow.tasks import Task, TaskCode, iso

# Ties at the same second: the order of the pathway (an inquiry before its assessment, a
# clearance before a dosing, a dosing before its completion, an act before the deadline
# that would have escalated it, leaving care last).
FACT_ORDER: tuple[str, ...] = (
    "scheduling.inquiry_received",
    "clinician.reassessment_requested",
    "clinician.assessment_completed",
    "prescriber.evaluation_completed",
    "prescriber.prescription_renewed",
    "scheduling.appointment_booked",
    "scheduling.chaperone_confirmed",
    "scheduling.appointment_cancelled",
    "scheduling.appointment_no_show",
    "clinician.preparation_completed",
    "clinician.hold_released",
    "clinician.dosing_started",
    "clinician.dosing_completed",
    "clinician.adverse_event_reported",
    "clinician.hold_placed",
    "prescriber.clearance_revoked",
    "prescriber.subscription_lapsed",
    "clinician.integration_completed",
    "operations.task_claimed",
    "operations.task_reassigned",
    "operations.task_completed",
    "operations.task_cancelled",
    "operations.break_glass_invoked",
    "system.deadline_reached",
    "clinician.course_completed",
    "scheduling.client_withdrew",
)
_RANK = {event_type: rank for rank, event_type in enumerate(FACT_ORDER)}

FactKey = tuple[str, int, str, str]


def fact_key(event: CloudEvent) -> FactKey:
    """Where a fact stands among a client's facts: its time, then the documented tie-break."""
    return (iso(event.time), _RANK.get(event.type, len(FACT_ORDER)), event.source, event.id)


@dataclass(slots=True)  # a value: never mutated after construction
class Fact:
    key: FactKey
    event: CloudEvent
    expired: bool = False  # recorded when its parking window ended (engine.apply(expired))


@dataclass(slots=True)
class Derivation:
    """A client's recorded facts in event-time order, and the client after each of them.

    `base`: the client before the first fact of the fold — a new client, or the client an
    earlier release derived in arrival order (a history begun before 2026.12.1).
    `states[i]`: the client after `facts[: i + 1]`. Snapshots are values, so keeping each
    one costs no copy, and a late fact is re-applied from its place, not from the start.
    """

    base: ClientSnapshot
    facts: list[Fact] = field(default_factory=list)
    states: list[ClientSnapshot] = field(default_factory=list)
    keys: list[FactKey] = field(default_factory=list)

    @property
    def client(self) -> ClientSnapshot:
        return self.states[-1] if self.states else self.base

    def before(self, position: int) -> ClientSnapshot:
        return self.states[position - 1] if position else self.base

    def append(self, fact: Fact, client: ClientSnapshot) -> None:
        self.facts.append(fact)
        self.states.append(client)
        self.keys.append(fact.key)

    def covers(self, key: FactKey) -> bool:
        """Whether a fact at `key` can be folded in from this derivation: it starts before
        that key (its base is where the client began, or a client before `key`)."""
        start = self.base.latest_fact
        return start is None or key > tuple(start)

    def keep_last(self, count: int) -> None:
        """Forget all but the last `count` facts: the base becomes the client before them
        (a bounded window for a cache; a fact before the window needs the whole history)."""
        drop = len(self.facts) - count
        if drop > 0:
            self.base = self.states[drop - 1]
            del self.facts[:drop], self.states[:drop], self.keys[:drop]


def is_late(client: ClientSnapshot, event: CloudEvent) -> bool:
    """Whether `event` happened before the client's latest recorded fact (ties included,
    by `FACT_ORDER`): it must be folded in at its own place."""
    latest = client.latest_fact
    return latest is not None and fact_key(event) < tuple(latest)


def _arrival(after: ClientSnapshot, current: ClientSnapshot) -> ClientSnapshot:
    """`after` with what only arrival order knows taken from `current`: the history's length
    and head, and the parked events waiting."""
    after.seq = current.seq + 1
    after.last_hash = current.last_hash
    after.parked = current.parked
    return after


def record_fact(
    derivation: Derivation | None,
    current: ClientSnapshot,
    event: CloudEvent,
    policy: CarePolicy = DEFAULT_POLICY,
    release: PathwayRelease = CURRENT_RELEASE,
    *,
    expired: bool = False,
) -> Outcome:
    """The outcome of `event` for the client whose recorded facts are `derivation` and whose
    snapshot (arrival order's fields included) is `current`. On a recorded outcome the
    derivation is extended (or re-derived) in place. `derivation` may be None only when the
    event is not late (the fast path needs no facts)."""
    if not (release.derives_from_facts and is_late(current, event)):
        outcome = apply(current, event, policy, release, expired=expired)
        if outcome.recorded and release.derives_from_facts:
            fact = Fact(fact_key(event), event, _flagged_expired(outcome))
            outcome.client.latest_fact = list(fact.key)
            if derivation is not None:
                derivation.append(fact, outcome.client)
        return outcome
    fact = Fact(fact_key(event), event, expired)
    assert derivation is not None, "a late fact needs the client's recorded facts"
    return _fold_in_late(derivation, current, fact, policy, release)


def _fold_in_late(
    derivation: Derivation,
    current: ClientSnapshot,
    fact: Fact,
    policy: CarePolicy,
    release: PathwayRelease,
) -> Outcome:
    position = bisect_right(derivation.keys, fact.key)
    prior = derivation.before(position)
    here = apply(prior, fact.event, policy, release, expired=fact.expired)
    if not here.recorded:  # rejected or parked at its own time
        return Outcome(here.outcome, here.reasons, current, current.state, current.state)
    fact = Fact(fact.key, fact.event, _flagged_expired(here))
    here.client.latest_fact = list(fact.key)
    states = [here.client]
    closing: dict[str, Task] = _closed(here.task_changes)
    pending: list[str] = []
    for later in derivation.facts[position:]:
        again = apply(states[-1], later.event, policy, release, expired=later.expired)
        if again.recorded:
            states.append(again.client)
            closing.update(_closed(again.task_changes))
        else:  # no longer possible at its time: recorded, its effect pending
            states.append(_unchanged(states[-1]))
            pending.append(later.event.id)
        states[-1].latest_fact = list(later.key)
    after = _arrival(states[-1].copy(), current)
    states[-1] = after
    derivation.facts.insert(position, fact)
    derivation.keys.insert(position, fact.key)
    derivation.states[position:] = states
    return Outcome(
        here.outcome,
        here.reasons,
        after,
        current.state,
        after.state,
        tuple(task_difference(current, after, closing, fact.event)),
        release.version,
        tuple(deviation_difference(current, after, fact.event)),
        rederived=len(states) - 1,
        pending=tuple(pending),
    )


def _flagged_expired(outcome: Outcome) -> bool:
    """Whether the outcome records a fact forced on expiry of its parking window: what
    history keeps (`recorded_after_expiry`), so a fold read back from it agrees."""
    return any(reason.code == EXPIRED for reason in outcome.reasons)


def _unchanged(client: ClientSnapshot) -> ClientSnapshot:
    """The client after a recorded fact whose effect is pending (it refers to one not
    recorded at its time): the same, one entry further."""
    held = client.copy()
    held.seq = client.seq + 1
    return held


def _closed(changes: Iterable[TaskEffect]) -> dict[str, Task]:
    return {change.task.id: change.task for change in changes if change.change == "closed"}


def task_difference(
    before: ClientSnapshot, after: ClientSnapshot, closing: dict[str, Task], late: CloudEvent
) -> list[TaskEffect]:
    """What a late fact changed in the open tasks: opened, updated, closed. A task the
    re-derivation closed carries that closing; one no longer raised at all closes with a
    note naming the late fact (a deviation review so resolved is completed, SPEC §3)."""
    changes: list[TaskEffect] = []
    old, new = before.open_tasks, after.open_tasks
    for task_id, task in new.items():
        if task_id not in old:
            changes.append(TaskEffect("opened", task))
        elif task != old[task_id]:
            changes.append(TaskEffect("updated", task))
    at = iso(late.time)
    why = f"the late {late.type} {late.id} at {at}"
    for task_id, task in old.items():
        if task_id in new:
            continue
        closed = closing.get(task_id)
        if closed is None:
            closed = _no_longer_raised(task, why, at)
        changes.append(TaskEffect("closed", closed))
    return changes


def _no_longer_raised(task: Task, why: str, at: str) -> Task:
    if task.code == TaskCode.REVIEW_PROTOCOL_DEVIATION:
        rules = (task.note or "").removeprefix("protocol deviation: ").split(" ")[0]
        note = f"resolved: {rules} no longer broken at the dosing's time, by {why}"
        return task.with_status("completed", at).revised(at=at, note=note)
    return replace(
        task.with_status("cancelled", at),
        note=f"{task.note}; no longer raised, by {why}"
        if task.note
        else f"no longer raised, by {why}",
    )


def deviation_difference(
    before: ClientSnapshot, after: ClientSnapshot, late: CloudEvent
) -> list[dict[str, object]]:
    """The recorded dosings whose unresolved rules a late fact changed: revealed or
    resolved (`was` → `now`)."""
    was = {dosing["session"]: dosing for dosing in before.dosings}
    changed: list[dict[str, object]] = []
    for dosing in after.dosings:
        earlier = was.get(dosing["session"])
        if earlier is None or earlier["rules"] == dosing["rules"]:
            continue
        changed.append(
            {
                "event_id": dosing["event_id"],
                "session_id": dosing["session"],
                "was": list(earlier["rules"]),
                "now": list(dosing["rules"]),
            }
        )
    return changed


def fold(
    base: ClientSnapshot,
    facts: Iterable[Fact],
    policy: CarePolicy = DEFAULT_POLICY,
    release: PathwayRelease = CURRENT_RELEASE,
) -> tuple[Derivation, int]:
    """Fold `facts` (any order) from `base`: the derivation, and how many facts could not be
    applied at their time (a replay `as_of` a time before what they refer to)."""
    derivation = Derivation(base)
    skipped = 0
    for fact in sorted(facts, key=lambda item: item.key):
        outcome = apply(derivation.client, fact.event, policy, release, expired=fact.expired)
        if outcome.recorded:
            client = outcome.client
        else:  # pending at its time (or, replayed `as_of`, what it refers to is later)
            skipped += 1
            client = _unchanged(derivation.client)
        client.latest_fact = list(fact.key)
        derivation.append(fact, client)
    return derivation, skipped


__all__ = [
    "FACT_ORDER",
    "Derivation",
    "Fact",
    "FactKey",
    "deviation_difference",
    "fact_key",
    "fold",
    "is_late",
    "record_fact",
    "task_difference",
]
