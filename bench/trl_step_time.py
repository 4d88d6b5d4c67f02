"""Training-step time of the TRL path against the LLaVA-original path on the same AlignGPT and the same records.

    python bench/trl_step_time.py                                     # CPU, tiny shapes, stage-2 step
    python bench/trl_step_time.py --shape 7b-slice --device cuda --dtype bfloat16 --attn sdpa
    python bench/trl_step_time.py --shape 7b-slice --device cuda --dtype bfloat16 --attn flash_attention_2

One AlignGPT (random weights; `--shape tiny`: the test fixtures' sizes; `7b-slice`: Vicuna-7B's width with 2
of its 32 layers and a 24-layer CLIP tower 1024 wide at 336 px, as bench/step_time.py builds it) is saved as
LLaVA saves it and converted with `llava_to_hf`, so both paths hold the same weights. The records: `--batch`
single-turn LLaVA conversations, each with a 336 px picture. A step is what each path does per step in
training, stage 2 (gate, projector and LLM train; levels and tower frozen):

- LLaVA-original: LLaVA's `LazySupervisedDataset` items (`vicuna_v1` template, image preprocessing) through
  its `DataCollatorForSupervisedDataset`, then `AlignGPTLlamaForCausalLM` forward + backward + AdamW step;
- TRL: the same records through `load_sft_dataset` and `AlignGPTVisionCollator` (TRL's collator: the chat
  template, the processor, `<align>`), then `AlignGPTLlavaForConditionalGeneration` forward + backward + AdamW.

Steps alternate between the paths so that drift in the machine's speed hits both alike. Reported per path:
median, interquartile range, min and max over `--steps` steps (after 2 warm-up steps), tokens per second (the
batch's sequence positions, image tokens included, over the median step), peak GPU memory (CUDA only), and
the ratio of the medians (TRL / LLaVA-original).
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

SHAPES = {  # LLM (hidden, layers, heads), CLIP vision (hidden, layers)
    "tiny": dict(llm=(64, 2, 4), vision=(32, 3)),
    "7b-slice": dict(llm=(4096, 2, 32), vision=(1024, 24)),
}
QUESTIONS = ("What colour is the picture?", "Describe the picture.", "What is shown here?")


def write_records(folder: Path, n: int) -> Path:
    """`n` single-turn LLaVA records with a 336 px picture each, in folder/records.json (+ folder/images/)."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    records = []
    for i in range(n):
        colour = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=gen))
        Image.new("RGB", (336, 336), colour).save(folder / "images" / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{QUESTIONS[i % len(QUESTIONS)]}"},
            {"from": "gpt", "value": f"A plain picture in colour {colour[0]}, {colour[1]}, {colour[2]}."}]})
    (folder / "records.json").write_text(json.dumps(records))
    return folder / "records.json"


def build_folders(args, folder: Path) -> tuple[Path, Path, Path]:
    """(LLaVA-original folder, HF-native folder, CLIP folder) holding the same random AlignGPT."""
    from aligngpt_plugin.integrations.llava.compat import prepare_llava

    prepare_llava()
    from aligngpt_plugin.conversion.hf import llava_to_hf
    from aligngpt_plugin.devkit.tiny_checkpoints import (
        FixtureSpec,
        tokenizer_dir,
        vision_module_args,
        write_tiny_clip,
        write_tiny_llm,
    )
    from aligngpt_plugin.integrations.llava.model import AlignGPTConfig, AlignGPTLlamaForCausalLM

    (hidden, layers, heads), (vision_hidden, vision_layers) = SHAPES[args.shape]["llm"], SHAPES[args.shape]["vision"]
    spec = FixtureSpec(hidden_size=hidden, num_layers=layers, num_heads=heads, vision_hidden_size=vision_hidden,
                       vision_layers=vision_layers)
    llm, clip = write_tiny_llm(folder / "llm", spec), write_tiny_clip(folder / "clip", spec)
    from transformers import AutoConfig

    base = AutoConfig.from_pretrained(llm).to_dict()
    base.pop("model_type", None)
    torch.manual_seed(0)
    model = AlignGPTLlamaForCausalLM.from_pretrained(llm, config=AlignGPTConfig(alignment={"num_levels": 8}, **base))
    model.get_model().initialize_vision_modules(vision_module_args(clip))
    model.config.mm_vision_tower = str(clip)
    model.save_pretrained(folder / "llava", safe_serialization=True)
    for f in tokenizer_dir().iterdir():
        (folder / "llava" / f.name).write_bytes(f.read_bytes())
    del model
    llava_to_hf(folder / "llava", folder / "hf")
    return folder / "llava", folder / "hf", clip


