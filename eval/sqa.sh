#!/bin/bash
# ScienceQA-IMG (LLaVA's sqa.sh): answers with model_vqa_science, scored by LLaVA's eval_science_qa (IMG accuracy).
# Settings: see eval/common.sh (MODEL_PATH is required).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require sqa
infer sqa llava.eval.model_vqa_science \
    --question-file "$EVAL_DIR/scienceqa/llava_test_CQM-A.json" \
    --image-folder "$EVAL_DIR/scienceqa/images/test" \
    --single-pred-prompt
score sqa
