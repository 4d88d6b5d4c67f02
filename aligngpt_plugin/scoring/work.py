"""The work folder of a scoring run: one shard per chunk of records (JSON input) or one output set per input
shard (webdataset input), and the manifest that ties them to the run's input and settings (a restart with
other settings is refused instead of mixing them)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from aligngpt_plugin.core.fileio import atomic_path, write_json_atomic, write_jsonl_atomic
from aligngpt_plugin.scoring.config import ScoreConfig, ScoreError
from aligngpt_plugin.scoring.records import InputPlan

WORK = "work"

MANIFEST_KEYS = ("input_sha256", "records", "chunk_size", "model", "pretrained", "caption", "caption_field",
                 "image_folder")


def shard_path(output_dir: str | Path, chunk: int) -> Path:
    """Where the scores of one chunk of a JSON input go.

    Args:
        output_dir: the run's output folder.
        chunk: the chunk's number.
    Returns:
        work/chunk_NNNNNN.jsonl under it.
    """
    return Path(output_dir) / WORK / f"chunk_{chunk:06d}.jsonl"


def manifest_of(config: ScoreConfig, plan: InputPlan) -> dict:
    """The manifest of a JSON-input run: what a restart must agree on (input hash, counts, model, caption
    settings, image folder), plus the input path and all settings for the record.

    Args:
        config: the run's settings.
        plan: the input's plan.
    Returns:
        The manifest dict (work/run.json).
    """
    return {"input_sha256": plan.sha256, "records": plan.records, "chunk_size": plan.chunk_size,
            "model": config.model, "pretrained": config.pretrained, "caption": config.caption,
            "caption_field": config.caption_field, "image_folder": str(Path(config.image_folder).resolve()),
            "input_path": str(Path(config.data_path).resolve()), "config": asdict(config)}


def _claim_work_dir(config: ScoreConfig, wanted: dict, keys: tuple[str, ...], is_writer: bool,
                    outputs: tuple[str, ...] = ()) -> None:
    """Create work/ with the manifest `wanted`, or check that an existing one agrees on `keys`.
    --overwrite (rank 0) first discards work/ and the `outputs` folders of an earlier run."""
    work = Path(config.output_dir) / WORK
    manifest_file = work / "run.json"
    if is_writer and config.overwrite and config.rank in (None, 0) and work.exists():
        shutil.rmtree(work)
        for folder in outputs:
            shutil.rmtree(Path(config.output_dir) / folder, ignore_errors=True)
    if manifest_file.is_file():
        found = json.loads(manifest_file.read_text())
        changed = [k for k in keys if found.get(k) != wanted[k]]
        if changed:
            detail = "; ".join(f"{k}: {_short(found.get(k))} then, {_short(wanted[k])} now" for k in changed)
            raise ScoreError(f"{config.output_dir} holds the outputs of another run ({detail}). Use another "
                             "--output, or --overwrite to discard them")
        return
    if is_writer:
        work.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manifest_file, wanted, indent=1)


def prepare_work_dir(config: ScoreConfig, plan: InputPlan, is_writer: bool) -> None:
    """work/ for JSON input: create it with its manifest, or refuse one made from another input or settings.

    Args:
        config: the run's settings (`--overwrite` discards an earlier run's work/ first).
        plan: the input's plan.
        is_writer: whether this rank creates work/ (others only check it).
    Raises:
        ScoreError: work/ belongs to another run.
    """
    _claim_work_dir(config, manifest_of(config, plan), MANIFEST_KEYS, is_writer)


def write_shard(path: Path, lines: list[dict]) -> None:
    """Write one chunk's score lines, in record order, atomically.

    Args:
        path: the chunk's file (see `shard_path`).
        lines: one dict per record, with its "index".
    """
    lines = sorted(lines, key=lambda x: x["index"])
    write_jsonl_atomic(path, lines)


# ------------------------------------------------------------------------------------------ webdataset shards

SHARD_MANIFEST_KEYS = ("shards", "model", "pretrained", "caption_field", "embeddings")


def shard_outputs(output_dir: str | Path, name: str) -> dict[str, Path]:
    """Where one input shard's outputs go; `done` is written last and marks the shard finished.

    Args:
        output_dir: the run's output folder.
        name: the shard's name (see `shards.shard_name`).
    Returns:
        {"scores": scores/NAME.parquet, "errors": errors/NAME.jsonl, "done": work/shard_NAME.json}.
    """
    out = Path(output_dir)
    return {"scores": out / "scores" / f"{name}.parquet", "errors": out / "errors" / f"{name}.jsonl",
            "done": out / WORK / f"shard_{name}.json"}


def prepare_shard_work_dir(config: ScoreConfig, plan, is_writer: bool) -> None:
    """work/ for shard input: create it with its manifest, or refuse one made from other shards or settings.

    Args:
        config: the run's settings (`--overwrite` discards an earlier run's work/, scores/ and errors/ first).
        plan: the ShardPlan.
        is_writer: whether this rank creates work/ (others only check it).
    Raises:
        ScoreError: work/ belongs to another run.
    """
    wanted = {"shards": plan.identity(), "model": config.model, "pretrained": config.pretrained,
              "caption_field": config.caption_field, "embeddings": config.embeddings, "input": config.data_path,
              "config": asdict(config)}
    _claim_work_dir(config, wanted, SHARD_MANIFEST_KEYS, is_writer, outputs=("scores", "errors"))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 120 else text[:117] + "..."


def write_shard_outputs(config: ScoreConfig, name: str, url: str, scored: list[tuple], errors: list[dict],
                        sha256: str, size: int) -> None:
    """One finished shard: scores/NAME.parquet (key, score[, image_embedding, text_embedding]) in the shard's
    order, errors/NAME.jsonl, then work/shard_NAME.json, each atomically; the last marks the shard done.

    Args:
        config: the run's settings (`embeddings` adds the two [D] float32 list columns).
        name: the shard's name.
        url: its path or URL (recorded in the done file).
        scored: (position, key, score[, image embedding, text embedding]) per scored sample.
        errors: one dict per sample left out, with its "position".
        sha256: the shard's hash.
        size: the shard's size in bytes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = shard_outputs(config.output_dir, name)
    scored = sorted(scored, key=lambda row: row[0])
    columns = {"key": pa.array([row[1] for row in scored], pa.string()),
               "score": pa.array([row[2] for row in scored], pa.float32())}
    if config.embeddings:
        for k, column in ((3, "image_embedding"), (4, "text_embedding")):
            dim = len(scored[0][k]) if scored else 0
            flat = pa.array([v for row in scored for v in row[k]], pa.float32())
            columns[column] = pa.FixedSizeListArray.from_arrays(flat, dim) if scored else \
                pa.array([], pa.list_(pa.float32()))
    with atomic_path(paths["scores"]) as tmp:
        pq.write_table(pa.table(columns), tmp)
    errors = sorted(errors, key=lambda e: e["position"])
    write_jsonl_atomic(paths["errors"], [{"shard": name, **e} for e in errors])
    write_json_atomic(paths["done"], {"shard": url, "sha256": sha256, "bytes": size,
                                      "samples": len(scored) + len(errors), "scored": len(scored),
                                      "errors": len(errors)}, indent=1)
