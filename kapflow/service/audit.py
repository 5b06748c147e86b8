"""Audit: replay a client's history, verify every recorded outcome and hash chain, export.

Replay is not a second implementation: it feeds the recorded events through the same
`engine.apply` that produced them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

from kapflow.service.csv_cells import csv_cells
from kapflow.service.derived_rows import (
    StoredBatch,
    check_client_rows,
    check_rows_without_history,
    check_store_rows,
    read_batch,
)
from kapflow.service.facts import UnreadableEntry, rebuild, recorded_after_window, recorded_event
from kapflow.service.ingest import compact_json
from kapflow.store.access_log import AccessLog, AccessRecord, access_hash, iter_entries
from kapflow.store.base import EventStore, HistoryEntry, RejectedRecord, entry_hash
from workflow.client import GENESIS_HASH, ClientSnapshot
from workflow.derivation import Derivation, record_fact
from workflow.engine import apply
from workflow.policy import DEFAULT_POLICY, CarePolicy
from workflow.releases import UnknownPathwayVersion, release_of
from workflow.states.pathway import PATHWAY_VERSION
from workflow.tasks import iso

# Snapshot fields not reproduced by a replay of history alone.
_NOT_REPLAYED = ("parked",)


@dataclass(slots=True)
class Replay:
    client: ClientSnapshot
    applied: int
    skipped: int


def replay(
    entries: Iterable[HistoryEntry],
    client_id: str,
    *,
    as_of: datetime | None = None,
    known_at: datetime | None = None,
    policy: CarePolicy = DEFAULT_POLICY,
) -> Replay:
    """Rebuild a client from its history, through the same derivation that recorded it.

    `as_of`: the facts that happened (CloudEvents `time`) up to T, in event-time order.
    `known_at`: what kapflow had recorded by T (its record time), whatever their times.
    """
    known_at_text = iso(known_at) if known_at else None
    known = [
        entry for entry in entries if known_at_text is None or entry.recorded_at <= known_at_text
    ]
    rebuilt = rebuild(client_id, known, policy, as_of=iso(as_of) if as_of else None)
    return Replay(rebuilt.derivation.client, rebuilt.applied, rebuilt.skipped)


def replay_view(
    entries: list[HistoryEntry],
    client_id: str,
    as_of: datetime | None = None,
    known_at: datetime | None = None,
) -> dict[str, Any]:
    """The client object as it stood (SPEC §7 `kapflow replay ID --json`), for every runtime."""
    result = replay(entries, client_id, as_of=as_of, known_at=known_at)
    view = result.client.view()
    view.pop("parked_events", None)
    view["as_of"] = iso(as_of) if as_of else None
    view["known_at"] = iso(known_at) if known_at else None
    view["events_applied"] = result.applied
    if result.client.state == "new":
        view["state"] = None
    return view


@dataclass(frozen=True, slots=True)
class Divergence:
    client_id: str
    seq: int | None
    # chain | gap | outcome | state | snapshot | version | unreadable; the rows kept beside
    # the history (service/derived_rows.py): task | client-row | parked | receipt |
    # rejection | outbox; access-log; store-head
    kind: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "seq": self.seq,
            "kind": self.kind,
            "detail": self.detail,
        }


@dataclass(slots=True)
class VerifyReport:
    clients: int = 0
    entries: int = 0
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.divergences

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "clients": self.clients,
            "entries": self.entries,
            "pathway_version": PATHWAY_VERSION,
            "divergences": [d.as_dict() for d in self.divergences],
        }


def _verify_client(
    client_id: str,
    entries: list[HistoryEntry],
    stored: dict[str, Any] | None,
    policy: CarePolicy,
    found: Callable[[Divergence], None],
) -> tuple[int, ClientSnapshot | None]:
    """Check one client's chain, replay its history and compare the result with `stored`
    (its snapshot's record, `_NOT_REPLAYED` left out); report each divergence through
    `found`. Returns how many entries were checked (a replay that cannot go on stops at
    the entry that stopped it) and the client replayed (None if the replay stopped)."""
    client = ClientSnapshot(client_id)
    derivation: Derivation | None = None
    previous_hash = GENESIS_HASH
    checked = 0
    for expected_seq, entry in enumerate(entries, start=1):
        checked += 1
        if entry.seq != expected_seq:
            found(Divergence(client_id, entry.seq, "gap", f"expected seq {expected_seq}"))
        if entry.prev_hash != previous_hash:
            found(Divergence(client_id, entry.seq, "chain", "prev_hash does not link"))
        if entry_hash(entry) != entry.hash:
            found(Divergence(client_id, entry.seq, "chain", "entry hash does not match content"))
        previous_hash = entry.hash
        try:
            release = release_of(entry.pathway_version)
        except UnknownPathwayVersion:
            found(
                Divergence(
                    client_id,
                    entry.seq,
                    "version",
                    f"recorded by pathway {entry.pathway_version}, unknown to this release "
                    f"({PATHWAY_VERSION})",
                )
            )
            return checked, None
        try:
            event = recorded_event(entry)
        except UnreadableEntry as error:
            found(Divergence(client_id, entry.seq, "unreadable", str(error)))
            return checked, None
        expired = recorded_after_window(entry)
        if release.derives_from_facts:
            # The derivation that recorded it: late facts folded in at their own time.
            derivation = derivation or Derivation(client)
            outcome = record_fact(derivation, client, event, policy, release, expired=expired)
        else:
            outcome = apply(client, event, policy, release, expired=expired)
        if not outcome.recorded:
            codes = ",".join(r.code for r in outcome.reasons)
            found(
                Divergence(
                    client_id, entry.seq, "outcome", f"replay gives {outcome.outcome} ({codes})"
                )
            )
            return checked, None
        if outcome.to_state != entry.to_state or outcome.from_state != entry.from_state:
            found(
                Divergence(
                    client_id,
                    entry.seq,
                    "state",
                    f"recorded {entry.from_state}->{entry.to_state}, replay gives "
                    f"{outcome.from_state}->{outcome.to_state}",
                )
            )
        if compact_json(outcome.record()) != entry.outcome:
            found(Divergence(client_id, entry.seq, "outcome", "recorded tasks/reasons differ"))
        client = outcome.client
        client.last_hash = entry.hash
    if stored is None:
        if entries:
            found(Divergence(client_id, None, "snapshot", "history without a client snapshot"))
        return checked, client
    replayed = _replayed_part(client)
    if replayed != stored:
        differing = sorted(k for k in stored if stored.get(k) != replayed.get(k))
        found(Divergence(client_id, None, "snapshot", "snapshot differs in " + ",".join(differing)))
    return checked, client


def _replayed_part(client: ClientSnapshot) -> dict[str, Any]:
    """A snapshot's record without the fields a replay of history alone does not rebuild."""
    record = client.to_record()
    for name in _NOT_REPLAYED:
        record.pop(name, None)
    return record


# Where a divergence stands in the report: (0, n) for a client with history, (1, n) for
# a client id whose snapshot has no history; n is the client's position in the store's
# order, among the clients with history or among all client ids (the same order). (2, 0)
# for the store-wide checks of the rows kept beside the histories.
Place = tuple[int, int]
# Clients verified together: their stored rows and receipts read in a few statements.
CLIENTS_PER_READ = 25


@dataclass(slots=True)
class Findings:
    """What verifying some of the clients found, each divergence with its place."""

    clients: int = 0  # clients with history
    entries: int = 0  # history entries checked
    history_rows: int = 0  # history entries read
    found: list[tuple[Place, Divergence]] = field(default_factory=list)

    def check_history(
        self,
        place: int,
        client_id: str,
        entries: list[HistoryEntry],
        snapshot: ClientSnapshot | None,
        policy: CarePolicy,
        batch: StoredBatch,
    ) -> None:
        """Verify one client's history (never empty) against its snapshot, and the rows
        kept beside it (`batch`, read for the client's batch) against the history."""
        stored = _replayed_part(snapshot) if snapshot is not None else None
        found: list[Divergence] = []
        self.clients += 1
        self.history_rows += len(entries)
        checked, replayed = _verify_client(client_id, entries, stored, policy, found.append)
        self.entries += checked
        self.found.extend(((0, place), divergence) for divergence in found)
        # Its due times are checked when the batch settles: reported at the client's place.
        report = self._reporter((0, place))
        check_client_rows(client_id, entries, snapshot, replayed, batch, policy, report)

    def check_no_history(
        self, place: int, client_id: str, snapshot: ClientSnapshot | None, batch: StoredBatch
    ) -> None:
        """A client id without history: its snapshot must not have moved past seq 0."""
        report = self._reporter((1, place))
        if snapshot is not None and snapshot.seq > 0:
            report(client_id, None, "gap", "client has a snapshot but no history")
        check_rows_without_history(client_id, batch, report)

    def check_store(self, store: EventStore) -> None:
        """The store-wide checks: receipts, parked events, rejections and the outbox."""
        check_store_rows(store, self._reporter((2, 0)))

    def _reporter(self, place: Place) -> Callable[[str, int | None, str, str], None]:
        def report(client_id: str, seq: int | None, kind: str, detail: str) -> None:
            self.found.append((place, Divergence(client_id, seq, kind, detail)))

        return report


def report_of(findings: Iterable[Findings]) -> VerifyReport:
    """One report, divergences in the order verifying client after client finds them."""
    report = VerifyReport()
    placed: list[tuple[Place, Divergence]] = []
    for part in findings:
        report.clients += part.clients
        report.entries += part.entries
        placed.extend(part.found)
    placed.sort(key=lambda item: item[0])  # stable: keeps one client's divergences in order
    report.divergences = [divergence for _, divergence in placed]
    return report


def verify_by_scan(store: EventStore, policy: CarePolicy = DEFAULT_POLICY) -> VerifyReport:
    """`verify` in this process: the whole history read once, in the store's order, each
    client replayed as soon as its entries (and its batch's stored rows) are read; then
    the client ids without history; then the store-wide checks."""
    findings = Findings()
    seen: set[str] = set()
    pending: list[tuple[str, list[HistoryEntry]]] = []

    def finish() -> None:
        batch = read_batch(store, pending)
        for client_id, entries in pending:
            seen.add(client_id)
            snapshot = store.get_client(client_id)
            findings.check_history(findings.clients, client_id, entries, snapshot, policy, batch)
        batch.settle(store)
        pending.clear()

    for client_id, entries in _histories(store.iter_history()):
        pending.append((client_id, entries))
        if len(pending) >= CLIENTS_PER_READ:
            finish()
    finish()
    without: list[tuple[int, str]] = []
    for place, client_id in enumerate(store.client_ids()):
        if client_id not in seen:
            without.append((place, client_id))
        if len(without) >= CLIENTS_PER_READ:
            _check_without_history(store, without, findings)
    _check_without_history(store, without, findings)
    findings.check_store(store)
    return report_of([findings])


def _histories(entries: Iterable[HistoryEntry]) -> Iterator[tuple[str, list[HistoryEntry]]]:
    """A stream of entries in client order as one (client id, entries) per client."""
    current_id: str | None = None
    current: list[HistoryEntry] = []
    for entry in entries:
        if entry.client_id != current_id:
            if current_id is not None:
                yield current_id, current
            current_id, current = entry.client_id, []
        current.append(entry)
    if current_id is not None:
        yield current_id, current


def _check_without_history(
    store: EventStore, clients: list[tuple[int, str]], findings: Findings
) -> None:
    batch = read_batch(store, [(client_id, []) for _, client_id in clients])
    for place, client_id in clients:
        findings.check_no_history(place, client_id, store.get_client(client_id), batch)
    clients.clear()


def verify_clients(
    store: EventStore, clients: list[tuple[int, str]], policy: CarePolicy, findings: Findings
) -> None:
    """Verify the clients named (each with its position among the client ids), their
    histories and snapshots read together (a statement per client would cost PostgreSQL
    a round trip each). What a process sharing `verify` runs, a batch at a time."""
    recorded = store.client_histories([client_id for _, client_id in clients])
    batch = read_batch(store, [(client.client_id, client.entries) for client in recorded])
    for (place, client_id), client in zip(clients, recorded, strict=True):
        if client.entries:
            findings.check_history(place, client_id, client.entries, client.snapshot, policy, batch)
        else:
            findings.check_no_history(place, client_id, client.snapshot, batch)
    batch.settle(store)


def verify(
    store: EventStore, policy: CarePolicy = DEFAULT_POLICY, *, jobs: int = 1
) -> VerifyReport:
    """Re-run every history through the engine; check every chain and snapshot.

    `jobs` > 1 shares the clients between this process and `jobs - 1` workers
    (service/verification.py); the report is the same.
    """
    if jobs > 1:
        from kapflow.service.verification import verify_in_processes

        return verify_in_processes(store, policy, jobs)
    return verify_by_scan(store, policy)


EXPORT_COLUMNS = (
    "client_id",
    "seq",
    "occurred_at",
    "recorded_at",
    "type",
    "source",
    "event_id",
    "from_state",
    "to_state",
    "pathway_version",
    "tasks_opened",
    "tasks_closed",
    "reasons",
    "prev_hash",
    "hash",
    # Appended (readers by column name are unaffected): every decision, deviations marked.
    "kind",  # history | rejection
    "outcome",  # accepted | deviation (history), rejected (rejection)
    "deviations",  # the rules a deviation broke
)


@dataclass(slots=True)
class ExportCount:
    history: int = 0
    rejections: int = 0

    def describe(self) -> str:
        text = f"{self.history} history entries"
        return text + (f" and {self.rejections} rejections" if self.rejections else "")


def export_jsonl(entries: Iterable[HistoryEntry], out: TextIO) -> int:
    return export_decisions(entries, None, out, "jsonl").history


def export_csv(entries: Iterable[HistoryEntry], out: TextIO) -> int:
    return export_decisions(entries, None, out, "csv").history


def csv_text(entries: Iterable[HistoryEntry]) -> Iterator[str]:
    """CSV export as chunks of text, for streaming HTTP responses."""
    return decision_chunks(entries, None, "csv")


def export_decisions(
    entries: Iterable[HistoryEntry],
    rejections: Iterable[tuple[int, RejectedRecord]] | None,
    out: TextIO,
    fmt: str = "jsonl",
) -> ExportCount:
    """Every decision kapflow made: the history entries, then (when given) the rejected
    log. JSON lines: a history entry per line as `kapflow history --json` prints it (a
    deviation's `outcome` says so), then one record per rejection with `"kind":
    "rejection"`. CSV: one table, `EXPORT_COLUMNS`, whose `kind` column tells the two apart
    (a rejection row has no seq, states or hashes; its `reasons` are the rejection's codes;
    the original message is in the JSON lines export only)."""
    count = ExportCount()
    for chunk in decision_chunks(entries, rejections, fmt, count):
        out.write(chunk)
    return count


def decision_chunks(
    entries: Iterable[HistoryEntry],
    rejections: Iterable[tuple[int, RejectedRecord]] | None,
    fmt: str = "jsonl",
    count: ExportCount | None = None,
) -> Iterator[str]:
    """`export_decisions` as chunks of about 64 kB of text, for streaming responses."""
    count = count if count is not None else ExportCount()
    buffer = io.StringIO()
    writer = csv.writer(buffer) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(EXPORT_COLUMNS)
    for entry in entries:
        if writer is not None:
            writer.writerow(csv_cells(_csv_row(entry)))
        else:
            buffer.write(compact_json(entry.as_dict()) + "\n")
        count.history += 1
        if buffer.tell() > 64_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    for position, record in rejections or ():
        if writer is not None:
            writer.writerow(csv_cells(_csv_rejection_row(record)))
        else:
            buffer.write(compact_json(rejection_record(position, record)) + "\n")
        count.rejections += 1
        if buffer.tell() > 64_000:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue()


def _csv_row(entry: HistoryEntry) -> list[Any]:
    outcome = json.loads(entry.outcome)
    opened = [c["task"]["code"] for c in outcome["tasks"] if c["change"] == "opened"]
    closed = [c["task"]["code"] for c in outcome["tasks"] if c["change"] == "closed"]
    deviations = [reason["code"] for reason in outcome.get("deviations", [])]
    return [
        entry.client_id,
        entry.seq,
        entry.occurred_at,
        entry.recorded_at,
        entry.type,
        entry.source,
        entry.event_id,
        entry.from_state,
        entry.to_state,
        entry.pathway_version,
        ";".join(opened),
        ";".join(closed),
        ";".join(outcome.get("reasons", [])),
        entry.prev_hash,
        entry.hash,
        "history",
        outcome.get("outcome", "accepted"),
        ";".join(dict.fromkeys(deviations)),
    ]


def rejection_record(position: int, record: RejectedRecord) -> dict[str, Any]:
    """A rejected input as the export holds it (as `GET /v1/rejections` shows it)."""
    return {
        "kind": "rejection",
        "position": position,
        "source": record.source,
        "id": record.event_id,
        "subject": record.client_id,
        "type": record.type,
        "recorded_at": record.recorded_at,
        "reasons": json.loads(record.reasons),
        "original": record.original,
    }


def _csv_rejection_row(record: RejectedRecord) -> list[Any]:
    codes = [reason["code"] for reason in json.loads(record.reasons)]
    row: dict[str, Any] = {
        "client_id": record.client_id or "",
        "recorded_at": record.recorded_at,
        "type": record.type or "",
        "source": record.source or "",
        "event_id": record.event_id or "",
        "reasons": ";".join(codes),
        "kind": "rejection",
        "outcome": "rejected",
    }
    return [row.get(column, "") for column in EXPORT_COLUMNS]


def iter_rejections(
    store: EventStore, client_id: str | None = None, page: int = 1000
) -> Iterator[tuple[int, RejectedRecord]]:
    """The rejected log in recorded order (`position`), read a page at a time."""
    after = 0
    while rows := store.rejections(limit=page, after=after):
        for position, record in rows:
            if client_id is None or record.client_id == client_id:
                yield position, record
        after = rows[-1][0]
        if len(rows) < page:
            return


# --- the access log's hash chain -------------------------------------------------------


@dataclass(slots=True)
class AccessLogCheck:
    """What `verify_access_log` found: rows checked, the chain's head, divergences."""

    rows: int = 0
    head_position: int | None = None
    head_hash: str = GENESIS_HASH
    divergences: list[Divergence] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.divergences,
            "rows": self.rows,
            "head_position": self.head_position,
            "head_hash": self.head_hash,
        }


