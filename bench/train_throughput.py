"""Training throughput of AlignGPT vs LLaVA: tokens/s, model FLOPs utilisation, peak memory, step-time ratio.

    python bench/train_throughput.py                                   # CPU: a tiny shape, fp32, SDPA
    python bench/train_throughput.py --shape 7b-slice --stage finetune --zero 3    # GPU: 7B-shaped slice, bf16
    python bench/train_throughput.py --shape 7b-slice --stage pretrain --zero 2

The 7B-shaped slice is Vicuna-7B's width (hidden 4096, 32 heads, intermediate 11008, vocabulary 32000)
with `--layers` decoder layers (default 4), in bf16, with FlashAttention-2 when flash-attn is installed
(else SDPA), gradient checkpointing on as in the scripts, and a CLIP-L-shaped vision tower cut to
`--vision-layers`. Both models share every weight and see the same batch (one 336 px image = 576 image
tokens + `--text-tokens` text tokens per sample); full steps (forward, backward, AdamW step) alternate
between them, through a DeepSpeed engine with the shipped ZeRO config when `--zero 2|3` is given.

Model FLOPs per step (no recomputation counted), from the parameter counts of the model itself:
- fine-tuning (LLM and projector train): 6 N_llm + 12 L d T per token (weights and attention, forward
  and backward), plus the frozen vision tower's forward, 2 N_vision per image token;
- pre-training (only projector and levels train): the LLM still back-propagates to the projector but
  computes no weight gradients: 4 N_llm + 12 L d T per token, plus the vision forward.
N_llm excludes the input embedding (a lookup) and includes lm_head. MFU = model FLOPs/s over the
device's dense bf16 peak (table below; `--peak-tflops` for others). The goals: MFU >= 40% on H100 in
fine-tuning and an AlignGPT / LLaVA step-time ratio under 1.02.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H200": 989.0,
    "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.0,
}
SHAPES = {  # name -> LLM and vision sizes
    "tiny": dict(hidden=64, heads=4, intermediate=128, vision_hidden=32, vision_heads=4, vision_layers=3),
    "7b-slice": dict(hidden=4096, heads=32, intermediate=11008, vision_hidden=1024, vision_heads=16,
                     vision_layers=4),
}


def peak_tflops(device_name: str) -> float | None:
    """The table's entry whose name occurs in the device name (longest match first)."""
    for name in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if name.lower() in device_name.lower():
            return PEAK_BF16_TFLOPS[name]
    return None


def write_vision_tower(folder: Path, shape: dict) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    width = shape["vision_hidden"]
    config = CLIPVisionConfig(hidden_size=width, intermediate_size=width * 4, num_hidden_layers=shape["vision_layers"],
                              num_attention_heads=shape["vision_heads"], image_size=336, patch_size=14)
    CLIPVisionModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(folder)
    return folder


def build_pair(args, shape: dict, folder: Path):
    """LLaVA and AlignGPT with the same weights, on the device, in the dtype, in training mode."""
    from aligngpt_plugin.integrations.llava.compat import prepare_llava

    prepare_llava()
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

    from aligngpt_plugin.devkit.tiny_checkpoints import vision_module_args
    from aligngpt_plugin.integrations.llava.model import AlignGPTConfig, AlignGPTLlamaForCausalLM

    dtype = getattr(torch, args.dtype)
    clip = write_vision_tower(folder / "clip", shape)
    values = dict(vocab_size=32000, hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                  num_hidden_layers=args.layers, num_attention_heads=shape["heads"],
                  num_key_value_heads=shape["heads"], max_position_embeddings=4096, tie_word_embeddings=False)
    vision = vision_module_args(clip)
    torch.manual_seed(0)
    with torch.device(args.device):
        llava = LlavaLlamaForCausalLM(LlavaConfig(**values, attn_implementation=args.attn)).to(dtype)
        aligngpt = AlignGPTLlamaForCausalLM(AlignGPTConfig(alignment={}, attn_implementation=args.attn,
                                                           **values)).to(dtype)
    for model in (llava, aligngpt):
        model.get_model().initialize_vision_modules(vision)
        model.get_vision_tower().to(args.device, dtype)
        model.get_model().mm_projector.to(args.device, dtype)
    missing, unexpected = aligngpt.load_state_dict(llava.state_dict(), strict=False)
    assert not unexpected and all("alignment" in k for k in missing), (missing, unexpected)
    aligngpt.get_model().alignment.to(args.device, dtype)
    pretraining = args.stage == "pretrain"
    for model in (llava, aligngpt):
        model.config.tune_mm_mlp_adapter = pretraining
        model.config.use_cache = False
        model.requires_grad_(not pretraining)
        model.get_vision_tower().requires_grad_(False)
        model.get_model().mm_projector.requires_grad_(True)
        if args.grad_ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
    aligngpt.get_model().alignment.level_embeddings.requires_grad_(pretraining)
    aligngpt.get_model().alignment.gate.requires_grad_(not pretraining)
    return llava, aligngpt


