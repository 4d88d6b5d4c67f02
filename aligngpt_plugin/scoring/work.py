"""The work folder of a scoring run: one shard per chunk of records, and the manifest that ties them to the
run's input and settings (a restart with other settings is refused instead of mixing shards)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from aligngpt_plugin.core.fileio import write_json_atomic, write_jsonl_atomic
from aligngpt_plugin.scoring.config import ScoreConfig, ScoreError
from aligngpt_plugin.scoring.records import InputPlan

WORK = "work"

MANIFEST_KEYS = ("input_sha256", "records", "chunk_size", "model", "pretrained", "caption", "caption_field",
                 "image_folder")


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
        write_json_atomic(manifest_file, wanted, indent=1)

def write_shard(path: Path, lines: list[dict]) -> None:
    lines = sorted(lines, key=lambda x: x["index"])
    write_jsonl_atomic(path, lines)
