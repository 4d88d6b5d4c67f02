"""The two kinds of scoring input behind one interface: chunks of a LLaVA JSON/JSONL file (`ChunkSource`) and
webdataset shards (`ShardSource`). The engine runs one loop over either, and the merge one merge.

A source is a list of units (a chunk of `chunk_size` records, or one input shard), each finished unit written
to work/ on its own (the unit of resuming). It says which units a rank still has to score, reads them into
batch tasks, turns a task into a batch (in a DataLoader worker), files a finished unit's outputs, and at the
merge reads them back.

Every record's bytes are read once per run, whatever the number of shards, ranks and workers:

- ranks split the units (rank r of W takes units r, r+W, ...), so no two ranks read one unit;
- inside a rank, ONE reader (a thread of the main process) reads each of its units once, in order, and cuts
  it into batch tasks that carry the records themselves (a JSON record's fields; a shard sample's bytes);
  the DataLoader sends each task to one worker, which decodes, preprocesses and tokenizes it.

Why one reader per rank, and not a split of each shard by member ranges or by sample modulo among the
workers: shards are streams. `pipe:aws s3 cp ... -` and `https://` cannot seek, so a member-range split
would need a byte-range reader per URL scheme and an index of member offsets nobody has before reading the
shard; a modulo split (every worker reads the shard, keeps every n-th sample) is what read each shard n times.
The reader's part is cheap next to decoding (a sequential read, tar headers, sha256 at hundreds of MB/s);
what costs is decoding, and that is what the workers share, batch by batch, however few units there are.
The bytes of a task pass to its worker through the DataLoader's queue, about 13 MB for 256 web images.
A JSON chunk is likewise parsed once, by the reader; the workers get its records, not the file.
Across ranks the unit stays whole: with fewer shards than ranks some ranks have nothing to do (400M pairs
come in tens of thousands of shards; give as many shards as ranks or more).

A batch's place in its unit depends only on the unit (never on ranks, workers or resumes), so every split
gives the same outputs.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from aligngpt_plugin.core.fileio import atomic_open, atomic_path
from aligngpt_plugin.scoring.config import ScoreConfig
from aligngpt_plugin.scoring.merge import reason_kind
from aligngpt_plugin.scoring.records import InputPlan, caption_of, iter_records
from aligngpt_plugin.scoring.records import record_problem as static_problem
from aligngpt_plugin.scoring.shards import Sample, ShardPlan, read_shard
from aligngpt_plugin.scoring.work import shard_outputs, shard_path, write_shard, write_shard_outputs

STRICT_HINT = "Fix it, or run without --strict to list such {what} and score the rest"


@dataclass
class Task:
    """One batch to prepare: its unit, its number in the unit, its items (records or samples), the errors
    found while reading them, and on the unit's last batch how many batches it has and the unit's facts."""

    unit: int
    number: int
    items: list
    errors: list[dict]
    last: bool = False
    batches: int | None = None
    facts: dict = field(default_factory=dict)  # a shard's sha256 and bytes


class Source:
    """What the engine and the merge need of an input; see the module docstring."""

    unit_name = "unit"
    config: ScoreConfig

    @property
    def num_units(self) -> int:
        """How many units (chunks or shards) the input has."""
        raise NotImplementedError

    def is_done(self, unit: int) -> bool:
        """Whether a unit's outputs are finished (a restart skips it).

        Args:
            unit: the unit's number.
        Returns:
            True when its last output is written.
        """
        raise NotImplementedError

    def todo(self, rank: int, world_size: int) -> list[int]:
        """This rank's units (r, r+W, ...) that have no finished outputs yet.

        Args:
            rank: this rank, r.
            world_size: how many ranks share the units, W.
        Returns:
            The unit numbers, ascending.
        """
        return [u for u in range(rank, self.num_units, world_size) if not self.is_done(u)]

    def missing(self) -> list[int]:
        """The units without finished outputs, of every rank.

        Returns:
            The unit numbers, ascending.
        """
        return [u for u in range(self.num_units) if not self.is_done(u)]

    def unit_label(self, unit: int) -> str:
        """How messages name a unit.

        Args:
            unit: the unit's number.
        Returns:
            Its label (a chunk's number, a shard's name).
        """
        return str(unit)

    def records_in(self, units: list[int]) -> int | None:
        """How many records the units hold, when known before reading them (for the progress bar).

        Args:
            units: the unit numbers.
        Returns:
            The count, or None when it is known only after reading.
        """
        return None

    def batches_in(self, units: list[int]) -> int | None:
        """How many batches the units give, when known before reading them (workers share batches).

        Args:
            units: the unit numbers.
        Returns:
            The count, or None when it is known only after reading.
        """
        return None

    def tasks(self, units: list[int]) -> Iterator[Task]:
        """Read the units once, in order, as batch tasks (runs in the main process's reader thread).

        Args:
            units: the unit numbers to read.
        Returns:
            An iterator of Tasks; each unit's last task has `last` set, its batch count and its facts.
        """
        raise NotImplementedError

    def problem(self, unit: int, error: dict, strict_hint: bool) -> str:
        """The message of --strict for an error line of this source (with the hint for a reading error).

        Args:
            unit: the unit the error belongs to.
            error: the error line.
            strict_hint: add the hint on running without --strict.
        Returns:
            The message, naming the record or sample.
        """
        raise NotImplementedError

    def error_line(self, batch: dict, ident: tuple, reason: str) -> dict:
        """The error line of an item whose image failed on the device.

        Args:
            batch: the batch the item came in.
            ident: its id as the batch lists it ((index, id) or (position, key)).
            reason: why it failed.
        Returns:
            The error line, as the unit's other error lines are written.
        """
        raise NotImplementedError

    def finish(self, unit: int, rows: list[tuple], errors: list[dict], facts: dict) -> None:
        """Write a finished unit's outputs (the last write marks it done).

        Args:
            unit: the unit's number.
            rows: ((index, id) or (position, key), score[, image embedding, text embedding]) per scored item.
            errors: the unit's error lines.
            facts: what the unit's last task carried (a shard's sha256 and bytes).
        """
        raise NotImplementedError

    # the merge (merge.py), once every unit is done

    def merge_paths(self) -> dict[str, Path]:
        """Where the merge writes: at least levels, histogram and summary.

        Returns:
            {output name: path}.
        """
        raise NotImplementedError

    def collect(self, paths: dict[str, Path]) -> tuple[np.ndarray, dict[str, int]]:
        """The scores of every unit in input order and the count of each error kind.

        Args:
            paths: the merge's paths (`merge_paths`).
        Returns:
            (scores float64 [n], {error kind: count}).
        """
        raise NotImplementedError

    def write_datasets(self, paths: dict[str, Path], levels: np.ndarray, scores: np.ndarray,
                       threshold: float | None) -> int | None:
        """The data with its levels and, with a threshold, the filtered data.

        Args:
            paths: the merge's paths.
            levels: [n] int levels, in `collect`'s order.
            scores: [n] float64 scores, in `collect`'s order.
            threshold: keep records scoring at least this (None: no filtered output).
        Returns:
            The filtered count (None without a threshold).
        """
        raise NotImplementedError

    def identity(self) -> str:
        """The sha256 levels.json records for the input.

        Returns:
            The hex digest.
        """
        raise NotImplementedError

    def records(self) -> int:
        """How many records (or samples) the input has, counted by the plan or the merge."""
        raise NotImplementedError

    def caption_label(self) -> str:
        """Which text was scored, for levels.json (a caption mode, or `field:NAME`)."""
        raise NotImplementedError

    def title(self) -> str:
        """The input's name in the summary and the histogram's title."""
        raise NotImplementedError


class ChunkSource(Source):
    """A LLaVA JSON/JSONL file in chunks of `chunk_size` records; a chunk's outputs are work/chunk_NNNNNN.jsonl.
    A chunk's batches are its scorable records in order, `batch_size` at a time; its unscorable records'
    error lines ride on its first batch."""

    unit_name = "chunk"

    def __init__(self, config: ScoreConfig, plan: InputPlan):
        self.config, self.plan = config, plan

    @property
    def num_units(self) -> int:
        return self.plan.num_chunks

    def is_done(self, unit: int) -> bool:
        return shard_path(self.config.output_dir, unit).is_file()

    def records_in(self, units: list[int]) -> int:
        return sum(len(self.plan.chunk_range(c)) for c in units)

    def batches_in(self, units: list[int]) -> int:
        return sum(-(-len(self.plan.chunk_range(c)) // self.config.batch_size) for c in units)

    def tasks(self, units: list[int]) -> Iterator[Task]:
        size = self.config.batch_size
        for chunk in units:
            items, errors = self._chunk_items(chunk)
            batches = [items[i:i + size] for i in range(0, len(items), size)] or [[]]
            for b, batch_items in enumerate(batches):
                last = b == len(batches) - 1
                yield Task(chunk, b, batch_items, errors if b == 0 else [], last, len(batches) if last else None)

    def _chunk_items(self, chunk: int) -> tuple[list[tuple[int, Any, str, str]], list[dict]]:
        """The chunk's scorable records (index, id, image, caption) and the error lines of the others."""
        plan, config = self.plan, self.config
        span = plan.chunk_range(chunk)
        records = islice(iter_records(plan.path, plan.chunk_offsets[chunk]), len(span))
        items: list[tuple[int, Any, str, str]] = []
        errors: list[dict] = []
        for index, (_, record) in zip(span, records):
            problem = static_problem(record, config.caption, config.caption_field)
            if problem is None and index in plan.duplicates:
                problem = f"duplicate id: first at record {plan.duplicates[index]}"
            if problem is not None:
                ident = record.get("id") if isinstance(record, dict) else None
                image = record.get("image") if isinstance(record, dict) else None
                errors.append({"index": index, "id": ident, "image": image, "error": problem})
                continue
            items.append((index, record["id"], record["image"],
                          caption_of(record, config.caption, config.caption_field)))
        return items, errors

    def problem(self, unit: int, error: dict, strict_hint: bool) -> str:
        text = f"record {error['index']} (id {error['id']!r}) of {self.config.data_path}: {error['error']}"
        return text + ". " + STRICT_HINT.format(what="records in errors.jsonl") if strict_hint else text

    def error_line(self, batch: dict, ident: tuple, reason: str) -> dict:
        index, record_id = ident
        return {"index": index, "id": record_id, "image": batch["image_names"][index], "error": reason}

    def finish(self, unit: int, rows: list[tuple], errors: list[dict], facts: dict) -> None:
        lines = errors + [{"index": index, "id": ident, "score": score} for (index, ident), score in rows]
        write_shard(shard_path(self.config.output_dir, unit), lines)

    def merge_paths(self) -> dict[str, Path]:
        out, data, config = Path(self.config.output_dir), Path(self.config.data_path), self.config
        suffix = ".jsonl" if self.plan.format == "jsonl" else ".json"
        paths = {"scores": out / "scores.jsonl", "errors": out / "errors.jsonl",
                 "dataset": out / f"{data.stem}_levels{suffix}", "levels": out / "levels.json",
                 "histogram": out / "scores_histogram.png", "summary": out / "summary.json"}
        if config.keep_top is not None or config.min_score is not None:
            paths["filtered"] = out / f"{data.stem}_filtered{suffix}"
        return paths

    def collect(self, paths: dict[str, Path]) -> tuple[np.ndarray, dict[str, int]]:
        """As `Source.collect`; also writes scores.jsonl and errors.jsonl on the way, and keeps the record indices
        for the datasets.

        Args:
            paths: the merge's paths.
        Returns:
            (scores float64 [n], {error kind: count}).
        """
        indices, scores, errored = array("q"), array("d"), array("q")
        reasons: dict[str, int] = {}
        with atomic_open(paths["scores"]) as score_file, atomic_open(paths["errors"]) as error_file:
            for chunk in range(self.plan.num_chunks):
                for line in shard_path(self.config.output_dir, chunk).read_text().splitlines():
                    item = json.loads(line)
                    if "score" in item:
                        indices.append(item["index"])
                        scores.append(item["score"])
                        score_file.write(json.dumps({"index": item["index"], "id": item["id"],
                                                     "score": item["score"]}) + "\n")
                    else:
                        errored.append(item["index"])
                        kind = reason_kind(item["error"])
                        reasons[kind] = reasons.get(kind, 0) + 1
                        error_file.write(json.dumps(item) + "\n")
        self._indices = np.frombuffer(indices, dtype=np.int64) if indices else np.zeros(0, np.int64)
        self._errored = set(errored)
        return (np.frombuffer(scores, dtype=np.float64) if scores else np.zeros(0)), reasons

    def write_datasets(self, paths: dict[str, Path], levels: np.ndarray, scores: np.ndarray,
                       threshold: float | None) -> int | None:
        """In one pass over the input: the input with `align_level` on every scored record (levels of an
        earlier split are replaced), and with a threshold the scored records at or above it.

        Args:
            paths: the merge's paths.
            levels: [n] int levels, in `collect`'s order.
            scores: [n] float64 scores, in `collect`'s order.
            threshold: keep records scoring at least this (None: no filtered output).
        Returns:
            The filtered count (None without a threshold).
        """
        order = np.argsort(self._indices, kind="stable")
        scored = iter(zip(self._indices[order].tolist(), levels[order].tolist(), scores[order].tolist()))
        next_scored = next(scored, (None, None, None))
        jsonl = self.plan.format == "jsonl"
        with contextlib.ExitStack() as stack:
            levelled = _RecordWriter(stack, paths["dataset"], jsonl)
            filtered = _RecordWriter(stack, paths["filtered"], jsonl) if threshold is not None else None
            for index, (_, record) in enumerate(iter_records(self.plan.path)):
                if isinstance(record, dict):
                    record = {k: v for k, v in record.items() if k not in ("align_level", "similarity")}
                if next_scored[0] == index:
                    record["align_level"] = next_scored[1]
                    if filtered is not None and next_scored[2] >= threshold:
                        filtered.write(record)
                    next_scored = next(scored, (None, None, None))
                elif self.config.drop_errors and index in self._errored:
                    continue
                levelled.write(record)
            levelled.close()
            if filtered is not None:
                filtered.close()
        return None if filtered is None else filtered.written

    def identity(self) -> str:
        return self.plan.sha256

    def records(self) -> int:
        return self.plan.records

    def caption_label(self) -> str:
        return f"field:{self.config.caption_field}" if self.config.caption_field else self.config.caption

    def title(self) -> str:
        return Path(self.config.data_path).name


