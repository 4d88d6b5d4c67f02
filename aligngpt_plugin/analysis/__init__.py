"""Patch-level alignment of any LLaVA/AlignGPT checkpoint (`aligngpt-analyze`): nearest words of projected
patches against their labels, projector compression, matching pursuit. Uses the LLaVA integration to load
checkpoints; the measures themselves are `aligngpt_plugin.core.metrics`.

- `load`: a checkpoint (full, or a stage-1 projector on its base LLM) with its vision tower;
- `run`: the images, the measures per image and over all, `report.json`;
- `plots`: patch grids, spectra, pursuit residuals.

May import: `aligngpt_plugin.core`, the LLaVA integration, llava, transformers, matplotlib; not scoring,
evaluation or the dev kit.
"""
