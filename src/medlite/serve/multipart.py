"""A ``multipart/form-data`` body parsed as it streams, into memory only, under byte and file-count limits.

Starlette's own form parser spools every file part over 1 MB to a temporary file on disk; an X-ray must never
touch the disk of a clinic machine unless asked (``--keep-uploads``), so uploads are parsed here with
python-multipart's streaming parser into ``bytearray`` buffers. The part's file name is read by the parser
and dropped at once: it is never stored, logged or returned (file names often carry patient names).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from medlite.errors import MedliteError

MAX_FIELD_BYTES = 1024  # a text field (heatmap=true) is a few bytes


class UploadError(MedliteError):
    """A request the server refuses, with the HTTP status code to answer it with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Form:
    """The parsed body: file parts in order (bytes only) and the text fields."""

    files: list[bytes] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    n_bytes: int = 0


@dataclass
class _Part:
    name: str = ""
    is_file: bool = False
    data: bytearray = field(default_factory=bytearray)


async def read_form(content_type: str, chunks: AsyncIterator[bytes], *, max_bytes: int, max_files: int,
                    file_fields: tuple[str, ...] = ("file", "files"),
                    on_bytes: Callable[[int], None] | None = None) -> Form:
    """Parse a multipart body from its chunks.

    Args:
        content_type: the request's ``Content-Type`` header (must be ``multipart/form-data`` with a boundary).
        chunks: the body as it arrives (``request.stream()``).
        max_bytes: the most body bytes accepted; beyond it :class:`UploadError` 413 is raised at once.
        max_files: the most file parts accepted (413 beyond).
        file_fields: form field names that carry image files.
        on_bytes: called with each chunk's size as it arrives (the server's in-flight byte budget).

    Raises:
        UploadError: 415 not multipart, 413 too large / too many files, 400 malformed body or field.
    """
    ctype, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise UploadError(415, "expected a multipart/form-data upload with the images in 'files'")
    form = Form()
    current = _Part()
    header_name = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        nonlocal current
        current = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        if bytes(header_name).lower() == b"content-disposition":
            _, disposition = parse_options_header(bytes(header_value))
            current.name = disposition.get(b"name", b"").decode("utf-8", "replace")
            current.is_file = b"filename" in disposition  # the name itself is not kept
        header_name.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current.data.extend(data[start:end])
        if not current.is_file and len(current.data) > MAX_FIELD_BYTES:
            raise UploadError(400, f"form field {current.name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end() -> None:
        if current.is_file or current.name in file_fields:
            if current.name not in file_fields:
                raise UploadError(400, f"unexpected file field {current.name!r}; send images as 'files'")
            if len(form.files) >= max_files:
                raise UploadError(413, f"more than {max_files} files in one request")
            form.files.append(bytes(current.data))
        else:
            form.fields[current.name] = current.data.decode("utf-8", "replace")
        current.data = bytearray()

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    try:
        async for chunk in chunks:
            form.n_bytes += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
            if form.n_bytes > max_bytes:
                raise UploadError(413, f"upload larger than the {max_bytes / 1e6:g} MB limit (--max-upload-mb)")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as err:
        raise UploadError(400, f"malformed multipart body ({type(err).__name__})") from None
    return form
