#!/bin/bash
# VizWiz test (LLaVA's vizwiz.sh): answers, then the EvalAI submission file.
# Settings: see eval/common.sh (MODEL_PATH is required).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require vizwiz
infer vizwiz llava.eval.model_vqa_loader \
    --question-file "$EVAL_DIR/vizwiz/llava_test.jsonl" \
    --image-folder "$EVAL_DIR/vizwiz/test"
score vizwiz
