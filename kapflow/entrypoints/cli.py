"""`kapflow` command line (SPEC §7). Every command takes `--db URL` (or KAPFLOW_DB).

Each command turns its arguments into a service-layer command or read over the runtime
that kapflow/bootstrap.py builds, and prints the result; nothing else happens here.
Errors are one clear line on stderr and a non-zero exit, never a traceback. Heavy
imports (HTTP, Kafka) happen inside the commands that need them, so `kapflow ingest`
starts fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, TextIO, get_args
from zoneinfo import ZoneInfo

import orjson

from events.operations import TaskOwner
from kapflow.store import DEFAULT_DB_URL, EventStore, StoreError
from workflow.client import ClientSnapshot

if TYPE_CHECKING:
    from kapflow.bootstrap import Runtime
    from kapflow.service.deviations import DeviationRow


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2 unless given."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake in the arguments is one line on stderr, like every error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Times kapflow can hold and compute with (a week's look-ahead, a parking window) without
# leaving what datetime can represent.
_EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _time(text: str) -> datetime:
    """A full RFC 3339 time, or a date: the start of that day in the clinic's time zone
    (KAPFLOW_CLINIC_TZ), as staff mean "from 1 December" (issue 20)."""
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time(), _clinic_zone())
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                raise argparse.ArgumentTypeError(
                    f"{text!r} needs a time zone (e.g. 2026-03-01T12:00:00Z) or no time of day"
                )
        moment = moment.astimezone(UTC)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"not a date (2026-12-01) or an RFC 3339 time (2026-12-01T09:00:00Z): {text!r}"
        ) from error
    except OverflowError as error:
        raise argparse.ArgumentTypeError(f"out of range: {text!r}") from error
    if not _EARLIEST <= moment < _LATEST:
        raise argparse.ArgumentTypeError(f"out of range (1900 to 9000): {text!r}")
    return moment


def _clinic_zone() -> ZoneInfo:
    from kapflow.settings import SettingsError, load_clinic_settings

    try:
        return ZoneInfo(load_clinic_settings().tz)
    except SettingsError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _print_json(value: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


# Commands that only read: their store is opened read-only, so a key in their environment
# never marks a plain store encrypted behind a keyless server's back (issue 18).
READ_COMMANDS = frozenset(
    {"client", "history", "replay", "tasks", "verify", "export", "deviations", "check"}
    | {"deadlines", "parked"}
)


def _runtime(args: argparse.Namespace, **options: Any) -> Runtime:
    from kapflow.bootstrap import bootstrap

    # `kapflow tasks complete ID` and the like record an event: they write.
    acts = args.command == "tasks" and args.action is not None
    read_only = args.command in READ_COMMANDS and not acts
    try:
        return bootstrap(args.db, read_only=read_only, **options)
    except StoreError as error:
        raise CommandError(str(error)) from error


def _store(args: argparse.Namespace) -> EventStore:
    return _runtime(args).store


def _record_read(
    args: argparse.Namespace,
    action: str,
    client_id: str | None = None,
    detail: str | None = None,
) -> None:
    """SPEC §6: a read of clinical data from the command line is in the access log too, named
    by the operating-system user, recorded before anything is printed (not recorded: not
    served)."""
    from kapflow.service.access import record_cli_read
    from kapflow.store.access_log import open_access_log

    try:
        access_log = open_access_log(args.db)
        try:
            record_cli_read(access_log, action, client_id, detail)
        finally:
            access_log.close()
    except StoreError as error:
        raise CommandError(f"cannot record this read in the access log: {error}") from error


# --- commands ---------------------------------------------------------------------------


def _read_lines(path: str) -> Iterator[bytes]:
    """The non-blank lines of FILE (or stdin) as bytes, one event each.

    Bytes, not text: a line that is not UTF-8 is one rejection, not the end of the run. A
    line longer than one event may be (`MAX_EVENT_BYTES`) is read only that far, which is
    enough to reject it as too large; the rest of it is skipped, never held in memory.
    """
    if path == "-":
        yield from _event_lines(sys.stdin.buffer)
        return
    try:
        handle = open(path, "rb")  # noqa: SIM115 - streamed, closed below
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}") from error
    with handle:
        yield from _event_lines(handle)


def _event_lines(stream: BinaryIO) -> Iterator[bytes]:
    from events import MAX_EVENT_BYTES

    limit = MAX_EVENT_BYTES + 1
    while line := stream.readline(limit):
        if len(line) == limit and not line.endswith(b"\n"):
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
        if line := line.strip():
            yield line


def cmd_ingest(args: argparse.Namespace) -> int:
    from kapflow.entrypoints.progress import ingest_progress, ingest_summary

    runtime = _runtime(args, batch_size=args.batch_size)
    write = sys.stdout.write
    dumps = orjson.dumps  # compact JSON, UTF-8 as is: one line per event
    counts: Counter[str] = Counter()
    started = time.perf_counter()
    with ingest_progress(enabled=not args.no_progress) as advance:
        for result in runtime.service.ingest_stream(_read_lines(args.file)):
            write(dumps(result.as_dict()).decode() + "\n")
            counts[result.outcome] += 1
            advance()
    sys.stdout.flush()
    runtime.close()
    # Standard output stays one JSON line per event; the person at the terminal gets a sum.
    print(ingest_summary(counts, time.perf_counter() - started), file=sys.stderr)
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    store = _store(args)
    _record_read(args, "client", args.client_id)
    view = _known_client(store, args.client_id).view()
    if args.json:
        _print_json(view)
    else:
        _print_client(view)
    return 0


def _print_client(view: dict[str, Any]) -> None:
    print(f"client      {view['client_id']}")
    print(
        f"state       {view['state']}"
        + (f"  (reasons: {', '.join(view['reasons'])})" if view["reasons"] else "")
    )
    print(
        f"pathway     {view['pathway'] or '-'}   doses remaining: "
        f"{'-' if view['doses_remaining'] is None else view['doses_remaining']}   "
        f"preparation sessions: {view['preparation_sessions']}"
    )
    print(f"open tasks  {len(view['open_tasks'])}")
    for task in view["open_tasks"]:
        print(f"  {task['due']}  {task['priority']:<7} {task['owner']:<18} {task['code']}")


def _known_client(store: EventStore, client_id: str) -> ClientSnapshot:
    client = store.get_client(client_id)
    if client is None or client.state == "new" and client.parked == 0:
        raise CommandError(f"client {client_id} not found", 1)
    return client


def cmd_check(args: argparse.Namespace) -> int:
    """Readiness before the fact: a failed check is data (exit 0), not an error."""
    from workflow.readiness import dosing_readiness

    runtime = _runtime(args)
    _record_read(args, "check", args.client_id, "action=dose")
    client = _known_client(runtime.store, args.client_id)
    readiness = dosing_readiness(client, args.at or _now_default(), runtime.policy)
    if args.json:
        _print_json(readiness)
        return 0
    verdict = "READY" if readiness["ready"] else "NOT READY"
    print(
        f"{readiness['client_id']}: {verdict} to dose at {readiness['at']}"
        f" (state {readiness['state'] or '-'})"
    )
    for check in readiness["checks"]:
        mark = "ok  " if check["passed"] else "FAIL"
        why = "" if check["passed"] else f" — {check['why']}"
        print(f"  [{mark}] {check['rule']:<8} {check['checks']}{why}")
    return 0


def cmd_deviations(args: argparse.Namespace) -> int:
    from kapflow.service.deviations import recorded_deviations, write_deviations
    from workflow.tasks import iso

    store = _store(args)
    detail = ",".join(
        f"{name}={iso(value)}"
        for name, value in (("from", args.from_time), ("to", args.to_time))
        if value is not None
    )
    _record_read(args, "deviations", args.client, detail or None)
    rows = recorded_deviations(
        store,
        since=iso(args.from_time) if args.from_time else None,
        until=iso(args.to_time) if args.to_time else None,
        open_only=args.open,
        client_id=args.client,
    )
    fmt = "jsonl" if args.json else args.format
    write = _write_deviation_table if fmt == "table" else write_deviations
    if not args.out:
        if not write(rows, sys.stdout, fmt):
            print("no protocol deviations match", file=sys.stderr)
        return 0
    try:
        with open(args.out, "w", encoding="utf-8", newline="") as out:
            count = write(rows, out, fmt)
    except OSError as error:
        raise CommandError(f"cannot write {args.out}: {error.strerror}") from error
    print(f"wrote {count} deviations to {args.out}", file=sys.stderr)
    return 0


def _write_deviation_table(rows: Iterable[DeviationRow], out: TextIO, _fmt: str) -> int:
    """One line per deviation for the person at the terminal; a header only when any."""
    count = 0
    for row in rows:
        if not count:
            out.write(f"{'OCCURRED AT':<25} {'CLIENT':<12} {'RULES':<10} {'STATUS':<9} EVENT\n")
        rules = ",".join(row.rules)
        out.write(
            f"{row.occurred_at:<25} {row.client_id:<12} {rules:<10} {row.status:<9}"
            f" {row.event_type}  review {row.review_task_id or '-'}\n"
        )
        count += 1
    return count


def cmd_history(args: argparse.Namespace) -> int:
    store = _store(args)
    _record_read(args, "history", args.client_id)
    entries = store.history(args.client_id)
    if not entries:
        raise CommandError(f"client {args.client_id} has no history", 1)
    if args.json:
        _print_json([entry.as_dict() for entry in entries])
        return 0
    for entry in entries:
        outcome = json.loads(entry.outcome)
        tasks = " ".join(f"{c['change'][0]}:{c['task']['code']}" for c in outcome["tasks"])
        print(
            f"{entry.seq:>4} {entry.occurred_at} {entry.type:<36} "
            f"{entry.from_state:>11} -> {entry.to_state:<11} {tasks}"
        )
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from kapflow.service.audit import replay_view
    from workflow.tasks import iso

    store = _store(args)
    detail = ",".join(
        f"{name}={iso(value)}"
        for name, value in (("as_of", args.as_of), ("known_at", args.known_at))
        if value is not None
    )
    _record_read(args, "replay", args.client_id, detail or None)
    entries = store.history(args.client_id)
    if not entries:
        raise CommandError(f"client {args.client_id} has no history", 1)
    view = replay_view(entries, args.client_id, args.as_of, args.known_at)
    if args.json:
        _print_json(view)
    elif view["events_applied"] == 0:
        moment = iso(args.known_at) if args.known_at else iso(args.as_of)
        verb = "was recorded" if args.known_at else "had happened"
        print(f"{args.client_id}: nothing {verb} by {moment}")
    else:
        _print_client(view)
        print(f"events applied {view['events_applied']}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from workflow.tasks import iso

    if args.action is not None:
        return _act_on_task(args)
    store = _store(args)
    _record_read(args, "tasks", args.client, f"owner={args.owner}" if args.owner else None)
    tasks = store.tasks(
        open_only=args.open or args.overdue,
        owner=args.owner,
        due_before=iso(args.now or _now_default()) if args.overdue else None,
        client_id=args.client,
        limit=args.limit,
    )
    if args.json:
        _print_json([task.as_dict() for task in tasks])
        return 0
    for task in tasks:
        print(
            f"{task.due}  {task.status:<10} {task.priority:<7} {task.owner:<18} "
            f"{task.for_:<12} {task.code}"
            + (f"  ${task.amount_usd}" if task.amount_usd else "")
            + f"  {task.id}"
        )
    print(f"{len(tasks)} task(s)")
    return 0


def _act_on_task(args: argparse.Namespace) -> int:
    """`kapflow tasks complete|claim|cancel|reassign ID`: an operations event, recorded."""
    from kapflow.service.work_queue import (
        InvalidTaskAction,
        TaskAction,
        TaskAlreadyClosed,
        TaskNotFound,
        act_on_task,
    )

    if args.task_id is None:
        raise CommandError(f"`kapflow tasks {args.action}` needs a TASK_ID")
    if args.action == "cancel" and not args.reason:
        raise CommandError("cancel needs --reason CODE (e.g. not_applicable)")
    if args.action == "reassign" and not args.to_role:
        raise CommandError("reassign needs --to-role ROLE")
    runtime = _runtime(args)
    action = TaskAction(
        args.action, args.task_id, by_role=args.by_role, reason=args.reason, to_role=args.to_role
    )
    try:
        result = act_on_task(
            runtime.store,
            runtime.service.ingest_batch,
            action,
            actor=f"cli:{os.environ.get('USER', 'operator')}",
            at=args.now or _now_default(),
            idempotency_key=args.idempotency_key,
        )
    except TaskNotFound as error:
        raise CommandError(f"no task {error}") from error
    except TaskAlreadyClosed as error:
        raise CommandError(str(error)) from error
    except InvalidTaskAction as error:
        raise CommandError(f"invalid {args.action}: {error}") from error
    if args.json:
        _print_json(result.as_dict())
    else:
        task = result.task
        status = f"{task.status} ({task.owner})" if task else "-"
        print(f"{args.action} {args.task_id}: {result.outcome}; task now {status}")
    return 0 if result.outcome in ("accepted", "duplicate") else 1


def cmd_tick(args: argparse.Namespace) -> int:
    report = _runtime(args).clock().tick(args.now or _now_default())
    summary = report.as_dict()
    if args.json:
        _print_json(summary)
    else:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(summary["outcomes"].items()))
        print(
            f"tick {summary['now']}: {summary['deadlines']} deadlines due"
            + (f" ({outcomes})" if outcomes else "")
            + f"; {summary['expired_parked']} parked events expired"
        )
    return 0


def cmd_deadlines(args: argparse.Namespace) -> int:
    from kapflow.service.clock import deadlines
    from kapflow.service.views import deadline_view
    from workflow.tasks import iso

    now = args.now or _now_default()
    until = now + args.within
    runtime = _runtime(args)
    rows = [deadline_view(d, iso(now)) for d in deadlines(runtime.store, runtime.policy, until)]
    if args.json:
        _print_json(rows)
        return 0
    for d in rows:
        flag = "OVERDUE " if d["overdue"] else "upcoming"
        print(
            f"{d['due']}  {flag} {d['client_id']:<12} {d['kind']:<5} {d['code']:<34}"
            f" {d['owner'] or '-'}"
        )
    print(f"{len(rows)} deadline(s) up to {iso(until)}")
    return 0


def cmd_parked(args: argparse.Namespace) -> int:
    from kapflow.service.views import parked_view

    rows = [parked_view(p) for p in _store(args).parked_events(args.client)]
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        why = "; ".join(r["message"] for r in row["reasons"])
        print(f"{row['occurred_at']}  {row['subject']:<12} {row['type']:<36} {why}")
    print(f"{len(rows)} parked event(s)")
    return 0


def _duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        duration = timedelta(seconds=float(text[:-1]) * units[text[-1]])
        if not timedelta(0) <= duration <= timedelta(days=36500):
            raise ValueError("out of range")
    except (KeyError, ValueError, IndexError, OverflowError) as error:
        raise argparse.ArgumentTypeError(
            f"not a duration like 90m, 24h or 7d (up to 100 years): {text!r}"
        ) from error
    return duration


def _now_default() -> datetime:
    # Reading the clock here is the operator's choice of "now", recorded as events:
    # the engine itself never reads it.
    from kapflow.service.unit_of_work import utc_now

    return utc_now()


def cmd_migrate(args: argparse.Namespace) -> int:
    from kapflow.store.sql import SCHEMA_VERSION

    store = _store(args)  # opening a store migrates it in place
    if store.migrated_from is None:
        print(f"store already at schema version {SCHEMA_VERSION}")
    else:
        print(f"store migrated from schema version {store.migrated_from} to {SCHEMA_VERSION}")
    store.close()
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from kapflow.store.codec import key_id, read_key_file, rotation_store

    try:
        store = rotation_store(args.db, args.new_key_file)
    except ValueError as error:
        raise CommandError(f"encryption at rest: {error}") from error
    try:
        rewritten = sum(store.reseal())
    finally:
        store.close()
    new_id = key_id(read_key_file(args.new_key_file)[0]).hex()
    print(f"re-encrypted {rewritten} stored values; every value now uses key {new_id}")
    print(f"from now on start kapflow with KAPFLOW_ENCRYPTION_KEY_FILE={args.new_key_file}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from kapflow.service.outbox import OUTBOX_RETENTION, prune_published

    retention = args.older_than or OUTBOX_RETENTION
    store = _store(args)
    deleted = prune_published(store, _now_default(), retention)
    store.close()
    days = retention.total_seconds() / 86400
    print(f"pruned {deleted} outbox rows published more than {days:g} days ago")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from kapflow.service.audit import Divergence, verify, verify_access_log
    from kapflow.service.store_head import check_store_head, head_key
    from kapflow.service.verification import default_jobs

    jobs = default_jobs() if args.jobs is None else args.jobs
    if jobs < 1:
        raise CommandError("--jobs is a number of processes: 1 or more")
    try:
        key = head_key(args.head_key_file)
    except (OSError, ValueError) as error:
        raise CommandError(f"cannot read the head key: {error}") from error
    runtime = _runtime(args, access_log=True)
    assert runtime.access_log is not None, "asked for"
    access = verify_access_log(runtime.access_log, args.access_log_head)
    runtime.access_log.close()  # not carried into the worker processes verify forks
    # Taken before the histories are verified: the head covers no row verify did not see.
    head = check_store_head(runtime.store, key, args.store_head)
    report = verify(runtime.store, jobs=jobs)
    report.divergences.extend(access.divergences)
    report.divergences.extend(Divergence("-", None, "store-head", p) for p in head.problems)
    if args.json:
        _print_json(
            report.as_dict() | {"access_log": access.as_dict(), "store_head": head.as_dict()}
        )
    else:
        for d in report.divergences:
            print(f"DIVERGENCE {d.kind:<10} client={d.client_id} seq={d.seq}: {d.detail}")
        verdict = "OK" if report.ok else f"FAILED ({len(report.divergences)} divergences)"
        print(f"verify: {verdict} — {report.clients} clients, {report.entries} history entries")
        if access.head_position is not None:
            print(
                f"access log: {access.rows} rows chained; head {access.head_position}:"
                f"{access.head_hash} (keep it; check later with --access-log-head)"
            )
        keying = (
            "HMAC-SHA256 with the head key"
            if head.head.keyed
            else "plain SHA-256: no head key, so anyone with the database can recompute it"
        )
        print(f"store head: {head.head.text()} ({keying}; keep it; check later with --store-head)")
    return 0 if report.ok else 1


def cmd_backup(args: argparse.Namespace) -> int:
    from kapflow.store.backup import backup_sqlite

    report = backup_sqlite(args.db, args.out)
    if args.json:
        _print_json(
            {
                "out": report.path,
                "bytes": report.bytes,
                "history": report.history,
                "access_log": report.access_log,
                "seconds": round(report.seconds, 3),
            }
        )
        return 0
    print(
        f"backed up {args.db} to {report.path} in {report.seconds:.2f}s: {report.bytes} bytes,"
        f" {report.history} history entries, {report.access_log} access-log rows; integrity ok"
    )
    print(f"check it with: kapflow verify --db sqlite:///{report.path}")
    return 0


def _access_log_head(text: str) -> tuple[int, str]:
    position, _, digest = text.partition(":")
    if not position.isdigit() or len(digest) != 64:
        raise argparse.ArgumentTypeError(f"not POSITION:HASH as verify prints it: {text!r}")
    return int(position), digest


def _store_head(text: str) -> str:
    from kapflow.service.store_head import parse_store_head

    try:
        parse_store_head(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def cmd_access_log(args: argparse.Namespace) -> int:
    from kapflow.service.audit import write_access_log
    from kapflow.store import require_store
    from kapflow.store.access_log import iter_entries, open_access_log
    from workflow.tasks import iso

    try:
        require_store(args.db)
    except StoreError as error:
        raise CommandError(str(error)) from error
    rows = iter_entries(
        open_access_log(args.db),
        since=iso(args.from_time) if args.from_time else None,
        until=iso(args.to_time) if args.to_time else None,
        client_id=args.client,
        who=args.who,
    )
    if not args.out:
        write_access_log(rows, sys.stdout, args.format)
        return 0
    try:
        with open(args.out, "w", encoding="utf-8", newline="") as out:
            count = write_access_log(rows, out, args.format)
    except OSError as error:
        raise CommandError(f"cannot write {args.out}: {error.strerror}") from error
    print(f"wrote {count} access-log rows to {args.out}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kapflow.service.audit import export_decisions, iter_rejections

    store = _store(args)
    _record_read(args, "export", args.client, f"format={args.format}")
    entries = store.history(args.client) if args.client else store.iter_history()
    rejections = iter_rejections(store, args.client) if args.include_rejections else None
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8", newline="") as out:
                count = export_decisions(entries, rejections, out, args.format)
        except OSError as error:
            raise CommandError(f"cannot write {args.out}: {error.strerror}") from error
        print(f"exported {count.describe()} to {args.out}", file=sys.stderr)
    else:
        export_decisions(entries, rejections, sys.stdout, args.format)
    return 0


def cmd_diagram(args: argparse.Namespace) -> int:
    from workflow.states.diagram import graphviz_svg, mermaid

    if args.format == "mermaid":
        text = mermaid()
    else:
        try:
            text = graphviz_svg()
        except RuntimeError as error:
            raise CommandError(str(error)) from error
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_protocol(args: argparse.Namespace) -> int:
    from workflow.protocol import protocol_document, protocol_markdown
    from workflow.releases import RELEASES

    if args.release is not None and args.release not in RELEASES:
        raise CommandError(f"unknown pathway release {args.release}; known: {', '.join(RELEASES)}")
    text = protocol_markdown(protocol_document(args.release))
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as error:
            raise CommandError(f"cannot write {args.out}: {error.strerror}") from error
        print(f"wrote the protocol to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from events import event_json_schemas

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    schemas = event_json_schemas()
    for type_name, schema in schemas.items():
        (out / f"{type_name}.schema.json").write_text(
            json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    print(f"wrote {len(schemas)} JSON Schemas to {out}")
    return 0


def cmd_asyncapi(args: argparse.Namespace) -> int:
    import yaml

    from kapflow.publishers.asyncapi import asyncapi_document

    text = yaml.safe_dump(asyncapi_document(), sort_keys=False, allow_unicode=True, width=100)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote the AsyncAPI 3 document to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from kapflow.demo.clinic import run_clinic
    from workflow.tasks import iso

    runtime = _runtime(args)
    store = runtime.store
    now = args.now or _now_default()
    report = run_clinic(runtime.service, now, clients=args.clients, seed=args.seed)
    outcomes: Counter[str] = Counter(result.outcome for result in report.results)
    rejected_by: Counter[str] = Counter(
        reason.code
        for result in report.results
        if result.outcome == "rejected"
        for reason in result.reasons
    )
    deviations_by: Counter[str] = Counter(
        reason.code
        for result in [*report.results, *report.clock]
        if result.outcome == "deviation"
        for reason in result.reasons
    )
    open_tasks = store.tasks(open_only=True, limit=10**7)
    overdue = [task for task in open_tasks if task.due < iso(now)]
    summary = {
        "db": args.db,
        "from": report.start,
        "now": report.now,
        "events": dict(sorted(outcomes.items())),
        "staff_completed_tasks": report.staff_completions,
        "deadlines_recorded": sum(result.outcome == "accepted" for result in report.clock),
        "clients_by_state": dict(sorted(store.count_by_state().items())),
        "open_tasks_by_owner": dict(sorted(Counter(t.owner for t in open_tasks).items())),
        "overdue_tasks": len(overdue),
        "deviations_by_rule": dict(sorted(deviations_by.items())),
        "rejections_by_reason": dict(sorted(rejected_by.items())),
    }
    if args.json:
        _print_json(summary)
        return 0
    print(
        f"kapflow demo: {args.clients} synthetic clients through the KAP pathway,"
        f" {report.start[:10]} → {report.now} → {args.db}"
    )
    print("events:          " + ", ".join(f"{k} {v}" for k, v in summary["events"].items()))
    print(
        f"staff completed {report.staff_completions} tasks;"
        f" kapflow's clock recorded {summary['deadlines_recorded']} deadlines"
    )
    print("clients by state:")
    for state, count in summary["clients_by_state"].items():
        print(f"  {state:<12} {count:>5}")
    print(f"open tasks by owner ({len(overdue)} of {len(open_tasks)} overdue at {report.now}):")
    for owner, count in summary["open_tasks_by_owner"].items():
        print(f"  {owner:<18} {count:>5}")
    print("protocol deviations by rule (recorded, each with a review task):")
    for code, count in summary["deviations_by_rule"].items():
        print(f"  {code:<18} {count:>5}")
    print("rejections by rule/reason:")
    for code, count in summary["rejections_by_reason"].items():
        print(f"  {code:<18} {count:>5}")
    print("next: kapflow tasks --open | kapflow client c-000001 | kapflow verify | kapflow serve")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from kapflow.entrypoints.http.server import CannotServe, run

    try:
        return run(args)
    except CannotServe as error:
        raise CommandError(str(error)) from error


def cmd_keys(args: argparse.Namespace) -> int:
    from kapflow.service.access import KeyConfigError, create_key
    from kapflow.service.keyfile import add_key

    if args.keys_command in ("revoke", "list"):
        return _keys_revoke(args) if args.keys_command == "revoke" else _keys_list(args)
    if args.role == "publisher" and not args.source:
        # (`source`, `id`) is an event's identity (SPEC §3): a publisher posts only under
        # the sources its key names, so a new one must name them.
        raise CommandError(
            "a publisher key needs at least one --source: the CloudEvents source URI its"
            " system posts under, e.g. --source urn:qmts:scheduling"
        )
    expires = _now_default() + args.expires if args.expires else None
    try:
        new = create_key(args.role, args.name, args.prefix, expires, args.source)
        if args.keys_file:
            add_key(args.keys_file, new)
    except KeyConfigError as error:
        raise CommandError(str(error)) from error
    if args.json:
        _print_json({"secret": new.secret, "entry": new.key.as_entry()})
        return 0
    print(f"secret (shown once; give it to {new.key.name}, kapflow keeps only its hash):")
    print(f"  {new.secret}")
    if args.keys_file:
        print(f"added to {args.keys_file}" + (f"; expires {new.key.expires}" if expires else ""))
        print("a running `kapflow serve --keys-file` picks it up within a second (or on SIGHUP)")
        return 0
    print("add to the `keys` list of a JSON keys file (or KAPFLOW_API_KEYS):")
    print(f"  {new.json_line()}")
    print("or to a TOML keys file:")
    print("  " + new.toml_block().replace("\n", "\n  "))
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from kapflow.service.access import KeyConfigError
    from kapflow.service.keyfile import revoke_key

    try:
        key = revoke_key(args.keys_file, args.name, _now_default())
    except KeyConfigError as error:
        raise CommandError(str(error)) from error
    print(f"revoked {key.name} ({key.role}) at {key.revoked} in {args.keys_file}")
    print("a running `kapflow serve --keys-file` refuses it within a second (at once on SIGHUP)")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from kapflow.service.access import KeyConfigError
    from kapflow.service.keyfile import key_status, read_keys
    from kapflow.store.database import database_kind, sqlite_path
    from kapflow.store.key_usage import KeyUsageStore

    try:
        ring = read_keys(args.keys_file)
    except KeyConfigError as error:
        raise CommandError(str(error)) from error
    # Last use is recorded by `serve` in its database; a database that does not exist yet
    # has none (and listing keys must not create one).
    unused = database_kind(args.db) == "sqlite" and not Path(sqlite_path(args.db)).exists()
    last_used = {} if unused else KeyUsageStore(args.db).last_used()
    now = _now_default()
    rows = [
        key.as_entry() | {"status": key_status(key, now), "last_used": last_used.get(key.name)}
        for key in ring.keys
    ]
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        # A publisher entry from before keys named sources may publish nothing: say so.
        sources = ",".join(row.get("sources", [])) or "none (publishes nothing)"
        print(
            f"{row['name']:<24} {row['role']:<10} {row['status']:<8}"
            f" expires {row.get('expires') or '-':<20} last used {row['last_used'] or 'never'}"
            + (f" sources {sources}" if row["role"] == "publisher" else "")
        )
    print(f"{len(rows)} key(s) in {args.keys_file}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from kapflow.entrypoints.worker import run

    return run(args)


def cmd_relay(args: argparse.Namespace) -> int:
    from kapflow.entrypoints.relay import run

    return run(args)


def cmd_broker(args: argparse.Namespace) -> int:
    from kapflow.entrypoints.broker import BrokerUnavailable, run_forever

    try:
        return run_forever(args.host, args.port)
    except BrokerUnavailable as error:
        raise CommandError(str(error)) from error


# --- parser -----------------------------------------------------------------------------

_Add = Callable[..., argparse.ArgumentParser]


def _example(*lines: str) -> str:
    """A command's epilog: what a real call looks like (issue 20: every help has one)."""
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kapflow",
        description="Event-driven care workflow for the KAP programme.",
        epilog=_example(
            "kapflow ingest events.jsonl", "kapflow client c-000001", "kapflow COMMAND --help"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version="kapflow 0.1.0")
    common = _Parser(add_help=False)
    common.add_argument(
        "--db",
        default=os.environ.get("KAPFLOW_DB", DEFAULT_DB_URL),
        help="database URL: sqlite:///PATH (default ./kapflow.db) or postgresql://…"
        " (env KAPFLOW_DB)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="log each event outcome")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, help="what to do (see below)"
    )

    def add(
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help_: str,
        example: str,
        json: str | None = None,
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            parents=[common],
            help=help_,
            description=help_,
            epilog=example,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        if json is not None:  # only where the output honours it
            sub.add_argument("--json", action="store_true", help=json)
        return sub

    for add_commands in (
        _add_ingest_command,
        _add_client_commands,
        _add_task_commands,
        _add_clock_commands,
        _add_verify_command,
        _add_audit_commands,
        _add_deviations_command,
        _add_store_commands,
        _add_document_commands,
        _add_service_commands,
        _add_kafka_commands,
        _add_keys_command,
    ):
        add_commands(add)
    return parser


def _add_ingest_command(add: _Add) -> None:
    sub = add(
        "ingest",
        cmd_ingest,
        "apply CloudEvents JSON lines in order",
        _example(
            "kapflow ingest events.jsonl --db sqlite:///clinic.db", "cat x.jsonl | kapflow ingest -"
        ),
    )
    sub.add_argument("file", help="a JSON-lines file, or - for standard input")
    sub.add_argument("--batch-size", type=int, default=5000, help="events per transaction")
    sub.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress line on standard error (it shows only when that is a terminal)",
    )


