"""Patch labels: what each region of a picture shows, mapped onto the vision tower's patch grid.

A record of a LLaVA data file may carry `patch_labels`, a list of regions, each a phrase and a place::

    {"id": "...", "image": "a.jpg", "conversations": [...],
     "patch_labels": [
        {"phrase": "red", "box": [x0, y0, x1, y1]},                    # pixels of the image file
        {"phrase": "circle", "mask": [[x0, y0, x1, y1, x2, y2, ...]]},  # polygons, COCO layout
        {"phrase": "dog", "mask": {"size": [h, w], "counts": "..."}},   # COCO RLE, compressed or not
     ]}

Coordinates are pixels of the image file as stored (x right, y down; a box's x1/y1 are its far edges).
A region is mapped onto the grid through the same geometry the pixels go through in LLaVA's
preprocessing (`image_aspect_ratio pad`: pad to a square, then resize; otherwise the processor's resize
and centre crop), and a patch takes the phrase when the region covers at least `min_overlap` of its
area. A patch can take several phrases; regions with the same phrase are merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LABELS_FIELD = "patch_labels"


class PatchLabelError(ValueError):
    """A record's patch labels are malformed or do not fit its image."""


@dataclass(frozen=True)
class PatchLabel:
    """One labelled region: exactly one of `box`, `polygons`, `rle` is set."""

    phrase: str
    box: tuple[float, float, float, float] | None = None
    polygons: tuple[tuple[float, ...], ...] | None = None
    rle: dict | None = None


def _record_name(record: dict, index: int, source: str) -> str:
    return f"record {index} (id {record.get('id', '?')!r}){' of ' + source if source else ''}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def parse_label(entry: Any, where: str) -> PatchLabel:
    """One entry of `patch_labels`, validated.

    Args:
        entry: `{"phrase": str, "box": [x0, y0, x1, y1]}` or `{"phrase": str, "mask": polygons or COCO RLE}`,
            in pixels of the image file.
        where: how the entry is named in errors (record and position).

    Returns:
        The PatchLabel, with exactly one of `box`, `polygons`, `rle` set.

    Raises:
        PatchLabelError: saying what is wrong in `where`.
    """
    if not isinstance(entry, dict):
        raise PatchLabelError(f"{where} is {type(entry).__name__}, expected an object "
                              "{'phrase': ..., 'box': [x0, y0, x1, y1]} or {'phrase': ..., 'mask': ...}")
    unknown = set(entry) - {"phrase", "box", "mask"}
    if unknown:
        raise PatchLabelError(f"{where} has unknown keys {sorted(unknown)}; a label has 'phrase' and one of "
                              "'box' or 'mask'")
    phrase = entry.get("phrase")
    if not isinstance(phrase, str) or not phrase.strip():
        raise PatchLabelError(f"{where}: phrase={phrase!r}, expected a non-empty string")
    if ("box" in entry) == ("mask" in entry):
        raise PatchLabelError(f"{where} ({phrase!r}) needs exactly one of 'box' or 'mask'")
    if "box" in entry:
        box = entry["box"]
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_number(v) for v in box)):
            raise PatchLabelError(f"{where} ({phrase!r}): box={box!r}, expected [x0, y0, x1, y1] in pixels")
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 <= x0 or y1 <= y0:
            raise PatchLabelError(f"{where} ({phrase!r}): box={box!r} is empty or reversed; "
                                  "expected x0 < x1 and y0 < y1 (corners, not width/height)")
        return PatchLabel(phrase.strip(), box=(x0, y0, x1, y1))
    mask = entry["mask"]
    if isinstance(mask, dict):
        return PatchLabel(phrase.strip(), rle=_checked_rle(mask, f"{where} ({phrase!r})"))
    if isinstance(mask, (list, tuple)) and mask and all(_number(v) for v in mask):
        mask = [mask]  # one polygon given flat
    if not (isinstance(mask, (list, tuple)) and mask and all(isinstance(p, (list, tuple)) for p in mask)):
        raise PatchLabelError(f"{where} ({phrase!r}): mask must be a list of polygons [[x0, y0, x1, y1, ...]] "
                              "or a COCO RLE {'size': [h, w], 'counts': ...}")
    for poly in mask:
        if len(poly) < 6 or len(poly) % 2 or not all(_number(v) for v in poly):
            raise PatchLabelError(f"{where} ({phrase!r}): polygon {list(poly)[:8]}... needs an even number "
                                  "(>= 6) of pixel coordinates x0, y0, x1, y1, ...")
    return PatchLabel(phrase.strip(), polygons=tuple(tuple(float(v) for v in p) for p in mask))


