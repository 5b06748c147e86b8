"""API keys without restarts: reload the keys file on SIGHUP and when it changes; note
when each key was last used.

The ring in force is `app.state.keys`; a reload replaces it in one assignment, so a request
sees either the old ring or the new one. A file that no longer parses is not applied: the
keys in force stay, and the error is logged (never a secret: the file holds only hashes).
Expiry needs no reload: `ApiKey.refusal` compares with the server clock on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from kapflow.entrypoints.http.context import HttpSettings, server_now
from kapflow.service.access import KeyConfigError, load_keys
from kapflow.store.base import StoreError
from kapflow.store.key_usage import KeyUsageStore
from workflow.tasks import iso

log = logging.getLogger("kapflow.http.keys")

Signature = tuple[int, int, int] | None


class KeyFileReloader:
    """Re-reads the keys file on SIGHUP, or when its time, size or inode changes (an edit,
    an atomic rename, a Kubernetes Secret update); checked every `interval` seconds."""

    def __init__(self, app: FastAPI, path: str, interval: float) -> None:
        self.app = app
        self.path = path
        self.interval = interval
        self.reloads = 0
        self._hangup = asyncio.Event()
        self._seen = self._signature()

    def _signature(self) -> Signature:
        try:
            found = os.stat(self.path)
        except OSError:
            return None
        return (found.st_mtime_ns, found.st_size, found.st_ino)

    def hangup(self) -> None:
        self._hangup.set()

    def reload(self, why: str) -> bool:
        try:
            ring = load_keys(self.path)
        except KeyConfigError as error:
            in_force = len(self.app.state.keys or ())
            log.error(
                "API keys NOT reloaded (%s): %s; the %d keys in force stay", why, error, in_force
            )
            return False
        self.app.state.keys = ring
        self.reloads += 1
        now = server_now()
        refused = sum(key.refusal(now) is not None for key in ring.keys)
        log.warning(
            "API keys reloaded (%s): %d keys, %d of them revoked or expired",
            why,
            len(ring),
            refused,
        )
        return True

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hangup.wait(), self.interval)
            hangup = self._hangup.is_set()
            self._hangup.clear()
            signature = self._signature()
            if hangup or signature != self._seen:
                self._seen = signature
                await asyncio.to_thread(self.reload, "SIGHUP" if hangup else "file changed")


class KeyUsageTracker:
    """Writes a key's last-used time at most every `every` seconds, on its own thread."""

    def __init__(self, store: KeyUsageStore, every: float = 60.0) -> None:
        self.store = store
        self.every = every
        self._written: dict[str, float] = {}
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="kapflow-key-usage")

    def seen(self, name: str) -> None:
        now = time.monotonic()
        if now - self._written.get(name, -self.every) < self.every:
            return
        self._written[name] = now
        self._executor.submit(self._write, name, iso(server_now()))

    def _write(self, name: str, at: str) -> None:
        try:
            self.store.touch(name, at)
        except StoreError as error:
            self._written.pop(name, None)  # try again with the next request
            log.warning("last-used time of key %s not recorded (%s)", name, type(error).__name__)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


@asynccontextmanager
async def key_maintenance(app: FastAPI, settings: HttpSettings) -> AsyncIterator[None]:
    """For the app's lifetime: reload the keys file (SIGHUP, file change), track usage."""
    if settings.insecure_dev:
        yield
        return
    loop = asyncio.get_running_loop()
    reloader = (
        KeyFileReloader(app, settings.keys_file, settings.keys_poll_interval)
        if settings.keys_file
        else None
    )

    def hangup() -> None:
        if reloader is None:
            log.warning("SIGHUP: keys come from KAPFLOW_API_KEYS, not a file; nothing to reload")
        else:
            reloader.hangup()

    # Only the main thread may take signals (a server embedded in a thread has none); an
    # unhandled SIGHUP would end the process, so it is taken whenever it can be.
    hangup_handled = False
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, hangup)
        hangup_handled = True
    watcher = asyncio.create_task(reloader.run(), name="kapflow-keys") if reloader else None
    try:
        usage = KeyUsageTracker(KeyUsageStore(settings.db))
    except StoreError as error:
        usage = None
        log.warning("last-used times of keys are not recorded (%s)", type(error).__name__)
    app.state.key_usage = usage
    try:
        yield
    finally:
        app.state.key_usage = None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if hangup_handled:
            loop.remove_signal_handler(signal.SIGHUP)
        if usage is not None:
            usage.close()
