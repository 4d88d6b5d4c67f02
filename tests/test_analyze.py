"""Alignment metrics on inputs with a known answer, and aligngpt-analyze end to end on a constructed projector."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aligngpt_plugin.core.metrics import (
    effective_rank,
    label_precision,
    matching_pursuit,
    nearest_words,
    spectrum,
    von_neumann_entropy,
)


def orthonormal(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, rows, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.T  # [rows, dim], orthonormal rows


@pytest.mark.parametrize("rank", [1, 3, 7])
def test_effective_rank_of_equal_singular_values_is_the_rank(rank):
    x = orthonormal(rank, 50, 1).T @ orthonormal(rank, 16, 2) * 5.0  # [50, 16], rank r, all s equal
    assert effective_rank(x, center=False) == pytest.approx(rank, rel=1e-9)
    assert von_neumann_entropy(x, center=False) == pytest.approx(math.log(rank), abs=1e-9)


def test_effective_rank_of_a_generic_rank_r_matrix_is_at_most_r():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 4, generator=g) @ torch.randn(4, 32, generator=g)
    assert 1.5 < effective_rank(x) <= 4 + 1e-9


def test_identity_has_maximal_entropy_and_full_effective_rank():
    assert von_neumann_entropy(torch.eye(8), center=False) == pytest.approx(math.log(8))
    assert effective_rank(torch.eye(8), center=False) == pytest.approx(8)
    s = spectrum(torch.eye(8), center=False)
    assert s["von_neumann_entropy_normalised"] == pytest.approx(1.0)


def test_centring_removes_the_shared_mean_token():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 2, generator=g) @ torch.randn(2, 16, generator=g) + 100 * torch.ones(16)
    assert effective_rank(x, center=False) < 1.2  # the mean direction dominates
    assert effective_rank(x) > 1.5
    assert effective_rank(torch.ones(10, 4)) == 1.0 and von_neumann_entropy(torch.ones(10, 4)) == 0.0


def test_nearest_words_by_cosine():
    table = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    scores, index = nearest_words(torch.tensor([[5.0, 0.1, 0], [0, 0, -1]]), table, k=2)
    assert index[0].tolist() == [0, 3]
    assert index[1, 0] != 2 and scores[1, 0] == pytest.approx(0.0)  # the opposite word comes last
    assert scores[0, 0] == pytest.approx(5 / math.sqrt(25.01), abs=1e-6)


def test_label_precision():
    top = torch.tensor([[1, 2, 3], [4, 5, 6], [1, 9, 9], [7, 7, 7]])
    out = label_precision(top, [{1, 2}, {9}, {1}, set()])
    assert out == {"labelled": 3, "precision_at_k": pytest.approx((2 + 0 + 1) / 9), "hit_at_k": pytest.approx(2 / 3)}
    assert label_precision(top[:1], [set()])["precision_at_k"] is None


def test_matching_pursuit_recovers_atoms_of_an_orthonormal_dictionary():
    dictionary = orthonormal(16, 16, 3).float() * 7.0  # scale is normalised away
    unit = dictionary / 7.0
    x = torch.stack([3 * unit[2] - 1.5 * unit[7], 0.5 * unit[11]])
    out = matching_pursuit(x, dictionary, k=2)
    assert out.atoms[0].tolist() == [2, 7] and out.coefficients[0].tolist() == pytest.approx([3.0, -1.5], abs=1e-5)
    assert out.atoms[1, 0] == 11 and out.residuals[1, 1] == pytest.approx(0.0, abs=1e-5)
    assert out.residuals[0].tolist() == pytest.approx([1.0, 1.5 / math.sqrt(11.25), 0.0], abs=1e-5)


def test_orthogonal_pursuit_recovers_a_sparse_combination_of_random_words():
    g = torch.Generator().manual_seed(0)
    words = torch.randn(300, 64, generator=g)
    unit = words / words.norm(dim=-1, keepdim=True)
    x = (3.0 * unit[10] - 2.0 * unit[200] + 1.2 * unit[55])[None]
    out = matching_pursuit(x, words, k=3, orthogonal=True)
    assert sorted(out.atoms[0].tolist()) == [10, 55, 200]
    assert out.residuals[0, -1] < 1e-5
    plain = matching_pursuit(x, words, k=3)  # greedy without re-fitting: residual falls, atom 1 is the largest
    assert plain.atoms[0, 0] == 10 and plain.residuals[0].diff().max() < 0


def stage1_folder(tiny, folder, colour_word):
    """A pre-training folder (config + mm_projector.bin) whose projector sends every patch to the input
    embedding of `colour_word`: a checkpoint whose alignment is known."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from transformers import AutoTokenizer

    from aligngpt_plugin.devkit.tiny_checkpoints import vision_module_args

    model = LlavaLlamaForCausalLM.from_pretrained(tiny.llm)
    model.get_model().initialize_vision_modules(vision_module_args(tiny.clip))
    tok = AutoTokenizer.from_pretrained(tiny.llm, use_fast=False)
    (word,) = tok(colour_word, add_special_tokens=False).input_ids
    last = model.get_model().mm_projector[2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(model.get_input_embeddings().weight[word])
    folder.mkdir(parents=True)
    model.config.save_pretrained(folder)
    torch.save({k: v for k, v in model.state_dict().items() if "mm_projector" in k}, folder / "mm_projector.bin")
    return word


@pytest.fixture(scope="module")
def known_report(tiny, tmp_path_factory, llava_ready):
    from aligngpt_plugin.analyze import main

    root = tmp_path_factory.mktemp("analyze")
    records = json.loads(tiny.heldout_patches.read_text())
    first = records[0]
    colour = first["patch_labels"][0]["phrase"]
    other = next(r for r in records if r["patch_labels"][0]["phrase"] != colour)
    data = root / "two.json"
    data.write_text(json.dumps([first, other]))
    stage1_folder(tiny, root / "stage1", colour)
    assert main(["--model", str(root / "stage1"), "--model-base", str(tiny.llm), "--data", str(data),
                 "--image-folder", str(tiny.images), "--out", str(root / "out"), "--top-k", "1",
                 "--mp-atoms", "3", "--mp-max-patches", "40", "--plots", "1"]) == 0
    report = json.loads((root / "out" / "report.json").read_text())
    return report, root, colour


def test_analysis_of_a_projector_that_maps_every_patch_to_one_word(known_report):
    report, root, colour = known_report
    a = report["aggregate"]
    first, second = report["images"]
    assert a["images"] == 2 and first["labelled_patches"] > 0 and second["labelled_patches"] > 0
    assert {w for row in first["top_words"] for w in row} == {"\u2581" + colour}
    assert first["precision_at_k"] == 1.0 and first["hit_at_k"] == 1.0  # colour is one of its two phrases
    assert second["precision_at_k"] == 0.0  # another colour: its labels never match
    assert a["precision_at_k"] == pytest.approx(first["labelled_patches"] / a["labelled_patches"])
    # every token after the projector is the same vector: no spread left, one atom explains it
    assert a["after_projector"]["effective_rank"] == pytest.approx(1.0)
    assert a["after_projector"]["von_neumann_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert a["before_projector"]["effective_rank"] > 2
    assert a["pursuit_residual"][0] == 1.0 and a["pursuit_residual"][1] == pytest.approx(0.0, abs=1e-4)
    assert first["pursuit_examples"][0]["atoms"][0] == "\u2581" + colour
    assert 0 < a["chance_precision_at_k"] < 1e-3


def test_analysis_writes_report_and_plots(known_report):
    report, root, _ = known_report
    out = root / "out"
    assert json.loads((out / "report.json").read_text())["aggregate"] == report["aggregate"]
    assert (out / "spectrum.png").stat().st_size > 0 and (out / "pursuit.png").stat().st_size > 0
    assert len(list(out.glob("patches_*.png"))) == 1
    assert len(report["images"][0]["top_words"]) == 576


def test_stage1_folder_needs_the_base_llm(known_report, tmp_path, capsys):
    from aligngpt_plugin.analyze import main

    _, root, _ = known_report
    assert main(["--model", str(root / "stage1"), "--data", str(root / "two.json"), "--out", str(tmp_path)]) == 2
    assert "pass --model-base" in capsys.readouterr().err


def test_analysis_inputs_are_checked(tiny, tmp_path, capsys):
    from aligngpt_plugin.analyze import main

    with pytest.raises(SystemExit, match="exactly one of"):
        main(["--model", "m", "--out", str(tmp_path)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "b1", "image": "x.png", "patch_labels": [{"phrase": "a", "box": [3, 3, 1, 1]}]}]))
    assert main(["--model", "m", "--data", str(bad), "--out", str(tmp_path)]) == 2
    assert re.search(r"record 0 \(id 'b1'\).*reversed", capsys.readouterr().err)


def test_the_installed_command_exits_0_after_a_run(known_report, tiny, tmp_path):
    _, root, _ = known_report
    command = Path(sys.executable).with_name("aligngpt-analyze")
    proc = subprocess.run([str(command), "--model", str(root / "stage1"), "--model-base", str(tiny.llm),
                           "--data", str(root / "two.json"), "--image-folder", str(tiny.images), "--out",
                           str(tmp_path / "out"), "--top-k", "1", "--mp-atoms", "2", "--mp-max-patches", "8",
                           "--plots", "0"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "report.json").is_file() and "[aligngpt-analyze]" in proc.stdout
