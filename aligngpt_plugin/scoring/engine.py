"""The scoring engine behind `aligngpt-score`: CLIP scores of image-caption pairs, chunked, resumable, sharded.

    from aligngpt_plugin.scoring.engine import ScoreConfig, score_dataset
    summary = score_dataset(ScoreConfig(data_path="blip_laion_cc_sbu_558k.json", image_folder="images",
                                        output_dir="runs/levels"))

How a run goes:
1. Plan: one streaming pass over the data file: sha256 of its bytes, record count, the byte offset of every
   chunk of `chunk_size` records, duplicate ids.
2. Score: rank r of W takes chunks r, r+W, ... that have no shard yet. DataLoader workers read their chunk
   from its offset, decode the images of a batch in parallel threads, preprocess them and tokenize the
   captions in one call; the main process runs CLIP under autocast. A finished chunk is written to
   `work/chunk_NNNNNN.jsonl` atomically (temporary file + os.replace), so a killed run loses at most the
   chunks in flight and a restart skips finished ones. A chunk's batches depend only on the chunk, so a
   resumed or sharded run computes the same numbers as one uninterrupted run.
3. Merge (rank 0, after a barrier; or `merge_outputs` later): scores.jsonl, errors.jsonl, the dataset with
   `align_level`, levels.json and the histogram, all written atomically.

A record that cannot be scored (no image field, missing/truncated/corrupt image, empty caption, no id,
an id seen before) is listed in errors.jsonl with its reason, gets no level and is counted in the
summary; `strict=True` makes the first one fatal. In the levelled dataset such records keep their place
without `align_level` (so nothing is lost; LLaVA pre-training with --align_levels then refuses the file
naming them), or are left out with `drop_errors=True`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from array import array
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from aligngpt_plugin.core.levels import (
    LevelsFile,
    assign_levels,
    level_counts,
    plot_histogram,
    quantile_edges,
    score_stats,
    write_atomic,
)
from aligngpt_plugin.scoring.backends import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    ClipScorer,
    is_transformers_clip,
    load_scorer,
)
from aligngpt_plugin.scoring.records import CAPTION_MODES, InputError, InputPlan, caption_of, iter_records, plan_input
from aligngpt_plugin.scoring.records import record_problem as static_problem

WORK = "work"
MANIFEST_KEYS = ("input_sha256", "records", "chunk_size", "model", "pretrained", "caption", "caption_field",
                 "image_folder")


class ScoreError(RuntimeError):
    """A record could not be scored under --strict, or a run's outputs are inconsistent."""


