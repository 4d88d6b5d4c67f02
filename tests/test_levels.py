"""Equal-count levels from scores, applying edges, levels.json, the histogram."""

from __future__ import annotations

import numpy as np
import pytest

from aligngpt_plugin.core.level_edges import (
    LevelsFile,
    LevelSplitError,
    assign_levels,
    level_counts,
    quantile_edges,
)
from aligngpt_plugin.scoring.merge import plot_histogram


@pytest.mark.parametrize("m,n", [(40, 8), (41, 8), (558, 8), (10, 3), (7, 7), (1000, 2)])
def test_distinct_scores_give_equal_counts_lowest_first(m, n):
    rng = np.random.default_rng(m * n)
    scores = rng.normal(0.25, 0.05, size=m)
    edges = quantile_edges(scores, n)
    levels = assign_levels(scores, edges)
    counts = level_counts(levels, n)
    assert len(edges) == n - 1 and sum(counts) == m
    assert max(counts) - min(counts) <= 1, counts
    order = np.argsort(scores)
    assert np.all(np.diff(levels[order]) >= 0), "a higher score got a lower level"
    assert levels[order[0]] == 0 and levels[order[-1]] == n - 1


def test_ties_share_a_level_whatever_the_order():
    scores = np.repeat(np.arange(10, dtype=np.float64) / 10, [3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    edges = quantile_edges(scores, 4)
    levels = assign_levels(scores, edges)
    for value in np.unique(scores):
        assert np.unique(levels[scores == value]).size == 1
    perm = np.random.default_rng(0).permutation(scores.size)
    assert quantile_edges(scores[perm], 4) == edges
    assert np.array_equal(assign_levels(scores[perm], edges), levels[perm])


def test_edges_are_scores_and_reapplying_them_reproduces_the_levels():
    scores = np.random.default_rng(1).random(100)
    edges = quantile_edges(scores, 8)
    assert set(edges) <= set(scores.tolist())
    # a score equal to an edge belongs to the level above it
    assert list(assign_levels(np.array(edges), edges)) == list(range(1, 8))


@pytest.mark.parametrize("scores,n,message", [
    ([0.1, 0.2, 0.2, 0.3], 8, "only 3 distinct scores"),
    ([0.5] * 10 + [0.1, 0.2, 0.9], 4, "would be empty"),
    ([0.1, 0.2], 1, "at least 2 levels"),
    ([0.1, float("nan"), 0.3], 2, "finite"),
])
def test_impossible_splits_are_clear_errors(scores, n, message):
    with pytest.raises(LevelSplitError, match=message):
        quantile_edges(np.array(scores), n)


def test_levels_file_round_trip_and_validation(tmp_path):
    levels = LevelsFile(num_levels=3, edges=[0.2, 0.3], model="ViT-L-14-336", pretrained="openai", counts=[1, 1, 1],
                        input_path="data.json", input_sha256="ab" * 32, records=4, scored=3,
                        errors={"image file not found": 1})
    levels.write(tmp_path / "levels.json")
    assert LevelsFile.read(tmp_path / "levels.json") == levels
    bad = (tmp_path / "levels.json").read_text().replace('"num_levels": 3', '"num_levels": 4')
    (tmp_path / "bad.json").write_text(bad)
    with pytest.raises(LevelSplitError, match="2 edges for 4 levels"):
        LevelsFile.read(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"edges": [0.1]}')
    with pytest.raises(LevelSplitError, match="not a levels.json"):
        LevelsFile.read(tmp_path / "other.json")


def test_unsorted_edges_are_refused():
    with pytest.raises(LevelSplitError, match="increase strictly"):
        assign_levels(np.array([0.1]), [0.3, 0.2])


def test_histogram_is_a_png_and_repeats_byte_for_byte(tmp_path):
    scores = np.random.default_rng(2).normal(0.3, 0.05, 200)
    edges = quantile_edges(scores, 8)
    plot_histogram(scores, edges, tmp_path / "a.png")
    plot_histogram(scores, edges, tmp_path / "b.png")
    data = (tmp_path / "a.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data == (tmp_path / "b.png").read_bytes()
    assert not list(tmp_path.glob(".*tmp*")), "a temporary file was left behind"
