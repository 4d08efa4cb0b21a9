"""The gateway's durable batch state: one SQLite database (WAL) and a folder of files, under `gateway.data_dir`.

Tables: `files` (uploads, and the batches' output and error files once
published) and `batches` (OpenAI's fields, a time per status, request
counts, owner, the ids its result files are written under). Bytes live in
`files/<id>`. An upload is written to `<id>.part` and renamed just before
its row commits; a batch's results are appended to `files/<draft id>` while
it runs (by the runner, through `result_file.py`), and `finish` publishes
them in the same transaction that ends the batch. Opening the store sweeps
what a crash left behind: any file that neither a row nor an unfinished
batch names.

An owner is an opaque string (the API passes a hash of the caller's key,
"" without keys); every caller's lookup filters on it. One process holds a
data_dir at a time (a lock on `lock`); a second is refused, naming it.
Statements are short and synchronous; WAL with synchronous=NORMAL makes a
commit survive a killed process (not a power cut). Left out: HTTP shapes
(`api/`), running batches (`worker.py`), the JSONL format (`format.py`).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moa_local.errors import MoaError
from moa_local.jobs.records import ACTIVE, TIMESTAMPS, StoredBatch, StoredFile, batch_of, file_of

DATABASE = "batches.sqlite3"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL, purpose TEXT NOT NULL,
    filename TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT NOT NULL, status TEXT NOT NULL,
    input_file_id TEXT NOT NULL, endpoint TEXT NOT NULL, completion_window TEXT NOT NULL, metadata TEXT,
    created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, output_draft TEXT NOT NULL, error_draft TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
    output_file_id TEXT, error_file_id TEXT, errors TEXT,
    {", ".join(f"{column} INTEGER" for column in TIMESTAMPS.values())});
"""
_ACTIVE_SQL = f"status IN ({', '.join(repr(status) for status in ACTIVE)})"


