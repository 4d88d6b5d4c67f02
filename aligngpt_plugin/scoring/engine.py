"""The scoring engine behind `aligngpt-score`: CLIP scores of image-caption pairs, chunked, resumable, sharded.

How a run goes:
1. Plan: one streaming pass over the data file: sha256 of its bytes, record count, the byte offset of every
   chunk of `chunk_size` records, duplicate ids.
2. Score: rank r of W takes chunks r, r+W, ... that have no shard yet. A reader thread parses each of
   those chunks once, from its offset, into batch tasks; DataLoader workers share the tasks (each task goes
   to one worker), decode the images of a batch in parallel threads, preprocess them and tokenize the
   captions in one call; the main process runs CLIP under autocast. A finished chunk is written to
   `work/chunk_NNNNNN.jsonl` atomically (temporary file + os.replace), so a killed run loses at most the
   chunks in flight and a restart skips finished ones. A chunk's batches depend only on the chunk, so a
   resumed or sharded run computes the same numbers as one uninterrupted run.
3. Merge (rank 0, after a barrier; or `merge_only` later): scores.jsonl, errors.jsonl, the dataset with
   `align_level`, levels.json and the histogram, all written atomically.

Both kinds of input are a `Source` (sources.py: JSON chunks, webdataset shards) behind one scoring loop
(`score_units`) and one merge. Webdataset shards go the same way with the input shard as the chunk: no
planning pass (the
shard's sha256 is taken while it is read), rank r of W takes shards r, r+W, ..., and a finished shard's
outputs are scores/NAME.parquet, errors/NAME.jsonl and, last, work/shard_NAME.json, which marks it done.

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
from functools import partial
from pathlib import Path
from typing import Any

import torch

from aligngpt_plugin.core.fileio import write_json_atomic
from aligngpt_plugin.scoring.backends import ClipScorer, load_scorer
from aligngpt_plugin.scoring.config import ScoreConfig, ScoreError, ScoreSummary
from aligngpt_plugin.scoring.dataset import PreparedBatches, collate_identity
from aligngpt_plugin.scoring.decoding import (
    DeviceFeed,
    JpegDecoder,
    choose_decode,
    cpu_decoders,
    on_device,
    resize_crop_of,
)
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
from aligngpt_plugin.scoring.shards import plan_shards
from aligngpt_plugin.scoring.sources import ReadAhead, Source, source_of
from aligngpt_plugin.scoring.work import prepare_shard_work_dir, prepare_work_dir


def score_units(config: ScoreConfig, source: Source, scorer: ClipScorer, device: torch.device,
                rank: int = 0, world_size: int = 1) -> tuple[int, int, int]:
    """Score this rank's unfinished units of `source` (chunks or shards) and write each one's outputs when its
    last batch arrives.

    Args:
        config: the run's settings.
        source: the input's units (chunks of a JSON file, or webdataset shards).
        scorer: the CLIP scorer.
        device: the model's device.
        rank: this rank (units are dealt round robin).
        world_size: how many ranks share the units.
    Returns:
        (units scored now, images scored now, DataLoader workers used).
    """
    todo = source.todo(rank, world_size)
    if not todo:
        return 0, 0, 0
    workers = default_workers() if config.num_workers < 0 else config.num_workers
    batches = source.batches_in(todo)
    if batches is not None:
        workers = min(workers, batches)  # workers share batches, not units: one unit keeps them all busy
    decoder = _decoder(config, scorer, device, workers)
    dataset = PreparedBatches(scorer.preprocess, scorer.tokenize, config, send_jpeg=decoder is not None)
    reader = ReadAhead(source.tasks(todo))
    pending: dict[int, dict] = {}
    total = source.records_in(todo)
    where = f"rank {rank} of {world_size}" if world_size > 1 else ""
    desc = "scoring" if total is not None else f"scoring {len(todo)} {source.unit_name}s"
    bar = _progress(total, config.progress and rank == 0, f"{desc} ({where})" if where else desc)
    done = images = 0
    try:
        with _scoring_mode(config, device):
            feed = DeviceFeed(_loader(dataset, reader, workers, device), device,
                              partial(on_device, decoder=decoder, preprocess=scorer.preprocess, device=device))
            for batch in feed:
                unit = batch["unit"]
                state = pending.setdefault(unit, {"rows": [], "errors": [], "received": 0, "batches": None})
                if batch["errors"] and config.strict:
                    raise ScoreError(source.problem(unit, batch["errors"][0], strict_hint=True))
                state["errors"].extend(batch["errors"])
                rows, failed = _score_batch(batch, scorer, device, embeddings=config.embeddings)
                for ident, reason in failed:
                    line = source.error_line(batch, ident, reason)
                    if config.strict:
                        raise ScoreError(source.problem(unit, line, strict_hint=False))
                    state["errors"].append(line)
                state["rows"].extend(rows)
                images += len(rows)
                bar.update(len(batch["ids"]) + len(batch["errors"]))
                state["received"] += 1
                if batch["last"]:
                    state.update(batches=batch["batches"], facts=batch["facts"])
                if state["received"] == state["batches"]:  # the unit's batches are all in
                    source.finish(unit, state["rows"], state["errors"], state["facts"])
                    del pending[unit]
                    done += 1
                    if config.chunk_delay_s:
                        time.sleep(config.chunk_delay_s)
    finally:
        reader.close()
        dataset.close()
        bar.close()
    return done, images, workers


def _decoder(config: ScoreConfig, scorer: ClipScorer, device: torch.device, workers: int) -> JpegDecoder | None:
    """The GPU JPEG decoder when --decode picks the device (decoding.py), else None (workers decode)."""
    decoders = cpu_decoders(workers, config.decode_threads)  # like with like: every CPU decoder of the run
    where, why = choose_decode(config.decode, device, scorer.preprocess, decoders)
    if config.decode != "cpu" and device.type == "cuda":
        print(f"aligngpt-score: decoding JPEGs on the {'GPU' if where == 'device' else 'CPU'} ({why})",
              file=sys.stderr)
    return JpegDecoder(device, resize_crop_of(scorer.preprocess)) if where == "device" else None


def _loader(dataset, tasks, workers: int, device: torch.device):
    """Batches of `dataset` for the tasks, in the tasks' order; each task goes to one worker."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=tasks, num_workers=workers, collate_fn=collate_identity,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None, persistent_workers=False)


