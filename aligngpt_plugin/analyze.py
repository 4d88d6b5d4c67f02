"""aligngpt-analyze: how well a checkpoint's projected image patches align with the LLM's word embeddings.

    aligngpt-analyze --model checkpoints/llava-v1.5-7b --data labelled.json --image-folder images --out report/
    aligngpt-analyze --model checkpoints/pretrain --model-base lmsys/vicuna-7b-v1.5 --images pictures/ --out r/

`--model` is a full LLaVA or AlignGPT checkpoint folder, or a pre-training output folder (LLaVA's stage 1:
`config.json` + `mm_projector.bin`) with `--model-base` the LLM it was trained on. Images come from a
LLaVA data file (`--data`, records with `image` and, where available, `patch_labels` as in training; see
aligngpt_plugin.core.patch_geometry) or from a folder (`--images`, no labels). Each image goes through the
checkpoint's own preprocessing (LLaVA's `process_images`) and vision tower.

Writes `report.json` (per image and aggregate) and plots under `--out`:

- nearest words: the top-k word embeddings (cosine) of each projected patch, and on labelled patches
  precision@k (share of the k that are tokens of the patch's phrases) and hit@k, beside the chance level;
- compression: effective rank and von Neumann entropy of the tokens before the projector (vision tower
  output) and after it (what the LLM reads), per image and over all tokens;
- matching pursuit: each patch decomposed greedily over the word-embedding table (k atoms): residual
  norm after each atom, and on labelled patches how many of their phrases appear among the atoms (the
  multi-semantic alignment hypothesis: one patch, several words);
- `patches_<id>.png`: the processed image with its patch grid, labelled patches outlined, top word per patch;
  `spectrum.png` and `pursuit.png`: singular values before/after the projector, residual per atom.

The candidate words are, by default, the vocabulary's alphabetic pieces (`--vocab alpha`: letters only,
at least two, with or without the word-start marker); `--vocab all` uses every token.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from aligngpt_plugin.analysis.load import load_checkpoint
from aligngpt_plugin.analysis.run import analyze, collect_images


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aligngpt-analyze", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder (full, or stage-1 with mm_projector.bin)")
    p.add_argument("--model-base", help="the LLM under a stage-1 folder (required for one)")
    p.add_argument("--vision-tower", help="override the vision tower named in the checkpoint's config")
    p.add_argument("--data", help="LLaVA data file; records' patch_labels are used where present")
    p.add_argument("--image-folder", help="folder of the data file's images (default: the file's folder)")
    p.add_argument("--images", help="a folder of images (no labels)")
    p.add_argument("--out", required=True, help="folder for report.json and the plots")
    p.add_argument("--top-k", type=int, default=5, help="nearest words per patch (5)")
    p.add_argument("--mp-atoms", type=int, default=8, help="matching-pursuit atoms per patch (8)")
    p.add_argument("--mp-max-patches", type=int, default=128, help="patches per image decomposed (128)")
    p.add_argument("--vocab", choices=("alpha", "all"), default="alpha", help="candidate words (alpha)")
    p.add_argument("--min-overlap", type=float, default=0.5, help="share of a patch a label must cover (0.5)")
    p.add_argument("--limit", type=int, default=0, help="analyse at most this many images (0: all)")
    p.add_argument("--plots", type=int, default=4, help="patch-grid plots for the first N images (4)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    for name in ("top_k", "mp_atoms", "mp_max_patches"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        inputs = collect_images(args.data, args.image_folder, args.images, args.limit)
        loaded = load_checkpoint(args.model, args.model_base, args.vision_tower, args.device)
        report = analyze(loaded, inputs, Path(args.out), args.top_k, args.mp_atoms, args.mp_max_patches,
                         args.vocab, args.min_overlap, args.plots)
    except (ValueError, FileNotFoundError) as e:  # bad input: the message names the record or file
        print(f"aligngpt-analyze: {e}", file=sys.stderr)
        return 2
    a = report["aggregate"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"[aligngpt-analyze] {a['images']} images, {a['labelled_patches']} labelled patches: "
          f"precision@{a['top_k']} {fmt(a['precision_at_k'])} (chance {a['chance_precision_at_k'] or 0:.5f}), "
          f"hit@{a['top_k']} {fmt(a['hit_at_k'])}; effective rank {a['before_projector']['effective_rank']:.1f} -> "
          f"{a['after_projector']['effective_rank']:.1f}; pursuit residual after {a['pursuit_atoms']} atoms "
          f"{a['pursuit_residual'][-1]:.3f}; report in {args.out}/report.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
