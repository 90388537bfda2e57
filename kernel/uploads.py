"""Receive a ``multipart/form-data`` upload as a stream, straight into a staging file.

The request body is never held in memory: the file part is hashed and written to a
:class:`~kernel.storage.StagedObject` chunk by chunk; small form fields (such as the JSON
``metadata`` part) are kept, each up to ``max_field_bytes``. The caller owns the staged
object and must commit or discard it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from kernel.errors import FieldError, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from kernel.storage import ObjectStore, StagedObject

MAX_FIELD_BYTES = 256 * 1024


@dataclass
class Upload:
    """The parsed form: small fields by name, and the staged file parts by name."""

    fields: dict[str, bytes]
    files: dict[str, StagedObject] = field(default_factory=dict)

    @property
    def staged(self) -> StagedObject | None:
        """The single ``file`` part of an offering upload."""
        return self.files.get("file")

    def discard(self) -> None:
        for staged in self.files.values():
            staged.discard()


@dataclass
class _PartState:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_field: bytes = b""
    header_value: bytes = b""
    name: str = ""
    buffer: bytearray = field(default_factory=bytearray)
    is_file: bool = False


def boundary_of(content_type: str) -> bytes:
    media, options = parse_options_header(content_type)
    if media != b"multipart/form-data":
        raise UnsupportedMediaType(
            f"expected multipart/form-data (parts 'metadata' and 'file'), got {content_type or 'nothing'}"
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidInput("multipart/form-data without a boundary")
    return boundary


async def receive_multipart(
    chunks: AsyncIterator[bytes],
    content_type: str,
    store: ObjectStore,
    *,
    file_fields: Callable[[str], bool] = lambda name: name == "file",
    max_file_bytes: int,
    max_field_bytes: int = MAX_FIELD_BYTES,
) -> Upload:
    """Parse the body; on any error the staged file is removed and the error raised."""
    boundary = boundary_of(content_type)
    upload = Upload(fields={})
    part = _PartState()

    def on_part_begin() -> None:
        nonlocal part
        part = _PartState()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        part.headers[part.header_field.lower()] = part.header_value
        part.header_field = part.header_value = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if file_fields(part.name):
            if part.name in upload.files:
                raise InvalidInput(f"more than one '{part.name}' part")
            part.is_file = True
            upload.files[part.name] = store.stage(background=True)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part.is_file:
            staged = upload.files[part.name]
            if staged.size + (end - start) > max_file_bytes:
                raise PayloadTooLarge(
                    f"the file exceeds this node's upload limit of {max_file_bytes} bytes",
                    errors=[FieldError(part.name, "too large")],
                )
            staged.write(memoryview(data)[start:end])
        else:
            if len(part.buffer) + (end - start) > max_field_bytes:
                raise PayloadTooLarge(
                    f"form field '{part.name}' exceeds {max_field_bytes} bytes",
                    errors=[FieldError(part.name, "too large")],
                )
            part.buffer += data[start:end]

    def on_part_end() -> None:
        if not part.is_file and part.name:
            upload.fields[part.name] = bytes(part.buffer)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in chunks:
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except BaseException as exc:
        upload.discard()
        if isinstance(exc, MultipartParseError):
            raise InvalidInput(f"malformed multipart body: {exc}") from exc
        raise
    return upload