def _add_client_commands(add: _Add) -> None:
    client_id = "the client's id, e.g. c-000001"
    sub = add(
        "client",
        cmd_client,
        "show a client's state, pathway and open tasks",
        _example("kapflow client c-000001", "kapflow client c-000001 --json"),
        json="print the client object (state, pathway, open tasks, reasons) as JSON",
    )
    sub.add_argument("client_id", help=client_id)
    sub = add(
        "history",
        cmd_history,
        "show a client's recorded history",
        _example("kapflow history c-000001"),
        json="print the history entries as a JSON array",
    )
    sub.add_argument("client_id", help=client_id)
    sub = add(
        "replay",
        cmd_replay,
        "rebuild a client from its history as of a time",
        _example(
            "kapflow replay c-000001 --as-of 2026-12-01",
            "kapflow replay c-000001 --known-at 2026-12-01T09:00:00Z --json",
        ),
        json="print the client object as it stood, as JSON",
    )
    sub.add_argument("client_id", help=client_id)
    sub.add_argument("--as-of", type=_time, help="events that happened up to TIME (or a date)")
    sub.add_argument("--known-at", type=_time, help="what kapflow had recorded by TIME (or a date)")
    sub = add(
        "check",
        cmd_check,
        "readiness: would a dosing at TIME be within the protocol?",
        _example(
            "kapflow check c-000001 --dose",
            "kapflow check c-000001 --dose --at 2026-12-02T09:00:00Z",
        ),
        json="print each check (R5–R9, holds, in care) as JSON",
    )
    sub.add_argument("client_id", help=client_id)
    sub.add_argument(
        "--dose",
        dest="action",
        action="store_const",
        const="dose",
        required=True,
        help="check a dosing session (R5–R9, holds, in care)",
    )
    sub.add_argument("--at", type=_time, help="when the dosing would start (default: now)")