class StoreError(MoaError):
    """The data folder cannot be used: another gateway holds it, it is unwritable, or its database is not ours."""


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.folder = root / "files"
        self._lock = threading.Lock()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"gateway.data_dir {root}: cannot use it ({exc.strerror})") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreError(f"gateway.data_dir {root} is in use by another gateway; give each its own") from None
        try:
            self._db = sqlite3.connect(root / DATABASE, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._sweep()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(f"gateway.data_dir {root}: {DATABASE}: {exc}") from None

    def close(self) -> None:
        if getattr(self, "_db", None) is not None:
            self._db.close()
        os.close(self._lock_fd)  # releases the lock

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _sweep(self) -> None:
        named = {row["id"] for row in self._read("SELECT id FROM files")}
        for row in self._read(f"SELECT output_draft, error_draft FROM batches WHERE {_ACTIVE_SQL}"):
            named |= {row["output_draft"], row["error_draft"]}
        for path in self.folder.iterdir():
            if path.name not in named:
                path.unlink(missing_ok=True)

    # --- files --------------------------------------------------------------------------------------

    def path(self, file_id: str) -> Path:
        return self.folder / file_id

    def staging(self, file_id: str) -> Path:
        """Where an upload's bytes go before `add_file` makes them the file."""
        return self.folder / f"{file_id}.part"

    def add_file(self, file_id: str, owner: str, purpose: str, filename: str, created_at: int) -> StoredFile:
        """Rename the staged bytes into place and record the file."""
        staged = self.staging(file_id)
        stored = StoredFile(file_id, owner, purpose, filename, staged.stat().st_size, created_at)
        staged.rename(self.path(file_id))
        with self._write() as db:
            _insert_file(db, stored)
        return stored

    def file(self, file_id: str, owner: str) -> StoredFile | None:
        rows = self._read("SELECT * FROM files WHERE id = ? AND owner = ?", (file_id, owner))
        return file_of(rows[0]) if rows else None

    def files(
        self, owner: str, *, purpose: str | None = None, after: str | None = None, limit: int = 20,
        newest_first: bool = True,
    ) -> tuple[list[StoredFile], bool]:  # fmt: skip
        """One page of the owner's files and whether more follow; `after` is the last id of the previous page."""
        where, args = ["owner = ?"], [owner]
        if purpose is not None:
            where.append("purpose = ?")
            args.append(purpose)
        rows = self._page("files", where, args, after, limit, newest_first)
        return [file_of(row) for row in rows[:limit]], len(rows) > limit

    def delete_file(self, file_id: str, owner: str) -> bool:
        with self._write() as db:
            deleted = db.execute("DELETE FROM files WHERE id = ? AND owner = ?", (file_id, owner)).rowcount
        if deleted:
            self.path(file_id).unlink(missing_ok=True)
        return bool(deleted)

    def batch_reading(self, file_id: str) -> str | None:
        """The id of an unfinished batch whose input is this file, if any."""
        rows = self._read(f"SELECT id FROM batches WHERE input_file_id = ? AND {_ACTIVE_SQL}", (file_id,))
        return str(rows[0]["id"]) if rows else None

    # --- batches ------------------------------------------------------------------------------------

    def add_batch(self, batch: StoredBatch) -> StoredBatch:
        metadata = json.dumps(batch.metadata) if batch.metadata is not None else None
        with self._write() as db:
            db.execute(
                "INSERT INTO batches (id, owner, status, input_file_id, endpoint, completion_window, metadata,"
                " created_at, expires_at, output_draft, error_draft) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (batch.id, batch.owner, batch.status, batch.input_file_id, batch.endpoint, batch.completion_window,
                 metadata, batch.created_at, batch.expires_at, batch.output_draft, batch.error_draft),
            )  # fmt: skip
        return batch

    def batch(self, batch_id: str, owner: str | None = None) -> StoredBatch | None:
        """The batch; with `owner`, only if that owner created it."""
        where, args = ("id = ?", (batch_id,)) if owner is None else ("id = ? AND owner = ?", (batch_id, owner))
        rows = self._read(f"SELECT * FROM batches WHERE {where}", args)
        return batch_of(rows[0]) if rows else None

    def batches(self, owner: str, *, after: str | None = None, limit: int = 20) -> tuple[list[StoredBatch], bool]:
        rows = self._page("batches", ["owner = ?"], [owner], after, limit, True)
        return [batch_of(row) for row in rows[:limit]], len(rows) > limit

    def next_active(self) -> StoredBatch | None:
        """The oldest batch the worker still owes a step."""
        rows = self._read(f"SELECT * FROM batches WHERE {_ACTIVE_SQL} ORDER BY seq LIMIT 1")
        return batch_of(rows[0]) if rows else None

    def set_status(
        self, batch_id: str, status: str, at: int, *, only_from: tuple[str, ...] | None = None, **fields: Any
    ) -> StoredBatch:
        """Move the batch to `status` (stamping its time) and set other columns, if its status is in
        `only_from` (any without it); the batch as it now stands, moved or not."""
        if "errors" in fields:
            fields["errors"] = json.dumps(fields["errors"])
        with self._write() as db:
            current = db.execute("SELECT status FROM batches WHERE id = ?", (batch_id,)).fetchone()
            if only_from is None or current["status"] in only_from:
                _update(db, batch_id, status, at, fields)
        return self._must(batch_id)

    def set_counts(self, batch_id: str, completed: int, failed: int) -> None:
        with self._write() as db:
            db.execute("UPDATE batches SET completed = ?, failed = ? WHERE id = ?", (completed, failed, batch_id))

    def request_cancel(self, batch_id: str, owner: str, at: int) -> StoredBatch | None:
        """Mark an unfinished batch `cancelling`; the batch as it now stands (None: not the owner's)."""
        batch = self.batch(batch_id, owner)
        if batch is None:
            return None
        return self.set_status(batch_id, "cancelling", at, only_from=("validating", "in_progress"))

    def finish(self, batch: StoredBatch, status: str, at: int, counts: tuple[int, int]) -> StoredBatch:
        """End a batch (`counts`: completed, failed) and publish its non-empty result files, in one transaction."""
        fields: dict[str, Any] = {"completed": counts[0], "failed": counts[1]}
        files = []
        for kind, draft in (("output", batch.output_draft), ("error", batch.error_draft)):
            path = self.path(draft)
            size = path.stat().st_size if path.exists() else 0
            if size:
                files.append(StoredFile(draft, batch.owner, "batch_output", f"{batch.id}_{kind}.jsonl", size, at))
                fields[f"{kind}_file_id"] = draft
            else:
                path.unlink(missing_ok=True)
        with self._write() as db:
            for stored in files:
                _insert_file(db, stored)
            _update(db, batch.id, status, at, fields)
        return self._must(batch.id)

    def _must(self, batch_id: str) -> StoredBatch:
        found = self.batch(batch_id)
        assert found is not None, batch_id
        return found

    def status_counts(self) -> dict[str, int]:
        rows = self._read("SELECT status, COUNT(*) AS n FROM batches GROUP BY status")
        return {str(row["status"]): int(row["n"]) for row in rows}

    def _page(
        self, table: str, where: list[str], args: list[Any], after: str | None, limit: int, newest_first: bool
    ) -> list[sqlite3.Row]:
        """Up to limit + 1 rows (the extra one tells whether more follow), after the row with id `after`."""
        if after is not None:
            where = [*where, f"seq {'<' if newest_first else '>'} (SELECT seq FROM {table} WHERE id = ?)"]
            args = [*args, after]
        order = "DESC" if newest_first else "ASC"
        sql = f"SELECT * FROM {table} WHERE {' AND '.join(where)} ORDER BY seq {order} LIMIT ?"
        return self._read(sql, (*args, limit + 1))


def _update(db: sqlite3.Connection, batch_id: str, status: str, at: int, fields: dict[str, Any]) -> None:
    if status in TIMESTAMPS:
        fields = {**fields, TIMESTAMPS[status]: at}
    columns = ", ".join(f"{name} = ?" for name in ("status", *fields))  # names are ours, never a caller's
    db.execute(f"UPDATE batches SET {columns} WHERE id = ?", (status, *fields.values(), batch_id))


def _insert_file(db: sqlite3.Connection, stored: StoredFile) -> None:
    db.execute(
        "INSERT INTO files (id, owner, purpose, filename, bytes, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (stored.id, stored.owner, stored.purpose, stored.filename, stored.bytes, stored.created_at),
    )
