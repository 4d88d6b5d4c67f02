"""webdataset shards as scoring input: img2dataset's output (`00000.tar` holding KEY.jpg, KEY.txt, KEY.json).

`--data` names the shards as a brace pattern (`shards/{00000..00099}.tar`, expanded as webdataset does), a
folder of `.tar` files, one `.tar`, or a list file (`.txt`/`.list`/`.shards`: one path or URL a line, `#`
comments; relative paths are relative to the list file). URLs are opened with webdataset's `gopen`, so
`pipe:aws s3 cp s3://bucket/00000.tar -` and `https://...` work as they do in webdataset.

A sample is the members sharing a key (the name up to its first dot, webdataset's rule); its image is the
first of .jpg .jpeg .png .webp .bmp .gif .tif .tiff, its caption the .txt member, or with `--caption-field F`
the field F of the .json member; its id is the key. The shard is read once, in order, with the tar reader
webdataset is built on (`tarfile` in stream mode), and its bytes are hashed on the way (sha256, for
levels.json). A shard that ends inside a member, or without tar's end-of-archive blocks, is truncated: its
samples up to the cut are scored, the sample at the cut is an error naming the shard, the member and the
byte, and the rest are lost.

The shard is the unit of work: rank r of W takes shards r, r+W, ...; inside a rank one reader reads each
shard once and the DataLoader workers share its batches (`sources.py` says why). A shard's batches depend
only on the shard, so the outputs do not depend on ranks, workers or resumes.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LIST_SUFFIXES = (".txt", ".list", ".shards")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
TAR_END = 1024  # two zero blocks close a tar archive
READ_SIZE = 1 << 16


class ShardError(ValueError):
    """The shard list itself is unusable (no shards, a missing file, two shards with one name)."""


def is_shard_input(data: str) -> bool:
    """Whether --data names webdataset shards rather than a LLaVA JSON/JSONL file.

    Args:
        data: the `--data` value.
    Returns:
        True for a .tar, a brace pattern, a `pipe:` or `::`-joined list, a folder or a shard-list file.
    """
    if "::" in data or ("{" in data and ".." in data and "}" in data):
        return True
    if data.endswith(".tar") or data.startswith("pipe:"):
        return True
    path = Path(data)
    return path.is_dir() or path.suffix in LIST_SUFFIXES


def _is_url(name: str) -> bool:
    return "://" in name or name.startswith("pipe:")


def expand_shards(data: str) -> list[str]:
    """The shard paths/URLs that --data names, in order.

    Args:
        data: a folder of .tar files, a list file (one path or URL a line), or a webdataset pattern.
    Returns:
        The shards.
    Raises:
        ShardError: naming what is wrong (no shards, missing files).
    """
    from webdataset.shardlists import expand_urls

    path = Path(data)
    if not _is_url(data) and path.is_dir():
        shards = sorted(str(p) for p in path.iterdir() if p.suffix == ".tar")
        if not shards:
            raise ShardError(f"{data} holds no .tar files; give a folder of webdataset shards, a brace pattern "
                             "like shards/{00000..00009}.tar, or a list file")
    elif not _is_url(data) and path.suffix in LIST_SUFFIXES:
        if not path.is_file():
            raise ShardError(f"shard list {data} not found")
        lines = [line.strip() for line in path.read_text().splitlines()]
        shards = [s if _is_url(s) or Path(s).is_absolute() else str(path.parent / s)
                  for s in lines if s and not s.startswith("#")]
        if not shards:
            raise ShardError(f"shard list {data} names no shards (one path or URL a line)")
    else:
        shards = expand_urls(data)
    missing = [s for s in shards if not _is_url(s) and not Path(s).is_file()]
    if missing:
        raise ShardError(f"{len(missing)} of {len(shards)} shards not found (first: {missing[0]}); check --data")
    return shards


def shard_name(url: str) -> str:
    """The name a shard's outputs are filed under: its file name without .tar (`00000`); for a `pipe:`
    command, that of its first word ending in .tar.

    Args:
        url: the shard's path, URL or `pipe:` command.
    Returns:
        The name.
    """
    words = url[5:].split() if url.startswith("pipe:") else [url]
    target = next((w for w in words if w.endswith(".tar")), words[-1] if words else url)
    base = target.rstrip("/").rsplit("/", 1)[-1]
    return base[:-4] if base.endswith(".tar") else base


@dataclass
class ShardPlan:
    """The run's shards: where each is, the name its outputs take, and its size when it is a local file."""

    data: str
    urls: list[str]
    names: list[str]
    sizes: list[int | None]

    @property
    def num_shards(self) -> int:
        return len(self.urls)

    def identity(self) -> list[list]:
        """What the manifest compares on resume: each shard's location and (local files) size."""
        return [[u, s] for u, s in zip(self.urls, self.sizes)]


def plan_shards(data: str) -> ShardPlan:
    """The run's shards with their output names and (local files) sizes.

    Args:
        data: the `--data` value.
    Returns:
        The ShardPlan.
    Raises:
        ShardError: no shards, a missing file, or two shards with one name.
    """
    urls = expand_shards(data)
    names = [shard_name(u) for u in urls]
    seen: dict[str, str] = {}
    for url, name in zip(urls, names):
        if name in seen:
            raise ShardError(f"two shards are named {name!r} ({seen[name]} and {url}); their outputs would share "
                             "scores/{name}.parquet. Score them in separate runs")
        seen[name] = url
    sizes = [None if _is_url(u) else os.path.getsize(u) for u in urls]
    return ShardPlan(data, urls, names, sizes)


