"""Patch-level alignment of a checkpoint's projector (`aligngpt-analyze`'s API); what is measured:
`aligngpt_plugin.analyze`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from aligngpt_plugin.analysis.load import LoadedModel
from aligngpt_plugin.analysis.plots import plot_patch_grid, plot_pursuit, plot_spectra
from aligngpt_plugin.core.fileio import write_json_atomic
from aligngpt_plugin.core.metrics import (
    label_precision,
    matching_pursuit,
    nearest_words,
    spectrum,
)
from aligngpt_plugin.core.patch_geometry import parse_record_labels, patch_targets, preprocess_geometry

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def candidate_words(tokenizer, vocab_size: int, mode: str = "alpha") -> torch.Tensor:
    """Token ids the nearest-word search and matching pursuit may use.

    Args:
        tokenizer: the LLM's tokenizer.
        vocab_size: rows of the embedding table.
        mode: "alpha" (ASCII alphabetic pieces of 2+ letters) or "all".
    Returns:
        [W] long token ids.
    """
    if mode == "all":
        return torch.arange(vocab_size)
    if mode != "alpha":
        raise ValueError(f"vocab={mode!r}; choose alpha or all")
    pieces = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    keep = [i for i, p in enumerate(pieces) if p and len(p.lstrip("\u2581")) >= 2 and p.lstrip("\u2581").isalpha()
            and p.lstrip("\u2581").isascii()]
    return torch.tensor(keep, dtype=torch.long)


@dataclass
class ImageInput:
    """One picture to analyse: its id, file, LLaVA record (None for a bare image folder) and index there."""
    id: str
    path: Path
    record: dict | None
    index: int


def collect_images(data: str | None, image_folder: str | None, images: str | None, limit: int) -> list[ImageInput]:
    """The pictures to analyse, from a LLaVA data file (records with an image) or a folder of images.

    Args:
        data: a LLaVA data JSON (exclusive with `images`).
        image_folder: where `data`'s images are (default: the data file's folder).
        images: a folder of images (exclusive with `data`).
        limit: take at most this many (0: all).
    Returns:
        The ImageInputs, in file order.
    Raises:
        SystemExit: both or neither source given, a data file that is not a list, or no image found.
    """
    if (data is None) == (images is None):
        raise SystemExit("give exactly one of --data FILE (with --image-folder) or --images FOLDER")
    found = []
    if data is not None:
        records = json.loads(Path(data).read_text())
        if not isinstance(records, list):
            raise SystemExit(f"{data}: expected a JSON list of LLaVA records")
        folder = Path(image_folder or Path(data).parent)
        for i, r in enumerate(records):
            if "image" not in r:
                continue
            parse_record_labels(r, i, str(data))  # malformed labels fail here, naming the record
            found.append(ImageInput(str(r.get("id", i)), folder / r["image"], r, i))
    else:
        files = sorted(p for p in Path(images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        found = [ImageInput(p.stem, p, None, i) for i, p in enumerate(files)]
    if not found:
        raise SystemExit(f"no images found in {data or images}")
    return found[:limit] if limit else found


@torch.no_grad()
def encode(loaded: LoadedModel, image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One picture through the vision tower and the projector.

    Args:
        loaded: the loaded checkpoint.
        image: a PIL image.
    Returns:
        (pixels [3, S, S], vision tokens [N, C], projected tokens [N, H]), N = patches, on the CPU in fp32.
    """
    from llava.mm_utils import process_images

    model = loaded.model
    pixels = process_images([image], loaded.image_processor, model.config)
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 4 or pixels.shape[0] != 1:
        raise ValueError("the analysis reads one square image per picture; any-resolution preprocessing "
                         f"(image_aspect_ratio={getattr(model.config, 'image_aspect_ratio', None)!r}) is not supported")
    tower = model.get_vision_tower()
    before = tower(pixels.to(device=tower.device, dtype=tower.dtype))
    after = model.get_model().mm_projector(before.to(next(model.get_model().mm_projector.parameters()).dtype))
    return pixels[0], before[0].float().cpu(), after[0].float().cpu()


def _phrase_tokens(tokenizer, phrase: str) -> set[int]:
    return set(tokenizer(phrase, add_special_tokens=False).input_ids)


