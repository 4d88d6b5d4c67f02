#!/bin/bash
# LLaVA-Bench in the wild (LLaVA's llavabench.sh): answers with model_vqa; scoring needs the GPT-4 judge.
# Settings: see eval/common.sh (MODEL_PATH is required).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require llava_w
infer llava_w llava.eval.model_vqa \
    --question-file "$EVAL_DIR/llava-bench-in-the-wild/questions.jsonl" \
    --image-folder "$EVAL_DIR/llava-bench-in-the-wild/images"
score llava_w