class _HashingReader:
    """A read-only stream that hashes what passes and remembers its last bytes (for the end-of-archive check)."""

    def __init__(self, raw, keep: int = 4 * READ_SIZE):
        self.raw, self.sha256, self.position, self.keep, self.tail = raw, hashlib.sha256(), 0, keep, b""

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.position += len(data)
        self.tail = (self.tail + data)[-self.keep:]
        return data

    def ends_with_zeros_from(self, offset: int) -> bool:
        """Whether the TAR_END bytes from `offset` (the end of the last member) exist and are zero."""
        while self.position < offset + TAR_END and self.read(READ_SIZE):
            pass
        if self.position < offset + TAR_END:
            return False
        start = self.position - len(self.tail)
        if offset < start:
            return True  # a long trailer: more than the window past the last member, taken as the archive's end
        return not any(self.tail[offset - start: offset - start + TAR_END])

    def drain(self) -> None:
        while self.read(READ_SIZE):
            pass


@dataclass
class Sample:
    """One key's members, read from the shard; `problem` says why it cannot be scored."""

    position: int
    key: str
    image: bytes | None = None
    caption: str = ""
    problem: str | None = None


def _open_shard(url: str):
    from webdataset.gopen import gopen

    try:
        return gopen(url, "rb")
    except Exception as e:  # noqa: BLE001 (any opener's failure: the run stops and a restart retries)
        raise OSError(f"cannot open shard {url}: {type(e).__name__}: {e}") from e


def read_shard(url: str, caption_field: str | None = None) -> Iterator[Sample | dict]:
    """Yield the shard's samples in order, then one dict {"sha256", "bytes"} of the whole shard.

    Args:
        url: the shard's path or URL.
        caption_field: a field of the sample's .json holding the caption (None: its .txt member).
    Returns:
        An iterator of Samples (each with its image bytes and caption, or its `problem`), then the dict.
    """
    from webdataset.tariterators import base_plus_ext

    name = shard_name(url)
    raw = _open_shard(url)
    reader = _HashingReader(raw)
    members: dict[str, bytes] = {}
    key: str | None = None
    seen: set[str] = set()
    position = 0

    def finish(problem: str | None = None) -> Sample:
        sample = _sample(position, key, members, caption_field, name)
        if problem is not None:
            sample.problem = problem
        elif sample.problem is None and key in seen:
            sample.problem = f"duplicate key: {key!r} appears twice in shard {name}"
        seen.add(key)
        return sample

    member_name = None
    try:
        try:
            archive = tarfile.open(fileobj=reader, mode="r|")  # an empty or non-tar file fails here
            for info in archive:
                member_name = info.name
                if not info.isreg():
                    continue
                base, ext = base_plus_ext(info.name)
                if base is None or base.rsplit("/", 1)[-1].startswith("__"):
                    continue  # no extension, or webdataset's metadata members
                if base != key:
                    if key is not None:
                        yield finish()
                        position += 1
                    key, members = base, {}
                members[ext.lower()] = archive.extractfile(info).read()
        except tarfile.ReadError as e:
            where = f"member {member_name!r}" if member_name else "its first member"
            yield Sample(position, key or "", problem=f"truncated shard: {name} ends inside {where} at byte "
                         f"{reader.position} ({e})")
            reader.drain()
            yield {"sha256": reader.sha256.hexdigest(), "bytes": reader.position}
            return
        clean = reader.ends_with_zeros_from(archive.offset)
        if key is not None:
            yield finish(None if clean else f"truncated shard: {name} stops after member {member_name!r} without "
                         f"the end-of-archive blocks (at byte {reader.position}); this last sample may be incomplete")
        elif not clean:
            yield Sample(0, "", problem=f"truncated shard: {name} has no complete member ({reader.position} bytes)")
        reader.drain()
        yield {"sha256": reader.sha256.hexdigest(), "bytes": reader.position}
    finally:
        raw.close()


def _sample(position: int, key: str, members: dict[str, bytes], caption_field: str | None, shard: str) -> Sample:
    sample = Sample(position, key)
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    if image_ext is None:
        sample.problem = f"no image: key {key!r} of shard {shard} has no image member ({', '.join(sorted(members))})"
        return sample
    sample.image = members[image_ext]
    if caption_field:
        import json

        if "json" not in members:
            sample.problem = f"empty caption: key {key!r} of shard {shard} has no .json for field {caption_field!r}"
            return sample
        try:
            value = json.loads(members["json"]).get(caption_field)
        except (ValueError, AttributeError) as e:
            sample.problem = f"bad json: key {key!r} of shard {shard}: {e}"
            return sample
        sample.caption = value.strip() if isinstance(value, str) else ""
    elif "txt" in members:
        try:
            sample.caption = members["txt"].decode("utf-8").strip()
        except UnicodeDecodeError as e:
            sample.problem = f"bad caption: key {key!r} of shard {shard}: .txt is not UTF-8 ({e})"
            return sample
    if not sample.caption:
        where = f"field {caption_field!r} of its .json" if caption_field else "a .txt member"
        sample.problem = f"empty caption: key {key!r} of shard {shard} has no text in {where}"
    return sample
