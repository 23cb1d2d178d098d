"""One folder of real cases shared among processes: ``predict.py --num-parts N --part-id K``,
started by the Slurm array script and the Kubernetes indexed-job manifest of docs/cluster
with their schedulers' variables set, as the schedulers would."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from tests.conftest import REPO, require_brats
from unet3d.inference.api import part_of

CLUSTER = REPO / "docs" / "cluster"
N_CASES, PARTS = 6, 3
# unet3d-predict of this environment first on PATH, as in a job's image
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    """A folder of six real cases (links to the shared ones)."""
    folder = tmp_path_factory.mktemp("parts") / "cases"
    folder.mkdir()
    for case in sorted(p for p in require_brats().iterdir() if p.is_dir())[:N_CASES]:
        (folder / case.name).symlink_to(case, target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def single(cases, tmp_path_factory) -> Path:
    """The same folder segmented (and scored) by one process."""
    out = tmp_path_factory.mktemp("single")
    done = subprocess.run([sys.executable, str(REPO / "predict.py"), "--input", str(cases),
                           "--out", str(out), "--gt", str(cases)], capture_output=True,
                          text=True, cwd=REPO, env=ENV, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def slurm_task(cases, out, task):
    env = {**ENV, "INPUT": str(cases), "OUT": str(out), "GT": str(cases),
           "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": str(PARTS),
           "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": str(PARTS - 1)}
    return subprocess.Popen(["bash", str(CLUSTER / "predict_array.sbatch")], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kubernetes_pod(cases, out, index):
    """The manifest's container command with its env, the paths and part count of this
    test, and JOB_COMPLETION_INDEX as Kubernetes sets it."""
    job = yaml.safe_load((CLUSTER / "predict_indexed_job.yaml").read_text())
    assert job["spec"]["completionMode"] == "Indexed"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    declared = {item["name"]: item["value"] for item in container["env"]}
    assert declared["NUM_PARTS"] == str(job["spec"]["completions"])
    env = {**ENV, **declared, "NUM_PARTS": str(PARTS), "INPUT": str(cases), "OUT": str(out),
           "GT": str(cases), "JOB_COMPLETION_INDEX": str(index)}
    return subprocess.Popen(container["command"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def counts(stdout: str) -> tuple[int, int]:
    match = re.search(r"(\d+) segmented, (\d+) already done", stdout)
    assert match, stdout[-2000:]
    return int(match[1]), int(match[2])


def labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_shares_are_disjoint_and_cover_every_case():
    folders = [Path(f"Case_{i:03d}") for i in (7, 2, 11, 5, 0, 3, 9)]
    shares = [part_of(folders, 3, k) for k in range(3)]
    assert sorted(p for share in shares for p in share) == sorted(folders)
    assert [[p.name for p in share] for share in shares] == [
        ["Case_000", "Case_005", "Case_011"], ["Case_002", "Case_007"], ["Case_003", "Case_009"]]


@pytest.mark.slow
def test_three_parts_together_segment_every_case_once(cases, single, tmp_path):
    out = tmp_path / "preds"
    procs = [slurm_task(cases, out, 0), kubernetes_pod(cases, out, 1),
             subprocess.Popen([sys.executable, str(REPO / "predict.py"), "--input", str(cases),
                               "--out", str(out), "--gt", str(cases), "--num-parts", "3",
                               "--part-id", "2"], env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)]
    results = [proc.communicate(timeout=900) for proc in procs]
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr[-2000:]
        assert "Traceback" not in stderr
    # each part segmented its own two cases, none found another's work done
    assert [counts(stdout) for stdout, _ in results] == [(2, 0)] * PARTS
    names = sorted(p.name for p in cases.iterdir())
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{n}.nii.gz" for n in names]
    for name in names:  # labels equal to one process's, voxel for voxel
        np.testing.assert_array_equal(labels(out / f"{name}.nii.gz"),
                                      labels(single / f"{name}.nii.gz"), err_msg=name)
    # one merged report of all six, written by the part that finished last
    merged = list(csv.DictReader((out / "evaluation.csv").open()))
    reference = list(csv.DictReader((single / "evaluation.csv").open()))
    assert [r["case"] for r in merged] == [r["case"] for r in reference] == names
    for mine, theirs in zip(merged, reference, strict=True):
        assert mine == theirs  # every score, as written
    assert not list(out.glob(".lock*")) or [p.name for p in out.glob(".lock*")] == [".lock"]


@pytest.mark.slow
def test_killed_part_rerun_finishes_only_its_own_cases(cases, single, tmp_path):
    out = tmp_path / "preds"
    command = [sys.executable, str(REPO / "predict.py"), "--input", str(cases), "--out",
               str(out), "--num-parts", "3", "--part-id", "1"]
    proc = subprocess.Popen(command, env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    mine = [p.name for p in part_of(list(cases.iterdir()), PARTS, 1)]
    deadline = time.time() + 600
    while time.time() < deadline and not (out / f"{mine[0]}.json").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # inside its second case (or just after the first)
    proc.wait(timeout=60)
    # a temporary another part is writing right now: not this part's to remove
    other = next(p.name for p in cases.iterdir() if p.name not in mine)
    foreign = out / f".{other}.nii.gz.abc123.tmp.nii.gz"
    foreign.write_bytes(b"in progress elsewhere")

    rerun = subprocess.run(command, env=ENV, cwd=REPO, capture_output=True, text=True,
                           timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    segmented, already = counts(rerun.stdout)
    assert segmented + already == 2 and already >= 1
    written = sorted(p.name for p in out.glob("*.nii.gz") if not p.name.startswith("."))
    assert written == sorted(f"{n}.nii.gz" for n in mine)
    for name in mine:
        np.testing.assert_array_equal(labels(out / f"{name}.nii.gz"),
                                      labels(single / f"{name}.nii.gz"), err_msg=name)
    assert foreign.read_bytes() == b"in progress elsewhere"
    assert not [p for p in out.glob(".*.tmp*") if p != foreign]  # its own killed write: gone


def test_a_plain_run_and_a_part_exclude_each_other(cases, tmp_path, capsys):
    """Parts share a folder with each other, not with a run that owns the whole folder, and
    two processes never run the same part."""
    import unet3d.cli.predict as predict_cli
    from unet3d_base.fileio import exclusive_lock, shared_lock

    out = tmp_path / "preds"
    out.mkdir()
    with shared_lock(out, "--out"):  # another part at work
        assert predict_cli.main(["--input", str(cases), "--out", str(out)]) == 2
        assert "in use by" in capsys.readouterr().err
    with exclusive_lock(out, "--out", name=".lock.part1of3"):  # part 1 already running
        code = predict_cli.main(["--input", str(cases), "--out", str(out), "--num-parts", "3",
                                 "--part-id", "1"])
        assert code == 2 and "in use by" in capsys.readouterr().err
    with exclusive_lock(out, "--out"):  # a plain run owns the folder
        code = predict_cli.main(["--input", str(cases), "--out", str(out), "--num-parts", "3",
                                 "--part-id", "0"])
        assert code == 2 and "in use by" in capsys.readouterr().err


@pytest.mark.parametrize(("parts", "part", "message"), [
    ("0", "0", "--num-parts must be >= 1"), ("3", "3", "--part-id must lie in 0..2"),
    ("3", "-1", "--part-id must lie in 0..2")])
def test_bad_part_options_are_one_line(parts, part, message, cases, tmp_path, capsys):
    import unet3d.cli.predict as predict_cli

    code = predict_cli.main(["--input", str(cases), "--out", str(tmp_path / "o"),
                             "--num-parts", parts, "--part-id", part])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
