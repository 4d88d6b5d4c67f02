#!/bin/bash
# TextVQA val (LLaVA's textvqa.sh): answers, scored by LLaVA's eval_textvqa.
# Settings: see eval/common.sh (MODEL_PATH is required).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require textvqa
infer textvqa llava.eval.model_vqa_loader \
    --question-file "$EVAL_DIR/textvqa/llava_textvqa_val_v051_ocr.jsonl" \
    --image-folder "$EVAL_DIR/textvqa/train_images"
score textvqa
