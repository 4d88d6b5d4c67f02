"""The patch-alignment loss on constructed tensors: values, set handling, and where its gradient goes."""

from __future__ import annotations

import math

import pytest
import torch

from aligngpt_plugin.core.patch_loss import patch_alignment_loss, phrase_targets

E = torch.eye(4)


def one(patches, targets, assignment, multi="mean"):
    return patch_alignment_loss(torch.stack(patches)[None], torch.stack(targets)[None],
                                torch.tensor(assignment)[None], multi)


@pytest.mark.parametrize("patch, target, expected", [
    (E[0], E[0], 0.0),             # same direction
    (3 * E[0], E[0], 0.0),         # scale does not matter (cosine)
    (E[0], E[1], 1.0),             # orthogonal
    (E[0], -2 * E[0], 2.0),        # opposite
    (E[0] + E[1], E[0], 1 - 1 / math.sqrt(2)),
])
def test_loss_is_one_minus_cosine(patch, target, expected):
    out = one([patch], [target], [[True]])
    assert out.loss.item() == pytest.approx(expected, abs=1e-6) and out.labelled == 1


@pytest.mark.parametrize("multi, expected", [("mean", 0.5), ("best", 0.0)])
def test_several_phrases_per_patch(multi, expected):
    # the patch matches phrase 0 exactly (cos 1) and is orthogonal to phrase 1 (cos 0)
    out = one([E[0]], [E[0], E[1]], [[True, True]], multi)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)


def test_mean_over_labelled_patches_only():
    # patch 0 -> loss 0, patch 1 -> loss 1, patch 2 unlabelled (would be 2)
    out = one([E[0], E[0], -E[1]], [E[0], E[1]], [[True, False], [False, True], [False, False]])
    assert out.loss.item() == pytest.approx(0.5, abs=1e-6) and out.labelled == 2
    assert out.mean_cosine == pytest.approx(0.5, abs=1e-6)


def test_batch_mean_spans_samples():
    patches = torch.stack([torch.stack([E[0], E[0]]), torch.stack([E[1], E[1]])])  # [2, 2, 4]
    targets = torch.stack([E[0][None], E[0][None]])  # [2, 1, 4]
    assignment = torch.tensor([[[True], [False]], [[True], [True]]])
    # sample 0: one patch, loss 0; sample 1: two patches, loss 1 each -> mean over 3 patches = 2/3
    assert patch_alignment_loss(patches, targets, assignment).loss.item() == pytest.approx(2 / 3, abs=1e-6)


def test_nothing_labelled_gives_zero_with_a_graph():
    patches = torch.randn(2, 3, 4, requires_grad=True)
    out = patch_alignment_loss(patches, torch.randn(2, 1, 4), torch.zeros(2, 3, 1, dtype=torch.bool))
    assert out.loss.item() == 0.0 and out.labelled == 0
    out.loss.backward()
    assert torch.equal(patches.grad, torch.zeros_like(patches))


def test_phrase_targets_average_tokens_and_ignore_padding():
    table = torch.nn.Embedding(10, 4)
    with torch.no_grad():
        table.weight.copy_(torch.arange(40.0).view(10, 4))
    ids = torch.tensor([[[2, 4, 0], [7, 0, 0]]])
    mask = torch.tensor([[[True, True, False], [True, False, False]]])
    got = phrase_targets(table, ids, mask)
    assert torch.equal(got[0, 0], (table.weight[2] + table.weight[4]) / 2)
    assert torch.equal(got[0, 1], table.weight[7])
    assert not got.requires_grad  # the word embeddings are the fixed reference


def test_gradient_reaches_the_projector_and_not_the_word_embeddings():
    torch.manual_seed(0)
    vision = torch.nn.Linear(6, 5)  # stands in for the (frozen, no-grad) vision tower's output
    projector = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
    words = torch.nn.Embedding(20, 4)
    with torch.no_grad():
        features = vision(torch.randn(2, 9, 6))
    patches = projector(features)
    targets = phrase_targets(words, torch.tensor([[[3, 4]], [[5, 0]]]), torch.tensor([[[True, True]], [[True, False]]]))
    assignment = torch.zeros(2, 9, 1, dtype=torch.bool)
    assignment[:, :4] = True
    patch_alignment_loss(patches, targets, assignment).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    assert words.weight.grad is None and all(p.grad is None for p in vision.parameters())


def test_shape_mismatch_says_what_it_found():
    with pytest.raises(ValueError, match=r"assignment has shape \(1, 3, 2\), expected .* \(1, 4, 2\)"):
        patch_alignment_loss(torch.randn(1, 4, 3), torch.randn(1, 2, 3), torch.ones(1, 3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="choose one of mean, best"):
        patch_alignment_loss(torch.randn(1, 4, 3), torch.randn(1, 2, 3), torch.ones(1, 4, 2), "max")
