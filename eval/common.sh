#!/bin/bash
# Shared by eval/<benchmark>.sh, the plugin's versions of LLaVA's scripts/v1_5/eval/*.sh.
#
# Settings (environment):
#   MODEL_PATH    checkpoint folder or hub id (required)
#   MODEL_BASE    base LLM for LoRA or projector-only checkpoints (default: none)
#   CKPT          name used in answer/result file names (default: basename of MODEL_PATH)
#   EVAL_DIR      LLaVA's eval data folder (default: ./playground/data/eval)
#   ANSWERS_DIR   where answers go (default: $EVAL_DIR/answers/$CKPT)
#   RESULTS_DIR   where scores go, one <benchmark>.json each (default: $EVAL_DIR/results/$CKPT)
#   CONV_MODE     LLaVA conversation template (default: vicuna_v1)
#   CUDA_VISIBLE_DEVICES  one inference chunk per listed GPU, as LLaVA's scripts (default: 0)
#   CHUNKS        number of chunks (default: the number of GPUs listed)
#   PYTHON        interpreter (default: python)
# AlignGPT checkpoints also get their gate weights written beside the answers (<benchmark>.gates.jsonl).
set -euo pipefail

: "${MODEL_PATH:?set MODEL_PATH to the checkpoint folder or hub id}"
MODEL_BASE="${MODEL_BASE:-}"
CKPT="${CKPT:-$(basename "$MODEL_PATH")}"
EVAL_DIR="${EVAL_DIR:-./playground/data/eval}"
ANSWERS_DIR="${ANSWERS_DIR:-$EVAL_DIR/answers/$CKPT}"
RESULTS_DIR="${RESULTS_DIR:-$EVAL_DIR/results/$CKPT}"
CONV_MODE="${CONV_MODE:-vicuna_v1}"
PYTHON="${PYTHON:-python}"
IFS=',' read -ra GPULIST <<< "${CUDA_VISIBLE_DEVICES:-0}"
CHUNKS="${CHUNKS:-${#GPULIST[@]}}"

# Stop early, with where LLaVA's docs get them, when the benchmark's files are missing.
require() {
    "$PYTHON" -m aligngpt_plugin.evaluate check "$1" --eval-dir "$EVAL_DIR"
}

# infer KEY MODULE [module arguments...]: LLaVA's eval MODULE in $CHUNKS parallel chunks, merged into
# $ANSWERS_DIR/KEY.jsonl (and the gate weights into KEY.gates.jsonl) in question order.
infer() {
    local key=$1 module=$2
    shift 2
    local parts="$ANSWERS_DIR/$key"
    mkdir -p "$parts"
    local base_args=()
    [ -n "$MODEL_BASE" ] && base_args=(--model-base "$MODEL_BASE")
    local pids=()
    for IDX in $(seq 0 $((CHUNKS - 1))); do
        rm -f "$parts/${CHUNKS}_${IDX}.gates.jsonl"
        CUDA_VISIBLE_DEVICES="${GPULIST[$((IDX % ${#GPULIST[@]}))]}" \
        ALIGNGPT_GATE_DUMP="$parts/${CHUNKS}_${IDX}.gates.jsonl" \
            "$PYTHON" -m aligngpt_plugin.llava_eval "$module" \
            --model-path "$MODEL_PATH" "${base_args[@]}" \
            --answers-file "$parts/${CHUNKS}_${IDX}.jsonl" \
            --num-chunks "$CHUNKS" --chunk-idx "$IDX" \
            --temperature 0 --conv-mode "$CONV_MODE" "$@" &
        pids+=($!)
    done
    local failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    if [ "$failed" -ne 0 ]; then
        echo "eval: a chunk of $key failed; see its output above" >&2
        exit 1
    fi
    : > "$ANSWERS_DIR/$key.jsonl"
    rm -f "$ANSWERS_DIR/$key.gates.jsonl"
    for IDX in $(seq 0 $((CHUNKS - 1))); do
        cat "$parts/${CHUNKS}_${IDX}.jsonl" >> "$ANSWERS_DIR/$key.jsonl"
        if [ -f "$parts/${CHUNKS}_${IDX}.gates.jsonl" ]; then
            cat "$parts/${CHUNKS}_${IDX}.gates.jsonl" >> "$ANSWERS_DIR/$key.gates.jsonl"
        fi
    done
}

# score KEY: the benchmark's score (or submission file) into $RESULTS_DIR/KEY.json.
score() {
    "$PYTHON" -m aligngpt_plugin.evaluate score "$1" --eval-dir "$EVAL_DIR" \
        --answers "$ANSWERS_DIR/$1.jsonl" --results-dir "$RESULTS_DIR" --ckpt "$CKPT"
}
