"""The method in plain torch: knows nothing of LLaVA or transformers (tests/test_layout.py checks it).

- `alignment`: the level embeddings and the gate (`AlignmentConfig`, `AlignmentModule`; METHOD.md section 2);
- `levels`: equal-count level edges from CLIP scores, applying them, `levels.json` (section 1);
- `patch_loss`: the patch-alignment loss (section 3);
- `patch_geometry`: patch labels (boxes, polygons, RLE masks) mapped onto a vision tower's patch grid;
- `metrics`: nearest words, precision against labels, effective rank, matching pursuit;
- `fileio`: atomic writes and JSON Lines, used by every writer of the plugin.

May import: the standard library, torch, numpy, PIL (and DeepSpeed, lazily, to gather ZeRO-3 weights).
"""
