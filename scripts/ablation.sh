#!/usr/bin/env bash
# Ablations: the level count and the alignment mode, both stages (pre-training, then fine-tuning).
#
#   ALIGN_LEVELS=4 bash scripts/ablation.sh                   # 4 levels instead of 8, adaptive gate
#   ALIGN_MODE=global bash scripts/ablation.sh                # fine-tune with E[N-1] only (also: local,
#   ALIGN_MODE=fixed_level ALIGN_FIXED_LEVEL=3 bash scripts/ablation.sh     # no_gate, adaptive)
#   ALIGN_LEVELS=0 bash scripts/ablation.sh                   # plain LLaVA-1.5, the baseline
#   ALIGNGPT_TINY=runs/tiny ALIGN_LEVELS=4 bash scripts/ablation.sh         # tiny fixtures (CI)
#
# Pre-training depends only on the level count, so its output ($CHECKPOINTS/aligngpt-$MODEL_SIZE-levelsN-
# pretrain) is shared by every mode and skipped when its mm_projector.bin exists. The caption file must
# carry levels 0..N-1: for N != 8 PRETRAIN_DATA defaults to
# $DATA_ROOT/LLaVA-Pretrain/blip_laion_cc_sbu_558k_levelsN.json (score the pairs into N levels first).
# In tiny mode that file is made from the fixture's round-robin levels (level = index mod N).
# Fine-tuning writes $CHECKPOINTS/aligngpt-$MODEL_SIZE-levelsN-MODE. Other settings: scripts/common.sh.
HERE=$(dirname "${BASH_SOURCE[0]}")
GIVEN_PRETRAIN_DATA=${PRETRAIN_DATA:-}
source "$HERE/common.sh"

ALIGN_MODE=${ALIGN_MODE:-adaptive}
if [[ "$ALIGN_LEVELS" == 0 ]]; then
    [[ "$ALIGN_MODE" == adaptive ]] || die "ALIGN_MODE=$ALIGN_MODE needs ALIGN_LEVELS >= 2 (0 is plain LLaVA)"
    NAME=llava-$MODEL_SIZE
    PRETRAIN_NAME=$NAME-pretrain
    MODE_ARGS=""
else
    NAME=aligngpt-$MODEL_SIZE-levels$ALIGN_LEVELS
    PRETRAIN_NAME=$NAME-pretrain
    MODE_ARGS="--align_mode $ALIGN_MODE"
    if [[ "$ALIGN_MODE" == fixed_level ]]; then
        [[ -n "${ALIGN_FIXED_LEVEL:-}" ]] || die "ALIGN_MODE=fixed_level needs ALIGN_FIXED_LEVEL=k (0..N-1)"
        MODE_ARGS+=" --align_fixed_level $ALIGN_FIXED_LEVEL"
    fi
    NAME+=-$ALIGN_MODE
    if [[ -z "$GIVEN_PRETRAIN_DATA" && "$ALIGN_LEVELS" != 8 ]]; then
        if [[ -n "${TINY_DIR:-}" ]]; then
            PRETRAIN_DATA=$TINY_DIR/data/pretrain_levels_n$ALIGN_LEVELS.json
            "$PYTHON" - "$TINY_DIR/data/pretrain.json" "$PRETRAIN_DATA" "$ALIGN_LEVELS" <<'PY'
import json, sys
records = json.load(open(sys.argv[1]))
n = int(sys.argv[3])
json.dump([{**r, "align_level": i % n} for i, r in enumerate(records)], open(sys.argv[2], "w"))
PY
        else
            PRETRAIN_DATA=$DATA_ROOT/LLaVA-Pretrain/blip_laion_cc_sbu_558k_levels$ALIGN_LEVELS.json
        fi
    fi
fi

export ALIGN_LEVELS PRETRAIN_DATA
export PRETRAIN_OUTPUT=${PRETRAIN_OUTPUT:-$CHECKPOINTS/$PRETRAIN_NAME}
if [[ -f "$PRETRAIN_OUTPUT/mm_projector.bin" ]]; then
    echo "[ablation] stage 1 done already: $PRETRAIN_OUTPUT/mm_projector.bin" >&2
else
    RUN_NAME=$NAME bash "$HERE/pretrain.sh"
fi
RUN_NAME=$NAME EXTRA_ARGS="$MODE_ARGS ${EXTRA_ARGS:-}" bash "$HERE/finetune.sh"