def _add_task_commands(add: _Add) -> None:
    sub = add(
        "tasks",
        cmd_tasks,
        "list follow-up tasks, or act on one: complete | claim | cancel | reassign TASK_ID",
        _example(
            "kapflow tasks --overdue --owner billing",
            "kapflow tasks complete 0193a1b2-… --by-role billing",
        ),
        json="print the tasks (or the action's outcome) as JSON",
    )
    sub.add_argument(
        "action",
        nargs="?",
        choices=["complete", "claim", "cancel", "reassign"],
        help="act on a task (recorded as an operations event); omit to list",
    )
    sub.add_argument("task_id", nargs="?", help="the task to act on")
    owner_roles = list(get_args(TaskOwner))
    sub.add_argument("--reason", help="cancel: a reason code, e.g. not_applicable")
    sub.add_argument("--to-role", choices=owner_roles, help="reassign: the new owner role")
    sub.add_argument("--by-role", choices=owner_roles, help="the role acting (default: owner)")
    sub.add_argument(
        "--idempotency-key", help="the same key on a retry makes it a duplicate, not a 2nd event"
    )
    sub.add_argument("--open", action="store_true", help="only open tasks")
    sub.add_argument("--overdue", action="store_true", help="only open tasks due before --now")
    sub.add_argument(
        "--now",
        type=_time,
        help="the time to judge overdue against; for an action, when it happened (default: now;"
        " give it for a reproducible run)",
    )
    sub.add_argument("--owner", choices=owner_roles, help="only tasks this role owns")
    sub.add_argument("--client", help="only this client's tasks")
    sub.add_argument("--limit", type=int, default=10000, help="list at most N (default 10000)")


