# Shared settings for the reproduction scripts; sourced by pretrain.sh, finetune.sh, finetune_lora.sh,
# finetune_qlora.sh and ablation.sh, never run by itself.
#
# Every setting is an environment variable with a default (the paper's setup, docs/method.md#training-recipe):
#
#   MODEL_SIZE=7b            7b or 13b: picks lmsys/vicuna-{7b,13b}-v1.5 (LLaVA-1.5 13B uses the same recipe)
#   LLM=...                  the base LLM (hub id or folder); default from MODEL_SIZE
#   VISION_TOWER=openai/clip-vit-large-patch14-336
#   DATA_ROOT=./playground/data   LLaVA's data layout; the four paths below default under it:
#   PRETRAIN_DATA=$DATA_ROOT/LLaVA-Pretrain/blip_laion_cc_sbu_558k_levels.json   (558K LCS, with levels)
#   PRETRAIN_IMAGES=$DATA_ROOT/LLaVA-Pretrain/images
#   FINETUNE_DATA=$DATA_ROOT/llava_v1_5_mix665k.json
#   FINETUNE_IMAGES=$DATA_ROOT
#   CHECKPOINTS=./checkpoints    outputs go to $CHECKPOINTS/$RUN_NAME...
#   RUN_NAME=aligngpt-$MODEL_SIZE
#   ALIGN_LEVELS=8           AlignGPT's level count; ALIGN_LEVELS=0 trains plain LLaVA-1.5
#   NUM_GPUS=<all visible>   GPUs per node (nvidia-smi -L), 1 without nvidia-smi. On a machine without GPUs,
#                            NUM_GPUS=N runs N CPU processes (gloo; the entry point adds --use_cpu True, see
#                            patches/cpu_distributed.py): a multi-GPU job rehearsed on a laptop
#   HOSTFILE=                a DeepSpeed hostfile ("host slots=8" per line): multi-node through DeepSpeed's
#                            launcher (pdsh by default; DS_LAUNCHER=openmpi|slurm|mvapich|... to choose)
#   NO_SSH=0 NODE_RANK=      NO_SSH=1: start the script on every node yourself with its NODE_RANK
#                            (DeepSpeed's --no_ssh); needs HOSTFILE and MASTER_ADDR
#   MASTER_ADDR= MASTER_PORT=29500
#   LAUNCHER=deepspeed       deepspeed (default), torchrun, or python (one process, no DeepSpeed)
#   ZERO=                    zero2, zero3 or zero3_offload; default per script (pretrain zero2, finetune zero3);
#                            none: no DeepSpeed, plain DDP (torch DistributedDataParallel) across the processes
#   PER_DEVICE_BATCH=        per-GPU micro-batch (default 8 pre-training, 16 fine-tuning, lowered when the
#                            GPUs outnumber it); the gradient accumulation is derived so that the global
#   GLOBAL_BATCH=            batch stays the paper's (256 pre-training, 128 fine-tuning) for any GPU count
#   GRAD_ACCUM=              set it to override the derived accumulation (then GLOBAL_BATCH is not checked)
#   ATTN=                    flash_attention_2, sdpa or eager; default: FlashAttention-2 when flash-attn is
#                            installed and a GPU is present, else SDPA (reported at start as "[aligngpt] attention")
#   REPORT_TO=none           wandb, tensorboard, ... (LLaVA's scripts use wandb)
#   EXTRA_ARGS=              more flags for aligngpt_plugin.train, appended last (they win)
#   PYTHON=python            the interpreter that has the plugin installed
#   DRY_RUN=1                print the command instead of running it
#
# Tiny mode (CI, laptops): ALIGNGPT_TINY=DIR (or 1 for runs/tiny) writes the offline tiny fixtures to DIR
# (python -m aligngpt_plugin.fixtures DIR) unless they are there, points every path at them and runs
# TINY_STEPS (2) steps of batch 2 in fp32 on one process, through the same launcher and DeepSpeed config.

set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

PYTHON=${PYTHON:-python}
MODEL_SIZE=${MODEL_SIZE:-7b}
case "$MODEL_SIZE" in
    7b | 13b) ;;
    *) die "MODEL_SIZE=$MODEL_SIZE: choose 7b or 13b" ;;
esac

