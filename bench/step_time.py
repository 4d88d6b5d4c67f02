"""Training-step time and peak memory of AlignGPT vs plain LLaVA on the same model and batch.

    python bench/step_time.py                                # CPU, tiny model, instruction-tuning step
    python bench/step_time.py --stage pretrain
    python bench/step_time.py --hidden 4096 --layers 2 --heads 32 --dtype bfloat16   # a 7B-shaped slice, GPU

Both models share every weight; the batch has one 336 px image per sample (576 image tokens) and text
of `--text-tokens` tokens. Steps (forward + backward) alternate between the two models so that drift
in the machine's speed hits both alike; the median of each is compared. The goal is a ratio < 1.02.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_pair(args, folder: Path):
    from aligngpt_plugin.integrations.llava.compat import prepare_llava

    prepare_llava()
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    from aligngpt_plugin.devkit.tiny_checkpoints import FixtureSpec, vision_module_args, write_tiny_clip, write_tiny_llm
    from aligngpt_plugin.integrations.llava.model import AlignGPTConfig, AlignGPTLlamaForCausalLM

    spec = FixtureSpec(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                       vision_hidden_size=args.vision_hidden, vision_layers=args.vision_layers)
    llm, clip = write_tiny_llm(folder / "llm", spec), write_tiny_clip(folder / "clip", spec)
    vision = vision_module_args(clip)
    dtype = getattr(torch, args.dtype)
    llava = LlavaLlamaForCausalLM.from_pretrained(llm, torch_dtype=dtype, attn_implementation=args.attn)
    llava.get_model().initialize_vision_modules(vision)
    values = llava.config.to_dict()
    values.pop("model_type")
    aligngpt = AlignGPTLlamaForCausalLM(AlignGPTConfig(alignment={}, **values)).to(dtype)
    aligngpt.config._attn_implementation = args.attn
    aligngpt.get_model().initialize_vision_modules(vision)
    missing, unexpected = aligngpt.load_state_dict(llava.state_dict(), strict=False)
    assert not unexpected and all("alignment" in k for k in missing), (missing, unexpected)
    for model in (llava, aligngpt):
        model.config.tune_mm_mlp_adapter = args.stage == "pretrain"
        model.to(args.device).train()
        model.get_vision_tower().to(args.device, dtype)
    return llava, aligngpt


def make_batch(args, vocab: int):
    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, vocab, (args.batch, args.text_tokens), generator=g)
    bos = torch.ones(args.batch, 1, dtype=torch.long)
    ids = torch.cat([bos, torch.full((args.batch, 1), IMAGE_TOKEN_INDEX), text], 1)
    labels = ids.clone()
    labels[:, : 2 + args.text_tokens // 2] = IGNORE_INDEX
    images = torch.randn(args.batch, 3, 336, 336, generator=g)
    levels = torch.arange(args.batch) % 8
    dev = args.device
    mask = torch.ones_like(ids, dtype=torch.bool)
    batch = dict(input_ids=ids.to(dev), labels=labels.to(dev), attention_mask=mask.to(dev),
                 images=images.to(dev, getattr(torch, args.dtype)))
    return batch, levels.to(dev)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # timings must include the queued kernels


def step(model, batch, levels, device) -> tuple[float, int]:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    kwargs = dict(batch, alignment_levels=levels) if hasattr(model, "alignment") else batch
    model(**kwargs).loss.backward()
    sync(device)
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
    return elapsed, peak


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vision-hidden", type=int, default=32)
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text-tokens", type=int, default=128, help="text tokens per sample besides the image")
    p.add_argument("--steps", type=int, default=10, help="measured steps per model (after 2 warm-up steps)")
    p.add_argument("--stage", choices=("pretrain", "finetune"), default="finetune")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        llava, aligngpt = build_pair(args, Path(tmp))
    batch, levels = make_batch(args, llava.config.vocab_size)
    times = {"llava": [], "aligngpt": []}
    peaks = {"llava": 0, "aligngpt": 0}
    for i in range(args.steps + 2):
        order = (("llava", llava), ("aligngpt", aligngpt))
        for name, model in order if i % 2 == 0 else order[::-1]:
            t, peak = step(model, batch, levels, args.device)
            if i >= 2:
                times[name].append(t)
                peaks[name] = max(peaks[name], peak)
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "setup": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "median_step_s": {k: statistics.median(v) for k, v in times.items()},
        "peak_memory_bytes": peaks,
    }
    result["time_ratio"] = result["median_step_s"]["aligngpt"] / result["median_step_s"]["llava"]
    if peaks["llava"]:
        result["memory_ratio"] = peaks["aligngpt"] / peaks["llava"]
    print(json.dumps(result, indent=1))
    print(f"AlignGPT / LLaVA step time: {result['time_ratio']:.3f} (goal < 1.02)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
