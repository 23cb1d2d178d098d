"""The evaluation command line: CSV, summary and one-line errors on tiny NIfTI files."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import BRATS_DIR, require_brats
from unet3d.cli.evaluate import main, parse_args
from unet3d.evaluation.case_scores import SCORE_KEYS
from unet3d.evaluation.folder import evaluate_folder
from unet3d.evaluation.scores import HD95_EMPTY

# brats2017 labels along z of a (1, 1, 10) volume, voxel size 1 x 1 x 2 mm:
#   truth 4 4 1 1 2 2 0 0 0 0   WT z0..5, TC z0..3, ET z0..1
#   pred  4 1 1 1 2 2 2 0 0 0   WT z0..6, TC z0..3, ET z0
# Dice WT 2*6/(7+6) = 12/13, TC 1, ET 2*1/(1+2) = 2/3; HD95 WT 0.4 voxel = 0.8 mm,
# TC 0, ET 0.9 voxel = 1.8 mm (worked out in test_evaluation.py)
TRUTH = np.array([4, 4, 1, 1, 2, 2, 0, 0, 0, 0], np.uint8)[None, None, :]
PRED = np.array([4, 1, 1, 1, 2, 2, 2, 0, 0, 0], np.uint8)[None, None, :]
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def save(data: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def make_gt(root: Path, case: str, labels: np.ndarray = TRUTH, with_images=False) -> Path:
    seg = save(labels, root / case / f"{case}_seg.nii.gz")
    if with_images:
        for modality in ("t1", "t1ce", "t2", "flair"):
            save(np.ones(labels.shape, np.float32), root / case / f"{case}_{modality}.nii.gz")
    return seg


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """pred/ with cases a (imperfect) and b (perfect); gt/ with both."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    make_gt(gt, "a", with_images=True)
    make_gt(gt, "b")
    save(PRED, pred / "a.nii.gz")
    save(TRUTH, pred / "b.nii")
    return pred, gt


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("evaluate: error: "), err
    assert "Traceback" not in err
    return err


def test_cli_writes_csv_and_summary(dirs, capsys):
    pred, gt = dirs
    assert main(["--pred", str(pred), "--gt", str(gt)]) == 0
    out = capsys.readouterr().out
    rows = read_csv(pred / "evaluation.csv")
    with open(pred / "evaluation.csv") as handle:
        header = handle.readline().strip().split(",")
    assert header == ["case", *SCORE_KEYS]
    assert header[:7] == ["case", "Dice_WT", "Dice_TC", "Dice_ET", "HD95_WT", "HD95_TC", "HD95_ET"]
    assert [r["case"] for r in rows] == ["a", "b"]
    a = {k: float(v) for k, v in rows[0].items() if k != "case"}
    expected_a = {
        "Dice_WT": 12 / 13,
        "Dice_TC": 1.0,
        "Dice_ET": 2 / 3,
        "HD95_WT": 0.8,  # spacing from the ground-truth header (2 mm along z)
        "HD95_TC": 0.0,
        "HD95_ET": 1.8,
        "Sensitivity_WT": 1.0,
        "Sensitivity_ET": 0.5,
        "Specificity_WT": 0.75,
        "IoU_WT": 6 / 7,
        "IoU_ET": 0.5,
    }
    for key, value in expected_a.items():
        assert a[key] == pytest.approx(value), key
    b = {k: float(v) for k, v in rows[1].items() if k != "case"}
    for region in ("WT", "TC", "ET"):
        assert b[f"Dice_{region}"] == 1.0
        assert b[f"HD95_{region}"] == 0.0
    # summary: one row per metric and region, mean std median (population std)
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["metric", "mean", "std", "median"]
    assert "(2 cases)" in lines[0]
    table = {line.split()[0]: [float(x) for x in line.split()[1:4]] for line in lines[1:16]}
    assert list(table) == list(SCORE_KEYS)
    # Dice_WT over (12/13, 1): mean 25/26, std 1/26, median 25/26
    assert table["Dice_WT"] == pytest.approx([25 / 26, 1 / 26, 25 / 26], abs=1e-4)
    # HD95_ET over (1.8, 0): mean 0.9, std 0.9, median 0.9
    assert table["HD95_ET"] == pytest.approx([0.9, 0.9, 0.9], abs=1e-4)
    assert f"wrote {pred / 'evaluation.csv'}" in out


def test_evaluate_folder_returns_rows_and_summary(dirs, tmp_path):
    pred, gt = dirs
    out_csv = tmp_path / "out" / "scores.csv"
    rows, summary = evaluate_folder(pred, gt, csv_path=out_csv)
    assert out_csv.is_file()
    assert not (pred / "evaluation.csv").exists()
    assert [r["case"] for r in rows] == ["a", "b"]
    assert rows[0]["Dice_WT"] == pytest.approx(12 / 13)
    assert list(summary) == list(SCORE_KEYS)
    assert summary["Dice_ET"] == pytest.approx({"mean": 5 / 6, "std": 1 / 6, "median": 5 / 6})
    # no temporary files left beside the CSV
    assert [p.name for p in out_csv.parent.iterdir()] == ["scores.csv"]


