"""The batch store on its own: what a crash leaves is swept, one process per folder, guarded status moves."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from moa_local.jobs.records import StoredBatch, new_id
from moa_local.jobs.store import Store, StoreError


def batch(owner: str = "", status: str = "validating", input_file_id: str = "file-in") -> StoredBatch:
    now = int(time.time())
    return StoredBatch(
        id=new_id("batch_"), owner=owner, status=status, input_file_id=input_file_id, endpoint="/v1/chat/completions",
        completion_window="24h", metadata={"k": "v"}, created_at=now, expires_at=now + 86400,
        output_draft=new_id("file-"), error_draft=new_id("file-"),
    )  # fmt: skip


def upload(store: Store, data: bytes, owner: str = "") -> str:
    file_id = new_id("file-")
    store.staging(file_id).write_bytes(data)
    store.add_file(file_id, owner, "batch", "in.jsonl", int(time.time()))
    return file_id


def test_opening_sweeps_what_a_crash_left_and_keeps_the_rest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    kept = upload(store, b"{}\n")
    running, ended = store.add_batch(batch()), store.add_batch(batch())
    store.path(running.output_draft).write_bytes(b'{"custom_id": "a"}\n')  # a running batch's partial results
    store.finish(ended, "cancelled", int(time.time()), (0, 0))
    store.staging("file-half").write_bytes(b"half an upl")  # killed mid-upload
    store.path("file-orphan").write_bytes(b"x")  # renamed, but its row never committed
    store.path(ended.error_draft).write_bytes(b"x")  # a finished batch's draft that was never published
    store.close()
    store = Store(tmp_path)
    assert sorted(path.name for path in store.folder.iterdir()) == sorted([kept, running.output_draft])
    assert store.path(running.output_draft).read_bytes() == b'{"custom_id": "a"}\n'
    store.close()


def test_one_process_holds_a_folder(tmp_path: Path) -> None:
    first = Store(tmp_path)
    with pytest.raises(StoreError, match="in use by another gateway"):
        Store(tmp_path)
    first.close()
    Store(tmp_path).close()


def test_a_database_that_is_not_one_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "batches.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"batches\.sqlite3: file is not a database"):
        Store(tmp_path)
    Store(tmp_path / "elsewhere").close()  # the lock was released with the failure


def test_status_moves_only_from_the_statuses_given(tmp_path: Path) -> None:
    store = Store(tmp_path)
    b = store.add_batch(batch(owner="alice"))
    assert store.request_cancel(b.id, "bob", 1) is None  # not bob's
    cancelling = store.request_cancel(b.id, "alice", 5)
    assert cancelling is not None and cancelling.status == "cancelling" and cancelling.times["cancelling_at"] == 5
    # The worker finishing validation does not undo a cancel that came meanwhile.
    assert store.set_status(b.id, "in_progress", 6, only_from=("validating",), total=3).status == "cancelling"
    assert store.next_active() == store.batch(b.id)
    done = store.finish(cancelling, "cancelled", 7, (0, 0))
    assert done.status == "cancelled" and done.times["cancelled_at"] == 7 and done.output_file_id is None
    assert store.request_cancel(b.id, "alice", 8) == done  # a finished batch stays as it is
    assert store.next_active() is None and store.status_counts() == {"cancelled": 1}
    store.close()


def test_finish_publishes_the_non_empty_result_files(tmp_path: Path) -> None:
    store = Store(tmp_path)
    b = store.add_batch(batch(owner="alice", status="in_progress"))
    store.path(b.output_draft).write_bytes(b'{"a": 1}\n{"b": 2}\n')
    store.path(b.error_draft).write_bytes(b"")
    done = store.finish(b, "completed", 9, (2, 0))
    assert (done.output_file_id, done.error_file_id) == (b.output_draft, None)
    assert (done.completed, done.failed, done.times["completed_at"]) == (2, 0, 9)
    published = store.file(b.output_draft, "alice")
    assert published is not None and (published.purpose, published.bytes) == ("batch_output", 18)
    assert published.filename == f"{b.id}_output.jsonl"
    assert store.file(b.output_draft, "bob") is None and not store.path(b.error_draft).exists()
    store.close()


def test_lists_are_newest_first_pages_per_owner(tmp_path: Path) -> None:
    store = Store(tmp_path)
    ids = [upload(store, b"{}\n", owner="alice") for _ in range(3)]
    upload(store, b"{}\n", owner="bob")
    page, more = store.files("alice", limit=2)
    assert [f.id for f in page] == ids[:0:-1] and more
    page, more = store.files("alice", limit=2, after=page[-1].id)
    assert [f.id for f in page] == ids[:1] and not more
    assert [f.id for f in store.files("alice", newest_first=False)[0]] == ids
    assert store.files("alice", purpose="batch_output") == ([], False)
    assert store.delete_file(ids[0], "bob") is False and store.delete_file(ids[0], "alice") is True
    assert not store.path(ids[0]).exists()
    store.close()
