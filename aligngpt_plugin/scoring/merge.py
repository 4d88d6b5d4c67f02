"""The outputs of a scoring run, from its finished units (sources.py says what each kind of input writes):
levels.json, the histogram and the filtered data, each written atomically; for JSON input also scores.jsonl,
errors.jsonl and the dataset with `align_level`, and with --trl-dataset the same data in TRL's vision-language
format (for webdataset input the per-shard parquet and errors files are the scores and errors). One merge for
both kinds of input."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aligngpt_plugin.core.fileio import atomic_path
from aligngpt_plugin.core.level_edges import LevelsFile, assign_levels, level_counts, quantile_edges, score_stats
from aligngpt_plugin.scoring.config import ScoreConfig, ScoreError, ScoreSummary

if TYPE_CHECKING:
    from aligngpt_plugin.scoring.sources import Source


def filter_threshold(scores: np.ndarray, keep_top: float | None, min_score: float | None) -> float | None:
    """The lowest score the filtered dataset keeps (DataComp-style CLIP-score filtering): the score of the
    ceil(F x n)-th best record for `keep_top` F (records tied with it are kept too), at least `min_score`."""
    if keep_top is None and min_score is None:
        return None
    threshold = -np.inf if min_score is None else float(min_score)
    if keep_top is not None and scores.size:
        k = int(np.ceil(keep_top * scores.size))
        threshold = max(threshold, float(np.sort(scores)[::-1][k - 1]))
    return threshold


def merge_outputs(config: ScoreConfig, source: Source) -> ScoreSummary:
    """Read every finished unit of `source` (chunks or shards) and write the outputs. Raises ScoreError
    naming the units still missing (a rank that died: run that rank again, then merge)."""
    missing = source.missing()
    if missing:
        raise ScoreError(
            f"{len(missing)} of {source.num_units} {source.unit_name}s are not scored yet (first: "
            f"{', '.join(source.unit_label(u) for u in missing[:5])}{', ...' if len(missing) > 5 else ''}); "
            f"{_who_finishes(config, source.unit_name, missing)}")
    paths = source.merge_paths()
    scores, reasons = source.collect(paths)
    num_levels, edges = _edges(config, scores)
    levels = assign_levels(scores, edges)
    counts = level_counts(levels, num_levels)
    threshold = filter_threshold(scores, config.keep_top, config.min_score)
    filtered = source.write_datasets(paths, levels, scores, threshold)
    if config.trl_dataset != "none":
        paths["trl_dataset"] = write_trl_dataset(config, paths["dataset"])
    levels_file = LevelsFile(
        num_levels=num_levels, edges=edges, model=config.model, pretrained=config.pretrained, counts=counts,
        input_path=str(config.data_path), input_sha256=source.identity(), records=source.records(),
        scored=int(scores.size), errors=dict(sorted(reasons.items())), caption=source.caption_label(),
        edges_from=str(config.levels_from) if config.levels_from else None, score_stats=score_stats(scores))
    levels_file.write(paths["levels"])
    plot_histogram(scores, edges, paths["histogram"],
                   f"{source.title()}: {scores.size} scores, {num_levels} levels ({config.model})")
    return ScoreSummary(records=source.records(), scored=int(scores.size), errors=levels_file.errors,
                        counts=counts, edges=edges, outputs={k: str(v) for k, v in paths.items()},
                        filtered=filtered, filter_threshold=threshold)


def write_trl_dataset(config: ScoreConfig, levelled: Path) -> Path:
    """The levelled LLaVA data (`levelled`, with `align_level`) in TRL's vision-language format, written
    atomically beside it: <data>_levels_trl.parquet, or the folder <data>_levels_trl/ (save_to_disk).

    Args:
        config: the run's config (`trl_dataset`: "parquet" or "folder"; `image_folder`).
        levelled: the levelled JSON / JSON Lines file this merge wrote.
    Returns:
        The path written.
    Raises:
        ScoreError naming a record that has no place in TRL's format.
    """
    import os
    import shutil
    import tempfile

    from aligngpt_plugin.core.trl_format import RecordError, llava_to_trl_record, to_trl_dataset
    from aligngpt_plugin.scoring.records import iter_records

    folder = Path(config.image_folder).resolve()  # absolute: the dataset is read from anywhere
    try:
        rows = [llava_to_trl_record(record, index, folder)
                for index, (_, record) in enumerate(iter_records(levelled))]
    except RecordError as e:
        raise ScoreError(f"--trl-dataset: {e} (in {levelled}); fix the record or drop --trl-dataset") from e
    dataset = to_trl_dataset(rows)
    stem = levelled.name.rsplit(".", 1)[0]
    if config.trl_dataset == "parquet":
        target = levelled.parent / f"{stem}_trl.parquet"
        with atomic_path(target) as tmp:
            dataset.to_parquet(str(tmp))
        return target
    target = levelled.parent / f"{stem}_trl"
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=levelled.parent))
    try:  # the whole folder, then one rename: a reader sees the old folder or the new one
        dataset.save_to_disk(str(tmp))
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old.{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _who_finishes(config: ScoreConfig, unit: str, missing: list[int]) -> str:
    """What to run to finish the missing units: their ranks again, when the run had --rank/--world-size."""
    if config.world_size is None:
        return (f"run the scoring again with the same arguments to finish them (with --rank/--world-size W, the "
                f"k-th {unit} of the input is rank k mod W's)")
    ranks = sorted({u % config.world_size for u in missing})
    return (f"run rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of --world-size "
            f"{config.world_size} again (the same arguments) to finish them, then --merge-only")


def reason_kind(reason: str) -> str:
    """The error's kind, for counting: every reason reads "kind: detail"."""
    return reason.split(":", 1)[0]


def plot_histogram(scores: np.ndarray, edges: list[float], path: str | Path, title: str = "") -> None:
    """A histogram of the scores with the level edges drawn, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.subplots()
    ax.hist(np.asarray(scores, dtype=np.float64), bins=min(100, max(10, int(np.sqrt(len(scores))))),
            color="#4c72b0", edgecolor="white", linewidth=0.3)
    for k, edge in enumerate(edges, start=1):
        ax.axvline(edge, color="#c44e52", linewidth=1, linestyle="--")
        ax.text(edge, ax.get_ylim()[1] * 0.97, str(k), color="#c44e52", ha="left", va="top", fontsize=8)
    ax.set_xlabel("CLIP image-caption cosine similarity")
    ax.set_ylabel("records")
    ax.set_title(title or f"{len(scores)} scores, {len(edges) + 1} levels (dashed: first score of level k)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})  # no version stamp: reruns give the same bytes


def _edges(config: ScoreConfig, scores: np.ndarray) -> tuple[int, list[float]]:
    """The number of levels and their edges: those of --levels-from, or equal-count quantiles of `scores`."""
    if config.levels_from:
        source = LevelsFile.read(config.levels_from)
        if config.num_levels not in (None, source.num_levels):
            raise ScoreError(f"--levels {config.num_levels} contradicts {config.levels_from} "
                             f"({source.num_levels} levels); drop one of them")
        return source.num_levels, list(source.edges)
    return config.num_levels, quantile_edges(scores, config.num_levels)