def _add_clock_commands(add: _Add) -> None:
    sub = add(
        "tick",
        cmd_tick,
        "record the deadlines due by TIME; expire stale parked events",
        _example("kapflow tick", "kapflow tick --now 2026-12-01T09:00:00Z --json"),
        json="print what the tick recorded as JSON",
    )
    sub.add_argument("--now", type=_time, help="the time to advance the clock to (default: now)")
    sub = add(
        "deadlines",
        cmd_deadlines,
        "list overdue and upcoming deadlines and timers",
        _example("kapflow deadlines --within 24h"),
        json="print the deadlines as a JSON array",
    )
    sub.add_argument("--now", type=_time, default=None, help="reference time (default: now)")
    sub.add_argument(
        "--within",
        type=_duration,
        default=timedelta(days=7),
        help="how far ahead to look (e.g. 24h, 7d; default 7d)",
    )
    sub = add(
        "parked",
        cmd_parked,
        "list events parked as premature, with why",
        _example("kapflow parked --client c-000001"),
        json="print the parked events as a JSON array",
    )
    sub.add_argument("--client", help="only this client's parked events")


def _add_verify_command(add: _Add) -> None:
    sub = add(
        "verify",
        cmd_verify,
        "replay every history; check outcomes and hash chains",
        _example(
            "kapflow verify", "kapflow verify --store-head 12.3:ab12… --access-log-head 40:cd34…"
        ),
        json="print the report, the access log's and the store's heads as JSON",
    )
    sub.add_argument(
        "--access-log-head",
        type=_access_log_head,
        help="POSITION:HASH printed by an earlier verify: the access log must still hold it",
    )
    sub.add_argument(
        "--store-head",
        type=_store_head,
        help="H.R:HASH printed by an earlier verify: the store must still hold, unchanged,"
        " every history and rejected-log row it covers",
    )
    sub.add_argument(
        "--head-key-file",
        help="file holding the store head's key, kept away from the database (default:"
        " KAPFLOW_HEAD_KEY; with neither, the head is plain SHA-256)",
    )
    sub.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="processes that share the clients (default: one per CPU; 1 verifies in this"
        " process alone)",
    )


