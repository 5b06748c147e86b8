"""Events published by the clinicians' record system."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from events.envelope import CloudEvent, Code, EventData, ReasonCode
from events.prescriber import Pathway
from events.scheduling import Modality

# Seed: "dizziness, nausea, increased heart rate, or temporary confusion or fatigue".
SideEffect = Literal["dizziness", "nausea", "increased_heart_rate", "confusion", "fatigue"]
Symptom = Literal[
    "dizziness",
    "nausea",
    "vomiting",
    "increased_heart_rate",
    "elevated_blood_pressure",
    "confusion",
    "fatigue",
    "dissociation",
    "anxiety",
    "panic",
    "suicidal_ideation",
    "other",
]


class History(EventData):
    psychosis: bool
    mania: bool
    schizophrenia: bool


class CurrentMedications(EventData):
    maoi: bool
    stimulant: bool
    high_dose_benzodiazepine: bool


class AssessmentCompletedData(EventData):
    clinician_id: Code
    age_years: int = Field(ge=0, le=130)
    therapy_status: Literal["qmts_client", "external_provider", "none"]
    history: History
    current_medications: CurrentMedications
    insurance_used: bool | None = None


class PreparationCompletedData(EventData):
    clinician_id: Code
    session_number: int = Field(ge=1, le=50)
    ready_for_dosing: bool


class DosingStartedData(EventData):
    """Version 2 (release 2026.12.1): `appointment_id` names the booked dosing appointment,
    whose confirmed chaperone R7 asks for. Version 1 had no such field (events/upcasting)."""

    clinician_id: Code
    session_id: Code
    pathway: Pathway
    chaperone_confirmed: bool
    abstinence_attested: bool
    modality: Modality
    appointment_id: Code | None = None


class DosingCompletedData(EventData):
    clinician_id: Code
    session_id: Code
    duration_minutes: int = Field(gt=0, le=720)
    active_minutes: int = Field(ge=0, le=720)
    released_to_chaperone: bool
    side_effects: Annotated[list[SideEffect], Field(max_length=5)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _active_within_session(self) -> DosingCompletedData:
        if self.active_minutes > self.duration_minutes:
            raise ValueError("active_minutes cannot exceed duration_minutes")
        if len(set(self.side_effects)) != len(self.side_effects):
            raise ValueError("side_effects must not repeat")
        return self


class IntegrationCompletedData(EventData):
    clinician_id: Code
    session_id: Code


class AdverseEventReportedData(EventData):
    clinician_id: Code
    severity: Literal["mild", "moderate", "severe"]
    symptoms: Annotated[list[Symptom], Field(min_length=1, max_length=12)]
    session_id: Code | None = None


class HoldData(EventData):
    clinician_id: Code
    reason: ReasonCode


class CourseCompletedData(EventData):
    clinician_id: Code


class ReassessmentRequestedData(EventData):
    clinician_id: Code
    reason: ReasonCode


class AssessmentCompleted(CloudEvent):
    type: Literal["clinician.assessment_completed"]
    data: AssessmentCompletedData


class PreparationCompleted(CloudEvent):
    type: Literal["clinician.preparation_completed"]
    data: PreparationCompletedData


class DosingStarted(CloudEvent):
    type: Literal["clinician.dosing_started"]
    data: DosingStartedData


class DosingCompleted(CloudEvent):
    type: Literal["clinician.dosing_completed"]
    data: DosingCompletedData


class IntegrationCompleted(CloudEvent):
    type: Literal["clinician.integration_completed"]
    data: IntegrationCompletedData


class AdverseEventReported(CloudEvent):
    type: Literal["clinician.adverse_event_reported"]
    data: AdverseEventReportedData


class HoldPlaced(CloudEvent):
    type: Literal["clinician.hold_placed"]
    data: HoldData


class HoldReleased(CloudEvent):
    type: Literal["clinician.hold_released"]
    data: HoldData


class CourseCompleted(CloudEvent):
    type: Literal["clinician.course_completed"]
    data: CourseCompletedData


class ReassessmentRequested(CloudEvent):
    type: Literal["clinician.reassessment_requested"]
    data: ReassessmentRequestedData


CLINICIAN_EVENTS: tuple[type[CloudEvent], ...] = (
    AssessmentCompleted,
    PreparationCompleted,
    DosingStarted,
    DosingCompleted,
    IntegrationCompleted,
    AdverseEventReported,
    HoldPlaced,
    HoldReleased,
    CourseCompleted,
    ReassessmentRequested,
)
