"""The phantom's finding masks (issue 28): a finding's mask is where drawing it changed the chest, the
image is render_chest's byte for byte; region files (COCO RLE), box tables (MS-CXR's columns) and a
region placed on the model's input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medclip_nb.data.regions import (
    Region,
    mask_on_input,
    read_box_table,
    read_regions_file,
    regions_document,
    rle_decode,
    rle_encode,
)
from medclip_nb.errors import DataError
from medclip_nb.phantom.anatomy import sample_anatomy
from medclip_nb.phantom.findings import finding_from_words
from medclip_nb.phantom.regions import MASK_RULE, MASK_THRESHOLD, render_with_regions
from medclip_nb.phantom.render import expose, frontal_layers, image_width, render_chest

SIZE = 128  # below the working height: masks are computed at the image's own size


def _anatomy(seed: int):
    return sample_anatomy(np.random.default_rng([seed, 99]))


FINDINGS = [
    finding_from_words("Pleural Effusion", "large", ("left",)),
    finding_from_words("Consolidation", "moderate", ("right",), "lower"),
    finding_from_words("Cardiomegaly", "severe"),
    finding_from_words("Pneumothorax", "large", ("right",)),
    finding_from_words("Lung Lesion", "moderate", ("left",), "upper"),
    finding_from_words("Edema", "moderate"),
    finding_from_words("Atelectasis", "severe", ("right",), "base"),
]


# ---- the phantom's masks ------------------------------------------------------------------------------------
def test_render_with_regions_draws_render_chests_image_byte_for_byte():
    findings = [FINDINGS[0], FINDINGS[2], finding_from_words("Support Devices")]
    for size in (SIZE, 600):  # below and above the working height (masks resized to the image)
        anatomy = _anatomy(1)
        expected = render_chest(size, anatomy, findings, "PA", np.random.default_rng(5))
        image, regions = render_with_regions(size, anatomy, findings, np.random.default_rng(5))
        assert image.tobytes() == expected.tobytes() and image.size == expected.size
        assert [r["finding"] for r in regions] == [f.label for f in findings]
        assert all(r["mask"].shape == (image.height, image.width) and r["mask"].any() for r in regions)


@pytest.mark.parametrize("finding", FINDINGS, ids=lambda f: f.label)
def test_mask_is_where_the_image_changed_for_a_finding_drawn_alone(finding):
    anatomy, seed = _anatomy(2), 7
    h, w = SIZE, image_width(SIZE)
    with_it = frontal_layers(h, w, anatomy, [finding], np.random.default_rng(seed)).attenuation()
    without = frontal_layers(h, w, anatomy, [], np.random.default_rng(seed)).attenuation()
    change = np.abs(with_it - without)
    changed = change > MASK_THRESHOLD * change.max()  # the rule, applied to two separate drawings
    _, regions = render_with_regions(SIZE, anatomy, [finding], np.random.default_rng(seed))
    assert [r["finding"] for r in regions] == [finding.label]
    mask = regions[0]["mask"]
    assert mask.shape == changed.shape and 0.002 < mask.mean() < 0.6
    # equal up to pixels on the threshold's edge (the two ways round off differently)
    assert (mask != changed).sum() <= max(3, 0.005 * changed.sum())
    # on the film (the same exposure noise for both): every pixel that changed visibly lies in the mask
    film = [np.asarray(expose(att, SIZE, anatomy, np.random.default_rng(1)), dtype=np.int16)
            for att in (with_it, without)]
    difference = np.abs(film[0] - film[1])
    visible = difference > 0.05 * difference.max()
    assert visible.any() and (visible & ~mask).sum() <= 0.01 * visible.sum()


def test_a_finding_that_draws_nothing_has_no_region():
    _, regions = render_with_regions(SIZE, _anatomy(3), [], np.random.default_rng(0))
    assert regions == []


# ---- region files and box tables ----------------------------------------------------------------------------
def test_rle_is_cocos_uncompressed_run_length_encoding():
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, 0] = mask[1, 0] = mask[2, 3] = True
    rle = rle_encode(mask)
    # column-major runs, the first of zeros (0 here: the first pixel is set)
    assert rle == {"size": [3, 4], "counts": [0, 2, 9, 1]}
    np.testing.assert_array_equal(rle_decode(rle), mask)
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (5, 7), (64, 53)]:
        random = rng.random(shape) > 0.6
        np.testing.assert_array_equal(rle_decode(rle_encode(random)), random)
    with pytest.raises(DataError, match="counts add up to"):
        rle_decode({"size": [3, 4], "counts": [1, 2]}, "x")


def test_region_file_round_trip_and_bad_files(tmp_path):
    mask = np.zeros((20, 10), dtype=bool)
    mask[5:9, 2:6] = True
    document = regions_document(10, 20, [{"finding": "Edema", "mask": mask, "value": 1.0}], MASK_RULE)
    assert document["regions"][0]["box"] == [2, 5, 4, 4] and document["regions"][0]["area"] == 16
    path = tmp_path / "a.regions.json"
    path.write_text(json.dumps(document))
    size, regions = read_regions_file(path)
    assert size == (10, 20) and regions[0].finding == "Edema" and regions[0].info["value"] == 1.0
    np.testing.assert_array_equal(regions[0].pixels(10, 20), mask)
    for text in ("{", json.dumps({"format": "other"}), json.dumps({**document, "width": 11})):
        path.write_text(text)
        with pytest.raises(DataError, match=str(path)):
            read_regions_file(path)


def test_box_table_reads_ms_cxr_columns_and_joins_boxes_of_one_finding(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("dicom_id,category_name,label_text,x,y,w,h,image_width,image_height\n"
                    "abc,Pneumonia,patchy opacity,0,0,10,10,100,100\n"
                    "abc,Pneumonia,patchy opacity,50,50,10,10,100,100\n"
                    "def,Edema,edema,0,0,5,5,100,100\n")
    table = read_box_table(path)
    assert sorted(table) == ["abc", "def"] and len(table["abc"]) == 1
    region = table["abc"][0]
    assert region.text == "patchy opacity" and len(region.boxes) == 2
    pixels = region.pixels(50, 50)  # the boxes' frame is 100 x 100: scaled by one half
    assert pixels.sum() == 2 * 25 and pixels[0:5, 0:5].all() and pixels[25:30, 25:30].all()
    path.write_text("dicom_id,finding,x,y\nabc,Edema,1,2\n")
    with pytest.raises(DataError, match="no column for width"):
        read_box_table(path)
    path.write_text("dicom_id,finding,x,y,width,height\nabc,Edema,one,2,3,4\n")
    with pytest.raises(DataError, match="line 2: x 'one' is not a number"):
        read_box_table(path)


def test_mask_on_input_follows_the_evaluation_transform():
    # a 200 x 100 (h x w) image padded to 200 x 200 (50 columns each side), resized to 64, cropped to 48
    mask = np.zeros((200, 100), dtype=bool)
    mask[:, :50] = True  # the image's left half: columns 50..100 of the square, 16..32 of 64, 8..24 of 48
    placed = mask_on_input(mask, 64, 48)
    assert placed.shape == (48, 48)
    assert placed[:, 8:24].all() and not placed[:, :8].any() and not placed[:, 24:].any()
    box = Region("Edema", boxes=[(0, 0, 50, 200)]).pixels(100, 200)
    np.testing.assert_array_equal(box, mask)
