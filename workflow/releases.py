"""Pathway releases: which rules produced an outcome, kept so old histories keep verifying.

Every history entry records the `pathway_version` that produced it (SPEC §6); replay and
`kapflow verify` apply each entry with the rules of that release. The rules are one shared
core (the pathway, rules.py, the handlers); a release is the set of switches that tell
that core how a given version behaved. A release is frozen once it has recorded anything:
a new behaviour gets a new switch and a new release, never an edit of an old one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PathwayRelease:
    version: str
    # A fact of care that breaks a rule is recorded as a deviation (SPEC §3); before this,
    # it was rejected.
    records_deviations: bool
    # Rules are judged on the facts as they stood at the event's own time; a late fact
    # re-judges the dosings it concerns. Before this, facts were taken in arrival order.
    judges_at_event_time: bool
    # Withdrawal, completion and ineligibility cancel only tasks that can no longer happen
    # (scheduling, preparation, dosing); safety duties (R10, R11), deviation reviews and
    # billing stay open. Before this, only billing tasks were kept.
    keeps_duties_on_exit: bool
    # A renewal releases a hold whose only reason was a lapsed subscription (R9). Before
    # this, a clinician had to release it.
    renewal_cures_subscription_hold: bool
    # A task id begins with the raising event's time (`workflow.tasks.task_id_for`), so ids
    # sort in the order care happened. Before this, ids were UUIDv5, in no order.
    time_ordered_task_ids: bool
    # The client is a function of its facts in event-time order (workflow/derivation.py):
    # a fact that arrives late is folded in at its own time and the client re-derived, so
    # arrival order never matters. Before this, late facts re-judged only R5, R6, R8, R9.
    derives_from_facts: bool = False
    # R7 per dosing: a chaperone confirmation counts for the booked dosing appointment it
    # names, and a dosing uses its appointment up. Before this, any confirmation counted.
    chaperone_per_dosing: bool = False
    # Every client on hold has an open staff task naming who resolves the hold.
    queues_every_hold: bool = False


RELEASE_2026_11_3 = PathwayRelease(
    "2026.11.3",
    records_deviations=False,
    judges_at_event_time=False,
    keeps_duties_on_exit=False,
    renewal_cures_subscription_hold=False,
    time_ordered_task_ids=False,
)
RELEASE_2026_11_4 = PathwayRelease(
    "2026.11.4",
    records_deviations=True,
    judges_at_event_time=True,
    keeps_duties_on_exit=True,
    renewal_cures_subscription_hold=True,
    time_ordered_task_ids=False,
)
RELEASE_2026_11_5 = PathwayRelease(
    "2026.11.5",
    records_deviations=True,
    judges_at_event_time=True,
    keeps_duties_on_exit=True,
    renewal_cures_subscription_hold=True,
    time_ordered_task_ids=True,
)

RELEASE_2026_12_1 = PathwayRelease(
    "2026.12.1",
    records_deviations=True,
    judges_at_event_time=True,
    keeps_duties_on_exit=True,
    renewal_cures_subscription_hold=True,
    time_ordered_task_ids=True,
    derives_from_facts=True,
    chaperone_per_dosing=True,
    queues_every_hold=True,
)

RELEASES: dict[str, PathwayRelease] = {
    release.version: release
    for release in (RELEASE_2026_11_3, RELEASE_2026_11_4, RELEASE_2026_11_5, RELEASE_2026_12_1)
}
CURRENT_RELEASE = RELEASE_2026_12_1
PATHWAY_VERSION = CURRENT_RELEASE.version


class UnknownPathwayVersion(LookupError):
    """A history entry names a release this build does not know (a newer kapflow wrote it)."""


def release_of(version: str) -> PathwayRelease:
    try:
        return RELEASES[version]
    except KeyError:
        raise UnknownPathwayVersion(version) from None
