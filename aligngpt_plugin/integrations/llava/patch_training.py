"""Patch-aligned pre-training through LLaVA's own `train()`: `--patch_align_weight LAMBDA` (0 = off).

    python -m aligngpt_plugin.train --tune_mm_mlp_adapter True --version plain ... \
        --data_path captions_with_patch_labels.json --patch_align_weight 0.5 [--align_levels 8]

`enable_patch_alignment(settings, pretraining)` wraps whatever `make_supervised_data_module` and
`LLaVATrainer` `llava.train.train` holds at that moment (LLaVA's, or AlignGPT's level-aware ones after
`enable_aligngpt`), so it composes with `--align_levels`:

- the dataset adds each record's patch targets (its phrases, tokenised, and which of the vision tower's
  grid patches show which phrase; see `patch_labels`); records without `patch_labels` train as usual;
- the collator pads them into `patch_phrase_ids` / `patch_phrase_mask` [B, P, T] and
  `patch_assignment` [B, N, P];
- the trainer pops them, captures the projector's output with a forward hook on `mm_projector`, adds
  `weight * patch loss` to the caption loss and logs `patch_loss` and `caption_loss` beside `loss`.

Only the pre-training stage (`--tune_mm_mlp_adapter True`) takes the flag: fine-tuning with it is an
error rather than a silent no-op, since fine-tuning also trains the LLM whose embeddings are the targets.
"""

from __future__ import annotations

import argparse
import functools
import os
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from aligngpt_plugin.core.patch_geometry import (
    PatchLabelError,
    parse_record_labels,
    patch_targets,
    preprocess_geometry,
)
from aligngpt_plugin.core.patch_loss import MULTI_MODES, patch_alignment_loss, phrase_targets

PATCH_KEYS = ("patch_phrase_ids", "patch_phrase_mask", "patch_assignment")


@dataclass
class PatchAlignmentSettings:
    """What `--patch_align_*` asks for."""

    weight: float = field(default=0.0, metadata={"help": "lambda: total loss = caption + lambda * patch loss"})
    multi: str = field(default="mean", metadata={"help": "several phrases on a patch: mean of their losses, "
                                                         "or best (the nearest phrase only)"})
    min_overlap: float = field(default=0.5, metadata={"help": "share of a patch a region must cover to label it"})

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ValueError(f"--patch_align_weight {self.weight}: must be >= 0 (0 turns the loss off)")
        if self.multi not in MULTI_MODES:
            raise ValueError(f"--patch_align_multi {self.multi!r}; choose one of {', '.join(MULTI_MODES)}")
        if not 0.0 < self.min_overlap <= 1.0:
            raise ValueError(f"--patch_align_min_overlap {self.min_overlap}: must be in (0, 1]")


def patch_alignment_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aligngpt_plugin.train", add_help=False)
    p.add_argument("--patch_align_weight", type=float, help="lambda of the patch-alignment loss (0 = off)")
    p.add_argument("--patch_align_multi", choices=MULTI_MODES, help="several phrases per patch (default mean)")
    p.add_argument("--patch_align_min_overlap", type=float, help="share of a patch a region must cover (0.5)")
    return p


def split_patch_alignment_args(argv: list[str]) -> tuple[PatchAlignmentSettings | None, list[str]]:
    """The settings asked for by `--patch_align_*` (None when the weight is absent or 0), and the rest."""
    from aligngpt_plugin.integrations.llava.training import given_flags

    values, rest = given_flags(patch_alignment_parser(), argv, "patch_align_")
    if not values.get("weight"):
        others = [k for k in values if k != "weight"]
        if others and "weight" not in values:
            raise SystemExit(f"--patch_align_{others[0]} needs --patch_align_weight LAMBDA")
        return None, rest
    try:
        return PatchAlignmentSettings(**values), rest
    except ValueError as err:
        raise SystemExit(str(err)) from None


# --- data ------------------------------------------------------------------------------------------

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
        return sum(bool(x) for x in self.labels)

    def set_grid(self, grid: int) -> None:
        self.grid = int(grid)

    def phrase_ids(self, phrase: str) -> list[int]:
        if phrase not in self._phrase_ids:
            ids = self.inner.tokenizer(phrase, add_special_tokens=False).input_ids
            if not ids:
                raise PatchLabelError(f"phrase {phrase!r} tokenises to nothing")
            self._phrase_ids[phrase] = ids
        return self._phrase_ids[phrase]

    def targets(self, i: int):
        """The PatchTargets of record i (None when it has no labels)."""
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
    """The wrapped collator's batch plus the padded patch targets (absent when no sample has labels)."""

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
    """What `make_inner` (a make_supervised_data_module) returns, with patch targets."""
    module = make_inner(tokenizer=tokenizer, data_args=data_args)
    module["train_dataset"] = PatchLabelDataset(module["train_dataset"], min_overlap)
    module["data_collator"] = PatchLabelCollator(module["data_collator"])
    return module


