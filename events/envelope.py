"""The CloudEvents 1.0 envelope every kapflow event arrives in (structured JSON mode).

The envelope is shared by every event type; each source module (scheduling, prescriber,
clinician, system) declares the typed `data` of its events. Minimum necessary: the data
models carry flags and codes only. Every identifier and code is a short token with no
spaces, so a free-text note, a name or a date of birth cannot travel inside one.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

# A code or identifier: letters, digits and a few separators, no whitespace.
Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$")]
# A reason code such as `client_request`: lowercase snake case, never prose.
ReasonCode = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,47}$")]
ClientId = Code


class EventData(BaseModel):
    """Base of every event's `data`: strict, closed (unknown fields are rejected), immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 envelope. Subclasses fix `type` to a literal and `data` to a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source_name: ClassVar[str] = ""

    specversion: Literal["1.0"]
    id: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^\S+$")]
    source: Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=r"^\S+$")]
    type: str
    subject: ClientId
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: Annotated[str, StringConstraints(max_length=512, pattern=r"^\S+$")] | None = None
    # W3C trace context, carried through for distributed tracing; no payload meaning.
    traceparent: Annotated[str, StringConstraints(max_length=128, pattern=r"^\S+$")] | None = None
    data: EventData

    @property
    def client_id(self) -> str:
        return self.subject

    @property
    def key(self) -> tuple[str, str]:
        """Idempotency key: CloudEvents ids are unique per source."""
        return (self.source, self.id)


SPECVERSION = "1.0"

__all__ = [
    "SPECVERSION",
    "ClientId",
    "CloudEvent",
    "Code",
    "EventData",
    "Field",
    "ReasonCode",
]
