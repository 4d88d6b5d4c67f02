"""The method in plain torch: knows nothing of LLaVA or transformers (tests/test_layout.py checks it).

- `alignment`: the level embeddings and the gate (`AlignmentConfig`, `AlignmentModule`;
  docs/method.md#the-alignment-token);
- `level_edges`: equal-count level edges from CLIP scores, applying them, `levels.json`
  (docs/method.md#alignment-levels);
- `patch_loss`: the patch-alignment loss (docs/method.md#patch-aligned-pre-training);
- `patch_geometry`: patch labels (boxes, polygons, RLE masks) mapped onto a vision tower's patch grid;
- `metrics`: nearest words, precision against labels, effective rank, matching pursuit;
- `flags`: a settings dataclass's fields as command-line flags (every command's options come from one place);
- `fileio`: atomic writes and JSON Lines, used by every writer of the plugin;
- `trl_format`: LLaVA data records in TRL's vision-language format (aligngpt-score's TRL output, aligngpt-sft).

May import: the standard library, torch, numpy, PIL (and DeepSpeed, lazily, to gather ZeRO-3 weights; datasets,
lazily, to build TRL datasets).
"""
