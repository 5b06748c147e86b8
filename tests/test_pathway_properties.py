"""Random event sequences keep the clinical invariants, and replay equals the live result."""

from __future__ import annotations

import json
import tempfile
from datetime import timedelta
from pathlib import Path

from builders import Journey
from conftest import Clinic
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kapflow.service.audit import replay, verify
from kapflow.store import open_store
from workflow.client import ClientSnapshot

ACCEPTED_DOSINGS: list[int] = []
NEVER_CANCELLED = {
    "notify-prescriber-adverse-event",
    "safety-follow-up-release",
    "review-protocol-deviation",
    "bill-private-time",
}
SESSIONS = st.sampled_from(["s-1", "s-2", "s-3"])
PRESCRIBERS = st.sampled_from(["journey_clinical", "joyous"])


class RandomCareJourneys(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.store = open_store(f"sqlite:///{Path(self._dir.name) / 'k.db'}")
        self.clinic = Clinic(self.store)
        self.journey = Journey("c-1")
        self.accepted_dosings = 0

    def teardown(self) -> None:
        self.store.close()
        self._dir.cleanup()

    def before(self) -> ClientSnapshot:
        return self.store.get_client("c-1") or ClientSnapshot("c-1")

    def send(self, event: dict) -> None:  # type: ignore[type-arg]
        before = self.before()
        result = self.clinic.last(event)
        assert result.outcome in {"accepted", "deviation", "rejected", "parked", "duplicate"}
        after = self.before()
        if result.outcome in ("rejected", "duplicate"):
            # Nothing of its own is recorded; only parked facts whose window ended meanwhile.
            since = self.store.history("c-1")[before.seq :]
            assert all("PREMATURE_EXPIRED" in entry.outcome for entry in since)
            if not since:
                assert after.state == before.state
        self.check_new_dosings(before.seq)

    def check_new_dosings(self, seen: int) -> None:
        """Every dosing recorded since `seen` (directly or from parking) was safe when
        applied: rebuild the client as it stood just before it and check the rules."""
        history = self.store.history("c-1")
        for entry in history[seen:]:
            outcome = json.loads(entry.outcome)
            # No safety duty (R10, R11), deviation review or bill is ever cancelled.
            for change in outcome["tasks"]:
                if change["change"] == "closed" and change["task"]["status"] == "cancelled":
                    assert change["task"]["code"] not in NEVER_CANCELLED, entry.type
            if outcome.get("outcome") == "deviation":
                # A fact of care that broke a rule: recorded, the rules named, reviewed.
                assert outcome["deviations"]
                opened = [c["task"]["code"] for c in outcome["tasks"] if c["change"] == "opened"]
                assert "review-protocol-deviation" in opened
                continue
            if entry.type != "clinician.dosing_started":
                continue
            before = replay(history[: entry.seq - 1], "c-1").client
            self.check_safe_dosing(before, json.loads(entry.event))
            self.accepted_dosings += 1
            ACCEPTED_DOSINGS.append(1)

    def check_safe_dosing(self, before: ClientSnapshot, event: dict) -> None:  # type: ignore[type-arg]
        data = event["data"]
        # Never dosed without valid clearance, preparation, chaperone and abstinence (R5–R7).
        assert before.prescriber is not None and not before.clearance_revoked
        assert before.clearance_valid_until is not None
        assert before.clearance_valid_until >= event["time"][:10]
        assert before.pathway == data["pathway"]
        assert before.ready_for_dosing and before.preparation_sessions >= 1
        assert data["chaperone_confirmed"] and data["abstinence_attested"]
        # Never a second dosing before integration (R8); never while on hold.
        assert not before.awaiting_integration
        assert before.state in ("prepared", "integrating")
        # Medication available (R9).
        if before.pathway == "high_dose":
            assert (before.doses_remaining or 0) > 0
        else:
            assert before.subscription_active

    @initialize(prescriber=PRESCRIBERS, start=st.sampled_from(["new", "prepared", "integrating"]))
    def start(self, prescriber: str, start: str) -> None:
        """Most journeys start ready for (another) dosing, so the dosing rules get exercised."""
        if start == "new":
            return
        pathway = "high_dose" if prescriber == "journey_clinical" else "low_dose"
        events = self.journey.to_prepared(prescriber)
        if start == "integrating":
            events += [*self.journey.dosing("s-0", pathway), self.journey.integration("s-0")]
        for event in events:
            self.send(event)

    @rule()
    def inquiry(self) -> None:
        self.send(self.journey.inquiry())

    @rule(
        age=st.integers(15, 70),
        therapy=st.sampled_from(["qmts_client", "none"]),
        mania=st.booleans(),
    )
    def assessment(self, age: int, therapy: str, mania: bool) -> None:
        self.send(self.journey.assessment(age=age, therapy=therapy, mania=mania and age % 3 == 0))

    @rule(prescriber=PRESCRIBERS, cleared=st.booleans(), expiring=st.booleans())
    def evaluation(self, prescriber: str, cleared: bool, expiring: bool) -> None:
        valid_until = (self.journey.now + timedelta(days=2 if expiring else 300)).date()
        self.send(
            self.journey.evaluation(
                prescriber,
                outcome="cleared" if cleared else "not_cleared",
                valid_until=valid_until.isoformat(),
            )
        )

    @rule(number=st.integers(1, 5), ready=st.booleans())
    def preparation(self, number: int, ready: bool) -> None:
        self.send(self.journey.preparation(number, ready=ready))

    @rule(
        session=SESSIONS,
        pathway=st.sampled_from(["high_dose", "low_dose"]),
        chaperone=st.booleans(),
        abstinence=st.booleans(),
    )
    def dosing_started(self, session: str, pathway: str, chaperone: bool, abstinence: bool) -> None:
        self.send(
            self.journey.dosing_started(
                session, pathway=pathway, chaperone=chaperone, abstinence=abstinence
            )
        )

    @rule(session=SESSIONS)
    def dosing_as_planned(self, session: str) -> None:
        pathway = self.before().pathway or "high_dose"
        self.send(self.journey.dosing_started(session, pathway=pathway))

    @rule(session=SESSIONS)
    def another_dosing_as_planned(self, session: str) -> None:
        self.dosing_as_planned(session)

    @rule()
    def integration_of_the_latest_dosing(self) -> None:
        self.send(self.journey.integration(self.before().current_dosing_session or "s-1"))

    @rule(session=SESSIONS, released=st.booleans(), duration=st.integers(30, 200))
    def dosing_completed(self, session: str, released: bool, duration: int) -> None:
        self.send(
            self.journey.dosing_completed(
                session, released=released, duration=duration, active=min(duration, 45)
            )
        )

    @rule(session=SESSIONS)
    def integration(self, session: str) -> None:
        self.send(self.journey.integration(session))

    @rule(prescriber=PRESCRIBERS)
    def renewal(self, prescriber: str) -> None:
        self.send(self.journey.renewal(prescriber, valid_until="2028-01-01"))

    @rule(prescriber=PRESCRIBERS)
    def revocation(self, prescriber: str) -> None:
        self.send(self.journey.revocation(prescriber))

    @rule()
    def lapse(self) -> None:
        self.send(self.journey.lapse())

    @rule(severity=st.sampled_from(["mild", "moderate", "severe"]))
    def adverse_event(self, severity: str) -> None:
        self.send(self.journey.adverse_event(severity))

    @rule()
    def hold(self) -> None:
        self.send(self.journey.hold())

    @rule()
    def release(self) -> None:
        self.send(self.journey.release())

    @rule(kind=st.sampled_from(["assessment", "preparation", "dosing", "integration"]))
    def booking(self, kind: str) -> None:
        self.send(self.journey.booking(kind, f"{kind}-1"))

    @rule(kind=st.sampled_from(["assessment", "dosing"]))
    def no_show(self, kind: str) -> None:
        self.send(self.journey.no_show(kind, f"{kind}-1"))

    @rule()
    def reassessment(self) -> None:
        self.send(self.journey.reassessment())

    @precondition(lambda self: self.accepted_dosings > 0)
    @rule()
    def course_completed(self) -> None:
        self.send(self.journey.course_completed())

    @rule(days=st.integers(1, 60))
    def time_passes(self, days: int) -> None:
        self.journey.now += timedelta(days=days)

    @invariant()
    def doses_beyond_the_package_are_always_flagged_r9(self) -> None:
        client = self.before()
        if client.pathway == "high_dose" and client.doses_used > client.doses_authorized:
            # Only a dosing recorded as an R9 deviation goes beyond the package.
            history = self.store.history("c-1")
            assert any('"code":"R9"' in entry.outcome for entry in history)

    @invariant()
    def every_unresolved_deviation_has_its_review_open_until_someone_closes_it(self) -> None:
        client = self.before()
        open_reviews = {
            task.id
            for task in client.open_tasks.values()
            if task.code == "review-protocol-deviation"
        }
        for dosing in client.open_deviations:
            assert dosing["review"] in open_reviews

    @invariant()
    def replay_of_the_history_equals_the_live_result(self) -> None:
        live = self.store.get_client("c-1")
        if live is None:
            return
        rebuilt = replay(self.store.history("c-1"), "c-1").client
        expected = live.to_record()
        got = rebuilt.to_record()
        expected.pop("parked")
        got.pop("parked")
        assert got == expected

    def check_verify(self) -> None:
        assert verify(self.store).ok


RandomCareJourneys.TestCase.settings = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    stateful_step_count=35,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class TestRandomCareJourneys(RandomCareJourneys.TestCase):  # type: ignore[name-defined,misc]
    @classmethod
    def teardown_class(cls) -> None:
        # The safety invariants above mean something only if dosings were accepted.
        assert len(ACCEPTED_DOSINGS) >= 5, "random journeys never reached a dosing"


def test_verify_passes_after_a_long_random_like_journey(clinic: Clinic) -> None:
    j = Journey()
    clinic.send(
        *j.to_prepared(),
        *j.dosing("s-1"),
        j.adverse_event("severe"),
        j.release(),
        j.integration("s-1"),
        *j.dosing("s-2"),
        j.integration("s-2"),
        j.renewal(),
        *j.dosing("s-3"),
        j.integration("s-3"),
        j.course_completed(),
    )
    assert clinic.client().state == "completed"
    assert verify(clinic.store).ok
