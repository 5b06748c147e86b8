"""Readable builders for CloudEvents in tests: one `Journey` per client, time moves forward."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

SCHEDULING = "urn:qmts:scheduling"
RECORD = "urn:qmts:clinical-record"
JOURNEY = "urn:journey-clinical:integration"
JOYOUS = "urn:joyous:integration"

_ids = itertools.count(1)
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Journey:
    """Builds one client's events in publish order, each an hour (or `after`) later."""

    def __init__(self, client_id: str = "c-1", start: datetime = START) -> None:
        self.client_id = client_id
        self.now = start

    def event(
        self,
        type_: str,
        data: dict[str, Any],
        *,
        source: str | None = None,
        after: timedelta = timedelta(hours=1),
        event_id: str | None = None,
    ) -> dict[str, Any]:
        self.now += after
        prefix = type_.split(".")[0]
        default_source = {
            "scheduling": SCHEDULING,
            "clinician": RECORD,
            "system": "urn:kapflow:clock",
        }
        return {
            "specversion": "1.0",
            "id": event_id or f"ev-{next(_ids)}",
            "source": source or default_source.get(prefix, JOURNEY),
            "type": type_,
            "subject": self.client_id,
            "time": stamp(self.now),
            "datacontenttype": "application/json",
            "data": data,
        }

    # scheduling ---------------------------------------------------------------------------
    def inquiry(self, channel: str = "email") -> dict[str, Any]:
        return self.event("scheduling.inquiry_received", {"channel": channel})

    def booking(
        self,
        kind: str,
        appointment_id: str,
        starts_in: timedelta = timedelta(days=3),
        modality: str = "in_person",
    ) -> dict[str, Any]:
        return self.event(
            "scheduling.appointment_booked",
            {
                "appointment_id": appointment_id,
                "kind": kind,
                "starts_at": stamp(self.now + starts_in),
                "modality": modality,
            },
        )

    def cancellation(self, kind: str, appointment_id: str) -> dict[str, Any]:
        return self.event(
            "scheduling.appointment_cancelled",
            {"appointment_id": appointment_id, "kind": kind, "reason": "client_request"},
        )

    def no_show(self, kind: str, appointment_id: str) -> dict[str, Any]:
        return self.event(
            "scheduling.appointment_no_show", {"appointment_id": appointment_id, "kind": kind}
        )

    def chaperone(self, appointment_id: str) -> dict[str, Any]:
        return self.event(
            "scheduling.chaperone_confirmed",
            {"appointment_id": appointment_id, "relationship": "partner"},
        )

    def withdrawal(self) -> dict[str, Any]:
        return self.event("scheduling.client_withdrew", {"reason": "moved_away"})

    # clinicians -------------------------------------------------------------------------
    def assessment(
        self,
        *,
        age: int = 35,
        therapy: str = "qmts_client",
        psychosis: bool = False,
        mania: bool = False,
        schizophrenia: bool = False,
        maoi: bool = False,
        stimulant: bool = False,
        benzodiazepine: bool = False,
        insurance: bool = True,
    ) -> dict[str, Any]:
        return self.event(
            "clinician.assessment_completed",
            {
                "clinician_id": "clin-7",
                "age_years": age,
                "therapy_status": therapy,
                "history": {"psychosis": psychosis, "mania": mania, "schizophrenia": schizophrenia},
                "current_medications": {
                    "maoi": maoi,
                    "stimulant": stimulant,
                    "high_dose_benzodiazepine": benzodiazepine,
                },
                "insurance_used": insurance,
            },
        )

    def preparation(self, number: int, ready: bool = True) -> dict[str, Any]:
        return self.event(
            "clinician.preparation_completed",
            {"clinician_id": "clin-7", "session_number": number, "ready_for_dosing": ready},
        )

    def dosing_started(
        self,
        session: str,
        *,
        pathway: str = "high_dose",
        chaperone: bool = True,
        abstinence: bool = True,
    ) -> dict[str, Any]:
        return self.event(
            "clinician.dosing_started",
            {
                "clinician_id": "clin-7",
                "session_id": session,
                "pathway": pathway,
                "chaperone_confirmed": chaperone,
                "abstinence_attested": abstinence,
                "modality": "in_person",
            },
        )

    def dosing_completed(
        self, session: str, *, duration: int = 150, active: int = 50, released: bool = True
    ) -> dict[str, Any]:
        return self.event(
            "clinician.dosing_completed",
            {
                "clinician_id": "clin-7",
                "session_id": session,
                "duration_minutes": duration,
                "active_minutes": active,
                "released_to_chaperone": released,
                "side_effects": ["nausea"],
            },
            after=timedelta(hours=3),
        )

    def integration(self, session: str) -> dict[str, Any]:
        return self.event(
            "clinician.integration_completed",
            {"clinician_id": "clin-7", "session_id": session},
            after=timedelta(days=2),
        )

    def adverse_event(self, severity: str) -> dict[str, Any]:
        return self.event(
            "clinician.adverse_event_reported",
            {"clinician_id": "clin-7", "severity": severity, "symptoms": ["confusion"]},
        )

    def hold(self) -> dict[str, Any]:
        return self.event("clinician.hold_placed", {"clinician_id": "clin-7", "reason": "review"})

    def release(self) -> dict[str, Any]:
        return self.event(
            "clinician.hold_released", {"clinician_id": "clin-7", "reason": "reviewed"}
        )

    def course_completed(self) -> dict[str, Any]:
        return self.event("clinician.course_completed", {"clinician_id": "clin-7"})

    def reassessment(self) -> dict[str, Any]:
        return self.event(
            "clinician.reassessment_requested",
            {"clinician_id": "clin-7", "reason": "new_information"},
        )

    # prescribers ---------------------------------------------------------------------------
    def evaluation(
        self,
        prescriber: str = "journey_clinical",
        *,
        outcome: str = "cleared",
        valid_until: str = "2026-12-31",
        pathway: str | None = None,
        doses: int | None = None,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "prescriber": prescriber,
            "outcome": outcome,
            "valid_until": valid_until,
        }
        if pathway:
            data["pathway"] = pathway
        if doses:
            data["doses_authorized"] = doses
        return self.event("prescriber.evaluation_completed", data, source=_source_of(prescriber))

    def renewal(
        self,
        prescriber: str = "journey_clinical",
        valid_until: str = "2027-06-30",
        doses: int | None = None,
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"prescriber": prescriber, "valid_until": valid_until}
        if doses:
            data["doses_authorized"] = doses
        return self.event("prescriber.prescription_renewed", data, source=_source_of(prescriber))

    def revocation(self, prescriber: str = "journey_clinical") -> dict[str, Any]:
        return self.event(
            "prescriber.clearance_revoked",
            {"prescriber": prescriber, "reason": "new_contraindication"},
            source=_source_of(prescriber),
        )

    def lapse(self) -> dict[str, Any]:
        return self.event("prescriber.subscription_lapsed", {"prescriber": "joyous"}, source=JOYOUS)

    def deadline(self, task_id: str) -> dict[str, Any]:
        return self.event("system.deadline_reached", {"task_id": task_id})

    # whole stretches of the pathway ----------------------------------------------------
    def to_assessed(self) -> list[dict[str, Any]]:
        return [self.inquiry(), self.booking("assessment", "a-1"), self.assessment()]

    def to_cleared(self, prescriber: str = "journey_clinical", **kw: Any) -> list[dict[str, Any]]:
        return [*self.to_assessed(), self.evaluation(prescriber, **kw)]

    def to_prepared(self, prescriber: str = "journey_clinical", **kw: Any) -> list[dict[str, Any]]:
        return [*self.to_cleared(prescriber, **kw), self.preparation(1, ready=True)]

    def dosing(self, session: str, pathway: str = "high_dose") -> list[dict[str, Any]]:
        return [self.dosing_started(session, pathway=pathway), self.dosing_completed(session)]


def _source_of(prescriber: str) -> str:
    return JOURNEY if prescriber == "journey_clinical" else JOYOUS
