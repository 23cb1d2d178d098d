"""An offline review page for a folder of segmentations: ``index.html``, one row per case
(three planes through the tumour, volumes, flags, scores), flagged cases first, each case
linked to its own page.

Everything is written beside the predictions: ``index.html`` and ``review/`` (a page and
a PNG per case, and ``review.json``, the table's data). The pages hold no script or style
from elsewhere and open from disk (``file://``) or from any static web server alike.
"""

from __future__ import annotations

import html
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nibabel as nib
import numpy as np
from PIL import Image

from data_generators.io import find_case
from data_generators.labels import CLASS_COLOURS, MODALITIES, labels_to_classes
from data_generators.nifti import read_volume
from unet3d.evaluation.flags import case_flags
from unet3d.evaluation.folder import find_predictions
from unet3d.evaluation.viewer import install_viewer, viewer_html, write_case_data
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_path, atomic_write_text

REVIEW_DIR = "review"
REGION_CLASSES = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def write_review(pred_dir: str | Path, gt_dir: str | Path | None = None,
                 scores: list[dict[str, Any]] | None = None,
                 convention: str = "brats2017", viewer: bool = True) -> Path:
    """Writes ``<pred_dir>/index.html`` and a page per case; returns the index's path.

    Args:
        pred_dir: folder of ``<case>.nii.gz`` label maps (predict.py's, with its
            ``<case>.json`` reports, or any other tool's).
        gt_dir: optional folder of BraTS case folders: the scan shown where no
            report names one, and the cases scored in ``scores``.
        scores: optional per-case rows of :func:`unet3d.evaluation.folder.evaluate_folder`.
        convention: label convention of the label maps.
        viewer: bool, default True. Add the interactive viewer (NiiVue, when
            installed) to each case page, with the case's scans beside it
            (``<case>.data.js``, about the size of its NIfTI files).

    Raises:
        InputError: no label map in ``pred_dir``.
    """
    pred_dir = Path(pred_dir)
    folder = pred_dir / REVIEW_DIR
    folder.mkdir(exist_ok=True)
    by_case = {row["case"]: row for row in scores or []}
    viewer = viewer and install_viewer(folder)
    def row_of(item):
        try:
            return _case_row(item[0], item[1], pred_dir, gt_dir, by_case.get(item[0]),
                             convention, folder, viewer)
        except InputError as err:  # one unreadable case does not cost the others' review
            print(f"review: {item[0]} left out: {err}", file=sys.stderr)
            return None

    # cases in parallel threads (reading, zlib and numpy release the GIL), as many as the
    # cores this process may use, at most 4: each holds a case's volumes
    threads = min(4, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        rows = [row for row in pool.map(row_of, find_predictions(pred_dir).items()) if row]
    # flagged cases first (the most flags first), then by name
    rows.sort(key=lambda r: (-len(r["flags"]), r["case"]))
    for row in rows:
        atomic_write_text(folder / f"{row['case']}.html", _case_page(row))
    atomic_write_text(folder / "review.json", json.dumps(rows, indent=2) + "\n")
    index = pred_dir / "index.html"
    atomic_write_text(index, _index_page(rows, pred_dir))
    return index


def _case_row(case_id: str, path: Path, pred_dir: Path, gt_dir, scores, convention: str,
              folder: Path, viewer: bool) -> dict[str, Any]:
    report_path = pred_dir / f"{case_id}.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    labels, img = read_volume(path, "label map")
    classes = labels_to_classes(np.asarray(labels), convention)
    sequences = _sequences(case_id, report, gt_dir)
    scan_path = sequences.get("flair") or next(iter(sequences.values()), None)
    scan = np.asarray(read_volume(scan_path)[0], dtype=np.float32) if scan_path else \
        np.zeros(classes.shape, np.float32)
    if scan.shape != classes.shape:
        raise InputError(f"{scan_path}: shape {scan.shape} differs from {path}'s "
                         f"{classes.shape}")
    spacing = [float(s) for s in img.header.get_zooms()[:3]]
    axes = "".join(nib.aff2axcodes(img.affine))
    flags = case_flags(classes, scan, spacing, axes, report)
    voxel_cm3 = float(np.prod(spacing)) / 1000.0
    volumes = {region: round(float(np.isin(classes, members).sum()) * voxel_cm3, 2)
               for region, members in REGION_CLASSES.items()}
    canonical = nib.as_closest_canonical(nib.Nifti1Image(classes, img.affine))
    picture = planes(np.asarray(nib.as_closest_canonical(
        nib.Nifti1Image(scan, img.affine)).dataobj), np.asarray(canonical.dataobj))
    with atomic_path(folder / f"{case_id}.png") as tmp:
        Image.fromarray(picture).save(tmp, format="PNG", optimize=False)
    if viewer and sequences:
        write_case_data(folder, case_id, sequences, classes, img.affine)
    row = {"case": case_id, "segmentation": str(path.relative_to(pred_dir)),
           "scan": str(scan_path) if scan_path else None, "flags": flags, "volumes_cm3": volumes}
    if scores:
        row["scores"] = {k: (None if v is None or not np.isfinite(float(v)) else float(v))
                         for k, v in scores.items() if k != "case"}
    return row


def _sequences(case_id: str, report: dict[str, Any], gt_dir) -> dict[str, Path]:
    """The case's scans by sequence name: from predict.py's report, else the ground-truth
    folder's case, else none (labels are then shown on black)."""
    inputs = report.get("inputs") or []
    modalities = (report.get("model") or {}).get("modalities") or []
    found = {name: Path(p) for name, p in zip(modalities, inputs, strict=False)
             if Path(p).is_file()}
    if found:
        return found
    if gt_dir is not None and (Path(gt_dir) / case_id).is_dir():
        try:
            case = find_case(Path(gt_dir) / case_id)
        except InputError:
            return {}
        return dict(zip(MODALITIES, case.images, strict=True))
    return {}


def planes(scan: np.ndarray, classes: np.ndarray, size: int = 160) -> np.ndarray:
    """Axial, coronal and sagittal slices through the tumour's centre, side by side, the
    classes painted in the BraTS colours; `(size, 3 * size, 3)` uint8. Arrays in RAS
    order; shown as neurologists look (patient's right on the right, superior up)."""
    tumour = np.argwhere(classes > 0)
    centre = tumour.mean(axis=0).round().astype(int) if tumour.size else \
        np.array(classes.shape) // 2
    x, y, z = (int(c) for c in centre)
    inside = scan[scan != 0]
    lo, hi = np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0)
    tiles = []
    for image, label in ((scan[:, :, z], classes[:, :, z]), (scan[:, y, :], classes[:, y, :]),
                         (scan[x, :, :], classes[x, :, :])):
        grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255.0
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        for cls, colour in CLASS_COLOURS.items():
            mask = label == cls
            rgb[mask] = 0.4 * rgb[mask] + 0.6 * np.array(colour)
        tile = Image.fromarray(np.rot90(rgb).astype(np.uint8))  # rows: superior/anterior up
        tile.thumbnail((size, size))
        canvas = Image.new("RGB", (size, size))
        canvas.paste(tile, ((size - tile.width) // 2, (size - tile.height) // 2))
        tiles.append(np.asarray(canvas))
    return np.concatenate(tiles, axis=1)


# ---- HTML -----------------------------------------------------------------------------
_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}th,td{padding:4px 8px;border-bottom:1px solid #ddd;
vertical-align:top;text-align:left}th{cursor:pointer;background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}.flag{color:#a40000}
.ok{color:#1a7f37}img{image-rendering:pixelated}.legend span{padding:0 6px}"""
_SORT = """document.querySelectorAll('th').forEach((th,i)=>th.addEventListener('click',()=>{
const body=th.closest('table').tBodies[0],rows=[...body.rows],up=th.dataset.up!=='1';
th.dataset.up=up?'1':'0';const key=r=>{const c=r.cells[i],v=c.dataset.v??c.textContent;
return v===''||isNaN(v)?v:parseFloat(v)};rows.sort((a,b)=>{const p=key(a),q=key(b);
return (p>q?1:p<q?-1:0)*(up?1:-1)});rows.forEach(r=>body.appendChild(r))}));"""


def _legend() -> str:
    names = {1: "necrosis / non-enhancing core", 2: "edema", 3: "enhancing tumour"}
    return '<p class="legend">' + "".join(
        f'<span style="background:rgb{CLASS_COLOURS[c]}">&nbsp;</span> {names[c]} '
        for c in (1, 2, 3)) + "</p>"


def _score_cells(row: dict[str, Any]) -> str:
    scores = row.get("scores") or {}  # a case without ground truth: empty cells
    cells = []
    for key in ("Dice_WT", "Dice_TC", "Dice_ET", "HD95_WT", "HD95_TC", "HD95_ET"):
        value = scores.get(key)
        text = "" if value is None else (f"{value:.3f}" if key.startswith("Dice") else
                                         f"{value:.1f}")
        cells.append(f'<td class="num" data-v="{"" if value is None else value}">{text}</td>')
    return "".join(cells)


def _flags_html(flags: list[dict[str, str]]) -> str:
    if not flags:
        return '<span class="ok">no flag</span>'
    return "<br>".join(f'<span class="flag" data-code="{f["code"]}">{html.escape(f["why"])}'
                       "</span>" for f in flags)


def _index_page(rows: list[dict[str, Any]], pred_dir: Path) -> str:
    scored = any("scores" in r for r in rows)
    head = "".join(f"<th>{h}</th>" for h in (
        "case", "planes", "flags", "WT cm&sup3;", "TC cm&sup3;", "ET cm&sup3;",
        *(("Dice WT", "Dice TC", "Dice ET", "HD95 WT mm", "HD95 TC mm", "HD95 ET mm")
          if scored else ())))
    body = []
    for row in rows:
        case, url = html.escape(row["case"]), html.escape(quote(row["case"]))
        volumes = "".join(f'<td class="num">{row["volumes_cm3"][r]:.1f}</td>'
                          for r in ("WT", "TC", "ET"))
        body.append(
            f'<tr data-case="{case}"><td><a href="{REVIEW_DIR}/{url}.html">{case}</a></td>'
            f'<td><a href="{REVIEW_DIR}/{url}.html"><img src="{REVIEW_DIR}/{url}.png" '
            f'height="80" alt="{case}: axial, coronal, sagittal"></a></td>'
            f'<td data-v="{-len(row["flags"])}">{_flags_html(row["flags"])}</td>{volumes}'
            f"{_score_cells(row) if scored else ''}</tr>")
    flagged = sum(bool(r["flags"]) for r in rows)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Review: '
            f'{html.escape(pred_dir.name)}</title><style>{_STYLE}</style></head><body>'
            f"<h1>Review of {len(rows)} case{'s' * (len(rows) != 1)}</h1>"
            f"<p>{flagged} flagged, listed first. Click a column to sort; a case to open "
            f"its page. Written {time.strftime('%Y-%m-%d %H:%M')}.</p>{_legend()}"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<script>{_SORT}</script></body></html>\n")


def _case_page(row: dict[str, Any]) -> str:
    case = html.escape(row["case"])
    volumes = ", ".join(f"{r} {v:.1f} cm&sup3;" for r, v in row["volumes_cm3"].items())
    scores = ""
    if row.get("scores"):
        shown = {"Dice": "Dice {} {:.3f}", "HD95": "HD95 {} {:.1f} mm",
                 "LesionDice": "lesion-wise Dice {} {:.3f}",
                 "LesionHD95": "lesion-wise HD95 {} {:.1f} mm",
                 "LesionMissed": "lesions missed {} {:.0f}",
                 "LesionFalsePositives": "false-positive components {} {:.0f}"}
        items = [shown[k.split("_")[0]].format(k.split("_")[1], v)
                 for k, v in row["scores"].items()
                 if v is not None and k.split("_")[0] in shown]
        scores = f"<p>Against the ground truth: {', '.join(items)}</p>"
    flags = "".join(f'<li class="flag" data-code="{f["code"]}">{html.escape(f["why"])}</li>'
                    for f in row["flags"]) or '<li class="ok">no flag</li>'
    scan = html.escape(row["scan"]) if row["scan"] else "none found (labels on black)"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{case}'
            f"</title><style>{_STYLE}</style></head><body>"
            f'<p><a href="../index.html">&larr; all cases</a></p><h1>{case}</h1>'
            f"<ul>{flags}</ul><p>{volumes}</p>{scores}"
            f'<img src="{html.escape(quote(row["case"]))}.png" width="960" '
            f'alt="{case}: axial, coronal, sagittal">'
            f"{_legend()}<p>Segmentation: <code>../{html.escape(row['segmentation'])}</code>; "
            f"scan shown: <code>{scan}</code></p>{viewer_html(row['case'])}</body></html>\n")
