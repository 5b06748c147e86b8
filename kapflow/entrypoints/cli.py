"""`kapflow` command line (SPEC §7). Every command takes `--db URL` (or KAPFLOW_DB).

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
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from kapflow.store import DEFAULT_DB_URL, EventStore, StoreError, open_store


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2 unless given."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from error
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("the time needs a timezone (e.g. 2026-03-01T12:00:00Z)")
    return moment.astimezone(UTC)


def _print_json(value: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _store(args: argparse.Namespace) -> EventStore:
    try:
        return open_store(args.db)
    except StoreError as error:
        raise CommandError(str(error)) from error


# --- commands ---------------------------------------------------------------------------


def _read_lines(path: str) -> Iterator[str]:
    if path == "-":
        stream: TextIO = sys.stdin
        yield from (line for line in stream if line.strip())
        return
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - streamed, closed below
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}") from error
    with handle:
        for line in handle:
            if line.strip():
                yield line


def cmd_ingest(args: argparse.Namespace) -> int:
    from kapflow.service.ingest import IngestService

    store = _store(args)
    service = IngestService(store, batch_size=args.batch_size)
    out = sys.stdout
    dumps = json.dumps
    for result in service.ingest_stream(_read_lines(args.file)):
        out.write(dumps(result.as_dict(), ensure_ascii=False) + "\n")
    out.flush()
    store.close()
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    store = _store(args)
    client = store.get_client(args.client_id)
    if client is None or client.state == "new" and client.parked == 0:
        raise CommandError(f"client {args.client_id} not found", 1)
    view = client.view()
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


def cmd_history(args: argparse.Namespace) -> int:
    store = _store(args)
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

    store = _store(args)
    entries = store.history(args.client_id)
    if not entries:
        raise CommandError(f"client {args.client_id} has no history", 1)
    view = replay_view(entries, args.client_id, args.as_of, args.known_at)
    if args.json:
        _print_json(view)
    else:
        _print_client(view)
        print(f"events applied {view['events_applied']}")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from workflow.tasks import iso

    if args.overdue and args.now is None:
        raise CommandError("--overdue needs --now TIME (the engine never reads the clock)")
    store = _store(args)
    tasks = store.tasks(
        open_only=args.open or args.overdue,
        owner=args.owner,
        due_before=iso(args.now) if args.overdue else None,
        client_id=args.client,
        limit=args.limit,
    )
    if args.json:
        _print_json([task.as_dict() for task in tasks])
        return 0
    for task in tasks:
        print(
            f"{task.due}  {task.status:<10} {task.priority:<7} {task.owner:<18} "
            f"{task.for_:<12} {task.code}" + (f"  ${task.amount_usd}" if task.amount_usd else "")
        )
    print(f"{len(tasks)} task(s)")
    return 0


def cmd_tick(args: argparse.Namespace) -> int:
    from kapflow.service.clock import tick
    from kapflow.service.ingest import IngestService

    report = tick(IngestService(_store(args)), args.now)
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
    from workflow.policy import DEFAULT_POLICY
    from workflow.tasks import iso

    now = args.now or _now_default()
    until = now + args.within
    found = deadlines(_store(args), DEFAULT_POLICY, until)
    if args.json:
        _print_json([d.as_dict() | {"overdue": d.due <= iso(now)} for d in found])
        return 0
    for d in found:
        flag = "OVERDUE " if d.due <= iso(now) else "upcoming"
        print(f"{d.due}  {flag} {d.client_id:<12} {d.kind:<5} {d.code:<34} {d.owner or '-'}")
    print(f"{len(found)} deadline(s) up to {iso(until)}")
    return 0


def cmd_parked(args: argparse.Namespace) -> int:
    parked = _store(args).parked_events(args.client)
    rows = [
        {
            "source": p.source,
            "id": p.event_id,
            "subject": p.client_id,
            "type": p.type,
            "occurred_at": p.occurred_at,
            "parked_at": p.recorded_at,
            "reasons": json.loads(p.reasons),
        }
        for p in parked
    ]
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
        return timedelta(seconds=float(text[:-1]) * units[text[-1]])
    except (KeyError, ValueError, IndexError) as error:
        raise argparse.ArgumentTypeError(f"not a duration like 90m, 24h or 7d: {text!r}") from error


def _now_default() -> datetime:
    # Reading the clock here is the operator's choice of "now", recorded as events:
    # the engine itself never reads it.
    return datetime.now(UTC)


def cmd_verify(args: argparse.Namespace) -> int:
    from kapflow.service.audit import verify

    report = verify(_store(args))
    if args.json:
        _print_json(report.as_dict())
    else:
        for d in report.divergences:
            print(f"DIVERGENCE {d.kind:<10} client={d.client_id} seq={d.seq}: {d.detail}")
        verdict = "OK" if report.ok else f"FAILED ({len(report.divergences)} divergences)"
        print(f"verify: {verdict} — {report.clients} clients, {report.entries} history entries")
    return 0 if report.ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    from kapflow.service.audit import export_csv, export_jsonl

    store = _store(args)
    entries = store.history(args.client) if args.client else store.iter_history()
    writer = export_csv if args.format == "csv" else export_jsonl
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8", newline="") as out:
                count = writer(entries, out)
        except OSError as error:
            raise CommandError(f"cannot write {args.out}: {error.strerror}") from error
        print(f"exported {count} history entries to {args.out}", file=sys.stderr)
    else:
        writer(entries, sys.stdout)
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
    from kapflow.demo.cohort import generate_cohort
    from kapflow.service.ingest import IngestService

    store = _store(args)
    outcomes: Counter[str] = Counter()
    rejected_by: Counter[str] = Counter()
    service = IngestService(store)
    for result in service.ingest_stream(generate_cohort(clients=args.clients, seed=args.seed)):
        outcomes[result.outcome] += 1
        if result.outcome == "rejected":
            rejected_by.update(reason.code for reason in result.reasons)
    summary = {
        "db": args.db,
        "events": dict(sorted(outcomes.items())),
        "clients_by_state": dict(sorted(store.count_by_state().items())),
        "open_tasks_by_owner": dict(
            sorted(Counter(t.owner for t in store.tasks(open_only=True, limit=10**7)).items())
        ),
        "rejections_by_reason": dict(sorted(rejected_by.items())),
    }
    if args.json:
        _print_json(summary)
        return 0
    print(f"kapflow demo: {args.clients} synthetic clients through the KAP pathway → {args.db}")
    print("events:          " + ", ".join(f"{k} {v}" for k, v in summary["events"].items()))
    print("clients by state:")
    for state, count in summary["clients_by_state"].items():
        print(f"  {state:<12} {count:>5}")
    print("open tasks by owner:")
    for owner, count in summary["open_tasks_by_owner"].items():
        print(f"  {owner:<18} {count:>5}")
    print("rejections by rule/reason:")
    for code, count in summary["rejections_by_reason"].items():
        print(f"  {code:<18} {count:>5}")
    print("next: kapflow tasks --open | kapflow client c-000001 | kapflow verify | kapflow serve")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from kapflow.entrypoints.http.server import run

    return run(args)


def cmd_keys(args: argparse.Namespace) -> int:
    from kapflow.service.access import KeyConfigError, create_key

    try:
        new = create_key(args.role, args.name, args.prefix)
    except KeyConfigError as error:
        raise CommandError(str(error)) from error
    if args.json:
        _print_json({"secret": new.secret, "entry": new.key.as_entry()})
        return 0
    print(f"secret (shown once; give it to {new.key.name}, kapflow keeps only its hash):")
    print(f"  {new.secret}")
    print("add to the `keys` list of a JSON keys file (or KAPFLOW_API_KEYS):")
    print(f"  {new.json_line()}")
    print("or to a TOML keys file:")
    print("  " + new.toml_block().replace("\n", "\n  "))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from kapflow.entrypoints.worker import run

    return run(args)


def cmd_broker(args: argparse.Namespace) -> int:
    from kapflow.entrypoints.broker import BrokerUnavailable, run_forever

    try:
        return run_forever(args.host, args.port)
    except BrokerUnavailable as error:
        raise CommandError(str(error)) from error


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kapflow", description="Event-driven care workflow for the KAP programme."
    )
    parser.add_argument("--version", action="version", version="kapflow 0.1.0")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--db",
        default=os.environ.get("KAPFLOW_DB", DEFAULT_DB_URL),
        help="database URL: sqlite:///PATH (default ./kapflow.db) or postgresql://…"
        " (env KAPFLOW_DB)",
    )
    common.add_argument("--json", action="store_true", help="print data as JSON")
    common.add_argument("-v", "--verbose", action="store_true", help="log each event outcome")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> Any:
        sub = commands.add_parser(name, parents=[common], help=help_, description=help_)
        sub.set_defaults(handler=handler)
        return sub

    sub = add("ingest", cmd_ingest, "apply CloudEvents JSON lines in order")
    sub.add_argument("file", help="a JSON-lines file, or - for standard input")
    sub.add_argument("--batch-size", type=int, default=5000, help="events per transaction")

    sub = add("client", cmd_client, "show a client's state, pathway and open tasks")
    sub.add_argument("client_id")

    sub = add("history", cmd_history, "show a client's recorded history")
    sub.add_argument("client_id")

    sub = add("replay", cmd_replay, "rebuild a client from its history as of a time")
    sub.add_argument("client_id")
    sub.add_argument("--as-of", type=_time, help="events that happened up to TIME")
    sub.add_argument("--known-at", type=_time, help="what kapflow had recorded by TIME")

    sub = add("tasks", cmd_tasks, "list follow-up tasks")
    sub.add_argument("--open", action="store_true", help="only open tasks")
    sub.add_argument("--overdue", action="store_true", help="only open tasks due before --now")
    sub.add_argument("--now", type=_time, help="the time to judge overdue against")
    sub.add_argument(
        "--owner",
        choices=["scheduler", "clinician", "billing", "prescriber_liaison", "client"],
    )
    sub.add_argument("--client", help="only this client's tasks")
    sub.add_argument("--limit", type=int, default=10000)

    add("verify", cmd_verify, "replay every history; check outcomes and hash chains")

    sub = add("tick", cmd_tick, "record the deadlines due by TIME; expire stale parked events")
    sub.add_argument("--now", type=_time, required=True, help="the time to advance the clock to")

    sub = add("deadlines", cmd_deadlines, "list overdue and upcoming deadlines and timers")
    sub.add_argument("--now", type=_time, default=None, help="reference time (default: now)")
    sub.add_argument(
        "--within",
        type=_duration,
        default=timedelta(days=7),
        help="how far ahead to look (e.g. 24h, 7d; default 7d)",
    )

    sub = add("parked", cmd_parked, "list events parked as premature, with why")
    sub.add_argument("--client", help="only this client's parked events")

    sub = add("export", cmd_export, "export histories for auditors")
    sub.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    sub.add_argument("--out", help="file to write (default: standard output)")
    sub.add_argument("--client", help="only this client's history")

    sub = add("diagram", cmd_diagram, "print the pathway diagram")
    sub.add_argument("--format", choices=["mermaid", "svg"], default="mermaid")
    sub.add_argument("--out", help="file to write")

    sub = add("schema", cmd_schema, "export one JSON Schema per event type")
    sub.add_argument("--out", required=True, help="directory to write the schemas into")

    sub = add("asyncapi", cmd_asyncapi, "print the AsyncAPI 3 document of the Kafka topics")
    sub.add_argument("--out", help="file to write (default: standard output)")

    sub = add("demo", cmd_demo, "run a synthetic cohort through the whole pathway")
    sub.add_argument("--clients", type=int, default=300)
    sub.add_argument("--seed", type=int, default=7)

    sub = add("serve", cmd_serve, "HTTP service and operations dashboard")
    sub.add_argument("--host", default="127.0.0.1")
    sub.add_argument("--port", type=int, default=8000)
    sub.add_argument("--insecure-dev", action="store_true", help="no API keys (development only)")
    sub.add_argument("--keys-file", help="API keys file (or KAPFLOW_API_KEYS)")
    sub.add_argument("--kafka", help="also publish the outbox to Kafka at HOST:PORT")
    sub.add_argument(
        "--clock-interval",
        type=float,
        default=30.0,
        help="seconds between clock ticks recording deadlines (0: off; use `kapflow tick`)",
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

    sub = add("keys", cmd_keys, "manage API keys for `kapflow serve`")
    keys = sub.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = keys.add_parser(
        "create", help="create a key: prints the secret once and the line for the keys file"
    )
    create.add_argument(
        "--role", required=True, choices=["publisher", "dashboard", "auditor", "admin"]
    )
    create.add_argument("--name", required=True, help="who holds it (recorded in the access log)")
    create.add_argument(
        "--prefix",
        action="append",
        default=[],
        help="publisher only: an event-type prefix it may post, e.g. scheduling (repeatable)",
    )
    create.add_argument("--json", action="store_true", help="print the secret and entry as JSON")

    sub = add("worker", cmd_worker, "Kafka stream worker")
    sub.add_argument("--kafka", default=os.environ.get("KAPFLOW_KAFKA"), help="HOST:PORT")
    sub.add_argument("--config", help="TOML settings file (environment KAPFLOW_* wins)")

    sub = add("broker", cmd_broker, "local Kafka-compatible broker for development")
    sub.add_argument("--host", default="127.0.0.1")
    sub.add_argument("--port", type=int, default=9092)
    return parser


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
