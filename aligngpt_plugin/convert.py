"""aligngpt-convert: the released AlignGPT checkpoints to this plugin's layout, and back.

    aligngpt-convert to-plugin   nlpzhaof/aligngpt-7b          runs/aligngpt-7b           # hub id or folder
    aligngpt-convert to-plugin   nlpzhaof/aligngpt-7b-pretrain runs/aligngpt-7b-pretrain  # -> mm_projector.bin
    aligngpt-convert to-plugin   aligngpt-7b-pretrain/mm_projector_align.bin  runs/mm_projector.bin
    aligngpt-convert from-plugin runs/aligngpt-7b              runs/aligngpt-7b-released

Exit status 0 when written; 2 when the checkpoint does not fit or cannot be read (the message names the
file, and the key and shapes where they are the reason), or when the output exists: a file is replaced
only with --force, a folder never (remove it first). Nothing is written then. The layouts and what happens to each key:
`aligngpt_plugin.conversion.released`.
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
    parser.add_argument("direction", choices=("to-plugin", "from-plugin"))
    parser.add_argument("src", help="checkpoint folder or hub id (to-plugin), or a pre-training "
                                    "mm_projector_align.bin / mm_projector.bin file")
    parser.add_argument("dst", help="folder to write (for a folder or hub id), or file (for a .bin)")
    parser.add_argument("--vision-tower", help="to-plugin: the vision tower LLaVA should load (the released "
                                               "configs may name a local path of the authors' machine)")
    parser.add_argument("--max-shard-size", type=parse_size, default="2GB",
                        help="largest output file (default 2GB); bounds the memory the conversion needs")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing output file (pre-training .bin); an output folder is never "
                             "replaced")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