def _add_audit_commands(add: _Add) -> None:
    sub = add(
        "access-log",
        cmd_access_log,
        "who read which client's records, and when",
        _example("kapflow access-log --client c-000001 --from 2026-12-01 --format csv --out r.csv"),
    )
    sub.add_argument(
        "--from", dest="from_time", type=_time, help="reads at or after TIME (or a date)"
    )
    sub.add_argument("--to", dest="to_time", type=_time, help="reads at or before TIME (or a date)")
    sub.add_argument("--client", help="only reads of this client's records")
    sub.add_argument("--who", metavar="NAME", help="only reads by this person or key name")
    sub.add_argument(
        "--format", choices=["jsonl", "csv"], default="jsonl", help="JSON lines or CSV"
    )
    sub.add_argument("--out", help="file to write (default: standard output)")
    sub = add(
        "export",
        cmd_export,
        "export histories for auditors",
        _example("kapflow export --format csv --include-rejections --out audit.csv"),
    )
    sub.add_argument(
        "--format", choices=["jsonl", "csv"], default="jsonl", help="JSON lines or CSV"
    )
    sub.add_argument("--out", help="file to write (default: standard output)")
    sub.add_argument("--client", help="only this client's history")
    sub.add_argument(
        "--include-rejections",
        action="store_true",
        help="append the rejected log (records of kind `rejection`): every decision",
    )


