#!/usr/bin/env bash
# Every GPU figure the issues ask for, in one run; JSON results (and the device) under ${OUT:-bench/results/gpu}.
#
#   ../shared/tools/device-wheels.sh      # on the CPU machine, once: the wheels the GPU image lacks -> .whl/
#   bash bench/gpu_figures.sh             # on the GPU machine, from the repository root (carry .whl)
#
# 1. AlignGPT / LLaVA step time on a 7B-shaped slice in bf16 (issue: ratio < 1.02)
# 2. ZeRO-2 pre-training and ZeRO-3 fine-tuning throughput on the slice: tokens/s, MFU, peak memory, ratio
#    (goal: MFU >= 40% on H100 in fine-tuning)
# 3. aligngpt-score images/s with ViT-L/14-336 and JPEG decoding (goal: >= 1,000 images/s on one H100)
# 4. a converted released checkpoint (tiny) in bf16 on CUDA against fp32 on the CPU
# 5. the tiny reference run (stage 1 + stage 2 + eval) on the image's own torch and transformers 5.x, beside
#    the losses recorded on 4.57.6 on the CPU (tests/golden/reference_run_4.57.6.json)
# 6. HF-native AlignGPT / transformers' LlavaForConditionalGeneration step time on the 7B-shaped slice in bf16,
#    same weights and batch (plus <align>), sdpa and, where flash_attn imports, FlashAttention-2 (goal <= 1.02)
set -euo pipefail
out=${OUT:-bench/results/gpu}
mkdir -p "$out"
if [ -d .whl ] && ! python3 -c "import llava" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$HOME/site" .whl/*.whl
    export PYTHONPATH="$HOME/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/device.csv"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee "$out/versions.txt"
run() { local name=$1; shift; echo "== $name"; "$@" 2>&1 | tee "$out/$name.log"; }
run step_time_7b_slice python3 bench/step_time.py --hidden 4096 --layers 2 --heads 32 --dtype bfloat16 \
    --json "$out/step_time_7b_slice.json"
run pretrain_zero2 python3 bench/train_throughput.py --shape 7b-slice --stage pretrain --zero 2 \
    --json "$out/pretrain_zero2.json"
run finetune_zero3 python3 bench/train_throughput.py --shape 7b-slice --stage finetune --zero 3 \
    --json "$out/finetune_zero3.json"
run score_vit_l14_336 python3 bench/score_throughput.py --model ViT-L-14-336 --json "$out/score_vit_l14_336.json"
run released_bf16 python3 bench/released_bf16.py --device cuda --json "$out/released_bf16.json"
run reference_run python3 tests/golden/reference_run.py "$out/reference_run.json"
run hf_step_time_7b_slice_sdpa python3 bench/hf_step_time.py --shape 7b-slice --dtype bfloat16 --attn sdpa \
    --json "$out/hf_step_time_7b_slice_sdpa.json"
if python3 -c "import flash_attn" 2>/dev/null; then
    run hf_step_time_7b_slice_fa2 python3 bench/hf_step_time.py --shape 7b-slice --dtype bfloat16 \
        --attn flash_attention_2 --json "$out/hf_step_time_7b_slice_fa2.json"
else
    echo "== hf_step_time_7b_slice_fa2: flash_attn does not import here; skipped" | tee "$out/hf_step_time_7b_slice_fa2.log"
fi
# the TRL path (SFT collator + HF-native AlignGPT) against the LLaVA-original path, one stage-2 step each, alternating
run trl_step_time_7b_slice_sdpa python3 bench/trl_step_time.py --shape 7b-slice --device cuda --dtype bfloat16 \
    --attn sdpa --json "$out/trl_step_time_7b_slice_sdpa.json"
if python3 -c "import flash_attn" 2>/dev/null; then
    run trl_step_time_7b_slice_fa2 python3 bench/trl_step_time.py --shape 7b-slice --device cuda --dtype bfloat16 \
        --attn flash_attention_2 --json "$out/trl_step_time_7b_slice_fa2.json"
else
    echo "== trl_step_time_7b_slice_fa2: flash_attn does not import here; skipped" | tee "$out/trl_step_time_7b_slice_fa2.log"
fi
