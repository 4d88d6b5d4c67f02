#!/bin/bash
# VQAv2 test-dev (LLaVA's scripts/v1_5/eval/vqav2.sh): chunked answers, then the EvalAI submission file.
# Settings: see eval/common.sh (MODEL_PATH is required).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require vqav2
infer vqav2 llava.eval.model_vqa_loader \
    --question-file "$EVAL_DIR/vqav2/llava_vqav2_mscoco_test-dev2015.jsonl" \
    --image-folder "$EVAL_DIR/vqav2/test2015"
score vqav2
