"""`make demo`: AlignGPT beside LLaVA on shapes with captions of known truth, through the real entry points.

The full demo is not run here; `--quick` runs every stage on small data and its assertions check what
the demo's result rests on: the CLIP separates true from false captions on held-out pictures, the
levels follow the truth, both models train and answer, the gate is read per question kind, the report
has its figures.
"""

from __future__ import annotations

import json
import random

import pytest
import torch


def test_tower_conversion_gives_open_clips_image_features(tmp_path):
    """The transformers folder LLaVA loads computes what open_clip computes, each with its own forward and
    its own preprocessing of the same picture."""
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModel, CLIPVisionModelWithProjection

    from aligngpt_plugin.devkit import demo_data
    from aligngpt_plugin.devkit.shapes_clip import NAME, ClipTraining, create, write_tower

    settings = ClipTraining(width=32, vision_layers=2, image_size=64, patch_size=16)
    config = tmp_path / f"{NAME}.json"
    config.write_text(json.dumps(settings.model_config()))
    torch.manual_seed(3)
    model, preprocess, _ = create(config)
    with torch.no_grad():  # random LayerNorm affines and class token, so no weight goes unchecked
        for p in model.visual.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    tower = write_tower(model, tmp_path / "tower", settings)

    rng = random.Random(0)
    pictures = [demo_data.draw(*demo_data.random_content(rng), rng) for _ in range(3)]
    pictures.append(Image.new("RGB", (80, 80), (10, 200, 30)))
    ours = torch.stack([preprocess(p) for p in pictures])
    theirs = CLIPImageProcessor.from_pretrained(tower)(images=pictures, return_tensors="pt")["pixel_values"]
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().mean() < 0.02  # two bicubic resizers; same crop, mean and std

    hf = CLIPVisionModelWithProjection.from_pretrained(tower).eval()
    with torch.no_grad():
        expected = model.encode_image(ours)
        got = hf(pixel_values=ours).image_embeds
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # LLaVA's tower class loads the same folder and gives one token per patch
    hidden = CLIPVisionModel.from_pretrained(tower)(pixel_values=ours, output_hidden_states=True).hidden_states
    assert hidden[-2].shape == (4, 1 + (64 // 16) ** 2, 32)


def test_rank_statistics_against_hand_computed_values():
    from aligngpt_plugin.devkit.demo_experiment import ranks, spearman
    from aligngpt_plugin.devkit.shapes_clip import auc

    assert ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1]
    # Spearman with no ties: 1 - 6 sum d^2 / (n (n^2 - 1)); d = (0, 2, -1, -1): 1 - 36/60
    assert spearman([1, 2, 3, 4], [1, 4, 2, 3]) == pytest.approx(0.4)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1)
    # of the 2 x 3 pairs, (0.9 > all), (0.4 > 0.1, 0.4 = 0.4 half): 3 + 1.5 = 4.5 of 6
    assert auc([0.9, 0.4], [0.1, 0.4, 0.95]) == pytest.approx(3.5 / 6)


def test_demo_data_keeps_the_truth_of_each_caption(tmp_path):
    from aligngpt_plugin.devkit import demo_data

    data = demo_data.write_demo_data(tmp_path, n_pretrain=40, n_finetune=4, n_eval=2, seed=1)
    records = json.loads(data.pretrain.read_text())
    assert [sum(r["truth"] == k for r in records) for k in demo_data.TRUTH_KINDS] == [20, 10, 10]
    for r in records:
        caption = r["conversations"][1]["value"]
        if r["truth"] == "unrelated":
            assert caption in demo_data.UNRELATED and r["wrong"] is None
        else:
            assert caption not in demo_data.UNRELATED
            assert (r["wrong"] is None) == (r["truth"] == "true")
    questions = [json.loads(line) for line in data.questions.read_text().splitlines()]
    assert sorted(q["category"] for q in questions) == sorted(list(demo_data.QUESTIONS) * 2)
    assert (data.images / questions[0]["image"]).is_file()


def test_quick_demo_trains_both_models_and_reports(tmp_path):
    from aligngpt_plugin.demo import main  # aligngpt-demo, as `make demo` runs it

    out = tmp_path / "demo"
    assert main(["--out", str(out), "--quick", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())

    # the CLIP tells true captions from unrelated ones on pictures it never saw
    assert summary["clip_auc"]["true_vs_unrelated"] > 0.6
    # levels follow the truth: true captions are more common in the top level than in the bottom one
    levels = summary["levels"]
    assert levels["spearman_level_truth"] > 0.1
    assert levels["share_per_level"][-1]["true"] > levels["share_per_level"][0]["true"]
    levelled = json.loads((out / "levels" / "pretrain_levels.json").read_text())
    assert sorted({r["align_level"] for r in levelled}) == list(range(8)) and all("truth" in r for r in levelled)

    models = summary["models"]
    assert set(models) == {"aligngpt", "llava"}
    weights = torch.load(out / "aligngpt" / "pretrain" / "mm_projector.bin", map_location="cpu", weights_only=True)
    assert any("alignment.level_embeddings" in k for k in weights)  # stage 1 learnt the levels
    plain = torch.load(out / "llava" / "pretrain" / "mm_projector.bin", map_location="cpu", weights_only=True)
    assert not any("alignment" in k for k in plain)
    config = json.loads((out / "aligngpt" / "aligngpt-shapes-finetune" / "config.json").read_text())
    assert config["model_type"] == "aligngpt_llava" and config["alignment"]["num_levels"] == 8
    for r in models.values():
        assert r["finetune_loss"][-1] < r["finetune_loss"][0]
        assert set(r["accuracy"]) == {"colour", "shape", "place"}
    # the gate ran on every question, per kind: 7 local-level weights forming a distribution
    for g in models["aligngpt"]["gates"]["per_kind"].values():
        assert g["gated"] == g["samples"] > 0
        assert sum(g["mean_weights"]) == pytest.approx(1, abs=1e-4) and len(g["mean_weights"]) == 7

    report = (out / "report.md").read_text()
    for figure in ("scores_by_truth.png", "loss_curves.png", "accuracy.png", "gate_heatmap.png"):
        assert f"]({figure})" in report and (out / figure).stat().st_size > 1000
    assert "aligngpt_plugin.demo" in report and "| colour |" in report
    assert set(summary["seconds"]) >= {"total"} and len(summary["seconds"]) >= 10

    (out / "report.md").unlink()
    assert main(["--out", str(out), "--report-only"]) == 0  # the figures' command
    assert (out / "report.md").read_text() == report
