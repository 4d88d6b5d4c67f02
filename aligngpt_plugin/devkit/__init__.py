"""The dev kit: what tests, benchmarks and the demo build on; no user's training run needs it.

- `fixtures`: tiny offline models (random-init Llama with LLaVA-1.5's tokenizer, CLIP) and the shapes
  dataset (`aligngpt-fixtures`);
- `pipeline`: the training and eval entry points run as subprocesses, with the fixtures' arguments;
- `demo`: the whole AlignGPT pipeline on the fixtures (`make demo`).

May import every other layer.
"""
