"""The plots of `aligngpt-analyze`: patch grids with their nearest words, singular-value spectra, the
matching-pursuit residual."""

from __future__ import annotations

from pathlib import Path

import torch

from aligngpt_plugin.core.fileio import save_figure_atomic


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_patch_grid(path: Path, pixels: torch.Tensor, processor, grid: int, words: list[str],
                    labelled: list[int], title: str = "") -> None:
    """The processed image, its patch grid, labelled patches outlined in red, each patch's top word.

    Args:
        path: the image file to write.
        pixels: [3, S, S], the processor's normalised pixels.
        processor: the CLIP image processor (its mean and std undo the normalisation).
        grid: patches per side.
        words: grid*grid words, each patch's nearest word, in row-major patch order.
        labelled: indices of the labelled patches.
        title: the figure's title.
    """
    plt = _pyplot()
    mean = torch.tensor(processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_std).view(3, 1, 1)
    picture = (pixels.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    size = picture.shape[0]
    cell = size / grid
    fig = plt.figure(figsize=(10, 10.4), dpi=120)
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.94))
    ax.imshow(picture, extent=(0, size, size, 0), alpha=0.55)  # faded, so the words stay readable
    for i in range(grid + 1):
        ax.axhline(i * cell, color="white", lw=0.3, alpha=0.6)
        ax.axvline(i * cell, color="white", lw=0.3, alpha=0.6)
    for n in labelled:
        r, c = divmod(n, grid)
        ax.add_patch(plt.Rectangle((c * cell, r * cell), cell, cell, fill=False, ec="red", lw=1.0))
    font = max(2.5, 90 / grid)
    for n, word in enumerate(words):
        r, c = divmod(n, grid)
        ax.text((c + 0.5) * cell, (r + 0.5) * cell, word.replace("\u2581", ""), ha="center", va="center",
                fontsize=font, color="black")
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)
    ax.set_axis_off()
    ax.set_title(title)
    save_figure_atomic(fig, path)  # no tight_layout: it measures every one of the grid's words
    plt.close(fig)


def plot_spectra(path: Path, before: list[float], after: list[float]) -> None:
    """The normalised singular values of the image tokens before and after the projector, on a log scale.

    Args:
        path: the image file to write.
        before: singular values / their sum of the vision tower's tokens, descending.
        after: the same of the projected tokens.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.semilogy(range(1, len(before) + 1), before, label="before projector (vision tower)")
    ax.semilogy(range(1, len(after) + 1), after, label="after projector (LLM input)")
    ax.set_xlabel("index")
    ax.set_ylabel("singular value / sum")
    ax.legend()
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)


def plot_pursuit(path: Path, residual: list[float]) -> None:
    """Matching pursuit's residual norm against the number of word embeddings used.

    Args:
        path: the image file to write.
        residual: residual norm / patch norm after 0, 1, ... atoms.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(range(len(residual)), residual, marker="o")
    ax.set_xlabel("atoms (word embeddings)")
    ax.set_ylabel("residual norm / patch norm")
    ax.set_ylim(0, 1.05)
    fig.tight_layout()
    save_figure_atomic(fig, path)
    plt.close(fig)
