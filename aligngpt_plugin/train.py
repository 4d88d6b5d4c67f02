"""LLaVA's own training, on today's stack: takes exactly the arguments of `llava/train/train.py`.

    python -m aligngpt_plugin.train --model_name_or_path lmsys/vicuna-7b-v1.5 --version plain \
        --data_path blip_laion_cc_sbu_558k.json --image_folder images \
        --vision_tower openai/clip-vit-large-patch14-336 --mm_projector_type mlp2x_gelu \
        --tune_mm_mlp_adapter True --mm_vision_select_layer -2 --output_dir checkpoints/pretrain ...

Use it wherever LLaVA's scripts call `llava/train/train_mem.py` (with `deepspeed`, `torchrun` or plain
`python`). It checks the stack, applies `patches/`, picks the attention kernel and calls LLaVA's
`train()`. Add `--align_levels 8` (and optionally the other `--align_*` flags below) to train AlignGPT
instead of plain LLaVA: stage 1 is LLaVA's `--tune_mm_mlp_adapter True` run, with an `align_level` in
every record; stage 2 is LLaVA's fine-tuning run, with `--pretrain_mm_mlp_adapter` pointing at stage
1's `mm_projector.bin`, which then also holds the level embeddings.

The attention kernel is FlashAttention-2 when `flash-attn` is installed and a GPU is present, else
torch SDPA; set ALIGNGPT_ATTN_IMPLEMENTATION (flash_attention_2, sdpa, eager) to choose.
"""

from __future__ import annotations

import sys

from aligngpt_plugin.integrations.llava.training import run_training


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when training ends (or after --help); bad arguments exit through SystemExit."""
    run_training(sys.argv[1:] if argv is None else list(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
