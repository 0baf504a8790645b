"""Reading the text files users hand the CLI (apply files, flag files, schemas, contexts): UTF-8 only.

A file in another encoding or a compressed one is refused in one line that says what it looks like and
what to do, instead of a decode traceback deep in a parser.
"""

from __future__ import annotations

import codecs
import sys
from pathlib import Path

from confmesh.errors import InvalidArgument

_SIGNATURES = (
    (codecs.BOM_UTF32_LE, "UTF-32 text (it starts with a UTF-32 byte-order mark)"),
    (codecs.BOM_UTF32_BE, "UTF-32 text (it starts with a UTF-32 byte-order mark)"),
    (codecs.BOM_UTF16_LE, "UTF-16 text (it starts with a UTF-16 byte-order mark)"),
    (codecs.BOM_UTF16_BE, "UTF-16 text (it starts with a UTF-16 byte-order mark)"),
    (b"\x1f\x8b", "gzip-compressed; decompress it first"),
    (b"PK\x03\x04", "a zip archive; extract it first"),
)


def decode_text(raw: bytes, source: str = "") -> str:
    """`raw` as UTF-8 (a UTF-8 byte-order mark is dropped), or InvalidArgument in one line that starts
    with `source` (when given)."""
    where = f"{source}: " if source else ""
    for signature, looks_like in _SIGNATURES:
        if raw.startswith(signature):
            hint = "" if "first" in looks_like else "; save it as UTF-8"
            raise InvalidArgument(f"{where}not UTF-8: the file is {looks_like}{hint}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InvalidArgument(
            f"{where}not UTF-8: byte 0x{raw[exc.start]:02x} on line {line} cannot be decoded "
            "(Latin-1 or another legacy encoding?); save it as UTF-8"
        ) from exc


def read_text(path: str | Path) -> str:
    """The UTF-8 text of the file at `path`; InvalidArgument (one line) when unreadable or not UTF-8."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode_text(raw, str(path))


def read_stdin() -> str:
    """Standard input as UTF-8 text, checked like a file."""
    return decode_text(sys.stdin.buffer.read(), "stdin")


def read_text_or_stdin(path: str) -> str:
    """``-`` reads standard input; anything else is a file path."""
    return read_stdin() if path == "-" else read_text(path)


__all__ = ["decode_text", "read_stdin", "read_text", "read_text_or_stdin"]
