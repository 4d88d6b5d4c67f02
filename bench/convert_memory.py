"""Peak memory of `aligngpt-convert to-plugin` on a many-shard checkpoint in the released layout.

    python bench/convert_memory.py --out /tmp/convert-bench --shards 24 --layers 24
    python bench/convert_memory.py --out /tmp/convert-bench --shards 48 --layers 48 --json result.json

Writes a Llama-shaped fp16 checkpoint (random weights, one decoder layer per `.bin` shard, plus the
projector, level table and gate at the top level as the public AlignGPT code saves them), converts it in
a child process and reports that process's peak resident memory (VmHWM, Linux) above what it held before
converting (after its imports). A streaming conversion needs about one shard plus one output file; a conversion that
loads the checkpoint whole needs the checkpoint's size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

# VmHWM (Linux): the process's own peak RSS since exec (ru_maxrss would carry the parent's over the fork)
CHILD = r"""
import json, sys, time
from aligngpt_plugin.convert import main
def hwm_kb():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1])
base = hwm_kb()
start = time.perf_counter()
code = main(["to-plugin", sys.argv[1], sys.argv[2], "--max-shard-size", sys.argv[3]])
seconds = time.perf_counter() - start
print(json.dumps({"code": code, "base_kb": base, "peak_kb": hwm_kb(), "seconds": seconds}))
"""


def write_checkpoint(folder: Path, layers: int, hidden: int, intermediate: int, vocab: int, shards: int) -> list[int]:
    """The checkpoint, layer k in shard k mod `shards`; returns the shard sizes in bytes."""
    import torch

    g = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True)

    def rand(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).half()

    parts: list[dict] = [{} for _ in range(shards)]
    parts[0]["model.embed_tokens.weight"] = rand(vocab, hidden)
    for k in range(layers):
        p = f"model.layers.{k}."
        part = parts[k % shards]
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            part[p + f"self_attn.{name}.weight"] = rand(hidden, hidden)
        part[p + "mlp.gate_proj.weight"] = rand(intermediate, hidden)
        part[p + "mlp.up_proj.weight"] = rand(intermediate, hidden)
        part[p + "mlp.down_proj.weight"] = rand(hidden, intermediate)
        part[p + "input_layernorm.weight"] = rand(hidden)
        part[p + "post_attention_layernorm.weight"] = rand(hidden)
    last = parts[-1]
    last.update({"model.norm.weight": rand(hidden), "lm_head.weight": rand(vocab, hidden),
                 "mm_projector.0.weight": rand(hidden, 1024), "mm_projector.0.bias": rand(hidden),
                 "mm_projector.2.weight": rand(hidden, hidden), "mm_projector.2.bias": rand(hidden),
                 "align_indicators.indicator_embs": rand(8, hidden),
                 "gated_weight_layer.mlp.0.weight": rand(256, 576), "gated_weight_layer.mlp.0.bias": rand(256),
                 "gated_weight_layer.mlp.2.weight": rand(7, 256), "gated_weight_layer.mlp.2.bias": rand(7)})
    weight_map, sizes = {}, []
    for i, part in enumerate(parts, 1):
        name = f"pytorch_model-{i:05d}-of-{shards:05d}.bin"
        torch.save(part, folder / name)
        weight_map.update(dict.fromkeys(part, name))
        sizes.append((folder / name).stat().st_size)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {"model_type": "aligngpt", "architectures": ["AlignGPTForCausalLM"], "hidden_size": hidden,
              "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
              "vocab_size": vocab, "mm_hidden_size": 1024, "mm_projector_type": "mlp2x_gelu",
              "mm_vision_tower": "openai/clip-vit-large-patch14-336", "torch_dtype": "float16"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="scratch folder (emptied first)")
    parser.add_argument("--shards", type=int, default=24)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=640)
    parser.add_argument("--intermediate", type=int, default=1792)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--max-shard-size", default="16MB", help="aligngpt-convert's --max-shard-size")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    sizes = write_checkpoint(out / "released", args.layers, args.hidden, args.intermediate, args.vocab, args.shards)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(out / "released"), str(out / "plugin"),
                           args.max_shard_size], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    mb = 1 << 20
    result = {
        "checkpoint_mb": round(sum(sizes) / mb, 1), "shards": len(sizes), "largest_shard_mb": round(max(sizes) / mb, 1),
        "max_output_shard": args.max_shard_size, "baseline_rss_mb": round(child["base_kb"] / 1024, 1),
        "peak_rss_mb": round(child["peak_kb"] / 1024, 1),
        "peak_rss_growth_mb": round((child["peak_kb"] - child["base_kb"]) / 1024, 1),
        "convert_seconds": round(child["seconds"], 2), "wall_seconds": round(time.perf_counter() - start, 2),
        "exit_code": child["code"],
    }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if child["code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
