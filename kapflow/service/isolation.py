"""A batch that fails because of what is in it: find the input at fault, dead-letter it,
record the rest.

Told apart by error class, never by counting retries:
- `StoreError` means the store is unwell (connection lost, locked, a concurrent writer).
  Nothing is decided about any input: the caller keeps the batch and retries it, so an
  outage never dead-letters a good event.
- Anything else raised while recording a batch (`UnstorableData`, or an error of the
  engine on one input) comes from the inputs: retried whole it fails the same way. The
  batch is split in halves, in order, until the input at fault stands alone; that one
  becomes a rejection (`UNPROCESSABLE`, with the error's class, never its message) and
  every other input is recorded as usual. So a bad message is never retried forever.

Parsing already turns every known poison into a rejection (events/registry.py); this is
the second line, for what a future bug might still let through.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from events import CloudEvent, Reason, Rejection, parse_event, parse_event_object
from events.registry import storable_text_problem
from kapflow.service.ingest import IngestResult, IngestService, RawInput
from kapflow.service.originals import original_text
from kapflow.service.recording import record_unreadable
from kapflow.service.unit_of_work import unit_of_work
from kapflow.store.base import StoreError
from workflow.engine import REJECTED

log = logging.getLogger("kapflow.isolation")

UNPROCESSABLE = "UNPROCESSABLE"


def ingest_isolating(service: IngestService, inputs: Sequence[RawInput]) -> list[IngestResult]:
    """`ingest_batch`, except that an input that makes the transaction fail is dead-lettered
    alone instead of failing the batch. A `StoreError` propagates: retry the whole batch."""
    try:
        return service.ingest_batch(inputs)
    except StoreError:
        raise
    except Exception as error:  # noqa: BLE001 - anything but the store is the inputs' fault
        return isolate_failure(service, inputs, error)


def isolate_failure(
    service: IngestService, inputs: Sequence[RawInput], error: Exception
) -> list[IngestResult]:
    """After `ingest_batch(inputs)` raised `error` (not a `StoreError`): record the inputs
    in halves, in order, dead-lettering the one that fails alone."""
    if isinstance(error, StoreError):
        raise error
    if len(inputs) == 1:
        return [quarantine(service, inputs[0], error)]
    log.warning(
        "a batch of %d inputs failed (%s); splitting it to find the input at fault",
        len(inputs),
        type(error).__name__,
    )
    middle = len(inputs) // 2
    return ingest_isolating(service, inputs[:middle]) + ingest_isolating(service, inputs[middle:])


@dataclass(frozen=True, slots=True)
class _Identity:
    """What names an input in the rejected log: only values every store can hold."""

    source: str | None = None
    id: str | None = None
    subject: str | None = None
    type: str | None = None


def _storable_or_none(value: str) -> str | None:
    return value if storable_text_problem(value) is None else None


def _identity(raw: RawInput) -> _Identity:
    if isinstance(raw, CloudEvent):
        event: object = raw
    elif isinstance(raw, str | bytes):
        event = parse_event(raw)
    else:
        event = parse_event_object(raw)
    if not isinstance(event, CloudEvent):
        return _Identity()
    return _Identity(
        *(_storable_or_none(value) for value in (event.source, event.id, event.subject, event.type))
    )


def quarantine(service: IngestService, raw: RawInput, error: BaseException) -> IngestResult:
    """Record `raw` as rejected (`UNPROCESSABLE`) in the rejected log, in its own transaction.

    Keyed by its content, like an unparseable input, not by its CloudEvent id: a redelivery
    of the same message is not dead-lettered twice, and the event itself stays unrecorded,
    so sending it again once the fault is fixed records it.
    """
    reason = Reason(UNPROCESSABLE, f"kapflow could not record this input ({type(error).__name__})")
    who = _identity(raw)
    with unit_of_work(service.store, service.clock) as uow:
        record_unreadable(
            uow,
            Rejection((reason,), who.id, who.source, who.subject, who.type),
            original_text(raw),
        )
    log.error(
        "event %s client=%s type=%s outcome=rejected reasons=%s (%s)",
        who.id or "-",
        who.subject or "-",
        who.type or "-",
        UNPROCESSABLE,
        type(error).__name__,
    )
    return IngestResult(who.id, who.subject, who.type, REJECTED, (reason,), None)
