"""`kapflow serve`: run the HTTP service under uvicorn (one process: one single writer).

Why one process and no `--workers`: the single writer is what keeps each client's events
in order and lets requests share transactions; several processes would each have one.
Scale reads with more dashboards, not more writers; for more throughput, the distributed
shape (Kafka workers, PostgreSQL) is the answer.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import ssl
import sys
import threading
from dataclasses import dataclass
from typing import Any

import uvicorn

from kapflow.bootstrap import bootstrap
from kapflow.entrypoints.http.app import create_app
from kapflow.entrypoints.http.context import HttpSettings, MiB
from kapflow.service.access import KeyConfigError, load_keys
from kapflow.service.outbox import OUTBOX_RETENTION

INSECURE_BANNER = """
!!! ------------------------------------------------------------------------------- !!!
!!!  kapflow serve --insecure-dev: NO API KEYS. Every caller is admin: anyone who     !!!
!!!  can reach this port can publish events and read every client's history.        !!!
!!!  For development on this machine only. Every response carries                   !!!
!!!  X-Kapflow-Insecure-Dev: true and the dashboard shows a warning.                 !!!
!!! ------------------------------------------------------------------------------- !!!
"""


class CannotServe(Exception):
    """`kapflow serve` cannot start as asked: the CLI prints it as one line (exit 2)."""


class ServiceServer(uvicorn.Server):
    """uvicorn, plus: open streams end at shutdown instead of holding it up, and a hook
    that learns the bound port (port 0 = any free port)."""

    def __init__(self, config: uvicorn.Config, on_started: Any = None) -> None:
        super().__init__(config)
        self.on_started = on_started
        self.port: int | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.servers:
            self.port = int(self.servers[0].sockets[0].getsockname()[1])
            if self.on_started is not None:
                self.on_started(self)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        ctx = getattr(getattr(app, "state", None), "services", None)
        if ctx is not None:
            await ctx.feed.end_streams()
        await super().shutdown(sockets)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """`serve --tls-cert FILE --tls-key FILE`: PEM certificate chain and its private key."""

    cert: str
    key: str


def uvicorn_config(
    settings: HttpSettings, host: str, port: int, tls: TlsFiles | None = None
) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,  # the CLI's logging setup applies
        access_log=False,  # uvicorn's would log query strings (a stream's access_token)
        lifespan="on",
        timeout_graceful_shutdown=5,
        backlog=2048,
        # Python's server defaults stand: TLS 1.2 at least, forward-secret AEAD ciphers.
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
    )


def tls_from_args(args: argparse.Namespace) -> TlsFiles | None:
    """The TLS files asked for, checked now: a wrong file stops serve with one line."""
    cert, key = getattr(args, "tls_cert", None), getattr(args, "tls_key", None)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise CannotServe("--tls-cert and --tls-key go together (PEM certificate and its key)")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except OSError as error:  # ssl.SSLError too: a missing file, not PEM, a key that does not match
        raise CannotServe(
            f"cannot use --tls-cert {cert} --tls-key {key}: {error.strerror or error}"
        ) from None
    return TlsFiles(cert, key)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def settings_from_args(args: argparse.Namespace) -> HttpSettings:
    if args.insecure_dev:
        if not _is_loopback(args.host):
            raise CannotServe("--insecure-dev serves only on a loopback address (127.0.0.1)")
        keys = None
    else:
        try:
            keys = load_keys(args.keys_file, os.environ.get("KAPFLOW_API_KEYS"))
        except KeyConfigError as error:
            raise CannotServe(str(error)) from error
        if not len(keys):
            raise CannotServe(
                "no API keys configured: give --keys-file FILE or set KAPFLOW_API_KEYS "
                "(create keys with `kapflow keys create`), or --insecure-dev for development"
            )
    return HttpSettings(
        db=args.db,
        keys=keys,
        max_body_bytes=getattr(args, "max_body_bytes", MiB),
        max_events=getattr(args, "max_events", 1000),
        poll_interval=getattr(args, "poll_interval", 1.0),
        keepalive=getattr(args, "keepalive", 15.0),
        clock_interval=getattr(args, "clock_interval", 30.0),
        kafka=getattr(args, "kafka", None),
        keys_file=None if args.insecure_dev else args.keys_file,
        keys_poll_interval=getattr(args, "keys_poll_interval", 1.0),
        outbox_retention=getattr(args, "outbox_retention", None) or OUTBOX_RETENTION,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    tls = tls_from_args(args)
    if settings.kafka:
        from kapflow.settings import SettingsError, load_kafka_settings

        try:
            load_kafka_settings(kafka=settings.kafka, db=settings.db)
        except SettingsError as error:
            raise CannotServe(str(error)) from error
    bootstrap(settings.db).close()  # fail here, in one line, if the database is unusable
    if settings.insecure_dev:
        sys.stderr.write(INSECURE_BANNER)

    def started(server: ServiceServer) -> None:
        base = f"{'https' if tls else 'http'}://{args.host}:{server.port}"
        mode = (
            "INSECURE DEV MODE (no API keys)"
            if settings.insecure_dev
            else (f"{len(settings.keys or ())} API key(s)")
        )
        sys.stderr.write(
            f"kapflow serving {settings.db} on {base} — {mode}\n"
            f"  dashboard {base}/dashboard   API docs {base}/docs   metrics {base}/metrics\n"
        )
        sys.stderr.flush()

    ServiceServer(uvicorn_config(settings, args.host, args.port, tls), started).run()
    return 0


class ServiceThread:
    """The real server on a loopback port in a background thread (tests, embedding)."""

    def __init__(self, settings: HttpSettings, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings = settings
        self.host = host
        self.server = ServiceServer(uvicorn_config(settings, host, port))
        self.thread = threading.Thread(target=self.server.run, name="kapflow-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.port}"

    def start(self, timeout: float = 30.0) -> ServiceThread:
        self.thread.start()
        started = threading.Event()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the HTTP service failed to start")
            started.wait(0.02)
            timeout -= 0.02
            if timeout <= 0:
                raise TimeoutError("the HTTP service did not start in time")
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServiceThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
