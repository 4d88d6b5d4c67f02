"""The HF-native AlignGPT processor: transformers' `LlavaProcessor` plus the alignment token.

Same image processor, chat template and `<image>` expansion as `LlavaProcessor`; after tokenizing, it puts
the alignment token `<align>` right after BOS (at the start where the tokenizer adds no BOS) of every
sample that carries an image, and returns `alignment_levels` when they are given:

    inputs = processor(images=image, text="USER: <image>\\nWhat is this? ASSISTANT:", return_tensors="pt")
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    batch = processor(images=images, text=captions, alignment_levels=[3, 7], padding=True, return_tensors="pt")

The token is inserted into token ids, not into the text, so the text tokenizes exactly as it does for
llava-hf (a special token in the text changes how SentencePiece splits what follows it).
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import LlavaProcessor
from transformers.feature_extraction_utils import BatchFeature

from aligngpt_plugin.integrations.hf.configuration_aligngpt import ALIGNMENT_TOKEN, register_processor

# what the text tokenizer's `pad` takes; everything else goes to the LlavaProcessor call
_PADDING_KWARGS = ("padding", "pad_to_multiple_of", "padding_side")


class AlignGPTLlavaProcessor(LlavaProcessor):
    """`LlavaProcessor` that inserts the alignment token and carries the levels.

    Args:
        alignment_token (`str`, defaults to `"<align>"`): the token the model replaces by the alignment
            vector; the tokenizer must know it as one token (the converters add it).
        (the rest as `LlavaProcessor`)
    """

    def __init__(self, image_processor=None, tokenizer=None, patch_size=None, vision_feature_select_strategy=None,
                 chat_template=None, image_token="<image>", num_additional_image_tokens=0,
                 alignment_token: str = ALIGNMENT_TOKEN, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                         vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
                         image_token=image_token, num_additional_image_tokens=num_additional_image_tokens, **kwargs)
        self.alignment_token = alignment_token
        token_id = tokenizer.convert_tokens_to_ids(alignment_token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {alignment_token!r} token: add it as a special token and resize "
                             "the model's embeddings (aligngpt-convert to-hf does both)")
        self.alignment_token_id = token_id

    def __call__(self, images=None, text=None, audio=None, videos=None,
                 alignment_levels: Sequence[int | None] | None = None, **kwargs) -> BatchFeature:
        """LlavaProcessor's call, then the alignment token after BOS of each sample with an image.

        Args:
            alignment_levels: one CLIP level per sample (stage 1), `None` or -1 for a sample without one.
            (the rest as `LlavaProcessor.__call__`)
        Returns:
            BatchFeature with `input_ids`, `attention_mask` [B, L] (one position longer where a sample has an
            image), `pixel_values`, and `alignment_levels` [B] (-1: none) when levels were given.
        """
        return_tensors = kwargs.pop("return_tensors", None)
        pad_kwargs = {k: kwargs.pop(k) for k in _PADDING_KWARGS if k in kwargs}
        inner = super().__call__(images=images, text=text, padding=False, return_tensors=None, **kwargs)
        ids = [list(map(int, row)) for row in inner["input_ids"]]
        bos = self.tokenizer.bos_token_id
        with_image = []
        for row in ids:
            has_image = self.image_token_id in row
            with_image.append(has_image)
            if has_image:
                row.insert(1 if bos is not None and row and row[0] == bos else 0, self.alignment_token_id)
        padded = self.tokenizer.pad({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]},
                                    return_tensors=None, **pad_kwargs)
        data = {k: v for k, v in inner.items() if k not in ("input_ids", "attention_mask")}
        data.update(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
        if alignment_levels is not None:
            if len(alignment_levels) != len(ids):
                raise ValueError(f"{len(alignment_levels)} alignment levels for {len(ids)} texts: give one per text "
                                 "(None for a text-only sample)")
            data["alignment_levels"] = [-1 if level is None or not has else int(level)
                                        for level, has in zip(alignment_levels, with_image)]
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return [*super().model_input_names, "alignment_levels"]


register_processor(AlignGPTLlavaProcessor)  # idempotent; if this module's import pulled transformers in, it waited
