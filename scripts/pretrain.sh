#!/usr/bin/env bash
# Stage 1, AlignGPT pre-training (docs/method.md#training-recipe): the projector and the level embeddings train on
# the 558K LCS caption pairs, each with its alignment level; everything else is frozen. ZeRO-2.
#
#   bash scripts/pretrain.sh                                  # 7B, every visible GPU of this node
#   MODEL_SIZE=13b bash scripts/pretrain.sh
#   HOSTFILE=hostfile bash scripts/pretrain.sh                # multi-node through DeepSpeed's launcher
#   ALIGNGPT_TINY=runs/tiny bash scripts/pretrain.sh          # tiny fixtures, 2 CPU steps (CI)
#
# Settings (paths, GPUs, nodes, batch) are environment variables: see scripts/common.sh.
# Writes $CHECKPOINTS/$RUN_NAME-pretrain/mm_projector.bin (projector + levels) for the fine-tuning scripts.
# Started again after a stop, it continues from the last checkpoint (saved every SAVE_STEPS=200 steps).
# Global batch 256 (8 GPUs x 8 x accumulation 4), lr 1e-3, 1 epoch, cosine, warmup 0.03, no weight decay,
# bf16, tf32, gradient checkpointing, max length 2048, `plain` template.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PER_DEVICE_DEFAULT=8
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
# ~2,180 steps at batch 256: a checkpoint (projector, levels, optimizer and trainer state; tens of MB) every
# 200 keeps a stopped run within 10% of where it was (LLaVA's script saves every 24000, i.e. never)
SAVE_STEPS=${SAVE_STEPS:-200}
PRETRAIN_OUTPUT=${PRETRAIN_OUTPUT:-$CHECKPOINTS/$RUN_NAME-pretrain}

ARGS=(--version plain --data_path "$PRETRAIN_DATA" --image_folder "$PRETRAIN_IMAGES"
    --tune_mm_mlp_adapter True --learning_rate "${LR:-1e-3}" --output_dir "$PRETRAIN_OUTPUT")
add_align_args
add_common_args
launch "${ZERO:-zero2}" "${ARGS[@]}"
