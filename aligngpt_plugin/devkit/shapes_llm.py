"""A tiny LLM that reads the captions' language before LLaVA's stages start, as Vicuna reads English.

    from aligngpt_plugin.devkit.shapes_llm import LanguageTraining, train_language
    train_language(Path("runs/demo/llm"), LanguageTraining())   # in place: the folder LLaVA then loads

LLaVA's stage 1 freezes the LLM and trains only the projector to steer it: that works because the LLM
already speaks the captions' language. A random-init LLM does not, and its stage-1 loss hardly moves
(10.4 -> 10.3 on the demo). So the demo first trains its tiny Llama as a plain causal LM on text alone:
captions of random shapes (in the demo's templates, every colour, shape and place equally likely) and the
web's unrelated alt-text, in the mix the pre-training data has. Which colour is right for a picture is
left for the images to tell; question answering is left to stage 2.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from aligngpt_plugin.devkit import demo_data


@dataclass
class LanguageTraining:
    """Settings of the tiny LLM's language warm-up (next-token training on captions) before the demo trains."""
    steps: int = field(default=100, metadata={"help": "optimiser steps (0: keep the random LLM)"})
    batch_size: int = field(default=24, metadata={"help": "texts per step"})
    learning_rate: float = field(default=3e-3, metadata={"help": "AdamW peak learning rate (warmup, cosine)"})
    seed: int = field(default=0, metadata={"help": "seeds the texts"})


def sample_text(rng: random.Random) -> str:
    """A caption of random content, or unrelated alt-text, as often as in the pre-training data.

    Args:
        rng: the random source.
    Returns:
        The text.
    """
    if rng.random() < demo_data.WEB_MIX["unrelated"]:
        return rng.choice(demo_data.UNRELATED)
    return demo_data.caption(*demo_data.random_content(rng), rng)


def train_language(llm: Path, settings: LanguageTraining | None = None, progress: bool = True) -> list[float]:
    """Train the LLM saved in `llm` on the texts above and save it back there.

    Args:
        llm: the LLM's folder (read and overwritten).
        settings: the training settings (default LanguageTraining(); 0 steps: nothing is done).
        progress: show a progress bar.
    Returns:
        The loss of each step.
    """
    from tqdm import tqdm
    from transformers import AutoTokenizer, LlamaForCausalLM

    s = settings or LanguageTraining()
    if s.steps <= 0:
        return []
    tokenizer = AutoTokenizer.from_pretrained(llm, use_fast=False)  # as LLaVA's train() loads it
    model = LlamaForCausalLM.from_pretrained(llm, dtype=torch.float32)
    model.train()
    rng = random.Random(s.seed + 101)
    torch.manual_seed(s.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=s.learning_rate, weight_decay=0.0)
    warmup = max(1, s.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda i: min(
        (i + 1) / warmup, 0.5 * (1 + math.cos(math.pi * i / s.steps))))
    eos = tokenizer.eos_token_id
    losses = []
    bar = tqdm(range(s.steps), desc="LLM language training", disable=not progress, mininterval=2)
    for _ in bar:
        ids = [tokenizer(sample_text(rng)).input_ids + [eos] for _ in range(s.batch_size)]  # BOS first
        width = max(map(len, ids))
        input_ids = torch.tensor([x + [eos] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=input_ids.masked_fill(mask == 0, -100)).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.save_pretrained(llm, safe_serialization=True)
    return losses
