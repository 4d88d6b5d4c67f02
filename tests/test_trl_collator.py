"""AlignGPTVisionCollator against TRL's own DataCollatorForVisionLanguageModeling run on the same examples with
transformers' plain LlavaProcessor (what TRL does for llava-hf): the same tokens plus one `<align>` after BOS
on image rows, the same labels with `<align>` and the image tokens masked, each record's level."""

from __future__ import annotations

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
from trl_tiny import NUM_LEVELS, plain_llava_processor, tiny_processor, trl_dataset

from aligngpt_plugin.integrations.hf.collator import AlignGPTVisionCollator

BOS_TEMPLATE = "{{ bos_token }}"


@pytest.fixture(scope="module")
def processors():
    ours = tiny_processor()
    return ours, plain_llava_processor(ours)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    dataset, _ = trl_dataset(tmp_path_factory.mktemp("collator"), count=3, text_only=1)
    rows = [dataset[k] for k in range(len(dataset))]
    # image, text-only, image, image: mixed rows, different lengths (the captions differ); a level on the
    # text-only row must not reach the model (it has no alignment token)
    return [rows[0], {**rows[3], "align_level": 2}, rows[1], rows[2]]


def without(ids: torch.Tensor, mask: torch.Tensor, drop: list[int]) -> list[list[int]]:
    """Each row's real tokens with the first occurrence of each id in `drop` (where present) removed."""
    rows = []
    for row, keep in zip(ids.tolist(), mask.bool().tolist()):
        row = [t for t, k in zip(row, keep) if k]
        for token in drop:
            if token in row:
                row.remove(token)
        rows.append(row)
    return rows


def real(labels: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    return [[t for t, k in zip(row, keep) if k] for row, keep in zip(labels.tolist(), mask.bool().tolist())]


@pytest.mark.parametrize("bos_in_template", [False, True])
def test_tokens_and_labels_are_trls_plus_the_alignment_token(processors, examples, bos_in_template):
    ours, plain = processors
    template = (BOS_TEMPLATE if bos_in_template else "") + ours.chat_template
    theirs = DataCollatorForVisionLanguageModeling(processor=plain, chat_template=template)(
        [dict(e) for e in examples])
    out = AlignGPTVisionCollator(processor=ours, chat_template=template)([dict(e) for e in examples])
    bos, align, image = ours.tokenizer.bos_token_id, ours.alignment_token_id, ours.image_token_id
    expected = real(theirs["input_ids"], theirs["attention_mask"])
    # TRL tokenizes with add_special_tokens=False: without {{ bos_token }} its rows have no BOS
    assert all((row[0] == bos) == bos_in_template for row in expected)
    if not bos_in_template:
        expected = [[bos, *row] for row in expected]
    got = real(out["input_ids"], out["attention_mask"])
    with_image = [bool(e["images"]) for e in examples]
    for row, want, has in zip(got, expected, with_image):
        assert row[0] == bos and row.count(align) == int(has)
        assert row == ([want[0], align, *want[1:]] if has else want)
    # labels: TRL's (padding masked), the alignment token and image tokens masked, the BOS's label unused
    their_labels = real(theirs["labels"], theirs["attention_mask"])
    for row, lab, want, has in zip(got, real(out["labels"], out["attention_mask"]), their_labels, with_image):
        want = [-100 if t == image else t for t in want]
        want = want if bos_in_template else [-100, *want]
        assert lab == ([want[0], -100, *want[1:]] if has else want)
        assert all(lab[k] == -100 for k, t in enumerate(row) if t in (align, image))
    assert out["labels"][out["attention_mask"] == 0].eq(-100).all()
    assert out["alignment_levels"].tolist() == [e["align_level"] if e["images"] else -1 for e in examples]
    assert out["alignment_levels"].dtype == torch.long and max(out["alignment_levels"]) < NUM_LEVELS
    torch.testing.assert_close(out["pixel_values"], theirs["pixel_values"], atol=0, rtol=0)


def test_completion_only_loss_trains_the_completion_as_trl_does(processors, examples):
    ours, plain = processors
    pairs = [{"prompt": e["messages"][:1], "completion": e["messages"][1:], "images": e["images"],
              "align_level": e["align_level"]} for e in examples]
    theirs = DataCollatorForVisionLanguageModeling(processor=plain, completion_only_loss=True)(
        [dict(p) for p in pairs])
    out = AlignGPTVisionCollator(processor=ours, completion_only_loss=True)([dict(p) for p in pairs])
    their_targets = [[t for t in row if t != -100] for row in theirs["labels"].tolist()]
    our_targets = [[t for t in row if t != -100] for row in out["labels"].tolist()]
    completion = ours.tokenizer([" ".join(m["content"][0]["text"] for m in p["completion"]) for p in pairs],
                                add_special_tokens=False)["input_ids"]
    assert our_targets == their_targets and all(len(t) > 0 for t in our_targets)
    assert all(target[:len(c) - 1] == c[:-1] for target, c in zip(our_targets, completion))  # the answer only
    assert out["alignment_levels"].tolist() == [e["align_level"] if e["images"] else -1 for e in examples]
    align = out["input_ids"] == ours.alignment_token_id
    assert align.sum(1).tolist() == [int(bool(e["images"])) for e in examples]
    assert (out["input_ids"][:, 0] == ours.tokenizer.bos_token_id).all() and align[:, 1].tolist() == [
        bool(e["images"]) for e in examples]


def test_from_trl_keeps_trls_settings_and_the_level_column_never_reaches_trl(processors, examples):
    ours, _ = processors
    inner = DataCollatorForVisionLanguageModeling(processor=ours, max_length=512, completion_only_loss=False)
    wrapped = AlignGPTVisionCollator.from_trl(inner, add_bos=False)
    assert (wrapped.max_length, wrapped.add_bos, wrapped.processor) == (512, False, ours)
    given = [dict(e) for e in examples]
    wrapped(given)
    assert all("align_level" in g for g in given)  # the caller's examples are not modified
    with pytest.raises(TypeError, match="inserts no alignment token"):
        AlignGPTVisionCollator(processor=plain_llava_processor(ours))
