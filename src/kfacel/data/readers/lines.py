r"""UTF-8 text files as every reader reads them: BOM dropped, bad bytes located.

A UTF-8 byte order mark at the start of a file is read as a mark, not as part of the
first id or line. Line ends are ``\n``, ``\r\n`` or ``\r`` (as Python's universal
newlines). A byte sequence that is not UTF-8 (a Latin-1 or binary file) raises one
``ValueError`` naming the file, the line and the byte offset, instead of a
``UnicodeDecodeError`` without a file name. Files whose name ends in ``.gz`` are read
through gzip.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

BOM = b"\xef\xbb\xbf"


def _open(path: Path) -> BinaryIO:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _not_utf8(
    path: Path, line: int, offset: int, exc: UnicodeDecodeError
) -> ValueError:
    byte = exc.object[exc.start : exc.start + 1].hex()
    return ValueError(
        f"{path}:{line}: not UTF-8 text (byte 0x{byte} at offset {offset + exc.start}); "
        "convert the file to UTF-8"
    )


def text_lines(path: Path | str) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, line without its line end)`` of a UTF-8 text file.

    Args:
        path: the file, plain or gzip-compressed (``.gz``).

    Yields:
        Lines numbered from 1, a leading BOM removed.

    Raises:
        ValueError: naming file, line and byte offset of bytes that are not UTF-8, or
            a gzip file that cannot be decompressed.
        FileNotFoundError: when ``path`` does not exist.
    """
    path = Path(path)
    lineno, offset = 0, 0
    try:
        with _open(path) as fh:
            for raw in fh:
                data = raw[len(BOM) :] if offset == 0 and raw.startswith(BOM) else raw
                skipped = len(raw) - len(data)
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _not_utf8(path, lineno + 1, offset + skipped, exc) from None
                offset += len(raw)
                if text.endswith("\n"):
                    text = text[:-1]
                if text.endswith("\r"):
                    text = text[:-1]
                for part in text.split("\r"):  # a lone CR ends a line too
                    lineno += 1
                    yield lineno, part
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: not a readable gzip file ({exc})") from None


def read_text(path: Path | str) -> str:
    """The whole content of a UTF-8 text file, a leading BOM removed.

    Raises:
        ValueError: naming file, line and byte offset of bytes that are not UTF-8.
        FileNotFoundError: when ``path`` does not exist.
    """
    path = Path(path)
    data = path.read_bytes()
    skipped = len(BOM) if data.startswith(BOM) else 0
    try:
        return data[skipped:].decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: skipped + exc.start].count(b"\n") + 1
        raise _not_utf8(path, line, skipped, exc) from None
