#!/usr/bin/env bash
# Stage 2 with QLoRA: the LLM is loaded in 4 bits (bitsandbytes NF4, double quantisation) and trains
# LoRA r 128, alpha 256, lr 2e-4; the projector and the alignment gate and levels stay in full precision
# and train in full (the gate), as in LLaVA's QLoRA path. ZeRO-2 (DeepSpeed cannot shard 4-bit weights
# with ZeRO-3).
#
#   bash scripts/finetune_qlora.sh                            # 7B, after scripts/pretrain.sh
#   ALIGNGPT_TINY=runs/tiny bash scripts/finetune_qlora.sh    # tiny fixtures, 2 CPU steps (CI)
#
# Writes $CHECKPOINTS/$RUN_NAME-qlora in the LoRA layout (see finetune_lora.sh); merge with
# python -m aligngpt_plugin.lora merge (the merge loads the base LLM unquantised).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PER_DEVICE_DEFAULT=16
GLOBAL_BATCH=${GLOBAL_BATCH:-128}
SAVE_STEPS=${SAVE_STEPS:-50000}
PROJECTOR=${PROJECTOR:-${PRETRAIN_OUTPUT:-$CHECKPOINTS/$RUN_NAME-pretrain}/mm_projector.bin}
QLORA_OUTPUT=${QLORA_OUTPUT:-$CHECKPOINTS/$RUN_NAME-qlora}
[[ -f "$PROJECTOR" || "${DRY_RUN:-0}" == 1 ]] || die "PROJECTOR=$PROJECTOR not found: run scripts/pretrain.sh first"

ARGS=(--bits 4 --quant_type nf4 --double_quant True
    --lora_enable True --lora_r "$LORA_R" --lora_alpha "$LORA_ALPHA" --mm_projector_lr 2e-5
    --version v1 --data_path "$FINETUNE_DATA" --image_folder "$FINETUNE_IMAGES"
    --pretrain_mm_mlp_adapter "$PROJECTOR" --image_aspect_ratio pad --group_by_modality_length True
    --learning_rate "${LR:-2e-4}" --output_dir "$QLORA_OUTPUT")
add_align_args
add_common_args
launch "${ZERO:-zero2}" "${ARGS[@]}"