def _scoring_mode(config: ScoreConfig, device: torch.device):
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    dtype = autocast_dtype(config.precision, device)
    if dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=dtype))
    return stack


def _score_batch(batch: dict, scorer: ClipScorer, device: torch.device,
                 embeddings: bool) -> tuple[list[tuple], list[tuple]]:
    """Rows (id, score[, image embedding, text embedding]) of the batch's images (pixels already on the device,
    `decoding.on_device`), and (id, reason) of the JPEGs that failed to decode on the device and in PIL."""
    if not batch["ids"]:
        return [], []
    pixels, failed = batch["pixels"], batch["failed"]
    ids, tokens = batch["ids"], batch["tokens"]
    if failed:
        bad = {row for row, _ in failed}
        keep = [r for r in range(len(ids)) if r not in bad]
        failed = [(ids[row], reason) for row, reason in failed]
        ids, tokens = [ids[r] for r in keep], _rows(tokens, keep)
    if pixels is None or not ids:
        return [], failed
    image, text = scorer.embed(scorer.pixels(pixels, device), _to_device(tokens, device))
    scores = (image * text).sum(dim=-1).cpu().tolist()  # a sync point, once per batch
    if not embeddings:
        return list(zip(ids, scores)), failed
    return list(zip(ids, scores, image.cpu().tolist(), text.cpu().tolist())), failed


def _rows(tokens: Any, keep: list[int]) -> Any:
    if isinstance(tokens, dict):
        return {k: v[keep] for k, v in tokens.items()}
    return tokens[keep]


def _to_device(tokens: Any, device: torch.device) -> Any:
    if isinstance(tokens, dict):
        return {k: v.to(device, non_blocking=True) for k, v in tokens.items()}
    return tokens.to(device, non_blocking=True)

def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc=desc, disable=not enabled, smoothing=0.1, dynamic_ncols=True)

def score_dataset(config: ScoreConfig, scorer: ClipScorer | None = None) -> ScoreSummary | None:
    """Score, then (rank 0) merge. Works the same on one CPU, one GPU, or under torchrun on many.

    Args:
        config: the run's settings.
        scorer: a loaded scorer (None: load `config.model` on this rank's device).
    Returns:
        The summary on the rank that merged, None on the others (and when merge=False).
    Raises:
        InputError: unreadable data file. ScoreError: --strict, inconsistent outputs. LevelSplitError: levels
        cannot be split as asked.
    """
    started = time.perf_counter()
    if config.rank is not None:
        rank, world, local_rank, owns_group = config.rank, config.world_size, 0, False
    else:
        rank, world, local_rank, owns_group = from_environment()
    device = resolve_device(config, local_rank)
    shards = config.shard_input
    try:
        if shards:
            plan = plan_shards(config.data_path)
            prepare = prepare_shard_work_dir
        else:
            if not Path(config.image_folder).is_dir():
                raise InputError(f"image folder {config.image_folder} not found")
            plan = plan_input(config.data_path, config.chunk_size)
            if config.strict:
                _strict_precheck(config, plan)
            prepare = prepare_work_dir
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        prepare(config, plan, is_writer=rank == 0 or config.rank is not None)
        if world > 1 and owns_group:
            barrier(device)  # rank 0 has cleared or created work/ before anyone writes a shard
            prepare(config, plan, is_writer=False)
        if scorer is None:
            scorer = load_scorer(config.model, config.pretrained, device)
        source = source_of(config, plan)
        chunks, images, workers = score_units(config, source, scorer, device, rank, world)
        if owns_group or (world > 1 and config.rank is None):
            barrier(device)
        if rank != 0 or not config.merge or config.rank is not None:
            return None
        summary = merge_outputs(config, source)
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
    """Write the outputs from shards that separate jobs (--rank/--world-size) have finished.

    Args:
        config: the run's settings (as the jobs had them).
    Returns:
        The summary (also written to summary.json).
    """
    if config.shard_input:
        plan = plan_shards(config.data_path)
        prepare_shard_work_dir(config, plan, is_writer=False)
    else:
        plan = plan_input(config.data_path, config.chunk_size)
        prepare_work_dir(config, plan, is_writer=False)
    summary = merge_outputs(config, source_of(config, plan))
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
    """Print what a run scored, left out and wrote.

    Args:
        summary: the run's summary.
        file: where to print (default stdout).
    """
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