def test_unmatched_cases_are_reported_and_skipped(dirs, capsys):
    pred, gt = dirs
    save(PRED, pred / "extra.nii.gz")  # a prediction without ground truth
    make_gt(gt, "lonely")  # ground truth without prediction
    (gt / "nolabel").mkdir()
    save(TRUTH, gt / "nolabel" / "nolabel_t1.nii.gz")  # a case folder without a seg
    save(PRED, pred / "nolabel.nii.gz")
    (pred / "notes.txt").write_text("not a prediction")
    assert main(["--pred", str(pred), "--gt", str(gt)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert "without ground truth" in err[0] and "extra, nolabel" in err[0]
    assert "without prediction" in err[1] and "lonely" in err[1]
    assert [r["case"] for r in read_csv(pred / "evaluation.csv")] == ["a", "b"]


def test_brats2023_labels(tmp_path, capsys):
    # ET is 3; the truth has none, the prediction one voxel -> Dice 0, HD95 373.13
    truth = np.array([2, 2, 1, 0], np.uint8)[None, None, :]
    pred = np.array([2, 2, 1, 3], np.uint8)[None, None, :]
    make_gt(tmp_path / "gt", "c", truth)
    save(pred, tmp_path / "pred" / "c.nii.gz")
    argv = ["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")]
    assert main([*argv, "--labels", "brats2023"]) == 0
    (row,) = read_csv(tmp_path / "pred" / "evaluation.csv")
    assert float(row["Dice_ET"]) == 0.0
    assert float(row["HD95_ET"]) == pytest.approx(HD95_EMPTY)
    assert float(row["Dice_WT"]) == pytest.approx(6 / 7)  # the ET voxel is also WT: 2*3/(4+3)
    capsys.readouterr()
    # the same files under brats2017: 3 is not a label
    assert main([*argv, "--overwrite"]) == 2
    err = error_line(capsys)
    assert "c.nii.gz" in err and "3" in err and "brats2017" in err


def test_existing_csv_needs_overwrite(dirs, capsys):
    pred, gt = dirs
    existing = pred / "evaluation.csv"
    existing.write_text("keep me\n")
    assert main(["--pred", str(pred), "--gt", str(gt)]) == 2
    err = error_line(capsys)
    assert str(existing) in err and "--overwrite" in err
    assert existing.read_text() == "keep me\n"
    assert main(["--pred", str(pred), "--gt", str(gt), "--overwrite"]) == 0
    assert [r["case"] for r in read_csv(existing)] == ["a", "b"]


def gt_without_seg(pred: Path, gt: Path) -> None:
    (gt / "b" / "b_seg.nii.gz").unlink()
    (gt / "a" / "a_seg.nii.gz").unlink()


def a_pred(pred: Path, gt: Path) -> Path:
    return pred / "a.nii.gz"


def b_seg(pred: Path, gt: Path) -> Path:
    return gt / "b" / "b_seg.nii.gz"


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        # missing prediction folder
        (lambda pred, gt: pred.rename(pred.with_name("moved")), lambda pred, gt: pred),
        # missing ground-truth folder
        (lambda pred, gt: gt.rename(gt.with_name("moved")), lambda pred, gt: gt),
        # shape mismatch: a 1x1x9 prediction for a 1x1x10 truth
        (lambda pred, gt: save(PRED[..., :9], pred / "a.nii.gz"), a_pred),
        # unreadable prediction
        (lambda pred, gt: (pred / "a.nii.gz").write_bytes(b"not a nifti"), a_pred),
        # unreadable ground truth
        (lambda pred, gt: (gt / "b" / "b_seg.nii.gz").write_bytes(b"\x1f\x8b junk"), b_seg),
        # 4D prediction
        (lambda pred, gt: save(np.stack([PRED, PRED], -1), pred / "a.nii.gz"), a_pred),
        # label value 3 is not brats2017
        (lambda pred, gt: save(PRED.clip(0, 3), pred / "a.nii.gz"), a_pred),
        # non-integer labels in the truth
        (lambda pred, gt: save(TRUTH * 0.5, gt / "b" / "b_seg.nii.gz"), b_seg),
        # no case in common
        (gt_without_seg, lambda pred, gt: pred),
        # both b.nii and b.nii.gz
        (lambda pred, gt: save(TRUTH, pred / "b.nii.gz"), lambda pred, gt: pred / "b.nii.gz"),
    ],
    ids=[
        "no-pred-dir",
        "no-gt-dir",
        "shape",
        "unreadable-pred",
        "unreadable-gt",
        "4d",
        "label-3",
        "non-integer",
        "none-in-common",
        "duplicate",
    ],
)
def test_bad_inputs_exit_2_with_one_line(dirs, capsys, breakage, named):
    pred, gt = dirs
    breakage(pred, gt)
    assert main(["--pred", str(pred), "--gt", str(gt)]) == 2
    err = error_line(capsys)
    assert f"{named(pred, gt)}: " in err
    assert not (pred / "evaluation.csv").exists()


def test_parse_args_defaults():
    args = parse_args(["--pred", "p", "--gt", "g"])
    assert (str(args.pred), str(args.gt), args.csv, args.labels, args.overwrite) == (
        "p",
        "g",
        None,
        "brats2017",
        False,
    )
    with pytest.raises(SystemExit):
        parse_args(["--pred", "p", "--gt", "g", "--labels", "brats1999"])


def test_real_ground_truth_through_the_cli(tmp_path, capsys):
    require_brats()
    seg = sorted(BRATS_DIR.glob("*/*_seg.nii.gz"))[0]
    case = seg.parent.name
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / f"{case}.nii.gz").symlink_to(seg)
    out_csv = tmp_path / "scores.csv"
    argv = ["--pred", str(pred), "--gt", str(BRATS_DIR), "--csv", str(out_csv)]
    assert main(argv) == 0
    (row,) = read_csv(out_csv)
    assert row["case"] == case
    for region in ("WT", "TC", "ET"):
        assert float(row[f"Dice_{region}"]) == 1.0
        assert float(row[f"HD95_{region}"]) == 0.0
    # the other BraTS cases have no prediction: one warning line
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "without prediction" in err[0]