def _checked_rle(rle: dict, where: str) -> dict:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise PatchLabelError(f"{where}: RLE size={size!r}, expected [height, width]")
    if isinstance(counts, str):
        try:
            decoded = rle_counts_from_string(counts)
        except ValueError as err:
            raise PatchLabelError(f"{where}: compressed RLE counts do not decode ({err})") from None
    elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
        decoded = counts
    else:
        raise PatchLabelError(f"{where}: RLE counts must be a COCO string or a list of integers")
    if any(v < 0 for v in decoded) or sum(decoded) != size[0] * size[1]:
        raise PatchLabelError(f"{where}: RLE counts sum to {sum(decoded)}, size {size[0]}x{size[1]} has "
                              f"{size[0] * size[1]} pixels (or a count is negative)")
    return {"size": [int(size[0]), int(size[1])], "counts": list(decoded)}


def parse_record_labels(record: dict, index: int, source: str = "") -> list[PatchLabel]:
    """The patch labels of one record.

    Args:
        record: a LLaVA data record, with or without `patch_labels`.
        index: its position in the data file (for errors).
        source: the data file's name (for errors).

    Returns:
        Its labels; [] when it has none.

    Raises:
        PatchLabelError: naming the record when a label is malformed.
    """
    if LABELS_FIELD not in record:
        return []
    name = _record_name(record, index, source)
    entries = record[LABELS_FIELD]
    if not isinstance(entries, list):
        raise PatchLabelError(f"{name}: {LABELS_FIELD} is {type(entries).__name__}, expected a list of labels")
    if entries and "image" not in record:
        raise PatchLabelError(f"{name} has {LABELS_FIELD} but no image")
    return [parse_label(e, f"{name}: {LABELS_FIELD}[{k}]") for k, e in enumerate(entries)]


# --- COCO run-length encoding (column-major counts, starting with a run of zeros) -----------------

def rle_counts_from_string(text: str) -> list[int]:
    """Decode COCO's compressed counts: 5-bit groups in characters from '0', sign-extended, counts
    after the second stored as the difference to the one two places before."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("string ends inside a count")
            c = ord(text[pos]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {text[pos]!r} is not a COCO RLE character")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_counts_to_string(counts: list[int]) -> str:
    """COCO's compressed form of `counts` (inverse of rle_counts_from_string)."""
    out = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = value & 0x1F
            value >>= 5
            more = value != -1 if c & 0x10 else value != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def decode_rle(rle: dict) -> np.ndarray:
    """A COCO run-length encoding as a mask.

    Args:
        rle: `{"size": [h, w], "counts": list or compressed string}` (column-major counts, zeros first).

    Returns:
        [h, w] bool mask.
    """
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = rle_counts_from_string(counts)
    flat = np.zeros(h * w, dtype=bool)
    edges = np.cumsum([0, *counts])
    for k in range(1, len(counts), 2):  # odd runs are ones
        flat[edges[k]:edges[k + 1]] = True
    return flat.reshape(w, h).T  # COCO counts run down the columns


def encode_rle(mask: np.ndarray, compressed: bool = True) -> dict:
    """The COCO run-length encoding of a mask.

    Args:
        mask: [h, w] bool (or 0/1) mask.
        compressed: counts as COCO's compressed string, else as a list of ints.

    Returns:
        `{"size": [h, w], "counts": ...}`.
    """
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [h, w], "counts": rle_counts_to_string(counts) if compressed else counts}


def rasterize_polygons(polygons, width: int, height: int) -> np.ndarray:
    """The union of polygons as a mask.

    Args:
        polygons: polygons as flat pixel coordinates `[x0, y0, x1, y1, ...]`.
        width: the image's width in pixels.
        height: the image's height in pixels.

    Returns:
        [height, width] bool mask.
    """
    from PIL import Image, ImageDraw

    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        draw.polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly), 2)], fill=1)
    return np.array(canvas, dtype=bool)


