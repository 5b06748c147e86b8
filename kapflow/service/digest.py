"""What a receipt remembers of an event's content: a SHA-256 of the event as recorded.

(`source`, `id`) names one fact (SPEC §3), so the same pair again must carry the same
content; this digest is how kapflow tells a retry from a reuse (service/identity.py). It is
taken over the event exactly as the history records it (`model_dump_json(exclude_none=True)`),
so a redelivery of a recorded event, or of a parked one read back from the store, digests
the same, whatever spacing or key order the publisher sent.

Only `traceparent` is left out: it is the W3C trace context of the delivery (no payload
meaning, see events/envelope.py), and a publisher retrying through a new trace is still
sending the same fact.
"""

from __future__ import annotations

import hashlib

from events import CloudEvent

# Envelope attributes that describe the delivery, not the fact.
NOT_CONTENT = frozenset({"traceparent"})


def content_digest(event: CloudEvent) -> str:
    """The SHA-256 (hex) of `event` as recorded, less `NOT_CONTENT`."""
    text = event.model_dump_json(exclude_none=True, exclude=set(NOT_CONTENT))
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate validation let through: never raise
        data = text.encode("utf-8", errors="surrogatepass")
    return hashlib.sha256(data).hexdigest()
