"""A deterministic synthetic cohort of KAP clients, as the publishers would send it.

Why it exists: `kapflow demo`, the dashboards, load tests and the scenario tests need a
realistic stream that exercises the whole programme (seed: assessment → preparatory
sessions → ketamine-assisted sessions → integration, on the Journey Clinical high-dose or
the Joyous low-dose pathway) including the messy parts a real clinic produces: screened-out
clients, cancellations and no-shows, adverse reactions and holds, withdrawals, lapsed
subscriptions, and a small share of events the engine must refuse.

Each client's story is written by its own `random.Random`, seeded from the cohort seed, so
the stream is byte-for-byte reproducible and one client's story never depends on another's.
Stories are then merged in publication order. Publication time equals the CloudEvents `time`
except for two deliberate delivery faults: an assessment record published late (so the
prescriber's evaluation arrives first and the engine parks it) and re-deliveries of an event
already sent (same `source` and `id`).

The cohort is observed for `OBSERVATION_DAYS`: whatever would be published later is not in
the stream, so clients who enquired late are still mid-pathway, with open tasks.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from workflow.engine import ACCEPTED, DEVIATION, DUPLICATE, PARKED, REJECTED

SCHEDULING = "urn:qmts:scheduling"
CLINICAL_RECORD = "urn:qmts:clinical-record"
JOURNEY_CLINICAL = "urn:journey-clinical:integration"
JOYOUS = "urn:joyous:integration"

PRESCRIBER_SOURCE: dict[str, str] = {"journey_clinical": JOURNEY_CLINICAL, "joyous": JOYOUS}
PRESCRIBER_OF_PATHWAY: dict[str, str] = {"high_dose": "journey_clinical", "low_dose": "joyous"}
_ID_PREFIX: dict[str, str] = {
    SCHEDULING: "sch",
    CLINICAL_RECORD: "rec",
    JOURNEY_CLINICAL: "jc",
    JOYOUS: "joy",
}

DEFAULT_START = datetime(2026, 1, 5, 9, tzinfo=UTC)
# New clients enquire over this many days; the stream stops after OBSERVATION_DAYS.
INTAKE_DAYS = 165
OBSERVATION_DAYS = 180
# Events per client, measured with the default seed and start (20.93 for 2,500 clients;
# small cohorts vary by about ±1). Change it when the profiles or rates above change.
EVENTS_PER_CLIENT = 21.0

# The outcomes a scripted event is expected to get: the engine's (workflow/engine.py).
# PARKED: premature on arrival, applied once the event it waited for arrives; DEVIATION:
# a fact of care that broke a rule, recorded and reviewed.

# The client's storyline, drawn by weight. Complications (below) are layered on top.
PROFILE_WEIGHTS: dict[str, int] = {
    "journey_high_dose": 44,  # Journey Clinical clearance, two dosings, sometimes a renewal
    "joyous_low_dose": 24,  # Joyous subscription, two to five low-dose sessions
    "under_18": 2,  # R1
    "no_ongoing_therapy": 4,  # R2 (some re-assessed once in therapy)
    "psychosis_mania_history": 3,  # R3
    "contraindicated_medication": 4,  # R4 (some re-assessed after stopping it)
    "not_cleared": 4,  # the independent prescriber did not clear (some re-assessed)
    "withdraws": 9,  # leaves at some stage of the pathway
}
_PROFILES = tuple(PROFILE_WEIGHTS)
_PROFILE_CUM_WEIGHTS = tuple(itertools.accumulate(PROFILE_WEIGHTS.values()))
WITHDRAWAL_STAGES = (
    "before_assessment",
    "after_assessment",
    "after_clearance",
    "during_preparation",
    "after_first_dosing",
)

# Complications, drawn independently per client, appointment or dosing.
CANCELLATION_RATE = 0.05  # per booking
NO_SHOW_RATE = 0.02  # per booking, for most clients
UNRELIABLE_CLIENT_RATE = 0.06  # these clients miss often: repeated no-shows → clinical review
UNRELIABLE_NO_SHOW_RATE = 0.3
MAX_MISSED_BOOKINGS = 3  # then the client does attend
FOURTH_PREPARATION_RATE = 0.05  # R6: a session beyond the third raises a clinical review
CLINICIAN_HOLD_RATE = 0.06  # per client on a dosing pathway
HOLD_RELEASED_RATE = 0.85  # otherwise the client withdraws while held
MILD_OR_MODERATE_REACTION_RATE = 0.08  # per dosing (R10: prescriber notified)
SEVERE_REACTION_RATE = 0.015  # per dosing (R10: on hold until reviewed)
SEVERE_RELEASED_RATE = 0.75
NOT_RELEASED_TO_CHAPERONE_RATE = 0.04  # per dosing (R11: urgent safety follow-up)
SIDE_EFFECTS_RATE = 0.3  # per dosing
SECOND_INTEGRATION_RATE = 0.3  # per dosing: a further integration session
HIGH_DOSE_RENEWAL_RATE = 0.3  # R9: a renewed prescription, then a third dosing
SUBSCRIPTION_LAPSE_RATE = 0.25  # per Joyous client, between dosings (R9)
SUBSCRIPTION_RENEWED_RATE = 0.7
REASSESSMENT_RATE: dict[str, float] = {
    "no_ongoing_therapy": 0.4,
    "contraindicated_medication": 0.4,
    "not_cleared": 0.3,
}
WITHDRAW_WHEN_INELIGIBLE_RATE = 0.3
SUBSCRIPTION_RENEWAL = timedelta(days=28)  # Joyous clients renew before a month runs out
# After these, a Joyous client stops renewing (until a renewal is reported again).
_SUBSCRIPTION_ENDS = frozenset(
    {
        "prescriber.subscription_lapsed",
        "prescriber.clearance_revoked",
        "scheduling.client_withdrew",
        "clinician.course_completed",
    }
)

# Deliberate faults and delivery quirks: a share of the cohort, at least one each.
INCIDENT_SHARES: dict[str, float] = {
    "dosing_without_chaperone": 0.012,  # R7
    "second_dosing_before_integration": 0.012,  # R8
    "prescriber_pathway_mismatch": 0.012,  # R5
    "third_high_dose_without_renewal": 0.012,  # R9
    "unknown_event_type": 0.01,  # UNKNOWN_TYPE
    "unknown_data_field": 0.01,  # SCHEMA
    "evaluation_before_assessment": 0.02,  # parked, then accepted
    # Facts of care that break the protocol, recorded as deviations (SPEC §3):
    "clearance_delivered_after_dosing": 0.012,  # R5+R6, resolved by the late clearance
    "dosing_during_hold": 0.012,  # ON_HOLD (stat)
    "dosing_start_never_delivered": 0.012,  # PREMATURE_EXPIRED: the completion is recorded
    "redelivered_event": 0.02,  # duplicate
}
# What the engine should report for the faulty event of each incident.
INCIDENT_REASON: dict[str, str] = {
    "dosing_without_chaperone": "R7",
    "second_dosing_before_integration": "R8",
    "prescriber_pathway_mismatch": "R5",
    "third_high_dose_without_renewal": "R9",
    "unknown_event_type": "UNKNOWN_TYPE",
    "unknown_data_field": "SCHEMA",
}

_CHANNELS = ("email", "phone", "web", "referral")
_CHANNEL_WEIGHTS = (45, 20, 20, 15)
_SIDE_EFFECTS = ("dizziness", "nausea", "increased_heart_rate", "confusion", "fatigue")
_MILD_SYMPTOMS = (("nausea",), ("dizziness",), ("fatigue",), ("nausea", "dizziness"))
_MODERATE_SYMPTOMS = (("vomiting",), ("anxiety", "increased_heart_rate"), ("dissociation",))
_SEVERE_SYMPTOMS = (
    ("panic", "elevated_blood_pressure"),
    ("confusion", "elevated_blood_pressure"),
    ("suicidal_ideation",),
)
_CHAPERONES = ("partner", "spouse", "friend", "parent", "sibling", "adult_child")
_CANCEL_REASONS = ("client_request", "illness", "scheduling_conflict", "clinician_unavailable")
_WITHDRAW_REASONS = (
    "client_request",
    "cost",
    "scheduling_conflict",
    "moved_away",
    "chose_other_treatment",
    "symptoms_improved",
)
_NOT_CLEARED_REASONS = ("cardiovascular_risk", "uncontrolled_hypertension", "pregnancy")
_HOLD_REASONS = ("clinical_concern", "medical_review", "client_travel", "life_event")


@dataclass(frozen=True, slots=True)
class ScriptedEvent:
    """One published event and what the programme's rules should make of it.

    Tests and the demo check the engine against this: `expected_outcome` is what ingesting
    the event reports (a `parked` event must end up accepted once its predecessor arrives),
    `expected_reason` the rule id or error code a rejection must name.
    """

    event: dict[str, Any]
    expected_outcome: str
    expected_reason: str | None
    profile: str
    incident: str | None


@dataclass(frozen=True, slots=True)
class _Appointment:
    id: str
    kind: str
    starts_at: datetime


@dataclass(order=True, slots=True)
class _Publication:
    published_at: datetime
    order: int
    scripted: ScriptedEvent = field(compare=False)
    # Published early on purpose: meaningless without the client's next publication.
    awaits_next: bool = field(default=False, compare=False)


def _stamp(moment: datetime) -> str:
    """RFC 3339 UTC with `Z`, to the second (isoformat is far cheaper than strftime)."""
    return moment.isoformat()[:19] + "Z"


class _ClientStory:
    """Writes one client's events in the order they happen, with a clock that only moves on."""

    def __init__(
        self,
        number: int,
        rng: random.Random,
        enquired_at: datetime,
        observed_until: datetime,
        incident: str | None,
    ) -> None:
        self.rng = rng
        self.client_id = f"c-{number:06d}"
        self.number = number
        self.now = enquired_at
        self.observed_until = observed_until
        self.incident = incident
        self.publications: list[_Publication] = []
        self.event_counts = dict.fromkeys(_ID_PREFIX, 0)
        self.appointments = 0
        self.dosings = 0
        self.subscription_paid_at: datetime | None = None
        self.clinician_id = f"clin-{rng.randint(1, 12):02d}"
        self.no_show_rate = (
            UNRELIABLE_NO_SHOW_RATE if rng.random() < UNRELIABLE_CLIENT_RATE else NO_SHOW_RATE
        )
        # A deliberate fault must break exactly its own rule: no holds or departures around it.
        self.calm = incident is not None and incident != "redelivered_event"
        self.profile = self._draw_profile()
        # An assessment whose publication is held back until after the evaluation.
        self._late_assessment: dict[str, Any] | None = None

    def _draw_profile(self) -> str:
        drawn = self.rng.choices(_PROFILES, cum_weights=_PROFILE_CUM_WEIGHTS)[0]
        if self.incident == "third_high_dose_without_renewal":
            return "journey_high_dose"
        if self.calm:
            return "journey_high_dose" if self.rng.random() < 0.65 else "joyous_low_dose"
        return drawn

    # The whole story ------------------------------------------------------------------------
    def tell(self) -> list[_Publication]:
        """The client's publications in publication order, cut at the end of observation."""
        self._enquire()
        profile = self.profile
        if profile in ("journey_high_dose", "joyous_low_dose"):
            pathway = "high_dose" if profile == "journey_high_dose" else "low_dose"
            if self._assess() and self._evaluate(PRESCRIBER_OF_PATHWAY[pathway]):
                self._treat(pathway)
        elif profile == "withdraws":
            self._withdrawing(self.rng.choice(WITHDRAWAL_STAGES))
        elif profile == "not_cleared":
            self._assess()
            self._evaluate(self._any_prescriber(), cleared=False)
            self._after_ineligibility(profile)
        else:
            self._assess(screened_out_by=profile)
            self._after_ineligibility(profile)
        self._renew_monthly()
        if self.incident == "redelivered_event":
            self._redeliver()
        return self._observed()

    def _withdrawing(self, stage: str) -> None:
        pathway = self.rng.choice(("high_dose", "low_dose"))
        if stage == "before_assessment":
            if self.rng.random() < 0.5:
                self._tick(30, 600)
                self._book("assessment", self._clinic_slot(2, 10))
            self._after_days(1, 8)
            self._withdraw()
            return
        if not self._assess():
            return
        if stage == "after_assessment":
            self._after_days(2, 12)
            self._withdraw()
            return
        if self._evaluate(PRESCRIBER_OF_PATHWAY[pathway]):
            self._treat(pathway, withdraw_at=stage)

    def _after_ineligibility(self, profile: str) -> None:
        """Seed: ineligibility can be reopened only by a new assessment request."""
        if self.rng.random() < REASSESSMENT_RATE.get(profile, 0.0):
            self._after_days(14, 45)
            reason = {
                "no_ongoing_therapy": "ongoing_therapy_established",
                "contraindicated_medication": "medication_discontinued",
                "not_cleared": "prescriber_requested_review",
            }[profile]
            self._record(
                "clinician.reassessment_requested",
                {"clinician_id": self.clinician_id, "reason": reason},
            )
            pathway = self.rng.choice(("high_dose", "low_dose"))
            if self._assess() and self._evaluate(PRESCRIBER_OF_PATHWAY[pathway]):
                self._treat(pathway)
        elif self.rng.random() < WITHDRAW_WHEN_INELIGIBLE_RATE:
            self._after_days(3, 20)
            self._withdraw()

    # Intake, assessment and medical evaluation ----------------------------------------------
    def _enquire(self) -> None:
        channel = self.rng.choices(_CHANNELS, weights=_CHANNEL_WEIGHTS)[0]
        data: dict[str, Any] = {"channel": channel}
        if channel == "referral":
            data["referred_by"] = f"prov-{self._between(1, 40):03d}"
        self._publish(SCHEDULING, "scheduling.inquiry_received", data)

    def _assess(self, screened_out_by: str | None = None) -> bool:
        """Book and hold the initial assessment; True when the client meets R1–R4."""
        self._attend("assessment", (2, 10), self._modality(0.6))
        self._tick(50, 90)
        history = {"psychosis": False, "mania": False, "schizophrenia": False}
        medications = {"maoi": False, "stimulant": False, "high_dose_benzodiazepine": False}
        age = int(self.rng.triangular(18, 75, 38))
        therapy = "qmts_client" if self.rng.random() < 0.55 else "external_provider"
        if screened_out_by == "under_18":
            age = self._between(16, 17)
        elif screened_out_by == "no_ongoing_therapy":
            therapy = "none"
        elif screened_out_by == "psychosis_mania_history":
            history[self.rng.choice(tuple(history))] = True
        elif screened_out_by == "contraindicated_medication":
            medications[self.rng.choice(tuple(medications))] = True
        data: dict[str, Any] = {
            "clinician_id": self.clinician_id,
            "age_years": age,
            "therapy_status": therapy,
            "history": history,
            "current_medications": medications,
        }
        if self.rng.random() < 0.9:
            data["insurance_used"] = self.rng.random() < 0.65
        late = self.incident == "evaluation_before_assessment" and screened_out_by is None
        if not late:
            self._record("clinician.assessment_completed", data)
        else:
            self._late_assessment = data
        return screened_out_by is None

    def _evaluate(self, prescriber: str, *, cleared: bool = True) -> bool:
        """The independent prescriber's evaluation (R5); True when the client is cleared."""
        late_assessment = self._late_assessment
        if late_assessment is not None:
            # The record system publishes the assessment late; the prescriber's evaluation,
            # done the same afternoon, arrives first and is parked until it catches up.
            assessed_at = self.now
            self._tick(60, 180)
        else:
            self._after_days(2, 10)
        source = PRESCRIBER_SOURCE[prescriber]
        pathway = "high_dose" if prescriber == "journey_clinical" else "low_dose"
        data: dict[str, Any] = {
            "prescriber": prescriber,
            "outcome": "cleared" if cleared else "not_cleared",
            "valid_until": (self.now + timedelta(days=365 if cleared else 0)).date().isoformat(),
        }
        if cleared and self.rng.random() < 0.7:
            data["pathway"] = pathway
        if cleared and pathway == "high_dose" and self.rng.random() < 0.5:
            data["doses_authorized"] = 2
        if not cleared:
            data["reason"] = self.rng.choice(_NOT_CLEARED_REASONS)
        if cleared and pathway == "low_dose":
            self.subscription_paid_at = self.now
        if self.incident == "prescriber_pathway_mismatch" and cleared:
            wrong = {**data, "pathway": "low_dose" if pathway == "high_dose" else "high_dose"}
            self._publish(source, "prescriber.evaluation_completed", wrong, reason="R5")
            self._tick(30, 180)  # the integration corrects and re-sends it
        if late_assessment is None:
            late = (
                self.incident == "clearance_delivered_after_dosing"
                and cleared
                and prescriber == "journey_clinical"
            )
            # The integration's message is held up for weeks: preparation is recorded, and
            # the first dosing is an R5 deviation until the clearance (issued before it)
            # arrives and resolves it.
            published_at = self.now + timedelta(days=35) if late else None
            self._publish(
                source, "prescriber.evaluation_completed", data, published_at=published_at
            )
            return cleared
        self._publish(source, "prescriber.evaluation_completed", data, awaits_next=True)
        evaluated_at = self.now
        self.now = assessed_at
        published_at = evaluated_at + timedelta(minutes=self._between(15, 90))
        self._record("clinician.assessment_completed", late_assessment, published_at=published_at)
        self.now = published_at
        self._late_assessment = None
        return cleared

    # Treatment: preparation, dosing, integration ---------------------------------------------
    def _treat(self, pathway: str, withdraw_at: str | None = None) -> None:
        if withdraw_at == "after_clearance":
            self._after_days(3, 14)
            self._withdraw()
            return
        hold_at = self._draw_hold_point()
        if not self._prepare(hold_at, withdraw_at):
            return
        if pathway == "high_dose":
            renewed = (
                self.incident == "third_high_dose_without_renewal"
                or self.rng.random() < HIGH_DOSE_RENEWAL_RATE
            )
            dosings = 3 if renewed else 2
        else:
            dosings = self._between(2, 5)
        lapse_before = (
            self._between(2, dosings)
            if pathway == "low_dose"
            and not self.calm
            and self.rng.random() < SUBSCRIPTION_LAPSE_RATE
            else None
        )
        for dosing in range(1, dosings + 1):
            if dosing > 1 and hold_at == f"before_dosing_{dosing}" and not self._hold():
                return
            if dosing == lapse_before and not self._lapse_subscription():
                return
            if pathway == "high_dose" and dosing == 3:
                self._renew_package()
            session = self._dose(pathway)
            if session is None:
                return
            self._integrate(session)
            if withdraw_at == "after_first_dosing":
                self._after_days(3, 21)
                self._withdraw()
                return
        self._after_days(7, 21)
        self._record("clinician.course_completed", {"clinician_id": self.clinician_id})

    def _draw_hold_point(self) -> str | None:
        if self.calm or self.rng.random() >= CLINICIAN_HOLD_RATE:
            return None
        return self.rng.choice(("after_preparation_1", "before_dosing_1", "before_dosing_2"))

    def _prepare(self, hold_at: str | None, withdraw_at: str | None) -> bool:
        """Seed: one to three preparatory sessions; the last marks the client ready (R6)."""
        if self.rng.random() < FOURTH_PREPARATION_RATE:
            sessions = 4
        else:
            sessions = self.rng.choices((1, 2, 3), weights=(30, 45, 25))[0]
        for number in range(1, sessions + 1):
            before_session = (
                self._send_reminder
                if number == 1 and self.incident == "unknown_event_type"
                else None
            )
            self._attend("preparation", (3, 9), self._modality(0.5), before_session=before_session)
            self._tick(50, 60)
            data = {
                "clinician_id": self.clinician_id,
                "session_number": number,
                "ready_for_dosing": number == sessions,
            }
            if number == 1 and self.incident == "unknown_data_field":
                # The record system started sending a field the contract does not know.
                self._record(
                    "clinician.preparation_completed",
                    {**data, "readiness_score": self._between(3, 9)},
                    reason="SCHEMA",
                )
                self._tick(10, 45)
            self._record("clinician.preparation_completed", data)
            if number == 1 and withdraw_at == "during_preparation":
                self._after_days(2, 10)
                self._withdraw()
                return False
            hold_now = (number == 1 and hold_at == "after_preparation_1") or (
                number == sessions and hold_at == "before_dosing_1"
            )
            if hold_now:
                if not self._hold():
                    return False
                hold_at = None
        return True

    def _dose(self, pathway: str) -> str | None:
        """One ketamine-assisted session; the session id, or None if the client left."""
        self.dosings += 1
        session = self._session_id(self.dosings)
        modality = "in_person" if pathway == "high_dose" else self._modality(0.6)
        without_chaperone = self.incident == "dosing_without_chaperone" and self.dosings == 1
        self._after_hours(1, 30)
        self._attend("dosing", (5, 14), modality, chaperone=not without_chaperone)
        if pathway == "low_dose":
            self._keep_subscription_paid()
        started = {
            "clinician_id": self.clinician_id,
            "session_id": session,
            "pathway": pathway,
            "chaperone_confirmed": True,
            "abstinence_attested": True,
            "modality": modality,
        }
        if self.incident == "dosing_during_hold" and self.dosings == 1:
            # A clinician's hold is still on when the session goes ahead: stat review.
            self._record(
                "clinician.hold_placed",
                {"clinician_id": self.clinician_id, "reason": "pending_labs"},
            )
            self._tick(30, 90)
            self._record("clinician.dosing_started", started, reason="ON_HOLD", deviation=True)
            self._tick(5, 10)
            self._release_hold("labs_reviewed")
        elif self.incident == "dosing_start_never_delivered" and self.dosings == 1:
            pass  # the record system lost the start; its completion waits, then is recorded
        elif without_chaperone:
            # R7: the session went ahead with nobody confirmed to drive the client home — a
            # protocol deviation kapflow records and puts in front of the clinical lead.
            self._record(
                "clinician.dosing_started",
                {**started, "chaperone_confirmed": False},
                reason="R7",
                deviation=True,
            )
        else:
            self._record("clinician.dosing_started", started)
        if pathway == "high_dose":
            duration, active = self._between(120, 180), self._between(40, 60)
        else:
            duration, active = self._between(50, 90), self._between(20, 45)
        self._tick(duration, duration)
        completed: dict[str, Any] = {
            "clinician_id": self.clinician_id,
            "session_id": session,
            "duration_minutes": duration,
            "active_minutes": active,
            "released_to_chaperone": self.rng.random() >= NOT_RELEASED_TO_CHAPERONE_RATE,
        }
        if self.rng.random() < SIDE_EFFECTS_RATE:
            completed["side_effects"] = sorted(
                self.rng.sample(_SIDE_EFFECTS, self._between(1, 2)), key=_SIDE_EFFECTS.index
            )
        self._record("clinician.dosing_completed", completed)
        if not self._report_reactions(session):
            return None
        if self.incident == "second_dosing_before_integration" and self.dosings == 1:
            # R8: the next session is started in the record before integration happened.
            self._after_days(1, 3)
            self.dosings += 1
            second = self._session_id(self.dosings)
            self._record(
                "clinician.dosing_started",
                {**started, "session_id": second},
                reason="R8",
                deviation=True,
            )
            self._tick(60, 120)
            self._record("clinician.dosing_completed", {**completed, "session_id": second})
            self._after_days(1, 3)
            self._integrate(session)  # the first, late; the caller integrates the second
            return second
        return session

    def _report_reactions(self, session: str) -> bool:
        """R10: concerning reactions go to therapist and prescriber; False if the client left."""
        roll = self.rng.random()
        if roll >= MILD_OR_MODERATE_REACTION_RATE + SEVERE_REACTION_RATE:
            return True
        severe = roll < SEVERE_REACTION_RATE and not self.calm
        if severe:
            severity, symptoms = "severe", self.rng.choice(_SEVERE_SYMPTOMS)
        elif self.rng.random() < 0.6:
            severity, symptoms = "mild", self.rng.choice(_MILD_SYMPTOMS)
        else:
            severity, symptoms = "moderate", self.rng.choice(_MODERATE_SYMPTOMS)
        self._tick(20, 360)
        self._record(
            "clinician.adverse_event_reported",
            {
                "clinician_id": self.clinician_id,
                "severity": severity,
                "symptoms": list(symptoms),
                "session_id": session,
            },
        )
        if not severe:
            return True
        # The severe reaction put the client on hold; the prescriber reviews before release.
        if self.rng.random() < SEVERE_RELEASED_RATE:
            self._after_days(4, 14)
            self._release_hold("prescriber_review_complete")
            return True
        self._after_days(5, 20)
        self._withdraw()
        return False

    def _integrate(self, session: str) -> None:
        """Seed: integration sessions follow each dosing experience (R8)."""
        sessions = 2 if self.rng.random() < SECOND_INTEGRATION_RATE else 1
        for number in range(sessions):
            if number == 0:
                self._after_hours(1, 48)
            else:
                self._after_days(2, 6)
            self._attend("integration", (1, 6), self._modality(0.5))
            self._tick(50, 60)
            self._record(
                "clinician.integration_completed",
                {"clinician_id": self.clinician_id, "session_id": session},
            )

    def _renew_package(self) -> None:
        """R9: the $355 package covered two dosings; the third needs a renewed prescription."""
        if self.incident == "third_high_dose_without_renewal":
            self._after_hours(1, 30)
            self._attend("dosing", (5, 14), "in_person")
            self.dosings += 1
            session = self._session_id(self.dosings)
            self._record(
                "clinician.dosing_started",
                {
                    "clinician_id": self.clinician_id,
                    "session_id": session,
                    "pathway": "high_dose",
                    "chaperone_confirmed": True,
                    "abstinence_attested": True,
                    "modality": "in_person",
                },
                reason="R9",
                deviation=True,
            )
            self._tick(120, 150)
            self._record(
                "clinician.dosing_completed",
                {
                    "clinician_id": self.clinician_id,
                    "session_id": session,
                    "duration_minutes": 135,
                    "active_minutes": 50,
                    "released_to_chaperone": True,
                },
            )
            self._after_days(2, 6)
            self._integrate(session)
        # Then the clinic asks Journey Clinical to renew the package.
        self._after_days(1, 10)
        self._publish(
            JOURNEY_CLINICAL,
            "prescriber.prescription_renewed",
            {
                "prescriber": "journey_clinical",
                "valid_until": (self.now + timedelta(days=365)).date().isoformat(),
                "doses_authorized": 2,
            },
        )

    def _keep_subscription_paid(self) -> None:
        """Seed: Joyous is $129/month; the client renews before a month runs out (R9)."""
        if self.subscription_paid_at is not None and self.now - self.subscription_paid_at < (
            timedelta(days=27)
        ):
            return
        self._renew_subscription()
        self._tick(5, 15)

    def _renew_subscription(self) -> None:
        """Joyous renews the prescription and the month's subscription."""
        self._publish(
            JOYOUS,
            "prescriber.prescription_renewed",
            {
                "prescriber": "joyous",
                "valid_until": (self.now + timedelta(days=365)).date().isoformat(),
            },
        )
        self.subscription_paid_at = self.now

    def _renew_monthly(self) -> None:
        """Seed: the Joyous subscription is $129/month. Clients in treatment renew it before
        each month runs out (kapflow's clock treats a month without renewal as a lapse, R9),
        until the course ends, they withdraw, or a deliberate lapse is reported."""
        paid_at: datetime | None = None
        for publication in sorted(self.publications):
            scripted = publication.scripted
            if scripted.expected_outcome == REJECTED:
                continue
            while paid_at is not None and publication.published_at > paid_at + SUBSCRIPTION_RENEWAL:
                paid_at = self._renew_subscription_at(paid_at + SUBSCRIPTION_RENEWAL)
            event = scripted.event
            if event["source"] == JOYOUS and (
                event["type"] == "prescriber.prescription_renewed"
                or event["data"].get("outcome") == "cleared"
            ):
                paid_at = publication.published_at
            elif event["type"] in _SUBSCRIPTION_ENDS:
                paid_at = None
        while paid_at is not None and paid_at + SUBSCRIPTION_RENEWAL <= self.observed_until:
            paid_at = self._renew_subscription_at(paid_at + SUBSCRIPTION_RENEWAL)

    def _renew_subscription_at(self, moment: datetime) -> datetime:
        resume = self.now
        self.now = moment
        self._renew_subscription()
        self.now = resume
        return moment

    def _lapse_subscription(self) -> bool:
        """R9: the $129/month Joyous subscription lapsed; dosing waits for its renewal."""
        self._after_days(3, 14)
        self._publish(JOYOUS, "prescriber.subscription_lapsed", {"prescriber": "joyous"})
        if self.rng.random() >= SUBSCRIPTION_RENEWED_RATE:
            if self.rng.random() < 0.6:
                self._after_days(10, 30)
                self._withdraw()
            return False
        self._after_days(3, 20)
        self._renew_subscription()
        # Renewal does not lift the hold by itself: the clinician releases it.
        self._after_hours(2, 48)
        self._release_hold("subscription_renewed")
        return True

    def _hold(self) -> bool:
        """A clinician's hold; True once released, False if the client withdrew instead."""
        self._after_days(1, 5)
        reason = self.rng.choice(_HOLD_REASONS)
        self._record("clinician.hold_placed", {"clinician_id": self.clinician_id, "reason": reason})
        if self.rng.random() < HOLD_RELEASED_RATE:
            self._after_days(3, 21)
            self._release_hold("concern_resolved")
            return True
        self._after_days(7, 30)
        self._withdraw()
        return False

    def _release_hold(self, reason: str) -> None:
        self._record(
            "clinician.hold_released", {"clinician_id": self.clinician_id, "reason": reason}
        )

    # Scheduling --------------------------------------------------------------------------------
    def _attend(
        self,
        kind: str,
        lead_days: tuple[int, int],
        modality: str,
        *,
        chaperone: bool = True,
        before_session: Callable[[_Appointment], None] | None = None,
    ) -> _Appointment:
        """Book until the client turns up (cancellations and no-shows are rebooked).

        Leaves the clock at the start of the attended appointment.
        """
        for attempt in range(MAX_MISSED_BOOKINGS + 1):
            self._tick(5, 180)
            appointment = self._book(kind, self._clinic_slot(*lead_days), modality)
            roll = self.rng.random() if attempt < MAX_MISSED_BOOKINGS else 1.0
            if roll < CANCELLATION_RATE:
                self._to(self.now + (appointment.starts_at - self.now) / 2)
                self._publish(
                    SCHEDULING,
                    "scheduling.appointment_cancelled",
                    {
                        "appointment_id": appointment.id,
                        "kind": kind,
                        "reason": self.rng.choice(_CANCEL_REASONS),
                    },
                )
                continue
            if kind == "dosing" and chaperone:
                # Seed: a trusted person must drive the client home; confirmed days ahead.
                self._to(appointment.starts_at - timedelta(hours=self._between(20, 72)))
                self._confirm_chaperone(appointment)
            if before_session is not None:
                before_session(appointment)
            if roll < CANCELLATION_RATE + self.no_show_rate:
                self._to(appointment.starts_at + timedelta(minutes=self._between(15, 30)))
                self._publish(
                    SCHEDULING,
                    "scheduling.appointment_no_show",
                    {"appointment_id": appointment.id, "kind": kind},
                )
                continue
            self._to(appointment.starts_at + timedelta(minutes=self._between(0, 10)))
            return appointment
        raise AssertionError("the last booking is always attended")

    def _book(self, kind: str, starts_at: datetime, modality: str = "in_person") -> _Appointment:
        self.appointments += 1
        appointment = _Appointment(
            f"apt-{self.number:06d}-{self.appointments:02d}", kind, starts_at
        )
        self._publish(
            SCHEDULING,
            "scheduling.appointment_booked",
            {
                "appointment_id": appointment.id,
                "kind": kind,
                "starts_at": _stamp(starts_at),
                "modality": modality,
            },
        )
        return appointment

    def _confirm_chaperone(self, appointment: _Appointment) -> None:
        self._publish(
            SCHEDULING,
            "scheduling.chaperone_confirmed",
            {"appointment_id": appointment.id, "relationship": self.rng.choice(_CHAPERONES)},
        )

    def _send_reminder(self, appointment: _Appointment) -> None:
        """A newer scheduling release sends reminder events kapflow has no contract for."""
        self._to(appointment.starts_at - timedelta(hours=24))
        self._publish(
            SCHEDULING,
            "scheduling.appointment_reminder_sent",
            {"appointment_id": appointment.id, "channel": "sms"},
            reason="UNKNOWN_TYPE",
        )

    def _session_id(self, dosing: int) -> str:
        """A refused start and the session that later takes place share the planned id."""
        return f"ds-{self.number:06d}-{dosing}"

    def _withdraw(self) -> None:
        self._publish(
            SCHEDULING, "scheduling.client_withdrew", {"reason": self.rng.choice(_WITHDRAW_REASONS)}
        )

    def _modality(self, in_person_share: float) -> str:
        return "in_person" if self.rng.random() < in_person_share else "virtual"

    def _any_prescriber(self) -> str:
        return self.rng.choice(("journey_clinical", "joyous"))

    # Clock -------------------------------------------------------------------------------------
    def _between(self, low: int, high: int) -> int:
        """An integer in [low, high]; built on `random()`, several times faster than randint."""
        return low + int(self.rng.random() * (high - low + 1))

    def _tick(self, low_minutes: int, high_minutes: int) -> None:
        self.now += timedelta(minutes=max(1, self._between(low_minutes, high_minutes)))

    def _to(self, moment: datetime) -> None:
        """Move to `moment`, or a minute on if it has passed: a client's events never tie."""
        self.now = max(moment, self.now + timedelta(minutes=1))

    def _after_hours(self, low: int, high: int) -> None:
        self._tick(low * 60, high * 60)

    def _after_days(self, low: int, high: int) -> None:
        self._to(self._clinic_slot(low, high))

    def _clinic_slot(self, low_days: int, high_days: int) -> datetime:
        """A half-hour slot in clinic hours, `low_days`–`high_days` days from today."""
        day = self.now.date() + timedelta(days=self._between(low_days, high_days))
        slot = datetime(
            day.year,
            day.month,
            day.day,
            self._between(9, 16),
            self.rng.choice((0, 30)),
            tzinfo=UTC,
        )
        while slot <= self.now + timedelta(hours=1):
            slot += timedelta(days=1)
        return slot

    # Publishing --------------------------------------------------------------------------------
    def _record(
        self,
        type_: str,
        data: dict[str, Any],
        *,
        reason: str | None = None,
        deviation: bool = False,
        published_at: datetime | None = None,
    ) -> None:
        self._publish(
            CLINICAL_RECORD,
            type_,
            data,
            reason=reason,
            deviation=deviation,
            published_at=published_at,
        )

    def _publish(
        self,
        source: str,
        type_: str,
        data: dict[str, Any],
        *,
        reason: str | None = None,
        deviation: bool = False,
        published_at: datetime | None = None,
        awaits_next: bool = False,
    ) -> None:
        self.event_counts[source] += 1
        event = {
            "specversion": "1.0",
            "id": f"{_ID_PREFIX[source]}-{self.number:06d}-{self.event_counts[source]:04d}",
            "source": source,
            "type": type_,
            "subject": self.client_id,
            "time": _stamp(self.now),
            "datacontenttype": "application/json",
            "data": data,
        }
        if reason is not None:
            expected = DEVIATION if deviation else REJECTED
        elif awaits_next:
            expected = PARKED
        else:
            expected = ACCEPTED
        self.publications.append(
            _Publication(
                published_at or self.now,
                len(self.publications),
                ScriptedEvent(event, expected, reason, self.profile, self.incident),
                awaits_next,
            )
        )

    def _redeliver(self) -> None:
        """At-least-once delivery: a publisher re-sends one or two events it already sent."""
        candidates = [p for p in self.publications if p.scripted.expected_outcome == ACCEPTED]
        for original in self.rng.sample(candidates, min(len(candidates), self._between(1, 2))):
            again = ScriptedEvent(
                copy.deepcopy(original.scripted.event),
                DUPLICATE,
                "DUPLICATE",
                self.profile,
                self.incident,
            )
            delay = timedelta(minutes=self._between(2, 90))
            self.publications.append(
                _Publication(original.published_at + delay, len(self.publications), again)
            )

    def _observed(self) -> list[_Publication]:
        """Publications up to the end of observation, never ending on an early delivery."""
        ordered = sorted(self.publications)
        kept = [p for p in ordered if p.published_at <= self.observed_until]
        while kept and kept[-1].awaits_next:
            kept.pop()
        return kept


