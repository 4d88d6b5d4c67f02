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
            image), `pixel_values`, and `alignment_levels` [B] (-1: none) when levels were given. Every other
            per-token output asked for (`offset_mapping` [B, L, 2], `special_tokens_mask`, `token_type_ids`,
            `mm_token_type_ids`, ...) gets the alignment token's entry ((0, 0) offsets like the BOS the tokenizer
            adds, special-tokens mask 1, the BOS's token type, 0 otherwise) and is padded as the tokenizer pads it.
        """
        return_tensors = kwargs.pop("return_tensors", None)
        pad_kwargs = {k: kwargs.pop(k) for k in _PADDING_KWARGS if k in kwargs}
        # made here from the final ids: LlavaProcessor of transformers 4.x builds them only from padded rows
        want_mm_types = bool(kwargs.pop("return_mm_token_type_ids", False))
        inner = super().__call__(images=images, text=text, padding=False, return_tensors=None, **kwargs)
        ids = [list(map(int, row)) for row in inner["input_ids"]]
        lengths = [len(row) for row in ids]
        # every other output with one entry per token (offset_mapping, special_tokens_mask, token_type_ids,
        # mm_token_type_ids, assistant_masks, ...) must follow input_ids: the token shifts them, padding pads them
        per_token = {k: [list(row) for row in v] for k, v in inner.items()
                     if k not in ("input_ids", "attention_mask") and _is_per_token(v, lengths)}
        bos = self.tokenizer.bos_token_id
        with_image = []
        for r, row in enumerate(ids):
            has_image = self.image_token_id in row
            with_image.append(has_image)
            if has_image:
                at = 1 if bos is not None and row and row[0] == bos else 0
                row.insert(at, self.alignment_token_id)
                for key, rows in per_token.items():
                    rows[r].insert(at, _inserted_value(key, rows[r], at))
        padded = self.tokenizer.pad({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]},
                                    return_tensors=None, **pad_kwargs)
        data = {k: v for k, v in inner.items() if k not in ("input_ids", "attention_mask")}
        data.update(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
        if want_mm_types:  # 1: image token, 0: text (the alignment token and padding included)
            data["mm_token_type_ids"] = [[int(t == self.image_token_id) for t in row] for row in padded["input_ids"]]
        for key, rows in per_token.items():
            data[key] = _pad_like(rows, padded["attention_mask"], _pad_value(key, rows, self.tokenizer))
        if alignment_levels is not None:
            if len(alignment_levels) != len(ids):
                raise ValueError(f"{len(alignment_levels)} alignment levels for {len(ids)} texts: give one per text "
                                 "(None for a text-only sample)")
            data["alignment_levels"] = [-1 if level is None or not has else int(level)
                                        for level, has in zip(alignment_levels, with_image)]
        # transformers 5 keeps some outputs as Python objects (text_replacement_offsets: per-sample spans)
        skip = getattr(self, "skip_tensor_conversion", None)
        extra = {"skip_tensor_conversion": skip} if skip else {}
        return BatchFeature(data=data, tensor_type=return_tensors, **extra)

    @property
    def model_input_names(self) -> list[str]:
        return [*super().model_input_names, "alignment_levels"]


def _is_per_token(value, lengths: list[int]) -> bool:
    """Whether `value` has one entry per token: a row per sample, each as long as that sample's input_ids, of
    ints or (start, end) pairs (not per-sample lists such as text_replacement_offsets, nor images)."""
    if not isinstance(value, (list, tuple)) or len(value) != len(lengths):
        return False
    for row, length in zip(value, lengths):
        if not isinstance(row, (list, tuple)) or len(row) != length:
            return False
        if row and not (isinstance(row[0], int) or (isinstance(row[0], (list, tuple)) and len(row[0]) == 2)):
            return False
    return True


def _is_pairs(rows: list[list]) -> bool:
    return any(row and isinstance(row[0], (list, tuple)) for row in rows)


def _inserted_value(key: str, row: list, at: int):
    """The entry of per-token output `key` for the alignment token at position `at` of `row`."""
    if key == "offset_mapping" or (row and isinstance(row[0], (list, tuple))):
        return (0, 0)  # no characters of the text, as tokenizers give the special tokens they add (BOS)
    if key == "special_tokens_mask":
        return 1  # added by the processor, not read from the text: as the tokenizer marks the BOS it adds
    if key == "token_type_ids":
        return row[at - 1] if at > 0 else 0  # the BOS's segment; the first segment is 0
    return 0  # assistant_masks, mm_token_type_ids (not an image token), other masks


def _pad_value(key: str, rows: list[list], tokenizer):
    """What the tokenizer pads per-token output `key` with."""
    if key == "offset_mapping" or _is_pairs(rows):
        return (0, 0)
    if key == "special_tokens_mask":
        return 1
    if key == "token_type_ids":
        return tokenizer.pad_token_type_id
    return 0


def _pad_like(rows: list[list], attention_mask: list[list[int]], value) -> list[list]:
    """Pad each row where the tokenizer padded input_ids: its leading zeros of `attention_mask` on the left,
    the rest on the right ([B, n_b] -> [B, L])."""
    out = []
    for row, mask in zip(rows, attention_mask):
        left = next((k for k, m in enumerate(mask) if m), len(mask)) if row else 0
        out.append([value] * left + row + [value] * (len(mask) - left - len(row)))
    return out


register_processor(AlignGPTLlavaProcessor)  # idempotent; if this module's import pulled transformers in, it waited
