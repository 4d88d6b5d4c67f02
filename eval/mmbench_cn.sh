#!/bin/bash
# MMBench-CN dev (LLaVA's mmbench_cn.sh): answers with model_vqa_mmbench, then the xlsx for the server.
# Settings: see eval/common.sh (MODEL_PATH is required).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

require mmbench_cn
infer mmbench_cn llava.eval.model_vqa_mmbench \
    --question-file "$EVAL_DIR/mmbench_cn/mmbench_dev_cn_20231003.tsv" \
    --lang cn --single-pred-prompt
score mmbench_cn
