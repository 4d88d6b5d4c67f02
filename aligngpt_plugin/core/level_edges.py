"""Alignment levels from CLIP scores: equal-count quantile edges, applying edges, `levels.json`.

A level is the number of edges at or below a score: with edges e_1 < ... < e_{N-1}, level 0 holds scores
below e_1 and level N-1 scores at or above e_{N-1}; 0 is the lowest similarity (docs/method.md#alignment-levels).
Edges are scores taken from the data at the quantile positions, so equal scores always share a level
(deterministic on ties, whatever the input order) and applying the edges back to the same scores gives
the same levels. With distinct scores the levels hold equal counts (they differ by at most one).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from aligngpt_plugin.core.fileio import write_json_atomic

LEVELS_FORMAT = "aligngpt-levels/1"


class LevelSplitError(ValueError):
    """The scores cannot be split into the levels asked for, or a levels file is invalid."""


def quantile_edges(scores: np.ndarray, num_levels: int) -> list[float]:
    """The N-1 edges that split `scores` into `num_levels` equal-count levels.

    Args:
        scores: [m] finite CLIP scores.
        num_levels: N (>= 2).

    Returns:
        The N-1 edges, strictly increasing: edge k is the score at sorted position ceil(k * m / N).

    Raises:
        LevelSplitError: when a level would be empty (fewer distinct scores than levels, or so many equal
            scores that two edges coincide), or the scores are not a flat array of finite numbers.
    """
    if num_levels < 2:
        raise LevelSplitError(f"num_levels={num_levels}: at least 2 levels are needed")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or not np.all(np.isfinite(scores)):
        raise LevelSplitError("scores must be a flat array of finite numbers")
    distinct = np.unique(scores).size
    if distinct < num_levels:
        raise LevelSplitError(f"{num_levels} levels asked for, but only {distinct} distinct scores among "
                              f"{scores.size} scored records; score more data or ask for at most {distinct} levels")
    ordered = np.sort(scores, kind="stable")
    m = ordered.size
    # edge k is the first score of level k when the sorted scores are cut into N equal runs
    positions = [(k * m + num_levels - 1) // num_levels for k in range(1, num_levels)]
    edges = [float(ordered[p]) for p in positions]
    bounds = [float(ordered[0])] + edges
    for k in range(num_levels - 1):
        if not bounds[k] < bounds[k + 1]:
            raise LevelSplitError(
                f"level {k} of {num_levels} would be empty: too many records share the score {bounds[k + 1]!r} "
                f"({int(np.sum(scores == bounds[k + 1]))} of {m}); ask for fewer levels")
    return edges


def assign_levels(scores: np.ndarray, edges: list[float]) -> np.ndarray:
    """The level of each score: how many edges are at or below it.

    Args:
        scores: [m] scores.
        edges: the N-1 strictly increasing edges (`quantile_edges`, or a levels.json's).

    Returns:
        [m] int64 levels in 0..N-1, 0 the lowest similarity.

    Raises:
        LevelSplitError: the edges do not increase strictly.
    """
    edges_arr = np.asarray(edges, dtype=np.float64)
    if edges_arr.size and not np.all(np.diff(edges_arr) > 0):
        raise LevelSplitError(f"edges must increase strictly, got {list(edges)}")
    return np.searchsorted(edges_arr, np.asarray(scores, dtype=np.float64), side="right").astype(np.int64)


@dataclass
class LevelsFile:
    """What `levels.json` holds: enough to audit a split and to apply it to new data."""

    num_levels: int
    edges: list[float]
    model: str
    pretrained: str | None
    counts: list[int]
    input_path: str
    input_sha256: str
    records: int
    scored: int
    errors: dict[str, int] = field(default_factory=dict)
    caption: str = "gpt-first"
    edges_from: str | None = None  # the levels.json the edges were taken from, when --levels-from
    score_stats: dict[str, float] = field(default_factory=dict)
    format: str = LEVELS_FORMAT

    def write(self, path: str | Path) -> None:
        """Writes the file atomically (a reader sees the old file or the whole new one).

        Args:
            path: where to write, usually `<output>/levels.json`.
        """
        write_json_atomic(path, asdict(self), indent=1)

    @classmethod
    def read(cls, path: str | Path) -> LevelsFile:
        """Reads and validates a levels.json written by aligngpt-score.

        Args:
            path: the file.

        Returns:
            The LevelsFile.

        Raises:
            LevelSplitError: unreadable, another format, unknown keys, or edges that do not fit N.
        """
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LevelSplitError(f"cannot read levels file {path}: {e}") from e
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown or values.get("format") != LEVELS_FORMAT:
            raise LevelSplitError(f"{path} is not a levels.json written by aligngpt-score "
                                  f"(format {values.get('format')!r}, unknown keys {unknown})")
        levels = cls(**values)
        if len(levels.edges) != levels.num_levels - 1:
            raise LevelSplitError(f"{path}: {len(levels.edges)} edges for {levels.num_levels} levels; expected "
                                  f"{levels.num_levels - 1}")
        assign_levels(np.zeros(0), levels.edges)  # validates the order
        return levels


def level_counts(levels: np.ndarray, num_levels: int) -> list[int]:
    """Records per level.

    Args:
        levels: [m] integer levels in 0..num_levels-1.
        num_levels: N.

    Returns:
        N counts, level 0 first.
    """
    return [int(c) for c in np.bincount(levels, minlength=num_levels)[:num_levels]]


def score_stats(scores: np.ndarray) -> dict[str, float]:
    """Summary of the scores for levels.json.

    Args:
        scores: [m] scores.

    Returns:
        `{"min", "max", "mean", "median"}`; `{}` for no scores.
    """
    if scores.size == 0:
        return {}
    return {"min": float(scores.min()), "max": float(scores.max()), "mean": round(float(scores.mean()), 6),
            "median": float(np.median(scores))}
