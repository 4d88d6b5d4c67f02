"""Checkpoints converted to and from the HF-native layout, against forwards that are not the HF-native model's:
the public code's forward rebuilt in tests/released_layout.py, LLaVA's own `LlavaLlamaForCausalLM`, and the
LLaVA-original AlignGPT."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from released_layout import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    ReleasedReference,
    question_pictures,
    released_state,
    tokenize,
    write_released,
)

import aligngpt_plugin  # noqa: F401  (registers the config types)

pytestmark = pytest.mark.usefixtures("llava_ready")
LOGITS_ATOL, GATE_ATOL = 5e-5, 1e-6


@pytest.fixture(scope="module")
def released(tiny):
    return released_state(tiny)


@pytest.fixture(scope="module")
def hf_folder(tiny, released, tmp_path_factory):
    from aligngpt_plugin.conversion.hf import released_to_hf

    root = tmp_path_factory.mktemp("released_hf")
    source = write_released(root / "aligngpt-7b", *released, tiny.llm, shards=2)
    return released_to_hf(source, root / "aligngpt-7b-hf")


@pytest.fixture(scope="module")
def model(hf_folder):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(hf_folder).eval()


@pytest.fixture(scope="module")
def pictures(tiny):
    return question_pictures(tiny)


def to_hf(config, ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The HF-native sequence of one LLaVA sample: <align> after BOS and <image> x image_seq_length where
    LLaVA splices the image; none of either on a text-only sample. Labels ignore both."""
    at = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    if not at:
        return ids, labels
    n, k = config.image_seq_length, at[0]
    new_ids = [ids[:1], torch.tensor([config.alignment_token_id]), ids[1:k],
               torch.full((n,), config.image_token_id), ids[k + 1:]]
    new_labels = [labels[:1], torch.tensor([IGNORE_INDEX]), labels[1:k], torch.full((n,), IGNORE_INDEX), labels[k + 1:]]
    return torch.cat(new_ids), torch.cat(new_labels)


def right_padded(samples):
    width = max(len(ids) for ids, _ in samples)
    ids = torch.zeros(len(samples), width, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX)
    mask = torch.zeros(len(samples), width, dtype=torch.long)
    for row, (i, lab) in enumerate(samples):
        ids[row, :len(i)], labels[row, :len(i)], mask[row, :len(i)] = i, lab, 1
    return ids, labels, mask


