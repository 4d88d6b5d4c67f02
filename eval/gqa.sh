#!/bin/bash
# GQA testdev-balanced (LLaVA's gqa.sh): chunked answers, accuracy as GQA's eval.py computes it.
# Settings: see eval/common.sh (MODEL_PATH is required).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require gqa
infer gqa llava.eval.model_vqa_loader \
    --question-file "$EVAL_DIR/gqa/llava_gqa_testdev_balanced.jsonl" \
    --image-folder "$EVAL_DIR/gqa/data/images"
score gqa
