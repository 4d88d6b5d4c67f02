#!/bin/bash
# MME (LLaVA's mme.sh): answers, scored as MME's calculation.py (perception score).
# Settings: see eval/common.sh (MODEL_PATH is required).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require mme
infer mme llava.eval.model_vqa_loader \
    --question-file "$EVAL_DIR/MME/llava_mme.jsonl" \
    --image-folder "$EVAL_DIR/MME/MME_Benchmark_release_version"
score mme