if [[ -n "${ALIGNGPT_TINY:-}" ]]; then
    TINY_DIR=$ALIGNGPT_TINY
    [[ "$TINY_DIR" == 1 ]] && TINY_DIR=runs/tiny
    if [[ ! -f "$TINY_DIR/fixture_spec.json" ]]; then
        "$PYTHON" -m aligngpt_plugin.fixtures "$TINY_DIR"
    fi
    LLM=${LLM:-$TINY_DIR/llm}
    VISION_TOWER=${VISION_TOWER:-$TINY_DIR/clip}
    PRETRAIN_DATA=${PRETRAIN_DATA:-$TINY_DIR/data/pretrain_levels.json}
    PRETRAIN_IMAGES=${PRETRAIN_IMAGES:-$TINY_DIR/data/images}
    FINETUNE_DATA=${FINETUNE_DATA:-$TINY_DIR/data/finetune.json}
    FINETUNE_IMAGES=${FINETUNE_IMAGES:-$TINY_DIR/data/images}
    CHECKPOINTS=${CHECKPOINTS:-$TINY_DIR/checkpoints}
    NUM_GPUS=${NUM_GPUS:-1}
    PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-2}
    GLOBAL_BATCH=${GLOBAL_BATCH:-$((PER_DEVICE_BATCH * NUM_GPUS))}
    MAX_STEPS=${TINY_STEPS:-2}
    SAVE_STEPS=${SAVE_STEPS:-1000}
    PRECISION=(--bf16 False --tf32 False)  # fp32: CPUs have no TF32, and bf16 is not what CI checks
    DATALOADER_WORKERS=0
    LORA_R=${LORA_R:-8}
    LORA_ALPHA=${LORA_ALPHA:-16}
    export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
fi

LLM=${LLM:-lmsys/vicuna-${MODEL_SIZE}-v1.5}
VISION_TOWER=${VISION_TOWER:-openai/clip-vit-large-patch14-336}
DATA_ROOT=${DATA_ROOT:-./playground/data}
PRETRAIN_DATA=${PRETRAIN_DATA:-$DATA_ROOT/LLaVA-Pretrain/blip_laion_cc_sbu_558k_levels.json}
PRETRAIN_IMAGES=${PRETRAIN_IMAGES:-$DATA_ROOT/LLaVA-Pretrain/images}
FINETUNE_DATA=${FINETUNE_DATA:-$DATA_ROOT/llava_v1_5_mix665k.json}
FINETUNE_IMAGES=${FINETUNE_IMAGES:-$DATA_ROOT}
CHECKPOINTS=${CHECKPOINTS:-./checkpoints}
RUN_NAME=${RUN_NAME:-aligngpt-$MODEL_SIZE}
ALIGN_LEVELS=${ALIGN_LEVELS:-8}
LAUNCHER=${LAUNCHER:-deepspeed}
MASTER_PORT=${MASTER_PORT:-29500}
MAX_STEPS=${MAX_STEPS:--1}
REPORT_TO=${REPORT_TO:-none}
DATALOADER_WORKERS=${DATALOADER_WORKERS:-4}
LORA_R=${LORA_R:-128}
LORA_ALPHA=${LORA_ALPHA:-256}
if [[ -z "${PRECISION+x}" ]]; then
    PRECISION=(--bf16 True --tf32 True)
fi
if [[ -z "${NUM_GPUS:-}" ]]; then
    NUM_GPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    [[ "$NUM_GPUS" -ge 1 ]] || NUM_GPUS=1
fi
if [[ -n "${ATTN:-}" ]]; then
    export ALIGNGPT_ATTN_IMPLEMENTATION=$ATTN  # read by aligngpt_plugin.train.pick_attention
fi

# Processes in the whole job: the slots of the hostfile, or the GPUs of this node.
world_size() {
    if [[ -n "${HOSTFILE:-}" ]]; then
        [[ -f "$HOSTFILE" ]] || die "HOSTFILE=$HOSTFILE does not exist"
        local n
        n=$(sed -e 's/#.*//' "$HOSTFILE" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^slots=[0-9]+$/) s += substr($i, 7)} END {print s + 0}')
        [[ -n "$n" && "$n" -ge 1 ]] || die "HOSTFILE=$HOSTFILE lists no 'HOST slots=N' lines"
        echo "$n"
    else
        echo "$NUM_GPUS"
    fi
}

# Sets PER_DEVICE_BATCH when it was not given: the script's PER_DEVICE_DEFAULT, lowered so that one step
# of all processes does not exceed GLOBAL_BATCH (e.g. 128 on 16 GPUs: 8 per GPU).
resolve_batch() {
    if [[ -z "${PER_DEVICE_BATCH:-}" ]]; then
        local world
        world=$(world_size)
        PER_DEVICE_BATCH=$PER_DEVICE_DEFAULT
        if ((PER_DEVICE_BATCH * world > GLOBAL_BATCH && GLOBAL_BATCH % world == 0)); then
            PER_DEVICE_BATCH=$((GLOBAL_BATCH / world))
        fi
    fi
}

