"""Patch-level alignment and compression metrics (docs/method.md#patch-aligned-pre-training), in plain torch.

- `nearest_words`: the top-k entries of a word-embedding table by cosine to each patch embedding;
  `label_precision` scores them against the tokens of each patch's labelled phrases.
- `effective_rank` (Roy & Vetterli 2007): exp of the Shannon entropy of the normalised singular values
  p_i = s_i / sum(s); between 1 and min(n, d), equal to r for r equal singular values.
- `von_neumann_entropy`: -sum(l log l) over the eigenvalues l of the trace-normalised Gram
  (covariance, when centred) matrix, i.e. l_i = s_i^2 / sum(s^2); between 0 and log(min(n, d)) nats.
- `matching_pursuit`: greedy sparse decomposition of each patch over the unit-normalised word
  embeddings (k atoms), with the relative residual norm after each atom; `orthogonal=True` re-fits all
  chosen coefficients by least squares at each step (OMP).

Both spectral metrics centre the tokens by default (the mean token is one shared direction, which would
otherwise dominate the spectrum of the projector's output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def singular_values(tokens: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Singular values of a set of tokens.

    Args:
        tokens: [n, d], n >= 2.
        center: remove the mean token first.

    Returns:
        [min(n, d)] float64, descending.

    Raises:
        ValueError: tokens not of shape [n >= 2, d].
    """
    if tokens.dim() != 2 or tokens.shape[0] < 2:
        raise ValueError(f"tokens must be [n >= 2, d], got {tuple(tokens.shape)}")
    x = tokens.detach().to(torch.float64)
    if center:
        x = x - x.mean(0, keepdim=True)
    return torch.linalg.svdvals(x)


def _entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def effective_rank(tokens: torch.Tensor, center: bool = True) -> float:
    """Effective rank (Roy and Vetterli 2007): exp(entropy of s / sum(s)) over the singular values s.

    Args:
        tokens: [n, d], n >= 2.
        center: remove the mean token first.

    Returns:
        A value in [1, min(n, d)]; 1.0 for a rank-0 input.
    """
    s = singular_values(tokens, center)
    if float(s.sum()) == 0.0:
        return 1.0
    return math.exp(_entropy(s / s.sum()))


def von_neumann_entropy(tokens: torch.Tensor, center: bool = True) -> float:
    """Von Neumann entropy of the trace-normalised Gram matrix: -sum(l log l), l = s^2 / sum(s^2).

    Args:
        tokens: [n, d], n >= 2.
        center: remove the mean token first.

    Returns:
        Nats, in [0, log(min(n, d))]; 0.0 for a rank-0 input.
    """
    s2 = singular_values(tokens, center) ** 2
    if float(s2.sum()) == 0.0:
        return 0.0
    return _entropy(s2 / s2.sum())


def spectrum(tokens: torch.Tensor, center: bool = True) -> dict:
    """Effective rank, von Neumann entropy (also over its maximum, log(min(n, d))) and the normalised
    singular values, for the report.

    Args:
        tokens: [n, d], n >= 2.
        center: remove the mean token first.

    Returns:
        `{"effective_rank", "von_neumann_entropy", "von_neumann_entropy_normalised", "dim", "tokens",
        "singular_values"}` (the singular values as a list, summing to 1).
    """
    s = singular_values(tokens, center)
    limit = min(tokens.shape)
    vn = von_neumann_entropy(tokens, center)
    return {"effective_rank": effective_rank(tokens, center), "von_neumann_entropy": vn,
            "von_neumann_entropy_normalised": vn / math.log(limit) if limit > 1 else 0.0,
            "dim": int(tokens.shape[1]), "tokens": int(tokens.shape[0]),
            "singular_values": (s / s.sum().clamp(min=1e-300)).tolist()}


def nearest_words(patches: torch.Tensor, table: torch.Tensor, k: int, chunk: int = 1024):
    """The rows of a table nearest each patch by cosine.

    Args:
        patches: [n, h] patch embeddings.
        table: [v, h] word embeddings.
        k: how many neighbours (at most v are returned).
        chunk: patches compared at once (bounds the [chunk, v] similarity matrix).

    Returns:
        (cosines [n, k], indices [n, k] into `table`), nearest first.
    """
    unit = F.normalize(table.detach().float(), dim=-1)
    scores, index = [], []
    for part in F.normalize(patches.detach().float(), dim=-1).split(chunk):
        top = (part @ unit.T).topk(min(k, unit.shape[0]), dim=-1)
        scores.append(top.values)
        index.append(top.indices)
    return torch.cat(scores), torch.cat(index)


