"""`make demo`: AlignGPT beside LLaVA on shapes with captions of known truth, through the real entry points.

The full demo is not run here; `--quick` runs every stage on small data (2 training seeds) and its
assertions check what the demo's result rests on: the CLIP separates true from false captions on
held-out pictures, the levels follow the truth, every seed trains both models, every question is
answered, the level probe captions every picture at every level, the gate is read per question kind,
the report has its figures. Its statistics are checked against hand computations in test_demo_stats.py;
the shared start of both models here.
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


def test_both_models_start_stage_1_from_the_same_weights(tiny, llava_ready, tmp_path):
    """The demo's shared start (`write_start`): with it (stage 1's --pretrain_mm_mlp_adapter) both projectors,
    and AlignGPT's alignment module, are the file's, whatever the models drew when they were built (that
    the same seed alone gives both the same projector is test_same_start.py's)."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from transformers import AutoConfig, CLIPVisionConfig

    from aligngpt_plugin.devkit.demo_experiment import write_start
    from aligngpt_plugin.devkit.tiny_checkpoints import vision_module_args
    from aligngpt_plugin.integrations.llava.model import AlignGPTConfig, AlignGPTLlamaForCausalLM
    from aligngpt_plugin.integrations.llava.training import split_alignment_args

    vision = CLIPVisionConfig.from_pretrained(tiny.clip)
    flags = ("--align_levels", "8", "--align_gate_tokens", str((vision.image_size // vision.patch_size) ** 2))
    base = AutoConfig.from_pretrained(tiny.llm).to_dict()
    base.pop("model_type", None)
    alignment = split_alignment_args(list(flags))[0].to_dict()

    def build(aligngpt: bool, start, seed: int):
        """As LLaVA's train() builds the model after the plugin seeded every RNG with --seed."""
        torch.manual_seed(seed)
        if aligngpt:
            config = AlignGPTConfig(alignment=alignment, **base)
            model = AlignGPTLlamaForCausalLM.from_pretrained(tiny.llm, config=config)
        else:
            model = LlavaLlamaForCausalLM.from_pretrained(tiny.llm)
        model.get_model().initialize_vision_modules(vision_module_args(tiny.clip, start))
        return model

    def projector(model):
        return model.get_model().mm_projector.state_dict()

    start = write_start(tmp_path / "start.bin", 5, vision.hidden_size, base["hidden_size"], flags)
    weights = torch.load(start, weights_only=True)
    # the models are built after different seeds: what they drew themselves cannot be what is compared
    a, llava = build(True, start, 6), build(False, start, 7)
    for key, value in projector(llava).items():
        assert torch.equal(value, weights[f"model.mm_projector.{key}"])
        assert torch.equal(projector(a)[key], value)
    for key, value in a.get_model().alignment.state_dict().items():
        assert torch.equal(value, weights[f"model.alignment.{key}"])


def test_quick_demo_trains_both_models_for_every_seed_and_reports(tmp_path):
    """`--quick --trl`: the demo, and AlignGPT a second time through TRL (`aligngpt-sft`), paired with the first."""
    from aligngpt_plugin.demo import main  # aligngpt-demo, as `make demo` runs it

    out = tmp_path / "demo"
    assert main(["--out", str(out), "--quick", "--no-progress", "--trl"]) == 0
    summary = json.loads((out / "summary.json").read_text())

    # the CLIP tells true captions from unrelated ones on pictures it never saw
    assert summary["clip_auc"]["true_vs_unrelated"] > 0.6
    # levels follow the truth: true captions are more common in the top level than in the bottom one
    levels = summary["levels"]
    assert levels["spearman_level_truth"] > 0.1
    assert levels["share_per_level"][-1]["true"] > levels["share_per_level"][0]["true"]
    levelled = json.loads((out / "levels" / "pretrain_levels.json").read_text())
    assert sorted({r["align_level"] for r in levelled}) == list(range(8)) and all("truth" in r for r in levelled)

    # every seed ran both models, and every held-out question was answered once by each
    seeds = [str(s) for s in summary["settings"]["seeds"]]
    assert len(seeds) >= 2 and set(summary["runs"]) == set(seeds) == set(summary["accuracy"]["per_seed"])
    questions = [json.loads(line) for line in (out / "data" / "questions.jsonl").read_text().splitlines()]
    assert len(questions) == 3 * summary["settings"]["eval_pictures"]
    for seed in seeds:
        assert (out / f"seed{seed}" / "start.bin").is_file()
        for model in ("aligngpt", "llava", "aligngpt-trl"):
            answered = [json.loads(line)["question_id"]
                        for line in (out / f"seed{seed}" / "eval" / f"{model}_answers.jsonl").read_text().splitlines()]
            assert sorted(answered) == sorted(q["question_id"] for q in questions)
            per_kind = summary["accuracy" if model != "aligngpt-trl" else "routes"]["per_seed"][seed][model]
            assert sum(k["n"] for k in per_kind.values()) == len(questions)
            run = summary["runs"][seed][model]
            assert run["finetune_loss"][-1] < run["finetune_loss"][0]
            steps = summary["settings"]["pretrain_pairs"] // summary["settings"]["batch_size"]
            assert len(run["pretrain_loss"]) == steps  # stage 1 logs every step (step 1: the shared start's loss)
        assert set(summary["accuracy"]["paired"]["colour"]["per_seed"]) == set(seeds)
        # the level probe captioned every held-out picture at every level, and with LLaVA's stage 1
        probe = summary["probe"]["per_seed"][seed]
        assert set(probe) == {f"level {k}" for k in range(8)} | {"LLaVA"}
        assert all(c["n"] == 3 * summary["settings"]["eval_pictures"] for c in probe.values())
        # the gate ran on every question, per kind: 7 local-level weights forming a distribution
        for g in summary["gates"]["per_seed"][seed]["per_kind"].values():
            assert g["gated"] == g["samples"] > 0
            assert sum(g["mean_weights"]) == pytest.approx(1, abs=1e-4) and len(g["mean_weights"]) == 7
        assert 0 < summary["gates"]["per_seed"][seed]["test"]["p"] <= 1

    weights = torch.load(out / "seed0" / "aligngpt" / "pretrain" / "mm_projector.bin", map_location="cpu",
                         weights_only=True)
    assert any("alignment.level_embeddings" in k for k in weights)  # stage 1 learnt the levels
    plain = torch.load(out / "seed0" / "llava" / "pretrain" / "mm_projector.bin", map_location="cpu",
                       weights_only=True)
    assert not any("alignment" in k for k in plain)
    config = json.loads((out / "seed0" / "aligngpt" / "aligngpt-shapes-finetune" / "config.json").read_text())
    assert config["model_type"] == "aligngpt_llava" and config["alignment"]["num_levels"] == 8

    # the TRL route: its stage-1 model is build-hf's from the demo's LLM and CLIP with the seed's shared start in
    # place (the same projector, levels and gate as the two LLaVA-code runs), and it is paired with AlignGPT
    from safetensors.torch import load_file

    from aligngpt_plugin.conversion.hf import TO_HF, rename

    for seed in seeds:
        start = torch.load(out / f"seed{seed}" / "start.bin", map_location="cpu", weights_only=True)
        folder = out / f"seed{seed}" / "aligngpt-trl" / "start"
        built = {k: v for f in folder.glob("*.safetensors") for k, v in load_file(f).items()}
        assert start and all(torch.equal(built[rename(k, TO_HF)], v) for k, v in start.items())
        assert set(summary["routes"]["paired"]["colour"]["per_seed"]) == set(seeds)
        assert json.loads((out / f"seed{seed}" / "aligngpt-trl" / "finetune" / "config.json").read_text())[
            "model_type"] == "llava_aligngpt"
    # same steps on the same pictures (stage 2: --align_group_turns against the LLaVA-code route's seeded sampler):
    # the logged losses agree (measured 4e-4 apart at most; planted, each answer's rows shuffled one by one: 0.11-0.14)
    for seed in seeds:
        for stage in ("pretrain_loss", "finetune_loss"):
            ours, theirs = (summary["runs"][seed][m][stage] for m in ("aligngpt-trl", "aligngpt"))
            assert len(ours) == len(theirs) and ours == pytest.approx(theirs, abs=2e-3), (seed, stage)

    report = (out / "report.md").read_text()
    assert "## 8. The same AlignGPT through TRL" in report and "| colour | AlignGPT (TRL) |" in report
    for figure in ("scores_by_truth.png", "loss_curves.png", "accuracy.png", "level_probe.png", "gate_heatmap.png"):
        assert f"]({figure})" in report and (out / figure).stat().st_size > 1000
    assert "aligngpt_plugin.demo" in report and "| colour | AlignGPT |" in report and "exact McNemar" in report
    assert "| level 7 vs level 0 |" in report
    assert {"total", "CLIP", "seed 0 aligngpt: stage 1", "seed 1 llava: eval"} <= set(summary["seconds"])

    (out / "report.md").unlink()
    assert main(["--out", str(out), "--report-only"]) == 0  # the figures' command
    assert (out / "report.md").read_text() == report
