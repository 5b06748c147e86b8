"""The identity of an event (SPEC §3): who may claim a source, and what the same
(`source`, `id`) seen again means.

Issue 18: a publisher that could post under another system's source, with an id that
system would use next, made kapflow answer the real event (a severe adverse event)
`duplicate`, and no prescriber notification opened. Two rules close it:

- A source is claimed by credentials. Over HTTP an API key names the sources it may post
  under (service/access.py; anything else is refused with 403 before it is recorded). On
  Kafka the broker's topic ACLs decide who writes the input topic, and
  `KAPFLOW_KAFKA_SOURCES` may narrow it to a list: a record under another source is
  dead-lettered (`SOURCE_NOT_ALLOWED`), never recorded under the identity it claims.
- (`source`, `id`) seen again is a duplicate only with the same content
  (service/digest.py). With other content it is refused (`ID_REUSED`): dead-lettered, the
  first event's receipt and effects untouched. Receipts written before digests were kept
  (schema version 5) cannot tell, and answer `duplicate` as they always did.

Both refusals are dead letters keyed by the input's content, as unreadable inputs are
(`record_unreadable`), never by the (`source`, `id`) they claim: a receipt under that
identity would be the very collision they refuse.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from events import CloudEvent, Reason, Rejection
from events.registry import CheckedJson, decode_json, storable_text_problem
from kapflow.service.digest import content_digest
from kapflow.service.originals import original_text
from kapflow.service.recording import record_unreadable
from kapflow.service.results import IngestResult, RawInput, public_state
from kapflow.service.unit_of_work import Clock, UnitOfWork, unit_of_work
from kapflow.store.base import EventStore
from workflow.engine import DUPLICATE, REJECTED

log = logging.getLogger("kapflow.identity")

ID_REUSED = "ID_REUSED"
SOURCE_NOT_ALLOWED = "SOURCE_NOT_ALLOWED"

_IDENTITY = ("id", "source", "subject", "type")
_MAX_IDENTITY_CHARS = 512  # a CloudEvent's longest identity attribute (`source`)


def answer_if_known(uow: UnitOfWork, event: CloudEvent, raw: RawInput) -> IngestResult | None:
    """The outcome for `event` if its (`source`, `id`) already has a receipt: `duplicate`
    for the same content, `rejected` (`ID_REUSED`, dead-lettered) for other content.
    None when the pair is new. `raw` is the input as it arrived (kept if dead-lettered)."""
    prior = uow.receipt_for(event.source, event.id)
    if prior is None:
        return None
    client = uow.clients.get(event.subject)
    state = public_state(client.state if client else None)
    if prior.digest is None or prior.digest == content_digest(event):
        reason = Reason("DUPLICATE", f"already recorded as {prior.outcome}")
        return IngestResult(event.id, event.subject, event.type, DUPLICATE, (reason,), state)
    reason = Reason(
        ID_REUSED,
        f"this source already used this id for other content (recorded as {prior.outcome});"
        " a new fact needs a new id",
        "id",
    )
    rejection = Rejection((reason,), event.id, event.source, event.subject, event.type)
    record_unreadable(uow, rejection, original_text(raw))
    # A warning: a publisher bug at best, an attempt to overwrite a fact at worst.
    log.warning(
        "event %s client=%s type=%s outcome=rejected reasons=%s",
        event.id,
        event.subject,
        event.type,
        ID_REUSED,
    )
    return IngestResult(event.id, event.subject, event.type, REJECTED, (reason,), state)


# Channels restricted to some sources (Kafka: KAPFLOW_KAFKA_SOURCES) -------------------------
def _claimed(raw: RawInput) -> dict[str, Any]:
    """The attributes an input claims, read without validating it (None of a kind when
    they cannot be read)."""
    if isinstance(raw, CloudEvent):
        return {name: getattr(raw, name) for name in _IDENTITY}
    if isinstance(raw, CheckedJson):  # the Kafka binding decoded it already
        decoded = raw.decoded
    elif isinstance(raw, str | bytes):
        decoded = decode_json(raw)
    else:
        decoded = raw
    return decoded if isinstance(decoded, dict) else {}


def _storable(value: Any) -> str | None:
    """An identity attribute as the rejected log may hold it (the original keeps it all)."""
    if not isinstance(value, str) or not value or len(value) > _MAX_IDENTITY_CHARS:
        return None
    return value if storable_text_problem(value) is None else None


def source_refusal(raw: RawInput, allowed: frozenset[str]) -> Rejection | None:
    """Why `raw` may not be recorded from a channel that takes only the `allowed` sources
    (empty: any source), or None.

    An input whose source cannot be read claims no identity: it is left to validation,
    which rejects it keyed by its content.
    """
    if not allowed:
        return None
    claimed = _claimed(raw)
    source = claimed.get("source")
    if not isinstance(source, str) or source in allowed:
        return None
    reason = Reason(
        SOURCE_NOT_ALLOWED,
        "this channel takes events only from its configured sources (KAPFLOW_KAFKA_SOURCES)",
        "source",
    )
    who = [_storable(claimed.get(name)) for name in _IDENTITY]
    return Rejection((reason,), *who)


def split_by_source(
    inputs: Sequence[RawInput], allowed: frozenset[str]
) -> tuple[list[RawInput], list[tuple[RawInput, Rejection]]]:
    """The inputs to record, in order, and those refused for their source."""
    admitted: list[RawInput] = []
    refused: list[tuple[RawInput, Rejection]] = []
    for raw in inputs:
        refusal = source_refusal(raw, allowed)
        if refusal is None:
            admitted.append(raw)
        else:
            refused.append((raw, refusal))
    return admitted, refused


def dead_letter_refused(
    store: EventStore, clock: Clock, refused: Sequence[tuple[RawInput, Rejection]]
) -> list[IngestResult]:
    """Dead-letter inputs refused for their source, in one transaction of their own.

    Keyed by content: a redelivery is not dead-lettered twice, and nothing is recorded
    under the (`source`, `id`) they claim, so the real event of that pair still can be.
    A refusal changes no client, so it need not be ordered with the rest of its batch.
    """
    if not refused:
        return []
    with unit_of_work(store, clock) as uow:
        for raw, rejection in refused:
            record_unreadable(uow, rejection, original_text(raw))
    log.warning("%d events refused: %s", len(refused), SOURCE_NOT_ALLOWED)
    return [IngestResult(r.id, r.subject, r.type, REJECTED, r.reasons, None) for _, r in refused]
