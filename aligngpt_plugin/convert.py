"""aligngpt-convert: AlignGPT checkpoints between the released, LLaVA-original and HF-native layouts.

    aligngpt-convert to-plugin   nlpzhaof/aligngpt-7b          runs/aligngpt-7b           # hub id or folder
    aligngpt-convert to-plugin   nlpzhaof/aligngpt-7b-pretrain runs/aligngpt-7b-pretrain  # -> mm_projector.bin
    aligngpt-convert to-plugin   aligngpt-7b-pretrain/mm_projector_align.bin  runs/mm_projector.bin
    aligngpt-convert from-plugin runs/aligngpt-7b              runs/aligngpt-7b-released
    aligngpt-convert to-hf       nlpzhaof/aligngpt-7b          runs/aligngpt-7b-hf        # released or LLaVA-original
    aligngpt-convert from-hf     runs/aligngpt-7b-hf           runs/aligngpt-7b-llava     # for eval/*.sh
    aligngpt-convert build-hf    lmsys/vicuna-7b-v1.5          runs/aligngpt-7b-stage1-hf \
                     --vision-tower openai/clip-vit-large-patch14-336 --align-levels 8    # stage 1's start

Exit status 0 when written; 2 when the checkpoint does not fit or cannot be read (the message names the
file, and the key and shapes where they are the reason), or when the output exists: a file is replaced
only with --force, a folder never (remove it first). Nothing is written then. The layouts and what happens to each key:
`aligngpt_plugin.conversion.released` (released <-> LLaVA-original) and `aligngpt_plugin.conversion.hf`
(LLaVA-original <-> HF-native, transformers' `LlavaForConditionalGeneration` layout). build-hf writes a
stage-1 HF-native AlignGPT from an LLM and a CLIP (`aligngpt_plugin.conversion.hf.build_hf`): the LLM and
the tower unchanged, a fresh projector, fresh levels and gate; stage 2 loads that folder once trained.
"""

from __future__ import annotations

import argparse
import re
import sys

from aligngpt_plugin.conversion.released import ConversionError, convert


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)B?", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size such as 2GB or 500MB")
    return int(float(match[1]) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match[2]])


def build_parser() -> argparse.ArgumentParser:
    epilog = "Exit status: 0 written, 2 the checkpoint does not fit or cannot be read, or the output exists " \
             "(nothing written)."
    parser = argparse.ArgumentParser(prog="aligngpt-convert", description=__doc__.split("\n\n")[0], epilog=epilog)
    parser.add_argument("direction", choices=("to-plugin", "from-plugin", "to-hf", "from-hf", "build-hf"),
                        help="to-plugin / from-plugin: released <-> LLaVA-original layout; to-hf: a released or "
                             "LLaVA-original checkpoint (AlignGPT or plain LLaVA) -> HF-native; from-hf: HF-native "
                             "-> LLaVA-original; build-hf: an LLM (src) and a CLIP (--vision-tower) -> a stage-1 "
                             "HF-native AlignGPT (fresh projector, levels and gate)")
    parser.add_argument("src", help="checkpoint folder or hub id (to-plugin, to-hf), or a pre-training "
                                    "mm_projector_align.bin / mm_projector.bin file; build-hf: the causal LM "
                                    "folder or hub id with its tokenizer")
    parser.add_argument("dst", help="folder to write (for a folder or hub id), or file (for a .bin)")
    parser.add_argument("--vision-tower", help="the CLIP folder or hub id of the vision tower (the released "
                                               "configs may name a local path of the authors' machine); to-hf "
                                               "reads the tower's weights from it, from-hf names it in the config; "
                                               "build-hf: the CLIP to build from (required)")
    parser.add_argument("--align-levels", type=int, default=8, metavar="N",
                        help="build-hf: N, the number of alignment levels (default 8, as the paper)")
    parser.add_argument("--max-shard-size", type=parse_size, default="2GB",
                        help="largest output file (default 2GB); bounds the memory the conversion needs")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing output file (pre-training .bin); an output folder is never "
                             "replaced")
    return parser


def to_or_from_hf(args) -> str:
    """The HF-native directions; what was written, for the summary line."""
    import json

    from aligngpt_plugin.conversion import hf
    from aligngpt_plugin.conversion.streaming import resolve

    if args.direction == "build-hf":
        if not args.vision_tower:
            raise ConversionError("build-hf needs --vision-tower: the CLIP folder or hub id "
                                  "(e.g. openai/clip-vit-large-patch14-336)")
        return f"wrote {hf.build_hf(args.src, args.vision_tower, args.dst, align_levels=args.align_levels)}"
    if args.direction == "from-hf":
        return f"wrote {hf.hf_to_llava(args.src, args.dst, vision_tower=args.vision_tower)}"
    source = resolve(args.src)
    config_file = source / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{source} has no config.json: to-hf converts a checkpoint folder")
    try:
        released = json.loads(config_file.read_text()).get("model_type") == "aligngpt"
    except json.JSONDecodeError as e:
        raise ConversionError(f"{config_file} is not valid JSON ({e})") from None
    convert_folder = hf.released_to_hf if released else hf.llava_to_hf
    return f"wrote {convert_folder(source, args.dst, vision_tower=args.vision_tower)}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.direction in ("to-hf", "from-hf", "build-hf"):
        try:
            print(to_or_from_hf(args))
        except ConversionError as e:
            print(f"aligngpt-convert: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        report = convert(args.src, args.dst, to_plugin=args.direction == "to-plugin",
                         vision_tower=args.vision_tower, max_shard_size=args.max_shard_size, force=args.force)
    except ConversionError as e:
        print(f"aligngpt-convert: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
