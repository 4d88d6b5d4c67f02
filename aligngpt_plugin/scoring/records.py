"""Streaming the records of a LLaVA data file, and what makes a record unscorable.

LLaVA's files are a JSON array (LCS-558K, mix665k) or JSON Lines. Both are read record by record with the
byte offset where each starts, so a worker can seek straight to its chunk and memory does not grow with
the file. The first pass (`plan_input`) also hashes the bytes (sha256, for levels.json), counts the
records, notes where every chunk starts and finds duplicate ids exactly, keeping 8 bytes per record.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BLOCK = 1 << 20
CAPTION_MODES = ("gpt-first", "gpt-last", "gpt-all")


class InputError(ValueError):
    """The data file itself cannot be read (not one bad record: those go to the errors file)."""


def detect_format(path: str | Path) -> str:
    """'json' for a JSON array, 'jsonl' for JSON Lines (by the first non-blank byte).

    Args:
        path: the data file.
    Returns:
        "json" or "jsonl".
    Raises:
        InputError: an empty file.
    """
    with open(path, "rb") as f:
        while block := f.read(4096):
            stripped = block.lstrip()
            if stripped.startswith(codecs.BOM_UTF8):
                stripped = stripped[len(codecs.BOM_UTF8):].lstrip()
            if stripped:
                return "json" if stripped[:1] == b"[" else "jsonl"
    raise InputError(f"{path} is empty; expected a JSON array or JSON Lines file of LLaVA records")


def iter_records(path: str | Path, offset: int | None = None, hasher=None) -> Iterator[tuple[int, object]]:
    """Yield (byte offset, record) for each record, from `offset` (a record start) or the beginning.

    Args:
        path: the data file (JSON array or JSON Lines).
        offset: a record's byte offset to start at (None: the beginning).
        hasher: e.g. hashlib.sha256(), fed every byte of the file; only meaningful from the beginning.
    Returns:
        An iterator of (byte offset, record).
    Raises:
        InputError: naming the place, where the file is not valid JSON.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "jsonl":
        yield from _iter_jsonl(path, offset or 0, hasher)
    else:
        yield from _iter_json_array(path, offset, hasher)


def _iter_jsonl(path: Path, offset: int, hasher) -> Iterator[tuple[int, object]]:
    with open(path, "rb") as f:
        f.seek(offset)
        pos = offset
        for line_no, line in enumerate(f, start=1):
            if hasher is not None:
                hasher.update(line)
            if line.strip():
                try:
                    yield pos, json.loads(line)
                except json.JSONDecodeError as e:
                    where = f"line {line_no}" if offset == 0 else f"byte {pos}"
                    raise InputError(f"{path}, {where}: not valid JSON ({e.msg}); fix or remove that line") from e
            pos += len(line)


def _iter_json_array(path: Path, offset: int | None, hasher) -> Iterator[tuple[int, object]]:
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8-sig")()
    with open(path, "rb") as f:
        if offset is not None:
            f.seek(offset)
        buf, eof = "", False
        pos = 0  # index into buf of the next unread character
        byte_pos = offset or 0  # byte offset in the file of buf[pos]

        def fill() -> bool:
            nonlocal buf, pos, eof
            block = f.read(BLOCK)
            if hasher is not None:
                hasher.update(block)
            if not block:
                eof = True
                buf = buf[pos:] + utf8.decode(b"", final=True)
            else:
                buf = buf[pos:] + utf8.decode(block)
            pos = 0
            return bool(block)

        def skip_space() -> str:
            """The next non-blank character (buf[pos] after this), '' at the end of the file."""
            nonlocal pos, byte_pos
            while True:
                start = pos
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                byte_pos += pos - start  # blanks are one byte each
                if pos < len(buf):
                    return buf[pos]
                if eof or not fill():
                    return ""

        if offset is None:
            if f.read(3) == codecs.BOM_UTF8:
                byte_pos = 3  # the decoder drops the mark; offsets still count its bytes
            f.seek(0)
            if skip_space() != "[":
                raise InputError(f"{path} does not start with '['")
            pos += 1
            byte_pos += 1
        expect_value, first = True, True
        while True:
            c = skip_space()
            if c == "":
                raise InputError(f"{path} ends before its closing ']' (a truncated file?)")
            if c == "]" and (first or not expect_value):
                if hasher is not None:
                    while fill():
                        pass
                return
            if not expect_value:
                if c != ",":
                    raise InputError(f"{path}, byte {byte_pos}: expected ',' or ']' between records, found {c!r}")
                pos += 1
                byte_pos += 1
                expect_value = True
                continue
            while True:
                try:
                    record, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:
                        break
                except json.JSONDecodeError as e:
                    if eof:
                        raise InputError(f"{path}, byte {byte_pos}: not valid JSON ({e.msg})") from e
                if not fill():
                    continue  # now at eof: one last try
            yield byte_pos, record
            byte_pos += len(buf[pos:end].encode("utf-8"))
            pos = end
            expect_value, first = False, False


