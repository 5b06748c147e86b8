"""Events published by the scheduling system."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime

from events.envelope import CloudEvent, Code, EventData, ReasonCode

AppointmentKind = Literal["assessment", "preparation", "dosing", "integration"]
Modality = Literal["in_person", "virtual"]


class InquiryReceivedData(EventData):
    channel: Literal["email", "phone", "web", "referral"]
    referred_by: Code | None = None


class AppointmentBookedData(EventData):
    appointment_id: Code
    kind: AppointmentKind
    starts_at: AwareDatetime
    modality: Modality


class AppointmentCancelledData(EventData):
    appointment_id: Code
    kind: AppointmentKind
    reason: ReasonCode | None = None


class AppointmentNoShowData(EventData):
    appointment_id: Code
    kind: AppointmentKind


class ChaperoneConfirmedData(EventData):
    appointment_id: Code
    relationship: ReasonCode


class ClientWithdrewData(EventData):
    reason: ReasonCode | None = None


class InquiryReceived(CloudEvent):
    type: Literal["scheduling.inquiry_received"]
    data: InquiryReceivedData


class AppointmentBooked(CloudEvent):
    type: Literal["scheduling.appointment_booked"]
    data: AppointmentBookedData


class AppointmentCancelled(CloudEvent):
    type: Literal["scheduling.appointment_cancelled"]
    data: AppointmentCancelledData


class AppointmentNoShow(CloudEvent):
    type: Literal["scheduling.appointment_no_show"]
    data: AppointmentNoShowData


class ChaperoneConfirmed(CloudEvent):
    type: Literal["scheduling.chaperone_confirmed"]
    data: ChaperoneConfirmedData


class ClientWithdrew(CloudEvent):
    type: Literal["scheduling.client_withdrew"]
    data: ClientWithdrewData


SCHEDULING_EVENTS: tuple[type[CloudEvent], ...] = (
    InquiryReceived,
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentNoShow,
    ChaperoneConfirmed,
    ClientWithdrew,
)
