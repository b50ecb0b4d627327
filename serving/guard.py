"""ASGI middleware that checks image uploads before BentoML parses them.

On its own, BentoML 1.4 answers a multipart body with malformed part headers or over 1000 fields
with a 500, fetches a text value sent for a file field as a URL (a 500 when it is not one), and
reads bodies of any size. In front of the image routes this guard:
- refuses bodies that are not multipart/form-data (415),
- reads the body with a byte limit, draining and discarding what is over it (413; at once when the
  client sent `Expect: 100-continue`, as curl does for large uploads),
- parses the multipart structure without copying the data and requires exactly one file part named
  `image` (400), then replays the buffered body to BentoML.
Every refusal is a JSON `{"error": ...}`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.responses import JSONResponse

Scope = dict[str, Any]
Message = dict[str, Any]
MAX_PARTS = 16  # the image and a few options; starlette would turn thousands of fields into a 500
DRAIN_FACTOR = 4  # read (and drop) at most this many times the limit before answering 413 and closing
CURL_HINT = "send the image as a multipart/form-data file field named '{field}' (curl -F {field}=@photo.jpg)"


def error_response(status: int, message: str, *, close: bool = False) -> JSONResponse:
    """The service's one error shape: `{"error": message}`."""
    headers = {"Connection": "close"} if close else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    size: int = 0


@dataclass
class _Structure:
    """Names, file names and sizes of the parts of a multipart body."""

    parts: list[_Part] = field(default_factory=list)
    header_field: bytes = b""
    header_value: bytes = b""
    finished: bool = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": lambda: self.parts.append(_Part()),
            "on_part_data": self._on_data,
            "on_header_field": lambda data, start, end: self._extend("header_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._extend("header_value", data[start:end]),
            "on_header_end": self._on_header_end,
            "on_end": self._on_end,
        }

    def _extend(self, attr: str, chunk: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + chunk)

    def _on_data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1].size += end - start

    def _on_header_end(self) -> None:
        if self.header_field.lower() == b"content-disposition":
            _, options = parse_options_header(self.header_value)
            part = self.parts[-1]
            part.name = options.get(b"name", b"").decode("utf-8", "replace")
            # starlette's rule: a part is a file when its disposition carries a filename
            part.filename = options[b"filename"].decode("utf-8", "replace") if b"filename" in options else None
        self.header_field = self.header_value = b""

    def _on_end(self) -> None:
        self.finished = True


def check_multipart(body: bytes, boundary: bytes, field_name: str) -> str | None:
    """None when `body` holds exactly one file part named `field_name`, else the error message."""
    structure = _Structure()
    try:
        parser = MultipartParser(boundary, structure.callbacks())
        parser.write(body)
        parser.finalize()
    except Exception as err:  # python_multipart raises its own error types for malformed bodies
        return f"malformed multipart body ({err}); {CURL_HINT.format(field=field_name)}"
    if not structure.finished:
        return f"the multipart body is incomplete (no closing boundary); {CURL_HINT.format(field=field_name)}"
    if len(structure.parts) > MAX_PARTS:
        return f"too many form fields ({len(structure.parts)}); send the image and at most {MAX_PARTS - 1} options"
    named = [part for part in structure.parts if part.name == field_name]
    if not named:
        sent = sorted({part.name or "?" for part in structure.parts})
        return f"missing field '{field_name}' (got {sent or 'no fields'}); {CURL_HINT.format(field=field_name)}"
    if len(named) > 1:
        return f"send one image per request: found {len(named)} '{field_name}' fields"
    if named[0].filename is None:
        return f"field '{field_name}' is a text value, not a file; {CURL_HINT.format(field=field_name)}"
    return None


class UploadGuard:
    """Pure ASGI middleware; only POST requests to `routes` are inspected."""

    def __init__(self, app: Any, *, routes: Collection[str], max_bytes: int, field_name: str = "image") -> None:
        self.app = app
        self.routes = frozenset(routes)
        self.max_bytes = int(max_bytes)
        self.field_name = field_name

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.routes:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        media_type, options = parse_options_header(headers.get("content-type", ""))
        if media_type != b"multipart/form-data" or not options.get(b"boundary"):
            got = headers.get("content-type") or "no content type"
            message = f"unsupported content type ({got}); {CURL_HINT.format(field=self.field_name)}"
            await error_response(415, message)(scope, receive, send)
            return
        body, complete, disconnected = await self._read_body(headers, receive)
        if disconnected:
            return
        if body is None:
            message = (
                f"the upload is larger than the limit of {self.max_bytes / 2**20:.1f} MB (COSA_MAX_UPLOAD_MB); "
                "send a smaller image"
            )
            await error_response(413, message, close=not complete)(scope, receive, send)
            return
        problem = check_multipart(body, options[b"boundary"], self.field_name)
        if problem is not None:
            await error_response(400, problem)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, headers: Headers, receive: Any) -> tuple[bytes | None, bool, bool]:
        """(body or None when over the limit, whether the body was read to its end, client disconnected)."""
        declared = headers.get("content-length")
        too_big = declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        if too_big and headers.get("expect", "").lower() == "100-continue":
            return None, False, False  # answer before the client sends the body (curl waits for this)
        chunks: list[bytes] = []
        received = 0
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return None, False, True
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_bytes:
                too_big, chunks = True, []
            elif not too_big:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return (None if too_big else b"".join(chunks)), True, False
            if too_big and received > DRAIN_FACTOR * self.max_bytes:
                return None, False, False


def _replay(body: bytes, receive: Any) -> Any:
    """A `receive` that hands out the buffered body once, then defers to the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
