"""`make demo`: the whole pipeline on the built-in tiny default (score, levels, pre-train, fine-tune, eval)."""

from __future__ import annotations

import json

import pytest


def test_demo_runs_the_aligngpt_pipeline_end_to_end(tmp_path):
    from aligngpt_plugin.demo import main  # aligngpt-demo, as `make demo` runs it

    out = tmp_path / "demo"
    assert main(["--out", str(out), "--pretrain-epochs", "1", "--finetune-epochs", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())

    assert summary["level_counts"] == [4] * 8  # 32 fixture captions in 8 equal-count levels
    levelled = json.loads((out / "levels" / "pretrain_levels.json").read_text())
    assert sorted({r["align_level"] for r in levelled}) == list(range(8))
    projector = out / "pretrain" / "mm_projector.bin"
    import torch

    weights = torch.load(projector, map_location="cpu", weights_only=True)
    assert any("alignment.level_embeddings" in k for k in weights)  # stage 1 learnt the levels
    config = json.loads((out / "aligngpt-tiny-finetune" / "config.json").read_text())
    assert config["model_type"] == "aligngpt_llava" and config["alignment"]["num_levels"] == 8
    assert summary["pretrain_loss"] and summary["finetune_loss"]
    assert len(summary["answers"]) == len((out / "fixtures" / "data" / "questions.jsonl").read_text().splitlines())
    # the gate ran on every question: 7 local-level weights forming a distribution
    assert len(summary["gate_mean_weights"]) == 7
    assert sum(summary["gate_mean_weights"]) == pytest.approx(1, abs=1e-4)
    assert (out / "eval" / "gate_heatmap.png").stat().st_size > 0
    assert json.loads((out / "summary.json").read_text())["align_levels"] == 8