@dataclass
class ScoreConfig:
    """Everything a scoring run needs; the CLI flags map one to one."""

    data_path: str = field(metadata={"help": "LLaVA data file: a JSON array or JSON Lines of records"})
    image_folder: str = field(metadata={"help": "folder the records' `image` paths are relative to"})
    output_dir: str = field(metadata={"help": "where the outputs (and work/, the resumable shards) go"})
    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": "open_clip model name, open_clip config .json, hf-hub:/local-dir:, or hf:PATH (transformers CLIP)"})
    pretrained: str | None = field(default=DEFAULT_PRETRAINED, metadata={
        "help": "open_clip pretrained tag or local checkpoint file; empty for random weights"})
    num_levels: int | None = field(default=None, metadata={
        "help": "equal-count levels N (default 8, or the levels file's); 0 = lowest similarity"})
    levels_from: str | None = field(default=None, metadata={"help": "apply the edges of this levels.json instead"})
    caption: Literal["gpt-first", "gpt-last", "gpt-all"] = field(default="gpt-first", metadata={
        "help": "which gpt turn is the caption (gpt-all joins every gpt turn of a conversation)"})
    caption_field: str | None = field(default=None, metadata={"help": "take the caption from this record field"})
    batch_size: int = field(default=256, metadata={"help": "images per forward pass"})
    num_workers: int = field(default=-1, metadata={"help": "DataLoader workers (-1: one per CPU core, at most 16)"})
    decode_threads: int = field(default=4, metadata={"help": "threads decoding one batch's images in a worker"})
    chunk_size: int = field(default=8192, metadata={"help": "records per shard (the unit of resuming)"})
    device: str = field(default="auto", metadata={"help": "auto (cuda:LOCAL_RANK if available), cpu, cuda, ..."})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "autocast dtype; auto is bf16 on CUDA (fp16 where bf16 is missing), fp32 elsewhere"})
    strict: bool = field(default=False, metadata={"help": "stop at the first record that cannot be scored"})
    drop_errors: bool = field(default=False, metadata={
        "help": "leave records that could not be scored out of the levelled dataset (default: keep, no level)"})
    overwrite: bool = field(default=False, metadata={"help": "discard a previous run's shards in output_dir"})
    merge: bool = field(default=True, metadata={"help": "write the outputs after scoring (rank 0)"})
    rank: int | None = field(default=None, metadata={"help": "this job's shard, for jobs run without torchrun"})
    world_size: int | None = field(default=None, metadata={"help": "number of shards, with --rank"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar with images/s"})
    chunk_delay_s: float = field(default=0.0, metadata={"help": "sleep after each chunk (kill/resume tests)"})

    def __post_init__(self) -> None:
        if self.caption not in CAPTION_MODES:
            raise ValueError(f"caption={self.caption!r}; choose one of {CAPTION_MODES}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision={self.precision!r}; choose auto, fp32, bf16 or fp16")
        for name in ("batch_size", "chunk_size", "decode_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.levels_from is None and self.num_levels is None:
            self.num_levels = 8
        if self.num_levels is not None and self.num_levels < 2:
            raise ValueError(f"num_levels={self.num_levels}: at least 2 levels are needed")
        if (self.rank is None) != (self.world_size is None):
            raise ValueError("give --rank and --world-size together (or neither, and use torchrun)")
        if self.rank is not None and not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} is outside 0..{self.world_size - 1}")
        self.pretrained = self.pretrained or None
        if is_transformers_clip(self.model):
            self.pretrained = None  # the folder holds the weights


@dataclass
class ScoreSummary:
    """What a run did; also written to summary.json (the timing fields vary between runs)."""

    records: int
    scored: int
    errors: dict[str, int]
    counts: list[int]
    edges: list[float]
    outputs: dict[str, str]
    chunks_scored_now: int = 0
    images_scored_now: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    device: str = ""


# ---------------------------------------------------------------------------------------------- workers

def load_image(path: Path):
    """The image as RGB, fully decoded (a truncated file fails here, not later)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def image_problem(path: Path, error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return f"image file not found: {path}"
    return f"cannot decode image: {path}: {type(error).__name__}: {error}"


class ChunkBatches(torch.utils.data.IterableDataset):
    """Yields ready batches of the given chunks; worker w of n takes every n-th chunk.

    Nothing raises for a bad record: its problem comes back in the batch's `errors`.
    """

    def __init__(self, plan: InputPlan, chunks: list[int], image_folder: str, preprocess, tokenize,
                 config: ScoreConfig):
        self.plan, self.chunks, self.folder = plan, chunks, Path(image_folder)
        self.preprocess, self.tokenize = preprocess, tokenize
        self.batch_size, self.threads = config.batch_size, config.decode_threads
        self.caption, self.caption_field = config.caption, config.caption_field

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        mine = self.chunks if info is None else self.chunks[info.id::info.num_workers]
        pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        try:
            for chunk in mine:
                yield from self._chunk_batches(chunk, pool)
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _chunk_batches(self, chunk: int, pool) -> Iterator[dict]:
        span = self.plan.chunk_range(chunk)
        records = islice(iter_records(self.plan.path, self.plan.chunk_offsets[chunk]), len(span))
        pending: list[tuple[int, Any, str, str]] = []  # index, id, image, caption
        errors: list[dict] = []
        batches = []
        for index, (_, record) in zip(span, records):
            problem = static_problem(record, self.caption, self.caption_field)
            if problem is None and index in self.plan.duplicates:
                problem = f"duplicate id: first at record {self.plan.duplicates[index]}"
            if problem is not None:
                ident = record.get("id") if isinstance(record, dict) else None
                image = record.get("image") if isinstance(record, dict) else None
                errors.append({"index": index, "id": ident, "image": image, "error": problem})
                continue
            pending.append((index, record["id"], record["image"], caption_of(record, self.caption,
                                                                             self.caption_field)))
            if len(pending) == self.batch_size:
                batches.append(pending)
                pending = []
        if pending or not batches:
            batches.append(pending)
        for b, items in enumerate(batches):
            out = self._batch(items, pool)
            out["chunk"], out["last"] = chunk, b == len(batches) - 1
            if b == 0:
                out["errors"] = errors + out["errors"]
            yield out

    def _prepare(self, item: tuple[int, Any, str, str]):
        path = self.folder / item[2]
        try:
            return self.preprocess(load_image(path))
        except Exception as e:  # any failure of one image is that record's error, never the run's
            return image_problem(path, e)

    def _batch(self, items: list[tuple[int, Any, str, str]], pool) -> dict:
        prepared = list(pool.map(self._prepare, items)) if pool is not None and len(items) > 1 else \
            [self._prepare(item) for item in items]
        good = [(item, p) for item, p in zip(items, prepared) if isinstance(p, torch.Tensor)]
        errors = [{"index": item[0], "id": item[1], "image": item[2], "error": p}
                  for item, p in zip(items, prepared) if not isinstance(p, torch.Tensor)]
        batch = {"indices": [item[0] for item, _ in good], "ids": [item[1] for item, _ in good],
                 "errors": errors, "pixels": None, "tokens": None}
        if good:
            batch["pixels"] = torch.stack([p for _, p in good])
            batch["tokens"] = self.tokenize([item[3] for item, _ in good])
        return batch


def _identity(batch):
    return batch


# ---------------------------------------------------------------------------------------------- engine

def resolve_device(config: ScoreConfig, local_rank: int) -> torch.device:
    if config.device != "auto":
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def default_workers() -> int:
    """The CPU cores of this process shared among the ranks of this node, at most 16."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(16, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def shard_path(output_dir: str | Path, chunk: int) -> Path:
    return Path(output_dir) / WORK / f"chunk_{chunk:06d}.jsonl"


def manifest_of(config: ScoreConfig, plan: InputPlan) -> dict:
    return {"input_sha256": plan.sha256, "records": plan.records, "chunk_size": plan.chunk_size,
            "model": config.model, "pretrained": config.pretrained, "caption": config.caption,
            "caption_field": config.caption_field, "image_folder": str(Path(config.image_folder).resolve()),
            "input_path": str(Path(config.data_path).resolve()), "config": asdict(config)}


def prepare_work_dir(config: ScoreConfig, plan: InputPlan, is_writer: bool) -> None:
    """Create work/ with its manifest, or check that an existing one was made with the same settings."""
    work = Path(config.output_dir) / WORK
    manifest_file = work / "run.json"
    wanted = manifest_of(config, plan)
    if is_writer and config.overwrite and config.rank in (None, 0) and work.exists():
        shutil.rmtree(work)
    if manifest_file.is_file():
        found = json.loads(manifest_file.read_text())
        changed = [k for k in MANIFEST_KEYS if found.get(k) != wanted[k]]
        if changed:
            detail = "; ".join(f"{k}: {found.get(k)!r} then, {wanted[k]!r} now" for k in changed)
            raise ScoreError(f"{config.output_dir} holds shards of another run ({detail}). Use another "
                             "--output, or --overwrite to discard them")
        return
    if is_writer:
        work.mkdir(parents=True, exist_ok=True)
        write_atomic(manifest_file, json.dumps(wanted, indent=1) + "\n")


def write_shard(path: Path, lines: list[dict]) -> None:
    lines = sorted(lines, key=lambda x: x["index"])
    write_atomic(path, "".join(json.dumps(x) + "\n" for x in lines))


def score_chunks(config: ScoreConfig, plan: InputPlan, scorer: ClipScorer, device: torch.device,
                 rank: int = 0, world_size: int = 1) -> tuple[int, int]:
    """Score this rank's unfinished chunks and write their shards. Returns (chunks, images) scored now."""
    todo = [c for c in range(rank, plan.num_chunks, world_size) if not shard_path(config.output_dir, c).is_file()]
    if not todo:
        return 0, 0
    workers = default_workers() if config.num_workers < 0 else config.num_workers
    workers = min(workers, len(todo))
    dataset = ChunkBatches(plan, todo, config.image_folder, scorer.preprocess, scorer.tokenize, config)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, collate_fn=_identity, pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None, persistent_workers=False)
    dtype = autocast_dtype(config.precision, device)
    pending: dict[int, list[dict]] = {}
    total = sum(len(plan.chunk_range(c)) for c in todo)
    bar = _progress(total, config.progress and rank == 0, f"scoring (rank 0 of {world_size})" if world_size > 1
                    else "scoring")
    chunks_done = images = 0
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for batch in loader:
            lines = pending.setdefault(batch["chunk"], [])
            if batch["errors"] and config.strict:
                first = batch["errors"][0]
                raise ScoreError(f"record {first['index']} (id {first['id']!r}) of {config.data_path}: "
                                 f"{first['error']}. Fix it, or run without --strict to list such records in "
                                 "errors.jsonl and score the rest")
            lines.extend(batch["errors"])
            if batch["pixels"] is not None:
                pixels = scorer.pixels(batch["pixels"], device)
                tokens = _to_device(batch["tokens"], device)
                scores = scorer.score(pixels, tokens).cpu().tolist()  # a sync point, once per batch
                lines.extend({"index": i, "id": ident, "score": s}
                             for i, ident, s in zip(batch["indices"], batch["ids"], scores))
                images += len(scores)
            bar.update(len(batch["indices"]) + len(batch["errors"]))
            if batch["last"]:
                write_shard(shard_path(config.output_dir, batch["chunk"]), pending.pop(batch["chunk"]))
                chunks_done += 1
                if config.chunk_delay_s:
                    time.sleep(config.chunk_delay_s)
    bar.close()
    return chunks_done, images


def _to_device(tokens: Any, device: torch.device) -> Any:
    if isinstance(tokens, dict):
        return {k: v.to(device, non_blocking=True) for k, v in tokens.items()}
    return tokens.to(device, non_blocking=True)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=not enabled, smoothing=0.1, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------- merge

def output_paths(config: ScoreConfig, plan: InputPlan | None = None) -> dict[str, Path]:
    out = Path(config.output_dir)
    data = Path(config.data_path)
    suffix = ".jsonl" if (plan.format if plan else data.suffix.lstrip(".")) == "jsonl" else ".json"
    return {"scores": out / "scores.jsonl", "errors": out / "errors.jsonl",
            "dataset": out / f"{data.stem}_levels{suffix}", "levels": out / "levels.json",
            "histogram": out / "scores_histogram.png", "summary": out / "summary.json"}


def merge_outputs(config: ScoreConfig, plan: InputPlan) -> ScoreSummary:
    """Read every shard and write the outputs. Raises ScoreError naming the chunks still missing."""
    missing = [c for c in range(plan.num_chunks) if not shard_path(config.output_dir, c).is_file()]
    if missing:
        raise ScoreError(f"{len(missing)} of {plan.num_chunks} chunks are not scored yet (first: {missing[:5]}); "
                         "run the scoring again with the same arguments to finish them")
    paths = output_paths(config, plan)
    indices, scores = array("q"), array("d")
    reasons: dict[str, int] = {}
    errored = array("q")
    with _atomic_writer(paths["scores"]) as score_file, _atomic_writer(paths["errors"]) as error_file:
        for chunk in range(plan.num_chunks):
            for line in shard_path(config.output_dir, chunk).read_text().splitlines():
                item = json.loads(line)
                if "score" in item:
                    indices.append(item["index"])
                    scores.append(item["score"])
                    score_file.write(json.dumps({"index": item["index"], "id": item["id"],
                                                 "score": item["score"]}) + "\n")
                else:
                    errored.append(item["index"])
                    kind = _reason_kind(item["error"])
                    reasons[kind] = reasons.get(kind, 0) + 1
                    error_file.write(json.dumps(item) + "\n")
    score_arr = np.frombuffer(scores, dtype=np.float64) if scores else np.zeros(0)
    if config.levels_from:
        source = LevelsFile.read(config.levels_from)
        if config.num_levels not in (None, source.num_levels):
            raise ScoreError(f"--levels {config.num_levels} contradicts {config.levels_from} "
                             f"({source.num_levels} levels); drop one of them")
        num_levels, edges = source.num_levels, list(source.edges)
    else:
        num_levels, edges = config.num_levels, quantile_edges(score_arr, config.num_levels)
    levels = assign_levels(score_arr, edges)
    counts = level_counts(levels, num_levels)
    _write_levelled_dataset(config, plan, np.frombuffer(indices, dtype=np.int64) if indices else
                            np.zeros(0, np.int64), levels, set(errored), paths["dataset"])
    levels_file = LevelsFile(
        num_levels=num_levels, edges=edges, model=config.model, pretrained=config.pretrained, counts=counts,
        input_path=str(config.data_path), input_sha256=plan.sha256, records=plan.records,
        scored=len(scores), errors=dict(sorted(reasons.items())), caption=config.caption_field and
        f"field:{config.caption_field}" or config.caption,
        edges_from=str(config.levels_from) if config.levels_from else None, score_stats=score_stats(score_arr))
    levels_file.write(paths["levels"])
    plot_histogram(score_arr, edges, paths["histogram"],
                   f"{Path(config.data_path).name}: {len(scores)} scores, {num_levels} levels ({config.model})")
    return ScoreSummary(records=plan.records, scored=len(scores), errors=levels_file.errors, counts=counts,
                        edges=edges, outputs={k: str(v) for k, v in paths.items()})


def _reason_kind(reason: str) -> str:
    """The error's kind, for counting: every reason reads "kind: detail"."""
    return reason.split(":", 1)[0]


class _atomic_writer:
    """Open a temporary file next to `path`; on success, move it over `path`."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")

    def __enter__(self):
        self.file = open(self.tmp, "w")
        return self.file

    def __exit__(self, exc_type, *_):
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def _write_levelled_dataset(config: ScoreConfig, plan: InputPlan, indices: np.ndarray, levels: np.ndarray,
                            errored: set[int], path: Path) -> None:
    """The input with `align_level` on every scored record (levels of an earlier split are replaced)."""
    order = np.argsort(indices, kind="stable")
    level_of = iter(zip(indices[order].tolist(), levels[order].tolist()))
    next_scored = next(level_of, (None, None))
    jsonl = plan.format == "jsonl"
    written = 0
    with _atomic_writer(path) as out:
        if not jsonl:
            out.write("[\n")
        for index, (_, record) in enumerate(iter_records(plan.path)):
            if isinstance(record, dict):
                record = {k: v for k, v in record.items() if k not in ("align_level", "similarity")}
            if next_scored[0] == index:
                record["align_level"] = next_scored[1]
                next_scored = next(level_of, (None, None))
            elif config.drop_errors and index in errored:
                continue
            text = json.dumps(record, ensure_ascii=False)
            out.write(text + "\n" if jsonl else ("" if written == 0 else ",\n") + text)
            written += 1
        if not jsonl:
            out.write("\n]\n")


# ---------------------------------------------------------------------------------------------- front door

def _distributed() -> tuple[int, int, int, bool]:
    """(rank, world size, local rank, whether torch.distributed was started here) from torchrun's env."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=timedelta(hours=12))  # ranks wait for the slowest at the end
        return dist.get_rank(), dist.get_world_size(), local_rank, True
    return dist.get_rank(), dist.get_world_size(), local_rank, False


def _barrier(device: torch.device) -> None:
    import torch.distributed as dist

    if device.type == "cuda":
        dist.barrier(device_ids=[device.index or 0])
    else:
        dist.barrier()


def score_dataset(config: ScoreConfig, scorer: ClipScorer | None = None) -> ScoreSummary | None:
    """Score, then (rank 0) merge. Works the same on one CPU, one GPU, or under torchrun on many.

    Returns the summary on the rank that merged, None on the others (and when merge=False).
    Raises InputError (unreadable data file), ScoreError (--strict, inconsistent outputs) and
    LevelSplitError (levels cannot be split as asked).
    """
    started = time.perf_counter()
    if config.rank is not None:
        rank, world, local_rank, owns_group = config.rank, config.world_size, 0, False
    else:
        rank, world, local_rank, owns_group = _distributed()
    device = resolve_device(config, local_rank)
    try:
        if not Path(config.image_folder).is_dir():
            raise InputError(f"image folder {config.image_folder} not found")
        plan = plan_input(config.data_path, config.chunk_size)
        if config.strict:
            _strict_precheck(config, plan)
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        prepare_work_dir(config, plan, is_writer=rank == 0 or config.rank is not None)
        if world > 1 and owns_group:
            _barrier(device)  # rank 0 has cleared or created work/ before anyone writes a shard
            prepare_work_dir(config, plan, is_writer=False)
        if scorer is None:
            scorer = load_scorer(config.model, config.pretrained, device)
        chunks, images = score_chunks(config, plan, scorer, device, rank, world)
        if owns_group or (world > 1 and config.rank is None):
            _barrier(device)
        if rank != 0 or not config.merge or config.rank is not None:
            return None
        summary = merge_outputs(config, plan)
        seconds = time.perf_counter() - started
        summary.chunks_scored_now, summary.images_scored_now = chunks, images
        summary.seconds = round(seconds, 3)
        summary.images_per_s = round(images / seconds, 2) if seconds else 0.0
        summary.device = f"{device}" + (f" x{world} ranks" if world > 1 else "")
        write_atomic(Path(summary.outputs["summary"]), json.dumps(asdict(summary), indent=1) + "\n")
        return summary
    finally:
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def merge_only(config: ScoreConfig) -> ScoreSummary:
    """Write the outputs from shards that separate jobs (--rank/--world-size) have finished."""
    plan = plan_input(config.data_path, config.chunk_size)
    prepare_work_dir(config, plan, is_writer=False)
    summary = merge_outputs(config, plan)
    write_atomic(Path(summary.outputs["summary"]), json.dumps(asdict(summary), indent=1) + "\n")
    return summary


def _strict_precheck(config: ScoreConfig, plan: InputPlan) -> None:
    """Under --strict, fail on record-level problems before loading the model (images are checked later)."""
    for index, (_, record) in enumerate(iter_records(plan.path)):
        problem = static_problem(record, config.caption, config.caption_field)
        if problem is None and index in plan.duplicates:
            problem = f"duplicate id: first at record {plan.duplicates[index]}"
        if problem is not None:
            ident = record.get("id") if isinstance(record, dict) else None
            raise ScoreError(f"record {index} (id {ident!r}) of {config.data_path}: {problem}. Fix it, or run "
                             "without --strict to list such records in errors.jsonl and score the rest")


def print_summary(summary: ScoreSummary, file=None) -> None:
    file = file or sys.stdout
    errors = sum(summary.errors.values())
    print(f"scored {summary.scored} of {summary.records} records; {errors} left out"
          + (f" ({', '.join(f'{k}: {v}' for k, v in summary.errors.items())})" if errors else ""), file=file)
    print(f"levels: {len(summary.counts)}, counts {summary.counts}", file=file)
    print(f"this run: {summary.images_scored_now} images in {summary.seconds:.1f} s "
          f"({summary.images_per_s:.1f} images/s end to end) on {summary.device}", file=file)
    for name, path in summary.outputs.items():
        print(f"  {name:9s} {path}", file=file)
