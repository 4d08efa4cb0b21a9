"""The gateway's `/v1/files`: uploads for batches, through the real openai SDK and raw HTTP over loopback.

What is checked: OpenAI's file object and list shapes, the upload limit
(413 before or while reading), refusals naming the field, that an upload is
kept across restarts and that nothing is written for a gateway that never
sees a batch. Key scoping is in test_batches.py, with the batches.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.support.batch_inputs import jsonl, request
from tests.support.fake_fixtures import FakeEngineFactory
from tests.support.gateway_fixtures import HELLO, GatewayFactory, Stack, StackFactory, error_of, fake_config

DATA = jsonl(request("a", "p1", "hi"), request("b", "mix", "hello"))


@pytest.fixture
def stack(own_stack: StackFactory, tmp_path: Path) -> Stack:
    return own_stack({"data_dir": str(tmp_path / "data"), "max_upload_bytes": 2048})


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(path.name for path in (tmp_path / "data" / "files").iterdir())


def test_sdk_uploads_lists_retrieves_downloads_and_deletes_a_file(stack: Stack, tmp_path: Path) -> None:
    client = stack.gw.client()
    uploaded = client.files.create(file=("prompts.jsonl", DATA), purpose="batch")
    assert uploaded.id.startswith("file-") and uploaded.object == "file" and uploaded.status == "processed"
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == ("prompts.jsonl", len(DATA), "batch")
    assert client.files.retrieve(uploaded.id) == uploaded
    assert [f.id for f in client.files.list()] == [uploaded.id]
    assert client.files.content(uploaded.id).content == DATA
    deleted = client.files.delete(uploaded.id)
    assert deleted.id == uploaded.id and deleted.deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)
    assert client.files.list().data == [] and leftovers(tmp_path) == []


def test_upload_over_the_limit_is_413_and_leaves_nothing(stack: Stack, tmp_path: Path) -> None:
    client = stack.gw.client()
    big = jsonl(*(request(f"id-{i}", "p1", "x" * 40) for i in range(30)))
    assert 2048 < len(big) < 2048 + 64 * 1024  # refused while reading: the declared length looks fine
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", big), purpose="batch")
    assert caught.value.status_code == 413 and caught.value.code == "request_too_large"
    assert "2048-byte upload limit (gateway.max_upload_bytes)" in caught.value.message
    huge = b"x" * (100 * 1024)  # refused before reading: the declared length is over the limit
    answer = stack.gw.http.post("/v1/files", files={"file": ("huge.jsonl", huge)}, data={"purpose": "batch"})
    assert answer.status_code == 413 and error_of(answer)["code"] == "request_too_large"
    assert client.files.list().data == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("form", "files", "param", "says"),
    [
        ({"purpose": "fine-tune"}, {"file": ("a.jsonl", DATA)}, "purpose", "'purpose' must be 'batch'"),
        ({}, {"file": ("a.jsonl", DATA)}, "purpose", "'purpose' is required"),
        ({"purpose": "batch"}, None, "file", "'file' is required"),
        ({"purpose": "batch"}, {"file": ("empty.jsonl", b"\n")}, "file", "empty.jsonl: empty"),
        ({"purpose": "batch"}, {"file": ("notes.txt", b"hello\n")}, "file", "notes.txt: not a JSONL batch file"),
    ],
)
def test_upload_refusals_name_the_field(
    stack: Stack, tmp_path: Path, form: dict[str, str], files: dict[str, tuple[str, bytes]] | None, param: str,
    says: str,
) -> None:  # fmt: skip
    # Without a file httpx sends a urlencoded form: force multipart with an empty non-file part.
    parts = files if files is not None else {"note": (None, b"")}
    answer = stack.gw.http.post("/v1/files", data=form, files=parts)
    assert answer.status_code == 400
    error = error_of(answer)
    assert error["param"] == param and says in error["message"], error
    assert leftovers(tmp_path) == []


def test_a_body_that_is_not_a_multipart_form_is_refused(stack: Stack) -> None:
    answer = stack.gw.http.post("/v1/files", json={"purpose": "batch"})
    assert answer.status_code == 400 and "multipart/form-data" in error_of(answer)["message"]
    garbled = stack.gw.http.post(
        "/v1/files", content=b"--b\r\nnonsense", headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert garbled.status_code == 400 and error_of(garbled)["message"]


def test_unknown_files_are_404_naming_the_id(stack: Stack) -> None:
    http = stack.gw.http
    for answer in (http.get("/v1/files/file-nope"), http.get("/v1/files/file-nope/content"),
                   http.delete("/v1/files/file-nope")):  # fmt: skip
        assert answer.status_code == 404
        error = error_of(answer)
        assert error["param"] == "file_id" and "file-nope" in error["message"]


def test_files_list_in_pages_either_order(stack: Stack) -> None:
    client = stack.gw.client()
    ids = [client.files.create(file=(f"{i}.jsonl", DATA), purpose="batch").id for i in range(3)]
    page = client.files.list(limit=2, order="asc")
    assert [f.id for f in page.data] == ids[:2] and page.has_more
    assert [f.id for f in client.files.list(limit=2, order="asc", after=ids[1]).data] == ids[2:]
    assert [f.id for f in client.files.list(limit=1)] == ids[::-1]  # newest first, every page followed
    assert client.files.list(purpose="batch_output").data == []
    for bad in ({"order": "up"}, {"limit": "many"}):
        answer = stack.gw.http.get("/v1/files", params=bad)
        assert answer.status_code == 400 and error_of(answer)["param"] == next(iter(bad))


def test_uploads_outlive_the_gateway_and_a_data_dir_has_one_gateway(
    gateway_server: GatewayFactory, fake_engine: FakeEngineFactory, tmp_path: Path
) -> None:
    config = fake_config({"p1": fake_engine(model="p1-model")}, gateway={"data_dir": str(tmp_path / "data")})
    first = gateway_server(config)
    uploaded = first.client().files.create(file=("kept.jsonl", DATA), purpose="batch")
    second = gateway_server(config)  # the same data_dir while the first holds it
    answer = second.http.get("/v1/files")
    assert answer.status_code == 500 and "is in use by another gateway" in error_of(answer)["message"]
    first.stop()
    third = gateway_server(config)
    assert third.client().files.retrieve(uploaded.id) == uploaded
    assert third.client().files.content(uploaded.id).content == DATA


def test_a_gateway_that_never_sees_a_batch_writes_nothing(
    gateway_server: GatewayFactory, fake_engine: FakeEngineFactory, tmp_path: Path
) -> None:
    config = fake_config({"p1": fake_engine(model="p1-model")}, gateway={"data_dir": str(tmp_path / "data")})
    gw = gateway_server(config)
    assert gw.client().chat.completions.create(model="p1", messages=HELLO).choices[0].message.content
    assert httpx.get(f"{gw.url}/health").status_code == 200
    assert not (tmp_path / "data").exists()
    gw.client().files.list()
    assert (tmp_path / "data" / "batches.sqlite3").exists()
