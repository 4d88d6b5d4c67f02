"""The data side of scoring: DataLoader workers read their chunks of the data file, decode the images of a
batch in threads, preprocess them and tokenize the captions; a bad record becomes an error line, never an
exception."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from aligngpt_plugin.scoring.config import ScoreConfig
from aligngpt_plugin.scoring.decoding import prepare_encoded
from aligngpt_plugin.scoring.records import InputPlan, caption_of, iter_records
from aligngpt_plugin.scoring.records import record_problem as static_problem
from aligngpt_plugin.scoring.shards import collate_prepared


def load_image(path: Path):
    """The image as RGB, fully decoded (a truncated file fails here, not later)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")

def path_outside(folder: Path, image: str) -> str | None:
    """The error for an image path that resolves outside the image folder (absolute, `..`, a symlink out),
    whatever the file is; None for one inside."""
    root = folder.resolve()
    resolved = (folder / image).resolve()
    if not resolved.is_relative_to(root):
        return f"image outside the image folder: {image!r} resolves to {resolved}, outside {root}"
    return None


def image_problem(path: Path, error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return f"image file not found: {path}"
    return f"cannot decode image: {path}: {type(error).__name__}: {error}"


class ChunkBatches(torch.utils.data.IterableDataset):
    """Yields ready batches of the given chunks; worker w of n decodes every n-th batch of the run, so all
    workers keep busy however few chunks there are. A batch says its chunk, its place in the chunk and
    how many the chunk has, so the chunk's shard is written when the last of them arrives. A chunk's batches
    depend only on the chunk, not on which worker made them.

    Nothing raises for a bad record: its problem comes back in the batch's `errors`.
    """

    def __init__(self, plan: InputPlan, chunks: list[int], image_folder: str, preprocess, tokenize,
                 config: ScoreConfig, send_jpeg: bool = False):
        self.plan, self.chunks, self.folder = plan, chunks, Path(image_folder)
        self.send_jpeg = send_jpeg  # JPEG bytes go to the device undecoded (decoding.py)
        self.preprocess, self.tokenize = preprocess, tokenize
        self.batch_size, self.threads = config.batch_size, config.decode_threads
        self.caption, self.caption_field = config.caption, config.caption_field

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        counter = 0  # the run's batch number: the same on every worker, which each reads every chunk's records
        try:
            for chunk in self.chunks:
                items, errors = self._chunk_items(chunk)
                batches = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)] or [[]]
                for b, batch_items in enumerate(batches):
                    if counter % workers == worker:
                        out = self._batch(batch_items, pool)
                        out["chunk"], out["batch"], out["batches"] = chunk, b, len(batches)
                        if b == 0:
                            out["errors"] = errors + out["errors"]
                        yield out
                    counter += 1
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _chunk_items(self, chunk: int) -> tuple[list[tuple[int, Any, str, str]], list[dict]]:
        """The chunk's scorable records (index, id, image, caption) and the error lines of the others."""
        span = self.plan.chunk_range(chunk)
        records = islice(iter_records(self.plan.path, self.plan.chunk_offsets[chunk]), len(span))
        items: list[tuple[int, Any, str, str]] = []
        errors: list[dict] = []
        for index, (_, record) in zip(span, records):
            problem = static_problem(record, self.caption, self.caption_field)
            if problem is None and index in self.plan.duplicates:
                problem = f"duplicate id: first at record {self.plan.duplicates[index]}"
            if problem is not None:
                ident = record.get("id") if isinstance(record, dict) else None
                image = record.get("image") if isinstance(record, dict) else None
                errors.append({"index": index, "id": ident, "image": image, "error": problem})
                continue
            items.append((index, record["id"], record["image"], caption_of(record, self.caption, self.caption_field)))
        return items, errors

    def _prepare(self, item: tuple[int, Any, str, str]):
        path = self.folder / item[2]
        outside = path_outside(self.folder, item[2])
        if outside:
            return outside
        try:
            if self.send_jpeg:
                return prepare_encoded(path.read_bytes(), self.preprocess, True)
            return "pixels", self.preprocess(load_image(path))
        except Exception as e:  # any failure of one image is that record's error, never the run's
            return image_problem(path, e)

    def _batch(self, items: list[tuple[int, Any, str, str]], pool) -> dict:
        """Rows: ids (index, id) of the decoded items, with their pixels or JPEG bytes and tokens."""
        prepared = list(pool.map(self._prepare, items)) if pool is not None and len(items) > 1 else \
            [self._prepare(item) for item in items]
        batch = collate_prepared([(item[0], item[1]) for item in items], [item[3] for item in items], prepared,
                                 self.tokenize)
        batch["errors"] = [{"index": item[0], "id": item[1], "image": item[2], "error": p}
                           for item, p in zip(items, prepared) if isinstance(p, str)]
        batch["image_names"] = {item[0]: item[2] for item in items}  # for errors found on the device
        return batch


def collate_identity(batch):
    return batch
