"""The scoring engine behind `aligngpt-score`: CLIP scores of image-caption pairs, chunked, resumable, sharded.

How a run goes:
1. Plan: one streaming pass over the data file: sha256 of its bytes, record count, the byte offset of every
   chunk of `chunk_size` records, duplicate ids.
2. Score: rank r of W takes chunks r, r+W, ... that have no shard yet. DataLoader workers share the
   batches of those chunks (worker w of n takes every n-th), read them from the chunk's offset, decode the
   images of a batch in parallel threads, preprocess them and tokenize the
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
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from aligngpt_plugin.core.fileio import write_json_atomic
from aligngpt_plugin.scoring.backends import ClipScorer, load_scorer
from aligngpt_plugin.scoring.config import ScoreConfig, ScoreError, ScoreSummary
from aligngpt_plugin.scoring.dataset import ChunkBatches, collate_identity
from aligngpt_plugin.scoring.distributed import (
    autocast_dtype,
    barrier,
    default_workers,
    from_environment,
    resolve_device,
)
from aligngpt_plugin.scoring.merge import merge_outputs
from aligngpt_plugin.scoring.records import InputError, InputPlan, iter_records, plan_input
from aligngpt_plugin.scoring.records import record_problem as static_problem
from aligngpt_plugin.scoring.work import prepare_work_dir, shard_path, write_shard


def score_chunks(config: ScoreConfig, plan: InputPlan, scorer: ClipScorer, device: torch.device,
                 rank: int = 0, world_size: int = 1) -> tuple[int, int, int]:
    """Score this rank's unfinished chunks and write their shards. Returns (chunks, images) scored now and
    the number of DataLoader workers used."""
    todo = [c for c in range(rank, plan.num_chunks, world_size) if not shard_path(config.output_dir, c).is_file()]
    if not todo:
        return 0, 0, 0
    workers = default_workers() if config.num_workers < 0 else config.num_workers
    batches = sum(-(-len(plan.chunk_range(c)) // config.batch_size) for c in todo)
    workers = min(workers, batches)  # workers share batches, not chunks: one chunk keeps them all busy
    dataset = ChunkBatches(plan, todo, config.image_folder, scorer.preprocess, scorer.tokenize, config)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, collate_fn=collate_identity, pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None, persistent_workers=False)
    dtype = autocast_dtype(config.precision, device)
    pending: dict[int, list[dict]] = {}
    received: dict[int, int] = {}
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
            received[batch["chunk"]] = received.get(batch["chunk"], 0) + 1
            if received[batch["chunk"]] == batch["batches"]:  # the chunk's last batch, from whichever worker
                write_shard(shard_path(config.output_dir, batch["chunk"]), pending.pop(batch["chunk"]))
                chunks_done += 1
                if config.chunk_delay_s:
                    time.sleep(config.chunk_delay_s)
    bar.close()
    return chunks_done, images, workers

def _to_device(tokens: Any, device: torch.device) -> Any:
    if isinstance(tokens, dict):
        return {k: v.to(device, non_blocking=True) for k, v in tokens.items()}
    return tokens.to(device, non_blocking=True)

def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=not enabled, smoothing=0.1, dynamic_ncols=True)

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
        rank, world, local_rank, owns_group = from_environment()
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
            barrier(device)  # rank 0 has cleared or created work/ before anyone writes a shard
            prepare_work_dir(config, plan, is_writer=False)
        if scorer is None:
            scorer = load_scorer(config.model, config.pretrained, device)
        chunks, images, workers = score_chunks(config, plan, scorer, device, rank, world)
        if owns_group or (world > 1 and config.rank is None):
            barrier(device)
        if rank != 0 or not config.merge or config.rank is not None:
            return None
        summary = merge_outputs(config, plan)
        seconds = time.perf_counter() - started
        summary.chunks_scored_now, summary.images_scored_now, summary.workers = chunks, images, workers
        summary.seconds = round(seconds, 3)
        summary.images_per_s = round(images / seconds, 2) if seconds else 0.0
        summary.device = f"{device}" + (f" x{world} ranks" if world > 1 else "")
        write_json_atomic(summary.outputs["summary"], asdict(summary), indent=1)
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
    write_json_atomic(summary.outputs["summary"], asdict(summary), indent=1)
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
    print(f"this run: {summary.images_scored_now} images in {summary.seconds:.1f} s, {summary.workers} decode workers "
          f"({summary.images_per_s:.1f} images/s end to end) on {summary.device}", file=file)
    if summary.filtered is not None:
        print(f"filtered dataset: {summary.filtered} records scoring at least {summary.filter_threshold:.4f}",
              file=file)
    for name, path in summary.outputs.items():
        print(f"  {name:9s} {path}", file=file)
