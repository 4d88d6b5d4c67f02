"""Tiny HF-native AlignGPT folders, pictures and data files for the TRL-path tests (tests/test_trl_*.py,
tests/test_sft_cli.py): a 2-layer Llama with the bundled Llama-2 tokenizer grown by <image>, <pad> and
<align>, a 2-layer CLIP tower on 28x28 pictures (4 image tokens), llava-hf's Vicuna chat template."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from transformers import TrainerCallback

NUM_LEVELS = 4


def tiny_processor():
    """The AlignGPT processor: Llama-2 tokenizer + <image>, <pad>, <align>; CLIP image processor at 28x28."""
    from transformers import AutoTokenizer, CLIPImageProcessor

    import aligngpt_plugin.integrations.hf.configuration_aligngpt  # noqa: F401  (first: see the report on processing_aligngpt)
    from aligngpt_plugin.conversion.hf import VICUNA_CHAT_TEMPLATE
    from aligngpt_plugin.devkit.tiny_checkpoints import tokenizer_dir
    from aligngpt_plugin.integrations.hf.processing_aligngpt import AlignGPTLlavaProcessor

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<align>"], "pad_token": "<pad>"})
    images = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return AlignGPTLlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14,
                                  vision_feature_select_strategy="default", chat_template=VICUNA_CHAT_TEMPLATE,
                                  num_additional_image_tokens=1)


def tiny_model(processor, seed: int = 0, num_levels: int = NUM_LEVELS, text_hidden: int = 32):
    """A random AlignGPT model matching `processor` (vocabulary 32003, LLM hidden `text_hidden`, 2 layers)."""
    from transformers import CLIPVisionConfig, LlamaConfig

    from aligngpt_plugin.integrations.hf.configuration_aligngpt import AlignGPTLlavaConfig
    from aligngpt_plugin.integrations.hf.modeling_aligngpt import AlignGPTLlavaForConditionalGeneration

    tok = processor.tokenizer
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=28, patch_size=14, projection_dim=32)
    text = LlamaConfig(hidden_size=text_hidden, intermediate_size=2 * text_hidden, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok), bos_token_id=1,
                       eos_token_id=2, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    config = AlignGPTLlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=processor.image_token_id,
        image_seq_length=4, alignment_token_id=processor.alignment_token_id, pad_token_id=tok.pad_token_id,
        alignment={"num_levels": num_levels, "gate_tokens": 4, "gate_hidden_size": 8}, tie_word_embeddings=False)
    model = AlignGPTLlavaForConditionalGeneration(config)
    with torch.no_grad():  # levels far apart, so a misplaced or missing vector shows
        model.alignment.level_embeddings.normal_(std=1.0)
    return model


def write_tiny_folder(folder: Path, seed: int = 0) -> Path:
    """An HF-native AlignGPT folder (model + processor) that AutoModelForImageTextToText / AutoProcessor load."""
    processor = tiny_processor()
    tiny_model(processor, seed).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_pictures(folder: Path, count: int = 6) -> list[str]:
    """`count` small distinct RGB pictures (PNG) in `folder`; their file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for k in range(count):
        g = torch.Generator().manual_seed(k)
        pixels = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"p{k}.png")
        names.append(f"p{k}.png")
    return names


def llava_records(names: list[str], text_only: int = 1) -> list[dict]:
    """LLaVA records: one image-caption pair per picture (level k mod NUM_LEVELS) and `text_only` chats."""
    records = [{"id": f"r{k}", "image": name, "align_level": k % NUM_LEVELS,
                "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"},
                                  {"from": "gpt", "value": f"picture number {k}"}]}
               for k, name in enumerate(names)]
    records += [{"id": f"t{k}", "conversations": [{"from": "human", "value": "Say hello."},
                                                  {"from": "gpt", "value": "hello there"}]}
                for k in range(text_only)]
    return records


def write_llava_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path


def plain_llava_processor(processor):
    """transformers' own LlavaProcessor with the same tokenizer, image processor and template: what TRL's
    collator gets for llava-hf (no alignment token)."""
    from transformers import LlavaProcessor

    return LlavaProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                          patch_size=processor.patch_size,
                          vision_feature_select_strategy=processor.vision_feature_select_strategy,
                          chat_template=processor.chat_template, num_additional_image_tokens=1)


def trl_dataset(tmp_path: Path, count: int = 6, text_only: int = 1):
    """(dataset, image folder): the LLaVA records of `llava_records` converted to TRL's format."""
    from aligngpt_plugin.integrations.hf.data import llava_json_to_trl

    names = write_pictures(tmp_path / "images", count)
    path = write_llava_json(tmp_path / "data.json", llava_records(names, text_only))
    return llava_json_to_trl(path, tmp_path / "images"), tmp_path / "images"


class GradientNames(TrainerCallback):
    """The names of the parameters holding a non-zero gradient when the optimizer steps (every step)."""

    def __init__(self):
        self.names: set[str] = set()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.names |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