def llava_path(args, folder: Path, clip: Path, records: Path, images: Path):
    """(model, make_batch) of the LLaVA-original path."""
    import transformers
    from llava import conversation
    from llava.train import train as llava_train

    from aligngpt_plugin.devkit.tiny_checkpoints import vision_module_args
    from aligngpt_plugin.integrations.llava.model import AlignGPTLlamaForCausalLM

    dtype = getattr(torch, args.dtype)
    model = AlignGPTLlamaForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=args.attn)
    model.get_model().initialize_vision_modules(vision_module_args(clip))
    model.get_vision_tower().to(args.device, dtype)
    model.to(args.device).train()
    model.requires_grad_(True)
    model.get_vision_tower().requires_grad_(False)
    model.get_model().alignment.level_embeddings.requires_grad_(False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, use_fast=False, model_max_length=2048,
                                                           padding_side="right")
    tokenizer.pad_token = tokenizer.unk_token
    conversation.default_conversation = conversation.conv_templates["vicuna_v1"]
    data_args = llava_train.DataArguments(data_path=str(records), lazy_preprocess=True, is_multimodal=True,
                                          image_folder=str(images))
    data_args.image_processor = model.get_vision_tower().image_processor
    data_args.mm_use_im_start_end = False
    module = llava_train.make_supervised_data_module(tokenizer, data_args)
    dataset, collator = module["train_dataset"], module["data_collator"]

    def make_batch():
        batch = collator([dataset[i] for i in range(len(dataset))])
        batch = {k: v.to(args.device) for k, v in batch.items()}
        batch["images"] = batch["images"].to(dtype)
        positions = int(batch["attention_mask"].sum()) + (576 - 1) * int(batch["images"].shape[0])
        return batch, positions

    return model, make_batch


def trl_path(args, folder: Path, records: Path, images: Path):
    """(model, make_batch) of the TRL path."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import aligngpt_plugin  # noqa: F401  (registers the classes)
    from aligngpt_plugin.integrations.hf.collator import AlignGPTVisionCollator
    from aligngpt_plugin.integrations.hf.data import load_sft_dataset

    dtype = getattr(torch, args.dtype)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, attn_implementation=args.attn)
    model.set_stage("finetune")
    model.to(args.device).train()
    processor = AutoProcessor.from_pretrained(folder)
    dataset = load_sft_dataset(str(records), image_folder=str(images))
    collator = AlignGPTVisionCollator(processor=processor)

    def make_batch():
        batch = collator([dataset[i] for i in range(len(dataset))])
        batch = {k: v.to(args.device) for k, v in batch.items()}
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
        return batch, int(batch["attention_mask"].sum())

    return model, make_batch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_step(model, optimizer, make_batch, device: str) -> tuple[float, int, int | None]:
    """(seconds, sequence positions, peak bytes or None off CUDA) of one collate + forward + backward + step."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    batch, positions = make_batch()
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    return seconds, positions, peak


def summary(times: list[float], positions: int, peaks: list[int]) -> dict:
    q = statistics.quantiles(times, n=4)
    median = statistics.median(times)
    return {"median_s": median, "iqr_s": [q[0], q[2]], "min_s": min(times), "max_s": max(times),
            "tokens_per_s": positions / median, "positions_per_step": positions,
            "peak_memory_gib": max(peaks) / 2**30 if peaks and None not in peaks else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "flash_attention_2", "eager"])
    parser.add_argument("--batch", type=int, default=4, help="records per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per path (after 2 warm-up steps)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        records = write_records(folder / "data", args.batch)
        llava_folder, hf_folder, clip = build_folders(args, folder)
        original, original_batch = llava_path(args, llava_folder, clip, records, folder / "data" / "images")
        trl, trl_batch = trl_path(args, hf_folder, records, folder / "data" / "images")
        paths = {"llava_original": (original, original_batch), "trl": (trl, trl_batch)}
        optimizers = {name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
                      for name, (model, _) in paths.items()}
        times = {name: [] for name in paths}
        peaks = {name: [] for name in paths}
        positions = {}
        for step in range(args.steps + 2):
            for name, (model, make_batch) in paths.items():
                seconds, positions[name], peak = timed_step(model, optimizers[name], make_batch, args.device)
                if step >= 2:
                    times[name].append(seconds)
                    peaks[name].append(peak)
    result = {name: summary(times[name], positions[name], peaks[name]) for name in paths}
    result["ratio_trl_over_llava_original"] = result["trl"]["median_s"] / result["llava_original"]["median_s"]
    result["paired_ratios_quartiles"] = statistics.quantiles(
        [t / o for t, o in zip(times["trl"], times["llava_original"])], n=4)
    import transformers
    import trl as trl_package

    result["setup"] = {"shape": args.shape, "device": args.device, "dtype": args.dtype, "attn": args.attn,
                       "batch": args.batch, "steps": args.steps, "torch": torch.__version__,
                       "transformers": transformers.__version__, "trl": trl_package.__version__,
                       "load_1min_at_start": os.getloadavg()[0],
                       "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    for name in paths:
        r = result[name]
        print(f"{name:15s} median {r['median_s'] * 1e3:8.1f} ms  IQR {r['iqr_s'][0] * 1e3:.1f}-"
              f"{r['iqr_s'][1] * 1e3:.1f}  min/max {r['min_s'] * 1e3:.1f}/{r['max_s'] * 1e3:.1f}  "
              f"{r['tokens_per_s']:.0f} tokens/s" + (f"  peak {r['peak_memory_gib']:.2f} GiB"
                                                      if r["peak_memory_gib"] is not None else ""))
    print(f"ratio TRL / LLaVA-original (medians): {result['ratio_trl_over_llava_original']:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
