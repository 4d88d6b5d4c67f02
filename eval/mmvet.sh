#!/bin/bash
# MM-Vet (LLaVA's mmvet.sh): answers with model_vqa, the results file for MM-Vet's GPT-4 evaluator.
# Settings: see eval/common.sh (MODEL_PATH is required).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require mmvet
infer mmvet llava.eval.model_vqa \
    --question-file "$EVAL_DIR/mm-vet/llava-mm-vet.jsonl" \
    --image-folder "$EVAL_DIR/mm-vet/images"
score mmvet
