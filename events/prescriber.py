"""Events published by the prescriber integrations (Journey Clinical, Joyous)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, model_validator

from events.envelope import CloudEvent, EventData, ReasonCode

Prescriber = Literal["journey_clinical", "joyous"]
Pathway = Literal["high_dose", "low_dose"]

# Seed: Journey Clinical is the higher-dose partnership, Joyous the psycholytic low-dose one.
PATHWAY_OF_PRESCRIBER: dict[str, str] = {"journey_clinical": "high_dose", "joyous": "low_dose"}


class EvaluationCompletedData(EventData):
    prescriber: Prescriber
    outcome: Literal["cleared", "not_cleared"]
    valid_until: dt.date
    pathway: Pathway | None = None
    doses_authorized: int | None = Field(default=None, ge=1, le=12)
    reason: ReasonCode | None = None

    @model_validator(mode="after")
    def _doses_only_when_cleared(self) -> EvaluationCompletedData:
        if self.outcome == "not_cleared" and self.doses_authorized is not None:
            raise ValueError("doses_authorized is only meaningful when the client is cleared")
        return self


class PrescriptionRenewedData(EventData):
    prescriber: Prescriber
    valid_until: dt.date
    doses_authorized: int | None = Field(default=None, ge=1, le=12)


class ClearanceRevokedData(EventData):
    prescriber: Prescriber
    reason: ReasonCode


class SubscriptionLapsedData(EventData):
    prescriber: Prescriber


class EvaluationCompleted(CloudEvent):
    type: Literal["prescriber.evaluation_completed"]
    data: EvaluationCompletedData


class PrescriptionRenewed(CloudEvent):
    type: Literal["prescriber.prescription_renewed"]
    data: PrescriptionRenewedData


class ClearanceRevoked(CloudEvent):
    type: Literal["prescriber.clearance_revoked"]
    data: ClearanceRevokedData


class SubscriptionLapsed(CloudEvent):
    type: Literal["prescriber.subscription_lapsed"]
    data: SubscriptionLapsedData


PRESCRIBER_EVENTS: tuple[type[CloudEvent], ...] = (
    EvaluationCompleted,
    PrescriptionRenewed,
    ClearanceRevoked,
    SubscriptionLapsed,
)
