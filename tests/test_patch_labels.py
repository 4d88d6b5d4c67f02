"""Patch labels: parsing, COCO RLE, and boxes / polygons / masks mapped onto the patch grid by overlap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aligngpt_plugin.core.patch_geometry import (
    Geometry,
    PatchLabel,
    PatchLabelError,
    box_overlap,
    decode_rle,
    encode_rle,
    label_overlap,
    mask_overlap,
    parse_record_labels,
    patch_targets,
    preprocess_geometry,
    rasterize_polygons,
    rle_counts_from_string,
)

IDENTITY_48 = Geometry(1.0, 1.0, 0.0, 0.0, 48, 48)  # a 48 px image seen as it is: 4x4 grid of 12 px


class Processor:  # the fields of CLIPImageProcessor the geometry reads (336 px, resize + centre crop)
    size = {"shortest_edge": 336}
    crop_size = {"height": 336, "width": 336}
    do_center_crop = True


@pytest.mark.parametrize("box, expected", [
    ((0, 0, 12, 12), {(0, 0): 1.0}),
    ((6, 0, 18, 12), {(0, 0): 0.5, (0, 1): 0.5}),
    ((6, 6, 18, 18), {(0, 0): 0.25, (0, 1): 0.25, (1, 0): 0.25, (1, 1): 0.25}),
    ((36, 24, 60, 48), {(2, 3): 1.0, (3, 3): 1.0}),  # clipped at the image edge
    ((-10, -10, 0, 0), {}),  # outside
])
def test_box_overlap_on_a_hand_made_grid(box, expected):
    share = box_overlap(box, IDENTITY_48, grid=4)
    want = np.zeros((4, 4))
    for (r, c), v in expected.items():
        want[r, c] = v
    np.testing.assert_allclose(share, want)


def test_mask_overlap_matches_the_box_it_draws_on_any_grid():
    mask = np.zeros((48, 48), dtype=bool)
    mask[6:18, 6:18] = True
    for grid in (4, 3, 6, 5):  # 5 does not divide 48: cells of 9 or 10 px
        want = box_overlap((6, 6, 18, 18), IDENTITY_48, grid)
        np.testing.assert_allclose(mask_overlap(mask, IDENTITY_48, grid), want, atol=0.06 if grid == 5 else 1e-12)


def test_polygon_rasterizes_to_its_pixels():
    triangle = rasterize_polygons([[0, 0, 11, 0, 0, 11]], 12, 12)
    assert triangle[0, 0] and triangle[0, 11] and triangle[11, 0] and not triangle[11, 11]
    square = rasterize_polygons([[0, 0, 11, 0, 11, 11, 0, 11]], 48, 48)  # PIL fills the edge pixels
    np.testing.assert_allclose(mask_overlap(square, IDENTITY_48, 4)[0], [1, 0, 0, 0])


def test_clip_resize_and_centre_crop_geometry():
    # 400x200: shortest edge to 336 -> 672x336, centre crop drops 168 px on the left
    g = preprocess_geometry((400, 200), Processor(), "square")
    assert (g.sx, g.sy, g.tx, g.ty, g.width, g.height) == (1.68, 1.68, -168.0, 0.0, 336, 336)
    share = box_overlap((100, 0, 200, 200), g, 24)  # x 168..336 -> 0..168 after the crop
    assert share[:, :12].min() == 1.0 and share[:, 12:].max() == 0.0


def test_pad_geometry_puts_the_image_in_the_middle():
    # 400x200 padded to 400x400 (100 px above and below), resized to 336: rows 84..252 hold the image
    g = preprocess_geometry((400, 200), Processor(), "pad")
    share = box_overlap((0, 0, 400, 200), g, 24)
    assert share[6:18].min() == 1.0 and share[:6].max() == 0.0 and share[18:].max() == 0.0
    mask = np.ones((200, 400), dtype=bool)
    np.testing.assert_allclose(mask_overlap(mask, g, 24), share)


# COCO RLE vectors recorded with pycocotools 2.0.11 (mask.encode on the masks built here)
def test_rle_decodes_coco_strings():
    small = np.zeros((4, 5), dtype=bool)
    small[1:3, 1:4] = True
    assert np.array_equal(decode_rle({"size": [4, 5], "counts": "5220003"}), small)
    big = np.zeros((30, 40), dtype=bool)
    big[5:25, 10:35] = True
    big[0, 0] = True
    coco = "01`9c0jF00000000000000000000000000000000000000000000000a4"
    assert np.array_equal(decode_rle({"size": [30, 40], "counts": coco}), big)
    assert encode_rle(big)["counts"] == coco and encode_rle(small)["counts"] == "5220003"
    # uncompressed counts: column-major runs, starting with zeros
    assert encode_rle(small, compressed=False)["counts"] == [5, 2, 2, 2, 2, 2, 5]


def test_rle_round_trips_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 30, 2)
        mask = rng.random((h, w)) < rng.random()
        for compressed in (True, False):
            assert np.array_equal(decode_rle(encode_rle(mask, compressed)), mask)


def test_several_phrases_per_patch_and_merged_regions():
    labels = parse_record_labels({"id": "x", "image": "a.png", "patch_labels": [
        {"phrase": "dog", "box": [0, 0, 24, 24]},
        {"phrase": "brown", "box": [12, 12, 36, 36]},
        {"phrase": "dog", "mask": [[24, 24, 36, 24, 36, 36, 24, 36]]},  # a second region of "dog"
    ]}, 0)
    t = patch_targets(labels, (48, 48), IDENTITY_48, grid=4, min_overlap=0.5)
    assert t.phrases == ["dog", "brown"]
    a = t.assignment.reshape(4, 4, 2)
    assert a[1, 1].tolist() == [True, True]  # both phrases on one patch
    assert a[0, 0].tolist() == [True, False] and a[2, 2].tolist() == [True, True]
    assert a[0, 2].tolist() == [False, False]


def test_min_overlap_threshold():
    labels = [PatchLabel("x", box=(0, 0, 6, 12))]  # half of patch (0, 0)
    assert patch_targets(labels, (48, 48), IDENTITY_48, 4, min_overlap=0.5).assignment[0, 0]
    assert not patch_targets(labels, (48, 48), IDENTITY_48, 4, min_overlap=0.6).assignment[0, 0]


@pytest.mark.parametrize("labels, error", [
    ({"phrase": "a"}, "exactly one of 'box' or 'mask'"),
    ({"phrase": "a", "box": [0, 0, 1, 1], "mask": [[0, 0, 1, 0, 1, 1]]}, "exactly one"),
    ({"phrase": "", "box": [0, 0, 1, 1]}, "non-empty string"),
    ({"box": [0, 0, 1, 1]}, "phrase=None"),
    ({"phrase": "a", "box": [5, 5, 2, 9]}, "empty or reversed"),
    ({"phrase": "a", "box": [0, 0, 1]}, r"expected \[x0, y0, x1, y1\]"),
    ({"phrase": "a", "box": [0, 0, "1", 1]}, r"expected \[x0, y0, x1, y1\]"),
    ({"phrase": "a", "mask": [[0, 0, 1, 0, 1]]}, "even number"),
    ({"phrase": "a", "mask": {"size": [2, 2], "counts": [1, 2]}}, "sum to 3"),
    ({"phrase": "a", "mask": {"size": [2], "counts": [4]}}, "expected \\[height, width\\]"),
    ({"phrase": "a", "mask": {"size": [2, 2], "counts": "~~"}}, "do not decode"),
    ({"phrase": "a", "mask": "polygon"}, "list of polygons"),
    ({"phrase": "a", "box": [0, 0, 1, 1], "colour": "red"}, "unknown keys"),
    ("a dog", "expected an object"),
])
def test_malformed_labels_name_the_record(labels, error):
    record = {"id": "r3", "image": "a.png", "patch_labels": [{"phrase": "ok", "box": [0, 0, 1, 1]}, labels]}
    with pytest.raises(PatchLabelError, match=error) as info:
        parse_record_labels(record, 3, "data.json")
    assert "record 3 (id 'r3') of data.json: patch_labels[1]" in str(info.value)


def test_labels_field_must_be_a_list_on_an_image_record():
    with pytest.raises(PatchLabelError, match="expected a list"):
        parse_record_labels({"id": "a", "image": "x.png", "patch_labels": {"phrase": "a"}}, 0)
    with pytest.raises(PatchLabelError, match="no image"):
        parse_record_labels({"id": "a", "patch_labels": [{"phrase": "a", "box": [0, 0, 1, 1]}]}, 0)
    assert parse_record_labels({"id": "a", "image": "x.png"}, 0) == []


def test_rle_must_have_the_image_size():
    label = parse_record_labels({"image": "a", "patch_labels": [
        {"phrase": "a", "mask": encode_rle(np.ones((10, 20), dtype=bool))}]}, 0)[0]
    with pytest.raises(PatchLabelError, match="RLE size is 10x20"):
        label_overlap(label, (10, 20), IDENTITY_48, 4, "record 0")


def test_rle_counts_reject_a_cut_string():
    with pytest.raises(ValueError, match="ends inside a count"):
        rle_counts_from_string("0`")


@pytest.mark.parametrize("aspect", ["square", "pad"])
def test_fixture_labels_land_on_the_shape_in_the_pixels_the_model_sees(tiny, aspect):
    """Each fixture picture's labels (box, polygon or RLE) cover the patches that show its colour."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    from aligngpt_plugin.devkit.tiny_checkpoints import COLOURS

    processor = CLIPImageProcessor.from_pretrained(tiny.clip)
    mean, std = np.array(processor.image_mean), np.array(processor.image_std)
    records = json.loads(tiny.heldout_patches.read_text())
    kinds = set()
    for i, record in enumerate(records[:9]):
        image = Image.open(tiny.images / record["image"]).convert("RGB")
        if aspect == "pad":  # LLaVA's expand2square
            side = max(image.size)
            square = Image.new("RGB", (side, side), tuple(int(x * 255) for x in processor.image_mean))
            square.paste(image, ((side - image.size[0]) // 2, (side - image.size[1]) // 2))
            image_in = square
        else:
            image_in = image
        pixels = processor.preprocess(image_in, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        pixels = (pixels * std + mean) * 255
        colour = np.array(COLOURS[record["patch_labels"][0]["phrase"]])
        share = (np.abs(pixels - colour).max(-1) < 60).reshape(24, 14, 24, 14).mean((1, 3)).reshape(-1)
        labels = parse_record_labels(record, i)
        kinds |= {"box" if lab.box else "rle" if lab.rle else "polygon" for lab in labels}
        g = preprocess_geometry(image.size, processor, aspect)
        strict = patch_targets(labels, image.size, g, 24, min_overlap=0.9).assignment[:, 0]
        loose = patch_targets(labels, image.size, g, 24, min_overlap=0.05).assignment[:, 0]
        assert strict.any() and share[strict].min() > 0.8, record["image"]
        assert share[~loose].max() < 0.2, record["image"]
    assert kinds == {"box", "rle", "polygon"}