def analyze(loaded: LoadedModel, inputs: list[ImageInput], out: Path, top_k: int = 5, mp_atoms: int = 8,
            mp_max_patches: int = 128, vocab: str = "alpha", min_overlap: float = 0.5, plots: int = 4,
            seed: int = 0) -> dict:
    """Run every metric on every image, write report.json and the plots under `out`, return the report.

    Args:
        loaded: the loaded checkpoint.
        inputs: the pictures.
        out: the output folder.
        top_k: nearest words per patch.
        mp_atoms: matching-pursuit atoms per patch.
        mp_max_patches: patches per image for matching pursuit (labelled ones first, the rest drawn at random).
        vocab: candidate words, "alpha" or "all".
        min_overlap: the fraction of a patch a labelled box must cover to label it.
        plots: how many images get a patch-grid plot.
        seed: seeds that draw.
    Returns:
        The report (the dict written to report.json).
    """
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    model, tok = loaded.model, loaded.tokenizer
    table = model.get_input_embeddings().weight.detach().float().cpu()
    words = candidate_words(tok, table.shape[0], vocab)
    word_table = table[words]
    word_of = {int(w): j for j, w in enumerate(words.tolist())}
    pieces = tok.convert_ids_to_tokens(words.tolist())
    grid = model.get_vision_tower().num_patches_per_side
    aspect = getattr(model.config, "image_aspect_ratio", "square")
    generator = torch.Generator().manual_seed(seed)

    per_image, befores, afters = [], [], []
    agg_hits = {"labelled": 0, "precision_sum": 0.0, "hit_sum": 0.0}
    chance = []
    residual_curves, phrase_cover, token_recall = [], [], []
    for k, item in enumerate(inputs):
        with Image.open(item.path) as raw:
            image = raw.convert("RGB")
        pixels, before, after = encode(loaded, image)
        if after.shape[0] != grid * grid:
            raise ValueError(f"{item.path}: {after.shape[0]} image tokens, expected {grid}x{grid}")
        befores.append(before)
        afters.append(after)
        scores, top = nearest_words(after, word_table, top_k)
        # label sets per patch, in candidate-word indices (tokens outside the candidates cannot be hit)
        labels = [set() for _ in range(after.shape[0])]
        patch_phrases: list[list[set[int]]] = [[] for _ in range(after.shape[0])]
        labelled = []
        if item.record is not None:
            parsed = parse_record_labels(item.record, item.index)
            if parsed:
                geometry = preprocess_geometry(image.size, loaded.image_processor, aspect)
                where = f"record {item.index} (id {item.id!r})"
                targets = patch_targets(parsed, image.size, geometry, grid, min_overlap, where)
                sets = [{word_of[t] for t in _phrase_tokens(tok, p) if t in word_of} for p in targets.phrases]
                for n, row in enumerate(targets.assignment):
                    for j in row.nonzero()[0]:
                        labels[n] |= sets[j]
                        patch_phrases[n].append(sets[j])
                labelled = [n for n in range(after.shape[0]) if labels[n]]
        precision = label_precision(top, labels)
        if precision["labelled"]:
            agg_hits["labelled"] += precision["labelled"]
            agg_hits["precision_sum"] += precision["precision_at_k"] * precision["labelled"]
            agg_hits["hit_sum"] += precision["hit_at_k"] * precision["labelled"]
            chance += [len(labels[n]) / len(words) for n in labelled]

        # matching pursuit on the labelled patches and a sample of the others (it costs a pass over the table)
        others = [n for n in range(after.shape[0]) if n not in set(labelled)]
        room = max(0, mp_max_patches - len(labelled))
        pick = torch.randperm(len(others), generator=generator)[:room].tolist()
        chosen = labelled[:mp_max_patches] + [others[i] for i in pick]
        pursuit = matching_pursuit(after[chosen], word_table, mp_atoms)
        residual_curves.append(pursuit.residuals)
        mp_examples = []
        for row, n in enumerate(chosen):
            atoms = pursuit.atoms[row].tolist()
            if patch_phrases[n]:
                phrase_cover.append(sum(bool(s & set(atoms)) for s in patch_phrases[n]) / len(patch_phrases[n]))
                token_recall.append(len(labels[n] & set(atoms)) / len(labels[n]))
            if len(mp_examples) < 8 and (patch_phrases[n] or not labelled):
                mp_examples.append({"patch": n, "atoms": [pieces[a] for a in atoms],
                                    "coefficients": [round(c, 4) for c in pursuit.coefficients[row].tolist()],
                                    "residual": round(float(pursuit.residuals[row, -1]), 4)})
        entry = {
            "id": item.id, "image": str(item.path), "labelled_patches": precision["labelled"],
            "precision_at_k": precision["precision_at_k"], "hit_at_k": precision["hit_at_k"],
            "before_projector": _short(spectrum(before)), "after_projector": _short(spectrum(after)),
            "mean_top1_cosine": float(scores[:, 0].mean()),
            "pursuit_residual": [round(float(v), 4) for v in pursuit.residuals.mean(0)],
            "pursuit_examples": mp_examples,
            "top_words": [[pieces[w] for w in row] for row in top.tolist()],
        }
        per_image.append(entry)
        if k < plots:
            plot_patch_grid(out / f"patches_{_safe(item.id)}.png", pixels, loaded.image_processor, grid,
                            [row[0] for row in entry["top_words"]], labelled, title=f"{item.id}: top-1 word per patch")

    before_all, after_all = spectrum(torch.cat(befores)), spectrum(torch.cat(afters))
    residual = torch.cat(residual_curves).mean(0)
    n = agg_hits["labelled"]
    aggregate = {
        "images": len(per_image), "labelled_patches": n, "top_k": top_k,
        "precision_at_k": agg_hits["precision_sum"] / n if n else None,
        "hit_at_k": agg_hits["hit_sum"] / n if n else None,
        "chance_precision_at_k": sum(chance) / len(chance) if chance else None,
        "candidate_words": len(words),
        "before_projector": _short(before_all), "after_projector": _short(after_all),
        "effective_rank_ratio": after_all["effective_rank"] / before_all["effective_rank"],
        "pursuit_atoms": mp_atoms,
        "pursuit_residual": [round(float(v), 4) for v in residual],
        "pursuit_phrase_coverage": sum(phrase_cover) / len(phrase_cover) if phrase_cover else None,
        "pursuit_label_token_recall": sum(token_recall) / len(token_recall) if token_recall else None,
    }
    report = {"model": loaded.source, "settings": {"top_k": top_k, "mp_atoms": mp_atoms, "vocab": vocab,
                                                   "min_overlap": min_overlap, "grid": grid, "aspect": aspect},
              "aggregate": aggregate, "images": per_image}
    write_json_atomic(out / "report.json", report, indent=1)
    plot_spectra(out / "spectrum.png", before_all["singular_values"], after_all["singular_values"])
    plot_pursuit(out / "pursuit.png", aggregate["pursuit_residual"])
    return report


def _short(s: dict) -> dict:
    return {k: v for k, v in s.items() if k != "singular_values"}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