class ShardSource(Source):
    """webdataset shards; a shard's outputs are scores/NAME.parquet, errors/NAME.jsonl and, last,
    work/shard_NAME.json. Its batches are its readable samples in order, `batch_size` at a time; a sample's
    error line rides on the batch being filled when it was read; the last batch carries the shard's sha256."""

    unit_name = "shard"

    def __init__(self, config: ScoreConfig, plan: ShardPlan):
        self.config, self.plan = config, plan

    @property
    def num_units(self) -> int:
        return self.plan.num_shards

    def is_done(self, unit: int) -> bool:
        return shard_outputs(self.config.output_dir, self.plan.names[unit])["done"].is_file()

    def unit_label(self, unit: int) -> str:
        return self.plan.names[unit]

    def tasks(self, units: list[int]) -> Iterator[Task]:
        size = self.config.batch_size
        for shard in units:
            items: list[Sample] = []
            errors: list[dict] = []
            number = 0
            for sample in read_shard(self.plan.urls[shard], self.config.caption_field):
                if isinstance(sample, dict):  # the end: the shard's sha256 and size
                    yield Task(shard, number, items, errors, True, number + 1, sample)
                    break
                if sample.problem is not None:
                    errors.append({"position": sample.position, "key": sample.key, "error": sample.problem})
                    continue
                items.append(sample)
                if len(items) == size:
                    yield Task(shard, number, items, errors)
                    items, errors = [], []
                    number += 1

    def problem(self, unit: int, error: dict, strict_hint: bool) -> str:
        text = f"shard {self.plan.names[unit]}, key {error['key']!r}: {error['error']}"
        return text + ". " + STRICT_HINT.format(what="samples in errors/") if strict_hint else text

    def error_line(self, batch: dict, ident: tuple, reason: str) -> dict:
        return {"position": ident[0], "key": ident[1], "error": reason}

    def finish(self, unit: int, rows: list[tuple], errors: list[dict], facts: dict) -> None:
        scored = [(position, key, *values) for (position, key), *values in rows]
        write_shard_outputs(self.config, self.plan.names[unit], self.plan.urls[unit], scored, errors,
                            facts["sha256"], facts["bytes"])

    def merge_paths(self) -> dict[str, Path]:
        out = Path(self.config.output_dir)
        paths = {"scores": out / "scores", "errors": out / "errors", "levels": out / "levels.json",
                 "histogram": out / "scores_histogram.png", "summary": out / "summary.json"}
        if self.config.keep_top is not None or self.config.min_score is not None:
            paths["filtered"] = out / "filtered.parquet"
        return paths

    def collect(self, paths: dict[str, Path]) -> tuple[np.ndarray, dict[str, int]]:
        import hashlib

        import pyarrow.parquet as pq

        identity = hashlib.sha256()
        samples = 0
        reasons: dict[str, int] = {}
        parts, keys, owners = [], [], []
        for name in self.plan.names:
            files = shard_outputs(self.config.output_dir, name)
            done = json.loads(files["done"].read_text())
            identity.update(f"{name} {done['sha256']}\n".encode())
            samples += done["samples"]
            table = pq.read_table(files["scores"], columns=["key", "score"])
            parts.append(table.column("score").to_numpy().astype(np.float64))
            keys.append(table.column("key"))
            owners.append(len(table))
            with open(files["errors"]) as lines:
                for line in lines:
                    kind = reason_kind(json.loads(line)["error"])
                    reasons[kind] = reasons.get(kind, 0) + 1
        self._identity, self._samples, self._keys, self._owners = identity.hexdigest(), samples, keys, owners
        return (np.concatenate(parts) if parts else np.zeros(0)), reasons

    def write_datasets(self, paths: dict[str, Path], levels: np.ndarray, scores: np.ndarray,
                       threshold: float | None) -> int | None:
        """With a threshold, filtered.parquet (shard, key, score, align_level); the shards stay as they are.

        Args:
            paths: the merge's paths.
            levels: [n] int levels, in `collect`'s order.
            scores: [n] float64 scores, in `collect`'s order.
            threshold: keep samples scoring at least this (None: nothing is written).
        Returns:
            The filtered count (None without a threshold).
        """
        if threshold is None:
            return None
        import pyarrow as pa
        import pyarrow.parquet as pq

        keep = scores >= threshold
        shard_column = np.repeat(np.array(self.plan.names, dtype=object), self._owners)
        keys = self._keys
        table = pa.table({"shard": pa.array(shard_column[keep].tolist(), pa.string()),
                          "key": pa.concat_arrays([c.combine_chunks() for c in keys]).filter(pa.array(keep))
                          if keys else pa.array([], pa.string()),
                          "score": pa.array(scores[keep], pa.float32()),
                          "align_level": pa.array(levels[keep], pa.int32())})
        with atomic_path(paths["filtered"]) as tmp:
            pq.write_table(table, tmp)
        return int(keep.sum())

    def identity(self) -> str:
        return self._identity

    def records(self) -> int:
        return self._samples

    def caption_label(self) -> str:
        return f"field:{self.config.caption_field}" if self.config.caption_field else "txt"

    def title(self) -> str:
        return f"{self.plan.num_shards} shards"


