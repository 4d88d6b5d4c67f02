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
model, counts, sha256 of the input), scores_histogram.png, summary.json; work/ holds the shards. A run that
stops for any reason continues where it stopped when started again with the same arguments.
Independent jobs without torchrun: `--rank R --world-size W` on each (or `--slurm-array` in a Slurm array
job), then `--merge-only`; a job that died is run again with its rank (merge names what is missing).
Shards: per input shard scores/NAME.parquet (key, score; the embeddings with --embeddings) and
errors/NAME.jsonl, then levels.json, the histogram and summary.json; the shard is the unit of resuming.
"""

from __future__ import annotations

import argparse
import sys

from aligngpt_plugin.scoring.backends import DEFAULT_MODEL, DEFAULT_PRETRAINED


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aligngpt-score", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", required=True,
                   help="LLaVA data file (JSON array or JSON Lines of records), or webdataset shards: a brace "
                        "pattern ('shards/{00000..00099}.tar'), a folder of .tar files, or a list file (.txt)")
    p.add_argument("--images", default=None,
                   help="image folder the records' `image` paths are relative to (JSON input only)")
    p.add_argument("--output", required=True, help="output folder (work/ inside holds the resumable shards)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="open_clip model name, open_clip config .json, hf-hub:ORG/REPO, local-dir:PATH, or "
                        "hf:PATH / a transformers CLIP folder (default %(default)s)")
    p.add_argument("--pretrained", default=DEFAULT_PRETRAINED,
                   help="open_clip pretrained tag or checkpoint file; '' for random weights (default %(default)s)")
    p.add_argument("--levels", type=int, default=None, dest="num_levels",
                   help="number of equal-count levels (default 8, or that of --levels-from)")
    p.add_argument("--levels-from", default=None, help="apply the edges of an existing levels.json")
    p.add_argument("--caption", default="gpt-first", choices=["gpt-first", "gpt-last", "gpt-all"],
                   help="which gpt turn is the caption; gpt-all joins all turns of a conversation")
    p.add_argument("--caption-field", default=None,
                   help="take the caption from this record field instead (shards: this field of the .json member)")
    p.add_argument("--embeddings", action="store_true",
                   help="shards: also write the normalised image and text embeddings into each scores parquet")
    p.add_argument("--decode", default="auto", choices=["auto", "cpu", "device"],
                   help="where JPEGs are decoded: cpu (workers), device (nvjpeg on the GPU), auto (the GPU when a "
                        "probe finds it faster; default)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default %(default)s)")
    p.add_argument("--num-workers", type=int, default=-1,
                   help="DataLoader workers decoding images (-1: one per CPU core, at most 16)")
    p.add_argument("--decode-threads", type=int, default=4,
                   help="threads decoding the images of one batch inside a worker (default %(default)s)")
    p.add_argument("--chunk-size", type=int, default=8192,
                   help="records per shard, the unit of resuming (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK when available), cpu, cuda:1, ...")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast dtype; auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--strict", action="store_true", help="stop at the first record that cannot be scored")
    p.add_argument("--drop-errors", action="store_true",
                   help="leave unscorable records out of the levelled dataset (default: kept, without a level)")
    p.add_argument("--keep-top", type=float, default=None, metavar="F",
                   help="also write <data>_filtered.json: the best-aligned fraction F of the scored records")
    p.add_argument("--min-score", type=float, default=None, metavar="S",
                   help="also write <data>_filtered.json: the records scoring at least S (with --keep-top: both)")
    p.add_argument("--overwrite", action="store_true", help="discard shards of an earlier run in --output")
    p.add_argument("--rank", type=int, default=None, help="this job's shard, for jobs started without torchrun")
    p.add_argument("--world-size", type=int, default=None, help="number of shards, with --rank")
    p.add_argument("--slurm-array", action="store_true",
                   help="take --rank and --world-size from a Slurm array job (SLURM_ARRAY_TASK_ID minus "
                        "SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_TASK_COUNT); then --merge-only once all tasks are done")
    p.add_argument("--merge-only", action="store_true", help="write the outputs from finished shards")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--chunk-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # kill/resume tests
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
        if args.rank is not None or args.world_size is not None:
            print("aligngpt-score: error: --slurm-array sets --rank and --world-size; give one or the other",
                  file=sys.stderr)
            return 2
        try:
            args.rank, args.world_size = slurm_array_rank()
        except ValueError as e:
            print(f"aligngpt-score: error: {e}", file=sys.stderr)
            return 2
    from aligngpt_plugin.core.level_edges import LevelSplitError
    from aligngpt_plugin.scoring import ScoreConfig, ScoreError, merge_only, print_summary, score_dataset
    from aligngpt_plugin.scoring.records import InputError

    try:
        config = ScoreConfig(
            data_path=args.data, image_folder=args.images, output_dir=args.output, model=args.model,
            pretrained=args.pretrained, num_levels=args.num_levels, levels_from=args.levels_from,
            caption=args.caption, caption_field=args.caption_field, embeddings=args.embeddings,
            decode=args.decode, batch_size=args.batch_size,
            num_workers=args.num_workers, decode_threads=args.decode_threads, chunk_size=args.chunk_size,
            device=args.device, precision=args.precision, strict=args.strict, drop_errors=args.drop_errors,
            keep_top=args.keep_top, min_score=args.min_score,
            overwrite=args.overwrite, rank=args.rank, world_size=args.world_size, progress=not args.no_progress,
            chunk_delay_s=args.chunk_delay)
        summary = merge_only(config) if args.merge_only else score_dataset(config)
    except (ValueError, InputError, ScoreError, LevelSplitError) as e:
        print(f"aligngpt-score: error: {e}", file=sys.stderr)
        return 2
    if summary is not None:
        print_summary(summary)
    elif args.rank is not None:
        print(f"rank {args.rank} of {args.world_size} done; when every rank is, run with --merge-only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
