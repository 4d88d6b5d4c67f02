"""The patch-aligned pre-training feature through LLaVA's own `train()`: `--patch_align_weight LAMBDA`
(0 = off).

    python -m aligngpt_plugin.train --tune_mm_mlp_adapter True --version plain ... \
        --data_path captions_with_patch_labels.json --patch_align_weight 0.5 [--align_levels 8]

Its shape is every training feature's (`features`): the settings are `PatchAlignmentSettings` (its
fields are the `--patch_align_*` flags), the data module is `patch_data.patch_label_data_module`, and
`enable_patch_alignment(settings, pretraining)` wraps whatever `make_supervised_data_module` and
`LLaVATrainer` `llava.train.train` holds at that moment (LLaVA's, or AlignGPT's level-aware ones after
`enable_aligngpt`; the feature registers after AlignGPT's for that), so it composes with `--align_levels`.
The trainer pops the batch's patch targets, captures the projector's output with a forward hook on
`mm_projector`, adds `weight * patch loss` to the caption loss and logs `patch_loss` and `caption_loss`
beside `loss`.

Only the pre-training stage (`--tune_mm_mlp_adapter True`) takes the flag: fine-tuning with it is an
error rather than a silent no-op, since fine-tuning also trains the LLM whose embeddings are the targets.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

import aligngpt_plugin.integrations.llava.aligngpt_training  # noqa: F401  (registers first: this feature wraps it)
from aligngpt_plugin.core.patch_geometry import PatchLabelError
from aligngpt_plugin.core.patch_loss import MULTI_MODES, patch_alignment_loss, phrase_targets
from aligngpt_plugin.integrations.llava.features import TrainingRun, register_training_feature
from aligngpt_plugin.integrations.llava.patch_data import PATCH_KEYS, PatchLabelDataset, patch_label_data_module


@dataclass
class PatchAlignmentSettings:
    """What `--patch_align_*` asks for."""

    weight: float = field(default=0.0, metadata={
        "help": "lambda: total loss = caption + lambda * patch loss (0: off)", "metavar": "LAMBDA"})
    multi: Literal["mean", "best"] = field(default="mean", metadata={
        "help": "several phrases on a patch: mean of their losses, or best (the nearest phrase only)"})
    min_overlap: float = field(default=0.5, metadata={"help": "share of a patch a region must cover to label it"})

    def __post_init__(self) -> None:
        if not self.weight >= 0:
            raise ValueError(f"--patch_align_weight {self.weight}: must be >= 0 (0 turns the loss off)")
        if self.multi not in MULTI_MODES:
            raise ValueError(f"--patch_align_multi {self.multi!r}; choose one of {', '.join(MULTI_MODES)}")
        if not 0.0 < self.min_overlap <= 1.0:
            raise ValueError(f"--patch_align_min_overlap {self.min_overlap}: must be in (0, 1]")


def _inner_model(model):
    """LLaVA's inner model (the one holding `mm_projector`), through a PEFT wrapper if there is one."""
    if hasattr(model, "get_model"):
        return model.get_model()
    return model.base_model.model.get_model()


def patch_aligned_trainer(base, settings: PatchAlignmentSettings):
    """LLaVA's trainer class with the patch-alignment loss added to the caption loss in pre-training.

    The loss is `caption + weight * patch`, the patch term computed on the projector's output [B, N, D] against
    the phrases' mean token embeddings; `patch_loss` and `caption_loss` are logged beside `loss`.

    Args:
        base: `LLaVATrainer` (or a subclass of it).
        settings: the `--patch_align_*` settings (weight, multi, min_overlap).
    Returns:
        A subclass of `base`.
    """
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
    """Make the next `llava.train.train.train()` call add the patch-alignment loss (pre-training only).

    Args:
        settings: the `--patch_align_*` settings.
        pretraining: whether the run is stage 1 (`--tune_mm_mlp_adapter True`).
    Raises:
        ValueError: in fine-tuning.
    """
    if not pretraining:
        raise ValueError(f"--patch_align_weight {settings.weight} applies to pre-training "
                         "(--tune_mm_mlp_adapter True) only; remove it from the fine-tuning command")
    from llava.train import train as llava_train

    llava_train.make_supervised_data_module = functools.partial(
        patch_label_data_module, llava_train.make_supervised_data_module, min_overlap=settings.min_overlap)
    llava_train.LLaVATrainer = patch_aligned_trainer(llava_train.LLaVATrainer, settings)


def split_patch_alignment_args(argv: list[str]) -> tuple[PatchAlignmentSettings | None, list[str]]:
    """The settings asked for by `--patch_align_*`, and the rest of the command line.

    Args:
        argv: the command line's arguments (without the program name).
    Returns:
        (settings, or None when the weight is absent or 0; the other arguments, in order).
    """
    return FEATURE.split(argv)


def enable_for_run(settings: PatchAlignmentSettings, run: TrainingRun) -> None:
    """The feature's enabling function: the patch loss in this run (a ValueError in fine-tuning).

    Args:
        settings: the `--patch_align_*` settings.
        run: the training run (its stage).
    """
    enable_patch_alignment(settings, run.pretraining)


def describe(settings: PatchAlignmentSettings, run: TrainingRun) -> str:
    """The feature's one-line summary for the start of the run's log.

    Args:
        settings: the `--patch_align_*` settings.
        run: the training run (unused).
    Returns:
        E.g. "patch alignment, weight 0.5, mean".
    """
    return f"patch alignment, weight {settings.weight}, {settings.multi}"


FEATURE = register_training_feature(
    "patch_alignment", settings_cls=PatchAlignmentSettings, prefix="patch_align_", switch="weight",
    switch_metavar="LAMBDA", zero_is_off=True, after=("aligngpt",),
    title="patch-aligned pre-training (--patch_align_weight L switches it on)",
    enable=enable_for_run, describe=describe)
