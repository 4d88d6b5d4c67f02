"""Run one of LLaVA's eval modules, unchanged, with its own command line, on this machine's device.

    python -m aligngpt_plugin.llava_eval llava.eval.model_vqa_loader \
        --model-path checkpoints/llava-v1.5-7b --question-file q.jsonl --image-folder images \
        --answers-file answers.jsonl --temperature 0 --conv-mode vicuna_v1

Same as `python -m llava.eval.model_vqa_loader ...`, after the plugin's checks and `patches/`
(which, on machines without CUDA, let LLaVA's hard-coded `cuda` device become `cpu` or `mps`), with
LLaVA's loader made to recognise AlignGPT checkpoints by their config (`aligngpt_plugin.integrations.llava.loader`).
"""

from __future__ import annotations

import runpy
import sys

USAGE = "usage: python -m aligngpt_plugin.llava_eval llava.eval.<module> [that module's arguments]"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or not argv[0].startswith("llava."):
        asked = bool(argv) and argv[0] in ("-h", "--help")
        print(f"{USAGE}\nfor example: llava.eval.model_vqa_loader, llava.eval.model_vqa_science, "
              "llava.eval.model_vqa_mmbench, llava.eval.model_vqa", file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    from aligngpt_plugin.integrations.llava.compat import prepare_llava
    from aligngpt_plugin.integrations.llava.loader import enable_aligngpt_loading

    prepare_llava()
    enable_aligngpt_loading()  # AlignGPT (and LLaVA) checkpoints are recognised by config, not folder name
    module, rest = argv[0], argv[1:]
    saved = sys.argv
    sys.argv = [module, *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
