"""aligngpt-score: CLIP alignment scores and equal-count alignment levels for a LLaVA caption file or shards.

    # one CPU or one GPU (CLIP ViT-L/14-336, OpenAI weights, 8 levels)
    aligngpt-score --data blip_laion_cc_sbu_558k.json --images images --output runs/levels
    # every GPU of a node, or many nodes: each rank scores its chunks, rank 0 writes the outputs
    torchrun --nproc_per_node 8 -m aligngpt_plugin.score --data ... --images ... --output runs/levels
    # new data, the levels of an earlier split; or keep the best-aligned 30% (CLIP-score filtering, as DataComp)
    aligngpt-score --data more.json --images images --output runs/more --levels-from runs/levels/levels.json
    aligngpt-score --data web.json --images images --output runs/web --keep-top 0.3
    # a transformers CLIP folder (e.g. the vision tower LLaVA loads), or any open_clip model / checkpoint
    aligngpt-score ... --model hf:checkpoints/clip-vit-large-patch14-336
    aligngpt-score ... --model ViT-B-16 --pretrained /ckpt/my_clip.pt
    # img2dataset / webdataset shards (a brace pattern, a folder of .tar, or a list file); no --images
    aligngpt-score --data 'shards/{00000..00099}.tar' --output runs/web --embeddings

Outputs in --output: scores.jsonl (index, id, score), errors.jsonl (records left out and why),
<data>_levels.json (the data with `align_level` 0..N-1, 0 = lowest similarity), levels.json (N, edges,
model, counts, sha256 of the input), scores_histogram.png, summary.json; with --trl-dataset parquet|folder also
<data>_levels_trl.parquet or <data>_levels_trl/ (the levelled data in TRL's vision-language format: messages,
images, align_level; for aligngpt-sft); work/ holds the shards. A run that
stops for any reason continues where it stopped when started again with the same arguments.
Independent jobs without torchrun: `--rank R --world-size W` on each (or `--slurm-array` in a Slurm array
job), then `--merge-only`; a job that died is run again with its rank (merge names what is missing).
Shards: per input shard scores/NAME.parquet (key, score; the embeddings with --embeddings) and
errors/NAME.jsonl, then levels.json, the histogram and summary.json; the shard is the unit of resuming.
"""

from __future__ import annotations

import argparse
import sys


def score_flags():
    """ScoreConfig's fields as aligngpt-score's flags (help, defaults and choices written once, in the
    dataclass); the names here are the flags' spellings that differ from the field names."""
    from aligngpt_plugin.core.flags import DataclassFlags
    from aligngpt_plugin.scoring.config import ScoreConfig

    return DataclassFlags(ScoreConfig, spelling="dash", skip=("merge",), hidden=("chunk_delay_s",),
                          names={"data_path": "data", "image_folder": "images", "output_dir": "output",
                                 "num_levels": "levels", "chunk_delay_s": "chunk-delay"})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aligngpt-score", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    score_flags().add_to(p)
    p.add_argument("--slurm-array", action="store_true",
                   help="take --rank and --world-size from a Slurm array job (SLURM_ARRAY_TASK_ID minus "
                        "SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT); then --merge-only once all tasks are done")
    p.add_argument("--merge-only", action="store_true", help="write the outputs from finished shards")
    return p


def slurm_array_rank(environ=None) -> tuple[int, int]:
    """(rank, world size) of this task of a Slurm array job. Raises ValueError when not in one."""
    import os

    environ = os.environ if environ is None else environ
    try:
        task, count = int(environ["SLURM_ARRAY_TASK_ID"]), int(environ["SLURM_ARRAY_TASK_COUNT"])
        first = int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    except (KeyError, ValueError) as e:
        raise ValueError(f"--slurm-array: not in a Slurm array job ({e} is missing or not a number); submit with "
                         "sbatch --array=0-N, or give --rank and --world-size") from None
    return task - first, count


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.slurm_array:
        if hasattr(args, "rank") or hasattr(args, "world_size"):
            print("aligngpt-score: error: --slurm-array sets --rank and --world-size; give one or the other",
                  file=sys.stderr)
            return 2
        try:
            args.rank, args.world_size = slurm_array_rank()
        except ValueError as e:
            print(f"aligngpt-score: error: {e}", file=sys.stderr)
            return 2
    from aligngpt_plugin.core.level_edges import LevelSplitError
    from aligngpt_plugin.scoring import ScoreError, merge_only, print_summary, score_dataset
    from aligngpt_plugin.scoring.records import InputError

    try:
        config = score_flags().build(args)
        summary = merge_only(config) if args.merge_only else score_dataset(config)
    except (ValueError, InputError, ScoreError, LevelSplitError) as e:
        print(f"aligngpt-score: error: {e}", file=sys.stderr)
        return 2
    if summary is not None:
        print_summary(summary)
    elif config.rank is not None:
        print(f"rank {config.rank} of {config.world_size} done; when every rank is, run with --merge-only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
