"""The files kapflow creates hold clinical records: only their owner may read them (0600).

SQLite creates a database file with 0644 less the umask (readable by every local user
under the usual umask 022), and its `-wal`, `-shm` and journal files with the database
file's own mode. So a database file created empty with 0600 before SQLite opens it keeps
all of them private, whatever the umask, and without touching the umask, which is the
whole process's (other threads create files meanwhile). A file that already exists is left
as its owner set it.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE = 0o600


def create_private(path: str | Path) -> None:
    """Create `path` empty with mode 0600, unless it exists (SQLite reads an empty file as
    a new database)."""
    if str(path) == ":memory:":
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    except OSError:  # it exists, or cannot be made: SQLite's own open then says why
        return
    os.close(fd)