def _allocate_incidents(
    master: random.Random, numbers_by_intake: list[int], clients: int
) -> dict[int, str]:
    """Give each deliberate fault to early-enquiring clients, so it is inside the observation.

    At least one client per incident (when the cohort is large enough), one incident each.
    """
    plan = [
        incident
        for incident, share in INCIDENT_SHARES.items()
        for _ in range(max(1, round(share * clients)))
    ]
    early = numbers_by_intake[: max(len(plan), len(numbers_by_intake) // 3)]
    master.shuffle(early)
    return dict(zip(early, plan, strict=False))


def scripted_cohort(
    clients: int = 300, seed: int = 7, start: datetime = DEFAULT_START
) -> Iterator[ScriptedEvent]:
    """The cohort in publication order, each event with the outcome the rules should give it.

    Streams: a client's story is written only when the merge reaches its first enquiry, and
    dropped once all its events are out, so memory follows the clients active at a time.
    """
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    start = start.astimezone(UTC)
    observed_until = start + timedelta(days=OBSERVATION_DAYS)
    master = random.Random(seed)
    intake: list[tuple[datetime, int, int]] = []
    for number in range(1, clients + 1):
        enquired_at = start + timedelta(minutes=master.randrange(INTAKE_DAYS * 24 * 60))
        intake.append((enquired_at, number, master.getrandbits(64)))
    intake.sort()
    incidents = _allocate_incidents(master, [number for _, number, _ in intake], clients)

    active: list[tuple[datetime, int, int, list[_Publication]]] = []
    waiting = iter(intake)
    upcoming = next(waiting, None)
    while active or upcoming is not None:
        # Admit every client whose enquiry comes no later than the next publication due.
        while upcoming is not None and (not active or upcoming[0] <= active[0][0]):
            enquired_at, number, client_seed = upcoming
            story = _ClientStory(
                number,
                random.Random(client_seed),
                enquired_at,
                observed_until,
                incidents.get(number),
            )
            publications = story.tell()
            if publications:
                heapq.heappush(active, (publications[0].published_at, number, 0, publications))
            upcoming = next(waiting, None)
        _, number, position, publications = heapq.heappop(active)
        yield publications[position].scripted
        if position + 1 < len(publications):
            following = publications[position + 1].published_at
            heapq.heappush(active, (following, number, position + 1, publications))


def generate_cohort(
    clients: int = 300, seed: int = 7, start: datetime = DEFAULT_START
) -> Iterator[dict[str, Any]]:
    """CloudEvents 1.0 (structured JSON mode) for a synthetic cohort, in publication order.

    Deterministic: the same arguments give the same events, byte for byte.
    """
    for scripted in scripted_cohort(clients, seed, start):
        yield scripted.event


def write_jsonl(events: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> int:
    """Write events as JSON lines (the `kapflow ingest` input); returns how many."""
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for event in events:
            out.write(json.dumps(event, separators=(",", ":"), ensure_ascii=False))
            out.write("\n")
            count += 1
    return count


def cohort_size_for(events_wanted: int) -> int:
    """How many clients give about `events_wanted` events (for load tests and benchmarks)."""
    return max(1, round(events_wanted / EVENTS_PER_CLIENT))


__all__ = [
    "CLINICAL_RECORD",
    "EVENTS_PER_CLIENT",
    "INCIDENT_SHARES",
    "JOURNEY_CLINICAL",
    "JOYOUS",
    "PROFILE_WEIGHTS",
    "SCHEDULING",
    "ScriptedEvent",
    "cohort_size_for",
    "generate_cohort",
    "scripted_cohort",
    "write_jsonl",
]