def batch_loss(logits: torch.Tensor, labels: torch.Tensor, vocab: int) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's labelled tokens, over the original vocabulary (the
    converted one has 3 more entries, which would enter the softmax)."""
    return torch.nn.functional.cross_entropy(logits[:, :-1, :vocab].flatten(0, 1), labels[:, 1:].flatten(),
                                             ignore_index=IGNORE_INDEX)


def test_finetuning_batch_with_image_and_text_rows_matches_the_public_forward(tiny, released, model, pictures):
    reference = ReleasedReference(*released)
    rows = [tokenize(tiny, "USER: <image>\nWhat colour is the shape? ASSISTANT:", " red"),
            tokenize(tiny, "USER: Name a colour. ASSISTANT:", " Blue is a colour"),
            tokenize(tiny, "USER: <image>\nWhere is the shape in the picture? ASSISTANT:", " top left")]
    ids, labels, mask = right_padded([to_hf(model.config, *row) for row in rows])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=torch.stack(pictures))
    ref_logits, ref_loss, ref_gates = reference.logits_and_loss(
        [(rows[0][0], rows[0][1], pictures[0], None), (rows[1][0], rows[1][1], None, None),
         (rows[2][0], rows[2][1], pictures[1], None)])
    vocab = ref_logits[0].shape[-1]
    for row, expected in enumerate(ref_logits):  # right padding: each row's real positions come first
        assert int(mask[row].sum()) == len(expected)
        torch.testing.assert_close(out.logits[row, :len(expected), :vocab], expected, atol=LOGITS_ATOL, rtol=0)
    torch.testing.assert_close(out.gate_weights, torch.stack([ref_gates[0], ref_gates[2]]), atol=GATE_ATOL, rtol=0)
    torch.testing.assert_close(batch_loss(out.logits, labels, vocab), ref_loss, atol=1e-5, rtol=0)
    assert (ref_gates[0] - ref_gates[2]).abs().max() > 0.01, "the gate must depend on its input for this test"


def test_pretraining_batch_matches_the_public_forward(tiny, released, model, pictures):
    reference = ReleasedReference(*released)
    rows = [tokenize(tiny, "<image>\n", "a red circle at the top left"),
            tokenize(tiny, "<image>\n", "a blue square in the centre of the picture")]
    ids, labels, mask = right_padded([to_hf(model.config, *row) for row in rows])
    levels = torch.tensor([2, 7])
    model.config.alignment_stage = "pretrain"
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, labels=labels, pixel_values=torch.stack(pictures),
                        alignment_levels=levels)
    finally:
        model.config.alignment_stage = "finetune"
    ref_logits, ref_loss, _ = reference.logits_and_loss(
        [(i, lab, pix, int(lv)) for (i, lab), pix, lv in zip(rows, pictures, levels)])
    vocab = ref_logits[0].shape[-1]
    for row, expected in enumerate(ref_logits):
        torch.testing.assert_close(out.logits[row, :len(expected), :vocab], expected, atol=LOGITS_ATOL, rtol=0)
    torch.testing.assert_close(batch_loss(out.logits, labels, vocab), ref_loss, atol=1e-5, rtol=0)
    assert out.gate_weights is None


def test_prefill_and_cached_decode_match_the_public_forward(tiny, released, model, pictures):
    reference = ReleasedReference(*released)
    ids, labels = tokenize(tiny, "A chat. USER: <image>\nWhat colour is the shape? ASSISTANT:", None)
    hf_ids, _ = to_hf(model.config, ids, labels)
    steps = 6
    with torch.no_grad():
        out = model.generate(hf_ids[None], pixel_values=pictures[0][None], max_new_tokens=steps,
                             min_new_tokens=steps, do_sample=False, output_logits=True, return_dict_in_generate=True)
    tokens, step_logits = reference.greedy(ids, pictures[0], steps)
    assert out.sequences[0, hf_ids.shape[0]:].tolist() == tokens
    vocab = step_logits[0].shape[-1]
    for ours, expected in zip(out.logits, step_logits):
        torch.testing.assert_close(ours[0, :vocab], expected, atol=LOGITS_ATOL, rtol=0)
    _, _, gate = reference.sequence(ids, None, pictures[0])
    torch.testing.assert_close(model.last_gate_weights[0], gate, atol=GATE_ATOL, rtol=0)


def test_back_to_the_llava_layout_gives_the_llava_original_model_the_same_logits(tiny, hf_folder, model, pictures,
                                                                                 tmp_path):
    from transformers import AutoModelForCausalLM

    from aligngpt_plugin.conversion.hf import hf_to_llava
    from aligngpt_plugin.integrations.llava.model import AlignGPTLlamaForCausalLM

    back = AutoModelForCausalLM.from_pretrained(hf_to_llava(hf_folder, tmp_path / "llava")).eval()
    assert type(back) is AlignGPTLlamaForCausalLM
    back.get_vision_tower().load_model()
    ids, labels = tokenize(tiny, "USER: <image>\nWhat colour is the shape? ASSISTANT:", " red")
    hf_ids, hf_labels = to_hf(model.config, ids, labels)
    with torch.no_grad():
        ours = model(input_ids=hf_ids[None], pixel_values=pictures[0][None])
        theirs = back(input_ids=ids[None], images=pictures[0][None])
    torch.testing.assert_close(ours.logits, theirs.logits, atol=LOGITS_ATOL, rtol=0)
    torch.testing.assert_close(ours.gate_weights, theirs.gate_weights, atol=GATE_ATOL, rtol=0)


def test_plain_llava_checkpoint_in_transformers_llava_gives_llavas_logits(tiny, tmp_path, pictures):
    """The key mapping and the <image> expansion are those of transformers' own converter: a plain LLaVA
    checkpoint, converted, gives in transformers' LlavaForConditionalGeneration the logits of LLaVA's
    LlavaLlamaForCausalLM at the corresponding positions."""
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
    from transformers import AutoConfig, LlavaForConditionalGeneration

    from aligngpt_plugin.conversion.hf import llava_to_hf
    from aligngpt_plugin.devkit.tiny_checkpoints import tokenizer_dir, vision_module_args

    base = AutoConfig.from_pretrained(tiny.llm).to_dict()
    base.pop("model_type", None)
    torch.manual_seed(0)
    llava = LlavaLlamaForCausalLM.from_pretrained(tiny.llm, config=LlavaConfig(**base))
    llava.get_model().initialize_vision_modules(vision_module_args(tiny.clip))
    llava.config.mm_vision_tower = str(tiny.clip)
    llava.save_pretrained(tmp_path / "llava", safe_serialization=True)
    for f in tokenizer_dir().iterdir():
        (tmp_path / "llava" / f.name).write_bytes(f.read_bytes())
    folder = llava_to_hf(tmp_path / "llava", tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(folder).eval()
    assert hf.config.model_type == "llava"
    ids, labels = tokenize(tiny, "USER: <image>\nWhat colour is the shape? ASSISTANT:", " red")
    at = int((ids == IMAGE_TOKEN_INDEX).nonzero())
    hf_ids = torch.cat([ids[:at], torch.full((576,), hf.config.image_token_id), ids[at + 1:]])
    with torch.no_grad():
        theirs = llava.eval()(input_ids=ids[None], images=pictures[0][None]).logits
        ours = hf(input_ids=hf_ids[None], pixel_values=pictures[0][None]).logits
    torch.testing.assert_close(ours[..., :theirs.shape[-1]], theirs, atol=LOGITS_ATOL, rtol=0)


def convert_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "aligngpt-convert"), *map(str, args)],
                          capture_output=True, text=True)


def test_convert_command_to_hf_and_back_as_typed(tiny, released, hf_folder, tmp_path):
    from safetensors.torch import load_file

    source = write_released(tmp_path / "aligngpt-7b", *released, tiny.llm)
    proc = convert_cli("to-hf", source, tmp_path / "hf")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {tmp_path / 'hf'}"
    ours = {}
    for f in sorted((tmp_path / "hf").glob("*.safetensors")):
        ours.update(load_file(f))
    fixture = {}
    for f in sorted(hf_folder.glob("*.safetensors")):
        fixture.update(load_file(f))
    assert ours.keys() == fixture.keys() and all(torch.equal(ours[k], fixture[k]) for k in ours)
    back = convert_cli("from-hf", tmp_path / "hf", tmp_path / "llava", "--vision-tower", tiny.clip)
    assert back.returncode == 0, back.stderr
    assert (tmp_path / "llava" / "config.json").is_file()
    again = convert_cli("to-hf", source, tmp_path / "hf")
    assert again.returncode == 2 and "already exists" in again.stderr
    (tmp_path / "empty").mkdir()
    empty = convert_cli("to-hf", tmp_path / "empty", tmp_path / "out")
    assert empty.returncode == 2 and "has no config.json" in empty.stderr and not (tmp_path / "out").exists()


def test_a_folder_saved_by_save_pretrained_converts_back_with_the_same_logits(tiny, hf_folder, model, pictures,
                                                                              tmp_path):
    """What `aligngpt-sft` and the Trainer's checkpoints write: `save_pretrained`'s own layout. On transformers 4.57
    that is Llava's legacy key layout (`language_model.model.*`, `vision_tower.*`, ...); `hf_to_llava` read only
    the current one and stopped ("no place in the other layout": the demo's TRL route found it). The
    LLaVA-original model of the converted folder gives the HF model's logits and gates."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    from aligngpt_plugin.conversion.hf import hf_to_llava

    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    AutoProcessor.from_pretrained(hf_folder).save_pretrained(saved)
    back = AutoModelForCausalLM.from_pretrained(hf_to_llava(saved, tmp_path / "llava", vision_tower=str(tiny.clip)))
    back.eval().get_vision_tower().load_model()
    ids, labels = tokenize(tiny, "USER: <image>\nWhat colour is the shape? ASSISTANT:", " red")
    hf_ids, _ = to_hf(model.config, ids, labels)
    with torch.no_grad():
        ours = model(input_ids=hf_ids[None], pixel_values=pictures[0][None])
        theirs = back(input_ids=ids[None], images=pictures[0][None])
    torch.testing.assert_close(ours.logits, theirs.logits, atol=LOGITS_ATOL, rtol=0)
    torch.testing.assert_close(ours.gate_weights, theirs.gate_weights, atol=GATE_ATOL, rtol=0)
