"""The outputs of a scoring run, from its finished shards: scores.jsonl, errors.jsonl, the dataset with
`align_level`, levels.json and the histogram, each written atomically. For webdataset input the per-shard
parquet and errors files are the scores and errors; the merge adds levels.json and the histogram."""

from __future__ import annotations

import contextlib
import json
from array import array
from pathlib import Path

import numpy as np

from aligngpt_plugin.core.fileio import atomic_open, atomic_path
from aligngpt_plugin.core.level_edges import LevelsFile, assign_levels, level_counts, quantile_edges, score_stats
from aligngpt_plugin.scoring.config import ScoreConfig, ScoreError, ScoreSummary
from aligngpt_plugin.scoring.records import InputPlan, iter_records
from aligngpt_plugin.scoring.work import shard_outputs, shard_path


def output_paths(config: ScoreConfig, plan: InputPlan | None = None) -> dict[str, Path]:
    out = Path(config.output_dir)
    data = Path(config.data_path)
    suffix = ".jsonl" if (plan.format if plan else data.suffix.lstrip(".")) == "jsonl" else ".json"
    paths = {"scores": out / "scores.jsonl", "errors": out / "errors.jsonl",
             "dataset": out / f"{data.stem}_levels{suffix}", "levels": out / "levels.json",
             "histogram": out / "scores_histogram.png", "summary": out / "summary.json"}
    if config.keep_top is not None or config.min_score is not None:
        paths["filtered"] = out / f"{data.stem}_filtered{suffix}"
    return paths


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


def merge_outputs(config: ScoreConfig, plan: InputPlan) -> ScoreSummary:
    """Read every shard and write the outputs. Raises ScoreError naming the chunks still missing."""
    missing = [c for c in range(plan.num_chunks) if not shard_path(config.output_dir, c).is_file()]
    if missing:
        raise ScoreError(f"{len(missing)} of {plan.num_chunks} chunks are not scored yet (first: {missing[:5]}); "
                         "run the scoring again with the same arguments to finish them")
    paths = output_paths(config, plan)
    indices, scores = array("q"), array("d")
    reasons: dict[str, int] = {}
    errored = array("q")
    with atomic_open(paths["scores"]) as score_file, atomic_open(paths["errors"]) as error_file:
        for chunk in range(plan.num_chunks):
            for line in shard_path(config.output_dir, chunk).read_text().splitlines():
                item = json.loads(line)
                if "score" in item:
                    indices.append(item["index"])
                    scores.append(item["score"])
                    score_file.write(json.dumps({"index": item["index"], "id": item["id"],
                                                 "score": item["score"]}) + "\n")
                else:
                    errored.append(item["index"])
                    kind = _reason_kind(item["error"])
                    reasons[kind] = reasons.get(kind, 0) + 1
                    error_file.write(json.dumps(item) + "\n")
    score_arr = np.frombuffer(scores, dtype=np.float64) if scores else np.zeros(0)
    num_levels, edges = _edges(config, score_arr)
    levels = assign_levels(score_arr, edges)
    counts = level_counts(levels, num_levels)
    threshold = filter_threshold(score_arr, config.keep_top, config.min_score)
    index_arr = np.frombuffer(indices, dtype=np.int64) if indices else np.zeros(0, np.int64)
    filtered = _write_datasets(config, plan, index_arr, levels, score_arr, set(errored), paths, threshold)
    levels_file = LevelsFile(
        num_levels=num_levels, edges=edges, model=config.model, pretrained=config.pretrained, counts=counts,
        input_path=str(config.data_path), input_sha256=plan.sha256, records=plan.records,
        scored=len(scores), errors=dict(sorted(reasons.items())), caption=config.caption_field and
        f"field:{config.caption_field}" or config.caption,
        edges_from=str(config.levels_from) if config.levels_from else None, score_stats=score_stats(score_arr))
    levels_file.write(paths["levels"])
    plot_histogram(score_arr, edges, paths["histogram"],
                   f"{Path(config.data_path).name}: {len(scores)} scores, {num_levels} levels ({config.model})")
    return ScoreSummary(records=plan.records, scored=len(scores), errors=levels_file.errors, counts=counts,
                        edges=edges, outputs={k: str(v) for k, v in paths.items()}, filtered=filtered,
                        filter_threshold=threshold)


def _reason_kind(reason: str) -> str:
    """The error's kind, for counting: every reason reads "kind: detail"."""
    return reason.split(":", 1)[0]


class _RecordWriter:
    """Records into a JSON array or JSON Lines file (the input's format), written atomically."""

    def __init__(self, stack: contextlib.ExitStack, path: Path, jsonl: bool):
        self.file, self.jsonl, self.written = stack.enter_context(atomic_open(path)), jsonl, 0
        if not jsonl:
            self.file.write("[\n")

    def write(self, record) -> None:
        text = json.dumps(record, ensure_ascii=False)
        self.file.write(text + "\n" if self.jsonl else ("" if self.written == 0 else ",\n") + text)
        self.written += 1

    def close(self) -> None:
        if not self.jsonl:
            self.file.write("\n]\n")