# The accumulation that keeps the global batch: GLOBAL_BATCH = PER_DEVICE_BATCH x processes x accumulation.
grad_accum() {
    if [[ -n "${GRAD_ACCUM:-}" ]]; then
        echo "$GRAD_ACCUM"
        return
    fi
    local world per_step
    world=$(world_size)
    per_step=$((PER_DEVICE_BATCH * world))
    if ((GLOBAL_BATCH % per_step != 0)); then
        die "GLOBAL_BATCH=$GLOBAL_BATCH is not a multiple of PER_DEVICE_BATCH=$PER_DEVICE_BATCH x $world processes;" \
            "change PER_DEVICE_BATCH or set GRAD_ACCUM"
    fi
    echo $((GLOBAL_BATCH / per_step))
}

# Appends --align_levels N to ARGS, or nothing for plain LLaVA (ALIGN_LEVELS=0).
add_align_args() {
    if [[ "$ALIGN_LEVELS" != 0 ]]; then
        ARGS+=(--align_levels "$ALIGN_LEVELS")
    fi
}

# DS_ARGS: `--deepspeed CONFIG` for a config shipped in the package (zero2, zero3, zero3_offload) or a file;
# nothing for ZERO=none (plain DDP).
set_deepspeed_args() {
    DS_ARGS=()
    if [[ "$1" == none ]]; then
        return
    elif [[ -f "$1" ]]; then
        DS_ARGS=(--deepspeed "$1")
    else
        DS_ARGS=(--deepspeed "$("$PYTHON" -m aligngpt_plugin.deepspeed_configs "$1")")
    fi
}

# Run aligngpt_plugin.train with the arguments given, through $LAUNCHER, with the DeepSpeed config $1.
launch() {
    local zero=$1
    shift
    local cmd=()
    set_deepspeed_args "$zero"
    case "$LAUNCHER" in
        deepspeed)
            cmd=(deepspeed)
            if [[ -n "${HOSTFILE:-}" ]]; then
                cmd+=(--hostfile "$HOSTFILE" --launcher "${DS_LAUNCHER:-pdsh}")
                [[ -n "${MASTER_ADDR:-}" ]] && cmd+=(--master_addr "$MASTER_ADDR")
                if [[ "${NO_SSH:-0}" == 1 ]]; then
                    [[ -n "${NODE_RANK:-}" ]] || die "NO_SSH=1 needs NODE_RANK (this node's index in HOSTFILE)"
                    cmd+=(--no_ssh --node_rank "$NODE_RANK")
                fi
            else
                cmd+=(--num_gpus "$NUM_GPUS")
            fi
            cmd+=(--master_port "$MASTER_PORT" --module aligngpt_plugin.train "$@" "${DS_ARGS[@]}")
            ;;
        torchrun)
            cmd=(torchrun --nproc_per_node "$NUM_GPUS" --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}"
                --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "$MASTER_PORT"
                -m aligngpt_plugin.train "$@" "${DS_ARGS[@]}")
            ;;
        python)
            cmd=("$PYTHON" -m aligngpt_plugin.train "$@")
            ;;
        *) die "LAUNCHER=$LAUNCHER: choose deepspeed, torchrun or python" ;;
    esac
    # shellcheck disable=SC2206  # EXTRA_ARGS is a list of flags, split on spaces on purpose
    cmd+=(${EXTRA_ARGS:-})
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        printf '%q ' "${cmd[@]}"
        echo
        return
    fi
    echo "[scripts] ${cmd[*]}" >&2
    "${cmd[@]}"
}

# Appends the flags both stages share (LLaVA-1.5's scripts/v1_5/{pretrain,finetune}.sh) to ARGS.
add_common_args() {
    local accum
    resolve_batch
    accum=$(grad_accum)
    ARGS+=(--model_name_or_path "$LLM" --vision_tower "$VISION_TOWER"
        --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2
        --mm_use_im_start_end False --mm_use_im_patch_token False
        "${PRECISION[@]}" --num_train_epochs 1 --max_steps "$MAX_STEPS"
        --per_device_train_batch_size "$PER_DEVICE_BATCH" --per_device_eval_batch_size 4
        --gradient_accumulation_steps "$accum"
        --evaluation_strategy no --save_strategy steps --save_steps "$SAVE_STEPS" --save_total_limit 1
        --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 1
        --model_max_length 2048 --gradient_checkpointing True
        --dataloader_num_workers "$DATALOADER_WORKERS" --lazy_preprocess True --report_to "$REPORT_TO")
}
