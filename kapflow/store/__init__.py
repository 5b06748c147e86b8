"""Where state is stored: the store interface (`base.py`) and its adapters, opened by URL
(`database.py` says which adapter a URL names)."""

from __future__ import annotations

from kapflow.store.base import EventStore, StoreError
from kapflow.store.codec import StorageCipher, StoreAccess, cipher_from_environment
from kapflow.store.database import DEFAULT_DB_URL, database_kind, sqlite_path
from workflow.policy import DEFAULT_POLICY, CarePolicy


def open_store(
    url: str = DEFAULT_DB_URL,
    policy: CarePolicy = DEFAULT_POLICY,
    *,
    cipher: StorageCipher | None = None,
    access: StoreAccess = "write",
) -> EventStore:
    """The store at `url`, migrated in place if an earlier release wrote it.

    `policy` is the one the clock judges timers by: the store keeps each client's next
    timer due time with every snapshot it writes. `cipher` encrypts the stored clinical
    values (store/codec.py); None takes the key `KAPFLOW_ENCRYPTION_KEY` or
    `KAPFLOW_ENCRYPTION_KEY_FILE` names, if either is set. An encrypted store opened
    without its key is refused. `access="read"` (the read commands) never changes the
    store's encryption mode or key check; only a writer with a key marks a new, empty
    store encrypted, and `"reseal"` (`kapflow rotate-key`) an existing one.
    """
    if cipher is None:
        try:
            cipher = cipher_from_environment()
        except ValueError as error:
            raise StoreError(f"encryption at rest: {error}") from None
    if database_kind(url) == "sqlite":
        from kapflow.store.sqlite import SQLiteStore

        return SQLiteStore(url, policy, cipher=cipher, access=access)
    from kapflow.store.postgres import PostgresStore

    return PostgresStore(url, policy=policy, cipher=cipher, access=access)


def require_store(url: str) -> None:
    """Refuse a database kapflow never wrote (`no kapflow store at …`), for a read that
    does not open the event store itself (`kapflow access-log`): a read creates nothing."""
    if database_kind(url) == "sqlite":
        from kapflow.store.sqlite import holds_a_store

        path = sqlite_path(url)
        if path != ":memory:" and not holds_a_store(path):
            raise StoreError(f"no kapflow store at {url}")
        return
    from kapflow.store.postgres import require_store as require_postgres_store

    require_postgres_store(url)


__all__ = ["DEFAULT_DB_URL", "EventStore", "StoreError", "open_store", "require_store"]
