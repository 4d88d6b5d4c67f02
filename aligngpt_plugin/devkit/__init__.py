"""The dev kit: what tests, benchmarks and the demo build on; no user's training run needs it.

- `tiny_checkpoints`: tiny offline models (random-init Llama with LLaVA-1.5's tokenizer, CLIP) and the shapes
  dataset (`aligngpt-fixtures`);
- `pipeline`: the training and eval entry points run as subprocesses, with the fixtures' arguments;
- `demo_experiment` (with `demo_data`, `shapes_clip`, `demo_report`): AlignGPT beside LLaVA on shapes whose captions
  match their pictures to a known degree, scored by a tiny CLIP trained on them (`make demo`).

May import every other layer.
"""