def _add_deviations_command(add: _Add) -> None:
    sub = add(
        "deviations",
        cmd_deviations,
        "every protocol deviation recorded, with its review",
        _example("kapflow deviations --open", "kapflow deviations --from 2026-12-01 --format csv"),
        json="JSON lines, one deviation each (as --format jsonl)",
    )
    sub.add_argument("--from", dest="from_time", type=_time, help="that happened at or after TIME")
    sub.add_argument("--to", dest="to_time", type=_time, help="that happened at or before TIME")
    sub.add_argument("--open", action="store_true", help="only deviations still to review")
    sub.add_argument("--client", help="only this client's deviations")
    sub.add_argument(
        "--format",
        choices=["table", "jsonl", "csv"],
        default="table",
        help="a table for reading (default), JSON lines (as --json) or CSV",
    )
    sub.add_argument("--out", help="file to write (default: standard output)")


def _add_store_commands(add: _Add) -> None:
    add(
        "migrate",
        cmd_migrate,
        "upgrade the store's schema in place (opening it does too)",
        _example("kapflow migrate --db postgresql://kapflow@db.internal/kapflow"),
    )
    sub = add(
        "rotate-key",
        cmd_rotate_key,
        "re-encrypt every stored value with a new key (resumable; the current key is"
        " read from KAPFLOW_ENCRYPTION_KEY[_FILE])",
        _example(
            "kapflow rotate-key --new-key-file new.key  # current key: KAPFLOW_ENCRYPTION_KEY_FILE"
        ),
    )
    sub.add_argument("--new-key-file", required=True, help="file holding the new base64 key")
    sub = add(
        "prune",
        cmd_prune,
        "delete outbox rows published longer ago than the retention",
        _example("kapflow prune --older-than 30d"),
    )
    sub.add_argument(
        "--older-than", type=_duration, help="retention (default 7d: OUTBOX_RETENTION)"
    )
    sub = add(
        "backup",
        cmd_backup,
        "a consistent copy of a SQLite store, also while serving",
        _example("kapflow backup --out /backups/kapflow-2026-12-01.db"),
        json="print what was copied as JSON",
    )
    sub.add_argument("--out", required=True, help="the backup file to create (never overwritten)")
    sub = add(
        "demo",
        cmd_demo,
        "run a synthetic cohort through the whole pathway",
        _example("kapflow demo --clients 300 --db sqlite:///demo.db"),
        json="print the cohort's summary as JSON",
    )
    sub.add_argument("--clients", type=int, default=300, help="how many clients (default 300)")
    sub.add_argument("--seed", type=int, default=7, help="the same seed, the same cohort")
    sub.add_argument(
        "--now",
        type=_time,
        default=None,
        help="when the cohort's journeys end (default: now, so `serve`'s clock fits the data)",
    )


