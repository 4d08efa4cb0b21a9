"""The batch jobs' records as the store keeps them: a file, a batch, and a batch's statuses.

Frozen dataclasses built from the store's rows. A batch has, from its
creation, the ids its output and error files will get (`output_draft`,
`error_draft`): the runner appends to those files while the batch runs, and
`output_file_id`/`error_file_id` are set once they are published. The
OpenAI JSON shapes are the API's (`api/files.py`, `api/batches.py`).
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass, field
from typing import Any

STATUSES = ("validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled")
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")  # the worker still owes these a step
TIMESTAMPS = {
    "in_progress": "in_progress_at", "finalizing": "finalizing_at", "completed": "completed_at",
    "failed": "failed_at", "expired": "expired_at", "cancelling": "cancelling_at", "cancelled": "cancelled_at",
}  # fmt: skip


def new_id(prefix: str) -> str:
    """A fresh object id: "file-..." or "batch_..." as OpenAI spells them."""
    return f"{prefix}{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class StoredFile:
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    created_at: int


@dataclass(frozen=True)
class StoredBatch:
    id: str
    owner: str
    status: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    expires_at: int
    output_draft: str
    error_draft: str
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    times: dict[str, int | None] = field(default_factory=dict)  # "<status>_at" -> unix seconds


def file_of(row: sqlite3.Row) -> StoredFile:
    return StoredFile(row["id"], row["owner"], row["purpose"], row["filename"], row["bytes"], row["created_at"])


def batch_of(row: sqlite3.Row) -> StoredBatch:
    return StoredBatch(
        id=row["id"], owner=row["owner"], status=row["status"], input_file_id=row["input_file_id"],
        endpoint=row["endpoint"], completion_window=row["completion_window"],
        metadata=json.loads(row["metadata"]) if row["metadata"] else None, created_at=row["created_at"],
        expires_at=row["expires_at"], output_draft=row["output_draft"], error_draft=row["error_draft"],
        total=row["total"], completed=row["completed"], failed=row["failed"],
        output_file_id=row["output_file_id"], error_file_id=row["error_file_id"],
        errors=json.loads(row["errors"]) if row["errors"] else None,
        times={column: row[column] for column in TIMESTAMPS.values()},
    )  # fmt: skip
