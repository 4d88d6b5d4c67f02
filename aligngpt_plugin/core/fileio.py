"""Files written so that a reader sees the old file or the whole new one, never a part; JSON Lines.

Every writer of the plugin goes through `atomic_path`: the bytes go to a temporary file with a unique
name beside the target (two runs writing the same target never share it), are flushed to disk, and the
file is renamed over the target. The file gets the permission bits a plain `open(path, "w")` would give
it (the old file's bits when it exists, else 0o666 less the process umask), not `mkstemp`'s 0600: levels,
scores and converted checkpoints are shared by a team on one machine. Plain python; knows nothing of torch
or LLaVA.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

PROC_STATUS = "/proc/self/status"


def process_umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux >= 4.7)."""
    try:
        with open(PROC_STATUS) as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way to read it is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_open_mode(path: str | Path) -> int:
    """The permission bits `open(path, "w")` would leave `path` with: an existing file keeps its own, a new
    file gets 0o666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~process_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path` through; on success it is fsynced and renamed over `path`,
    on an exception it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), plain_open_mode(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """`open(path, mode)` through `atomic_path`: readers see the old file until the block ends well."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_figure_atomic(figure, path: str | Path, **savefig_kwargs) -> Path:
    """`figure.savefig(path, ...)` through `atomic_path` (a matplotlib figure, or anything with `savefig`
    taking a binary file and `format`); the format is the suffix of `path`, as `savefig(path)` would take it,
    since the temporary name ends in `.tmp`. Returns `path`."""
    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".").lower() or None)
    with atomic_open(path, "wb") as f:
        figure.savefig(f, **savefig_kwargs)
    return path


def write_json_atomic(path: str | Path, value, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON Lines file (blank lines skipped); a bad line is an error naming the line."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON line ({e.msg})") from None
    return rows
