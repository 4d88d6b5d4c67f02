"""LLaVA's dataset and collator, extended to carry each record's alignment level.

A record's level is its `align_level` field (written by aligngpt-score), or `similarity` as in the
public AlignGPT data; both are integers in 0..N-1, 0 the lowest CLIP similarity. Pre-training needs a
level for every record with an image and checks them all before the first step; instruction tuning
does not use them.
"""

from __future__ import annotations

import torch
from llava.train.train import DataCollatorForSupervisedDataset, LazySupervisedDataset

LEVEL_FIELDS = ("align_level", "similarity")
NO_LEVEL = -1  # a record without a level (text-only, or instruction tuning)


class LevelError(ValueError):
    """A record's alignment level is missing or invalid."""


def record_level(record: dict, index: int, num_levels: int, source: str = "") -> int | None:
    """The record's alignment level (its `align_level`, else `similarity` field).

    Args:
        record: one record of LLaVA's data json.
        index: its position in the file, for messages.
        num_levels: N (`--align_levels`): valid levels are 0..N-1.
        source: the data file, for messages.
    Returns:
        The level, or None when the record has none.
    Raises:
        LevelError: naming the record, when the level is not an integer in 0..N-1 or the two fields disagree.
    """
    name = f"record {index} (id {record.get('id', '?')!r}){' of ' + source if source else ''}"
    present = [f for f in LEVEL_FIELDS if f in record]
    if not present:
        return None
    if len(present) > 1 and record[present[0]] != record[present[1]]:
        raise LevelError(f"{name} has both align_level={record['align_level']!r} and "
                         f"similarity={record['similarity']!r}; keep one")
    value = record[present[0]]
    if isinstance(value, bool) or not isinstance(value, int):
        raise LevelError(f"{name}: {present[0]}={value!r} is not an integer level; levels are 0..{num_levels - 1} "
                         "(aligngpt-score writes them)")
    if not 0 <= value < num_levels:
        raise LevelError(f"{name}: {present[0]}={value} is outside 0..{num_levels - 1} for --align_levels "
                         f"{num_levels}; score the data with the same number of levels")
    return value


class LevelAwareDataset(LazySupervisedDataset):
    """LLaVA's LazySupervisedDataset; each item also has `align_level` (NO_LEVEL where none)."""

    def __init__(self, data_path: str, tokenizer, data_args, num_levels: int, require_levels: bool):
        super().__init__(data_path=data_path, tokenizer=tokenizer, data_args=data_args)
        self.num_levels = num_levels
        self.levels = []
        missing = []
        for i, record in enumerate(self.list_data_dict):
            level = record_level(record, i, num_levels, data_path)
            if level is None and require_levels and "image" in record:
                missing.append(f"{i} (id {record.get('id', '?')!r})")
            self.levels.append(NO_LEVEL if level is None else level)
        if missing:
            raise LevelError(
                f"{len(missing)} pre-training records of {data_path} have no alignment level, first: "
                f"{', '.join(missing[:5])}. Add `align_level` to every record (aligngpt-score does) or "
                "train without --align_levels")

    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["align_level"] = self.levels[i]
        return item


class LevelAwareCollator(DataCollatorForSupervisedDataset):
    """LLaVA's collator plus `alignment_levels` [batch] (NO_LEVEL where a record has none)."""

    def __call__(self, instances):
        batch = super().__call__(instances)
        if all("align_level" in x for x in instances):
            batch["alignment_levels"] = torch.tensor([x["align_level"] for x in instances], dtype=torch.long)
        return batch


def make_level_aware_data_module(tokenizer, data_args, num_levels: int, require_levels: bool) -> dict:
    """What LLaVA's make_supervised_data_module returns, with levels.

    Args:
        tokenizer: the run's tokenizer.
        data_args: LLaVA's DataArguments (`data_path`, image folder and processor, ...).
        num_levels: N (`--align_levels`).
        require_levels: refuse records with an image but no level (stage 1).
    Returns:
        {"train_dataset": LevelAwareDataset, "eval_dataset": None, "data_collator": LevelAwareCollator}; the
        collator's batches carry `alignment_levels` [B] long.
    """
    dataset = LevelAwareDataset(data_args.data_path, tokenizer, data_args, num_levels, require_levels)
    return {"train_dataset": dataset, "eval_dataset": None, "data_collator": LevelAwareCollator(tokenizer=tokenizer)}
