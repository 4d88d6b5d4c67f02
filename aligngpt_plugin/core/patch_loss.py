"""The patch-alignment loss (docs/method.md#patch-aligned-pre-training), in plain torch. Knows nothing of LLaVA.

Each labelled patch is pulled towards the word embeddings of the phrases it shows:

    loss = mean over labelled patches of (1 - cos(projected patch, phrase target))

where a phrase's target is the mean of the LLM input embeddings of its tokens (no BOS). A patch with
several phrases is handled as a set (`multi`):

- `mean` (default): the mean of the per-phrase losses. Every phrase that covers a patch is part of what
  it shows (the multi-semantic alignment hypothesis: a patch aligns with several words), so the patch is
  pulled towards all of them;
- `best`: 1 - the highest cosine over the set; only the nearest phrase pulls, for labels where
  overlapping regions are alternatives rather than parts of the same thing.

Targets are detached: the word embeddings are the fixed reference the projector learns to hit, so the
gradient of this loss reaches only the patches (the projector's output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Multi = Literal["mean", "best"]
MULTI_MODES: tuple[str, ...] = ("mean", "best")


@dataclass
class PatchLossOutput:
    """`loss` (scalar, 0 with a graph when nothing is labelled), `labelled` patches counted, and the
    mean cosine of each labelled patch to its phrase targets (for logging)."""

    loss: torch.Tensor
    labelled: int
    mean_cosine: float


def phrase_targets(embedding: torch.nn.Module | torch.Tensor, phrase_ids: torch.Tensor,
                   phrase_mask: torch.Tensor) -> torch.Tensor:
    """The target of each phrase: the mean input embedding of its tokens, detached.

    Args:
        embedding: the LLM's input embedding module, or its weight [V, H].
        phrase_ids: [B, P, T] token ids of P phrases per sample (no BOS); padding may be any id.
        phrase_mask: [B, P, T], true where a token is real.

    Returns:
        [B, P, H] float32, without gradient; a phrase without tokens (padding) gets a zero vector (the
        assignment never points at it).
    """
    weight = embedding.weight if isinstance(embedding, torch.nn.Module) else embedding
    with torch.no_grad():
        vectors = F.embedding(phrase_ids.clamp(min=0), weight).float()
        mask = phrase_mask.to(vectors.dtype).unsqueeze(-1)
        return (vectors * mask).sum(-2) / mask.sum(-2).clamp(min=1.0)


def patch_alignment_loss(patches: torch.Tensor, targets: torch.Tensor, assignment: torch.Tensor,
                         multi: Multi = "mean") -> PatchLossOutput:
    """The patch-alignment loss: mean over labelled patches of 1 - cos(patch, its phrases' targets).

    Args:
        patches: [B, N, H] projected image patches (the projector's output).
        targets: [B, P, H] phrase targets (`phrase_targets`).
        assignment: [B, N, P] bool, true where patch n of sample b shows phrase p.
        multi: several phrases on one patch: "mean" of their losses, or "best" (the highest cosine).

    Returns:
        PatchLossOutput: `loss` (scalar; 0 with a graph when nothing is labelled), `labelled` (patches
        with at least one phrase), `mean_cosine` (for logging; nan when nothing is labelled).

    Raises:
        ValueError: an unknown `multi`, or an assignment whose shape does not fit patches and targets.
    """
    if multi not in MULTI_MODES:
        raise ValueError(f"multi={multi!r}; choose one of {', '.join(MULTI_MODES)}")
    b, n, _ = patches.shape
    if assignment.shape != (b, n, targets.shape[1]):
        raise ValueError(f"assignment has shape {tuple(assignment.shape)}, expected (batch, patches, phrases) = "
                         f"{(b, n, targets.shape[1])} for patches {tuple(patches.shape)} and targets "
                         f"{tuple(targets.shape)}")
    assignment = assignment.bool()
    labelled = assignment.any(-1)  # [B, N]
    count = int(labelled.sum())
    if count == 0:
        return PatchLossOutput(patches.sum() * 0.0, 0, float("nan"))  # keeps the graph for DDP
    cos = F.normalize(patches.float(), dim=-1) @ F.normalize(targets.float(), dim=-1).transpose(1, 2)  # [B, N, P]
    weight = assignment.float()
    if multi == "mean":
        per_patch = ((1.0 - cos) * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)
    else:
        per_patch = 1.0 - cos.masked_fill(~assignment, float("-inf")).amax(-1)
    loss = per_patch[labelled].mean()
    with torch.no_grad():
        mean_cos = float(((cos * weight).sum(-1) / weight.sum(-1).clamp(min=1.0))[labelled].mean())
    return PatchLossOutput(loss, count, mean_cos)
