"""LLaVA's data records in TRL's vision-language format (what `SFTTrainer` and `aligngpt-sft` read).

A LLaVA record

    {"id": "0001", "image": "coco/0001.jpg", "align_level": 5,
     "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]}

becomes TRL's conversational VLM record

    {"id": "0001", "images": ["<image_folder>/coco/0001.jpg"], "align_level": 5,
     "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}]}

(`images` is [] and `align_level` None for a text-only record). Both the scoring library (`aligngpt-score`'s
TRL output) and the HF-native training path (`integrations/hf/data.py`) use it, so it lives here, in the
layer both may import; `datasets` is imported only by `to_trl_dataset`, lazily.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

ALIGN_LEVEL = "align_level"
IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class RecordError(ValueError):
    """A data record that cannot be used; the message names the record and what to do."""


def record_label(record: dict[str, Any], index: int) -> str:
    """`record 12 (id '0001')`: how errors name a record (its position in the file, and its id if it has one)."""
    ident = record.get("id") if isinstance(record, dict) else None
    return f"record {index}" + (f" (id {ident!r})" if ident not in (None, "") else "")


def _content(text: str, where: str) -> list[dict[str, Any]]:
    """A turn's text as TRL content blocks: one {"type": "image"} where the text had `<image>`, the text around
    it (the newline LLaVA puts after `<image>` dropped) as {"type": "text"} blocks."""
    if not isinstance(text, str):
        raise RecordError(f"{where}: a turn's `value` must be a string, got {type(text).__name__}")
    pieces = text.split(IMAGE_PLACEHOLDER)
    blocks: list[dict[str, Any]] = []
    for k, piece in enumerate(pieces):
        if k:
            blocks.append({"type": "image"})
        piece = piece.strip("\n") if len(pieces) > 1 else piece
        if piece:
            blocks.append({"type": "text", "text": piece})
    return blocks


def llava_to_trl_record(record: dict[str, Any], index: int, image_folder: str | Path | None) -> dict[str, Any]:
    """One LLaVA record in TRL's VLM format (see the module docstring).

    Args:
        record: a LLaVA record: `conversations` (human/gpt turns, `<image>` where the picture goes), optional
            `image` (a path relative to `image_folder`), `id`, `align_level`.
        index: the record's position in its file (for error messages).
        image_folder: the folder `image` paths are relative to (None: keep the path as written).
    Returns:
        {"id": str | None, "messages": [...], "images": [path] or [], "align_level": int | None}.
    Raises:
        RecordError naming the record: no `conversations`, an unknown role, or `<image>` count that does not
        match the image (one `<image>` in the text per record with an `image`).
    """
    where = record_label(record, index)
    turns = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"{where}: no `conversations` list (LLaVA's format: [{{'from': 'human', 'value': ...}}, "
                          "{'from': 'gpt', 'value': ...}, ...])")
    messages = []
    for turn in turns:
        role = ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
        if role is None:
            raise RecordError(f"{where}: turn {turn!r} has no known `from` (human, gpt or system)")
        messages.append({"role": role, "content": _content(turn.get("value"), where)})
    placeholders = sum(block["type"] == "image" for m in messages for block in m["content"])
    image = record.get("image")
    if isinstance(image, list):  # a multi-image record: LLaVA-1.5 has none, but the format allows it
        images = list(image)
    else:
        images = [] if image in (None, "") else [image]
    users = [m for m in messages if m["role"] == "user"]
    if len(images) == 1 and placeholders == 0 and users:  # LLaVA puts the picture before the first human text
        users[0]["content"].insert(0, {"type": "image"})
        placeholders = 1
    if placeholders != len(images):
        raise RecordError(f"{where}: {placeholders} `<image>` in the text for {len(images)} image(s); give one "
                          "`<image>` per image (none in a text-only record)")
    folder = None if image_folder is None else Path(image_folder)
    paths = [str(folder / p) if folder is not None else str(p) for p in images]
    level = record.get(ALIGN_LEVEL)
    if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
        if isinstance(level, float) and level.is_integer():
            level = int(level)
        else:
            raise RecordError(f"{where}: `{ALIGN_LEVEL}` is {level!r}; it must be an integer level 0..N-1")
    ident = record.get("id")
    return {"id": None if ident is None else str(ident), "messages": messages, "images": paths,
            ALIGN_LEVEL: level}


def to_trl_dataset(records: Iterable[dict[str, Any]]):
    """TRL-format records (from `llava_to_trl_record`) as a `datasets.Dataset`, `images` with the Image feature
    (the files are read when a row is accessed: nothing is decoded here).

    Args:
        records: dicts with `id`, `messages`, `images` (file paths), `align_level`.
    Returns:
        datasets.Dataset with columns id, messages, images (Sequence(Image)), align_level (int64, None allowed).
    """
    from datasets import Dataset, Features, Image, List, Value

    text_block = {"type": Value("string"), "text": Value("string")}
    features = Features({
        "id": Value("string"),
        "messages": List({"role": Value("string"), "content": List(text_block)}),
        "images": List(Image()),
        ALIGN_LEVEL: Value("int64"),
    })
    rows = list(records)
    columns = {name: [r[name] for r in rows] for name in features}
    return Dataset.from_dict(columns, features=features)
