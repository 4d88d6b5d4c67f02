"""TRL's vision-language collator with the AlignGPT additions: levels, BOS, the alignment token's label.

`AlignGPTVisionCollator` is TRL's `DataCollatorForVisionLanguageModeling` (a subclass: TRL renders the chat
template, runs the processor, pads, and masks padding, the prompt of prompt/completion data under
`completion_only_loss`, and non-assistant turns under `assistant_only_loss`), given an `AlignGPTLlavaProcessor`,
which puts the alignment token `<align>` right after BOS of every sample that carries an image. On TRL's
output it then

- pops each example's `align_level` (TRL's own collator never sees it; the trainer keeps the column, see
  `training.py`) and returns `alignment_levels` [B] long: the level of each image row, -1 on text-only rows
  and where a record has none;
- puts the tokenizer's BOS first in every row that has none (`add_bos`, default on): TRL tokenizes with
  `add_special_tokens=False`, so a chat template without `{{ bos_token }}` (llava-hf's Vicuna template) would
  train without the BOS that inference (`processor.apply_chat_template(..., tokenize=True)`) and the
  LLaVA-original path put there, and the alignment token would open the sequence instead of following BOS;
- sets the label of the alignment token and of the image tokens to -100 (TRL masks neither: `labels` is
  `input_ids` with padding masked).

    collator = AlignGPTVisionCollator(processor=processor)                 # or, over a collator TRL built:
    collator = AlignGPTVisionCollator.from_trl(trainer.data_collator)
    batch = collator([{"messages": [...], "images": [image], "align_level": 3}, ...])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from packaging.version import Version
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from aligngpt_plugin.core.trl_format import ALIGN_LEVEL

IGNORE_INDEX = -100
# the first transformers whose processors give right assistant masks on image data (TRL's own bound)
_ASSISTANT_MASKS_FROM = "5.18.0.dev0"

__all__ = ["AlignGPTVisionCollator"]


@dataclass
class AlignGPTVisionCollator(DataCollatorForVisionLanguageModeling):
    """`DataCollatorForVisionLanguageModeling` plus `alignment_levels`, BOS and the alignment token's label.

    Args:
        processor: an `AlignGPTLlavaProcessor` (it inserts the alignment token).
        add_bos (`bool`, defaults to `True`): put the tokenizer's BOS first in rows that have none.
        level_column (`str`, defaults to `"align_level"`): the examples' level key.
        (the rest as `DataCollatorForVisionLanguageModeling`)
    Returns (when called on a list of examples):
        dict with `input_ids`, `attention_mask`, `labels` [B, L], `pixel_values` [images, 3, H, W] (when the
        batch has images) and `alignment_levels` [B] long (-1: no level / no image).
    """

    add_bos: bool = True
    level_column: str = ALIGN_LEVEL

    def __post_init__(self):
        token_id = getattr(self.processor, "alignment_token_id", None)
        if token_id is None:
            raise TypeError(f"{type(self.processor).__name__} inserts no alignment token: give the AlignGPT model's "
                            "processor (AutoProcessor.from_pretrained on an HF-native AlignGPT folder)")
        # SFTTrainer refuses this too, but the collator also serves the plain Trainer: older processors map the
        # template's assistant spans onto the image-expanded text wrongly (every label masked, or an IndexError)
        if self.assistant_only_loss and Version(transformers.__version__) < Version(_ASSISTANT_MASKS_FROM):
            raise ValueError(f"assistant_only_loss on image data needs transformers>={_ASSISTANT_MASKS_FROM} "
                             f"(installed: {transformers.__version__}): upgrade transformers or set "
                             "assistant_only_loss=False")

    @classmethod
    def from_trl(cls, collator: DataCollatorForVisionLanguageModeling, **overrides) -> AlignGPTVisionCollator:
        """The same collator as `collator` (TRL's, as SFTTrainer built it from its config), with our additions."""
        if not isinstance(collator, DataCollatorForVisionLanguageModeling):
            raise TypeError(f"expected TRL's DataCollatorForVisionLanguageModeling, got {type(collator).__name__} "
                            "(the dataset needs an `images` or `image` column for TRL's vision path)")
        fields = {f.name: getattr(collator, f.name) for f in dataclasses.fields(collator) if f.init}
        return cls(**{**fields, **overrides})

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        levels = [example.get(self.level_column) for example in examples]
        # shallow copies: TRL's collator rewrites keys of the examples it is given (`image` -> `images`)
        plain = [{k: v for k, v in example.items() if k != self.level_column} for example in examples]
        out = super().torch_call(plain)
        tokenizer = self.processor.tokenizer
        if self.add_bos and tokenizer.bos_token_id is not None:
            self._put_bos_first(out, tokenizer.bos_token_id, tokenizer.pad_token_id)
        ids = out["input_ids"]
        align = ids == self.processor.alignment_token_id
        if align.sum(dim=1).gt(1).any():
            raise ValueError("a row carries more than one alignment token: the data's text must not contain "
                             f"{self.processor.alignment_token!r}")
        labels = out["labels"]
        labels[align | (ids == self.processor.image_token_id)] = IGNORE_INDEX
        has_token = align.any(dim=1).tolist()
        out["alignment_levels"] = torch.tensor(
            [int(level) if has and level is not None else -1 for level, has in zip(levels, has_token)],
            dtype=torch.long)
        return out

    @staticmethod
    def _put_bos_first(out: dict[str, Any], bos: int, pad: int | None) -> None:
        """Insert `bos` at position 0 of each row whose first token is not BOS (in place, [B, L] -> [B, L or
        L + 1]). TRL's rows start at position 0 (right padding; prompt/completion rows are flushed left)."""
        ids, mask, labels = out["input_ids"], out["attention_mask"], out["labels"]
        if not bool(mask[:, 0].all()):
            raise ValueError("a row does not start at position 0 (left padding?): TRL's collator pads on the right")
        missing = ids[:, 0] != bos
        if not bool(missing.any()):
            return
        batch, length = ids.shape
        pad = 0 if pad is None else pad
        new = {"input_ids": ids.new_full((batch, length + 1), pad), "attention_mask": mask.new_zeros(batch, length + 1),
               "labels": labels.new_full((batch, length + 1), IGNORE_INDEX)}
        for row in range(batch):
            shift = int(missing[row])
            new["input_ids"][row, shift:shift + length] = ids[row]
            new["attention_mask"][row, shift:shift + length] = mask[row]
            new["labels"][row, shift:shift + length] = labels[row]
            if shift:
                new["input_ids"][row, 0] = bos
                new["attention_mask"][row, 0] = 1
        if not bool(new["attention_mask"][:, -1].any()):  # every row was shifted by 0 or ended in padding
            new = {k: v[:, :-1] for k, v in new.items()}
        for key in ("token_type_ids", "mm_token_type_ids"):
            if key in out:
                raise ValueError(f"{key} in the processor's output: not a Llava processor")
        out.update(new)