# --- the preprocessing geometry --------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """Where a pixel of the image file lands in the processed image: x' = x * sx + tx, y' = y * sy + ty;
    the processed image is `width` x `height` pixels."""

    sx: float
    sy: float
    tx: float
    ty: float
    width: int
    height: int


def _size_field(size: Any, key: str = "shortest_edge") -> dict:
    """An image processor's size as a dict: transformers 4.x keeps a dict (or an int), 5.x a `SizeDict`
    (iterable as its non-None (name, value) pairs)."""
    if isinstance(size, (int, float)):
        return {key: int(size)} if key == "shortest_edge" else {"height": int(size), "width": int(size)}
    return dict(size)


def preprocess_geometry(image_size: tuple[int, int], processor, aspect: str = "square") -> Geometry:
    """The geometry of LLaVA's preprocessing for an image of `image_size` (width, height).

    `aspect` is LLaVA's `image_aspect_ratio`: 'pad' pads to a centred square first (expand2square);
    anything else hands the image to the processor as it is. The processor part follows CLIP's image
    processor: resize (shortest edge to `size`, long edge truncated to an integer, or to an exact
    height x width) and then, when `do_center_crop`, a centre crop to `crop_size`.

    Args:
        image_size: (width, height) of the image file.
        processor: the vision tower's image processor (CLIP's: `size`, `do_center_crop`, `crop_size`).
        aspect: LLaVA's `image_aspect_ratio` ("pad" or anything else).

    Returns:
        The Geometry mapping file pixels to processed pixels.

    Raises:
        ValueError: a processor size that is neither `shortest_edge` nor height and width.
    """
    w, h = image_size
    ox = oy = 0.0
    if aspect == "pad" and w != h:
        side = max(w, h)
        ox, oy = (side - w) // 2, (side - h) // 2
        w = h = side
    size = _size_field(getattr(processor, "size", None) or {"shortest_edge": 224})
    if "shortest_edge" in size:
        short = size["shortest_edge"]
        if w <= h:
            nw, nh = short, int(short * h / w)
        else:
            nw, nh = int(short * w / h), short
    elif "height" in size and "width" in size:
        nw, nh = size["width"], size["height"]
    else:
        raise ValueError(f"image processor size {size!r}: expected shortest_edge or height and width")
    sx, sy = nw / w, nh / h
    tx, ty = ox * sx, oy * sy
    if getattr(processor, "do_center_crop", False):
        crop = getattr(processor, "crop_size", None)
        crop = _size_field(crop, "crop")
        cw, ch = crop["width"], crop["height"]
        tx -= (nw - cw) // 2
        ty -= (nh - ch) // 2
        nw, nh = cw, ch
    return Geometry(sx, sy, tx, ty, nw, nh)


def _cell_edges(length: int, cells: int) -> np.ndarray:
    return np.arange(cells + 1) * (length / cells)


def box_overlap(box: tuple[float, float, float, float], geometry: Geometry, grid: int) -> np.ndarray:
    """Share of each patch's area inside a box.

    Args:
        box: (x0, y0, x1, y1) in pixels of the image file.
        geometry: the preprocessing geometry (`preprocess_geometry`).
        grid: patches per side of the vision tower's grid (24 for 336 px and 14 px patches).

    Returns:
        [grid, grid] shares in [0, 1], row-major as the vision tower's tokens.
    """
    x0, y0, x1, y1 = box
    x0, x1 = x0 * geometry.sx + geometry.tx, x1 * geometry.sx + geometry.tx
    y0, y1 = y0 * geometry.sy + geometry.ty, y1 * geometry.sy + geometry.ty
    ex, ey = _cell_edges(geometry.width, grid), _cell_edges(geometry.height, grid)
    ox = np.clip(np.minimum(ex[1:], x1) - np.maximum(ex[:-1], x0), 0, None) / np.diff(ex)
    oy = np.clip(np.minimum(ey[1:], y1) - np.maximum(ey[:-1], y0), 0, None) / np.diff(ey)
    return np.outer(oy, ox)


def mask_overlap(mask: np.ndarray, geometry: Geometry, grid: int) -> np.ndarray:
    """Share of each patch's area [grid, grid] covered by `mask` [h, w] (pixels of the image file).

    Each processed pixel reads the file pixel under its centre (nearest neighbour), so the result is exact
    to a processed pixel; pixels outside the file (padding, crop) count as uncovered.

    Args:
        mask: [h, w] bool mask in pixels of the image file.
        geometry: the preprocessing geometry.
        grid: patches per side.

    Returns:
        [grid, grid] shares in [0, 1], row-major.
    """
    h, w = mask.shape
    u = (np.arange(geometry.width) + 0.5 - geometry.tx) / geometry.sx
    v = (np.arange(geometry.height) + 0.5 - geometry.ty) / geometry.sy
    cols, rows = np.floor(u).astype(int), np.floor(v).astype(int)
    inside_c, inside_r = (cols >= 0) & (cols < w), (rows >= 0) & (rows < h)
    sampled = mask[np.clip(rows, 0, h - 1)][:, np.clip(cols, 0, w - 1)]
    sampled &= inside_r[:, None] & inside_c[None, :]
    ex = np.round(_cell_edges(geometry.width, grid)).astype(int)
    ey = np.round(_cell_edges(geometry.height, grid)).astype(int)
    sums = np.add.reduceat(np.add.reduceat(sampled.astype(np.float64), ey[:-1], axis=0), ex[:-1], axis=1)
    return sums / np.outer(np.diff(ey), np.diff(ex))


def label_overlap(label: PatchLabel, image_size: tuple[int, int], geometry: Geometry, grid: int,
                  where: str = "label") -> np.ndarray:
    """Share of each patch covered by one label.

    Args:
        label: a box, polygons or an RLE mask.
        image_size: (width, height) of the image file.
        geometry: the preprocessing geometry.
        grid: patches per side.
        where: how the label is named in errors.

    Returns:
        [grid, grid] shares in [0, 1], row-major.

    Raises:
        PatchLabelError: an RLE mask whose size is not the image file's.
    """
    w, h = image_size
    if label.box is not None:
        return box_overlap(label.box, geometry, grid)
    if label.rle is not None:
        rh, rw = label.rle["size"]
        if (rw, rh) != (w, h):
            raise PatchLabelError(f"{where} ({label.phrase!r}): RLE size is {rh}x{rw} (h x w), the image is "
                                  f"{h}x{w}; masks must be given at the image file's resolution")
        return mask_overlap(decode_rle(label.rle), geometry, grid)
    return mask_overlap(rasterize_polygons(label.polygons, w, h), geometry, grid)


@dataclass
class PatchTargets:
    """The phrases of one image and which patches take which: `assignment` [grid*grid, len(phrases)]."""

    phrases: list[str]
    assignment: np.ndarray


def patch_targets(labels: list[PatchLabel], image_size: tuple[int, int], geometry: Geometry, grid: int,
                  min_overlap: float = 0.5, where: str = "record") -> PatchTargets:
    """Map every label of one image onto the grid: a patch takes a phrase when that phrase's regions
    (merged) cover at least `min_overlap` of it.

    Args:
        labels: the image's labels (a phrase may have several regions).
        image_size: (width, height) of the image file.
        geometry: the preprocessing geometry.
        grid: patches per side.
        min_overlap: the share of a patch a phrase's regions must cover.
        where: how the record is named in errors.

    Returns:
        PatchTargets: the P distinct phrases and `assignment`, [grid * grid, P] bool.
    """
    coverage: dict[str, np.ndarray] = {}
    for label in labels:
        share = label_overlap(label, image_size, geometry, grid, where)
        # regions of one phrase are merged; shares add up to at most full coverage
        coverage[label.phrase] = np.minimum(coverage.get(label.phrase, 0) + share, 1.0)
    phrases = list(coverage)
    if not phrases:
        return PatchTargets([], np.zeros((grid * grid, 0), dtype=bool))
    stacked = np.stack([coverage[p].reshape(-1) for p in phrases], axis=1)
    return PatchTargets(phrases, stacked >= min_overlap - 1e-9)