def _add_document_commands(add: _Add) -> None:
    sub = add(
        "diagram",
        cmd_diagram,
        "print the pathway diagram",
        _example("kapflow diagram --format svg --out pathway.svg"),
    )
    sub.add_argument(
        "--format", choices=["mermaid", "svg"], default="mermaid", help="Mermaid text or SVG"
    )
    sub.add_argument("--out", help="file to write")
    sub = add(
        "protocol",
        cmd_protocol,
        "print the protocol as a clinician-readable document (Markdown)",
        _example("kapflow protocol --out protocol.md", "kapflow protocol --release 2026.11.5"),
    )
    sub.add_argument("--out", help="file to write (default: standard output)")
    sub.add_argument(
        "--release",
        metavar="V",
        help="the protocol of an earlier pathway release, e.g. 2026.11.5 (default: current);"
        " the document lists every release and what it changed",
    )
    sub = add(
        "schema",
        cmd_schema,
        "export one JSON Schema per event type",
        _example("kapflow schema --out schemas/"),
    )
    sub.add_argument("--out", required=True, help="directory to write the schemas into")
    sub = add(
        "asyncapi",
        cmd_asyncapi,
        "print the AsyncAPI 3 document of the Kafka topics",
        _example("kapflow asyncapi --out asyncapi.yaml"),
    )
    sub.add_argument("--out", help="file to write (default: standard output)")


