"""The level probe: a stage-1 checkpoint captions pictures, an AlignGPT one once per fixed alignment level.

    python -m aligngpt_plugin.devkit.level_probe --model runs/demo/seed0/aligngpt/pretrain \
        --model-base runs/demo/llm --pictures runs/demo/data/heldout.json --image-folder runs/demo/data/images \
        --levels 0 3 7 --out runs/demo/seed0/probe/aligngpt

AlignGPT's stage 1 tells the model each pair's alignment level with a token after BOS. Fixing that token
at level k (`use_fixed_level`, as the loader does for a stage-1 checkpoint) and letting the model caption
a picture shows what the level has come to mean: a high level should give true captions, a low one loose
or unrelated text. The input is exactly stage 1's (LLaVA's `plain` template: BOS, the image, then the
caption up to the separator "\\n"); greedy decoding, stopped at the separator. Writes one JSONL per
level, `level_<k>.jsonl` ({"image", "text"} per picture), or `captions.jsonl` for a plain LLaVA
checkpoint (no `--levels`). Runs in its own process, as the other stages (LLaVA's patches stay there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from aligngpt_plugin.core.fileio import write_jsonl_atomic


@torch.no_grad()
def caption_pictures(loaded, images: list, max_new_tokens: int = 24, batch: int = 64) -> list[str]:
    """Greedy captions of PIL `images` with the `plain` template's prompt (BOS, image), cut at "\\n"."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import process_images

    model, tokenizer = loaded.model, loaded.tokenizer
    newline = tokenizer.convert_tokens_to_ids("<0x0A>")  # the plain template's separator, as stage 1 trains it
    prompt = torch.tensor([[tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]])
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        pixels = process_images(chunk, loaded.image_processor, model.config).to(model.dtype)
        ids = model.generate(prompt.expand(len(chunk), -1), images=pixels, image_sizes=[im.size for im in chunk],
                             do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=newline,
                             pad_token_id=newline)
        out += [tokenizer.decode(row, skip_special_tokens=True).split("\n")[0].strip() for row in ids]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="level_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="stage-1 output folder (config.json + mm_projector.bin)")
    p.add_argument("--model-base", required=True, help="the LLM stage 1 trained on")
    p.add_argument("--pictures", required=True, help="JSON list of {image, ...} records")
    p.add_argument("--image-folder", required=True)
    p.add_argument("--levels", type=int, nargs="*", help="levels to fix (AlignGPT); none: a plain LLaVA model")
    p.add_argument("--out", required=True, help="folder for the caption files")
    p.add_argument("--max-new-tokens", type=int, default=24)
    args = p.parse_args(argv)

    from PIL import Image

    from aligngpt_plugin.analysis.load import load_checkpoint

    records = json.loads(Path(args.pictures).read_text())
    images = []
    for r in records:
        path = Path(args.image_folder) / r["image"]
        if not path.is_file():
            print(f"level_probe: {args.pictures}: picture {r['image']} is not in {args.image_folder}", file=sys.stderr)
            return 2
        images.append(Image.open(path).convert("RGB"))
    loaded = load_checkpoint(args.model, model_base=args.model_base)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    aligngpt = hasattr(loaded.model, "use_fixed_level")
    if bool(args.levels) != aligngpt:
        print(f"level_probe: {args.model} is {'an AlignGPT' if aligngpt else 'a plain LLaVA'} checkpoint: "
              f"{'give' if aligngpt else 'drop'} --levels", file=sys.stderr)
        return 2
    for level in args.levels or [None]:
        if level is not None:
            loaded.model.use_fixed_level(level)
        texts = caption_pictures(loaded, images, args.max_new_tokens)
        name = "captions.jsonl" if level is None else f"level_{level}.jsonl"
        write_jsonl_atomic(out / name, [{"image": r["image"], "text": t} for r, t in zip(records, texts)])
        print(f"[level_probe] {name}: {texts[0]!r} ...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
