"""Convert the released AlignGPT checkpoints to this plugin's layout, and back.

    aligngpt-convert to-plugin   checkpoints/aligngpt-7b            runs/aligngpt-7b-plugin
    aligngpt-convert to-plugin   aligngpt-7b-pretrain/mm_projector_align.bin  runs/mm_projector.bin
    aligngpt-convert from-plugin runs/aligngpt-7b-plugin            runs/aligngpt-7b-released

Released layout (METHOD.md section 6; `nlpzhaof/aligngpt-7b`, `-13b`, `-7b-pretrain`, `-13b-pretrain`):
`align_indicators.indicator_embs` [8, hidden] and `gated_weight_layer.mlp.{0,2}.{weight,bias}` ([256, 576],
[7, 256]) beside LLaVA's `mm_projector.{0,2}` and the Llama weights; `model_type: "aligngpt"` and no
level count in the config. Plugin layout: `model.alignment.level_embeddings` and
`model.alignment.gate.{0,2}`, `model_type: "aligngpt_llava"` with an `alignment` entry whose sizes are
read off the weights. Folders are converted shard by shard into safetensors; `.bin` files are read
with `weights_only=True`. Shapes that do not fit together are refused before anything is written.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aligngpt_plugin.alignment import AlignmentConfig

RELEASED_MODEL_TYPE = "aligngpt"
# released suffix -> plugin suffix (the prefix before them, e.g. "model.", is kept)
KEY_MAP = {
    "align_indicators.indicator_embs": "alignment.level_embeddings",
    "gated_weight_layer.mlp.0.weight": "alignment.gate.0.weight",
    "gated_weight_layer.mlp.0.bias": "alignment.gate.0.bias",
    "gated_weight_layer.mlp.2.weight": "alignment.gate.2.weight",
    "gated_weight_layer.mlp.2.bias": "alignment.gate.2.bias",
}
WEIGHT_FILE = re.compile(r".*\.(safetensors|bin)$")


class ConversionError(ValueError):
    """The checkpoint does not have the layout or shapes the conversion expects."""


def rename(state: dict[str, torch.Tensor], to_plugin: bool) -> dict[str, torch.Tensor]:
    table = KEY_MAP if to_plugin else {v: k for k, v in KEY_MAP.items()}
    out = {}
    for key, value in state.items():
        for old, new in table.items():
            if key == old or key.endswith("." + old):
                key = key[: len(key) - len(old)] + new
                break
        out[key] = value
    return out


def alignment_sizes(state: dict[str, torch.Tensor], hidden_size: int | None, source: str) -> AlignmentConfig:
    """The AlignmentConfig the plugin-layout weights imply; ConversionError when they disagree."""
    def find(suffix: str) -> torch.Tensor:
        hits = [v for k, v in state.items() if k.endswith(suffix)]
        if len(hits) != 1:
            raise ConversionError(f"{source}: expected one weight ending in {suffix!r}, found {len(hits)}")
        return hits[0]

    levels = find("alignment.level_embeddings")
    g0, g2 = find("alignment.gate.0.weight"), find("alignment.gate.2.weight")
    n = levels.shape[0]
    problems = []
    if levels.ndim != 2 or n < 2:
        problems.append(f"level embeddings have shape {tuple(levels.shape)}, expected [levels >= 2, hidden]")
    if hidden_size is not None and levels.shape[-1] != hidden_size:
        problems.append(f"level embeddings are {levels.shape[-1]} wide, the LLM's hidden_size is {hidden_size}")
    if g2.shape[0] != n - 1:
        problems.append(f"the gate gives {g2.shape[0]} weights, {n} levels need {n - 1}")
    if g2.shape[1] != g0.shape[0]:
        problems.append(f"gate layers do not chain: {tuple(g0.shape)} then {tuple(g2.shape)}")
    if problems:
        raise ConversionError(f"{source}: " + "; ".join(problems))
    return AlignmentConfig(num_levels=n, gate_tokens=g0.shape[1], gate_hidden_size=g0.shape[0])


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def weight_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if WEIGHT_FILE.match(p.name) and "optimizer" not in p.name
                   and p.name not in ("training_args.bin",))
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return safetensors or files  # a folder with both keeps the safetensors


def convert_adapter(src: Path, dst: Path, to_plugin: bool) -> Path:
    """A pre-training file (`mm_projector_align.bin` <-> `mm_projector.bin`)."""
    state = rename(load_weights(src), to_plugin)
    if to_plugin:
        alignment_sizes(state, None, str(src))
    elif not any(k.endswith("align_indicators.indicator_embs") for k in state):
        raise ConversionError(f"{src} holds no alignment levels to convert")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(dst)
    return dst


def convert_folder(src: Path, dst: Path, to_plugin: bool) -> Path:
    """A full checkpoint folder, shard by shard, config included."""
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{src} has no config.json: is it a checkpoint folder?")
    config = json.loads(config_path.read_text())
    want = RELEASED_MODEL_TYPE if to_plugin else "aligngpt_llava"
    if config.get("model_type") != want:
        raise ConversionError(f"{config_path}: model_type is {config.get('model_type')!r}, expected {want!r} "
                              f"for {'to-plugin' if to_plugin else 'from-plugin'}")
    files = weight_files(src)
    if not files:
        raise ConversionError(f"{src} holds no .safetensors or .bin weights")

    shards = {f: rename(load_weights(f), to_plugin) for f in files}
    merged = {k: v for state in shards.values() for k, v in state.items()}
    if to_plugin:
        alignment = alignment_sizes(merged, config.get("hidden_size"), str(src))
        config.update(model_type="aligngpt_llava", alignment=alignment.to_dict(),
                      architectures=["AlignGPTLlamaForCausalLM"])
    else:
        alignment_sizes(rename(merged, True), config.get("hidden_size"), str(src))
        config.pop("alignment", None)
        config.update(model_type=RELEASED_MODEL_TYPE, architectures=["AlignGPTForCausalLM"])

    dst.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for i, state in enumerate(shards.values(), 1):
        name = "model.safetensors" if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, dst / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(state, name))
    if len(shards) > 1:
        total = sum(v.numel() * v.element_size() for v in merged.values())
        (dst / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    for f in src.iterdir():  # tokenizer, generation config, ...
        if f.is_file() and f not in files and f.name != "config.json" and not f.name.endswith(".index.json"):
            shutil.copy(f, dst / f.name)
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def convert(src: str | Path, dst: str | Path, to_plugin: bool = True) -> Path:
    """Convert a checkpoint folder or a pre-training `.bin` file; returns what was written."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise ConversionError(f"{src} does not exist")
    return convert_folder(src, dst, to_plugin) if src.is_dir() else convert_adapter(src, dst, to_plugin)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="aligngpt-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("direction", choices=("to-plugin", "from-plugin"))
    parser.add_argument("src", help="checkpoint folder, or a pre-training mm_projector(_align).bin")
    parser.add_argument("dst", help="folder (for a folder) or file (for a .bin) to write")
    args = parser.parse_args(argv)
    try:
        out = convert(args.src, args.dst, to_plugin=args.direction == "to-plugin")
    except ConversionError as e:
        raise SystemExit(f"aligngpt-convert: {e}") from None
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
