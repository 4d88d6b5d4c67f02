"""Evaluation on LLaVA's 12 benchmarks and through lmms-eval (`aligngpt-eval`, `eval/*.sh`).

- `benchmarks`: each benchmark's files, in LLaVA's playground/data/eval layout;
- `scorers`: LLaVA's own scorers, the official rules of the others, submission files;
- `report`: one markdown table beside the paper's numbers;
- `gates`: the gate's weights per benchmark, entropy and heatmap;
- `lmms`, `lmms_model`: `lmms-eval --model aligngpt` (the `lmms_eval.models` entry point);
- `lmms_hf`: the same for transformers-native AlignGPT folders, over lmms-eval's `llava_hf`.

May import: `aligngpt_plugin.core`, the LLaVA integration (to load checkpoints), llava's scorers,
lmms-eval; not scoring, analysis or the dev kit.
"""
