#!/usr/bin/env bash
# Stage 2 with LoRA (LLaVA-1.5's finetune_lora.sh recipe): LoRA r 128, alpha 256 on the LLM's linear
# layers, lr 2e-4; the projector (lr 2e-5) and the alignment gate train in full. ZeRO-3.
#
#   bash scripts/finetune_lora.sh                             # 7B, after scripts/pretrain.sh
#   ALIGNGPT_TINY=runs/tiny bash scripts/finetune_lora.sh     # tiny fixtures, 2 CPU steps (CI)
#
# Writes $CHECKPOINTS/$RUN_NAME-lora: the adapter (adapter_model.safetensors), config.json and
# non_lora_trainables.bin (projector, gate and level embeddings), LLaVA's layout. Merge it into a full
# checkpoint with: python -m aligngpt_plugin.lora merge $CHECKPOINTS/$RUN_NAME-lora --base $LLM --out DIR
# Other settings: scripts/common.sh (LORA_R, LORA_ALPHA too).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PER_DEVICE_DEFAULT=16
GLOBAL_BATCH=${GLOBAL_BATCH:-128}
SAVE_STEPS=${SAVE_STEPS:-50000}
PROJECTOR=${PROJECTOR:-${PRETRAIN_OUTPUT:-$CHECKPOINTS/$RUN_NAME-pretrain}/mm_projector.bin}
LORA_OUTPUT=${LORA_OUTPUT:-$CHECKPOINTS/$RUN_NAME-lora}
[[ -f "$PROJECTOR" || "${DRY_RUN:-0}" == 1 ]] || die "PROJECTOR=$PROJECTOR not found: run scripts/pretrain.sh first"

ARGS=(--lora_enable True --lora_r "$LORA_R" --lora_alpha "$LORA_ALPHA" --mm_projector_lr 2e-5
    --version v1 --data_path "$FINETUNE_DATA" --image_folder "$FINETUNE_IMAGES"
    --pretrain_mm_mlp_adapter "$PROJECTOR" --image_aspect_ratio pad --group_by_modality_length True
    --learning_rate "${LR:-2e-4}" --output_dir "$LORA_OUTPUT")
add_align_args
add_common_args
launch "${ZERO:-zero3}" "${ARGS[@]}"