def _write_datasets(config: ScoreConfig, plan: InputPlan, indices: np.ndarray, levels: np.ndarray,
                    scores: np.ndarray, errored: set[int], paths: dict[str, Path],
                    threshold: float | None) -> int | None:
    """In one pass over the input: the input with `align_level` on every scored record (levels of an earlier
    split are replaced), and with a threshold the scored records at or above it. Returns the filtered count."""
    order = np.argsort(indices, kind="stable")
    scored = iter(zip(indices[order].tolist(), levels[order].tolist(), scores[order].tolist()))
    next_scored = next(scored, (None, None, None))
    jsonl = plan.format == "jsonl"
    with contextlib.ExitStack() as stack:
        levelled = _RecordWriter(stack, paths["dataset"], jsonl)
        filtered = _RecordWriter(stack, paths["filtered"], jsonl) if threshold is not None else None
        for index, (_, record) in enumerate(iter_records(plan.path)):
            if isinstance(record, dict):
                record = {k: v for k, v in record.items() if k not in ("align_level", "similarity")}
            if next_scored[0] == index:
                record["align_level"] = next_scored[1]
                if filtered is not None and next_scored[2] >= threshold:
                    filtered.write(record)
                next_scored = next(scored, (None, None, None))
            elif config.drop_errors and index in errored:
                continue
            levelled.write(record)
        levelled.close()
        if filtered is not None:
            filtered.close()
    return None if filtered is None else filtered.written


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


def merge_shard_outputs(config: ScoreConfig, plan) -> ScoreSummary:
    """levels.json, the histogram (and with keep_top/min_score filtered.parquet: shard, key, score,
    align_level) from the finished shards' outputs. Raises ScoreError naming the shards still missing."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [shard_outputs(config.output_dir, name) for name in plan.names]
    missing = [name for name, f in zip(plan.names, files) if not f["done"].is_file()]
    if missing:
        raise ScoreError(f"{len(missing)} of {plan.num_shards} shards are not scored yet (first: {missing[:5]}); "
                         "run the scoring again with the same arguments to finish them")
    identity = hashlib.sha256()
    samples = 0
    reasons: dict[str, int] = {}
    parts, keys, owners = [], [], []
    for name, f in zip(plan.names, files):
        done = json.loads(f["done"].read_text())
        identity.update(f"{name} {done['sha256']}\n".encode())
        samples += done["samples"]
        table = pq.read_table(f["scores"], columns=["key", "score"])
        parts.append(table.column("score").to_numpy().astype(np.float64))
        keys.append(table.column("key"))
        owners.append(len(table))
        with open(f["errors"]) as lines:
            for line in lines:
                kind = _reason_kind(json.loads(line)["error"])
                reasons[kind] = reasons.get(kind, 0) + 1
    score_arr = np.concatenate(parts) if parts else np.zeros(0)
    num_levels, edges = _edges(config, score_arr)
    levels = assign_levels(score_arr, edges)
    counts = level_counts(levels, num_levels)
    out = Path(config.output_dir)
    paths = {"scores": out / "scores", "errors": out / "errors", "levels": out / "levels.json",
             "histogram": out / "scores_histogram.png", "summary": out / "summary.json"}
    threshold = filter_threshold(score_arr, config.keep_top, config.min_score)
    filtered = None
    if threshold is not None:
        keep = score_arr >= threshold
        shard_column = np.repeat(np.array(plan.names, dtype=object), owners)
        table = pa.table({"shard": pa.array(shard_column[keep].tolist(), pa.string()),
                          "key": pa.concat_arrays([c.combine_chunks() for c in keys]).filter(pa.array(keep))
                          if keys else pa.array([], pa.string()),
                          "score": pa.array(score_arr[keep], pa.float32()),
                          "align_level": pa.array(levels[keep], pa.int32())})
        paths["filtered"] = out / "filtered.parquet"
        with atomic_path(paths["filtered"]) as tmp:
            pq.write_table(table, tmp)
        filtered = int(keep.sum())
    levels_file = LevelsFile(
        num_levels=num_levels, edges=edges, model=config.model, pretrained=config.pretrained, counts=counts,
        input_path=str(config.data_path), input_sha256=identity.hexdigest(), records=samples,
        scored=int(score_arr.size), errors=dict(sorted(reasons.items())),
        caption=f"field:{config.caption_field}" if config.caption_field else "txt",
        edges_from=str(config.levels_from) if config.levels_from else None, score_stats=score_stats(score_arr))
    levels_file.write(paths["levels"])
    plot_histogram(score_arr, edges, paths["histogram"],
                   f"{plan.num_shards} shards: {score_arr.size} scores, {num_levels} levels ({config.model})")
    return ScoreSummary(records=samples, scored=int(score_arr.size), errors=levels_file.errors, counts=counts,
                        edges=edges, outputs={k: str(v) for k, v in paths.items()}, filtered=filtered,
                        filter_threshold=threshold)


def _edges(config: ScoreConfig, scores: np.ndarray) -> tuple[int, list[float]]:
    """The number of levels and their edges: those of --levels-from, or equal-count quantiles of `scores`."""
    if config.levels_from:
        source = LevelsFile.read(config.levels_from)
        if config.num_levels not in (None, source.num_levels):
            raise ScoreError(f"--levels {config.num_levels} contradicts {config.levels_from} "
                             f"({source.num_levels} levels); drop one of them")
        return source.num_levels, list(source.edges)
    return config.num_levels, quantile_edges(scores, config.num_levels)