def source_of(config: ScoreConfig, plan: InputPlan | ShardPlan) -> Source:
    """The Source of a run's input.

    Args:
        config: the run's settings.
        plan: an InputPlan (JSON input) or a ShardPlan.
    Returns:
        A ChunkSource or a ShardSource.
    """
    return ShardSource(config, plan) if isinstance(plan, ShardPlan) else ChunkSource(config, plan)


class ReadAhead:
    """Iterates `tasks` from a background thread, `depth` ahead, so that reading a unit (a download, tar
    headers, sha256, JSON parsing) overlaps the model. An exception of the reader is raised here, in order;
    a reader blocked on a full queue gives up when the consumer is gone (`close`)."""

    _END = object()

    def __init__(self, tasks: Iterable, depth: int = 4):
        self.tasks, self.depth = tasks, depth
        self._stop = threading.Event()

    def __iter__(self) -> Iterator:
        out: queue.Queue = queue.Queue(self.depth)

        def put(item) -> bool:
            while not self._stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def read() -> None:
            try:
                for task in self.tasks:
                    if not put(("task", task)):
                        return
            except BaseException as e:  # noqa: BLE001 (handed to the consumer, which raises it)
                put(("error", e))
                return
            put(("end", None))

        thread = threading.Thread(target=read, name="aligngpt-score-reader", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = out.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield value
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reader thread (it gives up at its next blocked put)."""
        self._stop.set()


class _RecordWriter:
    """Records into a JSON array or JSON Lines file (the input's format), written atomically."""

    def __init__(self, stack: contextlib.ExitStack, path: Path, jsonl: bool):
        self.file, self.jsonl, self.written = stack.enter_context(atomic_open(path)), jsonl, 0
        if not jsonl:
            self.file.write("[\n")

    def write(self, record) -> None:
        text = json.dumps(record, ensure_ascii=False)
        self.file.write(text + "\n" if self.jsonl else ("" if self.written == 0 else ",\n") + text)
        self.written += 1

    def close(self) -> None:
        if not self.jsonl:
            self.file.write("\n]\n")
