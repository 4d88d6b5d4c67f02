"""Training-step time of the HF-native AlignGPT against transformers' own LlavaForConditionalGeneration.

    python bench/hf_step_time.py                                   # CPU, tiny shapes, stage-2 step
    python bench/hf_step_time.py --stage pretrain
    python bench/hf_step_time.py --shape 7b-slice --dtype bfloat16 --attn sdpa              # GPU
    python bench/hf_step_time.py --shape 7b-slice --dtype bfloat16 --attn flash_attention_2  # GPU, if installed

Both models hold the same weights (AlignGPT's plus its alignment module). The batch: per sample BOS, one
336 px image (576 `<image>` tokens) and `--text-tokens` text tokens; the AlignGPT batch has its `<align>`
token after BOS (the gate runs: stage 2, or the sample's level: stage 1), the plain batch does not. The
trainable parameters are the stage's (`set_stage`; the same modules frozen in the plain model). A step is
forward + backward; steps alternate between the models so that drift in the machine's speed hits both
alike. Reported: each model's median, interquartile range and min/max over `--steps` steps (after 2 warm-up
steps), and the ratio of the medians (goal on a GPU: <= 1.02).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {  # text (hidden, intermediate, layers, heads) and vision (hidden, intermediate, layers, heads)
    "tiny": dict(text=(64, 128, 2, 4), vision=(32, 64, 3, 4)),
    # Vicuna-7B's width with 2 of its 32 layers, and the full CLIP ViT-L/14-336 tower
    "7b-slice": dict(text=(4096, 11008, 2, 32), vision=(1024, 4096, 24, 16)),
}
VOCAB, IMAGE_ID, ALIGN_ID, PAD_ID = 32000, 32000, 32002, 32001  # Vicuna's vocabulary grown as the converters do


def build_pair(args):
    """(AlignGPT, transformers' Llava) with the same weights, in the stage's training mode."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    import aligngpt_plugin  # noqa: F401  (registers the config types)
    from aligngpt_plugin.integrations.hf.configuration_aligngpt import AlignGPTLlavaConfig
    from aligngpt_plugin.integrations.hf.modeling_aligngpt import AlignGPTLlavaForConditionalGeneration

    (th, ti, tl, tn), (vh, vi, vl, vn) = SHAPES[args.shape]["text"], SHAPES[args.shape]["vision"]
    vision = CLIPVisionConfig(hidden_size=vh, intermediate_size=vi, num_hidden_layers=vl, num_attention_heads=vn,
                              image_size=336, patch_size=14)
    text = LlamaConfig(hidden_size=th, intermediate_size=ti, num_hidden_layers=tl, num_attention_heads=tn,
                       num_key_value_heads=tn, vocab_size=VOCAB + 3, bos_token_id=1, eos_token_id=2,
                       pad_token_id=PAD_ID, max_position_embeddings=4096)
    common = dict(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=IMAGE_ID,
                  image_seq_length=576, vision_feature_layer=-2, vision_feature_select_strategy="default",
                  projector_hidden_act="gelu", multimodal_projector_bias=True, tie_word_embeddings=False)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    config = AlignGPTLlavaConfig(alignment={"num_levels": 8, "gate_tokens": 576}, alignment_token_id=ALIGN_ID,
                                 **common)
    plain_config = LlavaConfig(**common)
    for c in (config, plain_config):
        c._attn_implementation = args.attn
        c.text_config._attn_implementation = c.vision_config._attn_implementation = args.attn
    aligngpt = AlignGPTLlavaForConditionalGeneration(config).to(args.device, dtype)
    plain = LlavaForConditionalGeneration(plain_config).to(args.device, dtype)
    loaded = plain.load_state_dict(aligngpt.state_dict(), strict=False)
    assert not loaded.missing_keys and all(k.startswith("model.alignment.") for k in loaded.unexpected_keys), loaded
    aligngpt.set_stage(args.stage)
    trainable = {n for n, p in aligngpt.named_parameters() if p.requires_grad}
    for name, p in plain.named_parameters():  # the plain model trains what AlignGPT's stage trains, levels aside
        p.requires_grad_(name in trainable)
    return aligngpt.train(), plain.train()


def make_batches(args) -> tuple[dict, dict]:
    """(AlignGPT batch with <align> after BOS, the same batch without it)."""
    g = torch.Generator().manual_seed(0)
    b = args.batch
    text = torch.randint(3, VOCAB, (b, args.text_tokens), generator=g)
    bos, image = torch.ones(b, 1, dtype=torch.long), torch.full((b, 576), IMAGE_ID)
    plain_ids = torch.cat([bos, image, text], 1)
    ids = torch.cat([bos, torch.full((b, 1), ALIGN_ID), image, text], 1)
    pixels = torch.randn(b, 3, 336, 336, generator=g).to(args.device, getattr(torch, args.dtype))

    def batch(x):
        labels = x.masked_fill(x >= VOCAB, -100)
        labels[:, : x.shape[1] - args.text_tokens // 2] = -100  # the answer: the second half of the text
        return dict(input_ids=x.to(args.device), labels=labels.to(args.device), pixel_values=pixels,
                    attention_mask=torch.ones_like(x).to(args.device))

    ours = batch(ids)
    if args.stage == "pretrain":
        ours["alignment_levels"] = (torch.arange(b) % 8).to(args.device)
    return ours, batch(plain_ids)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # timings must include the queued kernels


def step(model, batch, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    model(**batch).loss.backward()
    sync(device)
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def spread(times: list[float]) -> dict:
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3, "min": min(times), "max": max(times), "n": len(times)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=tuple(SHAPES), default="tiny")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text-tokens", type=int, default=128, help="text tokens per sample besides the image")
    p.add_argument("--steps", type=int, default=20, help="measured steps per model (after 2 warm-up steps)")
    p.add_argument("--stage", choices=("pretrain", "finetune"), default="finetune")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--note", default="", help="recorded with the result (e.g. the machine's load)")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    if args.steps < 4:
        p.error("--steps must be >= 4 (quartiles)")
    import transformers

    load_before = os.getloadavg()  # the machine may be shared: its load is recorded beside the figures
    aligngpt, plain = build_pair(args)
    ours, theirs = make_batches(args)
    times = {"aligngpt": [], "llava": []}
    for i in range(args.steps + 2):
        order = (("llava", plain, theirs), ("aligngpt", aligngpt, ours))
        for name, model, batch in order if i % 2 == 0 else order[::-1]:
            t = step(model, batch, args.device)
            if i >= 2:
                times[name].append(t)
    stats = {k: spread(v) for k, v in times.items()}
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "setup": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg(), "cpus": os.cpu_count()},
        "step_s": stats,
        "time_ratio": stats["aligngpt"]["median"] / stats["llava"]["median"],
        # the spread of the ratio: each step of AlignGPT over the plain step next to it
        "paired_ratio": spread([a / b for a, b in zip(times["aligngpt"], times["llava"])]),
    }
    print(json.dumps(result, indent=1))
    print(f"HF-native AlignGPT / transformers' Llava step time: {result['time_ratio']:.3f} "
          f"(paired IQR {result['paired_ratio']['q1']:.3f}-{result['paired_ratio']['q3']:.3f}; goal <= 1.02 on a GPU)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
