"""The data of patch-aligned pre-training (`patch_training`): LLaVA's dataset and collator with each
record's patch targets.

- the dataset adds each record's patch targets (its phrases, tokenised, and which of the vision tower's
  grid patches show which phrase; see `core.patch_geometry`); records without `patch_labels` train as usual;
- the collator pads them into `patch_phrase_ids` / `patch_phrase_mask` [B, P, T] and
  `patch_assignment` [B, N, P].

Both wrap whatever dataset and collator the wrapped `make_supervised_data_module` gives (LLaVA's, or
AlignGPT's level-aware ones), so patch alignment composes with `--align_levels`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from aligngpt_plugin.core.patch_geometry import (
    PatchLabelError,
    parse_record_labels,
    patch_targets,
    preprocess_geometry,
)

PATCH_KEYS = ("patch_phrase_ids", "patch_phrase_mask", "patch_assignment")


class PatchLabelDataset(Dataset):
    """Wraps a LLaVA dataset (LazySupervisedDataset or a subclass): each item also carries its patch
    targets. The grid size comes from the vision tower, so the trainer sets it (`set_grid`)."""

    def __init__(self, inner, min_overlap: float):
        self.inner = inner
        self.min_overlap = min_overlap
        self.grid: int | None = None
        source = getattr(inner.data_args, "data_path", "") or ""
        # validate every record up front: a malformed label fails before the first step, naming the record
        self.labels = [parse_record_labels(r, i, source) for i, r in enumerate(inner.list_data_dict)]
        self._phrase_ids: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.inner)

    def __getattr__(self, name):  # lengths, modality_lengths, list_data_dict, ... of the wrapped dataset
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def labelled_records(self) -> int:
        """How many records carry patch labels."""
        return sum(bool(x) for x in self.labels)

    def set_grid(self, grid: int) -> None:
        """Set the patch grid the targets are computed on (the trainer does, from the vision tower).

        Args:
            grid: patches per side of the image (24 for CLIP ViT-L/14 at 336 px).
        """
        self.grid = int(grid)

    def phrase_ids(self, phrase: str) -> list[int]:
        """The token ids of a phrase (without special tokens), tokenised once and cached.

        Args:
            phrase: a labelled phrase of a caption.
        Returns:
            Its token ids.
        Raises:
            PatchLabelError: when it tokenises to nothing.
        """
        if phrase not in self._phrase_ids:
            ids = self.inner.tokenizer(phrase, add_special_tokens=False).input_ids
            if not ids:
                raise PatchLabelError(f"phrase {phrase!r} tokenises to nothing")
            self._phrase_ids[phrase] = ids
        return self._phrase_ids[phrase]

    def targets(self, i: int):
        """The PatchTargets of record i, on the grid set by `set_grid`.

        Args:
            i: the record's index.
        Returns:
            PatchTargets (phrases, and `assignment` [grid*grid, P] bool: which phrases each patch belongs to), or
            None when the record has no labels.
        """
        from PIL import Image

        labels = self.labels[i]
        if not labels:
            return None
        if self.grid is None:
            raise RuntimeError("PatchLabelDataset.set_grid(patches per side) was not called; the trainer sets it")
        args = self.inner.data_args
        record = self.inner.list_data_dict[i]
        with Image.open(os.path.join(args.image_folder, record["image"])) as image:
            size = image.size  # reads the header only
        geometry = preprocess_geometry(size, args.image_processor, getattr(args, "image_aspect_ratio", "square"))
        where = f"record {i} (id {record.get('id', '?')!r})"
        return patch_targets(labels, size, geometry, self.grid, self.min_overlap, where)

    def __getitem__(self, i):
        item = self.inner[i]
        found = self.targets(i)
        if found is None:
            item["patch_phrases"] = []
            item["patch_assignment"] = None
        else:
            item["patch_phrases"] = [self.phrase_ids(p) for p in found.phrases]
            item["patch_assignment"] = torch.from_numpy(found.assignment)
        return item


@dataclass
class PatchLabelCollator:
    """The wrapped collator's batch plus the padded patch targets (absent when no sample has labels):
    `patch_phrase_ids` [B, P, T] long and `patch_phrase_mask` [B, P, T] bool (P phrases of up to T tokens,
    zero-padded), `patch_assignment` [B, N, P] bool (N patches).
    """

    inner: object

    def __call__(self, instances):
        plain = [{k: v for k, v in x.items() if k not in ("patch_phrases", "patch_assignment")} for x in instances]
        batch = self.inner(plain)
        if not any(x.get("patch_phrases") for x in instances):
            return batch
        b = len(instances)
        n = next(x["patch_assignment"].shape[0] for x in instances if x.get("patch_phrases"))
        p = max(len(x["patch_phrases"]) for x in instances)
        t = max(len(ids) for x in instances for ids in x["patch_phrases"])
        ids = torch.zeros(b, p, t, dtype=torch.long)
        mask = torch.zeros(b, p, t, dtype=torch.bool)
        assignment = torch.zeros(b, n, p, dtype=torch.bool)
        for k, x in enumerate(instances):
            for j, phrase in enumerate(x.get("patch_phrases") or []):
                ids[k, j, :len(phrase)] = torch.tensor(phrase)
                mask[k, j, :len(phrase)] = True
            if x.get("patch_phrases"):
                assignment[k, :, :len(x["patch_phrases"])] = x["patch_assignment"]
        batch.update(patch_phrase_ids=ids, patch_phrase_mask=mask, patch_assignment=assignment)
        return batch


def patch_label_data_module(make_inner, tokenizer, data_args, min_overlap: float) -> dict:
    """What `make_inner` (a make_supervised_data_module) returns, with patch targets.

    Args:
        make_inner: LLaVA's (or AlignGPT's level-aware) data-module builder, called with tokenizer and data_args.
        tokenizer: the run's tokenizer.
        data_args: LLaVA's DataArguments.
        min_overlap: the fraction of a patch a box must cover for the patch to belong to its phrase.
    Returns:
        The data module with its dataset wrapped in PatchLabelDataset and its collator in PatchLabelCollator.
    """
    module = make_inner(tokenizer=tokenizer, data_args=data_args)
    module["train_dataset"] = PatchLabelDataset(module["train_dataset"], min_overlap)
    module["data_collator"] = PatchLabelCollator(module["data_collator"])
    return module
