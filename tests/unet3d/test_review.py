"""The review page's flags, each on a real case made to show it, and its table against the
JSON it is drawn from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from data_generators.labels import CLASS_COLOURS
from tests.conftest import require_brats
from unet3d.evaluation.flags import case_flags
from unet3d.evaluation.review import write_review

CASE = "Brats18_CBICA_ABM_1"


@pytest.fixture(scope="module")
def case():
    """The real case: its folder, its label map (BraTS 2017 labels) and its FLAIR."""
    folder = require_brats() / CASE
    seg = nib.load(folder / f"{CASE}_seg.nii.gz")
    flair = nib.load(folder / f"{CASE}_flair.nii.gz")
    return folder, seg, np.asarray(seg.dataobj).astype(np.uint8), np.asarray(flair.dataobj)


def codes(row):
    return [flag["code"] for flag in row["flags"]]


def review(tmp_path, labels_by_case: dict, seg_img, gt_dir) -> dict:
    """Writes the label maps as predictions, the review beside them; rows by case."""
    preds = tmp_path / "preds"
    preds.mkdir()
    for name, labels in labels_by_case.items():
        nib.save(nib.Nifti1Image(labels, seg_img.affine, seg_img.header), preds / f"{name}.nii.gz")
    index = write_review(preds, gt_dir)
    assert index == preds / "index.html"
    rows = json.loads((preds / "review" / "review.json").read_text())
    return {row["case"]: row for row in rows}


def gt_folder(tmp_path, source: Path, name: str, flair: np.ndarray | None = None) -> Path:
    """A ground-truth folder holding the real case under ``name`` (its FLAIR replaced by
    ``flair`` if given)."""
    folder = tmp_path / "gt" / name
    folder.mkdir(parents=True)
    for path in source.iterdir():
        target = folder / path.name.replace(CASE, name)
        if flair is not None and path.name.endswith("_flair.nii.gz"):
            image = nib.load(path)
            nib.save(nib.Nifti1Image(flair, image.affine, image.header), target)
        else:
            target.symlink_to(path)
    return folder.parent


def test_the_real_case_as_it_is_has_no_flag(case, tmp_path):
    folder, seg, labels, _ = case
    rows = review(tmp_path, {CASE: labels}, seg, folder.parent)
    assert codes(rows[CASE]) == []
    voxel_cm3 = float(np.prod(seg.header.get_zooms()[:3])) / 1000
    assert rows[CASE]["volumes_cm3"]["WT"] == round(float((labels > 0).sum()) * voxel_cm3, 2)
    assert rows[CASE]["volumes_cm3"]["ET"] == round(float((labels == 4).sum()) * voxel_cm3, 2)


def test_a_blob_far_from_the_tumour_is_flagged_with_its_size_and_distance(case, tmp_path):
    folder, seg, labels, flair = case
    blob = labels.copy()
    tumour = np.argwhere(labels > 0)
    # a 10x10x10 cube of edema inside the head, on the other side of the brain
    head = np.argwhere(flair > 0)
    centre = head.mean(axis=0)
    target = np.round(2 * centre - tumour.mean(axis=0)).astype(int)
    box = tuple(slice(c - 5, c + 5) for c in target)
    assert (blob[box] == 0).all() and (flair[box] > 0).all()
    blob[box] = 2
    rows = review(tmp_path, {"Blob": blob}, seg, gt_folder(tmp_path, folder, "Blob"))
    (flag,) = [f for f in rows["Blob"]["flags"] if f["code"] == "far_component"]
    # the nearest distance, worked out by a k-d tree over both point sets, in mm
    spacing = np.array(seg.header.get_zooms()[:3])
    in_cube = np.zeros(labels.shape, bool)
    in_cube[box] = True
    cube = np.argwhere(in_cube)
    nearest = cKDTree(tumour * spacing).query(cube * spacing)[0].min()
    assert nearest > 20
    assert f"1,000 voxels at {nearest:.0f} mm" in flag["why"]


def test_a_tumour_cut_by_the_edge_of_the_scan_is_flagged_on_that_side(case, tmp_path):
    folder, seg, labels, flair = case
    z = int(np.argwhere(labels > 0)[:, 2].mean())  # through the tumour
    cut_flair, cut_labels = flair.copy(), labels.copy()
    cut_flair[:, :, z + 1:] = 0  # the head ends here, as in a scan with a short field of view
    cut_labels[:, :, z + 1:] = 0
    rows = review(tmp_path, {"Cut": cut_labels}, seg,
                  gt_folder(tmp_path, folder, "Cut", flair=cut_flair))
    (flag,) = [f for f in rows["Cut"]["flags"] if f["code"] == "touches_border"]
    side = {"S": "superior", "I": "inferior"}[nib.aff2axcodes(seg.affine)[2]]
    assert f"({side})" in flag["why"]


def test_no_enhancing_tumour_is_flagged(case, tmp_path):
    folder, seg, labels, _ = case
    no_et = np.where(labels == 4, 1, labels).astype(np.uint8)  # ET relabelled necrosis
    rows = review(tmp_path, {"NoET": no_et}, seg, gt_folder(tmp_path, folder, "NoET"))
    assert codes(rows["NoET"]) == ["no_enhancing"]


def test_an_empty_label_map_is_flagged_and_shows_no_overlay(case, tmp_path):
    folder, seg, labels, _ = case
    rows = review(tmp_path, {"Empty": np.zeros_like(labels)}, seg,
                  gt_folder(tmp_path, folder, "Empty"))
    assert codes(rows["Empty"]) == ["no_tumour"]
    picture = np.asarray(Image.open(tmp_path / "preds" / "review" / "Empty.png"))
    assert overlay_pixels(picture) == 0


def test_report_flags_geometry_and_confidence(case):
    """The flags that come from predict.py's report (a real run's, see
    tests/test_review_browser.py for the end-to-end case)."""
    _, seg, labels, flair = case
    classes = np.select([labels == 1, labels == 2, labels == 4], [1, 2, 3], 0)
    report = {"geometry": {"axes": "RAS", "spacing_mm": [2.0, 2.0, 2.0],
                           "reoriented_to": "LPS", "resampled_to_mm": 1.0},
              "confidence": {"uncertain_fraction": 0.4}}
    flags = case_flags(classes, flair, seg.header.get_zooms(), "LPS", report)
    assert [f["code"] for f in flags] == ["low_confidence", "resampled", "reoriented"]
    assert "40%" in flags[0]["why"] and "2x2x2 mm" in flags[1]["why"]
    quiet = {"geometry": {"axes": "LPS", "reoriented_to": None, "resampled_to_mm": None},
             "confidence": {"uncertain_fraction": 0.1}}
    assert case_flags(classes, flair, seg.header.get_zooms(), "LPS", quiet) == []


def test_index_lists_flagged_cases_first_and_links_each_page(case, tmp_path):
    folder, seg, labels, _ = case
    no_et = np.where(labels == 4, 1, labels).astype(np.uint8)
    gt = gt_folder(tmp_path, folder, "NoET")
    shutil.copytree(folder, gt / "Plain", symlinks=True)  # names keep the original case id
    for path in (gt / "Plain").iterdir():
        path.rename(path.with_name(path.name.replace(CASE, "Plain")))
    rows = review(tmp_path, {"Plain": labels, "NoET": no_et}, seg, gt)
    index = (tmp_path / "preds" / "index.html").read_text()
    assert index.index('data-case="NoET"') < index.index('data-case="Plain"')
    for name in rows:
        assert f'href="review/{name}.html"' in index
        page = (tmp_path / "preds" / "review" / f"{name}.html").read_text()
        assert 'href="../index.html"' in page and f'src="{name}.png"' in page
        for flag in rows[name]["flags"]:
            assert f'data-code="{flag["code"]}"' in page
    # no resource from elsewhere: the page works offline
    assert "http://" not in index and "https://" not in index
    picture = np.asarray(Image.open(tmp_path / "preds" / "review" / "Plain.png"))
    assert overlay_pixels(picture) > 100


def overlay_pixels(picture: np.ndarray) -> int:
    """Pixels painted in one of the class colours (60 % colour over grey)."""
    count = 0
    for colour in CLASS_COLOURS.values():
        colour = np.array(colour, float)
        # grey g under the paint: pixel = 0.4 g + 0.6 colour, so pixel - 0.6 colour is grey
        rest = picture.astype(float) - 0.6 * colour
        grey = (rest.max(-1) - rest.min(-1) < 3) & (rest.min(-1) >= -1) & (rest.max(-1) <= 103)
        count += int(grey.sum())
    return count


def test_the_viewer_travels_with_the_pages_or_the_page_says_how_to_add_it(case, tmp_path):
    import base64
    import re

    from unet3d.evaluation.viewer import niivue_source

    folder, seg, labels, _ = case
    preds = tmp_path / "preds"
    preds.mkdir()
    nib.save(nib.Nifti1Image(labels, seg.affine, seg.header), preds / f"{CASE}.nii.gz")
    write_review(preds, folder.parent, viewer=False)
    page = (preds / "review" / f"{CASE}.html").read_text()
    assert "The interactive viewer is not installed" in page and "npm ci" in page
    assert not list((preds / "review").glob("*.data.js"))
    assert niivue_source() is not None, "NiiVue is not installed (make install runs npm ci)"
    write_review(preds, folder.parent)
    assert (preds / "review" / "niivue.umd.js").read_bytes() == niivue_source().read_bytes()
    data = (preds / "review" / f"{CASE}.data.js").read_text()
    flair = re.search(r'"flair": "([^"]+)"', data)[1]
    assert base64.b64decode(flair) == (folder / f"{CASE}_flair.nii.gz").read_bytes()
    assert '<script src="niivue.umd.js"></script>' in (preds / "review" / f"{CASE}.html"
                                                        ).read_text()


def test_rows_without_scores_keep_the_columns_and_a_bad_case_is_left_out(case, tmp_path,
                                                                          capsys):
    """A case scored and one not: every row has the same cells (the sort script reads
    them by index). A label map that does not fit its scan is named on stderr and left
    out; the others are reviewed."""
    folder, seg, labels, _ = case
    preds = tmp_path / "preds"
    preds.mkdir()
    for name in ("Scored", "Unscored"):
        nib.save(nib.Nifti1Image(labels, seg.affine, seg.header), preds / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(labels[:100], seg.affine), preds / "Cropped.nii.gz")
    gt = gt_folder(tmp_path, folder, "Scored")
    for name in ("Unscored", "Cropped"):
        shutil.copytree(gt / "Scored", gt / name, symlinks=True)
        for path in (gt / name).iterdir():
            path.rename(path.with_name(path.name.replace("Scored", name)))
    scores = [{"case": "Scored", "Dice_WT": 0.9, "Dice_TC": 0.8, "Dice_ET": 0.7,
               "HD95_WT": 2.0, "HD95_TC": 3.0, "HD95_ET": 4.0}]
    write_review(preds, gt, scores, viewer=False)
    assert "Cropped" in capsys.readouterr().err
    index = (preds / "index.html").read_text()
    rows = index.split("<tbody>")[1].split("</tr>")[:-1]
    assert len(rows) == 2 and len({row.count("<td") for row in rows}) == 1
    assert 'data-v="0.9"' in index and "Cropped" not in index
