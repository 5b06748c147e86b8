"""`kapflow verify` shared between processes.

This process walks the client ids in the store's order and hands them out in batches:
to a worker process when one has room, else it verifies the batch itself, so the work
goes to whichever process keeps up. Each process opens the store by its URL and reads
its clients itself, a batch's histories and snapshots in one go (service/audit.py
`verify_clients`): nothing bulky crosses between processes, and the store is read once
in all. Every divergence keeps its client's place, so the merged report is the one
`verify_by_scan` gives in one process.

The store-wide checks of the rows kept beside the histories (receipts, parked events,
rejections, the outbox: service/derived_rows.py) are one pass per table, run here once the
clients are done, as `verify_by_scan` runs them.

Reading client by client cannot meet history whose client has no snapshot row (no client
id leads to it). So the rows read are counted: if they fall short of the history's rows,
the store is verified again by a full scan, which reports that history.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice

from kapflow.service.audit import Findings, VerifyReport, report_of, verify_by_scan, verify_clients
from kapflow.store import open_store
from kapflow.store.base import EventStore
from kapflow.store.codec import StorageCipher
from kapflow.store.database import database_kind, sqlite_path
from workflow.policy import CarePolicy

# Clients in a batch (about 500 history entries), and batches handed to each worker ahead
# of time: enough that a worker never waits for its next, few enough that the work is
# still shared evenly at the end.
CLIENTS_PER_BATCH = 25
QUEUED_PER_WORKER = 4
# Forked on Linux: a worker starts in milliseconds, with everything imported, and with
# the caller's storage cipher in memory. Elsewhere a worker is spawned, and takes the key
# from the environment (KAPFLOW_ENCRYPTION_KEY or _FILE) as every kapflow process does.
START_METHOD = "fork" if sys.platform == "linux" else None


def default_jobs() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def shareable(url: str) -> bool:
    """Whether another process opening `url` sees the same store (not `sqlite:///`, an
    in-memory database of this process alone)."""
    return database_kind(url) != "sqlite" or sqlite_path(url) != ":memory:"


# A worker's store: how to open it (set by the pool's initializer, whose arguments a
# forked worker inherits rather than receives pickled), and once opened.
_opening: tuple[str, CarePolicy, StorageCipher | None] | None = None
_opened: EventStore | None = None


def _remember_store(url: str, policy: CarePolicy, cipher: StorageCipher | None) -> None:
    global _opening
    _opening = (url, policy, cipher)


def _verify_in_worker(clients: list[tuple[int, str]]) -> Findings:
    # Opened at the first batch, not in the initializer, so that a store that will not
    # open reaches the caller as its own error rather than as a broken pool. Kept for the
    # worker's next batches; its connections end with the worker.
    global _opened
    assert _opening is not None, "set by the pool's initializer"
    url, policy, cipher = _opening
    if _opened is None:
        _opened = open_store(url, policy, cipher=cipher, access="read")
    findings = Findings()
    verify_clients(_opened, clients, policy, findings)
    return findings


def _batches(store: EventStore) -> Iterator[list[tuple[int, str]]]:
    """The client ids in the store's order, each with its position, a batch at a time."""
    ids = enumerate(store.client_ids())
    while batch := list(islice(ids, CLIENTS_PER_BATCH)):
        yield batch


def verify_in_processes(store: EventStore, policy: CarePolicy, jobs: int) -> VerifyReport:
    """`verify` shared between this process and `jobs - 1` workers.

    `store`'s connections are closed before the workers fork (it reopens them on its next
    read): SQLite warns against a connection carried across a fork into a child that opens
    the same database, and a connection pool's thread holding a lock at that moment would
    leave it held in the child. Other connections this process has to the same SQLite
    database should be closed too (the CLI closes the access log's).
    """
    if jobs <= 1 or not shareable(store.url):
        return verify_by_scan(store, policy)
    history_rows = store.stats()["history"]
    context = multiprocessing.get_context(START_METHOD)
    forked = context.get_start_method() == "fork"
    cipher = getattr(getattr(store, "codec", None), "cipher", None) if forked else None
    workers = jobs - 1
    here = Findings()
    findings: list[Findings] = [here]
    queued: deque[tuple[Future[Findings], list[tuple[int, str]]]] = deque()
    lost_worker = False

    def settle(future: Future[Findings], batch: list[tuple[int, str]]) -> None:
        nonlocal lost_worker
        try:
            findings.append(future.result())
        except BrokenProcessPool:  # a worker was killed (out of memory, a signal)
            lost_worker = True
            verify_clients(store, batch, policy, here)

    store.close()
    with ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_remember_store,
        initargs=(store.url, policy, cipher),
    ) as pool:
        pool.submit(os.getpid)  # a pool forks all its workers now, at its first task
        try:
            for batch in _batches(store):
                while queued and queued[0][0].done():
                    settle(*queued.popleft())
                if lost_worker or len(queued) >= workers * QUEUED_PER_WORKER:
                    verify_clients(store, batch, policy, here)
                    continue
                try:
                    queued.append((pool.submit(_verify_in_worker, batch), batch))
                except BrokenProcessPool:
                    lost_worker = True
                    verify_clients(store, batch, policy, here)
            for future, batch in queued:
                # What no worker has started yet is verified here rather than waited for.
                if future.cancel():
                    verify_clients(store, batch, policy, here)
                else:
                    settle(future, batch)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    if sum(part.history_rows for part in findings) != history_rows:
        # History that no client id leads to (its snapshot row is gone), or rows written
        # while verifying: a full scan reports exactly what is there.
        return verify_by_scan(store, policy)
    here.check_store(store)  # one pass per table: in this process, as the scan does it
    return report_of(findings)
