#!/bin/bash
# POPE (LLaVA's pope.sh): answers, scored by LLaVA's eval_pope (mean F1 of the three splits).
# Settings: see eval/common.sh (MODEL_PATH is required).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require pope
infer pope llava.eval.model_vqa_loader \
    --question-file "$EVAL_DIR/pope/llava_pope_test.jsonl" \
    --image-folder "$EVAL_DIR/pope/val2014"
score pope
