"""AlignGPTLlavaProcessor's per-token outputs besides input_ids (offset_mapping, special_tokens_mask,
token_type_ids, mm_token_type_ids, assistant_masks) against transformers' plain LlavaProcessor on the same text:
the same values with one entry at the alignment token's position, padded the same way; and TRL's
`assistant_only_loss` through the AlignGPT collator (labels on the assistant's tokens only, hand-checked)."""

from __future__ import annotations

import pytest
import torch
import transformers
from packaging.version import Version
from PIL import Image
from trl import SFTConfig
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
from trl_tiny import plain_llava_processor, tiny_model, tiny_processor, trl_dataset

from aligngpt_plugin.integrations.hf.collator import AlignGPTVisionCollator
from aligngpt_plugin.integrations.hf.training import AlignSFTArguments, build_trainer

# TRL's own bound for assistant-only loss on vision data (older processors mis-map the assistant spans)
MASKS_WORK = Version(transformers.__version__) >= Version("5.18.0.dev0")
OLD_LINE = "transformers < 5.18 maps the template's assistant spans wrongly on image data (TRL refuses it there)"

TEXTS = ["USER: <image>\nWhat is this? ASSISTANT: a cat",
         "USER: Hello there, how are you today? ASSISTANT:",  # text only, the longest
         "<image>\nA red square."]                           # the image token first (no BOS: <align> opens the row)
WANTS = dict(return_offsets_mapping=True, return_special_tokens_mask=True, return_token_type_ids=True,
             return_mm_token_type_ids=True)
# the alignment token's entry in each output: no characters of the text and added by the processor (as the
# tokenizer's own BOS: offsets (0, 0), special-tokens mask 1), first segment, not an image token, attended
AT_ALIGN = {"offset_mapping": (0, 0), "special_tokens_mask": 1, "token_type_ids": 0, "mm_token_type_ids": 0,
            "attention_mask": 1}


@pytest.fixture(scope="module")
def processors():
    ours = tiny_processor()
    return ours, plain_llava_processor(ours)


def picture(seed: int) -> Image.Image:
    pixels = (torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)
    return Image.fromarray(pixels.numpy())


def as_lists(value) -> list:
    """Rows as lists, pairs as tuples (tensor or list input)."""
    rows = value.tolist() if isinstance(value, torch.Tensor) else value
    return [[tuple(x) if isinstance(x, (list, tuple)) else x for x in row] for row in rows]


@pytest.mark.parametrize("add_special_tokens", [True, False])
@pytest.mark.parametrize("side", ["left", "right"])
def test_per_token_outputs_are_llavas_with_the_token_entry_inserted(processors, side, add_special_tokens):
    ours, plain = processors
    images = {0: picture(0), 2: picture(2)}
    common = dict(add_special_tokens=add_special_tokens, **WANTS)
    out = ours(images=[images[0], images[2]], text=TEXTS, padding=True, padding_side=side, return_tensors="pt",
               **common)
    length = out["input_ids"].shape[1]
    assert out["offset_mapping"].shape == (len(TEXTS), length, 2)
    bos, align = ours.tokenizer.bos_token_id, ours.alignment_token_id
    keys = ["input_ids", "attention_mask", *AT_ALIGN.keys() - {"attention_mask"}]
    for r, text in enumerate(TEXTS):
        has = r in images
        # llava-hf's processor on this text alone, padded by the tokenizer to the length it has without the token
        want = plain(images=[images[r]] if has else None, text=[text], padding="max_length", padding_side=side,
                     max_length=length - has, return_tensors=None, **common)
        if has:
            row = want["input_ids"][0]
            real = [k for k, m in enumerate(want["attention_mask"][0]) if m]
            at = real[0] + int(row[real[0]] == bos)  # right after BOS, where there is one
            assert int(row[real[0]] == bos) == int(add_special_tokens)
        for key in keys:
            expected = as_lists(want[key])[0]
            if has:
                expected.insert(at, align if key == "input_ids" else AT_ALIGN[key])
            assert as_lists(out[key])[r] == expected, (key, r)


