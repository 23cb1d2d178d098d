"""The review page in a real browser: Debian's Chromium, headless, opens the pages from
disk (``file://``); the screenshots show the overlay where the tumour is and none on an
empty case; the table the browser renders matches the JSON; the flags of a real run on
inputs made to show them (sequences swapped, axes flipped) come from predict.py's report."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from tests.conftest import REPO, require_brats
from tests.unet3d.test_review import overlay_pixels
from unet3d.evaluation.flags import UNCERTAIN_FRACTION

CASES = ("Brats18_2013_11_1", "Brats18_CBICA_ABM_1")
SWAPPED = {"t1": "t2", "t2": "t1", "t1ce": "flair", "flair": "t1ce"}


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("the browser tests need Debian's chromium (make test installs it)")
    return path


def browse(url: str, tmp_path: Path, *, screenshot: Path | None = None,
           size=(1280, 900), budget_ms: int = 3000) -> str:
    """Runs headless Chromium on ``url``; returns the DOM after the page's scripts ran."""
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}",
             f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}",
             # WebGL without a GPU: the viewer draws with SwiftShader
             "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
    flags += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    done = subprocess.run([*flags, url], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    if screenshot:
        assert screenshot.is_file(), done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """predict.py --html --gt on two real cases, the same scans with their sequences
    swapped, and one with its axes flipped (RAS instead of LPS)."""
    root = tmp_path_factory.mktemp("review")
    cases = root / "cases"
    cases.mkdir()
    brats = require_brats()
    for name in CASES:
        (cases / name).symlink_to(brats / name, target_is_directory=True)
    source = brats / CASES[1]
    swapped = cases / "Swapped"
    swapped.mkdir()
    for modality, other in SWAPPED.items():  # each file named as another sequence
        (swapped / f"Swapped_{other}.nii.gz").symlink_to(source / f"{CASES[1]}_{modality}.nii.gz")
    (swapped / "Swapped_seg.nii.gz").symlink_to(source / f"{CASES[1]}_seg.nii.gz")
    flipped = cases / "Flipped"
    flipped.mkdir()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    for path in source.iterdir():
        image = nib.load(path)
        data = np.asarray(image.dataobj)[::-1, ::-1]  # same anatomy, axes pointing R and A
        affine = image.affine @ np.array([[1, 0, 0, data.shape[0] - 1],
                                          [0, 1, 0, data.shape[1] - 1],
                                          [0, 0, 1, 0], [0, 0, 0, 1]]) @ flip
        nib.save(nib.Nifti1Image(data, affine), flipped / path.name.replace(CASES[1], "Flipped"))
    coarse = cases / "Coarse"  # 2 mm voxels: every other voxel of each axis
    coarse.mkdir()
    for path in source.iterdir():
        image = nib.load(path)
        data = np.asarray(image.dataobj)[::2, ::2, ::2]
        affine = image.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(data, affine), coarse / path.name.replace(CASES[1], "Coarse"))
    out = root / "preds"
    done = subprocess.run([sys.executable, str(REPO / "predict.py"), "--input", str(cases),
                           "--out", str(out), "--gt", str(cases), "--html"],
                          capture_output=True, text=True, cwd=REPO, timeout=900,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"review page: {out / 'index.html'}" in done.stdout
    # an empty label map beside them, reviewed with the others by unet3d-evaluate --html
    first = nib.load(out / f"{CASES[0]}.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(first.shape, np.uint8), first.affine),
             out / "Empty.nii.gz")
    (cases / "Empty").mkdir()
    for path in (brats / CASES[0]).iterdir():
        (cases / "Empty" / path.name.replace(CASES[0], "Empty")).symlink_to(path)
    # the same label map with a 5x5x5 blob at the voxel farthest from its tumour: the
    # far component a reviewer must be shown, whatever the post-processing kept
    labels = np.asarray(first.dataobj).copy()
    distance = ndimage.distance_transform_edt(labels == 0)
    inner = np.zeros(labels.shape, bool)
    inner[5:-5, 5:-5, 5:-5] = True
    x, y, z = np.unravel_index(np.argmax(np.where(inner, distance, 0)), labels.shape)
    labels[x - 2:x + 3, y - 2:y + 3, z - 2:z + 3] = 2
    nib.save(nib.Nifti1Image(labels, first.affine), out / "Far.nii.gz")
    (cases / "Far").mkdir()
    for path in (brats / CASES[0]).iterdir():
        (cases / "Far" / path.name.replace(CASES[0], "Far")).symlink_to(path)
    done = subprocess.run([sys.executable, "-m", "unet3d.cli.evaluate", "--pred", str(out),
                           "--gt", str(cases), "--html", "--overwrite"], capture_output=True,
                          text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def rows(folder: Path) -> dict[str, dict]:
    return {row["case"]: row for row in json.loads((folder / "review" /
                                                    "review.json").read_text())}


@pytest.mark.slow
def test_flags_of_inputs_made_to_show_them(folder):
    by_case = rows(folder)
    flags = {case: [f["code"] for f in row["flags"]] for case, row in by_case.items()}
    # the flag follows the share of uncertain voxels predict.py reported (whether the
    # network hesitates on swapped sequences depends on the network)
    for case in ("Swapped", CASES[1]):
        fraction = json.loads((folder / f"{case}.json").read_text())["confidence"][
            "uncertain_fraction"]
        assert ("low_confidence" in flags[case]) == (fraction > UNCERTAIN_FRACTION), case
    assert "reoriented" in flags["Flipped"] and "reoriented" not in flags[CASES[1]]
    assert "resampled" in flags["Coarse"] and "resampled" not in flags["Flipped"]
    assert "2x2x2 mm" in next(f["why"] for f in by_case["Coarse"]["flags"]
                              if f["code"] == "resampled")
    assert flags["Empty"][0] == "no_tumour"
    assert "far_component" in flags["Far"]
    assert "125 voxels" in next(f["why"] for f in by_case["Far"]["flags"]
                                if f["code"] == "far_component")
    report = json.loads((folder / "Swapped.json").read_text())
    if "low_confidence" in flags["Swapped"]:
        assert f"{report['confidence']['uncertain_fraction']:.0%}" in next(
            f["why"] for f in by_case["Swapped"]["flags"] if f["code"] == "low_confidence")


class _Table(HTMLParser):
    """The rows of the rendered index: case, flag codes, cell texts."""

    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-case" in attrs:
            self.rows.append({"case": attrs["data-case"], "codes": [], "cells": []})
        elif self.rows and tag == "td":
            self._cell = ""
        elif self.rows and tag == "span" and "data-code" in attrs:
            self.rows[-1]["codes"].append(attrs["data-code"])

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1]["cells"].append(self._cell.strip())
            self._cell = None


@pytest.mark.slow
def test_the_rendered_table_matches_the_json_and_sorts(folder, tmp_path):
    by_case = rows(folder)
    table = _Table()
    table.feed(browse((folder / "index.html").as_uri(), tmp_path))
    assert len(table.rows) == len(by_case) == len(CASES) + 5
    counts = [len(by_case[r["case"]]["flags"]) for r in table.rows]
    assert counts == sorted(counts, reverse=True)  # flagged cases first
    scores = {}
    for row in table.rows:
        expected = by_case[row["case"]]
        assert row["codes"] == [f["code"] for f in expected["flags"]]
        assert row["cells"][3:6] == [f"{expected['volumes_cm3'][r]:.1f}" for r in
                                     ("WT", "TC", "ET")]
        scores[row["case"]] = row["cells"][6]  # Dice WT, as evaluation.csv has it
    csv = (folder / "evaluation.csv").read_text().splitlines()
    header = csv[0].split(",")
    for line in csv[1:]:
        values = dict(zip(header, line.split(","), strict=True))
        assert scores[values["case"]] == f"{float(values['Dice_WT']):.3f}"


@pytest.mark.slow
def test_screenshots_show_the_overlay_on_the_tumour_only(folder, tmp_path):
    shot = tmp_path / "index.png"
    browse((folder / "index.html").as_uri(), tmp_path, screenshot=shot)
    assert overlay_pixels(np.asarray(Image.open(shot).convert("RGB"))) > 200
    for case, expected in ((CASES[1], True), ("Empty", False)):
        page = tmp_path / f"{case}.png"
        browse((folder / "review" / f"{case}.html").as_uri(), tmp_path, screenshot=page)
        pixels = np.asarray(Image.open(page).convert("RGB"))
        # the legend's swatches are pure colour (no grey under them): the overlay is not
        assert (overlay_pixels(pixels) > 200) is expected, case
        text = browse((folder / "review" / f"{case}.html").as_uri(), tmp_path)
        assert re.search(r"WT [\d.]+ cm", text)


def green(pixels: np.ndarray) -> np.ndarray:
    """Where the edema's green shows (blended over grey at any opacity)."""
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return (g > r + 60) & (g > b + 60)


@pytest.mark.slow
def test_the_viewer_draws_the_scan_with_the_overlay_from_disk(folder, tmp_path):
    """NiiVue, copied beside the pages, draws the case's FLAIR and its segmentation into
    its canvas from file:// (no server, no network); an empty case's viewer has no overlay."""
    assert (folder / "review" / "niivue.umd.js").is_file()
    seen = {}
    for case in (CASES[1], "Empty"):
        shot = tmp_path / f"viewer-{case}.png"
        browse((folder / "review" / f"{case}.html").as_uri(), tmp_path, screenshot=shot,
               size=(1100, 1400), budget_ms=20000)
        pixels = np.asarray(Image.open(shot).convert("RGB"))
        # the viewer's canvas: the black panel below the static planes and the legend
        dark = (pixels.max(axis=-1) < 10).mean(axis=1)
        rows = np.flatnonzero(dark > 0.5)
        viewer = pixels[rows[rows > pixels.shape[0] // 2].min():]
        seen[case] = int(green(viewer).sum())
        assert (viewer.max(axis=-1) > 100).sum() > 10000, case  # the scan was drawn
    assert seen[CASES[1]] > 500 and seen["Empty"] == 0, seen


@pytest.mark.slow
def test_the_pages_work_from_a_plain_static_server(folder, tmp_path):
    """The same pages through `python -m http.server` (no server of the project's own)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(folder)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import time
        import urllib.request

        for _ in range(100):  # until it answers
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        table = _Table()
        table.feed(browse(f"http://127.0.0.1:{port}/index.html", tmp_path))
        assert sorted(r["case"] for r in table.rows) == sorted(rows(folder))
        page = browse(f"http://127.0.0.1:{port}/review/{CASES[1]}.html", tmp_path)
        assert "WT" in page and 'src="niivue.umd.js"' in page
    finally:
        server.terminate()
        server.wait(timeout=30)