def make_batch(args, dtype: torch.dtype) -> dict:
    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, 32000, (args.batch, args.text_tokens), generator=g)
    ids = torch.cat([torch.ones(args.batch, 1, dtype=torch.long), torch.full((args.batch, 1), IMAGE_TOKEN_INDEX),
                     text], 1)
    labels = ids.clone()
    labels[:, : 2 + args.text_tokens // 2] = IGNORE_INDEX
    return dict(input_ids=ids.to(args.device), labels=labels.to(args.device),
                attention_mask=torch.ones_like(ids, dtype=torch.bool).to(args.device),
                images=torch.randn(args.batch, 3, 336, 336, generator=g).to(args.device, dtype))


def count_flops(model, args, shape: dict, image_tokens: int) -> dict:
    """Model FLOPs of one training step (see the module docstring)."""
    inner = model.get_model()
    embed = inner.embed_tokens.weight.numel()
    vision = sum(p.numel() for p in model.get_vision_tower().parameters())
    projector = sum(p.numel() for p in inner.mm_projector.parameters())
    llm = sum(p.numel() for p in model.parameters()) - vision - projector - embed
    alignment = sum(p.numel() for p in inner.alignment.parameters()) if hasattr(inner, "alignment") else 0
    llm -= alignment
    tokens = args.batch * (1 + image_tokens + args.text_tokens)
    weight_factor = 6 if args.stage == "finetune" else 4
    attention = 12 * args.layers * shape["hidden"] * (1 + image_tokens + args.text_tokens)
    per_token = weight_factor * (llm + projector) + attention
    vision_flops = 2 * vision * args.batch * (image_tokens + 1)
    return {"tokens": tokens, "llm_params": llm, "vision_params": vision, "projector_params": projector,
            "flops_per_step": per_token * tokens + vision_flops}


def wrap_deepspeed(model, args):
    """A DeepSpeed engine with the shipped ZeRO config (auto values filled in), or the model with AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    if args.zero == "none":
        return model, optimizer
    import deepspeed

    from aligngpt_plugin.deepspeed_configs import load_config

    config = load_config(f"zero{args.zero}")
    config.update(train_micro_batch_size_per_gpu=args.batch, gradient_accumulation_steps=1,
                  train_batch_size=args.batch, gradient_clipping=1.0)
    config["bf16"] = {"enabled": args.dtype == "bfloat16"}
    config["fp16"] = {"enabled": args.dtype == "float16"}
    zero = config["zero_optimization"]
    for key, value in list(zero.items()):
        if value == "auto":
            zero[key] = int(5e8) if "bucket" in key else int(1e5)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    deepspeed.init_distributed()
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=params,
                                                   config=config)
    return engine, optimizer


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # the timings must include the queued kernels


def train_step(model, optimizer, batch: dict, args) -> float:
    sync(args.device)
    start = time.perf_counter()
    kwargs = dict(batch)
    if hasattr(getattr(model, "module", model), "alignment") and args.stage == "pretrain":
        kwargs["alignment_levels"] = torch.arange(args.batch, device=args.device) % 8
    loss = model(**kwargs).loss
    if hasattr(model, "backward"):  # DeepSpeed engine: its own backward and step
        model.backward(loss)
        model.step()
    else:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(args.device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: 7b-slice on GPU, tiny on CPU")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (default 4 for 7b-slice, 2 for tiny)")
    p.add_argument("--stage", choices=("pretrain", "finetune"), default="finetune")
    p.add_argument("--zero", choices=("none", "2", "3"), default="none", help="DeepSpeed ZeRO stage (shipped config)")
    p.add_argument("--batch", type=int, default=None, help="samples per step (default 8 on GPU, 2 on CPU)")
    p.add_argument("--text-tokens", type=int, default=None, help="text tokens per sample (default 448 GPU, 64 CPU)")
    p.add_argument("--steps", type=int, default=None, help="measured steps per model, after 2 warm-up steps")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None)
    p.add_argument("--attn", choices=("flash_attention_2", "sdpa", "eager"), default=None,
                   help="default: the entry point's choice (flash_attention_2 when installed on a GPU, else sdpa)")
    p.add_argument("--no-grad-ckpt", dest="grad_ckpt", action="store_false", help="no gradient checkpointing")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, if not in the table")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.shape = args.shape or ("7b-slice" if gpu else "tiny")
    args.layers = args.layers or (4 if args.shape == "7b-slice" else 2)
    args.batch = args.batch or (8 if gpu else 2)
    args.text_tokens = args.text_tokens or (448 if gpu else 64)
    args.steps = args.steps or (10 if gpu else 3)
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    if args.attn is None:
        from aligngpt_plugin.integrations.llava.training import pick_attention

        args.attn = pick_attention()
    shape = SHAPES[args.shape]
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # --tf32 True

    with tempfile.TemporaryDirectory() as tmp:
        llava, aligngpt = build_pair(args, shape, Path(tmp))
    image_tokens = (336 // 14) ** 2
    flops = count_flops(llava, args, shape, image_tokens)
    batch = make_batch(args, getattr(torch, args.dtype))
    engines = {"llava": wrap_deepspeed(llava, args), "aligngpt": wrap_deepspeed(aligngpt, args)}
    times = {"llava": [], "aligngpt": []}
    peaks = {"llava": 0, "aligngpt": 0}
    for i in range(args.steps + 2):
        order = list(engines.items())
        for name, (model, optimizer) in order if i % 2 == 0 else order[::-1]:
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            elapsed = train_step(model, optimizer, batch, args)
            if i >= 2:
                times[name].append(elapsed)
                if gpu:
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
    median = {k: statistics.median(v) for k, v in times.items()}
    device = torch.cuda.get_device_name() if gpu else "cpu"
    peak = args.peak_tflops or (peak_tflops(device) if gpu else None)
    result = {
        "device": device,
        "setup": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tokens_per_step": flops["tokens"],
        "params": {k: v for k, v in flops.items() if k.endswith("params")},
        "median_step_s": median,
        "tokens_per_s": {k: flops["tokens"] / v for k, v in median.items()},
        "model_tflops_per_s": {k: flops["flops_per_step"] / v / 1e12 for k, v in median.items()},
        "peak_memory_gib": {k: v / 2**30 for k, v in peaks.items()} if gpu else None,
        "step_time_ratio": median["aligngpt"] / median["llava"],
    }
    if peak:
        result["peak_tflops"] = peak
        result["mfu"] = {k: v / peak for k, v in result["model_tflops_per_s"].items()}
    print(json.dumps(result, indent=1))
    print(f"[{args.stage}, ZeRO {args.zero}, {args.shape}, {args.dtype}, {args.attn}] "
          f"tokens/s LLaVA {result['tokens_per_s']['llava']:.0f}, AlignGPT {result['tokens_per_s']['aligngpt']:.0f}; "
          f"AlignGPT / LLaVA step time {result['step_time_ratio']:.3f} (goal < 1.02)"
          + (f"; MFU {result['mfu']['aligngpt']:.1%} (goal >= 40% fine-tuning on H100)" if peak else ""))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