def _add_service_commands(add: _Add) -> None:
    sub = add(
        "serve",
        cmd_serve,
        "HTTP service and operations dashboard",
        _example("kapflow serve --keys-file keys.toml --port 8000", "kapflow serve --insecure-dev"),
    )
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sub.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    sub.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS: PEM certificate (chain)")
    sub.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    sub.add_argument("--insecure-dev", action="store_true", help="no API keys (development only)")
    sub.add_argument(
        "--keys-file", help="API keys file (or KAPFLOW_API_KEYS); reloaded on change and SIGHUP"
    )
    sub.add_argument(
        "--keys-poll-interval", type=float, default=1.0, help="seconds between keys-file checks"
    )
    sub.add_argument("--kafka", help="also publish the outbox to Kafka at HOST:PORT")
    sub.add_argument(
        "--clock-interval",
        type=float,
        default=30.0,
        help="seconds between clock ticks recording deadlines (0: off; use `kapflow tick`)",
    )
    sub.add_argument(
        "--outbox-retention",
        type=_duration,
        help="prune outbox rows published longer ago than this, e.g. 7d (the default)",
    )
    sub.add_argument(
        "--max-body-bytes", type=int, default=1024 * 1024, help="largest POST body (413 beyond)"
    )
    sub.add_argument(
        "--max-events", type=int, default=1000, help="most events in one POST (413 beyond)"
    )
    sub.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="seconds between outbox polls for the live stream (local writes wake it at once)",
    )
    sub.add_argument(
        "--keepalive", type=float, default=15.0, help="seconds between stream keep-alive comments"
    )


def _add_kafka_commands(add: _Add) -> None:
    for name, handler, help_ in (
        ("worker", cmd_worker, "Kafka stream worker"),
        ("relay", cmd_relay, "publish the outbox to Kafka in its own process"),
    ):
        sub = add(name, handler, help_, _example(f"kapflow {name} --kafka localhost:9092"))
        sub.add_argument(
            "--kafka", default=os.environ.get("KAPFLOW_KAFKA"), help="HOST:PORT (env KAPFLOW_KAFKA)"
        )
        sub.add_argument("--config", help="TOML settings file (environment KAPFLOW_* wins)")
    sub = add(
        "broker",
        cmd_broker,
        "local Kafka-compatible broker for development",
        _example("kapflow broker --port 9092"),
    )
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sub.add_argument("--port", type=int, default=9092, help="port to listen on (default 9092)")


def _add_keys_command(add: _Add) -> None:
    keys_file = "the keys file `serve` reads"
    sub = add(
        "keys",
        cmd_keys,
        "manage API keys for `kapflow serve`",
        _example("kapflow keys create --role auditor --name audit-team --keys-file keys.toml"),
    )
    keys = sub.add_subparsers(
        dest="keys_command", metavar="ACTION", required=True, help="create, revoke or list"
    )
    raw = argparse.RawDescriptionHelpFormatter
    create = keys.add_parser(
        "create",
        help="create a key: prints the secret once and the line for the keys file",
        epilog=_example(
            "kapflow keys create --role publisher --name qmts --source urn:qmts:scheduling"
        ),
        formatter_class=raw,
    )
    _key_create_arguments(create)
    revoke = keys.add_parser(
        "revoke",
        help="revoke a key in a keys file: refused at once",
        epilog=_example("kapflow keys revoke --name qmts --keys-file keys.toml"),
        formatter_class=raw,
    )
    revoke.add_argument("--name", required=True, help="the key's name")
    revoke.add_argument("--keys-file", required=True, help=keys_file)
    listing = keys.add_parser(
        "list",
        help="keys in a keys file: status, expiry, last use",
        epilog=_example("kapflow keys list --keys-file keys.toml --json"),
        formatter_class=raw,
    )
    listing.add_argument("--keys-file", required=True, help=keys_file)
    listing.add_argument("--db", default=argparse.SUPPRESS, help="where last use is recorded")
    listing.add_argument("--json", action="store_true", help="print the keys as JSON")


def _key_create_arguments(create: argparse.ArgumentParser) -> None:
    create.add_argument(
        "--role",
        required=True,
        choices=["publisher", "dashboard", "operations", "auditor", "admin"],
        help="what the key may do",
    )
    create.add_argument("--name", required=True, help="who holds it (recorded in the access log)")
    create.add_argument(
        "--prefix",
        action="append",
        default=[],
        help="publisher only: an event-type prefix it may post, e.g. scheduling (repeatable)",
    )
    create.add_argument(
        "--source",
        action="append",
        default=[],
        help="publisher only, required: a CloudEvents source URI it may post under,"
        " e.g. urn:qmts:scheduling (repeatable)",
    )
    create.add_argument("--json", action="store_true", help="print the secret and entry as JSON")
    create.add_argument(
        "--expires", type=_duration, help="refused after this long, e.g. 90d, 12h (default: never)"
    )
    create.add_argument("--keys-file", help="add the entry to this keys file (JSON or .toml)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.handler(args))
    except CommandError as error:
        print(f"kapflow: error: {error}", file=sys.stderr)
        return error.exit_code
    except StoreError as error:
        print(f"kapflow: database error: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("kapflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as error:  # noqa: BLE001 - the last line of defence: no tracebacks
        if args.verbose:
            logging.getLogger("kapflow").exception("internal error")
        print(
            f"kapflow: internal error ({type(error).__name__}); rerun with -v for details",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
