"""CLIP alignment scores and levels for image-caption data (`aligngpt-score`).

    from aligngpt_plugin.scoring import ScoreConfig, score_dataset
    summary = score_dataset(ScoreConfig(data_path="blip_laion_cc_sbu_558k.json", image_folder="images",
                                        output_dir="runs/levels"))

- `config`: what a run is asked (`ScoreConfig`) and what it did (`ScoreSummary`);
- `records`: reading LLaVA data files in one streaming pass, captions, record problems, the chunk plan;
- `backends`: the CLIP models (open_clip names and checkpoints, transformers CLIP folders);
- `sources`: the two kinds of input (JSON chunks, webdataset shards) behind one interface: which units a rank
  scores, reading each unit once into batch tasks, filing a finished unit, reading them back at the merge;
- `dataset`: DataLoader workers that decode, preprocess and tokenize the batch tasks;
- `shards`: webdataset shards as input (img2dataset's layout): the shard list, reading samples;
- `decoding`: where JPEGs are decoded (workers, or nvjpeg on the GPU) and the prefetch to the device;
- `distributed`: devices and ranks (torchrun, or independent `--rank/--world-size` jobs);
- `work`: the resumable shards and the run's manifest;
- `merge`: the outputs (levels.json, histogram, filtered data; for JSON scores, errors, levelled dataset);
- `engine`: `score_dataset` and `merge_only`, which tie them together.

May import: torch, open_clip, transformers (CLIP only), `aligngpt_plugin.core`; never llava or the LLaVA
integration, so it runs where LLaVA is not installed.
"""

from aligngpt_plugin.scoring.config import ScoreConfig, ScoreError, ScoreSummary
from aligngpt_plugin.scoring.engine import merge_only, print_summary, score_dataset

__all__ = ["ScoreConfig", "ScoreError", "ScoreSummary", "merge_only", "print_summary", "score_dataset"]
