"""Compiled gettext catalogs (.mo files): their singular entries, decoded with the charset their header declares.

The format (GNU gettext manual, "The Format of GNU MO Files"): a 20-byte header (magic, revision, count, offsets
of the original and translated string tables), each table `count` pairs of (length, offset).
"""

from __future__ import annotations

import codecs
import re
import struct

MO_MAGIC = 0x950412DE
CHARSET = re.compile(rb"charset=\s*([-\w.:]+)", re.IGNORECASE)


class CatalogError(ValueError):
    """A .mo file that cannot be read; extraction skips it and counts it."""


def declared_charset(header: bytes) -> str:
    """The charset of the header's Content-Type, if Python knows it; else UTF-8 (a superset of the ASCII that
    gettext assumes, and what an unfilled 'charset=CHARSET' template almost always holds)."""
    match = CHARSET.search(header)
    if match:
        name = match.group(1).decode("ascii", "replace")
        try:
            return codecs.lookup(name).name
        except LookupError:
            pass
    return "utf-8"


def read_mo(data: bytes) -> tuple[dict[str, str], int]:
    """Singular, context-free entries of a .mo file decoded with the header's charset, and the number of
    entries that do not decode. Plural entries (msgid with NUL) and contexts (msgctxt EOT msgid) are dropped."""
    if len(data) < 20:
        raise CatalogError("shorter than a .mo header")
    for order in "<>":
        magic, revision, count, originals, translations = struct.unpack(f"{order}5I", data[:20])
        if magic == MO_MAGIC:
            break
    else:
        raise CatalogError("not a .mo file (bad magic number)")
    if revision >> 16 > 1:
        raise CatalogError(f"unsupported .mo major revision {revision >> 16}")

    def string(table: int, index: int) -> bytes:
        length, offset = struct.unpack_from(f"{order}2I", data, table + 8 * index)
        if offset + length > len(data):
            raise CatalogError("string table points past the end of the file")
        return data[offset : offset + length]

    try:
        raw = [(string(originals, i), string(translations, i)) for i in range(count)]
    except struct.error as exc:
        raise CatalogError(f"truncated ({exc})") from None
    header = next((msgstr for msgid, msgstr in raw if msgid == b""), b"")
    charset = declared_charset(header)
    entries: dict[str, str] = {}
    undecodable = 0
    for msgid, msgstr in raw:
        if not msgid or b"\x00" in msgid or b"\x04" in msgid:
            continue
        try:
            entries[msgid.decode(charset)] = msgstr.decode(charset)
        except UnicodeDecodeError:
            undecodable += 1
    return entries, undecodable