def label_precision(top: torch.Tensor, labels: list[set[int]]) -> dict:
    """Scores of top-k word indices [n, k] against each patch's label tokens (an empty set: unlabelled).

    precision_at_k: mean over labelled patches of the share of the k words that are label tokens;
    hit_at_k: share of labelled patches with at least one label token among the k; `labelled`: how many.

    Args:
        top: [n, k] word indices per patch (`nearest_words`).
        labels: n sets of label token ids, one per patch.

    Returns:
        `{"labelled", "precision_at_k", "hit_at_k"}`; the last two None when no patch is labelled.

    Raises:
        ValueError: n differs between `top` and `labels`.
    """
    if top.shape[0] != len(labels):
        raise ValueError(f"{top.shape[0]} patches of words, {len(labels)} label sets")
    rows = [(row, lab) for row, lab in zip(top.tolist(), labels) if lab]
    if not rows:
        return {"labelled": 0, "precision_at_k": None, "hit_at_k": None}
    hits = [sum(w in lab for w in row) for row, lab in rows]
    k = top.shape[1]
    return {"labelled": len(rows), "precision_at_k": sum(hits) / (k * len(rows)),
            "hit_at_k": sum(h > 0 for h in hits) / len(rows)}


@dataclass
class PursuitResult:
    """A matching-pursuit decomposition.

    Attributes:
        atoms: [n, k] long, the dictionary rows chosen, in order.
        coefficients: [n, k] float32.
        residuals: [n, k + 1] residual norms relative to each input's norm (column 0 is 1).
    """

    atoms: torch.Tensor
    coefficients: torch.Tensor
    residuals: torch.Tensor


def matching_pursuit(x: torch.Tensor, dictionary: torch.Tensor, k: int, orthogonal: bool = False,
                     chunk: int = 4096) -> PursuitResult:
    """Greedy decomposition of each row of x over the unit-normalised rows of a dictionary.

    Args:
        x: [n, h] vectors to decompose.
        dictionary: [v, h] atoms (normalised here).
        k: atoms per vector.
        orthogonal: re-fit all chosen coefficients by least squares at each step (OMP).
        chunk: dictionary rows compared at once (bounds the [n, chunk] correlations).

    Returns:
        PursuitResult with atoms [n, k], coefficients [n, k], residuals [n, k + 1].
    """
    atoms_d = F.normalize(dictionary.detach().float(), dim=-1)
    x = x.detach().float()
    norms = x.norm(dim=-1).clamp(min=1e-12)
    residual = x.clone()
    atoms = torch.zeros(x.shape[0], k, dtype=torch.long, device=x.device)
    coefs = torch.zeros(x.shape[0], k, device=x.device)
    rel = torch.ones(x.shape[0], k + 1, device=x.device)
    rows = torch.arange(x.shape[0], device=x.device)
    for step in range(k):
        best_val = torch.full((x.shape[0],), -1.0, device=x.device)
        best_idx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        best_coef = torch.zeros(x.shape[0], device=x.device)
        for start in range(0, atoms_d.shape[0], chunk):  # the [n, v] correlations, a slice at a time
            c = residual @ atoms_d[start:start + chunk].T
            val, idx = c.abs().max(dim=-1)
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx + start, best_idx)
            best_coef = torch.where(better, c[rows, idx], best_coef)
        atoms[:, step] = best_idx
        if orthogonal:
            basis = atoms_d[atoms[:, :step + 1]]  # [n, t, h]
            fit = torch.linalg.lstsq(basis.transpose(1, 2), x.unsqueeze(-1)).solution.squeeze(-1)  # [n, t]
            coefs[:, :step + 1] = fit
            residual = x - (fit.unsqueeze(-1) * basis).sum(1)
        else:
            coefs[:, step] = best_coef
            residual = residual - best_coef.unsqueeze(-1) * atoms_d[best_idx]
        rel[:, step + 1] = residual.norm(dim=-1) / norms
    return PursuitResult(atoms, coefs, rel)
