"""The CloudEvents 1.0 envelope every kapflow event arrives in (structured JSON mode).

The envelope is shared by every event type; each source module (scheduling, prescriber,
clinician, system) declares the typed `data` of its events. Minimum necessary: the data
models carry flags and codes only. Every identifier and code is a short token with no
spaces, so a free-text note, a name or a date of birth cannot travel inside one.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

UNSAFE_CHARACTERS = "UNSAFE_CHARACTERS"
UNSAFE_CHARACTERS_MESSAGE = "holds a control, bidi, zero-width or other invisible character"


def has_unsafe_characters(text: str) -> bool:
    """Whether `text` holds a character that hides, reorders or controls what a person
    sees of it: a control (ESC, the record separator), a bidi override or isolate (U+202E,
    U+2066-2069), a zero-width character or BOM (U+200B, U+FEFF), a line separator, an
    unassigned or private-use code point. An id with one shows one thing in a log, an
    export or a screen and is another in the store (SPEC §3: such an id is rejected).
    `str.isprintable` is exactly this set (plus whitespace other than the space, which no
    id accepts either), checked in C on the hot path."""
    return not text.isprintable()


# Validation context for reading back an event already recorded: it was accepted then, and
# a release before this check may have accepted such an id; a recorded fact is read as it
# was (`Model.model_validate_json(text, context=RECORDED)`).
RECORDED = {"recorded": True}


def _printable(text: str, info: ValidationInfo) -> str:
    if has_unsafe_characters(text) and not (info.context or {}).get("recorded"):
        raise PydanticCustomError("unsafe_characters", UNSAFE_CHARACTERS_MESSAGE)
    return text


# A publisher's own identifier or URI-reference (event id, source, dataschema, traceparent):
# any visible characters, no whitespace. The `Code` tokens below need no such check: their
# pattern is ASCII letters, digits and separators.
Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=256, pattern=r"^\S+$"),
    AfterValidator(_printable),
]
UriReference = Annotated[
    str,
    StringConstraints(min_length=1, max_length=512, pattern=r"^\S+$"),
    AfterValidator(_printable),
]
TraceContext = Annotated[
    str, StringConstraints(max_length=128, pattern=r"^\S+$"), AfterValidator(_printable)
]

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
    id: Identifier
    source: UriReference
    type: str
    subject: ClientId
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: UriReference | None = None
    # W3C trace context, carried through for distributed tracing; no payload meaning.
    traceparent: TraceContext | None = None
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
    "RECORDED",
    "ReasonCode",
    "UNSAFE_CHARACTERS",
    "has_unsafe_characters",
]
