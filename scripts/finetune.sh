#!/usr/bin/env bash
# Stage 2, AlignGPT instruction tuning (docs/method.md#training-recipe): the gate, the projector and the whole LLM
# train on llava_v1_5_mix665k, starting from stage 1's projector and levels (levels frozen). ZeRO-3.
#
#   bash scripts/finetune.sh                                  # 7B, after scripts/pretrain.sh
#   MODEL_SIZE=13b bash scripts/finetune.sh
#   HOSTFILE=hostfile bash scripts/finetune.sh                # multi-node through DeepSpeed's launcher
#   ALIGNGPT_TINY=runs/tiny bash scripts/finetune.sh          # tiny fixtures, 2 CPU steps (CI)
#
# Settings are environment variables: see scripts/common.sh; PROJECTOR= names stage 1's mm_projector.bin
# (default: $CHECKPOINTS/$RUN_NAME-pretrain/mm_projector.bin). Writes a full checkpoint to
# $CHECKPOINTS/$RUN_NAME. Global batch 128 (8 GPUs x 16 x 1), lr 2e-5, 1 epoch, cosine, warmup 0.03, no
# weight decay, bf16, tf32, gradient checkpointing, max length 2048, `v1` template, images padded to
# square, batches grouped by modality length.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PER_DEVICE_DEFAULT=16
GLOBAL_BATCH=${GLOBAL_BATCH:-128}
SAVE_STEPS=${SAVE_STEPS:-50000}
PROJECTOR=${PROJECTOR:-${PRETRAIN_OUTPUT:-$CHECKPOINTS/$RUN_NAME-pretrain}/mm_projector.bin}
FINETUNE_OUTPUT=${FINETUNE_OUTPUT:-$CHECKPOINTS/$RUN_NAME}
[[ -f "$PROJECTOR" || "${DRY_RUN:-0}" == 1 ]] || die "PROJECTOR=$PROJECTOR not found: run scripts/pretrain.sh first"

ARGS=(--version v1 --data_path "$FINETUNE_DATA" --image_folder "$FINETUNE_IMAGES"
    --pretrain_mm_mlp_adapter "$PROJECTOR" --image_aspect_ratio pad --group_by_modality_length True
    --learning_rate "${LR:-2e-5}" --output_dir "$FINETUNE_OUTPUT")
add_align_args
add_common_args
launch "${ZERO:-zero3}" "${ARGS[@]}"