def test_assistant_masks_are_llavas_with_a_zero_at_the_token(processors):
    if not MASKS_WORK:
        pytest.skip(OLD_LINE)
    ours, plain = processors
    chats = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
              {"role": "assistant", "content": [{"type": "text", "text": "a small cat"}]}],
             [{"role": "user", "content": [{"type": "text", "text": "Say something long, please."}]},
              {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}]]
    call = dict(tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt",
                processor_kwargs={"padding": True, "padding_side": "right"})
    images = [[picture(0)], []]
    ours_out = ours.apply_chat_template([[dict(m) for m in c] for c in chats], images=images, **call)
    theirs = plain.apply_chat_template([[dict(m) for m in c] for c in chats], images=images, **call)
    for r in range(2):
        got = [m for m, a in zip(ours_out["assistant_masks"][r].tolist(), ours_out["attention_mask"][r].tolist()) if a]
        want = [m for m, a in zip(theirs["assistant_masks"][r].tolist(), theirs["attention_mask"][r].tolist()) if a]
        if r == 0:
            want.insert(0, 0)  # TRL-style: no BOS in the template, the token opens the row
        assert got == want and sum(got) > 0


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    dataset, _ = trl_dataset(tmp_path_factory.mktemp("aol"), count=2, text_only=1)
    return dataset, [dataset[0], dataset[2], dataset[1]]  # image, text-only, image: different lengths


# the assistant turn of record k as llava-hf's Vicuna template renders it inside {% generation %}:
# "picture number k " (text-only: "hello there "), in the Llama-2 tokenizer's pieces
ASSISTANT_PIECES = [["▁picture", "▁number", "▁", "0", "▁"], ["▁hello", "▁there", "▁"],
                    ["▁picture", "▁number", "▁", "1", "▁"]]


@pytest.mark.parametrize("kind", ["trl", "hf"])
def test_assistant_only_loss_through_the_trainers_collator(processors, examples, tmp_path, kind):
    ours, plain = processors
    dataset, rows = examples
    common = dict(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, report_to=[],
                  save_strategy="no", use_cpu=True, disable_tqdm=True, bf16=False, assistant_only_loss=True)

    def build():
        return build_trainer(tiny_model(ours), ours, dataset, SFTConfig(**common), AlignSFTArguments(align_stage=2),
                             trainer=kind)

    if not MASKS_WORK:  # TRL's SFTTrainer refuses it on this line; our collator (the plain Trainer's) as well
        message = "Assistant-only loss for vision datasets requires" if kind == "trl" else \
            "assistant_only_loss on image data needs transformers>="
        with pytest.raises(ValueError, match=message):
            build()
        return
    collator = build().data_collator
    assert isinstance(collator, AlignGPTVisionCollator) and collator.assistant_only_loss
    out = collator([dict(e) for e in rows])
    tokenizer = ours.tokenizer
    for r, (ids, labels, mask) in enumerate(zip(out["input_ids"], out["labels"], out["attention_mask"])):
        ids, labels, n = ids.tolist(), labels.tolist(), int(mask.sum())
        trained = [k for k, t in enumerate(labels) if t != -100]
        # the assistant turn is the end of each row: its tokens, and nothing else, carry labels (their own ids)
        assert trained == list(range(n - len(ASSISTANT_PIECES[r]), n)), r
        assert tokenizer.convert_ids_to_tokens([ids[k] for k in trained]) == ASSISTANT_PIECES[r]
        assert all(labels[k] == ids[k] for k in trained)
        assert ids[0] == tokenizer.bos_token_id and ids.count(ours.alignment_token_id) == int(r != 1)
    for token in (ours.alignment_token_id, ours.image_token_id):
        assert (out["labels"][out["input_ids"] == token] == -100).all()
    # TRL's own collator with llava-hf's processor trains the same tokens
    theirs = DataCollatorForVisionLanguageModeling(processor=plain, assistant_only_loss=True)([dict(e) for e in rows])
    assert [[t for t in row if t != -100] for row in theirs["labels"].tolist()] == \
        [[t for t in row if t != -100] for row in out["labels"].tolist()]
