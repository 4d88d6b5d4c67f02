#!/bin/bash
# MMBench dev (LLaVA's mmbench.sh): answers with model_vqa_mmbench, then the xlsx for the server.
# Settings: see eval/common.sh (MODEL_PATH is required).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require mmbench
infer mmbench llava.eval.model_vqa_mmbench \
    --question-file "$EVAL_DIR/mmbench/mmbench_dev_20230712.tsv" \
    --single-pred-prompt
score mmbench