def verify_access_log(
    access_log: AccessLog, expected_head: tuple[int, str] | None = None
) -> AccessLogCheck:
    """Walk the access log's chain in position order; name each removed or altered row.

    `expected_head` is a (position, hash) printed by an earlier verify and kept outside the
    database: the chain must still hold that row with that hash. This catches what a chain
    alone cannot: rows removed from the end, or a chain recomputed after an edit.

    A row whose hash no longer matches its fields was altered. A row whose `prev_hash` does
    not match the row before it follows removed rows (the positions missing say which) or
    a row altered and re-hashed (positions contiguous: the row before it). Divergences use
    kind `access-log`, the position as `seq` and the row's client as `client_id`.
    """
    check = AccessLogCheck()
    previous_hash, previous_position = GENESIS_HASH, 0
    found = check.divergences.append
    head_seen = False
    for row in iter_entries(access_log):
        check.rows += 1
        position = row.position or 0
        if expected_head is not None and position == expected_head[0]:
            head_seen = True
            if row.hash != expected_head[1]:
                found(
                    Divergence(
                        row.client_id or "-",
                        position,
                        "access-log",
                        f"access-log row {position} no longer has the hash recorded earlier:"
                        " the chain was rewritten",
                    )
                )
        where = f"access-log row {position} ({row.action} by {row.who} at {row.at})"

        def divergence(detail: str, row: AccessRecord = row, position: int = position) -> None:
            found(Divergence(row.client_id or "-", position, "access-log", detail))

        if row.hash is None:
            divergence(f"{where} has no hash: written outside the chain")
            previous_hash, previous_position = GENESIS_HASH, position
            continue
        if access_hash(row) != row.hash:
            divergence(f"{where} was altered: its hash does not match its content")
        if row.prev_hash != previous_hash:
            if position - previous_position > 1:
                missing = (
                    f"{previous_position + 1}"
                    if position - previous_position == 2
                    else f"{previous_position + 1}..{position - 1}"
                )
                divergence(f"row(s) {missing} removed: {where} does not link to the row before")
            elif previous_position == 0:
                divergence(f"{where} does not start the chain: earlier rows were removed")
            else:
                divergence(
                    f"access-log row {previous_position} was altered and re-hashed:"
                    f" row {position} no longer links to it"
                )
        previous_hash, previous_position = row.hash, position
    check.head_position = previous_position or None
    check.head_hash = previous_hash
    if expected_head is not None and not head_seen:
        found(
            Divergence(
                "-",
                expected_head[0],
                "access-log",
                f"access-log row {expected_head[0]}, the head recorded earlier, is gone:"
                " rows were removed from the end",
            )
        )
    return check


ACCESS_LOG_COLUMNS = (
    "position",
    "at",
    "who",
    "role",
    "action",
    "client_id",
    "detail",
    "prev_hash",
    "hash",
)


def write_access_log(rows: Iterable[AccessRecord], out: TextIO, fmt: str = "jsonl") -> int:
    """The access log for the privacy officer: JSON lines or CSV, with the chain columns,
    so a copy can be checked against `kapflow verify`'s head later."""
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(ACCESS_LOG_COLUMNS)
    count = 0
    for row in rows:
        record = row.as_dict()
        if writer is not None:
            writer.writerow(csv_cells(record[c] for c in ACCESS_LOG_COLUMNS))
        else:
            out.write(compact_json(record) + "\n")
        count += 1
    return count
