"""Datasets for training the HF-native AlignGPT with TRL: loading, LLaVA JSON -> TRL's format, checking records.

    dataset = load_sft_dataset("data/pretrain_levels.json", image_folder="data/images")  # or a folder / .parquet
    dataset, skipped = check_records(dataset, num_levels=8, stage=1, on_bad="error")

The format is TRL's vision-language one (`messages` + `images`, or `prompt`/`completion` + `images`) plus an
integer `align_level` column (0..N-1, what `aligngpt-score` writes; None on text-only rows). `check_records`
runs before the first step: a record whose level is out of range, missing where stage 1 needs one, or whose
image is missing or unreadable stops the run with a `RecordError` naming it (or is dropped and counted).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

from aligngpt_plugin.core.trl_format import (
    ALIGN_LEVEL,
    RecordError,
    llava_to_trl_record,
    record_label,
    to_trl_dataset,
)

logger = logging.getLogger(__name__)

__all__ = ["ALIGN_LEVEL", "RecordError", "check_records", "llava_json_to_trl", "load_sft_dataset", "per_turn_records"]

# stage 1 (pre-training: each image's own level) and stage 2 (fine-tuning: the gate's combination)
STAGE_NAMES = {1: "pretrain", 2: "finetune", "pretrain": "pretrain", "finetune": "finetune"}


def read_llava_json(path: str | Path) -> list[dict[str, Any]]:
    """The records of a LLaVA data file: a JSON array, or JSON Lines (one record a line)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip()[:1] == "[":
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not a JSON array or JSON Lines file ({e}); give LLaVA's data file") from e


def llava_json_to_trl(json_path: str | Path, image_folder: str | Path | None):
    """LLaVA's data file as a TRL vision-language dataset.

    Args:
        json_path: a LLaVA JSON array or JSON Lines file (`conversations` with human/gpt turns and `<image>`,
            `image` relative to `image_folder`, optional `id` and `align_level`).
        image_folder: the folder the `image` paths are relative to.
    Returns:
        datasets.Dataset with `id`, `messages` (user/assistant roles, content lists with {"type": "image"} and
        {"type": "text", "text": ...} blocks), `images` (a list of images: the Image feature over the file
        paths, read when a row is accessed) and `align_level` (int or None).
    Raises:
        RecordError naming the first record that cannot be converted.
    """
    records = read_llava_json(json_path)
    return to_trl_dataset(llava_to_trl_record(r, i, image_folder) for i, r in enumerate(records))