# --- trainer ---------------------------------------------------------------------------------------

def _inner_model(model):
    """LLaVA's inner model (the one holding `mm_projector`), through a PEFT wrapper if there is one."""
    if hasattr(model, "get_model"):
        return model.get_model()
    return model.base_model.model.get_model()


def patch_aligned_trainer(base, settings: PatchAlignmentSettings):
    class PatchAlignedTrainer(base):
        """`base` (a LLaVATrainer) with the patch-alignment loss added in pre-training."""

        def __init__(self, model=None, *args, **kwargs):
            super().__init__(model, *args, **kwargs)
            self.patch_settings = settings
            self._patch_sums = {"patch_loss": 0.0, "caption_loss": 0.0}
            self._patch_last_step = None  # set at the first step (a resumed run starts past 0)
            self._patch_calls = 0
            tower = _inner_model(model).get_vision_tower()
            self.patch_grid = tower.num_patches_per_side
            if isinstance(self.train_dataset, PatchLabelDataset):
                self.train_dataset.set_grid(self.patch_grid)
                if self.train_dataset.labelled_records == 0:
                    raise PatchLabelError(
                        f"--patch_align_weight {settings.weight} but no record of the training data has "
                        "`patch_labels`; add labels or train without the flag")

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            targets = {k: inputs.pop(k) for k in PATCH_KEYS if k in inputs}
            if self._patch_last_step is None:
                self._patch_last_step = self.state.global_step
            steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
            # The trainer divides the returned loss by the accumulation steps unless the model normalised
            # the caption loss over the whole accumulated batch itself (num_items_in_batch): the patch loss
            # is a per-batch mean, so it takes that division here in the second case.
            own_norm = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            scale = 1.0 if own_norm else 1.0 / steps  # each value as it adds into the logged step loss
            if not targets:  # no sample of this batch has labels
                caption, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                        num_items_in_batch=num_items_in_batch)
                self._patch_sums["caption_loss"] += float(caption.detach()) * scale
                self._patch_calls += 1
                return (caption, outputs) if return_outputs else caption
            captured = []
            projector = _inner_model(self.model).mm_projector
            handle = projector.register_forward_hook(lambda _m, _i, out: captured.append(out))
            try:
                caption, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                        num_items_in_batch=num_items_in_batch)
            finally:
                handle.remove()
            patches = self._projected_patches(captured, targets["patch_assignment"])
            goal = phrase_targets(self.model.get_input_embeddings(), targets["patch_phrase_ids"],
                                  targets["patch_phrase_mask"]).to(patches.device)
            out = patch_alignment_loss(patches, goal, targets["patch_assignment"].to(patches.device),
                                       settings.multi)
            patch_term = out.loss / steps if own_norm else out.loss
            loss = caption + settings.weight * patch_term.to(caption.dtype)
            self._patch_sums["patch_loss"] += float(out.loss.detach()) / steps
            self._patch_sums["caption_loss"] += float(caption.detach()) * scale
            self._patch_calls += 1
            return (loss, outputs) if return_outputs else loss

        def _projected_patches(self, captured, assignment):
            if len(captured) != 1:
                raise RuntimeError(f"the projector ran {len(captured)} times in one forward; the patch loss "
                                   "expects one call on the batch's images")
            patches = captured[0]
            want = (assignment.shape[0], assignment.shape[1])
            if patches.dim() != 3 or tuple(patches.shape[:2]) != want:
                raise RuntimeError(
                    f"projector output {tuple(patches.shape)}, the patch labels expect (batch, patches) = {want} "
                    f"({self.patch_grid}x{self.patch_grid} grid, one image per sample); any-resolution images "
                    "are not supported by the patch loss")
            return patches

        def log(self, logs, *args, **kwargs):
            if "loss" in logs:
                done = self.state.global_step - (self._patch_last_step or 0)
                if done > 0 and self._patch_calls:
                    for key, total in self._patch_sums.items():
                        logs[key] = round(total / done, 6)
                self._patch_sums = dict.fromkeys(self._patch_sums, 0.0)
                self._patch_calls = 0
                self._patch_last_step = self.state.global_step
            return super().log(logs, *args, **kwargs)

    return PatchAlignedTrainer


def enable_patch_alignment(settings: PatchAlignmentSettings, pretraining: bool) -> None:
    """Make the next `llava.train.train.train()` call add the patch-alignment loss (pre-training only)."""
    if not pretraining:
        raise ValueError(f"--patch_align_weight {settings.weight} applies to pre-training "
                         "(--tune_mm_mlp_adapter True) only; remove it from the fine-tuning command")
    from llava.train import train as llava_train

    llava_train.make_supervised_data_module = functools.partial(
        patch_label_data_module, llava_train.make_supervised_data_module, min_overlap=settings.min_overlap)
    llava_train.LLaVATrainer = patch_aligned_trainer(llava_train.LLaVATrainer, settings)