def caption_of(record: dict, mode: str = "gpt-first", field_name: str | None = None) -> str:
    """The text to score against the image: a top-level field, or the record's `gpt` turn(s).

    Args:
        record: a LLaVA record.
        mode: "gpt-first", "gpt-last" or "gpt-all" (joined): which gpt turns (`<image>` removed).
        field_name: a top-level field to read instead of the turns.
    Returns:
        The caption, stripped ("" when there is none).
    """
    if field_name:
        text = record.get(field_name)
        return text.strip() if isinstance(text, str) else ""
    turns = [t.get("value", "") for t in record.get("conversations") or []
             if isinstance(t, dict) and t.get("from") == "gpt" and isinstance(t.get("value"), str)]
    if not turns:
        return ""
    chosen = {"gpt-first": turns[:1], "gpt-last": turns[-1:], "gpt-all": turns}[mode]
    return " ".join(t.replace("<image>", " ").strip() for t in chosen).strip()


def record_problem(record: object, mode: str = "gpt-first", field_name: str | None = None) -> str | None:
    """Why the record cannot be scored (before touching its image) as "kind: detail", or None.

    Args:
        record: one record as read from the file.
        mode: the caption mode (see `caption_of`).
        field_name: the caption field, if any.
    Returns:
        The problem, or None for a scorable record.
    """
    if not isinstance(record, dict):
        return f"not an object: the record is a JSON {type(record).__name__}"
    if record.get("id") is None:
        return "no id: the record has no `id` field"
    image = record.get("image")
    if image is None:
        return "no image: the record has no `image` field"
    if not isinstance(image, str) or not image:
        return f"bad image field: {image!r} is not one file name"
    if not caption_of(record, mode, field_name):
        where = f"field {field_name!r}" if field_name else "gpt turn"
        return f"empty caption: no text in the {where}"
    return None


def _id_hash(value: object) -> int:
    return int.from_bytes(hashlib.blake2b(json.dumps(value).encode(), digest_size=8).digest(), "little")


@dataclass
class InputPlan:
    """One pass over the data file: everything the scorer needs to split it into chunks."""

    path: str
    format: str
    sha256: str
    records: int
    chunk_size: int
    chunk_offsets: list[int]
    duplicates: dict[int, int] = field(default_factory=dict)  # record index -> index of its first occurrence

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_offsets)

    def chunk_range(self, chunk: int) -> range:
        start = chunk * self.chunk_size
        return range(start, min(start + self.chunk_size, self.records))


def plan_input(path: str | Path, chunk_size: int) -> InputPlan:
    """Hash, count and chunk the data file, and find duplicate ids (later occurrences).

    Args:
        path: the data file.
        chunk_size: records per chunk.
    Returns:
        The InputPlan.
    Raises:
        InputError: the file is missing or not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file {path} not found")
    hasher = hashlib.sha256()
    offsets: list[int] = []
    hashes = array("Q")
    hashed_index = array("q")
    count = 0
    for count, (offset, record) in enumerate(iter_records(path, hasher=hasher), start=1):
        if (count - 1) % chunk_size == 0:
            offsets.append(offset)
        if isinstance(record, dict) and record.get("id") is not None:
            hashes.append(_id_hash(record["id"]))
            hashed_index.append(count - 1)
    duplicates = _find_duplicates(path, np.frombuffer(hashes, dtype=np.uint64),
                                  np.frombuffer(hashed_index, dtype=np.int64))
    return InputPlan(str(path), detect_format(path), hasher.hexdigest(), count, chunk_size, offsets, duplicates)


def _find_duplicates(path: Path, hashes: np.ndarray, indices: np.ndarray) -> dict[int, int]:
    if hashes.size < 2:
        return {}
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return {}
    # equal hashes are candidates; compare the ids themselves (a second pass, only over candidates)
    suspects = set(indices[order[1:][same]].tolist()) | set(indices[order[:-1][same]].tolist())
    first_seen: dict[str, int] = {}
    duplicates: dict[int, int] = {}
    for i, (_, record) in enumerate(iter_records(path)):
        if i in suspects:
            key = json.dumps(record["id"])
            if key in first_seen:
                duplicates[i] = first_seen[key]
            else:
                first_seen[key] = i
    return duplicates
