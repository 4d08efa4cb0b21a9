"""One multipart/form-data upload (`POST /v1/files`), streamed to disk under a size limit.

The file part's bytes go to `target` as they arrive: nothing is held in
memory and there is no temporary copy (each write is one chunk of the
request into the page cache; fsync is left to the caller). The other parts
are short text fields. More than `limit` bytes of file is a 413 as soon as
it is seen, or before reading anything when the request's declared length
already says so; the partial file is then removed, as on any other error.
Exactly one file part is accepted. Left out: what the fields mean
(`files.py`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from moa_local.errors import InvalidRequest, PayloadTooLarge

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FIELD_LIMIT = 4096  # bytes of one text field
OVERHEAD = 64 * 1024  # what the fields and part headers may add to the file's size on the wire


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None  # None: no file part came
    size: int = 0


class _Parts:
    """The parser's callbacks: headers and fields collected, the file part written to disk."""

    def __init__(self, target: Path, limit: int) -> None:
        self.target = target
        self.limit = limit
        self.upload = Upload()
        self.sink: IO[bytes] | None = None
        self._header = [b"", b""]
        self._disposition = b""
        self._name = ""
        self._text = bytearray()
        self._in_file = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
            "on_header_field": lambda data, start, end: self._add(0, data[start:end]),
            "on_header_value": lambda data, start, end: self._add(1, data[start:end]),
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
        }  # fmt: skip

    def _add(self, which: int, data: bytes) -> None:
        self._header[which] += data

    def _begin(self) -> None:
        self._disposition, self._name, self._text, self._in_file = b"", "", bytearray(), False

    def _header_end(self) -> None:
        if self._header[0].lower() == b"content-disposition":
            self._disposition = self._header[1]
        self._header = [b"", b""]

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            return
        if self.sink is not None:
            raise InvalidRequest("send one file per upload", param=self._name or "file")
        self._in_file = True
        self.upload.filename = options[b"filename"].decode("utf-8", "replace")
        self.sink = self.target.open("wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file:
            self._text += data[start:end]
            if len(self._text) > FIELD_LIMIT:
                raise InvalidRequest(f"form field '{self._name}' is over {FIELD_LIMIT} bytes", param=self._name)
            return
        assert self.sink is not None
        self.upload.size += end - start
        if self.upload.size > self.limit:
            raise PayloadTooLarge(f"the file is over the {self.limit}-byte upload limit (gateway.max_upload_bytes)")
        self.sink.write(data[start:end])

    def _end(self) -> None:
        if not self._in_file:
            self.upload.fields[self._name] = self._text.decode("utf-8", "replace")


async def receive_upload(request: Request, target: Path, limit: int) -> Upload:
    """Read the request's form, writing its file part to `target`; `target` exists afterwards only on success."""
    kind, options = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise InvalidRequest("expected a multipart/form-data body with a 'file' part and a 'purpose' field")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + OVERHEAD:
        raise PayloadTooLarge(f"the upload is {declared} bytes; the file limit is {limit} (gateway.max_upload_bytes)")
    parts = _Parts(target, limit)
    parser = MultipartParser(options[b"boundary"], parts.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except FormParserError:
        _discard(parts, target)
        raise InvalidRequest("the multipart/form-data body is malformed") from None
    except BaseException:
        _discard(parts, target)
        raise
    if parts.sink is not None:
        parts.sink.close()
    return parts.upload


def _discard(parts: _Parts, target: Path) -> None:
    if parts.sink is not None:
        parts.sink.close()
    with contextlib.suppress(OSError):
        target.unlink()
