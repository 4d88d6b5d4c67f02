"""The TRL path against the LLaVA-original path: the same tiny AlignGPT, data, seed and steps trained through
`python -m aligngpt_plugin.train` (LLaVA's `train()`) and through `python -m aligngpt_plugin.sft` (TRL's
SFTTrainer) give the same loss at every step.

The same start: tests/trl_helpers.start_point. The LLaVA-original run gets the LLM (vocabulary grown to the
converted model's 32003 rows) and, through `--pretrain_mm_mlp_adapter`, the projector and alignment module; the
TRL run gets the same weights converted by `llava_to_hf`. The same data: the fixture's LLaVA JSON, read by
LLaVA's own dataset on one side and by `load_sft_dataset` (`llava_json_to_trl`) on the other.

What had to be reconciled, and how:
- vocabulary: the converted model has 3 more rows (`<image>`, `<pad>`, `<align>`), which enter the softmax;
  the LLaVA-original run gets the grown LLM, so both normalise over the same 32003 logits;
- prompt template: LLaVA's stage-1 `plain` template (`<image>` + caption + `\\n`, the human turn dropped) is
  not the processor's Vicuna chat template; the TRL run is given PLAIN_TEMPLATE (`--chat_template_path`);
- tokenization: LLaVA tokenizes the text after `<image>` as a chunk of its own, so SentencePiece prefixes its
  first word with a space piece (`▁A`, 319); the fast tokenizer, reading `<image>` as a special token inside one
  string, does not (`A`, 29909). The template writes a space after `<image>`, which the fast tokenizer turns
  into that same piece. Without it the first step's loss differs by 1.1e-3 (the planted fault: see below);
- BOS: TRL tokenizes with `add_special_tokens=False` and a template without BOS; AlignGPTVisionCollator puts
  BOS first (`--align_add_bos`, default) and `<align>` after it, where the LLaVA-original model puts the
  alignment vector;
- label masks: LLaVA masks BOS and the image; the collator masks `<align>`, the image tokens and the padding;
  TRL's labels keep BOS, which is never a target (the first position predicts nothing);
- loss normalisation: LLaVA's model returns the mean over the micro-batch's target tokens and the Trainer
  divides by the accumulation steps; TRL's loss is the sum over the target tokens divided by
  `num_items_in_batch`, the target count of the whole accumulated batch. With one micro-batch per step
  (accumulation 1) they are the same number; under accumulation they differ whenever micro-batches hold
  different numbers of target tokens (not compared here);
- padding side: both right-pad (LLaVA after splicing in the image features, TRL before expanding `<image>`
  into 576 tokens), so the sequences line up; the mask keeps padding out of both;
- order and dropout: one step holds all 4 records (batch 4), so the sampler's order changes only the order of
  the sum; the tiny Llama and CLIP have no dropout. Step 1 runs at learning rate 0 (1 warm-up step of 3:
  ceil(0.03 x 3)), so steps 1 and 2 share their loss on both sides.
Tolerance: 2e-5 on each step's loss (~2e-6 relative; measured 5e-6): the two models add the same fp32 numbers
in another order (LLaVA concatenates embeddings, transformers' Llava scatters them into the `<image>` slots).
Final weights are not compared element-wise: AdamW's first steps move each weight by about lr x sign(gradient),
so a gradient element near zero whose sign differs by rounding moves by up to 2 x lr (2e-3 seen on one
element of the projector) while the losses agree to 5e-6.

Planted fault: without the space after `<image>` in the template (PLAIN_TEMPLATE_UNSPACED) the first caption
token differs and step 1's loss is 10.40548 against LLaVA's 10.40433.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from trl_helpers import environment, rank_dumps, run_bounded, start_point

from aligngpt_plugin.devkit import pipeline

TIMEOUT = 300
# LLaVA's `plain` conversation (llava/conversation.py conv_llava_plain, preprocess_plain): the image, the
# caption, the separator "\n"; the space after <image> reproduces LLaVA's chunk-wise tokenization
PLAIN_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<image> ' }}{% endif %}{% endfor %}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{{ '\\n' }}{% endif %}{% endfor %}")
PLAIN_TEMPLATE_UNSPACED = PLAIN_TEMPLATE.replace("'<image> '", "'<image>'")
STEPS, BATCH, LR, SEED = 3, 4, "1e-3", 42


@pytest.fixture(scope="module")
def start(tiny, llava_ready, tmp_path_factory):
    return start_point(tiny, tmp_path_factory.mktemp("trl_eq") / "start")


@pytest.fixture(scope="module")
def captions(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trl_eq_data") / "captions.json"
    path.write_text(json.dumps(json.loads(tiny.pretrain_levels.read_text())[:BATCH]))
    return path


def trl_stage1(start, tiny, data: Path, out: Path, template: str) -> dict:
    (out.parent / "plain.jinja").write_text(template)
    run_bounded([sys.executable, "-m", "aligngpt_plugin.sft", "--model_name_or_path", str(start.hf),
                 "--dataset_name", str(data), "--image_folder", str(tiny.images), "--align_stage", "1",
                 "--chat_template_path", str(out.parent / "plain.jinja"), "--output_dir", str(out),
                 "--max_steps", str(STEPS), "--per_device_train_batch_size", str(BATCH), "--learning_rate", LR,
                 "--weight_decay", "0.", "--warmup_ratio", "0.03", "--lr_scheduler_type", "cosine",
                 "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
                 "--dataloader_num_workers", "0", "--seed", str(SEED)], TIMEOUT, environment(out.parent / "dump"))
    return rank_dumps(out.parent / "dump", 1)[0]


@pytest.fixture(scope="module")
def llava_stage1(start, tiny, captions, tmp_path_factory) -> dict:
    """The LLaVA-original stage 1 (pipeline.pretrain_args: LLaVA-1.5's pretrain.sh, scaled down)."""
    root = tmp_path_factory.mktemp("trl_eq_llava1")
    settings = pipeline.StageSettings(max_steps=STEPS, batch_size=BATCH, learning_rate=float(LR), seed=SEED,
                                      save_steps=1000)
    args = pipeline.pretrain_args(tiny, root / "out", settings, data=captions, llm=start.llm,
                                  extra=("--align_levels", "8", "--pretrain_mm_mlp_adapter", str(start.adapter)))
    run_bounded([sys.executable, "-m", "aligngpt_plugin.train", *args], TIMEOUT, environment(root / "dump"))
    return rank_dumps(root / "dump", 1)[0]


def test_stage1_losses_per_step_equal_the_llava_original_path(start, tiny, captions, llava_stage1, tmp_path):
    ours = trl_stage1(start, tiny, captions, tmp_path / "out", PLAIN_TEMPLATE)
    theirs = llava_stage1
    assert ours["info"]["trainer"].endswith("SFTTrainer") and theirs["info"]["wrapped"] == "AlignGPTLlamaForCausalLM"
    assert len(ours["info"]["step_losses"]) == len(theirs["info"]["step_losses"]) == STEPS
    assert ours["info"]["step_losses"] == pytest.approx(theirs["info"]["step_losses"], abs=2e-5)
    # the same parts trained: the projector and the level embeddings
    assert sorted(k.split(".")[1] for k in ours["state"]) == sorted(
        {"alignment": "alignment", "mm_projector": "multi_modal_projector"}[k.split(".")[1]] for k in theirs["state"])
