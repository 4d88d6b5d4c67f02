#!/bin/bash
# SEED-Bench (LLaVA's seed.sh): chunked answers, image accuracy (SEED-I) and the upload file.
# Settings: see eval/common.sh (MODEL_PATH is required).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require seed
infer seed llava.eval.model_vqa_loader \
    --question-file "$EVAL_DIR/seed_bench/llava-seed-bench.jsonl" \
    --image-folder "$EVAL_DIR/seed_bench"
score seed