def load_sft_dataset(path: str | Path, split: str = "train", image_folder: str | Path | None = None):
    """The training dataset at `path`.

    Args:
        path: a folder written by `datasets`' `save_to_disk` (a Dataset, or a DatasetDict and `split`), a
            Parquet file, or a LLaVA JSON / JSON Lines file (then `image_folder` is needed).
        split: the split of a DatasetDict folder.
        image_folder: the folder a LLaVA JSON's image paths are relative to.
    Returns:
        datasets.Dataset.
    Raises:
        RecordError: the path does not exist, is of no known kind, or lacks the split or the image folder.
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: no such dataset (give a `save_to_disk` folder, a .parquet file, or a LLaVA "
                          ".json/.jsonl file with --image_folder)")
    if path.is_dir():
        if not any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            raise RecordError(f"{path}: a folder but not one `datasets`' save_to_disk wrote (no state.json or "
                              "dataset_dict.json)")
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise RecordError(f"{path}: no split {split!r} (it has {', '.join(loaded)}); give "
                                  "--dataset_train_split")
            loaded = loaded[split]
        return loaded
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(path))
    if suffix in (".json", ".jsonl"):
        if image_folder is None:
            raise RecordError(f"{path} is a LLaVA data file: give --image_folder, the folder its image paths are "
                              "relative to")
        if not Path(image_folder).is_dir():
            raise RecordError(f"--image_folder {image_folder}: no such folder")
        return llava_json_to_trl(path, image_folder)
    raise RecordError(f"{path}: not a dataset folder, .parquet, .json or .jsonl file")


def per_turn_records(dataset):
    """Conversational `messages` records as prompt/completion records, one per assistant turn: the prompt is the
    conversation before the turn, the completion the turn itself.

    TRL computes the loss on the completion only (`completion_only_loss`), so each answer is a target once, seen
    after the same history as in the whole conversation: a causal model gives each answer token the same loss
    as in LLaVA's multi-turn record, whose `preprocess_v1` masks everything but the answers. This is how
    LLaVA's multi-turn instruction data trains through TRL where `assistant_only_loss` is unavailable (transformers
    < 5.18 on image data); a record of k answers costs k rows (the image and history are read k times).

    Args:
        dataset: datasets.Dataset with `messages` (user/assistant turns), `images`, and optional `id` and
            `align_level` (copied to every row of the record).
    Returns:
        datasets.Dataset with `prompt`, `completion` (one assistant message), `images`, `id` (`<id>#<k>`, k the
        answer's number from 1) and `align_level`.
    Raises:
        RecordError naming a record without an assistant turn.
    """
    from datasets import Image, List

    if "messages" not in dataset.column_names:
        raise RecordError(f"per_turn_records: the dataset has columns {dataset.column_names}, not `messages`")
    features = dataset.features
    raw = "images" in features and isinstance(features["images"], List) and isinstance(features["images"].feature,
                                                                                        Image)
    if raw:  # keep the files as they are: no decoding and re-encoding of every image
        dataset = dataset.cast_column("images", List(Image(decode=False)))

    def split(batch, indices):
        out = {name: [] for name in ("prompt", "completion", *[c for c in batch if c != "messages"])}
        for j, messages in enumerate(batch["messages"]):
            answers = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
            if not answers:
                raise RecordError(f"{record_label({'id': batch.get('id', [None] * len(indices))[j]}, indices[j])}: "
                                  "no assistant turn to train on")
            for n, k in enumerate(answers, 1):
                out["prompt"].append(messages[:k])
                out["completion"].append([messages[k]])
                for name in batch:
                    if name == "messages":
                        continue
                    value = batch[name][j]
                    out[name].append(f"{value if value is not None else indices[j]}#{n}" if name == "id" else value)
        return out

    result = dataset.map(split, batched=True, with_indices=True, remove_columns=dataset.column_names)
    if raw:
        result = result.cast_column("images", List(Image()))
    return result


def _image_problem(image: Any, mode: str = "decode") -> str | None:
    """Why an image entry cannot be read (None if it can). `image` is what the Image feature holds without
    decoding ({"path", "bytes"}), a path string, or a PIL image; `mode` "decode" decodes it (at 1/8 scale for
    JPEG), "exists" only looks for the file."""
    from PIL import Image

    if image is None:
        return "an empty image entry"
    if isinstance(image, Image.Image):
        return None
    data, path = (image.get("bytes"), image.get("path")) if isinstance(image, dict) else (None, str(image))
    if data is None and (not path or not Path(path).is_file()):
        return f"image {path!r} does not exist"
    if mode == "exists":
        return None
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as picture:
            picture.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; a truncated or corrupt file still fails
            picture.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        return f"image {path or '(embedded bytes)'!r} cannot be read ({type(e).__name__}: {e})"
    return None


def _image_problems(rows, column: str | None, mode: str, threads: int | None) -> dict[int, str]:
    """{row index: the first problem of its images} over `rows` (the image column undecoded), in a thread pool."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    if column is None or mode == "none":
        return {}
    entries = []
    for index, value in enumerate(rows[column]):
        values = ([] if value is None else [value]) if column == "image" else list(value or [])
        entries.extend((index, image) for image in values)
    threads = threads or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        found = pool.map(lambda entry: _image_problem(entry[1], mode), entries, chunksize=64)
        problems: dict[int, str] = {}
        for (index, _), problem in zip(entries, found):
            if problem and index not in problems:
                problems[index] = problem
    return problems


def _placeholders(row: dict[str, Any]) -> int | None:
    """The {"type": "image"} blocks of a conversational row (None: string contents, where TRL adds them)."""
    turns = row.get("messages") or [*(row.get("prompt") or []), *(row.get("completion") or [])]
    if not isinstance(turns, list) or not turns or any(isinstance(t.get("content"), str) for t in turns):
        return None
    return sum(1 for t in turns for block in (t.get("content") or []) if block.get("type") == "image")


def check_records(dataset, num_levels: int, stage: int | str, on_bad: str = "error", images: str = "decode",
                  threads: int | None = None):
    """Check every record before training starts; stop at a bad one, or drop and count the bad ones.

    A record is bad when its `align_level` is outside 0..num_levels-1, when it has an image but no level in
    stage 1 (pre-training reads `E[level]` of each image-caption pair), when its number of images differs from
    its `{"type": "image"}` blocks, or when an image is missing or cannot be decoded.

    Args:
        dataset: a `datasets.Dataset` in TRL's VLM format with `images` (or `image`) and `align_level`.
        num_levels: N, the model's number of levels (`config.alignment["num_levels"]`).
        stage: 1 / "pretrain" or 2 / "finetune".
        on_bad: "error" (raise at the first bad record) or "skip" (drop the bad records, log how many and why).
        images: "decode" (open and decode every image: catches truncated and corrupt files), "exists" (only
            look for the files) or "none" (no image check).
        threads: image checks run in this many threads (default: the CPU count, at most 16; decoding releases
            the GIL).
    Returns:
        (dataset, skipped): the dataset (without the bad records under "skip") and how many were dropped.
    Raises:
        RecordError naming the record (its index and id) and what to do.
    """
    import datasets

    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad={on_bad!r}; choose error or skip")
    if images not in ("decode", "exists", "none"):
        raise ValueError(f"images={images!r}; choose decode, exists or none")
    if stage not in STAGE_NAMES:
        raise ValueError(f"stage={stage!r}; choose 1 (pretrain) or 2 (finetune)")
    pretrain = STAGE_NAMES[stage] == "pretrain"
    column = "images" if "images" in dataset.column_names else "image" if "image" in dataset.column_names else None
    if pretrain and ALIGN_LEVEL not in dataset.column_names:
        raise RecordError(f"the dataset has no `{ALIGN_LEVEL}` column; stage 1 needs each image's level: score the "
                          "data with aligngpt-score (its TRL output has the column)")
    view = dataset
    if column is not None:  # paths and bytes, not decoded pictures: each file is opened once, below
        feature = dataset.features[column]
        if isinstance(feature, datasets.Image):
            view = view.cast_column(column, datasets.Image(decode=False))
        elif isinstance(getattr(feature, "feature", None), datasets.Image):
            view = view.cast_column(column, datasets.List(datasets.Image(decode=False)))
    wanted = [c for c in (column, ALIGN_LEVEL, "id", "messages", "prompt", "completion") if c in view.column_names]
    rows = view.select_columns(wanted)
    image_problems = _image_problems(rows, column, images, threads)
    bad: list[tuple[int, str]] = []
    for index, row in enumerate(rows):
        row_images = row.get(column) if column else None
        row_images = ([] if row_images is None else [row_images]) if column == "image" else list(row_images or [])
        level = row.get(ALIGN_LEVEL)
        problem = None
        if level is not None and not 0 <= int(level) < num_levels:
            problem = (f"`{ALIGN_LEVEL}` {level} is outside 0..{num_levels - 1} (the model has {num_levels} levels: "
                       f"score the data with --levels {num_levels}, or pass the matching model)")
        elif pretrain and row_images and level is None:
            problem = (f"no `{ALIGN_LEVEL}`: stage 1 needs each image's level (score the data with aligngpt-score, "
                       "or drop the record with --align_bad_records skip)")
        else:
            count = _placeholders(row)
            if count is not None and count != len(row_images):
                problem = f"{len(row_images)} image(s) but {count} {{'type': 'image'}} block(s) in its messages"
            else:
                problem = image_problems.get(index)
        if problem:
            where = record_label(row, index)
            if on_bad == "error":
                raise RecordError(f"{where}: {problem}; fix or remove it (or pass --align_bad_records skip to drop "
                                  "such records)")
            bad.append((index, f"{where}: {problem}"))
    if not bad:
        return dataset, 0
    logger.warning("dropped %d bad record(s) of %d (--align_bad_records skip); first: %s", len(bad), len(dataset),
                   "; ".join(reason for _, reason in bad[:3]))
    dropped = {i for i, _ in bad}
    return dataset.select([i for i in range(len(dataset)) if i not in dropped]), len(bad)
