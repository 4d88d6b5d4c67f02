"""The data side of scoring: DataLoader workers take batch tasks (read once by the reader, sources.py),
decode their images in threads, preprocess them and tokenize the captions; a bad record becomes an error
line, never an exception."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from aligngpt_plugin.scoring.config import ScoreConfig
from aligngpt_plugin.scoring.decoding import prepare_encoded


def load_image(path: Path):
    """The image as RGB, fully decoded (a truncated file fails here, not later).

    Args:
        path: the image file.
    Returns:
        A PIL RGB image.
    """
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")

def path_outside(folder: Path, image: str) -> str | None:
    """The error for an image path that resolves outside the image folder (absolute, `..`, a symlink out),
    whatever the file is; None for one inside.

    Args:
        folder: the image folder.
        image: the record's image path, relative to it.
    Returns:
        The error message, or None.
    """
    root = folder.resolve()
    resolved = (folder / image).resolve()
    if not resolved.is_relative_to(root):
        return f"image outside the image folder: {image!r} resolves to {resolved}, outside {root}"
    return None


def image_problem(path: Path, error: BaseException) -> str:
    """The error line of an image that could not be read.

    Args:
        path: the image file.
        error: what reading it raised.
    Returns:
        "image file not found: ..." or "cannot decode image: ...".
    """
    if isinstance(error, FileNotFoundError):
        return f"image file not found: {path}"
    return f"cannot decode image: {path}: {type(error).__name__}: {error}"


class PreparedBatches(torch.utils.data.Dataset):
    """The workers' side: a batch task (sources.py) in, a ready batch out. Its images are decoded in
    `decode_threads` threads (or their JPEG bytes passed on for the device), preprocessed, and its captions
    tokenized in one call. Records come with the task, so a worker never reads the input itself.

    Nothing raises for a bad record: its problem comes back in the batch's `errors`. The batch says its unit,
    its number in the unit and, on the unit's last batch, how many the unit has and the unit's facts.
    """

    def __init__(self, preprocess, tokenize, config: ScoreConfig, send_jpeg: bool = False):
        self.send_jpeg = send_jpeg  # JPEG bytes go to the device undecoded (decoding.py)
        self.preprocess, self.tokenize, self.threads = preprocess, tokenize, config.decode_threads
        self.folder = None if config.image_folder is None else Path(config.image_folder)  # JSON input
        self._pool = None  # made in the process that uses it (each worker its own)

    def __getitem__(self, task) -> dict[str, Any]:
        if self._pool is None and self.threads > 1:
            self._pool = ThreadPoolExecutor(self.threads)
        items = task.items
        prepare = self._prepare_record if self.folder is not None else self._prepare_sample
        prepared = list(self._pool.map(prepare, items)) if self._pool is not None and len(items) > 1 else \
            [prepare(item) for item in items]
        if self.folder is not None:  # (index, id, image, caption)
            batch = collate_prepared([(i[0], i[1]) for i in items], [i[3] for i in items], prepared, self.tokenize)
            errors = [{"index": i[0], "id": i[1], "image": i[2], "error": p}
                      for i, p in zip(items, prepared) if isinstance(p, str)]
            batch["image_names"] = {i[0]: i[2] for i in items}  # for errors found on the device
        else:  # shard samples
            batch = collate_prepared([(s.position, s.key) for s in items], [s.caption for s in items], prepared,
                                     self.tokenize)
            errors = [{"position": s.position, "key": s.key, "error": p}
                      for s, p in zip(items, prepared) if isinstance(p, str)]
        batch.update(errors=task.errors + errors, unit=task.unit, number=task.number, last=task.last,
                     batches=task.batches, facts=task.facts)
        return batch

    def close(self) -> None:
        """Shut the decode threads down (a worker's own pool; made again on the next batch)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}

    def _prepare_record(self, item: tuple[int, Any, str, str]):
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

    def _prepare_sample(self, sample):
        try:
            return prepare_encoded(sample.image, self.preprocess, self.send_jpeg)
        except Exception as e:  # any failure of one image is that sample's error, never the run's
            return f"cannot decode image: key {sample.key!r}: {type(e).__name__}: {e}"


def collate_identity(batch):
    """The DataLoader's collate for batches a worker already made (one task per item): the list unchanged.

    Args:
        batch: the items.
    Returns:
        `batch`.
    """
    return batch


def collate_prepared(ids: list, captions: list[str], prepared: list, tokenize) -> dict[str, Any]:
    """A batch from prepared images: ("pixels", tensor) decoded by the worker, ("encoded", bytes tensor) for
    the device, or an error string (left out here; the caller lists it). Rows keep the items' order.

    Args:
        ids: one id per item (index and id, or position and key).
        captions: one caption per item.
        prepared: one prepared image per item.
        tokenize: the scorer's tokenizer (list of str -> tokens).
    Returns:
        {"ids": the good items' ids, "pixels": [P, 3, H, W] or None, "tokens": the good items' tokens or None,
        "encoded": JPEG byte tensors for the device or None, "encoded_rows" / "pixel_rows": which rows of the
        batch each kind fills (None when all are pixels)}.
    """
    good = [(i, c, p) for i, c, p in zip(ids, captions, prepared) if not isinstance(p, str)]
    batch: dict[str, Any] = {"ids": [i for i, _, _ in good], "pixels": None, "tokens": None, "encoded": None,
                             "encoded_rows": None, "pixel_rows": None}
    if not good:
        return batch
    kinds = [p[0] for _, _, p in good]
    pixel_rows = [r for r, k in enumerate(kinds) if k == "pixels"]
    if pixel_rows:
        batch["pixels"] = torch.stack([good[r][2][1] for r in pixel_rows])
    if len(pixel_rows) < len(good):
        batch["encoded_rows"] = [r for r, k in enumerate(kinds) if k == "encoded"]
        batch["encoded"] = [good[r][2][1] for r in batch["encoded_rows"]]
        batch["pixel_rows"] = pixel_rows
    batch["tokens"] = tokenize([c for _, c, _ in good])
    return batch
