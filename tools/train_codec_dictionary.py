"""How the frozen zstd dictionary of storage format 0x03 was made (kept for the record).

    .venv/bin/python tools/train_codec_dictionary.py OUT.zdict

It records a synthetic demo cohort (`kapflow.demo.cohort`, seed 2026, 400 clients: no
real person's data) into a scratch store, reads back the logical text of every stored
value (events, outcomes, snapshots, tasks, parked events, rejections) and trains a 32 KiB
zstd dictionary on them. A second run does not give the same bytes (the scratch store's
`recorded_at` times and zstd's dictionary id differ), which is why the output, committed
as kapflow/store/codec_dictionary_3.zdict, is NEVER regenerated in place: every value
stored in format 0x03 needs exactly those bytes. A better dictionary is a new file under a
new format byte. tests/test_storage_codec.py pins its SHA-256.
"""

from __future__ import annotations

import random
import sqlite3
import sys
import tempfile
from pathlib import Path

import zstandard

from kapflow.demo.cohort import generate_cohort, write_jsonl
from kapflow.service.ingest import IngestService
from kapflow.store import open_store
from kapflow.store.codec import StorageCodec

DICTIONARY_BYTES = 32 * 1024
COLUMNS = (
    "SELECT event FROM history",
    "SELECT outcome FROM history",
    "SELECT snapshot FROM clients",
    "SELECT task FROM tasks",
    "SELECT event FROM parked",
    "SELECT reasons FROM parked",
    "SELECT reasons FROM rejections",
    "SELECT original FROM rejections",
)


def samples(db: Path) -> list[bytes | bytearray | memoryview]:
    codec = StorageCodec()
    out: list[bytes | bytearray | memoryview] = []
    with sqlite3.connect(db) as conn:
        for query in COLUMNS:
            out.extend(codec.decode(row[0]).encode() for row in conn.execute(query))
    random.Random(2026).shuffle(out)
    return out


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="kapflow-dict-"))
    cohort = work / "cohort.jsonl"
    write_jsonl(generate_cohort(clients=400, seed=2026), cohort)
    store = open_store(f"sqlite:///{work / 'train.db'}")
    service = IngestService(store)
    with open(cohort, "rb") as lines:
        for _ in service.ingest_stream(lines):
            pass
    store.close()
    trained = zstandard.train_dictionary(DICTIONARY_BYTES, samples(work / "train.db"), level=3)
    Path(sys.argv[1]).write_bytes(trained.as_bytes())
    print(f"{len(trained.as_bytes())} bytes, dict id {trained.dict_id()}")


if __name__ == "__main__":
    main()
